//! Multi-head attention: forward values against an explicit-loop f64
//! implementation (self, cross, grouped-query, rotary, q/k norm, sliding
//! window, padding), masks (padded keys get no weight, causal outputs ignore
//! later tokens), GQA = MHA with repeated key/value weights, KV-cache
//! decoding = the full causal forward, f64 finite-difference gradients of
//! inputs and every parameter, dtypes, run-time errors for `Dyn` dims, and
//! code generic over dims.

use crate::attn_ref;

use attn_ref::{check_module_grads, RefAttn};
use zerfoo::autograd::TapeState;
use zerfoo::nn::{
    scaled_dot_product_attention, try_scaled_dot_product_attention, AttentionConfig, Forward,
    KvHeadsDivide, LayerCache, Linear, Module, MultiHeadAttention, QkNorm,
};
use zerfoo::prelude::*;
use zerfoo_tests::{cast, check_dtypes, check_grad2, rel_err, weighted_sum};

dim!(Model = 8);
dim!(Heads = 2);
dim!(HeadDim = 4);
dim!(Heads4 = 4);
dim!(KvHeads = 2);
dim!(Hd2 = 2);
dim!(Batch = 2);
dim!(Seq = 5);
dim!(Mem = 3);

type Mha = MultiHeadAttention<Model, Heads, HeadDim, f64>;
type Gqa = MultiHeadAttention<Model, Heads4, Hd2, f64, KvHeads>;

fn mha(cfg: AttentionConfig, seed: u64) -> Mha {
    MultiHeadAttention::new(Model, Heads, HeadDim, Heads, cfg, seed)
}

fn gqa(cfg: AttentionConfig, seed: u64) -> Gqa {
    let mut m = MultiHeadAttention::new(Model, Heads4, Hd2, KvHeads, cfg, seed);
    // Non-trivial norm weights (they start at zero / one).
    if let Some(n) = m.q_norm.as_mut() {
        n.weight = Tensor::randn((Hd2,), seed + 100).mul_scalar(0.5);
    }
    if let Some(n) = m.k_norm.as_mut() {
        n.weight = Tensor::randn((Hd2,), seed + 101).mul_scalar(0.5);
    }
    m
}

fn input(seed: u64) -> Tensor<(Batch, Seq, Model), f64> {
    Tensor::randn((Batch, Seq, Model), seed)
}

#[track_caller]
fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    let e = rel_err(got, want);
    assert!(
        e <= tol,
        "rel err {e:e} > {tol:e}\n got {got:?}\nwant {want:?}"
    );
}

/// Largest absolute difference.
fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

// ---------------------------------------------------------------- forward values

#[test]
fn scaled_dot_product_attention_by_hand() {
    // One query [1, 0] over keys [1, 0] and [0, 1]: weights softmax([1, 0]).
    let q = Tensor::<(U1, U1, U1, U2), f64>::from_vec(Default::default(), vec![1., 0.]).unwrap();
    let k = Tensor::<(U1, U1, U2, U2), f64>::from_vec(Default::default(), vec![1., 0., 0., 1.])
        .unwrap();
    let v = Tensor::<(U1, U1, U2, U2), f64>::from_vec(Default::default(), vec![1., 2., 3., 4.])
        .unwrap();
    let e = 1f64.exp();
    let (w0, w1) = (e / (e + 1.0), 1.0 / (e + 1.0));
    let y = scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), None, 1.0).to_vec();
    assert_close(&y, &[w0 + 3.0 * w1, 2.0 * w0 + 4.0 * w1], 1e-15);
    // Scale 2: weights softmax([2, 0]).
    let e2 = 2f64.exp();
    let y = scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), None, 2.0).to_vec();
    assert_close(
        &y,
        &[(e2 + 3.0) / (e2 + 1.0), (2.0 * e2 + 4.0) / (e2 + 1.0)],
        1e-15,
    );
    // Hiding key 0 leaves only value 1.
    let hide0 =
        Tensor::<(U1, U1, U2), bool>::from_vec(Default::default(), vec![true, false]).unwrap();
    let y = scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), Some(&hide0), 1.0);
    assert_eq!(y.to_vec(), [3., 4.]);
    // Hiding every key gives zero weights, not NaN.
    let all = Tensor::<(U1, U1, U2), bool>::ones(Default::default());
    let y = scaled_dot_product_attention(q, k, v, Some(&all), 1.0);
    assert_eq!(y.to_vec(), [0., 0.]);
}

