//! Reductions over axes ([`crate::cpu::reduce`]): `scale * sum` and
//! max/min with tie counts, and their backward passes. Each output folds its
//! block in the compute type (one warp per output).

use super::elementwise::unary_forward;
use super::CudaFloat;
use crate::cpu::reduce::{expand_layout, split_axes};
use crate::cpu::unary::MulScalar;
use crate::cuda::device::{check_layout, grid_for, same_device};
use crate::cuda::{CudaBuffer, CudaError, Family};
use crate::Layout;

fn check_axes(op: &str, layout: &Layout, axes: &[usize]) -> Result<(), CudaError> {
    let rank = layout.rank();
    let mut seen = [false; crate::MAX_RANK];
    for &a in axes {
        if a >= rank || seen[a] {
            return Err(CudaError::new(
                format!("axes check for `{op}`"),
                format!("axes {axes:?} are not distinct axes of a rank-{rank} layout"),
            ));
        }
        seen[a] = true;
    }
    Ok(())
}

/// `scale * sum(x)` over `axes` (any layout): contiguous, shaped like the
/// kept dims in order. Accumulates in the compute type.
pub fn sum_axes<E: CudaFloat>(
    x: &CudaBuffer<E>,
    layout: &Layout,
    axes: &[usize],
    scale: f64,
) -> Result<CudaBuffer<E>, CudaError> {
    let dev = x.device();
    dev.check("sum", E::DTYPE)?;
    check_axes("sum", layout, axes)?;
    check_layout("sum", layout, x.len())?;
    let (kept, moved, inner) = split_axes(layout, axes);
    let outer: usize = kept.iter().product();
    let mut y = dev.alloc::<E>(outer)?;
    if outer == 0 {
        return Ok(y);
    }
    dev.launch("sum", Family::Reduce, E::DTYPE, "reduce_sum")?
        .ptr(x)
        .layout(&moved)
        .u64(outer)
        .u64(inner)
        .f64(scale)
        .ptr_mut(&mut y)
        .run(grid_for(outer * 32))?;
    Ok(y)
}

/// Backward of [`sum_axes`]: `grad_x = scale * grad_y` spread over the
/// reduced axes of `dims` (contiguous, shaped `dims`).
pub fn sum_backward<E: CudaFloat>(
    grad_y: &CudaBuffer<E>,
    dims: &[usize],
    axes: &[usize],
    scale: f64,
) -> Result<CudaBuffer<E>, CudaError> {
    unary_forward(MulScalar(scale), grad_y, &expand_layout(dims, axes))
}

/// `max` (`MAX = true`) or `min` over `axes`, with the number of elements
/// equal to it (`u32`, for the backward's even split). NaN propagates (its
/// count is the number of NaNs); an empty block gives `∓inf` with count 0.
pub fn extreme_axes<E: CudaFloat, const MAX: bool>(
    x: &CudaBuffer<E>,
    layout: &Layout,
    axes: &[usize],
) -> Result<(CudaBuffer<E>, CudaBuffer<u32>), CudaError> {
    let op = if MAX { "max" } else { "min" };
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    check_axes(op, layout, axes)?;
    check_layout(op, layout, x.len())?;
    let (kept, moved, inner) = split_axes(layout, axes);
    let outer: usize = kept.iter().product();
    let mut y = dev.alloc::<E>(outer)?;
    let mut counts = dev.alloc::<u32>(outer)?;
    if outer == 0 {
        return Ok((y, counts));
    }
    dev.launch(op, Family::Reduce, E::DTYPE, "reduce_extreme")?
        .ptr(x)
        .layout(&moved)
        .u64(outer)
        .u64(inner)
        .i32(i32::from(MAX))
        .ptr_mut(&mut y)
        .ptr_mut(&mut counts)
        .run(grid_for(outer * 32))?;
    Ok((y, counts))
}

/// Backward of [`extreme_axes`]: elements equal to their block's extreme get
/// `grad_y / count`, the rest 0. `y`, `counts`, `grad_y` contiguous, shaped
/// like the kept dims; output contiguous, shaped like `x`.
pub fn extreme_backward<E: CudaFloat>(
    x: &CudaBuffer<E>,
    lx: &Layout,
    axes: &[usize],
    y: &CudaBuffer<E>,
    counts: &CudaBuffer<u32>,
    grad_y: &CudaBuffer<E>,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "max/min backward";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    for d in [y.device(), counts.device(), grad_y.device()] {
        same_device(op, dev, d)?;
    }
    check_axes(op, lx, axes)?;
    check_layout(op, lx, x.len())?;
    let le = expand_layout(lx.shape(), axes);
    for len in [y.len(), counts.len(), grad_y.len()] {
        check_layout(op, &le, len)?;
    }
    let n = lx.numel();
    let mut gx = dev.alloc::<E>(n)?;
    if n == 0 {
        return Ok(gx);
    }
    dev.launch(op, Family::Reduce, E::DTYPE, "extreme_bwd")?
        .ptr(x)
        .layout(lx)
        .ptr(y)
        .ptr(counts)
        .ptr(grad_y)
        .layout(&le)
        .ptr_mut(&mut gx)
        .u64(n)
        .run(grid_for(n))?;
    Ok(gx)
}
