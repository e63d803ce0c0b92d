//! Indexing kernels: reading elements picked by integer ids (`index_select`,
//! `gather`, embedding lookup) and the scatter-add backwards.
//!
//! Every backward is deterministic and free of atomics: the gradient buffer
//! is split into disjoint pieces (rows for `index_select`, lines along the
//! axis for `gather`), each piece is owned by one thread and sums its
//! contributions in a fixed order (increasing position in the ids), in the
//! compute type, rounding once on store. A repeated index accumulates.

use core::mem::MaybeUninit;

use num_traits::Zero;

use super::threads::for_each_chunk_mut;
use super::{
    assume_init_vec, for_each_chunk, init_defaults, map, uninit_vec, CHUNK, PAR_THRESHOLD,
};
use crate::{FloatDtype, IntDtype, Layout};

/// `(outer, dims[axis], inner)`: the products of the dims before, at and after `axis`.
pub fn split_at_axis(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = dims[..axis].iter().product();
    let inner = dims[axis + 1..].iter().product();
    (outer, dims[axis], inner)
}

/// Converts ids (any layout) to indices, row-major, checking each is in
/// `0..size`. `Err(id)` is the first id (row-major) that is negative or
/// `>= size`.
pub fn to_indices<I: IntDtype>(ids: &[I], layout: &Layout, size: usize) -> Result<Vec<usize>, I> {
    let idx = map(ids, layout, |v: I| match v.to_index() {
        Some(i) if i < size => i,
        _ => usize::MAX,
    });
    match idx.iter().position(|&i| i == usize::MAX) {
        Some(p) => Err(ids[layout.index_of(p)]),
        None => Ok(idx),
    }
}

/// `out[i] = src[base[i] + extra(i)]` for every element of `base` (row-major).
fn read_with<E, F>(src: &[E], base: &Layout, extra: F) -> Vec<E>
where
    E: Copy + Default + Send + Sync,
    F: Fn(usize) -> usize + Sync + Send,
{
    let n = base.numel();
    let mut out = vec![E::default(); n];
    let body = |(c, chunk): (usize, &mut [E])| {
        let start = c * CHUNK;
        let mut k = 0;
        base.for_each_offset_in(start, chunk.len(), |o| {
            chunk[k] = src[o + extra(start + k)];
            k += 1;
        });
    };
    for_each_chunk(&mut out, body);
    out
}

/// The layout of `layout` with axis `axis` resized to `len` and its stride set to 0.
fn without_axis(layout: &Layout, axis: usize, dims: &[usize]) -> Layout {
    let mut strides = layout.strides().to_vec();
    strides[axis] = 0;
    Layout::new(dims, &strides, layout.offset)
}

/// Picks the entries `idx` (each `< dims[axis]`) along `axis`: the output is
/// contiguous with `dims[axis]` replaced by `idx.len()`.
pub fn index_select<E: Copy + Default + Send + Sync>(
    src: &[E],
    layout: &Layout,
    axis: usize,
    idx: &[usize],
) -> Vec<E> {
    let mut dims = layout.shape().to_vec();
    debug_assert!(idx.iter().all(|&i| i < dims[axis]));
    dims[axis] = idx.len();
    let (_, n, inner) = split_at_axis(&dims, axis);
    if layout.is_contiguous() && inner > 0 && n > 0 {
        // Row copies (the embedding case): block (o, j) is source block (o, idx[j]).
        let a = layout.shape()[axis];
        let mut out = uninit_vec::<E>(layout.numel() / a.max(1) * n);
        let body = |(r, row): (usize, &mut [MaybeUninit<E>])| {
            let (o, j) = (r / n, r % n);
            let start = layout.offset + (o * a + idx[j]) * inner;
            init_defaults(row).copy_from_slice(&src[start..start + inner]);
        };
        if out.len() >= PAR_THRESHOLD {
            for_each_chunk_mut(&mut out, inner, body);
        } else {
            out.chunks_mut(inner).enumerate().for_each(body);
        }
        // SAFETY: every row went to one `body`, which initialized it.
        return unsafe { assume_init_vec(out) };
    }
    let stride = layout.strides()[axis];
    let base = without_axis(layout, axis, &dims);
    read_with(src, &base, |i| idx[(i / inner) % n] * stride)
}

