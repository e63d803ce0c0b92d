//! Matrix multiplication: a packed, cache-blocked GEMM with explicit SIMD
//! micro-kernels.
//!
//! Operands are read through any [`Layout`] (a transposed or sliced view is
//! just other strides, never a copy). Blocks of `A` (`MC x KC`) and `B`
//! (`KC x NC`) are packed into contiguous micro-panels in the compute type
//! `E::Acc` (low-precision inputs are widened while packing, see
//! [`pack`](self)), a register-blocked micro-kernel multiplies an `MR`-row
//! panel of `A` by an `NR`-column panel of `B`, and the result is
//! accumulated in `E::Acc` and rounded once on store.
//!
//! The micro-kernel is chosen once at run time: AVX-512F (14 x 32 for
//! `f32`, 14 x 16 for `f64`, with 1- to 13-row variants for a product's
//! last row panel), else AVX2+FMA (6 x 16 / 6 x 8), else a portable one. A
//! row-major `A` in the compute type is read in place (rows a multiple of 4
//! KiB apart, which share L1 sets, are first copied to a padded pitch: each
//! task its own rows, or all of `A` once when `B` spans several column
//! blocks), and so is a transposed one (each depth step a run of adjacent
//! rows: a weight gradient's `Xᵀ`; AVX-512 kernels); a row-major
//! `f16`/`bf16`/f8 `A` is widened row by row into
//! scratch and read the same way; `f16` results are rounded by the AVX-512
//! kernel as it stores them. Every output element is summed in the same
//! order whatever the thread count, so results are deterministic. Small
//! problems run on the calling thread; large ones split row (and if needed
//! column) blocks, the columns alone (when `A` is read in place and the
//! product is not tall), or the batch, over rayon.
//!
//! `bf16` on a CPU with AVX512-BF16 skips the widening: panels keep the
//! `bf16` values, two consecutive depth values per 32-bit lane, and the
//! kernel issues `vdpbf16ps` (two products per `f32` lane: twice the
//! multiply-adds of an `f32` FMA per instruction). Its tile is 14 x 32, or
//! 8 x 48 where that pads the result less (a 384- or 768-column product);
//! depth blocks are up to `KC_BF16` (1024) deep, balanced; a row-major `A`
//! is read in place (one 32-bit pair per row and step; rows a multiple of 4
//! KiB apart are copied first, as for `f32`); and the last depth block is
//! rounded to `bf16` by the kernel itself (`vcvtneps2bf16`, bit for bit the
//! software rounding; a vector holding a subnormal takes the latter).
//! Accumulation is still `f32` and the result is rounded once, to nearest
//! even, but `vdpbf16ps` reads denormal inputs as zero, flushes
//! denormal results to zero and adds the two products of a pair in its own
//! order (each product is exact in `f32`; each add rounds), so the bits can
//! differ from the widening path by `f32` summation error (far inside
//! `bf16` tolerance) and between CPU implementations. They do not depend on
//! the thread count or the tile.

mod activation;
#[cfg(target_arch = "x86_64")]
mod amx;
mod direct;
mod generic;
mod kernel;
mod pack;
mod skinny;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;

use core::mem::MaybeUninit;
use std::any::TypeId;
use std::borrow::Cow;

use super::threads::{for_each_chunk_mut, run_tasks, SyncPtr};

use crate::cpu::simd::vectorized;

use crate::{bf16, DType, FloatDtype, Layout, Real};
use kernel::{DirectFn, Kernel, StepsFn, Store, MAX_TILE};
#[cfg(target_arch = "x86_64")]
pub(crate) use pack::transpose_f32_8x8;
pub(crate) use pack::widen;
use pack::{with_buf, Bf16Pairs, Packing, Side, Widen, A_BUF, B_BUF, PAD_BUF};

pub use activation::{gemm_batched_act_grad, gemm_batched_bias_act, gemm_batched_bias_residual};

/// Depth of a packed block (the `K` extent kept in cache at once).
pub(crate) const KC: usize = 512;
/// Depth of a packed block of `bf16` pairs (half the bytes per value).
pub(crate) const KC_BF16: usize = 1024;
/// Rows of a packed `A` block at most (sized for L2).
const MC: usize = 168;
/// Columns of a packed `B` block at most (a multiple of every `NR`).
const NC: usize = 3072;
/// Bytes of a packed `B` block at most: it should stay in a core's L2
/// (1 MiB per core on the Zen 4, so the block fills it; half of that was
/// no faster) while the tiles stream it once per `MR` rows of `A`. The
/// block's column count follows from its depth (f32 at depth 512: 512
/// columns).
const B_BLOCK_BYTES: usize = 1 << 20;
/// Largest `B` (`K x N` values) that each thread packs a private copy of
/// when the threads split the rows of a product whose `A` is read in place.
const PRIVATE_B_MAX: usize = 1 << 17;
/// Largest result (`M x N` values) whose depth blocks the threads share out
/// (see [`blocked`]); each block past the first needs a result-sized buffer.
const SPLIT_DEPTH_MAX_MN: usize = 1 << 17;
/// Likewise for results up to this size, when the depth blocks divide
/// evenly among the threads (2 threads, gpt6's weight gradient
/// 384 x 2048 x 384, 4 blocks: 272 -> 349 GFLOP/s; 512 x 1536 x 384, 3
/// blocks, is 24% slower split by depth than by columns).
const SPLIT_DEPTH_EVEN_MAX_MN: usize = 1 << 18;
/// A product that [`blocked`] reads `A` of in place, deeper than one
/// block, with fewer row panels a thread than this, splits its columns
/// instead of its rows among the threads.
const COARSE_PANELS: usize = 32;
/// Rows of the result per task when the depth blocks' parts are added up.
const SPLIT_DEPTH_ROWS: usize = 32;
/// Below this many multiply-adds in total a product runs on the calling thread.
pub const PAR_MACS: usize = 1 << 20;

/// The fewest multiply-adds that a product of `m` rows splits among threads:
/// [`PAR_MACS`], or [`skinny::PAR_MACS`] for the few rows that read `B` in
/// place.
fn par_macs(m: usize) -> usize {
    if m <= skinny::MAX_ROWS {
        skinny::PAR_MACS
    } else {
        PAR_MACS
    }
}

/// `A · B` for 2-D layouts: `la` is `[M, K]`, `lb` is `[K, N]`, any strides.
/// Returns the `[M, N]` product, contiguous row-major.
///
/// ```
/// use zerfoo_kernels::{cpu::matmul::gemm, Layout};
/// let a = [1.0f32, 2.0, 3.0, 4.0]; // [[1, 2], [3, 4]]
/// let l = Layout::contiguous(&[2, 2]);
/// let mut lt = l;
/// lt.swap_axes(0, 1); // the transpose, as a view
/// assert_eq!(gemm(&a, &l, &a, &lt), [5.0, 11.0, 11.0, 25.0]);
/// ```
pub fn gemm<E: FloatDtype>(a: &[E], la: &Layout, b: &[E], lb: &Layout) -> Vec<E> {
    assert_eq!(la.rank(), 2, "gemm: lhs must be 2-D, got {:?}", la.shape());
    assert_eq!(lb.rank(), 2, "gemm: rhs must be 2-D, got {:?}", lb.shape());
    gemm_batched(a, la, b, lb)
}

/// A batch of products: `la` is `[..batch, M, K]`, `lb` is `[..batch, K, N]`
/// with the same batch dims. The batch strides say where each pair lives; a
/// stride of 0 repeats an operand across the batch (broadcast). Returns
/// `[..batch, M, N]`, contiguous row-major.
///
/// ```
/// use zerfoo_kernels::{cpu::matmul::gemm_batched, Layout};
/// // two 1x2 rows times one shared 2x1 column (batch stride 0)
/// let a = [1.0f64, 2.0, 3.0, 4.0];
/// let b = [10.0f64, 1.0];
/// let la = Layout::contiguous(&[2, 1, 2]);
/// let lb = Layout::new(&[2, 2, 1], &[0, 1, 1], 0);
/// assert_eq!(gemm_batched(&a, &la, &b, &lb), [12.0, 34.0]);
/// ```
pub fn gemm_batched<E: FloatDtype>(a: &[E], la: &Layout, b: &[E], lb: &Layout) -> Vec<E> {
    gemm_batched_bias(a, la, b, lb, None)
}

