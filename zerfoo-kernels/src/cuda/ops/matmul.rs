//! Batched matrix products through cuBLAS (`cublasGemmStridedBatchedEx`),
//! reading transposes from strides like [`crate::cpu::matmul`]: a
//! transposed view is a transpose flag, never a copy. f16/bf16 accumulate in
//! f32 and round once on store; f32 uses TF32 tensor cores only when
//! [`GemmOptions::allow_tf32`] asks; f64 is f64 throughout. fp8 operands are
//! widened exactly to f32, multiplied in f32 and rounded once to fp8.

use core::ffi::c_void;

use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};

use super::elementwise::to_contiguous;
use super::CudaFloat;
use crate::cuda::device::{check_layout, grid_for, same_device};
use crate::cuda::emulator;
use crate::cuda::error::cuda_call;
use crate::cuda::{CudaBuffer, CudaDevice, CudaDtype, CudaError, Family};
use crate::{DType, Layout};

/// Options of a product.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GemmOptions {
    /// Let f32 products use TF32 tensor cores (10-bit mantissa inputs).
    pub allow_tf32: bool,
}

/// How cuBLAS (column-major) reads one row-major operand `X` (`r x c`, row
/// stride `sr`, column stride `sc`) as `Xᵀ`: a transpose flag and a leading
/// dimension, or `None` when the strides fit neither form (copy first).
///
/// ```
/// use zerfoo_kernels::cuda::ops::matmul::{blas_view, BlasOp};
/// assert_eq!(blas_view(2, 3, 3, 1), Some((BlasOp::N, 3))); // row-major
/// assert_eq!(blas_view(2, 3, 1, 2), Some((BlasOp::T, 2))); // a transposed view
/// assert_eq!(blas_view(2, 3, 6, 2), None); // every other column
/// ```
pub fn blas_view(r: usize, c: usize, sr: usize, sc: usize) -> Option<(BlasOp, usize)> {
    if (sc == 1 || c == 1) && (r == 1 || sr >= c.max(1)) {
        return Some((BlasOp::N, if r == 1 { c.max(1) } else { sr }));
    }
    if (sr == 1 || r == 1) && (c == 1 || sc >= r.max(1)) {
        return Some((BlasOp::T, if c == 1 { r.max(1) } else { sc }));
    }
    None
}

/// A cuBLAS transpose flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlasOp {
    /// As stored.
    N,
    /// Transposed.
    T,
}

/// The batch count and the one stride that steps through the batch dims
/// (`dims`, `strides`), or `None` when no single stride does.
///
/// ```
/// use zerfoo_kernels::cuda::ops::matmul::batch_stride;
/// assert_eq!(batch_stride(&[2, 3], &[36, 12]), Some((6, 12)));
/// assert_eq!(batch_stride(&[4], &[0]), Some((4, 0))); // broadcast
/// assert_eq!(batch_stride(&[2, 3], &[0, 12]), None);
/// assert_eq!(batch_stride(&[], &[]), Some((1, 0)));
/// ```
pub fn batch_stride(dims: &[usize], strides: &[usize]) -> Option<(usize, usize)> {
    let live: Vec<(usize, usize)> = dims
        .iter()
        .zip(strides)
        .filter(|(&d, _)| d != 1)
        .map(|(&d, &s)| (d, s))
        .collect();
    let count = dims.iter().product();
    match live.last() {
        None => Some((count, 0)),
        Some(&(_, inner)) => {
            let ok = live.windows(2).all(|w| w[0].1 == w[1].1 * w[1].0);
            ok.then_some((count, inner))
        }
    }
}

/// One operand as cuBLAS reads it.
struct Operand {
    op: BlasOp,
    ld: usize,
    batch_stride: usize,
    offset: usize,
}

/// The operand form of `l` (`[..batch, r, c]`), if its strides allow one.
fn operand(l: &Layout) -> Option<Operand> {
    let rank = l.rank();
    let (s, t) = (l.shape(), l.strides());
    let (op, ld) = blas_view(s[rank - 2], s[rank - 1], t[rank - 2], t[rank - 1])?;
    let (_, bs) = batch_stride(&s[..rank - 2], &t[..rank - 2])?;
    Some(Operand {
        op,
        ld,
        batch_stride: bs,
        offset: l.offset,
    })
}

fn cublas_op(o: BlasOp) -> cublasOperation_t {
    match o {
        BlasOp::N => cublasOperation_t::CUBLAS_OP_N,
        BlasOp::T => cublasOperation_t::CUBLAS_OP_T,
    }
}

