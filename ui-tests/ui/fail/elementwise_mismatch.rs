use zerfoo::prelude::*;

dim!(Batch = 4);
dim!(Hidden = 768);
dim!(Ffn = 3072);

fn main() {
    let x: Tensor<(Batch, Hidden), f32> = Tensor::zeros((Batch, Hidden));
    let h: Tensor<(Batch, Ffn), f32> = Tensor::zeros((Batch, Ffn));
    let _ = x.add(h);
}
