//! Layer modules: activations, `Dropout`, `FeedForward` and the gated
//! feed-forward blocks (`SwiGlu`, `GeGlu`). Forward values against hand
//! computations, f64 finite-difference gradients for the input and every
//! parameter, dropout reproducibility and eval mode.

use zerfoo::autograd::TapeState;
use zerfoo::nn::{
    Activation, Dropout, FeedForward, Forward, GatedFeedForward, GeGlu, Gelu, GeluTanh, Linear,
    Module, ParamVisitor, ParamVisitorMut, Relu, Sigmoid, Silu, SwiGlu, Tanh,
};
use zerfoo::prelude::*;
use zerfoo_tests::{cast, check_dtypes, check_grad1, numeric_grad, rel_err, weighted_sum};

dim!(Model = 2);
dim!(Hidden = 3);

fn t<S: Shape, E: Dtype>(shape: S, v: Vec<E>) -> Tensor<S, E> {
    Tensor::from_vec(shape, v).unwrap()
}

fn close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (a, b) in got.iter().zip(want) {
        assert!((a - b).abs() <= tol, "got {got:?}\nwant {want:?}");
    }
}

/// Every parameter's gradient in traversal order (zeros where none).
fn param_grads<M: Module>(m: &M, g: &Gradients) -> Vec<f64> {
    struct C<'a>(&'a Gradients, Vec<f64>);
    impl ParamVisitor for C<'_> {
        fn visit<S: Shape, E: FloatDtype, D: Backend>(&mut self, path: &str, p: &Tensor<S, E, D>) {
            let v = self
                .0
                .get(p)
                .unwrap_or_else(|| panic!("`{path}` got no gradient"));
            self.1.extend(v.to_f64_vec());
        }
    }
    let mut c = C(g, vec![]);
    m.visit_params("", &mut c);
    c.1
}

/// Every parameter's values in traversal order.
fn param_values<M: Module>(m: &M) -> Vec<f64> {
    struct C(Vec<f64>);
    impl ParamVisitor for C {
        fn visit<S: Shape, E: FloatDtype, D: Backend>(&mut self, _: &str, p: &Tensor<S, E, D>) {
            self.0.extend(p.to_f64_vec());
        }
    }
    let mut c = C(vec![]);
    m.visit_params("", &mut c);
    c.0
}

/// Overwrites every parameter (in traversal order) from `values`.
fn set_params<M: Module>(m: &mut M, values: &[f64]) {
    struct S<'a>(&'a [f64], usize);
    impl ParamVisitorMut for S<'_> {
        fn visit<Sh: Shape, E: FloatDtype, D: Backend>(
            &mut self,
            _: &str,
            p: &mut Tensor<Sh, E, D>,
        ) {
            let n = p.numel();
            let v = self.0[self.1..self.1 + n].iter().map(|&v| E::from_f64(v));
            p.assign(v.collect()).unwrap();
            self.1 += n;
        }
    }
    m.visit_params_mut("", &mut S(values, 0));
}

/// Checks the gradient of `loss(model)` with respect to every parameter
/// against central differences (f64).
#[track_caller]
fn check_param_grads<M: Module>(model: &mut M, loss: impl Fn(&M) -> Tensor<(), f64, Cpu, Tape>) {
    let analytic = param_grads(model, &loss(model).backward());
    let p0 = param_values(model);
    let numeric = numeric_grad(&p0, 1e-6, |v| {
        set_params(model, v);
        loss(model).item()
    });
    set_params(model, &p0);
    let e = rel_err(&analytic, &numeric);
    assert!(
        e <= 1e-6,
        "parameter gradient mismatch: rel err {e:e}\nanalytic {analytic:?}\nnumeric  {numeric:?}"
    );
}

// ---------------------------------------------------------------- activations

