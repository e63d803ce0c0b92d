//! nanoGPT: a decoder-only transformer language model (GPT-2 architecture).
//!
//! Token embedding `wte` plus learned positions `wpe`, `layers` pre-norm
//! blocks (causal self-attention, 4x GELU MLP), a final LayerNorm and a
//! language-model head tied to `wte` (`logits = x · wteᵀ`, no parameter of
//! its own). Parameter paths: `wte.weight`, `wpe.weight`,
//! `h.layers.3.attn.q_proj.weight`, ..., `h.norm.{weight,bias}` (= `ln_f`).
//!
//! ```
//! use zerfoo::models::{GenerateOpts, Gpt, GptConfig};
//! use zerfoo::prelude::*;
//! let cfg = GptConfig { vocab: 11, block: 8, layers: 2, heads: 2, width: 16, dropout: 0.0, bias: true };
//! let gpt: Gpt<f32> = Gpt::new(cfg, 0);
//! let ids = Tensor::<(Dyn, Dyn), i64>::from_vec((Dyn(2), Dyn(5)), vec![1; 10]).unwrap();
//! assert_eq!(gpt.forward(ids).dims(), [2, 5, 11]);
//! let out = gpt.generate(&[1, 2, 3], 4, GenerateOpts::greedy(), true).unwrap();
//! assert_eq!(out.len(), 7);
//! ```

// Typed shapes in signatures are the point of these layers.
#![allow(clippy::type_complexity)]

use zerfoo_kernels::{Backend, Cpu, Device, Dtype, FloatDtype};

use crate::autograd::TapeState;
use crate::data::TorchGenerator;
use crate::error::or_panic;
use crate::nn::{
    cross_entropy, AttentionConfig, BlockConfig, CrossEntropyOpts, Embedding, Encoder, KvCache,
    LayerNorm, LearnedPositions, Module, ParamVisitorMut,
};
use crate::shape::{Dim, Dyn, Shape};
use crate::tensor::{rng, Tensor};
use crate::tokenizer::{CharTokenizer, Tokenizer};
use crate::train::checkpoint::{read_checkpoint_config, MODEL_FILE, TOKENIZER_FILE};
use crate::{Error, Result};
use serde_json::{json, Value};
use std::path::Path;

/// The sizes of a [`Gpt`] (nanoGPT's `GPTConfig`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptConfig {
    /// Vocabulary size.
    pub vocab: usize,
    /// Context length (the most positions a forward pass sees).
    pub block: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads (must divide `width`).
    pub heads: usize,
    /// Model width (embedding size).
    pub width: usize,
    /// Dropout on the embeddings during training ([`Gpt::try_loss_train`]).
    pub dropout: f64,
    /// Biases in the linear layers and the LayerNorms (nanoGPT's `bias`).
    pub bias: bool,
}

impl GptConfig {
    /// nanoGPT's parameter count for this config (the head is tied to
    /// `wte`): `V·C + T·C + L·(12C² + 13C) + 2C` with biases,
    /// `V·C + T·C + L·(12C² + 2C) + C` without.
    pub fn nanogpt_param_count(&self) -> usize {
        let (v, t, l, c) = (self.vocab, self.block, self.layers, self.width);
        if self.bias {
            v * c + t * c + l * (12 * c * c + 13 * c) + 2 * c
        } else {
            v * c + t * c + l * (12 * c * c + 2 * c) + c
        }
    }

    /// The sizes as JSON (`{"vocab": .., "block": .., "layers": .., "heads":
    /// .., "width": .., "dropout": .., "bias": ..}`), the keys
    /// [`GptConfig::from_json`] reads back from a checkpoint's `config.json`.
    pub fn to_json(&self) -> Value {
        json!({
            "vocab": self.vocab, "block": self.block, "layers": self.layers,
            "heads": self.heads, "width": self.width, "dropout": self.dropout,
            "bias": self.bias,
        })
    }

