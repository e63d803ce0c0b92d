//! Losses ([`crate::cpu::loss`]): cross-entropy over the last axis
//! (log-softmax + NLL with label smoothing and ignored rows, one block per
//! row), mean squared error and binary cross-entropy on logits (with an
//! optional per-class `pos_weight`). Totals stay on the device, summed in
//! a fixed order.

use super::CudaFloat;
use crate::cuda::device::{check_layout, grid_for, rows_grid, same_device, BLOCK};
use crate::cuda::{CudaBuffer, CudaError, Family};
use crate::Layout;
use cudarc::driver::LaunchConfig;

/// A target meaning "ignore this row" (the CPU's `IGNORED`, as `u32`).
pub const IGNORED: u32 = u32::MAX;

/// What the forward keeps per row for the backward (compute type).
#[derive(Debug)]
pub struct CudaRowStats<A> {
    /// Row maxima.
    pub max: CudaBuffer<A>,
    /// `ln(sum(exp(x - max)))` per row.
    pub ln_sum: CudaBuffer<A>,
}

fn rows_of(op: &str, layout: &Layout, targets: usize) -> Result<(usize, usize, usize), CudaError> {
    let dims = layout.shape();
    if dims.is_empty() {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            "logits need a class axis",
        ));
    }
    let c = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    if targets != rows {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            format!("{targets} targets for {rows} rows"),
        ));
    }
    Ok((rows, c, layout.strides()[dims.len() - 1]))
}

/// Sum over non-ignored rows of the cross-entropy of each row of `x` (last
/// axis = classes) against `targets` (a class `< C` or [`IGNORED`]; an
/// out-of-range target makes the loss NaN), with label smoothing `eps`.
/// Returns the sum as a one-element device buffer, and the row statistics.
#[allow(clippy::type_complexity)]
pub fn cross_entropy_forward<E: CudaFloat>(
    x: &CudaBuffer<E>,
    layout: &Layout,
    targets: &CudaBuffer<u32>,
    eps: f64,
) -> Result<(CudaBuffer<E::Acc>, CudaRowStats<E::Acc>), CudaError> {
    let op = "cross_entropy";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, targets.device())?;
    check_layout(op, layout, x.len())?;
    let (rows, c, stride) = rows_of(op, layout, targets.len())?;
    let mut losses = dev.zeros::<E::Acc>(rows)?;
    let mut max = dev.zeros::<E::Acc>(rows)?;
    let mut ln_sum = dev.zeros::<E::Acc>(rows)?;
    let mut total = dev.zeros::<E::Acc>(1)?;
    if rows == 0 {
        return Ok((total, CudaRowStats { max, ln_sum }));
    }
    {
        dev.launch(op, Family::Loss, E::DTYPE, "ce_fwd")?
            .ptr(x)
            .layout(layout)
            .u64(rows)
            .u64(c)
            .u64(stride)
            .ptr(targets)
            .f64(eps)
            .ptr_mut(&mut losses)
            .ptr_mut(&mut max)
            .ptr_mut(&mut ln_sum)
            .run(rows_grid(rows))?;
    }
    let one_block = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    dev.launch(op, Family::Loss, E::DTYPE, "sum_acc")?
        .ptr(&losses)
        .u64(rows)
        .ptr_mut(&mut total)
        .run(one_block)?;
    Ok((total, CudaRowStats { max, ln_sum }))
}

/// Backward of [`cross_entropy_forward`]: for each non-ignored row
/// `g_c = scale (softmax_c - (1 - eps) [c == t] - eps / C)`, zeros for
/// ignored rows. Output contiguous, shaped like `x`.
pub fn cross_entropy_backward<E: CudaFloat>(
    x: &CudaBuffer<E>,
    layout: &Layout,
    targets: &CudaBuffer<u32>,
    stats: &CudaRowStats<E::Acc>,
    eps: f64,
    scale: f64,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "cross_entropy backward";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, targets.device())?;
    check_layout(op, layout, x.len())?;
    let (rows, c, stride) = rows_of(op, layout, targets.len())?;
    check_layout(
        op,
        &Layout::contiguous(&[rows]),
        stats.max.len().min(stats.ln_sum.len()),
    )?;
    let mut gx = dev.alloc::<E>(rows * c)?;
    if rows == 0 || c == 0 {
        return Ok(gx);
    }
    dev.launch(op, Family::Loss, E::DTYPE, "ce_bwd")?
        .ptr(x)
        .layout(layout)
        .u64(rows)
        .u64(c)
        .u64(stride)
        .ptr(targets)
        .ptr(&stats.max)
        .ptr(&stats.ln_sum)
        .f64(eps)
        .f64(scale)
        .ptr_mut(&mut gx)
        .run(rows_grid(rows))?;
    Ok(gx)
}

