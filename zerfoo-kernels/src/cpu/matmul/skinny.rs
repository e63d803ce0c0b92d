//! `f32` products with at most [`MAX_ROWS`] rows (one token's activations
//! times a weight, as in generation), reading `B` in place.
//!
//! For so few rows the blocked path's packing of `B` costs more than the
//! product: it reads the whole weight, writes it packed and reads it again
//! for one pass of arithmetic. Here each task streams its columns of `B`
//! once:
//! - a row-major `B` (unit column stride) a whole row (of the task's
//!   columns) per depth step;
//! - a transposed one (unit depth stride: a `Linear` weight `[N, K]` read
//!   as `Wᵀ`) 16 columns at a time, eight depth steps at once through 8 x 8
//!   transposes in registers.
//!
//! The sums are the blocked kernels' own: per depth block (the same
//! [`depth_block`] cut) a fused multiply-add chain over the depth from
//! zero, added to the result in block order (`c + Σ`, or `Σ` alone where
//! the first block overwrites), the column bias after the last block. So
//! the bits equal the blocked path's, and a product does not change with
//! its row count.
//!
//! On the Zen 4, 1 thread, GFLOP/s before -> after (`torch.mm` beside):
//! row-major 1 x 2048 x 2048 6-7 -> 15-22 (20), 1 x 384 x 1536 8 -> 28-35
//! (28); transposed 1 x 2048 x 2048 5-6 -> 9-10 (8), 1 x 768 x 3072 7 ->
//! 14-15 (19), 1 x 384 x 1152 7-8 -> 14. Two threads: 1 x 2048 x 2048
//! 13 -> 29 (23), transposed 13 -> 19 (18).

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;
use core::mem::MaybeUninit;
use std::any::TypeId;

use super::{depth_block, Final, Operands, Widen, PAR_MACS};
#[cfg(target_arch = "x86_64")]
use crate::cpu::simd::prefetch;
use crate::cpu::threads::{run_tasks, SyncPtr};
use crate::FloatDtype;

/// The most rows a product may have to take this path.
pub(super) const MAX_ROWS: usize = 4;

/// Values ahead along each run of a transposed `B` that [`transposed`]
/// prefetches.
#[cfg(target_arch = "x86_64")]
const RUN_PREFETCH: usize = 64;