    /// Reads the sizes from JSON written by [`GptConfig::to_json`] (other keys
    /// are ignored). A missing or non-integer size is an [`Error::Format`]
    /// naming the key; `dropout` defaults to 0 and `bias` to true.
    pub fn from_json(v: &Value) -> Result<Self> {
        let size = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| Error::Format {
                    what: "GPT config".into(),
                    reason: format!("missing or non-integer `{k}`"),
                })
        };
        Ok(GptConfig {
            vocab: size("vocab")?,
            block: size("block")?,
            layers: size("layers")?,
            heads: size("heads")?,
            width: size("width")?,
            dropout: v.get("dropout").and_then(Value::as_f64).unwrap_or(0.0),
            bias: v.get("bias").and_then(Value::as_bool).unwrap_or(true),
        })
    }
}

/// Token-by-token sampling settings for [`Gpt::generate`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenerateOpts {
    /// Logits are divided by this; `0` means greedy (argmax).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`.
    pub top_p: Option<f64>,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for GenerateOpts {
    fn default() -> Self {
        GenerateOpts {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

impl GenerateOpts {
    /// Greedy decoding (always the most likely token).
    pub fn greedy() -> Self {
        GenerateOpts {
            temperature: 0.0,
            ..Default::default()
        }
    }
}

/// The nanoGPT model, generic over its dtype and device. Sizes are runtime
/// ([`Dyn`]). Built on the CPU; `model.to_device(&cuda)` moves it.
#[derive(crate::nn::Module, Clone, Debug)]
pub struct Gpt<E: FloatDtype, D: Backend = Cpu> {
    /// Token embedding `[vocab, width]`, also the output head.
    pub wte: Embedding<Dyn, Dyn, E, D>,
    /// Learned positions `[block, width]`.
    pub wpe: LearnedPositions<Dyn, Dyn, E, D>,
    /// The blocks and the final LayerNorm (`h.norm` is nanoGPT's `ln_f`).
    pub h: Encoder<Dyn, Dyn, Dyn, Dyn, E, LayerNorm<Dyn, E, D>, Dyn, D>,
    /// The sizes.
    #[module(skip)]
    pub config: GptConfig,
}

struct NanoInit {
    std: f64,
    proj_std: f64,
    seed: u64,
    count: u64,
}

impl ParamVisitorMut for NanoInit {
    fn visit<S: Shape, E: FloatDtype, D: Backend>(&mut self, path: &str, p: &mut Tensor<S, E, D>) {
        self.count += 1;
        let seed = rng::bits(self.seed, self.count);
        let shape = p.shape();
        let matrix = p.dims().len() == 2;
        if path.ends_with("weight") && matrix {
            let resid = path.ends_with("o_proj.weight") || path.ends_with("fc2.weight");
            let std = if resid { self.proj_std } else { self.std };
            *p = crate::nn::init::normal(shape, std, seed).to_device(p.device());
        } else if path.ends_with("bias") {
            *p = Tensor::zeros(shape).to_device(p.device());
        }
    }
}

/// Sets the parameters named in `values` (row-major `f32`s of each
/// parameter's shape); every name must be visited.
struct SetParams {
    values: std::collections::HashMap<String, Vec<f32>>,
    error: Option<Error>,
}

impl ParamVisitorMut for SetParams {
    fn visit<S: Shape, E: FloatDtype, D: Backend>(&mut self, path: &str, p: &mut Tensor<S, E, D>) {
        let Some(v) = self.values.remove(path) else {
            return;
        };
        if let Err(e) = p.assign(v.iter().map(|&x| E::from_f64(x as f64)).collect()) {
            self.error.get_or_insert(e);
        }
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidArgument { op: "gpt", reason }
}

impl<E: FloatDtype> Gpt<E> {
    /// A model with nanoGPT's initialization from `seed`: weights
    /// `N(0, 0.02²)`, residual projections (`o_proj`, `fc2`)
    /// `N(0, (0.02/√(2·layers))²)`, biases zero, norms at ones and zeros.
    pub fn try_new(config: GptConfig, seed: u64) -> Result<Self> {
        let mut gpt = Self::try_new_modules(config, seed)?;
        let c = gpt.config;
        gpt.visit_params_mut(
            "",
            &mut NanoInit {
                std: 0.02,
                proj_std: 0.02 / (2.0 * c.layers as f64).sqrt(),
                seed,
                count: 0,
            },
        );
        Ok(gpt)
    }

    /// The model's modules with their own initialization (which
    /// [`try_new`](Self::try_new) then replaces with nanoGPT's, and loading
    /// a checkpoint with the file's values): `config` checked.
    fn try_new_modules(config: GptConfig, seed: u64) -> Result<Self> {
        let c = config;
        if c.vocab == 0 || c.block == 0 || c.layers == 0 || c.heads == 0 || c.width == 0 {
            return Err(invalid(format!("every size must be positive: {c:?}")));
        }
        if c.width % c.heads != 0 {
            return Err(invalid(format!(
                "heads {} do not divide width {}",
                c.heads, c.width
            )));
        }
        if !(0.0..1.0).contains(&c.dropout) {
            return Err(invalid(format!(
                "dropout must lie in [0, 1), got {}",
                c.dropout
            )));
        }
        let attn = AttentionConfig::default().causal(true).bias(c.bias);
        let block = BlockConfig::new(attn).mlp_bias(c.bias).norm_bias(c.bias);
        let (d, h) = (Dyn(c.width), Dyn(c.heads));
        Ok(Gpt {
            wte: Embedding::new(Dyn(c.vocab), d, rng::bits(seed, 1)),
            wpe: LearnedPositions::new(Dyn(c.block), d, rng::bits(seed, 2)),
            h: Encoder::try_new(
                c.layers,
                d,
                h,
                Dyn(c.width / c.heads),
                h,
                Dyn(4 * c.width),
                block,
                rng::bits(seed, 3),
            )?,
            config: c,
        })
    }

    /// Panicking twin of [`try_new`](Self::try_new).
    #[track_caller]
    pub fn new(config: GptConfig, seed: u64) -> Self {
        or_panic(Self::try_new(config, seed))
    }

    /// The model nanoGPT's `GPT(config)` builds from PyTorch's generator
    /// `gen` (after `torch.manual_seed(seed)`, `TorchGenerator::new(seed)`):
    /// the same draws in the same order — PyTorch's default
    /// initialization of each embedding and linear layer as it is
    /// constructed, then nanoGPT's `_init_weights` over the modules, then
    /// the residual projections (`c_proj`) drawn again — so the weights
    /// equal nanoGPT's (to float rounding) and `gen` is left where
    /// nanoGPT's is when training starts.
    ///
    /// nanoGPT's fused `c_attn` becomes `q_proj`/`k_proj`/`v_proj` (its rows
    /// in that order), `c_proj` is `o_proj`, `c_fc`/`mlp.c_proj` are
    /// `fc1`/`fc2`, and the tied `lm_head` is `wte`.
    pub fn try_new_nanogpt(config: GptConfig, gen: &mut TorchGenerator) -> Result<Self> {
        let c = config;
        let mut gpt = Self::try_new(c, 0)?;
        let (v, t, w) = (c.vocab as u64, c.block as u64, c.width as u64);
        let normal = |gen: &mut TorchGenerator, n: u64, std: f32| -> Result<Vec<f32>> {
            let mut out = vec![0f32; n as usize];
            gen.normal_f32(&mut out, 0.0, std)?;
            Ok(out)
        };
        let skip_normal = |gen: &mut TorchGenerator, n: u64| -> Result<()> {
            if n < 16 {
                return Err(invalid(format!(
                    "a tensor of {n} elements is drawn another way by PyTorch"
                )));
            }
            gen.discard(TorchGenerator::normal_draws(n));
            Ok(())
        };
        // nn.Linear(i, o) draws o·i weights (and o biases) uniformly.
        let linear = |i: u64, o: u64| o * i + if c.bias { o } else { 0 };
        // Construction: wte, wpe (N(0, 1)), the blocks, lm_head.
        skip_normal(gen, v * w)?;
        skip_normal(gen, t * w)?;
        let block = linear(w, 3 * w) + linear(w, w) + linear(w, 4 * w) + linear(4 * w, w);
        gen.discard(c.layers as u64 * block + w * v);
        // _init_weights, modules in order: wte (overwritten by lm_head, the
        // same tensor), wpe, per block c_attn, attn.c_proj, c_fc, mlp.c_proj,
        // then lm_head.
        let mut values = std::collections::HashMap::new();
        skip_normal(gen, v * w)?;
        values.insert("wpe.weight".to_string(), normal(gen, t * w, 0.02)?);
        for l in 0..c.layers {
            let p = format!("h.layers.{l}");
            let qkv = normal(gen, 3 * w * w, 0.02)?;
            for (k, part) in ["q", "k", "v"]
                .iter()
                .zip(qkv.chunks_exact((w * w) as usize))
            {
                values.insert(format!("{p}.attn.{k}_proj.weight"), part.to_vec());
            }
            skip_normal(gen, w * w)?;
            values.insert(format!("{p}.ffn.fc1.weight"), normal(gen, 4 * w * w, 0.02)?);
            skip_normal(gen, 4 * w * w)?;
        }
        values.insert("wte.weight".to_string(), normal(gen, v * w, 0.02)?);
        // The residual projections again, with the smaller deviation.
        let proj_std = (0.02 / (2.0 * c.layers as f64).sqrt()) as f32;
        for l in 0..c.layers {
            let p = format!("h.layers.{l}");
            values.insert(
                format!("{p}.attn.o_proj.weight"),
                normal(gen, w * w, proj_std)?,
            );
            values.insert(
                format!("{p}.ffn.fc2.weight"),
                normal(gen, 4 * w * w, proj_std)?,
            );
        }
        let mut set = SetParams {
            values,
            error: None,
        };
        gpt.visit_params_mut("", &mut set);
        if let Some(e) = set.error {
            return Err(e);
        }
        if let Some(name) = set.values.keys().next() {
            return Err(invalid(format!("the model has no parameter `{name}`")));
        }
        Ok(gpt)
    }
}

impl<E: FloatDtype, D: Backend> Gpt<E, D> {
    /// Logits `(B, T, vocab)` of ids `(B, T)`; traced ids give traced
    /// logits. Errors: `T > block`, an id outside the vocabulary.
    pub fn try_forward<B: Dim, T: Dim, Di: Device, Tp: TapeState>(
        &self,
        ids: Tensor<(B, T), i64, Di, Tp>,
    ) -> Result<Tensor<(B, T, Dyn), E, D, Tp>> {
        self.run(ids, None)
    }

    /// Panicking twin of [`try_forward`](Self::try_forward).
    #[track_caller]
    pub fn forward<B: Dim, T: Dim, Di: Device, Tp: TapeState>(
        &self,
        ids: Tensor<(B, T), i64, Di, Tp>,
    ) -> Tensor<(B, T, Dyn), E, D, Tp> {
        or_panic(self.try_forward(ids))
    }

    fn run<B: Dim, T: Dim, Di: Device, Tp: TapeState>(
        &self,
        ids: Tensor<(B, T), i64, Di, Tp>,
        dropout_seed: Option<u64>,
    ) -> Result<Tensor<(B, T, Dyn), E, D, Tp>> {
        let t = ids.shape().1.size();
        if t > self.config.block {
            return Err(invalid(format!(
                "sequence of {t} tokens exceeds the block size {}",
                self.config.block
            )));
        }
        let x = self.wte.try_forward(ids)?;
        let mut x = self.wpe.try_forward_at(x, 0)?;
        if let Some(seed) = dropout_seed {
            if self.config.dropout > 0.0 {
                x = x.dropout(self.config.dropout, seed);
            }
        }
        let x = self.h.try_forward(x)?;
        Ok(self.head(x))
    }

    fn head<B: Dim, T: Dim, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, Dyn), E, D, Tp>,
    ) -> Tensor<(B, T, Dyn), E, D, Tp> {
        x.matmul_t(self.wte.weight.retaped::<Tp>())
    }

    /// Mean next-token cross-entropy of `ids` against `targets` (both `(B, T)`).
    pub fn try_loss<B: Dim, T: Dim, Di: Device, Tp: TapeState, Dt: Device, Tt>(
        &self,
        ids: Tensor<(B, T), i64, Di, Tp>,
        targets: &Tensor<(B, T), i64, Dt, Tt>,
    ) -> Result<Tensor<(), E, D, Tp>> {
        let logits = self.try_forward(ids)?;
        crate::nn::try_cross_entropy(logits, targets, CrossEntropyOpts::default())
    }

    /// Panicking twin of [`try_loss`](Self::try_loss).
    #[track_caller]
    pub fn loss<B: Dim, T: Dim, Di: Device, Tp: TapeState, Dt: Device, Tt>(
        &self,
        ids: Tensor<(B, T), i64, Di, Tp>,
        targets: &Tensor<(B, T), i64, Dt, Tt>,
    ) -> Tensor<(), E, D, Tp> {
        or_panic(self.try_loss(ids, targets))
    }

    /// The training loss: [`try_loss`](Self::try_loss) with dropout (mask
    /// drawn from `seed`) on the embeddings when `dropout > 0`.
    pub fn try_loss_train<B: Dim, T: Dim, Di: Device, Tp: TapeState, Dt: Device, Tt>(
        &self,
        ids: Tensor<(B, T), i64, Di, Tp>,
        targets: &Tensor<(B, T), i64, Dt, Tt>,
        seed: u64,
    ) -> Result<Tensor<(), E, D, Tp>> {
        let logits = self.run(ids, Some(seed))?;
        Ok(cross_entropy(logits, targets, CrossEntropyOpts::default()))
    }

    /// The logits of the position after `window` (at positions `0..`), fed
    /// whole (no cache).
    fn next_logits_full(&self, window: &[u32]) -> Result<Vec<f64>> {
        let ids = ids_tensor(window)?;
        let logits = self.try_forward(ids)?;
        Ok(last_row(&logits.to_vec(), self.config.vocab))
    }

    /// Samples `max_new_tokens` tokens after `prompt` and returns prompt and
    /// continuation. The context is cropped to the last `block` tokens. With
    /// `use_cache`, keys and values are kept in a [`KvCache`] so each new
    /// token costs one position; once the sequence outgrows `block` the
    /// window shifts and (learned absolute positions being what they are)
    /// the cropped window is recomputed, so both paths see exactly the same
    /// context.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        opts: GenerateOpts,
        use_cache: bool,
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(invalid("generation needs a non-empty prompt".into()));
        }
        let block = self.config.block;
        let mut seq = prompt.to_vec();
        let mut cache: KvCache<E, D> = self.h.new_cache();
        let mut start = 0usize;
        // A token is many small kernels with serial work between them: the
        // other workers spin for the next one instead of sleeping.
        let _warm = crate::WarmWorkers::start();
        for step in 0..max_new_tokens {
            let logits = if use_cache {
                if seq.len() - start > block {
                    cache.clear();
                    start = seq.len() - block;
                }
                let pos = cache.position();
                let fresh = &seq[start + pos..];
                let x = self.wte.try_forward(ids_tensor(fresh)?)?;
                let x = self.wpe.try_forward_at(x, pos)?;
                let x = self.h.try_forward_cached(x, &mut cache)?;
                last_row(&self.head(x).to_vec(), self.config.vocab)
            } else {
                self.next_logits_full(&seq[seq.len().saturating_sub(block)..])?
            };
            let next = sample(&logits, &opts, rng::bits(opts.seed, step as u64))?;
            seq.push(next as u32);
        }
        Ok(seq)
    }
}