#[test]
fn activations_by_hand() {
    let x = t((U4::default(),), vec![-1.0f64, 0.0, 2f64.ln(), 3f64.ln()]);
    let v = x.to_f64_vec();
    close(
        &Relu.forward(x.clone()).to_f64_vec(),
        &[0.0, 0.0, v[2], v[3]],
        0.0,
    );
    let e1 = 1f64.exp();
    close(
        &Sigmoid.forward(x.clone()).to_f64_vec(),
        &[1.0 / (1.0 + e1), 0.5, 2.0 / 3.0, 0.75],
        1e-15,
    );
    // tanh(ln 2) = (2 - 1/2) / (2 + 1/2)
    close(
        &Tanh.forward(x.clone()).to_f64_vec(),
        &[-(e1 - 1.0 / e1) / (e1 + 1.0 / e1), 0.0, 0.6, 0.8],
        1e-15,
    );
    close(
        &Silu.forward(x.clone()).to_f64_vec(),
        &[-1.0 / (1.0 + e1), 0.0, v[2] * 2.0 / 3.0, v[3] * 0.75],
        1e-15,
    );
    // GELU(x) = x Φ(x): Φ(1) = 0.841344746068543, Φ(2) = 0.977249868051821
    let g = t((U3::default(),), vec![1.0f64, -1.0, 2.0]);
    close(
        &Gelu.forward(g.clone()).to_f64_vec(),
        &[
            0.841344746068543,
            -0.158655253931457,
            2.0 * 0.977249868051821,
        ],
        1e-14,
    );
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let gt = |x: f64| 0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh());
    close(
        &GeluTanh.forward(g).to_f64_vec(),
        &[gt(1.0), gt(-1.0), gt(2.0)],
        1e-15,
    );
}

fn act_any_shape<A: Activation + Forward<Tensor<(), f32>, Output = Tensor<(), f32>>>(a: A) {
    let s: Tensor<(), f32> = Tensor::full((), 0.5);
    let y = a.forward(s.clone());
    assert_eq!(y.to_vec(), a.apply(s).to_vec());
    let x5: Tensor<(U1, U2, Dyn, U1, U2), f32> = Tensor::randn(
        (
            U1::default(),
            U2::default(),
            Dyn(3),
            U1::default(),
            U2::default(),
        ),
        1,
    );
    assert_eq!(a.apply(x5).dims(), [1, 2, 3, 1, 2]);
    assert_eq!(a.num_params(), 0);
}

#[test]
fn activations_take_any_shape() {
    act_any_shape(Relu);
    act_any_shape(Gelu);
    act_any_shape(GeluTanh);
    act_any_shape(Silu);
    act_any_shape(Tanh);
    act_any_shape(Sigmoid);
}

fn grad_of<A: Activation>(a: A) {
    let x: Tensor<(U3, U4), f64> = Tensor::randn(Default::default(), 2);
    check_grad1(x.clone(), |x| weighted_sum(a.apply(x), 3));
    // non-contiguous and used twice
    check_grad1(x, |x| weighted_sum(a.apply(x.clone().t()) * x.t(), 4));
}

#[test]
fn activation_gradients() {
    grad_of(Relu);
    grad_of(Gelu);
    grad_of(GeluTanh);
    grad_of(Silu);
    grad_of(Tanh);
    grad_of(Sigmoid);
}

#[test]
fn activations_in_every_dtype() {
    let x: Tensor<(U3, U4), f64> = Tensor::randn(Default::default(), 5);
    check_dtypes!("Gelu", |E| Gelu.forward(cast::<E, _>(&x)).to_f64_vec());
    check_dtypes!("Silu", |E| Silu.forward(cast::<E, _>(&x)).to_f64_vec());
}

// ---------------------------------------------------------------- dropout

#[test]
fn dropout_is_seeded_per_step_and_reproducible() {
    let x: Tensor<(U8, U16), f64> = Tensor::ones(Default::default());
    let d = Dropout::new(0.25, 42);
    let a = d.forward(x.clone().traced()).to_vec();
    let b = d.forward(x.clone().traced()).to_vec();
    assert_eq!(d.calls(), 2);
    assert_ne!(a, b, "each training call draws a new mask");
    for v in a.iter().chain(&b) {
        assert!(*v == 0.0 || *v == 1.0 / 0.75);
    }
    let dropped = a.iter().filter(|&&v| v == 0.0).count();
    assert!((16..=48).contains(&dropped), "{dropped} of 128 dropped");
    // the same steps again: a fresh layer, a restored counter, or forward_at
    let d2 = Dropout::new(0.25, 42);
    assert_eq!(d2.forward(x.clone().traced()).to_vec(), a);
    d.set_calls(1);
    assert_eq!(d.forward(x.clone().traced()).to_vec(), b);
    assert_eq!(d.forward_at(x.clone(), 0).to_vec(), a);
    assert_eq!(d.clone().calls(), 2); // forward_at does not move the counter
                                      // another seed, another mask
    assert_ne!(Dropout::new(0.25, 43).forward_at(x.clone(), 0).to_vec(), a);
}

