//! Embedding lookup ([`crate::cpu::index::index_select`]) and its
//! scatter-add backward: indices are `u32` on the device; the backward adds
//! with atomics in the compute type and rounds once.

use super::softmax::check_axis;
use super::CudaFloat;
use crate::cpu::index::split_at_axis;
use crate::cuda::device::{check_layout, grid_for, same_device};
use crate::cuda::{CudaBuffer, CudaDevice, CudaError, Family};
use crate::Layout;

/// Uploads checked indices (each `< size`) as `u32`.
pub fn indices_to_device(
    dev: &CudaDevice,
    idx: &[usize],
    size: usize,
) -> Result<CudaBuffer<u32>, CudaError> {
    let mut v = Vec::with_capacity(idx.len());
    for &i in idx {
        if i >= size || i >= u32::MAX as usize {
            return Err(CudaError::new(
                "index check",
                format!("index {i} out of range for an axis of {size}"),
            ));
        }
        v.push(i as u32);
    }
    dev.to_device(&v)
}

/// Picks entries `idx` (each `< dims[axis]`, checked by the caller, e.g.
/// with [`indices_to_device`]) along `axis`: contiguous output with
/// `dims[axis]` replaced by `idx.len()`. An out-of-range index reads 0.
pub fn index_select<E: CudaFloat>(
    src: &CudaBuffer<E>,
    layout: &Layout,
    axis: usize,
    idx: &CudaBuffer<u32>,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "index_select";
    let dev = src.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, idx.device())?;
    check_axis(op, layout.rank(), axis)?;
    check_layout(op, layout, src.len())?;
    let (outer, a, inner) = split_at_axis(layout.shape(), axis);
    let m = idx.len();
    let n = outer * m * inner;
    let mut out = dev.alloc::<E>(n)?;
    if n == 0 {
        return Ok(out);
    }
    dev.launch(op, Family::Index, E::DTYPE, "index_select")?
        .ptr(src)
        .layout(layout)
        .u64(a)
        .ptr(idx)
        .u64(m)
        .u64(inner)
        .ptr_mut(&mut out)
        .u64(n)
        .run(grid_for(n))?;
    Ok(out)
}

/// Backward of [`index_select`]: `gx[o, idx[j], i] += gy[o, j, i]` (a
/// repeated index accumulates), `gy` contiguous of dims `x_dims` with
/// `x_dims[axis]` replaced by `idx.len()`. Output contiguous of `x_dims`.
pub fn index_select_backward<E: CudaFloat>(
    grad_y: &CudaBuffer<E>,
    x_dims: &[usize],
    axis: usize,
    idx: &CudaBuffer<u32>,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "index_select backward";
    let dev = grad_y.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, idx.device())?;
    check_axis(op, x_dims.len(), axis)?;
    let (outer, a, inner) = split_at_axis(x_dims, axis);
    let m = idx.len();
    let n = outer * m * inner;
    check_layout(op, &Layout::contiguous(&[n]), grad_y.len())?;
    let total = outer * a * inner;
    let mut acc = dev.zeros::<E::Acc>(total)?;
    let mut gx = dev.alloc::<E>(total)?;
    if total == 0 {
        return Ok(gx);
    }
    if n > 0 {
        dev.launch(op, Family::Index, E::DTYPE, "index_add_acc")?
            .ptr(grad_y)
            .u64(a)
            .ptr(idx)
            .u64(m)
            .u64(inner)
            .ptr_mut(&mut acc)
            .u64(n)
            .run(grid_for(n))?;
    }
    dev.launch(op, Family::Index, E::DTYPE, "round_from_acc")?
        .ptr(&acc)
        .ptr_mut(&mut gx)
        .u64(total)
        .run(grid_for(total))?;
    Ok(gx)
}
