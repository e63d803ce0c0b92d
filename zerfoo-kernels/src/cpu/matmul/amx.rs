//! `bf16` products on Intel AMX tiles (Sapphire Rapids and later), where
//! the CPU and the operating system offer them.
//!
//! One `tdpbf16ps` multiplies a 16 x 32 `bf16` tile of `A` by a 32 x 16
//! tile of `B` (stored as 16 rows of 16 depth pairs, the "VNNI" order) and
//! adds the 16 x 16 products into an `f32` tile: 8192 multiply-adds per
//! instruction, about 16 times the AVX-512 `f32` rate.
//!
//! The product is blocked like the AVX-512 path: `B` is packed once into
//! 32-column panels of depth pairs (zero-padded to whole tiles), each task
//! (a block of rows by a block of columns) packs its rows of `A` per depth
//! block as plain row-major `bf16`, and a 32 x 32 micro-kernel keeps four
//! `f32` tiles of `C` while it walks the depth block, loading them from
//! and storing them to an `f32` accumulator between blocks. Every output is
//! the `f32` sum over depth blocks in order, rounded once to `bf16`, so the
//! result never depends on the thread count. Like `vdpbf16ps`, the tiles
//! treat denormal inputs as zero and flush denormal results to zero.
//!
//! The tile instructions are written as inline assembly (Rust's AMX
//! intrinsics are not stable); the kernel asks Linux for the tile state
//! once (`arch_prctl(ARCH_REQ_XCOMP_PERM)`) and falls back to the AVX-512
//! path when that fails. `ZERFOO_AMX=0` turns the path off.

use core::mem::MaybeUninit;
use std::sync::OnceLock;

use super::pack::{with_buf, A_BUF, B_BUF, C_BUF};
use super::Operands;
use crate::bf16;
use crate::cpu::threads::{self, for_each_chunk_mut, SyncPtr};

/// Rows (and columns) of the micro-kernel's `C` block: 2 x 2 tiles of 16.
const TILE: usize = 32;
/// Depth per tile step (32 `bf16` values = 64 bytes per tile row).
const KSTEP: usize = 32;
/// Depth per packed block of `A` (and per pass over the `C` tiles).
const KB: usize = 512;
/// Rows per task (a packed `A` block of `MB x KB` `bf16` = 128 KiB).
const MB: usize = 128;
/// Columns per task at most (an `f32` block of `MB x NB` = 128 KiB).
const NB: usize = 256;

/// Whether this CPU and OS run AMX-BF16 (asked once), unless `ZERFOO_AMX=0`.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var("ZERFOO_AMX").is_ok_and(|v| v == "0") {
            return false;
        }
        detect()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