/// [`gemm_batched`] plus a bias of `N` values added to every row of every
/// product, in the kernels' store (no separate pass over the result):
/// `(A · B)[i, j] + bias[j]`, the sum rounded first in the compute type,
/// as an add after the product would, then the whole rounded once.
///
/// ```
/// use zerfoo_kernels::{cpu::matmul::gemm_batched_bias, Layout};
/// let a = [1.0f32, 2.0, 3.0, 4.0]; // [[1, 2], [3, 4]]
/// let l = Layout::contiguous(&[2, 2]);
/// let y = gemm_batched_bias(&a, &l, &a, &l, Some(&[10.0, 20.0]));
/// assert_eq!(y, [17.0, 30.0, 25.0, 42.0]);
/// ```
///
/// # Panics
/// If the bias does not have `N` values (or as [`gemm_batched`] does).
pub fn gemm_batched_bias<E: FloatDtype>(
    a: &[E],
    la: &Layout,
    b: &[E],
    lb: &Layout,
    bias: Option<&[E]>,
) -> Vec<E> {
    let bias = acc_bias(bias, lb);
    let bias = bias.as_deref();
    native_bf16(a, la, b, lb, |a, b, kern| {
        // SAFETY: this runs only for `bf16`, whose compute type is `f32`.
        let bias =
            bias.map(|b| unsafe { core::slice::from_raw_parts(b.as_ptr().cast::<f32>(), b.len()) });
        gemm_batched_bias_with::<_, Bf16Pairs>(a, la, b, lb, bias, kern)
    })
    .or_else(|| small_in_place(a, la, b, lb, bias))
    .unwrap_or_else(|| {
        gemm_batched_bias_with::<_, Widen>(a, la, b, lb, bias, kernel::kernel::<E::Acc>())
    })
}

/// The column count `N` of a product whose right operand is `lb`
/// (`[.., K, N]`; 0 for a malformed one, which the product reports).
pub(crate) fn product_columns(lb: &Layout) -> usize {
    lb.rank().checked_sub(1).map_or(0, |i| lb.shape()[i])
}

/// The shape `[..batch, M, N]` of the product of `la` and `lb` (some shape
/// for malformed operands, which the product reports; never a panic).
pub(crate) fn result_shape(la: &Layout, lb: &Layout) -> Vec<usize> {
    let mut shape = la.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = product_columns(lb);
    }
    shape
}

/// `bias` (checked to have a value per column of `lb`) in the compute
/// type: for f32 and f64 the values as they are, else widened.
///
/// # Panics
/// If the bias does not have `N` values.
fn acc_bias<'a, E: FloatDtype>(bias: Option<&'a [E]>, lb: &Layout) -> Option<Cow<'a, [E::Acc]>> {
    let bias = bias?;
    let n = product_columns(lb);
    assert_eq!(
        bias.len(),
        n,
        "gemm_batched_bias: the bias needs one value per column"
    );
    Some(if matches!(E::DTYPE, DType::F32 | DType::F64) {
        // SAFETY: for f32 and f64 the compute type is the type itself.
        Cow::Borrowed(unsafe {
            core::slice::from_raw_parts(bias.as_ptr().cast::<E::Acc>(), bias.len())
        })
    } else {
        Cow::Owned(bias.iter().map(|&v| v.to_acc()).collect())
    })
}

/// Runs `f` on the operands as `bf16` with the AVX512-BF16 kernel for
/// their result's shape (`[.., M, K]` by `[.., K, N]`), where `E` is `bf16`
/// and the CPU has such kernels; `None` otherwise.
fn native_bf16<E: FloatDtype>(
    a: &[E],
    la: &Layout,
    b: &[E],
    lb: &Layout,
    f: impl FnOnce(&[bf16], &[bf16], Kernel<u32, f32>) -> Vec<bf16>,
) -> Option<Vec<E>> {
    if TypeId::of::<E>() != TypeId::of::<bf16>() {
        return None;
    }
    // (Shapes are checked later; a malformed one just picks some kernel.)
    let dim = |l: &Layout, back: usize| l.rank().checked_sub(back).map_or(0, |i| l.shape()[i]);
    let kern = kernel::bf16_kernel(dim(la, 2), dim(lb, 1))?;
    // SAFETY: `E` is `bf16` (same TypeId).
    let cast = |x: &[E]| unsafe { core::slice::from_raw_parts(x.as_ptr().cast::<bf16>(), x.len()) };
    let mut out = core::mem::ManuallyDrop::new(f(cast(a), cast(b), kern));
    // SAFETY: `E` is `bf16`: the same layout, so the vector is reused as is.
    Some(unsafe { Vec::from_raw_parts(out.as_mut_ptr().cast::<E>(), out.len(), out.capacity()) })
}

/// [`gemm_batched`] with a given packing and micro-kernel.
#[cfg(test)]
fn gemm_batched_with<E: FloatDtype, K: Packing<E>>(
    a: &[E],
    la: &Layout,
    b: &[E],
    lb: &Layout,
    kern: Kernel<K::P, E::Acc>,
) -> Vec<E> {
    gemm_batched_bias_with::<E, K>(a, la, b, lb, None, kern)
}

/// [`gemm_batched_bias`] with a given packing and micro-kernel; `bias` (if
/// any) holds the `N` biases in the compute type.
fn gemm_batched_bias_with<E: FloatDtype, K: Packing<E>>(
    a: &[E],
    la: &Layout,
    b: &[E],
    lb: &Layout,
    bias: Option<&[E::Acc]>,
    kern: Kernel<K::P, E::Acc>,
) -> Vec<E> {
    let p = Problem::new(la, lb, "gemm_batched");
    let (m, n, k) = (p.m, p.n, p.k);
    let batch = p.a_bases.len();
    if batch * m * n == 0 || k == 0 {
        // An empty depth sums to 0: the result is the bias (or 0) per row.
        return match bias {
            Some(bias) if n > 0 => {
                let row: Vec<E> = bias.iter().map(|&v| E::from_acc(v)).collect();
                row.repeat(batch * m)
            }
            _ => vec![E::default(); batch * m * n],
        };
    }
    if batch > 1 && p.b_bases.iter().all(|&o| o == p.b_bases[0]) {
        return shared_product::<E, K>(a, b, &p, bias, kern, None);
    }
    let mut out_buf: Vec<E> = Vec::with_capacity(batch * m * n);
    let out = &mut out_buf.spare_capacity_mut()[..batch * m * n];
    let threads = rayon::current_num_threads();
    let (a_rows, a_cols) = (offsets(m, p.sam), offsets(k, p.sak));
    let (b_rows, b_cols) = (offsets(k, p.sbk), offsets(n, p.sbn));
    let macs = m * n * k;
    let one = |bi: usize, out: &mut [MaybeUninit<E>], threads: usize| {
        let ops = Operands::new(
            a,
            p.a_bases[bi],
            &a_rows,
            &a_cols,
            b,
            p.b_bases[bi],
            &b_rows,
            &b_cols,
        );
        product::<E, K>(&ops, out, threads, bias, kern, None);
    };
    if macs * batch < par_macs(m) || threads == 1 {
        for (bi, o) in out.chunks_exact_mut(m * n).enumerate() {
            one(bi, o, 1);
        }
    } else if batch > 1 && (macs < par_macs(m) || batch >= threads) {
        for_each_chunk_mut(out, m * n, |(bi, o)| one(bi, o, 1));
    } else {
        for (bi, o) in out.chunks_exact_mut(m * n).enumerate() {
            one(bi, o, threads);
        }
    }
    // SAFETY: each batch's product wrote all of its `m * n` values.
    unsafe { out_buf.set_len(batch * m * n) };
    out_buf
}

/// Largest result (`M x N` values) that [`small_in_place`] computes whatever
/// its depth (below [`par_macs`] in all), and largest product
/// (multiply-adds) it computes whatever its shape.
const SMALL_MAX_MN: usize = 4096;
const SMALL_MAX_MACS: usize = 1 << 18;

