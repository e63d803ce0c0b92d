//! Convolution, pooling, batch norm and flatten over `(N, C, H, W)` tensors.
//!
//! # Typing
//!
//! The window geometry is a value of a *spec* type, chosen by the caller:
//!
//! - [`Conv2dConfig<S, P, D, G>`] / [`Pool2dConfig<K, S, P>`]: stride `S`,
//!   padding `P`, dilation `D`, groups `G` and pool kernel `K` are typenum
//!   constants (`U2`), the same along both spatial axes. The output spatial
//!   dims are then computed **in the type** from the input dims and the kernel
//!   dims, `(I + 2P - D(K - 1) - 1) / S + 1`, whenever both are static (an
//!   `(N, U1, U8, U8)` image through a 3x3 kernel with padding 1 stays
//!   `(N, O, U8, U8)`); a `Dyn` input or kernel dim gives a `Dyn` output dim. A
//!   window larger than a static padded input, a zero stride or dilation and
//!   a pool padding over half the kernel are compile errors.
//! - [`Conv2dArgs<G>`] / [`Pool2dArgs`]: the geometry is run-time `usize`s
//!   (per axis); the output spatial dims are [`Dyn`] and everything about
//!   the window is checked at run time. Code generic over the spatial dims
//!   uses these (the static form needs a `H: ConvOutDim<..>` bound).
//!
//! Channels are compared by value ([`SameDim`]) at compile time where static,
//! at run time where `Dyn`: the input's `C` against the weight's
//! `C / groups` times the groups ([`GroupsFit`]), the groups against the
//! output channels, the bias against the output channels. The groups are a
//! dim too: `U1` by default, a typenum constant, or `Dyn` (checked at run time).
//!
//! Run-time failures (a `Dyn` channel mismatch, a window larger than a `Dyn`
//! padded input, a zero run-time stride) are `Err` from the `try_*` form; the
//! panicking form panics with the same message.

// Typed shapes in signatures are the point of these ops.
#![allow(clippy::type_complexity)]

use core::fmt;
use core::marker::PhantomData;
use core::ops::{Add, Div, Mul, Rem, Sub};
use std::sync::Arc;

use typenum::{
    Add1, Bit, Diff, GrEq, IsEqual, IsGreaterOrEqual, IsLessOrEqual, LeEq, Mod, Prod, Quot, Sub1,
    Sum, UInt, UTerm, Unsigned, B0, B1, U0, U1,
};
use zerfoo_kernels::cpu::conv::{self as k, AvgDivisor, Window2d};
use zerfoo_kernels::device::ChannelStats;
use zerfoo_kernels::{Backend, FloatDtype, Layout, Real};

use super::{KindIsDyn, Merge3, SameDtype};
use crate::autograd::{device_ok, record, Merge, Node, TapeState, TensorId};
use crate::error::or_panic;
use crate::shape::{
    shape_from_dims, Dim, Dyn, Dynamic, KindDim, ProductOf, RuntimeCheck, SameDim, Shape, Static,
};
use crate::tensor::Tensor;
use crate::{Error, Result};

macro_rules! op_markers {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {
        $(
            $(#[$m])*
            #[derive(Clone, Copy, Debug, Default)]
            pub struct $name;
        )*
    };
}

op_markers!(
    /// 2-D convolution.
    Convolution,
    /// 2-D max pooling.
    MaxPooling,
    /// 2-D average pooling.
    AvgPooling,
    /// Batch normalization over `(N, H, W)` per channel.
    BatchNormalization,
    /// Flattening `(N, C, H, W)` to `(N, C * H * W)`.
    Flattening,
);

// ---------------------------------------------------------------- specs

/// A positive typenum constant (kernel size, stride, dilation).
#[diagnostic::on_unimplemented(
    message = "a sliding window's kernel size, stride and dilation must be positive, but one is `{Self}` (zero)",
    label = "zero here",
    note = "use `U1` or more"
)]
pub trait Positive: Unsigned {}
impl<U: Unsigned, B: Bit> Positive for UInt<U, B> {}

/// The geometry of a 2-D convolution: stride, padding, dilation and groups.
///
/// Implemented by [`Conv2dConfig`] (typenum constants) and [`Conv2dArgs`]
/// (run-time values).
pub trait ConvSpec: Copy + fmt::Debug + Send + Sync + 'static {
    /// The groups as a dim: a typenum constant (`U1` for an ordinary
    /// convolution) or [`Dyn`].
    type Groups: Dim;
    /// Stride, padding and dilation `[height, width]`, with the kernel size.
    fn window(&self, kernel: [usize; 2]) -> Window2d;
    /// The groups.
    fn groups(&self) -> Self::Groups;
}

/// Convolution geometry as typenum constants: stride `S`, padding `P`,
/// dilation `D`, groups `G`, the same along both spatial axes (PyTorch's
/// defaults: stride 1, padding 0, dilation 1, groups 1). Output spatial dims
/// are computed in the type where the input and kernel dims are static.
///
/// ```
/// use zerfoo::ops::Conv2dConfig;
/// use zerfoo::prelude::*;
/// let x: Tensor<(U2, U3, U8, U8), f32> = Tensor::zeros(Default::default());
/// let w: Tensor<(U4, U3, U3, U3), f32> = Tensor::zeros(Default::default());
/// // stride 2, padding 1: (8 + 2 - 3) / 2 + 1 = 4
/// let y: Tensor<(U2, U4, U4, U4), f32> = x.conv2d(&w, Conv2dConfig::<U2, U1>::new());
/// # let _ = y;
/// ```
pub struct Conv2dConfig<S = U1, P = U0, D = U1, G = U1>(PhantomData<fn() -> (S, P, D, G)>);

impl<S, P, D, G> Conv2dConfig<S, P, D, G> {
    /// The (zero-sized) configuration.
    pub const fn new() -> Self {
        Conv2dConfig(PhantomData)
    }
}
impl<S, P, D, G> Clone for Conv2dConfig<S, P, D, G> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S, P, D, G> Copy for Conv2dConfig<S, P, D, G> {}
impl<S, P, D, G> Default for Conv2dConfig<S, P, D, G> {
    fn default() -> Self {
        Self::new()
    }
}
impl<S: Unsigned, P: Unsigned, D: Unsigned, G: Unsigned> fmt::Debug for Conv2dConfig<S, P, D, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conv2dConfig")
            .field("stride", &S::USIZE)
            .field("padding", &P::USIZE)
            .field("dilation", &D::USIZE)
            .field("groups", &G::USIZE)
            .finish()
    }
}

impl<S, P, D, G> ConvSpec for Conv2dConfig<S, P, D, G>
where
    S: Positive,
    P: Unsigned,
    D: Positive,
    G: Unsigned + Dim + Default,
{
    type Groups = G;
    fn window(&self, kernel: [usize; 2]) -> Window2d {
        Window2d {
            kernel,
            stride: [S::USIZE; 2],
            padding: [P::USIZE; 2],
            dilation: [D::USIZE; 2],
        }
    }
    fn groups(&self) -> G {
        G::default()
    }
}

