//! Multi-head attention: self- and cross-attention, grouped-query attention
//! (fewer key/value heads), rotary positions, sliding windows, Gemma-style
//! q/k norms, padding and causal masks, and a key/value cache for
//! incremental decoding.
//!
//! The layer computes `softmax(mask(q kᵀ * scale)) v` with the fused kernel
//! [`try_fused_attention`](crate::ops::try_fused_attention), from a mask
//! description (causal, window, padding, positions) that is never
//! materialized. [`scaled_dot_product_attention`] is the unfused form (a
//! matmul, a `masked_fill(-inf)`, a softmax and a matmul, each recorded),
//! kept as a reference and for arbitrary materialized masks.

// Typed shapes in signatures (`Result<Tensor<(B, T, D), E, Cpu, <Tx as Merge<Tm>>::Out>>`)
// are the point of these layers.
#![allow(clippy::type_complexity)]

use core::ops::Rem;
use std::sync::Arc;

use typenum::{Eq as TypeEq, IsEqual, Mod, B1, U0};
use zerfoo_kernels::{Backend, Cpu, FloatDtype};

use super::{Forward, ForwardResidual, Linear, RmsNorm};
use crate::autograd::{Merge, TapeState};
use crate::error::or_panic;
use crate::ops::{try_fused_attention_bthd, try_fused_attention_qkv, AttentionMask, ConcatWith};
use crate::shape::{Axis, Dim, Dyn, Dynamic, RuntimeCheck, SameDim, Shape, Static};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Names attention in shape errors: ``shape error in `Attention`: `Wide` does not match `Model` ``.
#[derive(Clone, Copy, Debug, Default)]
pub struct Attention;

/// Names grouped-query attention (query heads shared out over key/value
/// heads) in shape errors.
#[derive(Clone, Copy, Debug, Default)]
pub struct GroupedQuery;

/// Whether the size of dim kind `Self` divides the size of kind `R`: `B1` or
/// `B0` for two static kinds, [`RuntimeCheck`] when either is dynamic.
pub trait KindDivides<R> {
    /// `B1`, `B0` or [`RuntimeCheck`].
    type Out;
}
impl<A, B> KindDivides<Static<B>> for Static<A>
where
    B: Rem<A>,
    Mod<B, A>: IsEqual<U0>,
{
    type Out = TypeEq<Mod<B, A>, U0>;
}
impl<K> KindDivides<K> for Dynamic {
    type Out = RuntimeCheck;
}
impl<A> KindDivides<Dynamic> for Static<A> {
    type Out = RuntimeCheck;
}

/// The diagnostic for "the key/value heads must divide the query heads".
#[diagnostic::on_unimplemented(
    message = "shape error in `GroupedQuery`: `{KvH}` key/value heads do not divide `{H}` query heads",
    label = "the query heads must be a whole multiple of the key/value heads",
    note = "each key/value head serves `H / KvH` query heads; pick `KvH` dividing `H`"
)]
pub trait GroupsCheck<KvH, H> {}
impl<KvH, H> GroupsCheck<KvH, H> for B1 {}
impl<KvH, H> GroupsCheck<KvH, H> for RuntimeCheck {}

/// `Self` (the key/value heads) divides `H` (the query heads): checked at
/// compile time when both are static, at run time (by the constructors)
/// otherwise.
pub trait KvHeadsDivide<H: Dim>: Dim {}
impl<KvH: Dim, H: Dim> KvHeadsDivide<H> for KvH
where
    KvH::Kind: KindDivides<H::Kind>,
    <KvH::Kind as KindDivides<H::Kind>>::Out: GroupsCheck<KvH, H>,
{
}

/// RMS normalization of each query and key head over its `Hd` features
/// (Gemma 3, Qwen 3), applied before the rotary embedding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QkNorm {
    /// Added to the mean square.
    pub eps: f64,
    /// Gemma's `x * (1 + w)` form (weight initialized to zeros) rather than `x * w`.
    pub offset: bool,
}

impl QkNorm {
    /// Gemma's form: `x / rms(x) * (1 + w)`, `w` starting at zero.
    pub fn gemma(eps: f64) -> Self {
        QkNorm { eps, offset: true }
    }
    /// The plain form: `x / rms(x) * w`, `w` starting at one.
    pub fn plain(eps: f64) -> Self {
        QkNorm { eps, offset: false }
    }
}

/// How a [`MultiHeadAttention`] behaves. Build it with the methods:
/// `AttentionConfig::default().causal(true).rope(10000.0)`.
///
/// `bias` and `qk_norm` are read when the layer is built (they decide which
/// parameters exist); the rest is read at every forward pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionConfig {
    /// Biases on the q/k/v/o projections (default `true`, as `torch.nn.MultiheadAttention`).
    pub bias: bool,
    /// Self-attention hides later keys: query `i` sees keys `j <= i`.
    pub causal: bool,
    /// Rotary embedding of queries and keys in self-attention, with this base.
    pub rope_base: Option<f64>,
    /// Sliding window of self-attention: query `i` sees keys in `(i - window, i]`
    /// (this implies the causal limit).
    pub window: Option<usize>,
    /// RMS norm of each query and key head.
    pub qk_norm: Option<QkNorm>,
    /// The factor the scores are multiplied by; `None` means `1 / sqrt(Hd)`.
    pub scale: Option<f64>,
}

impl Default for AttentionConfig {
    fn default() -> Self {
        AttentionConfig {
            bias: true,
            causal: false,
            rope_base: None,
            window: None,
            qk_norm: None,
            scale: None,
        }
    }
}

