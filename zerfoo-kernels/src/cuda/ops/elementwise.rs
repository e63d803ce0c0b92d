//! Strided unary and binary maths (with broadcast through stride-0 layouts),
//! forward and backward: [`crate::cpu::unary`], [`crate::cpu::binary`].

use super::CudaFloat;
use crate::cpu::binary::BinaryOp;
use crate::cpu::unary::*;
use crate::cuda::device::{check_layout, grid_for, same_device};
use crate::cuda::{CudaBuffer, CudaError, Family};
use crate::Layout;

/// A [`UnaryOp`] on the device: its [`UnaryOp::device_code`], or an error
/// naming an op that has no device kernel.
pub trait CudaUnary: UnaryOp {
    /// `(code, p0, p1)`.
    fn code(&self) -> Result<(i32, f64, f64), CudaError> {
        self.device_code().ok_or_else(|| {
            CudaError::new(
                format!("`{}` on the GPU", Self::NAME),
                "this op has no CUDA kernel (its UnaryOp::device_code is None)",
            )
        })
    }
}
impl<O: UnaryOp> CudaUnary for O {}

/// A [`BinaryOp`] on the device: its [`BinaryOp::DEVICE_CODE`], or an error
/// naming an op that has no device kernel.
pub trait CudaBinary: BinaryOp {
    /// The op code.
    fn code() -> Result<i32, CudaError> {
        Self::DEVICE_CODE.ok_or_else(|| {
            CudaError::new(
                format!("`{}` on the GPU", Self::NAME),
                "this op has no CUDA kernel (its BinaryOp::DEVICE_CODE is None)",
            )
        })
    }
}
impl<O: BinaryOp> CudaBinary for O {}

/// Applies `op` to every element of `x` (any layout); contiguous output.
pub fn unary_forward<E: CudaFloat, O: CudaUnary>(
    op: O,
    x: &CudaBuffer<E>,
    layout: &Layout,
) -> Result<CudaBuffer<E>, CudaError> {
    let dev = x.device();
    dev.check(O::NAME, E::DTYPE)?;
    check_layout(O::NAME, layout, x.len())?;
    let n = layout.numel();
    let mut y = dev.alloc::<E>(n)?;
    if n == 0 {
        return Ok(y);
    }
    let (code, p0, p1) = op.code()?;
    dev.launch(O::NAME, Family::Unary, E::DTYPE, "unary_fwd")?
        .i32(code)
        .f64(p0)
        .f64(p1)
        .ptr(x)
        .layout(layout)
        .ptr_mut(&mut y)
        .u64(n)
        .run(grid_for(n))?;
    Ok(y)
}

/// `grad_x = grad_y * f'(x)`; `x` in any layout, `y` and `grad_y` contiguous.
pub fn unary_backward<E: CudaFloat, O: CudaUnary>(
    op: O,
    x: &CudaBuffer<E>,
    x_layout: &Layout,
    y: &CudaBuffer<E>,
    grad_y: &CudaBuffer<E>,
) -> Result<CudaBuffer<E>, CudaError> {
    let dev = x.device();
    dev.check(O::NAME, E::DTYPE)?;
    same_device(O::NAME, dev, y.device())?;
    same_device(O::NAME, dev, grad_y.device())?;
    check_layout(O::NAME, x_layout, x.len())?;
    let n = x_layout.numel();
    let contiguous = Layout::contiguous(x_layout.shape());
    check_layout(O::NAME, &contiguous, y.len())?;
    check_layout(O::NAME, &contiguous, grad_y.len())?;
    let mut gx = dev.alloc::<E>(n)?;
    if n == 0 {
        return Ok(gx);
    }
    let (code, p0, p1) = op.code()?;
    dev.launch(O::NAME, Family::Unary, E::DTYPE, "unary_bwd")?
        .i32(code)
        .f64(p0)
        .f64(p1)
        .ptr(x)
        .layout(x_layout)
        .ptr(y)
        .ptr(grad_y)
        .ptr_mut(&mut gx)
        .u64(n)
        .run(grid_for(n))?;
    Ok(gx)
}

