//! Image layers over `(N, C, H, W)` tensors, like `torch.nn`'s: [`Conv2d`],
//! [`MaxPool2d`], [`AvgPool2d`], [`BatchNorm2d`] and [`Flatten`].
//!
//! The window geometry of a layer is its `Cfg` type parameter: a
//! [`Conv2dConfig`] / [`Pool2dConfig`](crate::ops::Pool2dConfig) (typenum
//! constants, output spatial dims computed in the type) or a
//! [`Conv2dArgs`](crate::ops::Conv2dArgs) / [`Pool2dArgs`] (run-time values,
//! `Dyn` output spatial dims). See [`Tensor::conv2d`] for the shape rules.
//!
//! # Running statistics are buffers
//!
//! [`BatchNorm2d`] keeps `running_mean` and `running_var` in [`Buffer`]s. A
//! buffer is visited by the [`Module`] traversal like a parameter, so it is
//! saved to and loaded from checkpoints under its path
//! (`bn1.running_mean`, as in PyTorch's `state_dict`) and listed by
//! [`Module::param_info`]. It never receives a gradient: batch norm reads the running
//! statistics as plain numbers (they never enter a graph), and optimizers
//! update only tensors that have a gradient, so no optimizer (weight decay
//! included) touches them. The layer updates them itself during a training
//! forward, through the buffer's lock, because [`Forward::forward`] takes
//! `&self`. (Unlike PyTorch's `parameters()`, [`Module::num_params`] counts
//! them; PyTorch's `num_batches_tracked` counter is not kept: it only
//! matters for `momentum=None`.)

// Typed shapes in signatures are the point of these layers.
#![allow(clippy::type_complexity)]

use core::fmt;
use core::marker::PhantomData;
use std::sync::{Mutex, MutexGuard, PoisonError};

use zerfoo_kernels::{Backend, Cpu, FloatDtype};

use super::{init, Forward, Module, ParamVisitor, ParamVisitorMut, ToDevice, ToDtype};
use crate::autograd::TapeState;
use crate::error::{or_panic, Result};
use crate::ops::{
    AvgPooling, BatchNormalization, Conv2dConfig, ConvOut, ConvOutDim, ConvSpec, Convolution,
    FlattenDim, Flattening, GroupsFit, MaxPooling, Pool2dArgs, PoolOut, PoolOutDim, PoolSpec,
};
use crate::shape::{Dim, Dyn, SameDim, Shape};
use crate::tensor::Tensor;

/// A tensor a module owns that is not trained: saved in checkpoints by
/// path and visited by the [`Module`] traversal like a parameter, but never
/// given a gradient (so optimizers leave it alone). The layer that owns it
/// updates it through a lock, from `&self`. It lives on device `D` with the
/// rest of its module, and moves with it ([`Module::to_device`]).
pub struct Buffer<S: Shape, E: FloatDtype, D: Backend = Cpu> {
    inner: Mutex<Tensor<S, E, D>>,
}

impl<S: Shape, E: FloatDtype, D: Backend> Buffer<S, E, D> {
    /// A buffer holding `t`.
    pub fn new(t: Tensor<S, E, D>) -> Self {
        Buffer {
            inner: Mutex::new(t),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tensor<S, E, D>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current value (a cheap clone sharing storage).
    pub fn get(&self) -> Tensor<S, E, D> {
        self.lock().clone()
    }

    /// Replaces the value.
    pub fn set(&self, t: Tensor<S, E, D>) {
        *self.lock() = t;
    }

    /// Runs `f` on the value, mutably, under the lock.
    pub fn update<R>(&self, f: impl FnOnce(&mut Tensor<S, E, D>) -> R) -> R {
        f(&mut self.lock())
    }
}

impl<S: Shape, E: FloatDtype, D: Backend> Clone for Buffer<S, E, D> {
    fn clone(&self) -> Self {
        Buffer::new(self.get())
    }
}

impl<S: Shape, E: FloatDtype, D: Backend> fmt::Debug for Buffer<S, E, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Buffer").field(&*self.lock()).finish()
    }
}

impl<S: Shape, E: FloatDtype, D: Backend> Module for Buffer<S, E, D> {
    fn visit_params<V: ParamVisitor>(&self, prefix: &str, v: &mut V) {
        v.visit(prefix, &*self.lock());
    }
    fn visit_params_mut<V: ParamVisitorMut>(&mut self, prefix: &str, v: &mut V) {
        let t = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        v.visit(prefix, t);
    }
}

