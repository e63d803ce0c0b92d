//! `Linear`: `y = x Wᵀ + b` over the last axis, like `torch.nn.Linear`
//! (weight stored `[out, in]`).

use zerfoo_kernels::{Backend, Cpu, FloatDtype};

use super::{init, Activation, Forward};
use crate::autograd::TapeState;
use crate::error::or_panic;
use crate::ops::MatMulShapes;
use crate::shape::Dim;
use crate::tensor::Tensor;

/// A fully connected layer from `I` to `O` features.
///
/// ```
/// use zerfoo::nn::{Forward, Linear};
/// use zerfoo::prelude::*;
/// dim!(In = 3);
/// dim!(Out = 2);
/// let layer: Linear<In, Out, f32> = Linear::new(In, Out, true, 0);
/// let x: Tensor<(Dyn, In), f32> = Tensor::ones((Dyn(4), In));
/// assert_eq!(layer.forward(x).dims(), [4, 2]);
/// ```
#[derive(crate::nn::Module, Clone, Debug)]
pub struct Linear<I: Dim, O: Dim, E: FloatDtype, D: Backend = Cpu> {
    /// `[out, in]`.
    pub weight: Tensor<(O, I), E, D>,
    /// `[out]`, if any.
    pub bias: Option<Tensor<(O,), E, D>>,
}

impl<I: Dim, O: Dim, E: FloatDtype> Linear<I, O, E> {
    /// PyTorch's default initialization, from a seed.
    pub fn new(i: I, o: O, bias: bool, seed: u64) -> Self {
        let fan_in = i.size();
        Linear {
            weight: init::torch_default((o, i), fan_in, seed),
            bias: bias.then(|| init::torch_default((o,), fan_in, seed.wrapping_add(1))),
        }
    }
}

impl<I: Dim, O: Dim, E: FloatDtype, D: Backend> Linear<I, O, E, D> {
    /// A layer with the given weight and bias.
    pub fn from_parts(weight: Tensor<(O, I), E, D>, bias: Option<Tensor<(O,), E, D>>) -> Self {
        Linear { weight, bias }
    }
}

/// A layer that can apply an activation to its output as part of its own
/// op: `act(layer(x))`, the same values and gradients as applying `act`
/// after [`Forward::forward`], in fewer passes over memory where the layer
/// can fuse `act` (see [`LinearAct`](crate::ops::LinearAct)).
pub trait ForwardAct<X>: Forward<X> {
    /// `act(self.forward(x))`.
    fn forward_act<A: Activation>(&self, x: X, act: A) -> Self::Output;
}

/// A layer that can add a residual to its output as part of its own op:
/// `residual + layer(x)`, the same values and gradients as adding after
/// [`Forward::forward`], in one pass less over memory where the layer can
/// fuse it (a transformer block's output projections).
pub trait ForwardResidual<X>: Forward<X> {
    /// `residual + self.forward(x)`.
    fn forward_residual(&self, x: X, residual: Self::Output) -> Self::Output;
}

macro_rules! linear_forward {
    ($($b:ident),*) => {
        impl<$($b: Dim,)* I: Dim, I2: Dim, O: Dim, E: FloatDtype, Dv: Backend, T: TapeState>
            Forward<Tensor<($($b,)* I2), E, Dv, T>> for Linear<I, O, E, Dv>
        where
            ($($b,)* I2): MatMulShapes<(I, O), Out = ($($b,)* O)>,
        {
            type Output = Tensor<($($b,)* O), E, Dv, T>;
            fn forward(&self, x: Tensor<($($b,)* I2), E, Dv, T>) -> Self::Output {
                // The bias goes in with the product (added in its store on
                // the CPU), not as a broadcast add over the result.
                let w = self.weight.retaped::<T>();
                match &self.bias {
                    Some(b) => x.matmul_t_bias(w, b.retaped::<T>()),
                    None => x.matmul_t(w),
                }
            }
        }

        impl<$($b: Dim,)* I: Dim, I2: Dim, O: Dim, E: FloatDtype, Dv: Backend, T: TapeState>
            ForwardAct<Tensor<($($b,)* I2), E, Dv, T>> for Linear<I, O, E, Dv>
        where
            ($($b,)* I2): MatMulShapes<(I, O), Out = ($($b,)* O)>,
        {
            fn forward_act<A: Activation>(
                &self,
                x: Tensor<($($b,)* I2), E, Dv, T>,
                act: A,
            ) -> Self::Output {
                match act.linear_act() {
                    Some(fused) => {
                        let w = self.weight.retaped::<T>();
                        let b = self.bias.as_ref().map(|b| b.retaped::<T>());
                        or_panic(x.try_matmul_t_bias_act(w, b, fused))
                    }
                    None => act.apply(self.forward(x)),
                }
            }
        }

        impl<$($b: Dim,)* I: Dim, I2: Dim, O: Dim, E: FloatDtype, Dv: Backend, T: TapeState>
            ForwardResidual<Tensor<($($b,)* I2), E, Dv, T>> for Linear<I, O, E, Dv>
        where
            ($($b,)* I2): MatMulShapes<(I, O), Out = ($($b,)* O)>,
        {
            fn forward_residual(
                &self,
                x: Tensor<($($b,)* I2), E, Dv, T>,
                residual: Self::Output,
            ) -> Self::Output {
                let w = self.weight.retaped::<T>();
                let b = self.bias.as_ref().map(|b| b.retaped::<T>());
                or_panic(x.try_matmul_t_bias_residual(w, b, residual))
            }
        }
    };
}
linear_forward!(M);
linear_forward!(B, M);
linear_forward!(B, H, M);