/// A small `f32` product (each item up to [`SMALL_MAX_MN`] results or
/// [`SMALL_MAX_MACS`] multiply-adds, fewer than [`par_macs`] in all) with
/// a row-major `B`, through the in-place AVX-512 tiles of [`direct`]: no
/// offset tables, no packing, no scratch. For so few rows packing `B` does
/// not pay (1 thread: 64 x 64 x 32 87 -> 142 GFLOP/s, 32 x 32 x 32 53 ->
/// 110, 64 x 256 x 64 121 -> 138; 128 x 128 x 128 is faster packed). The
/// same sums in the same order as the packed kernels (depth within one
/// block), so the same bits. `None` (nothing done) for any other product
/// or CPU.
fn small_in_place<E: FloatDtype>(
    a: &[E],
    la: &Layout,
    b: &[E],
    lb: &Layout,
    bias: Option<&[E::Acc]>,
) -> Option<Vec<E>> {
    if TypeId::of::<E>() != TypeId::of::<f32>() {
        return None;
    }
    let p = Problem::new(la, lb, "gemm_batched");
    let (m, n, k, batch) = (p.m, p.n, p.k, p.a_bases.len());
    if batch * m * n * k == 0
        || p.sbn != 1
        || !(m * n <= SMALL_MAX_MN || m * n * k <= SMALL_MAX_MACS)
        || batch * m * n * k >= par_macs(m)
    {
        return None;
    }
    // SAFETY: `E` and `E::Acc` are `f32` here (same TypeId; `f32` is its
    // own compute type).
    let (a, b, bias) = unsafe {
        (
            core::slice::from_raw_parts(a.as_ptr().cast::<f32>(), a.len()),
            core::slice::from_raw_parts(b.as_ptr().cast::<f32>(), b.len()),
            bias.map(|v| core::slice::from_raw_parts(v.as_ptr().cast::<f32>(), v.len())),
        )
    };
    let mut out = vec![0f32; batch * m * n];
    for (bi, c) in out.chunks_exact_mut(m * n).enumerate() {
        let (a, b) = (&a[p.a_bases[bi]..], &b[p.b_bases[bi]..]);
        assert!(
            (m - 1) * p.sam + (k - 1) * p.sak < a.len(),
            "gemm_batched: lhs too short"
        );
        assert!(
            (k - 1) * p.sbk + n - 1 < b.len(),
            "gemm_batched: rhs too short"
        );
        // SAFETY: the bounds were checked just above.
        if !unsafe { direct::try_gemm_f32((m, n, k), a, (p.sam, p.sak), b, (p.sbk, 1), c, true) } {
            return None;
        }
        if let Some(bias) = bias {
            // As the kernels do: the bias after the whole sum.
            for row in c.chunks_exact_mut(n) {
                row.iter_mut().zip(bias).for_each(|(c, &b)| *c += b);
            }
        }
    }
    let mut out = core::mem::ManuallyDrop::new(out);
    // SAFETY: `E` is `f32` (same TypeId): the vector's own allocation,
    // length and capacity, of the same type.
    Some(unsafe { Vec::from_raw_parts(out.as_mut_ptr().cast::<E>(), out.len(), out.capacity()) })
}

/// `[0, stride, 2·stride, ..]`, `n` offsets: where each row or column of an
/// operand starts.
fn offsets(n: usize, stride: usize) -> Vec<usize> {
    batch_offsets(&[0], n, stride)
}

/// `n` offsets `stride` apart from each base in turn: the rows (or depth
/// steps) of every batch item, one after another.
fn batch_offsets(bases: &[usize], n: usize, stride: usize) -> Vec<usize> {
    bases
        .iter()
        .flat_map(|&o| (0..n).map(move |i| o + i * stride))
        .collect()
}

/// One `[M, N]` product (plus `bias` per row, if any) as a new vector,
/// threaded when it has at least [`PAR_MACS`] multiply-adds. Needs `K > 0`.
fn product_vec<E: FloatDtype, K: Packing<E>>(
    ops: &Operands<'_, E>,
    bias: Option<&[E::Acc]>,
    kern: Kernel<K::P, E::Acc>,
    finish: Option<Finish<'_, E::Acc>>,
) -> Vec<E> {
    let (m, n, k) = (ops.a_rows.len(), ops.b_cols.len(), ops.a_cols.len());
    let threads = if m * n * k >= par_macs(m) {
        rayon::current_num_threads()
    } else {
        1
    };
    let mut out = Vec::with_capacity(m * n);
    product::<E, K>(
        ops,
        &mut out.spare_capacity_mut()[..m * n],
        threads,
        bias,
        kern,
        finish,
    );
    // SAFETY: `product` wrote all `m * n` values.
    unsafe { out.set_len(m * n) };
    out
}

/// [`gemm_batched_bias`] for `f32`/`f64` operands whose batch shares one
/// `B` (a layer's weight) or has one item, with `finish` called on each
/// part of the result as soon as it is final, while it is still in cache
/// (see [`Finish`]; `c` there is the returned vector, in `E`).
/// `None` (nothing computed) for other operands, or an empty product: the
/// caller then runs the steps one after another.
///
/// # Panics
/// As [`gemm_batched_bias`] does.
pub(crate) fn gemm_shared_finished<E: FloatDtype>(
    a: &[E],
    la: &Layout,
    b: &[E],
    lb: &Layout,
    bias: Option<&[E]>,
    finish: Finish<'_, E::Acc>,
) -> Option<Vec<E>> {
    if !matches!(E::DTYPE, DType::F32 | DType::F64) {
        return None;
    }
    let p = Problem::new(la, lb, "gemm_batched");
    if p.a_bases.len() * p.m * p.n == 0 || p.k == 0 || p.b_bases.iter().any(|&o| o != p.b_bases[0])
    {
        return None;
    }
    let bias = acc_bias(bias, lb);
    let kern = kernel::kernel::<E::Acc>();
    Some(shared_product::<E, Widen>(
        a,
        b,
        &p,
        bias.as_deref(),
        kern,
        Some(finish),
    ))
}

/// The product of a batch whose items all share one `B` (a layer's weight)
/// as a single `[batch * M, K] x [K, N]` product: `B` is packed once
/// instead of per item. `finish` as [`product`] takes it.
fn shared_product<E: FloatDtype, K: Packing<E>>(
    a: &[E],
    b: &[E],
    p: &Problem,
    bias: Option<&[E::Acc]>,
    kern: Kernel<K::P, E::Acc>,
    finish: Option<Finish<'_, E::Acc>>,
) -> Vec<E> {
    let a_rows = batch_offsets(&p.a_bases, p.m, p.sam);
    let (a_cols, b_rows, b_cols) = (
        offsets(p.k, p.sak),
        offsets(p.k, p.sbk),
        offsets(p.n, p.sbn),
    );
    let ops = Operands::new(a, 0, &a_rows, &a_cols, b, p.b_bases[0], &b_rows, &b_cols);
    product_vec::<E, K>(&ops, bias, kern, finish)
}

/// The sum over the batch of the products: `la` is `[..batch, M, K]`, `lb`
/// is `[..batch, K, N]`; returns `Σ_batch A_b · B_b` as `[M, N]`.
///
/// This is one GEMM whose depth runs over `(batch, K)`: the gradient of a
/// right operand that was broadcast over the batch.
pub fn gemm_batch_sum<E: FloatDtype>(a: &[E], la: &Layout, b: &[E], lb: &Layout) -> Vec<E> {
    native_bf16(a, la, b, lb, |a, b, kern| {
        gemm_batch_sum_with::<_, Bf16Pairs>(a, la, b, lb, kern)
    })
    .unwrap_or_else(|| gemm_batch_sum_with::<_, Widen>(a, la, b, lb, kernel::kernel::<E::Acc>()))
}

/// [`gemm_batch_sum`] with a given packing and micro-kernel.
fn gemm_batch_sum_with<E: FloatDtype, K: Packing<E>>(
    a: &[E],
    la: &Layout,
    b: &[E],
    lb: &Layout,
    kern: Kernel<K::P, E::Acc>,
) -> Vec<E> {
    let p = Problem::new(la, lb, "gemm_batch_sum");
    let (m, n, k) = (p.m, p.n, p.k);
    let kk = p.a_bases.len() * k;
    if m * n == 0 || kk == 0 {
        return vec![E::default(); m * n];
    }
    let (a_rows, a_cols) = (offsets(m, p.sam), batch_offsets(&p.a_bases, k, p.sak));
    let (b_rows, b_cols) = (batch_offsets(&p.b_bases, k, p.sbk), offsets(n, p.sbn));
    let ops = Operands::new(a, 0, &a_rows, &a_cols, b, 0, &b_rows, &b_cols);
    product_vec::<E, K>(&ops, None, kern, None)
}

/// Dims, inner strides and per-batch base offsets of a batched product.
struct Problem {
    m: usize,
    n: usize,
    k: usize,
    sam: usize,
    sak: usize,
    sbk: usize,
    sbn: usize,
    a_bases: Vec<usize>,
    b_bases: Vec<usize>,
}

impl Problem {
    fn new(la: &Layout, lb: &Layout, name: &str) -> Self {
        let (ra, rb) = (la.rank(), lb.rank());
        assert!(
            ra >= 2 && ra == rb,
            "{name}: operands must have the same rank >= 2, got {:?} and {:?}",
            la.shape(),
            lb.shape()
        );
        let (sa, sb) = (la.shape(), lb.shape());
        assert!(
            sa[..ra - 2] == sb[..rb - 2] && sa[ra - 1] == sb[rb - 2],
            "{name}: cannot multiply {sa:?} by {sb:?}"
        );
        let (ta, tb) = (la.strides(), lb.strides());
        let bases = |l: &Layout, r: usize| {
            Layout::new(&l.shape()[..r - 2], &l.strides()[..r - 2], l.offset).offsets()
        };
        Problem {
            m: sa[ra - 2],
            k: sa[ra - 1],
            n: sb[rb - 1],
            sam: ta[ra - 2],
            sak: ta[ra - 1],
            sbk: tb[rb - 2],
            sbn: tb[rb - 1],
            a_bases: bases(la, ra),
            b_bases: bases(lb, rb),
        }
    }
}

