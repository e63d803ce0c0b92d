//! Losses: cross-entropy (ignore_index, label smoothing, mean/sum), MSE and
//! binary cross-entropy on logits (with pos_weight). Closed-form values,
//! f64 finite-difference gradients (broadcast operand, non-contiguous view,
//! a tensor used twice), dtype sweeps, huge logits and errors.

use zerfoo::nn::{
    binary_cross_entropy_with_logits, binary_cross_entropy_with_logits_weighted, cross_entropy,
    mse_loss, try_binary_cross_entropy_with_logits, try_binary_cross_entropy_with_logits_weighted,
    try_cross_entropy, try_mse_loss, CrossEntropyOpts, Reduction,
};
use zerfoo::prelude::*;
use zerfoo_tests::{cast, check_dtypes, check_grad1, check_grad2};

dim!(Rows = 5);
dim!(Classes = 4);

fn t<S: Shape, E: Dtype>(shape: S, v: Vec<E>) -> Tensor<S, E> {
    Tensor::from_vec(shape, v).unwrap()
}

/// Reference cross-entropy of one row, from the definition.
fn ce_row(row: &[f64], target: usize, eps: f64) -> f64 {
    let z: f64 = row.iter().map(|v| v.exp()).sum();
    let logp: Vec<f64> = row.iter().map(|v| (v.exp() / z).ln()).collect();
    -(1.0 - eps) * logp[target] - eps / row.len() as f64 * logp.iter().sum::<f64>()
}

fn targets() -> Tensor<(Rows,), i64> {
    t((Rows,), vec![3, 0, 1, 3, 2])
}

// ---------------------------------------------------------------- cross-entropy

#[test]
fn cross_entropy_closed_form() {
    // [0, ln 3] with target 1: -ln(3/4); [0, 0]: ln 2
    let x = t(
        (U2::default(), U2::default()),
        vec![0.0, 3f64.ln(), 0.0, 0.0],
    );
    let ids = t((U2::default(),), vec![1i64, 0]);
    let mean = cross_entropy(x.clone(), &ids, CrossEntropyOpts::default()).item();
    let want = (-(0.75f64).ln() + 2f64.ln()) / 2.0;
    assert!((mean - want).abs() < 1e-15, "{mean} vs {want}");
    let sum = cross_entropy(
        x.clone(),
        &ids,
        CrossEntropyOpts::default().reduction(Reduction::Sum),
    )
    .item();
    assert!((sum - 2.0 * want).abs() < 1e-15);
    // label smoothing eps on row 0 (C = 2): -(1-eps) ln(3/4) - eps/2 (ln(1/4) + ln(3/4))
    let eps = 0.2;
    let smooth = cross_entropy(
        x.clone(),
        &ids,
        CrossEntropyOpts::default()
            .label_smoothing(eps)
            .ignore_index(0)
            .reduction(Reduction::Sum),
    )
    .item();
    let want = -(1.0 - eps) * (0.75f64).ln() - eps / 2.0 * ((0.25f64).ln() + (0.75f64).ln());
    assert!((smooth - want).abs() < 1e-15, "{smooth} vs {want}");
    // one row: logits (C,) and a scalar target
    let row = t((U2::default(),), vec![0.0f64, 3f64.ln()]);
    let one = cross_entropy(row, &t((), vec![1i64]), CrossEntropyOpts::default()).item();
    assert!((one + (0.75f64).ln()).abs() < 1e-15);
    // u32 targets
    let ids32 = t((U2::default(),), vec![1u32, 0]);
    assert_eq!(
        cross_entropy(x, &ids32, CrossEntropyOpts::default()).item(),
        mean
    );
}

#[test]
fn cross_entropy_against_the_definition_with_ignored_rows() {
    let x: Tensor<(Rows, Classes), f64> = Tensor::randn((Rows, Classes), 1);
    let ids = t((Rows,), vec![3i64, -100, 1, -100, 2]);
    let rows = x.to_f64_vec();
    for eps in [0.0, 0.1, 1.0] {
        let opts = CrossEntropyOpts::default()
            .ignore_index(-100)
            .label_smoothing(eps);
        let got = cross_entropy(x.clone(), &ids, opts).item();
        // the mean runs over the 3 rows that are not ignored (PyTorch's rule)
        let want = [(0, 3), (2, 1), (4, 2)]
            .iter()
            .map(|&(r, c)| ce_row(&rows[r * 4..r * 4 + 4], c, eps))
            .sum::<f64>()
            / 3.0;
        assert!((got - want).abs() < 1e-14, "eps {eps}: {got} vs {want}");
    }
    // every row ignored: the mean is 0/0 = NaN (as in PyTorch), the gradient zero
    let all = t((Rows,), vec![7i64; 5]);
    let loss = cross_entropy(
        x.clone().traced(),
        &all,
        CrossEntropyOpts::default().ignore_index(7),
    );
    assert!(loss.item().is_nan());
    let g = loss.backward().get(&x).unwrap().to_f64_vec();
    assert!(g.iter().all(|&v| v == 0.0));
}

