//! Reductions: sum, mean, max, min, var, logsumexp, argmax, argmin.
//!
//! Gradients against f64 central differences (contiguous, broadcast-view and
//! used-twice inputs), every dtype against the f64 reference on rounded
//! inputs, forward values against closed forms.

use zerfoo::prelude::*;
use zerfoo_tests::{cast, check_dtypes, check_grad1, weighted_sum};

dim!(Rows = 3);
dim!(Mid = 4);
dim!(Cols = 5);

fn close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "lengths differ: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{got:?} vs {want:?}"
        );
    }
}

fn vec2(data: Vec<f64>) -> Tensor<(U2, U3), f64> {
    Tensor::from_vec(Default::default(), data).unwrap()
}

/// `(Rows, Cols)` random input.
fn x2(seed: u64) -> Tensor<(Rows, Cols), f64> {
    Tensor::randn((Rows, Cols), seed)
}

/// A non-contiguous input: `(Rows, Cols)` data viewed as `(Rows, Mid, Cols)`
/// through a stride-0 broadcast along the middle axis.
fn bcast(x: Tensor<(Rows, Cols), f64, Cpu, Tape>) -> Tensor<(Rows, Mid, Cols), f64, Cpu, Tape> {
    x.broadcast::<_, Axis<1>>((Rows, Mid, Cols))
}

// ---------------------------------------------------------------- forward values

#[test]
fn sum_and_mean_values() {
    let x = vec2(vec![1., 2., 3., 4., 5., 6.]);
    assert_eq!(x.clone().sum::<Axis<0>>().to_vec(), [5., 7., 9.]);
    assert_eq!(x.clone().sum::<Axis<1>>().to_vec(), [6., 15.]);
    assert_eq!(x.clone().mean::<Axis<1>>().to_vec(), [2., 5.]);
    assert_eq!(x.clone().sum::<Axes2<0, 1>>().item(), 21.);
    assert_eq!(x.clone().sum_all().item(), 21.);
    assert_eq!(x.mean_all().item(), 3.5);
}

#[test]
fn max_min_values_and_tie_split_gradient() {
    let x = vec2(vec![1., 3., 3., -2., -7., -7.]);
    assert_eq!(x.clone().max::<Axis<1>>().to_vec(), [3., -2.]);
    assert_eq!(x.clone().min::<Axis<1>>().to_vec(), [1., -7.]);
    assert_eq!(x.clone().max::<Axis<0>>().to_vec(), [1., 3., 3.]);
    assert_eq!(x.clone().max_all().item(), 3.);
    assert_eq!(x.clone().min_all().item(), -7.);
    // ties share the gradient evenly (PyTorch amax/amin)
    let g = x.clone().traced().max::<Axis<1>>().sum_all().backward();
    assert_eq!(g.get(&x).unwrap().to_vec(), [0., 0.5, 0.5, 1., 0., 0.]);
    let g = x.clone().traced().min::<Axis<1>>().sum_all().backward();
    assert_eq!(g.get(&x).unwrap().to_vec(), [1., 0., 0., 0., 0.5, 0.5]);
    let g = x.clone().traced().max_all().backward();
    assert_eq!(g.get(&x).unwrap().to_vec(), [0., 0.5, 0.5, 0., 0., 0.]);
    // NaN propagates
    let n = vec2(vec![1., f64::NAN, 3., 0., 0., 0.]);
    let m = n.max::<Axis<1>>().to_vec();
    assert!(m[0].is_nan() && m[1] == 0.);
}

