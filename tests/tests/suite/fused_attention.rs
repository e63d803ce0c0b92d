//! The fused attention op (`try_fused_attention`): f64 finite-difference
//! gradients of q, k, v (permuted, broadcast and reused inputs), agreement
//! with the unfused `try_scaled_dot_product_attention` (forward and
//! gradients) under every kind of mask, every dtype against the f64
//! reference, forward values by hand, and run-time shape errors; the
//! one-projection form (`try_fused_attention_qkv`) against the split heads.

use zerfoo::autograd::TapeState;
use zerfoo::nn::try_scaled_dot_product_attention;
use zerfoo::ops::{
    fused_attention, fused_attention_bthd, try_fused_attention, try_fused_attention_bthd,
    try_fused_attention_qkv, AttentionMask,
};
use zerfoo::prelude::*;
use zerfoo_tests::{cast, check_dtypes, check_grad1, rel_err, weighted_sum};

dim!(Batch = 2);
dim!(Heads = 2);
dim!(Seq = 7);
dim!(Keys = 9);
dim!(HeadDim = 5);
dim!(ValDim = 3);

type Q<E = f64> = Tensor<(Batch, Heads, Seq, HeadDim), E>;
type K<E = f64> = Tensor<(Batch, Heads, Keys, HeadDim), E>;
type V<E = f64> = Tensor<(Batch, Heads, Keys, ValDim), E>;

fn inputs() -> (Q, K, V) {
    (
        Tensor::randn(Default::default(), 1),
        Tensor::randn(Default::default(), 2),
        Tensor::randn(Default::default(), 3),
    )
}

/// Every mask shape: none, causal, window, padding (one batch row fully
/// padded), offsets where the first queries see nothing, decoding offsets.
fn masks() -> Vec<AttentionMask> {
    let pad: Vec<bool> = (0..2 * 9).map(|n| n / 9 == 1 || n % 4 == 2).collect();
    vec![
        AttentionMask::none(),
        AttentionMask::causal(),
        AttentionMask::causal().window(3),
        AttentionMask::none().padding(pad.clone()),
        AttentionMask::causal().padding(pad).offsets(0, 2),
        AttentionMask::causal().window(6).offsets(5, 1),
    ]
}

/// The unfused reference under the same mask.
fn unfused<E: FloatDtype, Tp: TapeState>(
    q: Tensor<(Batch, Heads, Seq, HeadDim), E, Cpu, Tp>,
    k: Tensor<(Batch, Heads, Keys, HeadDim), E, Cpu, Tp>,
    v: Tensor<(Batch, Heads, Keys, ValDim), E, Cpu, Tp>,
    m: &AttentionMask,
    scale: f64,
) -> Tensor<(Batch, Heads, Seq, ValDim), E, Cpu, Tp> {
    let dense = (!m.is_none()).then(|| {
        Tensor::<(Batch, Seq, Keys), bool>::from_vec(Default::default(), m.to_dense(2, 7, 9))
            .unwrap()
    });
    try_scaled_dot_product_attention(q, k, v, dense.as_ref(), scale).unwrap()
}

#[track_caller]
fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    let e = rel_err(got, want);
    assert!(e <= tol, "{what}: rel err {e:e} > {tol:e}");
}

#[test]
fn forward_by_hand() {
    // One query (1, 0), keys (1, 0), (0, 1), (0, 0) with scale ln 2: scores
    // ln2, 0, 0 -> weights 1/2, 1/4, 1/4.
    let q = Tensor::<(U1, U1, U1, U2), f64>::from_vec(Default::default(), vec![1.0, 0.0]).unwrap();
    let k = Tensor::<(U1, U1, U3, U2), f64>::from_vec(
        Default::default(),
        vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0],
    )
    .unwrap();
    let v = Tensor::<(U1, U1, U3, U1), f64>::from_vec(Default::default(), vec![4.0, 8.0, 16.0])
        .unwrap();
    let y = fused_attention(
        q.clone(),
        k.clone(),
        v.clone(),
        &AttentionMask::none(),
        2f64.ln(),
    );
    assert!((y.to_vec()[0] - (2.0 + 2.0 + 4.0)).abs() < 1e-12);
    // Padding the first key: weights 1/2, 1/2.
    let pad = AttentionMask::none().padding(vec![true, false, false]);
    let y = fused_attention(q.clone(), k.clone(), v.clone(), &pad, 2f64.ln());
    assert!((y.to_vec()[0] - 12.0).abs() < 1e-12);
    // Query at 0 with keys from position 1 under a causal mask: nothing visible.
    let late = AttentionMask::causal().offsets(0, 1);
    let y = fused_attention(q, k, v, &late, 1.0);
    assert_eq!(y.to_vec(), [0.0]);
}