#[test]
fn cross_entropy_gradient_is_softmax_minus_onehot() {
    let x: Tensor<(Rows, Classes), f64> = Tensor::randn((Rows, Classes), 2);
    let ids = targets();
    let g = cross_entropy(x.clone().traced(), &ids, CrossEntropyOpts::default())
        .backward()
        .get(&x)
        .unwrap()
        .to_f64_vec();
    let v = x.to_f64_vec();
    for r in 0..5 {
        let row = &v[r * 4..r * 4 + 4];
        let z: f64 = row.iter().map(|a| a.exp()).sum();
        for c in 0..4 {
            let onehot = if c as i64 == ids.to_vec()[r] {
                1.0
            } else {
                0.0
            };
            let want = (row[c].exp() / z - onehot) / 5.0;
            assert!((g[r * 4 + c] - want).abs() < 1e-15);
        }
    }
}

#[test]
fn cross_entropy_gradients() {
    let x: Tensor<(Rows, Classes), f64> = Tensor::randn((Rows, Classes), 3);
    let ids = targets();
    for opts in [
        CrossEntropyOpts::default(),
        CrossEntropyOpts::default()
            .label_smoothing(0.3)
            .ignore_index(0)
            .reduction(Reduction::Sum),
    ] {
        check_grad1(x.clone(), |x| cross_entropy(x, &ids, opts));
        // used twice: logits x + tanh(x) * x
        check_grad1(x.clone(), |x| {
            cross_entropy(x.clone() + x.clone().tanh() * x, &ids, opts)
        });
    }
    // a broadcast operand: a per-class bias added to every row
    let bias: Tensor<(Classes,), f64> = Tensor::randn((Classes,), 4);
    check_grad2(x.clone(), bias, |x, b| {
        let s = x.shape();
        let b = b.retaped::<Tape>().broadcast::<_, Axis<0>>(s);
        cross_entropy(
            x + b,
            &ids,
            CrossEntropyOpts::default().label_smoothing(0.1),
        )
    });
    // non-contiguous logits: a transposed (C, N) buffer; rank 3 with Dyn dims
    let xt: Tensor<(Classes, Rows), f64> = Tensor::randn((Classes, Rows), 5);
    check_grad1(xt, |xt| {
        cross_entropy(xt.t(), &ids, CrossEntropyOpts::default())
    });
    let x3: Tensor<(Dyn, Dyn, Classes), f64> = Tensor::randn((Dyn(2), Dyn(3), Classes), 6);
    let ids3: Tensor<(Dyn, Dyn), i64> = t((Dyn(2), Dyn(3)), vec![0, 1, 2, 3, 0, 1]);
    check_grad1(x3, |x| {
        cross_entropy(x, &ids3, CrossEntropyOpts::default().ignore_index(1))
    });
}

#[test]
fn cross_entropy_with_huge_logits_is_finite() {
    // logits ±1e4: loss = 2e4 for the row whose target has -1e4, 0 for the other
    let v = vec![1e4, -1e4, 0.0, -1e4, 1e4, 0.0];
    let ids = t((U2::default(),), vec![1i64, 1]);
    fn run<E: FloatDtype>(v: &[f64], ids: &Tensor<(U2,), i64>) -> (f64, Vec<f64>) {
        let x: Tensor<(U2, U3), E> = Tensor::from_vec(
            Default::default(),
            v.iter().map(|&a| E::from_f64(a)).collect(),
        )
        .unwrap();
        let loss = cross_entropy(x.clone().traced(), ids, CrossEntropyOpts::default());
        let value = loss.item().to_f64();
        (value, loss.backward().get(&x).unwrap().to_f64_vec())
    }
    for (loss, g) in [
        run::<f64>(&v, &ids),
        run::<f32>(&v, &ids),
        run::<f16>(&v, &ids),
    ] {
        assert!((loss - 1e4).abs() < 1e-3 * 1e4, "{loss}");
        let want = [0.5, -0.5, 0.0, 0.0, 0.0, 0.0];
        for (a, b) in g.iter().zip(want) {
            assert!(a.is_finite() && (a - b).abs() < 1e-6, "{g:?}");
        }
    }
    // with label smoothing too
    let x = t((U2::default(), U3::default()), v.clone());
    let l = cross_entropy(x, &ids, CrossEntropyOpts::default().label_smoothing(0.5)).item();
    // row 0: 0.5 * 2e4 + 0.5 * mean(0, 2e4, 1e4); row 1: 0 + 0.5 * mean(2e4, 0, 1e4)
    assert!((l - (0.5 * 2e4 + 0.5 * 1e4 + 0.5 * 1e4) / 2.0).abs() < 1e-9);
}

