use zerfoo::prelude::*;

dim!(Hidden = 768);

fn main() {
    let x: Tensor<(Hidden,), f32> = Tensor::zeros((Hidden,));
    let loss = x.exp().sum::<Axis<0>>();
    let _ = loss.backward();
}