impl<S: Shape, E: FloatDtype, D: Backend, D2: Backend> ToDevice<D2> for Buffer<S, E, D> {
    type Output = Buffer<S, E, D2>;
    fn convert_device(&self, device: &D2) -> Result<Buffer<S, E, D2>> {
        Ok(Buffer::new(self.get().try_to_device(device)?))
    }
}

impl<S: Shape, E: FloatDtype, E2: FloatDtype, D: Backend> ToDtype<E2> for Buffer<S, E, D> {
    type Output = Buffer<S, E2, D>;
    fn convert_dtype(&self) -> Buffer<S, E2, D> {
        Buffer::new(self.get().to_dtype::<E2>())
    }
}

// ---------------------------------------------------------------- Conv2d

/// `torch.nn.Conv2d`: `I` input channels per group (= the input channels
/// when there is one group), `O` output channels, a `KH x KW` kernel,
/// geometry `Cfg` (stride, padding, dilation, groups).
///
/// ```
/// use zerfoo::nn::{Conv2d, Forward};
/// use zerfoo::ops::Conv2dConfig;
/// use zerfoo::prelude::*;
/// dim!(Rgb = 3);
/// dim!(Filters = 8);
/// // 3x3 kernel, stride 1, padding 1: the image size is kept, in the type
/// let conv: Conv2d<Rgb, Filters, U3, U3, f32, Conv2dConfig<U1, U1>> =
///     Conv2d::new(Rgb, Filters, (U3::default(), U3::default()), Conv2dConfig::new(), true, 0);
/// let x: Tensor<(Dyn, Rgb, U16, U16), f32> = Tensor::zeros((Dyn(2), Rgb, U16::default(), U16::default()));
/// let y: Tensor<(Dyn, Filters, U16, U16), f32> = conv.forward(x);
/// assert_eq!(y.dims(), [2, 8, 16, 16]);
/// ```
#[derive(crate::nn::Module, Clone, Debug)]
pub struct Conv2d<
    I: Dim,
    O: Dim,
    KH: Dim,
    KW: Dim,
    E: FloatDtype,
    Cfg: ConvSpec = Conv2dConfig,
    D: Backend = Cpu,
> {
    /// `[out, in / groups, kh, kw]`.
    pub weight: Tensor<(O, I, KH, KW), E, D>,
    /// `[out]`, if any.
    pub bias: Option<Tensor<(O,), E, D>>,
    /// Stride, padding, dilation, groups.
    #[module(skip)]
    pub cfg: Cfg,
}

impl<I: Dim, O: Dim, KH: Dim, KW: Dim, E: FloatDtype, Cfg: ConvSpec> Conv2d<I, O, KH, KW, E, Cfg> {
    /// PyTorch's default initialization from a seed: weight and bias
    /// `U(-1/√fan_in, 1/√fan_in)` with `fan_in = I * KH * KW`.
    pub fn new(i: I, o: O, kernel: (KH, KW), cfg: Cfg, bias: bool, seed: u64) -> Self {
        let fan_in = i.size() * kernel.0.size() * kernel.1.size();
        Conv2d {
            weight: init::torch_default((o, i, kernel.0, kernel.1), fan_in, seed),
            bias: bias.then(|| init::torch_default((o,), fan_in, seed.wrapping_add(1))),
            cfg,
        }
    }

    /// A layer with the given weight, bias and geometry.
    pub fn from_parts(
        weight: Tensor<(O, I, KH, KW), E>,
        bias: Option<Tensor<(O,), E>>,
        cfg: Cfg,
    ) -> Self {
        Conv2d { weight, bias, cfg }
    }
}

impl<I: Dim, O: Dim, KH: Dim, KW: Dim, E: FloatDtype, Cfg: ConvSpec, D: Backend>
    Conv2d<I, O, KH, KW, E, Cfg, D>
{
    /// The forward pass, with run-time shape errors as `Err` (see
    /// [`Tensor::try_conv2d`]).
    pub fn try_forward<N, C, H, W, T>(
        &self,
        x: Tensor<(N, C, H, W), E, D, T>,
    ) -> Result<Tensor<(N, O, ConvOut<H, KH, Cfg>, ConvOut<W, KW, Cfg>), E, D, T>>
    where
        N: Dim,
        C: Dim,
        H: ConvOutDim<KH, Cfg, Convolution>,
        W: ConvOutDim<KW, Cfg, Convolution>,
        T: TapeState,
        Cfg::Groups: GroupsFit<C, I, O, Convolution>,
    {
        let w = self.weight.retaped::<T>();
        match &self.bias {
            Some(b) => x.try_conv2d_bias(&w, &b.retaped::<T>(), self.cfg),
            None => x.try_conv2d(&w, self.cfg),
        }
    }
}

