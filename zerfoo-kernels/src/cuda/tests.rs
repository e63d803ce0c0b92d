//! GPU tests: every kernel against the CPU kernel of the same name, forward
//! and backward, in every dtype the GPU supports, on strided, broadcast and
//! permuted inputs. Without a GPU each test prints why it skipped and passes.
//!
//! Tolerances (compared in f64 as `|gpu - cpu| <= tol * (1 + |cpu|)`): both
//! sides compute in the same compute type and round once, so they differ by
//! the compute type's error (transcendentals, summation order) plus at most
//! about one unit in the last place of the element type where that error
//! crosses a rounding boundary: f64 1e-10, f32 2e-5, f16 2e-3 (2^-10 ulp),
//! bf16 1.6e-2 (2^-7), f8 E4M3 0.13 (2^-3), f8 E5M2 0.26 (2^-2).

use super::ops::attention::*;
use super::ops::conv::*;
use super::ops::elementwise::*;
use super::ops::index::*;
use super::ops::loss::*;
use super::ops::mask::*;
use super::ops::matmul::*;
use super::ops::norm::*;
use super::ops::optim::*;
use super::ops::reduce::*;
use super::ops::rotary::*;
use super::ops::shape::*;
use super::ops::softmax::*;
use super::*;
use crate::cpu;
use crate::cpu::binary::{AddOp, DivOp, MaximumOp, MinimumOp, MulOp, PowOp, SubOp};
use crate::cpu::norm::NormKind;
use crate::cpu::optim::{AdamStep, SgdStep};
use crate::cpu::unary::{
    Abs, AddScalar, Clamp, Cos, Exp, GeluErf, GeluTanh, Log, MaxScalar, MinScalar, MulScalar, Neg,
    Powf, Relu, Rsqrt, ScalarDiv, ScalarPow, Sigmoid, Silu, Sin, Sqrt, Square, Tanh,
};
use crate::{bf16, f16, DType, Dtype, FloatDtype, Layout, Real, F8E4M3, F8E5M2};

/// GPU 0, or `None` after printing why the GPU run skips.
fn device() -> Option<CudaDevice> {
    match CudaDevice::new(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// The devices to test on: GPU 0 when there is one, and the host emulation
/// (an sm_90 stand-in running the same kernel sources on the CPU) when a
/// host C++ compiler runs; each absent one prints why it is skipped.
fn devices() -> Vec<CudaDevice> {
    let mut v: Vec<CudaDevice> = device().into_iter().collect();
    match CudaDevice::emulated(Capability::new(9, 0)) {
        Ok(d) => v.push(d),
        Err(e) => println!("skipped: host emulation ({e})"),
    }
    v
}

type Case = fn(&CudaDevice) -> Result<(), CudaError>;

/// Runs `case` for `E` when the GPU supports it, else prints why not.
fn for_dtype<E: CudaFloat>(dev: &CudaDevice, name: &str, case: Case) {
    if let Err(e) = dev.check(name, E::DTYPE) {
        println!("skipped {name} in {}: {e}", E::DTYPE);
        return;
    }
    case(dev).unwrap_or_else(|e| panic!("{name} in {} on {dev:?}: {e}", E::DTYPE));
}

macro_rules! all_dtypes {
    ($name:literal, $case:ident) => {
        for dev in devices() {
            for_dtype::<f64>(&dev, $name, $case::<f64>);
            for_dtype::<f32>(&dev, $name, $case::<f32>);
            for_dtype::<f16>(&dev, $name, $case::<f16>);
            for_dtype::<bf16>(&dev, $name, $case::<bf16>);
            for_dtype::<F8E4M3>(&dev, $name, $case::<F8E4M3>);
            for_dtype::<F8E5M2>(&dev, $name, $case::<F8E5M2>);
        }
    };
}

/// The stated tolerance of a dtype.
fn tol(dt: DType) -> f64 {
    match dt {
        DType::F64 => 1e-10,
        DType::F32 => 2e-5,
        DType::F16 => 2e-3,
        DType::BF16 => 1.6e-2,
        DType::F8E4M3 => 0.13,
        DType::F8E5M2 => 0.26,
        _ => 0.0,
    }
}

/// `n` deterministic pseudo-random values in `[lo, hi)`, rounded to `E`.
fn data<E: FloatDtype>(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<E> {
    (0..n as u64)
        .map(|i| {
            let h = (i + 1)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
            let h = (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let u = (h >> 11) as f64 / (1u64 << 53) as f64;
            E::from_f64(lo + (hi - lo) * u)
        })
        .collect()
}

fn close(a: f64, b: f64, t: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= t * (1.0 + b.abs())
}

/// Asserts `gpu` matches `cpu` elementwise within `tol(E) * scale`.
fn assert_close<E: Dtype>(what: &str, gpu: &[E], cpu: &[E], scale: f64) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let t = tol(E::DTYPE) * scale;
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        let (g, c) = (g.to_f64(), c.to_f64());
        assert!(
            close(g, c, t),
            "{what} in {}: element {i}: gpu {g} vs cpu {c} (tol {t})",
            E::DTYPE
        );
    }
}

/// Compute-type values (statistics, optimizer state, loss sums).
fn assert_close_acc<A: Real>(what: &str, dt: DType, gpu: &[A], cpu: &[A]) {
    let t = if dt == DType::F64 { 1e-10 } else { 1e-4 };
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        let (g, c) = (g.as_f64(), c.as_f64());
        assert!(
            close(g, c, t),
            "{what} in {dt}: element {i}: gpu {g} vs cpu {c}"
        );
    }
}

/// A (2, 3, 4) view of a (4, 2, 3) buffer: non-contiguous.
fn permuted() -> Layout {
    Layout::contiguous(&[4, 2, 3]).permute(&[1, 2, 0])
}

fn unary_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    let l = permuted();
    let n = l.numel();
    let pos: Vec<E> = data(n, 1, 0.2, 2.0);
    let any: Vec<E> = data(n, 2, -2.0, 2.0);
    let gy: Vec<E> = data(n, 3, -1.0, 1.0);
    let (dpos, dany, dgy) = (
        dev.to_device(&pos)?,
        dev.to_device(&any)?,
        dev.to_device(&gy)?,
    );
    fn one<E: CudaFloat, O: CudaUnary>(
        op: O,
        x: &[E],
        dx: &CudaBuffer<E>,
        l: &Layout,
        gy: &[E],
        dgy: &CudaBuffer<E>,
    ) -> Result<(), CudaError> {
        let y = cpu::unary::unary_forward(op, x, l);
        let dy = unary_forward(op, dx, l)?;
        assert_close(O::NAME, &dy.to_host()?, &y, 1.0);
        // backward from the same (CPU) y on both sides
        let gx = cpu::unary::unary_backward(op, x, l, &y, gy);
        let dyc = dx.device().to_device(&y)?;
        let dgx = unary_backward(op, dx, l, &dyc, dgy)?;
        assert_close(&format!("{} backward", O::NAME), &dgx.to_host()?, &gx, 2.0);
        Ok(())
    }
    macro_rules! ops {
        ($x:ident, $dx:ident: $($op:expr),*) => {$( one($op, &$x, &$dx, &l, &gy, &dgy)?; )*};
    }
    ops!(any, dany: Neg, Abs, Exp, Sin, Cos, Tanh, Sigmoid, Relu, GeluErf, GeluTanh, Silu, Square,
        Clamp(-0.5, 0.75), AddScalar(0.5), MulScalar(-1.5), ScalarPow(1.7), MaxScalar(0.25), MinScalar(0.25));
    ops!(pos, dpos: Log, Sqrt, Rsqrt, Powf(2.5), ScalarDiv(2.0));
    // copies through a layout are exact
    assert_eq!(
        to_contiguous(&dany, &l)?.to_host()?,
        cpu::to_contiguous(&any, &l)
    );
    Ok(())
}

#[test]
fn unary_ops_match_cpu() {
    all_dtypes!("unary", unary_case);
}

fn binary_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    // a: permuted (2, 3, 4); b: a (3, 1) buffer broadcast to (2, 3, 4)
    let la = permuted();
    let lb = Layout::new(&[2, 3, 4], &[0, 1, 0], 0);
    let a: Vec<E> = data(24, 4, 0.3, 2.0);
    let b: Vec<E> = data(3, 5, 0.3, 2.0);
    let gy: Vec<E> = data(24, 6, -1.0, 1.0);
    let (da, db, dgy) = (dev.to_device(&a)?, dev.to_device(&b)?, dev.to_device(&gy)?);
    fn one<E: CudaFloat, O: CudaBinary>(
        op: O,
        v: (&[E], &Layout, &[E], &Layout, &[E]),
        d: (&CudaBuffer<E>, &CudaBuffer<E>, &CudaBuffer<E>),
    ) -> Result<(), CudaError> {
        let (a, la, b, lb, gy) = v;
        let y = cpu::binary::binary_forward(op, a, la, b, lb);
        assert_close(
            O::NAME,
            &binary_forward(op, d.0, la, d.1, lb)?.to_host()?,
            &y,
            1.0,
        );
        let (ga, gb) = cpu::binary::binary_backward(op, a, la, b, lb, gy.to_vec(), (true, true));
        let (dga, dgb) = binary_backward(op, d.0, la, d.1, lb, d.2, (true, true))?;
        assert_close(
            &format!("{} grad a", O::NAME),
            &dga.unwrap().to_host()?,
            &ga,
            2.0,
        );
        assert_close(
            &format!("{} grad b", O::NAME),
            &dgb.unwrap().to_host()?,
            &gb,
            2.0,
        );
        let (none, only_b) = binary_backward(op, d.0, la, d.1, lb, d.2, (false, true))?;
        assert!(none.is_none());
        assert_close(
            &format!("{} grad b only", O::NAME),
            &only_b.unwrap().to_host()?,
            &gb,
            2.0,
        );
        Ok(())
    }
    let v = (&a[..], &la, &b[..], &lb, &gy[..]);
    let d = (&da, &db, &dgy);
    one(AddOp, v, d)?;
    one(SubOp, v, d)?;
    one(MulOp, v, d)?;
    one(DivOp, v, d)?;
    one(MaximumOp, v, d)?;
    one(MinimumOp, v, d)?;
    one(PowOp, v, d)?;
    // ties split the gradient: a tensor against itself
    let (ga, _) = binary_backward(MaximumOp, &da, &la, &da, &la, &dgy, (true, false))?;
    let want: Vec<E> = gy.iter().map(|g| E::from_f64(g.to_f64() * 0.5)).collect();
    assert_close("maximum tie", &ga.unwrap().to_host()?, &want, 1.0);
    Ok(())
}