/// One product's operands: `A[i, k] = a[a_base + a_rows[i] + a_cols[k]]`,
/// `B[k, j] = b[b_base + b_rows[k] + b_cols[j]]`. Offset tables (instead of
/// strides) let the depth run over several axes (a batch sum); the `unit`
/// flags mark tables that step by exactly one element (contiguous runs).
pub(crate) struct Operands<'a, E> {
    a: &'a [E],
    a_base: usize,
    a_rows: &'a [usize],
    a_cols: &'a [usize],
    b: &'a [E],
    b_base: usize,
    b_rows: &'a [usize],
    b_cols: &'a [usize],
    a_unit_m: bool,
    a_unit_k: bool,
    /// The constant step between A's row offsets, if they rise by one
    /// (rows can then be read as `row0 + i * pitch`).
    a_pitch: Option<usize>,
    b_unit_k: bool,
    b_unit_n: bool,
}

/// The step between consecutive offsets if it is one constant, rising (or
/// there is at most one offset: 0).
fn even_step(t: &[usize]) -> Option<usize> {
    let step = match t {
        [a, b, ..] => b.checked_sub(*a)?,
        _ => 0,
    };
    t.windows(2)
        .all(|w| w[1].checked_sub(w[0]) == Some(step))
        .then_some(step)
}

/// Whether consecutive offsets differ by exactly one.
fn unit(t: &[usize]) -> bool {
    t.windows(2).all(|w| w[1] == w[0] + 1)
}

impl<'a, E> Operands<'a, E> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        a: &'a [E],
        a_base: usize,
        a_rows: &'a [usize],
        a_cols: &'a [usize],
        b: &'a [E],
        b_base: usize,
        b_rows: &'a [usize],
        b_cols: &'a [usize],
    ) -> Self {
        Operands {
            a,
            a_base,
            a_rows,
            a_cols,
            b,
            b_base,
            b_rows,
            b_cols,
            a_unit_m: unit(a_rows),
            a_unit_k: unit(a_cols),
            a_pitch: even_step(a_rows),
            b_unit_k: unit(b_rows),
            b_unit_n: unit(b_cols),
        }
    }
}

