use zerfoo::nn::{cross_entropy, CrossEntropyOpts};
use zerfoo::prelude::*;

dim!(Batch = 4);
dim!(Seq = 6);
dim!(Classes = 10);

fn main() {
    let logits: Tensor<(Batch, Classes), f32> = Tensor::zeros((Batch, Classes));
    let targets: Tensor<(Seq,), i64> = Tensor::zeros((Seq,));
    let _ = cross_entropy(logits, &targets, CrossEntropyOpts::default());
}
