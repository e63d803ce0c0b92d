//! 2-D convolution, pooling and batch normalization over `[N, C, H, W]`
//! ([`crate::cpu::conv`]). Direct kernels: each output (and gradient)
//! element is summed by one thread — one warp for the weight and bias
//! gradients — in a fixed order, in the compute type, rounded once:
//! deterministic, no atomics. Pooling takes the CPU's clipped window
//! ranges ([`window_ranges`](crate::cpu::conv::window_ranges),
//! [`adaptive_ranges`](crate::cpu::conv::adaptive_ranges)), uploaded per
//! call.

use super::CudaFloat;
use crate::cpu::conv::{AvgDivisor, Window2d};
use crate::cuda::device::{check_layout, grid_for, rows_grid, same_device, Launch};
use crate::cuda::{CudaBuffer, CudaDevice, CudaError, Family};
use crate::device::{BatchNormGrads, ChannelStats, ConvGrads};
use crate::Layout;

/// The argmax of an empty max-pooling window (its output is `-inf`).
pub const NO_ARGMAX: u32 = u32::MAX;

fn shape_err(op: &str, reason: String) -> CudaError {
    CudaError::new(format!("shape check for `{op}`"), reason)
}

fn check_rank4(op: &str, l: &Layout) -> Result<[usize; 4], CudaError> {
    match *l.shape() {
        [a, b, c, d] => Ok([a, b, c, d]),
        _ => Err(shape_err(
            op,
            format!("expected [N, C, H, W], got {:?}", l.shape()),
        )),
    }
}

/// The dims of a convolution: input `[N, C, H, W]`, output channels `O`,
/// channels per group, output size.
struct ConvDims {
    x: [usize; 4],
    w: [usize; 4],
    out: [usize; 2],
}

fn conv_dims(
    op: &str,
    lx: &Layout,
    lw: &Layout,
    groups: usize,
    win: &Window2d,
) -> Result<ConvDims, CudaError> {
    let x = check_rank4(op, lx)?;
    let w = check_rank4(op, lw)?;
    if groups == 0 || x[1] != w[1] * groups || w[0] % groups != 0 {
        return Err(shape_err(
            op,
            format!("input {x:?} and weight {w:?} do not fit {groups} groups"),
        ));
    }
    if win.kernel != [w[2], w[3]] {
        return Err(shape_err(
            op,
            format!("window kernel {:?} for a weight {w:?}", win.kernel),
        ));
    }
    let out = win
        .out_dims([x[2], x[3]])
        .ok_or_else(|| shape_err(op, format!("window {win:?} does not fit input {x:?}")))?;
    Ok(ConvDims { x, w, out })
}

/// Pushes groups, stride, padding, dilation and the output size.
fn window_args(l: &mut Launch<'_>, groups: usize, win: &Window2d, out: [usize; 2]) {
    l.u64(groups)
        .u64(win.stride[0])
        .u64(win.stride[1])
        .u64(win.padding[0])
        .u64(win.padding[1])
        .u64(win.dilation[0])
        .u64(win.dilation[1])
        .u64(out[0])
        .u64(out[1]);
}

/// 2-D convolution (PyTorch `F.conv2d`, cross-correlation): `x` is
/// `[N, C, H, W]`, `w` is `[O, C / groups, KH, KW]`, `bias` `[O]`, all in
/// any layout; `win.kernel` must be `[KH, KW]`. Returns `[N, O, OH, OW]`
/// contiguous, with `OH`, `OW` from [`Window2d::out_dims`].
pub fn conv2d_forward<E: CudaFloat>(
    x: &CudaBuffer<E>,
    lx: &Layout,
    w: &CudaBuffer<E>,
    lw: &Layout,
    bias: Option<(&CudaBuffer<E>, &Layout)>,
    groups: usize,
    win: &Window2d,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "conv2d";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, w.device())?;
    check_layout(op, lx, x.len())?;
    check_layout(op, lw, w.len())?;
    let d = conv_dims(op, lx, lw, groups, win)?;
    if let Some((b, lb)) = bias {
        same_device(op, dev, b.device())?;
        check_layout(op, lb, b.len())?;
        if lb.shape() != [d.w[0]] {
            return Err(shape_err(
                op,
                format!("bias {:?} for {} channels", lb.shape(), d.w[0]),
            ));
        }
    }
    let n = d.x[0] * d.w[0] * d.out[0] * d.out[1];
    let mut y = dev.alloc::<E>(n)?;
    if n == 0 {
        return Ok(y);
    }
    let mut l = dev.launch(op, Family::Conv, E::DTYPE, "conv2d_fwd")?;
    l.ptr(x).layout(lx).ptr(w).layout(lw);
    match bias {
        Some((b, lb)) => l.ptr(b).layout(lb).i32(1),
        None => l.u64(0).no_layout().i32(0),
    };
    window_args(&mut l, groups, win, d.out);
    l.ptr_mut(&mut y).u64(n).run(grid_for(n))?;
    Ok(y)
}

