//! Structural kernels: copying a range of a strided view, concatenation along
//! an axis, and adding a narrowed block into a larger buffer (the backward of
//! narrow and split). Reshape, permute and narrow themselves are views and
//! need no kernel.
//!
//! Every output element is written by exactly one thread, so results do not
//! depend on the thread count.

use core::mem::MaybeUninit;

use super::threads::for_each_chunk_mut;
use super::{assume_init_vec, uninit_vec, CHUNK, PAR_THRESHOLD};
use crate::{FloatDtype, Layout};

/// Copies elements `start..start + dst.len()` (in row-major order) of the view
/// `layout` of `src` into `dst`.
pub fn copy_range<E: Copy + Send + Sync>(src: &[E], layout: &Layout, start: usize, dst: &mut [E]) {
    // SAFETY: `MaybeUninit<E>` has `E`'s layout, and only initialized values
    // are written through the view.
    let dst = unsafe { &mut *(dst as *mut [E] as *mut [MaybeUninit<E>]) };
    if dst.len() >= PAR_THRESHOLD && !layout.is_contiguous() {
        for_each_chunk_mut(dst, CHUNK, |(c, chunk)| {
            write_range(src, layout, start + c * CHUNK, chunk)
        });
    } else {
        write_range(src, layout, start, dst);
    }
}

/// [`copy_range`] on one thread, into possibly uninitialized `dst` (all of
/// it written).
fn write_range<E: Copy>(src: &[E], layout: &Layout, start: usize, dst: &mut [MaybeUninit<E>]) {
    assert!(
        start + dst.len() <= layout.numel(),
        "copy_range: range past the end of the view"
    );
    if layout.is_contiguous() {
        let s = layout.offset + start;
        let src = &src[s..s + dst.len()];
        for (d, &x) in dst.iter_mut().zip(src) {
            d.write(x);
        }
        return;
    }
    let mut k = 0;
    layout.for_each_offset_in(start, dst.len(), |o| {
        dst[k].write(src[o]);
        k += 1;
    });
}

/// Joins views along `axis` into a contiguous row-major buffer. Every part has
/// the same rank and the same dims except at `axis`; the output's dim there is
/// the sum of the parts'.
///
/// ```
/// use zerfoo_kernels::{cpu::shape::concat, Layout};
/// let a = [1, 2, 3, 4]; // 2 x 2
/// let b = [5, 6]; // 2 x 1
/// let (la, lb) = (Layout::contiguous(&[2, 2]), Layout::contiguous(&[2, 1]));
/// assert_eq!(concat(&[(&a[..], &la), (&b[..], &lb)], 1), [1, 2, 5, 3, 4, 6]);
/// ```
pub fn concat<E: Copy + Default + Send + Sync>(parts: &[(&[E], &Layout)], axis: usize) -> Vec<E> {
    assert!(!parts.is_empty(), "concat: no parts");
    let first = parts[0].1;
    let rank = first.rank();
    assert!(
        axis < rank,
        "concat: axis {axis} out of range for rank {rank}"
    );
    for (_, l) in parts {
        assert_eq!(l.rank(), rank, "concat: ranks differ");
        for d in (0..rank).filter(|&d| d != axis) {
            assert_eq!(
                l.shape()[d],
                first.shape()[d],
                "concat: dims differ off the axis"
            );
        }
    }
    let outer: usize = first.shape()[..axis].iter().product();
    let inner: usize = first.shape()[axis + 1..].iter().product();
    let blocks: Vec<usize> = parts.iter().map(|(_, l)| l.shape()[axis] * inner).collect();
    let row: usize = blocks.iter().sum();
    let n = outer * row;
    if n == 0 {
        return Vec::new();
    }
    let mut out = uninit_vec::<E>(n);
    // Elements `lo..lo + chunk.len()` of the result, part by part: each
    // stretch of a row that one part fills is one copy, written once.
    let body = |(lo, chunk): (usize, &mut [MaybeUninit<E>])| {
        let mut done = 0;
        while done < chunk.len() {
            let at = lo + done;
            let (o, mut within) = (at / row, at % row);
            let mut p = 0;
            while within >= blocks[p] {
                within -= blocks[p];
                p += 1;
            }
            let len = (blocks[p] - within).min(chunk.len() - done);
            let (src, l) = parts[p];
            write_range(src, l, o * blocks[p] + within, &mut chunk[done..done + len]);
            done += len;
        }
    };
    // A copy does little per element: below `4 * PAR_THRESHOLD` waking the
    // pool costs more than it saves (3 x 128 x 128 f32: 4.5 us on one
    // thread, 20 us shared out; 3 x 384 x 384: 145 -> 30 us shared out).
    if n >= 4 * PAR_THRESHOLD {
        for_each_chunk_mut(&mut out, CHUNK, |(c, chunk)| body((c * CHUNK, chunk)));
    } else {
        body((0, &mut out));
    }
    // SAFETY: every element of `out` went to one `body`, which wrote it.
    unsafe { assume_init_vec(out) }
}

