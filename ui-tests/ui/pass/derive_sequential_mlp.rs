//! A `#[module(sequential)]` MLP of `Linear`s and an activation whose shapes
//! chain, generic over the dtype, run on static and dynamic batches.
use zerfoo::autograd::TapeState;
use zerfoo::nn::{Forward, Linear, Module};
use zerfoo::prelude::*;

dim!(In = 16);
dim!(Hidden = 64);
dim!(Out = 4);
dim!(Batch = 8);

#[derive(Module, Clone, Copy)]
struct Gelu;

impl<S: Shape, E: FloatDtype, T: TapeState> Forward<Tensor<S, E, Cpu, T>> for Gelu {
    type Output = Tensor<S, E, Cpu, T>;
    fn forward(&self, x: Tensor<S, E, Cpu, T>) -> Self::Output {
        x.gelu()
    }
}

#[derive(Module)]
#[module(sequential)]
struct Mlp<E: FloatDtype> {
    up: Linear<In, Hidden, E>,
    act: Gelu,
    mid: Linear<Hidden, Hidden, E>,
    act2: Gelu,
    down: Linear<Hidden, Out, E>,
}

fn main() {
    let mlp: Mlp<f32> = Mlp {
        up: Linear::new(In, Hidden, true, 0),
        act: Gelu,
        mid: Linear::new(Hidden, Hidden, true, 1),
        act2: Gelu,
        down: Linear::new(Hidden, Out, true, 2),
    };
    let x: Tensor<(Batch, In), f32> = Tensor::randn((Batch, In), 3);
    let y: Tensor<(Batch, Out), f32> = mlp.forward(x);
    assert_eq!(y.dims(), [8, 4]);
    let xd: Tensor<(Dyn, In), f32> = Tensor::randn((Dyn(3), In), 4);
    let loss = mlp.forward(xd.traced()).square().mean_all();
    let g = loss.backward();
    assert!(g.get(&mlp.up.weight).is_some());
    let half: Mlp<bf16> = mlp.to_dtype::<bf16>();
    let _: Tensor<(Batch, Out), bf16> = half.forward(Tensor::zeros((Batch, In)));
}
