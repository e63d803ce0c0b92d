//! Loss functions, each one fused kernel forward and backward:
//! [`cross_entropy`] (log-softmax + NLL over the last axis, with
//! `ignore_index` and label smoothing as in PyTorch), [`mse_loss`] and
//! [`binary_cross_entropy_with_logits`] (optionally with a per-class
//! `pos_weight`).
//!
//! Every loss returns a scalar whose tape is the logits' (merged with the
//! other float operands'), so `loss.backward()` works as for any op.

use std::sync::Arc;

use zerfoo_kernels::cpu::loss as k;
use zerfoo_kernels::{Backend, Cpu, Device, FloatDtype, IntDtype, Layout, Real};

use crate::autograd::{device_ok, record, Merge, NoTape, TapeState, TensorId};
use crate::error::or_panic;
use crate::ops::{LastDim, Merge3, SameDtype};
use crate::shape::{Dim, Dyn, SameDim, SameShape, Shape};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Names `cross_entropy` in shape errors.
#[derive(Clone, Copy, Debug, Default)]
pub struct CrossEntropy;
/// Names `mse_loss` in shape errors.
#[derive(Clone, Copy, Debug, Default)]
pub struct MseLoss;
/// Names `binary_cross_entropy_with_logits` in shape errors.
#[derive(Clone, Copy, Debug, Default)]
pub struct BceWithLogits;

/// A scalar (a loss) with dtype `E`, tape `T`, on device `D`.
pub type Scalar<E, T, D = Cpu> = Tensor<(), E, D, T>;

/// How the per-element (or per-row) losses become one number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// The mean (for cross-entropy: over the rows that are not ignored).
    #[default]
    Mean,
    /// The sum.
    Sum,
}

/// Options of [`cross_entropy`]; `CrossEntropyOpts::default()` is a plain
/// mean over every row with no smoothing.
///
/// ```
/// use zerfoo::nn::{CrossEntropyOpts, Reduction};
/// let opts = CrossEntropyOpts::default().ignore_index(-100).label_smoothing(0.1);
/// assert_eq!(opts.reduction, Reduction::Mean);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossEntropyOpts {
    /// Rows whose target equals this value add nothing to the loss, get a
    /// zero gradient and do not count in the mean. `None` (the default)
    /// ignores nothing; PyTorch's default is `Some(-100)`.
    pub ignore_index: Option<i64>,
    /// `eps` in `[0, 1]`: the target distribution is `(1 - eps) * onehot +
    /// eps / C` (PyTorch's `label_smoothing`).
    pub label_smoothing: f64,
    /// Mean (over non-ignored rows) or sum.
    pub reduction: Reduction,
}

impl Default for CrossEntropyOpts {
    fn default() -> Self {
        CrossEntropyOpts {
            ignore_index: None,
            label_smoothing: 0.0,
            reduction: Reduction::Mean,
        }
    }
}

impl CrossEntropyOpts {
    /// Ignores rows whose target is `index`.
    pub fn ignore_index(mut self, index: i64) -> Self {
        self.ignore_index = Some(index);
        self
    }
    /// Sets the label smoothing.
    pub fn label_smoothing(mut self, eps: f64) -> Self {
        self.label_smoothing = eps;
        self
    }
    /// Sets the reduction.
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }
}

/// Logits `(.., C)`: the class axis is the last one, and the targets have
/// the shape of the remaining axes ([`ClassAxis::Rows`]).
#[diagnostic::on_unimplemented(
    message = "shape error in `cross_entropy`: the logits `{Self}` have no class axis",
    label = "logits need a last (class) axis",
    note = "logits are `(.., C)` and targets `(..)`: a scalar has no classes"
)]
pub trait ClassAxis: Shape + LastDim {
    /// The shape without the class axis: the targets' shape.
    type Rows: Shape;
}
impl<C: Dim> ClassAxis for (C,) {
    type Rows = ();
}
macro_rules! class_axis {
    ($($a:ident),+; $c:ident) => {
        impl<$($a: Dim,)+ $c: Dim> ClassAxis for ($($a,)+ $c) {
            type Rows = ($($a,)+);
        }
    };
}
class_axis!(A; C);
class_axis!(A, B; C);
class_axis!(A, B, D; C);
class_axis!(A, B, D, F; C);
class_axis!(A, B, D, F, G; C);