#[test]
fn self_attention_matches_loops() {
    let x = input(1);
    let xv = x.to_vec();
    for (i, cfg) in [
        AttentionConfig::default(),
        AttentionConfig::default().causal(true),
        AttentionConfig::default().bias(false).scale(0.7),
    ]
    .into_iter()
    .enumerate()
    {
        let m = mha(cfg, 10 + i as u64);
        let y = m.forward(x.clone());
        assert_eq!(y.dims(), [2, 5, 8]);
        let want = RefAttn::of(&m).self_attention(2, &xv, 5, None);
        assert_close(&y.to_vec(), &want, 1e-12);
    }
}

#[test]
fn gqa_rope_and_qk_norm_match_loops() {
    let x = input(2);
    let xv = x.to_vec();
    for (i, cfg) in [
        AttentionConfig::default().causal(true).rope(100.0),
        AttentionConfig::default()
            .causal(true)
            .rope(10000.0)
            .qk_norm(QkNorm::gemma(1e-6))
            .query_pre_attn_scalar(3.0),
        AttentionConfig::default()
            .qk_norm(QkNorm::plain(1e-5))
            .bias(false),
    ]
    .into_iter()
    .enumerate()
    {
        let m = gqa(cfg, 20 + i as u64);
        let want = RefAttn::of(&m).self_attention(2, &xv, 5, None);
        assert_close(&m.forward(x.clone()).to_vec(), &want, 1e-12);
    }
    // Gemma's scale is query_pre_attn_scalar^-0.5.
    let m = gqa(AttentionConfig::default().query_pre_attn_scalar(256.0), 0);
    assert_eq!(m.scale(), 1.0 / 16.0);
    assert_eq!(
        gqa(AttentionConfig::default(), 0).scale(),
        1.0 / 2f64.sqrt()
    );
}

#[test]
fn rope_positions_continue_from_the_cache() {
    // Rotary scores depend on relative positions only. With a window of 3,
    // the last of 3 new tokens fed after 3 cached ones (positions 3..6) sees
    // just the new tokens (positions 3, 4, 5), as the last token of a fresh
    // pass over the same tokens (positions 0, 1, 2) does: the same output.
    let m = gqa(
        AttentionConfig::default().causal(true).rope(10.0).window(3),
        3,
    );
    let x: Tensor<(U1, U3, Model), f64> = Tensor::randn(Default::default(), 4);
    let fresh = m.forward(x.clone()).to_vec();
    let mut cache = LayerCache::new();
    m.forward_cached(
        Tensor::<(U1, U3, Model), f64>::randn(Default::default(), 5),
        &mut cache,
    );
    let shifted = m.forward_cached(x, &mut cache).to_vec();
    assert!(max_diff(&shifted[16..], &fresh[16..]) < 1e-12);
    // The first new token does see cached ones.
    assert!(max_diff(&shifted[..8], &fresh[..8]) > 1e-6);
}

#[test]
fn sliding_window_matches_loops_and_hides_old_keys() {
    let x = input(3);
    let xv = x.to_vec();
    let m = gqa(
        AttentionConfig::default().causal(true).window(2).rope(50.0),
        30,
    );
    let y = m.forward(x.clone()).to_vec();
    assert_close(&y, &RefAttn::of(&m).self_attention(2, &xv, 5, None), 1e-12);
    // A window implies the causal limit.
    let mut no_causal = m.clone();
    no_causal.config.causal = false;
    assert_eq!(no_causal.forward(x.clone()).to_vec(), y);
    // Query 3 sees keys 2 and 3 only: changing token 0 changes outputs 0 and
    // 1 (token 0 is inside their windows) but not 2, 3 or 4.
    let mut x2 = xv.clone();
    x2[..8].iter_mut().for_each(|v| *v += 1.0);
    let y2 = m
        .forward(Tensor::<(Batch, Seq, Model), f64>::from_vec((Batch, Seq, Model), x2).unwrap())
        .to_vec();
    for t in 0..5 {
        let d = max_diff(&y[t * 8..(t + 1) * 8], &y2[t * 8..(t + 1) * 8]);
        if t < 2 {
            assert!(d > 1e-6, "position {t} should change");
        } else {
            assert_eq!(d, 0.0, "position {t} should not change");
        }
    }
}