#[test]
fn binary_ops_with_broadcast_match_cpu() {
    all_dtypes!("binary", binary_case);
}

fn reduce_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    // (3, 40, 5) read through a permutation, reduce axes (0, 2) and axis 1
    let l = Layout::contiguous(&[5, 3, 40]).permute(&[1, 2, 0]);
    let n = l.numel();
    // few distinct values: ties in max/min
    let x: Vec<E> = data::<E>(n, 7, -4.0, 4.0)
        .into_iter()
        .map(|v| E::from_f64(v.to_f64().round()))
        .collect();
    let dx = dev.to_device(&x)?;
    for axes in [&[0usize, 2][..], &[1][..], &[0, 1, 2][..]] {
        let scale = 0.5;
        let want: Vec<E> = cpu::reduce::reduce_axes(
            &x,
            &l,
            axes,
            E::Acc::zero(),
            |a, v: E| a + v.to_acc(),
            |a, _| E::from_acc(a * E::Acc::of_f64(scale)),
        );
        let got = sum_axes(&dx, &l, axes, scale)?;
        assert_close("sum", &got.to_host()?, &want, 4.0);
        let gy: Vec<E> = data(want.len(), 8, -1.0, 1.0);
        let dgy = dev.to_device(&gy)?;
        let gx = sum_backward(&dgy, l.shape(), axes, scale)?;
        let le = cpu::reduce::expand_layout(l.shape(), axes);
        let gx_want = cpu::map(&gy, &le, |v: E| {
            E::from_acc(v.to_acc() * E::Acc::of_f64(scale))
        });
        assert_close("sum backward", &gx.to_host()?, &gx_want, 1.0);

        let (y, c) = cpu::reduce::extreme_axes::<E, true>(&x, &l, axes);
        let (dy, dc) = extreme_axes::<E, true>(&dx, &l, axes)?;
        assert_eq!(dy.to_host()?, y, "max is exact");
        let dcounts: Vec<usize> = dc.to_host()?.into_iter().map(|v| v as usize).collect();
        assert_eq!(dcounts, c, "max tie counts");
        let g = cpu::reduce::extreme_backward(&x, &l, axes, &y, &c, &gy);
        let dg = extreme_backward(&dx, &l, axes, &dy, &dc, &dgy)?;
        assert_close("max backward", &dg.to_host()?, &g, 1.0);
        let (y, c) = cpu::reduce::extreme_axes::<E, false>(&x, &l, axes);
        let (dy, dc) = extreme_axes::<E, false>(&dx, &l, axes)?;
        assert_eq!(dy.to_host()?, y, "min is exact");
        let dcounts: Vec<usize> = dc.to_host()?.into_iter().map(|v| v as usize).collect();
        assert_eq!(dcounts, c, "min tie counts");
    }
    Ok(())
}

#[test]
fn reductions_match_cpu() {
    all_dtypes!("reduce", reduce_case);
}

use num_traits::Zero;

fn softmax_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    // (2, 100, 3) through a permutation; softmax along the middle axis (a
    // strided row, longer than the emulation's blocks) and along the last axis
    let l = Layout::contiguous(&[3, 2, 100]).permute(&[1, 2, 0]);
    let x: Vec<E> = data(l.numel(), 9, -3.0, 3.0);
    let gy: Vec<E> = data(l.numel(), 10, -1.0, 1.0);
    let (dx, dgy) = (dev.to_device(&x)?, dev.to_device(&gy)?);
    for axis in [1, 2] {
        let y = cpu::softmax::softmax_forward::<E, false>(&x, &l, axis);
        assert_close(
            "softmax",
            &softmax_forward::<E, false>(&dx, &l, axis)?.to_host()?,
            &y,
            1.0,
        );
        let ly = cpu::softmax::softmax_forward::<E, true>(&x, &l, axis);
        assert_close(
            "log_softmax",
            &softmax_forward::<E, true>(&dx, &l, axis)?.to_host()?,
            &ly,
            1.0,
        );
        let (dy, dly) = (dev.to_device(&y)?, dev.to_device(&ly)?);
        let g = cpu::softmax::softmax_backward::<E, false>(&y, &gy, l.shape(), axis);
        let dg = softmax_backward::<E, false>(&dy, &dgy, l.shape(), axis)?;
        assert_close("softmax backward", &dg.to_host()?, &g, 2.0);
        let g = cpu::softmax::softmax_backward::<E, true>(&ly, &gy, l.shape(), axis);
        let dg = softmax_backward::<E, true>(&dly, &dgy, l.shape(), axis)?;
        assert_close("log_softmax backward", &dg.to_host()?, &g, 2.0);
    }
    Ok(())
}

#[test]
fn softmax_matches_cpu() {
    all_dtypes!("softmax", softmax_case);
}

fn norm_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    // 6 rows of 300 read through a transpose
    let l = Layout::contiguous(&[300, 6]).permute(&[1, 0]);
    let x: Vec<E> = data(l.numel(), 11, -2.0, 2.0);
    let w: Vec<E> = data(300, 12, 0.5, 1.5);
    let bias: Vec<E> = data(300, 13, -0.5, 0.5);
    let gy: Vec<E> = data(l.numel(), 14, -1.0, 1.0);
    let lw = Layout::contiguous(&[300]);
    let (dx, dw, db, dgy) = (
        dev.to_device(&x)?,
        dev.to_device(&w)?,
        dev.to_device(&bias)?,
        dev.to_device(&gy)?,
    );
    for kind in [NormKind::Layer, NormKind::Rms, NormKind::RmsOffset] {
        for with_params in [true, false] {
            let (wc, bc) = if with_params {
                (Some((&w[..], &lw)), Some((&bias[..], &lw)))
            } else {
                (None, None)
            };
            let (wd, bd) = if with_params {
                (Some((&dw, &lw)), Some((&db, &lw)))
            } else {
                (None, None)
            };
            let (y, st) = cpu::norm::norm_forward(kind, &x, &l, wc, bc, 1e-5);
            let (dy, dst) = norm_forward(kind, &dx, &l, wd, bd, 1e-5)?;
            assert_close("norm", &dy.to_host()?, &y, 2.0);
            let means: Vec<E::Acc> = st.iter().map(|s| s.mean).collect();
            let rstds: Vec<E::Acc> = st.iter().map(|s| s.rstd).collect();
            assert_close_acc("norm mean", E::DTYPE, &dst.mean.to_host()?, &means);
            assert_close_acc("norm rstd", E::DTYPE, &dst.rstd.to_host()?, &rstds);
            let g = cpu::norm::norm_backward(kind, &x, &l, wc, with_params, &st, &gy, None);
            let dg = norm_backward(kind, &dx, &l, wd, with_params, &dst, &dgy)?;
            assert_close(
                "norm grad x",
                &dg.x.to_host()?,
                g.x.as_deref().unwrap(),
                4.0,
            );
            if with_params {
                // sums over 6 rows
                assert_close(
                    "norm grad w",
                    &dg.weight.unwrap().to_host()?,
                    &g.weight.unwrap(),
                    4.0,
                );
                assert_close(
                    "norm grad b",
                    &dg.bias.unwrap().to_host()?,
                    &g.bias.unwrap(),
                    4.0,
                );
            } else {
                assert!(dg.weight.is_none() && dg.bias.is_none());
            }
        }
    }
    Ok(())
}

#[test]
fn norms_match_cpu() {
    all_dtypes!("norm", norm_case);
}

fn index_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    // an embedding table (10, 7) and ids with repeats; also axis 1 of a
    // permuted (3, 10, 4) tensor
    let table: Vec<E> = data(70, 15, -1.0, 1.0);
    let lt = Layout::contiguous(&[10, 7]);
    let ids = [3usize, 0, 9, 3, 3, 7];
    let didx = indices_to_device(dev, &ids, 10)?;
    assert!(indices_to_device(dev, &[10], 10).is_err());
    let dt = dev.to_device(&table)?;
    let y = cpu::index::index_select(&table, &lt, 0, &ids);
    assert_eq!(
        index_select(&dt, &lt, 0, &didx)?.to_host()?,
        y,
        "lookup is exact"
    );
    let gy: Vec<E> = data(ids.len() * 7, 16, -1.0, 1.0);
    let g = cpu::index::index_select_backward(&gy, &[10, 7], 0, &ids);
    let dg = index_select_backward(&dev.to_device(&gy)?, &[10, 7], 0, &didx)?;
    assert_close("embedding backward", &dg.to_host()?, &g, 2.0);

    let l = Layout::contiguous(&[10, 4, 3]).permute(&[2, 0, 1]);
    let x: Vec<E> = data(120, 17, -1.0, 1.0);
    let dx = dev.to_device(&x)?;
    let y = cpu::index::index_select(&x, &l, 1, &ids);
    assert_eq!(
        index_select(&dx, &l, 1, &didx)?.to_host()?,
        y,
        "index_select is exact"
    );
    let gy: Vec<E> = data(3 * ids.len() * 4, 18, -1.0, 1.0);
    let g = cpu::index::index_select_backward(&gy, &[3, 10, 4], 1, &ids);
    let dg = index_select_backward(&dev.to_device(&gy)?, &[3, 10, 4], 1, &didx)?;
    assert_close("index_select backward", &dg.to_host()?, &g, 2.0);
    Ok(())
}

