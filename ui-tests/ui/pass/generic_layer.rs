//! A layer generic over its dims and dtype, of the kind users write:
//! matmul by a transposed weight, broadcast bias, split heads, softmax,
//! norms and reductions, with a tape that follows the input.
use zerfoo::autograd::TapeState;
use zerfoo::prelude::*;

fn attention_scores<B: Dim, T: Dim, H: Dim, Hd: Dim, E: FloatDtype, Tp: TapeState>(
    q: Tensor<(B, H, T, Hd), E, Cpu, Tp>,
    k: Tensor<(B, H, T, Hd), E>,
) -> Tensor<(B, H, T, T), E, Cpu, Tp> {
    q.matmul(k.retaped::<Tp>().t()).softmax::<Axis<3>>()
}

fn linear<M: Dim, I: Dim, O: Dim, E: FloatDtype, Tp: TapeState>(
    x: Tensor<(M, I), E, Cpu, Tp>,
    w: &Tensor<(O, I), E>,
    b: &Tensor<(O,), E>,
) -> Tensor<(M, O), E, Cpu, Tp> {
    let y = x.matmul(w.retaped::<Tp>().t());
    let shape = y.shape();
    y.clone() + b.retaped::<Tp>().broadcast::<_, Axis<0>>(shape)
}

dim!(Batch = 2);
dim!(Seq = 3);
dim!(Heads = 2);
dim!(HeadDim = 4);
dim!(Hidden = 8);

fn main() {
    let q: Tensor<(Batch, Heads, Seq, HeadDim), f32> = Tensor::randn(Default::default(), 0);
    let k: Tensor<(Batch, Heads, Seq, HeadDim), f32> = Tensor::randn(Default::default(), 1);
    let s = attention_scores(q.traced(), k);
    let _ = s.sum_all().backward();
    let x: Tensor<(Dyn, Hidden), f64> = Tensor::randn((Dyn(5), Hidden), 2);
    let w: Tensor<(Hidden, Hidden), f64> = Tensor::randn(Default::default(), 3);
    let b: Tensor<(Hidden,), f64> = Tensor::zeros(Default::default());
    let g = linear(x.traced(), &w, &b).square().mean_all().backward();
    assert!(g.get(&w).is_some() && g.get(&b).is_some());
}