impl<E: FloatDtype> Gpt<E> {
    /// Loads the model of a training checkpoint folder (see
    /// [`train::checkpoint`](crate::train::checkpoint)): the sizes from its
    /// `config.json` ([`GptConfig::from_json`]), then every parameter
    /// strictly from `model.safetensors`. A missing config, a missing or
    /// mis-shaped tensor, or a checkpoint of another dtype is an error.
    pub fn from_checkpoint(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = read_checkpoint_config(dir)?.ok_or_else(|| Error::Format {
            what: dir.display().to_string(),
            reason: "the checkpoint has no config.json".into(),
        })?;
        // (Loading is strict: every parameter is read from the file, so
        // nanoGPT's initialization would be drawn for nothing.)
        let mut model = Gpt::try_new_modules(GptConfig::from_json(&config)?, 0)?;
        crate::io::load(&mut model, dir.join(MODEL_FILE))?;
        Ok(model)
    }
}

/// Generates text from a character-level checkpoint folder: loads the model
/// in the dtype its `config.json` names (`"dtype"`: f32, f64, f16 or bf16;
/// f32 if absent), the [`CharTokenizer`] from `tokenizer.json`, and samples
/// `tokens` characters after `prompt`. Returns prompt and continuation. This
/// is what `cargo run --example shakespeare -- sample` runs.
pub fn sample_from_checkpoint(
    dir: impl AsRef<Path>,
    prompt: &str,
    tokens: usize,
    opts: GenerateOpts,
) -> Result<String> {
    let dir = dir.as_ref();
    let tok_path = dir.join(TOKENIZER_FILE);
    let tok_text = std::fs::read_to_string(&tok_path).map_err(|e| Error::Format {
        what: tok_path.display().to_string(),
        reason: e.to_string(),
    })?;
    let tok = CharTokenizer::from_json(&tok_text)?;
    let prompt = tok.encode(prompt)?;
    let dtype = read_checkpoint_config(dir)?
        .and_then(|c| c.get("dtype").and_then(Value::as_str).map(String::from))
        .unwrap_or_else(|| "f32".into());
    fn run<E: FloatDtype>(
        dir: &Path,
        prompt: &[u32],
        n: usize,
        o: GenerateOpts,
    ) -> Result<Vec<u32>> {
        Gpt::<E>::from_checkpoint(dir)?.generate(prompt, n, o, true)
    }
    let out = match dtype.as_str() {
        "f32" => run::<f32>(dir, &prompt, tokens, opts)?,
        "f64" => run::<f64>(dir, &prompt, tokens, opts)?,
        "f16" => run::<half::f16>(dir, &prompt, tokens, opts)?,
        "bf16" => run::<half::bf16>(dir, &prompt, tokens, opts)?,
        d => {
            return Err(Error::Format {
                what: dir.join("config.json").display().to_string(),
                reason: format!("unknown dtype `{d}` (f32, f64, f16 or bf16)"),
            })
        }
    };
    tok.decode(&out)
}