impl<N, C, H, W, I, O, KH, KW, E, Cfg, D, T> Forward<Tensor<(N, C, H, W), E, D, T>>
    for Conv2d<I, O, KH, KW, E, Cfg, D>
where
    N: Dim,
    C: Dim,
    H: ConvOutDim<KH, Cfg, Convolution>,
    W: ConvOutDim<KW, Cfg, Convolution>,
    I: Dim,
    O: Dim,
    KH: Dim,
    KW: Dim,
    E: FloatDtype,
    Cfg: ConvSpec,
    D: Backend,
    T: TapeState,
    Cfg::Groups: GroupsFit<C, I, O, Convolution>,
{
    type Output = Tensor<(N, O, ConvOut<H, KH, Cfg>, ConvOut<W, KW, Cfg>), E, D, T>;
    /// Panics with the `try_forward` message on a run-time shape error.
    fn forward(&self, x: Tensor<(N, C, H, W), E, D, T>) -> Self::Output {
        or_panic(self.try_forward(x))
    }
}

// ---------------------------------------------------------------- pools

/// `torch.nn.MaxPool2d` with geometry `Cfg` (a
/// [`Pool2dConfig`](crate::ops::Pool2dConfig) or [`Pool2dArgs`]); padding
/// counts as `-inf`.
///
/// ```
/// use zerfoo::nn::{Forward, MaxPool2d};
/// use zerfoo::ops::Pool2dConfig;
/// use zerfoo::prelude::*;
/// let pool = MaxPool2d::new(Pool2dConfig::<U2>::new());
/// let x: Tensor<(U1, U3, U8, U6), f32> = Tensor::zeros(Default::default());
/// let y: Tensor<(U1, U3, U4, U3), f32> = pool.forward(x);
/// # let _ = y;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct MaxPool2d<Cfg: PoolSpec> {
    /// Kernel, stride, padding.
    pub cfg: Cfg,
}

impl<Cfg: PoolSpec> MaxPool2d<Cfg> {
    /// A max pool with geometry `cfg`.
    pub fn new(cfg: Cfg) -> Self {
        MaxPool2d { cfg }
    }
}

impl MaxPool2d<Pool2dArgs> {
    /// A max pool with run-time kernel, stride and padding (`Dyn` output dims).
    pub fn with_args(kernel: usize, stride: usize, padding: usize) -> Self {
        MaxPool2d::new(Pool2dArgs::new(kernel, stride, padding))
    }
}

impl<Cfg: PoolSpec> Module for MaxPool2d<Cfg> {
    fn visit_params<V: ParamVisitor>(&self, _: &str, _: &mut V) {}
    fn visit_params_mut<V: ParamVisitorMut>(&mut self, _: &str, _: &mut V) {}
}

impl<N, C, H, W, E, Cfg, D, T> Forward<Tensor<(N, C, H, W), E, D, T>> for MaxPool2d<Cfg>
where
    N: Dim,
    C: Dim,
    H: PoolOutDim<Cfg, MaxPooling>,
    W: PoolOutDim<Cfg, MaxPooling>,
    E: FloatDtype,
    Cfg: PoolSpec,
    D: Backend,
    T: TapeState,
{
    type Output = Tensor<
        (
            N,
            C,
            PoolOut<H, Cfg, MaxPooling>,
            PoolOut<W, Cfg, MaxPooling>,
        ),
        E,
        D,
        T,
    >;
    fn forward(&self, x: Tensor<(N, C, H, W), E, D, T>) -> Self::Output {
        x.max_pool2d(self.cfg)
    }
}

/// `torch.nn.AvgPool2d` with geometry `Cfg`; by default (`new`) padded
/// zeros count in the divisor (`count_include_pad=True`, as PyTorch).
#[derive(Clone, Copy, Debug)]
pub struct AvgPool2d<Cfg: PoolSpec> {
    /// Kernel, stride, padding.
    pub cfg: Cfg,
    /// Whether padded zeros count in the divisor.
    pub count_include_pad: bool,
}