/// Convolution geometry as run-time values, `[height, width]`. The output
/// spatial dims are [`Dyn`]. The groups are a dim: `U1` (the default, an
/// ordinary convolution, whose channels are then checked at compile time
/// where static), a typenum constant, or [`Dyn`].
///
/// ```
/// use zerfoo::ops::Conv2dArgs;
/// use zerfoo::prelude::*;
/// let x: Tensor<(U1, U4, Dyn, Dyn), f64> = Tensor::ones((U1::default(), U4::default(), Dyn(5), Dyn(5)));
/// let w: Tensor<(U2, U2, U3, U3), f64> = Tensor::ones(Default::default());
/// let args = Conv2dArgs::new(1, 1, 1).with_groups(U2::default());
/// let y = x.conv2d(&w, args); // (U1, U2, Dyn, Dyn)
/// assert_eq!(y.dims(), [1, 2, 5, 5]);
/// assert_eq!(y.to_vec()[6], 18.0); // an interior pixel: 2 channels x 9 taps
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dArgs<G: Dim = U1> {
    /// Step between windows.
    pub stride: [usize; 2],
    /// Zero padding on both sides.
    pub padding: [usize; 2],
    /// Spacing between kernel taps.
    pub dilation: [usize; 2],
    /// Channel groups.
    pub groups: G,
}

impl Conv2dArgs<U1> {
    /// The same stride, padding and dilation along both axes, one group.
    pub fn new(stride: usize, padding: usize, dilation: usize) -> Self {
        Conv2dArgs {
            stride: [stride; 2],
            padding: [padding; 2],
            dilation: [dilation; 2],
            groups: U1::default(),
        }
    }
}

impl<G: Dim> Conv2dArgs<G> {
    /// The same geometry with `groups` channel groups.
    pub fn with_groups<G2: Dim>(self, groups: G2) -> Conv2dArgs<G2> {
        Conv2dArgs {
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups,
        }
    }
}

impl<G: Dim> ConvSpec for Conv2dArgs<G> {
    type Groups = G;
    fn window(&self, kernel: [usize; 2]) -> Window2d {
        Window2d {
            kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
        }
    }
    fn groups(&self) -> G {
        self.groups
    }
}

/// The geometry of a 2-D pooling window: kernel, stride, padding.
///
/// Implemented by [`Pool2dConfig`] (typenum constants) and [`Pool2dArgs`]
/// (run-time values).
pub trait PoolSpec: Copy + fmt::Debug + Send + Sync + 'static {
    /// Kernel, stride and padding `[height, width]` (dilation 1).
    fn window(&self) -> Window2d;
}

/// Pooling geometry as typenum constants: kernel `K`, stride `S` (default
/// `K`, as PyTorch), padding `P` (default 0), the same along both axes.
/// The padding may be at most half the kernel (as in PyTorch), checked at
/// compile time. Output spatial dims are computed in the type.
///
/// ```
/// use zerfoo::ops::Pool2dConfig;
/// use zerfoo::prelude::*;
/// let x: Tensor<(U1, U1, U4, U4), f32> = Tensor::from_fn(Default::default(), |i| i as f32);
/// let y: Tensor<(U1, U1, U2, U2), f32> = x.max_pool2d(Pool2dConfig::<U2>::new());
/// assert_eq!(y.to_vec(), [5., 7., 13., 15.]);
/// ```
pub struct Pool2dConfig<K, S = K, P = U0>(PhantomData<fn() -> (K, S, P)>);

impl<K, S, P> Pool2dConfig<K, S, P> {
    /// The (zero-sized) configuration.
    pub const fn new() -> Self {
        Pool2dConfig(PhantomData)
    }
}
impl<K, S, P> Clone for Pool2dConfig<K, S, P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, S, P> Copy for Pool2dConfig<K, S, P> {}
impl<K, S, P> Default for Pool2dConfig<K, S, P> {
    fn default() -> Self {
        Self::new()
    }
}
impl<K: Unsigned, S: Unsigned, P: Unsigned> fmt::Debug for Pool2dConfig<K, S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool2dConfig")
            .field("kernel", &K::USIZE)
            .field("stride", &S::USIZE)
            .field("padding", &P::USIZE)
            .finish()
    }
}

/// The pool padding `P` is at most half the kernel `K` (`B1`).
#[diagnostic::on_unimplemented(
    message = "pooling padding `{P}` is more than half the kernel size `{K}`",
    label = "padding too large",
    note = "PyTorch requires `2 * padding <= kernel`; a window could lie wholly in the padding"
)]
pub trait PoolPaddingFits<K, P> {}
impl<K, P> PoolPaddingFits<K, P> for B1 {}

impl<K, S, P> PoolSpec for Pool2dConfig<K, S, P>
where
    K: Positive,
    S: Positive,
    P: Unsigned + Add<P>,
    Sum<P, P>: IsLessOrEqual<K>,
    LeEq<Sum<P, P>, K>: PoolPaddingFits<K, P>,
{
    fn window(&self) -> Window2d {
        Window2d {
            kernel: [K::USIZE; 2],
            stride: [S::USIZE; 2],
            padding: [P::USIZE; 2],
            dilation: [1; 2],
        }
    }
}

/// Pooling geometry as run-time values, `[height, width]`; the output
/// spatial dims are [`Dyn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dArgs {
    /// Window size.
    pub kernel: [usize; 2],
    /// Step between windows.
    pub stride: [usize; 2],
    /// Padding on both sides (at most half the kernel).
    pub padding: [usize; 2],
}

impl Pool2dArgs {
    /// The same kernel, stride and padding along both axes.
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        Pool2dArgs {
            kernel: [kernel; 2],
            stride: [stride; 2],
            padding: [padding; 2],
        }
    }
}

impl PoolSpec for Pool2dArgs {
    fn window(&self) -> Window2d {
        Window2d {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: [1; 2],
        }
    }
}

// ---------------------------------------------------------------- output dims

/// The dilated window fits in the padded input (`B1`); `I` is the input
/// dim and `K` the kernel dim, for the message.
#[diagnostic::on_unimplemented(
    message = "shape error in `{Op}`: the window (kernel `{K}`) is larger than the padded input dim `{I}`",
    label = "the window does not fit",
    note = "the output length `(I + 2P - D(K - 1) - 1) / S + 1` would be negative"
)]
pub trait WindowFits<Padded, Span, S, Op, I, K> {
    /// `(Padded - Span) / S + 1`.
    type Out;
}
impl<Pd, Sp, S, Op, I, K> WindowFits<Pd, Sp, S, Op, I, K> for B1
where
    Pd: Sub<Sp>,
    S: StrideDiv<Diff<Pd, Sp>>,
    <S as StrideDiv<Diff<Pd, Sp>>>::Out: Add<B1>,
{
    type Out = Add1<<S as StrideDiv<Diff<Pd, Sp>>>::Out>;
}

/// `X / Self` for a positive stride `Self`. Implemented only for non-zero
/// typenum values, so a zero stride is rejected before typenum tries (and
/// fails, by overflowing) to divide by it.
#[diagnostic::on_unimplemented(
    message = "a sliding window's stride must be positive, but it is `{Self}` (zero)",
    label = "zero stride",
    note = "use `U1` or more"
)]
pub trait StrideDiv<X> {
    /// The quotient.
    type Out;
}
impl<X, U: Unsigned, B: Bit> StrideDiv<X> for UInt<U, B>
where
    X: Div<UInt<U, B>>,
{
    type Out = Quot<X, UInt<U, B>>;
}