/// One product, plus `bias` (`N` values) on every row if any, into `out`
/// (`[M, N]`, possibly uninitialized; every element is written): straight
/// into `out` when `E` is its own compute type, else into an `E::Acc`
/// buffer that is rounded once at the end. With `finish` (f32 and f64
/// only), each task calls it on its part of the result once final (see
/// [`Finish`]). Needs `K > 0`.
fn product<E: FloatDtype, K: Packing<E>>(
    ops: &Operands<'_, E>,
    out: &mut [MaybeUninit<E>],
    threads: usize,
    bias: Option<&[E::Acc]>,
    kern: Kernel<K::P, E::Acc>,
    finish: Option<Finish<'_, E::Acc>>,
) {
    // A finishing step sees the result in `E`: only where that is the
    // compute type (`gemm_shared_finished`).
    assert!(finish.is_none() || matches!(E::DTYPE, DType::F32 | DType::F64));
    // Debug builds (the tests) poison the output, so an element the product
    // failed to write shows up as NaN instead of as stale memory.
    #[cfg(debug_assertions)]
    out.iter_mut()
        .for_each(|o| *o = MaybeUninit::new(E::from_f64(f64::NAN)));
    #[cfg(target_arch = "x86_64")]
    if kern.amx && TypeId::of::<E>() == TypeId::of::<bf16>() {
        // SAFETY: `E` is `bf16` (same TypeId): the same types, reinterpreted.
        let (ops, out) = unsafe {
            (
                &*(ops as *const Operands<'_, E>).cast::<Operands<'_, bf16>>(),
                core::slice::from_raw_parts_mut(
                    out.as_mut_ptr().cast::<MaybeUninit<bf16>>(),
                    out.len(),
                ),
            )
        };
        // SAFETY: `E` is `bf16`, so `E::Acc` is `f32`.
        let bias =
            bias.map(|b| unsafe { core::slice::from_raw_parts(b.as_ptr().cast::<f32>(), b.len()) });
        amx::product(ops, out, threads, bias);
        return;
    }
    if matches!(E::DTYPE, DType::F32 | DType::F64) {
        debug_assert_eq!(core::mem::size_of::<E>(), core::mem::size_of::<E::Acc>());
        // SAFETY: for f32 and f64 the compute type is the type itself.
        let c = unsafe {
            core::slice::from_raw_parts_mut(
                out.as_mut_ptr().cast::<MaybeUninit<E::Acc>>(),
                out.len(),
            )
        };
        let fin = finish.map_or(Final::Keep, Final::Finish);
        blocked::<E, K>(ops, c, threads, kern, true, bias, fin);
    } else if kern.rounds == Some(E::DTYPE) {
        // The kernel rounds each tile of the last depth block straight into
        // the output; `c` holds only the sums of earlier depth blocks (and
        // is never touched for a single one).
        let mut c: Vec<E::Acc> = Vec::with_capacity(out.len());
        let round = Final::Round(SyncPtr(out.as_mut_ptr().cast::<u16>()));
        let c = &mut c.spare_capacity_mut()[..out.len()];
        blocked::<E, K>(ops, c, threads, kern, true, bias, round);
    } else {
        let n = ops.b_cols.len();
        let mut c: Vec<E::Acc> = Vec::with_capacity(out.len());
        let o = SyncPtr(out.as_mut_ptr());
        // Each part of the result is rounded as soon as it is final,
        // while it is still in cache.
        let finish =
            move |c: *mut E::Acc, (r0, rows): (usize, usize), (c0, cols): (usize, usize)| {
                vectorized(
                    #[inline(always)]
                    || {
                        for i in r0..r0 + rows {
                            // SAFETY: the region is inside the `[M, N]` result, final in
                            // `c` (the `Finish` contract), and this task's alone in `out`.
                            let (src, dst) = unsafe {
                                (
                                    core::slice::from_raw_parts(c.add(i * n + c0), cols),
                                    core::slice::from_raw_parts_mut(o.get().add(i * n + c0), cols),
                                )
                            };
                            pack::narrow(src, dst);
                        }
                    },
                )
            };
        let c = &mut c.spare_capacity_mut()[..out.len()];
        blocked::<E, K>(ops, c, threads, kern, true, bias, Final::Finish(&finish));
    }
}

/// Called by the tasks of [`blocked`] on each part of the result (a row
/// panel of a task's columns) once it is final: `finish(c, (r0, rows),
/// (c0, cols))` with `c` the whole `[M, N]` result (row length `N`) and the
/// part's rows and columns; `c` may be read and written there (no other
/// task touches that region).
type Finish<'a, A> = &'a (dyn Fn(*mut A, (usize, usize), (usize, usize)) + Sync);

/// What becomes of the result of [`blocked`] once it is final.
#[derive(Clone, Copy)]
enum Final<'a, A> {
    /// Nothing: `c` is the result.
    Keep,
    /// Each task calls this on its part.
    Finish(Finish<'a, A>),
    /// The kernel (one that [rounds](Kernel::rounds) to the output type)
    /// rounds every tile of the last depth block into this `[M, N]` 16-bit
    /// output, not into `c`.
    Round(SyncPtr<u16>),
}

/// `c += A · B` (`c` is `[M, N]` row-major), or `c = A · B` with
/// `overwrite` (then `c` may be uninitialized: the first depth block writes
/// every element, later ones add); then `+ bias[j]` on every row, if any.
/// Column blocks sized for L2 (`B_BLOCK_BYTES`, at most `NC`), depth blocks
/// of `K::KC` (one packed `B` block shared by all threads), then tasks of
/// `mc` rows by a range of `NR` panels, each packing its own `A` block; `fin`
/// says what becomes of the result (rounded on the way out, or after).
fn blocked<E: FloatDtype, K: Packing<E>>(
    ops: &Operands<'_, E>,
    c: &mut [MaybeUninit<E::Acc>],
    threads: usize,
    kern: Kernel<K::P, E::Acc>,
    overwrite: bool,
    bias: Option<&[E::Acc]>,
    fin: Final<'_, E::Acc>,
) {
    let (m, n) = (ops.a_rows.len(), ops.b_cols.len());
    assert_eq!(c.len(), m * n);
    assert!(bias.is_none_or(|b| b.len() == n));
    assert!(kern.rounds.is_some() || !matches!(fin, Final::Round(_)));
    // A few rows (one token's activations times a weight) read `B` in
    // place: packing it would cost more than the product.
    if skinny::try_product::<E, K>(ops, c, threads, overwrite, bias, fin) {
        return;
    }
    let cptr = SyncPtr(c.as_mut_ptr().cast::<E::Acc>());
    // A row-major A with evenly spaced rows (`lda` values, `pitch` bytes
    // apart) is read in place where the packing says so.
    let pitch = ops.a_pitch.unwrap_or(0) * core::mem::size_of::<E>();
    let direct = kern.fd.filter(|_| {
        ops.a_unit_k
            && ops.a_pitch.is_some()
            && K::in_place(pitch, n.div_ceil(kern.nr), kern.any_pitch)
    });
    // Else rows in a narrower type are widened into a row-major copy that
    // the same kernel reads (the threads share the work as for a packed A).
    let in_place = match direct {
        Some(fd) => Some(InPlace { fd, widened: false }),
        None => kern
            .fd
            .filter(|_| K::widens_rows(ops))
            .map(|fd| InPlace { fd, widened: true }),
    };
    // Rows that would be read in place but for their pitch (4 KiB apart:
    // they alias in L1) are widened task by task, once per column block,
    // each time from L3 or memory. Over more than one column block, one
    // copy of all of `A` at a padded pitch is cheaper, read in place after
    // (2048 x 2048 x 2048, alternating runs, GFLOP/s: 1 thread, f32
    // 99-101 -> 100-104, bf16 196-197 -> 205-206; 2 threads, f32 202-205 ->
    // 209-212, bf16 402-406 -> 409-413.)
    // (The copy's rows are `padded` apart, which `K::in_place` accepts, so
    // the call below reads them in place and does not come back here.)
    let k = ops.a_cols.len();
    let padded = widened_pitch::<E>(k);
    if matches!(in_place, Some(InPlace { widened: true, .. }))
        && k > 0
        && n > column_block::<E, K>(k, kern.nr)
        && K::in_place(
            padded * core::mem::size_of::<E>(),
            n.div_ceil(kern.nr),
            kern.any_pitch,
        )
    {
        let rows: Vec<usize> = (0..m).map(|i| i * padded).collect();
        let depth: Vec<usize> = (0..k).collect();
        return with_buf::<E, _>(&PAD_BUF, m * padded, |copy| {
            pack::pad_rows(ops, padded, threads, copy);
            let ops = Operands::new(
                copy, 0, &rows, &depth, ops.b, ops.b_base, ops.b_rows, ops.b_cols,
            );
            blocked::<E, K>(&ops, c, threads, kern, overwrite, bias, fin)
        });
    }
    // With A read in place (nothing to pack twice) and no more rows than
    // columns, each thread takes its own columns: it packs only its part
    // of B and never waits for the others (no barrier per depth block);
    // sharing B instead costs a pass of every thread over all of B.
    // (2 threads: 512 x 512 x 512 ~2% faster, 512 x 1536 x 384 ~7%.)
    // Taller f32 and f64 products keep the row split even where columns
    // would be a little faster alone (768 x 512 x 128): the kernels before
    // and after share rows out the same way, so each thread then finds its
    // rows of the result in its own cache (Shakespeare step ~3% faster).
    // 16-bit operands read in place split by columns even when taller
    // than wide: their products are twice as fast, so the shared B's
    // packing and the barrier per depth block weigh twice as much
    // (2 threads, bf16, paired: 512 x 1536 x 384 ~2% faster, 4096 x 768 x
    // 768 ~4%; f32 gained 0-3% on some shapes and lost 2-3% on others).
    // So do f32 and f64 ones with few row panels a thread and more than
    // one depth block: the row split's blocks are then coarse (37 panels
    // in 4 blocks of 9-10) and every depth block ends in a barrier, where
    // the threads wait for the one with the extra panel (2 threads,
    // alternating call by call in one process: 512 x 1536 x 384 6-8%
    // faster, 768 x 1536 x 384 2-3%, 600 x 1100 x 300 5%; `gemm_table`
    // runs of the two builds taking turns, 512 x 1536 x 384: 196-206 ->
    // 199-207 GFLOP/s; with 147 panels, 2048 x 1152 x 384, columns were
    // 7.6% slower).
    // A packed A (a transposed one: weight gradients `dYᵀ · X`) with no
    // more rows than columns is split by columns too: each thread then
    // packs all of A, which is the smaller operand, and none of the
    // other's B (2 threads, 128 x 768 x 128: ~1.6x faster).
    let np = n.div_ceil(kern.nr);
    let kcb = depth_block::<E, K>(k);
    let depth_blocks = k.div_ceil(kcb.max(1));
    let coarse_rows = depth_blocks >= 2 && m.div_ceil(kern.mr) < COARSE_PANELS * threads;
    let cols_when_tall = direct.is_some() && (core::mem::size_of::<E>() == 2 || coarse_rows);
    if threads > 1
        && matches!(fin, Final::Keep)
        && depth_blocks >= 2
        && (m * n <= SPLIT_DEPTH_MAX_MN
            || (m * n <= SPLIT_DEPTH_EVEN_MAX_MN && depth_blocks.is_multiple_of(threads)))
        && k >= m.max(n)
    {
        // Deeper than wide and tall (a weight gradient `dYᵀ · X` summed over
        // the tokens): the threads take whole depth blocks, so nobody packs
        // anything twice (a row or column split packs all of the shared
        // operand in each thread). Block 0 goes into `c`, each later block
        // into its own buffer, and the buffers are added into `c` in block
        // order: the very sums, in the same order, that one thread makes
        // when its kernels add each depth block onto `c`, so the result
        // does not depend on the thread count.
        let mut parts: Vec<MaybeUninit<E::Acc>> = Vec::with_capacity((depth_blocks - 1) * m * n);
        // SAFETY: `MaybeUninit` needs no initialization; every block writes all of its part.
        unsafe { parts.set_len((depth_blocks - 1) * m * n) };
        let pptr = SyncPtr(parts.as_mut_ptr().cast::<E::Acc>());
        run_tasks(depth_blocks, |blk| {
            let (p0, p1) = (blk * kcb, ((blk + 1) * kcb).min(k));
            let depth = Operands {
                a_cols: &ops.a_cols[p0..p1],
                b_rows: &ops.b_rows[p0..p1],
                ..*ops
            };
            let (dst, ow) = match blk {
                0 => (cptr, overwrite),
                // SAFETY: part `blk - 1` of `parts` (`m * n` values) is this block's alone.
                _ => (SyncPtr(unsafe { pptr.get().add((blk - 1) * m * n) }), true),
            };
            // SAFETY: `dst` is an `[M, N]` result only this block writes.
            unsafe { blocked_cols::<E, K>(&depth, dst, (0, n), 1, kern, in_place, ow, None, fin) };
        });
        // SAFETY: every part was written in full above.
        let parts =
            unsafe { &*(parts.as_slice() as *const [MaybeUninit<E::Acc>] as *const [E::Acc]) };
        // SAFETY: `c` is initialized now (block 0 wrote or added into all of it).
        let c = unsafe { &mut *(c as *mut [MaybeUninit<E::Acc>] as *mut [E::Acc]) };
        let add = |(i, rows): (usize, &mut [E::Acc])| {
            let at = i * SPLIT_DEPTH_ROWS * n;
            vectorized(
                #[inline(always)]
                || {
                    for part in parts.chunks_exact(m * n) {
                        for (c, &p) in rows.iter_mut().zip(&part[at..]) {
                            *c += p;
                        }
                    }
                    // The bias after the whole sum, as the kernels add it.
                    if let Some(bias) = bias {
                        for row in rows.chunks_exact_mut(n) {
                            for (c, &b) in row.iter_mut().zip(bias) {
                                *c += b;
                            }
                        }
                    }
                },
            )
        };
        for_each_chunk_mut(c, SPLIT_DEPTH_ROWS * n, add);
    } else if threads > 1 && (m <= n || cols_when_tall) && np >= 2 * threads {
        run_tasks(threads, |t| {
            let cols = (
                np * t / threads * kern.nr,
                (np * (t + 1) / threads * kern.nr).min(n),
            );
            // SAFETY: `cptr` is the `[M, N]` result; thread `t` alone writes these columns.
            unsafe {
                blocked_cols::<E, K>(ops, cptr, cols, 1, kern, in_place, overwrite, bias, fin)
            };
        });
    } else if threads > 1
        && m > n
        && !matches!(fin, Final::Round(_))
        && (direct.is_none() || ops.a_cols.len() * n <= PRIVATE_B_MAX)
    {
        // Taller than wide with A packed (the weight gradient of a wider
        // layer): each thread takes its own rows, packs its own copy of B
        // (the smaller operand) and never waits for the other. The rows
        // are shared out evenly, not in whole panels: 768 rows are 384 +
        // 384 (each with a 6-row last panel), not 378 + 390, which left
        // one thread waiting 12 rows' time (Shakespeare step: the caller's
        // wait in products 0.64 -> 0.36 ms).
        run_tasks(threads, |t| {
            let (r0, r1) = (m * t / threads, m * (t + 1) / threads);
            if r0 == r1 {
                return;
            }
            let rows = Operands {
                a_rows: &ops.a_rows[r0..r1],
                ..*ops
            };
            // A finishing step sees the whole result and its own rows in it.
            let shifted = |c: *mut E::Acc, (i, rows): (usize, usize), cols: (usize, usize)| {
                if let Final::Finish(finish) = fin {
                    finish(c.wrapping_sub(r0 * n), (r0 + i, rows), cols);
                }
            };
            let fin = match fin {
                Final::Finish(_) => Final::Finish(&shifted),
                other => other,
            };
            // SAFETY: rows `r0..r1` of the `[M, N]` result are thread `t`'s alone.
            let c = SyncPtr(unsafe { cptr.get().add(r0 * n) });
            unsafe {
                blocked_cols::<E, K>(&rows, c, (0, n), 1, kern, in_place, overwrite, bias, fin)
            };
        });
    } else {
        // SAFETY: `cptr` is the `[M, N]` result, all this call's.
        unsafe {
            blocked_cols::<E, K>(
                ops,
                cptr,
                (0, n),
                threads,
                kern,
                in_place,
                overwrite,
                bias,
                fin,
            )
        };
    }
}

/// The depth of the blocks a product of depth `k` is cut into: at most
/// `K::KC`, balanced (1024 = 512 + 512, not 768 + 256: every pass over C
/// then does as much work), a whole number of groups.
fn depth_block<E: FloatDtype, K: Packing<E>>(k: usize) -> usize {
    k.div_ceil(k.div_ceil(K::KC).max(1))
        .next_multiple_of(K::GROUP)
}

/// Columns of a block of `B` (a multiple of `nr`) for a product of depth
/// `k`: as many as [`B_BLOCK_BYTES`] holds at the depth of one block, at
/// most [`NC`].
fn column_block<E: FloatDtype, K: Packing<E>>(k: usize, nr: usize) -> usize {
    let column_bytes =
        depth_block::<E, K>(k).min(k).div_ceil(K::GROUP).max(1) * core::mem::size_of::<K::P>();
    ((B_BLOCK_BYTES / (column_bytes * nr)).max(1) * nr).min(NC)
}

/// How a product's full `MR`-row panels of `A` reach the in-place kernel.
#[derive(Clone, Copy)]
struct InPlace<P, A> {
    /// The kernel that reads rows of `A` (see [`DirectFn`]).
    fd: DirectFn<P, A>,
    /// Each task first widens its rows into scratch ([`Packing::widen_rows`])
    /// and the kernel reads that copy; else it reads `A` itself.
    widened: bool,
}

/// How the micro-kernels of one task read its `A` block.
#[derive(Clone, Copy)]
enum APanels<P, A> {
    /// All of it packed.
    Packed,
    /// Full panels' rows in place (see [`DirectFn`]): row `i` starts `i *
    /// pitch` bytes after `a`, its values `lda` apart; only the tail panel
    /// is packed.
    Rows {
        fd: DirectFn<P, A>,
        a: *const P,
        lda: usize,
        pitch: usize,
    },
    /// Full panels in place, each depth step a run of adjacent rows `step`
    /// values after the last (see [`StepsFn`]); only the tail panel is
    /// packed.
    Steps {
        ft: StepsFn<P, A>,
        a: *const P,
        step: usize,
    },
}

/// Row pitch (in packed units `P`) of the widened copy of an `A` block
/// `groups` groups deep: whole cache lines, and not a multiple of 2 KiB
/// (rows that far apart share L1 sets).
fn widened_pitch<P>(groups: usize) -> usize {
    let line = 64 / core::mem::size_of::<P>();
    let pitch = groups.next_multiple_of(line);
    if (pitch * core::mem::size_of::<P>()).is_multiple_of(2048) {
        pitch + line
    } else {
        pitch
    }
}

/// [`blocked`] for columns `c_lo..c_hi` of the result only, with the
/// in-place kernel `direct` (if any); `bias` (all `N` columns' values, if
/// any) is added by the kernels of the last depth block.
///
/// # Safety
/// `cptr` must point at the `[M, N]` result; no other thread may touch its
/// columns `c_lo..c_hi`.
#[allow(clippy::too_many_arguments)]
unsafe fn blocked_cols<E: FloatDtype, K: Packing<E>>(
    ops: &Operands<'_, E>,
    cptr: SyncPtr<E::Acc>,
    (c_lo, c_hi): (usize, usize),
    threads: usize,
    kern: Kernel<K::P, E::Acc>,
    direct: Option<InPlace<K::P, E::Acc>>,
    overwrite: bool,
    bias: Option<&[E::Acc]>,
    fin: Final<'_, E::Acc>,
) {
    let (m, n, k) = (ops.a_rows.len(), ops.b_cols.len(), ops.a_cols.len());
    let (mr, nr) = (kern.mr, kern.nr);
    // Row blocks: about MC rows, a multiple of the thread count, and whole
    // `MR` panels shared out evenly (block `ib` has panels
    // `panels * ib / rb..panels * (ib + 1) / rb`), so every thread gets the
    // same work.
    let panels = m.div_ceil(mr);
    let mut rb = m.div_ceil(MC);
    if threads > 1 {
        rb = rb.div_ceil(threads) * threads;
    }
    let rb = rb.min(panels);
    let block_rows = |ib: usize| {
        let (r0, r1) = (panels * ib / rb * mr, (panels * (ib + 1) / rb * mr).min(m));
        (r0, r1 - r0)
    };
    // Too few row blocks for the threads: split the columns too.
    let cs = if threads > rb {
        threads.div_ceil(rb)
    } else {
        1
    };
    let ntasks = rb * cs;
    let lda = ops.a_pitch.unwrap_or(0);
    let pitch = lda * core::mem::size_of::<E>();
    let kcb = depth_block::<E, K>(k);
    let groups = |kc: usize| kc.div_ceil(K::GROUP);
    assert!(k > 0 || !overwrite, "gemm: an empty depth writes nothing");
    let ncb = column_block::<E, K>(k, nr);
    let nc_max = ncb.min((c_hi - c_lo).div_ceil(nr) * nr);
    // A transposed A in the kernel's own type (a weight gradient's `Xᵀ`)
    // is read in place, one run of rows a depth step, instead of packed: a
    // strided copy that waits on memory, where the kernel's reads overlap
    // its arithmetic (gpt6's weight gradients 3-4% faster, 2 threads).
    let steps = kern
        .ft
        .filter(|_| {
            direct.is_none()
                && ops.a_unit_m
                && !ops.a_unit_k
                && TypeId::of::<E>() == TypeId::of::<K::P>()
        })
        .and_then(|ft| Some((ft, even_step(ops.a_cols)?)));
    with_buf::<K::P, _>(&B_BUF, nc_max * groups(kcb.min(k)), |bbuf| {
        for jc in (c_lo..c_hi).step_by(ncb) {
            let nc = ncb.min(c_hi - jc);
            let np = nc.div_ceil(nr);
            for pc in (0..k).step_by(kcb) {
                let kc = kcb.min(k - pc);
                let panel_len = groups(kc) * nr;
                let bp = &mut bbuf[..np * panel_len];
                // Each thread packs a run of whole panels.
                let per = np.div_ceil(threads.min(np));
                let pack = |(t, dst): (usize, &mut [K::P])| {
                    let j0 = jc + t * per * nr;
                    let cols = (per * nr).min(jc + nc - j0);
                    // Under AVX-512/AVX2 the fixed-size row copies are a few
                    // vector moves, not calls into libc's memmove.
                    vectorized(
                        #[inline(always)]
                        || K::pack(ops, Side::B, (j0, cols), (pc, kc), nr, dst),
                    );
                };
                if threads > 1 && per < np {
                    for_each_chunk_mut(bp, per * panel_len, pack);
                } else {
                    pack((0, bp));
                }
                let bp = &*bp;
                let task = |t: usize| {
                    let (ib, is) = (t / cs, t % cs);
                    let (ic, rows) = block_rows(ib);
                    let last = pc + kc == k;
                    let round = match fin {
                        // SAFETY: row `ic`, column `jc` of the `[M, N]` output.
                        Final::Round(o) if last => Some((unsafe { o.get().add(ic * n + jc) }, n)),
                        _ => None,
                    };
                    // The biases of this column block, on its last depth block.
                    let bias = match bias {
                        Some(b) if last => b[jc..].as_ptr(),
                        _ => core::ptr::null(),
                    };
                    let (p0, p1) = (np * is / cs, np * (is + 1) / cs);
                    if p0 == p1 {
                        return;
                    }
                    // A finishing step runs per row panel of the last depth
                    // block, as soon as the panel's tiles are done (`MR` rows
                    // by the task's columns): a whole task's part (up to `MC`
                    // rows) is about 1 MiB at gpt6's widths, so it would
                    // leave L2, and push the packed B out of it, before it
                    // was finished.
                    let (c0, c1) = (jc + p0 * nr, jc + (p1 * nr).min(nc));
                    let finish_panel = |i0: usize, prows: usize| {
                        if let Final::Finish(finish) = fin {
                            finish(cptr.get(), (ic + i0, prows), (c0, c1 - c0));
                        }
                    };
                    let panel_done: Option<&dyn Fn(usize, usize)> = match fin {
                        Final::Finish(_) if last => Some(&finish_panel),
                        _ => None,
                    };
                    // Direct: full panels read A in place, only the tail is packed.
                    // (An odd depth, the last block of pairs, is packed: pairs
                    // read in place would run past it.)
                    let direct = direct.filter(|_| kc.is_multiple_of(K::GROUP));
                    let (pr0, prows) = if direct.is_some() || steps.is_some() {
                        let full = rows / mr * mr;
                        (full, rows - full)
                    } else {
                        (0, rows)
                    };
                    // The widened copy of the full panels' rows, if any, comes first.
                    let wpitch = widened_pitch::<K::P>(groups(kc));
                    let wlen = match direct {
                        Some(InPlace { widened: true, .. }) => pr0 * wpitch,
                        _ => 0,
                    };
                    let alen = wlen + prows.div_ceil(mr) * mr * groups(kc);
                    with_buf::<K::P, _>(&A_BUF, alen, |buf| {
                        let (wide, ap) = buf.split_at_mut(wlen);
                        vectorized(
                            #[inline(always)]
                            || {
                                if wlen > 0 {
                                    K::widen_rows(ops, (ic, pr0), (pc, kc), wpitch, wide);
                                }
                                K::pack(ops, Side::A, (ic + pr0, prows), (pc, kc), mr, ap)
                            },
                        );
                        let at = ops.a_base + ops.a_rows[ic] + ops.a_cols[pc];
                        let a_panels = match (direct, steps) {
                            (Some(InPlace { fd, widened: true }), _) => APanels::Rows {
                                fd,
                                a: wide.as_ptr(),
                                // (The kernel counts `lda` in values: `GROUP` per `P`.)
                                lda: wpitch * K::GROUP,
                                pitch: wpitch * core::mem::size_of::<K::P>(),
                            },
                            (Some(InPlace { fd, widened: false }), _) => APanels::Rows {
                                fd,
                                // SAFETY: `at` is in bounds (row `ic`, depth `pc` of A); the
                                // kernel reads it as `E` values (`K::in_place`).
                                a: unsafe { ops.a.as_ptr().add(at).cast::<K::P>() },
                                lda,
                                pitch,
                            },
                            (None, Some((ft, step))) => APanels::Steps {
                                ft,
                                // SAFETY: `at` is in bounds (row `ic`, depth `pc` of A),
                                // and `E` is `K::P` (the `steps` condition).
                                a: unsafe { ops.a.as_ptr().add(at).cast::<K::P>() },
                                step,
                            },
                            (None, None) => APanels::Packed,
                        };
                        // SAFETY: task `t` writes only rows `ic..ic + rows` and
                        // columns of panels `p0..p1` of this column block: disjoint
                        // from every other task, and inside `c` (`m x n`).
                        unsafe {
                            macro_kernel(
                                &kern,
                                a_panels,
                                ap,
                                bp,
                                (kc, K::GROUP),
                                rows,
                                p0,
                                p1,
                                nc,
                                cptr.get().add(ic * n + jc),
                                n,
                                overwrite && pc == 0,
                                round,
                                bias,
                                panel_done,
                            )
                        };
                    });
                };
                if threads > 1 && ntasks > 1 {
                    run_tasks(ntasks, task);
                } else {
                    (0..ntasks).for_each(task);
                }
            }
        }
    });
}

/// Multiplies a packed `A` block (`mc x kc`) by panels `p0..p1` of a packed
/// `B` block (`kc x nc`) and adds the result into `c` (the block's top-left
/// corner, row length `ldc`). Panels hold `kc.div_ceil(group)` groups.
///
/// Unless `a_panels` is [`APanels::Packed`], full `MR`-row panels read `A`
/// in place and `ap` holds only the packed tail panel.
/// With `round = Some((r, ldr))` (a kernel that [rounds](Kernel::rounds)),
/// the results, plus `c` unless `overwrite`, are rounded to `bf16` into `r`
/// (row length `ldr`) instead of written to `c`. Unless `bias` is null, the
/// block's column biases (`nc` values) are added last. `panel_done(i0,
/// rows)`, if any, runs once the row panel at row `i0` (`rows` rows) is
/// done for all of the panels, while its results are still in cache.
///
/// # Safety
/// `A` in place (if so) must be readable for `mc` rows by `kc` depth.
/// `c` must be valid for reads and writes at `i * ldc + j` for `i < mc`,
/// `j < nc`, likewise `r` for writes at `i * ldr + j`, `bias` (unless
/// null) for `nc` reads, and no other thread may touch that part of those
/// rows' panels.
#[allow(clippy::too_many_arguments)]
unsafe fn macro_kernel<P, A: Real>(
    kern: &Kernel<P, A>,
    a_panels: APanels<P, A>,
    ap: &[P],
    bp: &[P],
    (kc, group): (usize, usize),
    mc: usize,
    p0: usize,
    p1: usize,
    nc: usize,
    c: *mut A,
    ldc: usize,
    overwrite: bool,
    round: Option<(*mut u16, usize)>,
    bias: *const A,
    panel_done: Option<&dyn Fn(usize, usize)>,
) {
    let (mr, nr) = (kern.mr, kern.nr);
    let g = kc.div_ceil(group);
    debug_assert!(mr * nr <= MAX_TILE);
    // Edge tiles are computed into scratch (overwriting it), then written or
    // added into `c`.
    let mut scratch = [A::zero(); MAX_TILE];
    // One `A` panel (`MR x kc`, 28 KiB for f32 at depth 512) stays in L1
    // while the `B` panels stream past it from L2, prefetched: the other
    // way round, a `B` panel (64 KiB) would not fit L1 (1 thread, gpt6's
    // forward products: ~5% faster; the step's products ~2-3%).
    for ip in 0..mc.div_ceil(mr) {
        let i0 = ip * mr;
        let rows = mr.min(mc - i0);
        for jp in p0..p1 {
            let bpanel = &bp[jp * g * nr..(jp + 1) * g * nr];
            let j0 = jp * nr;
            let cols = nr.min(nc - j0);
            let full = rows == mr && cols == nr;
            // SAFETY: `i0 < mc`, `j0 < nc`: inside the caller's block.
            let cp = unsafe { c.add(i0 * ldc + j0) };
            // The same tile of the rounded output, if any.
            // SAFETY: inside the caller's block of `r`.
            let rp = round.map(|(r, ldr)| (unsafe { r.add(i0 * ldr + j0) }, ldr));
            // This tile's column biases.
            let tb = if bias.is_null() {
                bias
            } else {
                // SAFETY: `j0 < nc`: inside the block's biases.
                unsafe { bias.add(j0) }
            };
            let (dst, ld, st) = match rp {
                _ if !full => (scratch.as_mut_ptr(), nr, Store::c(true)),
                Some((round, ldr)) => (
                    cp,
                    ldc,
                    Store {
                        overwrite,
                        round,
                        ldr,
                        bias: tb,
                    },
                ),
                None => (
                    cp,
                    ldc,
                    Store {
                        bias: tb,
                        ..Store::c(overwrite)
                    },
                ),
            };
            match a_panels {
                // SAFETY: rows `i0..i0 + mr` of A are in place from `i0 * pitch`
                // bytes after `a` (the caller's guarantee); `dst` is the tile inside the block
                // or the scratch tile (row length nr).
                APanels::Rows { fd, a, lda, pitch } if rows == mr => unsafe {
                    fd(
                        kc,
                        a.byte_add(i0 * pitch),
                        lda,
                        bpanel.as_ptr(),
                        dst,
                        ld,
                        st,
                    )
                },
                // SAFETY: each depth step of rows `i0..i0 + mr` is in place from `a +
                // i0`, `step` values after the last (the caller's guarantee); `dst` as above.
                APanels::Steps { ft, a, step } if rows == mr => unsafe {
                    ft(kc, a.add(i0), step, bpanel.as_ptr(), dst, ld, st)
                },
                _ => {
                    // Packed panel: all of them, or only the tail when A is read in place.
                    let pi = match a_panels {
                        APanels::Packed => ip,
                        _ => 0,
                    };
                    let apanel = &ap[pi * g * mr..(pi + 1) * g * mr];
                    // SAFETY: panels hold kc*mr / kc*nr values; `dst` as above; the
                    // kernel was offered only where the CPU supports it.
                    match kern.edge {
                        // The last row panel's rows only (into the scratch tile).
                        Some(edge) if rows < mr => unsafe {
                            edge(rows, kc, apanel.as_ptr(), bpanel.as_ptr(), dst)
                        },
                        _ => unsafe { (kern.f)(kc, apanel.as_ptr(), bpanel.as_ptr(), dst, ld, st) },
                    }
                }
            }
            if !full {
                let rp = rp.map(|(r, ldr)| (r, ldr, kern.rounds));
                write_tile(&scratch, nr, (rows, cols), cp, ldc, overwrite, rp, tb);
            }
        }
        if let Some(done) = panel_done {
            done(i0, rows);
        }
    }
}

/// Writes (`overwrite`) or adds the top-left `rows x cols` of a scratch
/// tile (row length `nr`) into `c`, then adds the column biases `bias[j]`
/// unless `bias` is null; with `round = Some((r, ldr, to))`, rounds that
/// result to `to` (`f16`, else `bf16`) into `r` (row length `ldr`) instead,
/// as the rounding kernels do.
#[allow(clippy::too_many_arguments)]
#[inline]
fn write_tile<A: Real>(
    t: &[A],
    nr: usize,
    (rows, cols): (usize, usize),
    c: *mut A,
    ldc: usize,
    overwrite: bool,
    round: Option<(*mut u16, usize, Option<DType>)>,
    bias: *const A,
) {
    for i in 0..rows {
        for j in 0..cols {
            // SAFETY: the caller's block holds `rows x cols` at `c` (and `r`)
            // with row length `ldc` (`ldr`), and `cols` biases unless null.
            unsafe {
                let c = c.add(i * ldc + j);
                let v = t[i * nr + j];
                let sum = if overwrite { v } else { *c + v };
                let sum = if bias.is_null() {
                    sum
                } else {
                    sum + *bias.add(j)
                };
                match round {
                    Some((r, ldr, to)) => {
                        let x = sum.as_f64() as f32;
                        let bits = match to {
                            Some(DType::F16) => crate::f16::from_f32(x).to_bits(),
                            _ => pack::bf16_round(x.to_bits()),
                        };
                        r.add(i * ldr + j).write(bits);
                    }
                    None => c.write(sum),
                }
            }
        }
    }
}

/// `c += A · B` on the calling thread, for compute-type (`f32` or `f64`)
/// slices: `A[i, p] = a[i * rsa + p * csa]` (`m x k`), `B[p, j] =
/// b[p * rsb + j * csb]` (`k x n`), `c` is `[m, n]` row-major. A low-overhead
/// entry for the small blocks of other kernels (fused attention).
///
/// # Panics
/// If `A` is neither `f32` nor `f64`, or an operand is too short.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_acc<A: Real>(
    m: usize,
    n: usize,
    k: usize,
    a: &[A],
    sa: (usize, usize),
    b: &[A],
    sb: (usize, usize),
    c: &mut [A],
) {
    gemm_small((m, n, k), a, sa, b, sb, c, false)
}

