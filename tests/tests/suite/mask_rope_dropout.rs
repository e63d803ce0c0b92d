//! Masks (where_cond, masked_fill, tril/triu and their masks), dropout and
//! rotary embedding: forward values against hand computations / a direct
//! implementation of the formula, f64 finite-difference gradients, dtype
//! sweeps, determinism, and run-time errors.

use zerfoo::prelude::*;
use zerfoo_tests::{cast, check_dtypes, check_grad1, check_grad2, weighted_sum};

dim!(Batch = 2);
dim!(Heads = 3);
dim!(Seq = 5);
dim!(HeadDim = 8);
dim!(Rows = 3);
dim!(Cols = 4);

fn mask_from<S: Shape>(shape: S, f: impl Fn(usize) -> bool + Sync + Send) -> Tensor<S, bool> {
    Tensor::from_fn(shape, f)
}

// ---------------------------------------------------------------- bool dtype

#[test]
fn bool_tensors_hold_masks() {
    let m = mask_from((Rows,), |i| i != 1);
    assert_eq!(m.dtype(), DType::Bool);
    assert_eq!(m.to_vec(), [true, false, true]);
    assert_eq!(m.clone().logical_not().to_vec(), [false, true, false]);
    let z: Tensor<(Rows, Cols), bool> = Tensor::zeros((Rows, Cols));
    assert!(z.to_vec().iter().all(|&b| !b));
    let o: Tensor<(Rows,), bool> = Tensor::ones((Rows,));
    assert_eq!(o.to_vec(), [true; 3]);
}

// ---------------------------------------------------------------- triangular masks

#[test]
fn triangular_masks_follow_torch() {
    // torch.tril(torch.ones(4, 4), diagonal=d).bool()  <=>  j - i <= d
    for d in [-2i64, -1, 0, 1, 3] {
        let m = Tensor::<(Cols, Cols), bool>::tril_mask(Cols, d).to_vec();
        let u = Tensor::<(Cols, Cols), bool>::triu_mask(Cols, d).to_vec();
        for i in 0..4i64 {
            for j in 0..4i64 {
                let at = (i * 4 + j) as usize;
                assert_eq!(m[at], j - i <= d, "tril d={d} ({i}, {j})");
                assert_eq!(u[at], j - i >= d, "triu d={d} ({i}, {j})");
            }
        }
    }
    let c = Tensor::<(Dyn, Dyn), bool>::causal_mask(Dyn(3));
    assert_eq!(
        c.clone().to_vec(),
        [false, true, true, false, false, true, false, false, false]
    );
    assert_eq!(
        c.logical_not().to_vec(),
        Tensor::<(Dyn, Dyn), bool>::tril_mask(Dyn(3), 0).to_vec()
    );
}

#[test]
fn tril_triu_forward_values() {
    // (2, 3, 4) with element (b, i, j) = 100b + 10i + j + 1
    let x: Tensor<(Batch, Rows, Cols), f64> = Tensor::from_fn((Batch, Rows, Cols), |n| {
        (100 * (n / 12) + 10 * ((n / 4) % 3) + n % 4 + 1) as f64
    });
    let xv = x.to_vec();
    for d in [-1i64, 0, 2] {
        let lo = x.clone().tril(d).to_vec();
        let up = x.clone().triu(d).to_vec();
        for n in 0..24 {
            let (i, j) = (((n / 4) % 3) as i64, (n % 4) as i64);
            assert_eq!(lo[n], if j - i <= d { xv[n] } else { 0.0 });
            assert_eq!(up[n], if j - i >= d { xv[n] } else { 0.0 });
        }
    }
}

#[test]
fn tril_triu_gradients() {
    let x: Tensor<(Batch, Rows, Cols), f64> = Tensor::randn((Batch, Rows, Cols), 1);
    check_grad1(x.clone(), |x| weighted_sum(x.tril(0), 2));
    check_grad1(x.clone(), |x| weighted_sum(x.triu(-1), 3));
    // used twice
    check_grad1(x.clone(), |x| {
        weighted_sum(x.clone().tril(1) * x.triu(1), 4)
    });
    // a broadcast input
    let m: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 5);
    check_grad1(m, |m| {
        weighted_sum(m.broadcast::<_, Axis<0>>((Batch, Rows, Cols)).tril(-1), 6)
    });
}

