//! Transformer blocks, stacks and position encodings: forward values against
//! explicit-loop f64 implementations (norms, attention, MLP), padding and
//! causality, KV-cache decoding of stacks = the full forward, f64
//! finite-difference gradients of inputs and every parameter, dotted
//! parameter paths, run-time errors for `Dyn` dims, and code generic over
//! dims.

use crate::attn_ref;

use attn_ref::{check_module_grads, layer_norm, Lin, RefAttn, Rms};
use zerfoo::autograd::TapeState;
use zerfoo::nn::{
    AttentionConfig, BlockConfig, BlockMlp, BlockNorm, Decoder, DecoderBlock, Encoder,
    EncoderBlock, Forward, KvCache, LayerCache, LayerNorm, LearnedPositions, Module, QkNorm,
    RmsNorm, SinusoidalPositions, TransformerBlock,
};
use zerfoo::prelude::*;
use zerfoo_tests::{check_grad1, check_grad2, rel_err, weighted_sum};

dim!(Model = 8);
dim!(Heads = 2);
dim!(HeadDim = 4);
dim!(Heads4 = 4);
dim!(KvHeads = 2);
dim!(Hd2 = 2);
dim!(Ffn = 12);
dim!(Batch = 2);
dim!(Seq = 5);
dim!(Mem = 3);
dim!(MaxLen = 6);

type LnBlock = TransformerBlock<Model, Heads, HeadDim, Ffn, f64>;
type RmsGqaBlock = TransformerBlock<Model, Heads4, Hd2, Ffn, f64, RmsNorm<Model, f64>, KvHeads>;
type LnDecBlock = DecoderBlock<Model, Heads, Hd2, Ffn, f64>;

#[track_caller]
fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    let e = rel_err(got, want);
    assert!(
        e <= tol,
        "rel err {e:e} > {tol:e}\n got {got:?}\nwant {want:?}"
    );
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn input(seed: u64) -> Tensor<(Batch, Seq, Model), f64> {
    Tensor::randn((Batch, Seq, Model), seed)
}

fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

// ---------------------------------------------------------------- references

/// A norm applied row by row with explicit loops, and randomized weights.
trait RefNorm: zerfoo::nn::Module {
    fn rows(&self, x: &[f64]) -> Vec<f64>;
    fn randomize(&mut self, seed: u64);
}

impl RefNorm for LayerNorm<Model, f64> {
    fn rows(&self, x: &[f64]) -> Vec<f64> {
        let w = self.weight.to_vec();
        let b = self
            .bias
            .as_ref()
            .map_or(vec![0.0; w.len()], |b| b.to_vec());
        x.chunks(8)
            .flat_map(|r| layer_norm(r, &w, &b, self.eps))
            .collect()
    }
    fn randomize(&mut self, seed: u64) {
        self.weight = Tensor::randn((Model,), seed)
            .mul_scalar(0.3)
            .add_scalar(1.0);
        if self.bias.is_some() {
            self.bias = Some(Tensor::randn((Model,), seed + 1).mul_scalar(0.3));
        }
    }
}

impl RefNorm for RmsNorm<Model, f64> {
    fn rows(&self, x: &[f64]) -> Vec<f64> {
        let r = Rms::of(self);
        x.chunks(8).flat_map(|row| r.apply(row)).collect()
    }
    fn randomize(&mut self, seed: u64) {
        self.weight = Tensor::randn((Model,), seed)
            .mul_scalar(0.3)
            .add_scalar(1.0);
    }
}

/// GELU of each element: exact via zerfoo's `gelu` op (checked against
/// PyTorch elsewhere), or the tanh formula written out.
fn gelu(x: &[f64], tanh: bool) -> Vec<f64> {
    if tanh {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        x.iter()
            .map(|&v| 0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh()))
            .collect()
    } else {
        Tensor::<(Dyn,), f64>::from_vec((Dyn(x.len()),), x.to_vec())
            .unwrap()
            .gelu()
            .to_vec()
    }
}

fn ref_mlp<F: Dim>(m: &BlockMlp<Model, F, f64>, x: &[f64]) -> Vec<f64> {
    Lin::of(&m.fc2).apply(&gelu(&Lin::of(&m.fc1).apply(x), m.gelu_tanh))
}

