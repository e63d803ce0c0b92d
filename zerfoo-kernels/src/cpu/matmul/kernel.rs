//! Micro-kernel descriptors and the run-time choice among them.
//!
//! A micro-kernel multiplies one packed `MR`-row panel of `A` by one packed
//! `NR`-column panel of `B` over a depth `kc` and adds the `MR x NR` result
//! to `C`. Panels hold values of a packed type `P` (the compute type `C`
//! itself, or pairs of `bf16` for the AVX512-BF16 kernel, see
//! [`super::pack::Packing`]). The explicit x86 kernels live in
//! [`super::x86`]; the portable one in [`super::generic`] is used on every
//! other CPU.

use std::any::TypeId;
use std::sync::OnceLock;

use crate::Real;

/// How a micro-kernel leaves its tile (`A`: the compute type).
#[derive(Clone, Copy)]
pub(crate) struct Store<A> {
    /// Write the tile's sums (the old values of `C` are never read, so they
    /// may be uninitialized) instead of adding them to `C`.
    pub overwrite: bool,
    /// Unless null (and only for a kernel with [`Kernel::rounds`]): round
    /// the result (the sums, plus the old `C` unless `overwrite`) to the
    /// kernel's 16-bit type into this tile, row length `ldr`, and leave `C`
    /// alone.
    pub round: *mut u16,
    /// Row length of the `round` tile.
    pub ldr: usize,
    /// Unless null: the tile's `NR` column biases, added to every row after
    /// the sums (and the old `C`): `c = (c + Σ) + bias`, as an add after
    /// the product rounds it. Set only on a tile's last depth block.
    pub bias: *const A,
}

impl<A> Store<A> {
    /// Into `C`: written (`overwrite`) or added to, no bias.
    pub(crate) fn c(overwrite: bool) -> Self {
        Store {
            overwrite,
            round: core::ptr::null_mut(),
            ldr: 0,
            bias: core::ptr::null(),
        }
    }
}

/// `c[i * ldc + j] += Σ_p A[i, p] * B[p, j]` for the full `MR x NR` tile,
/// depth `p < kc`, or as `st` says (see [`Store`]). The panels store
/// `g = kc.div_ceil(G)` groups of `G` depth values (`G = 1`: `a[q * MR + i]`
/// is `A[i, q]`; `G = 2`: `a[q * MR + i]` holds `A[i, 2q]` and
/// `A[i, 2q + 1]`), likewise `b[q * NR + j]`.
///
/// # Safety
/// `a` must be readable for `g * MR` values, `b` for `g * NR` values, and
/// `c` writable (and readable unless `overwrite`) at every `i * ldc + j`
/// with `i < MR`, `j < NR` (only readable when rounding, and then only
/// unless `overwrite`), `st.round` (if not null) writable at every
/// `i * st.ldr + j`, and `st.bias` (if not null) readable for `NR` values.
/// The CPU must support the kernel's target features.
pub(crate) type MicroFn<P, C> =
    unsafe fn(kc: usize, a: *const P, b: *const P, c: *mut C, ldc: usize, st: Store<C>);

/// Like [`MicroFn`] but reads `A` in place: `a[i * lda + p]` for row `i`,
/// depth `p` (a row-major `A` needs no packing). For pairs (`G = 2`), `a`
/// points at the `bf16` input values (`lda` counts them), read two at a time
/// without alignment, and `kc` must be even.
///
/// # Safety
/// `a` must be readable at `i * lda + p` (input values) for `i < MR`,
/// `p < kc`; otherwise as for [`MicroFn`].
pub(crate) type DirectFn<P, C> =
    unsafe fn(kc: usize, a: *const P, lda: usize, b: *const P, c: *mut C, ldc: usize, st: Store<C>);

/// Like [`MicroFn`] but reads `A` in place where each depth step is a run
/// of adjacent rows: `A[i, p]` is `a[p * step + i]` (a row-major operand
/// used transposed, e.g. the activations `Xᵀ` of a weight gradient
/// `Xᵀ · dY`, whose packing would be a strided copy). Only for `G = 1`.
///
/// # Safety
/// `a` must be readable at `p * step + i` for `i < MR`, `p < kc`; otherwise
/// as for [`MicroFn`].
pub(crate) type StepsFn<P, C> = unsafe fn(
    kc: usize,
    a: *const P,
    step: usize,
    b: *const P,
    c: *mut C,
    ldc: usize,
    st: Store<C>,
);

/// The first `rows` (fewer than `MR`) rows of [`MicroFn`]'s tile, for the
/// last row panel of a product: `c` (an `MR x NR` scratch tile, row length
/// `NR`) gets those rows' sums, written (not added), with the same bits
/// the full kernel would give them; the missing rows' products are never
/// computed (a 128-row product in 14-row panels computed 140 rows).
///
/// # Safety
/// As for [`MicroFn`] with `overwrite`; `1 <= rows < MR`.
pub(crate) type EdgeFn<P, C> =
    unsafe fn(rows: usize, kc: usize, a: *const P, b: *const P, c: *mut C);

