//! Fused (flash-style) scaled dot-product attention, forward and backward.
//!
//! Shapes: queries `(B, H, Tq, D)`, keys `(B, H, Tk, D)`, values
//! `(B, H, Tk, Dv)`, any strides. The output is
//! `softmax(mask(scale * q kᵀ)) v` `(B, H, Tq, Dv)`, computed for blocks of
//! [`QUERY_BLOCK`] rows with an online softmax over steps of up to
//! [`FORWARD_KEYS`] keys: no more than one step's scores per block ever
//! exist. Keys a query cannot see because of the causal limit or the
//! sliding window are never visited; padded keys are skipped inside a step.
//! The backward works on [`KEY_BLOCK`]-key blocks.
//!
//! `f32` and `f64` operands are read in place, at any strides; each task
//! widens its own head's rows of other dtypes to the compute type
//! ([`FloatDtype::Acc`]).
//! Each task transposes the keys (and, in the backward, the values) of its
//! head to `(D, Tk)` in its own buffer, so that every product's right
//! operand is row-major. Everything is computed in `E::Acc` and rounded
//! once on store, in the [`HeadsOrder`] the caller asks for.
//!
//! A query row that sees no key at all gets a zero output, a logsumexp of
//! `-inf`, and zero gradients (never NaN).
//!
//! The backward follows FlashAttention-2: the probabilities are recomputed
//! block by block from the saved logsumexp, `Di = rowsum(dO ∘ O)`,
//! `dS = P ∘ (dO vᵀ − Di)`, `dq = scale · dS k`, `dk = scale · dSᵀ q`,
//! `dv = Pᵀ dO`.

use core::mem::MaybeUninit;
use std::any::TypeId;
use std::borrow::Cow;

use num_traits::{Float, Zero};

#[cfg(target_arch = "x86_64")]
use super::simd::{as_f32, as_f32_mut};
use super::simd::{lane_max, lane_sum_of, lane_sum_zip, prefetch, prefetch_l2, vectorized};
use super::threads::{run_tasks, SyncPtr};
use super::{assume_init_vec, uninit_vec, PAR_THRESHOLD};
use crate::{FloatDtype, Layout, Real};

/// Keys per block of the backward. With 32-row query blocks too, a causal
/// head of 64 positions computes 3 of its 4 blocks (64 x 64 blocks would
/// compute the masked half as well): the Shakespeare step ~2% faster, a
/// 256-position one unchanged.
pub const KEY_BLOCK: usize = 32;

/// Query rows per block (of the forward's parallel tasks and the products).
pub const QUERY_BLOCK: usize = 32;

/// Keys per step of the forward's online softmax: a query block's scores
/// against all the keys it sees up to this many (32 KiB of `f32` scores)
/// in one product, one softmax pass and one product with the values, with
/// no rescaling of the output between steps (gpt6's forward: 32-key steps
/// ~6.0 -> 5.2 ms on one core, with the 8 x 32 assembly tiles).
pub const FORWARD_KEYS: usize = 256;

/// Which keys each query may not see. Positions are absolute: query row `i`
/// is at `q_offset + i`, key row `j` at `k_offset + j`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttnMask<'a> {
    /// Hide keys after the query (`kp > qp`).
    pub causal: bool,
    /// Sliding window `w`: hide keys with `kp + w <= qp`; implies the causal limit.
    pub window: Option<usize>,
    /// `(B, Tk)` row-major, `true` for a padded key (hidden from every query and head).
    pub padding: Option<&'a [bool]>,
    /// Absolute position of query row 0.
    pub q_offset: usize,
    /// Absolute position of key row 0.
    pub k_offset: usize,
}

impl AttnMask<'_> {
    /// The keys `[lo, hi)` that the causal limit and the window let query
    /// row `i` see, out of `tk` (padding not considered).
    #[inline]
    pub fn key_range(&self, i: usize, tk: usize) -> (usize, usize) {
        let qp = self.q_offset + i;
        let hi = if self.causal || self.window.is_some() {
            (qp + 1).saturating_sub(self.k_offset).min(tk)
        } else {
            tk
        };
        let lo = match self.window {
            Some(w) => (qp + 1).saturating_sub(w + self.k_offset).min(hi),
            None => 0,
        };
        (lo, hi)
    }

    /// Whether query row `i` of batch `b` may see key row `j` (of `tk`).
    pub fn visible(&self, b: usize, i: usize, j: usize, tk: usize) -> bool {
        let (lo, hi) = self.key_range(i, tk);
        (lo..hi).contains(&j) && !self.padding.is_some_and(|p| p[b * tk + j])
    }
}

/// The sizes of one attention problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    /// Batch.
    pub b: usize,
    /// Heads.
    pub h: usize,
    /// Query rows.
    pub tq: usize,
    /// Key rows.
    pub tk: usize,
    /// Query/key width.
    pub d: usize,
    /// Value width.
    pub dv: usize,
}

impl AttnDims {
    /// The sizes of `q` `(B, H, Tq, D)`, `k` `(B, H, Tk, D)`, `v` `(B, H, Tk, Dv)`.
    ///
    /// # Panics
    /// If the layouts are not rank 4 or do not agree (callers check first).
    pub fn of(ql: &Layout, kl: &Layout, vl: &Layout) -> Self {
        let (q, k, v) = (ql.shape(), kl.shape(), vl.shape());
        assert!(
            q.len() == 4 && k.len() == 4 && v.len() == 4,
            "attention takes rank-4 operands"
        );
        assert!(
            q[0] == k[0] && q[1] == k[1] && q[3] == k[3],
            "attention: q {q:?} and k {k:?} disagree"
        );
        assert!(k[..3] == v[..3], "attention: k {k:?} and v {v:?} disagree");
        AttnDims {
            b: q[0],
            h: q[1],
            tq: q[2],
            tk: k[2],
            d: q[3],
            dv: v[3],
        }
    }
}

/// Where the kernels' `(B, H, T, W)` results (the forward's output, the
/// backward's gradients) lie in memory: row-major in one of two axis
/// orders. The inputs may have any strides either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeadsOrder {
    /// `(B, H, T, W)` row-major: each head's rows together (the order of
    /// PyTorch's `scaled_dot_product_attention`).
    #[default]
    HeadMajor,
    /// `(B, T, H, W)` row-major: each position's heads together (the order
    /// of flash-attn), so that merging the heads back into `(B, T, H·W)`
    /// is a view and the gradients need no transposing copy.
    SeqMajor,
}

impl HeadsOrder {
    /// The layout, read as `(B, H, T, W)`, of a result stored in this order.
    ///
    /// ```
    /// use zerfoo_kernels::cpu::attention::HeadsOrder;
    /// let l = HeadsOrder::SeqMajor.layout([2, 3, 5, 4]);
    /// assert_eq!((l.shape(), l.strides()), (&[2, 3, 5, 4][..], &[60, 4, 12, 1][..]));
    /// assert!(HeadsOrder::HeadMajor.layout([2, 3, 5, 4]).is_contiguous());
    /// ```
    pub fn layout(self, [b, h, t, w]: [usize; 4]) -> Layout {
        match self {
            HeadsOrder::HeadMajor => Layout::contiguous(&[b, h, t, w]),
            HeadsOrder::SeqMajor => Layout::contiguous(&[b, t, h, w]).permute(&[0, 2, 1, 3]),
        }
    }

    /// The dims `(B, H, T, W)` as stored in this order (`(B, T, H, W)` for
    /// [`HeadsOrder::SeqMajor`]); other ranks as they are.
    pub fn stored_dims(self, bhtw: &[usize]) -> Vec<usize> {
        match (self, bhtw) {
            (HeadsOrder::SeqMajor, &[b, h, t, w]) => vec![b, t, h, w],
            _ => bhtw.to_vec(),
        }
    }
}

/// Where the rows of a `(B, H, T, W)` layout start: row `i` of head `bh`
/// (`= batch · H + head`) at `start(bh) + i · row_stride`.
#[derive(Clone, Copy, Debug)]
struct RowIndex {
    offset: usize,
    batch_stride: usize,
    head_stride: usize,
    row_stride: usize,
    heads: usize,
}

impl RowIndex {
    fn of(layout: &Layout) -> Self {
        let s = layout.strides();
        RowIndex {
            offset: layout.offset,
            batch_stride: s[0],
            head_stride: s[1],
            row_stride: s[2],
            heads: layout.shape()[1].max(1),
        }
    }

    /// Where row 0 of head `bh` starts.
    #[inline]
    fn start(&self, bh: usize) -> usize {
        self.offset + bh / self.heads * self.batch_stride + bh % self.heads * self.head_stride
    }
}

/// A `(B, H, T, W)` operand, read a head's rows at a time in the compute
/// type: in place when it already is the compute type with unit-stride rows
/// (an `f32` or `f64` view, any other strides), else widened head by head
/// into the task's own row-major copy (in its cache, where the kernels read
/// it next, instead of a widened copy of the whole operand in memory).
struct HeadRows<'a, E> {
    data: &'a [E],
    index: RowIndex,
    /// Values per row, and their stride.
    width: usize,
    col_stride: usize,
    in_place: bool,
}

impl<'a, E: FloatDtype> HeadRows<'a, E> {
    fn of(data: &'a [E], layout: &Layout) -> Self {
        let (width, col_stride) = (layout.shape()[3], layout.strides()[3]);
        HeadRows {
            data,
            index: RowIndex::of(layout),
            width,
            col_stride,
            in_place: TypeId::of::<E>() == TypeId::of::<E::Acc>()
                && (col_stride == 1 || width <= 1),
        }
    }

    /// Asks for rows `rows` of head `bh` to be brought into L2 (see
    /// [`prefetch_head_rows`]).
    #[inline]
    fn prefetch_head(&self, bh: usize, rows: core::ops::Range<usize>) {
        let run = (self.width.max(1) - 1) * self.col_stride + 1;
        prefetch_head_rows(self.data.as_ptr(), &self.index, bh, rows, run);
    }

    /// Rows `rows` of head `bh` in the compute type, and their stride (in
    /// place: the operand from the first of those rows on).
    fn head(&self, bh: usize, rows: core::ops::Range<usize>) -> (Cow<'a, [E::Acc]>, usize) {
        let st = self.index.row_stride;
        let start = self.index.start(bh) + rows.start * st;
        if self.in_place {
            // SAFETY: `E` and `E::Acc` are the same type (same TypeId).
            let same = unsafe {
                core::slice::from_raw_parts(self.data.as_ptr().cast::<E::Acc>(), self.data.len())
            };
            return (Cow::Borrowed(tail(same, start)), st);
        }
        let rows = Layout::new(&[rows.len(), self.width], &[st, self.col_stride], start);
        (
            Cow::Owned(super::map(self.data, &rows, |x: E| x.to_acc())),
            self.width,
        )
    }
}

/// Asks for rows `rows` (`w` values from each row's start) of head `bh` of
/// the `(B, H, T, W)` operand at `data` laid out as `index` to be brought
/// into L2: the next head's operands, while this head computes. A head's
/// rows lie apart (rows of `(B, T, H, D)`, or `q`, `k`, `v` side by side in
/// one projection's rows), which the hardware prefetchers do not follow, so
/// without this each head began by waiting for its rows from L3 or memory.
#[inline]
fn prefetch_head_rows<E>(
    data: *const E,
    index: &RowIndex,
    bh: usize,
    rows: core::ops::Range<usize>,
    w: usize,
) {
    let start = data.wrapping_add(index.start(bh));
    for r in rows {
        prefetch_l2(start.wrapping_add(r * index.row_stride), w);
    }
}

