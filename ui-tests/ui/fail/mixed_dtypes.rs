use zerfoo::prelude::*;

dim!(Batch = 4);
dim!(Hidden = 768);

fn main() {
    let x: Tensor<(Batch, Hidden), f32> = Tensor::zeros((Batch, Hidden));
    let y: Tensor<(Batch, Hidden), bf16> = Tensor::zeros((Batch, Hidden));
    let _ = x.add(y);
}