/// The kind of a window's output length along an axis whose input has kind
/// `Self` and kernel kind `KK`, with stride `S`, padding `P`, dilation `D`
/// (typenum): static when both are, dynamic otherwise.
pub trait WindowKind<KK, S, P, D, Op, I, K> {
    /// [`Static`] of the output length, or [`Dynamic`].
    type Out;
}
impl<KK, S, P, D, Op, I, K> WindowKind<KK, S, P, D, Op, I, K> for Dynamic {
    type Out = Dynamic;
}
impl<A, S, P, D, Op, I, K> WindowKind<Dynamic, S, P, D, Op, I, K> for Static<A> {
    type Out = Dynamic;
}
impl<A, B, S, P, D, Op, I, K> WindowKind<Static<B>, S, P, D, Op, I, K> for Static<A>
where
    P: Add<P>,
    A: Add<Sum<P, P>>,
    B: Sub<B1>,
    D: Mul<Sub1<B>>,
    Prod<D, Sub1<B>>: Add<B1>,
    Sum<A, Sum<P, P>>: IsGreaterOrEqual<Add1<Prod<D, Sub1<B>>>>,
    GrEq<Sum<A, Sum<P, P>>, Add1<Prod<D, Sub1<B>>>>:
        WindowFits<Sum<A, Sum<P, P>>, Add1<Prod<D, Sub1<B>>>, S, Op, I, K>,
{
    type Out = Static<
        <GrEq<Sum<A, Sum<P, P>>, Add1<Prod<D, Sub1<B>>>> as WindowFits<
            Sum<A, Sum<P, P>>,
            Add1<Prod<D, Sub1<B>>>,
            S,
            Op,
            I,
            K,
        >>::Out,
    >;
}

/// The output dim of a convolution along an input axis `Self` with kernel
/// dim `K` and geometry `Cfg`: computed in the type for a
/// [`Conv2dConfig`] with static `Self` and `K`, [`Dyn`] otherwise.
pub trait ConvOutDim<K, Cfg, Op>: Dim {
    /// The output dim.
    type Out: Dim;
}
impl<I: Dim, K: Dim, G: Dim, Op> ConvOutDim<K, Conv2dArgs<G>, Op> for I {
    type Out = Dyn;
}
impl<I: Dim, K: Dim, S, P, D, G, Op> ConvOutDim<K, Conv2dConfig<S, P, D, G>, Op> for I
where
    I::Kind: WindowKind<K::Kind, S, P, D, Op, I, K>,
    <I::Kind as WindowKind<K::Kind, S, P, D, Op, I, K>>::Out: KindDim,
{
    type Out = <<I::Kind as WindowKind<K::Kind, S, P, D, Op, I, K>>::Out as KindDim>::Dim;
}

/// The output dim of a pooling along an input axis `Self` with geometry
/// `Cfg`: computed in the type for a [`Pool2dConfig`] with static `Self`,
/// [`Dyn`] otherwise.
pub trait PoolOutDim<Cfg, Op>: Dim {
    /// The output dim.
    type Out: Dim;
}
impl<I: Dim, Op> PoolOutDim<Pool2dArgs, Op> for I {
    type Out = Dyn;
}
impl<I: Dim, K, S, P, Op> PoolOutDim<Pool2dConfig<K, S, P>, Op> for I
where
    I::Kind: WindowKind<Static<K>, S, P, U1, Op, I, K>,
    <I::Kind as WindowKind<Static<K>, S, P, U1, Op, I, K>>::Out: KindDim,
{
    type Out = <<I::Kind as WindowKind<Static<K>, S, P, U1, Op, I, K>>::Out as KindDim>::Dim;
}

/// The output dim of a convolution along input axis `I` with kernel `K`.
pub type ConvOut<I, K, Cfg> = <I as ConvOutDim<K, Cfg, Convolution>>::Out;
/// The output dim of a pooling (`Op` = [`MaxPooling`] or [`AvgPooling`]) along input axis `I`.
pub type PoolOut<I, Cfg, Op> = <I as PoolOutDim<Cfg, Op>>::Out;

// ---------------------------------------------------------------- channel rules

/// Whether the groups divide the output channels (kind level): `B1`/`B0`
/// for static dims, [`RuntimeCheck`] for `Dyn` ones.
pub trait DividesKind<G> {
    /// `B1`, `B0` or [`RuntimeCheck`].
    type Out;
}
impl<O, G> DividesKind<Static<G>> for Static<O>
where
    O: Rem<G>,
    Mod<O, G>: IsEqual<U0>,
{
    type Out = typenum::Eq<Mod<O, G>, U0>;
}
impl<G> DividesKind<G> for Dynamic {
    type Out = RuntimeCheck;
}

/// The diagnostic for "the groups must divide the output channels".
#[diagnostic::on_unimplemented(
    message = "shape error in `{Op}`: `{G}` groups do not divide the `{O}` output channels",
    label = "output channels not divisible by the groups"
)]
pub trait GroupsDivide<Op, O, G> {}
impl<Op, O, G> GroupsDivide<Op, O, G> for B1 {}
impl<Op, O, G> GroupsDivide<Op, O, G> for RuntimeCheck {}

/// `Self` groups fit input channels `C`, per-group weight channels `Cg` and
/// output channels `O`: `C == Cg * groups` and `groups` divides `O`, by value.
///
/// With one group (`U1`) this is `C == Cg` ([`SameDim`]), which code generic
/// over `C` proves without extra bounds. A static number of groups checks
/// at compile time where the channels are static; [`Dyn`] groups check at
/// run time.
#[diagnostic::on_unimplemented(
    message = "shape error in `{Op}`: `{Self}` is not a number of groups",
    label = "invalid groups",
    note = "groups are a positive typenum constant (`U1`, `U2`, ...) or `Dyn`"
)]
pub trait GroupsFit<C, Cg, O, Op> {}
impl<C: Dim, Cg: Dim, O: Dim, Op> GroupsFit<C, Cg, O, Op> for UInt<UTerm, B1> where
    C: SameDim<Cg, Op>
{
}
impl<U, Ba, Bb, C, Cg, O, Op> GroupsFit<C, Cg, O, Op> for UInt<UInt<U, Ba>, Bb>
where
    U: Unsigned,
    Ba: Bit,
    Bb: Bit,
    UInt<UInt<U, Ba>, Bb>: Dim,
    C: ProductOf<(Cg, UInt<UInt<U, Ba>, Bb>), Op>,
    Cg: Dim,
    O: Dim,
    O::Kind: DividesKind<Static<UInt<UInt<U, Ba>, Bb>>>,
    <O::Kind as DividesKind<Static<UInt<UInt<U, Ba>, Bb>>>>::Out:
        GroupsDivide<Op, O, UInt<UInt<U, Ba>, Bb>>,
{
}
impl<C, Cg, O, Op> GroupsFit<C, Cg, O, Op> for Dyn {}

/// `Self` can hold `C * H * W` elements: checked by [`ProductOf`] for a
/// static dim (at compile time when `C`, `H`, `W` are static too), always
/// accepted for [`Dyn`] (checked at run time), so flattening into `Dyn`
/// needs no bounds in generic code.
pub trait FlattenDim<C, H, W, Op>: Dim {}
impl<F: Dim, C, H, W, Op> FlattenDim<C, H, W, Op> for F
where
    F::Kind: KindIsDyn,
    <F::Kind as KindIsDyn>::Out: FlattenCheck<F, C, H, W, Op>,
{
}