/// Step `s`'s share of `t` rows split into `steps` steps (`s < steps`):
/// together the steps cover `0..t` once.
#[inline]
fn share(t: usize, (s, steps): (usize, usize)) -> core::ops::Range<usize> {
    t * s / steps..t * (s + 1) / steps
}

/// The row stride of a head's keys or values transposed (`w x t`): `t`
/// rounded up to whole 64-byte lines of `f32` and then to an odd number of
/// them, so that the rows of a column block fall into different L1 sets
/// (at 256 positions, rows 1 KiB apart shared a few sets: 16 rows a set,
/// twice the ways, and the products' right operand kept missing L1; gpt6's
/// shapes, calls alternating in one process, 2 threads: forward 0.8-2.0%
/// faster, backward 0-0.5%; one thread: both ~2%).
#[inline]
fn transposed_stride(t: usize) -> usize {
    let lines = t.div_ceil(16);
    16 * (lines | 1)
}

/// Rounds `src` (`n` rows of `w`, compute type, row-major) times `scale` to
/// `E` and writes it as rows `i0..i0 + n` of head `bh` of `dst`, a result
/// laid out as `index` says (written into possibly uninitialized memory).
///
/// # Safety
/// Those rows of `dst` lie inside its allocation and are the caller's
/// alone while it writes them.
#[inline]
unsafe fn store_rows<E: FloatDtype>(
    dst: SyncPtr<E>,
    index: &RowIndex,
    (bh, i0): (usize, usize),
    src: &[E::Acc],
    w: usize,
    scale: E::Acc,
) {
    if w == 0 {
        return;
    }
    let start = index.start(bh) + i0 * index.row_stride;
    vectorized(
        #[inline(always)]
        || {
            for (r, row) in src.chunks_exact(w).enumerate() {
                let out = dst.get().wrapping_add(start + r * index.row_stride);
                if index.row_stride != w {
                    prefetch::<true, E>(out.wrapping_add(ROWS_AHEAD * index.row_stride), w);
                }
                // SAFETY: the caller's guarantee; the row may be
                // uninitialized memory (written, never read).
                let out = unsafe {
                    core::slice::from_raw_parts_mut(out.cast::<core::mem::MaybeUninit<E>>(), w)
                };
                for (o, &a) in out.iter_mut().zip(row) {
                    o.write(E::from_acc(a * scale));
                }
            }
        },
    )
}

/// Rows ahead that the kernels ask for when a head's rows lie apart (a
/// `(B, T, H, D)` view, or `q`, `k` and `v` side by side in one projection's
/// rows), a pattern the hardware prefetchers do not follow: a training
/// step's activations come from L3, and without these requests every row
/// waited for its own misses (gpt6's attention, rows 1152 values apart:
/// backward 8.5 -> 6.8 ms, forward 3.8 -> 3.45 ms from L3).
const ROWS_AHEAD: usize = 8;

/// Rows `0..n` of a head (`w` values each, row stride `st`) transposed into
/// `out`, `w x stride` row-major (columns `n..stride` left as they are):
/// the keys or values of one head, read in place and transposed by the
/// task that uses them, in its own cache.
fn transpose_rows<A: Real>(
    (rows, st): (&[A], usize),
    n: usize,
    w: usize,
    stride: usize,
    out: &mut [A],
) {
    if n == 0 || w == 0 {
        return;
    }
    let rows = &rows[..(n - 1) * st + w];
    assert!(out.len() >= (w - 1) * stride + n);
    // `f32` with AVX: 8 x 8 blocks transposed in registers (value by value
    // this was ~15% of the attention kernels at 64 positions).
    let (n8, w8) = transpose_f32_blocks(rows, st, (n, w), stride, out);
    // The rest value by value, written in order, one output row (an input
    // column) at a time: the input rows stay in L1.
    for (c, orow) in out.chunks_exact_mut(stride).take(w).enumerate() {
        let from = if c < w8 { n8 } else { 0 };
        for (j, o) in orow[..n].iter_mut().enumerate().skip(from) {
            *o = rows[j * st + c];
        }
    }
}

/// The whole 8 x 8 blocks of [`transpose_rows`] for `f32` on a CPU with
/// AVX: input rows `0..n8` by columns `0..w8` (`n8`, `w8` the multiples of
/// 8 below `n`, `w`), which it returns; `(0, 0)` (nothing done) otherwise.
#[inline]
fn transpose_f32_blocks<A: Real>(
    rows: &[A],
    st: usize,
    (n, w): (usize, usize),
    stride: usize,
    out: &mut [A],
) -> (usize, usize) {
    let (n8, w8) = (n / 8 * 8, w / 8 * 8);
    #[cfg(target_arch = "x86_64")]
    if TypeId::of::<A>() == TypeId::of::<f32>()
        && n8 > 0
        && w8 > 0
        && std::arch::is_x86_feature_detected!("avx")
    {
        let (src, dst) = (rows.as_ptr().cast::<f32>(), out.as_mut_ptr().cast::<f32>());
        for j0 in (0..n8).step_by(8) {
            if st != w {
                // Rows apart: the next block's (see `ROWS_AHEAD`).
                for r in j0 + 8..(j0 + 16).min(n) {
                    prefetch::<false, f32>(src.wrapping_add(r * st), w);
                }
            }
            for c0 in (0..w8).step_by(8) {
                let from: [*const f32; 8] =
                    core::array::from_fn(|r| src.wrapping_add((j0 + r) * st + c0));
                // SAFETY: AVX is present; `A` is `f32` (same TypeId); input
                // rows `j0..j0 + 8` hold columns `c0..c0 + 8` (`rows` covers
                // `n` rows of `w`), and output rows `c0..c0 + 8` columns
                // `j0..j0 + 8` lie inside `out` (asserted by the caller).
                unsafe {
                    super::matmul::transpose_f32_8x8(from, dst.add(c0 * stride + j0), stride)
                };
            }
        }
        return (n8, w8);
    }
    let _ = (rows, st, stride, out);
    (0, 0)
}

/// `x` from index `from` on (empty past its end: a zero-width operand).
#[inline]
fn tail<A>(x: &[A], from: usize) -> &[A] {
    x.get(from..).unwrap_or(&[])
}

/// `c += A · B` and `c = A · B` for compute-type blocks.
use super::matmul::{gemm_acc, gemm_set};

/// Where the attention scale is applied: inside the exponentials
/// (`exp(sc·s − sc·m)`, one fused multiply-add, no pass over the scores)
/// when it is positive, which keeps each row's maximum where it is;
/// otherwise onto the scores as they are computed, the exponentials then
/// taking 1.
#[derive(Clone, Copy)]
struct ScaleSplit<A> {
    /// The factor [`scores`] applies, if any.
    scores: Option<A>,
    /// The factor inside the exponentials.
    exp: A,
}

impl<A: Real> ScaleSplit<A> {
    fn of(scale: A) -> Self {
        if scale > A::zero() {
            ScaleSplit {
                scores: None,
                exp: scale,
            }
        } else {
            ScaleSplit {
                scores: Some(scale),
                exp: A::one(),
            }
        }
    }
}

/// Scores of `bq` query rows `q` (row stride `qst`) against keys
/// `j0..j0 + n` of a head's transposed keys `kt` (`d x tk`, row-major,
/// rows `ktst` apart, `(j0, ktst)`):
/// `s = q · kt[:, j0..j0 + n]`, `bq x n`, times `scale` if given (see
/// [`ScaleSplit`]). Reading the keys transposed makes the GEMM's right
/// operand row-major, which packs with plain row copies.
#[inline]
fn scores<A: Real>(
    (q, qst): (&[A], usize),
    kt: &[A],
    (j0, ktst): (usize, usize),
    (bq, n, d): (usize, usize, usize),
    scale: Option<A>,
    s: &mut [A],
) {
    gemm_set(bq, n, d, q, (qst, 1), &kt[j0..], (ktst, 1), s);
    if let Some(scale) = scale {
        s.iter_mut().for_each(|x| *x *= scale);
    }
}

/// Sets to `-inf` the scores (`bq x n`, query rows `i0..`, keys `j0..`) that
/// the mask hides. Blocks every row fully sees are left untouched.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn mask_block<A: Real>(
    mask: &AttnMask<'_>,
    pad: Option<&[bool]>,
    (i0, bq): (usize, usize),
    (j0, n): (usize, usize),
    tk: usize,
    s: &mut [A],
) {
    let (lo_last, _) = mask.key_range(i0 + bq - 1, tk);
    let (_, hi_first) = mask.key_range(i0, tk);
    let pad = pad.map(|p| &p[j0..j0 + n]).filter(|p| p.iter().any(|&x| x));
    if pad.is_none() && j0 >= lo_last && j0 + n <= hi_first {
        return;
    }
    let ninf = A::neg_infinity();
    for (r, row) in s.chunks_exact_mut(n).enumerate() {
        // The row's hidden keys before `lo` and from `hi` on, then the padding.
        let (lo, hi) = mask.key_range(i0 + r, tk);
        let lo = lo.clamp(j0, j0 + n) - j0;
        let hi = hi.clamp(j0 + lo, j0 + n) - j0;
        row[..lo].fill(ninf);
        row[hi..].fill(ninf);
        if let Some(p) = pad {
            for (x, _) in row.iter_mut().zip(p).filter(|(_, &p)| p) {
                *x = ninf;
            }
        }
    }
}

/// `s[r, j] = exp(sc · s[r, j] − shift[r])` (one fused multiply-add, then
/// the exponential) over the `n`-wide rows of `s`: the backward's
/// probabilities recomputed from the raw scores and the logsumexps. A row
/// with shift `+inf` (it sees no key) becomes 0, as `exp(-inf)` does.
fn exp_rows<A: Real>(s: &mut [A], n: usize, sc: A, shift: &[A]) {
    #[cfg(target_arch = "x86_64")]
    if let Some((s, sc)) = as_f32_avx512(s, sc) {
        // SAFETY: AVX-512F is present (checked by `as_f32_avx512`).
        unsafe { f32_avx512::exp_rows(s, n, sc, as_f32(shift)) };
        return;
    }
    exp_rows_portable(s, n, sc, shift)
}

/// [`exp_rows`] in plain (auto-vectorized) code.
fn exp_rows_portable<A: Real>(s: &mut [A], n: usize, sc: A, shift: &[A]) {
    vectorized(
        #[inline(always)]
        || {
            for (row, &m) in s.chunks_exact_mut(n).zip(shift) {
                row.iter_mut()
                    .for_each(|x| *x = x.mul_add(sc, -m).fast_exp());
            }
        },
    )
}

/// One key block of the forward's online softmax, for the `bq` rows of
/// `n` raw scores in `s` (hidden keys at `-inf`), with running row maxima
/// `m` (raw, unscaled: `sc > 0`) and sums `l`: per row, the new maximum
/// `m' = max(m, max_j s)`, `s ← exp(sc·s − sc·m')`, the rescaling factor
/// `alpha = exp(sc·m − sc·m')` (exactly 1 when the maximum stays, 0 on a
/// row's first visible block) and `l ← l·alpha + Σ_j s`. A row that sees
/// none of the block's keys becomes zeros, with `alpha = 1`.
///
/// With AVX-512, `f32` rows run 16 lanes at a time with the 16-lane
/// exponential; the bits are the same either way.
fn softmax_step<A: Real>(s: &mut [A], n: usize, sc: A, m: &mut [A], l: &mut [A], alpha: &mut [A]) {
    #[cfg(target_arch = "x86_64")]
    if let Some((s, sc)) = as_f32_avx512(s, sc) {
        let (m, l, alpha) = (as_f32_mut(m), as_f32_mut(l), as_f32_mut(alpha));
        // SAFETY: AVX-512F is present (checked by `as_f32_avx512`).
        unsafe { f32_avx512::softmax_step(s, n, sc, m, l, alpha) };
        return;
    }
    softmax_step_portable(s, n, sc, m, l, alpha)
}

