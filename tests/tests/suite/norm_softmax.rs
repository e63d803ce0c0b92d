//! Softmax, log-softmax, layer norm, RMS norm (plain and `1 + w`).
//!
//! Gradients against f64 central differences (contiguous, broadcast-view and
//! used-twice inputs; weight and bias gradients by id), every dtype against
//! the f64 reference on rounded inputs, forward values against closed forms,
//! stability at logits of ±1e4, and run-time errors for `Dyn` weight sizes.

use zerfoo::prelude::*;
use zerfoo_tests::{cast, check_dtypes, check_grad1, check_grad2, weighted_sum};

dim!(Rows = 3);
dim!(Mid = 4);
dim!(Hidden = 5);
dim!(Embed = 5);

fn close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "lengths differ: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{got:?} vs {want:?}"
        );
    }
}

fn x2(seed: u64) -> Tensor<(Rows, Hidden), f64> {
    Tensor::randn((Rows, Hidden), seed)
}

/// A non-contiguous input: `(Rows, Hidden)` data viewed as
/// `(Rows, Mid, Hidden)` through a stride-0 broadcast along the middle axis.
fn bcast<T: zerfoo::autograd::TapeState>(
    x: Tensor<(Rows, Hidden), f64, Cpu, T>,
) -> Tensor<(Rows, Mid, Hidden), f64, Cpu, T> {
    x.broadcast::<_, Axis<1>>((Rows, Mid, Hidden))
}

fn vec_of(v: Vec<f64>) -> Tensor<(Hidden,), f64> {
    Tensor::from_vec((Hidden,), v).unwrap()
}

// ---------------------------------------------------------------- softmax

#[test]
fn softmax_values_along_each_axis() {
    let (l2, l3) = (2f64.ln(), 3f64.ln());
    let x = Tensor::<(U2, U3), f64>::from_vec(Default::default(), vec![0., l2, l3, 5., 5., 5.])
        .unwrap();
    let y = x.clone().softmax::<Axis<1>>().to_vec();
    close(
        &y,
        &[1. / 6., 2. / 6., 3. / 6., 1. / 3., 1. / 3., 1. / 3.],
        1e-15,
    );
    let ly = x.clone().log_softmax::<Axis<1>>().to_vec();
    let want: Vec<f64> = [1. / 6., 2. / 6., 3. / 6.]
        .iter()
        .chain(&[1. / 3.; 3])
        .map(|v: &f64| v.ln())
        .collect();
    close(&ly, &want, 1e-15);
    // along axis 0: column j is [x0j, x1j]: softmax = sigmoid of the difference
    let y0 = x.softmax::<Axis<0>>().to_vec();
    let s = |d: f64| 1.0 / (1.0 + (-d).exp());
    close(
        &y0,
        &[
            s(-5.),
            s(l2 - 5.),
            s(l3 - 5.),
            s(5.),
            s(5. - l2),
            s(5. - l3),
        ],
        1e-15,
    );
}

#[test]
fn softmax_of_huge_logits_is_finite_with_finite_gradients() {
    let v = vec![1e4, -1e4, 0., 1e4, -5e3, 1e4 - 2.0];
    let x64 = Tensor::<(U2, U3), f64>::from_vec(Default::default(), v.clone()).unwrap();
    let x32: Tensor<(U2, U3), f32> = x64.clone().to_dtype();
    let e2 = (-2f64).exp();
    let want = [1., 0., 0., 1. / (1. + e2), 0., e2 / (1. + e2)];
    let y = x64.clone().softmax::<Axis<1>>().to_vec();
    close(&y, &want, 1e-15);
    let y = x32.clone().softmax::<Axis<1>>().to_f64_vec();
    close(&y, &want, 1e-6);
    let ly = x32.clone().log_softmax::<Axis<1>>().to_f64_vec();
    assert!(ly.iter().all(|v| v.is_finite()), "{ly:?}");
    close(&ly[..3], &[0., -2e4, -1e4], 1e-6);
    // gradients: finite in f32 and f64
    let w: Tensor<(U2, U3), f32> = Tensor::randn(Default::default(), 1);
    for log in [false, true] {
        let t = x32.clone().traced();
        let y = if log {
            t.log_softmax::<Axis<1>>()
        } else {
            t.softmax::<Axis<1>>()
        };
        let g = (y * w.clone()).sum_all().backward();
        let g = g.get(&x32).unwrap().to_f64_vec();
        assert!(g.iter().all(|v| v.is_finite()), "log={log}: {g:?}");
        let t = x64.clone().traced();
        let y = if log {
            t.log_softmax::<Axis<1>>()
        } else {
            t.softmax::<Axis<1>>()
        };
        let g = weighted_sum(y, 2).backward();
        assert!(g.get(&x64).unwrap().to_vec().iter().all(|v| v.is_finite()));
    }
}

