//! Mask kernels: select by a boolean mask, fill where a mask is set,
//! triangular masks over the last two axes, and seeded dropout.

use num_traits::Zero;

use super::{for_each_chunk, zip3_map, zip_map, CHUNK};
use crate::{FloatDtype, Layout, Real};

/// `out[i] = f(i, src[layout[i]])` (row-major `i`), written contiguously.
pub fn map_indexed<I, O, F>(src: &[I], layout: &Layout, f: F) -> Vec<O>
where
    I: Copy + Send + Sync,
    O: Copy + Default + Send + Sync,
    F: Fn(usize, I) -> O + Sync + Send,
{
    let n = layout.numel();
    let mut out = vec![O::default(); n];
    let body = |(c, chunk): (usize, &mut [O])| {
        let start = c * CHUNK;
        let mut k = 0;
        layout.for_each_offset_in(start, chunk.len(), |o| {
            chunk[k] = f(start + k, src[o]);
            k += 1;
        });
    };
    for_each_chunk(&mut out, body);
    out
}

/// `out[i] = mask[i] ? a[i] : b[i]` (any layouts of one shape).
pub fn where_select<E: Copy + Default + Send + Sync>(
    mask: &[bool],
    lm: &Layout,
    a: &[E],
    la: &Layout,
    b: &[E],
    lb: &Layout,
) -> Vec<E> {
    zip3_map(mask, lm, a, la, b, lb, |m, x, y| if m { x } else { y })
}

/// `out[i] = mask[i] == keep_where ? g[i] : 0`, with `g` contiguous: the
/// gradient of one branch of [`where_select`] (or of a masked fill).
pub fn mask_grad<E: FloatDtype>(mask: &[bool], lm: &Layout, g: &[E], keep_where: bool) -> Vec<E> {
    let lg = Layout::contiguous(lm.shape());
    zip_map(mask, lm, g, &lg, |m, v: E| {
        if m == keep_where {
            v
        } else {
            E::from_acc(E::Acc::zero())
        }
    })
}

/// `out[i] = mask[i] ? value : x[i]` (any layouts of one shape).
pub fn masked_fill<E: Copy + Default + Send + Sync>(
    x: &[E],
    lx: &Layout,
    mask: &[bool],
    lm: &Layout,
    value: E,
) -> Vec<E> {
    zip_map(x, lx, mask, lm, |v, m| if m { value } else { v })
}

/// Whether entry `(row, col)` is kept by `tril(diagonal)` (`lower`) or `triu(diagonal)`.
#[inline]
pub fn tri_keeps(row: usize, col: usize, lower: bool, diagonal: i64) -> bool {
    let d = col as i128 - row as i128;
    if lower {
        d <= diagonal as i128
    } else {
        d >= diagonal as i128
    }
}

/// Zeroes the entries outside the lower (`lower`) or upper triangle of the
/// last two axes: `tril` keeps `col - row <= diagonal`, `triu` keeps
/// `col - row >= diagonal` (PyTorch's convention). Rank must be at least 2.
pub fn tri<E: FloatDtype>(src: &[E], layout: &Layout, lower: bool, diagonal: i64) -> Vec<E> {
    let dims = layout.shape();
    let r = dims.len();
    assert!(r >= 2, "tri: needs at least two axes");
    let (rows, cols) = (dims[r - 2], dims[r - 1]);
    map_indexed(src, layout, |i, v: E| {
        let (row, col) = ((i / cols) % rows, i % cols);
        if tri_keeps(row, col, lower, diagonal) {
            v
        } else {
            E::from_acc(E::Acc::zero())
        }
    })
}

/// A `rows x cols` row-major mask, `true` where `tri` keeps the entry.
pub fn tri_mask(rows: usize, cols: usize, lower: bool, diagonal: i64) -> Vec<bool> {
    (0..rows * cols)
        .map(|i| tri_keeps(i / cols, i % cols, lower, diagonal))
        .collect()
}

/// The keep decision of dropout with drop probability `p` and stream
/// `seed`: element `i` (row-major) is kept iff `rng::uniform(seed, i) >= p`
/// (the device kernels make the same decision).
pub fn dropout_keep(seed: u64, p: f64) -> impl Fn(usize) -> bool + Sync + Send + Copy {
    move |i| crate::rng::uniform(seed, i as u64) >= p
}

/// Dropout: `out[i] = keep(i) ? x[i] * scale : 0`, where `keep` depends
/// only on the row-major position `i` (so the result does not depend on
/// the thread count). The backward is the same call on the gradient.
pub fn dropout<E: FloatDtype>(
    src: &[E],
    layout: &Layout,
    keep: impl Fn(usize) -> bool + Sync + Send,
    scale: f64,
) -> Vec<E> {
    let s = E::Acc::of_f64(scale);
    map_indexed(src, layout, |i, v: E| {
        if keep(i) {
            E::from_acc(v.to_acc() * s)
        } else {
            E::from_acc(E::Acc::zero())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_and_fill_follow_the_mask() {
        let l = Layout::contiguous(&[4]);
        let m = [true, false, false, true];
        let a = [1.0f32, 2., 3., 4.];
        let b = [10.0f32, 20., 30., 40.];
        assert_eq!(where_select(&m, &l, &a, &l, &b, &l), [1., 20., 30., 4.]);
        assert_eq!(mask_grad(&m, &l, &a, true), [1., 0., 0., 4.]);
        assert_eq!(mask_grad(&m, &l, &a, false), [0., 2., 3., 0.]);
        assert_eq!(masked_fill(&a, &l, &m, &l, -1.0), [-1., 2., 3., -1.]);
        // a broadcast mask: one row repeated
        let lm = Layout::new(&[2, 2], &[0, 1], 0);
        let la = Layout::contiguous(&[2, 2]);
        assert_eq!(masked_fill(&a, &la, &m, &lm, 0.0), [0., 2., 0., 4.]);
    }

    #[test]
    fn triangles_follow_torch() {
        // torch.tril(ones(3, 4), diagonal=1) and torch.triu(ones(3, 4), diagonal=-1)
        let x = vec![1.0f64; 12];
        let l = Layout::contiguous(&[3, 4]);
        assert_eq!(
            tri(&x, &l, true, 1),
            [1., 1., 0., 0., 1., 1., 1., 0., 1., 1., 1., 1.]
        );
        assert_eq!(
            tri(&x, &l, false, -1),
            [1., 1., 1., 1., 1., 1., 1., 1., 0., 1., 1., 1.]
        );
        assert_eq!(tri_mask(2, 2, true, 0), [true, false, true, true]);
    }

    #[test]
    fn dropout_keeps_by_position() {
        let x = [1.0f64, 2., 3., 4.];
        let l = Layout::contiguous(&[4]);
        assert_eq!(dropout(&x, &l, |i| i % 2 == 0, 2.0), [2., 0., 6., 0.]);
    }
}