/// [`FlattenDim`] by the kind of the flattened dim: nothing to check at
/// compile time for a dynamic one (`B1`), [`ProductOf`] for a static one (`B0`).
pub trait FlattenCheck<F, C, H, W, Op> {}
impl<F, C, H, W, Op> FlattenCheck<F, C, H, W, Op> for B1 {}
impl<F, C, H, W, Op> FlattenCheck<F, C, H, W, Op> for B0 where F: ProductOf<(C, H, W), Op> {}

// ---------------------------------------------------------------- ops

/// What an op keeps of a weight, bias or input.
struct Operand<D: Backend, E: FloatDtype> {
    data: Arc<D::Storage<E>>,
    layout: Layout,
    id: TensorId,
    node: Option<Arc<Node>>,
}

impl<D: Backend, E: FloatDtype> Operand<D, E> {
    fn of<S: Shape, T: TapeState>(t: Tensor<S, E, D, T>) -> Self {
        Operand {
            node: t.tape.node(),
            data: t.data,
            layout: t.layout,
            id: t.id,
        }
    }
    fn view(&self) -> (&D::Storage<E>, &Layout) {
        (&self.data, &self.layout)
    }
}

/// A new tensor from an op's contiguous output on `device`.
fn output<S: Shape, E: FloatDtype, D: Backend, T>(
    shape: S,
    data: D::Storage<E>,
    id: TensorId,
    tape: T,
    device: D,
) -> Tensor<S, E, D, T> {
    Tensor {
        layout: Layout::contiguous(&shape.dims()),
        shape,
        data: Arc::new(data),
        id,
        tape,
        device,
    }
}

fn invalid(op: &'static str, reason: String) -> Error {
    Error::InvalidArgument { op, reason }
}

/// Checks a run-time pooling window against the input dims `[N, C, H, W]`;
/// returns the output's spatial size.
fn check_pool(op: &'static str, win: &Window2d, dims: &[usize]) -> Result<[usize; 2]> {
    let (kr, sr, pr) = (win.kernel, win.stride, win.padding);
    if kr.contains(&0) || sr.contains(&0) {
        return Err(invalid(
            op,
            format!("kernel {kr:?} and stride {sr:?} must be positive"),
        ));
    }
    if (0..2).any(|a| 2 * pr[a] > kr[a]) {
        return Err(invalid(
            op,
            format!("padding {pr:?} must be at most half the kernel {kr:?}"),
        ));
    }
    win.out_dims([dims[2], dims[3]]).ok_or_else(|| {
        invalid(
            op,
            format!(
                "the window {kr:?} is larger than the padded input {:?}",
                [dims[2] + 2 * pr[0], dims[3] + 2 * pr[1]]
            ),
        )
    })
}

