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
use crate::DType;

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

/// Asks for the `rows` adjacent `A` values `B_PREFETCH_STEPS` depth steps
/// after `a` in a transposed `A` read in place (steps `step` values apart):
/// each step is a row pitch from the last, a pattern the hardware
/// prefetchers pick up late, and the panel (a line or two a step) does not
/// stay in L1 while it meets every `B` panel.
#[inline(always)]
fn prefetch_steps_ahead<T>(a: *const T, step: usize, rows: usize) {
    let ahead = a.wrapping_add(B_PREFETCH_STEPS * step);
    // SAFETY: a prefetch is only a hint: it never faults, whatever the address.
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(ahead.cast::<i8>());
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(rows - 1).cast::<i8>());
    }
}

macro_rules! micro_kernel {
    (
        $(#[$doc:meta])*
        $name:ident, $direct:ident; $feat:literal;
        packed $p:ty, $g:literal per group: $bzero:ident, $loadb:ident, $set1:ident, $fma:ident, $at:ident;
        $c:ty, $mr:literal x $nv:literal x $lanes:literal: $zero:ident, $load:ident, $store:ident, $add:ident
        $(; rounds with $round:ident)?
        $(; direct depth loop $depth:ident, $unit:literal bytes per value)?
        $(; steps in place $steps:ident $(, rounding with $sround:ident)?)?
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
            // SAFETY: the packed panels hold `MR` (A) and `NR` (B) values per group.
            unsafe {
                micro_kernel!(@panel_loop acc, kc.div_ceil($g), a, $mr, b, $mr, $nv, $lanes, $bzero, $loadb, $set1, $fma, false)
            };
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
            debug_assert!(kc.is_multiple_of($g));
            // SAFETY: the caller's guarantees, passed on.
            unsafe {
                micro_kernel!(@direct_loop acc, kc / $g, a, lda, b, $nv, $lanes, $bzero, $loadb, $set1, $fma, $at $(, $depth, $unit)?)
            };
            // SAFETY: the caller's tile is `MR x NR` at `c` (row length `ldc`).
            unsafe { micro_kernel!(@store acc, c, ldc, st, $lanes, $load, $store, $add $(, $round)?) };
        }

        $(
        #[doc = concat!("[`", stringify!($name), "`] reading a transposed `A` in place (see [`super::kernel::StepsFn`]).")]
        ///
        /// # Safety
        /// As for [`super::kernel::StepsFn`], and the CPU must support the
        /// kernel's target features.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn $steps(
            kc: usize,
            a: *const $p,
            step: usize,
            b: *const $p,
            c: *mut $c,
            ldc: usize,
            st: Store<$c>,
        ) {
            debug_assert_eq!($g, 1, "a transposed A is read one depth step at a time");
            prefetch_tile::<$c>(c, ldc, $mr, $nv * $lanes);
            let mut acc = [[$zero(); $nv]; $mr];
            // SAFETY: each step's `MR` values of A are adjacent, `step` values
            // after the last (the caller's guarantee); the packed B panel holds
            // `NR` values a step.
            unsafe {
                micro_kernel!(@panel_loop acc, kc, a, step, b, $mr, $nv, $lanes, $bzero, $loadb, $set1, $fma, true)
            };
            // SAFETY: the caller's tile is `MR x NR` at `c` (row length `ldc`).
            unsafe { micro_kernel!(@store acc, c, ldc, st, $lanes, $load, $store, $add $(, $sround)?) };
        }
        )?
    };
    // The depth loop of a packed `B` panel by `A` values `$astep` apart a
    // group (a packed panel: `MR`; a transposed `A` read in place: its row
    // pitch, the next steps asked for ahead when `$far`), `steps` groups;
    // used inside `unsafe`.
    (@panel_loop $acc:ident, $steps:expr, $a:ident, $astep:expr, $b:ident, $mr:literal, $nv:literal, $lanes:literal, $bzero:ident, $loadb:ident, $set1:ident, $fma:ident, $far:literal) => {{
        let (mut a, mut b) = ($a, $b);
        for _ in 0..$steps {
            prefetch_ahead(b, $nv * $lanes);
            if $far {
                prefetch_steps_ahead(a, $astep, $mr);
            }
            let mut bv = [$bzero(); $nv];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = $loadb(b.add(v * $lanes));
            }
            for (i, acc) in $acc.iter_mut().enumerate() {
                let ai = $set1(*a.add(i));
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = $fma(ai, bv, *acc);
                }
            }
            // One past the last group at most (as an address only: a
            // transposed A's next step may lie past its end).
            a = a.wrapping_add($astep);
            b = b.add($nv * $lanes);
        }
    }};
    // The direct kernel's depth loop (`steps` groups), in Rust; used inside `unsafe`.
    (@direct_loop $acc:ident, $steps:expr, $a:ident, $lda:ident, $b:ident, $nv:literal, $lanes:literal, $bzero:ident, $loadb:ident, $set1:ident, $fma:ident, $at:ident) => {{
        let mut b = $b;
        for q in 0..$steps {
            prefetch_ahead(b, $nv * $lanes);
            let mut bv = [$bzero(); $nv];
            for (v, bv) in bv.iter_mut().enumerate() {
                // The packed B panel holds `NR = nv * lanes` values per step.
                *bv = $loadb(b.add(v * $lanes));
            }
            for (i, acc) in $acc.iter_mut().enumerate() {
                // The caller guarantees rows `0..MR`, depth `0..kc` of A.
                let ai = $set1($at($a, i * $lda, q));
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = $fma(ai, bv, *acc);
                }
            }
            // Stays within (or one past) the packed B panel.
            b = b.add($nv * $lanes);
        }
    }};
    // ... or in assembly (see [`depth_loop_14x2`]).
    (@direct_loop $acc:ident, $steps:expr, $a:ident, $lda:ident, $b:ident, $nv:literal, $lanes:literal, $bzero:ident, $loadb:ident, $set1:ident, $fma:ident, $at:ident, $depth:ident, $unit:literal) => {{
        $depth($steps, $a.cast::<u8>(), $lda * $unit, $b.cast::<u8>(), &mut $acc);
    }};
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

