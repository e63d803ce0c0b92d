//! Packing: copies blocks of `A` and `B` into contiguous, zero-padded
//! micro-panels. [`Widen`] packs in the compute type, widening
//! low-precision inputs on the way (`f16` through F16C where the CPU has it,
//! `bf16` by a bit shift, f8 through [`FloatDtype::to_acc`]); [`Bf16Pairs`]
//! keeps `bf16` as it is, two consecutive depth values per `u32` (the
//! operand layout of `vdpbf16ps`).
//!
//! Where the operand is contiguous along the direction being read (a row of
//! a row-major matrix, a column of a transposed one), whole runs are
//! converted at once; any other strides go through the offset tables.

use core::mem::MaybeUninit;
use std::any::TypeId;
use std::cell::Cell;
use std::thread::LocalKey;

use num_traits::Zero;

use super::{Operands, KC};
use crate::cpu::simd::prefetch;

/// The tallest register tile any kernel uses.
const MAX_MR: usize = 16;
/// At most this many `NR`-column panels of B: read a row-major A in place
/// instead of packing it.
const DIRECT_MAX_PANELS: usize = 16;
/// The widest register tile any kernel uses.
const MAX_NR: usize = 64;
use crate::{bf16, f16, FloatDtype};

/// How [`super::blocked`] packs operands of input type `E` into panels of
/// `Self::P` for a kernel (see [`super::kernel::MicroFn`] for the layout).
pub(crate) trait Packing<E: FloatDtype> {
    /// One packed group of [`Self::GROUP`] depth values of one row or column.
    type P: Copy + Send + Sync + 'static;
    /// Depth values per packed group.
    const GROUP: usize;
    /// Depth of a packed block (a multiple of `GROUP`).
    const KC: usize;
    /// Whether a kernel's [`DirectFn`](super::kernel::DirectFn) should read
    /// a row-major `A` in place: rows `pitch` bytes apart, multiplied by
    /// `panels` panels of `B` (over which packing would be amortized), with
    /// a kernel that keeps its speed at any pitch or not
    /// ([`Kernel::any_pitch`](super::kernel::Kernel::any_pitch)). A pitch
    /// of 0 is a single row: it aliases nothing.
    fn in_place(pitch: usize, panels: usize, any_pitch: bool) -> bool;
    /// Whether [`Self::widen_rows`] can stand in for packing `A`: its rows
    /// are contiguous runs of an input type narrower than the compute type,
    /// so widening them row by row (a streaming conversion) and reading the
    /// copy with the in-place kernel beats packing them (a transpose).
    fn widens_rows(ops: &Operands<'_, E>) -> bool;
    /// Widens rows `r0..r0 + len`, depth `pc..pc + kc` of `A` (which
    /// [`Self::widens_rows`]) into `dst`, row `i` at `dst[i * pitch..]`.
    fn widen_rows(
        ops: &Operands<'_, E>,
        rows: (usize, usize),
        depth: (usize, usize),
        pitch: usize,
        dst: &mut [Self::P],
    );
    /// Packs lines `l0..l0 + len` of one operand (rows of `A` or columns
    /// of `B`), depth `pc..pc + kc`, into `len.div_ceil(w)` panels of `w`
    /// lines, `kc.div_ceil(GROUP) * w` groups each, zero-padded.
    fn pack(
        ops: &Operands<'_, E>,
        side: Side,
        lines: (usize, usize),
        depth: (usize, usize),
        w: usize,
        dst: &mut [Self::P],
    );
}

/// Whether rows `pitch` bytes apart fall into the same L1 sets: a multiple
/// of `every` bytes, a single row (pitch 0) excepted.
fn rows_alias(pitch: usize, every: usize) -> bool {
    pitch != 0 && pitch.is_multiple_of(every)
}

/// The operand a block is packed from.
#[derive(Clone, Copy)]
pub(crate) enum Side {
    /// The left operand (lines are rows).
    A,
    /// The right operand (lines are columns).
    B,
}

/// Panels in the compute type `E::Acc`, one depth value per group.
pub(crate) struct Widen;

impl<E: FloatDtype> Packing<E> for Widen {
    type P = E::Acc;
    const GROUP: usize = 1;
    const KC: usize = KC;
    /// Only an `A` already in the compute type whose rows do not alias in
    /// L1: the `MR` rows read together must fall into different sets, so
    /// the pitch must not be a multiple of 2 KiB, or of 4 KiB with a kernel
    /// that tolerates the former (the AVX-512 assembly loops). At a 4 KiB
    /// pitch every row maps to one set and an 8-way L1 (Zen 4) thrashes:
    /// such rows are copied to a padded pitch instead ([`Self::widens_rows`];
    /// 1 thread, 1024 and 2048 square, alternating runs: 55-82 GFLOP/s in
    /// place, 78-90 packed, 84-97 copied).
    ///
    /// With few panels (where packing would not pay) a 2 KiB pitch is read
    /// in place all the same, a 4 KiB one never: even a single panel runs
    /// faster from the copy. (4 KiB had been read in place up to
    /// `DIRECT_MAX_PANELS` = 16 panels. 1 thread, alternating runs, f32
    /// 1024 x 1024 x N, GFLOP/s: N = 32: 70-86 -> 91-92; N = 64: 60-87 ->
    /// 100; N = 512: 77-86 -> 100-104; 256 x 1024 x 64: 59-86 -> 100.)
    fn in_place(pitch: usize, panels: usize, any_pitch: bool) -> bool {
        let aliasing = if any_pitch { 4096 } else { 2048 };
        TypeId::of::<E>() == TypeId::of::<E::Acc>()
            && !rows_alias(pitch, 4096)
            && (panels <= DIRECT_MAX_PANELS || !rows_alias(pitch, aliasing))
    }
    /// An `A` with contiguous rows that is not read in place: an `f16`,
    /// `bf16` or f8 one (packing it was a scalar transpose, ~12% of an f16
    /// product; the widened copy costs ~3% and the in-place kernel runs as
    /// fast: f16, 1 thread, side by side with the `gemm` crate: 1.8-2.4x ->
    /// 2.0-2.7x its speed; 1024 x 1024 x 1024: 144 -> 155-161 GFLOP/s), or
    /// one in the compute type whose rows alias in L1 (a copy at a padded
    /// pitch is a plain streaming copy; packing is a transpose).
    fn widens_rows(ops: &Operands<'_, E>) -> bool {
        ops.a_unit_k
    }
    #[inline(always)]
    fn widen_rows(
        ops: &Operands<'_, E>,
        (r0, len): (usize, usize),
        (pc, kc): (usize, usize),
        pitch: usize,
        dst: &mut [E::Acc],
    ) {
        debug_assert!(ops.a_unit_k && kc <= pitch && dst.len() >= len * pitch);
        let rows = &ops.a_rows[r0..r0 + len];
        for (i, (&row, d)) in rows.iter().zip(dst.chunks_mut(pitch)).enumerate() {
            prefetch_row_ahead(ops, rows, i, pc, kc);
            let at = ops.a_base + row + ops.a_cols[pc];
            widen(&ops.a[at..at + kc], &mut d[..kc]);
        }
    }
    #[inline(always)]
    fn pack(
        ops: &Operands<'_, E>,
        side: Side,
        (l0, len): (usize, usize),
        (pc, kc): (usize, usize),
        w: usize,
        dst: &mut [E::Acc],
    ) {
        match side {
            Side::A => pack_a(ops, l0, len, pc, kc, w, dst),
            Side::B => {
                // A row-major B: its full panels a row at a time (each row
                // read once, in order; panel by panel, every step read a
                // short run a row pitch from the last: 1 thread, a weight
                // gradient 128 x 768 x 512, 134-135 -> 140-141 GFLOP/s).
                let full = if ops.b_unit_n && len >= 2 * w {
                    let base = ops.b_base + ops.b_cols[l0];
                    pack_runs(ops.b, base, &ops.b_rows[pc..pc + kc], len / w, w, dst);
                    len / w
                } else {
                    0
                };
                for (jp, panel) in dst.chunks_exact_mut(kc * w).enumerate().skip(full) {
                    let j = l0 + jp * w;
                    pack_b_panel(ops, pc, kc, j, w.min(l0 + len - j), w, panel)
                }
            }
        }
    }
}

/// `bf16` panels for `vdpbf16ps`: each `u32` holds depth `2q` (low half)
/// and `2q + 1` (high half, zero past an odd depth) of one row or column.
pub(crate) struct Bf16Pairs;

impl Packing<bf16> for Bf16Pairs {
    type P = u32;
    const GROUP: usize = 2;
    const KC: usize = super::KC_BF16;
    /// Unless the rows alias in L1 badly: packing pairs is a 32-bit
    /// transpose that costs more than a 2 KiB pitch does (1024 columns: in
    /// place is ~10% faster), but a 4 KiB pitch puts every row in the same
    /// set (2048 columns: packing was ~5% faster; such rows are now copied
    /// to a padded pitch, [`Self::widens_rows`]).
    /// (`any_pitch` is not used: measured with the Rust depth loop.)
    /// As for `f32`, a 4 KiB pitch is copied however few the panels (it
    /// had been read in place up to 16 panels; 1 thread, alternating runs,
    /// 1024 x 2048 x N, GFLOP/s: N = 32: 120-164 -> 179-181; N = 128:
    /// 167-169 -> 188-199; N = 512: 160-162 -> 196).
    fn in_place(pitch: usize, _panels: usize, _any_pitch: bool) -> bool {
        !rows_alias(pitch, 4096)
    }
    /// Rows that alias in L1 (see [`Self::in_place`]) are copied as they
    /// are to a padded pitch (two `bf16` values per pair) and read in
    /// place from there: a streaming copy instead of a transpose (1 thread,
    /// 2048 x 2048 x 2048 on a Zen 4: ~180 -> ~195-199 GFLOP/s).
    fn widens_rows(ops: &Operands<'_, bf16>) -> bool {
        ops.a_unit_k
    }
    /// Copies each row's `kc` values (`kc` even) as `kc / 2` pairs.
    #[inline(always)]
    fn widen_rows(
        ops: &Operands<'_, bf16>,
        (r0, len): (usize, usize),
        (pc, kc): (usize, usize),
        pitch: usize,
        dst: &mut [u32],
    ) {
        debug_assert!(ops.a_unit_k && kc.is_multiple_of(2) && kc / 2 <= pitch);
        debug_assert!(dst.len() >= len * pitch);
        let rows = &ops.a_rows[r0..r0 + len];
        for (i, (&row, d)) in rows.iter().zip(dst.chunks_mut(pitch)).enumerate() {
            prefetch_row_ahead(ops, rows, i, pc, kc);
            let at = ops.a_base + row + ops.a_cols[pc];
            let src = &ops.a[at..at + kc];
            // SAFETY: `d` holds at least `kc / 2` pairs, `2 * (kc / 2)`
            // `bf16` values (`repr(transparent)` `u16`s) by layout; the
            // pair order in memory (low half first) is the values' order.
            let d = unsafe { core::slice::from_raw_parts_mut(d.as_mut_ptr().cast::<bf16>(), kc) };
            d.copy_from_slice(src);
        }
    }
    #[inline(always)]
    fn pack(
        ops: &Operands<'_, bf16>,
        side: Side,
        (l0, len): (usize, usize),
        (pc, kc): (usize, usize),
        w: usize,
        dst: &mut [u32],
    ) {
        let (x, base, lines, depth) = match side {
            Side::A => (
                ops.a,
                ops.a_base,
                (&ops.a_rows[l0..l0 + len], ops.a_unit_m),
                (&ops.a_cols[pc..pc + kc], ops.a_unit_k),
            ),
            Side::B => (
                ops.b,
                ops.b_base,
                (&ops.b_cols[l0..l0 + len], ops.b_unit_n),
                (&ops.b_rows[pc..pc + kc], ops.b_unit_k),
            ),
        };
        pack_pairs(x, base, lines, depth, w, dst);
    }
}

/// Offsets of the rows (or columns, or depth steps) of a block, and whether
/// they step by exactly one element.
type Lines<'a> = (&'a [usize], bool);