#[test]
fn cross_entropy_in_every_dtype() {
    let x: Tensor<(Rows, Classes), f64> = Tensor::randn((Rows, Classes), 7);
    let ids = targets();
    let opts = CrossEntropyOpts::default().label_smoothing(0.1);
    check_dtypes!("cross_entropy", |E| {
        let xe = cast::<E, _>(&x);
        let loss = cross_entropy(xe.clone().traced(), &ids, opts);
        let mut v = vec![loss.item().to_f64()];
        v.extend(loss.backward().get(&xe).unwrap().to_f64_vec());
        v
    });
}

#[test]
fn cross_entropy_errors() {
    let x: Tensor<(Rows, Classes), f32> = Tensor::randn((Rows, Classes), 8);
    let bad = t((Rows,), vec![0i64, 4, 1, 1, 1]);
    let e = try_cross_entropy(x.clone(), &bad, CrossEntropyOpts::default()).unwrap_err();
    assert_eq!(
        e,
        Error::IndexOutOfRange {
            op: "cross_entropy",
            index: 4,
            size: 4
        }
    );
    let neg = t((Rows,), vec![0i64, -1, 1, 1, 1]);
    assert!(matches!(
        try_cross_entropy(x.clone(), &neg, CrossEntropyOpts::default()),
        Err(Error::IndexOutOfRange { index: -1, .. })
    ));
    // -1 is fine once it is the ignored value
    assert!(try_cross_entropy(
        x.clone(),
        &neg,
        CrossEntropyOpts::default().ignore_index(-1)
    )
    .is_ok());
    let e = try_cross_entropy(
        x.clone(),
        &targets(),
        CrossEntropyOpts::default().label_smoothing(1.5),
    )
    .unwrap_err();
    assert!(matches!(
        e,
        Error::InvalidArgument {
            op: "cross_entropy",
            ..
        }
    ));
    // a Dyn dim that differs
    let xd: Tensor<(Dyn, Classes), f32> = Tensor::randn((Dyn(3), Classes), 9);
    let e = try_cross_entropy(xd, &targets(), CrossEntropyOpts::default()).unwrap_err();
    assert_eq!(
        e,
        Error::ShapeMismatch {
            op: "cross_entropy",
            lhs: vec![3, 4],
            rhs: vec![5]
        }
    );
}

#[test]
#[should_panic(expected = "index error in `cross_entropy`: index 9 is out of range for size 4")]
fn cross_entropy_panics_on_bad_target() {
    let x: Tensor<(Rows, Classes), f32> = Tensor::randn((Rows, Classes), 10);
    let _ = cross_entropy(
        x,
        &t((Rows,), vec![0u32, 9, 1, 1, 1]),
        CrossEntropyOpts::default(),
    );
}

#[test]
#[should_panic(expected = "shape error in `cross_entropy`")]
fn cross_entropy_panics_on_dyn_mismatch() {
    let x: Tensor<(Dyn, Classes), f32> = Tensor::randn((Dyn(2), Classes), 11);
    let _ = cross_entropy(x, &targets(), CrossEntropyOpts::default());
}

/// Generic code over dims compiles (the rule is checked by value).
fn generic_ce<B: Dim, C: Dim>(x: Tensor<(B, C), f32>, ids: &Tensor<(B,), i64>) -> f32 {
    cross_entropy(x, ids, CrossEntropyOpts::default()).item()
}

#[test]
fn cross_entropy_in_generic_code() {
    let x: Tensor<(Rows, Classes), f32> = Tensor::zeros((Rows, Classes));
    assert!((generic_ce(x, &targets()) - 4f32.ln()).abs() < 1e-6);
}

// ---------------------------------------------------------------- MSE

