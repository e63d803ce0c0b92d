//! Matrix multiplication (`matmul`, batched and with a shared right operand)
//! and `t()`, the zero-copy swap of the last two axes.
//!
//! The inner dims (and the batch dims) are compared by value through
//! [`SameDim`], so `Hidden = 8` times `Embed = 8` compiles, while a mismatch
//! names both dims: ``shape error in `Matmul`: `Hidden` does not match `Ffn` ``.

use std::sync::{Arc, Weak};

use zerfoo_kernels::{Backend, FloatDtype, Layout};

use super::{Matmul, SameDtype};
use zerfoo_kernels::cpu::unary as k;

use crate::autograd::{device_ok, record, record_fused, GradStore, Merge, TapeState, TensorId};
use crate::error::or_panic;
use crate::shape::{Dim, SameDim, Shape};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// The shapes `Self` and `Rhs` can be multiplied; [`MatMulShapes::Out`] is
/// the product's shape.
///
/// | lhs            | rhs              | out            |
/// |----------------|------------------|----------------|
/// | `(M, K)`       | `(K, N)`         | `(M, N)`       |
/// | `(B, M, K)`    | `(B, K, N)`      | `(B, M, N)`    |
/// | `(B, M, K)`    | `(K, N)`         | `(B, M, N)`    |
/// | `(B, H, M, K)` | `(B, H, K, N)`   | `(B, H, M, N)` |
/// | `(B, H, M, K)` | `(K, N)`         | `(B, H, M, N)` |
/// | `(M, K)`       | `(B, K, N)`      | `(B, M, N)`    |
/// | `(M, K)`       | `(B, H, K, N)`   | `(B, H, M, N)` |
/// | `(K,)`         | `(K, N)`         | `(N,)`         |
/// | `(K,)`         | `(K,)`           | `()`           |
///
/// A rank-2 operand beside a batched one is shared by every matrix of the
/// batch; `(K,)` is one row (and `(K,) x (K,)` the dot product). Inner and
/// batch dims are compared by value ([`SameDim`]); `Dyn` dims at run time.
#[diagnostic::on_unimplemented(
    message = "shape error in `Matmul`: cannot multiply `{Self}` by `{Rhs}`",
    label = "no matmul for these ranks",
    note = "supported: `(M, K) x (K, N)`, `(B, M, K) x (B, K, N)`, `(B, H, M, K) x (B, H, K, N)`, \
            a rank-2 operand beside a batched one, `(K,) x (K, N)` and `(K,) x (K,)`"
)]
pub trait MatMulShapes<Rhs: Shape>: Shape {
    /// The product's shape.
    type Out: Shape;
    /// Whether `Self` is one matrix shared across the batch dims of `Rhs`.
    const LHS_BROADCAST: bool = false;
    /// Whether `Rhs` is one matrix shared across the batch dims of `Self`.
    const RHS_BROADCAST: bool = false;
    /// The product's shape value (batch and `M` from `self`, `N` from `rhs`).
    fn matmul_shape(&self, rhs: &Rhs) -> Self::Out;
}

impl<K: Dim, K2: Dim, N: Dim> MatMulShapes<(K2, N)> for (K,)
where
    K: SameDim<K2, Matmul>,
{
    type Out = (N,);
    fn matmul_shape(&self, rhs: &(K2, N)) -> (N,) {
        (rhs.1,)
    }
}

impl<K: Dim, K2: Dim> MatMulShapes<(K2,)> for (K,)
where
    K: SameDim<K2, Matmul>,
{
    type Out = ();
    fn matmul_shape(&self, _rhs: &(K2,)) {}
}

impl<M: Dim, K: Dim, B: Dim, K2: Dim, N: Dim> MatMulShapes<(B, K2, N)> for (M, K)
where
    K: SameDim<K2, Matmul>,
{
    type Out = (B, M, N);
    const LHS_BROADCAST: bool = true;
    fn matmul_shape(&self, rhs: &(B, K2, N)) -> (B, M, N) {
        (rhs.0, self.0, rhs.2)
    }
}

impl<M: Dim, K: Dim, B: Dim, H: Dim, K2: Dim, N: Dim> MatMulShapes<(B, H, K2, N)> for (M, K)
where
    K: SameDim<K2, Matmul>,
{
    type Out = (B, H, M, N);
    const LHS_BROADCAST: bool = true;
    fn matmul_shape(&self, rhs: &(B, H, K2, N)) -> (B, H, M, N) {
        (rhs.0, rhs.1, self.0, rhs.3)
    }
}

impl<M: Dim, K: Dim, K2: Dim, N: Dim> MatMulShapes<(K2, N)> for (M, K)
where
    K: SameDim<K2, Matmul>,
{
    type Out = (M, N);
    fn matmul_shape(&self, rhs: &(K2, N)) -> (M, N) {
        (self.0, rhs.1)
    }
}

