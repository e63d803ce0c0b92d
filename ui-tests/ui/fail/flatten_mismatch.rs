use zerfoo::prelude::*;

dim!(Chans = 4);
dim!(Side = 4);
dim!(Features = 60);

fn main() {
    let x: Tensor<(U2, Chans, Side, Side), f32> = Tensor::zeros(Default::default());
    // 4 * 4 * 4 = 64 features, not 60
    let _ = x.flatten::<Features>();
}
