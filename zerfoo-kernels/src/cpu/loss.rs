//! Fused loss kernels: cross-entropy over the last axis (log-softmax + NLL
//! with label smoothing and ignored rows), mean squared error and binary
//! cross-entropy on logits. Each forward returns the *sum* of the per-element
//! (or per-row) losses in the compute type, so the caller picks the
//! reduction; each backward takes the factor `scale` (the incoming gradient
//! times `1/count` for a mean) and writes contiguous gradients.
//!
//! Sums are taken per fixed block of [`CHUNK`] elements (or rows) and the
//! block partials are added in order: the result does not depend on the
//! thread count.

use num_traits::{Float, One, Zero};

use super::simd::{lane_sum_of, vectorized};
use super::softmax::{map_row, rows_map, AxisRows};
use super::threads::map_tasks;
use super::{map, zip_map, CHUNK, PAR_THRESHOLD};
use crate::{FloatDtype, Layout, Real};

/// A row target meaning "ignore this row" (PyTorch's `ignore_index`).
pub const IGNORED: usize = usize::MAX;

/// What the cross-entropy forward keeps per row for the backward: the row
/// max `m` and `ln(sum(exp(x - m)))`, so that `p_c = exp((x_c - m) - ln_s)`
/// stays exact for huge logits.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowStats<A> {
    /// The row maximum.
    pub max: A,
    /// `ln(sum(exp(x - max)))`.
    pub ln_sum: A,
}

/// Sums `v` in fixed blocks of [`CHUNK`], adding the block sums in order.
fn block_sum<A: Real>(v: &[A]) -> A {
    let partials: Vec<A> = if v.len() >= PAR_THRESHOLD {
        map_tasks(v.len().div_ceil(CHUNK), |i| {
            v[i * CHUNK..v.len().min((i + 1) * CHUNK)]
                .iter()
                .copied()
                .sum()
        })
    } else {
        v.chunks(CHUNK).map(|c| c.iter().copied().sum()).collect()
    };
    partials.into_iter().fold(A::zero(), |a, b| a + b)
}

/// Cross-entropy of each row along the last axis of `x` (`C` classes)
/// against `targets` (one class index per row, or [`IGNORED`]), with label
/// smoothing `eps` (PyTorch's rule: the target distribution is
/// `(1 - eps) * onehot + eps / C`):
///
/// ```text
/// loss_r = ln_s + (1 - eps) * (m - x_t) + eps * mean_c(m - x_c)
///        = -(1 - eps) * logp_t - eps / C * sum_c logp_c
/// ```
///
/// Returns the sum over non-ignored rows (ignored rows add nothing) and the
/// per-row [`RowStats`]. Every target must be `< C` or [`IGNORED`] (the
/// caller checks; an out-of-range target here panics).
pub fn cross_entropy_forward<E: FloatDtype>(
    x: &[E],
    layout: &Layout,
    targets: &[usize],
    eps: f64,
) -> (E::Acc, Vec<RowStats<E::Acc>>) {
    let dims = layout.shape();
    assert!(!dims.is_empty(), "cross_entropy: logits need a class axis");
    let axis = dims.len() - 1;
    let rows = AxisRows::new(dims, axis);
    assert_eq!(
        targets.len(),
        rows.count(),
        "cross_entropy: one target per row"
    );
    let c = rows.n;
    let (one, e) = (E::Acc::one(), E::Acc::of_f64(eps));
    let inv_c = E::Acc::of_f64(1.0 / c.max(1) as f64);
    let (_, out) = rows_map(dims, axis, |r, _: &mut [()], buf: &mut [E::Acc]| {
        let t = targets[r];
        if t == IGNORED {
            return (E::Acc::zero(), RowStats::default());
        }
        let (m, s, spread) = vectorized(
            #[inline(always)]
            || {
                map_row(x, rows.start(layout, r), buf, |v| v.to_acc());
                let m = row_max(buf);
                let s = lane_sum_of(buf, |x| (x - m).fast_exp());
                let spread = if eps != 0.0 {
                    lane_sum_of(buf, |x| m - x)
                } else {
                    E::Acc::zero()
                };
                (m, s, spread)
            },
        );
        let ln_s = s.ln();
        let mut loss = ln_s + (one - e) * (m - buf[t]);
        if eps != 0.0 {
            loss += e * spread * inv_c;
        }
        (
            loss,
            RowStats {
                max: m,
                ln_sum: ln_s,
            },
        )
    });
    let losses: Vec<E::Acc> = out.iter().map(|o| o.0).collect();
    let stats = out.into_iter().map(|o| o.1).collect();
    (block_sum(&losses), stats)
}

