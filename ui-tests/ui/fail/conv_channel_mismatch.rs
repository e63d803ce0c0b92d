use zerfoo::ops::Conv2dConfig;
use zerfoo::prelude::*;

dim!(Rgb = 3);
dim!(Gray = 1);
dim!(Filters = 8);

fn main() {
    let x: Tensor<(U2, Rgb, U8, U8), f32> = Tensor::zeros(Default::default());
    // a kernel made for one-channel images
    let w: Tensor<(Filters, Gray, U3, U3), f32> = Tensor::zeros(Default::default());
    let _ = x.conv2d(&w, Conv2dConfig::<U1, U1>::new());
}