/// Two `bf16` bit patterns as one `vdpbf16ps` lane (`lo` first in memory).
#[inline(always)]
pub(crate) fn pair(lo: u16, hi: u16) -> u32 {
    u32::from(lo) | (u32::from(hi) << 16)
}

/// Packs a block into `w`-line panels of `bf16` pairs: line `l` (a row of
/// `A` or a column of `B`) is line `l % w` of panel `l / w`, and depth pair
/// `q` of it goes to `panel[q * w + l % w]`, reading
/// `x[base + lines[l] + depth[p]]`. Lines past the last and the high half
/// past an odd depth are zero. `dst` holds `lines.div_ceil(w)` panels.
#[inline(always)]
fn pack_pairs(
    x: &[bf16],
    base: usize,
    (lines, lines_unit): Lines<'_>,
    (depth, depth_unit): Lines<'_>,
    w: usize,
    dst: &mut [u32],
) {
    // SAFETY: `bf16` is a transparent `u16` bit pattern.
    let x = unsafe { core::slice::from_raw_parts(x.as_ptr().cast::<u16>(), x.len()) };
    let (n, kc) = (lines.len(), depth.len());
    let (g, full, odd) = (kc.div_ceil(2), kc / 2, kc % 2 == 1);
    debug_assert!(w <= MAX_NR && dst.len() == n.div_ceil(w) * g * w);
    if !n.is_multiple_of(w) {
        dst[n / w * g * w..].fill(0);
    }
    if lines_unit && !depth_unit {
        // Each depth step is a contiguous run of lines: interleave two runs,
        // one depth pair of every panel at a time (reading each run in order).
        let run = |p: usize| {
            let at = base + depth[p] + lines[0];
            &x[at..at + n]
        };
        for q in 0..g {
            for p in [2 * q, 2 * q + 1] {
                prefetch_step_ahead(x, base + lines[0], depth, p, n);
            }
            let (r0, r1) = (run(2 * q), (2 * q + 1 < kc).then(|| run(2 * q + 1)));
            for (panel, (r0, r1)) in dst
                .chunks_exact_mut(g * w)
                .zip(r0.chunks(w).zip(r1.iter().flat_map(|r| r.chunks(w))))
            {
                let d = &mut panel[q * w..q * w + r0.len()];
                for ((d, &lo), &hi) in d.iter_mut().zip(r0).zip(r1) {
                    *d = pair(lo, hi);
                }
            }
            if r1.is_none() {
                for (panel, r0) in dst.chunks_exact_mut(g * w).zip(r0.chunks(w)) {
                    for (d, &lo) in panel[q * w..].iter_mut().zip(r0) {
                        *d = pair(lo, 0);
                    }
                }
            }
        }
        return;
    }
    for (panel, lines) in dst.chunks_exact_mut(g * w).zip(lines.chunks(w)) {
        if depth_unit {
            // Each line is a contiguous run along the depth: its pairs are
            // adjacent values.
            let mut runs: [&[u16]; MAX_NR] = [&[]; MAX_NR];
            for (r, &lo) in runs.iter_mut().zip(lines) {
                let at = base + lo + depth[0];
                *r = &x[at..at + kc];
            }
            let runs = &runs[..lines.len()];
            for (q, d) in panel.chunks_exact_mut(w).enumerate().take(full) {
                for (d, r) in d.iter_mut().zip(runs) {
                    *d = pair(r[2 * q], r[2 * q + 1]);
                }
            }
            if odd {
                for (d, r) in panel[full * w..].iter_mut().zip(runs) {
                    *d = pair(r[kc - 1], 0);
                }
            }
        } else {
            for (q, d) in panel.chunks_exact_mut(w).enumerate() {
                let (p0, p1) = (depth[2 * q], depth.get(2 * q + 1));
                for (d, &lo) in d.iter_mut().zip(lines) {
                    let hi = p1.map_or(0, |&p1| x[base + lo + p1]);
                    *d = pair(x[base + lo + p0], hi);
                }
            }
        }
    }
}

