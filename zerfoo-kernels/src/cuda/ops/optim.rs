//! Fused optimizer updates on the device ([`crate::cpu::optim`]): one
//! kernel reads parameter, gradient and state once and writes them back.

use super::CudaFloat;
use crate::cpu::optim::{AdamStep, SgdStep};
use crate::cuda::device::{grid_for, same_device};
use crate::cuda::{CudaBuffer, CudaError, Family};

fn check_lens(op: &str, lens: &[usize]) -> Result<(), CudaError> {
    if lens.windows(2).all(|w| w[0] == w[1]) {
        Ok(())
    } else {
        Err(CudaError::new(
            format!("shape check for `{op}`"),
            format!("lengths differ: {lens:?}"),
        ))
    }
}

/// One Adam/AdamW step on `param` with gradient `grad` and moments `m`, `v`
/// (compute type), in place; PyTorch's arithmetic.
pub fn adam_update<E: CudaFloat>(
    param: &mut CudaBuffer<E>,
    grad: &CudaBuffer<E>,
    m: &mut CudaBuffer<E::Acc>,
    v: &mut CudaBuffer<E::Acc>,
    s: &AdamStep,
) -> Result<(), CudaError> {
    let op = "adam_update";
    let dev = param.device().clone();
    dev.check(op, E::DTYPE)?;
    for d in [grad.device(), m.device(), v.device()] {
        same_device(op, &dev, d)?;
    }
    check_lens(op, &[param.len(), grad.len(), m.len(), v.len()])?;
    let n = param.len();
    if n == 0 {
        return Ok(());
    }
    let t = s.step.min(i32::MAX as u64) as i32;
    let step_size = s.lr / (1.0 - s.beta1.powi(t));
    let bc2_sqrt = (1.0 - s.beta2.powi(t)).sqrt();
    dev.launch(op, Family::Optim, E::DTYPE, "adam_update")?
        .ptr_mut(param)
        .ptr(grad)
        .ptr_mut(m)
        .ptr_mut(v)
        .u64(n)
        .f64(s.lr)
        .f64(s.beta1)
        .f64(s.beta2)
        .f64(s.eps)
        .f64(s.weight_decay)
        .i32(i32::from(s.decoupled))
        .f64(step_size)
        .f64(bc2_sqrt)
        .run(grid_for(n))
}

/// One SGD step on `param` with gradient `grad` and momentum buffer `buf`
/// (compute type; not read or written without momentum), in place.
pub fn sgd_update<E: CudaFloat>(
    param: &mut CudaBuffer<E>,
    grad: &CudaBuffer<E>,
    buf: &mut CudaBuffer<E::Acc>,
    s: &SgdStep,
) -> Result<(), CudaError> {
    let op = "sgd_update";
    let dev = param.device().clone();
    dev.check(op, E::DTYPE)?;
    same_device(op, &dev, grad.device())?;
    same_device(op, &dev, buf.device())?;
    check_lens(op, &[param.len(), grad.len()])?;
    if s.momentum != 0.0 {
        check_lens(op, &[param.len(), buf.len()])?;
    }
    let n = param.len();
    if n == 0 {
        return Ok(());
    }
    dev.launch(op, Family::Optim, E::DTYPE, "sgd_update")?
        .ptr_mut(param)
        .ptr(grad)
        .ptr_mut(buf)
        .u64(n)
        .f64(s.lr)
        .f64(s.momentum)
        .f64(s.dampening)
        .i32(i32::from(s.nesterov))
        .f64(s.weight_decay)
        .i32(i32::from(s.first))
        .run(grid_for(n))
}