fn int(op: &str, what: &str, v: usize) -> Result<i32, CudaError> {
    i32::try_from(v).map_err(|_| {
        CudaError::new(
            format!("size check for `{op}`"),
            format!("{what} = {v} exceeds cuBLAS's int range"),
        )
    })
}

/// Checks a product's operands (device, dtype, layouts against lengths,
/// ranks and dims) and returns its `(batch, M, K, N)`.
fn product_sizes<E: CudaFloat>(
    a: &CudaBuffer<E>,
    la: &Layout,
    b: &CudaBuffer<E>,
    lb: &Layout,
) -> Result<(usize, usize, usize, usize), CudaError> {
    let op = "matmul";
    let dev = a.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, b.device())?;
    check_layout(op, la, a.len())?;
    check_layout(op, lb, b.len())?;
    let (ra, rb) = (la.rank(), lb.rank());
    let (sa, sb) = (la.shape(), lb.shape());
    if ra < 2 || ra != rb || sa[..ra - 2] != sb[..rb - 2] || sa[ra - 1] != sb[rb - 2] {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            format!("cannot multiply {sa:?} by {sb:?}"),
        ));
    }
    let batch = sa[..ra - 2].iter().product();
    Ok((batch, sa[ra - 2], sa[ra - 1], sb[rb - 1]))
}

/// The result of a product with nothing to multiply: no elements, or zeros
/// when the depth is 0. `None` when there is work for cuBLAS.
fn empty_product<C: CudaDtype>(
    dev: &CudaDevice,
    (batch, m, k, n): (usize, usize, usize, usize),
) -> Option<Result<CudaBuffer<C>, CudaError>> {
    if batch * m * n == 0 {
        Some(dev.zeros::<C>(0))
    } else if k == 0 {
        Some(dev.zeros::<C>(batch * m * n))
    } else {
        None
    }
}

/// A batch of products: `la` is `[..batch, M, K]`, `lb` is `[..batch, K, N]`
/// (same rank >= 2, same batch dims; a batch stride of 0 repeats an
/// operand). Returns `[..batch, M, N]`, contiguous row-major.
pub fn gemm_batched<E: CudaFloat>(
    a: &CudaBuffer<E>,
    la: &Layout,
    b: &CudaBuffer<E>,
    lb: &Layout,
    opts: GemmOptions,
) -> Result<CudaBuffer<E>, CudaError> {
    let (batch, m, k, n) = product_sizes(a, la, b, lb)?;
    if let Some(empty) = empty_product(a.device(), (batch, m, k, n)) {
        return empty;
    }
    let ra = la.rank();
    let mut out_dims = la.shape()[..ra - 2].to_vec();
    out_dims.extend([m, n]);
    if let Some((la1, lb1)) = fold_batch_into_rows(la, lb) {
        // `[batch, M, K] x shared [K, N]` as one `[batch·M, K] x [K, N]`
        // product (same output memory): one large GEMM, not `batch` small ones.
        return gemm_batched(a, &la1, b, &lb1, opts);
    }
    if matches!(E::DTYPE, DType::F8E4M3 | DType::F8E5M2) {
        return gemm_via_f32(a, la, b, lb, batch * m * n, &out_dims);
    }
    cublas_gemm(a, la, b, lb, opts, (batch, m, k, n), E::from_acc)
}

/// `Σ_batch A_b · B_b` as one `[M, N]` matrix (the gradient of a weight
/// shared by the batch): where the contraction runs on through the batch
/// (`A`'s columns and `B`'s rows step evenly across it, as for activations
/// of consecutive rows) this is one product of depth `batch·K`; otherwise
/// the batch of products, then their sum.
pub fn gemm_batch_sum<E: CudaFloat>(
    a: &CudaBuffer<E>,
    la: &Layout,
    b: &CudaBuffer<E>,
    lb: &Layout,
    opts: GemmOptions,
) -> Result<CudaBuffer<E>, CudaError> {
    if let Some((la1, lb1)) = fold_batch_into_depth(la, lb) {
        return gemm_batched(a, &la1, b, &lb1, opts);
    }
    let c = gemm_batched(a, la, b, lb, opts)?;
    let r = la.rank();
    let mut dims = la.shape()[..r - 2].to_vec();
    dims.extend([la.shape()[r - 2], lb.shape()[r - 1]]);
    let axes: Vec<usize> = (0..r - 2).collect();
    super::reduce::sum_axes(&c, &Layout::contiguous(&dims), &axes, 1.0)
}