/// The fixed two-stage split of a summed loss over `n` elements: `(chunk,
/// chunks)`, chosen from `n` only, so the sum is deterministic.
fn loss_split(n: usize) -> (usize, usize) {
    let parts = n.div_ceil(4096).clamp(1, 1024);
    let chunk = n.div_ceil(parts).max(1);
    (chunk, n.div_ceil(chunk))
}

/// Adds the `chunks` partial sums into a one-element buffer.
fn sum_partials<E: CudaFloat>(
    op: &str,
    partial: &CudaBuffer<E::Acc>,
    chunks: usize,
) -> Result<CudaBuffer<E::Acc>, CudaError> {
    let dev = partial.device();
    let mut total = dev.zeros::<E::Acc>(1)?;
    if chunks > 0 {
        let one_block = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        dev.launch(op, Family::Loss, E::DTYPE, "sum_acc")?
            .ptr(partial)
            .u64(chunks)
            .ptr_mut(&mut total)
            .run(one_block)?;
    }
    Ok(total)
}

fn check_pair<E: CudaFloat>(
    op: &str,
    a: &CudaBuffer<E>,
    la: &Layout,
    b: &CudaBuffer<E>,
    lb: &Layout,
) -> Result<(), CudaError> {
    let dev = a.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, b.device())?;
    if la.shape() != lb.shape() {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            format!("operands {:?} and {:?} differ", la.shape(), lb.shape()),
        ));
    }
    check_layout(op, la, a.len())?;
    check_layout(op, lb, b.len())
}

/// `sum((a - b)^2)` over every element (`a`, `b` of the same dims, any
/// layouts), in the compute type, as a one-element device buffer (summed
/// over a fixed split: deterministic).
pub fn mse_forward<E: CudaFloat>(
    a: &CudaBuffer<E>,
    la: &Layout,
    b: &CudaBuffer<E>,
    lb: &Layout,
) -> Result<CudaBuffer<E::Acc>, CudaError> {
    let op = "mse";
    check_pair(op, a, la, b, lb)?;
    let dev = a.device();
    let n = la.numel();
    let (chunk, chunks) = loss_split(n);
    let mut partial = dev.alloc::<E::Acc>(chunks)?;
    if n > 0 {
        dev.launch(op, Family::Loss, E::DTYPE, "mse_partial")?
            .ptr(a)
            .layout(la)
            .ptr(b)
            .layout(lb)
            .u64(n)
            .u64(chunk)
            .u64(chunks)
            .ptr_mut(&mut partial)
            .run(rows_grid(chunks))?;
    }
    sum_partials::<E>(op, &partial, if n > 0 { chunks } else { 0 })
}

/// Backward of [`mse_forward`] scaled by `scale`: `(2 s (a - b), -2 s (a -
/// b))`, contiguous.
pub fn mse_backward<E: CudaFloat>(
    a: &CudaBuffer<E>,
    la: &Layout,
    b: &CudaBuffer<E>,
    lb: &Layout,
    scale: f64,
) -> Result<(CudaBuffer<E>, CudaBuffer<E>), CudaError> {
    let op = "mse backward";
    check_pair(op, a, la, b, lb)?;
    let dev = a.device();
    let n = la.numel();
    let mut ga = dev.alloc::<E>(n)?;
    let mut gb = dev.alloc::<E>(n)?;
    if n > 0 {
        dev.launch(op, Family::Loss, E::DTYPE, "mse_bwd")?
            .ptr(a)
            .layout(la)
            .ptr(b)
            .layout(lb)
            .f64(scale)
            .ptr_mut(&mut ga)
            .ptr_mut(&mut gb)
            .u64(n)
            .run(grid_for(n))?;
    }
    Ok((ga, gb))
}

