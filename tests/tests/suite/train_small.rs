//! End to end: a derived 2-layer MLP learns a synthetic, nonlinear
//! classification task (XOR of the signs of two coordinates) with AdamW and
//! cross-entropy. Deterministic: fixed seeds for the data and the weights.

use zerfoo::nn::{cross_entropy, CrossEntropyOpts, Forward, Linear, Module, Tanh};
use zerfoo::optim::Optimizer;
use zerfoo::prelude::*;

dim!(Features = 2);
dim!(Hidden = 32);
dim!(Classes = 2);
dim!(Points = 256);

#[derive(Module)]
#[module(sequential)]
struct Mlp {
    fc1: Linear<Features, Hidden, f32>,
    act: Tanh,
    fc2: Linear<Hidden, Classes, f32>,
}

type Inputs = Tensor<(Points, Features), f32>;
type Labels = Tensor<(Points,), i64>;

/// Points uniform in `[-1, 1]^2`, label 1 where the signs differ.
fn data() -> (Inputs, Labels) {
    let x: Inputs = Tensor::uniform((Points, Features), -1.0, 1.0, 2024);
    let v = x.to_vec();
    let y: Vec<i64> = v
        .chunks(2)
        .map(|p| i64::from((p[0] > 0.0) != (p[1] > 0.0)))
        .collect();
    (x, Tensor::from_vec((Points,), y).unwrap())
}

#[test]
fn mlp_learns_xor_of_signs() {
    let (x, y) = data();
    let mut model = Mlp {
        fc1: Linear::new(Features, Hidden, true, 1),
        act: Tanh,
        fc2: Linear::new(Hidden, Classes, true, 2),
    };
    let mut opt = Optimizer::adamw(0.05, (0.9, 0.999), 1e-8, 1e-4);
    let mut losses = Vec::new();
    for _ in 0..200 {
        let loss = cross_entropy(
            model.forward(x.clone().traced()),
            &y,
            CrossEntropyOpts::default(),
        );
        losses.push(loss.item());
        let grads = loss.backward();
        opt.step(&mut model, &grads).unwrap();
    }
    let logits = model.forward(x.clone());
    let pred = logits.argmax::<Axis<1>>().to_vec();
    let correct = pred
        .iter()
        .zip(y.to_vec())
        .filter(|(p, t)| **p == *t)
        .count();
    let (first, last) = (losses[0], *losses.last().unwrap());
    println!("train_small: loss {first:.4} -> {last:.4}, accuracy {correct}/256");
    // chance level is ln 2 = 0.693
    assert!(first > 0.6, "{first}");
    assert!(last < 0.1, "loss {last} after 200 steps");
    assert!(correct >= 245, "{correct}/256 correct");
}