#[test]
fn embedding_and_scatter_add_match_cpu() {
    all_dtypes!("index_select", index_case);
}

fn loss_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    // 5 rows of 37 classes read through a transpose; row 2 ignored
    let l = Layout::contiguous(&[37, 5]).permute(&[1, 0]);
    let x: Vec<E> = data(l.numel(), 19, -3.0, 3.0);
    let targets = [4usize, 36, cpu::loss::IGNORED, 0, 17];
    let t32: Vec<u32> = targets
        .iter()
        .map(|&t| {
            if t == cpu::loss::IGNORED {
                IGNORED
            } else {
                t as u32
            }
        })
        .collect();
    let (dx, dt) = (dev.to_device(&x)?, dev.to_device(&t32)?);
    for eps in [0.0, 0.1] {
        let (sum, st) = cpu::loss::cross_entropy_forward(&x, &l, &targets, eps);
        let (dsum, dst) = cross_entropy_forward(&dx, &l, &dt, eps)?;
        assert_close_acc("cross_entropy", E::DTYPE, &dsum.to_host()?, &[sum]);
        let scale = 0.25;
        let g =
            cpu::loss::cross_entropy_backward(&x, &l, &targets, &st, eps, E::Acc::of_f64(scale));
        let dg = cross_entropy_backward(&dx, &l, &dt, &dst, eps, scale)?;
        assert_close("cross_entropy backward", &dg.to_host()?, &g, 2.0);
    }
    Ok(())
}

#[test]
fn cross_entropy_matches_cpu() {
    all_dtypes!("cross_entropy", loss_case);
}

fn optim_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    let n = 1000;
    let p0: Vec<E> = data(n, 20, -1.0, 1.0);
    for decoupled in [true, false] {
        let (mut p, mut m, mut v) = (p0.clone(), vec![E::Acc::zero(); n], vec![E::Acc::zero(); n]);
        let mut dp = dev.to_device(&p)?;
        let (mut dm, mut dv) = (dev.zeros::<E::Acc>(n)?, dev.zeros::<E::Acc>(n)?);
        for step in 1..=3u64 {
            let g: Vec<E> = data(n, 20 + step, -1.0, 1.0);
            let s = AdamStep {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
                decoupled,
                step,
                // A clipping coefficient on one step.
                grad_scale: if step == 2 { 0.37 } else { 1.0 },
            };
            cpu::optim::adam_update(&mut p, &g, &mut m, &mut v, &s);
            adam_update(&mut dp, &dev.to_device(&g)?, &mut dm, &mut dv, &s)?;
        }
        assert_close("adam param", &dp.to_host()?, &p, 2.0);
        assert_close_acc("adam m", E::DTYPE, &dm.to_host()?, &m);
        assert_close_acc("adam v", E::DTYPE, &dv.to_host()?, &v);
    }
    for (momentum, nesterov) in [(0.0, false), (0.9, false), (0.9, true)] {
        let (mut p, mut buf) = (p0.clone(), vec![E::Acc::zero(); n]);
        let mut dp = dev.to_device(&p)?;
        let mut dbuf = dev.zeros::<E::Acc>(n)?;
        for step in 0..3u64 {
            let g: Vec<E> = data(n, 30 + step, -1.0, 1.0);
            let s = SgdStep {
                lr: 0.05,
                momentum,
                dampening: 0.1,
                nesterov,
                weight_decay: 0.01,
                first: step == 0,
                grad_scale: if step == 1 { 0.37 } else { 1.0 },
            };
            cpu::optim::sgd_update(&mut p, &g, &mut buf, &s);
            sgd_update(&mut dp, &dev.to_device(&g)?, &mut dbuf, &s)?;
        }
        assert_close("sgd param", &dp.to_host()?, &p, 2.0);
    }
    Ok(())
}

#[test]
fn optimizer_updates_match_cpu() {
    all_dtypes!("optimizer", optim_case);
}

fn matmul_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    let (m, k, n) = (33, 70, 17);
    let a: Vec<E> = data(2 * m * k, 40, -1.0, 1.0);
    let b: Vec<E> = data(2 * k * n, 41, -1.0, 1.0);
    let (da, db) = (dev.to_device(&a)?, dev.to_device(&b)?);
    // plain, transposed views, a batch-broadcast rhs, and a strided (copied) lhs
    let la = Layout::contiguous(&[2, m, k]);
    let lat = Layout::contiguous(&[2, k, m]).permute(&[0, 2, 1]);
    let lb = Layout::contiguous(&[2, k, n]);
    let lbt = Layout::contiguous(&[2, n, k]).permute(&[0, 2, 1]);
    let lb_bcast = Layout::new(&[2, k, n], &[0, n, 1], 0);
    let la_strided = Layout::new(&[2, m / 2, k], &[m * k, 2 * k, 1], 0);
    let cases = [
        (la, lb),
        (lat, lb),
        (la, lbt),
        (lat, lbt),
        (la, lb_bcast),
        (lat, lb_bcast),
        (la_strided, lb),
    ];
    // sums of 70 products: the rounding of low-precision outputs dominates
    for (la, lb) in cases {
        let want = cpu::matmul::gemm_batched(&a, &la, &b, &lb);
        let got = gemm_batched(&da, &la, &db, &lb, GemmOptions::default())?;
        assert_close(
            &format!("matmul {:?} x {:?}", la.strides(), lb.strides()),
            &got.to_host()?,
            &want,
            4.0,
        );
    }
    // two batch dims read in place (heads of a `[B, T, H, D]` activation):
    // one strided batch per head, no copy
    let a4: Vec<E> = data(2 * 3 * m * k, 42, -1.0, 1.0);
    let b4: Vec<E> = data(2 * 3 * k * n, 43, -1.0, 1.0);
    let (da4, db4) = (dev.to_device(&a4)?, dev.to_device(&b4)?);
    let la4 = Layout::contiguous(&[2, m, 3, k]).permute(&[0, 2, 1, 3]);
    for lb4 in [
        Layout::contiguous(&[2, 3, k, n]),
        Layout::contiguous(&[2, n, 3, k]).permute(&[0, 2, 3, 1]),
    ] {
        let want = cpu::matmul::gemm_batched(&a4, &la4, &b4, &lb4);
        let got = gemm_batched(&da4, &la4, &db4, &lb4, GemmOptions::default())?;
        assert_close("matmul per head", &got.to_host()?, &want, 4.0);
    }
    // sums over the batch: one deep product where the depth runs on
    // through the batch (a weight's gradient: `lat`, `lb`), else a batch of
    // products and their sum
    for (la, lb) in [(lat, lb), (la, lb), (lat, lbt)] {
        let want = cpu::matmul::gemm_batch_sum(&a, &la, &b, &lb);
        let got = gemm_batch_sum(&da, &la, &db, &lb, GemmOptions::default())?;
        assert_close(
            &format!("batch sum {:?} x {:?}", la.strides(), lb.strides()),
            &got.to_host()?,
            &want,
            6.0,
        );
    }
    // a bias on every row (a linear layer's `x · Wᵀ + b`): cuBLAS's product,
    // then a broadcast add; a bias of the wrong length is an error
    let bias: Vec<E> = data(n, 44, -1.0, 1.0);
    let dbias = dev.to_device(&bias)?;
    for (la, lb) in [(la, lb), (lat, lbt), (la, lb_bcast)] {
        let want = cpu::matmul::gemm_batched_bias(&a, &la, &b, &lb, Some(&bias));
        let got = crate::device::MatmulKernels::gemm_batched_bias(dev, &da, &la, &db, &lb, &dbias)?;
        assert_close("matmul + bias", &got.to_host()?, &want, 4.0);
    }
    let short = dev.to_device(&bias[1..])?;
    assert!(
        crate::device::MatmulKernels::gemm_batched_bias(dev, &da, &la, &db, &lb, &short).is_err()
    );
    let l2a = Layout::contiguous(&[m, k]);
    let l2b = Layout::contiguous(&[k, n]);
    let want = cpu::matmul::gemm(&a, &l2a, &b, &l2b);
    assert_close(
        "gemm 2-D",
        &gemm(&da, &l2a, &db, &l2b, GemmOptions::default())?.to_host()?,
        &want,
        4.0,
    );
    if E::DTYPE == DType::F32 {
        // TF32 rounds inputs to 10 mantissa bits: about 1e-3 relative
        let got = gemm(&da, &l2a, &db, &l2b, GemmOptions { allow_tf32: true })?.to_host()?;
        for (g, w) in got.iter().zip(&want) {
            assert!(close(g.to_f64(), w.to_f64(), 1e-2), "tf32 {g:?} vs {w:?}");
        }
    }
    assert!(gemm_batched(
        &da,
        &la,
        &db,
        &Layout::contiguous(&[2, k + 1, n]),
        GemmOptions::default()
    )
    .is_err());
    Ok(())
}