#[test]
fn padded_keys_get_no_weight() {
    let x = input(4);
    let xv = x.to_vec();
    // Batch 0 pads positions 3 and 4, batch 1 pads position 0.
    let pad_v = vec![
        false, false, false, true, true, true, false, false, false, false,
    ];
    let pad = Tensor::<(Batch, Seq), bool>::from_vec((Batch, Seq), pad_v.clone()).unwrap();
    for cfg in [
        AttentionConfig::default(),
        AttentionConfig::default().causal(true).rope(10.0),
    ] {
        let m = gqa(cfg, 40);
        let y = m.forward_padded(x.clone(), &pad).to_vec();
        let want = RefAttn::of(&m).self_attention(2, &xv, 5, Some(&pad_v));
        assert_close(&y, &want, 1e-12);
        // Changing the padded tokens changes nothing at the other positions.
        let mut x2 = xv.clone();
        for (n, v) in x2.iter_mut().enumerate() {
            if pad_v[n / 8] {
                *v = 10.0 - *v;
            }
        }
        let x2 = Tensor::<(Batch, Seq, Model), f64>::from_vec((Batch, Seq, Model), x2).unwrap();
        let y2 = m.forward_padded(x2, &pad).to_vec();
        for (row, &padded) in pad_v.iter().enumerate() {
            let d = max_diff(&y[row * 8..(row + 1) * 8], &y2[row * 8..(row + 1) * 8]);
            if !padded {
                assert!(d < 1e-15, "row {row} changed by {d}");
            }
        }
    }
    // The weights themselves: with values = one-hot rows, the output of
    // scaled_dot_product_attention is the weight matrix.
    let q: Tensor<(U1, U1, U3, U2), f64> = Tensor::randn(Default::default(), 5);
    let k: Tensor<(U1, U1, U4, U2), f64> = Tensor::randn(Default::default(), 6);
    let eye = Tensor::<(U1, U1, U4, U4), f64>::from_fn(Default::default(), |n| {
        if n / 4 == n % 4 {
            1.0
        } else {
            0.0
        }
    });
    let hide = Tensor::<(U1, U3, U4), bool>::from_fn(Default::default(), |n| n % 4 == 1);
    let w = scaled_dot_product_attention(q, k, eye, Some(&hide), 0.5).to_vec();
    for i in 0..3 {
        assert_eq!(w[i * 4 + 1], 0.0);
        assert!((w[i * 4..(i + 1) * 4].iter().sum::<f64>() - 1.0).abs() < 1e-15);
    }
}

#[test]
fn fully_padded_sequence_outputs_the_bias() {
    let x = input(5);
    let pad = Tensor::<(Batch, Seq), bool>::from_fn((Batch, Seq), |n| n >= 5);
    let m = mha(AttentionConfig::default(), 50);
    let y = m.forward_padded(x, &pad).to_vec();
    let bias = m.o_proj.bias.as_ref().unwrap().to_vec();
    for t in 0..5 {
        assert_eq!(y[(5 + t) * 8..(6 + t) * 8], bias[..]);
    }
    assert!(y.iter().all(|v| v.is_finite()));
}

#[test]
fn causal_output_ignores_later_tokens() {
    let m = gqa(AttentionConfig::default().causal(true).rope(10000.0), 60);
    let x = input(6);
    let y = m.forward(x.clone()).to_vec();
    let mut x2 = x.to_vec();
    for b in 0..2 {
        for e in 0..8 {
            x2[(b * 5 + 3) * 8 + e] -= 0.5;
        }
    }
    let y2 = m
        .forward(Tensor::<(Batch, Seq, Model), f64>::from_vec((Batch, Seq, Model), x2).unwrap())
        .to_vec();
    for b in 0..2 {
        for t in 0..5 {
            let at = (b * 5 + t) * 8;
            let d = max_diff(&y[at..at + 8], &y2[at..at + 8]);
            if t < 3 {
                assert_eq!(d, 0.0, "batch {b} position {t} should not change");
            } else {
                assert!(d > 1e-6, "batch {b} position {t} should change");
            }
        }
    }
    // Without the causal mask, earlier positions do change.
    let mut bi = m.clone();
    bi.config.causal = false;
    let (a, c) = (bi.forward(x).to_vec(), y2);
    assert!(max_diff(&a[..8], &c[..8]) > 1e-6);
}

