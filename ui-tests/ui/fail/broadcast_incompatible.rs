use zerfoo::prelude::*;

dim!(Batch = 4);
dim!(Hidden = 768);
dim!(Ffn = 3072);

fn main() {
    let bias: Tensor<(Hidden,), f32> = Tensor::zeros((Hidden,));
    let _ = bias.broadcast::<_, Axis<0>>((Batch, Ffn));
}