/// One row of one depth step `u` of [`depth_loop_14x2`]: broadcast the
/// row's value (at `addr`, `u` steps of `sb` bytes on) into `t`, then
/// `zmm{r0} += zmm28 * t`, `zmm{r1} += zmm29 * t`.
#[rustfmt::skip]
macro_rules! depth_row_14x2 {
    ($u:literal, $bcast:literal, $sz:literal, $sb:literal, $fma:literal, $addr:literal, $t:literal, $r0:literal, $r1:literal) => {
        concat!(
            $bcast, " ", $t, ", ", $sz, " ptr [", $addr, " + ", $u, "*", $sb, "]\n",
            $fma, " zmm", $r0, ", zmm28, ", $t, "\n",
            $fma, " zmm", $r1, ", zmm29, ", $t, "\n",
        )
    };
}

/// Depth step `u` of [`depth_loop_14x2`]: the `B` panel's two vectors (and a
/// prefetch of the step `B_PREFETCH_STEPS` = 8 ahead, 128 bytes a step),
/// then the 14 rows: rows 0-4 from `a0`, 5-9 from `a5`, 10-13 from `a10`,
/// `l` bytes apart (`l3` = 3 rows), so no address needs an add.
macro_rules! depth_step_14x2 {
    ($u:literal, $bcast:literal, $sz:literal, $sb:literal, $fma:literal) => {
        concat!(
            "vmovups zmm28, zmmword ptr [{b} + ",
            $u,
            "*128]\n",
            "vmovups zmm29, zmmword ptr [{b} + ",
            $u,
            "*128 + 64]\n",
            "prefetcht0 byte ptr [{b} + ",
            $u,
            "*128 + 1024]\n",
            "prefetcht0 byte ptr [{b} + ",
            $u,
            "*128 + 1088]\n",
            depth_row_14x2!($u, $bcast, $sz, $sb, $fma, "{a0}", "zmm30", "0", "1"),
            depth_row_14x2!($u, $bcast, $sz, $sb, $fma, "{a0} + {l}", "zmm31", "2", "3"),
            depth_row_14x2!(
                $u,
                $bcast,
                $sz,
                $sb,
                $fma,
                "{a0} + {l}*2",
                "zmm30",
                "4",
                "5"
            ),
            depth_row_14x2!($u, $bcast, $sz, $sb, $fma, "{a0} + {l3}", "zmm31", "6", "7"),
            depth_row_14x2!(
                $u,
                $bcast,
                $sz,
                $sb,
                $fma,
                "{a0} + {l}*4",
                "zmm30",
                "8",
                "9"
            ),
            depth_row_14x2!($u, $bcast, $sz, $sb, $fma, "{a5}", "zmm31", "10", "11"),
            depth_row_14x2!(
                $u,
                $bcast,
                $sz,
                $sb,
                $fma,
                "{a5} + {l}",
                "zmm30",
                "12",
                "13"
            ),
            depth_row_14x2!(
                $u,
                $bcast,
                $sz,
                $sb,
                $fma,
                "{a5} + {l}*2",
                "zmm31",
                "14",
                "15"
            ),
            depth_row_14x2!(
                $u,
                $bcast,
                $sz,
                $sb,
                $fma,
                "{a5} + {l3}",
                "zmm30",
                "16",
                "17"
            ),
            depth_row_14x2!(
                $u,
                $bcast,
                $sz,
                $sb,
                $fma,
                "{a5} + {l}*4",
                "zmm31",
                "18",
                "19"
            ),
            depth_row_14x2!($u, $bcast, $sz, $sb, $fma, "{a10}", "zmm30", "20", "21"),
            depth_row_14x2!(
                $u,
                $bcast,
                $sz,
                $sb,
                $fma,
                "{a10} + {l}",
                "zmm31",
                "22",
                "23"
            ),
            depth_row_14x2!(
                $u,
                $bcast,
                $sz,
                $sb,
                $fma,
                "{a10} + {l}*2",
                "zmm30",
                "24",
                "25"
            ),
            depth_row_14x2!(
                $u,
                $bcast,
                $sz,
                $sb,
                $fma,
                "{a10} + {l3}",
                "zmm31",
                "26",
                "27"
            ),
        )
    };
}