/// A contiguous copy of the elements `layout` selects.
pub fn to_contiguous<E: CudaFloat>(
    x: &CudaBuffer<E>,
    layout: &Layout,
) -> Result<CudaBuffer<E>, CudaError> {
    let dev = x.device();
    dev.check("to_contiguous", E::DTYPE)?;
    check_layout("to_contiguous", layout, x.len())?;
    let n = layout.numel();
    let mut y = dev.alloc::<E>(n)?;
    if n == 0 {
        return Ok(y);
    }
    dev.launch("to_contiguous", Family::Unary, E::DTYPE, "copy_strided")?
        .ptr(x)
        .layout(layout)
        .ptr_mut(&mut y)
        .u64(n)
        .run(grid_for(n))?;
    Ok(y)
}

fn check_same_shape(op: &str, la: &Layout, lb: &Layout) -> Result<(), CudaError> {
    if la.shape() == lb.shape() {
        Ok(())
    } else {
        Err(CudaError::new(
            format!("shape check for `{op}`"),
            format!(
                "operands {:?} and {:?} differ (broadcast first: stride 0)",
                la.shape(),
                lb.shape()
            ),
        ))
    }
}

/// `y = f(a, b)` elementwise; both layouts have the same shape (a broadcast
/// operand has stride 0 on its broadcast axes). Contiguous output.
pub fn binary_forward<E: CudaFloat, O: CudaBinary>(
    _op: O,
    a: &CudaBuffer<E>,
    la: &Layout,
    b: &CudaBuffer<E>,
    lb: &Layout,
) -> Result<CudaBuffer<E>, CudaError> {
    let dev = a.device();
    dev.check(O::NAME, E::DTYPE)?;
    same_device(O::NAME, dev, b.device())?;
    check_same_shape(O::NAME, la, lb)?;
    check_layout(O::NAME, la, a.len())?;
    check_layout(O::NAME, lb, b.len())?;
    let n = la.numel();
    let mut y = dev.alloc::<E>(n)?;
    if n == 0 {
        return Ok(y);
    }
    dev.launch(O::NAME, Family::Binary, E::DTYPE, "binary_fwd")?
        .i32(O::code()?)
        .ptr(a)
        .layout(la)
        .ptr(b)
        .layout(lb)
        .ptr_mut(&mut y)
        .u64(n)
        .run(grid_for(n))?;
    Ok(y)
}

/// The gradients `(grad_a, grad_b)`, contiguous and of the full output shape
/// (the caller sums a broadcast operand's gradient over its broadcast axes),
/// given contiguous `grad_y`. A side whose flag in `need` is `false` is `None`.
#[allow(clippy::type_complexity)]
pub fn binary_backward<E: CudaFloat, O: CudaBinary>(
    _op: O,
    a: &CudaBuffer<E>,
    la: &Layout,
    b: &CudaBuffer<E>,
    lb: &Layout,
    grad_y: &CudaBuffer<E>,
    need: (bool, bool),
) -> Result<(Option<CudaBuffer<E>>, Option<CudaBuffer<E>>), CudaError> {
    let dev = a.device();
    dev.check(O::NAME, E::DTYPE)?;
    same_device(O::NAME, dev, b.device())?;
    same_device(O::NAME, dev, grad_y.device())?;
    check_same_shape(O::NAME, la, lb)?;
    check_layout(O::NAME, la, a.len())?;
    check_layout(O::NAME, lb, b.len())?;
    let n = la.numel();
    check_layout(O::NAME, &Layout::contiguous(la.shape()), grad_y.len())?;
    if !need.0 && !need.1 {
        return Ok((None, None));
    }
    let mut ga = dev.alloc::<E>(if need.0 { n } else { 0 })?;
    let mut gb = dev.alloc::<E>(if need.1 { n } else { 0 })?;
    if n > 0 {
        dev.launch(O::NAME, Family::Binary, E::DTYPE, "binary_bwd")?
            .i32(O::code()?)
            .ptr(a)
            .layout(la)
            .ptr(b)
            .layout(lb)
            .ptr(grad_y)
            .ptr_mut(&mut ga)
            .ptr_mut(&mut gb)
            .i32(i32::from(need.0))
            .i32(i32::from(need.1))
            .u64(n)
            .run(grid_for(n))?;
    }
    Ok((need.0.then_some(ga), need.1.then_some(gb)))
}
