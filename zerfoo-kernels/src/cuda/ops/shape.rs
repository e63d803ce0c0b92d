//! Structural kernels ([`crate::cpu::shape`]): copying a range of a strided
//! view, concatenation along an axis, adding a block into a narrowed slice
//! of a larger buffer (the backward of narrow and split), and dtype
//! conversion. Copies are exact; the add computes in the compute type and
//! rounds once; a conversion rounds once.

use super::softmax::check_axis;
use super::CudaFloat;
use crate::cuda::device::{check_layout, grid_for, same_device};
use crate::cuda::{CudaBuffer, CudaError, Family};
use crate::Layout;

/// Copies elements `start..start + dst.len()` (row-major) of the view
/// `layout` of `src` into `dst`.
pub fn copy_range<E: CudaFloat>(
    src: &CudaBuffer<E>,
    layout: &Layout,
    start: usize,
    dst: &mut CudaBuffer<E>,
) -> Result<(), CudaError> {
    let op = "copy_range";
    let dev = src.device().clone();
    dev.check(op, E::DTYPE)?;
    same_device(op, &dev, dst.device())?;
    check_layout(op, layout, src.len())?;
    let n = dst.len();
    if start + n > layout.numel() {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            format!(
                "elements {start}..{} of a view of {}",
                start + n,
                layout.numel()
            ),
        ));
    }
    if n == 0 {
        return Ok(());
    }
    dev.launch(op, Family::Shape, E::DTYPE, "copy_range")?
        .ptr(src)
        .layout(layout)
        .u64(start)
        .ptr_mut(dst)
        .u64(n)
        .run(grid_for(n))
}

/// Joins views along `axis` into a contiguous buffer: every part has the
/// same rank and the same dims except at `axis`, where the output's dim is
/// the sum of the parts'.
pub fn concat<E: CudaFloat>(
    parts: &[(&CudaBuffer<E>, &Layout)],
    axis: usize,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "concat";
    let shape_err = |reason: String| CudaError::new(format!("shape check for `{op}`"), reason);
    let Some(&(b0, first)) = parts.first() else {
        return Err(shape_err("no parts".to_string()));
    };
    let dev = b0.device();
    dev.check(op, E::DTYPE)?;
    let rank = first.rank();
    check_axis(op, rank, axis)?;
    for &(b, l) in parts {
        same_device(op, dev, b.device())?;
        check_layout(op, l, b.len())?;
        let fits =
            l.rank() == rank && (0..rank).all(|d| d == axis || l.shape()[d] == first.shape()[d]);
        if !fits {
            return Err(shape_err(format!(
                "part {:?} does not match {:?} off axis {axis}",
                l.shape(),
                first.shape()
            )));
        }
    }
    let outer: usize = first.shape()[..axis].iter().product();
    let inner: usize = first.shape()[axis + 1..].iter().product();
    let row: usize = parts.iter().map(|(_, l)| l.shape()[axis] * inner).sum();
    let mut out = dev.alloc::<E>(outer * row)?;
    let mut col0 = 0;
    for &(b, l) in parts {
        let block = l.shape()[axis] * inner;
        if outer * block > 0 {
            dev.launch(op, Family::Shape, E::DTYPE, "concat_part")?
                .ptr(b)
                .layout(l)
                .u64(outer)
                .u64(block)
                .u64(row)
                .u64(col0)
                .ptr_mut(&mut out)
                .run(grid_for(outer * block))?;
        }
        col0 += block;
    }
    Ok(out)
}

/// `dst[.., start..start + len, ..] += src` along `axis`: `dst` is
/// contiguous with dims `dims`, `src` contiguous with `dims` narrowed to
/// `len` at `axis`. Adds in the compute type and rounds once.
pub fn add_narrow_into<E: CudaFloat>(
    dst: &mut CudaBuffer<E>,
    dims: &[usize],
    axis: usize,
    start: usize,
    len: usize,
    src: &CudaBuffer<E>,
) -> Result<(), CudaError> {
    let op = "add_narrow_into";
    let dev = dst.device().clone();
    dev.check(op, E::DTYPE)?;
    same_device(op, &dev, src.device())?;
    check_axis(op, dims.len(), axis)?;
    if start + len > dims[axis] {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            format!(
                "block {start}..{} past the end of axis {axis} ({})",
                start + len,
                dims[axis]
            ),
        ));
    }
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    let (full, block) = (dims[axis] * inner, len * inner);
    if dst.len() != outer * full || src.len() != outer * block {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            format!(
                "dst of {} and src of {} elements for dims {dims:?} narrowed to {len} at axis {axis}",
                dst.len(),
                src.len()
            ),
        ));
    }
    if outer * block == 0 {
        return Ok(());
    }
    dev.launch(op, Family::Shape, E::DTYPE, "add_narrow")?
        .ptr_mut(dst)
        .u64(outer)
        .u64(full)
        .u64(start * inner)
        .u64(block)
        .ptr(src)
        .run(grid_for(outer * block))
}

/// Every element of the view `lx` of `x` converted to `E2`, row-major,
/// rounded once to nearest (ties to even) exactly as the CPU's
/// [`convert_element`](crate::device::convert_element) does: widened to
/// `f64` in `E`'s module (exact), then rounded in `E2`'s (through a
/// round-to-odd `f32` for the narrow formats, which is the correctly
/// rounded result).
pub fn convert<E: CudaFloat, E2: CudaFloat>(
    x: &CudaBuffer<E>,
    lx: &Layout,
) -> Result<CudaBuffer<E2>, CudaError> {
    let op = "to_dtype";
    let dev = x.device().clone();
    dev.check(op, E::DTYPE)?;
    dev.check(op, E2::DTYPE)?;
    check_layout(op, lx, x.len())?;
    let n = lx.numel();
    let mut out = dev.alloc::<E2>(n)?;
    if n == 0 {
        return Ok(out);
    }
    let mut wide = dev.alloc::<f64>(n)?;
    dev.launch(op, Family::Shape, E::DTYPE, "widen_f64")?
        .ptr(x)
        .layout(lx)
        .ptr_mut(&mut wide)
        .u64(n)
        .run(grid_for(n))?;
    dev.launch(op, Family::Shape, E2::DTYPE, "round_from_f64")?
        .ptr(&wide)
        .ptr_mut(&mut out)
        .u64(n)
        .run(grid_for(n))?;
    Ok(out)
}