/// An id as `i64` (saturating beyond the `i64` range).
fn id_as_i64<I: IntDtype>(v: I) -> i64 {
    match v.to_index() {
        Some(i) => i64::try_from(i).unwrap_or(i64::MAX),
        None => v.to_f64() as i64,
    }
}

/// One class index per row (row-major), [`k::IGNORED`] for ignored rows.
fn row_targets<St: Shape, I: IntDtype, Dt: Device, Tt>(
    targets: &Tensor<St, I, Dt, Tt>,
    ignore: Option<i64>,
    classes: usize,
) -> Result<(Vec<usize>, usize)> {
    let ids: Vec<i64> = targets
        .try_to_vec()?
        .into_iter()
        .map(id_as_i64::<I>)
        .collect();
    let mut out = Vec::with_capacity(ids.len());
    let mut counted = 0;
    for id in ids {
        if Some(id) == ignore {
            out.push(k::IGNORED);
            continue;
        }
        match usize::try_from(id) {
            Ok(i) if i < classes => {
                out.push(i);
                counted += 1;
            }
            _ => {
                return Err(Error::IndexOutOfRange {
                    op: "cross_entropy",
                    index: id,
                    size: classes,
                })
            }
        }
    }
    Ok((out, counted))
}

/// A scalar tensor on `dev` (copied there from the host).
fn scalar_on<E: FloatDtype, D: Device, T>(
    dev: &D,
    value: E,
    id: TensorId,
    tape: T,
) -> Result<Tensor<(), E, D, T>> {
    Ok(Tensor {
        shape: (),
        layout: Layout::contiguous(&[]),
        data: Arc::new(dev.upload(vec![value])?),
        id,
        tape,
        device: dev.clone(),
    })
}

