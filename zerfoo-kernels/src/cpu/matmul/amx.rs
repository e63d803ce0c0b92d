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
//! block in tile order (each depth step's tiles contiguous), and a 32 x 32
//! micro-kernel keeps four `f32` tiles of `C` while it walks the depth
//! block. Depth blocks are deep (2048), so most products never leave the
//! tile registers until the end; deeper ones load and store the tiles from
//! an `f32` accumulator between blocks. Each finished 32 x 32 block is
//! stored to a scratch tile and rounded into the output (`vcvtne2ps2bf16`,
//! to nearest, ties to even) while in L1, overlapped with the next block's
//! products. Every output is the `f32` sum over depth blocks in order,
//! rounded once to `bf16`, so the result never depends on the thread count.
//! Like `vdpbf16ps`, the tiles treat denormal inputs as zero and flush
//! denormal results to zero, and so does the rounding (a bias can make a
//! sum denormal).
//!
//! The tile instructions are written as inline assembly (Rust's AMX
//! intrinsics are not stable); the kernel asks Linux for the tile state
//! once (`arch_prctl(ARCH_REQ_XCOMP_PERM)`) and falls back to the AVX-512
//! path when that fails (or when the CPU lacks AVX512-BF16, which the
//! rounding uses). `ZERFOO_AMX=0` turns the path off.

use core::mem::MaybeUninit;
use std::sync::OnceLock;

use super::pack::{pair, with_buf, A_BUF, B_BUF, C_BUF};
use super::Operands;
use crate::bf16;
use crate::cpu::threads::{self, for_each_chunk_mut, SyncPtr};

/// Rows (and columns) of the micro-kernel's `C` block: 2 x 2 tiles of 16.
const TILE: usize = 32;
/// Depth per tile step (32 `bf16` values = 64 bytes per tile row).
const KSTEP: usize = 32;
/// Pairs of rows of `B` packed into every panel before the next panel.
const PACK_B_PAIRS: usize = 16;
/// Depth per packed block of `A` (and per pass over the `C` tiles): deep
/// enough that most products keep `C` in the tile registers over their
/// whole depth, while a task's packed `A` (at least 128 rows, 512 KiB)
/// stays in L2. (At 512, 2048 x 2048 x 2048 reloaded and stored its 16 MiB
/// accumulator from memory 3 times: 1 thread 650 -> 940 GFLOP/s.)
const KB: usize = 2048;
/// Bytes of a task's packed `A` block: its rows are as many as fit (whole
/// tiles), so each 32-column panel of `B` is read from L2 once per task
/// and then reused from L1 by every row tile (128-row tasks read all of
/// `B` from L3 four times for 512 x 384 x 1536).
const A_BLOCK_BYTES: usize = 512 << 10;
/// Columns per task at most: a task packs its rows of `A` once per depth
/// block, so wide tasks pack it fewer times (1 thread, 1024 x 1024 x 1024:
/// 256 -> 2048 columns, ~+10%).
const NB: usize = 2048;

