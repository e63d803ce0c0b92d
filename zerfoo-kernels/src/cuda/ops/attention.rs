//! Fused, memory-efficient scaled dot-product attention
//! ([`crate::cpu::attention`]), FlashAttention-2 style: the `T x T` scores
//! never exist. The forward runs one CUDA block per block of query rows of
//! one head, looping over tiles of keys with an online softmax (tiles no
//! row of the block can see, past the causal limit or outside the window,
//! are skipped) and saves the per-row logsumexp; the backward recomputes
//! the probabilities tile by tile from it. Every output and gradient row is
//! summed by one thread in a fixed order: deterministic, no atomics. See
//! `kernels/attention.cu`.
//!
//! Shapes: queries `(B, H, Tq, D)`, keys `(B, H, Tk, D)`, values
//! `(B, H, Tk, Dv)`, any strides; the masks are the CPU's
//! ([`AttnMask`]), with the padding mask on
//! the device.

use super::matmul::{gemm_batched, gemm_batched_acc, GemmOptions};
use super::CudaFloat;
use crate::cpu::attention::{AttnDims, AttnMask};
use crate::cuda::device::{check_layout, grid_for, same_device, tiles_grid, Launch};
use crate::cuda::{CudaBuffer, CudaDevice, CudaError, Family};
use crate::{DType, Layout};
use cudarc::driver::LaunchConfig;

/// Query (or key) rows per CUDA block of the attention kernels (`AT_BQ`
/// in `kernels/attention.cu`).
const ROWS_PER_BLOCK: u32 = 64;

/// Which keys each query may not see: [`AttnMask`] with the padding mask on
/// the device. Positions are absolute: query row `i` is at `q_offset + i`,
/// key row `j` at `k_offset + j`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CudaAttnMask<'a> {
    /// Hide keys after the query (`kp > qp`).
    pub causal: bool,
    /// Sliding window `w`: hide keys with `kp + w <= qp`; implies the causal limit.
    pub window: Option<usize>,
    /// `(B, Tk)` row-major, `true` for a padded key (hidden from every query and head).
    pub padding: Option<&'a CudaBuffer<bool>>,
    /// Absolute position of query row 0.
    pub q_offset: usize,
    /// Absolute position of key row 0.
    pub k_offset: usize,
}

impl<'a> CudaAttnMask<'a> {
    /// The device twin of a CPU mask, with its padding (if any) already
    /// uploaded as `padding`.
    pub fn from_cpu(mask: &AttnMask<'_>, padding: Option<&'a CudaBuffer<bool>>) -> Self {
        CudaAttnMask {
            causal: mask.causal,
            window: mask.window,
            padding,
            q_offset: mask.q_offset,
            k_offset: mask.k_offset,
        }
    }
}

fn shape_err(op: &str, reason: String) -> CudaError {
    CudaError::new(format!("shape check for `{op}`"), reason)
}

/// Checks the operands and returns their sizes.
#[allow(clippy::too_many_arguments)]
fn dims_of<E: CudaFloat>(
    op: &str,
    q: &CudaBuffer<E>,
    ql: &Layout,
    k: &CudaBuffer<E>,
    kl: &Layout,
    v: &CudaBuffer<E>,
    vl: &Layout,
    mask: &CudaAttnMask<'_>,
) -> Result<AttnDims, CudaError> {
    let dev = q.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, k.device())?;
    same_device(op, dev, v.device())?;
    let (qs, ks, vs) = (ql.shape(), kl.shape(), vl.shape());
    if qs.len() != 4 || ks.len() != 4 || vs.len() != 4 {
        return Err(shape_err(
            op,
            format!("attention takes rank-4 operands, got q {qs:?}, k {ks:?}, v {vs:?}"),
        ));
    }
    if qs[0] != ks[0] || qs[1] != ks[1] || qs[3] != ks[3] || ks[..3] != vs[..3] {
        return Err(shape_err(
            op,
            format!("q {qs:?}, k {ks:?} and v {vs:?} disagree"),
        ));
    }
    check_layout(op, ql, q.len())?;
    check_layout(op, kl, k.len())?;
    check_layout(op, vl, v.len())?;
    let dims = AttnDims::of(ql, kl, vl);
    if let Some(p) = mask.padding {
        same_device(op, dev, p.device())?;
        if p.len() != dims.b * dims.tk {
            return Err(shape_err(
                op,
                format!(
                    "a padding mask of {} for batch {} x {} keys",
                    p.len(),
                    dims.b,
                    dims.tk
                ),
            ));
        }
    }
    Ok(dims)
}