/// An assembly depth loop of `steps` steps: `four` (four steps and the
/// pointer updates after them) while four or more remain, then `one` (one
/// step and its updates) for the rest. The templates name the counter
/// `{steps}` (consumed) and may not use `{n}`; `operands` are the rest of
/// the `asm!` operands and options. The micro-kernels' assembly loops all
/// take this shape.
macro_rules! unrolled_depth_loop {
    ($steps:expr; [$($four:expr),* $(,)?]; [$($one:expr),* $(,)?]; $($operands:tt)*) => {
        core::arch::asm!(
            "mov {n}, {steps}",
            "shr {n}, 2",
            "jz 3f",
            "2:",
            $($four,)*
            "dec {n}",
            "jnz 2b",
            "3:",
            "and {steps}, 3",
            "jz 5f",
            "4:",
            $($one,)*
            "dec {steps}",
            "jnz 4b",
            "5:",
            steps = inout(reg) $steps => _,
            n = out(reg) _,
            $($operands)*
        )
    };
}
pub(super) use unrolled_depth_loop;

/// The depth loop of a 14-row, two-vector direct kernel (`A` read in place)
/// in assembly: `acc[i][v] = fma(A[i, q], B[q, v], acc[i][v])` for each
/// step `q` in order (the same operations as the Rust loop, so the same
/// bits), four steps per iteration. Written out because the compiler's
/// version steps a pointer through the 14 rows with an add per row and
/// step, and those adds take the FMA ports (f32, in L2: 75% -> ~94% of the packed
/// kernel's speed).
macro_rules! depth_loop_14x2 {
    ($(#[$doc:meta])* $name:ident; $feat:literal; $acc:ty; $bcast:literal, $sz:literal, $sb:literal, $fma:literal) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Row `i < 14` of `A` starts `i * lda` bytes after `a` and is
        /// readable for `steps` values of the kernel's step size; `b` is
        /// readable for `steps * 128` bytes; the CPU has the features.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn $name(steps: usize, a: *const u8, lda: usize, b: *const u8, acc: &mut [[$acc; 2]; 14]) {
            let (a5, a10) = (a.wrapping_add(5 * lda), a.wrapping_add(10 * lda));
            // SAFETY: the caller's guarantees; only reads memory.
            unsafe {
                unrolled_depth_loop!(
                    steps;
                    [
                        depth_step_14x2!(0, $bcast, $sz, $sb, $fma),
                        depth_step_14x2!(1, $bcast, $sz, $sb, $fma),
                        depth_step_14x2!(2, $bcast, $sz, $sb, $fma),
                        depth_step_14x2!(3, $bcast, $sz, $sb, $fma),
                        "add {b}, 512",
                        concat!("add {a0}, 4*", $sb),
                        concat!("add {a5}, 4*", $sb),
                        concat!("add {a10}, 4*", $sb),
                    ];
                    [
                        depth_step_14x2!(0, $bcast, $sz, $sb, $fma),
                        "add {b}, 128",
                        concat!("add {a0}, ", $sb),
                        concat!("add {a5}, ", $sb),
                        concat!("add {a10}, ", $sb),
                    ];
                    a0 = inout(reg) a => _,
                    a5 = inout(reg) a5 => _,
                    a10 = inout(reg) a10 => _,
                    l = in(reg) lda,
                    l3 = in(reg) 3 * lda,
                    b = inout(reg) b => _,
                    inout("zmm0") acc[0][0], inout("zmm1") acc[0][1],
                    inout("zmm2") acc[1][0], inout("zmm3") acc[1][1],
                    inout("zmm4") acc[2][0], inout("zmm5") acc[2][1],
                    inout("zmm6") acc[3][0], inout("zmm7") acc[3][1],
                    inout("zmm8") acc[4][0], inout("zmm9") acc[4][1],
                    inout("zmm10") acc[5][0], inout("zmm11") acc[5][1],
                    inout("zmm12") acc[6][0], inout("zmm13") acc[6][1],
                    inout("zmm14") acc[7][0], inout("zmm15") acc[7][1],
                    inout("zmm16") acc[8][0], inout("zmm17") acc[8][1],
                    inout("zmm18") acc[9][0], inout("zmm19") acc[9][1],
                    inout("zmm20") acc[10][0], inout("zmm21") acc[10][1],
                    inout("zmm22") acc[11][0], inout("zmm23") acc[11][1],
                    inout("zmm24") acc[12][0], inout("zmm25") acc[12][1],
                    inout("zmm26") acc[13][0], inout("zmm27") acc[13][1],
                    out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
                    options(nostack, readonly),
                );
            }
        }
    };
}