/// The backward pass of [`conv2d_forward`]: `gy` is the contiguous
/// `[N, O, OH, OW]` output gradient. All three gradients are summed in the
/// compute type and rounded once.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<E: CudaFloat>(
    x: &CudaBuffer<E>,
    lx: &Layout,
    w: &CudaBuffer<E>,
    lw: &Layout,
    with_bias: bool,
    groups: usize,
    win: &Window2d,
    gy: &CudaBuffer<E>,
) -> Result<ConvGrads<CudaBuffer<E>>, CudaError> {
    let op = "conv2d backward";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, w.device())?;
    same_device(op, dev, gy.device())?;
    check_layout(op, lx, x.len())?;
    check_layout(op, lw, w.len())?;
    let d = conv_dims(op, lx, lw, groups, win)?;
    let [nb, c, h, wd] = d.x;
    let [o, cg, kh, kw] = d.w;
    let ny = nb * o * d.out[0] * d.out[1];
    if gy.len() != ny {
        return Err(shape_err(
            op,
            format!("an output gradient of {} for {ny} outputs", gy.len()),
        ));
    }
    let nx = nb * c * h * wd;
    let mut gx = dev.alloc::<E>(nx)?;
    let mut gw = dev.alloc::<E>(o * cg * kh * kw)?;
    let mut gb = if with_bias {
        Some(dev.alloc::<E>(o)?)
    } else {
        None
    };
    if nx > 0 {
        let mut l = dev.launch(op, Family::Conv, E::DTYPE, "conv2d_bwd_x")?;
        l.ptr(w).layout(lw).ptr(gy).u64(c).u64(h).u64(wd);
        window_args(&mut l, groups, win, d.out);
        l.ptr_mut(&mut gx).u64(nx).run(grid_for(nx))?;
    }
    if !gw.is_empty() {
        let mut l = dev.launch(op, Family::Conv, E::DTYPE, "conv2d_bwd_w")?;
        l.ptr(x).layout(lx).ptr(gy).u64(o).u64(cg).u64(kh).u64(kw);
        window_args(&mut l, groups, win, d.out);
        l.ptr_mut(&mut gw).run(grid_for(gw.len() * 32))?;
    }
    if let Some(gb) = gb.as_mut().filter(|b| !b.is_empty()) {
        dev.launch(op, Family::Conv, E::DTYPE, "channel_sum")?
            .ptr(gy)
            .u64(nb)
            .u64(o)
            .u64(d.out[0] * d.out[1])
            .ptr_mut(gb)
            .run(grid_for(o * 32))?;
    }
    Ok(ConvGrads {
        x: gx,
        weight: gw,
        bias: gb,
    })
}

/// Uploads clipped window ranges (each `start <= end <= len`) as `u32` pairs.
fn ranges_to_device(
    op: &str,
    dev: &CudaDevice,
    ranges: &[(usize, usize)],
    len: usize,
) -> Result<CudaBuffer<u32>, CudaError> {
    let mut v = Vec::with_capacity(2 * ranges.len().max(1));
    for &(s, e) in ranges {
        if s > e || e > len || len > u32::MAX as usize {
            return Err(shape_err(
                op,
                format!("window range {s}..{e} outside an axis of {len}"),
            ));
        }
        v.extend([s as u32, e as u32]);
    }
    if v.is_empty() {
        v.extend([0, 0]);
    }
    dev.to_device(&v)
}

