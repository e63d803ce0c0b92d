//! Strided elementwise maps, parallel over chunks of the output.

use core::mem::MaybeUninit;

use super::simd::vectorized;
use super::threads::for_each_chunk_mut;
use super::{for_each_chunk, CHUNK, PAR_THRESHOLD};
use crate::Layout;

/// `out[i] = f(src[layout[i]])` for every element in row-major order.
pub fn map<I, O, F>(src: &[I], layout: &Layout, f: F) -> Vec<O>
where
    I: Copy + Send + Sync,
    O: Copy + Default + Send + Sync,
    F: Fn(I) -> O + Sync + Send,
{
    filled(layout.numel(), |out| map_uninit(src, layout, out, f))
}

/// A vector of `n` values written by `fill`, which must write every one of
/// them (the kernels below do): no zero-filling of outputs that are
/// overwritten anyway.
pub(crate) fn filled<O>(n: usize, fill: impl FnOnce(&mut [MaybeUninit<O>])) -> Vec<O> {
    let mut v = super::uninit_vec(n);
    fill(&mut v);
    // SAFETY: `fill` initialized all `n` values (every caller writes each
    // output element exactly once).
    unsafe { super::assume_init_vec(v) }
}

/// Like [`map`], writing into `out` (length = element count).
pub fn map_into<I, O, F>(src: &[I], layout: &Layout, out: &mut [O], f: F)
where
    I: Copy + Send + Sync,
    O: Copy + Send + Sync,
    F: Fn(I) -> O + Sync + Send,
{
    // SAFETY: `MaybeUninit<O>` has `O`'s layout, and `map_uninit` only
    // writes initialized values.
    let out = unsafe { &mut *(out as *mut [O] as *mut [MaybeUninit<O>]) };
    map_uninit(src, layout, out, f)
}

/// [`map_into`] over an output that may be uninitialized; writes every element.
pub(crate) fn map_uninit<I, O, F>(src: &[I], layout: &Layout, out: &mut [MaybeUninit<O>], f: F)
where
    I: Copy + Send + Sync,
    O: Copy + Send + Sync,
    F: Fn(I) -> O + Sync + Send,
{
    let n = layout.numel();
    assert_eq!(out.len(), n);
    if layout.is_contiguous() {
        let s = &src[layout.offset..layout.offset + n];
        let body = |(o, i): (&mut [MaybeUninit<O>], &[I])| {
            vectorized(
                #[inline(always)]
                || {
                    o.iter_mut()
                        .zip(i)
                        .for_each(|(o, &x)| *o = MaybeUninit::new(f(x)))
                },
            )
        };
        if n >= PAR_THRESHOLD {
            for_each_chunk_mut(out, CHUNK, |(i, o)| {
                let len = o.len();
                body((o, &s[i * CHUNK..][..len]))
            });
        } else {
            body((out, s));
        }
        return;
    }
    let [layout] = Layout::coalesce([layout]);
    if map_transposed(src, &layout, out, &f) {
        return;
    }
    let body = |(c, chunk): (usize, &mut [MaybeUninit<O>])| {
        let mut k = 0;
        layout.for_each_run_in(c * CHUNK, chunk.len(), |o, len, stride| {
            let dst = &mut chunk[k..k + len];
            if stride == 1 {
                let s = &src[o..o + len];
                vectorized(
                    #[inline(always)]
                    || {
                        dst.iter_mut()
                            .zip(s)
                            .for_each(|(d, &x)| *d = MaybeUninit::new(f(x)))
                    },
                );
            } else {
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = MaybeUninit::new(f(src[o + j * stride]));
                }
            }
            k += len;
        });
    };
    for_each_chunk(out, body);
}

/// Rows of the output per pass of [`map_transposed`].
const TRANSPOSE_ROWS: usize = 8;