#[test]
fn gqa_equals_mha_with_repeated_kv_weights() {
    let cfg = AttentionConfig::default()
        .causal(true)
        .rope(10000.0)
        .qk_norm(QkNorm::gemma(1e-6));
    let g = gqa(cfg, 70);
    let mut m: MultiHeadAttention<Model, Heads4, Hd2, f64> =
        MultiHeadAttention::new(Model, Heads4, Hd2, Heads4, cfg, 71);
    // Query head h reads key/value head h / 2: repeat each head's rows twice.
    let repeat = |l: &Linear<Model, Dyn, f64>| {
        let (w, b) = (l.weight.to_vec(), l.bias.as_ref().unwrap().to_vec());
        let mut wr = Vec::new();
        let mut br = Vec::new();
        for h in 0..4 {
            let kv = h / 2;
            wr.extend_from_slice(&w[kv * 2 * 8..(kv + 1) * 2 * 8]);
            br.extend_from_slice(&b[kv * 2..(kv + 1) * 2]);
        }
        Linear::from_parts(
            Tensor::from_vec((Dyn(8), Model), wr).unwrap(),
            Some(Tensor::from_vec((Dyn(8),), br).unwrap()),
        )
    };
    m.q_proj = g.q_proj.clone();
    m.k_proj = repeat(&g.k_proj);
    m.v_proj = repeat(&g.v_proj);
    m.o_proj = g.o_proj.clone();
    m.q_norm = g.q_norm.clone();
    m.k_norm = g.k_norm.clone();
    let x = input(7);
    assert!(max_diff(&m.forward(x.clone()).to_vec(), &g.forward(x).to_vec()) < 1e-13);
}

#[test]
fn cross_attention_matches_loops() {
    let x = input(8);
    let mem: Tensor<(Batch, Mem, Model), f64> = Tensor::randn((Batch, Mem, Model), 9);
    // Causality, rope and window are self-attention settings: ignored here.
    let m = gqa(
        AttentionConfig::default()
            .causal(true)
            .rope(10.0)
            .window(1)
            .qk_norm(QkNorm::gemma(1e-6)),
        80,
    );
    let r = RefAttn::of(&m);
    let y = m.cross(x.clone(), mem.clone());
    assert_eq!(y.dims(), [2, 5, 8]);
    let want = r.run(2, &x.to_vec(), 5, &mem.to_vec(), 3, None, 0, 0, false);
    assert_close(&y.to_vec(), &want, 1e-12);
    // With a memory padding mask.
    let pad_v = vec![false, true, false, false, false, true];
    let pad = Tensor::<(Batch, Mem), bool>::from_vec((Batch, Mem), pad_v.clone()).unwrap();
    let y = m.cross_padded(x.clone(), mem.clone(), &pad);
    let want = r.run(
        2,
        &x.to_vec(),
        5,
        &mem.to_vec(),
        3,
        Some(&pad_v),
        0,
        0,
        false,
    );
    assert_close(&y.to_vec(), &want, 1e-12);
}

// ---------------------------------------------------------------- KV cache

/// Runs `m` over `x` `(1 or 2, 5, 8)` in chunks of the given sizes through a
/// cache and returns the concatenated outputs.
fn run_chunks<H: Dim, Hd: Dim, KvH: Dim>(
    m: &MultiHeadAttention<Model, H, Hd, f64, KvH>,
    x: &Tensor<(Batch, Seq, Model), f64>,
    chunks: &[usize],
) -> (Vec<f64>, LayerCache<f64>) {
    let mut cache = LayerCache::new();
    let mut out = vec![0.0; 2 * 5 * 8];
    let mut start = 0;
    for &n in chunks {
        let piece = x.clone().narrow::<Axis<1>>(start, n);
        let y = m.forward_cached(piece, &mut cache).to_vec();
        for b in 0..2 {
            for t in 0..n {
                let src = (b * n + t) * 8;
                let dst = (b * 5 + start + t) * 8;
                out[dst..dst + 8].copy_from_slice(&y[src..src + 8]);
            }
        }
        start += n;
    }
    assert_eq!(cache.position(), 5);
    (out, cache)
}

