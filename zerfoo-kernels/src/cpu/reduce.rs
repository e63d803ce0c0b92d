//! Reductions over a set of axes. The reduced axes are moved innermost (a
//! stride permutation, no copy); each output element folds its block in the
//! compute type. Parallel over output elements; the fold order within an
//! element is fixed, so results do not depend on the thread count.
//!
//! Besides the generic folds ([`reduce_axes`], [`arg_reduce_axes`]) this
//! holds the one-pass kernels of max/min (with tie counts), variance
//! (Welford), logsumexp (online, max-subtracted), argmax/argmin, and their
//! backward passes. Each backward is one linear pass over the input.

use num_traits::{Float, One, Zero};

use super::threads::{for_each_chunk_mut, for_each_chunk_pair_mut};
use super::{zip3_map, PAR_THRESHOLD};
use crate::{FloatDtype, Layout, Real, MAX_RANK};

/// A layout that reads a reduced buffer (contiguous, shaped like `dims`
/// without `axes`) as if it had the full `dims`: stride 0 on the reduced axes.
///
/// ```
/// use zerfoo_kernels::cpu::reduce::expand_layout;
/// let l = expand_layout(&[2, 3], &[1]);
/// assert_eq!(l.offsets(), [0, 0, 0, 1, 1, 1]);
/// ```
pub fn expand_layout(dims: &[usize], axes: &[usize]) -> Layout {
    let mut strides = [0usize; MAX_RANK];
    let mut s = 1;
    for d in (0..dims.len()).rev() {
        if !axes.contains(&d) {
            strides[d] = s;
            s *= dims[d];
        }
    }
    Layout::new(dims, &strides[..dims.len()], 0)
}

/// The kept dims (in order) and the layout with the reduced axes moved last.
pub fn split_axes(layout: &Layout, axes: &[usize]) -> (Vec<usize>, Layout, usize) {
    let rank = layout.rank();
    let mut perm: Vec<usize> = (0..rank).filter(|a| !axes.contains(a)).collect();
    let kept: Vec<usize> = perm.iter().map(|&a| layout.shape()[a]).collect();
    perm.extend(axes.iter().copied());
    let inner: usize = axes.iter().map(|&a| layout.shape()[a]).product();
    (kept, layout.permute(&perm), inner)
}

/// Folds each block of the reduced axes: `out[o] = finish(fold(init, x...), n)`.
///
/// `fold` sees elements in row-major order of the reduced axes.
pub fn reduce_axes<E, A, O>(
    src: &[E],
    layout: &Layout,
    axes: &[usize],
    init: A,
    fold: impl Fn(A, E) -> A + Sync + Send,
    finish: impl Fn(A, usize) -> O + Sync + Send,
) -> Vec<O>
where
    E: Copy + Send + Sync,
    A: Copy + Send + Sync,
    O: Copy + Default + Send + Sync,
{
    debug_assert!(axes.len() <= MAX_RANK);
    let (kept, moved, inner) = split_axes(layout, axes);
    let outer: usize = kept.iter().product();
    let mut out = vec![O::default(); outer];
    let body = |(o, slot): (usize, &mut O)| {
        let mut acc = init;
        moved.for_each_offset_in(o * inner, inner, |off| acc = fold(acc, src[off]));
        *slot = finish(acc, inner);
    };
    if outer * inner >= PAR_THRESHOLD && outer > 1 {
        for_each_chunk_mut(&mut out, 1, |(o, slot)| body((o, &mut slot[0])));
    } else {
        out.iter_mut().enumerate().for_each(body);
    }
    out
}