impl AttentionConfig {
    /// Biases on the projections, or none.
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// Causal self-attention.
    pub fn causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }
    /// Rotary embedding with base `base` (10000 in LLaMA, 1e6 in Gemma 3's global layers).
    pub fn rope(mut self, base: f64) -> Self {
        self.rope_base = Some(base);
        self
    }
    /// Sliding window: query `i` sees keys in `(i - window, i]`.
    pub fn window(mut self, window: usize) -> Self {
        self.window = Some(window);
        self
    }
    /// RMS norm of each query and key head.
    pub fn qk_norm(mut self, norm: QkNorm) -> Self {
        self.qk_norm = Some(norm);
        self
    }
    /// Multiplies the scores by `scale` instead of `1 / sqrt(Hd)`.
    pub fn scale(mut self, scale: f64) -> Self {
        self.scale = Some(scale);
        self
    }
    /// Gemma's scale: `query_pre_attn_scalar ^ -0.5`.
    pub fn query_pre_attn_scalar(self, scalar: f64) -> Self {
        self.scale(scalar.powf(-0.5))
    }
}

/// Multi-head attention from width `D` with `H` query heads of width `Hd`
/// and `KvH` key/value heads (grouped-query attention when `KvH < H`; each
/// key/value head serves `H / KvH` consecutive query heads).
///
/// Parameters (PyTorch / HF names): `q_proj`, `k_proj`, `v_proj`, `o_proj`
/// (weights `[H*Hd, D]`, `[KvH*Hd, D]`, `[KvH*Hd, D]`, `[D, H*Hd]`), and with
/// q/k norm `q_norm.weight`, `k_norm.weight` (`[Hd]`). The inner widths
/// `H*Hd` and `KvH*Hd` are [`Dyn`] in the projections' types: a product of
/// named dims has no name, and nothing outside the layer sees them.
///
/// Forward passes: [`Forward`] / [`try_forward`](Self::try_forward)
/// (self-attention `(B, T, D) -> (B, T, D)`),
/// [`try_forward_padded`](Self::try_forward_padded) (with a key padding
/// mask), [`try_cross`](Self::try_cross) and
/// [`try_cross_padded`](Self::try_cross_padded) (queries from `x`, keys and
/// values from a memory `(B, Tk, D)`), and
/// [`try_forward_cached`](Self::try_forward_cached) (incremental decoding
/// with a [`LayerCache`]). Each `try_` form has a panicking twin.
///
/// A query that can see no key at all (every key padded) gets zero
/// attention weights, so its output is the output bias (PyTorch gives NaN).
///
/// ```
/// use zerfoo::nn::{AttentionConfig, Forward, MultiHeadAttention};
/// use zerfoo::prelude::*;
/// dim!(Model = 8);
/// dim!(Heads = 4);
/// dim!(HeadDim = 2);
/// dim!(KvHeads = 2);
/// let cfg = AttentionConfig::default().causal(true).rope(10000.0);
/// let attn: MultiHeadAttention<Model, Heads, HeadDim, f32, KvHeads> =
///     MultiHeadAttention::new(Model, Heads, HeadDim, KvHeads, cfg, 0);
/// let x: Tensor<(Dyn, U5, Model), f32> = Tensor::randn((Dyn(2), U5::default(), Model), 1);
/// assert_eq!(attn.forward(x).dims(), [2, 5, 8]);
/// ```
///
/// Key/value heads that do not divide the query heads do not compile:
///
/// ```compile_fail
/// use zerfoo::nn::{AttentionConfig, MultiHeadAttention};
/// use zerfoo::prelude::*;
/// dim!(Model = 8);
/// dim!(Heads = 4);
/// dim!(HeadDim = 2);
/// dim!(KvHeads = 3);
/// // shape error in `GroupedQuery`: `KvHeads` key/value heads do not divide `Heads` query heads
/// let attn: MultiHeadAttention<Model, Heads, HeadDim, f32, KvHeads> =
///     MultiHeadAttention::new(Model, Heads, HeadDim, KvHeads, AttentionConfig::default(), 0);
/// ```
#[derive(crate::nn::Module, Clone, Debug)]
pub struct MultiHeadAttention<
    D: Dim,
    H: Dim,
    Hd: Dim,
    E: FloatDtype,
    KvH: Dim = H,
    Dv: Backend = Cpu,
> {
    /// Queries: `D -> H * Hd`.
    pub q_proj: Linear<D, Dyn, E, Dv>,
    /// Keys: `D -> KvH * Hd`.
    pub k_proj: Linear<D, Dyn, E, Dv>,
    /// Values: `D -> KvH * Hd`.
    pub v_proj: Linear<D, Dyn, E, Dv>,
    /// Output: `H * Hd -> D`.
    pub o_proj: Linear<Dyn, D, E, Dv>,
    /// RMS norm of each query head, if configured.
    pub q_norm: Option<RmsNorm<Hd, E, Dv>>,
    /// RMS norm of each key head, if configured.
    pub k_norm: Option<RmsNorm<Hd, E, Dv>>,
    /// Masking, positions and scale (see [`AttentionConfig`]).
    #[module(skip)]
    pub config: AttentionConfig,
    #[module(skip)]
    d_model: D,
    #[module(skip)]
    heads: H,
    #[module(skip)]
    head_dim: Hd,
    #[module(skip)]
    kv_heads: KvH,
}