impl<N: Dim, C: Dim, H: Dim, W: Dim, E: FloatDtype, D: Backend, T: TapeState>
    Tensor<(N, C, H, W), E, D, T>
{
    /// The convolution behind the typed methods: run-time checks, kernel, backward.
    fn conv_impl<S2: Shape, Out: TapeState>(
        self,
        w: Operand<D, E>,
        b: Option<Operand<D, E>>,
        geometry: impl FnOnce([usize; 2]) -> Window2d,
        groups: usize,
    ) -> Result<Tensor<S2, E, D, Out>> {
        const OP: &str = "conv2d";
        let xd = self.dims();
        let wd = w.layout.shape().to_vec();
        let (c, o, cg) = (xd[1], wd[0], wd[1]);
        if groups == 0 {
            return Err(invalid(OP, "groups must be positive".into()));
        }
        if cg.checked_mul(groups) != Some(c) {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: xd.to_vec(),
                rhs: wd,
            });
        }
        if o % groups != 0 {
            return Err(invalid(
                OP,
                format!("{groups} groups do not divide the {o} output channels"),
            ));
        }
        if let Some(b) = &b {
            if b.layout.shape() != [o] {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    lhs: wd,
                    rhs: b.layout.shape().to_vec(),
                });
            }
        }
        let win = geometry([wd[2], wd[3]]);
        if win.kernel.contains(&0) || win.stride.contains(&0) || win.dilation.contains(&0) {
            return Err(invalid(
                OP,
                format!(
                    "kernel {:?}, stride {:?} and dilation {:?} must be positive",
                    win.kernel, win.stride, win.dilation
                ),
            ));
        }
        let Some([oh, ow]) = win.out_dims([xd[2], xd[3]]) else {
            let span = |a: usize| win.dilation[a] * (win.kernel[a] - 1) + 1;
            return Err(invalid(
                OP,
                format!(
                    "the dilated kernel {:?} is larger than the padded input {:?}",
                    [span(0), span(1)],
                    [xd[2] + 2 * win.padding[0], xd[3] + 2 * win.padding[1]]
                ),
            ));
        };
        let shape: S2 = shape_from_dims(OP, &[xd[0], o, oh, ow])?;
        let y = self.device.conv2d_forward(
            &self.data,
            &self.layout,
            &w.data,
            &w.layout,
            b.as_ref().map(Operand::view),
            groups,
            &win,
        )?;
        let out_id = TensorId::fresh();
        let tape = if Out::TRACKED {
            let parents = [
                self.tape.node(),
                w.node.clone(),
                b.as_ref().and_then(|b| b.node.clone()),
            ];
            let (x, lx, x_id) = (self.data.clone(), self.layout, self.id);
            let (wdata, lw, w_id) = (w.data, w.layout, w.id);
            let b_id = b.map(|b| b.id);
            let dev = self.device.clone();
            record::<Out>(out_id, &parents, move |g| {
                if let Some(gy) = g.take_on::<D, E>(out_id) {
                    let gr = device_ok(dev.conv2d_backward(
                        &x,
                        &lx,
                        &wdata,
                        &lw,
                        b_id.is_some(),
                        groups,
                        &win,
                        &gy,
                    ));
                    g.accumulate_on(&dev, x_id, gr.x);
                    g.accumulate_on(&dev, w_id, gr.weight);
                    if let (Some(id), Some(gb)) = (b_id, gr.bias) {
                        g.accumulate_on(&dev, id, gb);
                    }
                }
            })
        } else {
            Out::from_node(None)
        };
        Ok(output(shape, y, out_id, tape, self.device))
    }

    /// 2-D convolution (PyTorch `F.conv2d` without bias): `self` is
    /// `(N, C, H, W)`, `weight` is `(O, C / groups, KH, KW)`, the result
    /// `(N, O, OH, OW)` with `OH = (H + 2P - D(KH - 1) - 1) / S + 1`. The
    /// geometry `cfg` is a [`Conv2dConfig`] (typenum constants: output dims
    /// computed in the type) or a [`Conv2dArgs`] (run-time values: `Dyn`
    /// output dims). Computes in `f32` (`f64` for `f64`) via im2col and the
    /// packed GEMM, rounding once.
    ///
    /// Errors: a `Dyn` channel mismatch ([`Error::ShapeMismatch`]), a window
    /// larger than the padded input, a zero run-time stride, dilation or
    /// groups ([`Error::InvalidArgument`]).
    pub fn try_conv2d<O, Cg, KH, KW, E2, Tw, Cfg>(
        self,
        weight: &Tensor<(O, Cg, KH, KW), E2, D, Tw>,
        cfg: Cfg,
    ) -> Result<Tensor<(N, O, ConvOut<H, KH, Cfg>, ConvOut<W, KW, Cfg>), E, D, <T as Merge<Tw>>::Out>>
    where
        O: Dim,
        Cg: Dim,
        KH: Dim,
        KW: Dim,
        E2: FloatDtype,
        Tw: TapeState,
        Cfg: ConvSpec,
        Cfg::Groups: GroupsFit<C, Cg, O, Convolution>,
        H: ConvOutDim<KH, Cfg, Convolution>,
        W: ConvOutDim<KW, Cfg, Convolution>,
        E: SameDtype<E2, Convolution>,
        T: Merge<Tw>,
    {
        let w = Operand::of(E::same(weight.clone()));
        let groups = cfg.groups().size();
        self.conv_impl(w, None, |k| cfg.window(k), groups)
    }

    /// Panicking twin of [`try_conv2d`](Self::try_conv2d).
    ///
    /// ```
    /// use zerfoo::ops::Conv2dConfig;
    /// use zerfoo::prelude::*;
    /// // a 3x3 box filter over a 3x3 image of ones, padding 1
    /// let x: Tensor<(U1, U1, U3, U3), f32> = Tensor::ones(Default::default());
    /// let w: Tensor<(U1, U1, U3, U3), f32> = Tensor::ones(Default::default());
    /// let y = x.conv2d(&w, Conv2dConfig::<U1, U1>::new());
    /// assert_eq!(y.to_vec(), [4., 6., 4., 6., 9., 6., 4., 6., 4.]);
    /// ```
    ///
    /// Input channels that differ from the weight's do not compile:
    ///
    /// ```compile_fail
    /// use zerfoo::ops::Conv2dConfig;
    /// use zerfoo::prelude::*;
    /// dim!(Rgb = 3);
    /// dim!(Gray = 1);
    /// let x: Tensor<(U1, Rgb, U8, U8), f32> = Tensor::zeros(Default::default());
    /// let w: Tensor<(U4, Gray, U3, U3), f32> = Tensor::zeros(Default::default());
    /// let _ = x.conv2d(&w, Conv2dConfig::<U1>::new()); // shape error in `Convolution`: `Rgb` does not match `Gray`
    /// ```
    #[track_caller]
    pub fn conv2d<O, Cg, KH, KW, E2, Tw, Cfg>(
        self,
        weight: &Tensor<(O, Cg, KH, KW), E2, D, Tw>,
        cfg: Cfg,
    ) -> Tensor<(N, O, ConvOut<H, KH, Cfg>, ConvOut<W, KW, Cfg>), E, D, <T as Merge<Tw>>::Out>
    where
        O: Dim,
        Cg: Dim,
        KH: Dim,
        KW: Dim,
        E2: FloatDtype,
        Tw: TapeState,
        Cfg: ConvSpec,
        Cfg::Groups: GroupsFit<C, Cg, O, Convolution>,
        H: ConvOutDim<KH, Cfg, Convolution>,
        W: ConvOutDim<KW, Cfg, Convolution>,
        E: SameDtype<E2, Convolution>,
        T: Merge<Tw>,
    {
        or_panic(self.try_conv2d(weight, cfg))
    }

    /// [`try_conv2d`](Self::try_conv2d) with a bias `(O,)` added to every
    /// output channel (in the compute type, before the one rounding). The
    /// bias length is compared by value with the weight's `O`.
    pub fn try_conv2d_bias<O, Cg, KH, KW, O2, E2, E3, Tw, Tb, Cfg>(
        self,
        weight: &Tensor<(O, Cg, KH, KW), E2, D, Tw>,
        bias: &Tensor<(O2,), E3, D, Tb>,
        cfg: Cfg,
    ) -> Result<Tensor<(N, O, ConvOut<H, KH, Cfg>, ConvOut<W, KW, Cfg>), E, D, Merge3<T, Tw, Tb>>>
    where
        O: Dim + SameDim<O2, Convolution>,
        Cg: Dim,
        KH: Dim,
        KW: Dim,
        O2: Dim,
        E2: FloatDtype,
        E3: FloatDtype,
        Tw: TapeState,
        Tb: TapeState,
        Cfg: ConvSpec,
        Cfg::Groups: GroupsFit<C, Cg, O, Convolution>,
        H: ConvOutDim<KH, Cfg, Convolution>,
        W: ConvOutDim<KW, Cfg, Convolution>,
        E: SameDtype<E2, Convolution> + SameDtype<E3, Convolution>,
        T: Merge<Tw>,
        <T as Merge<Tw>>::Out: Merge<Tb>,
    {
        let w = Operand::of(<E as SameDtype<E2, Convolution>>::same(weight.clone()));
        let b = Operand::of(<E as SameDtype<E3, Convolution>>::same(bias.clone()));
        let groups = cfg.groups().size();
        self.conv_impl(w, Some(b), |k| cfg.window(k), groups)
    }

    /// Panicking twin of [`try_conv2d_bias`](Self::try_conv2d_bias).
    #[track_caller]
    pub fn conv2d_bias<O, Cg, KH, KW, O2, E2, E3, Tw, Tb, Cfg>(
        self,
        weight: &Tensor<(O, Cg, KH, KW), E2, D, Tw>,
        bias: &Tensor<(O2,), E3, D, Tb>,
        cfg: Cfg,
    ) -> Tensor<(N, O, ConvOut<H, KH, Cfg>, ConvOut<W, KW, Cfg>), E, D, Merge3<T, Tw, Tb>>
    where
        O: Dim + SameDim<O2, Convolution>,
        Cg: Dim,
        KH: Dim,
        KW: Dim,
        O2: Dim,
        E2: FloatDtype,
        E3: FloatDtype,
        Tw: TapeState,
        Tb: TapeState,
        Cfg: ConvSpec,
        Cfg::Groups: GroupsFit<C, Cg, O, Convolution>,
        H: ConvOutDim<KH, Cfg, Convolution>,
        W: ConvOutDim<KW, Cfg, Convolution>,
        E: SameDtype<E2, Convolution> + SameDtype<E3, Convolution>,
        T: Merge<Tw>,
        <T as Merge<Tw>>::Out: Merge<Tb>,
    {
        or_panic(self.try_conv2d_bias(weight, bias, cfg))
    }

    /// Pooling behind the typed methods, over precomputed window ranges.
    fn pool_impl<S2: Shape>(
        self,
        op: &'static str,
        rows: Vec<(usize, usize)>,
        cols: Vec<(usize, usize)>,
        avg: Option<AvgDivisor>,
    ) -> Result<Tensor<S2, E, D, T>> {
        let xd = self.dims();
        let shape: S2 = shape_from_dims(op, &[xd[0], xd[1], rows.len(), cols.len()])?;
        let dims = [xd[0], xd[1], xd[2], xd[3]];
        let out_id = TensorId::fresh();
        let in_id = self.id;
        let parents = [self.tape.node()];
        let dev = self.device.clone();
        let (y, tape) = match avg {
            None => {
                let (y, arg) =
                    self.device
                        .max_pool2d_forward(&self.data, &self.layout, &rows, &cols)?;
                let tape = record::<T>(out_id, &parents, move |g| {
                    if let Some(gy) = g.take_on::<D, E>(out_id) {
                        let gx = device_ok(dev.max_pool2d_backward(&gy, &arg, dims));
                        g.accumulate_on(&dev, in_id, gx);
                    }
                });
                (y, tape)
            }
            Some(div) => {
                let y =
                    self.device
                        .avg_pool2d_forward(&self.data, &self.layout, &rows, &cols, div)?;
                let tape = record::<T>(out_id, &parents, move |g| {
                    if let Some(gy) = g.take_on::<D, E>(out_id) {
                        let gx = device_ok(dev.avg_pool2d_backward(&gy, dims, &rows, &cols, div));
                        g.accumulate_on(&dev, in_id, gx);
                    }
                });
                (y, tape)
            }
        };
        Ok(output(shape, y, out_id, tape, self.device))
    }

    /// Window ranges of a checked pooling geometry.
    fn pool_windows(&self, op: &'static str, win: &Window2d) -> Result<[Vec<(usize, usize)>; 2]> {
        let xd = self.dims();
        let [oh, ow] = check_pool(op, win, &xd)?;
        let r = |a: usize, o: usize| {
            k::window_ranges(xd[2 + a], o, win.kernel[a], win.stride[a], win.padding[a])
        };
        Ok([r(0, oh), r(1, ow)])
    }

    /// 2-D max pooling (PyTorch `F.max_pool2d`): the maximum of each window,
    /// padding counting as `-inf`. The gradient goes to the first maximum of
    /// each window; NaN propagates. The geometry is a [`Pool2dConfig`]
    /// (output dims computed in the type) or a [`Pool2dArgs`] (`Dyn` output
    /// dims, checked at run time: [`Error::InvalidArgument`] for a zero
    /// kernel or stride, a padding over half the kernel, a window larger
    /// than the padded input).
    pub fn try_max_pool2d<Cfg: PoolSpec>(
        self,
        cfg: Cfg,
    ) -> Result<
        Tensor<
            (
                N,
                C,
                PoolOut<H, Cfg, MaxPooling>,
                PoolOut<W, Cfg, MaxPooling>,
            ),
            E,
            D,
            T,
        >,
    >
    where
        H: PoolOutDim<Cfg, MaxPooling>,
        W: PoolOutDim<Cfg, MaxPooling>,
    {
        let [rows, cols] = self.pool_windows("max_pool2d", &cfg.window())?;
        self.pool_impl("max_pool2d", rows, cols, None)
    }

    /// Panicking twin of [`try_max_pool2d`](Self::try_max_pool2d).
    #[track_caller]
    pub fn max_pool2d<Cfg: PoolSpec>(
        self,
        cfg: Cfg,
    ) -> Tensor<
        (
            N,
            C,
            PoolOut<H, Cfg, MaxPooling>,
            PoolOut<W, Cfg, MaxPooling>,
        ),
        E,
        D,
        T,
    >
    where
        H: PoolOutDim<Cfg, MaxPooling>,
        W: PoolOutDim<Cfg, MaxPooling>,
    {
        or_panic(self.try_max_pool2d(cfg))
    }

    /// 2-D average pooling (PyTorch `F.avg_pool2d` with its defaults,
    /// `count_include_pad=True`): every window sum is divided by
    /// `KH * KW`, padded zeros included. Geometry and errors as
    /// [`try_max_pool2d`](Self::try_max_pool2d).
    ///
    /// ```
    /// use zerfoo::ops::Pool2dArgs;
    /// use zerfoo::prelude::*;
    /// let x: Tensor<(U1, U1, U2, U2), f64> = Tensor::ones(Default::default());
    /// // kernel 2, stride 1, padding 1: the corner windows hold one element of four
    /// let y = x.avg_pool2d(Pool2dArgs::new(2, 1, 1));
    /// assert_eq!(y.to_vec(), [0.25, 0.5, 0.25, 0.5, 1.0, 0.5, 0.25, 0.5, 0.25]);
    /// ```
    pub fn try_avg_pool2d<Cfg: PoolSpec>(
        self,
        cfg: Cfg,
    ) -> Result<
        Tensor<
            (
                N,
                C,
                PoolOut<H, Cfg, AvgPooling>,
                PoolOut<W, Cfg, AvgPooling>,
            ),
            E,
            D,
            T,
        >,
    >
    where
        H: PoolOutDim<Cfg, AvgPooling>,
        W: PoolOutDim<Cfg, AvgPooling>,
    {
        let win = cfg.window();
        let [rows, cols] = self.pool_windows("avg_pool2d", &win)?;
        let div = AvgDivisor::Fixed(win.kernel[0] * win.kernel[1]);
        self.pool_impl("avg_pool2d", rows, cols, Some(div))
    }

    /// Panicking twin of [`try_avg_pool2d`](Self::try_avg_pool2d).
    #[track_caller]
    pub fn avg_pool2d<Cfg: PoolSpec>(
        self,
        cfg: Cfg,
    ) -> Tensor<
        (
            N,
            C,
            PoolOut<H, Cfg, AvgPooling>,
            PoolOut<W, Cfg, AvgPooling>,
        ),
        E,
        D,
        T,
    >
    where
        H: PoolOutDim<Cfg, AvgPooling>,
        W: PoolOutDim<Cfg, AvgPooling>,
    {
        or_panic(self.try_avg_pool2d(cfg))
    }

    /// Average pooling with `count_include_pad=False`: each window sum is
    /// divided by the number of input elements it covers.
    pub fn try_avg_pool2d_exclude_pad<Cfg: PoolSpec>(
        self,
        cfg: Cfg,
    ) -> Result<
        Tensor<
            (
                N,
                C,
                PoolOut<H, Cfg, AvgPooling>,
                PoolOut<W, Cfg, AvgPooling>,
            ),
            E,
            D,
            T,
        >,
    >
    where
        H: PoolOutDim<Cfg, AvgPooling>,
        W: PoolOutDim<Cfg, AvgPooling>,
    {
        let [rows, cols] = self.pool_windows("avg_pool2d", &cfg.window())?;
        self.pool_impl("avg_pool2d", rows, cols, Some(AvgDivisor::Count))
    }

    /// Panicking twin of [`try_avg_pool2d_exclude_pad`](Self::try_avg_pool2d_exclude_pad).
    #[track_caller]
    pub fn avg_pool2d_exclude_pad<Cfg: PoolSpec>(
        self,
        cfg: Cfg,
    ) -> Tensor<
        (
            N,
            C,
            PoolOut<H, Cfg, AvgPooling>,
            PoolOut<W, Cfg, AvgPooling>,
        ),
        E,
        D,
        T,
    >
    where
        H: PoolOutDim<Cfg, AvgPooling>,
        W: PoolOutDim<Cfg, AvgPooling>,
    {
        or_panic(self.try_avg_pool2d_exclude_pad(cfg))
    }

    /// Adaptive average pooling to `(OH, OW)` (PyTorch
    /// `F.adaptive_avg_pool2d`): output `i` averages input rows
    /// `floor(i H / OH) .. ceil((i + 1) H / OH)`, and likewise for columns.
    /// An error ([`Error::InvalidArgument`]) if `H` or `W` is zero.
    pub fn try_adaptive_avg_pool2d<OH: Dim, OW: Dim>(
        self,
        out: (OH, OW),
    ) -> Result<Tensor<(N, C, OH, OW), E, D, T>> {
        let xd = self.dims();
        if xd[2] == 0 || xd[3] == 0 {
            return Err(invalid(
                "adaptive_avg_pool2d",
                format!("the input {:?} has an empty spatial dim", &xd[..]),
            ));
        }
        let rows = k::adaptive_ranges(xd[2], out.0.size());
        let cols = k::adaptive_ranges(xd[3], out.1.size());
        self.pool_impl("adaptive_avg_pool2d", rows, cols, Some(AvgDivisor::Count))
    }

    /// Panicking twin of [`try_adaptive_avg_pool2d`](Self::try_adaptive_avg_pool2d).
    #[track_caller]
    pub fn adaptive_avg_pool2d<OH: Dim, OW: Dim>(
        self,
        out: (OH, OW),
    ) -> Tensor<(N, C, OH, OW), E, D, T> {
        or_panic(self.try_adaptive_avg_pool2d(out))
    }

    /// Global average pooling: the mean of each `(n, c)` plane, as
    /// `(N, C, 1, 1)` (PyTorch `F.adaptive_avg_pool2d(x, 1)`). Panics if
    /// `H` or `W` is zero.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x: Tensor<(U1, U2, U1, U2), f32> = Tensor::from_vec(Default::default(), vec![1., 3., 5., 9.]).unwrap();
    /// assert_eq!(x.global_avg_pool2d().to_vec(), [2., 7.]);
    /// ```
    #[track_caller]
    pub fn global_avg_pool2d(self) -> Tensor<(N, C, U1, U1), E, D, T> {
        or_panic(self.try_adaptive_avg_pool2d((U1::default(), U1::default())))
    }

    /// Flattens `(N, C, H, W)` to `(N, F)` with `F = C * H * W` (a view when
    /// contiguous). Name `F` statically (checked against `C * H * W` at
    /// compile time when all are static, at run time otherwise) or take it
    /// as [`Dyn`] (never fails).
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x: Tensor<(Dyn, U2, U3, U4), f32> = Tensor::zeros((Dyn(5), U2::default(), U3::default(), U4::default()));
    /// let y: Tensor<(Dyn, U24), f32> = x.clone().flatten();
    /// assert_eq!(y.dims(), [5, 24]);
    /// assert_eq!(x.flatten::<Dyn>().dims(), [5, 24]);
    /// ```
    pub fn try_flatten<F>(self) -> Result<Tensor<(N, F), E, D, T>>
    where
        F: FlattenDim<C, H, W, Flattening>,
    {
        let xd = self.dims();
        let f = xd[1] * xd[2] * xd[3];
        let Some(fd) = F::from_size(f) else {
            return Err(Error::ShapeMismatch {
                op: "flatten",
                lhs: xd.to_vec(),
                rhs: vec![xd[0], F::STATIC.unwrap_or(f)],
            });
        };
        let n = self.shape.0;
        Ok(self.reshape_unchecked((n, fd)))
    }

    /// Panicking twin of [`try_flatten`](Self::try_flatten).
    #[track_caller]
    pub fn flatten<F>(self) -> Tensor<(N, F), E, D, T>
    where
        F: FlattenDim<C, H, W, Flattening>,
    {
        or_panic(self.try_flatten())
    }
}

