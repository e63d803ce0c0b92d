//! Explicit x86-64 micro-kernels (AVX-512F, AVX512-BF16 and AVX2+FMA), each compiled with
//! its own `#[target_feature]` and offered only when the CPU has it.
//!
//! Each keeps an `MR x NR` tile of `C` in vector registers: per depth step it
//! loads `NR / LANES` vectors of the packed `B` panel, broadcasts each of the
//! `MR` packed `A` values and issues `MR * NR / LANES` fused multiply-adds.
//! The AVX512-BF16 kernel does the same per depth *pair*: each 32-bit lane
//! holds two `bf16` values and `vdpbf16ps` adds both products to an `f32`
//! accumulator.

use core::arch::x86_64::*;

use super::kernel::{Kernel, Store};

/// Asks for the `rows x cols` tile of `C` at `c` (row length `ldc`) to be
/// brought into L1 while the depth loop runs: its rows lie `ldc` apart, a
/// pattern the hardware prefetchers do not follow, and the tile is read (or
/// written) only after the loop.
#[inline(always)]
fn prefetch_tile<T>(c: *const T, ldc: usize, rows: usize, cols: usize) {
    let line = 64 / core::mem::size_of::<T>();
    for i in 0..rows {
        for j in (0..cols).step_by(line) {
            // SAFETY: a prefetch is only a hint: it never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc + j).cast::<i8>()) };
        }
    }
}

/// Depth steps ahead that the kernels ask for their packed `B` panel: a
/// panel deeper than about 256 steps does not stay in L1 while it is
/// multiplied by every `A` panel of a block, and the hardware prefetchers
/// bring it from L2 too late (f32 at depth 512: ~6% faster).
const B_PREFETCH_STEPS: usize = 8;

/// Asks for the `B` values `B_PREFETCH_STEPS` depth steps after `b` (one
/// step is `step` values), one hint per cache line.
#[inline(always)]
fn prefetch_ahead<T>(b: *const T, step: usize) {
    let bytes = step * core::mem::size_of::<T>();
    let ahead = b.wrapping_add(B_PREFETCH_STEPS * step).cast::<i8>();
    for off in (0..bytes).step_by(64) {
        // SAFETY: a prefetch is only a hint: it never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(off)) };
    }
}