#[test]
fn matmul_matches_cpu() {
    all_dtypes!("matmul", matmul_case);
}

fn transfer_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    let x: Vec<E> = data(1001, 50, -100.0, 100.0);
    let d = dev.to_device(&x)?;
    assert_eq!(d.len(), 1001);
    let back = d.to_host()?;
    assert!(back
        .iter()
        .zip(&x)
        .all(|(a, b)| a.to_f64().to_bits() == b.to_f64().to_bits()));
    assert!(dev
        .zeros::<E>(17)?
        .to_host()?
        .iter()
        .all(|v| v.to_f64() == 0.0));
    assert!(dev.to_device::<E>(&[])?.to_host()?.is_empty());
    Ok(())
}

#[test]
fn transfers_round_trip_exactly() {
    all_dtypes!("transfer", transfer_case);
}

/// The device kernels' rounding equals the CPU's, bit for bit, over every
/// f8 bit pattern and a sweep of f16/bf16 boundary values (a copy through
/// `to_f32`/`from_f32` conversions via the matmul's fp8 path would hide a
/// difference, so this goes through `MulScalar(1)`).
fn rounding_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    let mut xs: Vec<f32> = (0..=255u8).map(|b| F8E4M3::from_bits(b).to_f32()).collect();
    xs.extend((0..=255u8).map(|b| F8E5M2::from_bits(b).to_f32()));
    xs.extend(data::<f32>(4000, 60, -600.0, 600.0));
    xs.extend(data::<f32>(4000, 61, -1e-3, 1e-3));
    xs.extend([
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e30,
        -1e30,
        65519.0,
        65520.0,
        448.0,
        464.0,
        57344.0,
        61440.0,
    ]);
    // f32 values pass through f32 exactly; the kernel rounds f32 -> E
    let l = Layout::contiguous(&[xs.len()]);
    let d32 = dev.to_device(&xs)?;
    let via: Vec<E> = {
        let mut out = dev.alloc::<E>(xs.len())?;
        dev.launch("rounding", Family::Unary, E::DTYPE, "from_f32")?
            .ptr(&d32)
            .ptr_mut(&mut out)
            .u64(xs.len())
            .run(super::device::grid_for(xs.len()))?;
        out.to_host()?
    };
    let want: Vec<E> = xs.iter().map(|&x| E::from_f32(x)).collect();
    for (i, (g, w)) in via.iter().zip(&want).enumerate() {
        let same = g == w || (g.to_f64().is_nan() && w.to_f64().is_nan());
        assert!(
            same,
            "rounding {} to {}: gpu {g:?} vs cpu {w:?}",
            xs[i],
            E::DTYPE
        );
    }
    // widening is exact
    let back = unary_forward(MulScalar(1.0), &dev.to_device(&want)?, &l)?.to_host()?;
    assert_eq!(back.len(), want.len());
    Ok(())
}

#[test]
fn device_rounding_equals_cpu_rounding() {
    all_dtypes!("rounding", rounding_case);
}

#[test]
fn caching_allocator_reuses_freed_blocks() {
    for dev in devices() {
        allocator_case(&dev);
    }
}

fn allocator_case(dev: &CudaDevice) {
    let before = dev.pool_stats();
    drop(dev.zeros::<f32>(1000).unwrap());
    let b = dev.zeros::<f32>(1000).unwrap(); // same size class: from the cache
    let after = dev.pool_stats();
    assert!(after.hits > before.hits, "{before:?} -> {after:?}");
    drop(b);
    dev.empty_cache();
    assert_eq!(dev.pool_stats().cached_bytes, 0);
}

#[test]
fn errors_name_the_failing_check() {
    for dev in devices() {
        errors_case(&dev);
    }
}

fn errors_case(dev: &CudaDevice) {
    let x = dev.to_device(&[1.0f32; 6]).unwrap();
    // a layout reaching past the buffer is refused before any launch
    let e = unary_forward(Exp, &x, &Layout::contiguous(&[7])).unwrap_err();
    assert!(e.call.contains("layout check"), "{e}");
    let e = binary_forward(
        AddOp,
        &x,
        &Layout::contiguous(&[6]),
        &x,
        &Layout::contiguous(&[2, 3]),
    )
    .unwrap_err();
    assert!(e.call.contains("shape check"), "{e}");
    let e = sum_axes(&x, &Layout::contiguous(&[2, 3]), &[2], 1.0).unwrap_err();
    assert!(e.call.contains("axes check"), "{e}");
    if dev.capability() < Capability::new(8, 9) {
        let f8 = dev.to_device(&[F8E4M3::from_f32(1.0)]).unwrap();
        let e = unary_forward(Exp, &f8, &Layout::contiguous(&[1])).unwrap_err();
        assert!(
            e.reason.contains(dev.name()) && e.reason.contains("f8e4m3"),
            "{e}"
        );
    }
}

#[test]
fn capability_errors_name_op_dtype_and_gpu() {
    let Ok(old) = CudaDevice::emulated(Capability::new(7, 5)) else {
        println!("skipped: host emulation (no host C++ compiler)");
        return;
    };
    let x = old.to_device(&[bf16::from_f32(1.0); 4]).unwrap();
    let e = softmax_forward::<bf16, false>(&x, &Layout::contiguous(&[4]), 0).unwrap_err();
    assert!(
        e.reason.contains("`softmax` in bf16") && e.reason.contains("host emulation"),
        "{e}"
    );
    assert!(
        e.reason.contains("sm_80") && e.reason.contains("sm_75"),
        "{e}"
    );
    let y = old.to_device(&[F8E5M2::from_f32(1.0); 4]).unwrap();
    let e = gemm(
        &y,
        &Layout::contiguous(&[2, 2]),
        &y,
        &Layout::contiguous(&[2, 2]),
        GemmOptions::default(),
    )
    .unwrap_err();
    assert!(
        e.reason.contains("`matmul` in f8e5m2") && e.reason.contains("sm_89"),
        "{e}"
    );
    // f32 runs on it
    let z = old.to_device(&[1.0f32, 2.0]).unwrap();
    let s = sum_axes(&z, &Layout::contiguous(&[2]), &[0], 1.0).unwrap();
    assert_eq!(s.to_host().unwrap(), vec![3.0]);
}

fn shape_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    // a: (2, 1, 3) contiguous; b: (2, 2, 3) read through a permutation of a
    // (3, 2, 2) buffer; c: (2, 3, 3) narrowed from a (2, 5, 3) buffer
    let a: Vec<E> = data(6, 70, -2.0, 2.0);
    let b: Vec<E> = data(12, 71, -2.0, 2.0);
    let c: Vec<E> = data(30, 72, -2.0, 2.0);
    let la = Layout::contiguous(&[2, 1, 3]);
    let lb = Layout::contiguous(&[3, 2, 2]).permute(&[2, 1, 0]);
    let lc = Layout::contiguous(&[2, 5, 3]).narrow(1, 1, 3);
    let (da, db, dc) = (dev.to_device(&a)?, dev.to_device(&b)?, dev.to_device(&c)?);
    let want = cpu::shape::concat(&[(&a[..], &la), (&b[..], &lb), (&c[..], &lc)], 1);
    let got = concat(&[(&da, &la), (&db, &lb), (&dc, &lc)], 1)?;
    assert_eq!(got.to_host()?, want, "concat is exact");
    // along the first axis, parts (1, 2, 3) and (2, 2, 3)
    let l0 = Layout::contiguous(&[1, 2, 3]);
    let want = cpu::shape::concat(&[(&a[..], &l0), (&b[..], &lb)], 0);
    assert_eq!(concat(&[(&da, &l0), (&db, &lb)], 0)?.to_host()?, want);
    assert!(
        concat(&[(&da, &la), (&db, &lb)], 0).is_err(),
        "dims differ off the axis"
    );
    assert!(concat::<E>(&[], 0).is_err());

    let mut want = vec![E::default(); 7];
    cpu::shape::copy_range(&b, &lb, 4, &mut want);
    let mut got = dev.alloc::<E>(7)?;
    copy_range(&db, &lb, 4, &mut got)?;
    assert_eq!(got.to_host()?, want, "copy_range is exact");
    assert!(copy_range(&db, &lb, 6, &mut got).is_err());

    // dst (2, 4, 3) += src (2, 2, 3) at rows 1..3 of axis 1
    let dims = [2, 4, 3];
    let mut dst: Vec<E> = data(24, 73, -1.0, 1.0);
    let src: Vec<E> = data(12, 74, -1.0, 1.0);
    let mut ddst = dev.to_device(&dst)?;
    add_narrow_into(&mut ddst, &dims, 1, 1, 2, &dev.to_device(&src)?)?;
    cpu::shape::add_narrow_into(&mut dst, &dims, 1, 1, 2, &src);
    assert_close("add_narrow_into", &ddst.to_host()?, &dst, 1.0);
    assert!(add_narrow_into(&mut ddst, &dims, 1, 3, 2, &dev.to_device(&src)?).is_err());
    Ok(())
}

#[test]
fn shape_ops_match_cpu() {
    all_dtypes!("shape", shape_case);
}

/// Bit patterns, for exact comparisons that also hold for NaN and -0.
fn bits_of<E: Dtype>(v: &[E]) -> Vec<u64> {
    v.iter().map(|x| x.to_f64().to_bits()).collect()
}