/// [`softmax_step`] in plain (auto-vectorized) code.
fn softmax_step_portable<A: Real>(
    s: &mut [A],
    n: usize,
    sc: A,
    m: &mut [A],
    l: &mut [A],
    alpha: &mut [A],
) {
    let ninf = A::neg_infinity();
    vectorized(
        #[inline(always)]
        || {
            for (r, row) in s.chunks_exact_mut(n).enumerate() {
                if row.iter().all(|&x| x == ninf) {
                    row.fill(A::zero());
                    alpha[r] = A::one();
                    continue;
                }
                let m_new = m[r].max(lane_max(row));
                let shift = sc * m_new;
                alpha[r] = (sc * m[r] - shift).fast_exp();
                m[r] = m_new;
                row.iter_mut()
                    .for_each(|x| *x = x.mul_add(sc, -shift).fast_exp());
                l[r] = l[r] * alpha[r] + lane_sum_of(row, |x| x);
            }
        },
    )
}

/// `(s, sc)` as `f32` when `A` is `f32` and the CPU has AVX-512.
#[cfg(target_arch = "x86_64")]
#[inline]
fn as_f32_avx512<A: Real>(s: &mut [A], sc: A) -> Option<(&mut [f32], f32)> {
    if TypeId::of::<A>() != TypeId::of::<f32>() || !super::simd::has_avx512() {
        return None;
    }
    Some((as_f32_mut(s), sc.as_f64() as f32))
}

/// The `f32` AVX-512 forms of [`exp_rows`] and [`softmax_step`].
#[cfg(target_arch = "x86_64")]
mod f32_avx512 {
    use core::arch::x86_64::*;

    use crate::cpu::simd::f32x16::{fold_add, lanes};
    use crate::fastmath::exp_f32x16;

    /// See [`super::exp_rows`].
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_rows(s: &mut [f32], n: usize, sc: f32, shift: &[f32]) {
        let vectors = n.div_ceil(16);
        let scv = _mm512_set1_ps(sc);
        for (row, &m) in s.chunks_exact_mut(n).zip(shift) {
            let sh = _mm512_set1_ps(m);
            let p = row.as_mut_ptr();
            for v in 0..vectors {
                let k = lanes(n, v);
                // SAFETY: the lanes in `k` are columns `16v..n` of this row.
                unsafe {
                    let x = _mm512_maskz_loadu_ps(k, p.add(16 * v));
                    let e = exp_f32x16(_mm512_fmsub_ps(x, scv, sh));
                    _mm512_mask_storeu_ps(p.add(16 * v), k, e);
                }
            }
        }
    }

    /// See [`super::softmax_step`].
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn softmax_step(
        s: &mut [f32],
        n: usize,
        sc: f32,
        m: &mut [f32],
        l: &mut [f32],
        alpha: &mut [f32],
    ) {
        let vectors = n.div_ceil(16);
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        let scv = _mm512_set1_ps(sc);
        // 16 rows at a time: their sums wait in `sums` for the rescaling
        // factors, whose exponentials are taken as one vector.
        for (g, rows) in s.chunks_mut(16 * n).enumerate() {
            let mut sums = [0f32; 16];
            let r0 = 16 * g;
            for (i, row) in rows.chunks_exact_mut(n).enumerate() {
                let r = r0 + i;
                let p = row.as_mut_ptr();
                // SAFETY: the lanes in `lanes(n, v)` are this row's columns
                // `16v..n`.
                unsafe {
                    // The row's maximum in 16 lanes (`max(x, acc)` keeps
                    // `acc` where `x` is NaN, as `lane_max` skips it), and
                    // whether any score is not `-inf`.
                    let (mut mx, mut seen) = (ninf, 0);
                    for v in 0..vectors {
                        let x = _mm512_mask_loadu_ps(ninf, lanes(n, v), p.add(16 * v));
                        seen |= _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(x, ninf);
                        mx = _mm512_max_ps(x, mx);
                    }
                    if seen == 0 {
                        for v in 0..vectors {
                            _mm512_mask_storeu_ps(p.add(16 * v), lanes(n, v), _mm512_setzero_ps());
                        }
                        // exp(0) = 1 below, and the sum stays.
                        alpha[r] = 0.0;
                        continue;
                    }
                    let m_new = m[r].max(_mm512_reduce_max_ps(mx));
                    let shift = sc * m_new;
                    // The rescaling's argument (its exponential below).
                    alpha[r] = sc * m[r] - shift;
                    m[r] = m_new;
                    let sh = _mm512_set1_ps(shift);
                    // Summed in `lane_sum_of`'s lanes (the lanes past `n`
                    // add zeros).
                    let mut sum = _mm512_setzero_ps();
                    for v in 0..vectors {
                        let k = lanes(n, v);
                        let x = _mm512_maskz_loadu_ps(k, p.add(16 * v));
                        let e = exp_f32x16(_mm512_fmsub_ps(x, scv, sh));
                        _mm512_mask_storeu_ps(p.add(16 * v), k, e);
                        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(k, e));
                    }
                    sums[i] = fold_add(sum);
                }
            }
            let k = lanes(rows.len() / n, 0);
            // SAFETY: the lanes in `k` are rows `r0..` of `alpha`, `l`.
            unsafe {
                let (ap, lp) = (alpha.as_mut_ptr().add(r0), l.as_mut_ptr().add(r0));
                let a = exp_f32x16(_mm512_maskz_loadu_ps(k, ap));
                let lv = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, lp), a);
                let lv = _mm512_add_ps(lv, _mm512_loadu_ps(sums.as_ptr()));
                _mm512_mask_storeu_ps(ap, k, a);
                _mm512_mask_storeu_ps(lp, k, lv);
            }
        }
    }
}

/// The keys `[lo, hi)` that any of query rows `i0..i0 + bq` may see.
#[inline]
fn block_keys(mask: &AttnMask<'_>, i0: usize, bq: usize, tk: usize) -> (usize, usize) {
    let (lo, _) = mask.key_range(i0, tk);
    let (_, hi) = mask.key_range(i0 + bq - 1, tk);
    (lo, hi.max(lo))
}

/// Whether the backward visits the key block `j0..j0 + n` for a query
/// block whose rows see keys `(lo, hi)` ([`block_keys`]): some of them
/// lie in it. (A block that sees nothing, `lo == hi`, is visited when
/// `lo` falls inside: its probabilities there are zeros.)
#[inline]
fn visits((lo, hi): (usize, usize), j0: usize, n: usize) -> bool {
    hi > j0 && lo < j0 + n
}

/// One block of `bq` query rows `q` (stride `qst`) of one head: writes
/// `o = softmax(scale · q kᵀ) v` (`bq x dv`, compute type) and the rows'
/// logsumexps into `lse`. `kt` is the head's keys transposed (`d x tk`,
/// rows [`transposed_stride`]`(tk)` apart),
/// `v` its value rows at stride `vst`; `sbuf` holds a step's scores
/// (`bq x FORWARD_KEYS.min(tk)` at least).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn forward_block<A: Real>(
    q: (&[A], usize),
    kt: &[A],
    (v, vst): (&[A], usize),
    mask: &AttnMask<'_>,
    pad: Option<&[bool]>,
    (i0, bq): (usize, usize),
    (tk, d, dv): (usize, usize, usize),
    scale: A,
    (o, lse, sbuf): (&mut [A], &mut [A], &mut [A]),
    probs: Option<BlockProbs<'_, A>>,
) {
    let ninf = A::neg_infinity();
    let mut m = [ninf; QUERY_BLOCK];
    let mut l = [A::zero(); QUERY_BLOCK];
    let mut alpha = [A::zero(); QUERY_BLOCK];
    let (m, l, alpha) = (&mut m[..bq], &mut l[..bq], &mut alpha[..bq]);
    let split = ScaleSplit::of(scale);
    let (lo, hi) = block_keys(mask, i0, bq, tk);
    let mut j0 = lo;
    while j0 < hi {
        let n = FORWARD_KEYS.min(hi - j0);
        let s = &mut sbuf[..bq * n];
        scores(
            q,
            kt,
            (j0, transposed_stride(tk)),
            (bq, n, d),
            split.scores,
            s,
        );
        mask_block(mask, pad, (i0, bq), (j0, n), tk, s);
        softmax_step(s, n, split.exp, m, l, alpha);
        let pv = tail(v, j0 * vst);
        if j0 == lo {
            // The first block: `o` starts as `p v` (what it holds is not read).
            gemm_set(bq, dv, n, s, (n, 1), pv, (vst, 1), o);
        } else {
            for (orow, &a) in o.chunks_exact_mut(dv).zip(alpha.iter()) {
                if a != A::one() {
                    orow.iter_mut().for_each(|x| *x *= a);
                }
            }
            gemm_acc(bq, dv, n, s, (n, 1), pv, (vst, 1), o);
        }
        j0 += n;
    }
    for (r, (orow, lr)) in o.chunks_exact_mut(dv).zip(lse.iter_mut()).enumerate() {
        if l[r] > A::zero() {
            let inv = l[r].recip();
            orow.iter_mut().for_each(|x| *x *= inv);
            *lr = split.exp * m[r] + l[r].ln();
        } else {
            orow.fill(A::zero());
            *lr = ninf;
        }
    }
    if let Some(BlockProbs { head, layout, ib }) = probs {
        // One step saw all the keys (`ProbLayout::of`): `sbuf` holds its
        // `exp(sc·s − sc·m)`, which `1 / l` normalizes.
        let n = hi - lo;
        let inv: [A; QUERY_BLOCK] = core::array::from_fn(|r| {
            if r < bq && l[r] > A::zero() {
                l[r].recip()
            } else {
                A::zero()
            }
        });
        for (jb, j0) in (0..tk).step_by(KEY_BLOCK).enumerate() {
            let Some(start) = layout.tile(ib, jb) else {
                continue;
            };
            let w = KEY_BLOCK.min(tk - j0);
            let tile = &mut head[start..start + bq * w];
            // The tile's keys that the step saw: `c0..c1`.
            let (c0, c1) = (lo.clamp(j0, j0 + w) - j0, hi.clamp(j0, j0 + w) - j0);
            for (r, dst) in tile.chunks_exact_mut(w).enumerate() {
                dst[..c0].fill(MaybeUninit::new(A::zero()));
                dst[c1..].fill(MaybeUninit::new(A::zero()));
                let src = &sbuf[r * n + (j0 + c0 - lo)..][..c1 - c0];
                for (p, &e) in dst[c0..c1].iter_mut().zip(src) {
                    p.write(e * inv[r]);
                }
            }
        }
    }
}

/// Where [`forward_block`] writes a query block's probabilities for the
/// backward: block `ib`'s tiles in `head`, one head's part of the saved
/// probabilities laid out as `layout` says.
struct BlockProbs<'a, A> {
    head: &'a mut [MaybeUninit<A>],
    layout: &'a ProbLayout,
    ib: usize,
}