// ---------------------------------------------------------------- where_cond

#[test]
fn where_cond_forward_values() {
    let m = mask_from((Rows, Cols), |i| i % 3 == 0);
    let a: Tensor<(Rows, Cols), f64> = Tensor::from_fn((Rows, Cols), |i| i as f64);
    let b: Tensor<(Rows, Cols), f64> = Tensor::from_fn((Rows, Cols), |i| -(i as f64));
    let y = Tensor::where_cond(&m, a, b).to_vec();
    for (i, v) in y.iter().enumerate() {
        let want = if i % 3 == 0 { i as f64 } else { -(i as f64) };
        assert_eq!(*v, want);
    }
    // a broadcast mask over a batch
    let row = mask_from((Cols,), |j| j >= 2);
    let mb = row.broadcast_mask::<_, Axis<0>>((Rows, Cols));
    let ones: Tensor<(Rows, Cols), f32> = Tensor::ones((Rows, Cols));
    let zeros: Tensor<(Rows, Cols), f32> = Tensor::zeros((Rows, Cols));
    assert_eq!(
        Tensor::where_cond(&mb, ones, zeros).to_vec(),
        [0., 0., 1., 1., 0., 0., 1., 1., 0., 0., 1., 1.]
    );
}

#[test]
fn where_cond_gradients_flow_to_both_branches() {
    let m = mask_from((Rows, Cols), |i| (i * 7) % 3 != 1);
    let a: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 11);
    let b: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 12);
    check_grad2(a.clone(), b.clone(), |a, b| {
        weighted_sum(Tensor::where_cond(&m, a, b), 13)
    });
    // the untraced branch as on_true
    check_grad2(a.clone(), b.clone(), |a, b| {
        weighted_sum(Tensor::where_cond(&m, b, a.exp()), 14)
    });
    // a tensor used in both branches
    check_grad1(a.clone(), |a| {
        weighted_sum(Tensor::where_cond(&m, a.clone().square(), a.sin()), 15)
    });
    // broadcast operand and broadcast mask
    let v: Tensor<(Cols,), f64> = Tensor::randn((Cols,), 16);
    let mb = mask_from((Cols,), |j| j % 2 == 0).broadcast_mask::<_, Axis<0>>((Rows, Cols));
    check_grad2(v, b, |v, b| {
        weighted_sum(
            Tensor::where_cond(&mb, v.broadcast::<_, Axis<0>>((Rows, Cols)), b),
            17,
        )
    });
    // exact gradient values: 1 where chosen
    let grads = Tensor::where_cond(&m, a.clone().traced(), b_of(&a))
        .sum_all()
        .backward();
    let ga = grads.get(&a).unwrap().to_vec();
    for (i, g) in ga.iter().enumerate() {
        assert_eq!(*g, if (i * 7) % 3 != 1 { 1.0 } else { 0.0 });
    }
}

fn b_of(a: &Tensor<(Rows, Cols), f64>) -> Tensor<(Rows, Cols), f64> {
    a.clone().detach().mul_scalar(2.0)
}

#[test]
fn where_cond_runtime_shape_errors() {
    let m: Tensor<(Dyn, Dyn), bool> = Tensor::zeros((Dyn(2), Dyn(3)));
    let a: Tensor<(Dyn, Dyn), f32> = Tensor::zeros((Dyn(2), Dyn(3)));
    let b: Tensor<(Dyn, Dyn), f32> = Tensor::zeros((Dyn(3), Dyn(2)));
    assert_eq!(
        Tensor::try_where_cond(&m, a.clone(), b).unwrap_err(),
        Error::ShapeMismatch {
            op: "where_cond",
            lhs: vec![2, 3],
            rhs: vec![3, 2]
        }
    );
    let m2: Tensor<(Dyn, Dyn), bool> = Tensor::zeros((Dyn(2), Dyn(2)));
    assert!(Tensor::try_where_cond(&m2, a.clone(), a).is_err());
}