/// [`map_uninit`] for a layout whose last two axes are a transposed
/// matrix (the next-to-last axis has stride 1, the last one does not: a
/// permuted view such as attention's keys read as `(d, t)`); returns
/// `false` (having done nothing) for any other layout.
///
/// Instead of gathering each output row along a stride (one cache line per
/// value), it reads [`TRANSPOSE_ROWS`] adjacent source values at a time,
/// one for each of that many output rows, so every line it loads is used
/// in full.
fn map_transposed<I, O, F>(src: &[I], layout: &Layout, out: &mut [MaybeUninit<O>], f: &F) -> bool
where
    I: Copy + Send + Sync,
    O: Copy + Send + Sync,
    F: Fn(I) -> O + Sync + Send,
{
    let (shape, strides) = (layout.shape(), layout.strides());
    let rank = shape.len();
    if rank < 2 || strides[rank - 2] != 1 || strides[rank - 1] <= 1 {
        return false;
    }
    let (rows, cols, step) = (shape[rank - 2], shape[rank - 1], strides[rank - 1]);
    let blocks = Layout::new(&shape[..rank - 2], &strides[..rank - 2], layout.offset).offsets();
    let block = |(base, dst): (usize, &mut [MaybeUninit<O>])| {
        for r0 in (0..rows).step_by(TRANSPOSE_ROWS) {
            let w = TRANSPOSE_ROWS.min(rows - r0);
            let dst = &mut dst[r0 * cols..(r0 + w) * cols];
            for c in 0..cols {
                let s = &src[base + r0 + c * step..][..w];
                for (i, &x) in s.iter().enumerate() {
                    dst[i * cols + c] = MaybeUninit::new(f(x));
                }
            }
        }
    };
    let per = rows * cols;
    if per == 0 {
        return true;
    }
    if out.len() >= PAR_THRESHOLD && blocks.len() > 1 {
        for_each_chunk_mut(out, per, |(i, o)| block((blocks[i], o)));
    } else {
        blocks.into_iter().zip(out.chunks_mut(per)).for_each(block);
    }
    true
}

/// `out[i] = f(a[la[i]], b[lb[i]])`; both layouts have the same shape
/// (a broadcast operand has stride 0 on its broadcast axes).
pub fn zip_map<A, B, O, F>(a: &[A], la: &Layout, b: &[B], lb: &Layout, f: F) -> Vec<O>
where
    A: Copy + Send + Sync,
    B: Copy + Send + Sync,
    O: Copy + Default + Send + Sync,
    F: Fn(A, B) -> O + Sync + Send,
{
    assert_eq!(la.shape(), lb.shape(), "zip_map: shapes differ");
    let n = la.numel();
    filled(n, |out| zip_map_uninit(a, la, b, lb, out, f))
}

/// Matching chunks of an output and two inputs.
type ZipChunk<'a, O, A, B> = ((&'a mut [MaybeUninit<O>], &'a [A]), &'a [B]);

