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
//! Whole 8 x 32 tiles with `A` row-major or transposed run a depth loop in
//! assembly ([`depth_8x32`]), four steps per iteration, every address a
//! fixed offset from a few pointers (~60% -> 67-80% of the core's FMA peak
//! in L1). Partial tiles and other strides take the Rust loop: a transposed
//! `A` (unit row stride) read at fixed offsets from one pointer, a row-major
//! one (unit depth stride) from one pointer per row with a shared depth
//! index.

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::x86::unrolled_depth_loop;

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

/// One row of a depth step of [`depth_8x32`]: `A`'s value at `addr`
/// broadcast into `t`, then `zmm{r0} += zmm16 * t`, `zmm{r1} += zmm17 * t`.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
macro_rules! depth_row_8x2 {
    ($addr:expr, $t:literal, $r0:literal, $r1:literal) => {
        concat!(
            "vbroadcastss ", $t, ", dword ptr [", $addr, "]\n",
            "vfmadd231ps zmm", $r0, ", zmm16, ", $t, "\n",
            "vfmadd231ps zmm", $r1, ", zmm17, ", $t, "\n",
        )
    };
}

/// One depth step of [`depth_8x32`]: `B`'s two vectors at `bq`, then the 8
/// rows, row `r`'s value at address `a_r`.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
macro_rules! depth_step_8x2 {
    ($bq:expr; $a0:expr, $a1:expr, $a2:expr, $a3:expr, $a4:expr, $a5:expr, $a6:expr, $a7:expr) => {
        concat!(
            "vmovups zmm16, zmmword ptr [", $bq, "]\n",
            "vmovups zmm17, zmmword ptr [", $bq, " + 64]\n",
            depth_row_8x2!($a0, "zmm18", "0", "1"),
            depth_row_8x2!($a1, "zmm19", "2", "3"),
            depth_row_8x2!($a2, "zmm18", "4", "5"),
            depth_row_8x2!($a3, "zmm19", "6", "7"),
            depth_row_8x2!($a4, "zmm18", "8", "9"),
            depth_row_8x2!($a5, "zmm19", "10", "11"),
            depth_row_8x2!($a6, "zmm18", "12", "13"),
            depth_row_8x2!($a7, "zmm19", "14", "15"),
        )
    };
}

/// Depth step `u` (of four) with `A` row-major: row `r` at `{a0}` (rows
/// 0-3) or `{a4}` (rows 4-7) plus 0, 1, 2 or 3 row strides `{l}`, its
/// value `u` on.
#[cfg(target_arch = "x86_64")]
macro_rules! rows_step_8x2 {
    ($u:literal, $bq:expr) => {
        depth_step_8x2!(
            $bq;
            concat!("{a0} + ", $u, "*4"),
            concat!("{a0} + {l} + ", $u, "*4"),
            concat!("{a0} + {l}*2 + ", $u, "*4"),
            concat!("{a0} + {l3} + ", $u, "*4"),
            concat!("{a4} + ", $u, "*4"),
            concat!("{a4} + {l} + ", $u, "*4"),
            concat!("{a4} + {l}*2 + ", $u, "*4"),
            concat!("{a4} + {l3} + ", $u, "*4")
        )
    };
}

/// A depth step with `A` transposed: the step's 8 values adjacent at `ap`.
#[cfg(target_arch = "x86_64")]
macro_rules! columns_step_8x2 {
    ($ap:expr, $bq:expr) => {
        depth_step_8x2!(
            $bq;
            $ap,
            concat!($ap, " + 4"),
            concat!($ap, " + 8"),
            concat!($ap, " + 12"),
            concat!($ap, " + 16"),
            concat!($ap, " + 20"),
            concat!($ap, " + 24"),
            concat!($ap, " + 28")
        )
    };
}

