//! Layer norm and RMS norm over the last axis: one fused pass per row forward
//! (read the row once into the compute type, take its statistics, write the
//! normalized, scaled and shifted row, rounding once) and backward (input,
//! weight and bias gradients together).
//!
//! The weight and bias gradients are sums over rows. They are accumulated
//! per fixed block of rows (the blocking depends only on the shape, not on
//! the thread count) and the block partials are added in order, so results
//! are deterministic.

use core::mem::MaybeUninit;

use num_traits::{Float, One, Zero};

use super::simd::{lane_sum_of, lane_sum_zip, vectorized};
use super::softmax::{map_row, rows_map, AxisRows};
use super::threads::map_chunks_mut;
use super::{assume_init_vec, map, uninit_vec, PAR_THRESHOLD};
use crate::{FloatDtype, Layout, Real};

/// Which normalization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps) * w + b`, biased variance (PyTorch `F.layer_norm`).
    Layer,
    /// `x / sqrt(mean(x^2) + eps) * w` (T5, Llama).
    Rms,
    /// `x / sqrt(mean(x^2) + eps) * (1 + w)` (Gemma), all in the compute type.
    RmsOffset,
}

/// Per-row statistics saved by the forward pass for the backward pass:
/// `xhat = (x - mean) * rstd` (`mean` is 0 for the RMS norms).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NormStats<A> {
    /// The row mean (0 for RMS norms).
    pub mean: A,
    /// `1 / sqrt(var + eps)` (or `1 / sqrt(mean(x^2) + eps)`).
    pub rstd: A,
}

/// Gradients of a normalization.
#[derive(Clone, Debug)]
pub struct NormGrads<E> {
    /// Input gradient, contiguous, shaped like the input (`None` when it
    /// was added into the caller's gradient).
    pub x: Option<Vec<E>>,
    /// Weight gradient (`None` without a weight).
    pub weight: Option<Vec<E>>,
    /// Bias gradient (`None` without a bias).
    pub bias: Option<Vec<E>>,
}

/// The effective per-column scale in the compute type: `w`, `1 + w` for
/// [`NormKind::RmsOffset`], or `None` (scale 1) without a weight.
fn effective_weight<E: FloatDtype>(
    kind: NormKind,
    weight: Option<(&[E], &Layout)>,
) -> Option<Vec<E::Acc>> {
    weight.map(|(w, lw)| {
        map(w, lw, |v: E| {
            let v = v.to_acc();
            if kind == NormKind::RmsOffset {
                E::Acc::one() + v
            } else {
                v
            }
        })
    })
}

fn last_axis(layout: &Layout) -> usize {
    assert!(layout.rank() >= 1, "normalization needs rank >= 1");
    layout.rank() - 1
}

/// Normalizes every row along the last axis of `x` (any layout). `weight`
/// and `bias` have the length of that axis (the caller checks). Returns the
/// contiguous output and the per-row statistics.
pub fn norm_forward<E: FloatDtype>(
    kind: NormKind,
    x: &[E],
    lx: &Layout,
    weight: Option<(&[E], &Layout)>,
    bias: Option<(&[E], &Layout)>,
    eps: f64,
) -> (Vec<E>, Vec<NormStats<E::Acc>>) {
    let axis = last_axis(lx);
    let rows = AxisRows::new(lx.shape(), axis);
    let w = effective_weight(kind, weight);
    let b: Option<Vec<E::Acc>> = bias.map(|(b, lb)| map(b, lb, |v: E| v.to_acc()));
    let d = E::Acc::of_f64(rows.n as f64);
    let eps = E::Acc::of_f64(eps);
    rows_map(lx.shape(), axis, |r, out: &mut [E], buf: &mut [E::Acc]| {
        vectorized(
            #[inline(always)]
            || {
                map_row(x, rows.start(lx, r), buf, |v| v.to_acc());
                let mean = if kind == NormKind::Layer {
                    lane_sum_of(buf, |x| x) / d
                } else {
                    E::Acc::zero()
                };
                let ss = lane_sum_of(buf, |x| (x - mean) * (x - mean));
                let rstd = (ss / d + eps).sqrt().recip();
                match (&w, &b) {
                    (Some(w), Some(b)) => {
                        for (((o, &v), &w), &b) in out.iter_mut().zip(buf.iter()).zip(w).zip(b) {
                            *o = E::from_acc((v - mean) * rstd * w + b);
                        }
                    }
                    (Some(w), None) => {
                        for ((o, &v), &w) in out.iter_mut().zip(buf.iter()).zip(w) {
                            *o = E::from_acc((v - mean) * rstd * w);
                        }
                    }
                    (None, Some(b)) => {
                        for ((o, &v), &b) in out.iter_mut().zip(buf.iter()).zip(b) {
                            *o = E::from_acc((v - mean) * rstd + b);
                        }
                    }
                    (None, None) => {
                        for (o, &v) in out.iter_mut().zip(buf.iter()) {
                            *o = E::from_acc((v - mean) * rstd);
                        }
                    }
                }
                NormStats { mean, rstd }
            },
        )
    })
}

