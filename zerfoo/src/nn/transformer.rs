//! Pre-norm transformer blocks and stacks: [`TransformerBlock`] (=
//! [`EncoderBlock`]: `x + attn(norm1(x))`, then `x + ffn(norm2(x))`),
//! [`DecoderBlock`] (causal self-attention, cross-attention over an encoder's
//! memory, feed-forward), and the stacks [`Encoder`] and [`Decoder`]
//! (`layers.3.attn.q_proj.weight`, then a final `norm`).
//!
//! The norm is a type parameter (`N`, [`LayerNorm`] by default, or
//! [`RmsNorm`]); the feed-forward network is a GELU MLP, [`BlockMlp`].

// Typed shapes in signatures are the point of these layers.
#![allow(clippy::type_complexity)]

use zerfoo_kernels::{Backend, Cpu, FloatDtype};

use super::attention::{
    into_tape, padding_vec, retype, sub_seed, Attention, AttentionConfig, KvCache, KvHeadsDivide,
    LayerCache, MultiHeadAttention,
};
use super::{
    Forward, ForwardAct, ForwardResidual, Gelu, GeluTanh, LayerNorm, Linear, Module, RmsNorm,
};
use crate::autograd::{Merge, TapeState};
use crate::error::or_panic;
use crate::shape::{Dim, SameDim, Shape};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// A normalization layer a block can be built with ([`LayerNorm`] or
/// [`RmsNorm`]), over the last axis `D`.
pub trait BlockNorm<D: Dim, E: FloatDtype, Dv: Backend = Cpu>:
    Module + Clone + core::fmt::Debug
{
    /// Normalizes `(B, T, D)` over the last axis.
    fn normalize<B: Dim, T: Dim, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D), E, Dv, Tp>,
    ) -> Tensor<(B, T, D), E, Dv, Tp>;
}

/// A [`BlockNorm`] the block constructors can build (on the CPU; move the
/// model with [`Module::to_device`]).
pub trait NewBlockNorm<D: Dim, E: FloatDtype>: BlockNorm<D, E, Cpu> {
    /// A fresh norm of width `d` (with a bias when `bias` and the kind has one).
    fn new_norm(d: D, eps: f64, bias: bool) -> Self;
}

impl<D: Dim, E: FloatDtype, Dv: Backend> BlockNorm<D, E, Dv> for LayerNorm<D, E, Dv> {
    fn normalize<B: Dim, T: Dim, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D), E, Dv, Tp>,
    ) -> Tensor<(B, T, D), E, Dv, Tp> {
        self.forward(x)
    }
}

impl<D: Dim, E: FloatDtype> NewBlockNorm<D, E> for LayerNorm<D, E> {
    fn new_norm(d: D, eps: f64, bias: bool) -> Self {
        if bias {
            LayerNorm::new(d, eps)
        } else {
            LayerNorm::without_bias(d, eps)
        }
    }
}

impl<D: Dim, E: FloatDtype, Dv: Backend> BlockNorm<D, E, Dv> for RmsNorm<D, E, Dv> {
    fn normalize<B: Dim, T: Dim, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D), E, Dv, Tp>,
    ) -> Tensor<(B, T, D), E, Dv, Tp> {
        self.forward(x)
    }
}

impl<D: Dim, E: FloatDtype> NewBlockNorm<D, E> for RmsNorm<D, E> {
    fn new_norm(d: D, eps: f64, _bias: bool) -> Self {
        RmsNorm::new(d, eps)
    }
}

#[derive(crate::nn::Module, Clone, Debug)]
pub struct BlockMlp<D: Dim, F: Dim, E: FloatDtype, Dv: Backend = Cpu> {
    /// `D -> F`.
    pub fc1: Linear<D, F, E, Dv>,
    /// `F -> D`.
    pub fc2: Linear<F, D, E, Dv>,
    /// GELU's tanh approximation (GPT-2) instead of the exact erf form.
    #[module(skip)]
    pub gelu_tanh: bool,
}

impl<D: Dim, F: Dim, E: FloatDtype> BlockMlp<D, F, E> {
    /// PyTorch's default `nn.Linear` initialization from `seed`, exact GELU.
    pub fn new(d: D, f: F, bias: bool, seed: u64) -> Self {
        BlockMlp {
            fc1: Linear::new(d, f, bias, sub_seed(seed, 0)),
            fc2: Linear::new(f, d, bias, sub_seed(seed, 1)),
            gelu_tanh: false,
        }
    }
}

impl<D, F, E, Dv, X, S1, Tp> Forward<X> for BlockMlp<D, F, E, Dv>
where
    D: Dim,
    F: Dim,
    E: FloatDtype,
    Dv: Backend,
    S1: Shape,
    Tp: TapeState,
    Linear<D, F, E, Dv>: ForwardAct<X, Output = Tensor<S1, E, Dv, Tp>>,
    Linear<F, D, E, Dv>: Forward<Tensor<S1, E, Dv, Tp>>,
{
    type Output = <Linear<F, D, E, Dv> as Forward<Tensor<S1, E, Dv, Tp>>>::Output;
    fn forward(&self, x: X) -> Self::Output {
        self.fc2.forward(self.hidden(x))
    }
}

