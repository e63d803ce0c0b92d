use zerfoo::prelude::*;

dim!(Batch = 4);
dim!(Hidden = 768);
dim!(Ffn = 3072);

fn main() {
    let x: Tensor<(Batch, Hidden), f32> = Tensor::zeros((Batch, Hidden));
    // a weight stored (out, in) must be transposed first: `w.t()`
    let w: Tensor<(Ffn, Hidden), f32> = Tensor::zeros((Ffn, Hidden));
    let _ = x.matmul(w);
}