/// `c = A · B` (`overwrite`) or `c += A · B`, then `+ bias[j]` on every
/// row, for an `f32` product of at most [`MAX_ROWS`] rows whose `B` has
/// unit column or unit depth steps, on a CPU with AVX-512F; `fin` runs on
/// each task's columns once they are final. Returns `false` (having done
/// nothing) for any other product or CPU.
pub(super) fn try_product<E: FloatDtype>(
    ops: &Operands<'_, E>,
    c: &mut [MaybeUninit<E::Acc>],
    threads: usize,
    overwrite: bool,
    bias: Option<&[E::Acc]>,
    fin: Final<'_, E::Acc>,
) -> bool {
    let (m, n, k) = (ops.a_rows.len(), ops.b_cols.len(), ops.a_cols.len());
    if TypeId::of::<E>() != TypeId::of::<f32>()
        || TypeId::of::<E::Acc>() != TypeId::of::<f32>()
        || !(1..=MAX_ROWS).contains(&m)
        || n == 0
        || k == 0
        || matches!(fin, Final::Round(_))
        || !(ops.b_unit_n || ops.b_unit_k)
        || !has_avx512()
    {
        return false;
    }
    debug_assert_eq!(c.len(), m * n);
    // Every element of both operands is in bounds: the offset tables are
    // the caller's, checked once here instead of per load.
    let max = |t: &[usize]| t.iter().copied().max().unwrap_or(0);
    assert!(ops.a_base + max(ops.a_rows) + max(ops.a_cols) < ops.a.len());
    assert!(ops.b_base + max(ops.b_rows) + max(ops.b_cols) < ops.b.len());
    // SAFETY: `E` and `E::Acc` are `f32` (same TypeIds, checked above).
    let (a, b, bias) = unsafe {
        (
            core::slice::from_raw_parts(ops.a.as_ptr().cast::<f32>(), ops.a.len()),
            core::slice::from_raw_parts(ops.b.as_ptr().cast::<f32>(), ops.b.len()),
            bias.map(|v| core::slice::from_raw_parts(v.as_ptr().cast::<f32>(), v.len())),
        )
    };
    assert!(bias.is_none_or(|v| v.len() == n));
    // `A` as `m` rows of `k` values, gathered once (a few KiB at most).
    let a_rows: Vec<f32> = ops
        .a_rows
        .iter()
        .flat_map(|&r| ops.a_cols.iter().map(move |&q| a[ops.a_base + r + q]))
        .collect();
    let kc = depth_block::<E, Widen>(k);
    let cptr = SyncPtr(c.as_mut_ptr().cast::<f32>());
    let generic = SyncPtr(c.as_mut_ptr().cast::<E::Acc>());
    let vecs = n.div_ceil(16);
    let tasks = if threads > 1 && m * n * k >= PAR_MACS {
        threads.min(vecs)
    } else {
        1
    };
    let task = |t: usize| {
        // Whole vectors of columns, shared out evenly.
        let (c0, c1) = (vecs * t / tasks * 16, (vecs * (t + 1) / tasks * 16).min(n));
        if c0 >= c1 {
            return;
        }
        let cols = Columns {
            a: &a_rows,
            k,
            kc,
            c: cptr,
            n,
            overwrite,
            bias,
        };
        // SAFETY: AVX-512F is present; every element of `B` is in bounds
        // (asserted above); this task alone writes columns `c0..c1` of `c`.
        unsafe {
            if ops.b_unit_n {
                let rows: Vec<usize> = ops.b_rows.iter().map(|&r| ops.b_base + r).collect();
                let at = (b, rows.as_slice(), ops.b_cols[0]);
                match m {
                    1 => row_major::<1>(&cols, at, (c0, c1)),
                    2 => row_major::<2>(&cols, at, (c0, c1)),
                    3 => row_major::<3>(&cols, at, (c0, c1)),
                    _ => row_major::<4>(&cols, at, (c0, c1)),
                }
            } else {
                let starts: Vec<usize> = ops.b_cols[c0..c1]
                    .iter()
                    .map(|&j| ops.b_base + ops.b_rows[0] + j)
                    .collect();
                match m {
                    1 => transposed::<1>(&cols, b, &starts, c0),
                    2 => transposed::<2>(&cols, b, &starts, c0),
                    3 => transposed::<3>(&cols, b, &starts, c0),
                    _ => transposed::<4>(&cols, b, &starts, c0),
                }
            }
        }
        if let Final::Finish(finish) = fin {
            finish(generic.get(), (0, m), (c0, c1 - c0));
        }
    };
    if tasks > 1 {
        run_tasks(tasks, task);
    } else {
        task(0);
    }
    true
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512() -> bool {
    false
}

/// What every strip of one product shares.
struct Columns<'a> {
    /// `A`, `M` rows of `k` values.
    a: &'a [f32],
    k: usize,
    /// The depth of a block.
    kc: usize,
    /// The `[m, n]` result.
    c: SyncPtr<f32>,
    n: usize,
    overwrite: bool,
    bias: Option<&'a [f32]>,
}

/// Adds one depth block's sums `acc` (row `i`, vector `v`: columns `j +
/// 16 v`, the lanes of `mask[v]`) into the result as the blocked kernels
/// store: `Σ` on the first block of an overwriting product, else `c + Σ`;
/// then the bias on the last block.
///
/// # Safety
/// AVX-512F; the masked lanes are inside row `i < m` of `c` and the bias.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store<const M: usize, const V: usize>(
    cols: &Columns<'_>,
    acc: &[[__m512; V]; M],
    j: usize,
    mask: [__mmask16; V],
    (first, last): (bool, bool),
) {
    for (i, acc) in acc.iter().enumerate() {
        for (v, (&acc, &mask)) in acc.iter().zip(&mask).enumerate() {
            // SAFETY: the caller's guarantee (the masked loads and stores
            // touch only the lanes inside the row; the address itself may
            // point past it).
            unsafe {
                let p = cols.c.get().wrapping_add(i * cols.n + j + 16 * v);
                let sum = if first && cols.overwrite {
                    acc
                } else {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), acc)
                };
                let sum = match cols.bias {
                    Some(b) if last => _mm512_add_ps(
                        sum,
                        _mm512_maskz_loadu_ps(mask, b.as_ptr().wrapping_add(j + 16 * v)),
                    ),
                    _ => sum,
                };
                _mm512_mask_storeu_ps(p, mask, sum);
            }
        }
    }
}