/// `scale · Σ_r x[r, j]` over the `rows` rows of a row-major `[rows, n]`
/// block: a contiguous tensor summed over its leading axes (the gradient
/// of a bias, or of anything broadcast over the batch). Each column is
/// summed in row order from zero, as [`reduce_axes`] folds it, so the bits
/// are the same; here whole rows are added at a time (vector code, the
/// input read once in order), the columns shared out over the pool when
/// the block is large.
///
/// ```
/// let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]; // [3, 2]
/// assert_eq!(zerfoo_kernels::cpu::reduce::sum_leading_rows(&x, 3, 2, 0.5), [4.5, 6.0]);
/// ```
///
/// # Panics
/// If `x` holds fewer than `rows * n` values.
pub fn sum_leading_rows<E: FloatDtype>(x: &[E], rows: usize, n: usize, scale: E::Acc) -> Vec<E> {
    assert!(x.len() >= rows * n, "sum_leading_rows: input too short");
    let mut out = vec![E::default(); n];
    if n == 0 {
        return out;
    }
    // Columns per task: a few tasks per thread once there is enough work.
    let cols = if rows * n >= PAR_THRESHOLD {
        n.div_ceil(4 * rayon::current_num_threads()).max(256)
    } else {
        n
    };
    let body = |(t, part): (usize, &mut [E])| {
        let c0 = t * cols;
        let mut acc = vec![E::Acc::zero(); part.len()];
        super::simd::vectorized(
            #[inline(always)]
            || {
                for r in 0..rows {
                    let row = &x[r * n + c0..][..part.len()];
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += v.to_acc();
                    }
                }
                for (o, &a) in part.iter_mut().zip(&acc) {
                    *o = E::from_acc(a * scale);
                }
            },
        )
    };
    if cols < n {
        for_each_chunk_mut(&mut out, cols, body);
    } else {
        body((0, &mut out));
    }
    out
}

/// Like [`reduce_axes`] but also returns, per output, the position (within
/// the reduced block, row-major) where `better(candidate, best)` last won:
/// used for max/min/argmax/argmin. NaN wins over everything, as in PyTorch.
pub fn arg_reduce_axes<E: Copy + Send + Sync + Default>(
    src: &[E],
    layout: &Layout,
    axes: &[usize],
    better: impl Fn(E, E) -> bool + Sync + Send,
) -> (Vec<E>, Vec<usize>) {
    let (kept, moved, inner) = split_axes(layout, axes);
    let outer: usize = kept.iter().product();
    let mut vals = vec![E::default(); outer];
    let mut idx = vec![0usize; outer];
    let body = |(o, (v, i)): (usize, (&mut E, &mut usize))| {
        let mut best: Option<(E, usize)> = None;
        let mut k = 0;
        moved.for_each_offset_in(o * inner, inner, |off| {
            let x = src[off];
            match best {
                None => best = Some((x, k)),
                Some((b, _)) if better(x, b) => best = Some((x, k)),
                _ => {}
            }
            k += 1;
        });
        if let Some((b, bi)) = best {
            *v = b;
            *i = bi;
        }
    };
    if outer * inner >= PAR_THRESHOLD && outer > 1 {
        for_each_chunk_pair_mut(&mut vals, 1, &mut idx, 1, |(o, v, i)| {
            body((o, (&mut v[0], &mut i[0])))
        });
    } else {
        vals.iter_mut()
            .zip(idx.iter_mut())
            .enumerate()
            .for_each(body);
    }
    (vals, idx)
}

/// `max` (`MAX = true`) or `min` of each block, with the number of elements
/// equal to it (for the backward's even split among ties). NaN propagates:
/// a block holding NaN yields NaN, and its tie count is the number of NaNs.
/// An empty block yields `-inf` (max) or `+inf` (min) with count 0.
pub fn extreme_axes<E: FloatDtype, const MAX: bool>(
    src: &[E],
    layout: &Layout,
    axes: &[usize],
) -> (Vec<E>, Vec<usize>) {
    let init = if MAX {
        E::Acc::neg_infinity()
    } else {
        E::Acc::infinity()
    };
    let both: Vec<(E, usize)> = reduce_axes(
        src,
        layout,
        axes,
        (init, 0usize),
        |(b, c), x: E| {
            let x = x.to_acc();
            if b.is_nan() {
                (b, c + usize::from(x.is_nan()))
            } else if x.is_nan() || (MAX && x > b) || (!MAX && x < b) {
                (x, 1)
            } else if x == b {
                (b, c + 1)
            } else {
                (b, c)
            }
        },
        |(b, c), _| (E::from_acc(b), c),
    );
    both.into_iter().unzip()
}