/// Max pooling over `[N, C, H, W]` (any layout) with the windows `rows` ×
/// `cols` (clipped input ranges). Returns the contiguous `[N, C, OH, OW]`
/// maxima and, per output, the position `h * W + w` of its maximum in the
/// plane (PyTorch's loop: a later NaN wins; [`NO_ARGMAX`] for an empty
/// window, whose output is `-inf`).
pub fn max_pool2d_forward<E: CudaFloat>(
    x: &CudaBuffer<E>,
    lx: &Layout,
    rows: &[(usize, usize)],
    cols: &[(usize, usize)],
) -> Result<(CudaBuffer<E>, CudaBuffer<u32>), CudaError> {
    let op = "max_pool2d";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    check_layout(op, lx, x.len())?;
    let [nb, c, h, wd] = check_rank4(op, lx)?;
    let dr = ranges_to_device(op, dev, rows, h)?;
    let dc = ranges_to_device(op, dev, cols, wd)?;
    let n = nb * c * rows.len() * cols.len();
    let mut y = dev.alloc::<E>(n)?;
    let mut arg = dev.alloc::<u32>(n)?;
    if n > 0 {
        dev.launch(op, Family::Conv, E::DTYPE, "max_pool_fwd")?
            .ptr(x)
            .layout(lx)
            .ptr(&dr)
            .u64(rows.len())
            .ptr(&dc)
            .u64(cols.len())
            .ptr_mut(&mut y)
            .ptr_mut(&mut arg)
            .u64(n)
            .run(grid_for(n))?;
    }
    Ok((y, arg))
}

/// The backward pass of [`max_pool2d_forward`]: each output gradient goes
/// to the position of its maximum (summed per plane in output order).
/// `dims` is the input's `[N, C, H, W]`; `gy` and `argmax` are contiguous
/// `[N, C, OH, OW]`.
pub fn max_pool2d_backward<E: CudaFloat>(
    gy: &CudaBuffer<E>,
    argmax: &CudaBuffer<u32>,
    dims: [usize; 4],
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "max_pool2d backward";
    let dev = gy.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, argmax.device())?;
    let planes = dims[0] * dims[1];
    let hw = dims[2] * dims[3];
    let mut gx = dev.alloc::<E>(planes * hw)?;
    if planes * hw == 0 {
        return Ok(gx);
    }
    if gy.len() != argmax.len() || !gy.len().is_multiple_of(planes) {
        return Err(shape_err(
            op,
            format!(
                "a gradient of {} and {} argmaxes for {planes} planes",
                gy.len(),
                argmax.len()
            ),
        ));
    }
    let mut acc = dev.zeros::<E::Acc>(planes * hw)?;
    if !gy.is_empty() {
        dev.launch(op, Family::Conv, E::DTYPE, "max_pool_bwd_acc")?
            .ptr(gy)
            .ptr(argmax)
            .u64(planes)
            .u64(gy.len() / planes)
            .u64(hw)
            .ptr_mut(&mut acc)
            .run(grid_for(planes))?;
    }
    dev.launch(op, Family::Conv, E::DTYPE, "round_from_acc")?
        .ptr(&acc)
        .ptr_mut(&mut gx)
        .u64(planes * hw)
        .run(grid_for(planes * hw))?;
    Ok(gx)
}

/// `(is_count, fixed)` of a divisor for the kernels.
fn divisor_args(d: AvgDivisor) -> (i32, usize) {
    match d {
        AvgDivisor::Fixed(n) => (0, n),
        AvgDivisor::Count => (1, 0),
    }
}

/// Average pooling over `[N, C, H, W]` (any layout) with the windows `rows`
/// × `cols`: the window sum (compute type) over the divisor, rounded once.
/// Returns `[N, C, OH, OW]` contiguous.
pub fn avg_pool2d_forward<E: CudaFloat>(
    x: &CudaBuffer<E>,
    lx: &Layout,
    rows: &[(usize, usize)],
    cols: &[(usize, usize)],
    divisor: AvgDivisor,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "avg_pool2d";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    check_layout(op, lx, x.len())?;
    let [nb, c, h, wd] = check_rank4(op, lx)?;
    let dr = ranges_to_device(op, dev, rows, h)?;
    let dc = ranges_to_device(op, dev, cols, wd)?;
    let n = nb * c * rows.len() * cols.len();
    let mut y = dev.alloc::<E>(n)?;
    if n > 0 {
        let (count, fixed) = divisor_args(divisor);
        dev.launch(op, Family::Conv, E::DTYPE, "avg_pool_fwd")?
            .ptr(x)
            .layout(lx)
            .ptr(&dr)
            .u64(rows.len())
            .ptr(&dc)
            .u64(cols.len())
            .i32(count)
            .u64(fixed)
            .ptr_mut(&mut y)
            .u64(n)
            .run(grid_for(n))?;
    }
    Ok(y)
}