#[test]
fn matches_unfused_forward_and_gradients() {
    let (q, k, v) = inputs();
    for m in masks() {
        let fwd = fused_attention(q.clone(), k.clone(), v.clone(), &m, 0.6);
        let want = unfused(q.clone(), k.clone(), v.clone(), &m, 0.6);
        assert_close("forward", &fwd.to_vec(), &want.to_vec(), 1e-12);
        assert!(fwd.to_vec().iter().all(|x| x.is_finite()));
        let (qt, kt, vt) = (q.clone().traced(), k.clone().traced(), v.clone().traced());
        let g1 = weighted_sum(
            fused_attention(qt.clone(), kt.clone(), vt.clone(), &m, 0.6),
            7,
        )
        .backward();
        let g2 = weighted_sum(unfused(qt, kt, vt, &m, 0.6), 7).backward();
        let pairs = [
            (
                "dq",
                g1.get(&q).unwrap().to_vec(),
                g2.get(&q).unwrap().to_vec(),
            ),
            (
                "dk",
                g1.get(&k).unwrap().to_vec(),
                g2.get(&k).unwrap().to_vec(),
            ),
            (
                "dv",
                g1.get(&v).unwrap().to_vec(),
                g2.get(&v).unwrap().to_vec(),
            ),
        ];
        for (name, a, b) in pairs {
            assert_close(name, &a, &b, 1e-10);
        }
    }
}

#[test]
fn finite_difference_gradients() {
    let (q, k, v) = inputs();
    for m in masks() {
        check_grad1(q.clone(), |q| {
            weighted_sum(fused_attention(q, k.clone(), v.clone(), &m, 0.6), 11)
        });
        check_grad1(k.clone(), |k| {
            weighted_sum(fused_attention(q.clone(), k, v.clone(), &m, 0.6), 12)
        });
        check_grad1(v.clone(), |v| {
            weighted_sum(fused_attention(q.clone(), k.clone(), v, &m, 0.6), 13)
        });
    }
}

#[test]
fn gradients_of_permuted_broadcast_and_reused_inputs() {
    // Heads permuted out of a (B, T, H, D) tensor (the layer's layout).
    let x: Tensor<(Batch, Seq, Heads, HeadDim), f64> = Tensor::randn(Default::default(), 4);
    let (_, k, _) = inputs();
    let v: Tensor<(Batch, Heads, Keys, HeadDim), f64> = Tensor::randn(Default::default(), 5);
    let m = AttentionMask::causal().window(4);
    check_grad1(x.clone(), |x| {
        weighted_sum(
            fused_attention(x.transpose::<1, 2>(), k.clone(), v.clone(), &m, 0.4),
            14,
        )
    });
    // One key tensor (B, Tk, D) shared by every head (a stride-0 view).
    let k1: Tensor<(Batch, Keys, HeadDim), f64> = Tensor::randn(Default::default(), 6);
    check_grad1(k1, |k1| {
        let kb = k1.broadcast::<_, Axis<1>>((Batch, Heads, Keys, HeadDim));
        let q = x.clone().transpose::<1, 2>();
        weighted_sum(fused_attention(q, kb, v.clone(), &m, 0.4), 15)
    });
    // Self-attention of one tensor: q = k = v.
    let s: Tensor<(Batch, Heads, Seq, HeadDim), f64> = Tensor::randn(Default::default(), 8);
    check_grad1(s, |s| {
        weighted_sum(
            fused_attention(s.clone(), s.clone(), s, &AttentionMask::causal(), 0.7),
            16,
        )
    });
}

#[test]
fn every_dtype_fused_and_unfused_agree_with_f64() {
    let (q, k, v) = inputs();
    for (n, m) in masks().into_iter().enumerate() {
        check_dtypes!("fused attention forward", |E| {
            fused_attention(
                cast::<E, _>(&q),
                cast::<E, _>(&k),
                cast::<E, _>(&v),
                &m,
                0.6,
            )
            .to_f64_vec()
        });
        check_dtypes!("fused attention gradients", |E| {
            let (qe, ke, ve) = (cast::<E, _>(&q), cast::<E, _>(&k), cast::<E, _>(&v));
            let y = fused_attention(
                qe.clone().traced(),
                ke.clone().traced(),
                ve.clone().traced(),
                &m,
                0.6,
            );
            let w: Tensor<_, E> = cast::<E, _>(&Tensor::randn(y.shape(), 20 + n as u64));
            let g = y.mul(w).sum_all().backward();
            let mut out = g.get(&qe).unwrap().to_f64_vec();
            out.extend(g.get(&ke).unwrap().to_f64_vec());
            out.extend(g.get(&ve).unwrap().to_f64_vec());
            out
        });
        check_dtypes!("unfused attention forward", |E| {
            unfused(
                cast::<E, _>(&q),
                cast::<E, _>(&k),
                cast::<E, _>(&v),
                &m,
                0.6,
            )
            .to_f64_vec()
        });
    }
}

