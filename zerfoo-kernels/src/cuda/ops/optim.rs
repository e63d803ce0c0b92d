//! Fused optimizer updates on the device ([`crate::cpu::optim`]): one
//! kernel reads parameter, gradient and state once and writes them back.

use super::CudaFloat;
use crate::cpu::optim::{AdamStep, SgdStep};
use crate::cuda::device::{grid_for, launched, same_device};
use crate::cuda::{CudaBuffer, CudaError, Family};
use cudarc::driver::PushKernelArg;

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
    let f = dev.function(op, Family::Optim, E::DTYPE, "adam_update")?;
    let (n64, dec) = (n as u64, i32::from(s.decoupled));
    let mut b = dev.stream().launch_builder(&f);
    b.arg(param.raw_mut())
        .arg(grad.raw())
        .arg(m.raw_mut())
        .arg(v.raw_mut())
        .arg(&n64);
    b.arg(&s.lr)
        .arg(&s.beta1)
        .arg(&s.beta2)
        .arg(&s.eps)
        .arg(&s.weight_decay)
        .arg(&dec);
    b.arg(&step_size).arg(&bc2_sqrt);
    // SAFETY: argument list matches `adam_update`; lengths checked.
    launched("adam_update", unsafe { b.launch(grid_for(n)) })
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
    let f = dev.function(op, Family::Optim, E::DTYPE, "sgd_update")?;
    let (n64, nest, first) = (n as u64, i32::from(s.nesterov), i32::from(s.first));
    let mut b = dev.stream().launch_builder(&f);
    b.arg(param.raw_mut())
        .arg(grad.raw())
        .arg(buf.raw_mut())
        .arg(&n64);
    b.arg(&s.lr)
        .arg(&s.momentum)
        .arg(&s.dampening)
        .arg(&nest)
        .arg(&s.weight_decay)
        .arg(&first);
    // SAFETY: argument list matches `sgd_update`; lengths checked.
    launched("sgd_update", unsafe { b.launch(grid_for(n)) })
}
