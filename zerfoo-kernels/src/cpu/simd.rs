//! Run-time choice of the vector instruction set for auto-vectorized loops.
//!
//! The crate is built for baseline x86-64 (SSE2), never `target-cpu=native`,
//! so a plain loop vectorizes 4 lanes wide at best. [`vectorized`] runs a
//! closure inside a function compiled with AVX-512 or AVX2+FMA enabled
//! (whichever the CPU has, detected once), where the inlined loop body is
//! vectorized 16 or 8 lanes wide. The instructions differ, the arithmetic
//! does not: IEEE operations are not fused or reordered, so every path gives
//! bit-identical results.

/// Runs `body`, compiled for the widest vector instruction set this CPU
/// supports. `body` should be a straight loop over slices with an
/// `#[inline(always)]`-friendly element function (no libm calls).
///
/// ```
/// let a = vec![1.5f32; 100];
/// let mut out = vec![0f32; 100];
/// zerfoo_kernels::cpu::simd::vectorized(|| {
///     out.iter_mut().zip(&a).for_each(|(o, &x)| *o = x * 2.0)
/// });
/// assert!(out.iter().all(|&v| v == 3.0));
/// ```
#[inline(always)]
pub fn vectorized<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        match level() {
            Level::Avx512 => return unsafe { run_avx512(body) },
            Level::Avx2 => return unsafe { run_avx2(body) },
            Level::Baseline => {}
        }
    }
    body()
}

/// Asks for the cache lines of the `len` values at `run` to be brought into
/// L1, to be written (`WRITE`, for ownership) or read: a hint, it never
/// faults whatever the address, and does nothing off x86-64. For data the
/// hardware prefetchers do not follow (rows far apart, many interleaved
/// streams), asked for a little before it is used.
#[inline(always)]
pub(crate) fn prefetch<const WRITE: bool, T>(run: *const T, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_MM_HINT_ET0, _MM_HINT_T0};
        if WRITE {
            prefetch_lines::<_MM_HINT_ET0, T>(run, len)
        } else {
            prefetch_lines::<_MM_HINT_T0, T>(run, len)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (run, len);
}

/// [`prefetch`] into L2 only, for reading: data wanted a while later (the
/// next task's operands while this one computes), asked for without
/// evicting what the current work keeps in L1.
#[inline(always)]
pub(crate) fn prefetch_l2<T>(run: *const T, len: usize) {
    #[cfg(target_arch = "x86_64")]
    prefetch_lines::<{ core::arch::x86_64::_MM_HINT_T1 }, T>(run, len);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (run, len);
}

/// Every cache line the `len` values at `run` touch, asked for once with
/// the prefetch hint `HINT` (a run can straddle one more line than its
/// length fills).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_lines<const HINT: i32, T>(run: *const T, len: usize) {
    let bytes = len * core::mem::size_of::<T>();
    if bytes == 0 {
        return;
    }
    let first = run.cast::<i8>().wrapping_sub(run as usize & 63);
    let lines = ((run as usize & 63) + bytes).div_ceil(64);
    for l in 0..lines {
        // SAFETY: a prefetch is only a hint: it never faults, whatever the address.
        unsafe { core::arch::x86_64::_mm_prefetch::<HINT>(first.wrapping_add(64 * l)) }
    }
}

/// Lanes of the vectorizable sums ([`lane_sum_of`], [`lane_sum_zip`]).
const LANES: usize = 16;

/// `Σ f(xs[i])`, summed in 16 interleaved lanes (`i % 16`) that are added
/// in a fixed order at the end: a loop the compiler vectorizes (a plain
/// running sum must stay sequential; whole 16-value chunks need no bounds
/// checks), and a result that depends only on the values, never on threads
/// or the instruction set.
///
/// ```
/// let xs: Vec<f32> = (0..100).map(|i| i as f32).collect();
/// let s = zerfoo_kernels::cpu::simd::lane_sum_of(&xs, |x| x);
/// assert_eq!(s, 4950.0);
/// ```
#[inline(always)]
pub fn lane_sum_of<A: crate::Real, T: Copy>(xs: &[T], f: impl Fn(T) -> A) -> A {
    let mut acc = [A::zero(); LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        let c: &[T; LANES] = c.try_into().expect("a whole chunk");
        add_lanes(&mut acc, c, &f);
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(x);
    }
    fold_lanes(acc, |a, b| a + b)
}

/// `Σ f(a[i], b[i])` over the common length, in the lanes of [`lane_sum_of`].
///
/// ```
/// let (a, b) = ([1.0f32, 2.0, 3.0], [4.0f32, 5.0, 6.0]);
/// assert_eq!(zerfoo_kernels::cpu::simd::lane_sum_zip(&a, &b, |x, y| x * y), 32.0);
/// ```
#[inline(always)]
pub fn lane_sum_zip<A: crate::Real, T: Copy, U: Copy>(
    a: &[T],
    b: &[U],
    f: impl Fn(T, U) -> A,
) -> A {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [A::zero(); LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ca).zip(&mut cb) {
        let x: &[T; LANES] = x.try_into().expect("a whole chunk");
        let y: &[U; LANES] = y.try_into().expect("a whole chunk");
        let mut v = [A::zero(); LANES];
        for ((v, &x), &y) in v.iter_mut().zip(x).zip(y) {
            *v = f(x, y);
        }
        add_lanes(&mut acc, &v, &|v| v);
    }
    for ((s, &x), &y) in acc.iter_mut().zip(ca.remainder()).zip(cb.remainder()) {
        *s += f(x, y);
    }
    fold_lanes(acc, |a, b| a + b)
}

