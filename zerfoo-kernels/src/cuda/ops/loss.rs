//! Cross-entropy over the last axis ([`crate::cpu::loss`]): log-softmax +
//! NLL with label smoothing and ignored rows, one block per row; the total
//! stays on the device.

use super::CudaFloat;
use crate::cuda::device::{check_layout, rows_grid, same_device, BLOCK};
use crate::cuda::{CudaBuffer, CudaError, Family};
use crate::Layout;
use cudarc::driver::LaunchConfig;

/// A target meaning "ignore this row" (the CPU's `IGNORED`, as `u32`).
pub const IGNORED: u32 = u32::MAX;

/// What the forward keeps per row for the backward (compute type).
#[derive(Debug)]
pub struct CudaRowStats<A> {
    /// Row maxima.
    pub max: CudaBuffer<A>,
    /// `ln(sum(exp(x - max)))` per row.
    pub ln_sum: CudaBuffer<A>,
}

fn rows_of(op: &str, layout: &Layout, targets: usize) -> Result<(usize, usize, usize), CudaError> {
    let dims = layout.shape();
    if dims.is_empty() {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            "logits need a class axis",
        ));
    }
    let c = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    if targets != rows {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            format!("{targets} targets for {rows} rows"),
        ));
    }
    Ok((rows, c, layout.strides()[dims.len() - 1]))
}

/// Sum over non-ignored rows of the cross-entropy of each row of `x` (last
/// axis = classes) against `targets` (a class `< C` or [`IGNORED`]; an
/// out-of-range target makes the loss NaN), with label smoothing `eps`.
/// Returns the sum as a one-element device buffer, and the row statistics.
#[allow(clippy::type_complexity)]
pub fn cross_entropy_forward<E: CudaFloat>(
    x: &CudaBuffer<E>,
    layout: &Layout,
    targets: &CudaBuffer<u32>,
    eps: f64,
) -> Result<(CudaBuffer<E::Acc>, CudaRowStats<E::Acc>), CudaError> {
    let op = "cross_entropy";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, targets.device())?;
    check_layout(op, layout, x.len())?;
    let (rows, c, stride) = rows_of(op, layout, targets.len())?;
    let mut losses = dev.zeros::<E::Acc>(rows)?;
    let mut max = dev.zeros::<E::Acc>(rows)?;
    let mut ln_sum = dev.zeros::<E::Acc>(rows)?;
    let mut total = dev.zeros::<E::Acc>(1)?;
    if rows == 0 {
        return Ok((total, CudaRowStats { max, ln_sum }));
    }
    {
        dev.launch(op, Family::Loss, E::DTYPE, "ce_fwd")?
            .ptr(x)
            .layout(layout)
            .u64(rows)
            .u64(c)
            .u64(stride)
            .ptr(targets)
            .f64(eps)
            .ptr_mut(&mut losses)
            .ptr_mut(&mut max)
            .ptr_mut(&mut ln_sum)
            .run(rows_grid(rows))?;
    }
    let one_block = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    dev.launch(op, Family::Loss, E::DTYPE, "sum_acc")?
        .ptr(&losses)
        .u64(rows)
        .ptr_mut(&mut total)
        .run(one_block)?;
    Ok((total, CudaRowStats { max, ln_sum }))
}

/// Backward of [`cross_entropy_forward`]: for each non-ignored row
/// `g_c = scale (softmax_c - (1 - eps) [c == t] - eps / C)`, zeros for
/// ignored rows. Output contiguous, shaped like `x`.
pub fn cross_entropy_backward<E: CudaFloat>(
    x: &CudaBuffer<E>,
    layout: &Layout,
    targets: &CudaBuffer<u32>,
    stats: &CudaRowStats<E::Acc>,
    eps: f64,
    scale: f64,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "cross_entropy backward";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, targets.device())?;
    check_layout(op, layout, x.len())?;
    let (rows, c, stride) = rows_of(op, layout, targets.len())?;
    check_layout(
        op,
        &Layout::contiguous(&[rows]),
        stats.max.len().min(stats.ln_sum.len()),
    )?;
    let mut gx = dev.alloc::<E>(rows * c)?;
    if rows == 0 || c == 0 {
        return Ok(gx);
    }
    dev.launch(op, Family::Loss, E::DTYPE, "ce_bwd")?
        .ptr(x)
        .layout(layout)
        .u64(rows)
        .u64(c)
        .u64(stride)
        .ptr(targets)
        .ptr(&stats.max)
        .ptr(&stats.ln_sum)
        .f64(eps)
        .f64(scale)
        .ptr_mut(&mut gx)
        .run(rows_grid(rows))?;
    Ok(gx)
}