impl<D: Dim, F: Dim, E: FloatDtype, Dv: Backend> BlockMlp<D, F, E, Dv> {
    /// `residual + self.forward(x)` on `(B, T, D)`, the residual added by
    /// `fc2`'s product as it finishes each part (see
    /// [`ForwardResidual`]).
    pub fn forward_residual<B: Dim, T: Dim, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D), E, Dv, Tp>,
        residual: Tensor<(B, T, D), E, Dv, Tp>,
    ) -> Tensor<(B, T, D), E, Dv, Tp> {
        self.fc2.forward_residual(self.hidden(x), residual)
    }

    /// `gelu(fc1(x))`, the GELU inside fc1's op (and its derivative inside
    /// fc2's backward).
    fn hidden<X, S1: Shape, Tp: TapeState>(&self, x: X) -> Tensor<S1, E, Dv, Tp>
    where
        Linear<D, F, E, Dv>: ForwardAct<X, Output = Tensor<S1, E, Dv, Tp>>,
    {
        if self.gelu_tanh {
            self.fc1.forward_act(x, GeluTanh)
        } else {
            self.fc1.forward_act(x, Gelu)
        }
    }
}

/// How a block is built: its attention, the norms' `eps`, the MLP's biases
/// and GELU form.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockConfig {
    /// The (self-)attention.
    pub attn: AttentionConfig,
    /// The norms' epsilon (default `1e-5`).
    pub eps: f64,
    /// Biases in the MLP (default `true`).
    pub mlp_bias: bool,
    /// Biases in the LayerNorms (default `true`; RMS norms have none).
    pub norm_bias: bool,
    /// GELU's tanh approximation in the MLP (default `false`: exact).
    pub gelu_tanh: bool,
}

impl Default for BlockConfig {
    fn default() -> Self {
        BlockConfig::new(AttentionConfig::default())
    }
}

impl BlockConfig {
    /// `attn` with the defaults for the rest.
    pub fn new(attn: AttentionConfig) -> Self {
        BlockConfig {
            attn,
            eps: 1e-5,
            mlp_bias: true,
            norm_bias: true,
            gelu_tanh: false,
        }
    }
    /// The norms' epsilon.
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// Biases in the MLP, or none.
    pub fn mlp_bias(mut self, bias: bool) -> Self {
        self.mlp_bias = bias;
        self
    }
    /// Biases in the LayerNorms, or none.
    pub fn norm_bias(mut self, bias: bool) -> Self {
        self.norm_bias = bias;
        self
    }
    /// GELU's tanh approximation in the MLP.
    pub fn gelu_tanh(mut self, tanh: bool) -> Self {
        self.gelu_tanh = tanh;
        self
    }
}

fn mlp<D: Dim, F: Dim, E: FloatDtype>(d: D, f: F, c: &BlockConfig, seed: u64) -> BlockMlp<D, F, E> {
    BlockMlp {
        gelu_tanh: c.gelu_tanh,
        ..BlockMlp::new(d, f, c.mlp_bias, seed)
    }
}

/// A pre-norm transformer block: `x = x + attn(norm1(x))`, then
/// `x = x + ffn(norm2(x))`, on `(B, T, D)`. Causal (GPT), bidirectional
/// (BERT-style encoder, with a padding mask), rotary, windowed or
/// grouped-query as its [`AttentionConfig`] says.
///
/// Parameters: `norm1.*`, `attn.{q,k,v,o}_proj.*` (and `attn.{q,k}_norm.weight`),
/// `norm2.*`, `ffn.fc1.*`, `ffn.fc2.*`.
///
/// ```
/// use zerfoo::nn::{AttentionConfig, BlockConfig, Forward, Module, TransformerBlock};
/// use zerfoo::prelude::*;
/// dim!(Model = 8);
/// dim!(Heads = 2);
/// dim!(HeadDim = 4);
/// dim!(Ffn = 32);
/// let cfg = BlockConfig::new(AttentionConfig::default().causal(true));
/// let block: TransformerBlock<Model, Heads, HeadDim, Ffn, f32> =
///     TransformerBlock::new(Model, Heads, HeadDim, Heads, Ffn, cfg, 0);
/// let x: Tensor<(U2, Dyn, Model), f32> = Tensor::randn((U2::default(), Dyn(3), Model), 1);
/// assert_eq!(block.forward(x).dims(), [2, 3, 8]);
/// assert_eq!(block.param_info()[2].path, "attn.q_proj.weight");
/// ```
#[derive(crate::nn::Module, Clone, Debug)]
pub struct TransformerBlock<
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: Module = LayerNorm<D, E>,
    KvH: Dim = H,
    Dv: Backend = Cpu,
> {
    /// Before the attention.
    pub norm1: N,
    /// Self-attention.
    pub attn: MultiHeadAttention<D, H, Hd, E, KvH, Dv>,
    /// Before the feed-forward network.
    pub norm2: N,
    /// The feed-forward network.
    pub ffn: BlockMlp<D, F, E, Dv>,
}

/// An encoder block is a [`TransformerBlock`] (usually bidirectional, with a
/// padding mask: [`TransformerBlock::try_forward_padded`]).
pub type EncoderBlock<D, H, Hd, F, E, N = LayerNorm<D, E>, KvH = H, Dv = Cpu> =
    TransformerBlock<D, H, Hd, F, E, N, KvH, Dv>;

