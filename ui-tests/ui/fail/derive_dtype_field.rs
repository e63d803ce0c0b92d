use zerfoo::nn::Module;
use zerfoo::prelude::*;

#[derive(Module)]
struct Layer<E: FloatDtype> {
    weight: Tensor<(U2, U3), E>,
    eps: E,
}

fn main() {}
