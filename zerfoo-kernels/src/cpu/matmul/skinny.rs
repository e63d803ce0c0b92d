//! Products with at most [`MAX_ROWS`] rows (one token's activations times
//! a weight, as in generation) in `f32`, `f16`, `bf16` and f8 (E4M3FN,
//! E5M2), reading `B` in place.
//!
//! For so few rows the blocked path's packing of `B` costs more than the
//! product: it reads the whole weight, writes it packed and reads it again
//! for one pass of arithmetic. Here each task streams its columns of `B`
//! once:
//! - a row-major `B` (unit column stride): a whole row (of the task's
//!   columns) per depth step, the sums in a buffer of the task's columns.
//!   The sums are the blocked kernels' own: per depth block (the same
//!   [`depth_block`] cut) a chain from zero down the depth (fused
//!   multiply-adds in `f32`, and in `f16` or f8 widened to `f32`, `vdpbf16ps` over
//!   pairs in `bf16`), added to the result in block order (`c + Σ`, or `Σ`
//!   alone where the first block overwrites), the column bias after the
//!   last block, and for `f16` and `bf16` the kernels' rounding. So the bits
//!   equal the blocked path's: the rows do not change with the row count.
//! - a transposed one (unit depth stride: a `Linear` weight `[N, K]` read
//!   as `Wᵀ`, the usual case): dot products along the weight's rows, four
//!   at a time, 16 partial sums per result added up at the end. The
//!   blocked order would need the rows transposed (it ran at a third of
//!   `torch.mm`'s speed with 8 x 8 transposes in registers), so these bits
//!   differ from a taller product's in the last places.
//!
//! `bench/gemm_vs_pytorch.py --decode gpt6` (one token through gpt6's
//! linear layers, Zen 4), ms per token through the blocked path -> here
//! (four runs), and zerfoo / `torch.mm` after: f32 1 thread 2.98 ->
//! 0.88-1.18 (0.77-1.20x), 2 threads 3.65 -> 0.75-1.01 (0.76-0.99x); bf16
//! 1 thread 6.09 -> 0.54-0.74 (0.67-0.83x), 2 threads 5.04 -> 0.43-0.76
//! (0.74-0.87x).

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;
use core::mem::MaybeUninit;
use std::any::TypeId;

use super::pack::Packing;
use super::{depth_block, Final, Operands};
use crate::cpu::threads::{run_tasks, SyncPtr};
use crate::{bf16, f16, FloatDtype, F8E4M3, F8E5M2};

/// The most rows a product may have to take this path.
pub(super) const MAX_ROWS: usize = 4;

/// The fewest multiply-adds that such a product shares out among threads
/// (a sixteenth of the blocked path's `PAR_MACS`). Generating a token
/// streams every weight from memory once, and two threads stream it nearly
/// twice as fast; each product's split costs about a microsecond with the
/// workers awake. gpt6 (f32, weights 42 MB) sampling 250 tokens on 2
/// threads, load included: 1.00-1.11 s with the blocked path's threshold,
/// 0.73-0.91 with this one.
pub(super) const PAR_MACS: usize = 1 << 16;

/// `f::<M>(args)` for the row count `m` (1 to [`MAX_ROWS`]): the kernels
/// keep each row's sums in registers, so the count is a constant.
macro_rules! by_rows {
    ($m:expr, $f:ident$(<$t:ty>)?($($arg:expr),*)) => {
        match $m {
            1 => $f::<$($t,)? 1>($($arg),*),
            2 => $f::<$($t,)? 2>($($arg),*),
            3 => $f::<$($t,)? 3>($($arg),*),
            _ => $f::<$($t,)? 4>($($arg),*),
        }
    };
}