/// Cross-entropy between logits `(.., C)` and integer class targets `(..)`
/// (`i64` or `u32`), PyTorch's `F.cross_entropy` with the class axis last:
///
/// ```text
/// loss_r = -(1 - eps) * logp[r, t_r] - eps / C * sum_c logp[r, c],  logp = log_softmax(logits)
/// ```
///
/// reduced by the mean over the rows whose target is not
/// `opts.ignore_index` (NaN when every row is ignored, as in PyTorch) or by
/// the sum. One fused kernel: log-softmax and NLL forward, and
/// `scale * (softmax - (1 - eps) * onehot - eps / C)` backward; huge logits
/// (±1e4) give a finite loss and gradient. Only the logits get a gradient.
///
/// Errors: target dims other than the logits' minus the last
/// ([`Error::ShapeMismatch`], when a `Dyn` dim differs), a target outside
/// `0..C` that is not ignored ([`Error::IndexOutOfRange`]), a label
/// smoothing outside `[0, 1]` ([`Error::InvalidArgument`]).
///
/// ```
/// use zerfoo::nn::{try_cross_entropy, CrossEntropyOpts};
/// use zerfoo::prelude::*;
/// // two rows of two classes: [0, ln 3] with target 1, [0, 0] with target 0
/// let logits = Tensor::<(U2, U2), f64>::from_vec(Default::default(), vec![0.0, 3f64.ln(), 0.0, 0.0]).unwrap();
/// let targets = Tensor::<(U2,), i64>::from_vec(Default::default(), vec![1, 0]).unwrap();
/// let loss = try_cross_entropy(logits.clone(), &targets, CrossEntropyOpts::default()).unwrap();
/// let want = (-(0.75f64).ln() + 2f64.ln()) / 2.0;
/// assert!((loss.item() - want).abs() < 1e-15);
/// let bad = Tensor::<(U2,), i64>::from_vec(Default::default(), vec![1, 2]).unwrap();
/// assert!(try_cross_entropy(logits, &bad, CrossEntropyOpts::default()).is_err());
/// ```
pub fn try_cross_entropy<S, E, D, T, St, I, Dt, Tt>(
    logits: Tensor<S, E, D, T>,
    targets: &Tensor<St, I, Dt, Tt>,
    opts: CrossEntropyOpts,
) -> Result<Tensor<(), E, D, T>>
where
    S: ClassAxis,
    St: Shape + SameShape<S::Rows, CrossEntropy>,
    E: FloatDtype,
    D: Backend,
    Dt: Device,
    I: IntDtype,
    T: TapeState,
{
    let eps = opts.label_smoothing;
    if !(0.0..=1.0).contains(&eps) {
        return Err(Error::InvalidArgument {
            op: "cross_entropy",
            reason: format!("label_smoothing must lie in [0, 1], got {eps}"),
        });
    }
    let dims = logits.dims();
    let classes = dims[dims.len() - 1];
    if targets.dims()[..] != dims[..dims.len() - 1] {
        return Err(Error::ShapeMismatch {
            op: "cross_entropy",
            lhs: dims.to_vec(),
            rhs: targets.dims().to_vec(),
        });
    }
    let (rows, counted) = row_targets(targets, opts.ignore_index, classes)?;
    let rows = logits.device.targets(rows)?;
    let (sum, stats) =
        logits
            .device
            .cross_entropy_forward(&logits.data, &logits.layout, &rows, eps)?;
    let factor = match opts.reduction {
        Reduction::Mean => 1.0 / counted as f64,
        Reduction::Sum => 1.0,
    };
    let value = match opts.reduction {
        Reduction::Mean => sum / E::Acc::of_f64(counted as f64),
        Reduction::Sum => sum,
    };
    let out_id = TensorId::fresh();
    let tape = if T::TRACKED {
        let (x, lx, in_id) = (logits.data.clone(), logits.layout, logits.id);
        let dev = logits.device.clone();
        record::<T>(out_id, &[logits.tape.node()], move |g| {
            if let Some(gy) = g.take_on::<D, E>(out_id) {
                let gy0 = device_ok(dev.to_host(&gy, &Layout::contiguous(&[1])))[0];
                let scale = gy0.to_acc() * E::Acc::of_f64(factor);
                let gx = device_ok(dev.cross_entropy_backward(&x, &lx, &rows, &stats, eps, scale));
                g.accumulate_on(&dev, in_id, gx);
            }
        })
    } else {
        T::from_node(None)
    };
    scalar_on(&logits.device, E::from_acc(value), out_id, tape)
}

/// Panicking twin of [`try_cross_entropy`] (same message).
#[track_caller]
pub fn cross_entropy<S, E, D, T, St, I, Dt, Tt>(
    logits: Tensor<S, E, D, T>,
    targets: &Tensor<St, I, Dt, Tt>,
    opts: CrossEntropyOpts,
) -> Tensor<(), E, D, T>
where
    S: ClassAxis,
    St: Shape + SameShape<S::Rows, CrossEntropy>,
    E: FloatDtype,
    D: Backend,
    Dt: Device,
    I: IntDtype,
    T: TapeState,
{
    or_panic(try_cross_entropy(logits, targets, opts))
}

fn reduce_factor(reduction: Reduction, n: usize) -> f64 {
    match reduction {
        Reduction::Mean => 1.0 / n as f64,
        Reduction::Sum => 1.0,
    }
}