/// The backward pass of [`avg_pool2d_forward`]: each output gradient is
/// spread evenly (over the divisor) onto its window. `dims` is the input's
/// `[N, C, H, W]`; `gy` is contiguous `[N, C, OH, OW]`.
pub fn avg_pool2d_backward<E: CudaFloat>(
    gy: &CudaBuffer<E>,
    dims: [usize; 4],
    rows: &[(usize, usize)],
    cols: &[(usize, usize)],
    divisor: AvgDivisor,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "avg_pool2d backward";
    let dev = gy.device();
    dev.check(op, E::DTYPE)?;
    let [nb, c, h, wd] = dims;
    let dr = ranges_to_device(op, dev, rows, h)?;
    let dc = ranges_to_device(op, dev, cols, wd)?;
    let need = nb * c * rows.len() * cols.len();
    if gy.len() != need {
        return Err(shape_err(
            op,
            format!("a gradient of {} for {need} outputs", gy.len()),
        ));
    }
    let n = nb * c * h * wd;
    let mut gx = dev.alloc::<E>(n)?;
    if n > 0 {
        let (count, fixed) = divisor_args(divisor);
        dev.launch(op, Family::Conv, E::DTYPE, "avg_pool_bwd")?
            .ptr(gy)
            .ptr(&dr)
            .u64(rows.len())
            .ptr(&dc)
            .u64(cols.len())
            .i32(count)
            .u64(fixed)
            .u64(h)
            .u64(wd)
            .ptr_mut(&mut gx)
            .u64(n)
            .run(grid_for(n))?;
    }
    Ok(gx)
}

/// The batch statistics of `x` (`[N, C, H, W]`, any layout) per channel:
/// mean and biased variance over `(N, H, W)` (two passes, compute type),
/// and `1 / sqrt(var + eps)`. One block per channel.
pub fn batch_norm_stats<E: CudaFloat>(
    x: &CudaBuffer<E>,
    lx: &Layout,
    eps: f64,
) -> Result<ChannelStats<CudaBuffer<E::Acc>>, CudaError> {
    let op = "batch_norm2d";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    check_layout(op, lx, x.len())?;
    let [_, c, _, _] = check_rank4(op, lx)?;
    let mut mean = dev.alloc::<E::Acc>(c)?;
    let mut var = dev.alloc::<E::Acc>(c)?;
    let mut rstd = dev.alloc::<E::Acc>(c)?;
    if c > 0 {
        dev.launch(op, Family::Conv, E::DTYPE, "bn_stats")?
            .ptr(x)
            .layout(lx)
            .f64(eps)
            .ptr_mut(&mut mean)
            .ptr_mut(&mut var)
            .ptr_mut(&mut rstd)
            .run(rows_grid(c))?;
    }
    Ok(ChannelStats { mean, var, rstd })
}

/// Statistics from running mean and variance vectors (`[C]`, any layout),
/// for eval mode.
pub fn running_stats<E: CudaFloat>(
    mean: (&CudaBuffer<E>, &Layout),
    var: (&CudaBuffer<E>, &Layout),
    eps: f64,
) -> Result<ChannelStats<CudaBuffer<E::Acc>>, CudaError> {
    let op = "batch_norm2d running stats";
    let dev = mean.0.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, var.0.device())?;
    check_layout(op, mean.1, mean.0.len())?;
    check_layout(op, var.1, var.0.len())?;
    let c = mean.1.numel();
    if mean.1.rank() != 1 || var.1.shape() != mean.1.shape() {
        return Err(shape_err(
            op,
            format!(
                "running mean {:?} and variance {:?}",
                mean.1.shape(),
                var.1.shape()
            ),
        ));
    }
    let mut m = dev.alloc::<E::Acc>(c)?;
    let mut v = dev.alloc::<E::Acc>(c)?;
    let mut r = dev.alloc::<E::Acc>(c)?;
    if c > 0 {
        dev.launch(op, Family::Conv, E::DTYPE, "bn_running")?
            .ptr(mean.0)
            .layout(mean.1)
            .ptr(var.0)
            .layout(var.1)
            .f64(eps)
            .ptr_mut(&mut m)
            .ptr_mut(&mut v)
            .ptr_mut(&mut r)
            .u64(c)
            .run(grid_for(c))?;
    }
    Ok(ChannelStats {
        mean: m,
        var: v,
        rstd: r,
    })
}

/// Checks the per-channel statistics and an optional `[C]` weight or bias.
fn check_channel<E: CudaFloat>(
    op: &str,
    dev: &CudaDevice,
    c: usize,
    stats: &ChannelStats<CudaBuffer<E::Acc>>,
    params: [Option<(&CudaBuffer<E>, &Layout)>; 2],
) -> Result<(), CudaError> {
    for s in [&stats.mean, &stats.var, &stats.rstd] {
        same_device(op, dev, s.device())?;
        if s.len() != c {
            return Err(shape_err(
                op,
                format!("statistics of {} for {c} channels", s.len()),
            ));
        }
    }
    for (b, l) in params.into_iter().flatten() {
        same_device(op, dev, b.device())?;
        check_layout(op, l, b.len())?;
        if l.shape() != [c] {
            return Err(shape_err(
                op,
                format!("weight/bias {:?} for {c} channels", l.shape()),
            ));
        }
    }
    Ok(())
}