/// Pushes the mask arguments: causal, has_window, window, q_offset,
/// k_offset, padding pointer (0 for none).
fn mask_args(l: &mut Launch<'_>, mask: &CudaAttnMask<'_>) {
    l.i32(i32::from(mask.causal))
        .i32(i32::from(mask.window.is_some()))
        .u64(mask.window.unwrap_or(0))
        .u64(mask.q_offset)
        .u64(mask.k_offset);
    match mask.padding {
        Some(p) => l.ptr(p),
        None => l.u64(0),
    };
}

/// The logsumexp of rows that see no value column: all `-inf`.
fn neg_inf_lse<E: CudaFloat>(
    dev: &CudaDevice,
    rows: usize,
) -> Result<CudaBuffer<E::Acc>, CudaError> {
    let mut lse = dev.alloc::<E::Acc>(rows)?;
    if rows > 0 {
        dev.launch(
            "attention",
            Family::FusedAttention,
            E::DTYPE,
            "attn_fill_acc",
        )?
        .ptr_mut(&mut lse)
        .u64(rows)
        .f64(f64::NEG_INFINITY)
        .run(grid_for(rows))?;
    }
    Ok(lse)
}

/// How attention runs on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionPath {
    /// Whichever [`attention_path`] picks for the call's dtype and sizes.
    Auto,
    /// The fused kernels: the `T x T` scores never exist (memory linear in
    /// the sequence length), CUDA cores only.
    Fused,
    /// cuBLAS products (tensor cores) around a softmax kernel, the
    /// `B·H·Tq·Tk` scores materialized in the compute type: much faster
    /// where they fit (see [`MATERIALIZE_MAX_SCORES`]).
    Materialized,
}

/// The most scores (`B·H·Tq·Tk`) [`attention_path`] materializes: the
/// backward's peak holds two compute-type and two element-type copies,
/// 2 GiB in f32 at this size.
pub const MATERIALIZE_MAX_SCORES: usize = 1 << 27;

/// The path [`attention_forward`] and [`attention_backward`] take for
/// `dims` in `dt`: [`AttentionPath::Materialized`] for f16, bf16, f32 and
/// f64 when no size is zero and the scores fit [`MATERIALIZE_MAX_SCORES`];
/// [`AttentionPath::Fused`] otherwise (fp8, long sequences).
///
/// ```
/// use zerfoo_kernels::cpu::attention::AttnDims;
/// use zerfoo_kernels::cuda::ops::attention::{attention_path, AttentionPath};
/// use zerfoo_kernels::DType;
/// let short = AttnDims { b: 64, h: 6, tq: 256, tk: 256, d: 64, dv: 64 };
/// assert_eq!(attention_path(DType::BF16, &short), AttentionPath::Materialized);
/// let long = AttnDims { b: 8, h: 32, tq: 8192, tk: 8192, d: 128, dv: 128 };
/// assert_eq!(attention_path(DType::BF16, &long), AttentionPath::Fused);
/// assert_eq!(attention_path(DType::F8E4M3, &short), AttentionPath::Fused);
/// ```
pub fn attention_path(dt: DType, dims: &AttnDims) -> AttentionPath {
    let scores = (dims.b * dims.h).saturating_mul(dims.tq.saturating_mul(dims.tk));
    let nonempty = [dims.b, dims.h, dims.tq, dims.tk, dims.d, dims.dv]
        .iter()
        .all(|&n| n > 0);
    let blas_type = matches!(dt, DType::F16 | DType::BF16 | DType::F32 | DType::F64);
    if blas_type && nonempty && scores <= MATERIALIZE_MAX_SCORES {
        AttentionPath::Materialized
    } else {
        AttentionPath::Fused
    }
}