/// One block's partial sums of the weight and bias gradients.
type Partial<A> = (Vec<A>, Vec<A>);

/// Backward of [`norm_forward`], given the saved `stats` and the contiguous
/// `grad_y`. With `g = grad_y * w_eff` and `xhat = (x - mean) * rstd`:
/// layer norm `gx = rstd * (g - mean(g) - xhat * mean(g * xhat))`, RMS norms
/// `gx = rstd * (g - xhat * mean(g * xhat))`; `gw = sum_rows(grad_y * xhat)`,
/// `gb = sum_rows(grad_y)`.
///
/// With `into` (the input's gradient so far, contiguous) the input gradient
/// is added there in the same pass instead of returned (`x` is `None`):
/// the bits of adding the returned gradient elementwise (each value
/// rounded to `E`, then added in the compute type and rounded).
///
/// # Panics
/// If `into` is not as long as the input.
#[allow(clippy::too_many_arguments)]
pub fn norm_backward<E: FloatDtype>(
    kind: NormKind,
    x: &[E],
    lx: &Layout,
    weight: Option<(&[E], &Layout)>,
    has_bias: bool,
    stats: &[NormStats<E::Acc>],
    grad_y: &[E],
    into: Option<&mut [E]>,
) -> NormGrads<E> {
    let args = (kind, x, lx, weight, has_bias, stats, grad_y);
    match into {
        Some(acc) => {
            assert_eq!(acc.len(), lx.numel(), "norm_backward: gradient length");
            // SAFETY: `MaybeUninit<E>` has `E`'s layout; `backward_into` in
            // adding mode reads each (initialized) element before writing an
            // initialized value back.
            let acc = unsafe { &mut *(acc as *mut [E] as *mut [MaybeUninit<E>]) };
            let (weight, bias) = backward_into(args, (acc, true));
            NormGrads {
                x: None,
                weight,
                bias,
            }
        }
        None => {
            let mut gx = uninit_vec::<E>(lx.numel());
            let (weight, bias) = backward_into(args, (&mut gx, false));
            NormGrads {
                // SAFETY: `backward_into` wrote every element of `gx`.
                x: Some(unsafe { assume_init_vec(gx) }),
                weight,
                bias,
            }
        }
    }
}

/// [`norm_backward`]'s inputs: kind, input and layout, weight, whether
/// there is a bias, statistics, upstream gradient.
type BackwardArgs<'a, E> = (
    NormKind,
    &'a [E],
    &'a Layout,
    Option<(&'a [E], &'a Layout)>,
    bool,
    &'a [NormStats<<E as FloatDtype>::Acc>],
    &'a [E],
);