/// Converts a run of inputs into the compute type.
#[inline(always)]
pub(crate) fn widen<E: FloatDtype>(src: &[E], dst: &mut [E::Acc]) {
    debug_assert_eq!(src.len(), dst.len());
    if TypeId::of::<E>() == TypeId::of::<E::Acc>() {
        // SAFETY: `E` and `E::Acc` are the same type (same TypeId).
        let s = unsafe { core::slice::from_raw_parts(src.as_ptr().cast::<E::Acc>(), src.len()) };
        copy_run(s, dst);
    } else if TypeId::of::<E>() == TypeId::of::<f16>()
        && TypeId::of::<E::Acc>() == TypeId::of::<f32>()
    {
        use half::slice::HalfFloatSliceExt;
        // SAFETY: `E` is `f16` and `E::Acc` is `f32` (TypeIds checked above).
        let (s, d) = unsafe {
            (
                core::slice::from_raw_parts(src.as_ptr().cast::<f16>(), src.len()),
                core::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<f32>(), dst.len()),
            )
        };
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::simd::has_avx512() {
            // SAFETY: the CPU has AVX-512 F/BW/VL and F16C (checked).
            unsafe { f16_to_f32_avx512(s, d) };
            return;
        }
        s.convert_to_f32_slice(d);
    } else if TypeId::of::<E>() == TypeId::of::<bf16>()
        && TypeId::of::<E::Acc>() == TypeId::of::<f32>()
    {
        // SAFETY: `E` is `bf16` (a `u16` bit pattern) and `E::Acc` is `f32`.
        let (s, d) = unsafe {
            (
                core::slice::from_raw_parts(src.as_ptr().cast::<u16>(), src.len()),
                core::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<f32>(), dst.len()),
            )
        };
        // bf16 is the top half of an f32: widening is exact.
        for (d, &s) in d.iter_mut().zip(s) {
            *d = f32::from_bits((s as u32) << 16);
        }
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_acc();
        }
    }
}