/// Whether a call asking for `path` materializes: [`AttentionPath::Auto`]
/// as [`attention_path`] says; an explicit `Materialized` in a dtype and at
/// sizes the materialized path takes (the score budget aside).
fn materializes(path: AttentionPath, dt: DType, dims: &AttnDims) -> bool {
    let one = AttnDims {
        b: dims.b.min(1),
        h: dims.h.min(1),
        tq: dims.tq.min(1),
        tk: dims.tk.min(1),
        ..*dims
    };
    match path {
        AttentionPath::Auto => attention_path(dt, dims) == AttentionPath::Materialized,
        AttentionPath::Materialized => attention_path(dt, &one) == AttentionPath::Materialized,
        AttentionPath::Fused => false,
    }
}

/// Attention forward on `path`: `softmax(mask(scale · q kᵀ)) v`, returning
/// the output `(B, H, Tq, Dv)` (contiguous) and the per-row logsumexp
/// `(B, H, Tq)` of the scaled, masked scores (compute type; `-inf` for a
/// row that sees no key, whose output is zero), which
/// [`attention_backward`] needs. An explicit
/// [`AttentionPath::Materialized`] falls back to the fused kernels for fp8
/// and for empty sizes.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn attention_forward<E: CudaFloat>(
    path: AttentionPath,
    q: &CudaBuffer<E>,
    ql: &Layout,
    k: &CudaBuffer<E>,
    kl: &Layout,
    v: &CudaBuffer<E>,
    vl: &Layout,
    mask: &CudaAttnMask<'_>,
    scale: f64,
) -> Result<(CudaBuffer<E>, CudaBuffer<E::Acc>), CudaError> {
    let op = "attention";
    let dims = dims_of(op, q, ql, k, kl, v, vl, mask)?;
    if materializes(path, E::DTYPE, &dims) {
        return materialized_forward(q, ql, k, kl, v, vl, mask, scale, dims);
    }
    let AttnDims {
        b,
        h,
        tq,
        tk,
        d,
        dv,
    } = dims;
    let dev = q.device();
    let rows = b * h * tq;
    if dv == 0 || rows == 0 {
        return Ok((dev.alloc::<E>(0)?, neg_inf_lse::<E>(dev, rows)?));
    }
    let mut out = dev.alloc::<E>(rows * dv)?;
    let mut lse = dev.alloc::<E::Acc>(rows)?;
    let mut oacc = dev.alloc::<E::Acc>(rows * dv)?;
    let tiles = b * h * tq.div_ceil(ROWS_PER_BLOCK as usize);
    let mut l = dev.launch(op, Family::FusedAttention, E::DTYPE, "attn_fwd")?;
    l.ptr(q)
        .layout(ql)
        .ptr(k)
        .layout(kl)
        .ptr(v)
        .layout(vl)
        .u64(b)
        .u64(h)
        .u64(tq)
        .u64(tk)
        .u64(d)
        .u64(dv);
    mask_args(&mut l, mask);
    l.f64(scale)
        .ptr_mut(&mut oacc)
        .ptr_mut(&mut out)
        .ptr_mut(&mut lse)
        .run(tiles_grid(tiles, ROWS_PER_BLOCK))?;
    Ok((out, lse))
}

