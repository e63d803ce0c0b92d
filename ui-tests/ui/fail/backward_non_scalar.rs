use zerfoo::prelude::*;

dim!(Hidden = 768);

fn main() {
    let x: Tensor<(Hidden,), f32> = Tensor::zeros((Hidden,));
    let y = x.traced().exp();
    let _ = y.backward();
}