impl<D, H, Hd, F, E, N, KvH> TransformerBlock<D, H, Hd, F, E, N, KvH>
where
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: NewBlockNorm<D, E>,
    KvH: Dim,
{
    /// A block from `seed` (PyTorch's default `nn.Linear` initialization,
    /// norms at ones and zeros). Errors as [`MultiHeadAttention::try_new`].
    pub fn try_new(
        d: D,
        heads: H,
        head_dim: Hd,
        kv_heads: KvH,
        ffn: F,
        config: BlockConfig,
        seed: u64,
    ) -> Result<Self>
    where
        KvH: KvHeadsDivide<H>,
    {
        Ok(TransformerBlock {
            norm1: N::new_norm(d, config.eps, config.norm_bias),
            attn: MultiHeadAttention::try_new(
                d,
                heads,
                head_dim,
                kv_heads,
                config.attn,
                sub_seed(seed, 0),
            )?,
            norm2: N::new_norm(d, config.eps, config.norm_bias),
            ffn: mlp(d, ffn, &config, sub_seed(seed, 1)),
        })
    }

    /// Panicking twin of [`try_new`](Self::try_new).
    #[track_caller]
    pub fn new(
        d: D,
        heads: H,
        head_dim: Hd,
        kv_heads: KvH,
        ffn: F,
        config: BlockConfig,
        seed: u64,
    ) -> Self
    where
        KvH: KvHeadsDivide<H>,
    {
        or_panic(Self::try_new(
            d, heads, head_dim, kv_heads, ffn, config, seed,
        ))
    }
}

impl<D, H, Hd, F, E, N, KvH, Dv> TransformerBlock<D, H, Hd, F, E, N, KvH, Dv>
where
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: BlockNorm<D, E, Dv>,
    KvH: Dim,
    Dv: Backend,
{
    /// The block on `(B, T, D)`; an error if a `Dyn` width is not `D`.
    pub fn try_forward<B: Dim, T: Dim, D2, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tp>,
    ) -> Result<Tensor<(B, T, D), E, Dv, Tp>>
    where
        D2: SameDim<D, Attention>,
    {
        let (b, t, _) = x.shape();
        self.run(
            retype("transformer block", x, (b, t, self.attn.d_model()))?,
            None,
        )
    }

    /// The block with a key padding mask `(B, T)` (`true` = padded).
    pub fn try_forward_padded<B: Dim, T: Dim, D2, Bm, Tm, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tp>,
        padding: &Tensor<(Bm, Tm), bool>,
    ) -> Result<Tensor<(B, T, D), E, Dv, Tp>>
    where
        D2: SameDim<D, Attention>,
        Bm: SameDim<B, Attention>,
        Tm: SameDim<T, Attention>,
    {
        let (b, t, _) = x.shape();
        let pad = padding_vec(padding, b.size(), t.size())?;
        self.run(
            retype("transformer block", x, (b, t, self.attn.d_model()))?,
            Some(&pad),
        )
    }

    /// Panicking twin of [`try_forward_padded`](Self::try_forward_padded).
    #[track_caller]
    pub fn forward_padded<B: Dim, T: Dim, D2, Bm, Tm, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tp>,
        padding: &Tensor<(Bm, Tm), bool>,
    ) -> Tensor<(B, T, D), E, Dv, Tp>
    where
        D2: SameDim<D, Attention>,
        Bm: SameDim<B, Attention>,
        Tm: SameDim<T, Attention>,
    {
        or_panic(self.try_forward_padded(x, padding))
    }

    /// Incremental decoding: the next `T` positions, attending over the
    /// cached ones (see [`MultiHeadAttention::try_forward_cached`]).
    pub fn try_forward_cached<B: Dim, T: Dim, D2>(
        &self,
        x_new: Tensor<(B, T, D2), E, Dv>,
        cache: &mut LayerCache<E, Dv>,
    ) -> Result<Tensor<(B, T, D), E, Dv>>
    where
        D2: SameDim<D, Attention>,
    {
        let (b, t, _) = x_new.shape();
        let x = retype("transformer block", x_new, (b, t, self.attn.d_model()))?;
        let h = self
            .attn
            .try_forward_cached(self.norm1.normalize(x.clone()), cache)?;
        let x = x + h;
        let f = self.ffn.forward(self.norm2.normalize(x.clone()));
        Ok(x + f)
    }

    /// Panicking twin of [`try_forward_cached`](Self::try_forward_cached).
    #[track_caller]
    pub fn forward_cached<B: Dim, T: Dim, D2>(
        &self,
        x_new: Tensor<(B, T, D2), E, Dv>,
        cache: &mut LayerCache<E, Dv>,
    ) -> Tensor<(B, T, D), E, Dv>
    where
        D2: SameDim<D, Attention>,
    {
        or_panic(self.try_forward_cached(x_new, cache))
    }

    fn run<B: Dim, T: Dim, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D), E, Dv, Tp>,
        padding: Option<&[bool]>,
    ) -> Result<Tensor<(B, T, D), E, Dv, Tp>> {
        // Each residual added by the output projection's product.
        let h = self.norm1.normalize(x.clone());
        let x = self.attn.self_attention_residual(h, x, padding)?;
        let f = self.norm2.normalize(x.clone());
        Ok(self.ffn.forward_residual(f, x))
    }
}