#[test]
fn cache_decoding_equals_full_causal_forward() {
    let x = input(11);
    let full_cfg = AttentionConfig::default()
        .causal(true)
        .rope(10000.0)
        .qk_norm(QkNorm::gemma(1e-6));
    let g = gqa(full_cfg, 90);
    let want = g.forward(x.clone()).to_vec();
    for chunks in [&[1, 1, 1, 1, 1][..], &[2, 1, 2], &[5]] {
        let (got, cache) = run_chunks(&g, &x, chunks);
        assert!(max_diff(&got, &want) <= 1e-12, "chunks {chunks:?}");
        assert_eq!(cache.stored(), 5);
        assert_eq!(cache.keys().unwrap().dims(), [2, 2, 5, 2]);
    }
    let m = mha(AttentionConfig::default().causal(true), 91);
    let want = m.forward(x.clone()).to_vec();
    let (got, _) = run_chunks(&m, &x, &[1, 1, 1, 1, 1]);
    assert!(max_diff(&got, &want) <= 1e-12);
}

#[test]
fn cache_respects_the_sliding_window() {
    let x = input(12);
    let g = gqa(
        AttentionConfig::default()
            .causal(true)
            .window(2)
            .rope(100.0),
        92,
    );
    let want = g.forward(x.clone()).to_vec();
    for chunks in [&[1, 1, 1, 1, 1][..], &[2, 3], &[3, 2]] {
        let (got, cache) = run_chunks(&g, &x, chunks);
        assert!(max_diff(&got, &want) <= 1e-12, "chunks {chunks:?}");
        // Only the last window - 1 positions stay.
        assert_eq!(cache.stored(), 1);
    }
    let mut cache = LayerCache::new();
    let w1 = gqa(AttentionConfig::default().window(1), 93);
    let _ = w1.forward_cached(x.clone(), &mut cache);
    assert_eq!((cache.stored(), cache.position()), (0, 5));
    cache.clear();
    assert_eq!(cache.position(), 0);
}

// ---------------------------------------------------------------- gradients

#[test]
fn gradients_plain_attention() {
    let m: MultiHeadAttention<Model, Heads, Hd2, f64> =
        MultiHeadAttention::new(Model, Heads, Hd2, Heads, AttentionConfig::default(), 100);
    let x: Tensor<(U2, U3, Model), f64> = Tensor::randn(Default::default(), 101);
    check_module_grads(&m, x, |m, x| weighted_sum(m.forward(x), 102));
}

#[test]
fn gradients_gqa_rope_window_qk_norm() {
    let cfg = AttentionConfig::default()
        .causal(true)
        .rope(10.0)
        .window(2)
        .qk_norm(QkNorm::gemma(1e-6));
    let m = gqa(cfg, 103);
    let x: Tensor<(U2, U4, Model), f64> = Tensor::randn(Default::default(), 104);
    check_module_grads(&m, x, |m, x| weighted_sum(m.forward(x), 105));
}

#[test]
fn gradients_with_padding_and_a_fully_padded_row() {
    let m = gqa(AttentionConfig::default().causal(true), 106);
    // Batch 0: last key padded; batch 1: everything padded.
    let pad = Tensor::<(U2, U3), bool>::from_vec(
        Default::default(),
        vec![false, false, true, true, true, true],
    )
    .unwrap();
    let x: Tensor<(U2, U3, Model), f64> = Tensor::randn(Default::default(), 107);
    check_module_grads(&m, x, |m, x| weighted_sum(m.forward_padded(x, &pad), 108));
}