/// Backward of [`cross_entropy_forward`]: for each non-ignored row,
/// `g_c = scale * (softmax_c - (1 - eps) * [c == t] - eps / C)`; ignored
/// rows get zeros. Output contiguous, shaped like `x`.
pub fn cross_entropy_backward<E: FloatDtype>(
    x: &[E],
    layout: &Layout,
    targets: &[usize],
    stats: &[RowStats<E::Acc>],
    eps: f64,
    scale: E::Acc,
) -> Vec<E> {
    let dims = layout.shape();
    let axis = dims.len() - 1;
    let rows = AxisRows::new(dims, axis);
    let c = rows.n;
    let (one, e) = (E::Acc::one(), E::Acc::of_f64(eps));
    let smooth = E::Acc::of_f64(eps / c.max(1) as f64);
    let zero = E::from_acc(E::Acc::zero());
    rows_map(dims, axis, |r, out: &mut [E], _: &mut [()]| {
        let t = targets[r];
        if t == IGNORED {
            out.fill(zero);
            return;
        }
        let (start, stride) = rows.start(layout, r);
        let st = stats[r];
        let grad = |x: E| {
            let p = ((x.to_acc() - st.max) - st.ln_sum).fast_exp();
            E::from_acc(scale * (p - smooth))
        };
        vectorized(
            #[inline(always)]
            || map_row(x, (start, stride), out, grad),
        );
        // The target's own term, computed the same way plus its -(1 - eps).
        let p = ((x[start + t * stride].to_acc() - st.max) - st.ln_sum).fast_exp();
        out[t] = E::from_acc(scale * ((p - smooth) - (one - e)));
    })
    .0
}