/// Whether this CPU and OS run AMX-BF16 and AVX512-BF16 (asked once),
/// unless `ZERFOO_AMX=0`.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var("ZERFOO_AMX").is_ok_and(|v| v == "0") {
            return false;
        }
        crate::cpu::simd::has_avx512() && detect()
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
    // SAFETY: as above (sub-leaf 1 reads as zeros where it does not exist).
    let avx512_bf16 = unsafe { __cpuid_count(7, 1) }.eax & (1 << 5) != 0;
    if !(amx_bf16 && amx_tile && avx512_bf16) {
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
        // (No accumulator at all within one depth block.)
        let acc_len = if kp > KB { mp * np } else { 0 };
        with_buf::<f32, _>(&C_BUF, acc_len, |acc| {
            // Each thread packs a run of whole panels.
            let per = panels.div_ceil(threads.clamp(1, panels));
            let pack = |(t, dst): (usize, &mut [u32])| {
                crate::cpu::simd::vectorized(
                    #[inline(always)]
                    // SAFETY: `available` (asserted above).
                    || unsafe { pack_b(ops, t * per, kp, dst) },
                )
            };
            if per < panels {
                for_each_chunk_mut(bp, per * kp / 2 * TILE, pack);
            } else {
                pack((0, bp));
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
    // Rows per task: as many as fit the packed `A` block, shared out
    // evenly in whole tiles (512 rows at most 160 per task are 4 x 128, not
    // 3 x 160 + 32: 2 threads, 512 x 1536 x 384, ~1220 -> ~1520 GFLOP/s).
    let cap = (A_BLOCK_BYTES / (KB.min(kp) * 2)) / TILE * TILE;
    let mut blocks = m.div_ceil(cap);
    if m > n {
        // Taller than wide: at least a row block per thread, so each
        // thread packs only its own rows of `A` (2 threads, 768 x 128 x 384:
        // ~900 -> ~1080 GFLOP/s); wider products split the columns instead
        // (every thread would read all of `B`: 512 x 384 x 1536 ~5% slower).
        blocks = blocks.max(threads);
    }
    let tiles = m.div_ceil(TILE);
    let mut per = tiles.div_ceil(blocks);
    if threads > 1 && blocks > 1 {
        // As many row blocks for each thread: the fewest, a multiple of
        // the threads, that whole tiles divide into (1152 rows: 12 blocks
        // of 96, not 9 of 128, where one thread waited for a fifth block:
        // 2 threads, gpt6's weight gradient 1152 x 2048 x 384 ~900 ->
        // ~1200 GFLOP/s).
        let mut b = blocks.next_multiple_of(threads);
        while b <= tiles {
            let p = tiles.div_ceil(b);
            if tiles.div_ceil(p).is_multiple_of(threads) {
                per = p;
                break;
            }
            b += threads;
        }
    }
    let mb = per * TILE;
    let row_blocks = m.div_ceil(mb);
    // Tasks of `mb` rows by `nb` columns: as wide as NB allows, narrower
    // when there are fewer row blocks than threads, and then one column
    // block per thread: every further one packs its rows of `A` again
    // (medians of 5 alternating rounds, 1 thread: 512 x 512 x 512 ~795 ->
    // ~870 GFLOP/s, 768 x 128 x 384 ~730 -> ~820; 2 threads, against two
    // column blocks per thread: 256 x 256 x 256 ~675 -> ~835, 512 x 512 x
    // 512 ~1290 -> ~1420).
    let want = threads.div_ceil(row_blocks).max(1);
    let nb = (panels.div_ceil(want) * TILE).clamp(TILE, NB);
    let col_blocks = n.div_ceil(nb);
    let task = |t: usize| {
        let (rb, cb) = (t / col_blocks, t % col_blocks);
        let (r0, c0) = (rb * mb, cb * nb);
        let (rows, cols) = ((m - r0).min(mb), (n - c0).min(nb));
        // (u32 scratch holds the u16 rows of A: two values per element.)
        let len = rows.next_multiple_of(TILE) * KB.min(kp);
        with_buf::<u32, _>(&A_BUF, len.div_ceil(2), |ap| {
            // SAFETY: `len` u16 values fit in `len / 2` rounded-up u32s.
            let ap = unsafe { core::slice::from_raw_parts_mut(ap.as_mut_ptr().cast::<u16>(), len) };
            // SAFETY: `available` (`product` asserts it); tasks cover
            // disjoint blocks of rows x columns of `acc` and `out`; the
            // packed operands are read only.
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

/// Packs panels `p0..` of `B` (as many as `dst` holds, `kp / 2 * 32`
/// values each) as depth pairs: panel `p`, pair `q`, column `j` is
/// `dst[((p - p0) * kp / 2 + q) * 32 + j] = B[2q, 32p + j] | B[2q + 1, 32p + j] << 16`,
/// zero past `K` and past `N`.
///
/// # Safety
/// [`available`] (so the CPU has AVX-512 F/BW).
#[inline(always)]
unsafe fn pack_b(ops: &Operands<'_, bf16>, p0: usize, kp: usize, dst: &mut [u32]) {
    let (n, k) = (ops.b_cols.len(), ops.a_cols.len());
    let panel_len = kp / 2 * TILE;
    debug_assert!(dst.len().is_multiple_of(panel_len));
    if ops.b_unit_k {
        // SAFETY: AVX-512 F/BW (the caller's guarantee); `B`'s columns
        // are contiguous.
        unsafe { pack_b_transposed(ops, p0, kp, dst) };
        return;
    }
    let (j0, j1) = (p0 * TILE, (p0 * TILE + dst.len() / panel_len * TILE).min(n));
    // PACK_B_PAIRS pairs of rows of B at a time, over all of this run's
    // panels: each row is read in order, and each panel gets a contiguous
    // run of pairs (a pair at a time, every store went to another panel,
    // pages apart).
    let row = |p: usize| (p < k).then(|| ops.b_base + ops.b_rows[p]);
    for q0 in (0..kp / 2).step_by(PACK_B_PAIRS) {
        for (pi, panel) in dst.chunks_exact_mut(panel_len).enumerate() {
            for q in q0..(q0 + PACK_B_PAIRS).min(kp / 2) {
                let (lo, hi) = (row(2 * q), row(2 * q + 1));
                let d: &mut [u32; TILE] =
                    (&mut panel[q * TILE..(q + 1) * TILE]).try_into().unwrap();
                let c0 = j0 + pi * TILE;
                let cols = j1.saturating_sub(c0).min(TILE);
                match (lo, hi) {
                    (Some(lo), Some(hi)) if ops.b_unit_n && cols == TILE => {
                        let at = ops.b_cols[c0];
                        let (l, h) = (&ops.b[lo + at..][..TILE], &ops.b[hi + at..][..TILE]);
                        // SAFETY: AVX-512 F/BW (the caller's guarantee); both
                        // runs hold 32 values, `d` 32 pairs.
                        unsafe { interleave_32_avx512(l.as_ptr(), h.as_ptr(), d) };
                    }
                    _ => {
                        for (j, d) in d.iter_mut().enumerate() {
                            let col = (j < cols).then(|| ops.b_cols[c0 + j]);
                            let at = |r: Option<usize>| match (r, col) {
                                (Some(r), Some(c)) => ops.b[r + c].to_bits(),
                                _ => 0,
                            };
                            *d = pair(at(lo), at(hi));
                        }
                    }
                }
            }
        }
    }
}

/// [`pack_b`] for a `B` whose columns are contiguous along the depth (a
/// transposed weight, `x · Wᵀ`): a depth pair of one column is one 32-bit
/// word of that column already, so each panel is the words of its 32
/// columns transposed, 8 x 8 at a time in registers; only the pairs past
/// the last whole block of 8 (and a last half pair, for an odd `K`) go
/// value by value. (Value by value, the gather was ~8% of gpt6's forward
/// products in bf16: 2 threads, 2048 x 384 x 1152 1.11 -> 1.02 ms.)
///
/// # Safety
/// The CPU must have AVX-512 F/BW; `ops.b_unit_k`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_b_transposed(ops: &Operands<'_, bf16>, p0: usize, kp: usize, dst: &mut [u32]) {
    let (n, k) = (ops.b_cols.len(), ops.a_cols.len());
    let panel_len = kp / 2 * TILE;
    debug_assert!(ops.b_unit_k && dst.len().is_multiple_of(panel_len));
    // Column `j`'s values, depth 0 on (`k` of them).
    let column = |j: usize| {
        &ops.b[ops.b_base + ops.b_rows.first().copied().unwrap_or(0) + ops.b_cols[j]..][..k]
    };
    for (pi, panel) in dst.chunks_exact_mut(panel_len).enumerate() {
        let c0 = (p0 + pi) * TILE;
        let cols = n.saturating_sub(c0).min(TILE);
        // Pairs whose both values exist, in whole blocks of 8 (whole panels only).
        let fast = if cols == TILE { k / 2 / 8 * 8 } else { 0 };
        if fast > 0 {
            let runs: [*const f32; TILE] = core::array::from_fn(|j| column(c0 + j).as_ptr().cast());
            for q0 in (0..fast).step_by(8) {
                for jb in (0..TILE).step_by(8) {
                    // SAFETY: AVX (implied); each column holds `k >= 2 * (q0
                    // + 8)` values from its start, read as 8 unaligned
                    // words (bits moved, not computed on); pairs `q0..q0 +
                    // 8`, columns `jb..jb + 8` of the panel.
                    unsafe {
                        super::pack::transpose_f32_8x8(
                            core::array::from_fn(|c| runs[jb + c].wrapping_add(q0)),
                            panel.as_mut_ptr().add(q0 * TILE + jb).cast::<f32>(),
                            TILE,
                        )
                    };
                }
            }
        }
        for q in fast..kp / 2 {
            for (j, d) in panel[q * TILE..(q + 1) * TILE].iter_mut().enumerate() {
                let at = |p: usize| match (p < k, j < cols) {
                    (true, true) => column(c0 + j)[p].to_bits(),
                    _ => 0,
                };
                *d = pair(at(2 * q), at(2 * q + 1));
            }
        }
    }
}

/// `d[j] = lo[j] | hi[j] << 16` for 32 `bf16` values each: two permutes
/// of two 64-byte loads.
///
/// # Safety
/// The CPU must have AVX-512 F/BW; `lo` and `hi` readable for 32 values.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn interleave_32_avx512(lo: *const bf16, hi: *const bf16, d: &mut [u32; TILE]) {
    use core::arch::x86_64::*;
    /// Word `2j` of result `half` is `lo[j + 16 half]`, word `2j + 1` is
    /// `hi[j + 16 half]` (index `32 + x` picks word `x` of the second source).
    const IDX: [[i16; 32]; 2] = {
        let mut idx = [[0i16; 32]; 2];
        let mut i = 0;
        while i < 64 {
            let (half, w) = (i / 32, i % 32);
            let j = (w / 2 + 16 * half) as i16;
            idx[half][w] = if w % 2 == 0 { j } else { 32 + j };
            i += 1;
        }
        idx
    };
    // SAFETY: 32 words are 64 bytes.
    let idx = |half: usize| unsafe { _mm512_loadu_si512(IDX[half].as_ptr().cast()) };
    // SAFETY: the caller's guarantee (32 values of 2 bytes: 64 each).
    unsafe {
        let (l, h) = (_mm512_loadu_si512(lo.cast()), _mm512_loadu_si512(hi.cast()));
        let dp = d.as_mut_ptr().cast::<__m512i>();
        _mm512_storeu_si512(dp, _mm512_permutex2var_epi16(l, idx(0), h));
        _mm512_storeu_si512(dp.add(1), _mm512_permutex2var_epi16(l, idx(1), h));
    }
}

/// Packs rows `r0..r0 + rows`, depth `p0..p0 + kb` of `A` into `dst` in
/// tile order: per 32-row tile, per depth step of 32, the step's two
/// 16 x 32 tiles (rows 0-15, then 16-31) of 64-byte rows, so the kernel
/// reads `A` as one sequential stream (`kb` a multiple of 32; zero past `K`
/// and for the padding rows up to a multiple of 32).
///
/// # Safety
/// [`available`] (so the CPU has AVX-512 F/BW).
unsafe fn pack_a(
    ops: &Operands<'_, bf16>,
    (r0, rows): (usize, usize),
    (p0, kb): (usize, usize),
    dst: &mut [u16],
) {
    let k = ops.a_cols.len();
    let real = (k.saturating_sub(p0)).min(kb);
    // A transposed `A` (a weight gradient's `dYᵀ`: each depth's 32 rows
    // contiguous) goes a whole tile at a time through registers; value by
    // value, every read was a cache line of its own (2 threads, gpt6's
    // `dYᵀ · X` 1536 x 2048 x 384: ~440 -> ~1150 GFLOP/s).
    let mut first = 0;
    if ops.a_unit_m && !ops.a_unit_k {
        let tiles = rows / TILE;
        for t in 0..tiles {
            let tile = &mut dst[t * TILE * kb..][..TILE * kb];
            // SAFETY: AVX-512 F/BW (the caller's guarantee); rows `r0 + 32t..` are whole
            // (`t < rows / 32`) and contiguous (`a_unit_m`).
            unsafe { pack_a_transposed_tile(ops, r0 + t * TILE, (p0, kb), tile) };
        }
        first = tiles * TILE;
    }
    let mut row = [0u16; KB];
    for i in first..dst.len() / kb {
        // Row `i` is row `i % 32` of tile `i / 32`: 32 values per step.
        let tile = &mut dst[i / TILE * TILE * kb..][..TILE * kb];
        let mut put = |step: usize, v: &[u16; KSTEP]| {
            let at = step * TILE * KSTEP + (i % TILE) * KSTEP;
            let d: &mut [u16; KSTEP] = (&mut tile[at..at + KSTEP]).try_into().unwrap();
            *d = *v;
        };
        if i < rows && ops.a_unit_k {
            // A contiguous row: whole steps straight from `A`, then the tail.
            let base = ops.a_base + ops.a_rows[r0 + i] + ops.a_cols[p0];
            // SAFETY: `bf16` is a `u16` bit pattern (`repr(transparent)`).
            let src = unsafe {
                core::slice::from_raw_parts(ops.a[base..][..real].as_ptr().cast::<u16>(), real)
            };
            let mut steps = src.chunks_exact(KSTEP);
            for (step, v) in (&mut steps).enumerate() {
                put(step, v.try_into().unwrap());
            }
            let (full, rest) = (real / KSTEP, steps.remainder());
            if full * KSTEP < kb {
                let mut last = [0u16; KSTEP];
                last[..rest.len()].copy_from_slice(rest);
                put(full, &last);
                for step in full + 1..kb / KSTEP {
                    put(step, &[0; KSTEP]);
                }
            }
            continue;
        }
        let row = &mut row[..kb];
        row.fill(0);
        if i < rows {
            let base = ops.a_base + ops.a_rows[r0 + i];
            for (d, &c) in row.iter_mut().zip(&ops.a_cols[p0..p0 + real]) {
                *d = ops.a[base + c].to_bits();
            }
        }
        for (step, v) in row.chunks_exact(KSTEP).enumerate() {
            put(step, v.try_into().unwrap());
        }
    }
}

/// [`pack_a`] for one whole 32-row tile of a transposed `A` (rows
/// `r0..r0 + 32` adjacent at every depth): per depth step, the 16 depth
/// pairs of the tile's 32 rows are interleaved (as [`pack_b`] pairs `B`'s
/// rows), giving the step's pairs column by column, and transposed 8 x 8
/// at a time into its 32 rows of 16 pairs.
///
/// # Safety
/// The CPU must have AVX-512 F/BW; rows `r0..r0 + 32` of `A` must exist
/// with unit row stride (`ops.a_unit_m`); `tile` holds `32 * kb` values.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_a_transposed_tile(
    ops: &Operands<'_, bf16>,
    r0: usize,
    (p0, kb): (usize, usize),
    tile: &mut [u16],
) {
    let k = ops.a_cols.len();
    debug_assert!(tile.len() == TILE * kb && r0 + TILE <= ops.a_rows.len());
    let zeros = [bf16::ZERO; TILE];
    // Depth `p`'s 32 values of these rows (zeros past `K`).
    let run = |p: usize| -> *const bf16 {
        if p < k {
            ops.a[ops.a_base + ops.a_rows[r0] + ops.a_cols[p]..][..TILE].as_ptr()
        } else {
            zeros.as_ptr()
        }
    };
    // The step's pairs, pair `q` of row `m` at `pairs[q * 32 + m]`.
    let mut pairs = [0u32; KSTEP / 2 * TILE];
    for step in 0..kb / KSTEP {
        for (q, d) in pairs.chunks_exact_mut(TILE).enumerate() {
            let p = p0 + step * KSTEP + 2 * q;
            // SAFETY: AVX-512 F/BW (the caller's guarantee); both runs
            // hold 32 values, `d` 32 pairs.
            unsafe { interleave_32_avx512(run(p), run(p + 1), d.try_into().unwrap()) };
        }
        // Row `m` of the step: its 16 pairs (32 values) at `16 m` pairs in.
        let out = tile[step * TILE * KSTEP..][..TILE * KSTEP]
            .as_mut_ptr()
            .cast::<f32>();
        let src = pairs.as_ptr().cast::<f32>();
        for qb in (0..KSTEP / 2).step_by(8) {
            for mb in (0..TILE).step_by(8) {
                // SAFETY: AVX (implied by AVX-512 F); 8 runs of 8 pairs
                // inside `pairs`, and rows `mb..mb + 8`, pairs `qb..qb +
                // 8` of the step inside `tile` (4-byte aligned: the packed
                // `A` buffer is, and every step is 2 KiB). The transpose
                // moves bits, so pairs read as `f32` stay as they are.
                unsafe {
                    super::pack::transpose_f32_8x8(
                        core::array::from_fn(|c| src.add((qb + c) * TILE + mb)),
                        out.add(mb * KSTEP / 2 + qb),
                        KSTEP / 2,
                    )
                };
            }
        }
    }
}

/// One task: rows `r0..r0 + rows` by columns `c0..c0 + cols` of the
/// product, over every depth block, plus the column biases (if any),
/// rounded into `out` (row length `n`) at the end.
///
/// # Safety
/// [`available`]; no other thread may touch these rows and columns of
/// `acc` (`np` columns, rows padded to 32) or `out` (`n` columns).
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
    // The last depth block's sums go to one of these 32 x 32 tiles and are
    // rounded into `out` while in L1 (through `acc`, a large result's sums
    // went to L3 and back): a block's sums wait in one tile while the next
    // block's products run, and are rounded before that block is stored
    // to the other, so the rounding overlaps the tile unit's work instead
    // of waiting for the products before it (1 thread, 1024 x 1024 x 1024:
    // ~920 -> ~1010 GFLOP/s).
    let mut tiles = [Tile([0.0; TILE * TILE]), Tile([0.0; TILE * TILE])];
    let mut waiting: Option<Finished> = None;
    let round = |tiles: &[Tile; 2], f: Finished| {
        let ((i0, j0), (_, tj)) = (f.at, f.size);
        // SAFETY: rows `i0..i0 + ti`, columns `j0..j0 + tj` of `out`:
        // inside this task's block; AVX-512 F/BW/BF16 (`available`).
        unsafe {
            round_tile(
                &tiles[f.tile],
                f.size,
                bias.map(|b| &b[j0..j0 + tj]),
                out.get().add(i0 * n + j0),
                n,
            )
        };
    };
    let mut free = 0;
    // SAFETY: the tile state was granted (`available`); the configuration
    // is a valid palette-1 layout.
    unsafe { core::arch::asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack)) };
    for p0 in (0..kp).step_by(KB) {
        let kb = KB.min(kp - p0);
        let last = p0 + kb == kp;
        let ap = &mut ap[..row_tiles * TILE * kb];
        // SAFETY: `available` (the caller's guarantee).
        unsafe { pack_a(ops, (r0, rows), (p0, kb), ap) };
        for cp in 0..col_panels {
            let panel = (c0 / TILE + cp) * (kp / 2) * TILE;
            // SAFETY: depth pair `p0 / 2` of this panel; `kb / 2` pairs follow.
            let b = unsafe { bp.as_ptr().add(panel + p0 / 2 * TILE) };
            for rt in 0..row_tiles {
                let a = ap[rt * TILE * kb..].as_ptr();
                // This task's block of `acc` (rows padded to 32, columns
                // padded to whole panels); used (and allocated) only when
                // there is more than one depth block.
                let c = acc
                    .get()
                    .wrapping_add((r0 + rt * TILE) * np + c0 + cp * TILE);
                // SAFETY: `a` holds 32 rows of `kb` values, `b` `kb / 2`
                // pair rows of 32, `c` (row length `np`) a 32 x 32 block.
                unsafe { products(a, kb, b, (c, np, p0 == 0)) };
                if !last {
                    // SAFETY: as above; tiles 0-3 hold this block's sums.
                    unsafe { store_c(c, np) };
                    continue;
                }
                // (Rounding runs no tile instruction: tiles 0-3 keep the
                // sums of this block meanwhile.)
                if let Some(f) = waiting.take() {
                    round(&tiles, f);
                }
                // SAFETY: a 32 x 32 tile; tiles 0-3 hold this block's sums.
                unsafe { store_c(tiles[free].0.as_mut_ptr(), TILE) };
                let (i0, j0) = (r0 + rt * TILE, c0 + cp * TILE);
                waiting = Some(Finished {
                    tile: free,
                    at: (i0, j0),
                    size: ((r0 + rows - i0).min(TILE), (c0 + cols - j0).min(TILE)),
                });
                free ^= 1;
            }
        }
    }
    if let Some(f) = waiting {
        round(&tiles, f);
    }
    // SAFETY: releases the tile state this thread configured above.
    unsafe { core::arch::asm!("tilerelease", options(nostack, nomem)) };
}

/// A block of finished sums waiting in a scratch tile to be rounded.
struct Finished {
    /// Which of the task's two tiles holds it.
    tile: usize,
    /// Its first row and column in the output.
    at: (usize, usize),
    /// Its rows and columns inside the output (32 x 32 or less).
    size: (usize, usize),
}

/// A 32 x 32 `f32` tile in one 4 KiB, 64-byte-aligned block.
#[repr(C, align(64))]
struct Tile([f32; TILE * TILE]);

/// Adds the biases (if any) to the top-left `rows x cols` of `tile` and
/// rounds them into `out` (row length `ldo`) to nearest, ties to even, a
/// row (two 16-lane halves) per `vcvtne2ps2bf16`: NaN stays NaN (quieted),
/// denormal sums become zeros of their sign.
///
/// # Safety
/// The CPU must have AVX-512 F/BW and AVX512-BF16 ([`available`]); `out`
/// must be writable at `i * ldo + j` for `i < rows`, `j < cols`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn round_tile(
    tile: &Tile,
    (rows, cols): (usize, usize),
    bias: Option<&[f32]>,
    out: *mut u16,
    ldo: usize,
) {
    use core::arch::x86_64::*;
    debug_assert!(cols <= TILE && bias.is_none_or(|b| b.len() >= cols));
    // The two 16-lane halves of a row: which lanes are inside `cols`.
    let half_mask = |h: usize| -> __mmask16 {
        let n = cols.saturating_sub(16 * h).min(16);
        ((1u32 << n) - 1) as __mmask16
    };
    let masks = [half_mask(0), half_mask(1)];
    let row_mask = ((1u64 << cols) - 1) as __mmask32;
    // SAFETY: `bias` holds `cols` values; masked-off lanes are not read.
    let load_bias = |h: usize| match bias {
        Some(b) => unsafe { _mm512_maskz_loadu_ps(masks[h], b.as_ptr().add(16 * h)) },
        None => _mm512_setzero_ps(),
    };
    let biases = [load_bias(0), load_bias(1)];
    for i in 0..rows {
        // SAFETY: row `i` of the tile (32 values); lanes past `cols` are masked off.
        let half = |h: usize| unsafe {
            let v = _mm512_maskz_loadu_ps(masks[h], tile.0.as_ptr().add(i * TILE + 16 * h));
            // (No add without a bias: -0 + 0 would be +0.)
            match bias {
                Some(_) => _mm512_add_ps(v, biases[h]),
                None => v,
            }
        };
        let (lo, hi) = (half(0), half(1));
        let rounded: __m512i;
        // SAFETY: AVX512-BF16 (the caller's guarantee); registers only.
        // (Inline assembly: the intrinsic needs Rust 1.89, the crate 1.85.)
        unsafe {
            core::arch::asm!(
                "vcvtne2ps2bf16 {r}, {hi}, {lo}",
                r = lateout(zmm_reg) rounded,
                hi = in(zmm_reg) hi,
                lo = in(zmm_reg) lo,
                options(pure, nomem, nostack),
            )
        };
        // SAFETY: row `i` of the caller's block, masked to `cols`.
        unsafe { _mm512_mask_storeu_epi16(out.add(i * ldo).cast(), row_mask, rounded) };
    }
}