/// Where [`attention_forward_for_backward`] keeps the softmax
/// probabilities for the backward, which then reads them instead of
/// recomputing the scores and their exponentials (gpt6's attention
/// backward: ~15% of its time). Per head, the `QUERY_BLOCK x KEY_BLOCK`
/// tiles (row-major, narrower at the last key block) that the backward
/// visits, in the order it visits them (key block after key block, the
/// query blocks that see each in order), so it reads them as one stream;
/// zero where a key is hidden. The same for every head (the causal limit
/// and the window do not depend on the head; padded keys are zeros like
/// other hidden ones).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProbLayout {
    /// Key blocks.
    key_blocks: usize,
    /// Where tile `(query block, key block)` starts in a head's part, if
    /// the backward visits it (`query block · key_blocks + key block`).
    tiles: Vec<Option<usize>>,
    /// Values per head.
    per_head: usize,
}

impl ProbLayout {
    /// The layout for `tq` queries and `tk` keys under `mask`, when the
    /// forward's online softmax takes each query block's keys in one step
    /// (so its probabilities are final when it ends): at most
    /// [`FORWARD_KEYS`] keys a block. Else `None`: the backward recomputes.
    fn of(mask: &AttnMask<'_>, tq: usize, tk: usize) -> Option<Self> {
        let (query_blocks, key_blocks) = (tq.div_ceil(QUERY_BLOCK), tk.div_ceil(KEY_BLOCK));
        let keys: Vec<(usize, usize)> = (0..query_blocks)
            .map(|ib| {
                let i0 = ib * QUERY_BLOCK;
                block_keys(mask, i0, QUERY_BLOCK.min(tq - i0), tk)
            })
            .collect();
        if keys.iter().any(|&(lo, hi)| hi - lo > FORWARD_KEYS) {
            return None;
        }
        let mut tiles = vec![None; query_blocks * key_blocks];
        let mut per_head = 0;
        for jb in 0..key_blocks {
            let (j0, n) = (jb * KEY_BLOCK, KEY_BLOCK.min(tk - jb * KEY_BLOCK));
            for (ib, &seen) in keys.iter().enumerate() {
                if !visits(seen, j0, n) {
                    continue;
                }
                tiles[ib * key_blocks + jb] = Some(per_head);
                per_head += QUERY_BLOCK.min(tq - ib * QUERY_BLOCK) * n;
            }
        }
        Some(ProbLayout {
            key_blocks,
            tiles,
            per_head,
        })
    }

    /// Where tile `(ib, jb)` starts in a head's part, if kept.
    #[inline]
    fn tile(&self, ib: usize, jb: usize) -> Option<usize> {
        self.tiles[ib * self.key_blocks + jb]
    }
}

/// Fused attention forward: returns the output `(B, H, Tq, Dv)`, stored in
/// `order`, and the per-row logsumexp `(B, H, Tq)` (row-major) of the
/// scaled, masked scores (`-inf` for a row that sees no key), which
/// [`attention_backward`] needs.
///
/// Works on blocks of [`QUERY_BLOCK`] query rows against steps of up to
/// [`FORWARD_KEYS`] keys as small matrix products; parallel over heads and
/// query blocks when the problem is large enough. `f32` and `f64` queries,
/// keys and values are read in place whatever their strides (each task
/// transposes the keys it needs into its own buffer); each task widens
/// its head's rows of other dtypes to the compute type.
///
/// # Panics
/// On inconsistent layouts or a padding mask that is not `B * Tk` long.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<E: FloatDtype>(
    q: &[E],
    ql: &Layout,
    k: &[E],
    kl: &Layout,
    v: &[E],
    vl: &Layout,
    mask: &AttnMask<'_>,
    scale: f64,
    order: HeadsOrder,
) -> (Vec<E>, Vec<E::Acc>) {
    forward(q, ql, k, kl, v, vl, mask, scale, order, false)
}

/// [`attention_forward`] for a training step, whose backward will run:
/// the same output, and saved state for [`attention_backward`] that holds
/// the logsumexps followed, where each query block's keys fit one step of
/// the online softmax (at most [`FORWARD_KEYS`], e.g. causal attention
/// over up to 256 positions), by the softmax probabilities of the blocks
/// the backward visits. The backward then reads them instead of
/// recomputing the scores and their exponentials (gpt6's attention
/// backward, 2 threads: 7.1 -> 6.0 ms) at the price of writing them here
/// (for `T` positions and a causal mask about `T² / 2` values a head, plus
/// the diagonal blocks).
///
/// ```
/// use zerfoo_kernels::cpu::attention::*;
/// use zerfoo_kernels::Layout;
/// let l = Layout::contiguous(&[1, 1, 3, 2]);
/// let x: Vec<f64> = (0..6).map(|i| (i as f64 * 0.7).cos()).collect();
/// let mask = AttnMask { causal: true, ..Default::default() };
/// let order = HeadsOrder::HeadMajor;
/// let (out, lse) = attention_forward(&x, &l, &x, &l, &x, &l, &mask, 0.5, order);
/// let (same, saved) = attention_forward_for_backward(&x, &l, &x, &l, &x, &l, &mask, 0.5, order);
/// assert_eq!(out, same);
/// assert_eq!(saved[..3], lse[..]);
/// assert!(saved.len() > 3); // and the probabilities
/// let dout = vec![1.0; 6];
/// let grads = |s: &[f64]| attention_backward(&x, &l, &x, &l, &x, &l, &out, s, &dout, &l, &mask, 0.5, order);
/// let (a, b) = (grads(&lse), grads(&saved));
/// for (x, y) in a.0.iter().zip(&b.0).chain(a.1.iter().zip(&b.1)).chain(a.2.iter().zip(&b.2)) {
///     assert!((x - y).abs() < 1e-12);
/// }
/// ```
///
/// # Panics
/// As [`attention_forward`].
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_for_backward<E: FloatDtype>(
    q: &[E],
    ql: &Layout,
    k: &[E],
    kl: &Layout,
    v: &[E],
    vl: &Layout,
    mask: &AttnMask<'_>,
    scale: f64,
    order: HeadsOrder,
) -> (Vec<E>, Vec<E::Acc>) {
    forward(q, ql, k, kl, v, vl, mask, scale, order, true)
}

/// [`attention_forward`], and with `keep_probs` (where [`ProbLayout::of`]
/// allows) the probabilities after the logsumexps.
#[allow(clippy::too_many_arguments)]
fn forward<E: FloatDtype>(
    q: &[E],
    ql: &Layout,
    k: &[E],
    kl: &Layout,
    v: &[E],
    vl: &Layout,
    mask: &AttnMask<'_>,
    scale: f64,
    order: HeadsOrder,
    keep_probs: bool,
) -> (Vec<E>, Vec<E::Acc>) {
    let AttnDims {
        b,
        h,
        tq,
        tk,
        d,
        dv,
    } = AttnDims::of(ql, kl, vl);
    if let Some(p) = mask.padding {
        assert_eq!(p.len(), b * tk, "attention: padding mask length");
    }
    let rows = b * h * tq;
    let ninf = <E::Acc as Float>::neg_infinity();
    if dv == 0 || rows == 0 {
        return (Vec::new(), vec![ninf; rows]);
    }
    let sc = <E::Acc as Real>::of_f64(scale);
    let one = <E::Acc as num_traits::One>::one();
    let qh = HeadRows::of(q, ql);
    let kh = HeadRows::of(k, kl);
    let vh = HeadRows::of(v, vl);
    // Every row of `out` is stored by one task below.
    let mut out = uninit_vec::<E>(rows * dv);
    let probs = ProbLayout::of(mask, tq, tk).filter(|_| keep_probs);
    let saved_len = rows + probs.as_ref().map_or(0, |p| b * h * p.per_head);
    // The logsumexps, then room for the probabilities (every value of
    // which one task writes below).
    let mut lse = uninit_vec::<E::Acc>(saved_len);
    lse[..rows].fill(MaybeUninit::new(ninf));
    let out_rows = RowIndex::of(&order.layout([b, h, tq, dv]));
    let (outp, lsep) = (
        SyncPtr(out.as_mut_ptr().cast::<E>()),
        SyncPtr(lse.as_mut_ptr().cast::<E::Acc>()),
    );
    // One task per head, which transposes the head's keys once, when there
    // are heads enough to share out; else one per (head, query block).
    let qblocks = tq.div_ceil(QUERY_BLOCK);
    let group = if b * h >= 4 * rayon::current_num_threads() {
        qblocks
    } else {
        1
    };
    let groups = qblocks.div_ceil(group);
    let task = |t: usize| {
        let (bh, g) = (t / groups, t % groups);
        let (qb0, qb1) = (g * group, ((g + 1) * group).min(qblocks));
        let (i_lo, i_hi) = (qb0 * QUERY_BLOCK, (qb1 * QUERY_BLOCK).min(tq));
        // SAFETY: rows `i_lo..i_hi` of head `bh` of `lse`: this task's
        // alone (each `t` runs once).
        let lse_rows =
            unsafe { core::slice::from_raw_parts_mut(lsep.get().add(bh * tq + i_lo), i_hi - i_lo) };
        // The keys these blocks may see, transposed (`d x tk` at the
        // padded stride, the first `hi` columns).
        let (_, hi) = block_keys(mask, i_lo, i_hi - i_lo, tk);
        let ((qr, qst), (kr, kst), (vr, vst)) = (
            qh.head(bh, i_lo..i_hi),
            kh.head(bh, 0..hi),
            vh.head(bh, 0..hi),
        );
        let (qr, vr) = (&qr[..], &vr[..]);
        let ktst = transposed_stride(tk);
        let mut kt = vec![<E::Acc as Zero>::zero(); d * ktst];
        transpose_rows((&kr, kst), hi, d, ktst, &mut kt);
        let mut acc = vec![<E::Acc as Zero>::zero(); QUERY_BLOCK * dv];
        let mut sbuf = vec![<E::Acc as Zero>::zero(); QUERY_BLOCK * FORWARD_KEYS.min(tk)];
        for (k, lc) in lse_rows.chunks_mut(QUERY_BLOCK).enumerate() {
            let (i0, bq) = (i_lo + k * QUERY_BLOCK, lc.len());
            let acc = &mut acc[..bq * dv];
            let block_probs = probs.as_ref().map(|layout| {
                // SAFETY: head `bh`'s part of the probabilities (after the
                // `rows` logsumexps), inside `lse` (`saved_len` values);
                // this task writes only query block `qb0 + k`'s tiles
                // there, and no other task does.
                let head = unsafe {
                    core::slice::from_raw_parts_mut(
                        lsep.get()
                            .add(rows + bh * layout.per_head)
                            .cast::<MaybeUninit<_>>(),
                        layout.per_head,
                    )
                };
                BlockProbs {
                    head,
                    layout,
                    ib: qb0 + k,
                }
            });
            if group == qblocks && bh + 1 < b * h {
                // The next head's rows (this task's next, most often), a
                // query block's share at a time.
                let step = (qb0 + k, qblocks);
                let (qs, ks) = (share(tq, step), share(tk, step));
                qh.prefetch_head(bh + 1, qs);
                kh.prefetch_head(bh + 1, ks.clone());
                vh.prefetch_head(bh + 1, ks);
            }
            // The next block's queries, and the values it sees first (see
            // `ROWS_AHEAD`).
            for r in i0 + bq..(i0 + 2 * bq).min(i_hi) {
                prefetch::<false, _>(qr.as_ptr().wrapping_add((r - i_lo) * qst), d);
                if r < hi {
                    prefetch::<false, _>(vr.as_ptr().wrapping_add(r * vst), dv);
                }
            }
            vectorized(
                #[inline(always)]
                || {
                    forward_block(
                        (tail(qr, (i0 - i_lo) * qst), qst),
                        &kt,
                        (vr, vst),
                        mask,
                        mask.padding.map(|p| &p[bh / h * tk..][..tk]),
                        (i0, bq),
                        (tk, d, dv),
                        sc,
                        (acc, lc, &mut sbuf),
                        block_probs,
                    )
                },
            );
            // SAFETY: as for `lse`, rows `i0..i0 + bq` of head `bh` of
            // `out`, inside it as `out_rows` describes an `(B, H, Tq, Dv)`
            // result.
            unsafe { store_rows(outp, &out_rows, (bh, i0), acc, dv, one) };
        }
    };
    let tasks = b * h * groups;
    if rows * tk * (d + dv) >= PAR_THRESHOLD {
        run_tasks(tasks, task);
    } else {
        (0..tasks).for_each(task);
    }
    // SAFETY: the tasks stored every row of every head, and every tile of
    // the probabilities (the logsumexps were initialized above).
    unsafe { (assume_init_vec(out), assume_init_vec(lse)) }
}

