//! Transformer feed-forward blocks: [`FeedForward`] (`Linear -> act ->
//! Linear`, GPT-2's MLP) and [`GatedFeedForward`] (`down(act(gate(x)) *
//! up(x))`: [`SwiGlu`] in LLaMA, [`GeGlu`] in Gemma).

use zerfoo_kernels::{Backend, Cpu, FloatDtype};

use super::{Activation, Forward, ForwardAct, Gelu, GeluTanh, Linear, Silu};
use crate::autograd::TapeState;
use crate::shape::{Dim, Shape};
use crate::tensor::Tensor;

/// `fc2(act(fc1(x)))` from width `D` through `H` hidden units back to `D`
/// (`act` = GELU by default), over the last axis of `x`.
///
/// ```
/// use zerfoo::nn::{FeedForward, Forward, Module};
/// use zerfoo::prelude::*;
/// dim!(Model = 4);
/// dim!(Hidden = 16);
/// let mlp: FeedForward<Model, Hidden, f32> = FeedForward::new(Model, Hidden, true, 0);
/// let x: Tensor<(Dyn, U3, Model), f32> = Tensor::randn((Dyn(2), U3::default(), Model), 1);
/// assert_eq!(mlp.forward(x).dims(), [2, 3, 4]);
/// assert_eq!(mlp.num_params(), 4 * 16 + 16 + 16 * 4 + 4);
/// ```
#[derive(crate::nn::Module, Clone, Debug)]
pub struct FeedForward<D: Dim, H: Dim, E: FloatDtype, A: Activation = Gelu, Dv: Backend = Cpu> {
    /// `D -> H`.
    pub fc1: Linear<D, H, E, Dv>,
    /// The nonlinearity (no parameters).
    pub act: A,
    /// `H -> D`.
    pub fc2: Linear<H, D, E, Dv>,
}

impl<D: Dim, H: Dim, E: FloatDtype, A: Activation> FeedForward<D, H, E, A> {
    /// PyTorch's default initialization of both layers, from a seed.
    pub fn new(d: D, h: H, bias: bool, seed: u64) -> Self {
        FeedForward {
            fc1: Linear::new(d, h, bias, seed),
            act: A::default(),
            fc2: Linear::new(h, d, bias, seed.wrapping_add(2)),
        }
    }
}

impl<D: Dim, H: Dim, E: FloatDtype, A: Activation, Dv: Backend> FeedForward<D, H, E, A, Dv> {
    /// A block from its two layers.
    pub fn from_parts(fc1: Linear<D, H, E, Dv>, fc2: Linear<H, D, E, Dv>) -> Self {
        FeedForward {
            fc1,
            act: A::default(),
            fc2,
        }
    }
}

impl<D, H, E, A, Dv, S, S2, T> Forward<Tensor<S, E, Dv, T>> for FeedForward<D, H, E, A, Dv>
where
    D: Dim,
    H: Dim,
    E: FloatDtype,
    A: Activation,
    Dv: Backend,
    S: Shape,
    S2: Shape,
    T: TapeState,
    Linear<D, H, E, Dv>: ForwardAct<Tensor<S, E, Dv, T>, Output = Tensor<S2, E, Dv, T>>,
    Linear<H, D, E, Dv>: Forward<Tensor<S2, E, Dv, T>>,
{
    type Output = <Linear<H, D, E, Dv> as Forward<Tensor<S2, E, Dv, T>>>::Output;
    fn forward(&self, x: Tensor<S, E, Dv, T>) -> Self::Output {
        // The activation inside fc1's op (and its derivative inside fc2's
        // backward) where it can be.
        self.fc2.forward(self.fc1.forward_act(x, self.act))
    }
}

