//! Layer norm and RMS norm over the last axis ([`crate::cpu::norm`]): one
//! block per row forward and for the input gradient; the weight and bias
//! gradients are column sums over fixed chunks of rows, added in order.

use super::CudaFloat;
use crate::cpu::norm::NormKind;
use crate::cuda::device::{check_layout, grid_for, rows_grid, same_device, Launch, BLOCK};
use crate::cuda::{CudaBuffer, CudaError, Family};
use crate::Layout;
use cudarc::driver::LaunchConfig;

/// Per-row statistics saved by [`norm_forward`] (in the compute type):
/// `xhat = (x - mean) * rstd`.
#[derive(Debug)]
pub struct CudaNormStats<A> {
    /// Row means (0 for the RMS norms).
    pub mean: CudaBuffer<A>,
    /// `1 / sqrt(var + eps)` per row.
    pub rstd: CudaBuffer<A>,
}

/// Gradients of a normalization.
#[derive(Debug)]
pub struct CudaNormGrads<E> {
    /// Input gradient, contiguous, shaped like the input.
    pub x: CudaBuffer<E>,
    /// Weight gradient (`None` without a weight).
    pub weight: Option<CudaBuffer<E>>,
    /// Bias gradient (`None` without a bias).
    pub bias: Option<CudaBuffer<E>>,
}

fn kind_code(kind: NormKind) -> i32 {
    match kind {
        NormKind::Layer => 0,
        NormKind::Rms => 1,
        NormKind::RmsOffset => 2,
    }
}

/// Pushes an optional weight or bias: pointer, layout, presence flag (an
/// absent one passes a 1-element dummy the kernel never reads).
fn param_args<E: CudaFloat>(l: &mut Launch<'_>, p: Option<(&CudaBuffer<E>, &Layout)>) {
    match p {
        Some((b, lay)) => l.ptr(b).layout(lay).i32(1),
        None => l.u64(0).no_layout().i32(0),
    };
}

/// Row count, row length and element stride of the last axis.
fn rows_of(op: &str, lx: &Layout) -> Result<(usize, usize, usize), CudaError> {
    if lx.rank() == 0 {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            "normalization needs rank >= 1",
        ));
    }
    let n = lx.shape()[lx.rank() - 1];
    let rows = lx.numel().checked_div(n).unwrap_or(0);
    Ok((rows, n, lx.strides()[lx.rank() - 1]))
}

fn check_param<E: CudaFloat>(
    op: &str,
    dev: &crate::cuda::CudaDevice,
    p: Option<(&CudaBuffer<E>, &Layout)>,
    n: usize,
) -> Result<(), CudaError> {
    if let Some((b, l)) = p {
        same_device(op, dev, b.device())?;
        if l.shape() != [n] {
            return Err(CudaError::new(
                format!("shape check for `{op}`"),
                format!("weight/bias of shape {:?} for rows of {n}", l.shape()),
            ));
        }
        check_layout(op, l, b.len())?;
    }
    Ok(())
}

/// Normalizes every row along the last axis of `x` (any layout), then
/// scales by `weight` and shifts by `bias` (each of the axis length).
/// Returns the contiguous output and the per-row statistics.
#[allow(clippy::type_complexity)]
pub fn norm_forward<E: CudaFloat>(
    kind: NormKind,
    x: &CudaBuffer<E>,
    lx: &Layout,
    weight: Option<(&CudaBuffer<E>, &Layout)>,
    bias: Option<(&CudaBuffer<E>, &Layout)>,
    eps: f64,
) -> Result<(CudaBuffer<E>, CudaNormStats<E::Acc>), CudaError> {
    let op = "norm";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    check_layout(op, lx, x.len())?;
    let (rows, n, stride) = rows_of(op, lx)?;
    check_param(op, dev, weight, n)?;
    check_param(op, dev, bias, n)?;
    let mut y = dev.alloc::<E>(rows * n)?;
    let mut mean = dev.alloc::<E::Acc>(rows)?;
    let mut rstd = dev.alloc::<E::Acc>(rows)?;
    if rows > 0 && n > 0 {
        let mut l = dev.launch(op, Family::Norm, E::DTYPE, "norm_fwd")?;
        l.i32(kind_code(kind))
            .ptr(x)
            .layout(lx)
            .u64(rows)
            .u64(n)
            .u64(stride);
        param_args(&mut l, weight);
        param_args(&mut l, bias);
        l.f64(eps)
            .ptr_mut(&mut y)
            .ptr_mut(&mut mean)
            .ptr_mut(&mut rstd);
        l.run(rows_grid(rows))?;
    }
    Ok((y, CudaNormStats { mean, rstd }))
}

