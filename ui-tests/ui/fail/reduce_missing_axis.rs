use zerfoo::prelude::*;

dim!(A = 2);
dim!(B = 3);

fn main() {
    let x: Tensor<(A, B), f32> = Tensor::zeros((A, B));
    let _ = x.sum::<Axis<2>>();
}