/// Fused attention backward: from the upstream gradient `dout` (any layout,
/// `(B, H, Tq, Dv)`), the forward's output `out` (stored in `order`) and
/// logsumexp `lse`, returns `(dq, dk, dv)`, shaped like `q`, `k`, `v` and
/// stored in `order`.
///
/// Per head, an outer loop over key blocks and an inner one over the query
/// blocks that see them, all as small matrix products; parallel over
/// `(batch, head)` when the problem is large enough. The summation order
/// does not depend on the thread count.
///
/// # Panics
/// On inconsistent layouts or lengths.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<E: FloatDtype>(
    q: &[E],
    ql: &Layout,
    k: &[E],
    kl: &Layout,
    v: &[E],
    vl: &Layout,
    out: &[E],
    lse: &[E::Acc],
    dout: &[E],
    dl: &Layout,
    mask: &AttnMask<'_>,
    scale: f64,
    order: HeadsOrder,
) -> (Vec<E>, Vec<E>, Vec<E>) {
    let dims = AttnDims::of(ql, kl, vl);
    let AttnDims {
        b,
        h,
        tq,
        tk,
        d,
        dv,
    } = dims;
    let (mut gq, mut gk, mut gv) = (
        uninit_vec::<E>(b * h * tq * d),
        uninit_vec::<E>(b * h * tk * d),
        uninit_vec::<E>(b * h * tk * dv),
    );
    let grads = [
        (
            SyncPtr(gq.as_mut_ptr().cast::<E>()),
            order.layout([b, h, tq, d]),
        ),
        (
            SyncPtr(gk.as_mut_ptr().cast::<E>()),
            order.layout([b, h, tk, d]),
        ),
        (
            SyncPtr(gv.as_mut_ptr().cast::<E>()),
            order.layout([b, h, tk, dv]),
        ),
    ];
    let saved = (out, lse, order);
    // SAFETY: each gradient is its buffer, all of it, in its `order` layout.
    unsafe {
        backward_into(
            dims,
            (q, ql),
            (k, kl),
            (v, vl),
            saved,
            (dout, dl),
            mask,
            scale,
            grads,
        )
    };
    // SAFETY: `backward_into` stored every row of every head of each.
    unsafe {
        (
            assume_init_vec(gq),
            assume_init_vec(gk),
            assume_init_vec(gv),
        )
    }
}

/// [`attention_backward`] for self-attention whose `q`, `k` and `v` came
/// from one projection: returns the three gradients side by side in one
/// `(B, T, H·D + H·D + H·Dv)` row-major buffer, the gradient of that
/// projection, with no copy to put them there. The forward's output `out`
/// is stored in [`HeadsOrder::SeqMajor`].
///
/// ```
/// use zerfoo_kernels::cpu::attention::*;
/// use zerfoo_kernels::Layout;
/// // One batch row, 3 positions, 2 heads of 2: q, k, v in one (1, 3, 12) projection.
/// let qkv: Vec<f64> = (0..36).map(|i| (i as f64 * 0.37).sin()).collect();
/// let view = |part: usize| Layout::new(&[1, 2, 3, 2], &[36, 2, 12, 1], 4 * part);
/// let (l, mask) = ([view(0), view(1), view(2)], AttnMask { causal: true, ..Default::default() });
/// let order = HeadsOrder::SeqMajor;
/// let (out, lse) = attention_forward(&qkv, &l[0], &qkv, &l[1], &qkv, &l[2], &mask, 0.5, order);
/// let dout = vec![1.0; 12];
/// let dl = order.layout([1, 2, 3, 2]);
/// let packed = attention_backward_packed(
///     &qkv, &l[0], &qkv, &l[1], &qkv, &l[2], &out, &lse, &dout, &dl, &mask, 0.5,
/// );
/// let (dq, dk, dv) = attention_backward(
///     &qkv, &l[0], &qkv, &l[1], &qkv, &l[2], &out, &lse, &dout, &dl, &mask, 0.5, order,
/// );
/// for t in 0..3 {
///     let row = &packed[12 * t..12 * (t + 1)];
///     assert_eq!(row[..4], dq[4 * t..4 * (t + 1)]);
///     assert_eq!(row[4..8], dk[4 * t..4 * (t + 1)]);
///     assert_eq!(row[8..], dv[4 * t..4 * (t + 1)]);
/// }
/// ```
///
/// # Panics
/// As [`attention_backward`], and when the queries and keys differ in
/// number.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_packed<E: FloatDtype>(
    q: &[E],
    ql: &Layout,
    k: &[E],
    kl: &Layout,
    v: &[E],
    vl: &Layout,
    out: &[E],
    lse: &[E::Acc],
    dout: &[E],
    dl: &Layout,
    mask: &AttnMask<'_>,
    scale: f64,
) -> Vec<E> {
    let dims = AttnDims::of(ql, kl, vl);
    let AttnDims {
        b,
        h,
        tq,
        tk,
        d,
        dv,
    } = dims;
    assert_eq!(
        tq, tk,
        "attention: packed gradients need as many queries as keys"
    );
    let width = h * (2 * d + dv);
    let mut packed = uninit_vec::<E>(b * tq * width);
    let p = SyncPtr(packed.as_mut_ptr().cast::<E>());
    // The three column blocks of the packed rows, as `(B, H, T, W)`.
    let block =
        |start: usize, w: usize| Layout::new(&[b, h, tq, w], &[tq * width, w, width, 1], start);
    let grads = [
        (p, block(0, d)),
        (p, block(h * d, d)),
        (p, block(2 * h * d, dv)),
    ];
    let saved = (out, lse, HeadsOrder::SeqMajor);
    // SAFETY: the three blocks are disjoint and together cover the buffer.
    unsafe {
        backward_into(
            dims,
            (q, ql),
            (k, kl),
            (v, vl),
            saved,
            (dout, dl),
            mask,
            scale,
            grads,
        )
    };
    // SAFETY: `backward_into` stored every row of every head of each block,
    // so every value of the buffer.
    unsafe { assume_init_vec(packed) }
}

/// The saved forward results: output, logsumexp, and the output's order.
type Saved<'a, E> = (&'a [E], &'a [<E as FloatDtype>::Acc], HeadsOrder);