/// Pushes an optional weight or bias: pointer, layout, presence flag.
fn param_args<E: CudaFloat>(l: &mut Launch<'_>, p: Option<(&CudaBuffer<E>, &Layout)>) {
    match p {
        Some((b, lay)) => l.ptr(b).layout(lay).i32(1),
        None => l.u64(0).no_layout().i32(0),
    };
}

/// `(x - mean) * rstd * weight + bias` per channel, computed in the compute
/// type and rounded once; `weight` and `bias` are `[C]` vectors (any layout)
/// or absent (scale 1, shift 0). Returns `[N, C, H, W]` contiguous.
pub fn batch_norm_apply<E: CudaFloat>(
    x: &CudaBuffer<E>,
    lx: &Layout,
    stats: &ChannelStats<CudaBuffer<E::Acc>>,
    weight: Option<(&CudaBuffer<E>, &Layout)>,
    bias: Option<(&CudaBuffer<E>, &Layout)>,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "batch_norm2d";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    check_layout(op, lx, x.len())?;
    let [_, c, _, _] = check_rank4(op, lx)?;
    check_channel(op, dev, c, stats, [weight, bias])?;
    let n = lx.numel();
    let mut y = dev.alloc::<E>(n)?;
    if n > 0 {
        let mut l = dev.launch(op, Family::Conv, E::DTYPE, "bn_apply")?;
        l.ptr(x).layout(lx).ptr(&stats.mean).ptr(&stats.rstd);
        param_args(&mut l, weight);
        param_args(&mut l, bias);
        l.ptr_mut(&mut y).u64(n).run(grid_for(n))?;
    }
    Ok(y)
}

/// The backward pass of [`batch_norm_apply`] with `stats` from
/// [`batch_norm_stats`] (`training`: the statistics depend on `x`) or
/// [`running_stats`] (eval: they are constants). `gy` is the contiguous
/// output gradient. The per-channel sums run one block per channel.
pub fn batch_norm_backward<E: CudaFloat>(
    x: &CudaBuffer<E>,
    lx: &Layout,
    stats: &ChannelStats<CudaBuffer<E::Acc>>,
    weight: Option<(&CudaBuffer<E>, &Layout)>,
    gy: &CudaBuffer<E>,
    training: bool,
) -> Result<BatchNormGrads<CudaBuffer<E>>, CudaError> {
    let op = "batch_norm2d backward";
    let dev = x.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, gy.device())?;
    check_layout(op, lx, x.len())?;
    let [_, c, _, _] = check_rank4(op, lx)?;
    check_channel(op, dev, c, stats, [weight, None])?;
    let n = lx.numel();
    if gy.len() != n {
        return Err(shape_err(
            op,
            format!("a gradient of {} for {n} elements", gy.len()),
        ));
    }
    let mut gx = dev.alloc::<E>(n)?;
    let mut gw = dev.zeros::<E>(c)?;
    let mut gb = dev.zeros::<E>(c)?;
    let mut sg = dev.zeros::<E::Acc>(c)?;
    let mut sgx = dev.zeros::<E::Acc>(c)?;
    if c > 0 {
        dev.launch(op, Family::Conv, E::DTYPE, "bn_bwd_sums")?
            .ptr(x)
            .layout(lx)
            .ptr(&stats.mean)
            .ptr(&stats.rstd)
            .ptr(gy)
            .ptr_mut(&mut sg)
            .ptr_mut(&mut sgx)
            .ptr_mut(&mut gw)
            .ptr_mut(&mut gb)
            .run(rows_grid(c))?;
    }
    if n > 0 {
        let mut l = dev.launch(op, Family::Conv, E::DTYPE, "bn_bwd_x")?;
        l.ptr(x).layout(lx).ptr(&stats.mean).ptr(&stats.rstd);
        param_args(&mut l, weight);
        l.ptr(gy)
            .ptr(&sg)
            .ptr(&sgx)
            .i32(i32::from(training))
            .ptr_mut(&mut gx)
            .u64(n)
            .run(grid_for(n))?;
    }
    Ok(BatchNormGrads {
        x: gx,
        weight: gw,
        bias: gb,
    })
}