fn ids_tensor(ids: &[u32]) -> Result<Tensor<(Dyn, Dyn), i64>> {
    Tensor::from_vec(
        (Dyn(1), Dyn(ids.len())),
        ids.iter().map(|&i| i64::from(i)).collect(),
    )
}

fn last_row<E: Dtype>(v: &[E], vocab: usize) -> Vec<f64> {
    v[v.len() - vocab..].iter().map(|x| x.to_f64()).collect()
}

/// Picks a token from `logits` as `opts` says; `bits` is the random draw.
fn sample(logits: &[f64], opts: &GenerateOpts, bits: u64) -> Result<usize> {
    let argmax = || {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        best
    };
    if opts.temperature == 0.0 {
        return Ok(argmax());
    }
    if opts.temperature.is_nan() || opts.temperature < 0.0 || opts.temperature.is_infinite() {
        return Err(invalid(format!(
            "temperature must be positive (or 0 for greedy), got {}",
            opts.temperature
        )));
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if let Some(k) = opts.top_k {
        order.truncate(k.max(1));
    }
    let top = logits[order[0]];
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] - top) / opts.temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = opts.top_p {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, q) in probs.iter().enumerate() {
            acc += q;
            if acc >= p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let u = (bits >> 11) as f64 / (1u64 << 53) as f64 * total;
    let mut acc = 0.0;
    for (q, &i) in probs.iter().zip(&order) {
        acc += q;
        if u < acc {
            return Ok(i);
        }
    }
    Ok(*order.last().unwrap_or(&0))
}