fn mask_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    // a permuted (2, 3, 4) operand, a (3, 4) mask broadcast over the batch
    let l = permuted();
    let lm = Layout::new(&[2, 3, 4], &[0, 4, 1], 0);
    let lc = Layout::contiguous(&[2, 3, 4]);
    let mask: Vec<bool> = (0..12).map(|i| (i * 7) % 3 == 0).collect();
    let a: Vec<E> = data(24, 80, -2.0, 2.0);
    let b: Vec<E> = data(24, 81, -2.0, 2.0);
    let (dm, da, db) = (
        dev.to_device(&mask)?,
        dev.to_device(&a)?,
        dev.to_device(&b)?,
    );
    let want = cpu::mask::where_select(&mask, &lm, &a, &l, &b, &lc);
    let got = where_select(&dm, &lm, &da, &l, &db, &lc)?;
    assert_eq!(bits_of(&got.to_host()?), bits_of(&want), "where");
    for keep in [true, false] {
        let want = cpu::mask::mask_grad(&mask, &lm, &b, keep);
        let got = mask_grad(&dm, &lm, &db, keep)?;
        assert_eq!(bits_of(&got.to_host()?), bits_of(&want), "mask_grad");
    }
    let v = E::from_f64(-1.5);
    let want = cpu::mask::masked_fill(&a, &l, &mask, &lm, v);
    let got = masked_fill(&da, &l, &dm, &lm, v)?;
    assert_eq!(bits_of(&got.to_host()?), bits_of(&want), "masked_fill");
    assert!(where_select(&dm, &Layout::contiguous(&[12]), &da, &l, &db, &lc).is_err());
    for (lower, diag) in [
        (true, 0),
        (true, 1),
        (false, -1),
        (false, 2),
        (true, i64::MIN),
    ] {
        let want = cpu::mask::tri(&a, &l, lower, diag);
        let got = tri(&da, &l, lower, diag)?;
        assert_eq!(
            bits_of(&got.to_host()?),
            bits_of(&want),
            "tri {lower} {diag}"
        );
    }
    assert!(tri(&da, &Layout::contiguous(&[24]), true, 0).is_err());

    // dropout: the device mask is the CPU's, bit for bit
    let n = 3000;
    let x: Vec<E> = data(n, 82, 0.5, 1.5);
    let lx = Layout::contiguous(&[n / 30, 30]).permute(&[1, 0]);
    let dx = dev.to_device(&x)?;
    for (seed, p) in [(7u64, 0.1), (u64::MAX, 0.5), (12345, 0.9)] {
        let scale = 1.0 / (1.0 - p);
        let want = cpu::mask::dropout(&x, &lx, cpu::mask::dropout_keep(seed, p), scale);
        let got = dropout(&dx, &lx, seed, p, scale)?.to_host()?;
        assert_eq!(bits_of(&got), bits_of(&want), "dropout seed {seed} p {p}");
        let kept = got.iter().filter(|v| v.to_f64() != 0.0).count() as f64 / n as f64;
        assert!((kept - (1.0 - p)).abs() < 0.05, "kept {kept} at p {p}");
        // the backward: the same mask on the contiguous gradient
        let g: Vec<E> = data(n, 83, -1.0, 1.0);
        let lg = Layout::contiguous(&[n]);
        let want = cpu::mask::dropout(&g, &lg, cpu::mask::dropout_keep(seed, p), scale);
        let got = dropout(&dev.to_device(&g)?, &lg, seed, p, scale)?;
        assert_eq!(bits_of(&got.to_host()?), bits_of(&want), "dropout backward");
    }
    Ok(())
}

#[test]
fn masks_and_dropout_match_cpu() {
    all_dtypes!("mask", mask_case);
}

#[test]
fn dropout_draws_are_splitmix_of_the_counter() {
    // the first draws of stream 0, by hand from SplitMix64's finalizer
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    for (seed, i) in [(0u64, 0u64), (0, 1), (42, 1 << 40), (u64::MAX, 3)] {
        let bits = mix(mix(seed) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03));
        assert_eq!(
            crate::rng::uniform(seed, i),
            (bits >> 11) as f64 / (1u64 << 53) as f64
        );
    }
    let keep = cpu::mask::dropout_keep(9, 0.25);
    let kept = (0..10_000).filter(|&i| keep(i)).count();
    assert!((7_000..8_000).contains(&kept), "{kept}");
}

fn rope_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    // (B, H, T, hd) = (2, 2, 5, 6) read from a (B, T, H, hd) buffer
    let l = Layout::contiguous(&[2, 5, 2, 6]).permute(&[0, 2, 1, 3]);
    let x: Vec<E> = data(l.numel(), 90, -2.0, 2.0);
    let dx = dev.to_device(&x)?;
    for (base, offset) in [(10000.0, 3), (100.0, 0)] {
        let (c, s) = cpu::rotary::rope_tables::<E::Acc>(5, 6, base, offset);
        let (dc, ds) = rope_tables::<E::Acc>(dev, 5, 6, base, offset)?;
        assert_close_acc("rope cos", E::DTYPE, &dc.to_host()?, &c);
        assert_close_acc("rope sin", E::DTYPE, &ds.to_host()?, &s);
        for inverse in [false, true] {
            let want = cpu::rotary::rope(&x, &l, base, offset, inverse);
            let got = rope(&dx, &l, base, offset, inverse)?;
            assert_close("rope", &got.to_host()?, &want, 2.0);
            let again = rope_apply(&dx, &l, (&dc, &ds), inverse)?;
            assert_eq!(bits_of(&again.to_host()?), bits_of(&got.to_host()?));
        }
    }
    // the inverse undoes the rotation (up to rounding)
    let lc = Layout::contiguous(&[2, 2, 5, 6]);
    let y = rope(&dx, &l, 10000.0, 1, false)?;
    let back = rope(&y, &lc, 10000.0, 1, true)?;
    assert_close(
        "rope round trip",
        &back.to_host()?,
        &cpu::to_contiguous(&x, &l),
        4.0,
    );
    assert!(rope(
        &dx,
        &Layout::contiguous(&[2, 5, 2, 6]).narrow(3, 0, 5),
        1.0,
        0,
        false
    )
    .is_err());
    Ok(())
}

#[test]
fn rope_matches_cpu() {
    all_dtypes!("rope", rope_case);
}

fn clip_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    // two "gradients": one longer than a partial block, one short
    let g1: Vec<E> = data(9000, 100, -1.0, 1.0);
    let g2: Vec<E> = data(37, 101, -3.0, 3.0);
    let (d1, d2) = (dev.to_device(&g1)?, dev.to_device(&g2)?);
    let (s1, s2) = (cpu::optim::sum_squares(&g1), cpu::optim::sum_squares(&g2));
    let rel = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
    let got = sum_squares(&d1)?.to_host()?[0];
    assert!(rel(got, s1), "sum_squares {got} vs {s1}");
    assert_eq!(sum_squares(&d1)?.to_host()?[0], got, "deterministic");
    assert_eq!(sum_squares(&dev.to_device::<E>(&[])?)?.to_host()?, [0.0]);
    let mut total = dev.zeros::<f64>(1)?;
    add_sum_squares(&d1, &mut total)?;
    add_sum_squares(&d2, &mut total)?;
    let t = total.to_host()?[0];
    assert!(rel(t, s1 + s2), "total {t} vs {}", s1 + s2);
    // clip to norm 10 on the device, as clip_grad_norm does on the host
    let coef = clip_coef(&total, 10.0)?;
    let want_coef = (10.0 / ((s1 + s2).sqrt() + 1e-6)).min(1.0);
    assert!(rel(coef.to_host()?[0], want_coef));
    let mut d = d2;
    scale_in_place_by(&mut d, &coef)?;
    let mut want = g2.clone();
    cpu::optim::scale_in_place(&mut want, coef.to_host()?[0]);
    assert_eq!(
        bits_of(&d.to_host()?),
        bits_of(&want),
        "scale by a device factor"
    );
    let mut d = d1;
    scale_in_place(&mut d, 0.3)?;
    let mut want = g1.clone();
    cpu::optim::scale_in_place(&mut want, 0.3);
    assert_eq!(bits_of(&d.to_host()?), bits_of(&want), "scale_in_place");
    assert_eq!(clip_coef(&dev.zeros::<f64>(1)?, 1.0)?.to_host()?, [1.0]);
    Ok(())
}

#[test]
fn sum_squares_and_clipping_match_cpu() {
    all_dtypes!("clip", clip_case);
}

