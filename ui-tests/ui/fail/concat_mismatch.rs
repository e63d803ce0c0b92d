use zerfoo::prelude::*;

dim!(Batch = 4);
dim!(Hidden = 768);
dim!(Ffn = 3072);

fn main() {
    let a: Tensor<(Batch, Hidden), f32> = Tensor::zeros((Batch, Hidden));
    let b: Tensor<(Batch, Ffn), f32> = Tensor::zeros((Batch, Ffn));
    // joining along the batch axis needs equal widths
    let _ = a.concat::<Axis<0>>(b);
}
