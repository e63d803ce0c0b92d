use zerfoo::nn::Module;
use zerfoo::prelude::*;

#[derive(Module)]
struct Mixed<E: FloatDtype, M: FloatDtype> {
    compute: Tensor<(U2, U3), E>,
    master: Tensor<(U2, U3), M>,
}

fn main() {}
