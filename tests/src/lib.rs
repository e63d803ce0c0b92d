//! Shared helpers for the integration tests: finite-difference gradient
//! checks in f64, error measures, and fixture loading.

use std::path::PathBuf;

use zerfoo::prelude::*;

pub mod fixtures;

/// Relative error `max|got - want| / max|want|` (the fixtures' measure).
pub fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length differs");
    let num = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let den = want.iter().map(|b| b.abs()).fold(0.0, f64::max);
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

/// Central-difference gradient of `f` at `x` (step `h`), one element at a time.
pub fn numeric_grad(x: &[f64], h: f64, mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut xs = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xs[i];
            xs[i] = orig + h;
            let fp = f(&xs);
            xs[i] = orig - h;
            let fm = f(&xs);
            xs[i] = orig;
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

/// Checks the gradient of a scalar function of one f64 tensor against
/// central differences. `f` builds the loss from a traced input.
///
/// Tolerance: relative error ≤ 1e-6 (f64 with step 1e-6 gives ~1e-9 on
/// smooth functions; the margin covers kinks that inputs avoid).
#[track_caller]
pub fn check_grad1<S: Shape>(
    x: Tensor<S, f64>,
    f: impl Fn(Tensor<S, f64, Cpu, Tape>) -> Tensor<(), f64, Cpu, Tape>,
) {
    let shape = x.shape();
    let grads = f(x.clone().traced()).backward();
    let analytic = grads.get(&x).expect("input got no gradient").to_f64_vec();
    let numeric = numeric_grad(&x.to_f64_vec(), 1e-6, |v| {
        let t = Tensor::from_vec(shape, v.to_vec()).unwrap();
        f(t.traced()).item()
    });
    let e = rel_err(&analytic, &numeric);
    assert!(
        e <= 1e-6,
        "gradient mismatch: rel err {e:e}\nanalytic {analytic:?}\nnumeric  {numeric:?}"
    );
}

/// Like [`check_grad1`] for a function of two tensors; checks both gradients.
#[track_caller]
pub fn check_grad2<S1: Shape, S2: Shape>(
    a: Tensor<S1, f64>,
    b: Tensor<S2, f64>,
    f: impl Fn(Tensor<S1, f64, Cpu, Tape>, Tensor<S2, f64>) -> Tensor<(), f64, Cpu, Tape>,
) {
    let (sa, sb) = (a.shape(), b.shape());
    let grads = f(a.clone().traced(), b.clone()).backward();
    let ga = grads.get(&a).expect("lhs got no gradient").to_f64_vec();
    let gb = grads.get(&b).expect("rhs got no gradient").to_f64_vec();
    let bv = b.to_f64_vec();
    let na = numeric_grad(&a.to_f64_vec(), 1e-6, |v| {
        let ta = Tensor::from_vec(sa, v.to_vec()).unwrap();
        let tb = Tensor::from_vec(sb, bv.clone()).unwrap();
        f(ta.traced(), tb).item()
    });
    let av = a.to_f64_vec();
    let nb = numeric_grad(&bv, 1e-6, |v| {
        let ta = Tensor::from_vec(sa, av.clone()).unwrap();
        let tb = Tensor::from_vec(sb, v.to_vec()).unwrap();
        f(ta.traced(), tb).item()
    });
    let (ea, eb) = (rel_err(&ga, &na), rel_err(&gb, &nb));
    assert!(
        ea <= 1e-6,
        "lhs gradient mismatch: rel err {ea:e}\nanalytic {ga:?}\nnumeric  {na:?}"
    );
    assert!(
        eb <= 1e-6,
        "rhs gradient mismatch: rel err {eb:e}\nanalytic {gb:?}\nnumeric  {nb:?}"
    );
}

/// `sum(y * w)` with fixed pseudo-random weights `w`: a scalar whose gradient
/// with respect to `y` is `w`, so every element of `y` is checked.
pub fn weighted_sum<S: Shape>(
    y: Tensor<S, f64, Cpu, Tape>,
    seed: u64,
) -> Tensor<(), f64, Cpu, Tape> {
    let w: Tensor<S, f64> = Tensor::randn(y.shape(), seed);
    let p = y.mul(w);
    p.sum_all()
}

/// The fixtures folder: `../shared/fixtures` beside the repository, or the
/// folder named by the `ZERFOO_FIXTURES` environment variable when set.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZERFOO_FIXTURES") {
        return PathBuf::from(dir);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    root.join("../../shared/fixtures")
}

