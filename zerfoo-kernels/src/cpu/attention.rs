//! Fused (flash-style) scaled dot-product attention, forward and backward.
//!
//! Shapes: queries `(B, H, Tq, D)`, keys `(B, H, Tk, D)`, values
//! `(B, H, Tk, Dv)`, any strides. The output is
//! `softmax(mask(scale * q kᵀ)) v` `(B, H, Tq, Dv)`, computed row by row with
//! an online softmax over blocks of [`KEY_BLOCK`] keys: no more than one
//! block of scores per row ever exists. Keys a query cannot see because of
//! the causal limit or the sliding window are never visited; padded keys
//! are skipped inside a block.
//!
//! The inputs are first packed into the compute type ([`FloatDtype::Acc`]),
//! keys also transposed to `(D, Tk)` per head, so that every inner loop is
//! a contiguous `axpy` the compiler vectorizes. Everything is computed in
//! `E::Acc` and rounded once on store.
//!
//! A query row that sees no key at all gets a zero output, a logsumexp of
//! `-inf`, and zero gradients (never NaN).
//!
//! The backward follows FlashAttention-2: the probabilities are recomputed
//! block by block from the saved logsumexp, `Di = rowsum(dO ∘ O)`,
//! `dS = P ∘ (dO vᵀ − Di)`, `dq = scale · dS k`, `dk = scale · dSᵀ q`,
//! `dv = Pᵀ dO`.

use std::any::{Any, TypeId};
use std::borrow::Cow;

use num_traits::{Float, Zero};

use super::simd::{lane_max, lane_sum_of, lane_sum_zip, vectorized};
use super::threads::{for_each_chunk_mut, run_tasks, SyncPtr};
use super::PAR_THRESHOLD;
use crate::{FloatDtype, Layout, Real};

/// Keys per block of the online softmax. With 32-row query blocks too, a
/// causal head of 64 positions computes 3 of its 4 blocks (64 x 64 blocks
/// would compute the masked half as well): the Shakespeare step ~2% faster,
/// a 256-position one unchanged.
pub const KEY_BLOCK: usize = 32;

/// Query rows per block (of the forward's parallel tasks and the products).
pub const QUERY_BLOCK: usize = 32;

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

/// `(b, h, t, d)` data under `layout` as `(b, h, d, t)` row-major (each
/// head's matrix transposed), widened to the compute type.
fn pack_transposed<E: FloatDtype>(data: &[E], layout: &Layout) -> Vec<E::Acc> {
    pack(data, &layout.permute(&[0, 1, 3, 2]))
}

/// `data` under `layout`, in row-major order, widened to the compute type.
fn pack<E: FloatDtype>(data: &[E], layout: &Layout) -> Vec<E::Acc> {
    super::map(data, layout, |x: E| x.to_acc())
}

/// [`pack`] times `scale`, in one pass (the queries).
fn pack_scaled<E: FloatDtype>(data: &[E], layout: &Layout, scale: E::Acc) -> Vec<E::Acc> {
    super::map(
        data,
        layout,
        #[inline(always)]
        move |x: E| x.to_acc() * scale,
    )
}

/// `data` under `layout` in row-major order in the compute type: borrowed
/// as it is when it already is that (an `f32` or `f64` contiguous tensor),
/// else [packed](pack).
fn in_compute_type<'a, E: FloatDtype>(data: &'a [E], layout: &Layout) -> Cow<'a, [E::Acc]> {
    if TypeId::of::<E>() == TypeId::of::<E::Acc>() && layout.is_contiguous() {
        let run = &data[layout.offset..layout.offset + layout.numel()];
        // SAFETY: `E` and `E::Acc` are the same type (same TypeId).
        Cow::Borrowed(unsafe { core::slice::from_raw_parts(run.as_ptr().cast(), run.len()) })
    } else {
        Cow::Owned(pack(data, layout))
    }
}

/// Per-head results accumulated in the compute type, as a vector of `E`:
/// the same vector when `E` is the compute type, else each value rounded.
fn from_compute_type<E: FloatDtype>(v: Vec<E::Acc>) -> Vec<E> {
    match (Box::new(v) as Box<dyn Any>).downcast::<Vec<E>>() {
        Ok(same) => *same,
        Err(v) => v
            .downcast::<Vec<E::Acc>>()
            .expect("the boxed vector holds compute-type values")
            .into_iter()
            .map(E::from_acc)
            .collect(),
    }
}