#[test]
fn gradients_through_a_permuted_input() {
    // A non-contiguous input: `(T, B, D)` storage viewed as `(B, T, D)`.
    let m: MultiHeadAttention<Model, Heads, Hd2, f64> = MultiHeadAttention::new(
        Model,
        Heads,
        Hd2,
        Heads,
        AttentionConfig::default().causal(true).rope(10.0),
        109,
    );
    let x: Tensor<(U3, U2, Model), f64> = Tensor::randn(Default::default(), 110);
    check_module_grads(&m, x, |m, x| {
        weighted_sum(m.forward(x.transpose::<0, 1>()), 111)
    });
}

#[test]
fn gradients_cross_attention() {
    let m = gqa(AttentionConfig::default().qk_norm(QkNorm::plain(1e-5)), 112);
    let x: Tensor<(U2, U3, Model), f64> = Tensor::randn(Default::default(), 113);
    let mem: Tensor<(U2, U2, Model), f64> = Tensor::randn(Default::default(), 114);
    // Both inputs (the memory untraced: its gradient flows by id).
    check_grad2(x.clone(), mem.clone(), |x, mem| {
        weighted_sum(m.cross(x, mem), 115)
    });
    // Both traced: the tapes merge.
    check_grad2(mem.clone(), x.clone(), |mem, x| {
        weighted_sum(m.cross(x.traced(), mem), 116)
    });
    let pad =
        Tensor::<(U2, U2), bool>::from_vec(Default::default(), vec![false, true, false, false])
            .unwrap();
    check_module_grads(&m, x, |m, x| {
        weighted_sum(m.cross_padded(x, mem.clone(), &pad), 117)
    });
}

// ---------------------------------------------------------------- dtypes

/// `m`'s parameters rounded to `E` (through `cast`, so that the f64
/// reference run of `check_dtypes!` sees the same rounded values).
fn cast_module<E: FloatDtype>(m: &Gqa) -> MultiHeadAttention<Model, Heads4, Hd2, E, KvHeads> {
    let lin = |l: &Linear<Model, Dyn, f64>| {
        Linear::from_parts(cast::<E, _>(&l.weight), l.bias.as_ref().map(cast::<E, _>))
    };
    let mut out = MultiHeadAttention::new(Model, Heads4, Hd2, KvHeads, m.config, 0);
    out.q_proj = lin(&m.q_proj);
    out.k_proj = lin(&m.k_proj);
    out.v_proj = lin(&m.v_proj);
    out.o_proj = Linear::from_parts(
        cast::<E, _>(&m.o_proj.weight),
        m.o_proj.bias.as_ref().map(cast::<E, _>),
    );
    for (dst, src) in [(&mut out.q_norm, &m.q_norm), (&mut out.k_norm, &m.k_norm)] {
        if let (Some(d), Some(s)) = (dst.as_mut(), src.as_ref()) {
            d.weight = cast::<E, _>(&s.weight);
        }
    }
    out
}

#[test]
fn every_dtype_against_f64() {
    let cfg = AttentionConfig::default().causal(true).rope(100.0);
    let g = gqa(cfg, 120);
    // Small inputs keep the low-precision errors near one rounding.
    let x: Tensor<(U1, U3, Model), f64> = Tensor::randn(Default::default(), 121).mul_scalar(0.5);
    check_dtypes!("attention", |E| {
        cast_module::<E>(&g).forward(cast::<E, _>(&x)).to_f64_vec()
    });
}

// ---------------------------------------------------------------- module

#[test]
fn parameter_paths_and_counts() {
    let g = gqa(AttentionConfig::default().qk_norm(QkNorm::gemma(1e-6)), 0);
    let paths: Vec<String> = g.param_info().into_iter().map(|p| p.path).collect();
    assert_eq!(
        paths,
        [
            "q_proj.weight",
            "q_proj.bias",
            "k_proj.weight",
            "k_proj.bias",
            "v_proj.weight",
            "v_proj.bias",
            "o_proj.weight",
            "o_proj.bias",
            "q_norm.weight",
            "k_norm.weight"
        ]
    );
    // q: 8x8+8, k and v: 4x8+4 each, o: 8x8+8, norms: 2 + 2.
    assert_eq!(g.num_params(), 72 + 36 + 36 + 72 + 4);
    let no_bias = mha(AttentionConfig::default().bias(false), 0);
    assert_eq!(no_bias.num_params(), 4 * 64);
    // Distinct seeds give distinct projections.
    assert_ne!(
        no_bias.q_proj.weight.to_vec(),
        no_bias.k_proj.weight.to_vec()
    );
}

