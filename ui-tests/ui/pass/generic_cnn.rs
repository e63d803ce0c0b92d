//! Image ops in code generic over dims, dtype and tape: run-time geometry
//! (`Dyn` spatial output) needs no bounds; one group proves the channels
//! equal from the shared type.
use zerfoo::autograd::TapeState;
use zerfoo::nn::{BatchNorm2d, Forward};
use zerfoo::ops::{Conv2dArgs, Pool2dArgs};
use zerfoo::prelude::*;

fn block<N: Dim, C: Dim, H: Dim, W: Dim, E: FloatDtype, T: TapeState>(
    x: Tensor<(N, C, H, W), E, Cpu, T>,
    w: &Tensor<(C, C, U3, U3), E>,
    b: &Tensor<(C,), E>,
    bn: &BatchNorm2d<C, E>,
) -> Tensor<(N, Dyn), E, Cpu, T> {
    let y = x.conv2d_bias(&w.retaped::<T>(), &b.retaped::<T>(), Conv2dArgs::new(1, 1, 1));
    let y = bn.forward(y).relu().max_pool2d(Pool2dArgs::new(2, 2, 0));
    y.global_avg_pool2d().flatten::<Dyn>()
}

fn main() {
    let x: Tensor<(U2, U3, U8, U8), f32> = Tensor::zeros(Default::default());
    let w = Tensor::zeros(Default::default());
    let b = Tensor::zeros(Default::default());
    let _ = block(x, &w, &b, &BatchNorm2d::new(U3::default()));
}
