use zerfoo::nn::{AttentionConfig, Forward, MultiHeadAttention};
use zerfoo::prelude::*;

dim!(Batch = 2);
dim!(Seq = 5);
dim!(Model = 8);
dim!(Wide = 12);
dim!(Heads = 2);
dim!(HeadDim = 4);

fn main() {
    let attn: MultiHeadAttention<Model, Heads, HeadDim, f32> =
        MultiHeadAttention::new(Model, Heads, HeadDim, Heads, AttentionConfig::default(), 0);
    // the input is 12 wide, the layer 8
    let x: Tensor<(Batch, Seq, Wide), f32> = Tensor::zeros((Batch, Seq, Wide));
    let _ = attn.forward(x);
}