/// One row of one depth step `u` of [`bf16_depth_8x48`]: broadcast the
/// row's pair (at `addr`, `u` pairs on) into `t`, then `zmm{r} += zmm24 * t`,
/// `zmm{r+1} += zmm25 * t`, `zmm{r+2} += zmm26 * t` (`vdpbf16ps`).
#[rustfmt::skip]
macro_rules! depth_row_8x3 {
    ($u:literal, $addr:literal, $t:literal, $r0:literal, $r1:literal, $r2:literal) => {
        concat!(
            "vbroadcastss ", $t, ", dword ptr [", $addr, " + ", $u, "*4]\n",
            "vdpbf16ps zmm", $r0, ", zmm24, ", $t, "\n",
            "vdpbf16ps zmm", $r1, ", zmm25, ", $t, "\n",
            "vdpbf16ps zmm", $r2, ", zmm26, ", $t, "\n",
        )
    };
}

/// Depth step `u` of [`bf16_depth_8x48`]: the `B` panel's three vectors (and
/// a prefetch of the step `B_PREFETCH_STEPS` = 8 ahead, 192 bytes a step),
/// then the 8 rows: rows 0-4 from `a0`, 5-7 from `a5`, `l` bytes apart
/// (`l3` = 3 rows).
#[rustfmt::skip]
macro_rules! depth_step_8x3 {
    ($u:literal) => {
        concat!(
            "vmovups zmm24, zmmword ptr [{b} + ", $u, "*192]\n",
            "vmovups zmm25, zmmword ptr [{b} + ", $u, "*192 + 64]\n",
            "vmovups zmm26, zmmword ptr [{b} + ", $u, "*192 + 128]\n",
            "prefetcht0 byte ptr [{b} + ", $u, "*192 + 1536]\n",
            "prefetcht0 byte ptr [{b} + ", $u, "*192 + 1600]\n",
            "prefetcht0 byte ptr [{b} + ", $u, "*192 + 1664]\n",
            depth_row_8x3!($u, "{a0}", "zmm27", "0", "1", "2"),
            depth_row_8x3!($u, "{a0} + {l}", "zmm28", "3", "4", "5"),
            depth_row_8x3!($u, "{a0} + {l}*2", "zmm27", "6", "7", "8"),
            depth_row_8x3!($u, "{a0} + {l3}", "zmm28", "9", "10", "11"),
            depth_row_8x3!($u, "{a0} + {l}*4", "zmm27", "12", "13", "14"),
            depth_row_8x3!($u, "{a5}", "zmm28", "15", "16", "17"),
            depth_row_8x3!($u, "{a5} + {l}", "zmm27", "18", "19", "20"),
            depth_row_8x3!($u, "{a5} + {l}*2", "zmm28", "21", "22", "23"),
        )
    };
}

