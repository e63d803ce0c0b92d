use zerfoo::nn::Module;
use zerfoo::prelude::*;

#[derive(Module)]
struct Layer {
    #[module(frozen)]
    weight: Tensor<(U2, U3), f32>,
}

#[derive(Module)]
#[module(sequentail)]
struct Stack {
    a: Layer,
}

fn main() {}
