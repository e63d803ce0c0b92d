//! Reductions over a set of axes. The reduced axes are moved innermost (a
//! stride permutation, no copy); each output element folds its block in the
//! compute type. Parallel over output elements; the fold order within an
//! element is fixed, so results do not depend on the thread count.

use rayon::prelude::*;

use super::PAR_THRESHOLD;
use crate::{Layout, MAX_RANK};

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
        out.par_iter_mut().enumerate().for_each(body);
    } else {
        out.iter_mut().enumerate().for_each(body);
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
        vals.par_iter_mut()
            .zip(idx.par_iter_mut())
            .enumerate()
            .for_each(body);
    } else {
        vals.iter_mut()
            .zip(idx.iter_mut())
            .enumerate()
            .for_each(body);
    }
    (vals, idx)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