impl<D, H, Hd, F, E, N, KvH, Dv, B, T, D2, Tp> Forward<Tensor<(B, T, D2), E, Dv, Tp>>
    for TransformerBlock<D, H, Hd, F, E, N, KvH, Dv>
where
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: BlockNorm<D, E, Dv>,
    KvH: Dim,
    Dv: Backend,
    B: Dim,
    T: Dim,
    D2: Dim + SameDim<D, Attention>,
    Tp: TapeState,
{
    type Output = Tensor<(B, T, D), E, Dv, Tp>;
    #[track_caller]
    fn forward(&self, x: Tensor<(B, T, D2), E, Dv, Tp>) -> Self::Output {
        or_panic(self.try_forward(x))
    }
}

/// A pre-norm decoder block: `x = x + self_attn(norm1(x))` (causal), `x = x
/// + cross_attn(norm2(x), memory)`, `x = x + ffn(norm3(x))`.
///
/// Parameters: `norm1.*`, `self_attn.*`, `norm2.*`, `cross_attn.*`,
/// `norm3.*`, `ffn.*`.
#[derive(crate::nn::Module, Clone, Debug)]
pub struct DecoderBlock<
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: Module = LayerNorm<D, E>,
    KvH: Dim = H,
    Dv: Backend = Cpu,
> {
    /// Before the self-attention.
    pub norm1: N,
    /// Causal self-attention.
    pub self_attn: MultiHeadAttention<D, H, Hd, E, KvH, Dv>,
    /// Before the cross-attention.
    pub norm2: N,
    /// Attention over the encoder's memory.
    pub cross_attn: MultiHeadAttention<D, H, Hd, E, KvH, Dv>,
    /// Before the feed-forward network.
    pub norm3: N,
    /// The feed-forward network.
    pub ffn: BlockMlp<D, F, E, Dv>,
}

impl<D, H, Hd, F, E, N, KvH> DecoderBlock<D, H, Hd, F, E, N, KvH>
where
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: NewBlockNorm<D, E>,
    KvH: Dim,
{
    /// A block from `seed`. The self-attention is `config.attn` made
    /// causal; the cross-attention is `config.attn` without causality,
    /// rotary embedding or window.
    pub fn try_new(
        d: D,
        heads: H,
        head_dim: Hd,
        kv_heads: KvH,
        ffn: F,
        config: BlockConfig,
        seed: u64,
    ) -> Result<Self>
    where
        KvH: KvHeadsDivide<H>,
    {
        let self_cfg = config.attn.causal(true);
        let cross_cfg = AttentionConfig {
            causal: false,
            rope_base: None,
            window: None,
            ..config.attn
        };
        Ok(DecoderBlock {
            norm1: N::new_norm(d, config.eps, config.norm_bias),
            self_attn: MultiHeadAttention::try_new(
                d,
                heads,
                head_dim,
                kv_heads,
                self_cfg,
                sub_seed(seed, 0),
            )?,
            norm2: N::new_norm(d, config.eps, config.norm_bias),
            cross_attn: MultiHeadAttention::try_new(
                d,
                heads,
                head_dim,
                kv_heads,
                cross_cfg,
                sub_seed(seed, 1),
            )?,
            norm3: N::new_norm(d, config.eps, config.norm_bias),
            ffn: mlp(d, ffn, &config, sub_seed(seed, 2)),
        })
    }

    /// Panicking twin of [`try_new`](Self::try_new).
    #[track_caller]
    pub fn new(
        d: D,
        heads: H,
        head_dim: Hd,
        kv_heads: KvH,
        ffn: F,
        config: BlockConfig,
        seed: u64,
    ) -> Self
    where
        KvH: KvHeadsDivide<H>,
    {
        or_panic(Self::try_new(
            d, heads, head_dim, kv_heads, ffn, config, seed,
        ))
    }
}