#[test]
fn var_values() {
    // [1, 2, 3, 4]: mean 2.5, squared deviations sum to 5
    let x = Tensor::<(U4,), f64>::from_vec(Default::default(), vec![1., 2., 3., 4.]).unwrap();
    assert_eq!(x.clone().var::<Axis<0>>(0).item(), 1.25);
    close(&[x.clone().var::<Axis<0>>(1).item()], &[5.0 / 3.0], 1e-15);
    close(&[x.clone().var::<Axis<0>>(2).item()], &[2.5], 1e-15);
    // a constant row has variance 0; a shifted copy has the same variance
    let y = vec2(vec![5., 5., 5., 1e8 + 1., 1e8 + 2., 1e8 + 3.]);
    close(&y.var::<Axis<1>>(1).to_f64_vec(), &[0., 1.], 1e-9);
    // one element with correction 1 is NaN, as in PyTorch
    let one = Tensor::<(U1,), f64>::from_vec(Default::default(), vec![3.]).unwrap();
    assert!(one.var::<Axis<0>>(1).item().is_nan());
    // over two axes: all of [1..6]
    let z = vec2(vec![1., 2., 3., 4., 5., 6.]);
    close(&[z.var::<Axes2<0, 1>>(1).item()], &[3.5], 1e-15);
}

#[test]
fn logsumexp_values_and_large_inputs() {
    let l2 = 2f64.ln();
    let l3 = 3f64.ln();
    let x = vec2(vec![0., l2, l3, 1e4, 1e4, -1e4]);
    let y = x.logsumexp::<Axis<1>>().to_vec();
    close(&y, &[6f64.ln(), 1e4 + l2], 1e-14);
    // in f32 too, 1e4 does not overflow
    let x32 = Tensor::<(U3,), f32>::from_vec(Default::default(), vec![1e4, 1e4, -1e4]).unwrap();
    let g = x32.clone().traced().logsumexp::<Axis<0>>().backward();
    let gx = g.get(&x32).unwrap().to_vec();
    assert!((x32.logsumexp::<Axis<0>>().item() - (1e4 + 2f32.ln())).abs() < 1e-2);
    // lse = 1e4 + ln 2 is rounded to f32 (ulp 2^-10), so the halves are approximate
    assert!((gx[0] - 0.5).abs() < 1e-3 && (gx[1] - 0.5).abs() < 1e-3 && gx[2] == 0.0);
    // -inf entries contribute nothing
    let x = Tensor::<(U3,), f64>::from_vec(Default::default(), vec![f64::NEG_INFINITY, 0., 0.])
        .unwrap();
    close(&[x.logsumexp::<Axis<0>>().item()], &[l2], 1e-15);
}

#[test]
fn argmax_argmin_first_index_on_ties_and_nan_wins() {
    let x = vec2(vec![1., 5., 5., 4., -2., -2.]);
    assert_eq!(x.argmax::<Axis<1>>().to_vec(), [1, 0]);
    assert_eq!(x.argmin::<Axis<1>>().to_vec(), [0, 1]);
    assert_eq!(x.argmax::<Axis<0>>().to_vec(), [1, 0, 0]);
    assert_eq!(x.argmin::<Axis<0>>().to_vec(), [0, 1, 1]);
    // several axes: the row-major position within the reduced block
    assert_eq!(x.argmax::<Axes2<0, 1>>().item(), 1);
    assert_eq!(x.argmin::<Axes2<0, 1>>().item(), 4);
    let n = vec2(vec![1., f64::NAN, 3., f64::NAN, 0., f64::NAN]);
    assert_eq!(n.argmax::<Axis<1>>().to_vec(), [1, 0]);
    assert_eq!(n.argmin::<Axis<1>>().to_vec(), [1, 0]);
    // a traced tensor can be queried; the result carries no tape
    let t = x.traced();
    let i: Tensor<(U2,), i64> = t.argmax::<Axis<1>>();
    assert_eq!(i.to_vec(), [1, 0]);
}

// ---------------------------------------------------------------- gradients

#[test]
fn sum_mean_gradients() {
    check_grad1(x2(1), |x| weighted_sum(x.sum::<Axis<0>>(), 2));
    check_grad1(x2(3), |x| weighted_sum(x.mean::<Axis<1>>(), 4));
    check_grad1(x2(5), |x| x.mean_all().mul_scalar(3.0));
    check_grad1(x2(6), |x| weighted_sum(bcast(x).sum::<Axes2<0, 2>>(), 7));
    check_grad1(x2(8), |x| {
        weighted_sum(x.clone().sum::<Axis<1>>() * x.mean::<Axis<1>>(), 9)
    });
}