/// Attention of (B, H, Tq, D) queries against (B, H, Tk, D/Dv) keys and
/// values under every mask, the operands stored as (B, T, H, D) when
/// `permuted`; the backward gets the CPU's saved output and logsumexp.
fn attention_check<E: CudaFloat>(
    dev: &CudaDevice,
    (b, h, tq, tk, d, dv): (usize, usize, usize, usize, usize, usize),
    permuted: bool,
    masks: &[usize],
) -> Result<(), CudaError> {
    let lay = |t: usize, w: usize| {
        if permuted {
            Layout::contiguous(&[b, t, h, w]).permute(&[0, 2, 1, 3])
        } else {
            Layout::contiguous(&[b, h, t, w])
        }
    };
    let (ql, kl, vl, gl) = (lay(tq, d), lay(tk, d), lay(tk, dv), lay(tq, dv));
    let q: Vec<E> = data(b * h * tq * d, 110, -1.0, 1.0);
    let k: Vec<E> = data(b * h * tk * d, 111, -1.0, 1.0);
    let v: Vec<E> = data(b * h * tk * dv, 112, -1.0, 1.0);
    let g: Vec<E> = data(b * h * tq * dv, 113, -1.0, 1.0);
    let (dq_, dk_, dv_, dg) = (
        dev.to_device(&q)?,
        dev.to_device(&k)?,
        dev.to_device(&v)?,
        dev.to_device(&g)?,
    );
    // batch 0: every third key padded; batch 1 (if any): every key padded
    let pad: Vec<bool> = (0..b * tk).map(|n| n / tk == 1 || n % 3 == 1).collect();
    let dpad = dev.to_device(&pad)?;
    let all = cpu::attention::test_masks(&pad);
    let scale = 0.7;
    for (&mi, path) in masks.iter().flat_map(|mi| {
        [
            (mi, AttentionPath::Fused),
            (mi, AttentionPath::Materialized),
        ]
    }) {
        let m = &all[mi];
        let dm = CudaAttnMask::from_cpu(m, m.padding.map(|_| &dpad));
        let what =
            |s: &str| format!("attention {s} ({path:?}, mask {mi}, {b}x{h}x{tq}x{tk}x{d}x{dv})");
        let head_major = cpu::attention::HeadsOrder::HeadMajor;
        let (o, lse) =
            cpu::attention::attention_forward(&q, &ql, &k, &kl, &v, &vl, m, scale, head_major);
        let (go, glse) = attention_forward(path, &dq_, &ql, &dk_, &kl, &dv_, &vl, &dm, scale)?;
        assert_close(&what("out"), &go.to_host()?, &o, 4.0);
        assert_close_acc(&what("lse"), E::DTYPE, &glse.to_host()?, &lse);
        let (gq, gk, gv) = cpu::attention::attention_backward(
            &q, &ql, &k, &kl, &v, &vl, &o, &lse, &g, &gl, m, scale, head_major,
        );
        let (dgq, dgk, dgv) = attention_backward(
            path,
            &dq_,
            &ql,
            &dk_,
            &kl,
            &dv_,
            &vl,
            &dev.to_device(&o)?,
            &dev.to_device(&lse)?,
            &dg,
            &gl,
            &dm,
            scale,
        )?;
        assert_close(&what("dq"), &dgq.to_host()?, &gq, 4.0);
        assert_close(&what("dk"), &dgk.to_host()?, &gk, 4.0);
        assert_close(&what("dv"), &dgv.to_host()?, &gv, 4.0);
    }
    Ok(())
}

fn attention_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    // every mask, two key tiles (37 keys), odd widths
    attention_check::<E>(dev, (2, 2, 7, 37, 5, 3), true, &[0, 1, 2, 3, 4, 5, 6])?;
    // two query blocks (66 rows), widths over one staged chunk (35, 33)
    attention_check::<E>(dev, (1, 2, 66, 40, 35, 33), false, &[1, 2, 4])?;
    Ok(())
}

#[test]
fn attention_matches_cpu() {
    all_dtypes!("attention", attention_case);
}

/// The device trait's results stored sequence-major (`(B, T, H, W)`, the
/// CUDA kernels' head-major results reordered) match the CPU's.
#[test]
fn attention_seq_major_results_match_cpu() {
    use crate::cpu::attention::{AttnMask, HeadsOrder};
    use crate::device::{AttentionKernels, Cpu};
    let (b, h, tq, tk, d) = (2, 3, 9, 9, 4);
    let lay = |t: usize| Layout::contiguous(&[b, t, h, d]).permute(&[0, 2, 1, 3]);
    let (q, k, v, g): (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) = (
        data(b * h * tq * d, 120, -1.0, 1.0),
        data(b * h * tk * d, 121, -1.0, 1.0),
        data(b * h * tk * d, 122, -1.0, 1.0),
        data(b * h * tq * d, 123, -1.0, 1.0),
    );
    let mask = AttnMask {
        causal: true,
        ..Default::default()
    };
    let order = HeadsOrder::SeqMajor;
    let (l, gl) = (lay(tq), order.layout([b, h, tq, d]));
    let (o, lse) = Cpu
        .attention_forward(&q, &l, &k, &l, &v, &l, &mask, 0.5, order)
        .unwrap();
    let (gq, gk, gv) = Cpu
        .attention_backward(&q, &l, &k, &l, &v, &l, &o, &lse, &g, &gl, &mask, 0.5, order)
        .unwrap();
    for dev in devices() {
        let up = |x: &[f32]| dev.to_device(x).unwrap();
        let (dq, dk, dv) = (up(&q), up(&k), up(&v));
        let (go, glse) = dev
            .attention_forward(&dq, &l, &dk, &l, &dv, &l, &mask, 0.5, order)
            .unwrap();
        assert_close("seq-major out", &go.to_host().unwrap(), &o, 4.0);
        let (dgq, dgk, dgv) = dev
            .attention_backward(
                &dq,
                &l,
                &dk,
                &l,
                &dv,
                &l,
                &go,
                &glse,
                &up(&g),
                &gl,
                &mask,
                0.5,
                order,
            )
            .unwrap();
        assert_close("seq-major dq", &dgq.to_host().unwrap(), &gq, 4.0);
        assert_close("seq-major dk", &dgk.to_host().unwrap(), &gk, 4.0);
        assert_close("seq-major dv", &dgv.to_host().unwrap(), &gv, 4.0);
    }
}

#[test]
fn attention_edge_cases() {
    for dev in devices() {
        let l = |t: usize, w: usize| Layout::contiguous(&[1, 2, t, w]);
        let q = dev.to_device(&[1.0f32; 6]).unwrap();
        let none = dev.to_device::<f32>(&[]).unwrap();
        let m = CudaAttnMask::default();
        // no keys: zero output, -inf logsumexp
        let (o, lse) = attention_forward(
            AttentionPath::Auto,
            &q,
            &l(3, 1),
            &none,
            &l(0, 1),
            &none,
            &l(0, 2),
            &m,
            1.0,
        )
        .unwrap();
        assert_eq!(o.to_host().unwrap(), vec![0.0; 12]);
        assert!(lse
            .to_host()
            .unwrap()
            .iter()
            .all(|x| *x == f32::NEG_INFINITY));
        // zero-width values: empty output, -inf logsumexp
        let k = dev.to_device(&[1.0f32; 4]).unwrap();
        let (o, lse) = attention_forward(
            AttentionPath::Auto,
            &q,
            &l(3, 1),
            &k,
            &l(2, 1),
            &none,
            &l(2, 0),
            &m,
            1.0,
        )
        .unwrap();
        assert!(o.is_empty());
        assert!(lse
            .to_host()
            .unwrap()
            .iter()
            .all(|x| *x == f32::NEG_INFINITY));
        // disagreeing shapes and a short padding mask are errors, not panics
        let e = attention_forward(
            AttentionPath::Auto,
            &q,
            &l(3, 1),
            &k,
            &l(2, 2),
            &k,
            &l(2, 1),
            &m,
            1.0,
        )
        .unwrap_err();
        assert!(e.call.contains("shape check"), "{e}");
        let pad = dev.to_device(&[false]).unwrap();
        let pm = CudaAttnMask {
            padding: Some(&pad),
            ..Default::default()
        };
        assert!(attention_forward(
            AttentionPath::Auto,
            &q,
            &l(3, 1),
            &k,
            &l(2, 1),
            &k,
            &l(2, 1),
            &pm,
            1.0
        )
        .is_err());
    }
}

fn reduce_more_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    // (3, 12, 5) read through a permutation, with ties (rounded values) and,
    // in the second buffer, infinities and a NaN
    let l = Layout::contiguous(&[5, 3, 12]).permute(&[1, 2, 0]);
    let n = l.numel();
    let x: Vec<E> = data::<E>(n, 120, -4.0, 4.0)
        .into_iter()
        .map(|v| E::from_f64((v.to_f64() * 2.0).round() / 2.0))
        .collect();
    let mut special = x.clone();
    special[7] = E::from_f64(f64::NEG_INFINITY);
    special[8] = E::from_f64(f64::INFINITY);
    special[100] = E::from_f64(f64::NAN);
    special[101] = E::from_f64(f64::NEG_INFINITY);
    let (dx, ds) = (dev.to_device(&x)?, dev.to_device(&special)?);
    for axes in [&[0usize, 2][..], &[1][..], &[0, 1, 2][..]] {
        for correction in [1, axes.len() - 1] {
            let (v, m) = cpu::reduce::var_axes(&x, &l, axes, correction);
            let (dv, dm) = var_axes(&dx, &l, axes, correction)?;
            assert_close("var", &dv.to_host()?, &v, 4.0);
            assert_close_acc("var mean", E::DTYPE, &dm.to_host()?, &m);
            let gy: Vec<E> = data(v.len(), 121, -1.0, 1.0);
            let g = cpu::reduce::var_backward(&x, &l, axes, &m, correction, &gy);
            let dg = var_backward(
                &dx,
                &l,
                axes,
                &dev.to_device(&m)?,
                correction,
                &dev.to_device(&gy)?,
            )?;
            assert_close("var backward", &dg.to_host()?, &g, 2.0);
        }
        for (src, dsrc) in [(&x, &dx), (&special, &ds)] {
            let lse = cpu::reduce::logsumexp_axes(src, &l, axes);
            let dl = logsumexp_axes(dsrc, &l, axes)?;
            assert_close_acc("logsumexp", E::DTYPE, &dl.to_host()?, &lse);
            let gy: Vec<E> = data(lse.len(), 122, -1.0, 1.0);
            let g = cpu::reduce::logsumexp_backward(src, &l, axes, &lse, &gy);
            let dg =
                logsumexp_backward(dsrc, &l, axes, &dev.to_device(&lse)?, &dev.to_device(&gy)?)?;
            assert_close("logsumexp backward", &dg.to_host()?, &g, 2.0);
            let want = cpu::reduce::arg_extreme_axes::<E, true>(src, &l, axes);
            let got: Vec<usize> = arg_extreme_axes::<E, true>(dsrc, &l, axes)?
                .to_host()?
                .into_iter()
                .map(|i| i as usize)
                .collect();
            assert_eq!(got, want, "argmax over {axes:?}");
            let want = cpu::reduce::arg_extreme_axes::<E, false>(src, &l, axes);
            let got: Vec<usize> = arg_extreme_axes::<E, false>(dsrc, &l, axes)?
                .to_host()?
                .into_iter()
                .map(|i| i as usize)
                .collect();
            assert_eq!(got, want, "argmin over {axes:?}");
        }
    }
    // a block no longer than the correction divides by zero (NaN), as on the CPU
    let l1 = Layout::contiguous(&[4, 1]);
    let (v, _) = cpu::reduce::var_axes(&x[..4], &l1, &[1], 1);
    let (dv, _) = var_axes(&dev.to_device(&x[..4])?, &l1, &[1], 1)?;
    assert_close("var of one", &dv.to_host()?, &v, 1.0);
    // empty blocks: logsumexp -inf, argmax 0
    let l0 = Layout::contiguous(&[3, 0]);
    let e = dev.to_device::<E>(&[])?;
    assert_eq!(
        logsumexp_axes(&e, &l0, &[1])?.to_host()?,
        vec![<E::Acc as num_traits::Float>::neg_infinity(); 3]
    );
    assert_eq!(
        arg_extreme_axes::<E, true>(&e, &l0, &[1])?.to_host()?,
        vec![0; 3]
    );
    Ok(())
}

