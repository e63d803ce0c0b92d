//! Small `f32` products read in place, for the blocks of other kernels (the
//! fused attention's 32 x 32 x 64 products): `c += A · B`, or `c = A · B`
//! (`c` not read), with `B` row-major (unit column stride) and `A` at any
//! strides, no packing, no allocation.
//!
//! An AVX-512 tile of `R` rows by `16 * V` columns of `C` stays in registers
//! while the depth loop broadcasts `A`'s values and loads `B`'s row straight
//! from memory (a masked load for the last, partial vector of a row). The
//! sum runs in the packed kernels' order (a fused multiply-add chain over the
//! depth starting from zero, then one add to `c`), so for depths up to
//! [`super::KC`] the bits equal the blocked path's.
//!
//! A transposed `A` (unit row stride) is read at fixed offsets from one
//! pointer, a row-major one (unit depth stride) from one pointer per row with
//! a shared depth index: no address arithmetic per value in the depth loop
//! (32 x 32 x 32 in L1: 58 -> 60-64% of the core's FMA peak).

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

/// Rows of `C` per full tile.
#[cfg(target_arch = "x86_64")]
const ROWS: usize = 8;

/// `c += A · B`, or `c = A · B` with `overwrite` (`m x k` by `k x n`, `c`
/// row-major `m x n`) through the AVX-512 tiles, when this CPU has AVX-512F
/// and the product suits them (`B` row-major, depth within one block);
/// returns `false` (having done nothing) otherwise.
///
/// `A[i, p] = a[i * rsa + p * csa]`, `B[p, j] = b[p * rsb + j]`.
///
/// # Safety
/// The caller ([`super::gemm_acc`] or [`super::gemm_set`]) has checked
/// the bounds: `m, n, k > 0`, `c.len() == m * n`, and every element of `A`
/// and `B` lies inside `a` and `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn try_gemm_f32(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    c: &mut [f32],
    overwrite: bool,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if csb != 1 || k > super::KC || k * n > 64 * 1024 || !has_avx512() {
            return false;
        }
        debug_assert!(m > 0 && n > 0 && k > 0 && c.len() == m * n);
        // SAFETY: AVX-512F is present; the bounds are the caller's guarantee.
        unsafe {
            gemm_avx512(
                m,
                n,
                k,
                a.as_ptr(),
                (rsa, csa),
                b.as_ptr(),
                rsb,
                c.as_mut_ptr(),
                overwrite,
            )
        };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ((m, n, k), a, (rsa, csa), b, (rsb, csb), c, overwrite);
        false
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Walks `C` in tiles of [`ROWS`] rows (then the remaining rows) by 32
/// columns (then 16 or fewer).
///
/// # Safety
/// AVX-512F must be present; `A`, `B`, `c` must cover the product.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn gemm_avx512(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    (rsa, csa): (usize, usize),
    b: *const f32,
    rsb: usize,
    c: *mut f32,
    overwrite: bool,
) {
    let mut j0 = 0;
    while j0 < n {
        let cols = (n - j0).min(32);
        // Lanes of the last vector of this column tile.
        let last = if cols > 16 { cols - 16 } else { cols };
        let mask: __mmask16 = if last == 16 { !0 } else { (1u16 << last) - 1 };
        let mut i0 = 0;
        while i0 < m {
            let rows = (m - i0).min(ROWS);
            // SAFETY: rows `i0..i0 + rows`, columns `j0..j0 + cols` lie
            // inside the product (the caller's guarantee).
            unsafe {
                let (ap, bp, cp) = (a.add(i0 * rsa), b.add(j0), c.add(i0 * n + j0));
                let args = (k, ap, rsa, csa, bp, rsb, cp, n, mask, overwrite);
                if cols > 16 {
                    tile_rows::<2>(rows, args);
                } else {
                    tile_rows::<1>(rows, args);
                }
            }
            i0 += rows;
        }
        j0 += cols;
    }
}