/// `[..batch, M, K] x [..batch, K, N]` where `B` is shared (batch stride 0)
/// and `A`'s rows run on evenly through the batch: the layouts of the same
/// product as `[batch·M, K] x [K, N]`.
fn fold_batch_into_rows(la: &Layout, lb: &Layout) -> Option<(Layout, Layout)> {
    let r = la.rank();
    if r < 3 {
        return None;
    }
    let (sa, ta, sb, tb) = (la.shape(), la.strides(), lb.shape(), lb.strides());
    let (count, a_step) = batch_stride(&sa[..r - 2], &ta[..r - 2])?;
    let (_, b_step) = batch_stride(&sb[..r - 2], &tb[..r - 2])?;
    let (m, k) = (sa[r - 2], sa[r - 1]);
    if count < 2 || b_step != 0 || (k > 1 && ta[r - 1] != 1) {
        return None;
    }
    let row = if m == 1 { a_step } else { ta[r - 2] };
    if a_step != m * row {
        return None;
    }
    Some((
        Layout::new(&[count * m, k], &[row, 1], la.offset),
        Layout::new(&sb[r - 2..], &tb[r - 2..], lb.offset),
    ))
}

/// `Σ_batch A_b · B_b` (`[..batch, M, K]`, `[..batch, K, N]`) where the
/// depth axis of both runs on evenly through the batch: the layouts of the
/// same sum as one `[M, batch·K] x [batch·K, N]` product.
fn fold_batch_into_depth(la: &Layout, lb: &Layout) -> Option<(Layout, Layout)> {
    let r = la.rank();
    if r < 3 || lb.rank() != r {
        return None;
    }
    let (sa, ta, sb, tb) = (la.shape(), la.strides(), lb.shape(), lb.strides());
    let (count, a_step) = batch_stride(&sa[..r - 2], &ta[..r - 2])?;
    let (_, b_step) = batch_stride(&sb[..r - 2], &tb[..r - 2])?;
    let k = sa[r - 1];
    if count < 2 || k == 0 {
        return None;
    }
    let a_depth = if k == 1 { a_step } else { ta[r - 1] };
    let b_depth = if k == 1 { b_step } else { tb[r - 2] };
    if a_step != k * a_depth || b_step != k * b_depth || a_depth == 0 || b_depth == 0 {
        return None;
    }
    Some((
        Layout::new(&[sa[r - 2], count * k], &[ta[r - 2], a_depth], la.offset),
        Layout::new(&[count * k, sb[r - 1]], &[b_depth, tb[r - 1]], lb.offset),
    ))
}

/// A batch of products as [`gemm_batched`] (f16, bf16, f32, f64 only), the
/// result stored unrounded in the compute type `E::Acc` (f32 for the
/// 16-bit types): for products a kernel reads on (attention scores).
pub fn gemm_batched_acc<E: CudaFloat>(
    a: &CudaBuffer<E>,
    la: &Layout,
    b: &CudaBuffer<E>,
    lb: &Layout,
    opts: GemmOptions,
) -> Result<CudaBuffer<E::Acc>, CudaError> {
    let (batch, m, k, n) = product_sizes(a, la, b, lb)?;
    let dev = a.device();
    if matches!(E::DTYPE, DType::F8E4M3 | DType::F8E5M2) {
        return Err(CudaError::new(
            "cublasGemmStridedBatchedEx",
            format!("no compute-type product for {}", E::DTYPE),
        ));
    }
    if let Some(empty) = empty_product(dev, (batch, m, k, n)) {
        return empty;
    }
    cublas_gemm(a, la, b, lb, opts, (batch, m, k, n), |x: E::Acc| x)
}

/// The cuBLAS type of `C`'s elements (E's own, or f32/f64 compute types).
fn blas_type<C: CudaDtype>() -> Option<cudaDataType_t> {
    let id = core::any::TypeId::of::<C>();
    Some(if id == core::any::TypeId::of::<f32>() {
        cudaDataType_t::CUDA_R_32F
    } else if id == core::any::TypeId::of::<f64>() {
        cudaDataType_t::CUDA_R_64F
    } else if id == core::any::TypeId::of::<crate::f16>() {
        cudaDataType_t::CUDA_R_16F
    } else if id == core::any::TypeId::of::<crate::bf16>() {
        cudaDataType_t::CUDA_R_16BF
    } else {
        return None;
    })
}