/// [`zip_map`] into an output that may be uninitialized; writes every element.
fn zip_map_uninit<A, B, O, F>(
    a: &[A],
    la: &Layout,
    b: &[B],
    lb: &Layout,
    out: &mut [MaybeUninit<O>],
    f: F,
) where
    A: Copy + Send + Sync,
    B: Copy + Send + Sync,
    O: Copy + Send + Sync,
    F: Fn(A, B) -> O + Sync + Send,
{
    let n = la.numel();
    if la.is_contiguous() && lb.is_contiguous() {
        let a = &a[la.offset..la.offset + n];
        let b = &b[lb.offset..lb.offset + n];
        let body = |((o, x), y): ZipChunk<'_, O, A, B>| {
            vectorized(
                #[inline(always)]
                || {
                    for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                        *o = MaybeUninit::new(f(x, y));
                    }
                },
            )
        };
        if n >= PAR_THRESHOLD {
            for_each_chunk_mut(out, CHUNK, |(i, o)| {
                let r = i * CHUNK..i * CHUNK + o.len();
                body(((o, &a[r.clone()]), &b[r]))
            });
        } else {
            body(((out, a), b));
        }
        return;
    }
    // Both layouts have the same (coalesced) shape, so their runs along
    // the last axis coincide: walk them together, a whole run at a time.
    let [la, lb] = Layout::coalesce([la, lb]);
    let body = |(c, chunk): (usize, &mut [MaybeUninit<O>])| {
        let start = c * CHUNK;
        let mut runs_a = Vec::new();
        la.for_each_run_in(start, chunk.len(), |o, len, s| runs_a.push((o, len, s)));
        let mut k = 0;
        let mut runs_a = runs_a.into_iter();
        lb.for_each_run_in(start, chunk.len(), |ob, len, sb| {
            let (oa, _, sa) = runs_a.next().expect("the runs of both layouts coincide");
            let dst = &mut chunk[k..k + len];
            k += len;
            match (sa, sb) {
                (1, 1) => {
                    let (x, y) = (&a[oa..oa + len], &b[ob..ob + len]);
                    vectorized(
                        #[inline(always)]
                        || {
                            for ((o, &x), &y) in dst.iter_mut().zip(x).zip(y) {
                                *o = MaybeUninit::new(f(x, y));
                            }
                        },
                    )
                }
                (1, 0) => {
                    let (x, y) = (&a[oa..oa + len], b[ob]);
                    vectorized(
                        #[inline(always)]
                        || {
                            for (o, &x) in dst.iter_mut().zip(x) {
                                *o = MaybeUninit::new(f(x, y));
                            }
                        },
                    )
                }
                (0, 1) => {
                    let (x, y) = (a[oa], &b[ob..ob + len]);
                    vectorized(
                        #[inline(always)]
                        || {
                            for (o, &y) in dst.iter_mut().zip(y) {
                                *o = MaybeUninit::new(f(x, y));
                            }
                        },
                    )
                }
                _ => {
                    for (j, o) in dst.iter_mut().enumerate() {
                        *o = MaybeUninit::new(f(a[oa + j * sa], b[ob + j * sb]));
                    }
                }
            }
        });
    };
    for_each_chunk(out, body);
}

/// `out[i] = f(a[la[i]], b[lb[i]], c[lc[i]])` over three same-shaped layouts.
pub fn zip3_map<A, B, C, O, F>(
    a: &[A],
    la: &Layout,
    b: &[B],
    lb: &Layout,
    c: &[C],
    lc: &Layout,
    f: F,
) -> Vec<O>
where
    A: Copy + Send + Sync,
    B: Copy + Send + Sync,
    C: Copy + Send + Sync,
    O: Copy + Default + Send + Sync,
    F: Fn(A, B, C) -> O + Sync + Send,
{
    assert_eq!(la.shape(), lb.shape(), "zip3_map: shapes differ");
    assert_eq!(la.shape(), lc.shape(), "zip3_map: shapes differ");
    let n = la.numel();
    filled(n, |out| zip3_map_uninit((a, la), (b, lb), (c, lc), out, f))
}