/// The largest value of a row; NaN if the row holds one (so the loss is
/// NaN, as in PyTorch), `-inf` for an empty row. Lane-wise, so it vectorizes.
#[inline(always)]
fn row_max<A: Real>(row: &[A]) -> A {
    const LANES: usize = 16;
    let pick = |m: A, v: A| if v > m || v.is_nan() { v } else { m };
    let mut acc = [A::neg_infinity(); LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = pick(*a, v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a = pick(*a, v);
    }
    acc.iter().fold(A::neg_infinity(), |m, &v| pick(m, v))
}

/// `sum((a - b)^2)` over every element (`a`, `b` of the same dims, any layouts).
pub fn mse_forward<E: FloatDtype>(a: &[E], la: &Layout, b: &[E], lb: &Layout) -> E::Acc {
    let sq: Vec<E::Acc> = zip_map(a, la, b, lb, |x: E, y: E| {
        let d = x.to_acc() - y.to_acc();
        d * d
    });
    block_sum(&sq)
}

/// Backward of [`mse_forward`] scaled by `scale`: `(2 s (a - b), -2 s (a - b))`.
pub fn mse_backward<E: FloatDtype>(
    a: &[E],
    la: &Layout,
    b: &[E],
    lb: &Layout,
    scale: E::Acc,
) -> (Vec<E>, Vec<E>) {
    let two_s = E::Acc::of_f64(2.0) * scale;
    let ga: Vec<E> = zip_map(a, la, b, lb, |x: E, y: E| {
        E::from_acc(two_s * (x.to_acc() - y.to_acc()))
    });
    let gb = map(&ga, &Layout::contiguous(la.shape()), |g: E| {
        E::from_acc(-g.to_acc())
    });
    (ga, gb)
}

/// `softplus(-x) = ln(1 + e^-x) = max(-x, 0) + ln(1 + e^-|x|)`, stable.
#[inline]
fn softplus_neg<A: Real>(x: A) -> A {
    (-x).max(A::zero()) + (-x.abs()).exp().ln_1p()
}

/// `1 / (1 + e^x)`, stable for large `|x|`.
#[inline]
fn sigmoid_neg<A: Real>(x: A) -> A {
    if x <= A::zero() {
        (A::one() + x.exp()).recip()
    } else {
        let e = (-x).exp();
        e / (A::one() + e)
    }
}

/// Binary cross-entropy on logits `x` against targets `y` (same dims, any
/// layouts), summed over every element. Without `pos_weight`:
/// `max(x, 0) - x y + ln(1 + e^-|x|)`; with a per-class `pos_weight` `p`
/// (one value per entry of the last axis), PyTorch's
/// `(1 - y) x + (1 + (p - 1) y) softplus(-x)`.
pub fn bce_logits_forward<E: FloatDtype>(
    x: &[E],
    lx: &Layout,
    y: &[E],
    ly: &Layout,
    pos_weight: Option<&[E::Acc]>,
) -> E::Acc {
    let xs: Vec<E::Acc> = map(x, lx, |v: E| v.to_acc());
    let ys: Vec<E::Acc> = map(y, ly, |v: E| v.to_acc());
    let one = E::Acc::one();
    let losses: Vec<E::Acc> = match pos_weight {
        None => xs
            .iter()
            .zip(&ys)
            .map(|(&x, &y)| x.max(E::Acc::zero()) - x * y + (-x.abs()).exp().ln_1p())
            .collect(),
        Some(pw) => {
            let c = pw.len().max(1);
            xs.iter()
                .zip(&ys)
                .enumerate()
                .map(|(i, (&x, &y))| {
                    let lw = one + (pw[i % c] - one) * y;
                    (one - y) * x + lw * softplus_neg(x)
                })
                .collect()
        }
    };
    block_sum(&losses)
}

/// Gradients of [`bce_logits_forward`] scaled by `scale`: with respect to
/// the logits `s ((1 - y) - lw σ(-x))` (`σ(x) - y` without a weight), the
/// targets `s (-x + (p - 1) softplus(-x))`, and — with a weight — the
/// weight, `sum over rows of s y softplus(-x)` per class (fixed-order sum).
pub fn bce_logits_backward<E: FloatDtype>(
    x: &[E],
    lx: &Layout,
    y: &[E],
    ly: &Layout,
    pos_weight: Option<&[E::Acc]>,
    scale: E::Acc,
) -> (Vec<E>, Vec<E>, Option<Vec<E>>) {
    let xs: Vec<E::Acc> = map(x, lx, |v: E| v.to_acc());
    let ys: Vec<E::Acc> = map(y, ly, |v: E| v.to_acc());
    let one = E::Acc::one();
    let c = pos_weight.map_or(1, |p| p.len().max(1));
    let weight = |i: usize| pos_weight.map_or(one, |p| p[i % c]);
    let mut gx = Vec::with_capacity(xs.len());
    let mut gy = Vec::with_capacity(xs.len());
    let mut gp = vec![E::Acc::zero(); if pos_weight.is_some() { c } else { 0 }];
    for (i, (&x, &y)) in xs.iter().zip(&ys).enumerate() {
        let p = weight(i);
        let lw = one + (p - one) * y;
        let sp = softplus_neg(x);
        gx.push(E::from_acc(scale * ((one - y) - lw * sigmoid_neg(x))));
        gy.push(E::from_acc(scale * ((p - one) * sp - x)));
        if pos_weight.is_some() {
            gp[i % c] += scale * y * sp;
        }
    }
    let gp = pos_weight.map(|_| gp.into_iter().map(E::from_acc).collect());
    (gx, gy, gp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_rows_by_hand() {
        // rows [0, ln 3] (target 1) and [1, 1] (ignored), [2, 0] (target 0)
        let x = [0.0f64, 3f64.ln(), 1.0, 1.0, 2.0, 0.0];
        let l = Layout::contiguous(&[3, 2]);
        let (sum, st) = cross_entropy_forward(&x, &l, &[1, IGNORED, 0], 0.0);
        let want = -(0.75f64).ln() + (1.0 + (-2f64).exp()).ln();
        assert!((sum - want).abs() < 1e-15, "{sum} vs {want}");
        assert_eq!(st[1], RowStats::default());
        let g = cross_entropy_backward(&x, &l, &[1, IGNORED, 0], &st, 0.0, 1.0);
        assert!((g[0] - 0.25).abs() < 1e-15 && (g[1] + 0.25).abs() < 1e-15);
        assert_eq!(&g[2..4], &[0.0, 0.0]);
        let p0 = 1.0 / (1.0 + (-2f64).exp());
        assert!((g[4] - (p0 - 1.0)).abs() < 1e-15 && (g[5] - (1.0 - p0)).abs() < 1e-15);
    }

    #[test]
    fn cross_entropy_smoothing_and_huge_logits() {
        let x = [1e4f32, -1e4, 0.0];
        let l = Layout::contiguous(&[1, 3]);
        let (sum, st) = cross_entropy_forward(&x, &l, &[1], 0.1);
        // ln_s = 0; (1-0.1) * 2e4 + 0.1 * mean(0, 2e4, 1e4)
        let want = 0.9 * 2e4 + 0.1 * 1e4;
        assert!((sum - want).abs() / want < 1e-6, "{sum}");
        let g = cross_entropy_backward(&x, &l, &[1], &st, 0.1, 1.0);
        let want = [1.0 - 0.1 / 3.0, -0.9 - 0.1 / 3.0, -0.1 / 3.0];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
    }

    #[test]
    fn cross_entropy_parallel_rows_along_a_strided_layout() {
        let (rows, c) = (PAR_THRESHOLD / 16, 32);
        let x: Vec<f64> = (0..rows * c).map(|i| ((i * 7) % 13) as f64 * 0.5).collect();
        // the logits are read through a transposed view of a (c, rows) buffer
        let l = Layout::contiguous(&[c, rows]).permute(&[1, 0]);
        let t: Vec<usize> = (0..rows).map(|r| r % c).collect();
        let (sum, st) = cross_entropy_forward(&x, &l, &t, 0.0);
        let mut want = 0.0;
        for r in 0..rows {
            let row: Vec<f64> = (0..c).map(|k| x[k * rows + r]).collect();
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            want += lse - row[t[r]];
        }
        assert!((sum - want).abs() / want < 1e-12);
        let g = cross_entropy_backward(&x, &l, &t, &st, 0.0, 1.0);
        for r in [0, rows / 3, rows - 1] {
            let s: f64 = g[r * c..(r + 1) * c].iter().sum();
            assert!(s.abs() < 1e-12);
        }
    }

    #[test]
    fn mse_and_bce_by_hand() {
        let l = Layout::contiguous(&[3]);
        let a = [1.0f64, 2.0, 3.0];
        let b = [0.0f64, 2.0, 5.0];
        assert_eq!(mse_forward(&a, &l, &b, &l), 5.0);
        let (ga, gb) = mse_backward(&a, &l, &b, &l, 0.5);
        assert_eq!(ga, [1.0, 0.0, -2.0]);
        assert_eq!(gb, [-1.0, 0.0, 2.0]);
        // bce: x = 0 gives ln 2 whatever y; x = 1e4, y = 1 gives 0; x = -1e4, y = 1 gives 1e4
        let x = [0.0f64, 1e4, -1e4];
        let y = [0.3f64, 1.0, 1.0];
        let s = bce_logits_forward(&x, &l, &y, &l, None);
        assert!((s - (2f64.ln() + 1e4)).abs() < 1e-9);
        let (gx, gy, gp) = bce_logits_backward(&x, &l, &y, &l, None, 1.0);
        assert!((gx[0] - 0.2).abs() < 1e-15 && gx[1] == 0.0 && gx[2] == -1.0);
        assert_eq!(gy, [0.0, -1e4, 1e4]);
        assert!(gp.is_none());
        // with pos_weight 2 on y = 1, x = 0: 2 ln 2
        let pw = [2.0f64];
        let s = bce_logits_forward(
            &[0.0f64],
            &Layout::contiguous(&[1]),
            &[1.0],
            &Layout::contiguous(&[1]),
            Some(&pw),
        );
        assert!((s - 2.0 * 2f64.ln()).abs() < 1e-15);
    }
}