/// The largest of `xs` (`-inf` when empty; a NaN is skipped like
/// [`f32::max`] skips it), kept in 16 interleaved lanes so the loop
/// vectorizes; the result does not depend on the lane order.
///
/// ```
/// let xs = [1.0f32, -3.0, 7.5, 2.0];
/// assert_eq!(zerfoo_kernels::cpu::simd::lane_max(&xs), 7.5);
/// ```
#[inline(always)]
pub fn lane_max<A: crate::Real>(xs: &[A]) -> A {
    let mut acc = [A::neg_infinity(); LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        let c: &[A; LANES] = c.try_into().expect("a whole chunk");
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = a.max(x);
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a = a.max(x);
    }
    fold_lanes(acc, |a, b| a.max(b))
}

/// `acc[i] += f(c[i])` for one whole chunk: the values first, then one
/// add per lane, so the adds compile to full-width vector adds. (Not
/// `core::array::from_fn`: its helper is not always inlined, and then `f`
/// runs outside the caller's target features, an `fmaf` call per `mul_add`.)
#[inline(always)]
fn add_lanes<A: crate::Real, T: Copy>(acc: &mut [A; LANES], c: &[T; LANES], f: &impl Fn(T) -> A) {
    let mut v = [A::zero(); LANES];
    for (v, &x) in v.iter_mut().zip(c) {
        *v = f(x);
    }
    for (a, v) in acc.iter_mut().zip(v) {
        *a += v;
    }
}

/// The 16 lanes combined pairwise in a fixed order (lane `i` with lane
/// `i + 8`, then `i + 4`, `i + 2`, `i + 1`): four dependent steps of
/// vector operations, where a running fold of the lanes is a chain of 15
/// dependent scalar additions. The order is fixed, so the result still
/// depends only on the values.
#[inline(always)]
fn fold_lanes<A: Copy>(a: [A; LANES], op: impl Fn(A, A) -> A) -> A {
    let s8: [A; 8] = core::array::from_fn(|i| op(a[i], a[i + 8]));
    let s4: [A; 4] = core::array::from_fn(|i| op(s8[i], s8[i + 4]));
    op(op(s4[0], s4[2]), op(s4[1], s4[3]))
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Avx512,
    Avx2,
    Baseline,
}

/// The best level this CPU has, found once (the packing loops ask per row:
/// five feature checks each time were ~3% of a 256 x 256 f16 product).
#[cfg(target_arch = "x86_64")]
#[inline]
fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        use std::arch::is_x86_feature_detected as has;
        // (F16C too: `run_avx512` enables it, and the f16 conversions use it.)
        if has!("avx512f")
            && has!("avx512bw")
            && has!("avx512vl")
            && has!("avx512dq")
            && has!("f16c")
        {
            Level::Avx512
        } else if has!("avx2") && has!("fma") {
            Level::Avx2
        } else {
            Level::Baseline
        }
    })
}

/// Whether [`vectorized`] runs its body with AVX-512 (F, BW, VL, DQ, F16C).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx512() -> bool {
    level() == Level::Avx512
}

/// # Safety
/// The CPU must support AVX-512 F/BW/VL/DQ and F16C (checked by [`level`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn run_avx512<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// # Safety
/// The CPU must support AVX2 and FMA (checked by [`level`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// `x` as `f32`.
///
/// # Panics
/// Unless `A` is `f32`.
#[inline]
pub(crate) fn as_f32<A: 'static>(x: &[A]) -> &[f32] {
    assert!(core::any::TypeId::of::<A>() == core::any::TypeId::of::<f32>());
    // SAFETY: `A` is `f32` (same TypeId).
    unsafe { core::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) }
}

/// `x` as `f32`.
///
/// # Panics
/// Unless `A` is `f32`.
#[inline]
pub(crate) fn as_f32_mut<A: 'static>(x: &mut [A]) -> &mut [f32] {
    assert!(core::any::TypeId::of::<A>() == core::any::TypeId::of::<f32>());
    // SAFETY: `A` is `f32` (same TypeId).
    unsafe { core::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<f32>(), x.len()) }
}

/// Pieces shared by the explicit `f32` AVX-512 row kernels (attention's
/// softmax, the norms), which give the bits of the portable loops.
#[cfg(target_arch = "x86_64")]
pub(crate) mod f32x16 {
    use core::arch::x86_64::*;

    /// The lanes of a row's 16-wide vector `v` holding columns `16v..n`.
    #[inline(always)]
    pub(crate) fn lanes(n: usize, v: usize) -> __mmask16 {
        let k = n.saturating_sub(16 * v).min(16);
        ((1u32 << k) - 1) as __mmask16
    }

    /// The 16 lanes summed in [`super::lane_sum_of`]'s order (lane `i`
    /// with `i + 8`, `i + 4`, `i + 2`, `i + 1`).
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn fold_add(v: __m512) -> f32 {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        let s8 = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastmath::{erf_f32, exp_f32};

    #[test]
    fn every_path_gives_the_same_bits() {
        let xs: Vec<f32> = (0..4099).map(|i| (i as f32 - 2000.0) * 0.037).collect();
        let f = |x: f32| exp_f32(-x * x * 0.1) * erf_f32(x) + x * 0.5;
        let reference: Vec<u32> = xs.iter().map(|&x| f(x).to_bits()).collect();
        let mut out = vec![0f32; xs.len()];
        vectorized(|| out.iter_mut().zip(&xs).for_each(|(o, &x)| *o = f(x)));
        assert!(out.iter().zip(&reference).all(|(o, r)| o.to_bits() == *r));
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                let mut out2 = vec![0f32; xs.len()];
                unsafe { run_avx2(|| out2.iter_mut().zip(&xs).for_each(|(o, &x)| *o = f(x))) };
                assert!(out2.iter().zip(&reference).all(|(o, r)| o.to_bits() == *r));
            }
        }
    }
}