// `__cpuid_count` is a safe function from Rust 1.87 on, unsafe before.
#[allow(unused_unsafe)]
fn detect() -> bool {
    use core::arch::x86_64::__cpuid_count;
    // SAFETY: CPUID leaf 0 exists on every x86-64 CPU.
    let max_leaf = unsafe { __cpuid_count(0, 0) }.eax;
    if max_leaf < 7 {
        return false;
    }
    // SAFETY: leaf 7 exists (checked above).
    let edx = unsafe { __cpuid_count(7, 0) }.edx;
    let (amx_bf16, amx_tile) = (edx & (1 << 22) != 0, edx & (1 << 24) != 0);
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    // arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): Linux 5.16+
    // hands out the tile state only on request; 0 means granted.
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a plain system call; it reads no memory of ours.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// The 64-byte tile configuration `ldtilecfg` reads.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Every tile 16 rows of 64 bytes (tiles 0-3: `C`, 4-5: `A`, 6-7: `B`).
const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// `out = A · B` (`+ bias[j]` on every row, if any) for `bf16` operands,
/// `out` `[M, N]` row-major (every element written). Needs [`available`]
/// and `K > 0`.
pub(crate) fn product(
    ops: &Operands<'_, bf16>,
    out: &mut [MaybeUninit<bf16>],
    threads: usize,
    bias: Option<&[f32]>,
) {
    let (m, n, k) = (ops.a_rows.len(), ops.b_cols.len(), ops.a_cols.len());
    assert!(available() && k > 0 && out.len() == m * n);
    let kp = k.next_multiple_of(KSTEP);
    let panels = n.div_ceil(TILE);
    // B: panel `p`, depth pair `q`, column `j` at `(p * kp / 2 + q) * 32 + j`.
    // The f32 sums, rows and columns padded to whole 32 x 32 blocks. Both
    // live in this thread's reused scratch (no fresh pages per product).
    let (mp, np) = (m.next_multiple_of(TILE), panels * TILE);
    with_buf::<u32, _>(&B_BUF, panels * kp / 2 * TILE, |bp| {
        with_buf::<f32, _>(&C_BUF, mp * np, |acc| {
            let pack_panel = |(p, dst): (usize, &mut [u32])| pack_b(ops, p * TILE, dst);
            if threads > 1 && panels > 1 {
                for_each_chunk_mut(bp, kp / 2 * TILE, pack_panel);
            } else {
                bp.chunks_mut(kp / 2 * TILE)
                    .enumerate()
                    .for_each(pack_panel);
            }
            run_blocks(
                ops,
                bp,
                kp,
                SyncPtr(acc.as_mut_ptr()),
                np,
                out,
                threads,
                bias,
            );
        })
    });
}

/// Runs the product's tasks (blocks of rows by columns) on `threads`.
#[allow(clippy::too_many_arguments)]
fn run_blocks(
    ops: &Operands<'_, bf16>,
    bp: &[u32],
    kp: usize,
    accp: SyncPtr<f32>,
    np: usize,
    out: &mut [MaybeUninit<bf16>],
    threads: usize,
    bias: Option<&[f32]>,
) {
    let (m, n) = (ops.a_rows.len(), ops.b_cols.len());
    let panels = n.div_ceil(TILE);
    let outp = SyncPtr(out.as_mut_ptr().cast::<u16>());
    // Tasks of MB rows by `nb` columns: as wide as NB allows, narrower
    // when there are too few row blocks to keep every thread busy.
    let row_blocks = m.div_ceil(MB);
    let want = (2 * threads).div_ceil(row_blocks).max(1);
    let nb = (panels.div_ceil(want) * TILE).clamp(TILE, NB);
    let col_blocks = n.div_ceil(nb);
    let task = |t: usize| {
        let (rb, cb) = (t / col_blocks, t % col_blocks);
        let (r0, c0) = (rb * MB, cb * nb);
        let (rows, cols) = ((m - r0).min(MB), (n - c0).min(nb));
        // (u32 scratch holds the u16 rows of A: two values per element.)
        let len = rows.next_multiple_of(TILE) * KB.min(kp);
        with_buf::<u32, _>(&A_BUF, len.div_ceil(2), |ap| {
            // SAFETY: `len` u16 values fit in `len / 2` rounded-up u32s.
            let ap = unsafe { core::slice::from_raw_parts_mut(ap.as_mut_ptr().cast::<u16>(), len) };
            // SAFETY: tasks cover disjoint blocks of rows x columns of `acc`
            // and `out`; the packed operands are read only.
            unsafe {
                task_block(
                    ops,
                    bp,
                    kp,
                    (r0, rows),
                    (c0, cols),
                    ap,
                    accp,
                    np,
                    (outp, n),
                    bias,
                )
            };
        });
    };
    let tasks = row_blocks * col_blocks;
    if threads > 1 && tasks > 1 {
        threads::run_tasks(tasks, task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// Packs columns `j0..j0 + 32` of `B` (zero past `N`) as depth pairs:
/// `dst[q * 32 + j] = B[2q, j0 + j] | B[2q + 1, j0 + j] << 16`, zero past `K`.
fn pack_b(ops: &Operands<'_, bf16>, j0: usize, dst: &mut [u32]) {
    let (n, k) = (ops.b_cols.len(), ops.a_cols.len());
    let cols = (n - j0).min(TILE);
    let bits = |i: usize| ops.b[i].to_bits() as u32;
    dst.fill(0);
    if ops.b_unit_n {
        // Rows of B are contiguous: interleave two row runs per pair.
        for (p, &row) in ops.b_rows.iter().enumerate() {
            let src = &ops.b[ops.b_base + row + ops.b_cols[j0]..][..cols];
            let (q, shift) = (p / 2, 16 * (p % 2));
            for (d, x) in dst[q * TILE..][..cols].iter_mut().zip(src) {
                *d |= (x.to_bits() as u32) << shift;
            }
        }
    } else {
        for j in 0..cols {
            let col = ops.b_base + ops.b_cols[j0 + j];
            for (p, &row) in ops.b_rows.iter().enumerate() {
                dst[p / 2 * TILE + j] |= bits(col + row) << (16 * (p % 2));
            }
        }
    }
    debug_assert!(dst.len() >= k.div_ceil(2) * TILE);
}

/// Packs rows `r0..r0 + rows`, depth `p0..p0 + kb` of `A` row-major into
/// `dst` (`kb` values per row; `kb` a multiple of 32, zero past `K` and
/// for the padding rows up to a multiple of 32).
fn pack_a(
    ops: &Operands<'_, bf16>,
    (r0, rows): (usize, usize),
    (p0, kb): (usize, usize),
    dst: &mut [u16],
) {
    let k = ops.a_cols.len();
    let real = (k.saturating_sub(p0)).min(kb);
    for (i, row) in dst.chunks_exact_mut(kb).enumerate() {
        if i >= rows {
            row.fill(0);
            continue;
        }
        let base = ops.a_base + ops.a_rows[r0 + i];
        if ops.a_unit_k {
            let s = &ops.a[base + ops.a_cols[p0]..][..real];
            // SAFETY: `bf16` is a `u16` bit pattern (`repr(transparent)`).
            let s = unsafe { core::slice::from_raw_parts(s.as_ptr().cast::<u16>(), real) };
            row[..real].copy_from_slice(s);
        } else {
            for (d, &c) in row.iter_mut().zip(&ops.a_cols[p0..p0 + real]) {
                *d = ops.a[base + c].to_bits();
            }
        }
        row[real..].fill(0);
    }
}

/// One task: rows `r0..r0 + rows` by columns `c0..c0 + cols` of the
/// product, over every depth block, plus the column biases (if any),
/// rounded into `out` (row length `n`) at the end.
///
/// # Safety
/// No other thread may touch these rows and columns of `acc` (`np`
/// columns, rows padded to 32) or `out` (`n` columns).
#[allow(clippy::too_many_arguments)]
unsafe fn task_block(
    ops: &Operands<'_, bf16>,
    bp: &[u32],
    kp: usize,
    (r0, rows): (usize, usize),
    (c0, cols): (usize, usize),
    ap: &mut [u16],
    acc: SyncPtr<f32>,
    np: usize,
    (out, n): (SyncPtr<u16>, usize),
    bias: Option<&[f32]>,
) {
    let row_tiles = rows.div_ceil(TILE);
    let col_panels = cols.div_ceil(TILE);
    // SAFETY: the tile state was granted (`available`); the configuration
    // is a valid palette-1 layout.
    unsafe { core::arch::asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack)) };
    for p0 in (0..kp).step_by(KB) {
        let kb = KB.min(kp - p0);
        let ap = &mut ap[..row_tiles * TILE * kb];
        pack_a(ops, (r0, rows), (p0, kb), ap);
        for cp in 0..col_panels {
            let panel = (c0 / TILE + cp) * (kp / 2) * TILE;
            // SAFETY: depth pair `p0 / 2` of this panel; `kb / 2` pairs follow.
            let b = unsafe { bp.as_ptr().add(panel + p0 / 2 * TILE) };
            for rt in 0..row_tiles {
                let a = ap[rt * TILE * kb..].as_ptr();
                // SAFETY: this task's block of `acc` (rows padded to 32,
                // columns padded to whole panels).
                let c = unsafe { acc.get().add((r0 + rt * TILE) * np + c0 + cp * TILE) };
                // SAFETY: `a` holds 32 rows of `kb` values, `b` `kb / 2`
                // pair rows of 32, `c` a 32 x 32 block (row length `np`).
                unsafe { micro_kernel(a, kb, b, c, np, p0 == 0) };
            }
        }
    }
    // SAFETY: releases the tile state this thread configured above.
    unsafe { core::arch::asm!("tilerelease", options(nostack, nomem)) };
    for i in r0..r0 + rows {
        // SAFETY: row `i`, columns `c0..c0 + cols`: inside this task's
        // block of both buffers, final in `acc`.
        let (src, dst) = unsafe {
            (
                core::slice::from_raw_parts_mut(acc.get().add(i * np + c0), cols),
                core::slice::from_raw_parts_mut(
                    out.get().add(i * n + c0).cast::<MaybeUninit<bf16>>(),
                    cols,
                ),
            )
        };
        crate::cpu::simd::vectorized(
            #[inline(always)]
            || {
                if let Some(bias) = bias {
                    for (s, &b) in src.iter_mut().zip(&bias[c0..]) {
                        *s += b;
                    }
                }
                super::pack::narrow::<bf16>(src, dst)
            },
        );
    }
}

/// `C (32 x 32 f32, row length ldc) (+)= A (32 x kb) · B (kb x 32)`: `A`
/// row-major `bf16` (`kb` values per row), `B` as `kb / 2` rows of 32
/// depth pairs; `first` starts from zero instead of `C`.
///
/// # Safety
/// The tile configuration [`CONFIG`] must be loaded on this thread; the
/// pointers must cover those blocks; `kb` a positive multiple of 32.
#[inline]
unsafe fn micro_kernel(
    a: *const u16,
    kb: usize,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    first: bool,
) {
    let lda = kb * 2; // bytes per row of A
    let ldc_b = ldc * 4; // bytes per row of C
    let steps = kb / KSTEP;
    // SAFETY: the caller's guarantee; every access below stays inside
    // `a` (32 rows x kb), `b` (kb / 2 rows x 128 bytes) and `c` (32 x 32).
    unsafe {
        core::arch::asm!(
            "test {first}, {first}",
            "jz 3f",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "jmp 4f",
            "3:",
            "tileloadd tmm0, [{c} + {ldc}*1]",
            "tileloadd tmm1, [{c} + {ldc}*1 + 64]",
            "tileloadd tmm2, [{c16} + {ldc}*1]",
            "tileloadd tmm3, [{c16} + {ldc}*1 + 64]",
            "4:",
            // Each load just before its first use: tile registers are not
            // renamed, so a load waits for the products still reading
            // the register, and this order overlaps loads with products.
            "tileloadd tmm4, [{a} + {lda}*1]",
            "tileloadd tmm6, [{b} + {ldb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a16} + {lda}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a}, 64",
            "add {a16}, 64",
            "add {b}, 2048",
            "dec {steps}",
            "jnz 4b",
            "tilestored [{c} + {ldc}*1], tmm0",
            "tilestored [{c} + {ldc}*1 + 64], tmm1",
            "tilestored [{c16} + {ldc}*1], tmm2",
            "tilestored [{c16} + {ldc}*1 + 64], tmm3",
            first = in(reg) first as usize,
            c = in(reg) c,
            c16 = in(reg) c.add(16 * ldc),
            ldc = in(reg) ldc_b,
            a = inout(reg) a => _,
            a16 = inout(reg) a.add(16 * kb) => _,
            lda = in(reg) lda,
            b = inout(reg) b => _,
            ldb = in(reg) 128usize,
            steps = inout(reg) steps => _,
            options(nostack),
        );
    }
}
