//! Weight initialization from a seed: normal, Xavier/Glorot, Kaiming/He, and
//! PyTorch's default for `nn.Linear`.

use zerfoo_kernels::FloatDtype;

use crate::shape::Shape;
use crate::tensor::Tensor;

/// `N(0, std²)`.
pub fn normal<S: Shape, E: FloatDtype>(shape: S, std: f64, seed: u64) -> Tensor<S, E> {
    Tensor::normal(shape, 0.0, std, seed)
}

/// `U(-bound, bound)`.
pub fn uniform<S: Shape, E: FloatDtype>(shape: S, bound: f64, seed: u64) -> Tensor<S, E> {
    Tensor::uniform(shape, -bound, bound, seed)
}

/// Xavier/Glorot uniform: `bound = gain * sqrt(6 / (fan_in + fan_out))`.
pub fn xavier_uniform<S: Shape, E: FloatDtype>(
    shape: S,
    fan_in: usize,
    fan_out: usize,
    gain: f64,
    seed: u64,
) -> Tensor<S, E> {
    uniform(shape, gain * (6.0 / (fan_in + fan_out) as f64).sqrt(), seed)
}

/// Xavier/Glorot normal: `std = gain * sqrt(2 / (fan_in + fan_out))`.
pub fn xavier_normal<S: Shape, E: FloatDtype>(
    shape: S,
    fan_in: usize,
    fan_out: usize,
    gain: f64,
    seed: u64,
) -> Tensor<S, E> {
    normal(shape, gain * (2.0 / (fan_in + fan_out) as f64).sqrt(), seed)
}

/// Kaiming/He uniform for ReLU: `bound = sqrt(6 / fan_in)`.
pub fn kaiming_uniform<S: Shape, E: FloatDtype>(
    shape: S,
    fan_in: usize,
    seed: u64,
) -> Tensor<S, E> {
    uniform(shape, (6.0 / fan_in as f64).sqrt(), seed)
}

/// Kaiming/He normal for ReLU: `std = sqrt(2 / fan_in)`.
pub fn kaiming_normal<S: Shape, E: FloatDtype>(shape: S, fan_in: usize, seed: u64) -> Tensor<S, E> {
    normal(shape, (2.0 / fan_in as f64).sqrt(), seed)
}

/// PyTorch's `nn.Linear` / `nn.Conv2d` default (Kaiming uniform with
/// `a = √5`): `U(-1/√fan_in, 1/√fan_in)`, for weights and biases alike.
pub fn torch_default<S: Shape, E: FloatDtype>(shape: S, fan_in: usize, seed: u64) -> Tensor<S, E> {
    uniform(shape, 1.0 / (fan_in.max(1) as f64).sqrt(), seed)
}