#[test]
#[should_panic(expected = "shape error in `where_cond`: [2, 3] does not match [2, 4]")]
fn where_cond_shape_error_panics() {
    let m: Tensor<(Dyn, Dyn), bool> = Tensor::zeros((Dyn(2), Dyn(4)));
    let a: Tensor<(Dyn, Dyn), f32> = Tensor::zeros((Dyn(2), Dyn(3)));
    let _ = Tensor::where_cond(&m, a.clone(), a);
}

// ---------------------------------------------------------------- masked_fill

#[test]
fn masked_fill_forward_values() {
    let x: Tensor<(Rows, Cols), f32> = Tensor::from_fn((Rows, Cols), |i| i as f32);
    let m = mask_from((Rows, Cols), |i| i % 5 == 0);
    let y = x.masked_fill(&m, -7.5).to_vec();
    for (i, v) in y.iter().enumerate() {
        assert_eq!(*v, if i % 5 == 0 { -7.5 } else { i as f32 });
    }
    // causal attention scores: -inf above the diagonal, per batch and head
    let s: Tensor<(Batch, Seq, Seq), f32> = Tensor::ones((Batch, Seq, Seq));
    let causal = Tensor::causal_mask(Seq).broadcast_mask::<_, Axis<0>>((Batch, Seq, Seq));
    let y = s.masked_fill(&causal, f64::NEG_INFINITY).to_vec();
    for (n, v) in y.iter().enumerate() {
        let (i, j) = ((n / 5) % 5, n % 5);
        assert_eq!(*v, if j > i { f32::NEG_INFINITY } else { 1.0 });
    }
}

#[test]
fn masked_fill_gradients() {
    let m = mask_from((Batch, Rows, Cols), |i| (i * 5) % 4 == 1);
    let x: Tensor<(Batch, Rows, Cols), f64> = Tensor::randn((Batch, Rows, Cols), 21);
    check_grad1(x.clone(), |x| weighted_sum(x.masked_fill(&m, 3.0), 22));
    // used twice
    check_grad1(x.clone(), |x| {
        weighted_sum(x.clone().masked_fill(&m, 0.0) * x, 23)
    });
    // broadcast input and broadcast mask
    let v: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 24);
    let causal = Tensor::<(Cols, Cols), bool>::causal_mask(Cols);
    let mb = causal.broadcast_mask::<_, Axis<0>>((Rows, Cols, Cols));
    check_grad1(v, |v| {
        weighted_sum(
            v.broadcast::<_, Axis<2>>((Rows, Cols, Cols))
                .masked_fill(&mb, -2.0),
            25,
        )
    });
    // exact: the gradient is zero where filled
    let grads = x.clone().traced().masked_fill(&m, 9.0).sum_all().backward();
    let g = grads.get(&x).unwrap().to_vec();
    for (i, gi) in g.iter().enumerate() {
        assert_eq!(*gi, if (i * 5) % 4 == 1 { 0.0 } else { 1.0 });
    }
}

#[test]
fn masked_fill_runtime_shape_error() {
    let x: Tensor<(Dyn, Cols), f64> = Tensor::zeros((Dyn(3), Cols));
    let m: Tensor<(Dyn, Cols), bool> = Tensor::zeros((Dyn(2), Cols));
    assert_eq!(
        x.try_masked_fill(&m, 1.0).unwrap_err(),
        Error::ShapeMismatch {
            op: "masked_fill",
            lhs: vec![3, 4],
            rhs: vec![2, 4]
        }
    );
}

#[test]
#[should_panic(expected = "shape error in `masked_fill`: [3, 4] does not match [2, 4]")]
fn masked_fill_shape_error_panics() {
    let x: Tensor<(Dyn, Cols), f64> = Tensor::zeros((Dyn(3), Cols));
    let m: Tensor<(Dyn, Cols), bool> = Tensor::zeros((Dyn(2), Cols));
    let _ = x.masked_fill(&m, 1.0);
}