fn ref_block<H: Dim, Hd: Dim, KvH: Dim, N: RefNorm>(
    blk: &TransformerBlock<Model, H, Hd, Ffn, f64, N, KvH>,
    b: usize,
    t: usize,
    x: &[f64],
    pad: Option<&[bool]>,
) -> Vec<f64> {
    let a = RefAttn::of(&blk.attn).self_attention(b, &blk.norm1.rows(x), t, pad);
    let x = add(x, &a);
    let f = ref_mlp(&blk.ffn, &blk.norm2.rows(&x));
    add(&x, &f)
}

#[allow(clippy::too_many_arguments)]
fn ref_decoder_block<N: RefNorm>(
    blk: &DecoderBlock<Model, Heads, Hd2, Ffn, f64, N>,
    b: usize,
    t: usize,
    x: &[f64],
    tk: usize,
    mem: &[f64],
    pad: Option<&[bool]>,
    mem_pad: Option<&[bool]>,
) -> Vec<f64> {
    let a = RefAttn::of(&blk.self_attn).self_attention(b, &blk.norm1.rows(x), t, pad);
    let x = add(x, &a);
    let c =
        RefAttn::of(&blk.cross_attn).run(b, &blk.norm2.rows(&x), t, mem, tk, mem_pad, 0, 0, false);
    let x = add(&x, &c);
    let f = ref_mlp(&blk.ffn, &blk.norm3.rows(&x));
    add(&x, &f)
}

fn ln_block(cfg: BlockConfig, seed: u64) -> LnBlock {
    let mut blk: LnBlock = TransformerBlock::new(Model, Heads, HeadDim, Heads, Ffn, cfg, seed);
    blk.norm1.randomize(seed + 10);
    blk.norm2.randomize(seed + 20);
    blk
}

fn rms_gqa_block(cfg: BlockConfig, seed: u64) -> RmsGqaBlock {
    let mut blk: RmsGqaBlock = TransformerBlock::new(Model, Heads4, Hd2, KvHeads, Ffn, cfg, seed);
    blk.norm1.randomize(seed + 10);
    blk.norm2.randomize(seed + 20);
    blk
}

fn dec_block(cfg: BlockConfig, seed: u64) -> LnDecBlock {
    let mut blk: LnDecBlock = DecoderBlock::new(Model, Heads, Hd2, Heads, Ffn, cfg, seed);
    blk.norm1.randomize(seed + 10);
    blk.norm2.randomize(seed + 20);
    blk.norm3.randomize(seed + 30);
    blk
}

fn causal_rope() -> AttentionConfig {
    AttentionConfig::default().causal(true).rope(10000.0)
}

// ---------------------------------------------------------------- blocks

#[test]
fn layer_norm_block_matches_loops() {
    let x = input(1);
    let xv = x.to_vec();
    for (i, cfg) in [
        BlockConfig::default(),
        BlockConfig::new(causal_rope()).mlp_bias(false),
        BlockConfig::new(AttentionConfig::default().bias(false))
            .gelu_tanh(true)
            .eps(1e-3),
    ]
    .into_iter()
    .enumerate()
    {
        let blk = ln_block(cfg, 10 + i as u64);
        assert_eq!(blk.ffn.gelu_tanh, cfg.gelu_tanh);
        let y = blk.forward(x.clone());
        assert_eq!(y.dims(), [2, 5, 8]);
        assert_close(&y.to_vec(), &ref_block(&blk, 2, 5, &xv, None), 1e-12);
    }
}

#[test]
fn rms_norm_gqa_block_matches_loops() {
    let x = input(2);
    let xv = x.to_vec();
    let cfg = BlockConfig::new(
        AttentionConfig::default()
            .causal(true)
            .rope(100.0)
            .window(3)
            .qk_norm(QkNorm::gemma(1e-6)),
    )
    .gelu_tanh(true);
    let blk = rms_gqa_block(cfg, 20);
    assert_close(
        &blk.forward(x).to_vec(),
        &ref_block(&blk, 2, 5, &xv, None),
        1e-12,
    );
}