/// `c = A · B` (`overwrite`) or `c += A · B`, then `+ bias[j]` on every
/// row, for an `f32`, `f16`, `bf16` or f8 product of at most [`MAX_ROWS`] rows
/// whose `B` has unit column or unit depth steps, on a CPU with AVX-512
/// (F, BW, VL; and AVX512-BF16 for `bf16`). An `f16` or `bf16` product's
/// last depth block is rounded into the `Final::Round` output as the
/// kernels round (an f8 one by `fin`, the narrowing step); `fin` runs on
/// each task's columns once they are final.
/// Returns `false` (having done nothing) for any other product or CPU.
pub(super) fn try_product<E: FloatDtype, K: Packing<E>>(
    ops: &Operands<'_, E>,
    c: &mut [MaybeUninit<E::Acc>],
    threads: usize,
    overwrite: bool,
    bias: Option<&[E::Acc]>,
    fin: Final<'_, E::Acc>,
) -> bool {
    let (m, n, k) = (ops.a_rows.len(), ops.b_cols.len(), ops.a_cols.len());
    if !(1..=MAX_ROWS).contains(&m)
        || n == 0
        || k == 0
        || !(ops.b_unit_n || ops.b_unit_k)
        || TypeId::of::<E::Acc>() != TypeId::of::<f32>()
    {
        return false;
    }
    // (`bf16` only in pairs: widened to `f32` it sums as `f32` does.)
    let is = |t: TypeId| TypeId::of::<E>() == t;
    let is_f32 = is(TypeId::of::<f32>()) && has_avx512();
    let is_f16 = is(TypeId::of::<f16>()) && K::GROUP == 1 && has_avx512();
    let is_f8 =
        (is(TypeId::of::<F8E4M3>()) || is(TypeId::of::<F8E5M2>())) && K::GROUP == 1 && has_avx512();
    let is_bf16 = is(TypeId::of::<bf16>()) && K::GROUP == 2 && has_avx512_bf16();
    // (`f32` results are never rounded; 16-bit ones are, by the kernels
    // here, never finished; f8 ones are always narrowed by the finishing
    // step.)
    let fits = match fin {
        Final::Keep => is_f32 || is_f16 || is_bf16,
        Final::Finish(_) => is_f32 || is_f8,
        Final::Round(_) => is_f16 || is_bf16,
    };
    if !fits {
        return false;
    }
    debug_assert_eq!(c.len(), m * n);
    // Every element of both operands is in bounds: the offset tables are
    // the caller's, checked once here instead of per load.
    let max = |t: &[usize]| t.iter().copied().max().unwrap_or(0);
    assert!(ops.a_base + max(ops.a_rows) + max(ops.a_cols) < ops.a.len());
    assert!(ops.b_base + max(ops.b_rows) + max(ops.b_cols) < ops.b.len());
    // SAFETY: `E::Acc` is `f32` (same TypeId, checked above).
    let bias =
        bias.map(|v| unsafe { core::slice::from_raw_parts(v.as_ptr().cast::<f32>(), v.len()) });
    assert!(bias.is_none_or(|v| v.len() == n));
    let out = Out {
        c: SyncPtr(c.as_mut_ptr().cast::<f32>()),
        n,
        overwrite,
        bias,
        round: match fin {
            Final::Round(r) if is_bf16 => Some((r, Narrow::Bf16)),
            Final::Round(r) => Some((r, Narrow::F16)),
            _ => None,
        },
    };
    // `B` as seen from the kernels: a row-major one's row `p` starts at
    // `offsets[p]` (its column `j` is `col0 + j` on), a transposed one's
    // column `j` at `offsets[j]`.
    let offsets: Vec<usize> = if ops.b_unit_n {
        ops.b_rows.iter().map(|&r| ops.b_base + r).collect()
    } else {
        let start = ops.b_base + ops.b_rows[0];
        ops.b_cols.iter().map(|&j| start + j).collect()
    };
    let col0 = ops.b_cols[0];
    let generic = SyncPtr(c.as_mut_ptr().cast::<E::Acc>());
    let done = |(c0, c1): (usize, usize)| {
        if let Final::Finish(finish) = fin {
            finish(generic.get(), (0, m), (c0, c1 - c0));
        }
    };
    if is_f32 || is_f16 || is_f8 {
        // `A` as `m` rows of `k` values in `f32`, gathered once (a few KiB
        // at most; `f16` and f8 widen exactly).
        let a_rows: Vec<f32> = ops
            .a_rows
            .iter()
            .flat_map(|&r| {
                ops.a_cols
                    .iter()
                    .map(move |&q| ops.a[ops.a_base + r + q].to_f32())
            })
            .collect();
        let cols = Columns {
            a: &a_rows,
            k,
            kc: depth_block::<E, K>(k),
            out,
        };
        let at = (offsets.as_slice(), col0);
        let by_rows = ops.b_unit_n;
        // SAFETY (each cast): `E` is that type (same TypeId).
        if is_f32 {
            let b = unsafe { cast::<E, f32>(ops.b) };
            widened(&cols, (b, at), by_rows, threads, done);
        } else if is_f16 {
            let b = unsafe { cast::<E, f16>(ops.b) };
            widened(&cols, (b, at), by_rows, threads, done);
        } else if is(TypeId::of::<F8E4M3>()) {
            let b = unsafe { cast::<E, F8E4M3>(ops.b) };
            widened(&cols, (b, at), by_rows, threads, done);
        } else {
            let b = unsafe { cast::<E, F8E5M2>(ops.b) };
            widened(&cols, (b, at), by_rows, threads, done);
        }
    } else {
        // SAFETY: `E` is `bf16`, a `u16` bit pattern (same TypeId).
        let (a, b) = unsafe { (cast::<E, u16>(ops.a), cast::<E, u16>(ops.b)) };
        // `A` as `m` rows of `k.div_ceil(2)` pairs (an odd depth's last
        // pair zero-padded, as the packing pads it).
        let pairs = k.div_ceil(2);
        let at = |r: usize, q: usize| {
            if q < k {
                a[ops.a_base + r + ops.a_cols[q]]
            } else {
                0
            }
        };
        let a_rows: Vec<u32> = ops
            .a_rows
            .iter()
            .flat_map(|&r| {
                (0..pairs).map(move |q| at(r, 2 * q) as u32 | (at(r, 2 * q + 1) as u32) << 16)
            })
            .collect();
        let kc = depth_block::<E, K>(k) / 2;
        let cols = Columns {
            a: &a_rows,
            k: pairs,
            kc,
            out,
        };
        share_columns(n, m * n * k, threads, |(c0, c1)| {
            // SAFETY: AVX512-BF16 (with F, BW, VL, DQ) is present; every
            // element of `B` is in bounds (asserted above); this task alone
            // writes columns `c0..c1` of `c` and of the rounded output.
            unsafe {
                if ops.b_unit_n {
                    let at = (b, offsets.as_slice(), col0);
                    by_rows!(m, row_major_bf16(&cols, at, (c0, c1), k))
                } else {
                    let runs = (b, &offsets[c0..c1], c0);
                    by_rows!(m, transposed_bf16(&cols, runs, k))
                }
            }
            done((c0, c1));
        });
    }
    true
}