#[test]
fn dropout_eval_and_untraced_are_the_identity() {
    let x: Tensor<(U4, U4), f32> = Tensor::randn(Default::default(), 6);
    let mut d = Dropout::new(0.5, 1);
    // untraced (inference): identity, the counter does not move
    let y = d.forward(x.clone());
    assert_eq!(y.to_vec(), x.to_vec());
    assert_eq!(y.id(), x.id());
    assert_eq!(d.calls(), 0);
    d.eval();
    assert!(!d.is_training());
    let y = d.forward(x.clone().traced());
    assert_eq!(y.to_vec(), x.to_vec());
    assert_eq!(d.calls(), 0);
    d.train();
    assert_ne!(d.forward(x.clone().traced()).to_vec(), x.to_vec());
    assert_eq!(
        Dropout::new(0.0, 1).forward(x.clone().traced()).to_vec(),
        x.to_vec()
    );
}

#[test]
fn dropout_gradient_and_errors() {
    let x: Tensor<(U4, U5), f64> = Tensor::randn(Default::default(), 7);
    let d = Dropout::new(0.4, 9);
    check_grad1(x.clone(), |x| weighted_sum(d.forward_at(x, 5), 8));
    // the gradient is the mask times 1 / (1 - p)
    let y = d.forward_at(x.clone(), 5).to_vec();
    let g = weighted_sum(d.forward_at(x.clone().traced(), 5), 8)
        .backward()
        .get(&x)
        .unwrap()
        .to_vec();
    let w: Tensor<(U4, U5), f64> = Tensor::randn(Default::default(), 8);
    for ((yi, gi), wi) in y.iter().zip(&g).zip(w.to_vec()) {
        let want = if *yi == 0.0 { 0.0 } else { wi / 0.6 };
        assert!((gi - want).abs() < 1e-15);
    }
    assert!(matches!(
        Dropout::try_new(1.0, 0),
        Err(Error::InvalidArgument { op: "Dropout", .. })
    ));
    assert!(Dropout::try_new(-0.1, 0).is_err());
}

#[test]
#[should_panic(expected = "invalid argument to `Dropout`")]
fn dropout_panics_on_bad_p() {
    let _ = Dropout::new(1.5, 0);
}

// ---------------------------------------------------------------- feed-forward

fn lin<I: Dim, O: Dim>(i: I, o: O, w: Vec<f64>, b: Option<Vec<f64>>) -> Linear<I, O, f64> {
    Linear::from_parts(t((o, i), w), b.map(|b| t((o,), b)))
}