#[test]
fn encoder_block_with_padding_matches_loops() {
    let x = input(3);
    let xv = x.to_vec();
    let pad_v: Vec<bool> = (0..10).map(|n| n == 4 || n == 5 || n == 6).collect();
    let pad = Tensor::<(Batch, Seq), bool>::from_vec((Batch, Seq), pad_v.clone()).unwrap();
    let blk: EncoderBlock<Model, Heads, HeadDim, Ffn, f64> = ln_block(BlockConfig::default(), 30);
    let y = blk.forward_padded(x.clone(), &pad).to_vec();
    assert_close(&y, &ref_block(&blk, 2, 5, &xv, Some(&pad_v)), 1e-12);
    // The padded tokens' values do not reach the other positions.
    let mut x2 = xv.clone();
    for (n, v) in x2.iter_mut().enumerate() {
        if pad_v[n / 8] {
            *v *= -3.0;
        }
    }
    let x2 = Tensor::<(Batch, Seq, Model), f64>::from_vec((Batch, Seq, Model), x2).unwrap();
    let y2 = blk.forward_padded(x2, &pad).to_vec();
    for (row, &p) in pad_v.iter().enumerate() {
        if !p {
            assert!(
                max_diff(&y[row * 8..][..8], &y2[row * 8..][..8]) < 1e-14,
                "row {row}"
            );
        }
    }
}

#[test]
fn decoder_block_matches_loops() {
    let x = input(4);
    let mem: Tensor<(Batch, Mem, Model), f64> = Tensor::randn((Batch, Mem, Model), 5);
    let (xv, mv) = (x.to_vec(), mem.to_vec());
    let blk = dec_block(BlockConfig::new(causal_rope()), 40);
    // The self-attention is causal and rotary, the cross-attention neither.
    assert!(blk.self_attn.config.causal && blk.self_attn.config.rope_base.is_some());
    assert!(!blk.cross_attn.config.causal && blk.cross_attn.config.rope_base.is_none());
    let y = blk.forward((x.clone(), mem.clone()));
    assert_eq!(y.dims(), [2, 5, 8]);
    let want = ref_decoder_block(&blk, 2, 5, &xv, 3, &mv, None, None);
    assert_close(&y.to_vec(), &want, 1e-12);
    // With padding of both.
    let pad_v: Vec<bool> = (0..10).map(|n| n == 9).collect();
    let mpad_v = vec![false, false, true, true, false, false];
    let pad = Tensor::<(Batch, Seq), bool>::from_vec((Batch, Seq), pad_v.clone()).unwrap();
    let mpad = Tensor::<(Batch, Mem), bool>::from_vec((Batch, Mem), mpad_v.clone()).unwrap();
    let y = blk
        .try_forward_masked(x, mem, Some(&pad), Some(&mpad))
        .unwrap();
    let want = ref_decoder_block(&blk, 2, 5, &xv, 3, &mv, Some(&pad_v), Some(&mpad_v));
    assert_close(&y.to_vec(), &want, 1e-12);
}

#[test]
fn causal_block_ignores_later_tokens() {
    let blk = rms_gqa_block(BlockConfig::new(causal_rope()), 50);
    let x = input(6);
    let y = blk.forward(x.clone()).to_vec();
    let mut x2 = x.to_vec();
    x2[4 * 8] += 1.0; // batch 0, last position
    let x2 = Tensor::<(Batch, Seq, Model), f64>::from_vec((Batch, Seq, Model), x2).unwrap();
    let y2 = blk.forward(x2).to_vec();
    assert_eq!(y[..4 * 8], y2[..4 * 8]);
    assert!(max_diff(&y[4 * 8..5 * 8], &y2[4 * 8..5 * 8]) > 1e-6);
    assert_eq!(y[5 * 8..], y2[5 * 8..]);
}

#[test]
fn block_mlp_takes_any_rank() {
    let m: BlockMlp<Model, Ffn, f64> = BlockMlp::new(Model, Ffn, true, 0);
    let x2: Tensor<(U3, Model), f64> = Tensor::randn(Default::default(), 1);
    let y2 = m.forward(x2.clone());
    assert_eq!(y2.dims(), [3, 8]);
    assert_close(&y2.to_vec(), &ref_mlp(&m, &x2.to_vec()), 1e-12);
    let x4: Tensor<(U1, U2, U3, Model), f64> = Tensor::randn(Default::default(), 2);
    let y4 = m.forward(x4.clone());
    assert_eq!(y4.dims(), [1, 2, 3, 8]);
    assert_close(&y4.to_vec(), &ref_mlp(&m, &x4.to_vec()), 1e-12);
}

// ---------------------------------------------------------------- stacks