/// The product of [`try_product`] for `B` in `f32` or `f16`, summed in
/// `f32`: `b` with its row offsets (row-major, `by_rows`) or its columns'
/// run starts (transposed), and the first column; `done` on each task's
/// columns once they are final.
fn widened<T: Wide>(
    cols: &Columns<'_, f32>,
    (b, (offsets, col0)): (&[T], (&[usize], usize)),
    by_rows: bool,
    threads: usize,
    done: impl Fn((usize, usize)) + Sync,
) {
    let (m, n) = (cols.a.len() / cols.k, cols.out.n);
    share_columns(n, m * n * cols.k, threads, |(c0, c1)| {
        // SAFETY: AVX-512 (F, BW, VL) is present (`Wide` only for `f32` and
        // `f16`, taken only where `has_avx512`); every element of `B` is in
        // bounds (asserted by the caller); this task alone writes columns
        // `c0..c1` of `c`.
        unsafe {
            if by_rows {
                by_rows!(m, row_major<T>(cols, (b, offsets, col0), (c0, c1)))
            } else {
                by_rows!(m, transposed<T>(cols, (b, &offsets[c0..c1], c0)))
            }
        }
        done((c0, c1));
    });
}

/// `x` as a slice of `T`.
///
/// # Safety
/// `T` must have `E`'s size and accept its bits.
unsafe fn cast<E, T>(x: &[E]) -> &[T] {
    debug_assert_eq!(core::mem::size_of::<E>(), core::mem::size_of::<T>());
    // SAFETY: the caller's guarantee.
    unsafe { core::slice::from_raw_parts(x.as_ptr().cast::<T>(), x.len()) }
}