/// Copies a run, inline for the panel widths the kernels use: a call into
/// libc's `memmove` costs more than copying the 6–32 values of a panel row.
#[inline(always)]
fn copy_run<T: Copy>(src: &[T], dst: &mut [T]) {
    macro_rules! fixed {
        ($($n:literal)*) => {
            match src.len() {
                $($n => {
                    let (s, d): (&[T; $n], &mut [T; $n]) =
                        (src.try_into().unwrap(), dst.try_into().unwrap());
                    *d = *s;
                })*
                _ => dst.copy_from_slice(src),
            }
        };
    }
    fixed!(6 8 14 16 32)
}

/// Rounds a run of accumulated values into the output type (writing every
/// element of `dst`).
pub(crate) fn narrow<E: FloatDtype>(src: &[E::Acc], dst: &mut [MaybeUninit<E>]) {
    if TypeId::of::<E>() == TypeId::of::<f16>() && TypeId::of::<E::Acc>() == TypeId::of::<f32>() {
        use half::slice::HalfFloatSliceExt;
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::simd::has_avx512() {
            // SAFETY: `E` is `f16` and `E::Acc` is `f32` (TypeIds checked
            // above); the conversion writes every element of `dst`.
            unsafe {
                f32_to_f16_avx512(
                    core::slice::from_raw_parts(src.as_ptr().cast::<f32>(), src.len()),
                    dst.as_mut_ptr().cast::<f16>(),
                    dst.len(),
                )
            };
            return;
        }
        dst.fill(MaybeUninit::new(E::default()));
        // SAFETY: `E` is `f16` and `E::Acc` is `f32` (TypeIds checked
        // above); `dst` was just initialized.
        let (s, d) = unsafe {
            (
                core::slice::from_raw_parts(src.as_ptr().cast::<f32>(), src.len()),
                core::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<f16>(), dst.len()),
            )
        };
        d.convert_from_f32_slice(s);
    } else if TypeId::of::<E>() == TypeId::of::<bf16>()
        && TypeId::of::<E::Acc>() == TypeId::of::<f32>()
    {
        // SAFETY: `E` is `bf16` (a `u16` bit pattern) and `E::Acc` is `f32`.
        let (s, d) = unsafe {
            (
                core::slice::from_raw_parts(src.as_ptr().cast::<u32>(), src.len()),
                core::slice::from_raw_parts_mut(
                    dst.as_mut_ptr().cast::<MaybeUninit<u16>>(),
                    dst.len(),
                ),
            )
        };
        for (d, &s) in d.iter_mut().zip(s) {
            *d = MaybeUninit::new(bf16_round(s));
        }
    } else {
        for (o, &v) in dst.iter_mut().zip(src) {
            *o = MaybeUninit::new(E::from_acc(v));
        }
    }
}