/// Tolerance of a dtype sweep, as `max|got - want| / max|want|`, where `want`
/// is the f64 result on the *same rounded inputs* (so only the op's own
/// rounding is measured). Roughly a few half-ulps of each type:
/// f64 1e-12, f32 1e-5, f16 4e-3 (2^-11 per rounding), bf16 3e-2 (2^-8),
/// f8 E4M3 0.15 (2^-4), f8 E5M2 0.3 (2^-3).
pub fn dtype_tolerance(d: DType) -> f64 {
    match d {
        DType::F64 => 1e-12,
        DType::F32 => 1e-5,
        DType::F16 => 4e-3,
        DType::BF16 => 3e-2,
        DType::F8E4M3 => 0.15,
        DType::F8E5M2 => 0.3,
        DType::I64 | DType::U32 | DType::Bool => 0.0,
    }
}

/// Asserts one dtype's result against the f64 reference with [`dtype_tolerance`].
#[track_caller]
pub fn assert_dtype_close(op: &str, d: DType, got: &[f64], want: &[f64]) {
    let e = rel_err(got, want);
    let tol = dtype_tolerance(d);
    assert!(
        e <= tol,
        "{op} in {d}: rel err {e:e} > {tol:e}\n got {got:?}\nwant {want:?}"
    );
}

/// Runs `$body` once per float dtype with `$E` bound to that dtype, and
/// compares each result (a `Vec<f64>`) against the same body run in f64 on
/// inputs rounded to that dtype. Inside the body, convert inputs with
/// `$crate::cast::<E, _>(&x)`: it rounds `x` to `E`, and for the reference
/// run it rounds to `E` and back to f64.
///
/// ```ignore
/// check_dtypes!("exp", |E| cast::<E, _>(&x).exp().to_f64_vec());
/// ```
#[macro_export]
macro_rules! check_dtypes {
    ($op:expr, |$E:ident| $body:expr) => {{
        macro_rules! __one {
            ($t:ty) => {{
                $crate::ROUND_TO.with(|r| r.set(None));
                let got: Vec<f64> = {
                    #[allow(dead_code)]
                    type $E = $t;
                    $body
                };
                $crate::ROUND_TO.with(|r| r.set(Some(<$t as zerfoo::kernels::Dtype>::DTYPE)));
                let want: Vec<f64> = {
                    #[allow(dead_code)]
                    type $E = f64;
                    $body
                };
                $crate::ROUND_TO.with(|r| r.set(None));
                $crate::assert_dtype_close($op, <$t as zerfoo::kernels::Dtype>::DTYPE, &got, &want);
            }};
        }
        __one!(f64);
        __one!(f32);
        __one!(zerfoo::kernels::f16);
        __one!(zerfoo::kernels::bf16);
        __one!(zerfoo::kernels::F8E4M3);
        __one!(zerfoo::kernels::F8E5M2);
    }};
}

thread_local! {
    /// While [`check_dtypes!`] runs its f64 reference, the dtype inputs are rounded through.
    #[doc(hidden)]
    pub static ROUND_TO: std::cell::Cell<Option<DType>> = const { std::cell::Cell::new(None) };
}

/// Converts an f64 test input to `E`; during a [`check_dtypes!`] reference
/// run (`E = f64`) it rounds through the dtype under test first.
pub fn cast<E: FloatDtype, S: Shape>(x: &Tensor<S, f64>) -> Tensor<S, E> {
    match ROUND_TO.with(|r| r.get()) {
        Some(d) if E::DTYPE == DType::F64 => {
            let rounded = round_through(x, d);
            rounded.to_dtype::<E>()
        }
        _ => x.clone().to_dtype::<E>(),
    }
}

fn round_through<S: Shape>(x: &Tensor<S, f64>, d: DType) -> Tensor<S, f64> {
    use zerfoo::kernels::{bf16, f16, F8E4M3, F8E5M2};
    match d {
        DType::F32 => x.clone().to_dtype::<f32>().to_dtype::<f64>(),
        DType::F16 => x.clone().to_dtype::<f16>().to_dtype::<f64>(),
        DType::BF16 => x.clone().to_dtype::<bf16>().to_dtype::<f64>(),
        DType::F8E4M3 => x.clone().to_dtype::<F8E4M3>().to_dtype::<f64>(),
        DType::F8E5M2 => x.clone().to_dtype::<F8E5M2>().to_dtype::<f64>(),
        _ => x.clone(),
    }
}

/// The CUDA devices a parity test compares against the CPU: GPU 0 if
/// present, and the host emulation of the kernels when a host C++ compiler
/// runs (each absent one prints why it is skipped).
#[cfg(feature = "cuda")]
pub fn cuda_devices() -> Vec<zerfoo::Cuda> {
    use zerfoo::kernels::cuda::Capability;
    let mut v = Vec::new();
    match zerfoo::Cuda::new(0) {
        Ok(d) => v.push(d),
        Err(e) => println!("skipped on a GPU: no CUDA device ({e})"),
    }
    match zerfoo::Cuda::emulated(Capability::new(9, 0)) {
        Ok(d) => v.push(d),
        Err(e) => println!("skipped on the host emulation ({e})"),
    }
    v
}