/// `C + A (32 x kb) · B (kb x 32)` into tiles 0-3 (rows 0-15 and 16-31
/// by columns 0-15 and 16-31), `C` a 32 x 32 `f32` block (row length
/// `ldc`): `A` `bf16` in tile order (see [`pack_a`]), `B` as `kb / 2` rows
/// of 32 depth pairs; `first` starts from zero instead of `C`. The sums
/// stay in the tile registers for [`store_c`].
///
/// # Safety
/// The tile configuration [`CONFIG`] must be loaded on this thread; the
/// pointers must cover those blocks; `kb` a positive multiple of 32.
#[inline]
unsafe fn products(
    a: *const u16,
    kb: usize,
    b: *const u32,
    (c, ldc, first): (*const f32, usize, bool),
) {
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
            "add {a}, 2048",
            "add {a16}, 2048",
            "add {b}, 2048",
            "dec {steps}",
            "jnz 4b",
            first = in(reg) first as usize,
            c = in(reg) c,
            c16 = in(reg) c.add(16 * ldc),
            ldc = in(reg) ldc * 4, // bytes per row
            a = inout(reg) a => _,
            a16 = inout(reg) a.add(16 * KSTEP) => _,
            lda = in(reg) 64usize,
            b = inout(reg) b => _,
            ldb = in(reg) 128usize,
            steps = inout(reg) steps => _,
            options(nostack),
        );
    }
}

