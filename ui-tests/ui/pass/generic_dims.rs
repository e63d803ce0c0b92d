//! Code generic over dims compiles: same-shaped tensors add without extra
//! bounds, and reductions name their axes.
use zerfoo::prelude::*;

fn step<M: Dim, N: Dim>(x: Tensor<(M, N), f32>, y: Tensor<(M, N), f32>) -> Tensor<(M,), f32> {
    x.add(y).exp().sum::<Axis<1>>()
}

fn traced_loss<M: Dim, N: Dim>(x: Tensor<(M, N), f64>) -> Gradients {
    let t = x.traced();
    t.clone().mul(t).sum::<Axis<0>>().sum::<Axis<0>>().backward()
}

fn main() {
    let x: Tensor<(U2, Dyn), f32> = Tensor::zeros((U2::default(), Dyn(3)));
    let s = step(x.clone(), x);
    assert_eq!(s.to_vec(), [3.0, 3.0]);
    let g = traced_loss(Tensor::<(Dyn, U3), f64>::ones((Dyn(2), U3::default())));
    assert_eq!(g.len(), 1);
}