/// A seed for part `i` of a layer built from `seed` (so that layers built
/// from neighbouring seeds share no weights).
pub(crate) fn sub_seed(seed: u64, i: u64) -> u64 {
    crate::tensor::rng::mix(seed ^ (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// `x` under the shape type `to`, whose dims must equal `x`'s (checked at
/// run time: this is where `Dyn` dims meet the layer's static ones).
pub(crate) fn retype<S: Shape, S2: Shape, E: FloatDtype, D: Backend, T>(
    op: &'static str,
    x: Tensor<S, E, D, T>,
    to: S2,
) -> Result<Tensor<S2, E, D, T>> {
    if x.dims() != to.dims() {
        return Err(Error::ShapeMismatch {
            op,
            lhs: x.dims().to_vec(),
            rhs: to.dims().to_vec(),
        });
    }
    Ok(x.with_shape(to))
}

/// `x` with the tape type `T2` that it merges into (`T2 = <T as
/// Merge<_>>::Out`): its node is kept, so gradients flow as before.
pub(crate) fn into_tape<S: Shape, E: FloatDtype, D: Backend, T: TapeState, T2: TapeState>(
    x: Tensor<S, E, D, T>,
) -> Tensor<S, E, D, T2> {
    debug_assert!(T2::TRACKED || !T::TRACKED, "a merge never drops a tape");
    Tensor {
        tape: T2::from_node(x.tape.node()),
        shape: x.shape,
        layout: x.layout,
        data: x.data,
        id: x.id,
        device: x.device,
    }
}

/// A `(B, T)` key padding mask as row-major booleans, after checking its dims.
pub(crate) fn padding_vec<Bm: Dim, Tm: Dim>(
    mask: &Tensor<(Bm, Tm), bool>,
    b: usize,
    t: usize,
) -> Result<Vec<bool>> {
    if mask.dims() != [b, t] {
        return Err(Error::ShapeMismatch {
            op: "attention padding mask",
            lhs: mask.dims().to_vec(),
            rhs: vec![b, t],
        });
    }
    Ok(mask.to_vec())
}

/// Attention of queries `q` `(B, H, Tq, Hd)` over keys `k` `(B, H, Tk, Hd)`
/// and values `v` `(B, H, Tk, Hv)`:
///
/// ```text
/// softmax(masked_fill(scale * q kᵀ, mask, -inf)) v
/// ```
///
/// `mask` `(B, Tq, Tk)` is `true` where a key is hidden from a query (shared
/// by all heads). A query whose keys are all hidden gets zero weights (and a
/// zero output) rather than NaN. This is the unfused reference; the layers
/// use [`try_fused_attention`](crate::ops::try_fused_attention), which never
/// materializes the `Tq x Tk` scores.
///
/// Errors: a `Dyn` dim that differs between the operands or the mask
/// ([`Error::ShapeMismatch`]), no keys at all ([`Error::InvalidArgument`]).
///
/// ```
/// use zerfoo::nn::try_scaled_dot_product_attention;
/// use zerfoo::prelude::*;
/// // one query, two keys with equal scores: the output averages the values
/// let q: Tensor<(U1, U1, U1, U1), f64> = Tensor::zeros(Default::default());
/// let k: Tensor<(U1, U1, U2, U1), f64> = Tensor::ones(Default::default());
/// let v = Tensor::<(U1, U1, U2, U1), f64>::from_vec(Default::default(), vec![1.0, 3.0]).unwrap();
/// let y = try_scaled_dot_product_attention(q, k, v, None, 1.0).unwrap();
/// assert_eq!(y.to_vec(), [2.0]);
/// ```
pub fn try_scaled_dot_product_attention<B, H, Tq, Tk, Hd, Hv, E, Dv, Tp>(
    q: Tensor<(B, H, Tq, Hd), E, Dv, Tp>,
    k: Tensor<(B, H, Tk, Hd), E, Dv, Tp>,
    v: Tensor<(B, H, Tk, Hv), E, Dv, Tp>,
    mask: Option<&Tensor<(B, Tq, Tk), bool>>,
    scale: f64,
) -> Result<Tensor<(B, H, Tq, Hv), E, Dv, Tp>>
where
    B: Dim,
    H: Dim,
    Tq: Dim,
    Tk: Dim,
    Hd: Dim,
    Hv: Dim,
    E: FloatDtype,
    Dv: Backend,
    Tp: TapeState,
{
    let (b, h, tq, _) = q.shape();
    let dev = q.device().clone();
    let tk = k.shape().2;
    let kv_dims = |d: crate::shape::Dims| [d[0], d[1], d[2]];
    if kv_dims(k.dims()) != kv_dims(v.dims()) {
        return Err(Error::ShapeMismatch {
            op: "attention",
            lhs: k.dims().to_vec(),
            rhs: v.dims().to_vec(),
        });
    }
    if tk.size() == 0 {
        return Err(Error::InvalidArgument {
            op: "attention",
            reason: "there are no keys to attend to".to_string(),
        });
    }
    let scores = q.mul_scalar(scale).try_matmul(k.t())?;
    let probs = match mask {
        None => scores.softmax::<Axis<3>>(),
        Some(m) => {
            if m.dims() != [b.size(), tq.size(), tk.size()] {
                return Err(Error::ShapeMismatch {
                    op: "attention mask",
                    lhs: m.dims().to_vec(),
                    rhs: vec![b.size(), tq.size(), tk.size()],
                });
            }
            let nk = tk.size();
            let mut hide = m.to_vec();
            let dead: Vec<bool> = hide.chunks(nk).map(|r| r.iter().all(|&x| x)).collect();
            let heads = (b, h, tq, tk);
            if !dead.iter().any(|&d| d) {
                let m = m.try_to_device(&dev)?.broadcast_mask::<_, Axis<1>>(heads);
                scores
                    .masked_fill(&m, f64::NEG_INFINITY)
                    .softmax::<Axis<3>>()
            } else {
                // Rows with no visible key: softmax over all keys (finite),
                // then zero the weights.
                for (row, &d) in hide.chunks_mut(nk).zip(&dead) {
                    if d {
                        row.fill(false);
                    }
                }
                let fill = Tensor::from_contiguous((b, tq, tk), hide).try_to_device(&dev)?;
                let dead = Tensor::from_fn((b, tq, tk), |n| dead[n / nk]).try_to_device(&dev)?;
                scores
                    .masked_fill(&fill.broadcast_mask::<_, Axis<1>>(heads), f64::NEG_INFINITY)
                    .softmax::<Axis<3>>()
                    .masked_fill(&dead.broadcast_mask::<_, Axis<1>>(heads), 0.0)
            }
        }
    };
    probs.try_matmul(v)
}

/// Panicking twin of [`try_scaled_dot_product_attention`].
#[track_caller]
pub fn scaled_dot_product_attention<B, H, Tq, Tk, Hd, Hv, E, Dv, Tp>(
    q: Tensor<(B, H, Tq, Hd), E, Dv, Tp>,
    k: Tensor<(B, H, Tk, Hd), E, Dv, Tp>,
    v: Tensor<(B, H, Tk, Hv), E, Dv, Tp>,
    mask: Option<&Tensor<(B, Tq, Tk), bool>>,
    scale: f64,
) -> Tensor<(B, H, Tq, Hv), E, Dv, Tp>
where
    B: Dim,
    H: Dim,
    Tq: Dim,
    Tk: Dim,
    Hd: Dim,
    Hv: Dim,
    E: FloatDtype,
    Dv: Backend,
    Tp: TapeState,
{
    or_panic(try_scaled_dot_product_attention(q, k, v, mask, scale))
}

impl<D: Dim, H: Dim, Hd: Dim, E: FloatDtype, KvH: Dim> MultiHeadAttention<D, H, Hd, E, KvH> {
    /// A layer with PyTorch's default `nn.Linear` initialization (from
    /// `seed`) and q/k norms as `config` says. Errors: `kv_heads` not
    /// dividing `heads` (for `Dyn` head counts; static ones are checked at
    /// compile time), a zero dim, an odd head dim with rotary embedding, a
    /// zero window, a non-finite scale.
    pub fn try_new(
        d: D,
        heads: H,
        head_dim: Hd,
        kv_heads: KvH,
        config: AttentionConfig,
        seed: u64,
    ) -> Result<Self>
    where
        KvH: KvHeadsDivide<H>,
    {
        check_config(
            d.size(),
            heads.size(),
            head_dim.size(),
            kv_heads.size(),
            &config,
        )?;
        let (q, kv) = (
            Dyn(heads.size() * head_dim.size()),
            Dyn(kv_heads.size() * head_dim.size()),
        );
        let norm = |n: QkNorm| {
            if n.offset {
                RmsNorm::new_offset(head_dim, n.eps)
            } else {
                RmsNorm::new(head_dim, n.eps)
            }
        };
        Ok(MultiHeadAttention {
            q_proj: Linear::new(d, q, config.bias, sub_seed(seed, 0)),
            k_proj: Linear::new(d, kv, config.bias, sub_seed(seed, 1)),
            v_proj: Linear::new(d, kv, config.bias, sub_seed(seed, 2)),
            o_proj: Linear::new(q, d, config.bias, sub_seed(seed, 3)),
            q_norm: config.qk_norm.map(norm),
            k_norm: config.qk_norm.map(norm),
            config,
            d_model: d,
            heads,
            head_dim,
            kv_heads,
        })
    }

    /// Panicking twin of [`try_new`](Self::try_new).
    #[track_caller]
    pub fn new(
        d: D,
        heads: H,
        head_dim: Hd,
        kv_heads: KvH,
        config: AttentionConfig,
        seed: u64,
    ) -> Self
    where
        KvH: KvHeadsDivide<H>,
    {
        or_panic(Self::try_new(d, heads, head_dim, kv_heads, config, seed))
    }
}

impl<D: Dim, H: Dim, Hd: Dim, E: FloatDtype, KvH: Dim, Dv: Backend>
    MultiHeadAttention<D, H, Hd, E, KvH, Dv>
{
    /// The model width `D`.
    pub fn d_model(&self) -> D {
        self.d_model
    }
    /// The number of query heads `H`.
    pub fn heads(&self) -> H {
        self.heads
    }
    /// The head width `Hd`.
    pub fn head_dim(&self) -> Hd {
        self.head_dim
    }
    /// The number of key/value heads `KvH`.
    pub fn kv_heads(&self) -> KvH {
        self.kv_heads
    }
    /// The factor the scores are multiplied by.
    pub fn scale(&self) -> f64 {
        self.config
            .scale
            .unwrap_or_else(|| 1.0 / (self.head_dim.size() as f64).sqrt())
    }

    /// Self-attention `(B, T, D) -> (B, T, D)`, causal, windowed and rotated
    /// as configured. An error if a `Dyn` width is not `D`, or if the
    /// parameters were replaced by ones of other dims.
    pub fn try_forward<B: Dim, T: Dim, D2, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tp>,
    ) -> Result<Tensor<(B, T, D), E, Dv, Tp>>
    where
        D2: SameDim<D, Attention>,
    {
        let (b, t, _) = x.shape();
        let x = retype("attention", x, (b, t, self.d_model))?;
        self.self_attention(x, None)
    }

    /// Self-attention with a key padding mask `(B, T)`: `true` marks a
    /// padded position, which no query attends to (shared by all heads).
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
        let x = retype("attention", x, (b, t, self.d_model))?;
        let pad = padding_vec(padding, b.size(), t.size())?;
        self.self_attention(x, Some(&pad))
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

    /// Cross-attention: queries from `x` `(B, T, D)`, keys and values from
    /// `memory` `(B, Tk, D)` (e.g. an encoder's output). Never causal,
    /// windowed or rotated; q/k norms apply. The output records on the
    /// merged tape of `x` and `memory`.
    pub fn try_cross<B, T, D2, Bm, Tk, Dm, Tx, Tm>(
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
        let (b, t, _) = x.shape();
        let tk = memory.shape().1;
        let x = retype("attention", into_tape(x), (b, t, self.d_model))?;
        let m = retype("attention memory", into_tape(memory), (b, tk, self.d_model))?;
        self.cross_attention(x, m, None)
    }

    /// Panicking twin of [`try_cross`](Self::try_cross).
    #[track_caller]
    pub fn cross<B, T, D2, Bm, Tk, Dm, Tx, Tm>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tx>,
        memory: Tensor<(Bm, Tk, Dm), E, Dv, Tm>,
    ) -> Tensor<(B, T, D), E, Dv, <Tx as Merge<Tm>>::Out>
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
        or_panic(self.try_cross(x, memory))
    }

    /// [`try_cross`](Self::try_cross) with a memory padding mask `(B, Tk)`
    /// (`true` = padded memory position).
    pub fn try_cross_padded<B, T, D2, Bm, Tk, Dm, Bp, Tkp, Tx, Tm>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tx>,
        memory: Tensor<(Bm, Tk, Dm), E, Dv, Tm>,
        memory_padding: &Tensor<(Bp, Tkp), bool>,
    ) -> Result<Tensor<(B, T, D), E, Dv, <Tx as Merge<Tm>>::Out>>
    where
        B: Dim,
        T: Dim,
        D2: Dim + SameDim<D, Attention>,
        Bm: Dim + SameDim<B, Attention>,
        Tk: Dim,
        Dm: Dim + SameDim<D, Attention>,
        Bp: Dim + SameDim<B, Attention>,
        Tkp: Dim + SameDim<Tk, Attention>,
        Tx: TapeState + Merge<Tm>,
        Tm: TapeState,
    {
        let (b, t, _) = x.shape();
        let tk = memory.shape().1;
        let x = retype("attention", into_tape(x), (b, t, self.d_model))?;
        let m = retype("attention memory", into_tape(memory), (b, tk, self.d_model))?;
        let pad = padding_vec(memory_padding, b.size(), tk.size())?;
        self.cross_attention(x, m, Some(&pad))
    }

    /// Panicking twin of [`try_cross_padded`](Self::try_cross_padded).
    #[track_caller]
    pub fn cross_padded<B, T, D2, Bm, Tk, Dm, Bp, Tkp, Tx, Tm>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tx>,
        memory: Tensor<(Bm, Tk, Dm), E, Dv, Tm>,
        memory_padding: &Tensor<(Bp, Tkp), bool>,
    ) -> Tensor<(B, T, D), E, Dv, <Tx as Merge<Tm>>::Out>
    where
        B: Dim,
        T: Dim,
        D2: Dim + SameDim<D, Attention>,
        Bm: Dim + SameDim<B, Attention>,
        Tk: Dim,
        Dm: Dim + SameDim<D, Attention>,
        Bp: Dim + SameDim<B, Attention>,
        Tkp: Dim + SameDim<Tk, Attention>,
        Tx: TapeState + Merge<Tm>,
        Tm: TapeState,
    {
        or_panic(self.try_cross_padded(x, memory, memory_padding))
    }

    /// Incremental self-attention: `x_new` `(B, T, D)` holds the next `T`
    /// positions (rotary offset = the positions already in `cache`); their
    /// keys and values are appended to `cache`, and each new query attends
    /// over everything cached (causal and windowed as configured), so that
    /// feeding a sequence piece by piece equals one causal forward pass.
    /// With a window, only the last `window - 1` positions stay cached.
    ///
    /// Errors (leaving the cache untouched): a `Dyn` width that is not `D`,
    /// a cache filled with another batch size or by a layer of other dims.
    pub fn try_forward_cached<B: Dim, T: Dim, D2>(
        &self,
        x_new: Tensor<(B, T, D2), E, Dv>,
        cache: &mut LayerCache<E, Dv>,
    ) -> Result<Tensor<(B, T, D), E, Dv>>
    where
        D2: SameDim<D, Attention>,
    {
        self.validate()?;
        let (b, t, _) = x_new.shape();
        let x = retype("attention", x_new, (b, t, self.d_model))?;
        let pos = cache.next;
        let q = self.heads_of(
            &self.q_proj,
            self.q_norm.as_ref(),
            x.clone(),
            self.heads,
            Some(pos),
        )?;
        let k = self.heads_of(
            &self.k_proj,
            self.k_norm.as_ref(),
            x.clone(),
            self.kv_heads,
            Some(pos),
        )?;
        let v = self.heads_of(&self.v_proj, None, x, self.kv_heads, None)?;
        let (nb, nkv, nt, nhd) = (
            b.size(),
            self.kv_heads.size(),
            t.size(),
            self.head_dim.size(),
        );
        // The cache holds `(B, KvH, stored, Hd)`.
        let erased = (Dyn(nb), Dyn(nkv), Dyn(nt), Dyn(nhd));
        let (k, v) = (
            retype("attention", k.transpose::<1, 2>(), erased)?,
            retype("attention", v.transpose::<1, 2>(), erased)?,
        );
        let (k_all, v_all) = match (&cache.k, &cache.v) {
            (Some(kc), Some(vc)) => {
                let want = [nb, nkv, kc.dims()[2], nhd];
                if kc.dims() != want {
                    return Err(Error::ShapeMismatch {
                        op: "attention cache",
                        lhs: kc.dims().to_vec(),
                        rhs: want.to_vec(),
                    });
                }
                (
                    kc.clone().try_concat::<Axis<2>>(k)?,
                    vc.clone().try_concat::<Axis<2>>(v)?,
                )
            }
            _ => (k, v),
        };
        let stored = k_all.dims()[2];
        let typed = (b, Dyn(stored), self.kv_heads, self.head_dim);
        let spec = AttentionMask {
            padding: None,
            causal: self.config.causal,
            window: self.config.window,
            q_offset: pos,
            k_offset: cache.start,
        };
        let y = self.finish(
            q,
            retype("attention cache", k_all.clone().transpose::<1, 2>(), typed)?,
            retype("attention cache", v_all.clone().transpose::<1, 2>(), typed)?,
            &spec,
            None,
        )?;
        cache.next = pos + nt;
        let keep = match self.config.window {
            Some(w) => stored.min(w - 1),
            None => stored,
        };
        if keep == 0 {
            (cache.k, cache.v) = (None, None);
        } else if keep < stored {
            cache.k = Some(k_all.narrow::<Axis<2>>(stored - keep, keep));
            cache.v = Some(v_all.narrow::<Axis<2>>(stored - keep, keep));
        } else {
            (cache.k, cache.v) = (Some(k_all), Some(v_all));
        }
        cache.start = cache.next - keep;
        Ok(y)
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

    /// The parameters still have the dims the head counts imply (fields are
    /// public, so they may have been replaced).
    fn validate(&self) -> Result<()> {
        check_config(
            self.d_model.size(),
            self.heads.size(),
            self.head_dim.size(),
            self.kv_heads.size(),
            &self.config,
        )?;
        let (d, hd) = (self.d_model.size(), self.head_dim.size());
        let (q, kv) = (self.heads.size() * hd, self.kv_heads.size() * hd);
        let check = |got: &[usize], want: &[usize]| {
            if got == want {
                Ok(())
            } else {
                Err(Error::ShapeMismatch {
                    op: "attention parameters",
                    lhs: got.to_vec(),
                    rhs: want.to_vec(),
                })
            }
        };
        for (lin, o, i) in [
            (&self.q_proj, q, d),
            (&self.k_proj, kv, d),
            (&self.v_proj, kv, d),
        ] {
            check(&lin.weight.dims(), &[o, i])?;
            if let Some(bias) = &lin.bias {
                check(&bias.dims(), &[o])?;
            }
        }
        check(&self.o_proj.weight.dims(), &[d, q])?;
        Ok(())
    }

    /// Self-attention of `x` on itself (positions from 0), with an optional
    /// `(B, T)` key padding.
    pub(crate) fn self_attention<B: Dim, T: Dim, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D), E, Dv, Tp>,
        padding: Option<&[bool]>,
    ) -> Result<Tensor<(B, T, D), E, Dv, Tp>> {
        self.self_attention_to(x, padding, None)
    }

    /// `residual + self_attention(x)`, the residual added by the output
    /// projection's product (see [`ForwardResidual`]).
    pub(crate) fn self_attention_residual<B: Dim, T: Dim, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D), E, Dv, Tp>,
        residual: Tensor<(B, T, D), E, Dv, Tp>,
        padding: Option<&[bool]>,
    ) -> Result<Tensor<(B, T, D), E, Dv, Tp>> {
        self.self_attention_to(x, padding, Some(residual))
    }

    /// [`Self::self_attention`], plus `residual` if any.
    fn self_attention_to<B: Dim, T: Dim, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D), E, Dv, Tp>,
        padding: Option<&[bool]>,
        residual: Option<Tensor<(B, T, D), E, Dv, Tp>>,
    ) -> Result<Tensor<(B, T, D), E, Dv, Tp>> {
        self.validate()?;
        let spec = AttentionMask {
            padding: padding.map(|p| Arc::new(p.to_vec())),
            causal: self.config.causal,
            window: self.config.window,
            q_offset: 0,
            k_offset: 0,
        };
        let plain_heads = self.q_norm.is_none()
            && self.k_norm.is_none()
            && self.config.rope_base.is_none()
            && self.kv_heads.size() == self.heads.size();
        if plain_heads {
            // Queries, keys and values read in place from the one
            // projection, whose gradient the kernel writes whole.
            let qkv = self.qkv_projection(x)?;
            let y = try_fused_attention_qkv(qkv, self.heads, self.head_dim, &spec, self.scale())?;
            return Ok(self.project_out(y, residual));
        }
        let (q, k, v) = self.qkv_heads(x)?;
        self.finish(q, k, v, &spec, residual)
    }

    /// The output projection of the heads `y`, plus `residual` if any.
    fn project_out<B: Dim, T: Dim, Tp: TapeState>(
        &self,
        y: Tensor<(B, T, H, Hd), E, Dv, Tp>,
        residual: Option<Tensor<(B, T, D), E, Dv, Tp>>,
    ) -> Tensor<(B, T, D), E, Dv, Tp> {
        let y = y.merge_heads::<Dyn>();
        match residual {
            Some(r) => self.o_proj.forward_residual(y, r),
            None => self.o_proj.forward(y),
        }
    }

    /// Cross-attention of `x` over `memory`, with an optional `(B, Tk)` padding.
    pub(crate) fn cross_attention<B: Dim, T: Dim, Tk: Dim, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D), E, Dv, Tp>,
        memory: Tensor<(B, Tk, D), E, Dv, Tp>,
        padding: Option<&[bool]>,
    ) -> Result<Tensor<(B, T, D), E, Dv, Tp>> {
        self.validate()?;
        let q = self.heads_of(&self.q_proj, self.q_norm.as_ref(), x, self.heads, None)?;
        let k = self.heads_of(
            &self.k_proj,
            self.k_norm.as_ref(),
            memory.clone(),
            self.kv_heads,
            None,
        )?;
        let v = self.heads_of(&self.v_proj, None, memory, self.kv_heads, None)?;
        let spec = AttentionMask {
            padding: padding.map(|p| Arc::new(p.to_vec())),
            causal: false,
            window: None,
            q_offset: 0,
            k_offset: 0,
        };
        self.finish(q, k, v, &spec, None)
    }

    /// The queries, keys and values of `x` side by side, `(B, T, (H +
    /// 2·KvH)·Hd)`, from one product with the three projections' weights
    /// (and biases) stacked: one `(B·T) × D × (H + 2·KvH)·Hd` product
    /// instead of three narrower ones, which keeps the matrix kernel busier
    /// (the Shakespeare GPT's `768 × 128 × 384` runs at about twice the rate
    /// of `768 × 128 × 128`).
    fn qkv_projection<B: Dim, T: Dim, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D), E, Dv, Tp>,
    ) -> Result<Tensor<(B, T, Dyn), E, Dv, Tp>> {
        let projs = [&self.q_proj, &self.k_proj, &self.v_proj];
        let w = Tensor::try_concat_all::<Axis<0>>(projs.map(|p| p.weight.retaped::<Tp>()))?;
        match projs.map(|p| p.bias.as_ref()) {
            [Some(bq), Some(bk), Some(bv)] => {
                let b = Tensor::try_concat_all::<Axis<0>>([bq, bk, bv].map(|b| b.retaped::<Tp>()))?;
                x.try_matmul_t_bias(w, b)
            }
            [None, None, None] => Ok(x.matmul_t(w)),
            _ => Err(Error::InvalidArgument {
                op: "attention",
                reason: "q, k and v projections must all have biases or none".into(),
            }),
        }
    }

    /// The query, key and value heads of `x` for self-attention: views of
    /// [`Self::qkv_projection`], each head normalized and rotated when
    /// configured.
    #[allow(clippy::type_complexity)]
    fn qkv_heads<B: Dim, T: Dim, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D), E, Dv, Tp>,
    ) -> Result<(
        Tensor<(B, T, H, Hd), E, Dv, Tp>,
        Tensor<(B, T, KvH, Hd), E, Dv, Tp>,
        Tensor<(B, T, KvH, Hd), E, Dv, Tp>,
    )> {
        let y = self.qkv_projection(x)?;
        let nq = self.heads.size() * self.head_dim.size();
        let nkv = self.kv_heads.size() * self.head_dim.size();
        let q = y.clone().try_narrow::<Axis<2>>(0, nq)?;
        let k = y.clone().try_narrow::<Axis<2>>(nq, nkv)?;
        let v = y.try_narrow::<Axis<2>>(nq + nkv, nkv)?;
        Ok((
            self.to_heads(q, self.q_norm.as_ref(), self.heads, Some(0))?,
            self.to_heads(k, self.k_norm.as_ref(), self.kv_heads, Some(0))?,
            self.to_heads(v, None, self.kv_heads, None)?,
        ))
    }

    /// Projects `x` `(B, T, D)` to `n` heads `(B, T, n, Hd)`, normalizes each
    /// head and rotates it (positions from `rope_offset`) when asked.
    fn heads_of<B: Dim, T: Dim, N: Dim, Tp: TapeState>(
        &self,
        proj: &Linear<D, Dyn, E, Dv>,
        norm: Option<&RmsNorm<Hd, E, Dv>>,
        x: Tensor<(B, T, D), E, Dv, Tp>,
        n: N,
        rope_offset: Option<usize>,
    ) -> Result<Tensor<(B, T, N, Hd), E, Dv, Tp>> {
        self.to_heads(proj.forward(x), norm, n, rope_offset)
    }

    /// Splits projections `y` `(B, T, n·Hd)` into `n` heads `(B, T, n, Hd)`
    /// (a view: the attention kernels read and write this order),
    /// normalizes each head and rotates it (positions from `rope_offset`)
    /// when asked.
    fn to_heads<B: Dim, T: Dim, N: Dim, Tp: TapeState>(
        &self,
        y: Tensor<(B, T, Dyn), E, Dv, Tp>,
        norm: Option<&RmsNorm<Hd, E, Dv>>,
        n: N,
        rope_offset: Option<usize>,
    ) -> Result<Tensor<(B, T, N, Hd), E, Dv, Tp>> {
        let y = y.try_split_heads_to(n, self.head_dim)?;
        let y = match norm {
            Some(norm) => norm.forward(y),
            None => y,
        };
        match (self.config.rope_base, rope_offset) {
            // The rotation runs along the positions of `(B, n, T, Hd)`.
            (Some(base), Some(offset)) => Ok(y
                .transpose::<1, 2>()
                .try_rope(base, offset)?
                .transpose::<1, 2>()),
            _ => Ok(y),
        }
    }

    /// Repeats each key/value head for its `H / KvH` query heads:
    /// `(B, Tk, KvH, Hd) -> (B, Tk, H, Hd)` (head `h` reads head `h / (H / KvH)`).
    fn repeat_kv<B: Dim, Tk: Dim, Tp: TapeState>(
        &self,
        x: Tensor<(B, Tk, KvH, Hd), E, Dv, Tp>,
    ) -> Tensor<(B, Tk, H, Hd), E, Dv, Tp> {
        let (b, tk, kvh, hd) = x.shape();
        let groups = self.heads.size() / kvh.size();
        if groups == 1 {
            return x.with_shape((b, tk, self.heads, hd));
        }
        x.broadcast::<_, Axis<3>>((b, tk, kvh, Dyn(groups), hd))
            .reshape_unchecked((b, tk, self.heads, hd))
    }

    /// Attention of `q` over `k`, `v` (heads second to last) under `spec`,
    /// heads merged (a view) and projected back to `D`, plus `residual` if
    /// any.
    fn finish<B: Dim, Tq: Dim, Tk: Dim, Tp: TapeState>(
        &self,
        q: Tensor<(B, Tq, H, Hd), E, Dv, Tp>,
        k: Tensor<(B, Tk, KvH, Hd), E, Dv, Tp>,
        v: Tensor<(B, Tk, KvH, Hd), E, Dv, Tp>,
        spec: &AttentionMask,
        residual: Option<Tensor<(B, Tq, D), E, Dv, Tp>>,
    ) -> Result<Tensor<(B, Tq, D), E, Dv, Tp>> {
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        let y: Tensor<_, E, Dv, Tp> = try_fused_attention_bthd(q, k, v, spec, self.scale())?;
        Ok(self.project_out(y, residual))
    }
}