/// The arguments of one tile: depth, `A` (pointer, strides), `B` (pointer,
/// row stride), `C` (pointer, row stride), the last vector's lane mask, and
/// whether the tile overwrites `C` (else adds to it).
#[cfg(target_arch = "x86_64")]
type TileArgs = (
    usize,
    *const f32,
    usize,
    usize,
    *const f32,
    usize,
    *mut f32,
    usize,
    __mmask16,
    bool,
);

/// Dispatches a tile of `rows` (`1..=ROWS`) rows to its unrolled kernel.
///
/// # Safety
/// As for [`tile`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_rows<const V: usize>(rows: usize, t: TileArgs) {
    // SAFETY: the caller's guarantee, for every row count.
    unsafe {
        match rows {
            8 => tile::<8, V>(t),
            7 => tile::<7, V>(t),
            6 => tile::<6, V>(t),
            5 => tile::<5, V>(t),
            4 => tile::<4, V>(t),
            3 => tile::<3, V>(t),
            2 => tile::<2, V>(t),
            _ => tile::<1, V>(t),
        }
    }
}

/// `C[0..R, 0..16V] += A[0..R, 0..k] · B[0..k, 0..16V]` (`=` when
/// overwriting), the last vector of each row limited to the lanes in
/// `mask`.
///
/// # Safety
/// AVX-512F must be present; rows `0..R` and depth `0..k` of `A`, depth
/// `0..k` and the masked columns of `B` and the tile of `C` must be valid.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize, const V: usize>(
    (k, a, rsa, csa, b, rsb, c, ldc, mask, overwrite): TileArgs,
) {
    let lane_mask = |v: usize| if v + 1 == V { mask } else { !0 };
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    let mut bp = b;
    // One depth step, `x(r)` reading `A[r, p]`, `bp` pointing at `B[p, 0]`.
    let mut step = |x: &dyn Fn(usize) -> f32, bp: *const f32| {
        let mut bv = [_mm512_setzero_ps(); V];
        for (v, bv) in bv.iter_mut().enumerate() {
            // SAFETY: masked lanes are not read (no fault); the rest lie in `B`.
            *bv = unsafe { _mm512_maskz_loadu_ps(lane_mask(v), bp.add(16 * v)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(x(r));
            for (acc, &bv) in acc.iter_mut().zip(&bv) {
                *acc = _mm512_fmadd_ps(x, bv, *acc);
            }
        }
    };
    if rsa == 1 {
        // A transposed: a depth step's values are adjacent.
        let mut ap = a;
        for _ in 0..k {
            // SAFETY: row `r < R` of `A` at the current depth.
            step(&|r| unsafe { *ap.add(r) }, bp);
            ap = ap.wrapping_add(csa);
            bp = bp.wrapping_add(rsb);
        }
    } else if csa == 1 {
        // A row-major: one pointer per row, one shared depth index.
        let rows: [*const f32; R] = core::array::from_fn(|r| {
            // Opaque to the optimizer: it then addresses each row from its
            // own register with the shared index instead of stepping one
            // register by `rsa` for every value.
            core::hint::black_box(a.wrapping_add(r * rsa))
        });
        for p in 0..k {
            // SAFETY: row `r < R` of `A` at depth `p < k`.
            step(&|r| unsafe { *rows[r].add(p) }, bp);
            bp = bp.wrapping_add(rsb);
        }
    } else {
        let mut ap = a;
        for _ in 0..k {
            // SAFETY: row `r < R` of `A` at the current depth.
            step(&|r| unsafe { *ap.add(r * rsa) }, bp);
            // Wrapping: after the last depth these may point past the operands
            // (they are not read then).
            ap = ap.wrapping_add(csa);
            bp = bp.wrapping_add(rsb);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, &acc) in acc.iter().enumerate() {
            // SAFETY: the tile of `C`, masked lanes neither read nor written.
            unsafe {
                let p = c.add(r * ldc + 16 * v);
                let sum = if overwrite {
                    acc
                } else {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(lane_mask(v), p), acc)
                };
                _mm512_mask_storeu_ps(p, lane_mask(v), sum);
            }
        }
    }
}
