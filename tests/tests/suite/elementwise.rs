//! Every unary op, op with a scalar, and binary op: forward against f64
//! reference functions, f64 finite-difference gradients (contiguous,
//! non-contiguous, broadcast operand, tensor used twice), all six dtypes,
//! and run-time shape errors for `Dyn` dims.

use zerfoo::prelude::*;
use zerfoo_tests::{cast, check_dtypes, check_grad1, check_grad2, rel_err, weighted_sum};

dim!(Rows = 3);
dim!(Cols = 4);

/// Where an op's inputs may lie (away from kinks and outside its domain edges).
#[derive(Clone, Copy)]
enum Domain {
    Any,
    Positive,
    AwayFromZero,
    /// Away from 0 and from ±1 (the clamp bounds used below).
    AwayFromKinks,
}

fn nudge(v: f64, d: Domain) -> f64 {
    match d {
        Domain::Any => v,
        Domain::Positive => 0.2 + v.abs(),
        Domain::AwayFromZero => v + 0.15 * v.signum(),
        Domain::AwayFromKinks => {
            let v = v + 0.15 * v.signum();
            if (v.abs() - 1.0).abs() < 0.1 {
                v + 0.2 * v.signum()
            } else {
                v
            }
        }
    }
}

fn input(d: Domain, seed: u64) -> Tensor<(Rows, Cols), f64> {
    let raw: Tensor<(Rows, Cols), f64> = Tensor::normal((Rows, Cols), 0.0, 1.2, seed);
    let v = raw.to_vec().into_iter().map(|x| nudge(x, d)).collect();
    Tensor::from_vec((Rows, Cols), v).unwrap()
}

fn input_t(d: Domain, seed: u64) -> Tensor<(Cols, Rows), f64> {
    let raw: Tensor<(Cols, Rows), f64> = Tensor::normal((Cols, Rows), 0.0, 1.2, seed);
    let v = raw.to_vec().into_iter().map(|x| nudge(x, d)).collect();
    Tensor::from_vec((Cols, Rows), v).unwrap()
}

macro_rules! unary_test {
    ($name:ident, $domain:expr, |$t:ident| $call:expr, |$v:ident| $reference:expr) => {
        #[test]
        fn $name() {
            let x = input($domain, 11);
            // forward against the reference function, elementwise
            let got = {
                let $t = x.clone();
                $call
            }
            .to_vec();
            let want: Vec<f64> = x.to_vec().iter().map(|&$v| $reference).collect();
            let e = rel_err(&got, &want);
            assert!(e <= 1e-14, "{} forward: rel err {e:e}", stringify!($name));
            // gradient, contiguous input
            check_grad1(x.clone(), |a| {
                let $t = a;
                weighted_sum($call, 1)
            });
            // gradient through a transposed (non-contiguous) view
            check_grad1(input_t($domain, 12), |a| {
                let $t = a.transpose::<0, 1>();
                weighted_sum($call, 2)
            });
            // the input used twice: f(x) * x
            check_grad1(x.clone(), |a| {
                let $t = a.clone();
                weighted_sum($call * a, 3)
            });
            // every dtype against f64 on the same rounded inputs
            check_dtypes!(stringify!($name), |E| {
                let $t = cast::<E, _>(&x);
                $call.to_f64_vec()
            });
        }
    };
}