#[test]
#[should_panic(expected = "shape error in `broadcast`: [3] does not match [2]")]
fn broadcast_mask_shape_error_panics() {
    let m: Tensor<(Dyn,), bool> = Tensor::zeros((Dyn(3),));
    let _ = m.broadcast_mask::<_, Axis<0>>((Cols, Dyn(2)));
}

// ---------------------------------------------------------------- dropout

#[test]
fn dropout_scales_kept_elements_and_preserves_the_mean() {
    let n = 100_000;
    let p = 0.3;
    let x: Tensor<(Dyn,), f64> = Tensor::ones((Dyn(n),));
    let y = x.dropout(p, 42).to_vec();
    let scale = 1.0 / (1.0 - p);
    let kept = y.iter().filter(|&&v| v != 0.0).count();
    assert!(y.iter().all(|&v| v == 0.0 || v == scale));
    let frac = kept as f64 / n as f64;
    assert!((frac - 0.7).abs() < 0.01, "kept fraction {frac}");
    let mean = y.iter().sum::<f64>() / n as f64;
    assert!((mean - 1.0).abs() < 0.015, "mean {mean}");
}

#[test]
fn dropout_mask_is_the_seeded_uniform_draw() {
    // element i is dropped iff Tensor::rand(shape, seed)[i] < p
    let x: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 31).add_scalar(5.0);
    let u = Tensor::<(Rows, Cols), f64>::rand((Rows, Cols), 9).to_vec();
    let y = x.clone().dropout(0.5, 9).to_vec();
    for (i, (&yi, &xi)) in y.iter().zip(x.to_vec().iter()).enumerate() {
        assert_eq!(yi, if u[i] < 0.5 { 0.0 } else { xi * 2.0 });
    }
    // another seed gives another mask
    assert_ne!(x.clone().dropout(0.5, 10).to_vec(), y);
    // p = 0 is the identity
    assert_eq!(x.clone().dropout(0.0, 9).to_vec(), x.to_vec());
}

#[test]
fn dropout_is_deterministic_across_thread_counts() {
    let n = 200_000; // above the parallel threshold
    let x: Tensor<(Dyn,), f32> = Tensor::randn((Dyn(n),), 3);
    let run = || x.clone().dropout(0.25, 77).to_vec();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(run);
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap()
        .install(run);
    assert_eq!(one, two);
    assert_eq!(one, run());
}

#[test]
fn dropout_backward_uses_the_forward_mask() {
    let x: Tensor<(Batch, Rows, Cols), f64> =
        Tensor::randn((Batch, Rows, Cols), 41).add_scalar(3.0);
    let p = 0.4;
    let y = x.clone().dropout(p, 5).to_vec();
    let grads = x.clone().traced().dropout(p, 5).sum_all().backward();
    let g = grads.get(&x).unwrap().to_vec();
    for (i, (&gi, &yi)) in g.iter().zip(&y).enumerate() {
        let want = if yi == 0.0 { 0.0 } else { 1.0 / (1.0 - p) };
        assert_eq!(gi, want, "element {i}");
    }
    // finite differences (the mask is fixed by the seed)
    check_grad1(x.clone(), |x| weighted_sum(x.dropout(p, 5), 6));
    // used twice, and on a broadcast input
    check_grad1(x, |x| {
        weighted_sum(x.clone().dropout(p, 5) * x.dropout(0.2, 6), 7)
    });
    let v: Tensor<(Cols,), f64> = Tensor::randn((Cols,), 8);
    check_grad1(v, |v| {
        weighted_sum(v.broadcast::<_, Axis<0>>((Rows, Cols)).dropout(0.5, 1), 9)
    });
}