/// Attention backward on `path`: from the upstream gradient `dout` (any
/// layout, `(B, H, Tq, Dv)`), the forward's contiguous output `out` and
/// logsumexp `lse`, returns `(dq, dk, dv)`, contiguous, shaped like `q`,
/// `k`, `v`. The probabilities are recomputed from `lse`
/// (FlashAttention-2): `Di = rowsum(dO ∘ O)`, `dS = P ∘ (dO vᵀ − Di)`,
/// `dq = scale · dS k`, `dk = scale · dSᵀ q`, `dv = Pᵀ dO`.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn attention_backward<E: CudaFloat>(
    path: AttentionPath,
    q: &CudaBuffer<E>,
    ql: &Layout,
    k: &CudaBuffer<E>,
    kl: &Layout,
    v: &CudaBuffer<E>,
    vl: &Layout,
    out: &CudaBuffer<E>,
    lse: &CudaBuffer<E::Acc>,
    dout: &CudaBuffer<E>,
    dl: &Layout,
    mask: &CudaAttnMask<'_>,
    scale: f64,
) -> Result<(CudaBuffer<E>, CudaBuffer<E>, CudaBuffer<E>), CudaError> {
    let op = "attention backward";
    let AttnDims {
        b,
        h,
        tq,
        tk,
        d,
        dv,
    } = dims_of(op, q, ql, k, kl, v, vl, mask)?;
    let dev = q.device();
    for other in [out.device(), dout.device(), lse.device()] {
        same_device(op, dev, other)?;
    }
    let rows = b * h * tq;
    let krows = b * h * tk;
    if dl.shape() != [b, h, tq, dv] {
        return Err(shape_err(
            op,
            format!("dout {:?} for an output ({b}, {h}, {tq}, {dv})", dl.shape()),
        ));
    }
    check_layout(op, dl, dout.len())?;
    if out.len() != rows * dv || lse.len() != rows {
        return Err(shape_err(
            op,
            format!(
                "saved output of {} and logsumexp of {} for {rows} rows of {dv}",
                out.len(),
                lse.len()
            ),
        ));
    }
    if rows == 0 {
        return Ok((
            dev.alloc::<E>(0)?,
            dev.zeros::<E>(krows * d)?,
            dev.zeros::<E>(krows * dv)?,
        ));
    }
    let mut di = dev.alloc::<E::Acc>(rows)?;
    dev.launch(op, Family::FusedAttention, E::DTYPE, "attn_bwd_di")?
        .ptr(out)
        .ptr(dout)
        .layout(dl)
        .u64(h)
        .u64(tq)
        .u64(dv)
        .u64(rows)
        .ptr_mut(&mut di)
        .run(grid_for(rows))?;
    let dims = AttnDims {
        b,
        h,
        tq,
        tk,
        d,
        dv,
    };
    if materializes(path, E::DTYPE, &dims) {
        return materialized_backward(q, ql, k, kl, v, vl, &di, lse, dout, dl, mask, scale, dims);
    }
    let operands = |l: &mut Launch<'_>| {
        l.ptr(q)
            .layout(ql)
            .ptr(k)
            .layout(kl)
            .ptr(v)
            .layout(vl)
            .ptr(dout)
            .layout(dl)
            .ptr(lse)
            .ptr(&di)
            .u64(b)
            .u64(h)
            .u64(tq)
            .u64(tk)
            .u64(d)
            .u64(dv);
        mask_args(l, mask);
        l.f64(scale);
    };
    let mut dq = dev.alloc::<E>(rows * d)?;
    if d > 0 {
        let mut dqacc = dev.alloc::<E::Acc>(rows * d)?;
        let tiles = b * h * tq.div_ceil(ROWS_PER_BLOCK as usize);
        let mut l = dev.launch(op, Family::FusedAttention, E::DTYPE, "attn_bwd_dq")?;
        operands(&mut l);
        l.ptr_mut(&mut dqacc)
            .ptr_mut(&mut dq)
            .run(tiles_grid(tiles, ROWS_PER_BLOCK))?;
    }
    let mut dk = dev.alloc::<E>(krows * d)?;
    let mut dvo = dev.alloc::<E>(krows * dv)?;
    if krows > 0 {
        let mut dkacc = dev.alloc::<E::Acc>(krows * d)?;
        let mut dvacc = dev.alloc::<E::Acc>(krows * dv)?;
        let tiles = b * h * tk.div_ceil(ROWS_PER_BLOCK as usize);
        let mut l = dev.launch(op, Family::FusedAttention, E::DTYPE, "attn_bwd_dkdv")?;
        operands(&mut l);
        l.ptr_mut(&mut dkacc)
            .ptr_mut(&mut dvacc)
            .ptr_mut(&mut dk)
            .ptr_mut(&mut dvo)
            .run(tiles_grid(tiles, ROWS_PER_BLOCK))?;
    }
    Ok((dq, dk, dvo))
}

/// Rows (one warp each) per block of the materialized kernels.
const WARP_ROWS_PER_BLOCK: usize = 8;

/// The grid of the materialized kernels: one warp per row.
fn warp_rows_grid(rows: usize) -> LaunchConfig {
    tiles_grid(
        rows.div_ceil(WARP_ROWS_PER_BLOCK),
        32 * WARP_ROWS_PER_BLOCK as u32,
    )
}

