use zerfoo::ops::Conv2dConfig;
use zerfoo::prelude::*;

dim!(Channels = 6);
dim!(PerGroup = 2);
dim!(Filters = 6);

fn main() {
    let x: Tensor<(U1, Channels, U8, U8), f32> = Tensor::zeros(Default::default());
    let w: Tensor<(Filters, PerGroup, U3, U3), f32> = Tensor::zeros(Default::default());
    // 2 groups of 2 channels is 4, not 6 (3 groups would fit)
    let _ = x.conv2d(&w, Conv2dConfig::<U1, U1, U1, U2>::new());
}