/// Checks a per-class weight (on the same device, not empty) and returns
/// its length `c`: element `i` (row-major) uses weight `i % c`.
fn check_pos_weight<A: crate::cuda::CudaDtype>(
    op: &str,
    dev: &crate::cuda::CudaDevice,
    pw: Option<&CudaBuffer<A>>,
) -> Result<usize, CudaError> {
    let Some(p) = pw else { return Ok(0) };
    same_device(op, dev, p.device())?;
    if p.is_empty() {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            "an empty pos_weight",
        ));
    }
    Ok(p.len())
}

/// Binary cross-entropy on logits `x` against targets `y` (same dims, any
/// layouts), summed over every element, as a one-element device buffer in
/// the compute type. Without `pos_weight`: `max(x, 0) - x y + ln(1 +
/// e^-|x|)`; with a per-class `pos_weight` `p` (one value per entry of the
/// last axis, compute type; element `i` uses `p[i % p.len()]`), PyTorch's `(1 - y) x + (1 + (p - 1) y)
/// softplus(-x)`. Summed over a fixed split: deterministic.
pub fn bce_logits_forward<E: CudaFloat>(
    x: &CudaBuffer<E>,
    lx: &Layout,
    y: &CudaBuffer<E>,
    ly: &Layout,
    pos_weight: Option<&CudaBuffer<E::Acc>>,
) -> Result<CudaBuffer<E::Acc>, CudaError> {
    let op = "bce_with_logits";
    check_pair(op, x, lx, y, ly)?;
    let dev = x.device();
    let c = check_pos_weight(op, dev, pos_weight)?;
    let n = lx.numel();
    let (chunk, chunks) = loss_split(n);
    let mut partial = dev.alloc::<E::Acc>(chunks)?;
    if n > 0 {
        let mut l = dev.launch(op, Family::Loss, E::DTYPE, "bce_partial")?;
        l.ptr(x).layout(lx).ptr(y).layout(ly);
        match pos_weight {
            Some(p) => l.ptr(p),
            None => l.u64(0),
        };
        l.u64(c)
            .u64(n)
            .u64(chunk)
            .u64(chunks)
            .ptr_mut(&mut partial)
            .run(rows_grid(chunks))?;
    }
    sum_partials::<E>(op, &partial, if n > 0 { chunks } else { 0 })
}

/// Gradients of [`bce_logits_forward`] scaled by `scale`: with respect to
/// the logits `s ((1 - y) - lw σ(-x))` (`σ(x) - y` without a weight), the
/// targets `s (-x + (p - 1) softplus(-x))`, and — with a weight — the
/// weight, `Σ s y softplus(-x)` per class. Contiguous.
#[allow(clippy::type_complexity)]
pub fn bce_logits_backward<E: CudaFloat>(
    x: &CudaBuffer<E>,
    lx: &Layout,
    y: &CudaBuffer<E>,
    ly: &Layout,
    pos_weight: Option<&CudaBuffer<E::Acc>>,
    scale: f64,
) -> Result<(CudaBuffer<E>, CudaBuffer<E>, Option<CudaBuffer<E>>), CudaError> {
    let op = "bce_with_logits backward";
    check_pair(op, x, lx, y, ly)?;
    let dev = x.device();
    let c = check_pos_weight(op, dev, pos_weight)?;
    let n = lx.numel();
    let mut gx = dev.alloc::<E>(n)?;
    let mut gy = dev.alloc::<E>(n)?;
    if n > 0 {
        let mut l = dev.launch(op, Family::Loss, E::DTYPE, "bce_bwd")?;
        l.ptr(x).layout(lx).ptr(y).layout(ly);
        match pos_weight {
            Some(p) => l.ptr(p),
            None => l.u64(0),
        };
        l.u64(c)
            .f64(scale)
            .ptr_mut(&mut gx)
            .ptr_mut(&mut gy)
            .u64(n)
            .run(grid_for(n))?;
    }
    let gp = match pos_weight {
        None => None,
        Some(_) => {
            let mut gp = dev.zeros::<E>(c)?;
            if n > 0 {
                dev.launch(op, Family::Loss, E::DTYPE, "bce_pw_grad")?
                    .ptr(x)
                    .layout(lx)
                    .ptr(y)
                    .layout(ly)
                    .u64(c)
                    .u64(n)
                    .f64(scale)
                    .ptr_mut(&mut gp)
                    .run(rows_grid(c))?;
            }
            Some(gp)
        }
    };
    Ok((gx, gy, gp))
}