/// Runs `task((c0, c1))` over the `n` columns: in one piece, or shared out
/// among the threads in whole vectors of 16 when the product (`macs`
/// multiply-adds) is large enough.
fn share_columns(n: usize, macs: usize, threads: usize, task: impl Fn((usize, usize)) + Sync) {
    let vecs = n.div_ceil(16);
    let tasks = if threads > 1 && macs >= PAR_MACS {
        threads.min(vecs)
    } else {
        1
    };
    if tasks > 1 {
        run_tasks(tasks, |t| {
            let (c0, c1) = (vecs * t / tasks * 16, (vecs * (t + 1) / tasks * 16).min(n));
            if c0 < c1 {
                task((c0, c1));
            }
        });
    } else {
        task((0, n));
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512_bf16() -> bool {
    !super::kernel::bf16_kernels().is_empty()
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512_bf16() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512() -> bool {
    false
}

/// What every strip of one product shares.
struct Columns<'a, T> {
    /// `A`, `M` rows of `k` values (`f32`, or `bf16` pairs).
    a: &'a [T],
    k: usize,
    /// The depth of a block (in the same units).
    kc: usize,
    out: Out<'a>,
}

/// Where one product's sums go.
#[derive(Clone, Copy)]
struct Out<'a> {
    /// The `[m, n]` result (for a rounded one, the sums of the depth blocks
    /// before the last).
    c: SyncPtr<f32>,
    n: usize,
    overwrite: bool,
    bias: Option<&'a [f32]>,
    /// The `[m, n]` 16-bit output that the last depth block is rounded
    /// into, and its type.
    round: Option<(SyncPtr<u16>, Narrow)>,
}

/// The 16-bit type a product's result is rounded to.
#[derive(Clone, Copy)]
enum Narrow {
    Bf16,
    F16,
}

/// A type of `B` that the `f32` sums read 16 values at a time, as `f32`.
pub(super) trait Wide: Copy + Sync {
    /// The lanes of `mask` from the 16 values at `p`, widened (the others
    /// zero).
    ///
    /// # Safety
    /// AVX-512 (F, BW, VL); the masked lanes are readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(mask: __mmask16, p: *const Self) -> __m512;
}

impl Wide for f32 {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load16(mask: __mmask16, p: *const f32) -> __m512 {
        // SAFETY: the caller's guarantee.
        unsafe { _mm512_maskz_loadu_ps(mask, p) }
    }
}

impl Wide for f16 {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn load16(mask: __mmask16, p: *const f16) -> __m512 {
        // SAFETY: the caller's guarantee (`f16` is its 16 bits).
        unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p.cast())) }
    }
}

impl Wide for F8E5M2 {
    /// An E5M2 value is the high byte of the `f16` with the same value
    /// (infinities and NaNs included).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn load16(mask: __mmask16, p: *const F8E5M2) -> __m512 {
        // SAFETY: the caller's guarantee (`F8E5M2` is its 8 bits).
        let bytes = unsafe { _mm_maskz_loadu_epi8(mask, p.cast()) };
        _mm512_cvtph_ps(_mm256_slli_epi16::<8>(_mm256_cvtepu8_epi16(bytes)))
    }
}

impl Wide for F8E4M3 {
    /// The exponent and mantissa bits (`S.EEEE.MMM`) moved into an `f16`'s
    /// (`S.0EEEE.MMM0000000`) give the value divided by 2^8 (the biases are
    /// 7 and 15), subnormals included; times 2^8 (exact) it is the value.
    /// `S.1111.111` is NaN.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn load16(mask: __mmask16, p: *const F8E4M3) -> __m512 {
        // SAFETY: the caller's guarantee (`F8E4M3` is its 8 bits).
        let bytes = unsafe { _mm_maskz_loadu_epi8(mask, p.cast()) };
        let w = _mm256_cvtepu8_epi16(bytes);
        let mag = _mm256_and_si256(w, _mm256_set1_epi16(0x7F));
        let sign = _mm256_and_si256(w, _mm256_set1_epi16(0x80));
        let h = _mm256_or_si256(_mm256_slli_epi16::<7>(mag), _mm256_slli_epi16::<8>(sign));
        let x = _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(256.0));
        let nan = _mm256_cmpeq_epi16_mask(mag, _mm256_set1_epi16(0x7F));
        _mm512_mask_mov_ps(x, nan, _mm512_set1_ps(f32::NAN))
    }
}