impl<N: Dim, C: Dim, H: Dim, W: Dim, E: FloatDtype, D: Backend, T: TapeState>
    Tensor<(N, C, H, W), E, D, T>
{
    /// Batch norm behind the typed methods.
    fn bn_impl<Out: TapeState>(
        self,
        w: Operand<D, E>,
        b: Operand<D, E>,
        stats: ChannelStats<D::Storage<E::Acc>>,
        training: bool,
    ) -> Result<Tensor<(N, C, H, W), E, D, Out>> {
        let y = self.device.batch_norm_apply(
            &self.data,
            &self.layout,
            &stats,
            Some(w.view()),
            Some(b.view()),
        )?;
        let out_id = TensorId::fresh();
        let tape = if Out::TRACKED {
            let parents = [self.tape.node(), w.node.clone(), b.node.clone()];
            let (x, lx, x_id) = (self.data.clone(), self.layout, self.id);
            let (wdata, lw, w_id, b_id) = (w.data, w.layout, w.id, b.id);
            let dev = self.device.clone();
            record::<Out>(out_id, &parents, move |g| {
                if let Some(gy) = g.take_on::<D, E>(out_id) {
                    let gr = device_ok(dev.batch_norm_backward(
                        &x,
                        &lx,
                        &stats,
                        Some((&wdata, &lw)),
                        &gy,
                        training,
                    ));
                    g.accumulate_on(&dev, x_id, gr.x);
                    g.accumulate_on(&dev, w_id, gr.weight);
                    g.accumulate_on(&dev, b_id, gr.bias);
                }
            })
        } else {
            Out::from_node(None)
        };
        Ok(output(self.shape, y, out_id, tape, self.device))
    }

    /// Checks that `w` and `b` have `C` elements.
    fn check_channels(&self, op: &'static str, ps: &[&Layout]) -> Result<()> {
        let c = self.shape.1.size();
        for l in ps {
            if l.shape() != [c] {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: self.dims().to_vec(),
                    rhs: l.shape().to_vec(),
                });
            }
        }
        Ok(())
    }

    /// Batch normalization in training mode (PyTorch `F.batch_norm` with
    /// `training=True`): each channel is normalized with the mean and the
    /// *biased* variance of the batch over `(N, H, W)`,
    /// `(x - mean) / sqrt(var + eps) * weight + bias`, computed in `f32`
    /// (`f64` for `f64`) and rounded once; the gradient flows through the
    /// batch statistics. Also returns those statistics ([`BatchStats`], with
    /// the *unbiased* variance) for updating running estimates.
    ///
    /// `weight` and `bias` are `(C,)` (compared by value). Errors: a `Dyn`
    /// length mismatch, or a single value per channel (`N * H * W == 1`:
    /// the unbiased variance is undefined).
    pub fn try_batch_norm2d<C2, C3, E2, Tw, Tb>(
        self,
        weight: &Tensor<(C2,), E2, D, Tw>,
        bias: &Tensor<(C3,), E2, D, Tb>,
        eps: f64,
    ) -> Result<(Tensor<(N, C, H, W), E, D, Merge3<T, Tw, Tb>>, BatchStats)>
    where
        C2: Dim,
        C3: Dim,
        E2: FloatDtype,
        Tw: TapeState,
        Tb: TapeState,
        C: SameDim<C2, BatchNormalization> + SameDim<C3, BatchNormalization>,
        E: SameDtype<E2, BatchNormalization>,
        T: Merge<Tw>,
        <T as Merge<Tw>>::Out: Merge<Tb>,
    {
        const OP: &str = "batch_norm2d";
        self.check_channels(OP, &[&weight.layout, &bias.layout])?;
        let xd = self.dims();
        let count = xd[0] * xd[2] * xd[3];
        if count <= 1 {
            return Err(invalid(
                OP,
                format!(
                    "expected more than 1 value per channel when training, got input size {:?}",
                    &xd[..]
                ),
            ));
        }
        let w = Operand::of(E::same(weight.clone()));
        let b = Operand::of(E::same(bias.clone()));
        let stats = self
            .device
            .batch_norm_stats(&self.data, &self.layout, eps)?;
        // The C statistics on the host, in f64, scaled.
        let per_channel = Layout::contiguous(&[xd[1]]);
        let to_f64 = |s: &D::Storage<E::Acc>, scale: f64| -> Result<Vec<f64>> {
            let host = self.device.to_host(s, &per_channel)?;
            Ok(host.iter().map(|v| v.as_f64() * scale).collect())
        };
        let batch = BatchStats {
            mean: to_f64(&stats.mean, 1.0)?,
            var: to_f64(&stats.var, count as f64 / (count - 1) as f64)?,
            count,
        };
        Ok((self.bn_impl(w, b, stats, true)?, batch))
    }

    /// Panicking twin of [`try_batch_norm2d`](Self::try_batch_norm2d).
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// // one channel holding 1, 3: mean 2, biased variance 1, unbiased 2
    /// let x: Tensor<(U2, U1, U1, U1), f64> = Tensor::from_vec(Default::default(), vec![1., 3.]).unwrap();
    /// let (w, b) = (Tensor::<(U1,), f64>::ones(Default::default()), Tensor::<(U1,), f64>::zeros(Default::default()));
    /// let (y, stats) = x.batch_norm2d(&w, &b, 0.0);
    /// assert_eq!(y.to_vec(), [-1., 1.]);
    /// assert_eq!((stats.mean[0], stats.var[0]), (2.0, 2.0));
    /// ```
    #[track_caller]
    pub fn batch_norm2d<C2, C3, E2, Tw, Tb>(
        self,
        weight: &Tensor<(C2,), E2, D, Tw>,
        bias: &Tensor<(C3,), E2, D, Tb>,
        eps: f64,
    ) -> (Tensor<(N, C, H, W), E, D, Merge3<T, Tw, Tb>>, BatchStats)
    where
        C2: Dim,
        C3: Dim,
        E2: FloatDtype,
        Tw: TapeState,
        Tb: TapeState,
        C: SameDim<C2, BatchNormalization> + SameDim<C3, BatchNormalization>,
        E: SameDtype<E2, BatchNormalization>,
        T: Merge<Tw>,
        <T as Merge<Tw>>::Out: Merge<Tb>,
    {
        or_panic(self.try_batch_norm2d(weight, bias, eps))
    }

    /// Batch normalization in eval mode (PyTorch `F.batch_norm` with
    /// `training=False`): `(x - running_mean) / sqrt(running_var + eps) *
    /// weight + bias`. The running statistics are constants: they get no
    /// gradient (and so are never touched by an optimizer). All four vectors
    /// are `(C,)`, compared by value; a `Dyn` mismatch is an error.
    #[allow(clippy::too_many_arguments)]
    pub fn try_batch_norm2d_eval<C2, C3, C4, C5, E2, Tw, Tb>(
        self,
        weight: &Tensor<(C2,), E2, D, Tw>,
        bias: &Tensor<(C3,), E2, D, Tb>,
        running_mean: &Tensor<(C4,), E2, D>,
        running_var: &Tensor<(C5,), E2, D>,
        eps: f64,
    ) -> Result<Tensor<(N, C, H, W), E, D, Merge3<T, Tw, Tb>>>
    where
        C2: Dim,
        C3: Dim,
        C4: Dim,
        C5: Dim,
        E2: FloatDtype,
        Tw: TapeState,
        Tb: TapeState,
        C: SameDim<C2, BatchNormalization>
            + SameDim<C3, BatchNormalization>
            + SameDim<C4, BatchNormalization>
            + SameDim<C5, BatchNormalization>,
        E: SameDtype<E2, BatchNormalization>,
        T: Merge<Tw>,
        <T as Merge<Tw>>::Out: Merge<Tb>,
    {
        self.check_channels(
            "batch_norm2d",
            &[
                &weight.layout,
                &bias.layout,
                &running_mean.layout,
                &running_var.layout,
            ],
        )?;
        let w = Operand::of(E::same(weight.clone()));
        let b = Operand::of(E::same(bias.clone()));
        let (rm, rv) = (E::same(running_mean.clone()), E::same(running_var.clone()));
        let stats =
            self.device
                .running_stats((&rm.data, &rm.layout), (&rv.data, &rv.layout), eps)?;
        self.bn_impl(w, b, stats, false)
    }

    /// Panicking twin of [`try_batch_norm2d_eval`](Self::try_batch_norm2d_eval).
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm2d_eval<C2, C3, C4, C5, E2, Tw, Tb>(
        self,
        weight: &Tensor<(C2,), E2, D, Tw>,
        bias: &Tensor<(C3,), E2, D, Tb>,
        running_mean: &Tensor<(C4,), E2, D>,
        running_var: &Tensor<(C5,), E2, D>,
        eps: f64,
    ) -> Tensor<(N, C, H, W), E, D, Merge3<T, Tw, Tb>>
    where
        C2: Dim,
        C3: Dim,
        C4: Dim,
        C5: Dim,
        E2: FloatDtype,
        Tw: TapeState,
        Tb: TapeState,
        C: SameDim<C2, BatchNormalization>
            + SameDim<C3, BatchNormalization>
            + SameDim<C4, BatchNormalization>
            + SameDim<C5, BatchNormalization>,
        E: SameDtype<E2, BatchNormalization>,
        T: Merge<Tw>,
        <T as Merge<Tw>>::Out: Merge<Tb>,
    {
        or_panic(self.try_batch_norm2d_eval(weight, bias, running_mean, running_var, eps))
    }
}

