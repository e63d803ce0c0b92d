use zerfoo::ops::Conv2dConfig;
use zerfoo::prelude::*;

fn main() {
    let x: Tensor<(U1, U1, U8, U8), f32> = Tensor::zeros(Default::default());
    let w: Tensor<(U1, U1, U3, U3), f32> = Tensor::zeros(Default::default());
    let _ = x.conv2d(&w, Conv2dConfig::<U0>::new());
}