#[test]
fn softmax_gradients() {
    check_grad1(x2(3), |x| weighted_sum(x.softmax::<Axis<1>>(), 4));
    check_grad1(x2(5), |x| weighted_sum(x.softmax::<Axis<0>>(), 6));
    check_grad1(x2(7), |x| weighted_sum(x.log_softmax::<Axis<1>>(), 8));
    check_grad1(x2(9), |x| weighted_sum(x.log_softmax::<Axis<0>>(), 10));
    // non-contiguous (broadcast view), along the middle and last axes
    check_grad1(x2(11), |x| weighted_sum(bcast(x).softmax::<Axis<2>>(), 12));
    check_grad1(x2(13), |x| weighted_sum(bcast(x).softmax::<Axis<0>>(), 14));
    check_grad1(x2(15), |x| {
        weighted_sum(bcast(x).log_softmax::<Axis<1>>(), 16)
    });
    // used twice
    check_grad1(x2(17), |x| {
        weighted_sum(x.clone().softmax::<Axis<1>>() * x, 18)
    });
    check_grad1(x2(19), |x| {
        weighted_sum(
            x.clone().log_softmax::<Axis<0>>() * x.softmax::<Axis<1>>(),
            20,
        )
    });
}

#[test]
fn softmax_in_every_dtype() {
    let x: Tensor<(Rows, Mid, Hidden), f64> = Tensor::randn((Rows, Mid, Hidden), 21);
    check_dtypes!("softmax", |E| cast::<E, _>(&x)
        .softmax::<Axis<2>>()
        .to_f64_vec());
    check_dtypes!("softmax axis 1", |E| cast::<E, _>(&x)
        .softmax::<Axis<1>>()
        .to_f64_vec());
    check_dtypes!("log_softmax", |E| cast::<E, _>(&x)
        .log_softmax::<Axis<2>>()
        .to_f64_vec());
    let w: Tensor<(Rows, Mid, Hidden), f64> = Tensor::randn((Rows, Mid, Hidden), 22);
    fn grad<E: FloatDtype, const LOG: bool>(
        x: &Tensor<(Rows, Mid, Hidden), f64>,
        w: &Tensor<(Rows, Mid, Hidden), f64>,
    ) -> Vec<f64> {
        let x = cast::<E, _>(x);
        let t = x.clone().traced();
        let y = if LOG {
            t.log_softmax::<Axis<2>>()
        } else {
            t.softmax::<Axis<2>>()
        };
        let g = (y * cast::<E, _>(w)).sum_all().backward();
        g.get(&x).unwrap().to_f64_vec()
    }
    check_dtypes!("softmax backward", |E| grad::<E, false>(&x, &w));
    check_dtypes!("log_softmax backward", |E| grad::<E, true>(&x, &w));
}

// ---------------------------------------------------------------- norms

#[test]
fn layer_norm_values() {
    // [1, 2, 3, 4, 10]: mean 4, biased variance (9 + 4 + 1 + 0 + 36) / 5 = 10
    let x = Tensor::<(U1, Hidden), f64>::from_vec(Default::default(), vec![1., 2., 3., 4., 10.])
        .unwrap();
    let w = vec_of(vec![1., 2., -1., 0.5, 3.]);
    let b = vec_of(vec![0., 1., 0., -1., 0.5]);
    let eps = 1e-5;
    let r = 1.0 / (10.0f64 + eps).sqrt();
    let want: Vec<f64> = [1., 2., 3., 4., 10.]
        .iter()
        .zip(w.to_vec())
        .zip(b.to_vec())
        .map(|((x, w), b)| (x - 4.0) * r * w + b)
        .collect();
    close(&x.clone().layer_norm(&w, &b, eps).to_vec(), &want, 1e-14);
    let plain: Vec<f64> = [1., 2., 3., 4., 10.]
        .iter()
        .map(|x| (x - 4.0) * r)
        .collect();
    close(&x.layer_norm_no_affine(eps).to_vec(), &plain, 1e-14);
}

