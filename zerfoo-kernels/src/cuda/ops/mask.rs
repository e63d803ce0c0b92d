//! Mask kernels ([`crate::cpu::mask`]): select by a boolean mask, the
//! gradient of one branch, fill where a mask is set, triangles over the last
//! two axes, and seeded dropout whose mask is bit-identical to the CPU's.
//!
//! Masks are [`CudaBuffer<bool>`]s (upload a `&[bool]` with
//! [`CudaDevice::to_device`](crate::cuda::CudaDevice::to_device)), read in
//! any layout of the output's shape (stride 0 broadcasts).

use super::CudaFloat;
use crate::cuda::device::{check_layout, grid_for, same_device};
use crate::cuda::{CudaBuffer, CudaError, Family};
use crate::Layout;

fn check_shape(op: &str, a: &Layout, b: &Layout) -> Result<(), CudaError> {
    if a.shape() == b.shape() {
        Ok(())
    } else {
        Err(CudaError::new(
            format!("shape check for `{op}`"),
            format!(
                "operands {:?} and {:?} differ (broadcast first: stride 0)",
                a.shape(),
                b.shape()
            ),
        ))
    }
}

/// `out[i] = mask[i] ? a[i] : b[i]` (any layouts of one shape); contiguous.
pub fn where_select<E: CudaFloat>(
    mask: &CudaBuffer<bool>,
    lm: &Layout,
    a: &CudaBuffer<E>,
    la: &Layout,
    b: &CudaBuffer<E>,
    lb: &Layout,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "where";
    let dev = a.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, b.device())?;
    same_device(op, dev, mask.device())?;
    check_shape(op, lm, la)?;
    check_shape(op, la, lb)?;
    check_layout(op, lm, mask.len())?;
    check_layout(op, la, a.len())?;
    check_layout(op, lb, b.len())?;
    let n = la.numel();
    let mut out = dev.alloc::<E>(n)?;
    if n > 0 {
        dev.launch(op, Family::Mask, E::DTYPE, "where_select")?
            .ptr(mask)
            .layout(lm)
            .ptr(a)
            .layout(la)
            .ptr(b)
            .layout(lb)
            .ptr_mut(&mut out)
            .u64(n)
            .run(grid_for(n))?;
    }
    Ok(out)
}

/// `out[i] = mask[i] == keep_where ? g[i] : 0`, with `g` contiguous of the
/// mask's shape: the gradient of one branch of [`where_select`] (or of a
/// masked fill).
pub fn mask_grad<E: CudaFloat>(
    mask: &CudaBuffer<bool>,
    lm: &Layout,
    g: &CudaBuffer<E>,
    keep_where: bool,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "mask_grad";
    let dev = g.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, mask.device())?;
    check_layout(op, lm, mask.len())?;
    check_layout(op, &Layout::contiguous(lm.shape()), g.len())?;
    let n = lm.numel();
    let mut out = dev.alloc::<E>(n)?;
    if n > 0 {
        dev.launch(op, Family::Mask, E::DTYPE, "mask_grad")?
            .ptr(mask)
            .layout(lm)
            .ptr(g)
            .i32(i32::from(keep_where))
            .ptr_mut(&mut out)
            .u64(n)
            .run(grid_for(n))?;
    }
    Ok(out)
}

/// `out[i] = mask[i] ? value : x[i]` (any layouts of one shape); contiguous.
pub fn masked_fill<E: CudaFloat>(
    x: &CudaBuffer<E>,
    lx: &Layout,
    mask: &CudaBuffer<bool>,
    lm: &Layout,
    value: E,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "masked_fill";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, mask.device())?;
    check_shape(op, lx, lm)?;
    check_layout(op, lx, x.len())?;
    check_layout(op, lm, mask.len())?;
    let n = lx.numel();
    let mut out = dev.alloc::<E>(n)?;
    if n > 0 {
        dev.launch(op, Family::Mask, E::DTYPE, "masked_fill")?
            .ptr(x)
            .layout(lx)
            .ptr(mask)
            .layout(lm)
            .f64(value.to_f64())
            .ptr_mut(&mut out)
            .u64(n)
            .run(grid_for(n))?;
    }
    Ok(out)
}

/// Zeroes the entries outside the lower (`lower`) or upper triangle of the
/// last two axes: `tril` keeps `col - row <= diagonal`, `triu` keeps
/// `col - row >= diagonal` (PyTorch's convention). Rank at least 2.
pub fn tri<E: CudaFloat>(
    src: &CudaBuffer<E>,
    layout: &Layout,
    lower: bool,
    diagonal: i64,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = if lower { "tril" } else { "triu" };
    let dev = src.device();
    dev.check(op, E::DTYPE)?;
    check_layout(op, layout, src.len())?;
    let dims = layout.shape();
    let r = dims.len();
    if r < 2 {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            format!("needs at least two axes, got {dims:?}"),
        ));
    }
    let n = layout.numel();
    let mut out = dev.alloc::<E>(n)?;
    if n > 0 {
        dev.launch(op, Family::Mask, E::DTYPE, "tri")?
            .ptr(src)
            .layout(layout)
            .u64(dims[r - 2])
            .u64(dims[r - 1])
            .i32(i32::from(lower))
            .bits(diagonal as u64)
            .ptr_mut(&mut out)
            .u64(n)
            .run(grid_for(n))?;
    }
    Ok(out)
}

/// Dropout with drop probability `p` and stream `seed`: `out[i] = keep(i)
/// ? x[i] * scale : 0` with `keep` = [`dropout_keep`](crate::cpu::mask::dropout_keep)`(seed, p)`, so the mask
/// is bit-identical to the CPU's [`crate::cpu::mask::dropout`] with that
/// closure. The backward is the same call on the (contiguous) gradient.
pub fn dropout<E: CudaFloat>(
    src: &CudaBuffer<E>,
    layout: &Layout,
    seed: u64,
    p: f64,
    scale: f64,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "dropout";
    let dev = src.device();
    dev.check(op, E::DTYPE)?;
    check_layout(op, layout, src.len())?;
    let n = layout.numel();
    let mut out = dev.alloc::<E>(n)?;
    if n > 0 {
        dev.launch(op, Family::Mask, E::DTYPE, "dropout")?
            .ptr(src)
            .layout(layout)
            .bits(seed)
            .f64(p)
            .f64(scale)
            .ptr_mut(&mut out)
            .u64(n)
            .run(grid_for(n))?;
    }
    Ok(out)
}