impl<B: Dim, M: Dim, K: Dim, B2: Dim, K2: Dim, N: Dim> MatMulShapes<(B2, K2, N)> for (B, M, K)
where
    B: SameDim<B2, Matmul>,
    K: SameDim<K2, Matmul>,
{
    type Out = (B, M, N);
    fn matmul_shape(&self, rhs: &(B2, K2, N)) -> (B, M, N) {
        (self.0, self.1, rhs.2)
    }
}

impl<B: Dim, M: Dim, K: Dim, K2: Dim, N: Dim> MatMulShapes<(K2, N)> for (B, M, K)
where
    K: SameDim<K2, Matmul>,
{
    type Out = (B, M, N);
    const RHS_BROADCAST: bool = true;
    fn matmul_shape(&self, rhs: &(K2, N)) -> (B, M, N) {
        (self.0, self.1, rhs.1)
    }
}

impl<B: Dim, H: Dim, M: Dim, K: Dim, B2: Dim, H2: Dim, K2: Dim, N: Dim>
    MatMulShapes<(B2, H2, K2, N)> for (B, H, M, K)
where
    B: SameDim<B2, Matmul>,
    H: SameDim<H2, Matmul>,
    K: SameDim<K2, Matmul>,
{
    type Out = (B, H, M, N);
    fn matmul_shape(&self, rhs: &(B2, H2, K2, N)) -> (B, H, M, N) {
        (self.0, self.1, self.2, rhs.3)
    }
}

impl<B: Dim, H: Dim, M: Dim, K: Dim, K2: Dim, N: Dim> MatMulShapes<(K2, N)> for (B, H, M, K)
where
    K: SameDim<K2, Matmul>,
{
    type Out = (B, H, M, N);
    const RHS_BROADCAST: bool = true;
    fn matmul_shape(&self, rhs: &(K2, N)) -> (B, H, M, N) {
        (self.0, self.1, self.2, rhs.1)
    }
}

/// The shape has at least two axes; [`TransposeShape::Out`] is it with the
/// last two swapped (`(M, N)` → `(N, M)`, `(B, M, N)` → `(B, N, M)`, ...).
#[diagnostic::on_unimplemented(
    message = "shape error in `t`: `t()` swaps the last two axes, but `{Self}` has fewer than two",
    label = "needs rank 2 or more"
)]
pub trait TransposeShape: Shape {
    /// The shape with its last two dims swapped.
    type Out: Shape;
    /// The swapped shape value.
    fn transposed(&self) -> Self::Out;
}

macro_rules! transpose_shape {
    ($($d:ident $i:tt),* ; $x:ident $xi:tt, $y:ident $yi:tt) => {
        impl<$($d: Dim,)* $x: Dim, $y: Dim> TransposeShape for ($($d,)* $x, $y) {
            type Out = ($($d,)* $y, $x);
            #[inline]
            fn transposed(&self) -> Self::Out {
                ($(self.$i,)* self.$yi, self.$xi)
            }
        }
    };
}
transpose_shape!(; A 0, B 1);
transpose_shape!(A 0; B 1, C 2);
transpose_shape!(A 0, B 1; C 2, D 3);
transpose_shape!(A 0, B 1, C 2; D 3, E 4);
transpose_shape!(A 0, B 1, C 2, D 3; E 4, F 5);

/// The bias of [`Tensor::try_matmul_t_bias`] as the product sees it:
/// contiguous values, their dims, and the tensor's id and tape node.
struct Bias<E: FloatDtype, D: Backend> {
    dims: Vec<usize>,
    data: Arc<D::Storage<E>>,
    id: TensorId,
    node: Option<Arc<crate::autograd::Node>>,
}

/// The residual of [`Tensor::try_matmul_t_bias_residual`] as the product
/// sees it: values, layout, and the tensor's id and tape node.
struct Residual<E: FloatDtype, D: Backend> {
    data: Arc<D::Storage<E>>,
    layout: Layout,
    id: TensorId,
    node: Option<Arc<crate::autograd::Node>>,
}

/// An activation a linear layer applies to its product in the product
/// itself ([`Tensor::try_matmul_t_bias_act`]): on the CPU (`f32`/`f64`) each
/// finished part of the product goes through it while still in cache, and
/// the backward multiplies the next layer's input-gradient product by the
/// derivative the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearAct {
    /// `max(x, 0)`, as [`Tensor::relu`].
    Relu,
    /// Exact GELU, as [`Tensor::gelu`].
    Gelu,
    /// GELU's tanh approximation, as [`Tensor::gelu_tanh`].
    GeluTanh,
    /// SiLU, as [`Tensor::silu`].
    Silu,
}