fn erf(x: f64) -> f64 {
    // Abramowitz–Stegun 7.1.26 is too coarse; integrate numerically instead
    // (independent of libm): erf(x) = 2/sqrt(pi) * ∫0^x e^{-t²} dt, Simpson.
    let n = 2000;
    let h = x / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(0.0) + f(x);
    for i in 1..n {
        s += if i % 2 == 1 { 4.0 } else { 2.0 } * f(i as f64 * h);
    }
    s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

fn sig(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

unary_test!(neg, Domain::Any, |t| t.neg(), |v| -v);
unary_test!(abs, Domain::AwayFromZero, |t| t.abs(), |v| v.abs());
unary_test!(exp, Domain::Any, |t| t.exp(), |v| v.exp());
unary_test!(log, Domain::Positive, |t| t.log(), |v| v.ln());
unary_test!(sqrt, Domain::Positive, |t| t.sqrt(), |v| v.sqrt());
unary_test!(rsqrt, Domain::Positive, |t| t.rsqrt(), |v| 1.0 / v.sqrt());
unary_test!(sin, Domain::Any, |t| t.sin(), |v| v.sin());
unary_test!(cos, Domain::Any, |t| t.cos(), |v| v.cos());
unary_test!(tanh, Domain::Any, |t| t.tanh(), |v| v.tanh());
unary_test!(sigmoid, Domain::Any, |t| t.sigmoid(), |v| sig(v));
unary_test!(relu, Domain::AwayFromZero, |t| t.relu(), |v| v.max(0.0));
unary_test!(silu, Domain::Any, |t| t.silu(), |v| v * sig(v));
unary_test!(square, Domain::Any, |t| t.square(), |v| v * v);
unary_test!(powf, Domain::Positive, |t| t.powf(2.7), |v| v.powf(2.7));
unary_test!(clamp, Domain::AwayFromKinks, |t| t.clamp(-1.0, 1.0), |v| v
    .clamp(-1.0, 1.0));
unary_test!(add_scalar, Domain::Any, |t| t.add_scalar(1.5), |v| v + 1.5);
unary_test!(sub_scalar, Domain::Any, |t| t.sub_scalar(1.5), |v| v - 1.5);
unary_test!(mul_scalar, Domain::Any, |t| t.mul_scalar(-2.5), |v| v
    * -2.5);
unary_test!(div_scalar, Domain::Any, |t| t.div_scalar(4.0), |v| v / 4.0);
unary_test!(
    scalar_div,
    Domain::AwayFromZero,
    |t| t.scalar_div(2.0),
    |v| 2.0 / v
);
unary_test!(scalar_pow, Domain::Any, |t| t.scalar_pow(1.7), |v| 1.7f64
    .powf(v));
unary_test!(
    maximum_scalar,
    Domain::AwayFromZero,
    |t| t.maximum_scalar(0.0),
    |v| v.max(0.0)
);
unary_test!(
    minimum_scalar,
    Domain::AwayFromZero,
    |t| t.minimum_scalar(0.0),
    |v| v.min(0.0)
);
unary_test!(
    std_ops_scalar,
    Domain::Any,
    |t| ((t + 1.0) * 2.0 - 0.5) / 3.0,
    |v| ((v + 1.0) * 2.0 - 0.5) / 3.0
);

#[test]
fn gelu_forms() {
    // the erf form against an independently integrated erf, tolerance of
    // Simpson's rule; the tanh form against its closed formula
    let x = input(Domain::Any, 21);
    let got = x.clone().gelu().to_vec();
    let want: Vec<f64> = x
        .to_vec()
        .iter()
        .map(|&v| 0.5 * v * (1.0 + erf(v / 2f64.sqrt())))
        .collect();
    assert!(rel_err(&got, &want) < 1e-10);
    let got = x.clone().gelu_tanh().to_vec();
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let want: Vec<f64> = x
        .to_vec()
        .iter()
        .map(|&v| 0.5 * v * (1.0 + (k * (v + 0.044715 * v * v * v)).tanh()))
        .collect();
    assert!(rel_err(&got, &want) < 1e-14);
    for f in [
        |t: Tensor<(Rows, Cols), f64, Cpu, Tape>| t.gelu(),
        |t: Tensor<(Rows, Cols), f64, Cpu, Tape>| t.gelu_tanh(),
    ] {
        check_grad1(x.clone(), |a| weighted_sum(f(a), 4));
        check_grad1(input_t(Domain::Any, 22), |a| {
            weighted_sum(f(a.transpose::<0, 1>()), 5)
        });
    }
    check_dtypes!("gelu", |E| cast::<E, _>(&x).gelu().to_f64_vec());
    check_dtypes!("gelu_tanh", |E| cast::<E, _>(&x).gelu_tanh().to_f64_vec());
}

macro_rules! binary_test {
    ($name:ident, $da:expr, $db:expr, |$a:ident, $b:ident| $call:expr, |$x:ident, $y:ident| $reference:expr) => {
        #[test]
        fn $name() {
            let x = input($da, 31);
            let mut y = input($db, 32);
            if stringify!($name).starts_with("m") {
                // maximum/minimum: keep the operands apart so no tie sits
                // inside the finite-difference step
                let v = x
                    .to_vec()
                    .iter()
                    .zip(y.to_vec())
                    .map(|(a, b)| if (a - b).abs() < 0.1 { b + 0.3 } else { b })
                    .collect();
                y = Tensor::from_vec((Rows, Cols), v).unwrap();
            }
            let got = {
                let ($a, $b) = (x.clone(), y.clone());
                $call
            }
            .to_vec();
            let want: Vec<f64> = x
                .to_vec()
                .iter()
                .zip(y.to_vec())
                .map(|(&$x, $y)| $reference)
                .collect();
            assert!(
                rel_err(&got, &want) <= 1e-14,
                "{} forward",
                stringify!($name)
            );
            // both gradients, contiguous
            check_grad2(x.clone(), y.clone(), |$a, $b| weighted_sum($call, 1));
            // lhs through a transposed view, rhs contiguous
            let xt = Tensor::<(Cols, Rows), f64>::from_vec((Cols, Rows), {
                let v = x.to_vec();
                (0..12).map(|i| v[(i % 3) * 4 + i / 3]).collect()
            })
            .unwrap();
            check_grad2(xt, y.clone(), |a, $b| {
                let $a = a.transpose::<0, 1>();
                weighted_sum($call, 2)
            });
            // rhs broadcast from a row vector: its gradient sums over rows
            let row: Tensor<(Cols,), f64> =
                Tensor::from_vec((Cols,), y.to_vec()[..4].to_vec()).unwrap();
            check_grad2(x.clone(), row, |$a, r| {
                let $b = r.retaped::<Tape>().broadcast::<_, Axis<0>>((Rows, Cols));
                weighted_sum($call, 3)
            });
            // every dtype
            check_dtypes!(stringify!($name), |E| {
                let ($a, $b) = (cast::<E, _>(&x), cast::<E, _>(&y));
                $call.to_f64_vec()
            });
        }
    };
}

binary_test!(add, Domain::Any, Domain::Any, |a, b| a.add(b), |x, y| x + y);
binary_test!(sub, Domain::Any, Domain::Any, |a, b| a.sub(b), |x, y| x - y);
binary_test!(mul, Domain::Any, Domain::Any, |a, b| a.mul(b), |x, y| x * y);
binary_test!(
    div,
    Domain::Any,
    Domain::AwayFromZero,
    |a, b| a.div(b),
    |x, y| x / y
);
binary_test!(
    maximum,
    Domain::Any,
    Domain::Any,
    |a, b| a.maximum(b),
    |x, y| x.max(y)
);
binary_test!(
    minimum,
    Domain::Any,
    Domain::Any,
    |a, b| a.minimum(b),
    |x, y| x.min(y)
);
binary_test!(
    pow,
    Domain::Positive,
    Domain::Any,
    |a, b| a.pow(b),
    |x, y| x.powf(y)
);
binary_test!(
    std_ops,
    Domain::Any,
    Domain::AwayFromZero,
    |a, b| (a.clone() + b.clone()) * a / b.clone() - b,
    |x, y| (x + y) * x / y - y
);

#[test]
fn binary_with_itself() {
    // x used as both operands: gradients of both uses add up
    let x = input(Domain::Positive, 41);
    check_grad1(x.clone(), |a| weighted_sum(a.clone().mul(a.clone()), 1));
    check_grad1(x.clone(), |a| {
        weighted_sum(a.clone().div(a.clone().exp()), 2)
    });
    check_grad1(x.clone(), |a| weighted_sum(a.clone().pow(a.clone()), 3));
    // max(a, a) = a: each side gets half the gradient
    check_grad1(x, |a| weighted_sum(a.clone().maximum(a), 4));
}

#[test]
fn ties_split_the_gradient_like_pytorch() {
    let a: Tensor<(U2,), f64> = Tensor::from_vec(Default::default(), vec![1.0, 2.0]).unwrap();
    let b: Tensor<(U2,), f64> = Tensor::from_vec(Default::default(), vec![1.0, 3.0]).unwrap();
    let g = a.clone().traced().maximum(b.clone()).sum_all().backward();
    assert_eq!(g.get(&a).unwrap().to_vec(), [0.5, 0.0]);
    assert_eq!(g.get(&b).unwrap().to_vec(), [0.5, 1.0]);
}

#[test]
fn dynamic_dims_are_checked_at_run_time() {
    let a: Tensor<(Dyn, Cols), f32> = Tensor::zeros((Dyn(2), Cols));
    let b: Tensor<(Dyn, Cols), f32> = Tensor::zeros((Dyn(3), Cols));
    let e = a.clone().try_add(b.clone()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "shape error in `add`: [2, 4] does not match [3, 4]"
    );
    for r in [
        a.clone().try_sub(b.clone()),
        a.clone().try_mul(b.clone()),
        a.clone().try_div(b.clone()),
        a.clone().try_maximum(b.clone()),
        a.clone().try_minimum(b.clone()),
        a.clone().try_pow(b.clone()),
    ] {
        assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
    }
    // a static dim against a dynamic one of another size
    let s: Tensor<(Rows, Cols), f32> = Tensor::zeros((Rows, Cols));
    assert!(s.try_add(a).is_err());
}

#[test]
#[should_panic(expected = "shape error in `mul`: [2, 4] does not match [3, 4]")]
fn panicking_twin_has_the_same_message() {
    let a: Tensor<(Dyn, Cols), f32> = Tensor::zeros((Dyn(2), Cols));
    let b: Tensor<(Dyn, Cols), f32> = Tensor::zeros((Dyn(3), Cols));
    let _ = a * b;
}
