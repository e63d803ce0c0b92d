//! Elementwise unary ops and ops with a scalar: forward, backward, CPU kernel.

use std::sync::Arc;

use zerfoo_kernels::cpu::unary::{self as k, UnaryOp};
use zerfoo_kernels::{Backend, FloatDtype, Layout};

use crate::autograd::{device_ok, record, TapeState, TensorId};
use crate::shape::Shape;
use crate::tensor::Tensor;

// `neg` is also `std::ops::Neg`, implemented below.
#[allow(clippy::should_implement_trait)]
impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// Applies an elementwise [`UnaryOp`] and records its backward.
    pub(crate) fn unary_op<O: UnaryOp>(self, op: O) -> Self {
        let y = device_ok(self.device.unary_forward(op, &self.data, &self.layout));
        let out_id = TensorId::fresh();
        let y = Arc::new(y);
        let tape = if T::TRACKED {
            let (x, lx, y_saved, in_id) = (self.data.clone(), self.layout, y.clone(), self.id);
            let dev = self.device.clone();
            record::<T>(out_id, &[self.tape.node()], move |g| {
                if let Some(gy) = g.take_on::<D, E>(out_id) {
                    let gx = device_ok(dev.unary_backward(op, &x, &lx, &y_saved, &gy));
                    g.accumulate_on(&dev, in_id, gx);
                }
            })
        } else {
            T::from_node(None)
        };
        Tensor {
            layout: Layout::contiguous(&self.shape.dims()),
            shape: self.shape,
            data: y,
            id: out_id,
            tape,
            device: self.device,
        }
    }

    /// `-x`
    #[allow(clippy::should_implement_trait)] // `-x` works too (`core::ops::Neg`)
    pub fn neg(self) -> Self {
        self.unary_op(k::Neg)
    }
    /// `|x|`
    pub fn abs(self) -> Self {
        self.unary_op(k::Abs)
    }
    /// `e^x`
    pub fn exp(self) -> Self {
        self.unary_op(k::Exp)
    }
    /// Natural logarithm.
    pub fn log(self) -> Self {
        self.unary_op(k::Log)
    }
    /// Square root.
    pub fn sqrt(self) -> Self {
        self.unary_op(k::Sqrt)
    }
    /// `1 / √x`
    pub fn rsqrt(self) -> Self {
        self.unary_op(k::Rsqrt)
    }
    /// Sine.
    pub fn sin(self) -> Self {
        self.unary_op(k::Sin)
    }
    /// Cosine.
    pub fn cos(self) -> Self {
        self.unary_op(k::Cos)
    }
    /// Hyperbolic tangent.
    pub fn tanh(self) -> Self {
        self.unary_op(k::Tanh)
    }
    /// Logistic sigmoid.
    pub fn sigmoid(self) -> Self {
        self.unary_op(k::Sigmoid)
    }
    /// `max(x, 0)`
    pub fn relu(self) -> Self {
        self.unary_op(k::Relu)
    }
    /// GELU, exact (erf) form — PyTorch's `gelu(approximate="none")`.
    pub fn gelu(self) -> Self {
        self.unary_op(k::GeluErf)
    }
    /// GELU, tanh approximation — PyTorch's `gelu(approximate="tanh")`.
    pub fn gelu_tanh(self) -> Self {
        self.unary_op(k::GeluTanh)
    }
    /// SiLU (swish): `x σ(x)`.
    pub fn silu(self) -> Self {
        self.unary_op(k::Silu)
    }
    /// `x²`
    pub fn square(self) -> Self {
        self.unary_op(k::Square)
    }
    /// `x^p`
    pub fn powf(self, p: f64) -> Self {
        self.unary_op(k::Powf(p))
    }
    /// Clamps to `[lo, hi]`.
    pub fn clamp(self, lo: f64, hi: f64) -> Self {
        self.unary_op(k::Clamp(lo, hi))
    }
    /// `x + c`
    pub fn add_scalar(self, c: f64) -> Self {
        self.unary_op(k::AddScalar(c))
    }
    /// `x - c`
    pub fn sub_scalar(self, c: f64) -> Self {
        self.unary_op(k::AddScalar(-c))
    }
    /// `x * c`
    pub fn mul_scalar(self, c: f64) -> Self {
        self.unary_op(k::MulScalar(c))
    }
    /// `x / c`
    pub fn div_scalar(self, c: f64) -> Self {
        self.unary_op(k::MulScalar(1.0 / c))
    }
    /// `c / x`
    pub fn scalar_div(self, c: f64) -> Self {
        self.unary_op(k::ScalarDiv(c))
    }
    /// `c ^ x` (`c > 0`)
    pub fn scalar_pow(self, c: f64) -> Self {
        self.unary_op(k::ScalarPow(c))
    }
    /// `max(x, c)`
    pub fn maximum_scalar(self, c: f64) -> Self {
        self.unary_op(k::MaxScalar(c))
    }
    /// `min(x, c)`
    pub fn minimum_scalar(self, c: f64) -> Self {
        self.unary_op(k::MinScalar(c))
    }
}

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> core::ops::Neg for Tensor<S, E, D, T> {
    type Output = Self;
    fn neg(self) -> Self {
        Tensor::neg(self)
    }
}

macro_rules! scalar_std_op {
    ($tr:ident, $m:ident, $call:ident) => {
        impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> core::ops::$tr<f64>
            for Tensor<S, E, D, T>
        {
            type Output = Self;
            fn $m(self, c: f64) -> Self {
                self.$call(c)
            }
        }
    };
}
scalar_std_op!(Add, add, add_scalar);
scalar_std_op!(Sub, sub, sub_scalar);
scalar_std_op!(Mul, mul, mul_scalar);
scalar_std_op!(Div, div, div_scalar);