impl<D, H, Hd, F, E, N, KvH, Dv> DecoderBlock<D, H, Hd, F, E, N, KvH, Dv>
where
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: BlockNorm<D, E, Dv>,
    KvH: Dim,
    Dv: Backend,
{
    /// The block on `x` `(B, T, D)` with the encoder's `memory` `(B, Tk, D)`;
    /// optional padding masks `(B, T)` for `x` and `(B, Tk)` for `memory`
    /// (`true` = padded).
    pub fn try_forward_masked<B, T, D2, Bm, Tk, Dm, Tx, Tm>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tx>,
        memory: Tensor<(Bm, Tk, Dm), E, Dv, Tm>,
        padding: Option<&Tensor<(B, T), bool>>,
        memory_padding: Option<&Tensor<(Bm, Tk), bool>>,
    ) -> Result<Tensor<(B, T, D), E, Dv, <Tx as Merge<Tm>>::Out>>
    where
        B: Dim,
        T: Dim,
        D2: Dim + SameDim<D, Attention>,
        Bm: Dim + SameDim<B, Attention>,
        Tk: Dim,
        Dm: Dim + SameDim<D, Attention>,
        Tx: TapeState + Merge<Tm>,
        Tm: TapeState,
    {
        let (x, memory, pad, mpad) =
            decoder_inputs(self.self_attn.d_model(), x, memory, padding, memory_padding)?;
        self.run(x, memory, pad.as_deref(), mpad.as_deref())
    }

    /// [`try_forward_masked`](Self::try_forward_masked) without masks.
    pub fn try_forward<B, T, D2, Bm, Tk, Dm, Tx, Tm>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tx>,
        memory: Tensor<(Bm, Tk, Dm), E, Dv, Tm>,
    ) -> Result<Tensor<(B, T, D), E, Dv, <Tx as Merge<Tm>>::Out>>
    where
        B: Dim,
        T: Dim,
        D2: Dim + SameDim<D, Attention>,
        Bm: Dim + SameDim<B, Attention>,
        Tk: Dim,
        Dm: Dim + SameDim<D, Attention>,
        Tx: TapeState + Merge<Tm>,
        Tm: TapeState,
    {
        self.try_forward_masked(x, memory, None, None)
    }

    /// Incremental decoding: the next `T` positions of `x_new`, attending
    /// causally over the cached ones and fully over `memory` (with an
    /// optional `(B, Tk)` memory padding).
    pub fn try_forward_cached<B, T, D2, Bm, Tk, Dm>(
        &self,
        x_new: Tensor<(B, T, D2), E, Dv>,
        memory: Tensor<(Bm, Tk, Dm), E, Dv>,
        memory_padding: Option<&Tensor<(Bm, Tk), bool>>,
        cache: &mut LayerCache<E, Dv>,
    ) -> Result<Tensor<(B, T, D), E, Dv>>
    where
        B: Dim,
        T: Dim,
        D2: Dim + SameDim<D, Attention>,
        Bm: Dim + SameDim<B, Attention>,
        Tk: Dim,
        Dm: Dim + SameDim<D, Attention>,
    {
        let (x, memory, _, mpad) = decoder_inputs(
            self.self_attn.d_model(),
            x_new,
            memory,
            None,
            memory_padding,
        )?;
        self.run_cached(x, memory, mpad.as_deref(), cache)
    }

    fn run<B: Dim, T: Dim, Tk: Dim, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D), E, Dv, Tp>,
        memory: Tensor<(B, Tk, D), E, Dv, Tp>,
        padding: Option<&[bool]>,
        memory_padding: Option<&[bool]>,
    ) -> Result<Tensor<(B, T, D), E, Dv, Tp>> {
        let h = self
            .self_attn
            .self_attention(self.norm1.normalize(x.clone()), padding)?;
        let x = x + h;
        let c = self.cross_attn.cross_attention(
            self.norm2.normalize(x.clone()),
            memory,
            memory_padding,
        )?;
        let x = x + c;
        let f = self.ffn.forward(self.norm3.normalize(x.clone()));
        Ok(x + f)
    }

    fn run_cached<B: Dim, T: Dim, Tk: Dim>(
        &self,
        x: Tensor<(B, T, D), E, Dv>,
        memory: Tensor<(B, Tk, D), E, Dv>,
        memory_padding: Option<&[bool]>,
        cache: &mut LayerCache<E, Dv>,
    ) -> Result<Tensor<(B, T, D), E, Dv>> {
        let h = self
            .self_attn
            .try_forward_cached(self.norm1.normalize(x.clone()), cache)?;
        let x = x + h;
        let c = self.cross_attn.cross_attention(
            self.norm2.normalize(x.clone()),
            memory,
            memory_padding,
        )?;
        let x = x + c;
        let f = self.ffn.forward(self.norm3.normalize(x.clone()));
        Ok(x + f)
    }
}

/// Checks and converts a decoder's inputs: `x` to `(B, T, D)` and `memory`
/// to `(B, Tk, D)` on their merged tape, masks to row-major booleans.
fn decoder_inputs<D, E, Dv, B, T, D2, Bm, Tk, Dm, Tx, Tm>(
    d: D,
    x: Tensor<(B, T, D2), E, Dv, Tx>,
    memory: Tensor<(Bm, Tk, Dm), E, Dv, Tm>,
    padding: Option<&Tensor<(B, T), bool>>,
    memory_padding: Option<&Tensor<(Bm, Tk), bool>>,
) -> Result<(
    Tensor<(B, T, D), E, Dv, <Tx as Merge<Tm>>::Out>,
    Tensor<(B, Tk, D), E, Dv, <Tx as Merge<Tm>>::Out>,
    Option<Vec<bool>>,
    Option<Vec<bool>>,
)>
where
    D: Dim,
    E: FloatDtype,
    Dv: Backend,
    B: Dim,
    T: Dim,
    D2: Dim,
    Bm: Dim,
    Tk: Dim,
    Dm: Dim,
    Tx: TapeState + Merge<Tm>,
    Tm: TapeState,
{
    let (b, t, _) = x.shape();
    let tk = memory.shape().1;
    let x = retype("decoder", into_tape(x), (b, t, d))?;
    let memory = retype("decoder memory", into_tape(memory), (b, tk, d))?;
    let pad = padding
        .map(|p| padding_vec(p, b.size(), t.size()))
        .transpose()?;
    let mpad = memory_padding
        .map(|p| padding_vec(p, b.size(), tk.size()))
        .transpose()?;
    Ok((x, memory, pad, mpad))
}

impl<D, H, Hd, F, E, N, KvH, Dv, B, T, D2, Bm, Tk, Dm, Tx, Tm>
    Forward<(
        Tensor<(B, T, D2), E, Dv, Tx>,
        Tensor<(Bm, Tk, Dm), E, Dv, Tm>,
    )> for DecoderBlock<D, H, Hd, F, E, N, KvH, Dv>