/// [`gemm_acc`] that overwrites `c` with `A · B` (its values are never
/// read): no zero fill first, no loads of `c`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_set<A: Real>(
    m: usize,
    n: usize,
    k: usize,
    a: &[A],
    sa: (usize, usize),
    b: &[A],
    sb: (usize, usize),
    c: &mut [A],
) {
    gemm_small((m, n, k), a, sa, b, sb, c, true)
}

/// `x` as a slice of `F`.
///
/// # Safety
/// `A` and `F` must be the same type.
unsafe fn same_type<A, F>(x: &[A]) -> &[F] {
    // SAFETY: the caller's guarantee.
    unsafe { core::slice::from_raw_parts(x.as_ptr().cast::<F>(), x.len()) }
}

/// `x` as a mutable slice of `F`.
///
/// # Safety
/// `A` and `F` must be the same type.
unsafe fn same_type_mut<A, F>(x: &mut [A]) -> &mut [F] {
    // SAFETY: the caller's guarantee.
    unsafe { core::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<F>(), x.len()) }
}

/// One operand of [`gemm_indexed`]: element `(i, p)` (row `i`, column `p`)
/// at `data[base + rows[i] + cols[p]]`.
#[derive(Clone, Copy)]
pub(crate) struct Indexed<'a, A> {
    /// The values.
    data: &'a [A],
    /// Offset added to every element's.
    base: usize,
    /// Offset of each row.
    rows: &'a [usize],
    /// Offset of each column.
    cols: &'a [usize],
}