/// The lanes of a vector covering columns `j..j + 16` of `j..end`.
#[cfg(target_arch = "x86_64")]
fn lanes(j: usize, end: usize) -> __mmask16 {
    match end.saturating_sub(j) {
        0 => 0,
        w if w >= 16 => 0xFFFF,
        w => (1u16 << w) - 1,
    }
}

/// Columns `c0..c1` of an `M`-row product whose `B` row `p` starts at
/// `b[rows[p] + col0]` (unit column step).
///
/// Each depth block streams whole rows of `B` (for the task's columns), four
/// at a time: the sums live in `sums` (`M` rows of the task's columns, in L1
/// or L2) and take four steps per load and store. A strip of columns
/// walked down the depth instead reads a new page every step, which the
/// hardware prefetchers do not follow.
///
/// # Safety
/// AVX-512F; `b` holds every row's columns `c0..c1`; only this call writes
/// those columns of `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_major<const M: usize>(
    cols: &Columns<'_>,
    (b, rows, col0): (&[f32], &[usize], usize),
    (c0, c1): (usize, usize),
) {
    let k = cols.k;
    let w = c1 - c0;
    let vecs = w.div_ceil(16);
    let mask = |v: usize| lanes(c0 + 16 * v, c1);
    let mut sums = vec![_mm512_setzero_ps(); M * vecs];
    for p0 in (0..k).step_by(cols.kc) {
        let p1 = (p0 + cols.kc).min(k);
        sums.fill(_mm512_setzero_ps());
        let mut p = p0;
        while p < p1 {
            let steps = (p1 - p).min(4);
            // Rows `p..p + steps` of `B` and `A`'s values at those steps.
            let at: [*const f32; 4] = core::array::from_fn(|q| {
                b.as_ptr()
                    .wrapping_add(rows[p + q.min(steps - 1)] + col0 + c0)
            });
            let mut ai = [[_mm512_setzero_ps(); 4]; M];
            for (i, ai) in ai.iter_mut().enumerate() {
                for (q, ai) in ai.iter_mut().enumerate() {
                    *ai = _mm512_set1_ps(cols.a[i * k + p + q.min(steps - 1)]);
                }
            }
            for v in 0..vecs {
                let mk = mask(v);
                let mut bv = [_mm512_setzero_ps(); 4];
                for (bv, &at) in bv.iter_mut().zip(&at) {
                    // SAFETY: row `p + q`, columns `c0 + 16 v..` masked to `c1`, are in `b`.
                    *bv = unsafe { _mm512_maskz_loadu_ps(mk, at.wrapping_add(16 * v)) };
                }
                for (i, ai) in ai.iter().enumerate() {
                    let s = &mut sums[i * vecs + v];
                    let mut acc = *s;
                    for q in 0..steps {
                        acc = _mm512_fmadd_ps(ai[q], bv[q], acc);
                    }
                    *s = acc;
                }
            }
            p += steps;
        }
        for v in 0..vecs {
            let mut acc = [[_mm512_setzero_ps(); 1]; M];
            for (i, acc) in acc.iter_mut().enumerate() {
                acc[0] = sums[i * vecs + v];
            }
            // SAFETY: the masked columns are this call's, inside `c` and the bias.
            unsafe { store(cols, &acc, c0 + 16 * v, [mask(v)], (p0 == 0, p1 == k)) };
        }
    }
}