#[test]
fn mse_closed_form_and_gradients() {
    let p = t((U3::default(),), vec![1.0f64, 2.0, 3.0]);
    let y = t((U3::default(),), vec![0.0f64, 2.0, 5.0]);
    assert_eq!(
        mse_loss(p.clone(), y.clone(), Reduction::Mean).item(),
        5.0 / 3.0
    );
    assert_eq!(mse_loss(p.clone(), y.clone(), Reduction::Sum).item(), 5.0);
    let g = mse_loss(p.clone().traced(), y.clone(), Reduction::Sum).backward();
    assert_eq!(g.get(&p).unwrap().to_vec(), [2.0, 0.0, -4.0]);
    assert_eq!(g.get(&y).unwrap().to_vec(), [-2.0, 0.0, 4.0]);

    let a: Tensor<(Rows, Classes), f64> = Tensor::randn((Rows, Classes), 12);
    let b: Tensor<(Rows, Classes), f64> = Tensor::randn((Rows, Classes), 13);
    check_grad2(a.clone(), b.clone(), |a, b| mse_loss(a, b, Reduction::Mean));
    // used twice, and a broadcast target row
    check_grad1(a.clone(), |a| mse_loss(a.clone().tanh(), a, Reduction::Sum));
    let row: Tensor<(Classes,), f64> = Tensor::randn((Classes,), 14);
    check_grad2(a.clone(), row, |a, r| {
        let s = a.shape();
        mse_loss(
            a,
            r.retaped::<Tape>().broadcast::<_, Axis<0>>(s),
            Reduction::Mean,
        )
    });
    // non-contiguous prediction
    let at: Tensor<(Classes, Rows), f64> = Tensor::randn((Classes, Rows), 15);
    check_grad2(at, b.clone(), |at, b| mse_loss(at.t(), b, Reduction::Sum));
}

#[test]
fn mse_in_every_dtype() {
    let a: Tensor<(Rows, Classes), f64> = Tensor::randn((Rows, Classes), 16);
    let b: Tensor<(Rows, Classes), f64> = Tensor::randn((Rows, Classes), 17);
    check_dtypes!("mse_loss", |E| {
        let ae = cast::<E, _>(&a);
        let loss = mse_loss(ae.clone().traced(), cast::<E, _>(&b), Reduction::Mean);
        let mut v = vec![loss.item().to_f64()];
        v.extend(loss.backward().get(&ae).unwrap().to_f64_vec());
        v
    });
}

#[test]
fn mse_dyn_mismatch() {
    let a: Tensor<(Dyn,), f32> = Tensor::zeros((Dyn(3),));
    let b: Tensor<(Dyn,), f32> = Tensor::zeros((Dyn(4),));
    assert_eq!(
        try_mse_loss(a, b, Reduction::Mean).unwrap_err(),
        Error::ShapeMismatch {
            op: "mse_loss",
            lhs: vec![3],
            rhs: vec![4]
        }
    );
}

#[test]
#[should_panic(expected = "shape error in `mse_loss`")]
fn mse_panics_on_dyn_mismatch() {
    let a: Tensor<(Dyn,), f32> = Tensor::zeros((Dyn(3),));
    let _ = mse_loss(a, Tensor::<(Dyn,), f32>::zeros((Dyn(2),)), Reduction::Sum);
}

// ---------------------------------------------------------------- BCE with logits

/// The textbook form `-(y ln σ(x) + (1 - y) ln(1 - σ(x)))`, for moderate x.
fn bce_naive(x: f64, y: f64, pw: f64) -> f64 {
    let s = 1.0 / (1.0 + (-x).exp());
    -(pw * y * s.ln() + (1.0 - y) * (1.0 - s).ln())
}

#[test]
fn bce_closed_form() {
    let x = t((U2::default(), U2::default()), vec![0.0f64, 1.5, -2.0, 0.3]);
    let y = t((U2::default(), U2::default()), vec![1.0f64, 0.0, 0.25, 1.0]);
    let xs = x.to_f64_vec();
    let ys = y.to_f64_vec();
    let want: f64 = (0..4).map(|i| bce_naive(xs[i], ys[i], 1.0)).sum();
    let got = binary_cross_entropy_with_logits(x.clone(), y.clone(), Reduction::Sum).item();
    assert!((got - want).abs() < 1e-14, "{got} vs {want}");
    let mean = binary_cross_entropy_with_logits(x.clone(), y.clone(), Reduction::Mean).item();
    assert!((mean - want / 4.0).abs() < 1e-14);
    // pos_weight per column
    let pw = t((U2::default(),), vec![3.0f64, 0.5]);
    let want: f64 = (0..4)
        .map(|i| bce_naive(xs[i], ys[i], pw.to_vec()[i % 2]))
        .sum();
    let got = binary_cross_entropy_with_logits_weighted(x, y, &pw, Reduction::Sum).item();
    assert!((got - want).abs() < 1e-14, "{got} vs {want}");
}

