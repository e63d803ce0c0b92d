//! Normalization layers over the last axis: `LayerNorm` and `RmsNorm` (both
//! the `x * w` and Gemma's `x * (1 + w)` forms).

use zerfoo_kernels::{Backend, Cpu, FloatDtype};

use super::Forward;
use crate::autograd::TapeState;
use crate::error::or_panic;
use crate::ops::{LastDim, LayerNorm as LayerNormOp, RmsNorm as RmsNormOp};
use crate::shape::{Dim, SameDim, Shape};
use crate::tensor::Tensor;

/// `torch.nn.LayerNorm(D)`: biased variance, `eps` inside the square root.
/// `bias: None` is `LayerNorm(D, bias=False)` (nanoGPT's default).
#[derive(crate::nn::Module, Clone, Debug)]
pub struct LayerNorm<D: Dim, E: FloatDtype, Dv: Backend = Cpu> {
    /// Scale, initialized to ones.
    pub weight: Tensor<(D,), E, Dv>,
    /// Shift, initialized to zeros; `None` for a norm without one.
    pub bias: Option<Tensor<(D,), E, Dv>>,
    /// Added to the variance.
    #[module(skip)]
    pub eps: f64,
}

impl<D: Dim, E: FloatDtype> LayerNorm<D, E> {
    /// Ones and zeros, like PyTorch.
    pub fn new(d: D, eps: f64) -> Self {
        LayerNorm {
            weight: Tensor::ones((d,)),
            bias: Some(Tensor::zeros((d,))),
            eps,
        }
    }

    /// Weight ones and no bias (`torch.nn.LayerNorm(D, bias=False)`).
    pub fn without_bias(d: D, eps: f64) -> Self {
        LayerNorm {
            bias: None,
            ..Self::new(d, eps)
        }
    }
}

impl<S, E: FloatDtype, Dv: Backend, T: TapeState, D: Dim> Forward<Tensor<S, E, Dv, T>>
    for LayerNorm<D, E, Dv>
where
    S: Shape + LastDim,
    S::Last: SameDim<D, LayerNormOp>,
{
    type Output = Tensor<S, E, Dv, T>;
    fn forward(&self, x: Tensor<S, E, Dv, T>) -> Self::Output {
        let weight = self.weight.retaped::<T>();
        match &self.bias {
            Some(b) => x.layer_norm(&weight, &b.retaped::<T>(), self.eps),
            None => or_panic(x.try_layer_norm_without_bias(&weight, self.eps)),
        }
    }
}

/// RMS normalization: `x / sqrt(mean(x²) + eps) * w`, or with
/// `offset = true` Gemma's `* (1 + w)` (computed in f32 before rounding).
#[derive(crate::nn::Module, Clone, Debug)]
pub struct RmsNorm<D: Dim, E: FloatDtype, Dv: Backend = Cpu> {
    /// The scale (or the offset from 1, with `offset`).
    pub weight: Tensor<(D,), E, Dv>,
    /// Added to the mean square.
    #[module(skip)]
    pub eps: f64,
    /// Gemma's `1 + w` form.
    #[module(skip)]
    pub offset: bool,
}

impl<D: Dim, E: FloatDtype> RmsNorm<D, E> {
    /// LLaMA's form, weight ones.
    pub fn new(d: D, eps: f64) -> Self {
        RmsNorm {
            weight: Tensor::ones((d,)),
            eps,
            offset: false,
        }
    }
    /// Gemma's `1 + w` form, weight zeros.
    pub fn new_offset(d: D, eps: f64) -> Self {
        RmsNorm {
            weight: Tensor::zeros((d,)),
            eps,
            offset: true,
        }
    }
}

impl<S, E: FloatDtype, Dv: Backend, T: TapeState, D: Dim> Forward<Tensor<S, E, Dv, T>>
    for RmsNorm<D, E, Dv>
where
    S: Shape + LastDim,
    S::Last: SameDim<D, RmsNormOp>,
{
    type Output = Tensor<S, E, Dv, T>;
    fn forward(&self, x: Tensor<S, E, Dv, T>) -> Self::Output {
        let w = self.weight.retaped::<T>();
        if self.offset {
            x.rms_norm_offset(&w, self.eps)
        } else {
            x.rms_norm(&w, self.eps)
        }
    }
}
