//! First end-to-end checks of the tape: gradients, residual reuse, graph freeing.

use zerfoo::prelude::*;
use zerfoo_tests::{check_grad1, check_grad2, weighted_sum};

dim!(Rows = 3);
dim!(Cols = 4);

#[test]
fn exp_and_add_gradients() {
    let x: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 1);
    check_grad1(x, |x| weighted_sum(x.exp(), 2));
    let a: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 3);
    let b: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 4);
    check_grad2(a, b, |a, b| weighted_sum(a.mul(b), 5));
}

#[test]
fn tensor_used_twice_accumulates() {
    // residual: y = x + tanh(x) * x
    let x: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 7);
    check_grad1(x, |x| weighted_sum(x.clone() + x.clone().tanh() * x, 8));
}

/// An addition hands both operands one shared gradient buffer: an operand
/// used twice, a residual stream whose gradient a layer norm then adds
/// into (in its own pass) once the product on the other branch has read
/// it, and an operand whose gradient is written while the other operand
/// still shares it.
#[test]
fn addition_shares_its_gradient_safely() {
    let x: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 14);
    check_grad1(x, |x| weighted_sum(x.clone() + x, 15));
    let x: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 16);
    let w: Tensor<(Cols, Cols), f64> = Tensor::randn((Cols, Cols), 17);
    check_grad2(x, w, |x, w| {
        weighted_sum(x.clone() + x.layer_norm_no_affine(1e-5).matmul(w), 18)
    });
    let a: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 19);
    let b: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 20);
    check_grad2(a, b, |a, b| {
        let t = a.clone().exp();
        weighted_sum(a + b, 21) + weighted_sum(t, 22)
    });
}

#[test]
fn broadcast_gradient_sums_over_new_axis() {
    let bias: Tensor<(Cols,), f64> = Tensor::randn((Cols,), 9);
    let m: Tensor<(Dyn, Cols), f64> = Tensor::randn((Dyn(5), Cols), 10);
    check_grad2(bias, m, |b, m| {
        let s = m.shape();
        weighted_sum(b.broadcast::<_, Axis<0>>(s) * m, 11)
    });
}

#[test]
fn exp_in_every_dtype() {
    use zerfoo_tests::{cast, check_dtypes};
    let x: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 12);
    check_dtypes!("exp", |E| cast::<E, _>(&x).exp().to_f64_vec());
    let y: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 13);
    check_dtypes!("mul", |E| (cast::<E, _>(&x) * cast::<E, _>(&y))
        .to_f64_vec());
}