/// Runs `$body` with `$op` bound to the kernel op of a [`LinearAct`].
macro_rules! with_act {
    ($act:expr, |$op:ident| $body:expr) => {
        match $act {
            LinearAct::Relu => {
                let $op = k::Relu;
                $body
            }
            LinearAct::Gelu => {
                let $op = k::GeluErf;
                $body
            }
            LinearAct::GeluTanh => {
                let $op = k::GeluTanh;
                $body
            }
            LinearAct::Silu => {
                let $op = k::Silu;
                $body
            }
        }
    };
}

/// What a linear layer with an activation offers the product that consumes
/// its output `y = act(h)` (through the tape node, see
/// [`record_fused`]): that product's backward may compute the gradient of
/// `h` itself, `(gZ · W) ⊙ act'(h)`, in one pass, and store it under
/// `h_id`, where the layer's backward looks for it first. It holds `h` and
/// `y` weakly (the layer's backward holds them), so an offer nobody takes
/// (the activation feeds something else) keeps no memory alive.
struct FusedOffer<D: Backend, E: FloatDtype> {
    act: LinearAct,
    h: Weak<D::Storage<E>>,
    y: Weak<D::Storage<E>>,
    dims: Vec<usize>,
    y_id: TensorId,
    h_id: TensorId,
}

impl<D: Backend, E: FloatDtype> FusedOffer<D, E> {
    /// The offer as taken by the product whose left operand is `y` (id and
    /// dims), if it is that product's.
    fn accept(self, y_id: TensorId, dims: &[usize]) -> Option<FusedAct<D, E>> {
        if self.y_id != y_id || self.dims[..] != dims[..] {
            return None;
        }
        Some(FusedAct {
            act: self.act,
            h: self.h.upgrade()?,
            y: self.y.upgrade()?,
            h_id: self.h_id,
        })
    }
}

/// A [`FusedOffer`] taken: what the consuming product's backward needs.
struct FusedAct<D: Backend, E: FloatDtype> {
    act: LinearAct,
    /// The pre-activation `h` and the output `y`, contiguous.
    h: Arc<D::Storage<E>>,
    y: Arc<D::Storage<E>>,
    /// Where the consumer puts `h`'s gradient.
    h_id: TensorId,
}

/// What a product's backward needs, saved by its forward.
struct SavedProduct<D: Backend, E: FloatDtype> {
    a: Arc<D::Storage<E>>,
    la: Layout,
    ida: TensorId,
    b: Arc<D::Storage<E>>,
    lb: Layout,
    idb: TensorId,
    shared: (bool, bool),
    transposed_rhs: bool,
    bias_id: Option<TensorId>,
    /// The left operand is a fused activation's output: its gradient goes
    /// to the activation's input, multiplied by the derivative in the product.
    lhs_act: Option<FusedAct<D, E>>,
}

impl<D: Backend, E: FloatDtype> SavedProduct<D, E> {
    /// Accumulates the gradients of both operands (and the bias) from `gy`.
    fn backward(&self, dev: &D, g: &mut GradStore, gy: &D::Storage<E>) {
        let (la, lb) = (&self.la, &self.lb);
        let (shared_a, shared_b) = self.shared;
        // gY as `[..batch, M, N]`.
        let mut gdims = la.shape().to_vec();
        let r = gdims.len();
        gdims[r - 1] = lb.shape()[r - 1];
        let lg = Layout::contiguous(&gdims);
        // dB = Aᵀ · gY, then dA = gY · Bᵀ (transposed views, no copies;
        // summed over the batch for a shared operand). dB first: dA is what
        // the backward of the op before reads next (a layer's input
        // gradient, or its activation's), so it is left in cache for it,
        // while dB (a weight's gradient) is only accumulated (gpt6 step,
        // paired: ~1% faster than dA first).
        let a = &self.a;
        // dBᵀ = gYᵀ · A when B is a transposed tensor's view.
        let grad_b = || {
            device_ok(match (shared_b, self.transposed_rhs) {
                (true, false) => dev.gemm_batch_sum(a, &swap_last(la), gy, &lg),
                (false, false) => dev.gemm_batched(a, &swap_last(la), gy, &lg),
                (true, true) => dev.gemm_batch_sum(gy, &swap_last(&lg), a, la),
                (false, true) => dev.gemm_batched(gy, &swap_last(&lg), a, la),
            })
        };
        // For a fused activation's output, dH = (gY · Bᵀ) ⊙ act'(H) in one
        // pass.
        let grad_a = || match &self.lhs_act {
            Some(f) => (
                f.h_id,
                device_ok(with_act!(f.act, |op| dev.gemm_batched_act_grad(
                    gy,
                    &lg,
                    &self.b,
                    &swap_last(lb),
                    op,
                    &f.h,
                    &f.y
                ))),
            ),
            None => (
                self.ida,
                device_ok(if shared_a {
                    dev.gemm_batch_sum(gy, &lg, &self.b, &swap_last(lb))
                } else {
                    dev.gemm_batched(gy, &lg, &self.b, &swap_last(lb))
                }),
            ),
        };
        // Each gradient is a product of the forward's size: `[..batch, M,
        // N]` results of depth `K`. Side by side (a large product on the
        // CPU), the threads share both products' tasks; else dB first.
        let macs = lg.shape().iter().product::<usize>() * la.shape()[r - 1];
        if dev.gradients_side_by_side(macs) {
            let (gb, (ida, ga)) = rayon::join(grad_b, grad_a);
            g.accumulate_on(dev, self.idb, gb);
            g.accumulate_on(dev, ida, ga);
        } else {
            // dB accumulated (and its buffer released) before dA is made.
            g.accumulate_on(dev, self.idb, grad_b());
            let (ida, ga) = grad_a();
            g.accumulate_on(dev, ida, ga);
        }
        // The bias's gradient: gY summed over every row.
        if let Some(id) = self.bias_id {
            let rows: Vec<usize> = (0..r - 1).collect();
            g.accumulate_on(dev, id, device_ok(dev.sum_axes(gy, &lg, &rows, 1.0)));
        }
    }
}