/// The depth loop of the 8 x 48 `bf16` direct kernel (`A` read in place) in
/// assembly: `acc[i][v] = vdpbf16ps(acc[i][v], A[i, pair q], B[q, v])` for
/// each pair `q` in order (the Rust loop's operations, so the same bits),
/// four pairs per iteration. Written out because the compiler's version
/// kept the accumulators in memory around the loop: it zeroed them with a
/// `memset` call and reloaded them per tile (~5% of a 4096 x 768 x 768
/// product).
///
/// # Safety
/// Row `i < 8` of `A` starts `i * lda` bytes after `a` and is readable for
/// `steps` pairs (4 bytes each); `b` is readable for `steps * 192` bytes;
/// the CPU has AVX512-BF16.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bf16")]
unsafe fn bf16_depth_8x48(
    steps: usize,
    a: *const u8,
    lda: usize,
    b: *const u8,
    acc: &mut [[__m512; 3]; 8],
) {
    let a5 = a.wrapping_add(5 * lda);
    // SAFETY: the caller's guarantees; only reads memory.
    unsafe {
        unrolled_depth_loop!(
            steps;
            [
                depth_step_8x3!(0),
                depth_step_8x3!(1),
                depth_step_8x3!(2),
                depth_step_8x3!(3),
                "add {b}, 768",
                "add {a0}, 16",
                "add {a5}, 16",
            ];
            [
                depth_step_8x3!(0),
                "add {b}, 192",
                "add {a0}, 4",
                "add {a5}, 4",
            ];
            a0 = inout(reg) a => _,
            a5 = inout(reg) a5 => _,
            l = in(reg) lda,
            l3 = in(reg) 3 * lda,
            b = inout(reg) b => _,
            inout("zmm0") acc[0][0], inout("zmm1") acc[0][1], inout("zmm2") acc[0][2],
            inout("zmm3") acc[1][0], inout("zmm4") acc[1][1], inout("zmm5") acc[1][2],
            inout("zmm6") acc[2][0], inout("zmm7") acc[2][1], inout("zmm8") acc[2][2],
            inout("zmm9") acc[3][0], inout("zmm10") acc[3][1], inout("zmm11") acc[3][2],
            inout("zmm12") acc[4][0], inout("zmm13") acc[4][1], inout("zmm14") acc[4][2],
            inout("zmm15") acc[5][0], inout("zmm16") acc[5][1], inout("zmm17") acc[5][2],
            inout("zmm18") acc[6][0], inout("zmm19") acc[6][1], inout("zmm20") acc[6][2],
            inout("zmm21") acc[7][0], inout("zmm22") acc[7][1], inout("zmm23") acc[7][2],
            out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _, out("zmm28") _,
            options(nostack, readonly),
        );
    }
}