#[test]
fn encoder_stack_matches_loops() {
    let x = input(7);
    let xv = x.to_vec();
    let mut enc: Encoder<Model, Heads, HeadDim, Ffn, f64> = Encoder::new(
        3,
        Model,
        Heads,
        HeadDim,
        Heads,
        Ffn,
        BlockConfig::default(),
        60,
    );
    for (i, l) in enc.layers.iter_mut().enumerate() {
        l.norm1.randomize(100 + i as u64);
        l.norm2.randomize(200 + i as u64);
    }
    enc.norm.randomize(300);
    let pad_v: Vec<bool> = (0..10).map(|n| n == 0 || n == 8).collect();
    let pad = Tensor::<(Batch, Seq), bool>::from_vec((Batch, Seq), pad_v.clone()).unwrap();
    for p in [None, Some(&pad_v)] {
        let mut want = xv.clone();
        for l in &enc.layers {
            want = ref_block(l, 2, 5, &want, p.map(|v| &v[..]));
        }
        let want = enc.norm.rows(&want);
        let got = match p {
            None => enc.forward(x.clone()),
            Some(_) => enc.forward_padded(x.clone(), &pad),
        };
        assert_close(&got.to_vec(), &want, 1e-12);
    }
    // The layers are built from different seeds.
    assert_ne!(
        enc.layers[0].attn.q_proj.weight.to_vec(),
        enc.layers[1].attn.q_proj.weight.to_vec()
    );
}

#[test]
fn decoder_stack_matches_loops() {
    let x = input(8);
    let mem: Tensor<(Batch, Mem, Model), f64> = Tensor::randn((Batch, Mem, Model), 9);
    let (xv, mv) = (x.to_vec(), mem.to_vec());
    let mut dec: Decoder<Model, Heads, Hd2, Ffn, f64> = Decoder::new(
        2,
        Model,
        Heads,
        Hd2,
        Heads,
        Ffn,
        BlockConfig::new(causal_rope()),
        70,
    );
    for (i, l) in dec.layers.iter_mut().enumerate() {
        l.norm1.randomize(100 + i as u64);
        l.norm2.randomize(200 + i as u64);
        l.norm3.randomize(300 + i as u64);
    }
    let mut want = xv.clone();
    for l in &dec.layers {
        want = ref_decoder_block(l, 2, 5, &want, 3, &mv, None, None);
    }
    let want = dec.norm.rows(&want);
    assert_close(&dec.forward((x, mem)).to_vec(), &want, 1e-12);
}

#[test]
fn stack_paths_and_counts() {
    let enc: Encoder<Model, Heads4, Hd2, Ffn, f64, RmsNorm<Model, f64>, KvHeads> = Encoder::new(
        4,
        Model,
        Heads4,
        Hd2,
        KvHeads,
        Ffn,
        BlockConfig::new(AttentionConfig::default().bias(false)).mlp_bias(false),
        0,
    );
    let paths: Vec<String> = enc.param_info().into_iter().map(|p| p.path).collect();
    assert!(paths.contains(&"layers.3.attn.q_proj.weight".to_string()));
    assert_eq!(
        paths[..7],
        [
            "layers.0.norm1.weight",
            "layers.0.attn.q_proj.weight",
            "layers.0.attn.k_proj.weight",
            "layers.0.attn.v_proj.weight",
            "layers.0.attn.o_proj.weight",
            "layers.0.norm2.weight",
            "layers.0.ffn.fc1.weight",
        ]
    );
    assert_eq!(paths.last().unwrap(), "norm.weight");
    // Per layer: norms 8 + 8, q 8x8, k and v 4x8 each, o 8x8, fc1 12x8, fc2 8x12.
    assert_eq!(enc.num_params(), 4 * (16 + 64 + 64 + 64 + 96 + 96) + 8);

    let dec: Decoder<Model, Heads, Hd2, Ffn, f64> =
        Decoder::new(2, Model, Heads, Hd2, Heads, Ffn, BlockConfig::default(), 0);
    let paths: Vec<String> = dec.param_info().into_iter().map(|p| p.path).collect();
    for p in [
        "layers.0.self_attn.q_proj.weight",
        "layers.1.cross_attn.k_proj.bias",
        "layers.1.norm3.bias",
        "layers.1.ffn.fc2.weight",
        "norm.bias",
    ] {
        assert!(paths.iter().any(|q| q == p), "{p} missing from {paths:?}");
    }
}

// ---------------------------------------------------------------- KV cache

/// Feeds `x` `(2, 5, 8)` to `step` in chunks and reassembles the outputs.
fn in_chunks(
    x: &Tensor<(Batch, Seq, Model), f64>,
    chunks: &[usize],
    mut step: impl FnMut(Tensor<(Batch, Dyn, Model), f64>) -> Vec<f64>,
) -> Vec<f64> {
    let mut out = vec![0.0; 80];
    let mut start = 0;
    for &n in chunks {
        let y = step(x.clone().narrow::<Axis<1>>(start, n));
        for b in 0..2 {
            for t in 0..n {
                out[(b * 5 + start + t) * 8..][..8].copy_from_slice(&y[(b * n + t) * 8..][..8]);
            }
        }
        start += n;
    }
    out
}

