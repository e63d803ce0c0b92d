//! Indexing ([`crate::cpu::index`]): embedding lookup (`index_select`) and
//! its scatter-add backward (atomics in the compute type, rounded once),
//! `gather` and its backward (one thread per line: deterministic), and the
//! backward of `select`. Indices are `u32` on the device.

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

/// Checks the ids' dims of a gather against the source's: same rank, each
/// dim but `axis` at most the source's, and `idx` holds one id per element.
fn check_gather_dims(
    op: &str,
    x_dims: &[usize],
    axis: usize,
    idx_len: usize,
    idx_dims: &[usize],
) -> Result<(), CudaError> {
    check_axis(op, x_dims.len(), axis)?;
    let fits = idx_dims.len() == x_dims.len()
        && (0..x_dims.len()).all(|d| d == axis || idx_dims[d] <= x_dims[d])
        && idx_len == idx_dims.iter().product::<usize>();
    if fits {
        Ok(())
    } else {
        Err(CudaError::new(
            format!("shape check for `{op}`"),
            format!(
                "{idx_len} ids of dims {idx_dims:?} for a source of dims {x_dims:?} along axis {axis}"
            ),
        ))
    }
}

/// `torch.gather`: `out[m] = src[m with m[axis] = idx[m]]` for every
/// multi-index `m` of `idx_dims` (same rank as `layout`, each dim except
/// `axis` at most the source's; `idx` contiguous `u32`s, each
/// `< dims[axis]` — an out-of-range id reads 0). Contiguous output of
/// dims `idx_dims`.
pub fn gather<E: CudaFloat>(
    src: &CudaBuffer<E>,
    layout: &Layout,
    axis: usize,
    idx: &CudaBuffer<u32>,
    idx_dims: &[usize],
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "gather";
    let dev = src.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, idx.device())?;
    check_layout(op, layout, src.len())?;
    check_gather_dims(op, layout.shape(), axis, idx.len(), idx_dims)?;
    let n = idx.len();
    let mut out = dev.alloc::<E>(n)?;
    if n == 0 {
        return Ok(out);
    }
    let mut strides = layout.strides().to_vec();
    let stride = strides[axis];
    strides[axis] = 0;
    let base = Layout::new(idx_dims, &strides, layout.offset);
    dev.launch(op, Family::Index, E::DTYPE, "gather")?
        .ptr(src)
        .layout(&base)
        .u64(layout.shape()[axis])
        .u64(stride)
        .ptr(idx)
        .ptr_mut(&mut out)
        .u64(n)
        .run(grid_for(n))?;
    Ok(out)
}

/// Backward of [`gather`]: `gx[m with m[axis] = idx[m]] += gy[m]`, with
/// `gy` contiguous of dims `idx_dims`; the result is contiguous of dims
/// `x_dims`. Each line of `gx` along `axis` is summed by one thread in the
/// order of the ids, in the compute type: deterministic, no atomics.
pub fn gather_backward<E: CudaFloat>(
    grad_y: &CudaBuffer<E>,
    x_dims: &[usize],
    axis: usize,
    idx: &CudaBuffer<u32>,
    idx_dims: &[usize],
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "gather backward";
    let dev = grad_y.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, idx.device())?;
    check_gather_dims(op, x_dims, axis, idx.len(), idx_dims)?;
    check_layout(op, &Layout::contiguous(&[idx.len()]), grad_y.len())?;
    let numel: usize = x_dims.iter().product();
    let mut gx = dev.alloc::<E>(numel)?;
    if numel == 0 {
        return Ok(gx);
    }
    let mut acc = dev.zeros::<E::Acc>(numel)?;
    if !idx.is_empty() {
        let lines = numel / x_dims[axis];
        dev.launch(op, Family::Index, E::DTYPE, "gather_bwd_acc")?
            .ptr(grad_y)
            .layout(&Layout::contiguous(x_dims))
            .layout(&Layout::contiguous(idx_dims))
            .i32(axis as i32)
            .ptr(idx)
            .ptr_mut(&mut acc)
            .u64(lines)
            .run(grid_for(lines))?;
    }
    dev.launch(op, Family::Index, E::DTYPE, "round_from_acc")?
        .ptr(&acc)
        .ptr_mut(&mut gx)
        .u64(numel)
        .run(grid_for(numel))?;
    Ok(gx)
}

/// Backward of picking entry `index` along `axis` (a view): `gy`
/// (contiguous, `x_dims` without `axis`) lands in a zero tensor of dims
/// `x_dims`.
pub fn select_backward<E: CudaFloat>(
    grad_y: &CudaBuffer<E>,
    x_dims: &[usize],
    axis: usize,
    index: usize,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "select backward";
    let dev = grad_y.device();
    dev.check(op, E::DTYPE)?;
    check_axis(op, x_dims.len(), axis)?;
    let (outer, a, inner) = split_at_axis(x_dims, axis);
    if index >= a {
        return Err(CudaError::new(
            "index check",
            format!("index {index} out of range for an axis of {a}"),
        ));
    }
    check_layout(op, &Layout::contiguous(&[outer * inner]), grad_y.len())?;
    let n = outer * a * inner;
    let mut gx = dev.alloc::<E>(n)?;
    if n > 0 {
        dev.launch(op, Family::Index, E::DTYPE, "select_bwd")?
            .ptr(grad_y)
            .u64(a)
            .u64(inner)
            .u64(index)
            .ptr_mut(&mut gx)
            .u64(n)
            .run(grid_for(n))?;
    }
    Ok(gx)
}