depth_loop_14x2!(
    /// [`depth_loop_14x2`] for `f32`.
    f32_depth_14x32; "avx512f"; __m512; "vbroadcastss", "dword", "4", "vfmadd231ps"
);
depth_loop_14x2!(
    /// [`depth_loop_14x2`] for `f64`.
    f64_depth_14x16; "avx512f"; __m512d; "vbroadcastsd", "qword", "8", "vfmadd231pd"
);
depth_loop_14x2!(
    /// [`depth_loop_14x2`] for `bf16` pairs (`vdpbf16ps`, one step = one
    /// pair of depth values, 4 bytes of a row).
    bf16_depth_14x32; "avx512f,avx512dq,avx512bf16"; __m512; "vbroadcastss", "dword", "4", "vdpbf16ps"
);

micro_kernel!(
    /// `f32` AVX-512F kernel: 14 x 32 (28 zmm accumulators).
    f32_avx512_14x32, f32_avx512_14x32_direct; "avx512f";
    packed f32, 1 per group: _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, at_one;
    f32, 14 x 2 x 16: _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_add_ps;
    rounds with f16_round_store;
    direct depth loop f32_depth_14x32, 4 bytes per value;
    steps in place f32_avx512_14x32_steps, rounding with f16_round_store
);
micro_kernel!(
    /// `f64` AVX-512F kernel: 14 x 16 (28 zmm accumulators).
    f64_avx512_14x16, f64_avx512_14x16_direct; "avx512f";
    packed f64, 1 per group: _mm512_setzero_pd, _mm512_loadu_pd, _mm512_set1_pd, _mm512_fmadd_pd, at_one;
    f64, 14 x 2 x 8: _mm512_setzero_pd, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_add_pd;
    direct depth loop f64_depth_14x16, 8 bytes per value;
    steps in place f64_avx512_14x16_steps
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
    bf16_avx512_14x32, bf16_avx512_14x32_direct; "avx512f,avx512dq,avx512bf16";
    packed u32, 2 per group: _mm512_setzero_si512, bf16_load, bf16_set1, bf16_dot, bf16_depth_14x32;
    f32, 14 x 2 x 16: _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_add_ps;
    rounds with bf16_round_store;
    direct depth loop bf16_depth_14x32, 2 bytes per value
);
micro_kernel!(
    /// `bf16` AVX512-BF16 kernel: 8 x 48 (24 zmm `f32` accumulators), for
    /// products whose rows and columns are multiples of 8 and 48 (no padding).
    bf16_avx512_8x48, bf16_avx512_8x48_direct; "avx512f,avx512dq,avx512bf16";
    packed u32, 2 per group: _mm512_setzero_si512, bf16_load, bf16_set1, bf16_dot, bf16_depth_8x48;
    f32, 8 x 3 x 16: _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_add_ps;
    rounds with bf16_round_store;
    direct depth loop bf16_depth_8x48, 2 bytes per value
);