where
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: BlockNorm<D, E, Dv>,
    KvH: Dim,
    Dv: Backend,
    B: Dim,
    T: Dim,
    D2: Dim + SameDim<D, Attention>,
    Bm: Dim + SameDim<B, Attention>,
    Tk: Dim,
    Dm: Dim + SameDim<D, Attention>,
    Tx: TapeState + Merge<Tm>,
    Tm: TapeState,
{
    type Output = Tensor<(B, T, D), E, Dv, <Tx as Merge<Tm>>::Out>;
    /// `(x, memory)`; panics with the [`DecoderBlock::try_forward`] message.
    #[track_caller]
    fn forward(
        &self,
        (x, memory): (
            Tensor<(B, T, D2), E, Dv, Tx>,
            Tensor<(Bm, Tk, Dm), E, Dv, Tm>,
        ),
    ) -> Self::Output {
        or_panic(self.try_forward(x, memory))
    }
}

/// A stack of [`TransformerBlock`]s and a final norm: `norm(layers[n-1](...
/// layers[0](x)))`. Bidirectional (an encoder) or causal (a decoder-only
/// GPT stack) as the blocks' attention says. Paths: `layers.3.attn.q_proj.weight`, `norm.weight`.
///
/// ```
/// use zerfoo::nn::{AttentionConfig, BlockConfig, Encoder, Forward, Module};
/// use zerfoo::prelude::*;
/// dim!(Model = 8);
/// dim!(Heads = 2);
/// dim!(HeadDim = 4);
/// dim!(Ffn = 16);
/// let enc: Encoder<Model, Heads, HeadDim, Ffn, f32> =
///     Encoder::new(2, Model, Heads, HeadDim, Heads, Ffn, BlockConfig::default(), 0);
/// let x: Tensor<(U1, U3, Model), f32> = Tensor::randn(Default::default(), 1);
/// assert_eq!(enc.forward(x).dims(), [1, 3, 8]);
/// assert!(enc.param_info().iter().any(|p| p.path == "layers.1.ffn.fc2.bias"));
/// ```
#[derive(crate::nn::Module, Clone, Debug)]
pub struct Encoder<
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: Module = LayerNorm<D, E>,
    KvH: Dim = H,
    Dv: Backend = Cpu,
> {
    /// The blocks, in order.
    pub layers: Vec<TransformerBlock<D, H, Hd, F, E, N, KvH, Dv>>,
    /// The final norm.
    pub norm: N,
}

impl<D, H, Hd, F, E, N, KvH> Encoder<D, H, Hd, F, E, N, KvH>
where
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: NewBlockNorm<D, E>,
    KvH: Dim,
{
    /// `num_layers` blocks built from `config` (each from its own seed
    /// derived from `seed`) and a final norm.
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        num_layers: usize,
        d: D,
        heads: H,
        head_dim: Hd,
        kv_heads: KvH,
        ffn: F,
        config: BlockConfig,
        seed: u64,
    ) -> Result<Self>
    where
        KvH: KvHeadsDivide<H>,
    {
        let layers = (0..num_layers as u64)
            .map(|i| {
                TransformerBlock::try_new(
                    d,
                    heads,
                    head_dim,
                    kv_heads,
                    ffn,
                    config,
                    sub_seed(seed, i),
                )
            })
            .collect::<Result<_>>()?;
        Ok(Encoder {
            layers,
            norm: N::new_norm(d, config.eps, config.norm_bias),
        })
    }

    /// Panicking twin of [`try_new`](Self::try_new).
    #[allow(clippy::too_many_arguments)]
    #[track_caller]
    pub fn new(
        num_layers: usize,
        d: D,
        heads: H,
        head_dim: Hd,
        kv_heads: KvH,
        ffn: F,
        config: BlockConfig,
        seed: u64,
    ) -> Self
    where
        KvH: KvHeadsDivide<H>,
    {
        or_panic(Self::try_new(
            num_layers, d, heads, head_dim, kv_heads, ffn, config, seed,
        ))
    }
}