#[test]
fn dropout_rejects_bad_probabilities() {
    let x: Tensor<(Rows,), f32> = Tensor::ones((Rows,));
    for p in [1.0, 1.5, -0.1, f64::NAN] {
        match x.clone().try_dropout(p, 0) {
            Err(Error::InvalidArgument { op: "dropout", .. }) => {}
            other => panic!("p = {p}: {other:?}"),
        }
    }
}

#[test]
#[should_panic(expected = "invalid argument to `dropout`")]
fn dropout_p_one_panics() {
    let x: Tensor<(Rows,), f32> = Tensor::ones((Rows,));
    let _ = x.dropout(1.0, 0);
}

// ---------------------------------------------------------------- rope

/// RoPE written out from the formula, in f64, for `(.., T, Hd)` row-major data.
fn rope_ref(x: &[f64], t_len: usize, hd: usize, base: f64, offset: usize) -> Vec<f64> {
    let h = hd / 2;
    let mut out = vec![0.0; x.len()];
    for (r, row) in x.chunks(hd).enumerate() {
        let pos = ((r % t_len) + offset) as f64;
        // emb = cat(ang, ang); y = x * cos(emb) + rotate_half(x) * sin(emb)
        let emb: Vec<f64> = (0..hd)
            .map(|c| pos / base.powf((2 * (c % h)) as f64 / hd as f64))
            .collect();
        let rot: Vec<f64> = (0..hd)
            .map(|c| if c < h { -row[c + h] } else { row[c - h] })
            .collect();
        for c in 0..hd {
            out[r * hd + c] = row[c] * emb[c].cos() + rot[c] * emb[c].sin();
        }
    }
    out
}

#[test]
fn rope_matches_the_formula() {
    let x: Tensor<(Batch, Heads, Seq, HeadDim), f64> =
        Tensor::randn((Batch, Heads, Seq, HeadDim), 51);
    for (base, offset) in [(10000.0, 0), (10000.0, 7), (1_000_000.0, 3), (50.0, 0)] {
        let y = x.clone().rope(base, offset).to_vec();
        let want = rope_ref(&x.to_vec(), 5, 8, base, offset);
        let err = y
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-13, "base {base} offset {offset}: {err}");
    }
    // f32 stays close to the exact formula at moderate positions
    let y32 = x.clone().to_dtype::<f32>().rope(10000.0, 100).to_f64_vec();
    let x32 = x.clone().to_dtype::<f32>().to_f64_vec();
    let want = rope_ref(&x32, 5, 8, 10000.0, 100);
    let err = y32
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(err < 1e-4, "f32: {err}");
}

#[test]
fn rope_positions_and_norms() {
    // Position t with offset 0 equals position 0 with offset t (decoding with a KV cache).
    let x: Tensor<(Seq, HeadDim), f64> = Tensor::randn((Seq, HeadDim), 52);
    let full = x.clone().rope(10000.0, 0).to_vec();
    for t in 0..5 {
        let row = x.clone().select::<Axis<0>>(t).to_vec();
        let one: Tensor<(U1, HeadDim), f64> = Tensor::from_vec(Default::default(), row).unwrap();
        let y = one.rope(10000.0, t).to_vec();
        for c in 0..8 {
            assert!((y[c] - full[t * 8 + c]).abs() < 1e-14);
        }
    }
    // each pair (i, i + Hd/2) keeps its length; position 0 is the identity
    let xv = x.to_vec();
    for r in 0..5 {
        for i in 0..4 {
            let n0 = xv[r * 8 + i].hypot(xv[r * 8 + i + 4]);
            let n1 = full[r * 8 + i].hypot(full[r * 8 + i + 4]);
            assert!((n0 - n1).abs() < 1e-13);
        }
    }
    assert_eq!(full[..8], xv[..8]);
}