/// The statistics of one training-mode batch norm: per channel, the batch
/// mean and the **unbiased** variance (what PyTorch blends into the
/// running variance), in `f64`.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats {
    /// Per-channel mean over `(N, H, W)`.
    pub mean: Vec<f64>,
    /// Per-channel unbiased variance (`Σ (x - mean)² / (count - 1)`).
    pub var: Vec<f64>,
    /// Values per channel, `N * H * W`.
    pub count: usize,
}

impl BatchStats {
    /// PyTorch's running-statistics update, in `f64` with one rounding:
    /// `running = (1 - momentum) * running + momentum * batch`, for the mean
    /// and the unbiased variance. The tensors are updated in place (their
    /// ids are kept) on their device, through the host (`C` values each);
    /// their length must be the channel count.
    pub fn update_running<C: Dim, E: FloatDtype, D: Backend>(
        &self,
        running_mean: &mut Tensor<(C,), E, D>,
        running_var: &mut Tensor<(C,), E, D>,
        momentum: f64,
    ) -> Result<()> {
        for r in [&*running_mean, &*running_var] {
            if r.numel() != self.mean.len() {
                return Err(Error::ShapeMismatch {
                    op: "batch_norm2d running stats",
                    lhs: vec![self.mean.len()],
                    rhs: r.dims().to_vec(),
                });
            }
        }
        for (r, batch) in [(running_mean, &self.mean), (running_var, &self.var)] {
            let blended = r
                .try_to_vec()?
                .into_iter()
                .zip(batch)
                .map(|(v, &b)| E::from_f64((1.0 - momentum) * v.to_f64() + momentum * b))
                .collect();
            r.assign(blended)?;
        }
        Ok(())
    }
}