/// Mean (or summed) squared error `(pred - target)^2`, PyTorch's
/// `F.mse_loss`. Both operands get gradients (`±2 (pred - target)` scaled).
/// A `Dyn` dim that differs is [`Error::ShapeMismatch`].
///
/// ```
/// use zerfoo::nn::{try_mse_loss, Reduction};
/// use zerfoo::prelude::*;
/// let p = Tensor::<(U3,), f32>::from_vec(Default::default(), vec![1., 2., 3.]).unwrap();
/// let t = Tensor::<(U3,), f32>::from_vec(Default::default(), vec![0., 2., 5.]).unwrap();
/// assert_eq!(try_mse_loss(p, t, Reduction::Mean).unwrap().item(), 5.0 / 3.0);
/// ```
pub fn try_mse_loss<S, S2, E, E2, D, T, T2>(
    pred: Tensor<S, E, D, T>,
    target: Tensor<S2, E2, D, T2>,
    reduction: Reduction,
) -> Result<Tensor<(), E, D, <T as Merge<T2>>::Out>>
where
    S: Shape + SameShape<S2, MseLoss>,
    S2: Shape,
    E: FloatDtype + SameDtype<E2, MseLoss>,
    E2: FloatDtype,
    D: Backend,
    T: TapeState + Merge<T2>,
    T2: TapeState,
{
    let target = E::same(target);
    if pred.dims() != target.dims() {
        return Err(Error::ShapeMismatch {
            op: "mse_loss",
            lhs: pred.dims().to_vec(),
            rhs: target.dims().to_vec(),
        });
    }
    let factor = reduce_factor(reduction, pred.numel());
    let sum = pred
        .device
        .mse_forward(&pred.data, &pred.layout, &target.data, &target.layout)?;
    let value = match reduction {
        Reduction::Mean => sum / E::Acc::of_f64(pred.numel() as f64),
        Reduction::Sum => sum,
    };
    type Out<T, T2> = <T as Merge<T2>>::Out;
    let out_id = TensorId::fresh();
    let tape = if Out::<T, T2>::TRACKED {
        let (a, la, ida) = (pred.data.clone(), pred.layout, pred.id);
        let (b, lb, idb) = (target.data.clone(), target.layout, target.id);
        let dev = pred.device.clone();
        record::<Out<T, T2>>(out_id, &[pred.tape.node(), target.tape.node()], move |g| {
            if let Some(gy) = g.take_on::<D, E>(out_id) {
                let gy0 = device_ok(dev.to_host(&gy, &Layout::contiguous(&[1])))[0];
                let scale = gy0.to_acc() * E::Acc::of_f64(factor);
                let (ga, gb) = device_ok(dev.mse_backward(&a, &la, &b, &lb, scale));
                g.accumulate_on(&dev, ida, ga);
                g.accumulate_on(&dev, idb, gb);
            }
        })
    } else {
        Out::<T, T2>::from_node(None)
    };
    scalar_on(&pred.device, E::from_acc(value), out_id, tape)
}

/// Panicking twin of [`try_mse_loss`].
#[track_caller]
pub fn mse_loss<S, S2, E, E2, D, T, T2>(
    pred: Tensor<S, E, D, T>,
    target: Tensor<S2, E2, D, T2>,
    reduction: Reduction,
) -> Tensor<(), E, D, <T as Merge<T2>>::Out>
where
    S: Shape + SameShape<S2, MseLoss>,
    S2: Shape,
    E: FloatDtype + SameDtype<E2, MseLoss>,
    E2: FloatDtype,
    D: Backend,
    T: TapeState + Merge<T2>,
    T2: TapeState,
{
    or_panic(try_mse_loss(pred, target, reduction))
}

/// Binary cross-entropy on logits, PyTorch's
/// `F.binary_cross_entropy_with_logits`, in the stable form
/// `max(x, 0) - x y + ln(1 + e^-|x|)` (finite for any finite logit), reduced
/// by the mean over every element or the sum. Logits and targets (which may
/// be soft labels in `[0, 1]`) both get gradients, as in PyTorch.
///
/// ```
/// use zerfoo::nn::{try_binary_cross_entropy_with_logits, Reduction};
/// use zerfoo::prelude::*;
/// let x = Tensor::<(U2,), f64>::from_vec(Default::default(), vec![0.0, 1e4]).unwrap();
/// let y = Tensor::<(U2,), f64>::from_vec(Default::default(), vec![1.0, 1.0]).unwrap();
/// let l = try_binary_cross_entropy_with_logits(x, y, Reduction::Sum).unwrap();
/// assert!((l.item() - 2f64.ln()).abs() < 1e-15);
/// ```
pub fn try_binary_cross_entropy_with_logits<S, S2, E, E2, D, T, T2>(
    logits: Tensor<S, E, D, T>,
    targets: Tensor<S2, E2, D, T2>,
    reduction: Reduction,
) -> Result<Tensor<(), E, D, <T as Merge<T2>>::Out>>
where
    S: Shape + SameShape<S2, BceWithLogits>,
    S2: Shape,
    E: FloatDtype + SameDtype<E2, BceWithLogits>,
    E2: FloatDtype,
    D: Backend,
    T: TapeState + Merge<T2>,
    T2: TapeState,
{
    bce_impl::<S, S2, Dyn, E, D, T, T2, NoTape>(logits, E::same(targets), None, reduction)
}