#[test]
fn rms_norm_values() {
    // mean(x^2) of [1, 2, 3, 4, 10] = 130 / 5 = 26
    let x = Tensor::<(U1, Hidden), f64>::from_vec(Default::default(), vec![1., 2., 3., 4., 10.])
        .unwrap();
    let w = vec_of(vec![1., 2., -1., 0.5, 3.]);
    let eps = 1e-6;
    let r = 1.0 / (26.0f64 + eps).sqrt();
    let xs = [1., 2., 3., 4., 10.];
    let want: Vec<f64> = xs.iter().zip(w.to_vec()).map(|(x, w)| x * r * w).collect();
    close(&x.clone().rms_norm(&w, eps).to_vec(), &want, 1e-14);
    let want: Vec<f64> = xs
        .iter()
        .zip(w.to_vec())
        .map(|(x, w)| x * r * (1.0 + w))
        .collect();
    close(&x.rms_norm_offset(&w, eps).to_vec(), &want, 1e-14);
}

#[test]
fn rms_norm_offset_rounds_once_in_low_precision() {
    // In bf16 the result is the f32 value of x * r * (1 + w) rounded once.
    let xs = [1.0f32, 2.0, 3.0, 4.0, 10.0];
    let ws = [0.1f32, -0.3, 0.7, 1.3, 0.01];
    let x: Tensor<(U1, Hidden), bf16> = Tensor::from_vec(
        Default::default(),
        xs.iter().map(|&v| bf16::from_f32(v)).collect(),
    )
    .unwrap();
    let w: Tensor<(Hidden,), bf16> =
        Tensor::from_vec((Hidden,), ws.iter().map(|&v| bf16::from_f32(v)).collect()).unwrap();
    let y = x.rms_norm_offset(&w, 1e-6).to_vec();
    let r = 1.0 / (26.0f32 + 1e-6).sqrt();
    for k in 0..5 {
        let wk = bf16::from_f32(ws[k]).to_f32();
        assert_eq!(y[k], bf16::from_f32(xs[k] * r * (1.0 + wk)), "k={k}");
    }
}

#[test]
fn layer_norm_gradients() {
    let b = vec_of(vec![0.1, -0.2, 0.3, 0.0, 0.5]);
    let w = vec_of(vec![1.5, -0.5, 2.0, 0.7, 1.0]);
    // input and weight (the weight untraced: its gradient flows by id)
    check_grad2(x2(23), w.clone(), |x, w| {
        weighted_sum(x.layer_norm(&w, &b, 1e-5), 24)
    });
    // input and bias
    check_grad2(x2(25), b.clone(), |x, b| {
        weighted_sum(x.layer_norm(&w, &b, 1e-5), 26)
    });
    // traced weight, untraced input: the output records through the weight
    check_grad2(w.clone(), x2(27), |w, x| {
        weighted_sum(x.layer_norm(&w, &b, 1e-5), 28)
    });
    // traced bias, untraced input and weight
    check_grad2(b.clone(), x2(29), |b, x| {
        weighted_sum(x.layer_norm(&w, &b, 1e-5), 30)
    });
    // non-contiguous input
    check_grad2(x2(31), w.clone(), |x, w| {
        weighted_sum(bcast(x).layer_norm(&w, &b, 1e-5), 32)
    });
    // used twice, and no affine
    check_grad1(x2(33), |x| {
        weighted_sum(x.clone().layer_norm(&w, &b, 1e-5) * x, 34)
    });
    check_grad1(x2(35), |x| {
        weighted_sum(bcast(x).layer_norm_no_affine(1e-5), 36)
    });
}

#[test]
fn rms_norm_gradients() {
    let w = vec_of(vec![1.5, -0.5, 2.0, 0.7, 1.0]);
    check_grad2(x2(37), w.clone(), |x, w| {
        weighted_sum(x.rms_norm(&w, 1e-6), 38)
    });
    check_grad2(x2(39), w.clone(), |x, w| {
        weighted_sum(x.rms_norm_offset(&w, 1e-6), 40)
    });
    check_grad2(w.clone(), x2(41), |w, x| {
        weighted_sum(x.rms_norm(&w, 1e-6), 42)
    });
    check_grad2(w.clone(), x2(43), |w, x| {
        weighted_sum(x.rms_norm_offset(&w, 1e-6), 44)
    });
    check_grad2(x2(45), w.clone(), |x, w| {
        weighted_sum(bcast(x).rms_norm(&w, 1e-6), 46)
    });
    check_grad2(x2(47), w.clone(), |x, w| {
        weighted_sum(bcast(x).rms_norm_offset(&w, 1e-6), 48)
    });
    check_grad1(x2(49), |x| {
        weighted_sum(
            x.clone().rms_norm(&w, 1e-6) * x.rms_norm_offset(&w, 1e-6),
            50,
        )
    });
    // the same weight used twice: gradients from both uses accumulate
    check_grad2(w.clone(), x2(51), |w, x| {
        weighted_sum(
            x.clone().rms_norm(&w, 1e-6) + x.rms_norm_offset(&w, 1e-6),
            52,
        )
    });
}