impl<Cfg: PoolSpec> AvgPool2d<Cfg> {
    /// An average pool with geometry `cfg`, `count_include_pad=True`.
    pub fn new(cfg: Cfg) -> Self {
        AvgPool2d {
            cfg,
            count_include_pad: true,
        }
    }
}

impl<Cfg: PoolSpec> Module for AvgPool2d<Cfg> {
    fn visit_params<V: ParamVisitor>(&self, _: &str, _: &mut V) {}
    fn visit_params_mut<V: ParamVisitorMut>(&mut self, _: &str, _: &mut V) {}
}

impl<N, C, H, W, E, Cfg, D, T> Forward<Tensor<(N, C, H, W), E, D, T>> for AvgPool2d<Cfg>
where
    N: Dim,
    C: Dim,
    H: PoolOutDim<Cfg, AvgPooling>,
    W: PoolOutDim<Cfg, AvgPooling>,
    E: FloatDtype,
    Cfg: PoolSpec,
    D: Backend,
    T: TapeState,
{
    type Output = Tensor<
        (
            N,
            C,
            PoolOut<H, Cfg, AvgPooling>,
            PoolOut<W, Cfg, AvgPooling>,
        ),
        E,
        D,
        T,
    >;
    fn forward(&self, x: Tensor<(N, C, H, W), E, D, T>) -> Self::Output {
        if self.count_include_pad {
            x.avg_pool2d(self.cfg)
        } else {
            x.avg_pool2d_exclude_pad(self.cfg)
        }
    }
}

// ---------------------------------------------------------------- BatchNorm2d

/// `torch.nn.BatchNorm2d(C)`: per-channel normalization over `(N, H, W)`
/// with a learned scale and shift.
///
/// In training mode (`training == true`, the default) it normalizes with the
/// batch mean and biased variance and blends the batch mean and *unbiased*
/// variance into the running statistics:
/// `running = (1 - momentum) * running + momentum * batch`. In eval mode it
/// normalizes with the running statistics. `running_mean` and `running_var`
/// are [`Buffer`]s: checkpointed by path, never trained (see the module docs).
///
/// ```
/// use zerfoo::nn::{BatchNorm2d, Forward};
/// use zerfoo::prelude::*;
/// let bn: BatchNorm2d<U1, f64> = BatchNorm2d::new(U1::default());
/// let x: Tensor<(U2, U1, U1, U1), f64> = Tensor::from_vec(Default::default(), vec![1., 3.]).unwrap();
/// let y = bn.forward(x); // batch mean 2, biased variance 1
/// assert!((y.to_vec()[0] + 1.0).abs() < 1e-5);
/// // running mean 0.9 * 0 + 0.1 * 2, running var 0.9 * 1 + 0.1 * 2 (unbiased)
/// assert!((bn.running_mean.get().to_vec()[0] - 0.2).abs() < 1e-12);
/// assert!((bn.running_var.get().to_vec()[0] - 1.1).abs() < 1e-12);
/// ```
#[derive(crate::nn::Module, Clone, Debug)]
pub struct BatchNorm2d<C: Dim, E: FloatDtype, D: Backend = Cpu> {
    /// Scale, initialized to ones.
    pub weight: Tensor<(C,), E, D>,
    /// Shift, initialized to zeros.
    pub bias: Tensor<(C,), E, D>,
    /// Running mean, initialized to zeros (a buffer: no gradient).
    pub running_mean: Buffer<(C,), E, D>,
    /// Running (unbiased) variance, initialized to ones (a buffer: no gradient).
    pub running_var: Buffer<(C,), E, D>,
    /// Added to the variance (PyTorch default `1e-5`).
    #[module(skip)]
    pub eps: f64,
    /// Weight of the batch statistics in the running update (PyTorch default `0.1`).
    #[module(skip)]
    pub momentum: f64,
    /// Training mode (batch statistics, running update) or eval mode
    /// (running statistics).
    #[module(skip)]
    pub training: bool,
}