impl<D, H, Hd, F, E, N, KvH, Dv> Encoder<D, H, Hd, F, E, N, KvH, Dv>
where
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: BlockNorm<D, E, Dv>,
    KvH: Dim,
    Dv: Backend,
{
    /// The stack on `(B, T, D)`; an error if a `Dyn` width is not `D`.
    pub fn try_forward<B: Dim, T: Dim, D2, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tp>,
    ) -> Result<Tensor<(B, T, D), E, Dv, Tp>>
    where
        D2: SameDim<D, Attention>,
    {
        let (b, t, _) = x.shape();
        let mut x = retype("encoder", x, (b, t, self.width()?))?;
        for layer in &self.layers {
            x = layer.run(x, None)?;
        }
        Ok(self.norm.normalize(x))
    }

    /// The stack with a key padding mask `(B, T)` (`true` = padded).
    pub fn try_forward_padded<B: Dim, T: Dim, D2, Bm, Tm, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tp>,
        padding: &Tensor<(Bm, Tm), bool>,
    ) -> Result<Tensor<(B, T, D), E, Dv, Tp>>
    where
        D2: SameDim<D, Attention>,
        Bm: SameDim<B, Attention>,
        Tm: SameDim<T, Attention>,
    {
        let (b, t, _) = x.shape();
        let pad = padding_vec(padding, b.size(), t.size())?;
        let mut x = retype("encoder", x, (b, t, self.width()?))?;
        for layer in &self.layers {
            x = layer.run(x, Some(&pad))?;
        }
        Ok(self.norm.normalize(x))
    }

    /// Panicking twin of [`try_forward_padded`](Self::try_forward_padded).
    #[track_caller]
    pub fn forward_padded<B: Dim, T: Dim, D2, Bm, Tm, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tp>,
        padding: &Tensor<(Bm, Tm), bool>,
    ) -> Tensor<(B, T, D), E, Dv, Tp>
    where
        D2: SameDim<D, Attention>,
        Bm: SameDim<B, Attention>,
        Tm: SameDim<T, Attention>,
    {
        or_panic(self.try_forward_padded(x, padding))
    }

    /// Incremental decoding through every layer (causal stacks): the next
    /// `T` positions, with one [`LayerCache`] per layer in `cache`.
    pub fn try_forward_cached<B: Dim, T: Dim, D2>(
        &self,
        x_new: Tensor<(B, T, D2), E, Dv>,
        cache: &mut KvCache<E, Dv>,
    ) -> Result<Tensor<(B, T, D), E, Dv>>
    where
        D2: SameDim<D, Attention>,
    {
        cache.check_layers(self.layers.len())?;
        let (b, t, _) = x_new.shape();
        let mut x = retype("encoder", x_new, (b, t, self.width()?))?;
        for (layer, c) in self.layers.iter().zip(&mut cache.layers) {
            x = layer.try_forward_cached(x, c)?;
        }
        Ok(self.norm.normalize(x))
    }

    /// Panicking twin of [`try_forward_cached`](Self::try_forward_cached).
    #[track_caller]
    pub fn forward_cached<B: Dim, T: Dim, D2>(
        &self,
        x_new: Tensor<(B, T, D2), E, Dv>,
        cache: &mut KvCache<E, Dv>,
    ) -> Tensor<(B, T, D), E, Dv>
    where
        D2: SameDim<D, Attention>,
    {
        or_panic(self.try_forward_cached(x_new, cache))
    }

    /// An empty cache with one entry per layer.
    pub fn new_cache(&self) -> KvCache<E, Dv> {
        KvCache::new(self.layers.len())
    }

    /// The width `D`, from the first layer (an empty stack has none).
    fn width(&self) -> Result<D> {
        self.layers
            .first()
            .map(|l| l.attn.d_model())
            .ok_or_else(empty_stack)
    }
}

fn empty_stack() -> Error {
    Error::InvalidArgument {
        op: "transformer stack",
        reason: "the stack has no layers".to_string(),
    }
}

impl<D, H, Hd, F, E, N, KvH, Dv, B, T, D2, Tp> Forward<Tensor<(B, T, D2), E, Dv, Tp>>
    for Encoder<D, H, Hd, F, E, N, KvH, Dv>
where
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: BlockNorm<D, E, Dv>,
    KvH: Dim,
    Dv: Backend,
    B: Dim,
    T: Dim,
    D2: Dim + SameDim<D, Attention>,
    Tp: TapeState,
{
    type Output = Tensor<(B, T, D), E, Dv, Tp>;
    #[track_caller]
    fn forward(&self, x: Tensor<(B, T, D2), E, Dv, Tp>) -> Self::Output {
        or_panic(self.try_forward(x))
    }
}

/// A stack of [`DecoderBlock`]s over an encoder's memory, and a final norm.
/// Paths: `layers.0.self_attn.q_proj.weight`, `layers.0.cross_attn...`, `norm.weight`.
#[derive(crate::nn::Module, Clone, Debug)]
pub struct Decoder<
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: Module = LayerNorm<D, E>,
    KvH: Dim = H,
    Dv: Backend = Cpu,
> {
    /// The blocks, in order.
    pub layers: Vec<DecoderBlock<D, H, Hd, F, E, N, KvH, Dv>>,
    /// The final norm.
    pub norm: N,
}

impl<D, H, Hd, F, E, N, KvH> Decoder<D, H, Hd, F, E, N, KvH>
where
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: NewBlockNorm<D, E>,
    KvH: Dim,
{
    /// `num_layers` blocks built from `config` and a final norm.
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        num_layers: usize,
        d: D,
        heads: H,
        head_dim: Hd,
        kv_heads: KvH,
        ffn: F,
        config: BlockConfig,
        seed: u64,
    ) -> Result<Self>
    where
        KvH: KvHeadsDivide<H>,
    {
        let layers = (0..num_layers as u64)
            .map(|i| {
                DecoderBlock::try_new(d, heads, head_dim, kv_heads, ffn, config, sub_seed(seed, i))
            })
            .collect::<Result<_>>()?;
        Ok(Decoder {
            layers,
            norm: N::new_norm(d, config.eps, config.norm_bias),
        })
    }

    /// Panicking twin of [`try_new`](Self::try_new).
    #[allow(clippy::too_many_arguments)]
    #[track_caller]
    pub fn new(
        num_layers: usize,
        d: D,
        heads: H,
        head_dim: Hd,
        kv_heads: KvH,
        ffn: F,
        config: BlockConfig,
        seed: u64,
    ) -> Self
    where
        KvH: KvHeadsDivide<H>,
    {
        or_panic(Self::try_new(
            num_layers, d, heads, head_dim, kv_heads, ffn, config, seed,
        ))
    }
}

