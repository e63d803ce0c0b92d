//! Reductions over axes ([`crate::cpu::reduce`]): `scale * sum`, max/min
//! with tie counts, variance (Welford), logsumexp (online max), argmax /
//! argmin, and their backward passes. Each output folds its block in the
//! compute type (one warp per output, lanes merged in a fixed order).

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

/// Variance of each block over `axes` with `correction` (Bessel's is 1):
/// `sum((x - mean)^2) / (n - correction)` in the compute type (Welford per
/// lane, merged across the warp), and the block means (compute type, for
/// the backward). `n <= correction` divides by zero, as PyTorch does.
#[allow(clippy::type_complexity)]
pub fn var_axes<E: CudaFloat>(
    x: &CudaBuffer<E>,
    layout: &Layout,
    axes: &[usize],
    correction: usize,
) -> Result<(CudaBuffer<E>, CudaBuffer<E::Acc>), CudaError> {
    let op = "var";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    check_axes(op, layout, axes)?;
    check_layout(op, layout, x.len())?;
    let (kept, moved, inner) = split_axes(layout, axes);
    let outer: usize = kept.iter().product();
    let mut y = dev.alloc::<E>(outer)?;
    let mut means = dev.alloc::<E::Acc>(outer)?;
    if outer > 0 {
        dev.launch(op, Family::Reduce, E::DTYPE, "reduce_var")?
            .ptr(x)
            .layout(&moved)
            .u64(outer)
            .u64(inner)
            .u64(correction)
            .ptr_mut(&mut y)
            .ptr_mut(&mut means)
            .run(grid_for(outer * 32))?;
    }
    Ok((y, means))
}

/// Checks the kept-dims buffers of a reduction backward and returns the
/// layout reading them at the input's full shape.
fn kept_layout(op: &str, lx: &Layout, axes: &[usize], lens: &[usize]) -> Result<Layout, CudaError> {
    check_axes(op, lx, axes)?;
    let le = expand_layout(lx.shape(), axes);
    for &len in lens {
        check_layout(op, &le, len)?;
    }
    Ok(le)
}

/// Backward of [`var_axes`]: `grad_x = grad_y * 2 (x - mean) / (n - correction)`.
pub fn var_backward<E: CudaFloat>(
    x: &CudaBuffer<E>,
    lx: &Layout,
    axes: &[usize],
    means: &CudaBuffer<E::Acc>,
    correction: usize,
    grad_y: &CudaBuffer<E>,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "var backward";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, means.device())?;
    same_device(op, dev, grad_y.device())?;
    check_layout(op, lx, x.len())?;
    let le = kept_layout(op, lx, axes, &[means.len(), grad_y.len()])?;
    let count: usize = axes.iter().map(|&a| lx.shape()[a]).product();
    let k = 2.0 / count.saturating_sub(correction) as f64;
    let n = lx.numel();
    let mut gx = dev.alloc::<E>(n)?;
    if n > 0 {
        dev.launch(op, Family::Reduce, E::DTYPE, "var_bwd")?
            .ptr(x)
            .layout(lx)
            .ptr(means)
            .ptr(grad_y)
            .layout(&le)
            .f64(k)
            .ptr_mut(&mut gx)
            .u64(n)
            .run(grid_for(n))?;
    }
    Ok(gx)
}

/// `log(sum(exp(x)))` of each block over `axes`, in the compute type, one
/// pass with an online max: `-inf` elements add nothing, a `+inf` element
/// gives `+inf`, NaN gives NaN, an empty or all-`-inf` block gives `-inf`.
pub fn logsumexp_axes<E: CudaFloat>(
    x: &CudaBuffer<E>,
    layout: &Layout,
    axes: &[usize],
) -> Result<CudaBuffer<E::Acc>, CudaError> {
    let op = "logsumexp";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    check_axes(op, layout, axes)?;
    check_layout(op, layout, x.len())?;
    let (kept, moved, inner) = split_axes(layout, axes);
    let outer: usize = kept.iter().product();
    let mut y = dev.alloc::<E::Acc>(outer)?;
    if outer > 0 {
        dev.launch(op, Family::Reduce, E::DTYPE, "reduce_lse")?
            .ptr(x)
            .layout(&moved)
            .u64(outer)
            .u64(inner)
            .ptr_mut(&mut y)
            .run(grid_for(outer * 32))?;
    }
    Ok(y)
}

/// Backward of [`logsumexp_axes`]: `grad_x = grad_y * exp(x - lse)` (the
/// softmax of the block).
pub fn logsumexp_backward<E: CudaFloat>(
    x: &CudaBuffer<E>,
    lx: &Layout,
    axes: &[usize],
    lse: &CudaBuffer<E::Acc>,
    grad_y: &CudaBuffer<E>,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "logsumexp backward";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, lse.device())?;
    same_device(op, dev, grad_y.device())?;
    check_layout(op, lx, x.len())?;
    let le = kept_layout(op, lx, axes, &[lse.len(), grad_y.len()])?;
    let n = lx.numel();
    let mut gx = dev.alloc::<E>(n)?;
    if n > 0 {
        dev.launch(op, Family::Reduce, E::DTYPE, "lse_bwd")?
            .ptr(x)
            .layout(lx)
            .ptr(lse)
            .ptr(grad_y)
            .layout(&le)
            .ptr_mut(&mut gx)
            .u64(n)
            .run(grid_for(n))?;
    }
    Ok(gx)
}

/// The position (row-major within the block, as `u32`) of each block's
/// maximum (`MAX = true`) or minimum over `axes`: the first one on ties,
/// the first NaN if there is one (NaN counts as the extreme either way, as
/// in PyTorch). An empty block gives 0.
pub fn arg_extreme_axes<E: CudaFloat, const MAX: bool>(
    x: &CudaBuffer<E>,
    layout: &Layout,
    axes: &[usize],
) -> Result<CudaBuffer<u32>, CudaError> {
    let op = if MAX { "argmax" } else { "argmin" };
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    check_axes(op, layout, axes)?;
    check_layout(op, layout, x.len())?;
    let (kept, moved, inner) = split_axes(layout, axes);
    if inner > u32::MAX as usize {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            format!("blocks of {inner} elements do not fit u32 positions"),
        ));
    }
    let outer: usize = kept.iter().product();
    let mut y = dev.alloc::<u32>(outer)?;
    if outer > 0 {
        dev.launch(op, Family::Reduce, E::DTYPE, "reduce_arg")?
            .ptr(x)
            .layout(&moved)
            .u64(outer)
            .u64(inner)
            .i32(i32::from(MAX))
            .ptr_mut(&mut y)
            .run(grid_for(outer * 32))?;
    }
    Ok(y)
}
