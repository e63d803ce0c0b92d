//! Softmax and log-softmax along one axis ([`crate::cpu::softmax`]): one
//! block per row, max-subtracted in the compute type, rounded once.

use super::CudaFloat;
use crate::cpu::softmax::AxisRows;
use crate::cuda::device::{check_layout, rows_grid, same_device};
use crate::cuda::{CudaBuffer, CudaError, Family};
use crate::Layout;

pub(crate) fn check_axis(op: &str, rank: usize, axis: usize) -> Result<(), CudaError> {
    if axis < rank {
        Ok(())
    } else {
        Err(CudaError::new(
            format!("axis check for `{op}`"),
            format!("axis {axis} out of range for rank {rank}"),
        ))
    }
}

/// `softmax(x)` (`LOG = false`) or `log_softmax(x)` (`LOG = true`) along
/// `axis` of `x` (any layout); contiguous output.
pub fn softmax_forward<E: CudaFloat, const LOG: bool>(
    x: &CudaBuffer<E>,
    layout: &Layout,
    axis: usize,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = if LOG { "log_softmax" } else { "softmax" };
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    check_axis(op, layout.rank(), axis)?;
    check_layout(op, layout, x.len())?;
    let rows = AxisRows::new(layout.shape(), axis);
    let mut y = dev.alloc::<E>(layout.numel())?;
    if rows.count() == 0 || rows.n == 0 {
        return Ok(y);
    }
    dev.launch(op, Family::Softmax, E::DTYPE, "softmax_fwd")?
        .ptr(x)
        .layout(layout)
        .u64(rows.count())
        .u64(rows.n)
        .u64(rows.inner)
        .u64(layout.strides()[axis])
        .i32(i32::from(LOG))
        .ptr_mut(&mut y)
        .run(rows_grid(rows.count()))?;
    Ok(y)
}

/// Backward from the saved output `y` and `grad_y` (both contiguous, shaped
/// `dims`): softmax `gx = y (gy - Σ gy y)`, log-softmax `gx = gy - exp(y) Σ gy`.
pub fn softmax_backward<E: CudaFloat, const LOG: bool>(
    y: &CudaBuffer<E>,
    grad_y: &CudaBuffer<E>,
    dims: &[usize],
    axis: usize,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = if LOG {
        "log_softmax backward"
    } else {
        "softmax backward"
    };
    let dev = y.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, grad_y.device())?;
    check_axis(op, dims.len(), axis)?;
    let l = Layout::contiguous(dims);
    check_layout(op, &l, y.len())?;
    check_layout(op, &l, grad_y.len())?;
    let rows = AxisRows::new(dims, axis);
    let mut gx = dev.alloc::<E>(l.numel())?;
    if rows.count() == 0 || rows.n == 0 {
        return Ok(gx);
    }
    dev.launch(op, Family::Softmax, E::DTYPE, "softmax_bwd")?
        .ptr(y)
        .ptr(grad_y)
        .u64(rows.count())
        .u64(rows.n)
        .u64(rows.inner)
        .i32(i32::from(LOG))
        .ptr_mut(&mut gx)
        .run(rows_grid(rows.count()))?;
    Ok(gx)
}