#[test]
fn feed_forward_by_hand() {
    // fc1 = [[1, 0], [0, 1], [1, -1]] + [0, 0.5, 0]; fc2 = [[1, 1, 1], [0, 2, -1]] + [0.1, -0.1]
    let fc1 = lin(
        Model,
        Hidden,
        vec![1., 0., 0., 1., 1., -1.],
        Some(vec![0., 0.5, 0.]),
    );
    let fc2 = lin(
        Hidden,
        Model,
        vec![1., 1., 1., 0., 2., -1.],
        Some(vec![0.1, -0.1]),
    );
    let x: Tensor<(U1, Model), f64> = t((U1::default(), Model), vec![1., 2.]);
    // hidden pre-activation [1, 2.5, -1]
    let relu: FeedForward<Model, Hidden, f64, Relu> =
        FeedForward::from_parts(fc1.clone(), fc2.clone());
    close(&relu.forward(x.clone()).to_f64_vec(), &[3.6, 4.9], 1e-15);
    // GELU: Φ(1) = 0.841344746068543, Φ(2.5) = 0.993790334674224
    let (g1, g25, gm1) = (
        0.841344746068543,
        2.5 * 0.993790334674224,
        -0.158655253931457,
    );
    let gelu: FeedForward<Model, Hidden, f64> = FeedForward::from_parts(fc1, fc2);
    close(
        &gelu.forward(x).to_f64_vec(),
        &[g1 + g25 + gm1 + 0.1, 2.0 * g25 - gm1 - 0.1],
        1e-14,
    );
    let paths: Vec<String> = gelu.param_info().into_iter().map(|p| p.path).collect();
    assert_eq!(paths, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
}

#[test]
fn gated_feed_forward_by_hand() {
    let w1 = lin(Model, Hidden, vec![1., 0., 0., 1., 1., -1.], None);
    let w2 = lin(Hidden, Model, vec![1., 1., 1., 0., 2., -1.], None);
    let w3 = lin(Model, Hidden, vec![0.5, 0., 1., 1., 0., -2.], None);
    let x: Tensor<(U1, Model), f64> = t((U1::default(), Model), vec![1., 2.]);
    let gate = [1.0, 2.0, -1.0];
    let up = [0.5, 3.0, -4.0];
    let silu = |v: f64| v / (1.0 + (-v).exp());
    let h: Vec<f64> = (0..3).map(|i| silu(gate[i]) * up[i]).collect();
    let ffn: SwiGlu<Model, Hidden, f64> =
        GatedFeedForward::from_parts(w1.clone(), w2.clone(), w3.clone());
    close(
        &ffn.forward(x.clone()).to_f64_vec(),
        &[h[0] + h[1] + h[2], 2.0 * h[1] - h[2]],
        1e-15,
    );
    let phi = [0.841344746068543, 0.977249868051821, 0.158655253931457];
    let h: Vec<f64> = (0..3).map(|i| gate[i] * phi[i] * up[i]).collect();
    let geglu: GeGlu<Model, Hidden, f64> = GatedFeedForward::from_parts(w1, w2, w3);
    close(
        &geglu.forward(x).to_f64_vec(),
        &[h[0] + h[1] + h[2], 2.0 * h[1] - h[2]],
        1e-14,
    );
}

/// Input and parameter gradients of a block on a `(B, T, D)` input.
fn check_block<M>(mut m: M)
where
    M: Module
        + Forward<
            Tensor<(U2, U3, Model), f64, Cpu, Tape>,
            Output = Tensor<(U2, U3, Model), f64, Cpu, Tape>,
        >,
{
    let x: Tensor<(U2, U3, Model), f64> = Tensor::randn(Default::default(), 11);
    check_grad1(x.clone(), |x| weighted_sum(m.forward(x), 12));
    check_param_grads(&mut m, |m| weighted_sum(m.forward(x.clone().traced()), 13));
}

#[test]
fn feed_forward_gradients() {
    check_block(FeedForward::<Model, Hidden, f64>::new(
        Model, Hidden, true, 1,
    ));
    check_block(FeedForward::<Model, Hidden, f64, GeluTanh>::new(
        Model, Hidden, false, 2,
    ));
    check_block(SwiGlu::<Model, Hidden, f64>::new(Model, Hidden, false, 3));
    check_block(GeGlu::<Model, Hidden, f64>::new(Model, Hidden, true, 4));
}

/// Generic code over dims and the tape compiles.
fn generic_block<D: Dim, H: Dim, T: TapeState>(
    m: &SwiGlu<D, H, f32>,
    x: Tensor<(Dyn, D), f32, Cpu, T>,
) -> Tensor<(Dyn, D), f32, Cpu, T> {
    m.forward(x)
}

#[test]
fn feed_forward_in_generic_code_and_f32() {
    let m: SwiGlu<Model, Hidden, f32> = SwiGlu::new(Model, Hidden, false, 5);
    let x: Tensor<(Dyn, Model), f32> = Tensor::randn((Dyn(4), Model), 6);
    let y = generic_block(&m, x.clone().traced()).sum_all();
    let g = y.backward();
    assert!(g.get(&m.w1.weight).is_some() && g.get(&m.w3.weight).is_some());
    assert_eq!(generic_block(&m, x).dims(), [4, 2]);
}

// ---------------------------------------------------------------- layer norm without bias

#[test]
fn layer_norm_without_bias() {
    dim!(Feat = 5);
    let x: Tensor<(U3, Feat), f64> = Tensor::randn(Default::default(), 4);
    let mut ln = zerfoo::nn::LayerNorm::<Feat, f64>::without_bias(Feat, 1e-5);
    ln.weight = Tensor::randn((Feat,), 5).add_scalar(1.0);
    // Only the weight is a parameter (PyTorch `LayerNorm(5, bias=False)`).
    let paths: Vec<String> = ln.param_info().into_iter().map(|p| p.path).collect();
    assert_eq!(paths, ["weight"]);
    // Forward: (x - mean) / sqrt(var + eps) * w, row by row.
    let (xv, w) = (x.to_vec(), ln.weight.to_vec());
    let want: Vec<f64> = xv
        .chunks(5)
        .flat_map(|r| {
            let mean = r.iter().sum::<f64>() / 5.0;
            let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 5.0;
            let w = &w;
            r.iter()
                .enumerate()
                .map(move |(i, v)| (v - mean) / (var + 1e-5).sqrt() * w[i])
        })
        .collect();
    close(&ln.forward(x.clone()).to_vec(), &want, 1e-12);
    // The weight's gradient by finite differences.
    check_param_grads(&mut ln, |m| weighted_sum(m.forward(x.clone().traced()), 6));
}
