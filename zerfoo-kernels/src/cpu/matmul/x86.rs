//! Explicit x86-64 micro-kernels (AVX-512F and AVX2+FMA), each compiled with
//! its own `#[target_feature]` and offered only when the CPU has it.
//!
//! Each keeps an `MR x NR` tile of `C` in vector registers: per depth step it
//! loads `NR / LANES` vectors of the packed `B` panel, broadcasts each of the
//! `MR` packed `A` values and issues `MR * NR / LANES` fused multiply-adds.

use core::arch::x86_64::*;

use super::kernel::Kernel;

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

macro_rules! micro_kernel {
    (
        $(#[$doc:meta])*
        $name:ident, $direct:ident, $feat:literal, $t:ty, $mr:literal, $nv:literal, $lanes:literal,
        $zero:ident, $load:ident, $store:ident, $set1:ident, $fma:ident, $add:ident
    ) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// As for [`super::kernel::MicroFn`], and the CPU must support the
        /// kernel's target features.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn $name(
            kc: usize,
            a: *const $t,
            b: *const $t,
            c: *mut $t,
            ldc: usize,
            overwrite: bool,
        ) {
            prefetch_tile::<$t>(c, ldc, $mr, $nv * $lanes);
            let mut acc = [[$zero(); $nv]; $mr];
            let (mut a, mut b) = (a, b);
            for _ in 0..kc {
                let mut bv = [$zero(); $nv];
                for (v, bv) in bv.iter_mut().enumerate() {
                    // SAFETY: the packed B panel holds `NR = nv * lanes` values per step.
                    *bv = unsafe { $load(b.add(v * $lanes)) };
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: the packed A panel holds `MR` values per step.
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
            for (i, acc) in acc.iter().enumerate() {
                for (v, &acc) in acc.iter().enumerate() {
                    // SAFETY: `i < MR`, `v * lanes + lanes <= NR`: inside the tile.
                    unsafe {
                        let p = c.add(i * ldc + v * $lanes);
                        if overwrite {
                            $store(p, acc);
                        } else {
                            $store(p, $add($load(p), acc));
                        }
                    }
                }
            }
        }

        $(#[$doc])*
        /// This variant reads `A` in place (row `i`, depth `p` at `a[i * lda + p]`).
        ///
        /// # Safety
        /// As for [`super::kernel::DirectFn`], and the CPU must support the
        /// kernel's target features.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn $direct(
            kc: usize,
            a: *const $t,
            lda: usize,
            b: *const $t,
            c: *mut $t,
            ldc: usize,
            overwrite: bool,
        ) {
            prefetch_tile::<$t>(c, ldc, $mr, $nv * $lanes);
            let mut acc = [[$zero(); $nv]; $mr];
            let mut b = b;
            for p in 0..kc {
                let mut bv = [$zero(); $nv];
                for (v, bv) in bv.iter_mut().enumerate() {
                    // SAFETY: the packed B panel holds `NR = nv * lanes` values per step.
                    *bv = unsafe { $load(b.add(v * $lanes)) };
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: the caller guarantees rows `0..MR`, depth `0..kc` of A.
                    let ai = $set1(unsafe { *a.add(i * lda + p) });
                    for (acc, &bv) in acc.iter_mut().zip(&bv) {
                        *acc = $fma(ai, bv, *acc);
                    }
                }
                // SAFETY: stays within (or one past) the packed B panel.
                b = unsafe { b.add($nv * $lanes) };
            }
            for (i, acc) in acc.iter().enumerate() {
                for (v, &acc) in acc.iter().enumerate() {
                    // SAFETY: `i < MR`, `v * lanes + lanes <= NR`: inside the tile.
                    unsafe {
                        let p = c.add(i * ldc + v * $lanes);
                        if overwrite {
                            $store(p, acc);
                        } else {
                            $store(p, $add($load(p), acc));
                        }
                    }
                }
            }
        }
    };
}

micro_kernel!(
    /// `f32` AVX-512F kernel: 14 x 32 (28 zmm accumulators).
    f32_avx512_14x32, f32_avx512_14x32_direct, "avx512f", f32, 14, 2, 16,
    _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps
);
micro_kernel!(
    /// `f64` AVX-512F kernel: 14 x 16 (28 zmm accumulators).
    f64_avx512_14x16, f64_avx512_14x16_direct, "avx512f", f64, 14, 2, 8,
    _mm512_setzero_pd, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_set1_pd, _mm512_fmadd_pd, _mm512_add_pd
);
micro_kernel!(
    /// `f32` AVX2+FMA kernel: 6 x 16 (12 ymm accumulators).
    f32_avx2_6x16, f32_avx2_6x16_direct, "avx2,fma", f32, 6, 2, 8,
    _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps
);
micro_kernel!(
    /// `f64` AVX2+FMA kernel: 6 x 8 (12 ymm accumulators).
    f64_avx2_6x8, f64_avx2_6x8_direct, "avx2,fma", f64, 6, 2, 4,
    _mm256_setzero_pd, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_set1_pd, _mm256_fmadd_pd, _mm256_add_pd
);

fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f")
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
        fd: f32_avx512_14x32_direct,
        name: "avx512-14x32",
    })
}

/// The AVX-512 `f64` kernel, if this CPU has AVX-512F.
pub(crate) fn avx512_f64() -> Option<Kernel<f64>> {
    has_avx512().then_some(Kernel {
        mr: 14,
        nr: 16,
        f: f64_avx512_14x16,
        fd: f64_avx512_14x16_direct,
        name: "avx512-14x16",
    })
}

/// The AVX2 `f32` kernel, if this CPU has AVX2 and FMA.
pub(crate) fn avx2_f32() -> Option<Kernel<f32>> {
    has_avx2().then_some(Kernel {
        mr: 6,
        nr: 16,
        f: f32_avx2_6x16,
        fd: f32_avx2_6x16_direct,
        name: "avx2-6x16",
    })
}

/// The AVX2 `f64` kernel, if this CPU has AVX2 and FMA.
pub(crate) fn avx2_f64() -> Option<Kernel<f64>> {
    has_avx2().then_some(Kernel {
        mr: 6,
        nr: 8,
        f: f64_avx2_6x8,
        fd: f64_avx2_6x8_direct,
        name: "avx2-6x8",
    })
}