#[test]
fn cached_gpt_stack_equals_full_forward() {
    let x = input(11);
    let configs = [
        BlockConfig::new(causal_rope()),
        BlockConfig::new(causal_rope().window(2).qk_norm(QkNorm::gemma(1e-6))),
    ];
    for cfg in configs {
        let gpt: Encoder<Model, Heads4, Hd2, Ffn, f64, RmsNorm<Model, f64>, KvHeads> =
            Encoder::new(3, Model, Heads4, Hd2, KvHeads, Ffn, cfg, 80);
        let want = gpt.forward(x.clone()).to_vec();
        for chunks in [&[1, 1, 1, 1, 1][..], &[3, 2]] {
            let mut cache = gpt.new_cache();
            let got = in_chunks(&x, chunks, |piece| {
                gpt.forward_cached(piece, &mut cache).to_vec()
            });
            assert!(max_diff(&got, &want) <= 1e-12, "{chunks:?}");
            assert_eq!(cache.position(), 5);
        }
    }
    // A single block too.
    let blk = ln_block(BlockConfig::new(causal_rope()), 81);
    let want = blk.forward(x.clone()).to_vec();
    let mut cache = LayerCache::new();
    let got = in_chunks(&x, &[2, 2, 1], |p| {
        blk.forward_cached(p, &mut cache).to_vec()
    });
    assert!(max_diff(&got, &want) <= 1e-12);
}

#[test]
fn cached_decoder_stack_equals_full_forward() {
    let x = input(12);
    let mem: Tensor<(Batch, Mem, Model), f64> = Tensor::randn((Batch, Mem, Model), 13);
    let mpad = Tensor::<(Batch, Mem), bool>::from_fn((Batch, Mem), |n| n == 2);
    let dec: Decoder<Model, Heads, Hd2, Ffn, f64> = Decoder::new(
        2,
        Model,
        Heads,
        Hd2,
        Heads,
        Ffn,
        BlockConfig::new(causal_rope()),
        90,
    );
    let want = dec
        .try_forward_masked(x.clone(), mem.clone(), None, Some(&mpad))
        .unwrap()
        .to_vec();
    let mut cache = dec.new_cache();
    let got = in_chunks(&x, &[1, 1, 1, 1, 1], |p| {
        dec.try_forward_cached(p, mem.clone(), Some(&mpad), &mut cache)
            .unwrap()
            .to_vec()
    });
    assert!(max_diff(&got, &want) <= 1e-12);
    cache.clear();
    assert_eq!(cache.position(), 0);
}

// ---------------------------------------------------------------- gradients

#[test]
fn gradients_layer_norm_block() {
    let blk: TransformerBlock<Model, Heads, Hd2, Ffn, f64> = TransformerBlock::new(
        Model,
        Heads,
        Hd2,
        Heads,
        Ffn,
        BlockConfig::new(causal_rope()),
        1,
    );
    let x: Tensor<(U2, U3, Model), f64> = Tensor::randn(Default::default(), 2);
    check_module_grads(&blk, x, |m, x| weighted_sum(m.forward(x), 3));
}

#[test]
fn gradients_rms_norm_gqa_block_with_padding() {
    let cfg = BlockConfig::new(
        AttentionConfig::default()
            .rope(10.0)
            .qk_norm(QkNorm::gemma(1e-6)),
    )
    .gelu_tanh(true);
    let blk = rms_gqa_block(cfg, 4);
    let x: Tensor<(U2, U3, Model), f64> = Tensor::randn(Default::default(), 5);
    let pad = Tensor::<(U2, U3), bool>::from_fn(Default::default(), |n| n == 1);
    check_module_grads(&blk, x, |m, x| weighted_sum(m.forward_padded(x, &pad), 6));
}

#[test]
fn gradients_decoder_block() {
    let blk = dec_block(BlockConfig::new(causal_rope()), 7);
    let x: Tensor<(U2, U3, Model), f64> = Tensor::randn(Default::default(), 8);
    let mem: Tensor<(U2, U2, Model), f64> = Tensor::randn(Default::default(), 9);
    check_grad2(x.clone(), mem.clone(), |x, mem| {
        weighted_sum(blk.forward((x, mem)), 10)
    });
    check_module_grads(&blk, x, |m, x| {
        weighted_sum(m.forward((x, mem.clone())), 11)
    });
}