/// One strided-batched cuBLAS product of checked, non-empty operands
/// (`batch` products of `m x k` by `k x n`), stored as `C` (`store` rounds
/// a compute-type sum to `C` on the host emulation).
fn cublas_gemm<E: CudaFloat, C: CudaDtype>(
    a: &CudaBuffer<E>,
    la: &Layout,
    b: &CudaBuffer<E>,
    lb: &Layout,
    opts: GemmOptions,
    (batch, m, k, n): (usize, usize, usize, usize),
    store: impl Fn(E::Acc) -> C,
) -> Result<CudaBuffer<C>, CudaError> {
    let dev = a.device();
    let c = dev.alloc::<C>(batch * m * n)?;
    if let Some((dim, count)) = split_batch_dim(la, lb) {
        // Two batch dims that fold into no single stride (heads read in
        // place from a `[B, T, H·D]` activation): one strided batch per
        // index of the shorter dim, no copies. `C` is `[d0, d1, M, N]`.
        let d1 = la.shape()[1];
        for x in 0..count {
            let (c_offset, c_step) = if dim == 0 {
                (x * d1 * m * n, m * n)
            } else {
                (x * m * n, d1 * m * n)
            };
            blas_call(
                a,
                &drop_batch_dim(la, dim, x),
                b,
                &drop_batch_dim(lb, dim, x),
                (&c, c_offset, c_step),
                opts,
                (batch / count, m, k, n),
                &store,
            )?;
        }
        return Ok(c);
    }
    let (sa, sb) = (la.shape(), lb.shape());
    // Operands whose strides cuBLAS cannot express are copied contiguous.
    let (a_copy, b_copy);
    let (a, la) = match operand(la) {
        Some(_) => (a, *la),
        None => {
            a_copy = to_contiguous(a, la)?;
            (&a_copy, Layout::contiguous(sa))
        }
    };
    let (b, lb) = match operand(lb) {
        Some(_) => (b, *lb),
        None => {
            b_copy = to_contiguous(b, lb)?;
            (&b_copy, Layout::contiguous(sb))
        }
    };
    blas_call(
        a,
        &la,
        b,
        &lb,
        (&c, 0, m * n),
        opts,
        (batch, m, k, n),
        &store,
    )?;
    Ok(c)
}

/// The most strided batches [`cublas_gemm`] issues for one product rather
/// than copying an operand.
const MAX_SPLIT_CALLS: usize = 64;

/// For rank-4 operands that cuBLAS cannot read as one strided batch: the
/// batch dim (0 or 1, the shorter first) whose every index leaves both
/// operands readable, and its length.
fn split_batch_dim(la: &Layout, lb: &Layout) -> Option<(usize, usize)> {
    if la.rank() != 4 || lb.rank() != 4 || (operand(la).is_some() && operand(lb).is_some()) {
        return None;
    }
    let dims = [la.shape()[0], la.shape()[1]];
    let order = if dims[1] <= dims[0] { [1, 0] } else { [0, 1] };
    order.into_iter().find_map(|d| {
        let ok = dims[d] <= MAX_SPLIT_CALLS
            && operand(&drop_batch_dim(la, d, 0)).is_some()
            && operand(&drop_batch_dim(lb, d, 0)).is_some();
        ok.then_some((d, dims[d]))
    })
}

/// `l` without batch dim `dim`, at index `x` of it.
fn drop_batch_dim(l: &Layout, dim: usize, x: usize) -> Layout {
    let (s, t) = (l.shape(), l.strides());
    let keep: Vec<usize> = (0..l.rank()).filter(|&i| i != dim).collect();
    let shape: Vec<usize> = keep.iter().map(|&i| s[i]).collect();
    let strides: Vec<usize> = keep.iter().map(|&i| t[i]).collect();
    Layout::new(&shape, &strides, l.offset + x * t[dim])
}