/// `c += A · B` for compute-type blocks (see [`gemm_acc`]).
use super::matmul::gemm_acc;

/// Scores of `bq` (already scaled) query rows `qs` (`bq x d`, row-major)
/// against keys `j0..j0 + n` of a head's transposed keys `kt` (`d x tk`,
/// row-major): `s = qs · kt[:, j0..j0 + n]`, `bq x n`. Reading the keys
/// transposed makes the GEMM's right operand row-major, which packs with
/// plain row copies.
#[inline]
fn scores<A: Real>(
    qs: &[A],
    kt: &[A],
    (j0, tk): (usize, usize),
    (bq, n, d): (usize, usize, usize),
    s: &mut [A],
) {
    s.fill(A::zero());
    gemm_acc(bq, n, d, qs, (d, 1), &kt[j0..], (tk, 1), s);
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
    for (r, row) in s.chunks_exact_mut(n).enumerate() {
        let (lo, hi) = mask.key_range(i0 + r, tk);
        for (jj, x) in row.iter_mut().enumerate() {
            let j = j0 + jj;
            if j < lo || j >= hi || pad.is_some_and(|p| p[jj]) {
                *x = A::neg_infinity();
            }
        }
    }
}

/// `s[r, j] = exp(s[r, j] - shift[r])` over the `n`-wide rows of `s`: the
/// probabilities of a block, in the forward (shift: the running max) and
/// the backward (shift: the logsumexp). A row with shift `+inf` (it sees
/// no key) becomes 0, as `exp(-inf)` does.
fn exp_rows<A: Real>(s: &mut [A], n: usize, shift: &[A]) {
    vectorized(
        #[inline(always)]
        || {
            for (row, &m) in s.chunks_exact_mut(n).zip(shift) {
                row.iter_mut().for_each(|x| *x = (*x - m).fast_exp());
            }
        },
    )
}

/// The keys `[lo, hi)` that any of query rows `i0..i0 + bq` may see.
#[inline]
fn block_keys(mask: &AttnMask<'_>, i0: usize, bq: usize, tk: usize) -> (usize, usize) {
    let (lo, _) = mask.key_range(i0, tk);
    let (_, hi) = mask.key_range(i0 + bq - 1, tk);
    (lo, hi.max(lo))
}

/// One block of `bq` query rows (`qs` scaled, `bq x d`) of one head: writes
/// `o = softmax(s) v` (`bq x dv`) and the rows' logsumexps into `lse`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn forward_block<A: Real>(
    qs: &[A],
    kt: &[A],
    vp: &[A],
    mask: &AttnMask<'_>,
    pad: Option<&[bool]>,
    (i0, bq): (usize, usize),
    (tk, d, dv): (usize, usize, usize),
    o: &mut [A],
    lse: &mut [A],
) {
    let ninf = A::neg_infinity();
    let (mut m, mut l) = (vec![ninf; bq], vec![A::zero(); bq]);
    let mut sbuf = vec![A::zero(); bq * KEY_BLOCK];
    let mut shift = [A::zero(); QUERY_BLOCK];
    o.fill(A::zero());
    let (lo, hi) = block_keys(mask, i0, bq, tk);
    let mut j0 = lo;
    while j0 < hi {
        let n = KEY_BLOCK.min(hi - j0);
        let s = &mut sbuf[..bq * n];
        scores(qs, kt, (j0, tk), (bq, n, d), s);
        mask_block(mask, pad, (i0, bq), (j0, n), tk, s);
        for (r, row) in s.chunks_exact(n).enumerate() {
            let bm = lane_max(row);
            if bm == ninf {
                // A row that sees none of these keys: exp(-inf - inf) = 0.
                shift[r] = A::infinity();
                continue;
            }
            let m_new = m[r].max(bm);
            if m_new > m[r] && l[r] > A::zero() {
                let alpha = (m[r] - m_new).fast_exp();
                l[r] *= alpha;
                o[r * dv..][..dv].iter_mut().for_each(|x| *x *= alpha);
            }
            m[r] = m_new;
            shift[r] = m_new;
        }
        exp_rows(s, n, &shift[..bq]);
        for (r, row) in s.chunks_exact(n).enumerate() {
            l[r] += lane_sum_of(row, |x| x);
        }
        gemm_acc(bq, dv, n, s, (n, 1), &vp[j0 * dv..], (dv, 1), o);
        j0 += n;
    }
    for (r, (orow, lr)) in o.chunks_exact_mut(dv).zip(lse.iter_mut()).enumerate() {
        if l[r] > A::zero() {
            let inv = l[r].recip();
            orow.iter_mut().for_each(|x| *x *= inv);
            *lr = m[r] + l[r].ln();
        } else {
            orow.fill(A::zero());
            *lr = ninf;
        }
    }
}

