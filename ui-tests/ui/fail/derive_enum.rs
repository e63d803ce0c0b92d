use zerfoo::nn::Module;
use zerfoo::prelude::*;

#[derive(Module)]
enum Layer {
    A(Tensor<(U2,), f32>),
    B(Tensor<(U3,), f32>),
}

fn main() {}