/// `f16` to `f32` (exact), 16 values per `vcvtph2ps`, the last few through
/// masks: inlined into the packing loops where they run under AVX-512 (the
/// `half` crate's slice conversion calls a function per 8 values).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
#[inline]
unsafe fn f16_to_f32_avx512(s: &[f16], d: &mut [f32]) {
    use core::arch::x86_64::*;
    let n = s.len().min(d.len());
    let (sp, dp) = (s.as_ptr().cast::<i16>(), d.as_mut_ptr());
    let mut i = 0;
    // SAFETY: every access is inside `0..n` of both slices (the tail's
    // lanes past `n` are masked off).
    unsafe {
        while i + 16 <= n {
            let h = _mm256_loadu_si256(sp.add(i).cast());
            _mm512_storeu_ps(dp.add(i), _mm512_cvtph_ps(h));
            i += 16;
        }
        if i < n {
            let m: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
            let h = _mm256_maskz_loadu_epi16(m, sp.add(i));
            _mm512_mask_storeu_ps(dp.add(i), m, _mm512_cvtph_ps(h));
        }
    }
}

/// `f32` to `f16`, to nearest (ties to even) as `f16::from_f32` rounds (the
/// same `vcvtps2ph`), 16 values per instruction, the tail through masks.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL and F16C; `d` must be writable for
/// `len` values (it may be uninitialized).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
#[inline]
unsafe fn f32_to_f16_avx512(s: &[f32], d: *mut f16, len: usize) {
    use core::arch::x86_64::*;
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let n = s.len().min(len);
    let (sp, dp) = (s.as_ptr(), d.cast::<i16>());
    let mut i = 0;
    // SAFETY: as in `f16_to_f32_avx512`.
    unsafe {
        while i + 16 <= n {
            let h = _mm512_cvtps_ph::<NEAREST>(_mm512_loadu_ps(sp.add(i)));
            _mm256_storeu_si256(dp.add(i).cast(), h);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
            let h = _mm512_cvtps_ph::<NEAREST>(_mm512_maskz_loadu_ps(m, sp.add(i)));
            _mm256_mask_storeu_epi16(dp.add(i), m, h);
        }
    }
}

/// `f32` bits to `bf16` bits, to nearest (ties to even), NaN kept quiet:
/// `bf16::from_f32` without branches, so a loop of it vectorizes.
#[inline(always)]
pub(crate) fn bf16_round(x: u32) -> u16 {
    let rounded = x.wrapping_add(0x7FFF + ((x >> 16) & 1)) >> 16;
    let nan = (x >> 16) | 0x40;
    (if x & 0x7FFF_FFFF > 0x7F80_0000 {
        nan
    } else {
        rounded
    }) as u16
}

/// A 64-byte-aligned block of scratch memory.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Align64([u8; 64]);

thread_local! {
    /// Per-thread scratch for packed `A` blocks.
    pub(crate) static A_BUF: Cell<Vec<Align64>> = const { Cell::new(Vec::new()) };
    /// Per-thread scratch for packed `B` blocks.
    pub(crate) static B_BUF: Cell<Vec<Align64>> = const { Cell::new(Vec::new()) };
    /// Per-thread scratch for `f32` sums (the AMX path's accumulator).
    pub(crate) static C_BUF: Cell<Vec<Align64>> = const { Cell::new(Vec::new()) };
    /// Per-thread scratch for a whole `A` copied to a padded pitch
    /// ([`pad_rows`]): reused, so a product does not fault in fresh pages
    /// each time (a fresh 8 MiB copy made a 2048³ `bf16` product ~20% slower).
    pub(crate) static PAD_BUF: Cell<Vec<Align64>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on `len` values of 64-byte-aligned per-thread scratch (whatever
/// was there before: packing overwrites every value it uses). The buffer is
/// taken out of the thread-local while in use, so a nested call (rayon work
/// stealing) just gets a fresh one.
///
/// # Panics
/// If `A` is not `f32`, `f64`, `u32` or `bf16` (types valid for any bit
/// pattern).
pub(crate) fn with_buf<A: Copy + 'static, R>(
    key: &'static LocalKey<Cell<Vec<Align64>>>,
    len: usize,
    f: impl FnOnce(&mut [A]) -> R,
) -> R {
    assert!(
        [
            TypeId::of::<f32>(),
            TypeId::of::<f64>(),
            TypeId::of::<u32>(),
            TypeId::of::<bf16>(),
        ]
        .contains(&TypeId::of::<A>()),
        "with_buf: scratch must be f32, f64, u32 or bf16"
    );
    let mut v = key.with(|c| c.take());
    let blocks = (len * core::mem::size_of::<A>()).div_ceil(64);
    if v.len() < blocks {
        v.resize(blocks, Align64([0; 64]));
    }
    // SAFETY: `A` is `f32`, `f64`, `u32` or `bf16` (asserted: any bit
    // pattern is valid, alignment <= 64), and `len` values fit in `blocks *
    // 64` bytes.
    let s = unsafe { core::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<A>(), len) };
    let r = f(s);
    key.with(|c| c.set(v));
    r
}