/// Backward of [`index_select`]: `gx[o, idx[j], i] += gy[o, j, i]`, with
/// `gy` contiguous of dims `x_dims` where `x_dims[axis]` is replaced by `idx.len()`.
pub fn index_select_backward<E: FloatDtype>(
    gy: &[E],
    x_dims: &[usize],
    axis: usize,
    idx: &[usize],
) -> Vec<E> {
    let (outer, a, inner) = split_at_axis(x_dims, axis);
    let n = idx.len();
    debug_assert_eq!(gy.len(), outer * n * inner);
    let mut gx = vec![E::default(); outer * a * inner];
    if gx.is_empty() || n == 0 {
        return gx;
    }
    // Counting sort of the positions j by target row, increasing j within a row.
    let mut start = vec![0usize; a + 1];
    for &t in idx {
        start[t + 1] += 1;
    }
    for t in 0..a {
        start[t + 1] += start[t];
    }
    let mut fill = start.clone();
    let mut order = vec![0usize; n];
    for (j, &t) in idx.iter().enumerate() {
        order[fill[t]] = j;
        fill[t] += 1;
    }
    let body = |(r, row): (usize, &mut [E])| {
        let (o, t) = (r / a, r % a);
        let js = &order[start[t]..start[t + 1]];
        if js.is_empty() {
            return;
        }
        let mut acc = vec![E::Acc::zero(); inner];
        for &j in js {
            let g = &gy[(o * n + j) * inner..][..inner];
            for (s, &v) in acc.iter_mut().zip(g) {
                *s += v.to_acc();
            }
        }
        for (d, s) in row.iter_mut().zip(acc) {
            *d = E::from_acc(s);
        }
    };
    if gx.len() + gy.len() >= PAR_THRESHOLD {
        for_each_chunk_mut(&mut gx, inner, body);
    } else {
        gx.chunks_mut(inner).enumerate().for_each(body);
    }
    gx
}

/// `torch.gather`: `out[m] = src[m with m[axis] = idx[m]]` for every
/// multi-index `m` of `idx_dims` (same rank as `layout`, each dim except
/// `axis` at most the source's; `idx` contiguous, each `< dims[axis]`).
pub fn gather<E: Copy + Default + Send + Sync>(
    src: &[E],
    layout: &Layout,
    axis: usize,
    idx: &[usize],
    idx_dims: &[usize],
) -> Vec<E> {
    debug_assert_eq!(idx_dims.len(), layout.rank());
    debug_assert_eq!(idx.len(), idx_dims.iter().product::<usize>());
    let stride = layout.strides()[axis];
    let base = without_axis(layout, axis, idx_dims);
    read_with(src, &base, |i| idx[i] * stride)
}

/// Backward of [`gather`]: `gx[m with m[axis] = idx[m]] += gy[m]`, with `gy`
/// contiguous of dims `idx_dims`; the result is contiguous of dims `x_dims`.
pub fn gather_backward<E: FloatDtype>(
    gy: &[E],
    x_dims: &[usize],
    axis: usize,
    idx: &[usize],
    idx_dims: &[usize],
) -> Vec<E> {
    let rank = x_dims.len();
    let numel: usize = x_dims.iter().product();
    let a = x_dims[axis];
    if numel == 0 || idx.is_empty() {
        return vec![E::default(); numel];
    }
    // Work in a buffer whose innermost axis is `axis`: each line along it is
    // contiguous and owned by one thread.
    let others: Vec<usize> = (0..rank).filter(|&d| d != axis).collect();
    let line_dims: Vec<usize> = others.iter().map(|&d| x_dims[d]).collect();
    let mut istrides = vec![0usize; rank];
    let mut s = 1;
    for d in (0..rank).rev() {
        istrides[d] = s;
        s *= idx_dims[d];
    }
    let k_len = idx_dims[axis];
    let mut buf = vec![E::Acc::zero(); numel];
    let body = |(line, out): (usize, &mut [E::Acc])| {
        // The line's coordinates over the non-axis dims; skip lines the ids do not reach.
        let mut rem = line;
        let mut base = 0;
        for (j, &d) in others.iter().enumerate().rev() {
            let c = rem % line_dims[j];
            rem /= line_dims[j];
            if c >= idx_dims[d] {
                return;
            }
            base += c * istrides[d];
        }
        for k in 0..k_len {
            let i = base + k * istrides[axis];
            out[idx[i]] += gy[i].to_acc();
        }
    };
    if numel + gy.len() >= PAR_THRESHOLD {
        for_each_chunk_mut(&mut buf, a, body);
    } else {
        buf.chunks_mut(a).enumerate().for_each(body);
    }
    // Back to the order of `x_dims`: buffer axis `p` holds x axis `others[p]`, the last holds `axis`.
    let mut buf_dims = line_dims.clone();
    buf_dims.push(a);
    let mut inv = vec![0usize; rank];
    for (p, &d) in others.iter().enumerate() {
        inv[d] = p;
    }
    inv[axis] = rank - 1;
    let view = Layout::contiguous(&buf_dims).permute(&inv);
    map(&buf, &view, |v: E::Acc| E::from_acc(v))
}