/// Panicking twin of [`try_binary_cross_entropy_with_logits`].
#[track_caller]
pub fn binary_cross_entropy_with_logits<S, S2, E, E2, D, T, T2>(
    logits: Tensor<S, E, D, T>,
    targets: Tensor<S2, E2, D, T2>,
    reduction: Reduction,
) -> Tensor<(), E, D, <T as Merge<T2>>::Out>
where
    S: Shape + SameShape<S2, BceWithLogits>,
    S2: Shape,
    E: FloatDtype + SameDtype<E2, BceWithLogits>,
    E2: FloatDtype,
    D: Backend,
    T: TapeState + Merge<T2>,
    T2: TapeState,
{
    or_panic(try_binary_cross_entropy_with_logits(
        logits, targets, reduction,
    ))
}

/// [`binary_cross_entropy_with_logits`] with PyTorch's `pos_weight`: one
/// weight per entry of the last axis multiplies the positive term,
/// `(1 - y) x + (1 + (p - 1) y) softplus(-x)`. The weight gets a gradient
/// too (by id, like a layer's parameter). A `Dyn` dim that differs is
/// [`Error::ShapeMismatch`].
///
/// ```
/// use zerfoo::nn::{try_binary_cross_entropy_with_logits_weighted, Reduction};
/// use zerfoo::prelude::*;
/// let x = Tensor::<(U1, U2), f64>::zeros(Default::default());
/// let y = Tensor::<(U1, U2), f64>::ones(Default::default());
/// let w = Tensor::<(U2,), f64>::from_vec(Default::default(), vec![1.0, 3.0]).unwrap();
/// let l = try_binary_cross_entropy_with_logits_weighted(x, y, &w, Reduction::Sum).unwrap();
/// assert!((l.item() - 4.0 * 2f64.ln()).abs() < 1e-15);
/// ```
pub fn try_binary_cross_entropy_with_logits_weighted<S, S2, E, E2, D, T, T2, C, Tw>(
    logits: Tensor<S, E, D, T>,
    targets: Tensor<S2, E2, D, T2>,
    pos_weight: &Tensor<(C,), E, D, Tw>,
    reduction: Reduction,
) -> Result<Scalar<E, Merge3<T, T2, Tw>, D>>
where
    S: Shape + SameShape<S2, BceWithLogits> + LastDim,
    S::Last: SameDim<C, BceWithLogits>,
    S2: Shape,
    C: Dim,
    E: FloatDtype + SameDtype<E2, BceWithLogits>,
    E2: FloatDtype,
    D: Backend,
    T: TapeState + Merge<T2>,
    <T as Merge<T2>>::Out: Merge<Tw>,
    T2: TapeState,
    Tw: TapeState,
{
    let dims = logits.dims();
    if pos_weight.dims()[..] != dims[dims.len() - 1..] {
        return Err(Error::ShapeMismatch {
            op: "binary_cross_entropy_with_logits",
            lhs: dims.to_vec(),
            rhs: pos_weight.dims().to_vec(),
        });
    }
    bce_impl(logits, E::same(targets), Some(pos_weight), reduction)
}

