//! The portable micro-kernel: fixed-size accumulator arrays that LLVM keeps
//! in registers and vectorizes for whatever the target offers.

use super::kernel::{Kernel, Store};
use crate::Real;

/// The portable tile: one rank-1 update per depth step into `MR x NR`
/// accumulators, then added to `C`.
///
/// # Safety
/// As for [`super::kernel::MicroFn`].
pub(crate) unsafe fn micro<A: Real, const MR: usize, const NR: usize>(
    kc: usize,
    a: *const A,
    b: *const A,
    c: *mut A,
    ldc: usize,
    st: Store<A>,
) {
    // SAFETY: the caller guarantees `kc * MR` readable values at `a` and `kc * NR` at `b`.
    let (ap, bp) = unsafe {
        (
            core::slice::from_raw_parts(a, kc * MR),
            core::slice::from_raw_parts(b, kc * NR),
        )
    };
    let mut acc = [[A::zero(); NR]; MR];
    for (a, b) in ap.chunks_exact(MR).zip(bp.chunks_exact(NR)) {
        let a: &[A; MR] = a.try_into().expect("panel of MR");
        let b: &[A; NR] = b.try_into().expect("panel of NR");
        for i in 0..MR {
            let ai = a[i];
            for j in 0..NR {
                acc[i][j] += ai * b[j];
            }
        }
    }
    // SAFETY: the caller's tile and bias (see `MicroFn`).
    unsafe { store_tile(&acc, c, ldc, st) };
}

/// The portable tile reading `A` in place (row `i`, depth `p` at `a[i * lda + p]`).
///
/// # Safety
/// As for [`super::kernel::DirectFn`].
pub(crate) unsafe fn micro_direct<A: Real, const MR: usize, const NR: usize>(
    kc: usize,
    a: *const A,
    lda: usize,
    b: *const A,
    c: *mut A,
    ldc: usize,
    st: Store<A>,
) {
    // SAFETY: the caller guarantees `kc * NR` readable values at `b`.
    let bp = unsafe { core::slice::from_raw_parts(b, kc * NR) };
    let mut acc = [[A::zero(); NR]; MR];
    for (p, b) in bp.chunks_exact(NR).enumerate() {
        let b: &[A; NR] = b.try_into().expect("panel of NR");
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: the caller guarantees rows `0..MR`, depth `0..kc` of A.
            let ai = unsafe { *a.add(i * lda + p) };
            for j in 0..NR {
                acc[j] += ai * b[j];
            }
        }
    }
    // SAFETY: the caller's tile and bias (see `MicroFn`).
    unsafe { store_tile(&acc, c, ldc, st) };
}

/// Writes (or adds) the accumulators into the tile at `c`, then adds the
/// column biases, if any (see [`Store`]).
///
/// # Safety
/// As for [`super::kernel::MicroFn`].
#[inline(always)]
unsafe fn store_tile<A: Real, const MR: usize, const NR: usize>(
    acc: &[[A; NR]; MR],
    c: *mut A,
    ldc: usize,
    st: Store<A>,
) {
    for (i, row) in acc.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            // SAFETY: `i < MR`, `j < NR`: inside the tile (and the bias
            // row) the caller guarantees.
            unsafe {
                let c = c.add(i * ldc + j);
                let v = if st.overwrite { v } else { *c + v };
                let v = if st.bias.is_null() {
                    v
                } else {
                    v + *st.bias.add(j)
                };
                c.write(v);
            }
        }
    }
}

/// The portable `f32` kernel (4 x 8: as many accumulators as 16 SSE registers hold).
pub(crate) fn f32_kernel() -> Kernel<f32> {
    Kernel {
        mr: 4,
        nr: 8,
        f: micro::<f32, 4, 8>,
        fd: Some(micro_direct::<f32, 4, 8>),
        ft: None,
        edge: None,
        any_pitch: false,
        rounds: None,
        amx: false,
        name: "generic-4x8",
    }
}

/// The portable `f64` kernel (4 x 4).
pub(crate) fn f64_kernel() -> Kernel<f64> {
    Kernel {
        mr: 4,
        nr: 4,
        f: micro::<f64, 4, 4>,
        fd: Some(micro_direct::<f64, 4, 4>),
        ft: None,
        edge: None,
        any_pitch: false,
        rounds: None,
        amx: false,
        name: "generic-4x4",
    }
}