/// Backward of [`extreme_axes`]: each element equal to its block's extreme
/// (NaN counting as equal to a NaN extreme) gets `grad_y / count`, the rest 0
/// (PyTorch's `amax`/`amin` rule: ties share the gradient evenly).
/// `y`, `counts` and `grad_y` are contiguous, shaped like the kept dims.
pub fn extreme_backward<E: FloatDtype>(
    x: &[E],
    lx: &Layout,
    axes: &[usize],
    y: &[E],
    counts: &[usize],
    grad_y: &[E],
) -> Vec<E> {
    let share: Vec<E::Acc> = grad_y
        .iter()
        .zip(counts)
        .map(|(g, &c)| g.to_acc() / E::Acc::of_f64(c.max(1) as f64))
        .collect();
    let le = expand_layout(lx.shape(), axes);
    zip3_map(x, lx, y, &le, &share, &le, |x: E, y: E, s: E::Acc| {
        let (x, y) = (x.to_acc(), y.to_acc());
        if x == y || (x.is_nan() && y.is_nan()) {
            E::from_acc(s)
        } else {
            E::from_acc(E::Acc::zero())
        }
    })
}

/// Welford state: count, running mean, sum of squared deviations.
type Welford<A> = (usize, A, A);

/// Variance of each block with `correction` (Bessel's correction is 1):
/// `sum((x - mean)^2) / (n - correction)`, in one pass (Welford's update, in
/// the compute type). Also returns the block means (for the backward).
/// `n <= correction` divides by zero (NaN or inf), as PyTorch does.
pub fn var_axes<E: FloatDtype>(
    src: &[E],
    layout: &Layout,
    axes: &[usize],
    correction: usize,
) -> (Vec<E>, Vec<E::Acc>) {
    let zero = E::Acc::zero();
    let both: Vec<(E, E::Acc)> = reduce_axes(
        src,
        layout,
        axes,
        (0usize, zero, zero),
        |(n, mean, m2): Welford<E::Acc>, x: E| {
            let x = x.to_acc();
            let n = n + 1;
            let d = x - mean;
            let mean = mean + d / E::Acc::of_f64(n as f64);
            (n, mean, m2 + d * (x - mean))
        },
        move |(n, mean, m2), _| {
            let denom = E::Acc::of_f64(n.saturating_sub(correction) as f64);
            (E::from_acc(m2 / denom), mean)
        },
    );
    both.into_iter().unzip()
}

/// Backward of [`var_axes`]: `grad_x = grad_y * 2 (x - mean) / (n - correction)`.
pub fn var_backward<E: FloatDtype>(
    x: &[E],
    lx: &Layout,
    axes: &[usize],
    means: &[E::Acc],
    correction: usize,
    grad_y: &[E],
) -> Vec<E> {
    let n: usize = axes.iter().map(|&a| lx.shape()[a]).product();
    let k = E::Acc::of_f64(2.0 / n.saturating_sub(correction) as f64);
    let scaled: Vec<E::Acc> = grad_y.iter().map(|g| g.to_acc() * k).collect();
    let le = expand_layout(lx.shape(), axes);
    zip3_map(x, lx, means, &le, &scaled, &le, |x: E, m, s| {
        E::from_acc(s * (x.to_acc() - m))
    })
}