/// A gated feed-forward block, `w2(act(w1(x)) * w3(x))`, with LLaMA's
/// names: `w1` the gate (`D -> H`), `w3` the up projection (`D -> H`), `w2`
/// the down projection (`H -> D`) — HF's `gate_proj`, `up_proj`,
/// `down_proj`. With `act` = SiLU it is [`SwiGlu`], with GELU [`GeGlu`].
///
/// ```
/// use zerfoo::nn::{Forward, Module, SwiGlu};
/// use zerfoo::prelude::*;
/// dim!(Model = 4);
/// dim!(Hidden = 6);
/// let ffn: SwiGlu<Model, Hidden, f64> = SwiGlu::new(Model, Hidden, false, 0);
/// let x: Tensor<(U3, Model), f64> = Tensor::randn(Default::default(), 1);
/// assert_eq!(ffn.forward(x).dims(), [3, 4]);
/// let paths: Vec<String> = ffn.param_info().into_iter().map(|p| p.path).collect();
/// assert_eq!(paths, ["w1.weight", "w2.weight", "w3.weight"]);
/// ```
#[derive(crate::nn::Module, Clone, Debug)]
pub struct GatedFeedForward<D: Dim, H: Dim, E: FloatDtype, A: Activation, Dv: Backend = Cpu> {
    /// The gate, `D -> H`.
    pub w1: Linear<D, H, E, Dv>,
    /// The down projection, `H -> D`.
    pub w2: Linear<H, D, E, Dv>,
    /// The up projection, `D -> H`.
    pub w3: Linear<D, H, E, Dv>,
    /// The gate's nonlinearity (no parameters).
    pub act: A,
}

/// LLaMA's feed-forward block: `w2(silu(w1(x)) * w3(x))`.
pub type SwiGlu<D, H, E> = GatedFeedForward<D, H, E, Silu>;
/// GELU-gated feed-forward (exact GELU): `w2(gelu(w1(x)) * w3(x))`.
pub type GeGlu<D, H, E> = GatedFeedForward<D, H, E, Gelu>;
/// Gemma's GELU-gated feed-forward (tanh GELU).
pub type GeGluTanh<D, H, E> = GatedFeedForward<D, H, E, GeluTanh>;

impl<D: Dim, H: Dim, E: FloatDtype, A: Activation> GatedFeedForward<D, H, E, A> {
    /// PyTorch's default initialization of the three layers, from a seed.
    pub fn new(d: D, h: H, bias: bool, seed: u64) -> Self {
        GatedFeedForward {
            w1: Linear::new(d, h, bias, seed),
            w2: Linear::new(h, d, bias, seed.wrapping_add(2)),
            w3: Linear::new(d, h, bias, seed.wrapping_add(4)),
            act: A::default(),
        }
    }
}

impl<D: Dim, H: Dim, E: FloatDtype, A: Activation, Dv: Backend> GatedFeedForward<D, H, E, A, Dv> {
    /// A block from its gate, down and up layers.
    pub fn from_parts(
        w1: Linear<D, H, E, Dv>,
        w2: Linear<H, D, E, Dv>,
        w3: Linear<D, H, E, Dv>,
    ) -> Self {
        GatedFeedForward {
            w1,
            w2,
            w3,
            act: A::default(),
        }
    }
}

impl<D, H, E, A, Dv, S, S2, T> Forward<Tensor<S, E, Dv, T>> for GatedFeedForward<D, H, E, A, Dv>
where
    D: Dim,
    H: Dim,
    E: FloatDtype,
    A: Activation,
    Dv: Backend,
    S: Shape,
    S2: Shape,
    T: TapeState,
    Linear<D, H, E, Dv>: ForwardAct<Tensor<S, E, Dv, T>, Output = Tensor<S2, E, Dv, T>>,
    Linear<H, D, E, Dv>: Forward<Tensor<S2, E, Dv, T>>,
{
    type Output = <Linear<H, D, E, Dv> as Forward<Tensor<S2, E, Dv, T>>>::Output;
    fn forward(&self, x: Tensor<S, E, Dv, T>) -> Self::Output {
        // The gate's activation inside w1's product (the backward is the
        // activation's own: its output feeds a product of tensors, not a layer).
        let gate = self.w1.forward_act(x.clone(), self.act);
        let up = self.w3.forward(x);
        self.w2.forward(gate * up)
    }
}