#[test]
fn traced_parameters_merge_tapes_and_get_the_same_gradients() {
    let x = x2(61);
    let w = vec_of(vec![1.5, -0.5, 2.0, 0.7, 1.0]);
    let b = vec_of(vec![0.1, -0.2, 0.3, 0.0, 0.5]);
    // parameters without tapes: gradients by id
    let g1 = weighted_sum(x.clone().traced().layer_norm(&w, &b, 1e-5), 62).backward();
    // every input traced: the output tape merges all three
    let (wt, bt) = (w.clone().traced(), b.clone().traced());
    let y: Tensor<(Rows, Hidden), f64, Cpu, Tape> = x.clone().traced().layer_norm(&wt, &bt, 1e-5);
    let g2 = weighted_sum(y, 62).backward();
    for id in [x.id(), w.id(), b.id()] {
        assert_eq!(g1.get_vec::<f64>(id), g2.get_vec::<f64>(id));
        assert!(g1.get_vec::<f64>(id).is_some());
    }
}

#[test]
fn norms_in_every_dtype() {
    let x: Tensor<(Rows, Mid, Hidden), f64> = Tensor::normal((Rows, Mid, Hidden), 0.5, 2.0, 53);
    let w: Tensor<(Hidden,), f64> = Tensor::normal((Hidden,), 1.0, 0.3, 54);
    let b: Tensor<(Hidden,), f64> = Tensor::randn((Hidden,), 55);
    check_dtypes!("layer_norm", |E| cast::<E, _>(&x)
        .layer_norm(&cast::<E, _>(&w), &cast::<E, _>(&b), 1e-5)
        .to_f64_vec());
    check_dtypes!("rms_norm", |E| cast::<E, _>(&x)
        .rms_norm(&cast::<E, _>(&w), 1e-6)
        .to_f64_vec());
    check_dtypes!("rms_norm_offset", |E| cast::<E, _>(&x)
        .rms_norm_offset(&cast::<E, _>(&w), 1e-6)
        .to_f64_vec());
    let gy: Tensor<(Rows, Mid, Hidden), f64> = Tensor::randn((Rows, Mid, Hidden), 56);
    // all three gradients, concatenated
    fn grads<E: FloatDtype>(
        x: &Tensor<(Rows, Mid, Hidden), f64>,
        w: &Tensor<(Hidden,), f64>,
        b: &Tensor<(Hidden,), f64>,
        gy: &Tensor<(Rows, Mid, Hidden), f64>,
        kind: u8,
    ) -> Vec<f64> {
        let (x, w, b) = (cast::<E, _>(x), cast::<E, _>(w), cast::<E, _>(b));
        let t = x.clone().traced();
        let y = match kind {
            0 => t.layer_norm(&w, &b, 1e-5),
            1 => t.rms_norm(&w, 1e-6),
            _ => t.rms_norm_offset(&w, 1e-6),
        };
        let g = (y * cast::<E, _>(gy)).sum_all().backward();
        let mut v = g.get(&x).unwrap().to_f64_vec();
        v.extend(g.get(&w).unwrap().to_f64_vec());
        if kind == 0 {
            v.extend(g.get(&b).unwrap().to_f64_vec());
        }
        v
    }
    check_dtypes!("layer_norm backward", |E| grads::<E>(&x, &w, &b, &gy, 0));
    check_dtypes!("rms_norm backward", |E| grads::<E>(&x, &w, &b, &gy, 1));
    check_dtypes!("rms_norm_offset backward", |E| grads::<E>(
        &x, &w, &b, &gy, 2
    ));
}

#[test]
fn norm_weight_dims_compare_by_value() {
    // `Embed` and `Hidden` are both 5: a weight declared over `Embed` fits.
    let x: Tensor<(Rows, Hidden), f32> = Tensor::randn((Rows, Hidden), 57);
    let w: Tensor<(Embed,), f32> = Tensor::ones((Embed,));
    let b: Tensor<(Dyn,), f32> = Tensor::zeros((Dyn(5),));
    let y = x.clone().layer_norm(&w, &b, 1e-5);
    let z = x.layer_norm_no_affine(1e-5);
    assert_eq!(y.to_vec(), z.to_vec());
}