/// Edge rows of the 14-row AVX-512 kernels (see [`super::kernel::EdgeFn`]):
/// `R` rows of a packed 14-row `A` panel times a packed `B` panel of `NV`
/// vectors per depth step, each sum the same chain of FMAs from zero as in
/// the full kernel, written into `c` (row length `NV` vectors).
macro_rules! edge_kernel {
    ($(#[$doc:meta])* $name:ident, $rows:ident; $t:ty, $v:ty, $nv:literal x $lanes:literal: $zero:ident, $loadu:ident, $set1:ident, $fma:ident, $storeu:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// As for [`super::kernel::EdgeFn`]; the CPU must have AVX-512F.
        #[target_feature(enable = "avx512f")]
        pub(crate) unsafe fn $name(rows: usize, kc: usize, a: *const $t, b: *const $t, c: *mut $t) {
            /// The first `R` rows.
            #[target_feature(enable = "avx512f")]
            #[inline]
            unsafe fn $rows<const R: usize>(kc: usize, a: *const $t, b: *const $t, c: *mut $t) {
                let mut acc = [[$zero(); $nv]; R];
                for q in 0..kc {
                    let mut bv = [$zero(); $nv];
                    for (v, bv) in bv.iter_mut().enumerate() {
                        // SAFETY: the packed B panel holds `nv * lanes` values per step.
                        *bv = unsafe { $loadu(b.add(q * $nv * $lanes + v * $lanes)) };
                    }
                    for (i, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: the packed A panel holds 14 values per step (`R < 14`).
                        let ai = $set1(unsafe { *a.add(q * 14 + i) });
                        for (acc, &bv) in acc.iter_mut().zip(&bv) {
                            *acc = $fma(ai, bv, *acc);
                        }
                    }
                }
                for (i, acc) in acc.iter().enumerate() {
                    for (v, &acc) in acc.iter().enumerate() {
                        // SAFETY: row `i < R` of the scratch tile.
                        unsafe { $storeu(c.add(i * $nv * $lanes + v * $lanes), acc) };
                    }
                }
            }
            // SAFETY: the caller's guarantees, passed on.
            unsafe {
                match rows {
                    1 => $rows::<1>(kc, a, b, c),
                    2 => $rows::<2>(kc, a, b, c),
                    3 => $rows::<3>(kc, a, b, c),
                    4 => $rows::<4>(kc, a, b, c),
                    5 => $rows::<5>(kc, a, b, c),
                    6 => $rows::<6>(kc, a, b, c),
                    7 => $rows::<7>(kc, a, b, c),
                    8 => $rows::<8>(kc, a, b, c),
                    9 => $rows::<9>(kc, a, b, c),
                    10 => $rows::<10>(kc, a, b, c),
                    11 => $rows::<11>(kc, a, b, c),
                    12 => $rows::<12>(kc, a, b, c),
                    13 => $rows::<13>(kc, a, b, c),
                    _ => unreachable!("edge kernels take 1 to 13 rows, got {rows}"),
                }
            }
        }
    };
}

edge_kernel!(
    /// The first `rows` rows of [`f32_avx512_14x32`]'s tile.
    f32_avx512_edge_14x32, f32_rows; f32, __m512, 2 x 16: _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps
);
edge_kernel!(
    /// The first `rows` rows of [`f64_avx512_14x16`]'s tile.
    f64_avx512_edge_14x16, f64_rows; f64, __m512d, 2 x 8: _mm512_setzero_pd, _mm512_loadu_pd, _mm512_set1_pd, _mm512_fmadd_pd, _mm512_storeu_pd
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

/// Rounds 16 `f32` to `bf16` (to nearest, ties to even; NaN kept quiet:
/// bit for bit [`super::pack::bf16_round`]) and stores them at `p`.
///
/// `vcvtneps2bf16` rounds exactly so (checked here against the software
/// rounding on all 2^32 patterns) except that it flushes subnormal inputs to
/// zero, so a vector holding a subnormal takes [`bf16_round_store_exact`]
/// instead. One instruction instead of ten per vector: a 14 x 32 tile's
/// rounding was ~10% of a product of depth 128.
///
/// # Safety
/// `p` must be writable for 16 `u16`.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bf16")]
pub(super) unsafe fn bf16_round_store(v: __m512, p: *mut u16) {
    /// `vfpclassps` category: subnormal.
    const SUBNORMAL: i32 = 0x20;
    // SAFETY: the caller's guarantee (16 values).
    unsafe {
        if _mm512_fpclass_ps_mask::<SUBNORMAL>(v) != 0 {
            bf16_round_store_exact(v, p);
        } else {
            let bits = core::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v));
            _mm256_storeu_si256(p.cast(), bits);
        }
    }
}