/// `acc[r][v] = fma(A[r, p], B[p, 16v..16v + 16], acc[r][v])` for `p` in
/// `0..steps` in order (the Rust tile's operations, so its bits): 8 rows by
/// 32 columns, four steps per iteration, in assembly. `B`'s row `p` is at
/// `b + p * ldb` bytes. With `A` row-major (`transposed` false) row `r` is
/// at `a + r * lda` bytes and its values adjacent; transposed, depth `p`'s
/// 8 values are adjacent at `a + p * lda` bytes.
///
/// Written out because the compiler's loop runs at ~64% of the FMA peak in
/// L1 (32 x 256 x 64 and 32 x 64 x 256 products: 125-141 -> 144-172
/// GFLOP/s on one core): it keeps a counter on the stack and does not
/// unroll (unrolled, it spills).
///
/// # Safety
/// AVX-512F must be present; the `8 x steps` values of `A` and the rows
/// `0..steps` (32 values each) of `B` must be readable.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn depth_8x32(
    steps: usize,
    (a, lda, transposed): (*const f32, usize, bool),
    (b, ldb): (*const f32, usize),
    acc: &mut [[__m512; 2]; 8],
) {
    // The operands both variants share (with the four steps, the one step
    // and any of their own).
    macro_rules! run {
        ([$($four:expr),*]; [$($one:expr),*]; $($own:tt)*) => {
            unrolled_depth_loop!(
                steps;
                [$($four),*];
                [$($one),*];
                a0 = inout(reg) a => _,
                $($own)*
                l = in(reg) lda,
                l3 = in(reg) 3 * lda,
                b = inout(reg) b => _,
                lb = in(reg) ldb,
                lb3 = in(reg) 3 * ldb,
                inout("zmm0") acc[0][0], inout("zmm1") acc[0][1],
                inout("zmm2") acc[1][0], inout("zmm3") acc[1][1],
                inout("zmm4") acc[2][0], inout("zmm5") acc[2][1],
                inout("zmm6") acc[3][0], inout("zmm7") acc[3][1],
                inout("zmm8") acc[4][0], inout("zmm9") acc[4][1],
                inout("zmm10") acc[5][0], inout("zmm11") acc[5][1],
                inout("zmm12") acc[6][0], inout("zmm13") acc[6][1],
                inout("zmm14") acc[7][0], inout("zmm15") acc[7][1],
                out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
                options(nostack, readonly),
            )
        };
    }
    // SAFETY: the caller's guarantees; only reads memory.
    unsafe {
        if transposed {
            run!(
                [
                    columns_step_8x2!("{a0}", "{b}"),
                    columns_step_8x2!("{a0} + {l}", "{b} + {lb}"),
                    columns_step_8x2!("{a0} + {l}*2", "{b} + {lb}*2"),
                    columns_step_8x2!("{a0} + {l3}", "{b} + {lb3}"),
                    "lea {a0}, [{a0} + {l}*4]",
                    "lea {b}, [{b} + {lb}*4]"
                ];
                [columns_step_8x2!("{a0}", "{b}"), "add {a0}, {l}", "add {b}, {lb}"];
            )
        } else {
            run!(
                [
                    rows_step_8x2!(0, "{b}"),
                    rows_step_8x2!(1, "{b} + {lb}"),
                    rows_step_8x2!(2, "{b} + {lb}*2"),
                    rows_step_8x2!(3, "{b} + {lb3}"),
                    "lea {b}, [{b} + {lb}*4]",
                    "add {a0}, 16",
                    "add {a4}, 16"
                ];
                [rows_step_8x2!(0, "{b}"), "add {b}, {lb}", "add {a0}, 4", "add {a4}, 4"];
                a4 = inout(reg) a.wrapping_byte_add(4 * lda) => _,
            )
        }
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
    if R == 8 && V == 2 && mask == !0 && (rsa == 1 || csa == 1) {
        // Whole 8 x 32 tiles: the assembly loop.
        // SAFETY: `R` is 8 and `V` 2: the same type.
        let full = unsafe { &mut *acc.as_mut_ptr().cast::<[[__m512; 2]; 8]>() };
        let (lda, transposed) = if csa == 1 { (rsa, false) } else { (csa, true) };
        // SAFETY: AVX-512F is present; `A`'s 8 rows and `B`'s `k` rows of
        // 32 lie in the operands (the caller's guarantee).
        unsafe { depth_8x32(k, (a, 4 * lda, transposed), (b, 4 * rsb), full) };
    } else if rsa == 1 {
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
