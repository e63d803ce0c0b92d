//! Activation functions as modules (no parameters), for any shape:
//! [`Relu`], [`Gelu`] (exact, erf form), [`GeluTanh`], [`Silu`], [`Tanh`],
//! [`Sigmoid`]. Each is also an [`Activation`], the type parameter that
//! picks the nonlinearity of [`FeedForward`](super::FeedForward) and
//! [`GatedFeedForward`](super::GatedFeedForward).

use zerfoo_kernels::{Backend, FloatDtype};

use super::{Forward, Module};
use crate::autograd::TapeState;
use crate::ops::LinearAct;
use crate::shape::Shape;
use crate::tensor::Tensor;

/// An elementwise nonlinearity with no parameters.
pub trait Activation: Module + Copy + Default + core::fmt::Debug + Send + Sync + 'static {
    /// Applies it to every element.
    fn apply<S: Shape, E: FloatDtype, D: Backend, T: TapeState>(
        &self,
        x: Tensor<S, E, D, T>,
    ) -> Tensor<S, E, D, T>;

    /// The same function as a linear layer can apply inside its product
    /// ([`ForwardAct::forward_act`](super::ForwardAct::forward_act) of a [`Linear`](super::Linear)), if it can.
    fn linear_act(&self) -> Option<LinearAct> {
        None
    }
}

macro_rules! activation {
    ($(#[$m:meta])* $name:ident, $method:ident $(, $fused:ident)?) => {
        $(#[$m])*
        #[derive(crate::nn::Module, Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name;

        impl Activation for $name {
            #[inline]
            fn apply<S: Shape, E: FloatDtype, D: Backend, T: TapeState>(
                &self,
                x: Tensor<S, E, D, T>,
            ) -> Tensor<S, E, D, T> {
                x.$method()
            }
            $(
            fn linear_act(&self) -> Option<LinearAct> {
                Some(LinearAct::$fused)
            }
            )?
        }

        impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Forward<Tensor<S, E, D, T>> for $name {
            type Output = Tensor<S, E, D, T>;
            #[inline]
            fn forward(&self, x: Tensor<S, E, D, T>) -> Self::Output {
                x.$method()
            }
        }
    };
}

activation!(
    /// `max(x, 0)` (`torch.nn.ReLU`; gradient 0 at 0).
    ///
    /// ```
    /// use zerfoo::nn::{Forward, Relu};
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U3,), f32>::from_vec(Default::default(), vec![-1., 0., 2.]).unwrap();
    /// assert_eq!(Relu.forward(x).to_vec(), [0., 0., 2.]);
    /// ```
    Relu,
    relu,
    Relu
);
activation!(
    /// GELU, exact form `x Φ(x)` (`torch.nn.GELU()`).
    Gelu,
    gelu,
    Gelu
);
activation!(
    /// GELU, tanh approximation (`torch.nn.GELU(approximate="tanh")`).
    GeluTanh,
    gelu_tanh,
    GeluTanh
);
activation!(
    /// SiLU / swish, `x σ(x)` (`torch.nn.SiLU`).
    Silu,
    silu,
    Silu
);
activation!(
    /// Hyperbolic tangent (`torch.nn.Tanh`).
    Tanh,
    tanh
);
activation!(
    /// Logistic sigmoid (`torch.nn.Sigmoid`).
    Sigmoid,
    sigmoid
);