/// The sequence-major form `(B, T, H, D)` equals the heads-first one on the
/// transposed operands, forward and gradients, under every mask; its
/// gradients pass finite differences; f32 agrees with f64.
#[test]
fn sequence_major_form_matches_heads_first() {
    let (q, k, v) = inputs();
    let (qs, ks, vs) = (
        q.clone().transpose::<1, 2>().contiguous(),
        k.clone().transpose::<1, 2>().contiguous(),
        v.clone().transpose::<1, 2>().contiguous(),
    );
    for (n, m) in masks().into_iter().enumerate() {
        let y = fused_attention_bthd(
            qs.clone().traced(),
            ks.clone().traced(),
            vs.clone().traced(),
            &m,
            0.6,
        );
        assert_eq!(y.dims(), [2, 7, 2, 3]);
        let want = fused_attention(
            q.clone().traced(),
            k.clone().traced(),
            v.clone().traced(),
            &m,
            0.6,
        );
        assert_close(
            "forward",
            &y.to_vec(),
            &want.clone().transpose::<1, 2>().to_vec(),
            1e-12,
        );
        let w: Tensor<(Batch, Heads, Seq, ValDim), f64> =
            Tensor::randn(Default::default(), 30 + n as u64);
        let g = y.mul(w.clone().transpose::<1, 2>()).sum_all().backward();
        let gw = want.mul(w).sum_all().backward();
        fn heads_last<T: Dim, W: Dim>(x: Tensor<(Batch, Heads, T, W), f64>) -> Vec<f64> {
            x.transpose::<1, 2>().to_vec()
        }
        for (name, got, want) in [
            (
                "dq",
                g.get(&qs).unwrap().to_vec(),
                heads_last(gw.get(&q).unwrap()),
            ),
            (
                "dk",
                g.get(&ks).unwrap().to_vec(),
                heads_last(gw.get(&k).unwrap()),
            ),
            (
                "dv",
                g.get(&vs).unwrap().to_vec(),
                heads_last(gw.get(&v).unwrap()),
            ),
        ] {
            assert_close(name, &got, &want, 1e-12);
        }
        check_grad1(qs.clone(), |q| {
            weighted_sum(fused_attention_bthd(q, ks.clone(), vs.clone(), &m, 0.6), 31)
        });
        check_grad1(ks.clone(), |k| {
            weighted_sum(fused_attention_bthd(qs.clone(), k, vs.clone(), &m, 0.6), 32)
        });
        check_grad1(vs.clone(), |v| {
            weighted_sum(fused_attention_bthd(qs.clone(), ks.clone(), v, &m, 0.6), 33)
        });
        check_dtypes!("sequence-major fused attention", |E| {
            let (qe, ke, ve) = (cast::<E, _>(&qs), cast::<E, _>(&ks), cast::<E, _>(&vs));
            let y = fused_attention_bthd(
                qe.clone().traced(),
                ke.clone().traced(),
                ve.clone().traced(),
                &m,
                0.6,
            );
            let mut out = y.to_f64_vec();
            let g = y.sum_all().backward();
            out.extend(g.get(&qe).unwrap().to_f64_vec());
            out.extend(g.get(&ke).unwrap().to_f64_vec());
            out.extend(g.get(&ve).unwrap().to_f64_vec());
            out
        });
    }
    // Shapes in errors are the caller's (B, T, H, D).
    let q: Tensor<(Dyn, Dyn, U2, U4), f64> =
        Tensor::zeros((Dyn(1), Dyn(3), U2::default(), U4::default()));
    let k: Tensor<(Dyn, Dyn, U2, U4), f64> =
        Tensor::zeros((Dyn(2), Dyn(5), U2::default(), U4::default()));
    match try_fused_attention_bthd(q, k.clone(), k, &AttentionMask::none(), 1.0) {
        Err(Error::ShapeMismatch { lhs, rhs, .. }) => {
            assert_eq!((lhs, rhs), (vec![1, 3, 2, 4], vec![2, 5, 2, 4]))
        }
        other => panic!("{other:?}"),
    }
}