/// Fused attention forward: returns the output `(B, H, Tq, Dv)` (contiguous)
/// and the per-row logsumexp `(B, H, Tq)` of the scaled, masked scores
/// (`-inf` for a row that sees no key), which [`attention_backward`] needs.
///
/// Works on blocks of [`QUERY_BLOCK`] query rows against blocks of
/// [`KEY_BLOCK`] keys as small matrix products; parallel over heads and
/// query blocks when the problem is large enough.
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
    let qs = pack_scaled(q, ql, <E::Acc as Real>::of_f64(scale));
    let kt = pack_transposed(k, kl);
    let vp = in_compute_type(v, vl);
    let mut out = vec![E::default(); rows * dv];
    let mut lse = vec![ninf; rows];
    let block = |bh: usize, qb: usize, oc: &mut [E], lc: &mut [E::Acc]| {
        let (i0, bq) = (qb * QUERY_BLOCK, lc.len());
        let row = bh * tq + i0;
        let mut acc = vec![<E::Acc as Zero>::zero(); bq * dv];
        vectorized(
            #[inline(always)]
            || {
                forward_block(
                    &qs[row * d..][..bq * d],
                    &kt[bh * tk * d..][..tk * d],
                    &vp[bh * tk * dv..][..tk * dv],
                    mask,
                    mask.padding.map(|p| &p[bh / h * tk..][..tk]),
                    (i0, bq),
                    (tk, d, dv),
                    &mut acc,
                    lc,
                )
            },
        );
        for (o, &a) in oc.iter_mut().zip(&acc) {
            *o = E::from_acc(a);
        }
    };
    if rows * tk * (d + dv) >= PAR_THRESHOLD {
        // One task per (head, query block).
        let qblocks = tq.div_ceil(QUERY_BLOCK);
        let (outp, lsep) = (SyncPtr(out.as_mut_ptr()), SyncPtr(lse.as_mut_ptr()));
        run_tasks(rows.div_ceil(tq) * qblocks, |t| {
            let (bh, qb) = (t / qblocks, t % qblocks);
            let (i0, bq) = (qb * QUERY_BLOCK, QUERY_BLOCK.min(tq - qb * QUERY_BLOCK));
            // SAFETY: rows `i0..i0 + bq` of head `bh` in `out` (`dv` values
            // each) and in `lse`: this task's alone (each `t` runs once).
            let (oc, lc) = unsafe {
                (
                    core::slice::from_raw_parts_mut(outp.get().add((bh * tq + i0) * dv), bq * dv),
                    core::slice::from_raw_parts_mut(lsep.get().add(bh * tq + i0), bq),
                )
            };
            block(bh, qb, oc, lc);
        });
    } else {
        for (bh, (o, l)) in out.chunks_mut(tq * dv).zip(lse.chunks_mut(tq)).enumerate() {
            for (qb, (oc, lc)) in o
                .chunks_mut(QUERY_BLOCK * dv)
                .zip(l.chunks_mut(QUERY_BLOCK))
                .enumerate()
            {
                block(bh, qb, oc, lc);
            }
        }
    }
    (out, lse)
}

/// Gradients of one `(batch, head)`, `(dq, dk, dv)` in the compute type:
/// that head's parts of the full gradients.
struct HeadGrads<'a, A> {
    dq: &'a mut [A],
    dk: &'a mut [A],
    dv: &'a mut [A],
}