macro_rules! micro_kernel {
    (
        $(#[$doc:meta])*
        $name:ident, $direct:ident; $feat:literal;
        packed $p:ty, $g:literal per group: $bzero:ident, $loadb:ident, $set1:ident, $fma:ident, $at:ident;
        $c:ty, $mr:literal x $nv:literal x $lanes:literal: $zero:ident, $load:ident, $store:ident, $add:ident
        $(; rounds with $round:ident)?
    ) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// As for [`super::kernel::MicroFn`], and the CPU must support the
        /// kernel's target features.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn $name(
            kc: usize,
            a: *const $p,
            b: *const $p,
            c: *mut $c,
            ldc: usize,
            st: Store<$c>,
        ) {
            prefetch_tile::<$c>(c, ldc, $mr, $nv * $lanes);
            let mut acc = [[$zero(); $nv]; $mr];
            let (mut a, mut b) = (a, b);
            for _ in 0..kc.div_ceil($g) {
                prefetch_ahead(b, $nv * $lanes);
                let mut bv = [$bzero(); $nv];
                for (v, bv) in bv.iter_mut().enumerate() {
                    // SAFETY: the packed B panel holds `NR = nv * lanes` values per group.
                    *bv = unsafe { $loadb(b.add(v * $lanes)) };
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: the packed A panel holds `MR` values per group.
                    let ai = $set1(unsafe { *a.add(i) });
                    for (acc, &bv) in acc.iter_mut().zip(&bv) {
                        *acc = $fma(ai, bv, *acc);
                    }
                }
                // SAFETY: stays within (or one past) the packed panels.
                unsafe {
                    a = a.add($mr);
                    b = b.add($nv * $lanes);
                }
            }
            // SAFETY: the caller's tile is `MR x NR` at `c` (row length `ldc`).
            unsafe { micro_kernel!(@store acc, c, ldc, st, $lanes, $load, $store, $add $(, $round)?) };
        }

        #[doc = concat!("[`", stringify!($name), "`] reading `A` in place (see [`", stringify!($at), "`]).")]
        ///
        /// # Safety
        /// As for [`super::kernel::DirectFn`], and the CPU must support the
        /// kernel's target features.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn $direct(
            kc: usize,
            a: *const $p,
            lda: usize,
            b: *const $p,
            c: *mut $c,
            ldc: usize,
            st: Store<$c>,
        ) {
            prefetch_tile::<$c>(c, ldc, $mr, $nv * $lanes);
            let mut acc = [[$zero(); $nv]; $mr];
            let mut b = b;
            debug_assert!(kc.is_multiple_of($g));
            for q in 0..kc / $g {
                prefetch_ahead(b, $nv * $lanes);
                let mut bv = [$bzero(); $nv];
                for (v, bv) in bv.iter_mut().enumerate() {
                    // SAFETY: the packed B panel holds `NR = nv * lanes` values per step.
                    *bv = unsafe { $loadb(b.add(v * $lanes)) };
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: the caller guarantees rows `0..MR`, depth `0..kc` of A.
                    let ai = $set1(unsafe { $at(a, i * lda, q) });
                    for (acc, &bv) in acc.iter_mut().zip(&bv) {
                        *acc = $fma(ai, bv, *acc);
                    }
                }
                // SAFETY: stays within (or one past) the packed B panel.
                b = unsafe { b.add($nv * $lanes) };
            }
            // SAFETY: the caller's tile is `MR x NR` at `c` (row length `ldc`).
            unsafe { micro_kernel!(@store acc, c, ldc, st, $lanes, $load, $store, $add $(, $round)?) };
        }
    };
    // Writes (or adds) the accumulators into the tile, or rounds them (plus
    // the tile unless overwriting) into the `bf16` tile; used inside `unsafe`.
    (@store $acc:ident, $cp:ident, $ldc:ident, $st:ident, $lanes:literal, $load:ident, $store:ident, $add:ident $(, $round:ident)?) => {{
        // `(c + Σ) + bias`: the old values first, then the column biases
        // (`v * lanes + lanes <= NR`: inside the bias row).
        let bias = $st.bias;
        $(
        if !$st.round.is_null() {
            for (i, acc) in $acc.iter().enumerate() {
                for (v, &acc) in acc.iter().enumerate() {
                    // `i < MR`, `v * lanes + lanes <= NR`: inside both tiles.
                    let p = $cp.add(i * $ldc + v * $lanes);
                    let sum = if $st.overwrite { acc } else { $add($load(p), acc) };
                    let sum = if bias.is_null() { sum } else { $add(sum, $load(bias.add(v * $lanes))) };
                    $round(sum, $st.round.add(i * $st.ldr + v * $lanes));
                }
            }
            return;
        }
        )?
        debug_assert!($st.round.is_null(), "this kernel does not round");
        for (i, acc) in $acc.iter().enumerate() {
            for (v, &acc) in acc.iter().enumerate() {
                // `i < MR`, `v * lanes + lanes <= NR`: inside the tile.
                let p = $cp.add(i * $ldc + v * $lanes);
                let sum = if $st.overwrite { acc } else { $add($load(p), acc) };
                let sum = if bias.is_null() { sum } else { $add(sum, $load(bias.add(v * $lanes))) };
                $store(p, sum);
            }
        }
    }};
}