/// Depth steps ahead that packing asks for its source runs where each step
/// is a run of lines a row pitch from the last (a transposed `A`, a
/// row-major `B`, in panels or whole blocks, `f32` or `bf16` pairs): steps
/// more than 4 KiB apart defeat the hardware prefetchers, so every run was
/// a demand miss (gpt6's weight gradient, 1 thread, panel by panel:
/// packing was ~20% of the product; a block at a time on a Zen 4, 1536 x
/// 2048 x 384: 86-91 -> 95-96 GFLOP/s).
const PACK_PREFETCH_STEPS: usize = 16;

/// Asks for the `len` values of the depth step [`PACK_PREFETCH_STEPS`]
/// after step `p`, which starts at `x[base + steps[..]]` (nothing past the
/// last step).
#[inline(always)]
fn prefetch_step_ahead<T>(x: &[T], base: usize, steps: &[usize], p: usize, len: usize) {
    if let Some(&ahead) = steps.get(p + PACK_PREFETCH_STEPS) {
        prefetch::<false, _>(x.as_ptr().wrapping_add(base + ahead), len);
    }
}

/// All of `A` (whose depth is unit-stride) copied row by row into `dst` at
/// a row pitch of `pitch` values, zero after each row's `K` values, the rows
/// shared out over `threads` tasks: an `A` in the kernel's input type whose
/// rows alias in L1, copied once per product instead of once per column
/// block (see `blocked`).
pub(crate) fn pad_rows<E: FloatDtype>(
    ops: &Operands<'_, E>,
    pitch: usize,
    threads: usize,
    dst: &mut [E],
) {
    let (m, k) = (ops.a_rows.len(), ops.a_cols.len());
    debug_assert!(ops.a_unit_k && k <= pitch && dst.len() == m * pitch);
    let per = m.div_ceil(threads.max(1)).max(1);
    let rows = ops.a_rows;
    let copy_rows = |(t, dst): (usize, &mut [E])| {
        for (i, d) in dst.chunks_exact_mut(pitch).enumerate() {
            let i = t * per + i;
            prefetch_row_ahead(ops, rows, i, 0, k);
            let (row, pad) = d.split_at_mut(k);
            if k > 0 {
                let at = ops.a_base + rows[i] + ops.a_cols[0];
                copy_run(&ops.a[at..at + k], row);
            }
            pad.fill(E::from_f32(0.0));
        }
    };
    if threads > 1 {
        super::for_each_chunk_mut(dst, per * pitch, copy_rows);
    } else {
        copy_rows((0, dst));
    }
}

/// Rows ahead that the row copies ([`Packing::widen_rows`], [`pad_rows`])
/// ask for while they copy a row (1 thread, 2048³ `f32`: the copy ~6% ->
/// ~3% of the product).
const WIDEN_PREFETCH_ROWS: usize = 2;

/// Asks for the `kc` values of row `i + WIDEN_PREFETCH_ROWS` of `rows`
/// (an `A` whose depth is unit-stride) from depth `pc` on: each row is a new
/// stream a pitch away, which the hardware prefetchers pick up late.
#[inline(always)]
fn prefetch_row_ahead<E>(ops: &Operands<'_, E>, rows: &[usize], i: usize, pc: usize, kc: usize) {
    if let Some(&ahead) = rows.get(i + WIDEN_PREFETCH_ROWS) {
        prefetch::<false, _>(
            ops.a
                .as_ptr()
                .wrapping_add(ops.a_base + ahead + ops.a_cols[pc]),
            kc,
        );
    }
}

/// Packs rows `ic..ic + mc`, depth `pc..pc + kc` of `A` into `mr`-row
/// panels, each stored depth-major (`mr` values per depth step); rows past
/// `mc` are zero. `dst` holds `mc.div_ceil(mr) * mr * kc` values.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn pack_a<E: FloatDtype>(
    ops: &Operands<'_, E>,
    ic: usize,
    mc: usize,
    pc: usize,
    kc: usize,
    mr: usize,
    dst: &mut [E::Acc],
) {
    let cols = &ops.a_cols[pc..pc + kc];
    // A transposed A (each depth step a contiguous run of rows): its full
    // panels a step at a time (weight gradients, 1 thread: 128 x 768 x 512
    // 140 -> 142-146, 512 x 768 x 128 140 -> 147-151 GFLOP/s; 2 threads
    // up to ~6%); the panel loop below packs the rest.
    let full = if ops.a_unit_m && !ops.a_unit_k && mc >= 2 * mr {
        pack_runs(ops.a, ops.a_base + ops.a_rows[ic], cols, mc / mr, mr, dst);
        mc / mr
    } else {
        0
    };
    let same = TypeId::of::<E>() == TypeId::of::<E::Acc>();
    let mut tmp: Vec<E::Acc> = Vec::new();
    if ops.a_unit_k && !same {
        tmp.resize(mr * kc, E::Acc::zero());
    }
    for (ip, panel) in dst.chunks_exact_mut(kc * mr).enumerate().skip(full) {
        let r0 = ip * mr;
        let rows = mr.min(mc - r0);
        if rows < mr {
            panel.fill(E::Acc::zero());
        }
        if ops.a_unit_k {
            // Each row is a contiguous run along the depth: gather the rows'
            // runs (widened first unless already the compute type), then
            // write the panel in order.
            let mut srcs: [&[E::Acc]; MAX_MR] = [&[]; MAX_MR];
            if same {
                for (i, s) in srcs.iter_mut().enumerate().take(rows) {
                    let base = ops.a_base + ops.a_rows[ic + r0 + i] + cols[0];
                    let run = &ops.a[base..base + kc];
                    // SAFETY: `E` and `E::Acc` are the same type (same TypeId).
                    *s = unsafe { core::slice::from_raw_parts(run.as_ptr().cast::<E::Acc>(), kc) };
                }
            } else {
                for (i, t) in tmp.chunks_exact_mut(kc).enumerate().take(rows) {
                    let base = ops.a_base + ops.a_rows[ic + r0 + i] + cols[0];
                    widen(&ops.a[base..base + kc], t);
                }
                for (s, t) in srcs.iter_mut().zip(tmp.chunks_exact(kc)).take(rows) {
                    *s = t;
                }
            }
            let srcs = &srcs[..rows];
            for (p, d) in panel.chunks_exact_mut(mr).enumerate() {
                for (d, s) in d.iter_mut().zip(srcs) {
                    *d = s[p];
                }
            }
        } else if ops.a_unit_m {
            // Each depth step is a contiguous run of rows.
            let base = ops.a_base + ops.a_rows[ic + r0];
            for (p, (d, &co)) in panel.chunks_exact_mut(mr).zip(cols).enumerate() {
                prefetch_step_ahead(ops.a, base, cols, p, rows);
                widen(&ops.a[base + co..base + co + rows], &mut d[..rows]);
            }
        } else {
            for i in 0..rows {
                let base = ops.a_base + ops.a_rows[ic + r0 + i];
                for (d, &co) in panel[i..].iter_mut().step_by(mr).zip(cols) {
                    *d = ops.a[base + co].to_acc();
                }
            }
        }
    }
}