fn check_config(d: usize, h: usize, hd: usize, kvh: usize, c: &AttentionConfig) -> Result<()> {
    let invalid = |reason: String| {
        Err(Error::InvalidArgument {
            op: "attention",
            reason,
        })
    };
    if d == 0 || h == 0 || hd == 0 || kvh == 0 {
        return invalid(format!(
            "zero-sized dims (width {d}, {h} heads of {hd}, {kvh} key/value heads)"
        ));
    }
    if h % kvh != 0 {
        return invalid(format!(
            "{kvh} key/value heads do not divide {h} query heads"
        ));
    }
    if c.rope_base.is_some() && hd % 2 != 0 {
        return invalid(format!("rotary embedding needs an even head dim, got {hd}"));
    }
    if c.window == Some(0) {
        return invalid("a sliding window must hold at least one position".to_string());
    }
    if c.scale.is_some_and(|s| !s.is_finite()) {
        return invalid(format!("the scale must be finite, got {:?}", c.scale));
    }
    Ok(())
}

impl<D, H, Hd, E, KvH, Dv, B, T, D2, Tp> Forward<Tensor<(B, T, D2), E, Dv, Tp>>
    for MultiHeadAttention<D, H, Hd, E, KvH, Dv>
where
    D: Dim,
    H: Dim,
    Hd: Dim,
    E: FloatDtype,
    KvH: Dim,
    Dv: Backend,
    B: Dim,
    T: Dim,
    D2: Dim + SameDim<D, Attention>,
    Tp: TapeState,
{
    type Output = Tensor<(B, T, D), E, Dv, Tp>;
    /// Self-attention; panics with the [`try_forward`](MultiHeadAttention::try_forward) message.
    #[track_caller]
    fn forward(&self, x: Tensor<(B, T, D2), E, Dv, Tp>) -> Self::Output {
        or_panic(self.try_forward(x))
    }
}