/// The work of [`attention_backward`], storing the gradients of `q`, `k`
/// and `v` through the pointers and `(B, H, T, W)` layouts of `grads`.
///
/// `dims` are [`AttnDims::of`] the three layouts.
///
/// # Safety
/// Each gradient's layout must lie inside its pointer's allocation, and no
/// two may share an element, nor anything else touch them meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn backward_into<E: FloatDtype>(
    dims: AttnDims,
    (q, ql): (&[E], &Layout),
    (k, kl): (&[E], &Layout),
    (v, vl): (&[E], &Layout),
    (out, lse, order): Saved<'_, E>,
    (dout, dl): (&[E], &Layout),
    mask: &AttnMask<'_>,
    scale: f64,
    grads: [(SyncPtr<E>, Layout); 3],
) {
    let AttnDims {
        b,
        h,
        tq,
        tk,
        d,
        dv,
    } = dims;
    let rows = b * h * tq;
    assert_eq!(dl.shape(), &[b, h, tq, dv], "attention: dout shape");
    assert_eq!(out.len(), rows * dv, "attention: saved output length");
    // The logsumexps, and the probabilities if the forward kept them.
    let probs = (lse.len() != rows).then(|| {
        let kept = ProbLayout::of(mask, tq, tk).filter(|p| lse.len() == rows + b * h * p.per_head);
        kept.unwrap_or_else(|| {
            panic!(
                "attention: the saved state holds {} values, not the {rows} logsumexps (and the probabilities, if kept)",
                lse.len()
            )
        })
    });
    let (lse, kept) = lse.split_at(rows);
    if let Some(p) = mask.padding {
        assert_eq!(p.len(), b * tk, "attention: padding mask length");
    }
    type A<E> = <E as FloatDtype>::Acc;
    let zero = <A<E> as Zero>::zero();
    let one = <A<E> as num_traits::One>::one();
    let sc = <A<E> as Real>::of_f64(scale);
    let qh = HeadRows::of(q, ql);
    let kh = HeadRows::of(k, kl);
    let vh = HeadRows::of(v, vl);
    let doh = HeadRows::of(dout, dl);
    let out_rows = RowIndex::of(&order.layout([b, h, tq, dv]));
    let [(dqp, dq_rows), (dkp, dk_rows), (dvp, dv_rows)] =
        grads.map(|(p, l)| (p, RowIndex::of(&l)));
    let head = |bh: usize| {
        // This head's gradients, accumulated in the compute type.
        let (mut gq, mut gk, mut gv) =
            (vec![zero; tq * d], vec![zero; tk * d], vec![zero; tk * dv]);
        let ((dorows, dost), (qrows, qst)) = (doh.head(bh, 0..tq), qh.head(bh, 0..tq));
        let ((krows, kst), (vrows, vst)) = (kh.head(bh, 0..tk), vh.head(bh, 0..tk));
        vectorized(
            #[inline(always)]
            || {
                let (dorows, qrows, krows, vrows) =
                    (&dorows[..], &qrows[..], &krows[..], &vrows[..]);
                // Di = rowsum(dO ∘ O) for this head's queries.
                let o0 = out_rows.start(bh);
                let mut di = vec![zero; tq];
                for (i, di) in di.iter_mut().enumerate() {
                    let o = &tail(out, o0 + i * out_rows.row_stride)[..dv];
                    let g = &tail(dorows, i * dost)[..dv];
                    // The head's inputs, `ROWS_AHEAD` rows ahead: the
                    // transposes and products below then find them in cache.
                    let (ahead, ost) = (i + ROWS_AHEAD, out_rows.row_stride);
                    prefetch::<false, _>(o.as_ptr().wrapping_add(ROWS_AHEAD * ost), dv);
                    prefetch::<false, _>(g.as_ptr().wrapping_add(ROWS_AHEAD * dost), dv);
                    prefetch::<false, _>(qrows.as_ptr().wrapping_add(ahead * qst), d);
                    if ahead < tk {
                        prefetch::<false, _>(krows.as_ptr().wrapping_add(ahead * kst), d);
                        prefetch::<false, _>(vrows.as_ptr().wrapping_add(ahead * vst), dv);
                    }
                    *di = lane_sum_zip(o, g, |o: E, g| o.to_acc() * g);
                }
                let pad = mask.padding.map(|p| &p[bh / h * tk..][..tk]);
                // This head's keys and values transposed (`d x tk`, `dv x
                // tk` at the padded stride; the keys only for the scores, if
                // recomputed).
                let tst = transposed_stride(tk);
                let mut kt = Vec::new();
                if probs.is_none() {
                    kt.resize(d * tst, zero);
                    transpose_rows((krows, kst), tk, d, tst, &mut kt);
                }
                let mut vt = vec![zero; dv * tst];
                transpose_rows((vrows, vst), tk, dv, tst, &mut vt);
                let lse = &lse[bh * tq..][..tq];
                let split = ScaleSplit::of(sc);
                let mut p = [zero; QUERY_BLOCK * KEY_BLOCK];
                let mut shift = [zero; QUERY_BLOCK];
                let inf = <A<E> as Float>::infinity();
                let mut dp = [zero; QUERY_BLOCK * KEY_BLOCK];
                for j0 in (0..tk).step_by(KEY_BLOCK) {
                    let n = KEY_BLOCK.min(tk - j0);
                    if bh + 1 < b * h {
                        // The next head's rows, a key block's share at a
                        // time (a task's next head is most often `bh + 1`,
                        // see `run_tasks`).
                        let step = (j0 / KEY_BLOCK, tk.div_ceil(KEY_BLOCK));
                        let (qr, kr) = (share(tq, step), share(tk, step));
                        qh.prefetch_head(bh + 1, qr.clone());
                        doh.prefetch_head(bh + 1, qr.clone());
                        prefetch_head_rows(out.as_ptr(), &out_rows, bh + 1, qr, dv);
                        kh.prefetch_head(bh + 1, kr.clone());
                        vh.prefetch_head(bh + 1, kr);
                    }
                    let kb = tail(krows, j0 * kst);
                    let dkb = &mut gk[j0 * d..][..n * d];
                    let dvb = &mut gv[j0 * dv..][..n * dv];
                    for i0 in (0..tq).step_by(QUERY_BLOCK) {
                        let bq = QUERY_BLOCK.min(tq - i0);
                        if !visits(block_keys(mask, i0, bq, tk), j0, n) {
                            continue;
                        }
                        let dp = &mut dp[..bq * n];
                        let qb = tail(qrows, i0 * qst);
                        let dob = tail(dorows, i0 * dost);
                        let p: &[A<E>] = match &probs {
                            Some(pl) => {
                                let tile = pl.tile(i0 / QUERY_BLOCK, j0 / KEY_BLOCK);
                                let start = bh * pl.per_head + tile.expect("a visited tile");
                                &kept[start..start + bq * n]
                            }
                            None => {
                                let p = &mut p[..bq * n];
                                scores((qb, qst), &kt, (j0, tst), (bq, n, d), split.scores, p);
                                mask_block(mask, pad, (i0, bq), (j0, n), tk, p);
                                // A row that sees no key (lse = -inf) gets exp(s - inf) = 0.
                                for (sh, &l) in shift.iter_mut().zip(&lse[i0..i0 + bq]) {
                                    *sh = if l.is_finite() { l } else { inf };
                                }
                                exp_rows(p, n, split.exp, &shift[..bq]);
                                p
                            }
                        };
                        // dv += Pᵀ dO
                        gemm_acc(n, dv, bq, p, (1, n), dob, (dost, 1), dvb);
                        // dP = dO vᵀ, then dS = P ∘ (dP − Di)
                        gemm_set(bq, n, dv, dob, (dost, 1), &vt[j0..], (tst, 1), dp);
                        for (r, (dsr, pr)) in
                            dp.chunks_exact_mut(n).zip(p.chunks_exact(n)).enumerate()
                        {
                            let dir = di[i0 + r];
                            for (x, &pj) in dsr.iter_mut().zip(pr) {
                                *x = pj * (*x - dir);
                            }
                        }
                        // dk += dSᵀ q; dq += dS k (both scaled on store)
                        gemm_acc(n, d, bq, dp, (1, n), qb, (qst, 1), dkb);
                        gemm_acc(
                            bq,
                            d,
                            n,
                            dp,
                            (n, 1),
                            kb,
                            (kst, 1),
                            &mut gq[i0 * d..][..bq * d],
                        );
                    }
                }
            },
        );
        // SAFETY: head `bh`'s rows of each gradient, inside its allocation
        // as its layout says (the caller's guarantee); this task's alone
        // (each head runs once).
        unsafe {
            store_rows(dqp, &dq_rows, (bh, 0), &gq, d, sc);
            store_rows(dkp, &dk_rows, (bh, 0), &gk, d, sc);
            store_rows(dvp, &dv_rows, (bh, 0), &gv, dv, one);
        }
    };
    if rows * tk * (3 * d + 2 * dv) >= PAR_THRESHOLD {
        run_tasks(b * h, head);
    } else {
        (0..b * h).for_each(head);
    }
}