/// Backward of picking entry `index` along `axis` (a view): `gy` (contiguous,
/// `x_dims` without `axis`) lands in a zero tensor of dims `x_dims`.
pub fn select_backward<E: Copy + Default + Send + Sync>(
    gy: &[E],
    x_dims: &[usize],
    axis: usize,
    index: usize,
) -> Vec<E> {
    let (outer, a, inner) = split_at_axis(x_dims, axis);
    let mut gx = vec![E::default(); outer * a * inner];
    if inner == 0 {
        return gx;
    }
    for (o, g) in gy.chunks(inner).enumerate() {
        gx[(o * a + index) * inner..][..inner].copy_from_slice(g);
    }
    gx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_select_picks_and_scatter_adds() {
        // x: 2 x 3 x 2, pick along axis 1 with a repeated index.
        let x: Vec<f64> = (0..12).map(|i| i as f64).collect();
        let l = Layout::contiguous(&[2, 3, 2]);
        let y = index_select(&x, &l, 1, &[2, 0, 2]);
        assert_eq!(y, [4., 5., 0., 1., 4., 5., 10., 11., 6., 7., 10., 11.]);
        let gy = vec![1.0f64; 12];
        let gx = index_select_backward(&gy, &[2, 3, 2], 1, &[2, 0, 2]);
        assert_eq!(gx, [1., 1., 0., 0., 2., 2., 1., 1., 0., 0., 2., 2.]);
        // a permuted (non-contiguous) source
        let lt = Layout::contiguous(&[3, 4]).permute(&[1, 0]); // 4 x 3, x[i][j] = src[j * 4 + i]
        let src: Vec<f64> = (0..12).map(|i| i as f64).collect();
        assert_eq!(
            index_select(&src, &lt, 0, &[3, 1]),
            [3., 7., 11., 1., 5., 9.]
        );
    }

    #[test]
    fn gather_matches_torch_semantics() {
        // torch.gather(x, 1, idx) with x = [[1, 2], [3, 4]], idx = [[0, 0], [1, 0]] -> [[1, 1], [4, 3]]
        let x = [1.0f32, 2., 3., 4.];
        let l = Layout::contiguous(&[2, 2]);
        let y = gather(&x, &l, 1, &[0, 0, 1, 0], &[2, 2]);
        assert_eq!(y, [1., 1., 4., 3.]);
        let gx = gather_backward(&[1.0f32, 2., 3., 4.], &[2, 2], 1, &[0, 0, 1, 0], &[2, 2]);
        assert_eq!(gx, [3., 0., 4., 3.]);
        // ids smaller than the source on a non-axis dim: x 3 x 2, idx 2 x 1 along axis 0
        let x: Vec<f64> = (0..6).map(|i| i as f64).collect();
        let y = gather(&x, &Layout::contiguous(&[3, 2]), 0, &[2, 1], &[2, 1]);
        assert_eq!(y, [4., 2.]);
        let gx = gather_backward(&[1.0f64, 1.0], &[3, 2], 0, &[2, 1], &[2, 1]);
        assert_eq!(gx, [0., 0., 1., 0., 1., 0.]);
    }

    #[test]
    fn parallel_scatter_add_is_exact_and_deterministic() {
        let (v, d, n) = (50usize, 700usize, 400usize);
        let idx: Vec<usize> = (0..n).map(|j| (j * 7) % v).collect();
        let gy: Vec<f32> = (0..n * d).map(|i| (i % 13) as f32).collect();
        let gx = index_select_backward(&gy, &[v, d], 0, &idx);
        for t in [0usize, 3, 49] {
            for c in [0usize, 5, 699] {
                let want: f32 = (0..n).filter(|&j| idx[j] == t).map(|j| gy[j * d + c]).sum();
                assert_eq!(gx[t * d + c], want);
            }
        }
        assert_eq!(gx, index_select_backward(&gy, &[v, d], 0, &idx));
    }

    #[test]
    fn bad_ids_are_reported() {
        let l = Layout::contiguous(&[3]);
        assert_eq!(to_indices(&[0i64, -1, 5], &l, 4), Err(-1));
        assert_eq!(to_indices(&[0u32, 4, 1], &l, 4), Err(4));
        assert_eq!(to_indices(&[0u32, 3, 1], &l, 4), Ok(vec![0, 3, 1]));
    }

    #[test]
    fn select_backward_places_the_slice() {
        let gx = select_backward(&[1.0f64, 2.0], &[2, 3], 1, 2);
        assert_eq!(gx, [0., 0., 1., 0., 0., 2.]);
    }
}
