use zerfoo::nn::{Forward, Linear, Module};
use zerfoo::prelude::*;

dim!(Batch = 2);
dim!(Heads = 4);
dim!(Seq = 8);
dim!(Chunk = 2);
dim!(In = 16);
dim!(Hidden = 64);

#[derive(Module)]
#[module(sequential)]
struct Proj {
    up: Linear<In, Hidden, f32>,
}

fn main() {
    let p = Proj { up: Linear::new(In, Hidden, true, 0) };
    // `Linear` takes inputs of rank 2 to 4
    let x: Tensor<(Batch, Heads, Seq, Chunk, In), f32> = Tensor::zeros(Default::default());
    let _ = p.forward(x);
}