/// Packs the first `full` `w`-line panels of a block whose depth steps are
/// contiguous runs of lines (the rows of a transposed `A`, the columns of a
/// row-major `B`): step `p`'s run starts at `x[base + steps[p]]`. A step at
/// a time across all the panels, so each run is read once, in order, and
/// each panel gets a contiguous `w` values per step (panel by panel, every
/// step read a short run far from the last).
#[inline(always)]
fn pack_runs<E: FloatDtype>(
    x: &[E],
    base: usize,
    steps: &[usize],
    full: usize,
    w: usize,
    dst: &mut [E::Acc],
) {
    let kc = steps.len();
    for (p, &at) in steps.iter().enumerate() {
        prefetch_step_ahead(x, base, steps, p, full * w);
        let run = &x[base + at..base + at + full * w];
        for (jp, src) in run.chunks_exact(w).enumerate() {
            widen(src, &mut dst[(jp * kc + p) * w..(jp * kc + p + 1) * w]);
        }
    }
}

/// Packs depth `pc..pc + kc`, columns `j0..j0 + cols` of `B` into one
/// `nr`-column panel stored depth-major (`nr` values per depth step);
/// columns past `cols` are zero.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn pack_b_panel<E: FloatDtype>(
    ops: &Operands<'_, E>,
    pc: usize,
    kc: usize,
    j0: usize,
    cols: usize,
    nr: usize,
    panel: &mut [E::Acc],
) {
    let rows = &ops.b_rows[pc..pc + kc];
    if cols < nr {
        panel.fill(E::Acc::zero());
    }
    if ops.b_unit_n {
        // Each depth step is a contiguous run of columns.
        let base = ops.b_base + ops.b_cols[j0];
        for (p, (d, &ro)) in panel.chunks_exact_mut(nr).zip(rows).enumerate() {
            prefetch_step_ahead(ops.b, base, rows, p, cols);
            widen(&ops.b[base + ro..base + ro + cols], &mut d[..cols]);
        }
    } else if ops.b_unit_k && TypeId::of::<E>() != TypeId::of::<E::Acc>() {
        // Each column is a contiguous run along the depth (a transposed B):
        // widen it in one go, then spread it over the panel.
        let mut tmp = [E::Acc::zero(); KC];
        for j in 0..cols {
            let base = ops.b_base + ops.b_cols[j0 + j] + rows[0];
            widen(&ops.b[base..base + kc], &mut tmp[..kc]);
            for (d, &v) in panel[j..].iter_mut().step_by(nr).zip(&tmp[..kc]) {
                *d = v;
            }
        }
    } else if ops.b_unit_k {
        // The same for a B already in the compute type:
        // read eight columns' runs side by side, so each depth step writes
        // eight adjacent panel values.
        const W: usize = 8;
        for j in (0..cols).step_by(W) {
            let w = W.min(cols - j);
            let mut runs: [&[E]; W] = [&[]; W];
            for (jj, r) in runs.iter_mut().enumerate().take(w) {
                let base = ops.b_base + ops.b_cols[j0 + j + jj] + rows[0];
                *r = &ops.b[base..base + kc];
            }
            if w == W {
                // f32 under AVX: eight depth steps at a time, as 8 x 8
                // blocks transposed in registers; the rest one step at a time.
                let done = transpose_f32_8x8_blocks(&runs, kc, &mut panel[j..], nr);
                for (p, d) in panel.chunks_exact_mut(nr).enumerate().skip(done) {
                    let d = &mut d[j..j + W];
                    for (d, r) in d.iter_mut().zip(&runs) {
                        *d = r[p].to_acc();
                    }
                }
            } else {
                for (p, d) in panel.chunks_exact_mut(nr).enumerate() {
                    for (d, r) in d[j..j + w].iter_mut().zip(&runs[..w]) {
                        *d = r[p].to_acc();
                    }
                }
            }
        }
    } else {
        let cs = &ops.b_cols[j0..j0 + cols];
        // Columns in runs of consecutive offsets (a convolution's unrolled
        // input read from the image: each output row's positions are one
        // run): each depth step copies whole runs.
        let mut runs = [(0usize, 0usize); MAX_RUNS];
        match column_runs(cs, &mut runs) {
            Some(count) if count * MIN_RUN_LEN <= cols => {
                let runs = &runs[..count];
                for (d, &ro) in panel.chunks_exact_mut(nr).zip(rows) {
                    let base = ops.b_base + ro;
                    for &(j, len) in runs {
                        let at = base + cs[j];
                        widen(&ops.b[at..at + len], &mut d[j..j + len]);
                    }
                }
            }
            _ => {
                for (d, &ro) in panel.chunks_exact_mut(nr).zip(rows) {
                    let base = ops.b_base + ro;
                    for (d, &co) in d.iter_mut().zip(cs) {
                        *d = ops.b[base + co].to_acc();
                    }
                }
            }
        }
    }
}