impl<'a, A> Indexed<'a, A> {
    /// The operand with element `(i, p)` at `data[base + rows[i] + cols[p]]`.
    pub(crate) fn new(data: &'a [A], base: usize, rows: &'a [usize], cols: &'a [usize]) -> Self {
        Indexed {
            data,
            base,
            rows,
            cols,
        }
    }

    /// Whether every element lies inside `data` (true when there are none).
    fn in_bounds(&self) -> bool {
        let max = |t: &[usize]| t.iter().copied().max();
        match (max(self.rows), max(self.cols)) {
            (Some(r), Some(c)) => self.base + r + c < self.data.len(),
            _ => true,
        }
    }
}

/// `c = A · B` (`overwrite`: every element written, none read) or
/// `c += A · B` in the compute type (`f32` or `f64`), `c` row-major
/// `M x N`, on up to `threads` threads, with both
/// operands addressed through offset tables (`A`'s columns and `B`'s rows
/// are the depth): for kernels that address their operands themselves. A
/// convolution reads its unrolled input straight from the padded image:
/// each output row's positions are a run of consecutive offsets, which
/// the packing copies run by run, so no im2col copy is ever written.
///
/// # Panics
/// If an offset lies outside its operand, the depths differ, `c` is not
/// `M x N`, or `A` is not `f32` or `f64`.
pub(crate) fn gemm_indexed<A: Real>(
    a: Indexed<'_, A>,
    b: Indexed<'_, A>,
    c: &mut [A],
    overwrite: bool,
    threads: usize,
) {
    let (m, n, k) = (a.rows.len(), b.cols.len(), a.cols.len());
    assert_eq!(b.rows.len(), k, "gemm_indexed: depths differ");
    assert_eq!(c.len(), m * n, "gemm_indexed: output length");
    assert!(
        a.in_bounds() && b.in_bounds(),
        "gemm_indexed: offset out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if overwrite {
            c.fill(A::zero());
        }
        return;
    }
    fn typed<F: FloatDtype<Acc = F> + Real>(
        a: Indexed<'_, F>,
        b: Indexed<'_, F>,
        c: &mut [F],
        overwrite: bool,
        threads: usize,
    ) {
        let ops = Operands::new(
            a.data, a.base, a.rows, a.cols, b.data, b.base, b.rows, b.cols,
        );
        // SAFETY: `MaybeUninit<F>` has `F`'s layout; `blocked` only writes
        // initialized values (and without `overwrite` reads and adds to the
        // initialized ones there).
        let c = unsafe { &mut *(c as *mut [F] as *mut [MaybeUninit<F>]) };
        let kern = kernel::kernel::<F>();
        blocked::<F, Widen>(&ops, c, threads, kern, overwrite, None, Final::Keep);
    }
    /// # Safety
    /// `A` and `F` must be the same type.
    unsafe fn cast<'a, A, F>(x: Indexed<'a, A>) -> Indexed<'a, F> {
        // SAFETY: the caller's guarantee.
        Indexed::new(unsafe { same_type(x.data) }, x.base, x.rows, x.cols)
    }
    if TypeId::of::<A>() == TypeId::of::<f32>() {
        // SAFETY: `A` is `f32` (same TypeId).
        unsafe { typed::<f32>(cast(a), cast(b), same_type_mut(c), overwrite, threads) }
    } else {
        assert_eq!(
            TypeId::of::<A>(),
            TypeId::of::<f64>(),
            "gemm_indexed: compute type must be f32 or f64"
        );
        // SAFETY: `A` is `f64` (checked above).
        unsafe { typed::<f64>(cast(a), cast(b), same_type_mut(c), overwrite, threads) }
    }
}