#[test]
fn variance_logsumexp_and_argmax_match_cpu() {
    all_dtypes!("reduce more", reduce_more_case);
}

fn gather_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    // x (3, 10, 4) read through a permutation; ids (3, 6, 2) along axis 1
    // (smaller than x on the last axis, repeated ids), and (2, 4) along axis 0
    let l = Layout::contiguous(&[10, 4, 3]).permute(&[2, 0, 1]);
    let x: Vec<E> = data(120, 130, -1.0, 1.0);
    let dx = dev.to_device(&x)?;
    for (axis, idx_dims) in [
        (1usize, vec![3usize, 6, 2]),
        (0, vec![2, 4, 4]),
        (2, vec![3, 10, 5]),
    ] {
        let a = l.shape()[axis];
        let n: usize = idx_dims.iter().product();
        let idx: Vec<usize> = (0..n).map(|i| (i * 7 + i / 3) % a).collect();
        let didx = indices_to_device(dev, &idx, a)?;
        let want = cpu::index::gather(&x, &l, axis, &idx, &idx_dims);
        let got = gather(&dx, &l, axis, &didx, &idx_dims)?;
        assert_eq!(
            bits_of(&got.to_host()?),
            bits_of(&want),
            "gather along {axis}"
        );
        let gy: Vec<E> = data(n, 131, -1.0, 1.0);
        let g = cpu::index::gather_backward(&gy, l.shape(), axis, &idx, &idx_dims);
        let dg = gather_backward(&dev.to_device(&gy)?, l.shape(), axis, &didx, &idx_dims)?;
        assert_close("gather backward", &dg.to_host()?, &g, 2.0);
    }
    // ids larger than x off the axis are refused
    let didx = indices_to_device(dev, &[0; 12], 3)?;
    assert!(gather(&dx, &l, 1, &didx, &[4, 3, 1]).is_err());

    let gy: Vec<E> = data(40, 132, -1.0, 1.0);
    let dgy = dev.to_device(&gy[..12])?;
    for (axis, index) in [(0usize, 2usize), (1, 9), (2, 0)] {
        let dims = [3usize, 10, 4];
        let want = cpu::index::select_backward(&gy[..120 / dims[axis]], &dims, axis, index);
        let got = select_backward(&dev.to_device(&gy[..120 / dims[axis]])?, &dims, axis, index)?;
        assert_eq!(
            bits_of(&got.to_host()?),
            bits_of(&want),
            "select backward {axis}"
        );
    }
    assert!(select_backward(&dgy, &[3, 10, 4], 1, 10).is_err());
    Ok(())
}

#[test]
fn gather_and_select_backward_match_cpu() {
    all_dtypes!("gather", gather_case);
}

fn mse_bce_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    // a permuted (2, 3, 4) against a broadcast (3, 4); and (1250, 4), more
    // than one partial sum
    let cases = [
        (
            permuted(),
            Layout::new(&[2, 3, 4], &[0, 4, 1], 0),
            24usize,
            12usize,
        ),
        (
            Layout::contiguous(&[4, 1250]).permute(&[1, 0]),
            Layout::contiguous(&[1250, 4]),
            5000,
            5000,
        ),
    ];
    for (la, lb, na, nb) in cases {
        let a: Vec<E> = data(na, 140, -2.0, 2.0);
        let b: Vec<E> = data(nb, 141, -2.0, 2.0);
        // targets in [0, 1] for the BCE
        let t: Vec<E> = data(nb, 142, 0.0, 1.0);
        let (da, db, dt) = (dev.to_device(&a)?, dev.to_device(&b)?, dev.to_device(&t)?);
        let s = cpu::loss::mse_forward(&a, &la, &b, &lb);
        assert_close_acc(
            "mse",
            E::DTYPE,
            &mse_forward(&da, &la, &db, &lb)?.to_host()?,
            &[s],
        );
        let (ga, gb) = cpu::loss::mse_backward(&a, &la, &b, &lb, E::Acc::of_f64(0.25));
        let (dga, dgb) = mse_backward(&da, &la, &db, &lb, 0.25)?;
        assert_close("mse grad a", &dga.to_host()?, &ga, 1.0);
        assert_close("mse grad b", &dgb.to_host()?, &gb, 1.0);

        let classes = *la.shape().last().unwrap();
        let pw: Vec<E::Acc> = (0..classes)
            .map(|i| E::Acc::of_f64(0.5 + 0.25 * i as f64))
            .collect();
        let dpw = dev.to_device(&pw)?;
        for weight in [None, Some(&pw[..])] {
            let dw = weight.map(|_| &dpw);
            let s = cpu::loss::bce_logits_forward(&a, &la, &t, &lb, weight);
            let ds = bce_logits_forward(&da, &la, &dt, &lb, dw)?;
            assert_close_acc("bce", E::DTYPE, &ds.to_host()?, &[s]);
            let (gx, gy, gp) =
                cpu::loss::bce_logits_backward(&a, &la, &t, &lb, weight, E::Acc::of_f64(0.5));
            let (dgx, dgy, dgp) = bce_logits_backward(&da, &la, &dt, &lb, dw, 0.5)?;
            assert_close("bce grad x", &dgx.to_host()?, &gx, 2.0);
            assert_close("bce grad y", &dgy.to_host()?, &gy, 2.0);
            match (gp, dgp) {
                (Some(w), Some(d)) => assert_close("bce grad pos_weight", &d.to_host()?, &w, 8.0),
                (None, None) => {}
                _ => panic!("pos_weight gradient presence differs"),
            }
        }
    }
    let x = dev.to_device(&[E::from_f64(1.0); 4])?;
    let l4 = Layout::contiguous(&[4]);
    assert!(mse_forward(&x, &l4, &x, &Layout::contiguous(&[2, 2])).is_err());
    let empty = dev.to_device::<E::Acc>(&[])?;
    assert!(bce_logits_forward(&x, &l4, &x, &l4, Some(&empty)).is_err());
    Ok(())
}

#[test]
fn mse_and_bce_match_cpu() {
    all_dtypes!("mse/bce", mse_bce_case);
}

fn conv_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    use cpu::conv::Window2d;
    // x (2, 4, 5, 6) stored as (N, H, W, C); two groups with stride, padding
    // and dilation; and one group, padding 1, no bias
    let lx = Layout::contiguous(&[2, 5, 6, 4]).permute(&[0, 3, 1, 2]);
    let x: Vec<E> = data(lx.numel(), 150, -1.0, 1.0);
    let dx = dev.to_device(&x)?;
    let cases = [
        (
            [6usize, 2, 3, 2],
            2usize,
            Window2d {
                kernel: [3, 2],
                stride: [2, 1],
                padding: [1, 0],
                dilation: [1, 2],
            },
            true,
        ),
        (
            [3, 4, 2, 2],
            1,
            Window2d {
                kernel: [2, 2],
                stride: [1, 1],
                padding: [1, 1],
                dilation: [1, 1],
            },
            false,
        ),
    ];
    for (wd, groups, win, with_bias) in cases {
        let lw = Layout::contiguous(&wd);
        let w: Vec<E> = data(lw.numel(), 151, -1.0, 1.0);
        let b: Vec<E> = data(wd[0], 152, -1.0, 1.0);
        let lb = Layout::contiguous(&[wd[0]]);
        let (dw, db) = (dev.to_device(&w)?, dev.to_device(&b)?);
        let (cb, gb) = if with_bias {
            (Some((&b[..], &lb)), Some((&db, &lb)))
        } else {
            (None, None)
        };
        let y = cpu::conv::conv2d_forward(&x, &lx, &w, &lw, cb, groups, &win);
        let dy = conv2d_forward(&dx, &lx, &dw, &lw, gb, groups, &win)?;
        assert_close("conv2d", &dy.to_host()?, &y, 4.0);
        let gy: Vec<E> = data(y.len(), 153, -1.0, 1.0);
        let g = cpu::conv::conv2d_backward(&x, &lx, &w, &lw, with_bias, groups, &win, &gy);
        let dg = conv2d_backward(
            &dx,
            &lx,
            &dw,
            &lw,
            with_bias,
            groups,
            &win,
            &dev.to_device(&gy)?,
        )?;
        assert_close("conv2d grad x", &dg.x.to_host()?, &g.x, 4.0);
        assert_close("conv2d grad w", &dg.weight.to_host()?, &g.weight, 8.0);
        match (g.bias, dg.bias) {
            (Some(c), Some(d)) => assert_close("conv2d grad b", &d.to_host()?, &c, 8.0),
            (None, None) => {}
            _ => panic!("bias gradient presence differs"),
        }
    }
    let bad = Layout::contiguous(&[6, 3, 3, 2]);
    let w: Vec<E> = data(bad.numel(), 154, -1.0, 1.0);
    assert!(conv2d_forward(&dx, &lx, &dev.to_device(&w)?, &bad, None, 2, &cases[0].2).is_err());
    Ok(())
}