/// The keys and values one attention layer has seen, for incremental
/// decoding ([`MultiHeadAttention::try_forward_cached`]). Stored after the
/// q/k norm and rotary embedding, as `(B, KvH, stored, Hd)`.
#[derive(Clone, Debug)]
pub struct LayerCache<E: FloatDtype, Dv: Backend = Cpu> {
    k: Option<Tensor<(Dyn, Dyn, Dyn, Dyn), E, Dv>>,
    v: Option<Tensor<(Dyn, Dyn, Dyn, Dyn), E, Dv>>,
    /// Absolute position of the first stored key.
    start: usize,
    /// Absolute position of the next token.
    next: usize,
}

impl<E: FloatDtype, Dv: Backend> Default for LayerCache<E, Dv> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: FloatDtype, Dv: Backend> LayerCache<E, Dv> {
    /// An empty cache: the next token is position 0.
    pub fn new() -> Self {
        LayerCache {
            k: None,
            v: None,
            start: 0,
            next: 0,
        }
    }
    /// How many positions have gone through (the next token's position).
    pub fn position(&self) -> usize {
        self.next
    }
    /// How many positions are held (fewer than [`position`](Self::position)
    /// under a sliding window).
    pub fn stored(&self) -> usize {
        self.k.as_ref().map_or(0, |k| k.dims()[2])
    }
    /// The cached keys `(B, KvH, stored, Hd)`, if any.
    pub fn keys(&self) -> Option<&Tensor<(Dyn, Dyn, Dyn, Dyn), E, Dv>> {
        self.k.as_ref()
    }
    /// The cached values `(B, KvH, stored, Hd)`, if any.
    pub fn values(&self) -> Option<&Tensor<(Dyn, Dyn, Dyn, Dyn), E, Dv>> {
        self.v.as_ref()
    }
    /// Forgets everything: the next token is position 0 again.
    pub fn clear(&mut self) {
        *self = Self::new();
    }
}