/// Adds one depth block's sums `acc` (row `i`: columns `j..j + 16`, the
/// lanes of `mask`) into the result as the blocked kernels store: `Σ` on
/// the first block of an overwriting product, else `c + Σ`; then the bias
/// on the last block, which is rounded into the 16-bit output if there is
/// one (as the kernels round).
///
/// # Safety
/// AVX-512F (and AVX512-BF16 for a `bf16` output); the masked lanes are
/// inside row `i < m` of `c` and the bias.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store<const M: usize>(
    out: &Out<'_>,
    acc: &[__m512; M],
    j: usize,
    mask: __mmask16,
    (first, last): (bool, bool),
) {
    let lanes = mask.count_ones() as usize;
    for (i, &acc) in acc.iter().enumerate() {
        // SAFETY: the caller's guarantee; rounded lanes are copied into row
        // `i`, columns `j..j + lanes` of the output.
        unsafe {
            let p = out.c.get().wrapping_add(i * out.n + j);
            let sum = block_sum(out, acc, p, j, mask, (first, last));
            match out.round.filter(|_| last) {
                None => _mm512_mask_storeu_ps(p, mask, sum),
                Some((round, narrow)) => {
                    let mut bits = [0u16; 16];
                    match narrow {
                        Narrow::Bf16 => super::x86::bf16_round_store(sum, bits.as_mut_ptr()),
                        Narrow::F16 => super::x86::f16_round_store(sum, bits.as_mut_ptr()),
                    }
                    let to = round.get().add(i * out.n + j);
                    core::ptr::copy_nonoverlapping(bits.as_ptr(), to, lanes);
                }
            }
        }
    }
}

/// One vector's sum after a depth block: `acc`, or `c + acc` (`c` at `p`),
/// plus the bias (from column `j`) on the last block.
///
/// # Safety
/// AVX-512F; the lanes of `mask` are inside the row at `p` and the bias.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn block_sum(
    out: &Out<'_>,
    acc: __m512,
    p: *const f32,
    j: usize,
    mask: __mmask16,
    (first, last): (bool, bool),
) -> __m512 {
    // SAFETY: the caller's guarantee (masked loads touch only the lanes
    // inside the row; the address itself may point past it).
    unsafe {
        let sum = if first && out.overwrite {
            acc
        } else {
            _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), acc)
        };
        match out.bias {
            Some(b) if last => {
                _mm512_add_ps(sum, _mm512_maskz_loadu_ps(mask, b.as_ptr().wrapping_add(j)))
            }
            _ => sum,
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
/// AVX-512 (F, BW, VL); `b` holds every row's columns `c0..c1`; only this
/// call writes those columns of `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn row_major<T: Wide, const M: usize>(
    cols: &Columns<'_, f32>,
    (b, rows, col0): (&[T], &[usize], usize),
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
            let at: [*const T; 4] = core::array::from_fn(|q| {
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
                    *bv = unsafe { T::load16(mk, at.wrapping_add(16 * v)) };
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
            let acc: [__m512; M] = core::array::from_fn(|i| sums[i * vecs + v]);
            // SAFETY: the masked columns are this call's, inside `c` and the bias.
            unsafe { store(&cols.out, &acc, c0 + 16 * v, mask(v), (p0 == 0, p1 == k)) };
        }
    }
}

/// Columns `c0..c0 + starts.len()` of an `M`-row product whose `B` column
/// `c0 + s` is the run of `k` values at `starts[s]` (unit depth step: a
/// weight's row), as dot products: four runs at a time, 16 partial sums
/// per result along the run, added up at the end.
///
/// Not the blocked kernels' order (a chain down the depth per result): that
/// order needs the runs transposed, and its one dependent chain per result
/// left a token's product at a third of `torch.mm`'s speed. Here the bits
/// differ from the same rows of a taller product in the last places.
///
/// # Safety
/// AVX-512 (F, BW, VL); `b` holds every run; only this call writes those
/// columns of `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn transposed<T: Wide, const M: usize>(
    cols: &Columns<'_, f32>,
    (b, starts, c0): (&[T], &[usize], usize),
) {
    let k = cols.k;
    for s in (0..starts.len()).step_by(4) {
        let run = four_runs(b, starts, s);
        let next = four_runs(b, starts, s + 4);
        let mut acc = [[_mm512_setzero_ps(); 4]; M];
        for p in (0..k).step_by(16) {
            prefetch_l2(&next, p);
            let mask = lanes(p, k);
            let mut w = [_mm512_setzero_ps(); 4];
            for (w, &r) in w.iter_mut().zip(&run) {
                // SAFETY: each run holds `k` values; the mask stops at `k`.
                *w = unsafe { T::load16(mask, r.wrapping_add(p)) };
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row `i` of `A` holds `k` values; the mask stops at `k`.
                let a =
                    unsafe { _mm512_maskz_loadu_ps(mask, cols.a.as_ptr().wrapping_add(i * k + p)) };
                for (acc, &w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_fmadd_ps(a, w, *acc);
                }
            }
        }
        // SAFETY: columns `c0 + s..` (up to four, inside `starts`) are this call's.
        unsafe { store_dots(&cols.out, &acc, c0 + s, starts.len() - s) };
    }
}