/// `dst[.., start..start + len, ..] += src` along `axis`: `dst` is contiguous
/// with dims `dims`, `src` is contiguous with `dims` narrowed to `len` at
/// `axis`. Adds in the compute type and rounds once.
pub fn add_narrow_into<E: FloatDtype>(
    dst: &mut [E],
    dims: &[usize],
    axis: usize,
    start: usize,
    len: usize,
    src: &[E],
) {
    assert!(axis < dims.len(), "add_narrow_into: axis out of range");
    assert!(
        start + len <= dims[axis],
        "add_narrow_into: block past the end of the axis"
    );
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    let full = dims[axis] * inner;
    let block = len * inner;
    assert_eq!(dst.len(), outer * full, "add_narrow_into: dst length");
    assert_eq!(src.len(), outer * block, "add_narrow_into: src length");
    if block == 0 || outer == 0 {
        return;
    }
    let add = |d: &mut [E], s: &[E]| {
        for (a, &b) in d.iter_mut().zip(s) {
            *a = E::from_acc(a.to_acc() + b.to_acc());
        }
    };
    let lo = start * inner;
    if src.len() < PAR_THRESHOLD {
        for (d, s) in dst.chunks_mut(full).zip(src.chunks(block)) {
            add(&mut d[lo..lo + block], s);
        }
    } else if outer > 1 {
        for_each_chunk_mut(dst, full, |(i, d)| {
            add(&mut d[lo..lo + block], &src[i * block..][..block])
        });
    } else {
        for_each_chunk_mut(&mut dst[lo..lo + block], CHUNK, |(i, d)| {
            let len = d.len();
            add(d, &src[i * CHUNK..][..len])
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_range_of_a_permuted_view() {
        let src: Vec<u32> = (0..24).collect();
        let l = Layout::contiguous(&[2, 3, 4]).permute(&[2, 0, 1]);
        let mut dst = vec![0; 7];
        copy_range(&src, &l, 5, &mut dst);
        let want: Vec<u32> = (5..12).map(|i| l.index_of(i) as u32).collect();
        assert_eq!(dst, want);
        let c = Layout::contiguous(&[2, 3]).narrow(0, 1, 1);
        let mut d2 = vec![0; 2];
        copy_range(&src, &c, 1, &mut d2);
        assert_eq!(d2, [4, 5]);
    }

    /// Large enough to run in parallel chunks that start and end inside
    /// parts and rows: the first axis (one row) and a middle one, with
    /// contiguous, transposed and empty parts.
    #[test]
    fn concat_in_parallel_chunks_across_parts() {
        let (a, b, c): (Vec<u32>, Vec<u32>, Vec<u32>) = (
            (0..7 * 20000).collect(),
            (0..20000 * 3).map(|x| x + 1_000_000).collect(),
            vec![],
        );
        for axis in [0, 1] {
            let (la, lb, lc) = if axis == 0 {
                (
                    Layout::contiguous(&[7, 20000]),
                    Layout::contiguous(&[20000, 3]).permute(&[1, 0]),
                    Layout::contiguous(&[0, 20000]),
                )
            } else {
                (
                    Layout::contiguous(&[5, 28000]),
                    Layout::contiguous(&[12000, 5]).permute(&[1, 0]),
                    Layout::contiguous(&[5, 0]),
                )
            };
            let parts = [(&a[..], &la), (&c[..], &lc), (&b[..], &lb)];
            let out = concat(&parts, axis);
            let outer = if axis == 0 { 1 } else { 5 };
            let mut want = Vec::new();
            for o in 0..outer {
                for (src, l) in parts {
                    let per = l.numel() / outer;
                    want.extend((o * per..(o + 1) * per).map(|i| src[l.index_of(i)]));
                }
            }
            assert!(out.len() > 4 * PAR_THRESHOLD);
            assert_eq!(out, want, "axis {axis}");
        }
    }

    #[test]
    fn concat_middle_axis_with_strided_parts() {
        // a: 2 x 1 x 3 (values 0..6), b: 2 x 2 x 3 as a transposed view of a 3 x 2 x 2 buffer.
        let a: Vec<i32> = (0..6).collect();
        let la = Layout::contiguous(&[2, 1, 3]);
        let b_store: Vec<i32> = (100..112).collect();
        let lb = Layout::contiguous(&[3, 2, 2]).permute(&[2, 1, 0]);
        let out = concat(&[(&a[..], &la), (&b_store[..], &lb)], 1);
        let mut want = Vec::new();
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..3 {
                    want.push(if j == 0 {
                        a[i * 3 + k]
                    } else {
                        b_store[lb.index_of(i * 6 + (j - 1) * 3 + k)]
                    });
                }
            }
        }
        assert_eq!(out, want);
    }

    #[test]
    fn concat_parallel_path_matches_serial_reference() {
        let n = PAR_THRESHOLD;
        let a: Vec<f32> = (0..2 * n).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..4 * n).map(|i| -(i as f32)).collect();
        let la = Layout::contiguous(&[4, n / 2]);
        let lb = Layout::contiguous(&[n, 4]).permute(&[1, 0]);
        let out = concat(&[(&a[..], &la), (&b[..], &lb)], 1);
        let row = n / 2 + n;
        for r in 0..4 {
            for c in [0, 1, n / 2 - 1, n / 2, n / 2 + 7, row - 1] {
                let want = if c < n / 2 {
                    a[r * n / 2 + c]
                } else {
                    b[lb.index_of(r * n + c - n / 2)]
                };
                assert_eq!(out[r * row + c], want);
            }
        }
        let whole = concat(&[(&a[..], &Layout::contiguous(&[2 * n]))], 0);
        assert_eq!(whole, a);
    }

    #[test]
    fn add_narrow_into_adds_only_the_block() {
        // dst 2 x 4 x 2, block rows 1..3 of axis 1.
        let mut dst = vec![1.0f32; 16];
        let src: Vec<f32> = (0..8).map(|i| i as f32).collect();
        add_narrow_into(&mut dst, &[2, 4, 2], 1, 1, 2, &src);
        let want = [
            1., 1., 1., 2., 3., 4., 1., 1., //
            1., 1., 5., 6., 7., 8., 1., 1.,
        ];
        assert_eq!(dst, want);
        // the large single-row path
        let n = 2 * PAR_THRESHOLD;
        let mut big = vec![0.0f64; n + 3];
        let s: Vec<f64> = (0..n).map(|i| i as f64).collect();
        add_narrow_into(&mut big, &[n + 3], 0, 2, n, &s);
        assert_eq!(big[0..3], [0.0, 0.0, 0.0]);
        assert_eq!(big[n + 1], (n - 1) as f64);
        assert_eq!(big[n + 2], 0.0);
    }
}