/// Columns `c0..c0 + starts.len()` of a product whose `B` column `c0 + s`
/// is the run of `k` values at `starts[s]` (unit depth step).
///
/// # Safety
/// AVX-512F; `b` holds every run; only this call writes those columns of `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transposed<const M: usize>(cols: &Columns<'_>, b: &[f32], starts: &[usize], c0: usize) {
    const V: usize = 1;
    let k = cols.k;
    let c1 = c0 + starts.len();
    for s in (0..starts.len()).step_by(16 * V) {
        let j = c0 + s;
        let mask: [__mmask16; V] = core::array::from_fn(|v| lanes(j + 16 * v, c1));
        // Columns past the end repeat the last one (their lanes are not stored).
        let run: [*const f32; 16 * V] = core::array::from_fn(|x| {
            // SAFETY: `starts` are in bounds of `b`.
            unsafe { b.as_ptr().add(starts[(s + x).min(starts.len() - 1)]) }
        });
        for p0 in (0..k).step_by(cols.kc) {
            let p1 = (p0 + cols.kc).min(k);
            let mut acc = [[_mm512_setzero_ps(); V]; M];
            let mut p = p0;
            while p + 8 <= p1 {
                // The runs are 16 interleaved streams, which the hardware
                // prefetchers do not follow: ask for a line ahead of each.
                if p % 16 == 0 {
                    for r in &run {
                        prefetch::<false, _>(r.wrapping_add(p + RUN_PREFETCH), 1);
                    }
                }
                // Eight depth steps of the 16 columns: `t[v][q]` is step `p + q`.
                let mut t = [[_mm512_setzero_ps(); 8]; V];
                for (v, t) in t.iter_mut().enumerate() {
                    let at: [*const f32; 16] =
                        core::array::from_fn(|x| run[16 * v + x].wrapping_add(p));
                    // SAFETY: each run holds depth steps `p..p + 8` (`p + 8 <= k`).
                    let lo = unsafe { transpose_8x8(at[..8].try_into().unwrap()) };
                    // SAFETY: as above.
                    let hi = unsafe { transpose_8x8(at[8..].try_into().unwrap()) };
                    for q in 0..8 {
                        // (AVX-512F's 64-bit insert: the 32-bit one needs DQ.)
                        t[q] = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                            _mm512_castps_pd(_mm512_castps256_ps512(lo[q])),
                            _mm256_castps_pd(hi[q]),
                        ));
                    }
                }
                for q in 0..8 {
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let ai = _mm512_set1_ps(cols.a[i * k + p + q]);
                        for (acc, t) in acc.iter_mut().zip(&t) {
                            *acc = _mm512_fmadd_ps(ai, t[q], *acc);
                        }
                    }
                }
                p += 8;
            }
            for p in p..p1 {
                // The last steps of the block one by one.
                let mut t = [_mm512_setzero_ps(); V];
                for (v, t) in t.iter_mut().enumerate() {
                    // SAFETY: each run holds depth step `p < k`.
                    let x: [f32; 16] = core::array::from_fn(|x| unsafe { *run[16 * v + x].add(p) });
                    // SAFETY: 16 values.
                    *t = unsafe { _mm512_loadu_ps(x.as_ptr()) };
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let ai = _mm512_set1_ps(cols.a[i * k + p]);
                    for (acc, &t) in acc.iter_mut().zip(&t) {
                        *acc = _mm512_fmadd_ps(ai, t, *acc);
                    }
                }
            }
            // SAFETY: the masked columns are this call's, inside `c` and the bias.
            unsafe { store(cols, &acc, j, mask, (p0 == 0, p1 == k)) };
        }
    }
}

/// `out[q][x] = src[x][q]` for `q, x < 8`: eight runs of eight read and
/// transposed in registers.
///
/// # Safety
/// AVX; each `src[x]` readable for 8 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn transpose_8x8(src: [*const f32; 8]) -> [__m256; 8] {
    let mut r = [_mm256_setzero_ps(); 8];
    for (r, &s) in r.iter_mut().zip(&src) {
        // SAFETY: the caller's guarantee (unaligned loads).
        *r = unsafe { _mm256_loadu_ps(s) };
    }
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn row_major<const M: usize>(
    _: &Columns<'_>,
    _: (&[f32], &[usize], usize),
    _: (usize, usize),
) {
    unreachable!("no AVX-512 here: `try_product` declines first")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transposed<const M: usize>(_: &Columns<'_>, _: &[f32], _: &[usize], _: usize) {
    unreachable!("no AVX-512 here: `try_product` declines first")
}