#[test]
fn gradients_stacks() {
    let enc: Encoder<Model, Heads, Hd2, Ffn, f64> =
        Encoder::new(2, Model, Heads, Hd2, Heads, Ffn, BlockConfig::default(), 12);
    let x: Tensor<(U1, U3, Model), f64> = Tensor::randn(Default::default(), 13);
    check_module_grads(&enc, x.clone(), |m, x| weighted_sum(m.forward(x), 14));
    // The decoder over the encoder's output: gradients reach both stacks'
    // inputs through the memory.
    let dec: Decoder<Model, Heads, Hd2, Ffn, f64> =
        Decoder::new(1, Model, Heads, Hd2, Heads, Ffn, BlockConfig::default(), 15);
    let y: Tensor<(U1, U2, Model), f64> = Tensor::randn(Default::default(), 16);
    check_grad2(y.clone(), x.clone(), |y, x| {
        weighted_sum(dec.forward((y, enc.forward(x.traced()))), 17)
    });
    check_module_grads(&dec, y, |m, y| weighted_sum(m.forward((y, x.clone())), 18));
}

// ---------------------------------------------------------------- positions

#[test]
fn sinusoidal_table_by_hand() {
    dim!(Four = 4);
    // D = 4: frequencies 1 and 1/100.
    let pe = SinusoidalPositions::new(Four)
        .table::<_, f64>(U3::default(), 0)
        .to_vec();
    for p in 0..3 {
        let t = p as f64;
        let want = [t.sin(), t.cos(), (t / 100.0).sin(), (t / 100.0).cos()];
        assert_close(&pe[p * 4..(p + 1) * 4], &want, 1e-15);
    }
    // An offset continues the positions; an odd width ends with a sine.
    let shifted = SinusoidalPositions::new(Four)
        .table::<_, f64>(U2::default(), 1)
        .to_vec();
    assert_eq!(shifted[..], pe[4..]);
    dim!(Five = 5);
    let odd = SinusoidalPositions::new(Five)
        .table::<_, f64>(U2::default(), 0)
        .to_vec();
    let f = 1.0 / 10000f64.powf(4.0 / 5.0);
    assert!((odd[9] - f.sin()).abs() < 1e-15);
}

#[test]
fn sinusoidal_positions_add_to_every_sequence() {
    let pos = SinusoidalPositions::new(Model);
    let x = input(20);
    let y = pos.forward(x.clone()).to_vec();
    let table = pos.table::<_, f64>(Seq, 0).to_vec();
    let xv = x.to_vec();
    for n in 0..80 {
        assert!((y[n] - (xv[n] + table[n % 40])).abs() < 1e-15);
    }
    let y3 = pos.forward_at(x, 3).to_vec();
    let t3 = pos.table::<_, f64>(Dyn(8), 0).to_vec();
    assert!((y3[0] - (xv[0] + t3[24])).abs() < 1e-15);
    assert_eq!(pos.num_params(), 0);
    // The input gradient passes straight through.
    check_grad1(input(21), |x| weighted_sum(pos.forward(x), 22));
}

#[test]
fn learned_positions_add_rows_and_check_range() {
    let mut pos: LearnedPositions<MaxLen, Model, f64> = LearnedPositions::new(MaxLen, Model, 0);
    pos.weight = Tensor::randn((MaxLen, Model), 1);
    let w = pos.weight.to_vec();
    let x = input(23);
    let xv = x.to_vec();
    let y = pos.forward(x.clone()).to_vec();
    for n in 0..80 {
        assert_eq!(y[n], xv[n] + w[n % 40]);
    }
    let y1 = pos.forward_at(x.clone(), 1).to_vec();
    for n in 0..80 {
        assert_eq!(y1[n], xv[n] + w[8 + n % 40]);
    }
    let err = pos.try_forward_at(x, 2).unwrap_err();
    assert!(
        matches!(
            err,
            Error::IndexOutOfRange {
                index: 6,
                size: 6,
                ..
            }
        ),
        "{err}"
    );
    let long: Tensor<(U1, Dyn, Model), f64> = Tensor::zeros((U1::default(), Dyn(7), Model));
    assert!(pos.try_forward(long).is_err());
    assert_eq!(pos.param_info()[0].path, "weight");
    // Gradients: rows 1..6 used by both sequences, row 0 not at all.
    let x: Tensor<(U2, U5, Model), f64> = Tensor::randn(Default::default(), 24);
    check_module_grads(&pos, x.clone(), |m, x| weighted_sum(m.forward_at(x, 1), 25));
    let g = pos
        .forward_at(x.traced(), 1)
        .sum_all()
        .backward()
        .get(&pos.weight)
        .unwrap()
        .to_vec();
    assert!(g[..8].iter().all(|&v| v == 0.0));
    assert!(g[8..].iter().all(|&v| v == 2.0));
}