/// [`transposed`] for `bf16`: the runs' pairs times `A`'s pairs, 16 pair
/// sums per result (`vdpbf16ps`), added up and rounded at the end (an odd
/// depth's last pair loaded with its high half zero).
///
/// # Safety
/// As for [`transposed`], and AVX512-BF16 with BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512bf16")]
unsafe fn transposed_bf16<const M: usize>(
    cols: &Columns<'_, u32>,
    (b, starts, c0): (&[u16], &[usize], usize),
    k: usize,
) {
    let pairs = cols.k;
    // Steps of 16 pairs (32 values); the last one masked to `k` values.
    let steps = pairs.div_ceil(16);
    for s in (0..starts.len()).step_by(4) {
        let run = four_runs(b, starts, s);
        let next = four_runs(b, starts, s + 4);
        let mut acc = [[_mm512_setzero_ps(); 4]; M];
        for t in 0..steps {
            prefetch_l2(&next, 32 * t);
            let left = k - 32 * t;
            let mask: __mmask32 = if left >= 32 { !0 } else { (1u32 << left) - 1 };
            let pmask = lanes(16 * t, pairs);
            let mut w = [_mm512_setzero_si512(); 4];
            for (w, &r) in w.iter_mut().zip(&run) {
                // SAFETY: each run holds `k` values; the mask stops at `k`.
                *w = unsafe { _mm512_maskz_loadu_epi16(mask, r.wrapping_add(32 * t).cast()) };
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row `i` of `A` holds `pairs` pairs; the mask stops there.
                let a = unsafe {
                    _mm512_maskz_loadu_epi32(
                        pmask,
                        cols.a.as_ptr().wrapping_add(i * pairs + 16 * t).cast(),
                    )
                };
                for (acc, &w) in acc.iter_mut().zip(&w) {
                    *acc = super::x86::bf16_dot(a, w, *acc);
                }
            }
        }
        // SAFETY: columns `c0 + s..` (up to four, inside `starts`) are this call's.
        unsafe { store_dots(&cols.out, &acc, c0 + s, starts.len() - s) };
    }
}

/// The runs `s..s + 4` of `starts` in `b`; past the end, the last one again
/// (its sums are not stored, and it is prefetched again).
#[cfg(target_arch = "x86_64")]
fn four_runs<T>(b: &[T], starts: &[usize], s: usize) -> [*const T; 4] {
    core::array::from_fn(|x| b[starts[(s + x).min(starts.len() - 1)]..].as_ptr())
}

/// Asks for the cache line at value `p` of each of the next four runs to
/// be brought into L2, one group of runs ahead of the loads.
///
/// A weight's rows are short streams (a 2048-value `bf16` row is one 4 KiB
/// page) that end together, and the hardware prefetchers start over on
/// each: a token's product with a 2048 x 32000 `bf16` weight from memory
/// ran at 9-13 GFLOP/s on 1 Zen 4 thread without this, 15-19 with it
/// (`torch.mm`: 15-16); `f32` 6-8 -> 9.5-11.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_l2<T>(next: &[*const T; 4], p: usize) {
    for &r in next {
        // SAFETY: a prefetch is only a hint: it reads nothing and cannot
        // fault, whatever the address (past a run's end included).
        unsafe { _mm_prefetch::<_MM_HINT_T1>(r.wrapping_add(p).cast::<i8>()) };
    }
}

/// Stores the dot products of four runs (columns `j..j + 4`, the first
/// `count` of them) for each row: each vector's 16 partial sums added up.
///
/// # Safety
/// AVX-512F; as for [`store_one`], for each stored result.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_dots<const M: usize>(
    out: &Out<'_>,
    acc: &[[__m512; 4]; M],
    j: usize,
    count: usize,
) {
    for (i, acc) in acc.iter().enumerate() {
        for (x, &acc) in acc.iter().enumerate().take(count) {
            // SAFETY: the caller's guarantee.
            unsafe { store_one(out, _mm512_reduce_add_ps(acc), i, j + x) };
        }
    }
}

