//! Shared helpers for the integration tests: finite-difference gradient
//! checks in f64, error measures, and fixture loading.

use std::path::PathBuf;

use zerfoo::prelude::*;

/// Relative error `max|got - want| / max|want|` (the fixtures' measure).
pub fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length differs");
    let num = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let den = want.iter().map(|b| b.abs()).fold(0.0, f64::max);
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

/// Central-difference gradient of `f` at `x` (step `h`), one element at a time.
pub fn numeric_grad(x: &[f64], h: f64, mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut xs = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xs[i];
            xs[i] = orig + h;
            let fp = f(&xs);
            xs[i] = orig - h;
            let fm = f(&xs);
            xs[i] = orig;
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

/// Checks the gradient of a scalar function of one f64 tensor against
/// central differences. `f` builds the loss from a traced input.
///
/// Tolerance: relative error ≤ 1e-6 (f64 with step 1e-6 gives ~1e-9 on
/// smooth functions; the margin covers kinks that inputs avoid).
#[track_caller]
pub fn check_grad1<S: Shape>(x: Tensor<S, f64>, f: impl Fn(Tensor<S, f64, Cpu, Tape>) -> Tensor<(), f64, Cpu, Tape>) {
    let shape = x.shape();
    let grads = f(x.clone().traced()).backward();
    let analytic = grads.get(&x).expect("input got no gradient").to_f64_vec();
    let numeric = numeric_grad(&x.to_f64_vec(), 1e-6, |v| {
        let t = Tensor::from_vec(shape, v.to_vec()).unwrap();
        f(t.traced()).item()
    });
    let e = rel_err(&analytic, &numeric);
    assert!(e <= 1e-6, "gradient mismatch: rel err {e:e}\nanalytic {analytic:?}\nnumeric  {numeric:?}");
}

/// Like [`check_grad1`] for a function of two tensors; checks both gradients.
#[track_caller]
pub fn check_grad2<S1: Shape, S2: Shape>(
    a: Tensor<S1, f64>,
    b: Tensor<S2, f64>,
    f: impl Fn(Tensor<S1, f64, Cpu, Tape>, Tensor<S2, f64>) -> Tensor<(), f64, Cpu, Tape>,
) {
    let (sa, sb) = (a.shape(), b.shape());
    let grads = f(a.clone().traced(), b.clone()).backward();
    let ga = grads.get(&a).expect("lhs got no gradient").to_f64_vec();
    let gb = grads.get(&b).expect("rhs got no gradient").to_f64_vec();
    let bv = b.to_f64_vec();
    let na = numeric_grad(&a.to_f64_vec(), 1e-6, |v| {
        let ta = Tensor::from_vec(sa, v.to_vec()).unwrap();
        let tb = Tensor::from_vec(sb, bv.clone()).unwrap();
        f(ta.traced(), tb).item()
    });
    let av = a.to_f64_vec();
    let nb = numeric_grad(&bv, 1e-6, |v| {
        let ta = Tensor::from_vec(sa, av.clone()).unwrap();
        let tb = Tensor::from_vec(sb, v.to_vec()).unwrap();
        f(ta.traced(), tb).item()
    });
    let (ea, eb) = (rel_err(&ga, &na), rel_err(&gb, &nb));
    assert!(ea <= 1e-6, "lhs gradient mismatch: rel err {ea:e}\nanalytic {ga:?}\nnumeric  {na:?}");
    assert!(eb <= 1e-6, "rhs gradient mismatch: rel err {eb:e}\nanalytic {gb:?}\nnumeric  {nb:?}");
}

/// `sum(y * w)` with fixed pseudo-random weights `w`: a scalar whose gradient
/// with respect to `y` is `w`, so every element of `y` is checked.
pub fn weighted_sum<S: Shape>(y: Tensor<S, f64, Cpu, Tape>, seed: u64) -> Tensor<(), f64, Cpu, Tape> {
    let w: Tensor<S, f64> = Tensor::randn(y.shape(), seed);
    let p = y.mul(w);
    p.sum_all()
}

/// The fixtures folder (`../shared/fixtures` beside the repository).
pub fn fixtures_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    root.join("../../shared/fixtures")
}