impl<E: FloatDtype, D: Backend> Bias<E, D> {
    /// The bias tensor's values (made contiguous if they are not), dims,
    /// id and node.
    fn of<N: Dim, T: TapeState>(bias: Tensor<(N,), E, D, T>) -> Result<Self> {
        Ok(Bias {
            dims: bias.dims().to_vec(),
            data: if bias.layout.is_contiguous() && bias.layout.offset == 0 {
                bias.data
            } else {
                Arc::new(bias.device.contiguous(&bias.data, &bias.layout)?)
            },
            id: bias.id,
            node: bias.tape.node(),
        })
    }
}

/// `l` (a matrix) repeated over leading `batch` dims with stride 0.
fn with_batch(l: &Layout, batch: &[usize]) -> Layout {
    let mut shape = batch.to_vec();
    let mut strides = vec![0; batch.len()];
    shape.extend_from_slice(l.shape());
    strides.extend_from_slice(l.strides());
    Layout::new(&shape, &strides, l.offset)
}

/// `rhs` transposed in its last two dims, as a view under `rhs`'s own id:
/// the product's backward hands it a gradient in `rhs`'s orientation
/// (`transposed_rhs`).
fn transposed_view<S2: TransposeShape, E2: FloatDtype, D: Backend, T2: TapeState>(
    rhs: Tensor<S2, E2, D, T2>,
) -> Tensor<S2::Out, E2, D, T2> {
    Tensor {
        shape: rhs.shape.transposed(),
        layout: swap_last(&rhs.layout),
        data: rhs.data,
        id: rhs.id,
        tape: rhs.tape,
        device: rhs.device,
    }
}