/// Backward of [`norm_forward`] given the saved `stats` and the contiguous
/// `grad_y`: the input gradient, and the weight (`Σ_rows grad_y · xhat`) and
/// bias (`Σ_rows grad_y`) gradients when present.
pub fn norm_backward<E: CudaFloat>(
    kind: NormKind,
    x: &CudaBuffer<E>,
    lx: &Layout,
    weight: Option<(&CudaBuffer<E>, &Layout)>,
    has_bias: bool,
    stats: &CudaNormStats<E::Acc>,
    grad_y: &CudaBuffer<E>,
) -> Result<CudaNormGrads<E>, CudaError> {
    let op = "norm backward";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, grad_y.device())?;
    check_layout(op, lx, x.len())?;
    let (rows, n, stride) = rows_of(op, lx)?;
    check_param(op, dev, weight, n)?;
    check_layout(op, &Layout::contiguous(&[rows * n]), grad_y.len())?;
    check_layout(
        op,
        &Layout::contiguous(&[rows]),
        stats.mean.len().min(stats.rstd.len()),
    )?;
    let has_weight = weight.is_some();
    let mut gx = dev.alloc::<E>(rows * n)?;
    let mut gw = if has_weight {
        Some(dev.zeros::<E>(n)?)
    } else {
        None
    };
    let mut gb = if has_bias {
        Some(dev.zeros::<E>(n)?)
    } else {
        None
    };
    if rows == 0 || n == 0 {
        return Ok(CudaNormGrads {
            x: gx,
            weight: gw,
            bias: gb,
        });
    }
    {
        let mut l = dev.launch(op, Family::Norm, E::DTYPE, "norm_bwd_x")?;
        l.i32(kind_code(kind))
            .ptr(x)
            .layout(lx)
            .u64(rows)
            .u64(n)
            .u64(stride);
        param_args(&mut l, weight);
        l.ptr(&stats.mean)
            .ptr(&stats.rstd)
            .ptr(grad_y)
            .ptr_mut(&mut gx);
        l.run(rows_grid(rows))?;
    }
    if has_weight || has_bias {
        // Fixed chunking (depends on the shape only): deterministic sums.
        let chunks = rows.clamp(1, 64);
        let per_chunk = rows.div_ceil(chunks);
        let chunks = rows.div_ceil(per_chunk);
        let mut pw = dev.alloc::<E::Acc>(chunks * n)?;
        let mut pb = dev.alloc::<E::Acc>(chunks * n)?;
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(BLOCK as usize) as u32, chunks as u32, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        dev.launch(op, Family::Norm, E::DTYPE, "norm_bwd_wb_partial")?
            .ptr(x)
            .layout(lx)
            .u64(rows)
            .u64(n)
            .u64(stride)
            .ptr(&stats.mean)
            .ptr(&stats.rstd)
            .ptr(grad_y)
            .u64(per_chunk)
            .ptr_mut(&mut pw)
            .ptr_mut(&mut pb)
            .run(cfg)?;
        for (p, out) in [(&pw, gw.as_mut()), (&pb, gb.as_mut())] {
            if let Some(out) = out {
                dev.launch(op, Family::Norm, E::DTYPE, "sum_chunks")?
                    .ptr(p)
                    .u64(chunks)
                    .u64(n)
                    .ptr_mut(out)
                    .run(grid_for(n))?;
            }
        }
    }
    Ok(CudaNormGrads {
        x: gx,
        weight: gw,
        bias: gb,
    })
}