#[test]
fn rope_gradients() {
    let x: Tensor<(Batch, Heads, Seq, HeadDim), f64> =
        Tensor::randn((Batch, Heads, Seq, HeadDim), 61);
    check_grad1(x.clone(), |x| weighted_sum(x.rope(10000.0, 2), 62));
    // used twice (q and k from one tensor)
    check_grad1(x, |x| {
        weighted_sum(x.clone().rope(100.0, 0) * x.rope(100.0, 1), 63)
    });
    // a broadcast input: one (T, Hd) block shared by every head
    let v: Tensor<(Seq, HeadDim), f64> = Tensor::randn((Seq, HeadDim), 64);
    check_grad1(v, |v| {
        weighted_sum(
            v.broadcast::<_, Axis<0>>((Heads, Seq, HeadDim))
                .rope(10000.0, 4),
            65,
        )
    });
}

#[test]
fn rope_rejects_odd_head_dims_and_bad_bases() {
    let x: Tensor<(Dyn, Dyn), f32> = Tensor::zeros((Dyn(3), Dyn(5)));
    match x.try_rope(10000.0, 0) {
        Err(Error::InvalidArgument { op: "rope", reason }) => assert!(reason.contains('5')),
        other => panic!("{other:?}"),
    }
    let y: Tensor<(Dyn, Dyn), f32> = Tensor::zeros((Dyn(3), Dyn(4)));
    assert!(y.clone().try_rope(0.0, 0).is_err());
    assert!(y.try_rope(f64::NAN, 0).is_err());
}

#[test]
#[should_panic(
    expected = "invalid argument to `rope`: the last dim (head dim) must be even, got 7"
)]
fn rope_odd_head_dim_panics() {
    let x: Tensor<(Seq, Dyn), f32> = Tensor::zeros((Seq, Dyn(7)));
    let _ = x.rope(10000.0, 0);
}

// ---------------------------------------------------------------- dtypes

#[test]
fn mask_ops_in_every_dtype() {
    let a: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 71);
    let b: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 72);
    let m = mask_from((Rows, Cols), |i| i % 3 != 2);
    check_dtypes!("where_cond", |E| Tensor::where_cond(
        &m,
        cast::<E, _>(&a),
        cast::<E, _>(&b)
    )
    .to_f64_vec());
    check_dtypes!("masked_fill", |E| cast::<E, _>(&a)
        .masked_fill(&m, -1.5)
        .to_f64_vec());
    check_dtypes!("tril", |E| cast::<E, _>(&a).tril(0).to_f64_vec());
    check_dtypes!("triu", |E| cast::<E, _>(&a).triu(1).to_f64_vec());
    check_dtypes!("dropout", |E| cast::<E, _>(&a).dropout(0.3, 4).to_f64_vec());
    let q: Tensor<(Heads, Seq, HeadDim), f64> = Tensor::randn((Heads, Seq, HeadDim), 73);
    check_dtypes!("rope", |E| cast::<E, _>(&q).rope(10000.0, 3).to_f64_vec());
    check_dtypes!("rope backward", |E| {
        let qt = cast::<E, _>(&q);
        let w = cast::<E, _>(&Tensor::<(Heads, Seq, HeadDim), f64>::randn(
            (Heads, Seq, HeadDim),
            74,
        ));
        let g = qt
            .clone()
            .traced()
            .rope(10000.0, 3)
            .mul(w)
            .sum_all()
            .backward();
        g.get(&qt).unwrap().to_f64_vec()
    });
}

// ---------------------------------------------------------------- generic code

/// Generic dims compile: the rules hold for any `M`, `N`.
fn generic_masks<M: Dim, N: Dim>(
    x: Tensor<(M, N), f32>,
    m: &Tensor<(M, N), bool>,
) -> Tensor<(M, N), f32> {
    let a = x.clone().tril(0).triu(-1).dropout(0.1, 1);
    let b = x.clone().masked_fill(m, 0.0);
    Tensor::where_cond(m, a, b).add(x.rope(10000.0, 0))
}

#[test]
fn generic_dims_compile_and_run() {
    let x: Tensor<(Rows, Cols), f32> = Tensor::ones((Rows, Cols));
    let m: Tensor<(Rows, Cols), bool> = Tensor::zeros((Rows, Cols));
    let y = generic_masks(x, &m);
    assert_eq!(y.dims(), [3, 4]);
}