impl<C: Dim, E: FloatDtype> BatchNorm2d<C, E> {
    /// PyTorch's defaults: `eps = 1e-5`, `momentum = 0.1`, training mode,
    /// weight ones, bias zeros, running mean zeros, running variance ones.
    pub fn new(c: C) -> Self {
        BatchNorm2d {
            weight: Tensor::ones((c,)),
            bias: Tensor::zeros((c,)),
            running_mean: Buffer::new(Tensor::zeros((c,))),
            running_var: Buffer::new(Tensor::ones((c,))),
            eps: 1e-5,
            momentum: 0.1,
            training: true,
        }
    }
}

impl<C: Dim, E: FloatDtype, D: Backend> BatchNorm2d<C, E, D> {
    /// Switches to training (`true`) or eval (`false`) mode.
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    /// The forward pass, with run-time shape errors as `Err`: a `Dyn`
    /// channel count that differs from `C`, or (in training mode) a single
    /// value per channel.
    pub fn try_forward<N, C2, H, W, T>(
        &self,
        x: Tensor<(N, C2, H, W), E, D, T>,
    ) -> Result<Tensor<(N, C2, H, W), E, D, T>>
    where
        N: Dim,
        C2: SameDim<C, BatchNormalization>,
        H: Dim,
        W: Dim,
        T: TapeState,
    {
        let (w, b) = (self.weight.retaped::<T>(), self.bias.retaped::<T>());
        if self.training {
            let (y, stats) = x.try_batch_norm2d(&w, &b, self.eps)?;
            self.running_mean.update(|rm| {
                self.running_var
                    .update(|rv| stats.update_running(rm, rv, self.momentum))
            })?;
            Ok(y)
        } else {
            let (rm, rv) = (self.running_mean.get(), self.running_var.get());
            x.try_batch_norm2d_eval(&w, &b, &rm, &rv, self.eps)
        }
    }
}

impl<N, C2, H, W, C, E, D, T> Forward<Tensor<(N, C2, H, W), E, D, T>> for BatchNorm2d<C, E, D>
where
    N: Dim,
    C2: SameDim<C, BatchNormalization>,
    H: Dim,
    W: Dim,
    C: Dim,
    E: FloatDtype,
    D: Backend,
    T: TapeState,
{
    type Output = Tensor<(N, C2, H, W), E, D, T>;
    /// Panics with the `try_forward` message on a run-time error.
    fn forward(&self, x: Tensor<(N, C2, H, W), E, D, T>) -> Self::Output {
        or_panic(self.try_forward(x))
    }
}

// ---------------------------------------------------------------- Flatten

/// `torch.nn.Flatten()`: `(N, C, H, W)` to `(N, F)` with `F = C * H * W`.
/// `F` is [`Dyn`] by default; name it (`Flatten::<U64>`) to check the
/// product at compile time where the input dims are static.
///
/// ```
/// use zerfoo::nn::{Flatten, Forward};
/// use zerfoo::prelude::*;
/// let x: Tensor<(U2, U4, U2, U2), f32> = Tensor::zeros(Default::default());
/// let y: Tensor<(U2, U16), f32> = Flatten::<U16>::new().forward(x);
/// # let _ = y;
/// ```
pub struct Flatten<F: Dim = Dyn>(PhantomData<fn() -> F>);

impl<F: Dim> Flatten<F> {
    /// The layer.
    pub fn new() -> Self {
        Flatten(PhantomData)
    }
}
impl<F: Dim> Default for Flatten<F> {
    fn default() -> Self {
        Self::new()
    }
}
impl<F: Dim> Clone for Flatten<F> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<F: Dim> Copy for Flatten<F> {}
impl<F: Dim> fmt::Debug for Flatten<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Flatten")
    }
}

impl<F: Dim> Module for Flatten<F> {
    fn visit_params<V: ParamVisitor>(&self, _: &str, _: &mut V) {}
    fn visit_params_mut<V: ParamVisitorMut>(&mut self, _: &str, _: &mut V) {}
}

impl<N, C, H, W, F, E, D, T> Forward<Tensor<(N, C, H, W), E, D, T>> for Flatten<F>
where
    N: Dim,
    C: Dim,
    H: Dim,
    W: Dim,
    F: FlattenDim<C, H, W, Flattening>,
    E: FloatDtype,
    D: Backend,
    T: TapeState,
{
    type Output = Tensor<(N, F), E, D, T>;
    fn forward(&self, x: Tensor<(N, C, H, W), E, D, T>) -> Self::Output {
        x.flatten()
    }
}