/// `[.., r, c]` read as `[.., c, r]` (a view).
fn swap_last(l: &Layout) -> Layout {
    l.permute(&[0, 1, 3, 2])
}

/// The materialized forward: `S = q kᵀ` (cuBLAS, compute type), the masked
/// softmax kernel (`P` in the element type, the logsumexp), `out = P v`.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn materialized_forward<E: CudaFloat>(
    q: &CudaBuffer<E>,
    ql: &Layout,
    k: &CudaBuffer<E>,
    kl: &Layout,
    v: &CudaBuffer<E>,
    vl: &Layout,
    mask: &CudaAttnMask<'_>,
    scale: f64,
    AttnDims { b, h, tq, tk, .. }: AttnDims,
) -> Result<(CudaBuffer<E>, CudaBuffer<E::Acc>), CudaError> {
    let dev = q.device();
    let opts = GemmOptions {
        allow_tf32: dev.allow_tf32(),
    };
    let rows = b * h * tq;
    let s = gemm_batched_acc(q, ql, k, &swap_last(kl), opts)?;
    let mut p = dev.alloc::<E>(rows * tk)?;
    let mut lse = dev.alloc::<E::Acc>(rows)?;
    let mut l = dev.launch(
        "attention",
        Family::FusedAttention,
        E::DTYPE,
        "attn_mat_softmax",
    )?;
    l.ptr(&s).u64(rows).u64(h).u64(tq).u64(tk);
    mask_args(&mut l, mask);
    l.f64(scale)
        .ptr_mut(&mut p)
        .ptr_mut(&mut lse)
        .run(warp_rows_grid(rows))?;
    drop(s);
    let out = gemm_batched(&p, &Layout::contiguous(&[b, h, tq, tk]), v, vl, opts)?;
    Ok((out, lse))
}

/// The materialized backward: `S = q kᵀ` and `dP = dO vᵀ` (cuBLAS, compute
/// type), the kernel that forms `P` and `dS = scale · P ∘ (dP − Di)` (element
/// type), then `dv = Pᵀ dO`, `dq = dS k`, `dk = dSᵀ q`.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn materialized_backward<E: CudaFloat>(
    q: &CudaBuffer<E>,
    ql: &Layout,
    k: &CudaBuffer<E>,
    kl: &Layout,
    v: &CudaBuffer<E>,
    vl: &Layout,
    di: &CudaBuffer<E::Acc>,
    lse: &CudaBuffer<E::Acc>,
    dout: &CudaBuffer<E>,
    dl: &Layout,
    mask: &CudaAttnMask<'_>,
    scale: f64,
    AttnDims { b, h, tq, tk, .. }: AttnDims,
) -> Result<(CudaBuffer<E>, CudaBuffer<E>, CudaBuffer<E>), CudaError> {
    let dev = q.device();
    let opts = GemmOptions {
        allow_tf32: dev.allow_tf32(),
    };
    let rows = b * h * tq;
    let s = gemm_batched_acc(q, ql, k, &swap_last(kl), opts)?;
    let dp = gemm_batched_acc(dout, dl, v, &swap_last(vl), opts)?;
    let mut p = dev.alloc::<E>(rows * tk)?;
    let mut ds = dev.alloc::<E>(rows * tk)?;
    let mut l = dev.launch(
        "attention backward",
        Family::FusedAttention,
        E::DTYPE,
        "attn_mat_dscores",
    )?;
    l.ptr(&s)
        .ptr(&dp)
        .ptr(lse)
        .ptr(di)
        .u64(rows)
        .u64(h)
        .u64(tq)
        .u64(tk);
    mask_args(&mut l, mask);
    l.f64(scale)
        .ptr_mut(&mut p)
        .ptr_mut(&mut ds)
        .run(warp_rows_grid(rows))?;
    drop((s, dp));
    let pl = Layout::contiguous(&[b, h, tq, tk]);
    let dv = gemm_batched(&p, &swap_last(&pl), dout, dl, opts)?;
    drop(p);
    let dq = gemm_batched(&ds, &pl, k, kl, opts)?;
    let dk = gemm_batched(&ds, &swap_last(&pl), q, ql, opts)?;
    Ok((dq, dk, dv))
}
