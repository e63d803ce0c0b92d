//! An elementwise operand whose dtype or tape is still open is inferred from
//! the left operand, and tapes merge.
use zerfoo::prelude::*;

dim!(Batch = 4);
dim!(Hidden = 8);

fn main() {
    let x: Tensor<(Batch, Hidden), bf16> = Tensor::ones((Batch, Hidden));
    // dtype of the right operand inferred as bf16
    let y = x.clone().add(Tensor::full((Batch, Hidden), 2.0));
    assert_eq!(y.to_f64_vec()[0], 3.0);
    // untraced + traced is traced, and backward reaches the traced side
    let w: Tensor<(Batch, Hidden), f32> = Tensor::ones((Batch, Hidden));
    let t = w.clone().traced();
    let loss: Tensor<(), f32, Cpu, Tape> = Tensor::ones((Batch, Hidden)).mul(t).sum_all();
    let g = loss.backward();
    assert_eq!(g.get(&w).unwrap().to_vec(), vec![1.0; 32]);
    // the operators take the same operands
    let z = x.clone() + x.clone() * x;
    assert_eq!(z.to_f64_vec()[0], 2.0);
}