/// The layout with its last two axes swapped (a transposed view).
fn swap_last(l: &Layout) -> Layout {
    let mut l = *l;
    let r = l.rank();
    l.swap_axes(r - 2, r - 1);
    l
}

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// Matrix product over the last two axes, batched over the leading ones
    /// (see [`MatMulShapes`] for the supported ranks). A rank-2 operand
    /// beside a batched one is shared by every matrix of the batch (its
    /// gradient sums over the batch). Computes in `f32` for
    /// low-precision dtypes (`f64` for `f64`) and rounds once.
    ///
    /// Returns [`Error::ShapeMismatch`] if a `Dyn` inner or batch dim differs
    /// at run time; static dims are checked at compile time.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// dim!(Rows = 2);
    /// dim!(Inner = 3);
    /// let a = Tensor::<(Rows, Inner), f32>::from_vec((Rows, Inner), vec![1., 2., 3., 4., 5., 6.]).unwrap();
    /// let b = Tensor::<(Dyn, U1), f32>::from_vec((Dyn(3), U1::default()), vec![1., 0., -1.]).unwrap();
    /// assert_eq!(a.clone().try_matmul(b).unwrap().to_vec(), [-2., -2.]);
    /// let bad = Tensor::<(Dyn, U1), f32>::zeros((Dyn(4), U1::default()));
    /// assert!(a.try_matmul(bad).is_err());
    /// ```
    pub fn try_matmul<S2: Shape, E2: FloatDtype, T2: TapeState, O: Shape>(
        self,
        rhs: Tensor<S2, E2, D, T2>,
    ) -> Result<Tensor<O, E, D, <T as Merge<T2>>::Out>>
    where
        S: MatMulShapes<S2, Out = O>,
        E: SameDtype<E2, Matmul>,
        T: Merge<T2>,
    {
        self.matmul_core(rhs, false, None, None, None)
    }

    /// `self · rhsᵀ` (`rhs` transposed over its last two axes): the product
    /// of a linear layer with its `[out, in]` weight. Equals
    /// `self.matmul(rhs.t())`, but the gradient of `rhs` is computed in
    /// `rhs`'s own orientation (`gYᵀ · X`) instead of being computed
    /// transposed and copied back.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U3), f32>::from_vec(Default::default(), vec![1., 2., 3., 4., 5., 6.]).unwrap();
    /// let w = Tensor::<(U1, U3), f32>::from_vec(Default::default(), vec![1., 0., -1.]).unwrap();
    /// assert_eq!(x.try_matmul_t(w).unwrap().to_vec(), [-2., -2.]);
    /// ```
    pub fn try_matmul_t<S2: TransposeShape, E2: FloatDtype, T2: TapeState, O: Shape>(
        self,
        rhs: Tensor<S2, E2, D, T2>,
    ) -> Result<Tensor<O, E, D, <T as Merge<T2>>::Out>>
    where
        S: MatMulShapes<S2::Out, Out = O>,
        E: SameDtype<E2, Matmul>,
        T: Merge<T2>,
    {
        self.matmul_core(transposed_view(rhs), true, None, None, None)
    }

    /// `self · rhsᵀ + bias`: a linear layer's forward (`F.linear`), with
    /// the bias (one value per output column, `N` = `rhs`'s second to last
    /// dim) added to every row in the product's store on the CPU instead of
    /// by a broadcast add over the result. The gradients are those of
    /// `self.matmul_t(rhs)` plus the broadcast bias: the bias's is the sum
    /// of the output gradient over every row.
    ///
    /// Returns [`Error::ShapeMismatch`] as [`try_matmul_t`](Self::try_matmul_t)
    /// does, or when the bias's length is not `N`.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U3), f32>::from_vec(Default::default(), vec![1., 2., 3., 4., 5., 6.]).unwrap();
    /// let w = Tensor::<(U1, U3), f32>::from_vec(Default::default(), vec![1., 0., -1.]).unwrap();
    /// let b = Tensor::<(U1,), f32>::from_vec(Default::default(), vec![0.5]).unwrap();
    /// assert_eq!(x.try_matmul_t_bias(w, b).unwrap().to_vec(), [-1.5, -1.5]);
    /// ```
    pub fn try_matmul_t_bias<S2, E2, T2, O, N>(
        self,
        rhs: Tensor<S2, E2, D, T2>,
        bias: Tensor<(N,), E, D, T2>,
    ) -> Result<Tensor<O, E, D, <T as Merge<T2>>::Out>>
    where
        S2: TransposeShape,
        E2: FloatDtype,
        T2: TapeState,
        O: Shape,
        N: Dim,
        S: MatMulShapes<S2::Out, Out = O>,
        E: SameDtype<E2, Matmul>,
        T: Merge<T2>,
    {
        self.matmul_core(
            transposed_view(rhs),
            true,
            Some(Bias::of(bias)?),
            None,
            None,
        )
    }

    /// `act(self · rhsᵀ + bias)`: a linear layer (bias optional) and its
    /// activation as one op. The values and gradients are those of
    /// [`try_matmul_t_bias`](Self::try_matmul_t_bias) (or
    /// [`try_matmul_t`](Self::try_matmul_t)) followed by the activation's
    /// own op, bit for bit; on the CPU (`f32`/`f64`) the activation is
    /// applied by the product to each part it finishes, while in cache, and
    /// when the output goes straight into another product (the next layer),
    /// that product's backward multiplies its input gradient by the
    /// derivative the same way, instead of separate passes over memory.
    ///
    /// Returns [`Error::ShapeMismatch`] as [`try_matmul_t_bias`](Self::try_matmul_t_bias) does.
    ///
    /// ```
    /// use zerfoo::ops::LinearAct;
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U3), f32>::from_vec(Default::default(), vec![1., 2., 3., 4., 5., 6.]).unwrap();
    /// let w = Tensor::<(U1, U3), f32>::from_vec(Default::default(), vec![1., 0., -1.]).unwrap();
    /// let b = Tensor::<(U1,), f32>::from_vec(Default::default(), vec![2.5]).unwrap();
    /// let y = x.try_matmul_t_bias_act(w, Some(b), LinearAct::Relu).unwrap();
    /// assert_eq!(y.to_vec(), [0.5, 0.5]); // relu(-2 + 2.5)
    /// ```
    pub fn try_matmul_t_bias_act<S2, E2, T2, O, N>(
        self,
        rhs: Tensor<S2, E2, D, T2>,
        bias: Option<Tensor<(N,), E, D, T2>>,
        act: LinearAct,
    ) -> Result<Tensor<O, E, D, <T as Merge<T2>>::Out>>
    where
        S2: TransposeShape,
        E2: FloatDtype,
        T2: TapeState,
        O: Shape,
        N: Dim,
        S: MatMulShapes<S2::Out, Out = O>,
        E: SameDtype<E2, Matmul>,
        T: Merge<T2>,
    {
        let bias = bias.map(Bias::of).transpose()?;
        self.matmul_core(transposed_view(rhs), true, bias, Some(act), None)
    }

    /// `residual + (self · rhsᵀ + bias)`: a layer's output projection and
    /// the residual connection around it (`x + proj(h)` in a transformer
    /// block) as one op. The values and gradients are those of
    /// [`try_matmul_t_bias`](Self::try_matmul_t_bias) (or
    /// [`try_matmul_t`](Self::try_matmul_t)) followed by the addition, bit
    /// for bit; on the CPU (`f32`/`f64`) the product adds the residual to
    /// each part it finishes, while in cache, instead of the addition's own
    /// pass over memory. The residual's gradient is the output's, shared.
    ///
    /// Returns [`Error::ShapeMismatch`] as [`try_matmul_t_bias`](Self::try_matmul_t_bias)
    /// does, or when the residual's dims are not the product's.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U3), f32>::from_vec(Default::default(), vec![1., 2., 3., 4., 5., 6.]).unwrap();
    /// let w = Tensor::<(U1, U3), f32>::from_vec(Default::default(), vec![1., 0., -1.]).unwrap();
    /// let b = Tensor::<(U1,), f32>::from_vec(Default::default(), vec![0.5]).unwrap();
    /// let r = Tensor::<(U2, U1), f32>::from_vec(Default::default(), vec![10., 20.]).unwrap();
    /// // (-2, -2) + 0.5 + (10, 20)
    /// assert_eq!(x.try_matmul_t_bias_residual(w, Some(b), r).unwrap().to_vec(), [8.5, 18.5]);
    /// ```
    pub fn try_matmul_t_bias_residual<S2, E2, T2, O, N>(
        self,
        rhs: Tensor<S2, E2, D, T2>,
        bias: Option<Tensor<(N,), E, D, T2>>,
        residual: Tensor<O, E, D, T>,
    ) -> Result<Tensor<O, E, D, <T as Merge<T2>>::Out>>
    where
        S2: TransposeShape,
        E2: FloatDtype,
        T2: TapeState,
        O: Shape,
        N: Dim,
        S: MatMulShapes<S2::Out, Out = O>,
        E: SameDtype<E2, Matmul>,
        T: Merge<T2>,
    {
        let bias = bias.map(Bias::of).transpose()?;
        let residual = Residual {
            node: residual.tape.node(),
            data: residual.data,
            layout: residual.layout,
            id: residual.id,
        };
        self.matmul_core(transposed_view(rhs), true, bias, None, Some(residual))
    }

    /// Panicking twin of [`try_matmul_t_bias`](Self::try_matmul_t_bias).
    #[track_caller]
    pub fn matmul_t_bias<S2, E2, T2, O, N>(
        self,
        rhs: Tensor<S2, E2, D, T2>,
        bias: Tensor<(N,), E, D, T2>,
    ) -> Tensor<O, E, D, <T as Merge<T2>>::Out>
    where
        S2: TransposeShape,
        E2: FloatDtype,
        T2: TapeState,
        O: Shape,
        N: Dim,
        S: MatMulShapes<S2::Out, Out = O>,
        E: SameDtype<E2, Matmul>,
        T: Merge<T2>,
    {
        or_panic(self.try_matmul_t_bias(rhs, bias))
    }

    /// Panicking twin of [`try_matmul_t`](Self::try_matmul_t).
    #[track_caller]
    pub fn matmul_t<S2: TransposeShape, E2: FloatDtype, T2: TapeState, O: Shape>(
        self,
        rhs: Tensor<S2, E2, D, T2>,
    ) -> Tensor<O, E, D, <T as Merge<T2>>::Out>
    where
        S: MatMulShapes<S2::Out, Out = O>,
        E: SameDtype<E2, Matmul>,
        T: Merge<T2>,
    {
        or_panic(self.try_matmul_t(rhs))
    }

    /// The product, plus `bias` on every row if any, then `act` or
    /// `residual` (never both) if any; with
    /// `transposed_rhs`, `rhs` is the transposed view of a tensor whose id
    /// it carries, and its gradient is produced in that tensor's orientation
    /// (`[.., N, K]`).
    fn matmul_core<S2: Shape, E2: FloatDtype, T2: TapeState, O: Shape>(
        self,
        rhs: Tensor<S2, E2, D, T2>,
        transposed_rhs: bool,
        bias: Option<Bias<E, D>>,
        act: Option<LinearAct>,
        residual: Option<Residual<E, D>>,
    ) -> Result<Tensor<O, E, D, <T as Merge<T2>>::Out>>
    where
        S: MatMulShapes<S2, Out = O>,
        E: SameDtype<E2, Matmul>,
        T: Merge<T2>,
    {
        let rhs = E::same(rhs);
        let (dl, dr) = (self.dims(), rhs.dims());
        let (rl, rr) = (dl.len(), dr.len());
        let inner_ok = dl[rl - 1] == dr[rr.max(2) - 2];
        let shared = S::LHS_BROADCAST || S::RHS_BROADCAST;
        let batch_ok = shared || rl < 3 || dl[..rl - 2] == dr[..rr - 2];
        if !inner_ok || !batch_ok {
            return Err(Error::ShapeMismatch {
                op: "matmul",
                lhs: dl.to_vec(),
                rhs: dr.to_vec(),
            });
        }
        // Both operands as `[..batch, M, K]` and `[..batch, K, N]` of one
        // rank: a vector lhs is one row, a vector rhs one column, and a
        // shared matrix gets the other side's batch dims with stride 0.
        let (sl, sr) = (&self.layout, &rhs.layout);
        let la = match rl {
            1 => Layout::new(&[1, dl[0]], &[0, sl.strides()[0]], sl.offset),
            _ => *sl,
        };
        let lb = match rr {
            1 => Layout::new(&[dr[0], 1], &[sr.strides()[0], 0], sr.offset),
            _ => *sr,
        };
        let (la, lb) = if S::RHS_BROADCAST {
            (la, with_batch(&lb, &la.shape()[..rl - 2]))
        } else if S::LHS_BROADCAST {
            (with_batch(&la, &lb.shape()[..rr - 2]), lb)
        } else {
            (la, lb)
        };
        let out_shape = self.shape.matmul_shape(&rhs.shape);
        if let Some(bias) = &bias {
            let n = lb.shape()[lb.rank() - 1];
            if bias.dims != [n] {
                return Err(Error::ShapeMismatch {
                    op: "matmul_t_bias",
                    lhs: out_shape.dims().to_vec(),
                    rhs: bias.dims.clone(),
                });
            }
        }
        let bias_data = bias.as_ref().map(|b| &*b.data);
        // With an activation, `y` is the output and `h` the product.
        debug_assert!(act.is_none() || residual.is_none());
        let (h, y) = match (act, &residual) {
            (Some(act), _) => {
                let (h, y) = with_act!(act, |op| self
                    .device
                    .gemm_batched_bias_act(&self.data, &la, &rhs.data, &lb, bias_data, op))?;
                (Some(Arc::new(h)), y)
            }
            (None, Some(r)) => {
                if r.layout.shape() != out_shape.dims().as_ref() {
                    return Err(Error::ShapeMismatch {
                        op: "matmul_t_bias_residual",
                        lhs: out_shape.dims().to_vec(),
                        rhs: r.layout.shape().to_vec(),
                    });
                }
                let (rd, rl) = (&*r.data, &r.layout);
                let y = self.device.gemm_batched_bias_residual(
                    &self.data, &la, &rhs.data, &lb, bias_data, rd, rl,
                )?;
                (None, y)
            }
            (None, None) => (
                None,
                self.device
                    .gemm_batched_maybe_bias(&self.data, &la, &rhs.data, &lb, bias_data)?,
            ),
        };
        let y = Arc::new(y);
        let out_id = TensorId::fresh();
        type Out<T, T2> = <T as Merge<T2>>::Out;
        let tape = if Out::<T, T2>::TRACKED {
            // The lhs is a fused activation's output, and this is the product
            // it was offered to: take over the activation's derivative.
            let lhs_act = (!S::LHS_BROADCAST
                && rl >= 2
                && self.layout.is_contiguous()
                && self.layout.offset == 0)
                .then(|| self.tape.node())
                .flatten()
                .and_then(|n| n.take_fused::<FusedOffer<D, E>>())
                .and_then(|offer| offer.accept(self.id, &dl));
            let bias_node = bias.as_ref().and_then(|b| b.node.clone());
            let residual_node = residual.as_ref().and_then(|r| r.node.clone());
            let parents = [self.tape.node(), rhs.tape.node(), bias_node, residual_node];
            let residual_id = residual.map(|r| r.id);
            let saved = SavedProduct {
                a: self.data.clone(),
                la,
                ida: self.id,
                b: rhs.data.clone(),
                lb,
                idb: rhs.id,
                shared: (S::LHS_BROADCAST, S::RHS_BROADCAST),
                transposed_rhs,
                bias_id: bias.map(|b| b.id),
                lhs_act,
            };
            let dev = self.device.clone();
            match (act, h) {
                (Some(act), Some(h)) => {
                    let h_id = TensorId::fresh();
                    let offer = FusedOffer::<D, E> {
                        act,
                        h: Arc::downgrade(&h),
                        y: Arc::downgrade(&y),
                        dims: out_shape.dims().to_vec(),
                        y_id: out_id,
                        h_id,
                    };
                    let (y, lh) = (y.clone(), Layout::contiguous(&out_shape.dims()));
                    let backward = move |g: &mut GradStore| {
                        // dH from the product that took the offer, plus
                        // dY ⊙ act'(H) from any other consumer of Y.
                        let from_y = g.take_on::<D, E>(out_id).map(|gy| {
                            device_ok(with_act!(act, |op| dev.unary_backward(op, &h, &lh, &y, &gy)))
                        });
                        let gh = match (g.take_on::<D, E>(h_id), from_y) {
                            (Some(mut gh), Some(more)) => {
                                device_ok(dev.add_assign(&mut gh, &more));
                                gh
                            }
                            (gh, more) => match gh.or(more) {
                                Some(gh) => gh,
                                None => return,
                            },
                        };
                        saved.backward(&dev, g, &gh);
                    };
                    record_fused::<Out<T, T2>, _>(out_id, &parents, backward, offer)
                }
                _ => record::<Out<T, T2>>(out_id, &parents, move |g| {
                    // Only read: it may stay shared with an addition's other
                    // operand (a residual stream's gradient).
                    if let Some(gy) = g.take_shared_on::<D, E>(out_id) {
                        saved.backward(&dev, g, &gy);
                        // The residual's gradient is the output's, shared.
                        if let Some(id) = residual_id {
                            g.accumulate_shared_on(&dev, id, gy);
                        }
                    }
                }),
            }
        } else {
            Out::<T, T2>::from_node(None)
        };
        Ok(Tensor {
            layout: Layout::contiguous(&out_shape.dims()),
            shape: out_shape,
            data: y,
            id: out_id,
            tape,
            device: self.device,
        })
    }

    /// Panicking twin of [`try_matmul`](Self::try_matmul): panics (with the
    /// same message) if a `Dyn` inner or batch dim differs at run time.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// dim!(Batch = 4);
    /// dim!(Hidden = 8);
    /// dim!(Ffn = 16);
    /// let x: Tensor<(Batch, Hidden), f32> = Tensor::randn((Batch, Hidden), 0);
    /// let w: Tensor<(Ffn, Hidden), f32> = Tensor::randn((Ffn, Hidden), 1);
    /// let y: Tensor<(Batch, Ffn), f32> = x.matmul(w.t());
    /// assert_eq!(y.dims(), [4, 16]);
    /// ```
    #[track_caller]
    pub fn matmul<S2: Shape, E2: FloatDtype, T2: TapeState, O: Shape>(
        self,
        rhs: Tensor<S2, E2, D, T2>,
    ) -> Tensor<O, E, D, <T as Merge<T2>>::Out>
    where
        S: MatMulShapes<S2, Out = O>,
        E: SameDtype<E2, Matmul>,
        T: Merge<T2>,
    {
        or_panic(self.try_matmul(rhs))
    }

    /// Swaps the last two axes: `(M, N)` → `(N, M)`, `(B, H, M, N)` →
    /// `(B, H, N, M)`. A view (only strides change, no copy); the gradient is
    /// swapped back.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U3), f32>::from_vec(Default::default(), vec![1., 2., 3., 4., 5., 6.]).unwrap();
    /// let y = x.t();
    /// assert_eq!(y.dims(), [3, 2]);
    /// assert!(!y.is_contiguous());
    /// assert_eq!(y.to_vec(), [1., 4., 2., 5., 3., 6.]);
    /// ```
    pub fn t<O: Shape>(self) -> Tensor<O, E, D, T>
    where
        S: TransposeShape<Out = O>,
    {
        let layout = swap_last(&self.layout);
        let shape = self.shape.transposed();
        let out_id = TensorId::fresh();
        let (in_id, dims, dev) = (self.id, shape.dims(), self.device.clone());
        let tape = record::<T>(out_id, &[self.tape.node()], move |g| {
            if let Some(gy) = g.take_on::<D, E>(out_id) {
                let gx = device_ok(dev.contiguous(&gy, &swap_last(&Layout::contiguous(&dims))));
                g.accumulate_on(&dev, in_id, gx);
            }
        });
        Tensor {
            shape,
            layout,
            data: self.data,
            id: out_id,
            tape,
            device: self.device,
        }
    }
}