dim!(Qkv = 30);

/// The heads of block `part` (0: queries, 1: keys, 2: values) of a
/// `(B, T, 3·H·D)` projection, as a layer splits them.
fn qkv_block<Tp: TapeState>(
    qkv: Tensor<(Batch, Seq, Qkv), f64, Cpu, Tp>,
    part: usize,
) -> Tensor<(Batch, Seq, Heads, HeadDim), f64, Cpu, Tp> {
    qkv.narrow::<Axis<2>>(10 * part, 10)
        .split_heads::<Heads, HeadDim>()
}

#[test]
fn one_projection_form_matches_split_heads() {
    let heads = (Heads, HeadDim);
    let pad: Vec<bool> = (0..2 * 7).map(|n| n / 7 == 1 || n % 3 == 2).collect();
    let masks = [
        AttentionMask::none(),
        AttentionMask::causal(),
        AttentionMask::causal().window(3),
        AttentionMask::none().padding(pad.clone()),
        AttentionMask::causal().padding(pad).offsets(2, 2),
    ];
    let dense: Tensor<(Batch, Seq, Qkv), f64> = Tensor::randn(Default::default(), 40);
    // The same values stored with the positions outermost (a strided view).
    let strided = dense
        .clone()
        .transpose::<0, 1>()
        .contiguous()
        .transpose::<0, 1>();
    for (n, m) in masks.iter().enumerate() {
        for qkv in [dense.clone(), strided.clone()] {
            let y =
                try_fused_attention_qkv(qkv.clone().traced(), heads.0, heads.1, m, 0.6).unwrap();
            let x = qkv.clone().traced();
            let (q, k, v) = (
                qkv_block(x.clone(), 0),
                qkv_block(x.clone(), 1),
                qkv_block(x, 2),
            );
            let want = fused_attention_bthd(q, k, v, m, 0.6);
            // The same kernels on the same values: the same bits.
            assert_eq!(y.to_vec(), want.to_vec(), "forward, mask {n}");
            let w: Tensor<(Batch, Seq, Heads, HeadDim), f64> =
                Tensor::randn(Default::default(), 50 + n as u64);
            let g = y.mul(w.clone()).sum_all().backward();
            let gw = want.mul(w).sum_all().backward();
            assert_eq!(
                g.get(&qkv).unwrap().to_vec(),
                gw.get(&qkv).unwrap().to_vec(),
                "gradient, mask {n}"
            );
        }
        check_grad1(dense.clone(), |x| {
            weighted_sum(
                try_fused_attention_qkv(x, heads.0, heads.1, m, 0.6).unwrap(),
                41,
            )
        });
        check_dtypes!("one-projection fused attention", |E| {
            let x = cast::<E, _>(&dense);
            let y = try_fused_attention_qkv(x.clone().traced(), heads.0, heads.1, m, 0.6).unwrap();
            let mut out = y.to_f64_vec();
            out.extend(y.sum_all().backward().get(&x).unwrap().to_f64_vec());
            out
        });
    }
    // Untracked: the forward alone.
    let y = try_fused_attention_qkv(dense.clone(), heads.0, heads.1, &masks[1], 0.6).unwrap();
    assert_eq!(y.dims(), [2, 7, 2, 5]);
    // A width other than 3 · heads · head dim, and a padding of the wrong length.
    let x: Tensor<(Dyn, U3, Dyn), f64> = Tensor::zeros((Dyn(2), U3::default(), Dyn(29)));
    match try_fused_attention_qkv(x, heads.0, heads.1, &AttentionMask::none(), 1.0) {
        Err(Error::ShapeMismatch { lhs, rhs, .. }) => {
            assert_eq!((lhs, rhs), (vec![2, 3, 29], vec![2, 3, 30]))
        }
        other => panic!("{other:?}"),
    }
    let short = AttentionMask::causal().padding(vec![false; 13]);
    match try_fused_attention_qkv(dense, heads.0, heads.1, &short, 1.0) {
        Err(Error::ShapeMismatch { lhs, rhs, .. }) => {
            assert_eq!((lhs, rhs), (vec![13], vec![2, 7]))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn runtime_shape_errors() {
    let q: Tensor<(Dyn, U2, U3, U4), f64> =
        Tensor::zeros((Dyn(2), U2::default(), U3::default(), U4::default()));
    let k: Tensor<(Dyn, U2, Dyn, U4), f64> =
        Tensor::zeros((Dyn(1), U2::default(), Dyn(5), U4::default()));
    let v: Tensor<(Dyn, U2, Dyn, U1), f64> =
        Tensor::zeros((Dyn(2), U2::default(), Dyn(5), U1::default()));
    let e = try_fused_attention(q.clone(), k, v.clone(), &AttentionMask::none(), 1.0);
    assert!(matches!(e, Err(Error::ShapeMismatch { .. })), "{e:?}");
    let k: Tensor<(Dyn, U2, Dyn, U4), f64> =
        Tensor::zeros((Dyn(2), U2::default(), Dyn(4), U4::default()));
    let e = try_fused_attention(q.clone(), k.clone(), v.clone(), &AttentionMask::none(), 1.0);
    assert!(matches!(e, Err(Error::ShapeMismatch { .. })), "{e:?}");
    let k: Tensor<(Dyn, U2, Dyn, U4), f64> =
        Tensor::zeros((Dyn(2), U2::default(), Dyn(5), U4::default()));
    let bad_pad = AttentionMask::none().padding(vec![false; 4]);
    let e = try_fused_attention(q.clone(), k.clone(), v.clone(), &bad_pad, 1.0);
    assert!(matches!(e, Err(Error::ShapeMismatch { .. })), "{e:?}");
    let ok = try_fused_attention(
        q,
        k,
        v,
        &AttentionMask::none().padding(vec![false; 10]),
        1.0,
    );
    assert_eq!(ok.unwrap().dims(), [2, 2, 3, 1]);
}

#[test]
#[should_panic(expected = "shape error in `fused attention`")]
fn runtime_shape_error_panics() {
    let q: Tensor<(Dyn, U1, U1, U2), f64> =
        Tensor::zeros((Dyn(2), U1::default(), U1::default(), U2::default()));
    let k: Tensor<(Dyn, U1, U3, U2), f64> =
        Tensor::zeros((Dyn(3), U1::default(), U3::default(), U2::default()));
    let v: Tensor<(Dyn, U1, U3, U2), f64> =
        Tensor::zeros((Dyn(3), U1::default(), U3::default(), U2::default()));
    let _ = fused_attention(q, k, v, &AttentionMask::none(), 1.0);
}

/// Generic code over dims compiles.
#[allow(dead_code)]
fn generic<B: Dim, T: Dim, D: Dim>(x: Tensor<(B, U2, T, D), f32>) -> Tensor<(B, U2, T, D), f32> {
    fused_attention(x.clone(), x.clone(), x, &AttentionMask::causal(), 0.5)
}

/// Quick timing of fused vs unfused forward + backward at the two GPT
/// shapes (causal). Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn timing_fused_vs_unfused() {
    fn time<Bd: Dim, Hd: Dim, Td: Dim, Dd: Dim>(b: Bd, h: Hd, t: Td, d: Dd) {
        let shape = (b, h, t, d);
        let q: Tensor<_, f32> = Tensor::randn(shape, 1);
        let k: Tensor<_, f32> = Tensor::randn(shape, 2);
        let v: Tensor<_, f32> = Tensor::randn(shape, 3);
        let scale = 1.0 / (d.size() as f64).sqrt();
        let m = AttentionMask::causal();
        let dense = Tensor::<(Bd, Td, Td), bool>::from_vec(
            (b, t, t),
            m.to_dense(b.size(), t.size(), t.size()),
        )
        .unwrap();
        let reps = 10;
        let run = |fused: bool| {
            let start = std::time::Instant::now();
            for _ in 0..reps {
                let (qt, kt, vt) = (q.clone().traced(), k.clone().traced(), v.clone().traced());
                let y = if fused {
                    fused_attention(qt, kt, vt, &m, scale)
                } else {
                    try_scaled_dot_product_attention(qt, kt, vt, Some(&dense), scale).unwrap()
                };
                let _ = y.sum_all().backward();
            }
            start.elapsed().as_secs_f64() * 1e3 / reps as f64
        };
        let (_, _) = (run(true), run(false));
        let (f, u) = (run(true), run(false));
        println!(
            "B={} H={} T={} D={}: fused {f:.2} ms, unfused {u:.2} ms (fwd+bwd)",
            b.size(),
            h.size(),
            t.size(),
            d.size()
        );
    }
    time(Dyn(12), Dyn(4), Dyn(64), Dyn(32));
    time(Dyn(8), Dyn(6), Dyn(256), Dyn(64));
}