micro_kernel!(
    /// `f32` AVX-512F kernel: 14 x 32 (28 zmm accumulators).
    f32_avx512_14x32, f32_avx512_14x32_direct; "avx512f";
    packed f32, 1 per group: _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, at_one;
    f32, 14 x 2 x 16: _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_add_ps
);
micro_kernel!(
    /// `f64` AVX-512F kernel: 14 x 16 (28 zmm accumulators).
    f64_avx512_14x16, f64_avx512_14x16_direct; "avx512f";
    packed f64, 1 per group: _mm512_setzero_pd, _mm512_loadu_pd, _mm512_set1_pd, _mm512_fmadd_pd, at_one;
    f64, 14 x 2 x 8: _mm512_setzero_pd, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_add_pd
);
micro_kernel!(
    /// `f32` AVX2+FMA kernel: 6 x 16 (12 ymm accumulators).
    f32_avx2_6x16, f32_avx2_6x16_direct; "avx2,fma";
    packed f32, 1 per group: _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, at_one;
    f32, 6 x 2 x 8: _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_add_ps
);
micro_kernel!(
    /// `f64` AVX2+FMA kernel: 6 x 8 (12 ymm accumulators).
    f64_avx2_6x8, f64_avx2_6x8_direct; "avx2,fma";
    packed f64, 1 per group: _mm256_setzero_pd, _mm256_loadu_pd, _mm256_set1_pd, _mm256_fmadd_pd, at_one;
    f64, 6 x 2 x 4: _mm256_setzero_pd, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_add_pd
);
micro_kernel!(
    /// `bf16` AVX512-BF16 kernel: 14 x 32 (28 zmm `f32` accumulators), one
    /// `vdpbf16ps` per accumulator and depth pair (`u32` = two `bf16`).
    bf16_avx512_14x32, bf16_avx512_14x32_direct; "avx512f,avx512bf16";
    packed u32, 2 per group: _mm512_setzero_si512, bf16_load, bf16_set1, bf16_dot, at_pair;
    f32, 14 x 2 x 16: _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_add_ps;
    rounds with bf16_round_store
);
micro_kernel!(
    /// `bf16` AVX512-BF16 kernel: 8 x 48 (24 zmm `f32` accumulators), for
    /// products whose rows and columns are multiples of 8 and 48 (no padding).
    bf16_avx512_8x48, bf16_avx512_8x48_direct; "avx512f,avx512bf16";
    packed u32, 2 per group: _mm512_setzero_si512, bf16_load, bf16_set1, bf16_dot, at_pair;
    f32, 8 x 3 x 16: _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_add_ps;
    rounds with bf16_round_store
);

/// Value `q` of a row of `A` read in place at `a + off` (`f32` or `f64`).
///
/// # Safety
/// `a + off + q` must be readable.
#[inline(always)]
unsafe fn at_one<T: Copy>(a: *const T, off: usize, q: usize) -> T {
    // SAFETY: the caller's guarantee.
    unsafe { *a.add(off + q) }
}

/// Depth pair `q` of a row of a `bf16` `A` read in place: `a` points at
/// `bf16` values (not pairs) and the row starts `off` values after it.
///
/// # Safety
/// `bf16` values `off + 2q` and `off + 2q + 1` after `a` must be readable.
#[inline(always)]
unsafe fn at_pair(a: *const u32, off: usize, q: usize) -> u32 {
    // SAFETY: the caller's guarantee; the read needs no alignment.
    unsafe {
        a.cast::<u16>()
            .add(off + 2 * q)
            .cast::<u32>()
            .read_unaligned()
    }
}

/// Rounds 16 `f32` to `bf16` (to nearest, ties to even; NaN kept quiet:
/// bit for bit [`super::pack::bf16_round`]) and stores them at `p`.
///
/// # Safety
/// `p` must be writable for 16 `u16`.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_round_store(v: __m512, p: *mut u16) {
    let x = _mm512_castps_si512(v);
    let hi = _mm512_srli_epi32::<16>(x);
    let lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
    let bias = _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF));
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(x, bias));
    let quiet = _mm512_or_si512(hi, _mm512_set1_epi32(0x40));
    let abs = _mm512_and_si512(x, _mm512_set1_epi32(0x7FFF_FFFF));
    let nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7F80_0000));
    let bits = _mm512_mask_blend_epi32(nan, rounded, quiet);
    // SAFETY: the caller's guarantee (unaligned store of 32 bytes).
    unsafe { _mm256_storeu_si256(p.cast(), _mm512_cvtepi32_epi16(bits)) };
}