/// `log(sum(exp(x)))` of each block, in the compute type, in one pass: an
/// online max-subtracted sum (the running sum is rescaled when the max grows),
/// so large inputs never overflow. `-inf` elements contribute nothing; a `+inf`
/// element gives `+inf`; NaN gives NaN; an empty or all-`-inf` block gives `-inf`.
pub fn logsumexp_axes<E: FloatDtype>(src: &[E], layout: &Layout, axes: &[usize]) -> Vec<E::Acc> {
    let (ninf, zero) = (E::Acc::neg_infinity(), E::Acc::zero());
    reduce_axes(
        src,
        layout,
        axes,
        (ninf, zero),
        |(m, s): (E::Acc, E::Acc), x: E| {
            let x = x.to_acc();
            if x.is_nan() {
                (m, x)
            } else if x == ninf {
                (m, s)
            } else if x > m {
                (x, s * (m - x).fast_exp() + E::Acc::one())
            } else if m == E::Acc::infinity() {
                (m, s)
            } else {
                (m, s + (x - m).fast_exp())
            }
        },
        |(m, s), _| {
            if s.is_nan() {
                s
            } else if m.is_infinite() {
                m
            } else {
                m + s.ln()
            }
        },
    )
}

/// Backward of [`logsumexp_axes`]: `grad_x = grad_y * exp(x - lse)` (the
/// softmax of the block), with `lse` kept in the compute type.
pub fn logsumexp_backward<E: FloatDtype>(
    x: &[E],
    lx: &Layout,
    axes: &[usize],
    lse: &[E::Acc],
    grad_y: &[E],
) -> Vec<E> {
    let le = expand_layout(lx.shape(), axes);
    zip3_map(x, lx, lse, &le, grad_y, &le, |x: E, l, g: E| {
        E::from_acc(g.to_acc() * (x.to_acc() - l).fast_exp())
    })
}

