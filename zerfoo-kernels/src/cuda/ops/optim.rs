//! Fused optimizer updates on the device ([`crate::cpu::optim`]): one
//! kernel reads parameter, gradient and state once and writes them back.

use super::CudaFloat;
use crate::cpu::optim::{AdamStep, SgdStep};
use crate::cuda::device::{grid_for, rows_grid, same_device};
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
        .f64(s.grad_scale)
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
        .f64(s.grad_scale)
        .run(grid_for(n))
}

/// Elements per block of the sum of squares: a fixed split chosen from the
/// length only (at most [`SUMSQ_PARTS`] blocks), so the sum is deterministic.
fn sumsq_split(n: usize) -> (usize, usize) {
    let parts = n.div_ceil(4096).clamp(1, SUMSQ_PARTS);
    let chunk = n.div_ceil(parts).max(1);
    (chunk, n.div_ceil(chunk))
}

/// The most partial sums [`sum_squares`] makes (one block each).
pub const SUMSQ_PARTS: usize = 1024;

fn sumsq_into<E: CudaFloat>(
    op: &str,
    x: &CudaBuffer<E>,
    out: &mut CudaBuffer<f64>,
    accumulate: bool,
) -> Result<(), CudaError> {
    let dev = x.device().clone();
    dev.check(op, E::DTYPE)?;
    same_device(op, &dev, out.device())?;
    if out.is_empty() {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            "the total needs one element",
        ));
    }
    let n = x.len();
    let (chunk, chunks) = sumsq_split(n);
    let mut partial = dev.alloc::<f64>(chunks.max(1))?;
    if n > 0 {
        dev.launch(op, Family::Optim, E::DTYPE, "sumsq_partial")?
            .ptr(x)
            .u64(n)
            .u64(chunk)
            .u64(chunks)
            .ptr_mut(&mut partial)
            .run(rows_grid(chunks))?;
    }
    dev.launch(op, Family::Optim, E::DTYPE, "sum_f64")?
        .ptr(&partial)
        .u64(if n > 0 { chunks } else { 0 })
        .i32(i32::from(accumulate))
        .ptr_mut(out)
        .run(rows_grid(1))
}

/// `Σ x²` accumulated in `f64` (whatever `E`), as a one-element device
/// buffer: partial sums over a fixed split of `x` (chosen from its length
/// only), then added in order, so the result is deterministic.
pub fn sum_squares<E: CudaFloat>(x: &CudaBuffer<E>) -> Result<CudaBuffer<f64>, CudaError> {
    let mut out = x.device().zeros::<f64>(1)?;
    sumsq_into("sum_squares", x, &mut out, false)?;
    Ok(out)
}

/// `total[0] += Σ x²` (as [`sum_squares`]): a global gradient norm summed
/// over many tensors on the device, in call order.
pub fn add_sum_squares<E: CudaFloat>(
    x: &CudaBuffer<E>,
    total: &mut CudaBuffer<f64>,
) -> Result<(), CudaError> {
    sumsq_into("add_sum_squares", x, total, true)
}

/// Multiplies `x` by `factor` in place (computed in the compute type,
/// rounded once).
pub fn scale_in_place<E: CudaFloat>(x: &mut CudaBuffer<E>, factor: f64) -> Result<(), CudaError> {
    scale_launch("scale_in_place", x, factor, None)
}

/// Multiplies `x` in place by `factor[0]`, a factor computed on the device
/// (e.g. by [`clip_coef`]): no round trip to the host.
pub fn scale_in_place_by<E: CudaFloat>(
    x: &mut CudaBuffer<E>,
    factor: &CudaBuffer<f64>,
) -> Result<(), CudaError> {
    if factor.is_empty() {
        return Err(CudaError::new(
            "shape check for `scale_in_place_by`",
            "the factor needs one element",
        ));
    }
    scale_launch("scale_in_place_by", x, 0.0, Some(factor))
}

fn scale_launch<E: CudaFloat>(
    op: &str,
    x: &mut CudaBuffer<E>,
    factor: f64,
    on_device: Option<&CudaBuffer<f64>>,
) -> Result<(), CudaError> {
    let dev = x.device().clone();
    dev.check(op, E::DTYPE)?;
    if let Some(f) = on_device {
        same_device(op, &dev, f.device())?;
    }
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    let mut l = dev.launch(op, Family::Optim, E::DTYPE, "scale")?;
    l.ptr_mut(x).u64(n).f64(factor);
    match on_device {
        Some(f) => l.ptr(f),
        None => l.u64(0),
    };
    l.run(grid_for(n))
}

/// PyTorch's `clip_grad_norm_` coefficient from a total sum of squares
/// (from [`sum_squares`] / [`add_sum_squares`]):
/// `min(1, max_norm / (sqrt(total) + 1e-6))`, as a one-element buffer for
/// [`scale_in_place_by`].
pub fn clip_coef(total_sq: &CudaBuffer<f64>, max_norm: f64) -> Result<CudaBuffer<f64>, CudaError> {
    let op = "clip_coef";
    let dev = total_sq.device();
    if total_sq.is_empty() {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            "the total needs one element",
        ));
    }
    let mut coef = dev.alloc::<f64>(1)?;
    dev.launch(op, Family::Optim, crate::DType::F64, "clip_coef")?
        .ptr(total_sq)
        .f64(max_norm)
        .ptr_mut(&mut coef)
        .run(grid_for(1))?;
    Ok(coef)
}