/// Panicking twin of [`try_binary_cross_entropy_with_logits_weighted`].
#[track_caller]
pub fn binary_cross_entropy_with_logits_weighted<S, S2, E, E2, D, T, T2, C, Tw>(
    logits: Tensor<S, E, D, T>,
    targets: Tensor<S2, E2, D, T2>,
    pos_weight: &Tensor<(C,), E, D, Tw>,
    reduction: Reduction,
) -> Scalar<E, Merge3<T, T2, Tw>, D>
where
    S: Shape + SameShape<S2, BceWithLogits> + LastDim,
    S::Last: SameDim<C, BceWithLogits>,
    S2: Shape,
    C: Dim,
    E: FloatDtype + SameDtype<E2, BceWithLogits>,
    E2: FloatDtype,
    D: Backend,
    T: TapeState + Merge<T2>,
    <T as Merge<T2>>::Out: Merge<Tw>,
    T2: TapeState,
    Tw: TapeState,
{
    or_panic(try_binary_cross_entropy_with_logits_weighted(
        logits, targets, pos_weight, reduction,
    ))
}

/// The shared body of the BCE losses; the output tape is `T ∪ T2 ∪ Tw`.
fn bce_impl<S, S2, C, E, D, T, T2, Tw>(
    logits: Tensor<S, E, D, T>,
    targets: Tensor<S2, E, D, T2>,
    pos_weight: Option<&Tensor<(C,), E, D, Tw>>,
    reduction: Reduction,
) -> Result<Scalar<E, Merge3<T, T2, Tw>, D>>
where
    S: Shape,
    S2: Shape,
    C: Dim,
    E: FloatDtype,
    D: Backend,
    T: TapeState + Merge<T2>,
    <T as Merge<T2>>::Out: Merge<Tw>,
    T2: TapeState,
    Tw: TapeState,
{
    if logits.dims() != targets.dims() {
        return Err(Error::ShapeMismatch {
            op: "binary_cross_entropy_with_logits",
            lhs: logits.dims().to_vec(),
            rhs: targets.dims().to_vec(),
        });
    }
    let n = logits.numel();
    let factor = reduce_factor(reduction, n);
    let dev = logits.device.clone();
    // The weight in the compute type, on the logits' device.
    let pw: Option<Arc<D::Storage<E::Acc>>> = match pos_weight {
        Some(p) => {
            let acc: Vec<E::Acc> = p.try_to_vec()?.into_iter().map(|v| v.to_acc()).collect();
            Some(Arc::new(dev.upload(acc)?))
        }
        None => None,
    };
    let sum = dev.bce_logits_forward(
        &logits.data,
        &logits.layout,
        &targets.data,
        &targets.layout,
        pw.as_deref(),
    )?;
    let value = match reduction {
        Reduction::Mean => sum / E::Acc::of_f64(n as f64),
        Reduction::Sum => sum,
    };
    type Out<T, T2, Tw> = Merge3<T, T2, Tw>;
    let out_id = TensorId::fresh();
    let tape = if Out::<T, T2, Tw>::TRACKED {
        let (x, lx, idx) = (logits.data.clone(), logits.layout, logits.id);
        let (y, ly, idy) = (targets.data.clone(), targets.layout, targets.id);
        let pw_id = pos_weight.map(|p| p.id);
        let parents = [
            logits.tape.node(),
            targets.tape.node(),
            pos_weight.and_then(|p| p.tape.node()),
        ];
        let gdev = dev.clone();
        record::<Out<T, T2, Tw>>(out_id, &parents, move |g| {
            if let Some(gy) = g.take_on::<D, E>(out_id) {
                let gy0 = device_ok(gdev.to_host(&gy, &Layout::contiguous(&[1])))[0];
                let scale = gy0.to_acc() * E::Acc::of_f64(factor);
                let (gx, gt, gp) =
                    device_ok(gdev.bce_logits_backward(&x, &lx, &y, &ly, pw.as_deref(), scale));
                g.accumulate_on(&gdev, idx, gx);
                g.accumulate_on(&gdev, idy, gt);
                if let (Some(id), Some(gp)) = (pw_id, gp) {
                    g.accumulate_on(&gdev, id, gp);
                }
            }
        })
    } else {
        Out::<T, T2, Tw>::from_node(None)
    };
    scalar_on(&dev, E::from_acc(value), out_id, tape)
}