/// [`bf16_round_store`] in integer arithmetic, subnormals kept.
///
/// # Safety
/// `p` must be writable for 16 `u16`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn bf16_round_store_exact(v: __m512, p: *mut u16) {
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

/// Rounds 16 `f32` to `f16` (to nearest, ties to even, as `f16::from_f32`
/// and [`super::pack::narrow`] round) and stores them at `p`.
///
/// # Safety
/// `p` must be writable for 16 `u16`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn f16_round_store(v: __m512, p: *mut u16) {
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    // SAFETY: the caller's guarantee (unaligned store of 32 bytes).
    unsafe { _mm256_storeu_si256(p.cast(), _mm512_cvtps_ph::<NEAREST>(v)) };
}

/// [`bf16_round_store`] on 16 `f32` read from `x` (for tests).
///
/// # Safety
/// The CPU must have AVX512-BF16; `x` readable and `p` writable for 16 values.
#[cfg(test)]
#[target_feature(enable = "avx512f,avx512dq,avx512bf16")]
pub(crate) unsafe fn round_bf16_16(x: *const f32, p: *mut u16) {
    // SAFETY: the caller's guarantee.
    unsafe { bf16_round_store(_mm512_loadu_ps(x), p) }
}

/// Loads 16 packed `bf16` pairs.
///
/// # Safety
/// `p` must be readable for 16 `u32`.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bf16")]
unsafe fn bf16_load(p: *const u32) -> __m512i {
    // SAFETY: the caller's guarantee (unaligned load).
    unsafe { _mm512_loadu_si512(p.cast()) }
}

/// One `bf16` pair in every 32-bit lane.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bf16")]
fn bf16_set1(v: u32) -> __m512i {
    _mm512_set1_epi32(v as i32)
}

/// `acc[l] += a[2l] * b[2l] + a[2l + 1] * b[2l + 1]` (`vdpbf16ps`).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bf16")]
pub(super) fn bf16_dot(a: __m512i, b: __m512i, acc: __m512) -> __m512 {
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
    has_avx512() && is_x86_feature_detected!("avx512dq") && is_x86_feature_detected!("avx512bf16")
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
        ft: Some(f32_avx512_14x32_steps),
        edge: Some(f32_avx512_edge_14x32),
        any_pitch: true,
        rounds: Some(DType::F16),
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
        ft: Some(f64_avx512_14x16_steps),
        edge: Some(f64_avx512_edge_14x16),
        any_pitch: true,
        rounds: None,
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
        ft: None,
        edge: None,
        any_pitch: false,
        rounds: None,
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
        ft: None,
        edge: None,
        any_pitch: false,
        rounds: None,
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
            ft: None,
            edge: None,
            any_pitch: false,
            rounds: Some(DType::BF16),
            amx: false,
            name: "avx512bf16-14x32",
        },
        Kernel {
            mr: 8,
            nr: 48,
            f: bf16_avx512_8x48,
            fd: Some(bf16_avx512_8x48_direct),
            ft: None,
            edge: None,
            any_pitch: false,
            rounds: Some(DType::BF16),
            amx: false,
            name: "avx512bf16-8x48",
        },
    ])
}