/// One `cublasGemmStridedBatchedEx` (or its emulation) of readable
/// operands into `c` at element `c_offset`, its matrices `c_step` apart.
#[allow(clippy::too_many_arguments)]
fn blas_call<E: CudaFloat, C: CudaDtype>(
    a: &CudaBuffer<E>,
    la: &Layout,
    b: &CudaBuffer<E>,
    lb: &Layout,
    (c, c_offset, c_step): (&CudaBuffer<C>, usize, usize),
    opts: GemmOptions,
    (batch, m, k, n): (usize, usize, usize, usize),
    store: &impl Fn(E::Acc) -> C,
) -> Result<(), CudaError> {
    let op = "matmul";
    let dev = a.device();
    let (oa, ob) = (
        operand(la).expect("a readable operand"),
        operand(lb).expect("a readable operand"),
    );
    let (dt, compute) = match E::DTYPE {
        DType::F32 if opts.allow_tf32 => (
            cudaDataType_t::CUDA_R_32F,
            cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        ),
        DType::F32 => (
            cudaDataType_t::CUDA_R_32F,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
        ),
        DType::F64 => (
            cudaDataType_t::CUDA_R_64F,
            cublasComputeType_t::CUBLAS_COMPUTE_64F,
        ),
        DType::F16 => (
            cudaDataType_t::CUDA_R_16F,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
        ),
        DType::BF16 => (
            cudaDataType_t::CUDA_R_16BF,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
        ),
        other => {
            return Err(CudaError::new(
                "cublasGemmStridedBatchedEx",
                format!("no cuBLAS type for {other}"),
            ))
        }
    };
    let c_type = blas_type::<C>().ok_or_else(|| {
        CudaError::new(
            "cublasGemmStridedBatchedEx",
            "no cuBLAS type for the product",
        )
    })?;
    let (one64, zero64, one32, zero32) = (1f64, 0f64, 1f32, 0f32);
    let (alpha, beta): (*const c_void, *const c_void) = if E::DTYPE == DType::F64 {
        (
            (&one64 as *const f64).cast(),
            (&zero64 as *const f64).cast(),
        )
    } else {
        (
            (&one32 as *const f32).cast(),
            (&zero32 as *const f32).cast(),
        )
    };
    let size = core::mem::size_of::<E>() as u64;
    let (pa, pb, pc) = (
        a.addr() + oa.offset as u64 * size,
        b.addr() + ob.offset as u64 * size,
        c.addr() + (c_offset * core::mem::size_of::<C>()) as u64,
    );
    // Column-major: C[M,N]ᵀ (N x M, ldc = N) = op(B)·op(A).
    let (mi, ni, ki) = (int(op, "N", n)?, int(op, "M", m)?, int(op, "K", k)?);
    let (lda, ldb, ldc) = (
        int(op, "ld", ob.ld)?,
        int(op, "ld", oa.ld)?,
        int(op, "N", n)?,
    );
    let bcount = int(op, "batch", batch)?;
    let name = || {
        let t = |o: BlasOp| if o == BlasOp::T { "T" } else { "N" };
        let dt = E::DTYPE;
        format!(
            "matmul/gemm_{dt} {m}x{k}x{n} batch {batch} {}{} ld {}/{} batch strides {}/{} align {}/{}",
            t(oa.op),
            t(ob.op),
            oa.ld,
            ob.ld,
            oa.batch_stride,
            ob.batch_stride,
            1 << pa.trailing_zeros().min(8),
            1 << pb.trailing_zeros().min(8)
        )
    };
    dev.with_blas(|blas| match blas {
        // SAFETY: pointers are live buffers of this device; the strides and
        // leading dimensions were derived from checked layouts.
        Some(blas) => dev.profiled(name, || {
            cuda_call("cublasGemmStridedBatchedEx", || unsafe {
                cudarc::cublas::result::gemm_strided_batched_ex(
                    *blas.handle(),
                    cublas_op(ob.op),
                    cublas_op(oa.op),
                    mi,
                    ni,
                    ki,
                    alpha,
                    pb as *const c_void,
                    dt,
                    lda,
                    ob.batch_stride as i64,
                    pa as *const c_void,
                    dt,
                    ldb,
                    oa.batch_stride as i64,
                    beta,
                    pc as *mut c_void,
                    c_type,
                    ldc,
                    c_step as i64,
                    bcount,
                    compute,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
                .map_err(|e| format!("{e:?}"))
            })
        }),
        // SAFETY: host buffers of the emulation, same arguments as cuBLAS gets.
        None => unsafe {
            emulator::gemm_strided_batched::<E, C>(
                (ob.op == BlasOp::T, oa.op == BlasOp::T),
                (n, m, k),
                (pb as *const E, ob.ld, ob.batch_stride),
                (pa as *const E, oa.ld, oa.batch_stride),
                (pc as *mut C, n, c_step),
                store,
                batch,
            );
            Ok(())
        },
    })
}

/// `A · B` for 2-D layouts (`[M, K]` by `[K, N]`).
pub fn gemm<E: CudaFloat>(
    a: &CudaBuffer<E>,
    la: &Layout,
    b: &CudaBuffer<E>,
    lb: &Layout,
    opts: GemmOptions,
) -> Result<CudaBuffer<E>, CudaError> {
    if la.rank() != 2 || lb.rank() != 2 {
        return Err(CudaError::new(
            "shape check for `matmul`",
            format!(
                "gemm needs 2-D operands, got {:?} and {:?}",
                la.shape(),
                lb.shape()
            ),
        ));
    }
    gemm_batched(a, la, b, lb, opts)
}

/// fp8: widen both operands exactly to f32 (contiguous), multiply in f32
/// (no TF32) and round the products once to fp8.
fn gemm_via_f32<E: CudaFloat>(
    a: &CudaBuffer<E>,
    la: &Layout,
    b: &CudaBuffer<E>,
    lb: &Layout,
    total: usize,
    out_dims: &[usize],
) -> Result<CudaBuffer<E>, CudaError> {
    let dev = a.device();
    let wa = widen(dev, a, la)?;
    let wb = widen(dev, b, lb)?;
    let c32 = gemm_batched(
        &wa,
        &Layout::contiguous(la.shape()),
        &wb,
        &Layout::contiguous(lb.shape()),
        GemmOptions::default(),
    )?;
    debug_assert_eq!(c32.len(), out_dims.iter().product::<usize>());
    let mut c = dev.alloc::<E>(total)?;
    dev.launch("matmul", Family::Unary, E::DTYPE, "from_f32")?
        .ptr(&c32)
        .ptr_mut(&mut c)
        .u64(total)
        .run(grid_for(total))?;
    Ok(c)
}

/// The elements `l` selects, widened to f32, contiguous.
fn widen<E: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaBuffer<E>,
    l: &Layout,
) -> Result<CudaBuffer<f32>, CudaError> {
    let n = l.numel();
    let mut out = dev.alloc::<f32>(n)?;
    dev.launch("matmul", Family::Unary, E::DTYPE, "to_f32")?
        .ptr(x)
        .layout(l)
        .ptr_mut(&mut out)
        .u64(n)
        .run(grid_for(n))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_rhs_batches_fold_into_rows() {
        let x = Layout::contiguous(&[4, 8, 16]);
        let w = Layout::new(&[4, 16, 32], &[0, 1, 16], 0); // a shared Wᵀ view
        let (a, b) = fold_batch_into_rows(&x, &w).expect("folds");
        assert_eq!((a.shape(), a.strides()), (&[32, 16][..], &[16, 1][..]));
        assert_eq!((b.shape(), b.strides()), (&[16, 32][..], &[1, 16][..]));
        // a transposed lhs, or an rhs that is not shared, does not fold
        assert!(fold_batch_into_rows(&x.permute(&[0, 2, 1]), &w).is_none());
        assert!(fold_batch_into_rows(&x, &Layout::contiguous(&[4, 16, 32])).is_none());
    }

    #[test]
    fn heads_read_in_place_split_the_shorter_batch_dim() {
        // q of (B=4, H=2, T=8, D=16) read from a (4, 8, 2, 16) activation
        let q = Layout::contiguous(&[4, 8, 2, 16]).permute(&[0, 2, 1, 3]);
        let kt = Layout::contiguous(&[4, 8, 2, 16]).permute(&[0, 2, 3, 1]);
        assert!(operand(&q).is_none());
        assert_eq!(split_batch_dim(&q, &kt), Some((1, 2)));
        let h1 = drop_batch_dim(&q, 1, 1);
        assert_eq!(
            (h1.shape(), h1.strides(), h1.offset),
            (&[4, 8, 16][..], &[256, 32, 1][..], 16)
        );
        // readable operands are not split
        let c = Layout::contiguous(&[4, 2, 8, 16]);
        assert_eq!(
            split_batch_dim(&c, &Layout::contiguous(&[4, 2, 16, 8])),
            None
        );
    }

    #[test]
    fn weight_gradients_fold_into_depth() {
        // Σ_b X_bᵀ G_b with X (4, 8, 16), G (4, 8, 32): depth 4·8
        let xt = Layout::contiguous(&[4, 8, 16]).permute(&[0, 2, 1]);
        let g = Layout::contiguous(&[4, 8, 32]);
        let (a, b) = fold_batch_into_depth(&xt, &g).expect("folds");
        assert_eq!((a.shape(), a.strides()), (&[16, 32][..], &[1, 16][..]));
        assert_eq!((b.shape(), b.strides()), (&[32, 32][..], &[32, 1][..]));
        // a row-major lhs has its depth along rows: no single stride
        assert!(fold_batch_into_depth(&Layout::contiguous(&[4, 16, 8]), &g).is_none());
    }
}