impl<D, H, Hd, F, E, N, KvH, Dv> Decoder<D, H, Hd, F, E, N, KvH, Dv>
where
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: BlockNorm<D, E, Dv>,
    KvH: Dim,
    Dv: Backend,
{
    /// The stack on `x` `(B, T, D)` over `memory` `(B, Tk, D)`, with optional
    /// padding masks `(B, T)` and `(B, Tk)` (`true` = padded).
    pub fn try_forward_masked<B, T, D2, Bm, Tk, Dm, Tx, Tm>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tx>,
        memory: Tensor<(Bm, Tk, Dm), E, Dv, Tm>,
        padding: Option<&Tensor<(B, T), bool>>,
        memory_padding: Option<&Tensor<(Bm, Tk), bool>>,
    ) -> Result<Tensor<(B, T, D), E, Dv, <Tx as Merge<Tm>>::Out>>
    where
        B: Dim,
        T: Dim,
        D2: Dim + SameDim<D, Attention>,
        Bm: Dim + SameDim<B, Attention>,
        Tk: Dim,
        Dm: Dim + SameDim<D, Attention>,
        Tx: TapeState + Merge<Tm>,
        Tm: TapeState,
    {
        let (mut x, memory, pad, mpad) =
            decoder_inputs(self.width()?, x, memory, padding, memory_padding)?;
        for layer in &self.layers {
            x = layer.run(x, memory.clone(), pad.as_deref(), mpad.as_deref())?;
        }
        Ok(self.norm.normalize(x))
    }

    /// [`try_forward_masked`](Self::try_forward_masked) without masks.
    pub fn try_forward<B, T, D2, Bm, Tk, Dm, Tx, Tm>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tx>,
        memory: Tensor<(Bm, Tk, Dm), E, Dv, Tm>,
    ) -> Result<Tensor<(B, T, D), E, Dv, <Tx as Merge<Tm>>::Out>>
    where
        B: Dim,
        T: Dim,
        D2: Dim + SameDim<D, Attention>,
        Bm: Dim + SameDim<B, Attention>,
        Tk: Dim,
        Dm: Dim + SameDim<D, Attention>,
        Tx: TapeState + Merge<Tm>,
        Tm: TapeState,
    {
        self.try_forward_masked(x, memory, None, None)
    }

    /// Incremental decoding: the next `T` positions, attending causally over
    /// the cached ones (one [`LayerCache`] per layer) and fully over `memory`.
    pub fn try_forward_cached<B, T, D2, Bm, Tk, Dm>(
        &self,
        x_new: Tensor<(B, T, D2), E, Dv>,
        memory: Tensor<(Bm, Tk, Dm), E, Dv>,
        memory_padding: Option<&Tensor<(Bm, Tk), bool>>,
        cache: &mut KvCache<E, Dv>,
    ) -> Result<Tensor<(B, T, D), E, Dv>>
    where
        B: Dim,
        T: Dim,
        D2: Dim + SameDim<D, Attention>,
        Bm: Dim + SameDim<B, Attention>,
        Tk: Dim,
        Dm: Dim + SameDim<D, Attention>,
    {
        cache.check_layers(self.layers.len())?;
        let (mut x, memory, _, mpad) =
            decoder_inputs(self.width()?, x_new, memory, None, memory_padding)?;
        for (layer, c) in self.layers.iter().zip(&mut cache.layers) {
            x = layer.run_cached(x, memory.clone(), mpad.as_deref(), c)?;
        }
        Ok(self.norm.normalize(x))
    }

    /// An empty cache with one entry per layer.
    pub fn new_cache(&self) -> KvCache<E, Dv> {
        KvCache::new(self.layers.len())
    }

    fn width(&self) -> Result<D> {
        self.layers
            .first()
            .map(|l| l.self_attn.d_model())
            .ok_or_else(empty_stack)
    }
}

impl<D, H, Hd, F, E, N, KvH, Dv, B, T, D2, Bm, Tk, Dm, Tx, Tm>
    Forward<(
        Tensor<(B, T, D2), E, Dv, Tx>,
        Tensor<(Bm, Tk, Dm), E, Dv, Tm>,
    )> for Decoder<D, H, Hd, F, E, N, KvH, Dv>
where
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: BlockNorm<D, E, Dv>,
    KvH: Dim,
    Dv: Backend,
    B: Dim,
    T: Dim,
    D2: Dim + SameDim<D, Attention>,
    Bm: Dim + SameDim<B, Attention>,
    Tk: Dim,
    Dm: Dim + SameDim<D, Attention>,
    Tx: TapeState + Merge<Tm>,
    Tm: TapeState,
{
    type Output = Tensor<(B, T, D), E, Dv, <Tx as Merge<Tm>>::Out>;
    /// `(x, memory)`; panics with the [`Decoder::try_forward`] message.
    #[track_caller]
    fn forward(
        &self,
        (x, memory): (
            Tensor<(B, T, D2), E, Dv, Tx>,
            Tensor<(Bm, Tk, Dm), E, Dv, Tm>,
        ),
    ) -> Self::Output {
        or_panic(self.try_forward(x, memory))
    }
}