/// Stores tiles 0-3 (the sums of [`products`]) to the 32 x 32 `f32` block
/// at `d` (row length `ldd`).
///
/// # Safety
/// [`products`] must have run last on this thread's tiles; `d` must be
/// writable for that block.
#[inline]
unsafe fn store_c(d: *mut f32, ldd: usize) {
    // SAFETY: the caller's guarantee.
    unsafe {
        core::arch::asm!(
            "tilestored [{d} + {ldd}*1], tmm0",
            "tilestored [{d} + {ldd}*1 + 64], tmm1",
            "tilestored [{d16} + {ldd}*1], tmm2",
            "tilestored [{d16} + {ldd}*1 + 64], tmm3",
            d = in(reg) d,
            d16 = in(reg) d.add(16 * ldd),
            ldd = in(reg) ldd * 4, // bytes per row
            options(nostack),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `round_tile` against `half`'s rounding value by value: ties both
    /// ways, carries into the exponent, overflow to infinity, infinities,
    /// NaN, zeros of both signs, with and without a bias, in a partial
    /// block whose outside must stay untouched; denormal sums become zeros
    /// of their sign.
    #[test]
    fn round_tile_rounds_to_nearest_even() {
        if !available() {
            eprintln!("round_tile_rounds_to_nearest_even: skipped, no AMX-BF16 here");
            return;
        }
        let specials = [
            1.0 + 2f32.powi(-8),                  // tie, rounds down to even
            1.0 + 3.0 * 2f32.powi(-8),            // tie, rounds up to even
            1.0 + 2f32.powi(-8) + 2f32.powi(-20), // just above a tie
            2.0 - 2f32.powi(-9),                  // carries into the exponent
            f32::MAX,                             // rounds up to infinity
            -f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            -1.5e-40, // denormal
            3.0e-39,  // denormal
        ];
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            f32::from_bits((s >> 32) as u32 & 0x3FFF_FFFF | ((s as u32 & 1) << 31))
        };
        let mut tile = Tile([0.0; TILE * TILE]);
        for (i, v) in tile.0.iter_mut().enumerate() {
            *v = specials.get(i).copied().unwrap_or_else(&mut next);
        }
        let bias: Vec<f32> = (0..TILE)
            .map(|j| if j % 3 == 0 { 0.0 } else { next() })
            .collect();
        let (ldo, sentinel) = (TILE + 5, 0xABCDu16);
        for (rows, cols) in [(32, 32), (7, 19), (1, 1), (32, 16), (17, 31)] {
            for with_bias in [false, true] {
                let mut out = vec![sentinel; TILE * ldo];
                let b = with_bias.then(|| &bias[..cols]);
                // SAFETY: `available` (checked above); `out` holds 32 rows of `ldo`.
                unsafe { round_tile(&tile, (rows, cols), b, out.as_mut_ptr(), ldo) };
                for (i, row) in out.chunks_exact(ldo).enumerate() {
                    for (j, &got) in row.iter().enumerate() {
                        let what = format!("{rows}x{cols} bias {with_bias} [{i}, {j}]");
                        if i >= rows || j >= cols {
                            assert_eq!(got, sentinel, "{what}: written outside the block");
                            continue;
                        }
                        let v = tile.0[i * TILE + j];
                        // (No bias, no add: -0 + 0 would be +0.)
                        let x = if with_bias { v + bias[j] } else { v };
                        let got = bf16::from_bits(got);
                        if x.is_nan() {
                            assert!(got.is_nan(), "{what}: {x} -> {got}");
                        } else if x != 0.0 && x.abs() < f32::MIN_POSITIVE {
                            assert_eq!(
                                got.to_bits(),
                                bf16::from_f32(x).to_bits() & 0x8000,
                                "{what}: {x:e}"
                            );
                        } else {
                            let want = bf16::from_f32(x);
                            assert_eq!(got.to_bits(), want.to_bits(), "{what}: {x:e}");
                        }
                    }
                }
            }
        }
    }
}