/// The input gradient written into `out` (or, with `add`, added to the
/// initialized values there), and the weight and bias gradients.
#[allow(clippy::type_complexity)]
fn backward_into<E: FloatDtype>(
    (kind, x, lx, weight, has_bias, stats, grad_y): BackwardArgs<'_, E>,
    (out, add): (&mut [MaybeUninit<E>], bool),
) -> (Option<Vec<E>>, Option<Vec<E>>) {
    let axis = last_axis(lx);
    let rows = AxisRows::new(lx.shape(), axis);
    let (count, n) = (rows.count(), rows.n);
    let has_weight = weight.is_some();
    let w = effective_weight(kind, weight);
    let zeros = |on: bool| {
        if on {
            vec![E::Acc::zero(); n]
        } else {
            Vec::new()
        }
    };
    if count == 0 || n == 0 {
        let z = |on: bool| on.then(|| vec![E::from_acc(E::Acc::zero()); n]);
        return (z(has_weight), z(has_bias));
    }
    let d = E::Acc::of_f64(n as f64);
    // Fixed blocking: at most 64 blocks, each at least ~4K elements.
    let per_block = count.div_ceil(64).max((4096 / n).max(1));
    let body = |(blk, chunk): (usize, &mut [MaybeUninit<E>])| {
        let (mut dw, mut db) = (zeros(has_weight), zeros(has_bias));
        let mut buf = vec![E::Acc::zero(); n];
        let mut g = vec![E::Acc::zero(); n];
        for (i, out) in chunk.chunks_mut(n).enumerate() {
            let r = blk * per_block + i;
            let at = rows.start(lx, r);
            let st = stats[r];
            let gy = &grad_y[r * n..(r + 1) * n];
            vectorized(
                #[inline(always)]
                || {
                    map_row(x, at, &mut buf, |x| (x.to_acc() - st.mean) * st.rstd);
                    // g = grad_y * w_eff; the weight and bias gradients sum
                    // grad_y * xhat and grad_y over rows.
                    for (gk, &gy) in g.iter_mut().zip(gy) {
                        *gk = gy.to_acc();
                    }
                    if has_weight {
                        for ((dw, &gk), &xh) in dw.iter_mut().zip(g.iter()).zip(buf.iter()) {
                            *dw += gk * xh;
                        }
                    }
                    if has_bias {
                        for (db, &gk) in db.iter_mut().zip(g.iter()) {
                            *db += gk;
                        }
                    }
                    if let Some(w) = &w {
                        for (gk, &w) in g.iter_mut().zip(w) {
                            *gk *= w;
                        }
                    }
                    let mg = if kind == NormKind::Layer {
                        lane_sum_of(&g[..n], |x| x) / d
                    } else {
                        E::Acc::zero()
                    };
                    let mgx = lane_sum_zip(&g[..n], &buf[..n], |g, b| g * b) / d;
                    let grad = |gk: E::Acc, xh: E::Acc| E::from_acc(st.rstd * (gk - mg - xh * mgx));
                    if add {
                        for ((o, &gk), &xh) in out.iter_mut().zip(g.iter()).zip(buf.iter()) {
                            // SAFETY: in adding mode every element is
                            // initialized (the caller's gradient).
                            let before = unsafe { o.assume_init_read() };
                            o.write(E::from_acc(before.to_acc() + grad(gk, xh).to_acc()));
                        }
                    } else {
                        for ((o, &gk), &xh) in out.iter_mut().zip(g.iter()).zip(buf.iter()) {
                            o.write(grad(gk, xh));
                        }
                    }
                },
            )
        }
        (dw, db)
    };
    let partials: Vec<Partial<E::Acc>> = if count * n >= PAR_THRESHOLD && count > 1 {
        map_chunks_mut(out, per_block * n, body)
    } else {
        out.chunks_mut(per_block * n)
            .enumerate()
            .map(body)
            .collect()
    };
    let total = |pick: fn(&Partial<E::Acc>) -> &Vec<E::Acc>| {
        let mut acc = vec![E::Acc::zero(); n];
        for p in &partials {
            for (a, &v) in acc.iter_mut().zip(pick(p)) {
                *a += v;
            }
        }
        acc.into_iter().map(E::from_acc).collect::<Vec<E>>()
    };
    (
        has_weight.then(|| total(|p| &p.0)),
        has_bias.then(|| total(|p| &p.1)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_row_has_zero_mean_unit_variance() {
        let x = [1.0f64, 2.0, 4.0, 7.0, -1.0, 0.0, 1.0, 2.0];
        let l = Layout::contiguous(&[2, 4]);
        let (y, st) = norm_forward(NormKind::Layer, &x, &l, None, None, 0.0);
        for r in 0..2 {
            let row = &y[r * 4..r * 4 + 4];
            let mean: f64 = row.iter().sum::<f64>() / 4.0;
            let var: f64 = row.iter().map(|v| v * v).sum::<f64>() / 4.0;
            assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-12);
        }
        assert_eq!(st[0].mean, 3.5);
        // rms norm with weight 1 + w: x / rms * (1 + w)
        let w = [0.0f64, 1.0, -1.0, 0.5];
        let lw = Layout::contiguous(&[4]);
        let (y, _) = norm_forward(NormKind::RmsOffset, &x, &l, Some((&w, &lw)), None, 0.0);
        let rms = (70.0f64 / 4.0).sqrt();
        assert!((y[1] - 2.0 * 2.0 / rms).abs() < 1e-12);
        assert_eq!(y[2], 0.0);
    }

    #[test]
    fn weight_and_bias_gradients_sum_over_rows_in_parallel() {
        let (rows, n) = (PAR_THRESHOLD / 16, 32);
        let x: Vec<f32> = (0..rows * n).map(|i| ((i * 7) % 11) as f32).collect();
        let l = Layout::contiguous(&[rows, n]);
        let w = vec![2.0f32; n];
        let lw = Layout::contiguous(&[n]);
        let (_, st) = norm_forward(NormKind::Layer, &x, &l, Some((&w, &lw)), None, 1e-5);
        let gy = vec![1.0f32; rows * n];
        let g = norm_backward(
            NormKind::Layer,
            &x,
            &l,
            Some((&w, &lw)),
            true,
            &st,
            &gy,
            None,
        );
        // d/db of sum(y) is the row count; d/dx of sum(y) is 0 (y has zero mean per row)
        assert!(g.bias.unwrap().iter().all(|&v| v == rows as f32));
        assert!(g.x.unwrap().iter().all(|v| v.abs() < 1e-3));
        // sum over rows of xhat per column, against a direct computation
        let gw = g.weight.unwrap();
        let mut want = vec![0.0f64; n];
        for r in 0..rows {
            for k in 0..n {
                let s = st[r];
                want[k] += ((x[r * n + k] - s.mean) * s.rstd) as f64;
            }
        }
        for k in 0..n {
            assert!((gw[k] as f64 - want[k]).abs() < 1e-2 * (1.0 + want[k].abs()));
        }
    }

    /// Adding the input gradient into an existing one gives the bits of
    /// the two steps (the gradient, then `acc += g` in the compute type):
    /// every kind, with and without weight and bias, f32/f64/bf16, a
    /// transposed input, one block and many (parallel).
    #[test]
    fn backward_add_has_the_two_steps_bits() {
        fn check<E: FloatDtype>(rows: usize, n: usize, transposed: bool) {
            let val = |i: usize, k: usize| {
                E::from_f32((((i * k + 3) * 7919) % 1000) as f32 / 400.0 - 1.2)
            };
            let x: Vec<E> = (0..rows * n).map(|i| val(i, 1)).collect();
            let lx = if transposed {
                Layout::new(&[rows, n], &[1, rows], 0)
            } else {
                Layout::contiguous(&[rows, n])
            };
            let w: Vec<E> = (0..n).map(|i| val(i, 5)).collect();
            let b: Vec<E> = (0..n).map(|i| val(i, 9)).collect();
            let l1 = Layout::contiguous(&[n]);
            let gy: Vec<E> = (0..rows * n).map(|i| val(i, 2)).collect();
            let acc0: Vec<E> = (0..rows * n).map(|i| val(i, 3)).collect();
            for kind in [NormKind::Layer, NormKind::Rms, NormKind::RmsOffset] {
                for (weight, bias) in [(false, false), (true, false), (true, true)] {
                    let wv = weight.then_some((&w[..], &l1));
                    let bv = bias.then_some((&b[..], &l1));
                    let (_, st) = norm_forward(kind, &x, &lx, wv, bv, 1e-5);
                    let g = norm_backward(kind, &x, &lx, wv, bias, &st, &gy, None);
                    let want: Vec<E> = acc0
                        .iter()
                        .zip(g.x.as_deref().unwrap())
                        .map(|(a, g)| E::from_acc(a.to_acc() + g.to_acc()))
                        .collect();
                    let mut acc = acc0.clone();
                    let ga = norm_backward(kind, &x, &lx, wv, bias, &st, &gy, Some(&mut acc));
                    assert!(ga.x.is_none());
                    let (gw, gb) = (ga.weight, ga.bias);
                    let bits = |v: &[E]| v.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
                    let what = format!("{kind:?} w {weight} b {bias} {rows}x{n} t {transposed}");
                    assert_eq!(bits(&acc), bits(&want), "{what}: input gradient");
                    assert_eq!(gw.map(|v| bits(&v)), g.weight.map(|v| bits(&v)), "{what}");
                    assert_eq!(gb.map(|v| bits(&v)), g.bias.map(|v| bits(&v)), "{what}");
                }
            }
        }
        for (rows, n, t) in [
            (3, 7, false),
            (5, 33, true),
            (PAR_THRESHOLD / 16, 32, false),
        ] {
            check::<f32>(rows, n, t);
            check::<f64>(rows, n, t);
            check::<crate::bf16>(rows, n, t);
        }
    }
}