// ---------------------------------------------------------------- run-time errors

#[test]
fn dyn_width_is_checked_at_run_time() {
    let m = mha(AttentionConfig::default(), 0);
    let bad: Tensor<(U2, U3, Dyn), f64> = Tensor::zeros((U2::default(), U3::default(), Dyn(7)));
    let err = m.try_forward(bad).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                op: "attention",
                ..
            }
        ),
        "{err}"
    );
    let ok: Tensor<(U2, U3, Dyn), f64> = Tensor::zeros((U2::default(), U3::default(), Dyn(8)));
    assert_eq!(m.try_forward(ok).unwrap().dims(), [2, 3, 8]);
}

#[test]
#[should_panic(expected = "shape error in `attention`")]
fn dyn_width_panics_in_forward() {
    let m = mha(AttentionConfig::default(), 0);
    let bad: Tensor<(U2, U3, Dyn), f64> = Tensor::zeros((U2::default(), U3::default(), Dyn(7)));
    let _ = m.forward(bad);
}

#[test]
fn dyn_masks_memory_and_cache_are_checked() {
    let m = mha(AttentionConfig::default().causal(true), 0);
    let x: Tensor<(U2, U3, Model), f64> = Tensor::zeros(Default::default());
    let pad = Tensor::<(Dyn, Dyn), bool>::zeros((Dyn(2), Dyn(4)));
    let err = m.try_forward_padded(x.clone(), &pad).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // A memory with another batch size.
    let mem: Tensor<(Dyn, U4, Model), f64> = Tensor::zeros((Dyn(3), U4::default(), Model));
    let err = m.try_cross(x.clone(), mem).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // A cache filled with batch 2, then fed batch 1: an error, cache untouched.
    let mut cache = LayerCache::new();
    let two: Tensor<(Dyn, U1, Model), f64> = Tensor::zeros((Dyn(2), U1::default(), Model));
    let one: Tensor<(Dyn, U1, Model), f64> = Tensor::zeros((Dyn(1), U1::default(), Model));
    m.forward_cached(two, &mut cache);
    let err = m.try_forward_cached(one, &mut cache).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                op: "attention cache",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!((cache.position(), cache.stored()), (1, 1));
}

#[test]
#[should_panic(expected = "shape error in `attention padding mask`")]
fn dyn_padding_panics() {
    let m = mha(AttentionConfig::default(), 0);
    let x: Tensor<(U2, U3, Model), f64> = Tensor::zeros(Default::default());
    let pad = Tensor::<(Dyn, Dyn), bool>::zeros((Dyn(2), Dyn(4)));
    let _ = m.forward_padded(x, &pad);
}