/// Fused attention backward: from the upstream gradient `dout` (any layout,
/// `(B, H, Tq, Dv)`), the forward's contiguous output `out` and logsumexp
/// `lse`, returns `(dq, dk, dv)`, contiguous, shaped like `q`, `k`, `v`.
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
) -> (Vec<E>, Vec<E>, Vec<E>) {
    let AttnDims {
        b,
        h,
        tq,
        tk,
        d,
        dv,
    } = AttnDims::of(ql, kl, vl);
    let rows = b * h * tq;
    assert_eq!(dl.shape(), &[b, h, tq, dv], "attention: dout shape");
    assert_eq!(out.len(), rows * dv, "attention: saved output length");
    assert_eq!(lse.len(), rows, "attention: saved logsumexp length");
    if let Some(p) = mask.padding {
        assert_eq!(p.len(), b * tk, "attention: padding mask length");
    }
    type A<E> = <E as FloatDtype>::Acc;
    let zero = <A<E> as Zero>::zero();
    let sc = <A<E> as Real>::of_f64(scale);
    let qs = pack_scaled(q, ql, sc);
    let kp = in_compute_type(k, kl);
    let kt = pack_transposed(k, kl);
    let vt = pack_transposed(v, vl);
    let dop = in_compute_type(dout, dl);
    let head = |(bh, g): (usize, HeadGrads<'_, A<E>>)| {
        vectorized(
            #[inline(always)]
            || {
                // Di = rowsum(dO ∘ O) for this head's queries.
                let di: Vec<A<E>> = (bh * tq..(bh + 1) * tq)
                    .map(|r| {
                        let (o, g) = (&out[r * dv..][..dv], &dop[r * dv..][..dv]);
                        lane_sum_zip(o, g, |o: E, g| o.to_acc() * g)
                    })
                    .collect();
                let pad = mask.padding.map(|p| &p[bh / h * tk..][..tk]);
                let kp = &kp[bh * tk * d..][..tk * d];
                let kt = &kt[bh * tk * d..][..tk * d];
                let vt = &vt[bh * tk * dv..][..tk * dv];
                let (qs, dop) = (
                    &qs[bh * tq * d..][..tq * d],
                    &dop[bh * tq * dv..][..tq * dv],
                );
                let lse = &lse[bh * tq..][..tq];
                let mut p = [zero; QUERY_BLOCK * KEY_BLOCK];
                let mut shift = [zero; QUERY_BLOCK];
                let inf = <A<E> as Float>::infinity();
                let mut dp = [zero; QUERY_BLOCK * KEY_BLOCK];
                for j0 in (0..tk).step_by(KEY_BLOCK) {
                    let n = KEY_BLOCK.min(tk - j0);
                    let kb = &kp[j0 * d..][..n * d];
                    let dkb = &mut g.dk[j0 * d..][..n * d];
                    let dvb = &mut g.dv[j0 * dv..][..n * dv];
                    for i0 in (0..tq).step_by(QUERY_BLOCK) {
                        let bq = QUERY_BLOCK.min(tq - i0);
                        let (lo, hi) = block_keys(mask, i0, bq, tk);
                        if hi <= j0 || lo >= j0 + n {
                            continue;
                        }
                        let (p, dp) = (&mut p[..bq * n], &mut dp[..bq * n]);
                        let qb = &qs[i0 * d..][..bq * d];
                        let dob = &dop[i0 * dv..][..bq * dv];
                        scores(qb, kt, (j0, tk), (bq, n, d), p);
                        mask_block(mask, pad, (i0, bq), (j0, n), tk, p);
                        // A row that sees no key (lse = -inf) gets exp(s - inf) = 0.
                        for (sh, &l) in shift.iter_mut().zip(&lse[i0..i0 + bq]) {
                            *sh = if l.is_finite() { l } else { inf };
                        }
                        exp_rows(p, n, &shift[..bq]);
                        // dv += Pᵀ dO
                        gemm_acc(n, dv, bq, p, (1, n), dob, (dv, 1), dvb);
                        // dP = dO vᵀ, then dS = P ∘ (dP − Di)
                        dp.fill(zero);
                        gemm_acc(bq, n, dv, dob, (dv, 1), &vt[j0..], (tk, 1), dp);
                        for (r, (dsr, pr)) in
                            dp.chunks_exact_mut(n).zip(p.chunks_exact(n)).enumerate()
                        {
                            let dir = di[i0 + r];
                            for (x, &pj) in dsr.iter_mut().zip(pr) {
                                *x = pj * (*x - dir);
                            }
                        }
                        // dk += dSᵀ (scale q); dq += dS k (scaled at the end)
                        gemm_acc(n, d, bq, dp, (1, n), qb, (d, 1), dkb);
                        gemm_acc(
                            bq,
                            d,
                            n,
                            dp,
                            (n, 1),
                            kb,
                            (d, 1),
                            &mut g.dq[i0 * d..][..bq * d],
                        );
                    }
                }
                g.dq.iter_mut().for_each(|x| *x *= sc);
            },
        )
    };
    // Each head accumulates into its own parts of the full gradients.
    let (mut dq, mut dk, mut dvs) = (
        vec![zero; rows * d],
        vec![zero; b * h * tk * d],
        vec![zero; b * h * tk * dv],
    );
    let parts: Vec<(usize, HeadGrads<'_, A<E>>)> = per_head(&mut dq, tq * d, b * h)
        .into_iter()
        .zip(per_head(&mut dk, tk * d, b * h))
        .zip(per_head(&mut dvs, tk * dv, b * h))
        .map(|((dq, dk), dv)| HeadGrads { dq, dk, dv })
        .enumerate()
        .collect();
    if rows * tk * (3 * d + 2 * dv) >= PAR_THRESHOLD {
        let mut parts: Vec<Option<_>> = parts.into_iter().map(Some).collect();
        for_each_chunk_mut(&mut parts, 1, |(_, p)| {
            head(p[0].take().expect("each head once"))
        });
    } else {
        parts.into_iter().for_each(head);
    }
    (
        from_compute_type(dq),
        from_compute_type(dk),
        from_compute_type(dvs),
    )
}

/// `heads` consecutive parts of `len` values of `v` (empty ones when `len` is 0).
fn per_head<A>(v: &mut [A], len: usize, heads: usize) -> Vec<&mut [A]> {
    if len == 0 {
        (0..heads).map(|_| &mut [][..]).collect()
    } else {
        v.chunks_mut(len).collect()
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

    /// Runs the fused kernels on `E`-rounded inputs (stored permuted when
    /// `permuted`) and compares with the f64 reference on the same values.
    fn check<E: FloatDtype>(dims: AttnDims, mask: &AttnMask<'_>, permuted: bool, tol: f64) {
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
        let scale = 0.7;
        let (out, lse) = attention_forward(&qs, &ql, &ks, &kl, &vs, &vl, mask, scale);
        let (dq, dk, dvv) = attention_backward(
            &qs, &ql, &ks, &kl, &vs, &vl, &out, &lse, &gs, &gl, mask, scale,
        );
        let (ro, rdq, rdk, rdv) = reference(dims, &f(&q), &f(&k), &f(&v), &f(&g), mask, scale);
        for (name, got, want) in [
            ("out", f(&out), ro),
            ("dq", f(&dq), rdq),
            ("dk", f(&dk), rdk),
            ("dv", f(&dvv), rdv),
        ] {
            assert_eq!(got.len(), want.len(), "{name}");
            for (n, (x, y)) in got.iter().zip(&want).enumerate() {
                assert!(
                    x.is_finite() && (x - y).abs() <= tol * (1.0 + y.abs()),
                    "{} {dims:?} {mask:?} {name}[{n}]: {x} vs {y}",
                    E::DTYPE
                );
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
                    check::<f64>(dims, m, n % 2 == 1, 1e-10);
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
            check::<f64>(dims, &m, true, 1e-10);
            check::<f32>(dims, &m, false, 1e-4);
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
            check::<f32>(dims, m, p, 1e-5);
            check::<f16>(dims, m, p, 4e-3);
            check::<bf16>(dims, m, p, 2e-2);
            check::<F8E4M3>(dims, m, p, 0.13);
            check::<F8E5M2>(dims, m, p, 0.26);
        }
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
        );
        assert_eq!(o, vec![0.0; 12]);
        assert!(lse.iter().all(|x| *x == f32::NEG_INFINITY));
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
        );
        assert!(o.is_empty());
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