/// One result: `sum`, or `c + sum` unless overwriting, plus the bias; into
/// `c`, or rounded into the 16-bit output if there is one. (One depth
/// block: the dot products sum the whole depth.)
///
/// # Safety
/// Row `i`, column `j` is inside the result and the caller's alone.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn store_one(out: &Out<'_>, sum: f32, i: usize, j: usize) {
    // SAFETY: the caller's guarantee.
    unsafe {
        let p = out.c.get().add(i * out.n + j);
        let sum = if out.overwrite { sum } else { *p + sum };
        let sum = match out.bias {
            Some(b) => sum + b[j],
            None => sum,
        };
        match out.round {
            Some((r, Narrow::Bf16)) => {
                *r.get().add(i * out.n + j) = super::pack::bf16_round(sum.to_bits())
            }
            Some((r, Narrow::F16)) => *r.get().add(i * out.n + j) = f16::from_f32(sum).to_bits(),
            None => *p = sum,
        }
    }
}

/// [`row_major`] for `bf16`: `A` as pairs, rows `2q` and `2q + 1` of `B`
/// interleaved into pairs on the fly (the last of an odd depth `k` with a
/// zero), one `vdpbf16ps` per pair, as the `bf16` kernels sum.
///
/// # Safety
/// As for [`row_major`], and AVX512-BF16 with BW, VL and DQ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")]
unsafe fn row_major_bf16<const M: usize>(
    cols: &Columns<'_, u32>,
    (b, rows, col0): (&[u16], &[usize], usize),
    (c0, c1): (usize, usize),
    k: usize,
) {
    let pairs = cols.k;
    let vecs = (c1 - c0).div_ceil(16);
    let mask = |v: usize| lanes(c0 + 16 * v, c1);
    let mut sums = vec![_mm512_setzero_ps(); M * vecs];
    for q0 in (0..pairs).step_by(cols.kc) {
        let q1 = (q0 + cols.kc).min(pairs);
        sums.fill(_mm512_setzero_ps());
        for q in q0..q1 {
            let lo = b.as_ptr().wrapping_add(rows[2 * q] + col0 + c0);
            let hi = (2 * q + 1 < k).then(|| b.as_ptr().wrapping_add(rows[2 * q + 1] + col0 + c0));
            let mut ai = [_mm512_setzero_si512(); M];
            for (i, ai) in ai.iter_mut().enumerate() {
                *ai = _mm512_set1_epi32(cols.a[i * pairs + q] as i32);
            }
            for v in 0..vecs {
                let mk = mask(v);
                // SAFETY: rows `2q` (and `2q + 1`), columns `c0 + 16 v..`
                // masked to `c1`, are in `b`.
                let pair = unsafe {
                    let l = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(
                        mk,
                        lo.wrapping_add(16 * v).cast(),
                    ));
                    let h = match hi {
                        Some(hi) => _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(
                            mk,
                            hi.wrapping_add(16 * v).cast(),
                        )),
                        None => _mm512_setzero_si512(),
                    };
                    _mm512_or_si512(l, _mm512_slli_epi32::<16>(h))
                };
                for (i, &ai) in ai.iter().enumerate() {
                    let s = &mut sums[i * vecs + v];
                    *s = super::x86::bf16_dot(ai, pair, *s);
                }
            }
        }
        for v in 0..vecs {
            let acc: [__m512; M] = core::array::from_fn(|i| sums[i * vecs + v]);
            // SAFETY: the masked columns are this call's.
            unsafe {
                store(
                    &cols.out,
                    &acc,
                    c0 + 16 * v,
                    mask(v),
                    (q0 == 0, q1 == pairs),
                )
            };
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn row_major<T: Wide, const M: usize>(
    _: &Columns<'_, f32>,
    _: (&[T], &[usize], usize),
    _: (usize, usize),
) {
    unreachable!("no AVX-512 here: `try_product` declines first")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transposed<T: Wide, const M: usize>(_: &Columns<'_, f32>, _: (&[T], &[usize], usize)) {
    unreachable!("no AVX-512 here: `try_product` declines first")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn row_major_bf16<const M: usize>(
    _: &Columns<'_, u32>,
    _: (&[u16], &[usize], usize),
    _: (usize, usize),
    _: usize,
) {
    unreachable!("no AVX512-BF16 here: `try_product` declines first")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transposed_bf16<const M: usize>(
    _: &Columns<'_, u32>,
    _: (&[u16], &[usize], usize),
    _: usize,
) {
    unreachable!("no AVX512-BF16 here: `try_product` declines first")
}