/// [`zip3_map`] into an output that may be uninitialized; writes every element.
fn zip3_map_uninit<A, B, C, O, F>(
    (a, la): (&[A], &Layout),
    (b, lb): (&[B], &Layout),
    (c, lc): (&[C], &Layout),
    out: &mut [MaybeUninit<O>],
    f: F,
) where
    A: Copy + Send + Sync,
    B: Copy + Send + Sync,
    C: Copy + Send + Sync,
    O: Copy + Send + Sync,
    F: Fn(A, B, C) -> O + Sync + Send,
{
    let n = la.numel();
    if la.is_contiguous() && lb.is_contiguous() && lc.is_contiguous() {
        let a = &a[la.offset..la.offset + n];
        let b = &b[lb.offset..lb.offset + n];
        let c = &c[lc.offset..lc.offset + n];
        let body = |(ch, o): (usize, &mut [MaybeUninit<O>])| {
            let r = ch * CHUNK..ch * CHUNK + o.len();
            let (a, b, c) = (&a[r.clone()], &b[r.clone()], &c[r]);
            vectorized(
                #[inline(always)]
                || {
                    for (((o, &x), &y), &z) in o.iter_mut().zip(a).zip(b).zip(c) {
                        *o = MaybeUninit::new(f(x, y, z));
                    }
                },
            )
        };
        for_each_chunk(out, body);
        return;
    }
    let [la, lb, lc] = Layout::coalesce([la, lb, lc]);
    let body = |(ch, chunk): (usize, &mut [MaybeUninit<O>])| {
        let start = ch * CHUNK;
        let mut ia = Vec::with_capacity(chunk.len());
        let mut ib = Vec::with_capacity(chunk.len());
        la.for_each_offset_in(start, chunk.len(), |o| ia.push(o));
        lb.for_each_offset_in(start, chunk.len(), |o| ib.push(o));
        let mut k = 0;
        lc.for_each_offset_in(start, chunk.len(), |o| {
            chunk[k] = MaybeUninit::new(f(a[ia[k]], b[ib[k]], c[o]));
            k += 1;
        });
    };
    for_each_chunk(out, body);
}

/// A contiguous row-major copy of the elements a layout selects.
pub fn to_contiguous<E: Copy + Default + Send + Sync>(src: &[E], layout: &Layout) -> Vec<E> {
    map(src, layout, |x| x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_and_parallel_paths_agree() {
        let n = 3 * PAR_THRESHOLD;
        let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let l = Layout::contiguous(&[3, PAR_THRESHOLD]).permute(&[1, 0]);
        let out = map(&src, &l, |x| x + 1.0);
        for (i, v) in out.iter().enumerate().take(1000) {
            assert_eq!(*v, l.index_of(i) as f32 + 1.0);
        }
        let out2 = zip_map(&src, &l, &src, &l, |a, b| a + b);
        assert_eq!(out2[5], 2.0 * l.index_of(5) as f32);
    }

    /// Every kind of run pair (both unit stride, one broadcast along the
    /// run, any strides) and transposed matrices, across chunk boundaries,
    /// on several threads, against index-by-index.
    #[test]
    fn zip_paths_match_index_by_index() {
        let src: Vec<f64> = (0..8 * CHUNK).map(|i| (i % 1013) as f64 * 0.5).collect();
        let shape = [3, 7, 2 * CHUNK / 7 + 5];
        let c = Layout::contiguous(&shape);
        let inner = shape[2];
        let layouts = [
            c,
            Layout::new(&shape, &[0, inner, 1], 3),
            Layout::new(&shape, &[inner, 1, 0], 0),
            Layout::new(&shape, &[1, 3, 21], 0),
            Layout::new(&shape, &[0, 0, 0], 9),
            // Transposed matrices (7 rows: not a multiple of the rows per pass).
            Layout::contiguous(&[3, inner, 7]).permute(&[0, 2, 1]),
        ];
        for la in &layouts {
            for lb in &layouts {
                let got = zip_map(&src, la, &src, lb, |x, y| x * 3.0 - y);
                let want: Vec<f64> = (0..c.numel())
                    .map(|i| src[la.index_of(i)] * 3.0 - src[lb.index_of(i)])
                    .collect();
                assert_eq!(got, want, "{la:?} {lb:?}");
                let got3 = zip3_map(&src, la, &src, lb, &src, &c, |x, y, z| x - y * z);
                let want3: Vec<f64> = (0..c.numel())
                    .map(|i| src[la.index_of(i)] - src[lb.index_of(i)] * src[i])
                    .collect();
                assert_eq!(got3, want3, "{la:?} {lb:?}");
                let got1 = map(&src, lb, |x: f64| x + 1.0);
                let want1: Vec<f64> = (0..c.numel()).map(|i| src[lb.index_of(i)] + 1.0).collect();
                assert_eq!(got1, want1, "{lb:?}");
            }
        }
    }
}