// ---------------------------------------------------------------- run-time errors

fn dyn_x() -> Tensor<(Dyn, Dyn), f64> {
    Tensor::randn((Dyn(2), Dyn(5)), 58)
}

#[test]
fn layer_norm_weight_size_mismatch_is_an_error() {
    let w4: Tensor<(Dyn,), f64> = Tensor::ones((Dyn(4),));
    let b5: Tensor<(Dyn,), f64> = Tensor::zeros((Dyn(5),));
    let w5: Tensor<(Dyn,), f64> = Tensor::ones((Dyn(5),));
    let b6: Tensor<(Dyn,), f64> = Tensor::zeros((Dyn(6),));
    let e = dyn_x().try_layer_norm(&w4, &b5, 1e-5).unwrap_err();
    assert_eq!(
        e,
        Error::ShapeMismatch {
            op: "layer_norm",
            lhs: vec![2, 5],
            rhs: vec![4]
        }
    );
    assert_eq!(
        e.to_string(),
        "shape error in `layer_norm`: [2, 5] does not match [4]"
    );
    let e = dyn_x().try_layer_norm(&w5, &b6, 1e-5).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { ref rhs, .. } if rhs == &[6]));
    assert!(dyn_x().try_layer_norm(&w5, &b5, 1e-5).is_ok());
    // static input, dynamic weight
    let xs: Tensor<(Rows, Hidden), f64> = x2(59);
    assert!(xs.try_layer_norm(&w4, &b5, 1e-5).is_err());
}

#[test]
#[should_panic(expected = "shape error in `layer_norm`: [2, 5] does not match [4]")]
fn layer_norm_weight_size_mismatch_panics() {
    let w4: Tensor<(Dyn,), f64> = Tensor::ones((Dyn(4),));
    let b5: Tensor<(Dyn,), f64> = Tensor::zeros((Dyn(5),));
    let _ = dyn_x().layer_norm(&w4, &b5, 1e-5);
}

#[test]
fn rms_norm_weight_size_mismatch_is_an_error() {
    let w3: Tensor<(Dyn,), f64> = Tensor::ones((Dyn(3),));
    let e = dyn_x().try_rms_norm(&w3, 1e-6).unwrap_err();
    assert_eq!(
        e.to_string(),
        "shape error in `rms_norm`: [2, 5] does not match [3]"
    );
    let e = dyn_x().try_rms_norm_offset(&w3, 1e-6).unwrap_err();
    assert_eq!(
        e.to_string(),
        "shape error in `rms_norm_offset`: [2, 5] does not match [3]"
    );
}

#[test]
#[should_panic(expected = "shape error in `rms_norm`: [2, 5] does not match [3]")]
fn rms_norm_weight_size_mismatch_panics() {
    let w3: Tensor<(Dyn,), f64> = Tensor::ones((Dyn(3),));
    let _ = dyn_x().rms_norm(&w3, 1e-6);
}

#[test]
#[should_panic(expected = "shape error in `rms_norm_offset`")]
fn rms_norm_offset_weight_size_mismatch_panics() {
    let w3: Tensor<(Dyn,), f64> = Tensor::ones((Dyn(3),));
    let _ = dyn_x().rms_norm_offset(&w3, 1e-6);
}

// ---------------------------------------------------------------- generic code

/// Softmax and the norms compile in code generic over dims and dtype.
fn generic_block<M: Dim, N: Dim, E: FloatDtype>(
    x: Tensor<(M, N), E>,
    w: &Tensor<(N,), E>,
    b: &Tensor<(N,), E>,
) -> Tensor<(M, N), E> {
    let h = x.layer_norm(w, b, 1e-5).rms_norm(w, 1e-6);
    h.clone().softmax::<Axis<1>>() + h.log_softmax::<Axis<0>>()
}

#[test]
fn generic_code_compiles_and_runs_on_dyn_dims() {
    let x: Tensor<(Dyn, Dyn), f32> = Tensor::randn((Dyn(3), Dyn(6)), 60);
    let w: Tensor<(Dyn,), f32> = Tensor::ones((Dyn(6),));
    let b: Tensor<(Dyn,), f32> = Tensor::zeros((Dyn(6),));
    let y = generic_block(x, &w, &b);
    assert_eq!(y.dims(), [3, 6]);
    assert!(y.to_vec().iter().all(|v| v.is_finite()));
}
