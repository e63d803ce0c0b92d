use zerfoo::nn::{Forward, Linear, Module};
use zerfoo::prelude::*;

dim!(In = 16);
dim!(Hidden = 64);
dim!(Ffn = 256);
dim!(Out = 4);

#[derive(Module)]
#[module(sequential)]
struct Mlp {
    up: Linear<In, Hidden, f32>,
    // should be `Linear<Hidden, Out, f32>`
    down: Linear<Ffn, Out, f32>,
}

fn main() {
    let mlp = Mlp {
        up: Linear::new(In, Hidden, true, 0),
        down: Linear::new(Ffn, Out, true, 1),
    };
    let x: Tensor<(Dyn, In), f32> = Tensor::zeros((Dyn(8), In));
    let _ = mlp.forward(x);
}