/// [`bf16_round_store`] on 16 `f32` read from `x` (for tests).
///
/// # Safety
/// The CPU must have AVX512-BF16; `x` readable and `p` writable for 16 values.
#[cfg(test)]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn round_bf16_16(x: *const f32, p: *mut u16) {
    // SAFETY: the caller's guarantee.
    unsafe { bf16_round_store(_mm512_loadu_ps(x), p) }
}

/// Loads 16 packed `bf16` pairs.
///
/// # Safety
/// `p` must be readable for 16 `u32`.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_load(p: *const u32) -> __m512i {
    // SAFETY: the caller's guarantee (unaligned load).
    unsafe { _mm512_loadu_si512(p.cast()) }
}

/// One `bf16` pair in every 32-bit lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
fn bf16_set1(v: u32) -> __m512i {
    _mm512_set1_epi32(v as i32)
}

/// `acc[l] += a[2l] * b[2l] + a[2l + 1] * b[2l + 1]` (`vdpbf16ps`).
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
fn bf16_dot(a: __m512i, b: __m512i, acc: __m512) -> __m512 {
    // SAFETY: `__m512i` and `__m512bh` are both 64 bytes of plain bits.
    let (a, b) = unsafe {
        (
            core::mem::transmute::<__m512i, __m512bh>(a),
            core::mem::transmute::<__m512i, __m512bh>(b),
        )
    };
    _mm512_dpbf16_ps(acc, a, b)
}

fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f")
}

fn has_avx512_bf16() -> bool {
    has_avx512() && is_x86_feature_detected!("avx512bf16")
}

fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// The AVX-512 `f32` kernel, if this CPU has AVX-512F.
pub(crate) fn avx512_f32() -> Option<Kernel<f32>> {
    has_avx512().then_some(Kernel {
        mr: 14,
        nr: 32,
        f: f32_avx512_14x32,
        fd: Some(f32_avx512_14x32_direct),
        rounds: false,
        amx: false,
        name: "avx512-14x32",
    })
}

/// The AVX-512 `f64` kernel, if this CPU has AVX-512F.
pub(crate) fn avx512_f64() -> Option<Kernel<f64>> {
    has_avx512().then_some(Kernel {
        mr: 14,
        nr: 16,
        f: f64_avx512_14x16,
        fd: Some(f64_avx512_14x16_direct),
        rounds: false,
        amx: false,
        name: "avx512-14x16",
    })
}

/// The AVX2 `f32` kernel, if this CPU has AVX2 and FMA.
pub(crate) fn avx2_f32() -> Option<Kernel<f32>> {
    has_avx2().then_some(Kernel {
        mr: 6,
        nr: 16,
        f: f32_avx2_6x16,
        fd: Some(f32_avx2_6x16_direct),
        rounds: false,
        amx: false,
        name: "avx2-6x16",
    })
}

/// The AVX2 `f64` kernel, if this CPU has AVX2 and FMA.
pub(crate) fn avx2_f64() -> Option<Kernel<f64>> {
    has_avx2().then_some(Kernel {
        mr: 6,
        nr: 8,
        f: f64_avx2_6x8,
        fd: Some(f64_avx2_6x8_direct),
        rounds: false,
        amx: false,
        name: "avx2-6x8",
    })
}

/// The AVX512-BF16 kernels (packed `bf16` pairs, `f32` results), 14 x 32
/// and 8 x 48, if this CPU has AVX512-BF16.
pub(crate) fn avx512_bf16() -> Option<[Kernel<u32, f32>; 2]> {
    has_avx512_bf16().then_some([
        Kernel {
            mr: 14,
            nr: 32,
            f: bf16_avx512_14x32,
            fd: Some(bf16_avx512_14x32_direct),
            rounds: true,
            amx: false,
            name: "avx512bf16-14x32",
        },
        Kernel {
            mr: 8,
            nr: 48,
            f: bf16_avx512_8x48,
            fd: Some(bf16_avx512_8x48_direct),
            rounds: true,
            amx: false,
            name: "avx512bf16-8x48",
        },
    ])
}