/// The position (row-major within the block) of each block's maximum
/// (`MAX = true`) or minimum: the first one on ties, and the first NaN if
/// there is one (NaN counts as the extreme either way, as in PyTorch).
/// An empty block yields 0.
pub fn arg_extreme_axes<E: FloatDtype, const MAX: bool>(
    src: &[E],
    layout: &Layout,
    axes: &[usize],
) -> Vec<usize> {
    arg_reduce_axes(src, layout, axes, |x: E, b: E| {
        let (x, b) = (x.to_acc(), b.to_acc());
        !b.is_nan() && (x.is_nan() || (MAX && x > b) || (!MAX && x < b))
    })
    .1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Summing leading rows gives [`reduce_axes`]' bits: f32, f64, bf16,
    /// one task and many (columns shared out), scaled.
    #[test]
    fn sum_leading_rows_has_the_fold_bits() {
        fn check<E: FloatDtype>(rows: usize, n: usize) {
            let x: Vec<E> = (0..rows * n)
                .map(|i| E::from_f32((((i + 5) * 7919) % 1000) as f32 / 300.0 - 1.6))
                .collect();
            let l = Layout::contiguous(&[rows, n]);
            let s = E::Acc::of_f64(0.37);
            let want = reduce_axes(
                &x,
                &l,
                &[0],
                E::Acc::zero(),
                |a, v: E| a + v.to_acc(),
                |a, _| E::from_acc(a * s),
            );
            let got = sum_leading_rows(&x, rows, n, s);
            let bits = |v: &[E]| v.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{rows} x {n}");
        }
        for (rows, n) in [
            (1, 1),
            (3, 7),
            (12, 8192),
            (768, 129),
            (5, PAR_THRESHOLD + 3),
        ] {
            check::<f32>(rows, n);
            check::<f64>(rows, n);
            check::<crate::bf16>(rows, n);
        }
    }

    #[test]
    fn sums_over_middle_axis() {
        let src: Vec<f64> = (0..24).map(|i| i as f64).collect();
        let l = Layout::contiguous(&[2, 3, 4]);
        let out = reduce_axes(&src, &l, &[1], 0.0, |a, x| a + x, |a, _| a);
        // out[i, k] = sum_j src[i, j, k]
        let want: Vec<f64> = (0..2)
            .flat_map(|i| (0..4).map(move |k| (0..3).map(|j| (i * 12 + j * 4 + k) as f64).sum()))
            .collect();
        assert_eq!(out, want);
        let (v, i) = arg_reduce_axes(&src, &l, &[2], |a, b| a > b);
        assert_eq!(v, vec![3.0, 7.0, 11.0, 15.0, 19.0, 23.0]);
        assert_eq!(i, vec![3; 6]);
    }

    #[test]
    fn max_counts_ties_and_propagates_nan() {
        let src = [1.0f32, 3.0, 3.0, -1.0, f32::NAN, 2.0];
        let l = Layout::contiguous(&[2, 3]);
        let (v, c) = extreme_axes::<f32, true>(&src, &l, &[1]);
        assert_eq!(v[0], 3.0);
        assert!(v[1].is_nan());
        assert_eq!(c, vec![2, 1]);
        let (v, c) = extreme_axes::<f32, false>(&src, &l, &[1]);
        assert_eq!((v[0], c[0]), (1.0, 1));
        let g = extreme_backward(&src, &l, &[1], &[3.0, f32::NAN], &[2, 1], &[1.0, 4.0]);
        assert_eq!(g, vec![0.0, 0.5, 0.5, 0.0, 4.0, 0.0]);
        assert_eq!(arg_extreme_axes::<f32, true>(&src, &l, &[1]), vec![1, 1]);
        assert_eq!(arg_extreme_axes::<f32, false>(&src, &l, &[1]), vec![0, 1]);
    }

    #[test]
    fn variance_and_logsumexp_match_two_pass_formulas() {
        let src: Vec<f64> = (0..12)
            .map(|i| ((i * 7) % 5) as f64 + 0.25 * i as f64)
            .collect();
        let l = Layout::contiguous(&[3, 4]).permute(&[1, 0]); // (4, 3), non-contiguous
        let (v, m) = var_axes(&src, &l, &[1], 1);
        let (lse, n) = (logsumexp_axes(&src, &l, &[1]), 3.0);
        for r in 0..4 {
            let row: Vec<f64> = (0..3).map(|c| src[c * 4 + r]).collect();
            let mean = row.iter().sum::<f64>() / n;
            let var = row.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
            assert!((m[r] - mean).abs() < 1e-12 && (v[r] - var).abs() < 1e-12);
            let want = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            assert!((lse[r] - want).abs() < 1e-12);
        }
        let big = [1e4f32, 1e4, f32::NEG_INFINITY];
        let lse = logsumexp_axes(&big, &Layout::contiguous(&[3]), &[0]);
        assert!((lse[0] - (1e4 + 2f32.ln())).abs() < 1e-2);
        let inf = [f32::INFINITY, 1.0, f32::INFINITY];
        assert_eq!(
            logsumexp_axes(&inf, &Layout::contiguous(&[3]), &[0])[0],
            f32::INFINITY
        );
        let ninf = [f32::NEG_INFINITY; 2];
        let lse = logsumexp_axes(&ninf, &Layout::contiguous(&[2]), &[0]);
        assert_eq!(lse[0], f32::NEG_INFINITY);
    }

    #[test]
    fn parallel_reductions_match_serial_rows() {
        // enough elements for the parallel path
        let (rows, cols) = (64, PAR_THRESHOLD / 32);
        let src: Vec<f32> = (0..rows * cols).map(|i| ((i * 37) % 101) as f32).collect();
        let l = Layout::contiguous(&[rows, cols]);
        let (v, _) = extreme_axes::<f32, true>(&src, &l, &[1]);
        let a = arg_extreme_axes::<f32, true>(&src, &l, &[1]);
        for r in 0..rows {
            let row = &src[r * cols..(r + 1) * cols];
            let m = row.iter().copied().fold(f32::MIN, f32::max);
            assert_eq!(v[r], m);
            assert_eq!(a[r], row.iter().position(|&x| x == m).unwrap());
        }
    }
}