#[test]
#[should_panic(expected = "index error in `learned positions`")]
fn learned_positions_beyond_the_table_panic() {
    let pos: LearnedPositions<MaxLen, Model, f32> = LearnedPositions::new(MaxLen, Model, 0);
    let long: Tensor<(U1, Dyn, Model), f32> = Tensor::zeros((U1::default(), Dyn(7), Model));
    let _ = pos.forward(long);
}

// ---------------------------------------------------------------- run-time errors

#[test]
fn dyn_widths_are_checked_at_run_time() {
    let bad: Tensor<(U1, U2, Dyn), f64> = Tensor::zeros((U1::default(), U2::default(), Dyn(6)));
    let blk = ln_block(BlockConfig::default(), 0);
    assert!(matches!(
        blk.try_forward(bad.clone()).unwrap_err(),
        Error::ShapeMismatch { .. }
    ));
    let enc: Encoder<Model, Heads, HeadDim, Ffn, f64> = Encoder::new(
        1,
        Model,
        Heads,
        HeadDim,
        Heads,
        Ffn,
        BlockConfig::default(),
        0,
    );
    assert!(matches!(
        enc.try_forward(bad.clone()).unwrap_err(),
        Error::ShapeMismatch { .. }
    ));
    let dec: Decoder<Model, Heads, Hd2, Ffn, f64> =
        Decoder::new(1, Model, Heads, Hd2, Heads, Ffn, BlockConfig::default(), 0);
    let mem: Tensor<(U1, U3, Model), f64> = Tensor::zeros(Default::default());
    assert!(matches!(
        dec.try_forward(bad.clone(), mem.clone()).unwrap_err(),
        Error::ShapeMismatch { .. }
    ));
    // A memory of another batch size, or another width.
    let x: Tensor<(U1, U2, Model), f64> = Tensor::zeros(Default::default());
    let mem2: Tensor<(Dyn, U3, Model), f64> = Tensor::zeros((Dyn(2), U3::default(), Model));
    assert!(dec.try_forward(x.clone(), mem2).is_err());
    let mem3: Tensor<(U1, U3, Dyn), f64> = Tensor::zeros((U1::default(), U3::default(), Dyn(9)));
    assert!(dec.try_forward(x.clone(), mem3).is_err());
    let pos = SinusoidalPositions::new(Model);
    assert!(matches!(
        pos.try_forward(bad.clone()).unwrap_err(),
        Error::ShapeMismatch { .. }
    ));
    let lpos: LearnedPositions<MaxLen, Model, f64> = LearnedPositions::new(MaxLen, Model, 0);
    assert!(lpos.try_forward(bad).is_err());
    // A cache for another number of layers, an empty stack.
    let mut cache = KvCache::new(2);
    assert!(matches!(
        enc.try_forward_cached(x.clone(), &mut cache).unwrap_err(),
        Error::InvalidArgument { .. }
    ));
    let empty: Encoder<Model, Heads, HeadDim, Ffn, f64> = Encoder::new(
        0,
        Model,
        Heads,
        HeadDim,
        Heads,
        Ffn,
        BlockConfig::default(),
        0,
    );
    assert!(matches!(
        empty.try_forward(x).unwrap_err(),
        Error::InvalidArgument { .. }
    ));
}

#[test]
#[should_panic(expected = "shape error in `transformer block`")]
fn dyn_width_panics_in_block_forward() {
    let blk = ln_block(BlockConfig::default(), 0);
    let bad: Tensor<(U1, U2, Dyn), f64> = Tensor::zeros((U1::default(), U2::default(), Dyn(6)));
    let _ = blk.forward(bad);
}

#[test]
#[should_panic(expected = "shape error in `decoder memory`")]
fn memory_batch_panics_in_decoder_forward() {
    let dec: Decoder<Model, Heads, Hd2, Ffn, f64> =
        Decoder::new(1, Model, Heads, Hd2, Heads, Ffn, BlockConfig::default(), 0);
    let x: Tensor<(U1, U2, Model), f64> = Tensor::zeros(Default::default());
    let mem: Tensor<(Dyn, U3, Model), f64> = Tensor::zeros((Dyn(2), U3::default(), Model));
    let _ = dec.forward((x, mem));
}

