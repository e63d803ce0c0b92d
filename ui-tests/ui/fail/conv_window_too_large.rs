use zerfoo::ops::Conv2dConfig;
use zerfoo::prelude::*;

dim!(Side = 4);
dim!(Kernel = 7);

fn main() {
    let x: Tensor<(U1, U1, Side, Side), f32> = Tensor::zeros(Default::default());
    // padding 1 makes the input 6 wide: a 7-wide kernel does not fit
    let w: Tensor<(U1, U1, Kernel, Kernel), f32> = Tensor::zeros(Default::default());
    let _ = x.conv2d(&w, Conv2dConfig::<U1, U1>::new());
}