#[test]
fn max_min_gradients() {
    check_grad1(x2(10), |x| weighted_sum(x.max::<Axis<1>>(), 11));
    check_grad1(x2(12), |x| weighted_sum(x.min::<Axis<0>>(), 13));
    check_grad1(x2(14), |x| x.max_all().mul_scalar(2.0));
    check_grad1(x2(15), |x| x.min_all().mul_scalar(-3.0));
    // non-contiguous (broadcast view): reducing the last axis sees no ties
    check_grad1(x2(16), |x| weighted_sum(bcast(x).max::<Axis<2>>(), 17));
    check_grad1(x2(18), |x| weighted_sum(bcast(x).min::<Axis<0>>(), 19));
    // used twice
    check_grad1(x2(20), |x| {
        weighted_sum(x.clone().max::<Axis<1>>() * x.min::<Axis<1>>(), 21)
    });
}

#[test]
fn var_gradients() {
    check_grad1(x2(22), |x| weighted_sum(x.var::<Axis<1>>(1), 23));
    check_grad1(x2(24), |x| weighted_sum(x.var::<Axis<0>>(0), 25));
    check_grad1(x2(26), |x| weighted_sum(bcast(x).var::<Axes2<0, 2>>(1), 27));
    check_grad1(x2(28), |x| {
        weighted_sum(bcast(x).var::<Axis<1>>(0).exp(), 29)
    });
    check_grad1(x2(30), |x| {
        weighted_sum(x.clone().var::<Axis<1>>(1) * x.mean::<Axis<1>>(), 31)
    });
}

#[test]
fn logsumexp_gradients() {
    check_grad1(x2(32), |x| weighted_sum(x.logsumexp::<Axis<1>>(), 33));
    check_grad1(x2(34), |x| weighted_sum(x.logsumexp::<Axis<0>>(), 35));
    check_grad1(x2(36), |x| {
        weighted_sum(bcast(x).logsumexp::<Axes2<1, 2>>(), 37)
    });
    check_grad1(x2(38), |x| {
        weighted_sum(x.clone().logsumexp::<Axis<1>>() * x.max::<Axis<1>>(), 39)
    });
    // large logits: finite, and the gradient is the softmax (closed form;
    // central differences lose digits at 1e4)
    let x = Tensor::<(U2, U3), f64>::from_vec(
        Default::default(),
        vec![1e4, -1e4, 1e4 - 1.0, -3e4, -3e4 + 2.0, -3e4],
    )
    .unwrap();
    let g = x
        .clone()
        .traced()
        .logsumexp::<Axis<1>>()
        .sum_all()
        .backward();
    let (e1, e2) = ((-1f64).exp(), (-2f64).exp());
    let want = [
        1.0 / (1.0 + e1),
        0.0,
        e1 / (1.0 + e1),
        e2 / (1.0 + 2.0 * e2),
        1.0 / (1.0 + 2.0 * e2),
        e2 / (1.0 + 2.0 * e2),
    ];
    close(&g.get(&x).unwrap().to_vec(), &want, 1e-12);
}

// ---------------------------------------------------------------- dtypes

#[test]
fn reductions_in_every_dtype() {
    let x: Tensor<(Rows, Mid, Cols), f64> = Tensor::randn((Rows, Mid, Cols), 41);
    check_dtypes!("sum", |E| cast::<E, _>(&x).sum::<Axis<2>>().to_f64_vec());
    check_dtypes!("mean", |E| cast::<E, _>(&x)
        .mean::<Axes2<0, 2>>()
        .to_f64_vec());
    check_dtypes!("sum_all", |E| cast::<E, _>(&x).sum_all().to_f64_vec());
    check_dtypes!("max", |E| cast::<E, _>(&x).max::<Axis<1>>().to_f64_vec());
    check_dtypes!("min", |E| cast::<E, _>(&x)
        .min::<Axes2<0, 1>>()
        .to_f64_vec());
    check_dtypes!("max_all", |E| cast::<E, _>(&x).max_all().to_f64_vec());
    check_dtypes!("var", |E| cast::<E, _>(&x).var::<Axis<2>>(1).to_f64_vec());
    check_dtypes!("var biased", |E| cast::<E, _>(&x)
        .var::<Axes2<0, 2>>(0)
        .to_f64_vec());
    check_dtypes!("logsumexp", |E| cast::<E, _>(&x)
        .logsumexp::<Axis<2>>()
        .to_f64_vec());
}