/// A micro-kernel and its register-tile shape: panels of packed type `P`,
/// results in the compute type `C`.
#[derive(Clone, Copy)]
pub(crate) struct Kernel<P, C = P> {
    /// Rows of the register tile.
    pub mr: usize,
    /// Columns of the register tile.
    pub nr: usize,
    /// The kernel itself.
    pub f: MicroFn<P, C>,
    /// The same kernel reading `A` in place (only where `P` is the input type).
    pub fd: Option<DirectFn<P, C>>,
    /// The same kernel reading a transposed `A` in place (see [`StepsFn`]),
    /// where that is faster than packing it.
    pub ft: Option<StepsFn<P, C>>,
    /// The same kernel for fewer rows, if it has one.
    pub edge: Option<EdgeFn<P, C>>,
    /// Whether the in-place kernel `fd` keeps its speed when `A`'s rows are
    /// a multiple of 2 KiB apart (they then share a few L1 sets): true for
    /// the assembly depth loops; the others read such an `A` packed.
    pub any_pitch: bool,
    /// The 16-bit type the kernel can round its tile to, if any
    /// ([`Store::round`]): `bf16` for the AVX512-BF16 kernels, `f16` for
    /// the AVX-512 `f32` kernel.
    pub rounds: Option<crate::DType>,
    /// Run the whole product on AMX tiles instead (see `super::amx`); the
    /// other fields then describe the AVX512-BF16 kernel it stands in for.
    pub amx: bool,
    /// A short name (for benchmarks and tests).
    #[allow(dead_code)]
    pub name: &'static str,
}

/// The widest tile any kernel uses (`MR * NR`), for edge-tile scratch space.
pub(crate) const MAX_TILE: usize = 14 * 32;

/// The best `f32` kernel for this CPU (chosen once).
pub(crate) fn f32_kernel() -> Kernel<f32> {
    static K: OnceLock<Kernel<f32>> = OnceLock::new();
    *K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(k) = super::x86::avx512_f32() {
                return k;
            }
            if let Some(k) = super::x86::avx2_f32() {
                return k;
            }
        }
        super::generic::f32_kernel()
    })
}

/// The best `f64` kernel for this CPU (chosen once).
pub(crate) fn f64_kernel() -> Kernel<f64> {
    static K: OnceLock<Kernel<f64>> = OnceLock::new();
    *K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(k) = super::x86::avx512_f64() {
                return k;
            }
            if let Some(k) = super::x86::avx2_f64() {
                return k;
            }
        }
        super::generic::f64_kernel()
    })
}

/// The AVX512-BF16 kernels on `bf16` pairs this CPU can run (checked once;
/// none without AVX512-BF16).
pub(crate) fn bf16_kernels() -> &'static [Kernel<u32, f32>] {
    static K: OnceLock<Vec<Kernel<u32, f32>>> = OnceLock::new();
    K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if let Some(k) = super::x86::avx512_bf16() {
            return k.to_vec();
        }
        Vec::new()
    })
}

/// The AVX512-BF16 kernel for an `m x n` result, if this CPU has one: the
/// tile that pads the result least (14 x 32 unless 8 x 48 pads less, e.g.
/// 512 x 384). Every tile sums each element in the same order, so the
/// choice never changes the bits.
pub(crate) fn bf16_kernel(m: usize, n: usize) -> Option<Kernel<u32, f32>> {
    let padded = |k: &Kernel<u32, f32>| m.div_ceil(k.mr) * k.mr * n.div_ceil(k.nr) * k.nr;
    let ks = bf16_kernels();
    let best = ks
        .iter()
        .copied()
        .reduce(|best, k| if padded(&k) < padded(&best) { k } else { best })?;
    #[cfg(target_arch = "x86_64")]
    if super::amx::available() {
        return Some(Kernel {
            amx: true,
            name: "amx-bf16",
            ..best
        });
    }
    Some(best)
}

/// The best kernel for the compute type `A` (`f32` or `f64`).
pub(crate) fn kernel<A: Real>() -> Kernel<A> {
    if TypeId::of::<A>() == TypeId::of::<f32>() {
        let k = f32_kernel();
        // SAFETY: `A` is `f32` (same TypeId), so `Kernel<f32>` is `Kernel<A>`.
        unsafe { core::mem::transmute_copy::<Kernel<f32>, Kernel<A>>(&k) }
    } else {
        assert_eq!(
            TypeId::of::<A>(),
            TypeId::of::<f64>(),
            "gemm: compute type must be f32 or f64"
        );
        let k = f64_kernel();
        // SAFETY: `A` is `f64` (checked above), so `Kernel<f64>` is `Kernel<A>`.
        unsafe { core::mem::transmute_copy::<Kernel<f64>, Kernel<A>>(&k) }
    }
}