/// [`gemm_acc`] (`overwrite` false) and [`gemm_set`] (true).
fn gemm_small<A: Real>(
    (m, n, k): (usize, usize, usize),
    a: &[A],
    (rsa, csa): (usize, usize),
    b: &[A],
    (rsb, csb): (usize, usize),
    c: &mut [A],
    overwrite: bool,
) {
    assert_eq!(c.len(), m * n, "gemm_acc: output length");
    if m == 0 || n == 0 || k == 0 {
        if overwrite {
            c.fill(A::zero());
        }
        return;
    }
    assert!(
        (m - 1) * rsa + (k - 1) * csa < a.len(),
        "gemm_acc: lhs too short"
    );
    assert!(
        (k - 1) * rsb + (n - 1) * csb < b.len(),
        "gemm_acc: rhs too short"
    );
    if TypeId::of::<A>() == TypeId::of::<f32>() {
        // SAFETY: `A` is `f32` (same TypeId).
        let (a, b, c) = unsafe { (same_type(a), same_type(b), same_type_mut(c)) };
        // SAFETY: the bounds were checked above.
        if unsafe { direct::try_gemm_f32((m, n, k), a, (rsa, csa), b, (rsb, csb), c, overwrite) } {
            return;
        }
    }
    let (a_rows, a_cols) = (offsets(m, rsa), offsets(k, csa));
    let (b_rows, b_cols) = (offsets(k, rsb), offsets(n, csb));
    let (a, b) = (
        Indexed::new(a, 0, &a_rows, &a_cols),
        Indexed::new(b, 0, &b_rows, &b_cols),
    );
    gemm_indexed(a, b, c, overwrite, 1);
}