#[test]
fn dyn_heads_are_checked_by_the_constructor() {
    // 3 key/value heads do not divide 4 query heads.
    let err = MultiHeadAttention::<Model, Heads4, Hd2, f64, Dyn>::try_new(
        Model,
        Heads4,
        Hd2,
        Dyn(3),
        AttentionConfig::default(),
        0,
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    // An odd head dim cannot be rotated.
    let err = MultiHeadAttention::<Model, Dyn, Dyn, f64, Dyn>::try_new(
        Model,
        Dyn(2),
        Dyn(3),
        Dyn(2),
        AttentionConfig::default().rope(10000.0),
        0,
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err = MultiHeadAttention::<Model, Heads, HeadDim, f64>::try_new(
        Model,
        Heads,
        HeadDim,
        Heads,
        AttentionConfig::default().window(0),
        0,
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    // Dyn heads that fit work like static ones.
    let d: MultiHeadAttention<Model, Dyn, Dyn, f64, Dyn> =
        MultiHeadAttention::new(Model, Dyn(4), Dyn(2), Dyn(2), AttentionConfig::default(), 0);
    let x = input(1);
    let want = RefAttn::of(&d).self_attention(2, &x.to_vec(), 5, None);
    assert_close(&d.forward(x).to_vec(), &want, 1e-12);
}

#[test]
fn replaced_parameters_of_other_dims_are_an_error() {
    let mut m = mha(AttentionConfig::default(), 0);
    m.k_proj = Linear::new(Model, Dyn(6), true, 0);
    let x: Tensor<(U1, U2, Model), f64> = Tensor::zeros(Default::default());
    let err = m.try_forward(x).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                op: "attention parameters",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn sdpa_checks_dyn_dims() {
    let q: Tensor<(U1, U1, U2, Dyn), f64> =
        Tensor::zeros((U1::default(), U1::default(), U2::default(), Dyn(3)));
    let k: Tensor<(U1, U1, Dyn, Dyn), f64> =
        Tensor::zeros((U1::default(), U1::default(), Dyn(4), Dyn(3)));
    let v: Tensor<(U1, U1, Dyn, U2), f64> =
        Tensor::zeros((U1::default(), U1::default(), Dyn(5), U2::default()));
    let err = try_scaled_dot_product_attention(q.clone(), k.clone(), v, None, 1.0).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let k0: Tensor<(U1, U1, Dyn, Dyn), f64> =
        Tensor::zeros((U1::default(), U1::default(), Dyn(0), Dyn(3)));
    let v0: Tensor<(U1, U1, Dyn, U2), f64> =
        Tensor::zeros((U1::default(), U1::default(), Dyn(0), U2::default()));
    let err = try_scaled_dot_product_attention(q, k0, v0, None, 1.0).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

// ---------------------------------------------------------------- generic code

fn generic_self<B: Dim, T: Dim, D: Dim, H: Dim, Hd: Dim, KvH: Dim, E: FloatDtype, Tp: TapeState>(
    m: &MultiHeadAttention<D, H, Hd, E, KvH>,
    x: Tensor<(B, T, D), E, Cpu, Tp>,
) -> Tensor<(B, T, D), E, Cpu, Tp> {
    m.forward(x)
}

fn generic_cross<B: Dim, T: Dim, Tk: Dim, D: Dim, H: Dim, Hd: Dim, E: FloatDtype, Tp: TapeState>(
    m: &MultiHeadAttention<D, H, Hd, E>,
    x: Tensor<(B, T, D), E, Cpu, Tp>,
    memory: Tensor<(B, Tk, D), E, Cpu, Tp>,
    pad: &Tensor<(B, Tk), bool>,
) -> Tensor<(B, T, D), E, Cpu, Tp> {
    m.cross_padded(x, memory, pad)
}

fn generic_cached<B: Dim, T: Dim, D: Dim, H: Dim, Hd: Dim, KvH: Dim, E: FloatDtype>(
    m: &MultiHeadAttention<D, H, Hd, E, KvH>,
    x: Tensor<(B, T, D), E>,
    cache: &mut LayerCache<E>,
) -> Tensor<(B, T, D), E> {
    m.forward_cached(x, cache)
}

fn generic_build<D: Dim, H: Dim, Hd: Dim, KvH: KvHeadsDivide<H>>(
    d: D,
    h: H,
    hd: Hd,
    kvh: KvH,
) -> MultiHeadAttention<D, H, Hd, f32, KvH> {
    MultiHeadAttention::new(d, h, hd, kvh, AttentionConfig::default().causal(true), 0)
}

#[test]
fn generic_code_over_dims_compiles_and_runs() {
    let m = generic_build(Model, Heads4, Hd2, KvHeads);
    let x: Tensor<(U2, Dyn, Model), f32> = Tensor::randn((U2::default(), Dyn(3), Model), 0);
    let full = generic_self(&m, x.clone());
    assert_eq!(full.dims(), [2, 3, 8]);
    let mut cache = LayerCache::new();
    let a = generic_cached(&m, x.clone().narrow::<Axis<1>>(0, 2), &mut cache);
    let b = generic_cached(&m, x.clone().narrow::<Axis<1>>(2, 1), &mut cache);
    assert_eq!(a.dims(), [2, 2, 8]);
    assert_eq!(b.dims(), [2, 1, 8]);
    let h = generic_build(Model, Heads, HeadDim, Heads);
    let pad = Tensor::<(U2, Dyn), bool>::zeros((U2::default(), Dyn(3)));
    let y = generic_cross(&h, x.clone().traced(), x.traced(), &pad);
    assert_eq!(y.dims(), [2, 3, 8]);
}
