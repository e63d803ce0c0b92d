use zerfoo::prelude::*;

dim!(Batch = 4);
dim!(Hidden = 768);
dim!(Ffn = 3072);

fn main() {
    let x: Tensor<(Batch, Hidden), f32> = Tensor::zeros((Batch, Hidden));
    let _ = x.reshape((Batch, Ffn));
}