#[test]
fn conv2d_matches_cpu() {
    all_dtypes!("conv2d", conv_case);
}

fn pool_bn_case<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    use cpu::conv::{adaptive_ranges, window_ranges, AvgDivisor};
    // x (2, 3, 5, 4) stored as (N, H, W, C), rounded values (ties in max)
    let lx = Layout::contiguous(&[2, 5, 4, 3]).permute(&[0, 3, 1, 2]);
    let dims = [2usize, 3, 5, 4];
    let x: Vec<E> = data::<E>(lx.numel(), 160, -2.0, 2.0)
        .into_iter()
        .map(|v| E::from_f64((v.to_f64() * 2.0).round() / 2.0))
        .collect();
    let dx = dev.to_device(&x)?;
    // 2x2 windows, stride 2, padding 1; 1-wide stride-2 windows whose first
    // lies in the padding (empty); adaptive windows
    let windows = [
        (window_ranges(5, 3, 2, 2, 1), window_ranges(4, 3, 2, 2, 1)),
        (window_ranges(5, 3, 1, 2, 1), window_ranges(4, 2, 2, 2, 0)),
        (adaptive_ranges(5, 3), adaptive_ranges(4, 3)),
    ];
    for (rows, cols) in &windows {
        let (y, a) = cpu::conv::max_pool2d_forward(&x, &lx, rows, cols);
        let (dy, da) = max_pool2d_forward(&dx, &lx, rows, cols)?;
        assert_eq!(bits_of(&dy.to_host()?), bits_of(&y), "max_pool2d");
        let da: Vec<usize> = da
            .to_host()?
            .into_iter()
            .map(|v| {
                if v == NO_ARGMAX {
                    usize::MAX
                } else {
                    v as usize
                }
            })
            .collect();
        assert_eq!(da, a, "max_pool2d argmax");
        let gy: Vec<E> = data(y.len(), 161, -1.0, 1.0);
        let dgy = dev.to_device(&gy)?;
        let a32: Vec<u32> = a
            .iter()
            .map(|&v| if v == usize::MAX { NO_ARGMAX } else { v as u32 })
            .collect();
        let g = cpu::conv::max_pool2d_backward(&gy, &a, dims);
        let dg = max_pool2d_backward(&dgy, &dev.to_device(&a32)?, dims)?;
        assert_close("max_pool2d backward", &dg.to_host()?, &g, 2.0);
        for div in [AvgDivisor::Fixed(4), AvgDivisor::Count] {
            if matches!(div, AvgDivisor::Count) && rows.iter().chain(cols).any(|r| r.0 == r.1) {
                continue; // an empty window divides by zero
            }
            let y = cpu::conv::avg_pool2d_forward(&x, &lx, rows, cols, div);
            let dy = avg_pool2d_forward(&dx, &lx, rows, cols, div)?;
            assert_close("avg_pool2d", &dy.to_host()?, &y, 2.0);
            let g = cpu::conv::avg_pool2d_backward(&gy, dims, rows, cols, div);
            let dg = avg_pool2d_backward(&dgy, dims, rows, cols, div)?;
            assert_close("avg_pool2d backward", &dg.to_host()?, &g, 2.0);
        }
    }
    assert!(max_pool2d_forward(&dx, &lx, &[(0, 6)], &[(0, 1)]).is_err());

    // batch norm: batch statistics (training) and running ones (eval)
    let w: Vec<E> = data(3, 162, 0.5, 1.5);
    let b: Vec<E> = data(3, 163, -0.5, 0.5);
    let lc = Layout::contiguous(&[3]);
    let (dw, db) = (dev.to_device(&w)?, dev.to_device(&b)?);
    let gy: Vec<E> = data(x.len(), 164, -1.0, 1.0);
    let dgy = dev.to_device(&gy)?;
    let st = cpu::conv::batch_norm_stats(&x, &lx, 1e-5);
    let dst = batch_norm_stats(&dx, &lx, 1e-5)?;
    assert_close_acc("bn mean", E::DTYPE, &dst.mean.to_host()?, &st.mean);
    assert_close_acc("bn var", E::DTYPE, &dst.var.to_host()?, &st.var);
    assert_close_acc("bn rstd", E::DTYPE, &dst.rstd.to_host()?, &st.rstd);
    let rm: Vec<E> = data(3, 165, -0.5, 0.5);
    let rv: Vec<E> = data(3, 166, 0.5, 2.0);
    let rst = cpu::conv::running_stats((&rm[..], &lc), (&rv[..], &lc), 1e-5);
    let drst = running_stats(
        (&dev.to_device(&rm)?, &lc),
        (&dev.to_device(&rv)?, &lc),
        1e-5,
    )?;
    assert_close_acc(
        "bn running rstd",
        E::DTYPE,
        &drst.rstd.to_host()?,
        &rst.rstd,
    );
    for (stats, dstats, training) in [(&st, &dst, true), (&rst, &drst, false)] {
        for with_params in [true, false] {
            let (cw, cb) = if with_params {
                (Some((&w[..], &lc)), Some((&b[..], &lc)))
            } else {
                (None, None)
            };
            let (gw, gb) = if with_params {
                (Some((&dw, &lc)), Some((&db, &lc)))
            } else {
                (None, None)
            };
            let y = cpu::conv::batch_norm_apply(&x, &lx, stats, cw, cb);
            let dy = batch_norm_apply(&dx, &lx, dstats, gw, gb)?;
            assert_close("bn apply", &dy.to_host()?, &y, 2.0);
            let g = cpu::conv::batch_norm_backward(&x, &lx, stats, cw, &gy, training);
            let dg = batch_norm_backward(&dx, &lx, dstats, gw, &dgy, training)?;
            assert_close("bn grad x", &dg.x.to_host()?, &g.x, 4.0);
            assert_close("bn grad w", &dg.weight.to_host()?, &g.weight, 4.0);
            assert_close("bn grad b", &dg.bias.to_host()?, &g.bias, 4.0);
        }
    }
    Ok(())
}

#[test]
fn pooling_and_batch_norm_match_cpu() {
    all_dtypes!("pool/bn", pool_bn_case);
}

/// Values that test a conversion's rounding: ties, values just past a tie
/// in the low f64 bits (where rounding through f32 to nearest would round
/// twice), subnormals of every format, overflow, infinities and NaN.
fn conversion_inputs() -> Vec<f64> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -2.5,
        1.0 + 2f64.powi(-8),
        1.0 + 2f64.powi(-8) + 2f64.powi(-40),
        -(1.0 + 2f64.powi(-11) + 2f64.powi(-45)),
        1.0 + 2f64.powi(-24) + 2f64.powi(-50),
        1.0 + 2f64.powi(-4) + 2f64.powi(-35),
        0.1,
        1.0 / 3.0,
        2f64.powi(-20),
        2f64.powi(-130),
        2f64.powi(-149),
        2f64.powi(-151),
        6e-8,
        65504.0,
        65520.0,
        448.0,
        464.0,
        57344.0,
        3.4e38,
        3.5e38,
        1e300,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    v.extend(data::<f64>(37, 170, -1e3, 1e3));
    v
}

fn convert_pair<E: CudaFloat, E2: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    if let Err(e) = dev.check("to_dtype", E2::DTYPE) {
        println!("skipped {} -> {}: {e}", E::DTYPE, E2::DTYPE);
        return Ok(());
    }
    let x: Vec<E> = conversion_inputs().into_iter().map(E::from_f64).collect();
    // read through a transposed 8 x 8 view
    assert_eq!(x.len(), 64, "the view below covers 64 inputs");
    let l = Layout::new(&[8, 8], &[1, 8], 0);
    let want: Vec<E2> = cpu::map(&x, &l, crate::device::convert_element::<E, E2>);
    let got = convert::<E, E2>(&dev.to_device(&x)?, &l)?.to_host()?;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let (gb, wb) = (g.to_f64(), w.to_f64());
        assert!(
            (gb.is_nan() && wb.is_nan())
                || (gb == wb && gb.is_sign_negative() == wb.is_sign_negative()),
            "{} -> {}: element {i} ({}) is {gb} on the device, {wb} on the CPU",
            E::DTYPE,
            E2::DTYPE,
            x[l.offset + (i / 8) + (i % 8) * 8].to_f64()
        );
    }
    Ok(())
}

fn convert_from<E: CudaFloat>(dev: &CudaDevice) -> Result<(), CudaError> {
    convert_pair::<E, f64>(dev)?;
    convert_pair::<E, f32>(dev)?;
    convert_pair::<E, f16>(dev)?;
    convert_pair::<E, bf16>(dev)?;
    convert_pair::<E, F8E4M3>(dev)?;
    convert_pair::<E, F8E5M2>(dev)
}

#[test]
fn dtype_conversion_matches_cpu_bit_for_bit() {
    all_dtypes!("to_dtype", convert_from);
}
