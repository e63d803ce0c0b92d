use zerfoo::ops::Pool2dConfig;
use zerfoo::prelude::*;

fn main() {
    let x: Tensor<(U1, U1, U8, U8), f32> = Tensor::zeros(Default::default());
    // kernel 2 with padding 2: a window could lie wholly in the padding
    let _ = x.max_pool2d(Pool2dConfig::<U2, U2, U2>::new());
}