#[test]
fn bce_with_huge_logits_is_finite() {
    let x = t((U4::default(),), vec![1e4f32, -1e4, 1e4, -1e4]);
    let y = t((U4::default(),), vec![1.0f32, 0.0, 0.0, 1.0]);
    let loss = binary_cross_entropy_with_logits(x.clone().traced(), y, Reduction::Sum);
    assert_eq!(loss.item(), 2e4);
    let g = loss.backward().get(&x).unwrap().to_vec();
    assert_eq!(g, [0.0, 0.0, 1.0, -1.0]);
}

#[test]
fn bce_gradients() {
    let x: Tensor<(Rows, Classes), f64> = Tensor::randn((Rows, Classes), 18);
    let y: Tensor<(Rows, Classes), f64> = Tensor::rand((Rows, Classes), 19);
    check_grad2(x.clone(), y.clone(), |x, y| {
        binary_cross_entropy_with_logits(x, y, Reduction::Mean)
    });
    check_grad1(x.clone(), |x| {
        binary_cross_entropy_with_logits(
            x.clone() * x.clone().sigmoid(),
            x.sigmoid(),
            Reduction::Sum,
        )
    });
    // the weight's gradient, and a broadcast logit row
    let pw: Tensor<(Classes,), f64> = Tensor::rand((Classes,), 20).add_scalar(0.5);
    let (y2, pw2) = (y.clone(), pw.clone());
    check_grad2(x.clone(), pw, move |x, pw| {
        binary_cross_entropy_with_logits_weighted(x, y2.clone(), &pw, Reduction::Mean)
    });
    let row: Tensor<(Classes,), f64> = Tensor::randn((Classes,), 21);
    check_grad2(row, y.clone(), move |r, y| {
        let r = r.broadcast::<_, Axis<0>>(y.shape());
        binary_cross_entropy_with_logits_weighted(r, y, &pw2, Reduction::Sum)
    });
    // non-contiguous logits
    let xt: Tensor<(Classes, Rows), f64> = Tensor::randn((Classes, Rows), 22);
    check_grad2(xt, y, |xt, y| {
        binary_cross_entropy_with_logits(xt.t(), y, Reduction::Sum)
    });
}

#[test]
fn bce_in_every_dtype() {
    let x: Tensor<(Rows, Classes), f64> = Tensor::randn((Rows, Classes), 23);
    let y: Tensor<(Rows, Classes), f64> = Tensor::rand((Rows, Classes), 24);
    let pw: Tensor<(Classes,), f64> = Tensor::rand((Classes,), 25).add_scalar(0.5);
    check_dtypes!("binary_cross_entropy_with_logits", |E| {
        let xe = cast::<E, _>(&x);
        let loss = binary_cross_entropy_with_logits_weighted(
            xe.clone().traced(),
            cast::<E, _>(&y),
            &cast::<E, _>(&pw),
            Reduction::Mean,
        );
        let mut v = vec![loss.item().to_f64()];
        v.extend(loss.backward().get(&xe).unwrap().to_f64_vec());
        v
    });
}

#[test]
fn bce_dyn_mismatch() {
    let x: Tensor<(Dyn, Classes), f32> = Tensor::zeros((Dyn(2), Classes));
    let y: Tensor<(Dyn, Classes), f32> = Tensor::zeros((Dyn(3), Classes));
    assert!(matches!(
        try_binary_cross_entropy_with_logits(x.clone(), y, Reduction::Mean),
        Err(Error::ShapeMismatch { .. })
    ));
    let w: Tensor<(Dyn,), f32> = Tensor::ones((Dyn(3),));
    let y: Tensor<(Dyn, Classes), f32> = Tensor::zeros((Dyn(2), Classes));
    assert_eq!(
        try_binary_cross_entropy_with_logits_weighted(x, y, &w, Reduction::Mean).unwrap_err(),
        Error::ShapeMismatch {
            op: "binary_cross_entropy_with_logits",
            lhs: vec![2, 4],
            rhs: vec![3]
        }
    );
}

#[test]
#[should_panic(expected = "shape error in `binary_cross_entropy_with_logits`")]
fn bce_panics_on_dyn_mismatch() {
    let x: Tensor<(Dyn,), f32> = Tensor::zeros((Dyn(2),));
    let _ = binary_cross_entropy_with_logits(
        x,
        Tensor::<(Dyn,), f32>::zeros((Dyn(3),)),
        Reduction::Sum,
    );
}