/// One [`LayerCache`] per attention layer of a model, for incremental
/// decoding with a stack ([`Encoder::try_forward_cached`](super::Encoder::try_forward_cached),
/// [`Decoder::try_forward_cached`](super::Decoder::try_forward_cached)).
#[derive(Clone, Debug)]
pub struct KvCache<E: FloatDtype, Dv: Backend = Cpu> {
    /// The caches, layer by layer.
    pub layers: Vec<LayerCache<E, Dv>>,
}

impl<E: FloatDtype, Dv: Backend> KvCache<E, Dv> {
    /// Empty caches for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: (0..num_layers).map(|_| LayerCache::new()).collect(),
        }
    }
    /// How many positions have gone through (0 with no layers).
    pub fn position(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::position)
    }
    /// Layer `i`'s cache.
    pub fn layer_mut(&mut self, i: usize) -> &mut LayerCache<E, Dv> {
        &mut self.layers[i]
    }
    /// Forgets everything.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(LayerCache::clear);
    }
    /// An error unless there is one cache per layer.
    pub(crate) fn check_layers(&self, n: usize) -> Result<()> {
        if self.layers.len() == n {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                op: "kv cache",
                reason: format!(
                    "the cache holds {} layers but the model has {n}",
                    self.layers.len()
                ),
            })
        }
    }
}