/// Every kind of mask the attention kernels take, for tests (CPU and
/// device): none, causal, window, causal with padding, padding alone,
/// queries after the keys (a decoding step), keys after some queries (rows
/// that see nothing). `pad` is `(B, Tk)`.
#[cfg(test)]
pub(crate) fn test_masks(pad: &[bool]) -> Vec<AttnMask<'_>> {
    vec![
        AttnMask::default(),
        AttnMask {
            causal: true,
            ..Default::default()
        },
        AttnMask {
            window: Some(3),
            ..Default::default()
        },
        AttnMask {
            causal: true,
            padding: Some(pad),
            ..Default::default()
        },
        AttnMask {
            padding: Some(pad),
            ..Default::default()
        },
        // queries later than keys (a decoding step over a cache)
        AttnMask {
            causal: true,
            window: Some(70),
            q_offset: 9,
            k_offset: 4,
            padding: None,
        },
        // keys later than some queries: the first rows see nothing
        AttnMask {
            causal: true,
            q_offset: 0,
            k_offset: 3,
            padding: Some(pad),
            window: None,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bf16, f16, F8E4M3, F8E5M2};

    #[test]
    fn transposed_strides_hold_the_rows_in_an_odd_number_of_lines() {
        for t in [1, 15, 16, 17, 64, 65, 255, 256, 1024, 4097] {
            let s = transposed_stride(t);
            assert!(s >= t && s < t + 32, "{t} -> {s}");
            assert_eq!(s % 16, 0, "{t} -> {s}");
            assert_eq!(s / 16 % 2, 1, "{t} -> {s}");
        }
        assert_eq!(transposed_stride(256), 272);
    }

    #[test]
    fn shares_cover_the_rows_once_in_order() {
        for (t, steps) in [(0, 3), (1, 8), (7, 8), (256, 8), (100, 7), (9, 1)] {
            let all: Vec<usize> = (0..steps).flat_map(|s| share(t, (s, steps))).collect();
            assert_eq!(all, (0..t).collect::<Vec<_>>(), "{t} rows in {steps} steps");
        }
        assert_eq!(share(256, (3, 8)), 96..128);
    }

    /// Naive reference in f64: output and (dq, dk, dv) for upstream `g`, all
    /// row-major, from row-major `q`, `k`, `v`.
    #[allow(clippy::type_complexity)]
    fn reference(
        dims: AttnDims,
        q: &[f64],
        k: &[f64],
        v: &[f64],
        g: &[f64],
        mask: &AttnMask<'_>,
        scale: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let AttnDims {
            b,
            h,
            tq,
            tk,
            d,
            dv,
        } = dims;
        let mut out = vec![0.0; b * h * tq * dv];
        let (mut dq, mut dk, mut dvv) =
            (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        for bb in 0..b {
            for hh in 0..h {
                let bh = bb * h + hh;
                for i in 0..tq {
                    let qi = &q[(bh * tq + i) * d..][..d];
                    let s: Vec<f64> = (0..tk)
                        .map(|j| {
                            let kj = &k[(bh * tk + j) * d..][..d];
                            scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>()
                        })
                        .collect();
                    let vis: Vec<bool> = (0..tk).map(|j| mask.visible(bb, i, j, tk)).collect();
                    if !vis.iter().any(|&x| x) {
                        continue;
                    }
                    let m = (0..tk)
                        .filter(|&j| vis[j])
                        .map(|j| s[j])
                        .fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = (0..tk)
                        .map(|j| if vis[j] { (s[j] - m).fast_exp() } else { 0.0 })
                        .collect();
                    let z: f64 = e.iter().sum();
                    let p: Vec<f64> = e.iter().map(|x| x / z).collect();
                    let gi = &g[(bh * tq + i) * dv..][..dv];
                    let row = &mut out[(bh * tq + i) * dv..][..dv];
                    for j in 0..tk {
                        for c in 0..dv {
                            row[c] += p[j] * v[(bh * tk + j) * dv + c];
                        }
                    }
                    // dP_j = g · v_j; dS = P (dP - Σ P dP)
                    let dp: Vec<f64> = (0..tk)
                        .map(|j| (0..dv).map(|c| gi[c] * v[(bh * tk + j) * dv + c]).sum())
                        .collect();
                    let dot: f64 = (0..tk).map(|j| p[j] * dp[j]).sum();
                    for j in 0..tk {
                        let ds = p[j] * (dp[j] - dot) * scale;
                        for c in 0..d {
                            dq[(bh * tq + i) * d + c] += ds * k[(bh * tk + j) * d + c];
                            dk[(bh * tk + j) * d + c] += ds * qi[c];
                        }
                        for c in 0..dv {
                            dvv[(bh * tk + j) * dv + c] += p[j] * gi[c];
                        }
                    }
                }
            }
        }
        (out, dq, dk, dvv)
    }

    fn rand(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    /// [`check_scaled`] with scale 0.7.
    fn check<E: FloatDtype>(
        dims: AttnDims,
        mask: &AttnMask<'_>,
        permuted: bool,
        order: HeadsOrder,
        tol: f64,
    ) {
        check_scaled::<E>(dims, mask, permuted, order, tol, 0.7)
    }

    /// Runs the fused kernels on `E`-rounded inputs (stored permuted when
    /// `permuted`), results stored in `order`, and compares with the f64
    /// reference on the same values.
    fn check_scaled<E: FloatDtype>(
        dims: AttnDims,
        mask: &AttnMask<'_>,
        permuted: bool,
        order: HeadsOrder,
        tol: f64,
        scale: f64,
    ) {
        let AttnDims {
            b,
            h,
            tq,
            tk,
            d,
            dv,
        } = dims;
        let round = |x: Vec<f64>| -> Vec<E> { x.into_iter().map(E::from_f64).collect() };
        let (q, k, v) = (
            round(rand(b * h * tq * d, 1)),
            round(rand(b * h * tk * d, 2)),
            round(rand(b * h * tk * dv, 3)),
        );
        let g = round(rand(b * h * tq * dv, 4));
        let f = |x: &[E]| -> Vec<f64> { x.iter().map(|y| y.to_f64()).collect() };
        // A permuted view: stored as (B, T, H, D), read as (B, H, T, D).
        let store = |x: &[E], t: usize, w: usize| -> (Vec<E>, Layout) {
            if !permuted {
                return (x.to_vec(), Layout::contiguous(&[b, h, t, w]));
            }
            let mut s = vec![E::default(); x.len()];
            for bb in 0..b {
                for hh in 0..h {
                    for tt in 0..t {
                        for c in 0..w {
                            s[((bb * t + tt) * h + hh) * w + c] =
                                x[((bb * h + hh) * t + tt) * w + c];
                        }
                    }
                }
            }
            (s, Layout::contiguous(&[b, t, h, w]).permute(&[0, 2, 1, 3]))
        };
        let ((qs, ql), (ks, kl), (vs, vl), (gs, gl)) = (
            store(&q, tq, d),
            store(&k, tk, d),
            store(&v, tk, dv),
            store(&g, tq, dv),
        );
        let (out, lse) = attention_forward(&qs, &ql, &ks, &kl, &vs, &vl, mask, scale, order);
        // The training forward: the same output and logsumexps, and the
        // probabilities after them where one step takes each block's keys.
        let (same, saved) =
            attention_forward_for_backward(&qs, &ql, &ks, &kl, &vs, &vl, mask, scale, order);
        let bits = |x: &[E]| x.iter().map(|v| v.to_f64().to_bits()).collect::<Vec<_>>();
        let acc_bits = |x: &[E::Acc]| x.iter().map(|v| v.as_f64().to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&same), bits(&out), "{dims:?} {mask:?}");
        assert_eq!(acc_bits(&saved[..lse.len()]), acc_bits(&lse));
        let layout = ProbLayout::of(mask, tq, tk);
        let kept = layout.as_ref().map_or(0, |l| b * h * l.per_head);
        assert_eq!(saved.len(), lse.len() + kept, "{dims:?} {mask:?}");
        let (ro, rdq, rdk, rdv) = reference(dims, &f(&q), &f(&k), &f(&v), &f(&g), mask, scale);
        // A result stored in `order`, read back as (B, H, T, W) row-major.
        let read = |x: &[E], t: usize, w: usize| -> Vec<f64> {
            let l = order.layout([b, h, t, w]);
            assert_eq!(x.len(), l.numel());
            l.offsets().into_iter().map(|o| x[o].to_f64()).collect()
        };
        // The backward from the logsumexps alone (recomputing the
        // probabilities) and from the kept ones.
        for state in [&lse, &saved] {
            let (dq, dk, dvv) = attention_backward(
                &qs, &ql, &ks, &kl, &vs, &vl, &out, state, &gs, &gl, mask, scale, order,
            );
            for (name, got, want) in [
                ("out", read(&out, tq, dv), &ro),
                ("dq", read(&dq, tq, d), &rdq),
                ("dk", read(&dk, tk, d), &rdk),
                ("dv", read(&dvv, tk, dv), &rdv),
            ] {
                assert_eq!(got.len(), want.len(), "{name}");
                for (n, (x, y)) in got.iter().zip(want).enumerate() {
                    assert!(
                        x.is_finite() && (x - y).abs() <= tol * (1.0 + y.abs()),
                        "{} {dims:?} {mask:?} {name}[{n}] (saved {}): {x} vs {y}",
                        E::DTYPE,
                        state.len()
                    );
                }
            }
        }
        // rows with no visible key: zero output, lse -inf
        for bb in 0..b {
            for i in 0..tq {
                let dead = !(0..tk).any(|j| mask.visible(bb, i, j, tk));
                for hh in 0..h {
                    let row = (bb * h + hh) * tq + i;
                    assert_eq!(dead, lse[row].as_f64() == f64::NEG_INFINITY);
                }
            }
        }
    }

    fn masks(b: usize, tk: usize, pad: &[bool]) -> Vec<AttnMask<'_>> {
        assert_eq!(pad.len(), b * tk);
        test_masks(pad)
    }

    fn padding(b: usize, tk: usize) -> Vec<bool> {
        // batch 0: every third key padded; batch 1: every key padded
        (0..b * tk).map(|n| n / tk == 1 || n % 3 == 1).collect()
    }

    /// A scale that cannot go inside the exponentials (negative, zero)
    /// goes onto the scores: still the reference's results, in every mask.
    #[test]
    fn non_positive_scales_match_the_reference() {
        let dims = AttnDims {
            b: 2,
            h: 2,
            tq: 37,
            tk: 41,
            d: 5,
            dv: 6,
        };
        let pad = padding(2, 41);
        for scale in [-0.7, 0.0] {
            for (n, m) in masks(2, 41, &pad).iter().enumerate() {
                let order = [HeadsOrder::HeadMajor, HeadsOrder::SeqMajor][n % 2];
                check_scaled::<f64>(dims, m, n % 3 == 0, order, 1e-10, scale);
                check_scaled::<f32>(dims, m, n % 3 == 1, order, 1e-4, scale);
            }
        }
    }

    #[test]
    fn matches_reference_f64_at_odd_sizes() {
        for &(tq, tk) in &[
            (1, 1),
            (7, 7),
            (1, 7),
            (7, 65),
            (65, 65),
            (129, 7),
            (65, 129),
            // Keys past one step of the forward's online softmax.
            (33, FORWARD_KEYS + 44),
        ] {
            for &d in &[1, 5, 32] {
                let dims = AttnDims {
                    b: 2,
                    h: 2,
                    tq,
                    tk,
                    d,
                    dv: if d == 5 { 3 } else { d },
                };
                let pad = padding(2, tk);
                for (n, m) in masks(2, tk, &pad).iter().enumerate() {
                    let order = [HeadsOrder::HeadMajor, HeadsOrder::SeqMajor][n / 2 % 2];
                    check::<f64>(dims, m, n % 2 == 1, order, 1e-10);
                }
            }
        }
    }

    #[test]
    fn large_problem_runs_in_parallel_and_matches() {
        let dims = AttnDims {
            b: 2,
            h: 3,
            tq: 129,
            tk: 129,
            d: 32,
            dv: 32,
        };
        let pad = padding(2, 129);
        for m in masks(2, 129, &pad) {
            for order in [HeadsOrder::HeadMajor, HeadsOrder::SeqMajor] {
                check::<f64>(dims, &m, true, order, 1e-10);
                check::<f32>(dims, &m, false, order, 1e-4);
                check::<f32>(dims, &m, true, order, 1e-4);
            }
        }
        // The `f32` kernels' whole tiles and several online-softmax steps.
        let tk = 2 * FORWARD_KEYS + 37;
        let dims = AttnDims {
            tq: tk,
            tk,
            d: 64,
            dv: 64,
            ..dims
        };
        let pad = padding(2, tk);
        for m in masks(2, tk, &pad) {
            check::<f32>(dims, &m, true, HeadsOrder::SeqMajor, 1e-4);
        }
    }

    /// The packed gradients of one `(B, T, 3·H·D)` projection are the
    /// separate ones, bit for bit, each in its column block (in parallel,
    /// under every mask).
    #[test]
    fn packed_gradients_are_the_separate_ones_side_by_side() {
        let (b, h, t, d) = (2, 3, 129, 16);
        let width = 3 * h * d;
        let qkv: Vec<f32> = rand(b * t * width, 7).iter().map(|&x| x as f32).collect();
        let block =
            |part: usize| Layout::new(&[b, h, t, d], &[t * width, d, width, 1], part * h * d);
        let (lq, lk, lv) = (block(0), block(1), block(2));
        let order = HeadsOrder::SeqMajor;
        let dl = order.layout([b, h, t, d]);
        let dout: Vec<f32> = rand(b * t * h * d, 8).iter().map(|&x| x as f32).collect();
        let pad = padding(b, t);
        for (m, keep) in masks(b, t, &pad)
            .into_iter()
            .flat_map(|m| [(m, false), (m, true)])
        {
            let x = &qkv[..];
            let forward = if keep {
                attention_forward_for_backward::<f32>
            } else {
                attention_forward::<f32>
            };
            let (out, lse) = forward(x, &lq, x, &lk, x, &lv, &m, 0.3, order);
            let (saved, up) = ((&out[..], &lse[..]), (&dout[..], &dl));
            let packed = attention_backward_packed(
                x, &lq, x, &lk, x, &lv, saved.0, saved.1, up.0, up.1, &m, 0.3,
            );
            let (gq, gk, gv) = attention_backward(
                x, &lq, x, &lk, x, &lv, saved.0, saved.1, up.0, up.1, &m, 0.3, order,
            );
            assert_eq!(packed.len(), b * t * width);
            for (row, got) in packed.chunks_exact(width).enumerate() {
                let at = row * h * d..(row + 1) * h * d;
                assert_eq!(got[..h * d], gq[at.clone()], "dq row {row}");
                assert_eq!(got[h * d..2 * h * d], gk[at.clone()], "dk row {row}");
                assert_eq!(got[2 * h * d..], gv[at], "dv row {row}");
            }
        }
    }

    /// Heads enough for one forward task per head (at least 4 per thread),
    /// each running several query blocks against keys transposed once.
    #[test]
    fn one_task_per_head_matches() {
        let dims = AttnDims {
            b: 2,
            h: 5,
            tq: 97,
            tk: 97,
            d: 8,
            dv: 8,
        };
        let pad = padding(2, 97);
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                for (n, m) in masks(2, 97, &pad).iter().enumerate() {
                    let order = [HeadsOrder::HeadMajor, HeadsOrder::SeqMajor][n % 2];
                    check::<f64>(dims, m, n % 3 == 0, order, 1e-10);
                }
            });
        }
    }

    /// `f32` keys and values transposed in 8 x 8 register blocks plus the
    /// rows and columns past the last whole block (13 and 11 wide, 70 keys),
    /// read in place in both orders.
    #[test]
    fn f32_transposes_past_whole_blocks() {
        let dims = AttnDims {
            b: 2,
            h: 2,
            tq: 33,
            tk: 70,
            d: 13,
            dv: 11,
        };
        let pad = padding(2, 70);
        for (n, m) in masks(2, 70, &pad).iter().enumerate() {
            for order in [HeadsOrder::HeadMajor, HeadsOrder::SeqMajor] {
                check::<f32>(dims, m, n % 2 == 0, order, 1e-5);
            }
        }
    }

    #[test]
    fn every_float_dtype() {
        let dims = AttnDims {
            b: 2,
            h: 2,
            tq: 7,
            tk: 65,
            d: 5,
            dv: 3,
        };
        let pad = padding(2, 65);
        for (n, m) in masks(2, 65, &pad).iter().enumerate() {
            let p = n % 2 == 0;
            let o = [HeadsOrder::HeadMajor, HeadsOrder::SeqMajor][n / 2 % 2];
            check::<f32>(dims, m, p, o, 1e-5);
            check::<f16>(dims, m, p, o, 4e-3);
            check::<bf16>(dims, m, p, o, 2e-2);
            check::<F8E4M3>(dims, m, p, o, 0.13);
            check::<F8E5M2>(dims, m, p, o, 0.26);
        }
    }

    /// Operands whose rows are not contiguous (each row's values a whole
    /// column apart: stored `(B, H, W, T)`, read with the last two axes
    /// swapped) are widened per head into the same values the kernels read
    /// from contiguous ones: the very bits, for a type read in place and a
    /// widened one.
    #[test]
    fn column_strided_operands_give_the_contiguous_bits() {
        fn run<E: FloatDtype>() {
            let (b, h, t, d) = (2, 3, 37, 40);
            let round = |x: Vec<f64>| -> Vec<E> { x.into_iter().map(E::from_f64).collect() };
            let (q, k, v, g) = (
                round(rand(b * h * t * d, 11)),
                round(rand(b * h * t * d, 12)),
                round(rand(b * h * t * d, 13)),
                round(rand(b * h * t * d, 14)),
            );
            let contiguous = Layout::contiguous(&[b, h, t, d]);
            // The same values stored (B, H, D, T).
            let by_columns = |x: &[E]| -> (Vec<E>, Layout) {
                let mut s = vec![E::default(); x.len()];
                for bh in 0..b * h {
                    for i in 0..t {
                        for c in 0..d {
                            s[(bh * d + c) * t + i] = x[(bh * t + i) * d + c];
                        }
                    }
                }
                let mut l = Layout::contiguous(&[b, h, d, t]);
                l.swap_axes(2, 3);
                (s, l)
            };
            let ((qs, ql), (ks, kl), (vs, vl), (gs, gl)) = (
                by_columns(&q),
                by_columns(&k),
                by_columns(&v),
                by_columns(&g),
            );
            let mask = AttnMask {
                causal: true,
                ..Default::default()
            };
            let order = HeadsOrder::HeadMajor;
            let c = &contiguous;
            let (o1, l1) = attention_forward(&q, c, &k, c, &v, c, &mask, 0.3, order);
            let (o2, l2) = attention_forward(&qs, &ql, &ks, &kl, &vs, &vl, &mask, 0.3, order);
            let bits = |x: &[E]| x.iter().map(|y| y.to_f64().to_bits()).collect::<Vec<_>>();
            let what = core::any::type_name::<E>();
            assert_eq!(bits(&o1), bits(&o2), "{what}: output");
            let lb = |x: &[E::Acc]| x.iter().map(|y| y.as_f64().to_bits()).collect::<Vec<_>>();
            assert_eq!(lb(&l1), lb(&l2), "{what}: logsumexp");
            let g1 = attention_backward(&q, c, &k, c, &v, c, &o1, &l1, &g, c, &mask, 0.3, order);
            let g2 = attention_backward(
                &qs, &ql, &ks, &kl, &vs, &vl, &o2, &l2, &gs, &gl, &mask, 0.3, order,
            );
            assert_eq!(bits(&g1.0), bits(&g2.0), "{what}: dq");
            assert_eq!(bits(&g1.1), bits(&g2.1), "{what}: dk");
            assert_eq!(bits(&g1.2), bits(&g2.2), "{what}: dv");
            // Values broadcast along their rows (column stride 0) against
            // the same values written out.
            let row_values = &v[..b * h * t];
            let broadcast = Layout::new(&[b, h, t, d], &[h * t, t, 1, 0], 0);
            let written: Vec<E> = row_values
                .iter()
                .flat_map(|&x| core::iter::repeat_n(x, d))
                .collect();
            let (o3, _) = attention_forward(&q, c, &k, c, &written, c, &mask, 0.3, order);
            let (o4, _) =
                attention_forward(&q, c, &k, c, row_values, &broadcast, &mask, 0.3, order);
            assert_eq!(bits(&o3), bits(&o4), "{what}: broadcast values");
        }
        run::<f32>();
        run::<f64>();
        run::<bf16>();
        run::<f16>();
    }

    #[test]
    fn empty_keys_and_values() {
        let l = |t: usize, w: usize| Layout::contiguous(&[1, 2, t, w]);
        // no keys: every row dead, zero output
        let (o, lse) = attention_forward::<f32>(
            &[1.0; 6],
            &l(3, 1),
            &[],
            &l(0, 1),
            &[],
            &l(0, 2),
            &AttnMask::default(),
            1.0,
            HeadsOrder::SeqMajor,
        );
        assert_eq!(o, vec![0.0; 12]);
        assert!(lse.iter().all(|x| *x == f32::NEG_INFINITY));
        // ... and zero gradients for the queries
        let (dq, dk, dv) = attention_backward::<f32>(
            &[1.0; 6],
            &l(3, 1),
            &[],
            &l(0, 1),
            &[],
            &l(0, 2),
            &o,
            &lse,
            &[1.0; 12],
            &l(3, 2),
            &AttnMask::default(),
            1.0,
            HeadsOrder::SeqMajor,
        );
        assert_eq!((dq, dk.len(), dv.len()), (vec![0.0; 6], 0, 0));
        // zero-width values
        let (o, _) = attention_forward::<f32>(
            &[1.0; 6],
            &l(3, 1),
            &[1.0; 4],
            &l(2, 1),
            &[],
            &l(2, 0),
            &AttnMask::default(),
            1.0,
            HeadsOrder::HeadMajor,
        );
        assert!(o.is_empty());
    }

    /// The AVX-512 softmax step and exponentials give the portable
    /// forms' bits: rows 1 to 32 wide, 1 to 33 rows, hidden keys, rows
    /// that see nothing, first and later blocks (running maxima that move
    /// or stay), a NaN score.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx512_softmax_step_has_the_portable_bits() {
        if !crate::cpu::simd::has_avx512() {
            return;
        }
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let sc = 0.17f32;
        for n in [1, 5, 16, 17, 31, 32, 33, 100, 256] {
            for rows in [1, 7, 16, 17, 33] {
                let mut s: Vec<f32> = rand(rows * n, (n * 100 + rows) as u64)
                    .iter()
                    .map(|&x| (x * 40.0) as f32)
                    .collect();
                for (i, x) in s.iter_mut().enumerate() {
                    if i % 7 == 3 || (i / n) % 5 == 4 {
                        *x = f32::NEG_INFINITY;
                    }
                }
                if rows * n > 40 {
                    s[40] = f32::NAN;
                }
                let m0: Vec<f32> = (0..rows)
                    .map(|r| [f32::NEG_INFINITY, 3.0, 100.0][r % 3])
                    .collect();
                let l0: Vec<f32> = (0..rows).map(|r| [0.0, 1.5, 2.0][r % 3]).collect();
                let (mut s1, mut m1, mut l1, mut a1) =
                    (s.clone(), m0.clone(), l0.clone(), vec![0.0; rows]);
                let (mut s2, mut m2, mut l2, mut a2) =
                    (s.clone(), m0.clone(), l0.clone(), vec![0.0; rows]);
                softmax_step_portable(&mut s1, n, sc, &mut m1, &mut l1, &mut a1);
                // SAFETY: AVX-512F is present (checked above).
                unsafe { f32_avx512::softmax_step(&mut s2, n, sc, &mut m2, &mut l2, &mut a2) };
                let what = format!("n {n}, rows {rows}");
                assert_eq!(bits(&s1), bits(&s2), "{what}: probabilities");
                assert_eq!(bits(&m1), bits(&m2), "{what}: maxima");
                assert_eq!(bits(&l1), bits(&l2), "{what}: sums");
                assert_eq!(bits(&a1), bits(&a2), "{what}: rescaling");
                let shift: Vec<f32> = (0..rows)
                    .map(|r| [2.0, f32::INFINITY, -1.0][r % 3])
                    .collect();
                let (mut e1, mut e2) = (s.clone(), s.clone());
                exp_rows_portable(&mut e1, n, sc, &shift);
                // SAFETY: as above.
                unsafe { f32_avx512::exp_rows(&mut e2, n, sc, &shift) };
                assert_eq!(bits(&e1), bits(&e2), "{what}: exp_rows");
            }
        }
    }

    /// The kept probabilities are `exp(scale · q·k − lse)` (zero where the
    /// mask hides a key), tile by tile in the order the backward visits
    /// them; a block whose keys need more than one forward step keeps none.
    #[test]
    fn kept_probabilities_are_the_softmax_in_visiting_order() {
        let (b, h, d) = (2, 2, 5);
        for &(tq, tk) in &[(7, 7), (65, 65), (40, 97), (33, FORWARD_KEYS + 44)] {
            let pad = padding(b, tk);
            for m in masks(b, tk, &pad) {
                let (q, k) = (rand(b * h * tq * d, 11), rand(b * h * tk * d, 12));
                let (lq, lk) = (
                    Layout::contiguous(&[b, h, tq, d]),
                    Layout::contiguous(&[b, h, tk, d]),
                );
                let order = HeadsOrder::HeadMajor;
                let (_, saved) =
                    attention_forward_for_backward(&q, &lq, &k, &lk, &k, &lk, &m, 0.4, order);
                let rows = b * h * tq;
                let Some(layout) = ProbLayout::of(&m, tq, tk) else {
                    assert!((0..tq).step_by(QUERY_BLOCK).any(|i0| {
                        let (lo, hi) = block_keys(&m, i0, QUERY_BLOCK.min(tq - i0), tk);
                        hi - lo > FORWARD_KEYS
                    }));
                    assert_eq!(saved.len(), rows, "{tq}x{tk} {m:?}");
                    continue;
                };
                assert_eq!(saved.len(), rows + b * h * layout.per_head);
                let mut next = 0;
                for bh in 0..b * h {
                    for (jb, j0) in (0..tk).step_by(KEY_BLOCK).enumerate() {
                        let n = KEY_BLOCK.min(tk - j0);
                        for (ib, i0) in (0..tq).step_by(QUERY_BLOCK).enumerate() {
                            let bq = QUERY_BLOCK.min(tq - i0);
                            let (lo, hi) = block_keys(&m, i0, bq, tk);
                            let Some(start) = layout.tile(ib, jb) else {
                                assert!(hi <= j0 || lo >= j0 + n);
                                continue;
                            };
                            // Tiles follow each other with no gap.
                            assert_eq!(bh * layout.per_head + start, next);
                            for r in 0..bq {
                                for c in 0..n {
                                    let (i, j) = (i0 + r, j0 + c);
                                    let got = saved[rows + next + r * n + c];
                                    let want = if m.visible(bh / h, i, j, tk) {
                                        let dot: f64 = (0..d)
                                            .map(|x| {
                                                q[(bh * tq + i) * d + x] * k[(bh * tk + j) * d + x]
                                            })
                                            .sum();
                                        (0.4 * dot - saved[bh * tq + i]).exp()
                                    } else {
                                        0.0
                                    };
                                    assert!(
                                        (got - want).abs() < 1e-12,
                                        "{tq}x{tk} {m:?} head {bh} ({i}, {j}): {got} vs {want}"
                                    );
                                }
                            }
                            next += bq * n;
                        }
                    }
                }
                assert_eq!(next, b * h * layout.per_head);
            }
        }
    }

    /// A saved state of any other length than the logsumexps (with or
    /// without the probabilities) is refused with a message.
    #[test]
    #[should_panic(expected = "the saved state holds")]
    fn a_saved_state_of_the_wrong_length_is_refused() {
        let l = Layout::contiguous(&[1, 1, 4, 2]);
        let x = rand(8, 3);
        let mask = AttnMask {
            causal: true,
            ..Default::default()
        };
        let order = HeadsOrder::HeadMajor;
        let (out, mut saved) =
            attention_forward_for_backward(&x, &l, &x, &l, &x, &l, &mask, 1.0, order);
        saved.pop();
        attention_backward(
            &x, &l, &x, &l, &x, &l, &out, &saved, &x, &l, &mask, 1.0, order,
        );
    }

    #[test]
    fn key_ranges() {
        let m = AttnMask {
            causal: true,
            window: Some(2),
            q_offset: 5,
            k_offset: 3,
            padding: None,
        };
        // query at 5 sees keys at 4, 5 = rows 1, 2
        assert_eq!(m.key_range(0, 10), (1, 3));
        let m = AttnMask {
            causal: true,
            k_offset: 3,
            ..Default::default()
        };
        assert_eq!(m.key_range(0, 10), (0, 0));
        assert_eq!(m.key_range(4, 10), (0, 2));
    }
}