// ---------------------------------------------------------------- generic code and dtypes

fn generic_block<B: Dim, T: Dim, D: Dim, H: Dim, Hd: Dim, F: Dim, E: FloatDtype, Tp: TapeState>(
    blk: &TransformerBlock<D, H, Hd, F, E>,
    x: Tensor<(B, T, D), E, Cpu, Tp>,
) -> Tensor<(B, T, D), E, Cpu, Tp> {
    blk.forward(x)
}

fn generic_encoder<
    B: Dim,
    T: Dim,
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    N: BlockNorm<D, E>,
>(
    enc: &Encoder<D, H, Hd, F, E, N>,
    x: Tensor<(B, T, D), E>,
    cache: &mut KvCache<E>,
) -> Tensor<(B, T, D), E> {
    enc.forward_cached(x, cache)
}

fn generic_decoder<
    B: Dim,
    T: Dim,
    Tk: Dim,
    D: Dim,
    H: Dim,
    Hd: Dim,
    F: Dim,
    E: FloatDtype,
    Tp: TapeState,
>(
    dec: &Decoder<D, H, Hd, F, E>,
    x: Tensor<(B, T, D), E, Cpu, Tp>,
    memory: Tensor<(B, Tk, D), E, Cpu, Tp>,
) -> Tensor<(B, T, D), E, Cpu, Tp> {
    dec.forward((x, memory))
}

#[test]
fn generic_code_over_dims_compiles_and_runs() {
    let cfg = BlockConfig::new(causal_rope());
    let blk: TransformerBlock<Model, Heads, HeadDim, Ffn, f32> =
        TransformerBlock::new(Model, Heads, HeadDim, Heads, Ffn, cfg, 0);
    let x: Tensor<(Dyn, U3, Model), f32> = Tensor::randn((Dyn(2), U3::default(), Model), 1);
    assert_eq!(generic_block(&blk, x.clone().traced()).dims(), [2, 3, 8]);
    let enc: Encoder<Model, Heads, HeadDim, Ffn, f32, RmsNorm<Model, f32>> =
        Encoder::new(2, Model, Heads, HeadDim, Heads, Ffn, cfg, 0);
    let mut cache = enc.new_cache();
    assert_eq!(
        generic_encoder(&enc, x.clone(), &mut cache).dims(),
        [2, 3, 8]
    );
    let dec: Decoder<Model, Heads, HeadDim, Ffn, f32> =
        Decoder::new(1, Model, Heads, HeadDim, Heads, Ffn, cfg, 0);
    assert_eq!(generic_decoder(&dec, x.clone(), x).dims(), [2, 3, 8]);
}

#[test]
fn f32_stack_agrees_with_f64() {
    let cfg = BlockConfig::new(causal_rope());
    let e64: Encoder<Model, Heads, HeadDim, Ffn, f64> =
        Encoder::new(2, Model, Heads, HeadDim, Heads, Ffn, cfg, 5);
    let mut e32: Encoder<Model, Heads, HeadDim, Ffn, f32> =
        Encoder::new(2, Model, Heads, HeadDim, Heads, Ffn, cfg, 5);
    // Same parameter values, rounded to f32.
    struct Copy64(Vec<Vec<f64>>, usize);
    impl zerfoo::nn::ParamVisitorMut for Copy64 {
        fn visit<S: Shape, E: FloatDtype, D: Backend>(&mut self, _: &str, p: &mut Tensor<S, E, D>) {
            p.assign(self.0[self.1].iter().map(|&s| E::from_f64(s)).collect())
                .unwrap();
            self.1 += 1;
        }
    }
    struct Read(Vec<Vec<f64>>);
    impl zerfoo::nn::ParamVisitor for Read {
        fn visit<S: Shape, E: FloatDtype, D: Backend>(&mut self, _: &str, p: &Tensor<S, E, D>) {
            self.0.push(p.to_f64_vec());
        }
    }
    let mut r = Read(Vec::new());
    e64.visit_params("", &mut r);
    e32.visit_params_mut("", &mut Copy64(r.0, 0));
    let x = input(6);
    let y64 = e64.forward(x.clone()).to_vec();
    let y32 = e32.forward(x.to_dtype::<f32>()).to_f64_vec();
    assert_close(&y32, &y64, 1e-5);
}
