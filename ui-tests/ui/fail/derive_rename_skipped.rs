use zerfoo::nn::Module;
use zerfoo::prelude::*;

#[derive(Module)]
struct Layer {
    weight: Tensor<(U2, U3), f32>,
    #[module(skip, rename = "scale")]
    eps: f64,
}

fn main() {}