#[test]
fn reduction_gradients_in_every_dtype() {
    let x: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 42);
    fn grad_of<E: FloatDtype>(
        x: &Tensor<(Rows, Cols), f64>,
        f: impl Fn(Tensor<(Rows, Cols), E, Cpu, Tape>) -> Tensor<(), E, Cpu, Tape>,
    ) -> Vec<f64> {
        let x = cast::<E, _>(x);
        f(x.clone().traced())
            .backward()
            .get(&x)
            .unwrap()
            .to_f64_vec()
    }
    check_dtypes!("max backward", |E| grad_of::<E>(&x, |x| x
        .max::<Axis<1>>()
        .sum_all()));
    check_dtypes!("var backward", |E| grad_of::<E>(&x, |x| x
        .var::<Axis<1>>(1)
        .sum_all()));
    check_dtypes!("logsumexp backward", |E| grad_of::<E>(&x, |x| x
        .logsumexp::<Axis<0>>()
        .sum_all()));
}

/// argmax/argmin in `E` equal the f64 result on the same rounded inputs, exactly.
fn arg_exact<E: FloatDtype>(x: &Tensor<(Rows, Mid, Cols), f64>) {
    let xe = x.clone().to_dtype::<E>();
    let xr = xe.clone().to_dtype::<f64>();
    assert_eq!(
        xe.argmax::<Axis<2>>().to_vec(),
        xr.argmax::<Axis<2>>().to_vec(),
        "{:?}",
        E::DTYPE
    );
    assert_eq!(
        xe.argmin::<Axes2<0, 1>>().to_vec(),
        xr.argmin::<Axes2<0, 1>>().to_vec(),
        "{:?}",
        E::DTYPE
    );
}

#[test]
fn argmax_argmin_in_every_dtype_exactly() {
    // small integers give ties after rounding in the 8-bit types
    let x: Tensor<(Rows, Mid, Cols), f64> = Tensor::randn((Rows, Mid, Cols), 43);
    let q = Tensor::<(Rows, Mid, Cols), f64>::from_fn((Rows, Mid, Cols), |i| ((i * 7) % 5) as f64);
    for x in [&x, &q] {
        arg_exact::<f64>(x);
        arg_exact::<f32>(x);
        arg_exact::<f16>(x);
        arg_exact::<bf16>(x);
        arg_exact::<F8E4M3>(x);
        arg_exact::<F8E5M2>(x);
    }
    // on the quantized input the closed form is known: first index of the max
    let am = q.argmax::<Axis<2>>().to_vec();
    for (r, &a) in am.iter().enumerate() {
        let row: Vec<usize> = (0..5).map(|c| ((r * 5 + c) * 7) % 5).collect();
        let m = *row.iter().max().unwrap();
        assert_eq!(a as usize, row.iter().position(|&v| v == m).unwrap());
    }
}

// ---------------------------------------------------------------- generic code

/// What [`generic_reductions`] returns: row stats, column stats, row argmax.
type Outs<M, N, E> = (Tensor<(M,), E>, Tensor<(N,), E>, Tensor<(M,), i64>);

/// Reductions compile in code generic over dims and dtype.
fn generic_reductions<M: Dim, N: Dim, E: FloatDtype>(x: Tensor<(M, N), E>) -> Outs<M, N, E> {
    let i = x.argmax::<Axis<1>>();
    let a = x.clone().max::<Axis<1>>() + x.clone().logsumexp::<Axis<1>>();
    let b = x.clone().var::<Axis<0>>(1) + x.min::<Axis<0>>();
    (a, b, i)
}

#[test]
fn reductions_on_dynamic_dims_and_generic_code() {
    let x: Tensor<(Dyn, Dyn), f32> = Tensor::randn((Dyn(4), Dyn(7)), 44);
    let (a, b, i) = generic_reductions(x);
    assert_eq!(a.dims(), [4]);
    assert_eq!(b.dims(), [7]);
    assert_eq!(i.dims(), [4]);
}
