use zerfoo::nn::Module;
use zerfoo::prelude::*;

#[derive(Module)]
struct Layer {
    weight: Tensor<(U2, U3), f32>,
    eps: f32,
}

#[derive(Module)]
struct Named {
    weight: Tensor<(U2, U3), f32>,
    name: String,
}

fn main() {}
