use zerfoo::prelude::*;

dim!(Batch = 2);
dim!(Seq = 16);
dim!(Ffn = 3072);
dim!(Heads = 12);
dim!(HeadDim = 64);

fn main() {
    // 12 * 64 = 768, not 3072
    let x: Tensor<(Batch, Seq, Ffn), f32> = Tensor::zeros((Batch, Seq, Ffn));
    let _ = x.split_heads::<Heads, HeadDim>();
}