/// Most runs of consecutive column offsets that [`pack_b_panel`] copies
/// run by run (a panel with more takes the value-by-value copy).
const MAX_RUNS: usize = 16;

/// Fewest columns per run, on average, for which [`pack_b_panel`] copies
/// runs (shorter ones, e.g. a strided convolution's, are copied value by
/// value).
const MIN_RUN_LEN: usize = 4;

/// Splits `offsets` into maximal runs of consecutive values, written into
/// `runs` as `(first index, length)`; returns how many, or `None` past
/// `runs.len()`.
///
/// ```text
/// [10, 11, 12, 20, 21, 5] -> (0, 3), (3, 2), (5, 1)
/// ```
pub(super) fn column_runs(offsets: &[usize], runs: &mut [(usize, usize)]) -> Option<usize> {
    let mut count = 0;
    let mut j = 0;
    while j < offsets.len() {
        let mut len = 1;
        while j + len < offsets.len() && offsets[j + len] == offsets[j] + len {
            len += 1;
        }
        *runs.get_mut(count)? = (j, len);
        count += 1;
        j += len;
    }
    Some(count)
}

/// Values ahead along each run that [`transpose_f32_8x8_blocks`] prefetches.
#[cfg(target_arch = "x86_64")]
const TRANSPOSE_PREFETCH: usize = 64;

/// For `f32` on a CPU with AVX: writes depth steps `0..8 * (kc / 8)` of
/// eight runs (`runs[c][p]`: column `c`, depth `p`) into the panel rows
/// `dst[p * nr..][..8]`, eight steps at a time through an 8 x 8 transpose
/// in registers; returns how many steps it wrote (0 for any other type or
/// CPU, which then copy value by value).
#[inline(always)]
fn transpose_f32_8x8_blocks<E: FloatDtype>(
    runs: &[&[E]; 8],
    kc: usize,
    dst: &mut [E::Acc],
    nr: usize,
) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let full = kc / 8 * 8;
        if TypeId::of::<E>() != TypeId::of::<f32>()
            || TypeId::of::<E::Acc>() != TypeId::of::<f32>()
            || full == 0
            || !std::arch::is_x86_feature_detected!("avx")
        {
            return 0;
        }
        assert!(runs.iter().all(|r| r.len() >= full));
        assert!(dst.len() >= (full - 1) * nr + 8);
        let src: [*const f32; 8] = core::array::from_fn(|c| runs[c].as_ptr().cast::<f32>());
        let dst = dst.as_mut_ptr().cast::<f32>();
        for p in (0..full).step_by(8) {
            // The columns of a weight read transposed are usually cold (the
            // optimizer step went through everything since): ask for each
            // run's values a few blocks ahead, as the hardware prefetchers
            // do not for eight interleaved streams.
            if p % 16 == 0 {
                for s in &src {
                    prefetch::<false, _>(s.wrapping_add(p + TRANSPOSE_PREFETCH), 1);
                }
            }
            // SAFETY: AVX is present; each run holds `full` values and `dst`
            // holds panel rows `p..p + 8` (both asserted above); `E` and
            // `E::Acc` are `f32` (same TypeId).
            unsafe { transpose_f32_8x8(src.map(|s| s.add(p)), dst.add(p * nr), nr) };
        }
        full
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (runs, kc, dst, nr);
        0
    }
}

/// `dst[i * ld + c] = src[c][i]` for `i, c < 8`: eight rows of eight read,
/// transposed in registers, eight rows written.
///
/// # Safety
/// The CPU must have AVX; each `src[c]` must be readable for 8 values and
/// `dst` writable at `i * ld + c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
pub(crate) unsafe fn transpose_f32_8x8(src: [*const f32; 8], dst: *mut f32, ld: usize) {
    use core::arch::x86_64::*;
    // SAFETY: the caller's guarantee (unaligned loads and stores).
    unsafe {
        let r = src.map(|s| _mm256_loadu_ps(s));
        // Interleave pairs of rows, then pairs of pairs, then halves.
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
        let rows = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (i, row) in rows.into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(i * ld), row);
        }
    }
}
