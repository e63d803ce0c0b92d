//! Embedding lookup ([`crate::cpu::index::index_select`]) and its
//! scatter-add backward: indices are `u32` on the device; the backward adds
//! with atomics in the compute type and rounds once.

use super::softmax::check_axis;
use super::CudaFloat;
use crate::cpu::index::split_at_axis;
use crate::cuda::device::{check_layout, grid_for, launched, same_device};
use crate::cuda::{CudaBuffer, CudaDevice, CudaError, DevLayout, Family};
use crate::Layout;
use cudarc::driver::PushKernelArg;

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
    let f = dev.function(op, Family::Index, E::DTYPE, "index_select")?;
    let (dl, a64, m64, in64, n64) = (
        DevLayout::new(layout),
        a as u64,
        m as u64,
        inner as u64,
        n as u64,
    );
    let mut b = dev.stream().launch_builder(&f);
    b.arg(src.raw())
        .arg(&dl)
        .arg(&a64)
        .arg(idx.raw())
        .arg(&m64)
        .arg(&in64)
        .arg(out.raw_mut())
        .arg(&n64);
    // SAFETY: argument list matches `index_select`; layout checked, indices bounds-checked in the kernel.
    launched("index_select", unsafe { b.launch(grid_for(n)) })?;
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
        let f = dev.function(op, Family::Index, E::DTYPE, "index_add_acc")?;
        let (a64, m64, in64, n64) = (a as u64, m as u64, inner as u64, n as u64);
        let mut b = dev.stream().launch_builder(&f);
        b.arg(grad_y.raw())
            .arg(&a64)
            .arg(idx.raw())
            .arg(&m64)
            .arg(&in64)
            .arg(acc.raw_mut())
            .arg(&n64);
        // SAFETY: argument list matches `index_add_acc`; acc holds outer * a * inner.
        launched("index_add_acc", unsafe { b.launch(grid_for(n)) })?;
    }
    let f = dev.function(op, Family::Index, E::DTYPE, "round_from_acc")?;
    let t64 = total as u64;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(acc.raw()).arg(gx.raw_mut()).arg(&t64);
    // SAFETY: argument list matches `round_from_acc`.
    launched("round_from_acc", unsafe { b.launch(grid_for(total)) })?;
    Ok(gx)
}
