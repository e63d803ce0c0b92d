//! Creating tensors: zeros, ones, full, from a `Vec`, arange, eye, seeded random.

use rayon::prelude::*;
use zerfoo_kernels::{Cpu, Dtype, FloatDtype};

use super::{rng, Tensor};
use crate::autograd::NoTape;
use crate::shape::{Dim, Shape};
use crate::{Error, Result};

impl<S: Shape, E: Dtype> Tensor<S, E, Cpu, NoTape> {
    /// All elements zero.
    pub fn zeros(shape: S) -> Self {
        Self::from_contiguous(shape, vec![E::default(); shape.numel()])
    }
    /// All elements `value` (rounded to `E`).
    pub fn full(shape: S, value: f64) -> Self {
        Self::from_contiguous(shape, vec![E::from_f64(value); shape.numel()])
    }
    /// All elements one.
    pub fn ones(shape: S) -> Self {
        Self::full(shape, 1.0)
    }
    /// A tensor from row-major data; an error unless `data.len()` equals the
    /// shape's element count.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let t = Tensor::<(U2, U2), f32>::from_vec((U2::default(), U2::default()), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    /// assert_eq!(t.to_vec(), [1.0, 2.0, 3.0, 4.0]);
    /// assert!(Tensor::<(U2,), f32>::from_vec((U2::default(),), vec![1.0]).is_err());
    /// ```
    pub fn from_vec(shape: S, data: Vec<E>) -> Result<Self> {
        if data.len() != shape.numel() {
            return Err(Error::LengthMismatch {
                op: "from_vec",
                expected: shape.numel(),
                got: data.len(),
            });
        }
        Ok(Self::from_contiguous(shape, data))
    }
    /// A tensor whose element `i` (row-major) is `f(i)`.
    pub fn from_fn(shape: S, f: impl Fn(usize) -> E + Sync + Send) -> Self {
        let data: Vec<E> = (0..shape.numel()).into_par_iter().map(f).collect();
        Self::from_contiguous(shape, data)
    }
}

impl<N: Dim, E: Dtype> Tensor<(N,), E, Cpu, NoTape> {
    /// `0, 1, ..., n-1`.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let t = Tensor::<(Dyn,), i64>::arange(Dyn(4));
    /// assert_eq!(t.to_vec(), [0, 1, 2, 3]);
    /// ```
    pub fn arange(n: N) -> Self {
        Self::from_fn((n,), |i| E::from_f64(i as f64))
    }
}

impl<N: Dim, E: Dtype> Tensor<(N, N), E, Cpu, NoTape> {
    /// The identity matrix.
    pub fn eye(n: N) -> Self {
        let k = n.size();
        Self::from_fn((n, n), move |i| {
            E::from_f64(if i / k == i % k { 1.0 } else { 0.0 })
        })
    }
}

impl<S: Shape, E: FloatDtype> Tensor<S, E, Cpu, NoTape> {
    /// Standard normal samples; the same `seed` gives the same tensor on every
    /// run and thread count.
    pub fn randn(shape: S, seed: u64) -> Self {
        Self::from_fn(shape, move |i| E::from_f64(rng::normal(seed, i as u64)))
    }
    /// Normal samples with the given mean and standard deviation.
    pub fn normal(shape: S, mean: f64, std: f64, seed: u64) -> Self {
        Self::from_fn(shape, move |i| {
            E::from_f64(mean + std * rng::normal(seed, i as u64))
        })
    }
    /// Uniform samples in `[0, 1)`, exactly: each draw has `E`'s precision
    /// (`k / 2^digits`, as PyTorch draws), so rounding never reaches 1.
    pub fn rand(shape: S, seed: u64) -> Self {
        Self::uniform(shape, 0.0, 1.0, seed)
    }
    /// Uniform samples in `[low, high)`: `low + (high - low) * u` with `u`
    /// drawn as in [`rand`](Self::rand), rounded to `E`.
    pub fn uniform(shape: S, low: f64, high: f64, seed: u64) -> Self {
        let grid = 2f64.powi(significant_bits::<E>() as i32);
        Self::from_fn(shape, move |i| {
            let u = (rng::uniform(seed, i as u64) * grid).floor() / grid;
            E::from_f64(low + (high - low) * u)
        })
    }
}

/// The significant bits of `E` (53 for f64, 24 for f32, 8 for bf16, 4 for
/// f8 E4M3): the least `p` for which `1 + 2^-p` rounds to 1 (a tie, to even).
fn significant_bits<E: FloatDtype>() -> u32 {
    (1..53)
        .find(|&p| E::from_f64(1.0 + 2f64.powi(-(p as i32))).to_f64() == 1.0)
        .unwrap_or(53)
}

#[cfg(test)]
mod tests {
    use super::significant_bits;
    use zerfoo_kernels::{bf16, f16, F8E4M3, F8E5M2};

    #[test]
    fn significant_bits_per_dtype() {
        assert_eq!(significant_bits::<f64>(), 53);
        assert_eq!(significant_bits::<f32>(), 24);
        assert_eq!(significant_bits::<f16>(), 11);
        assert_eq!(significant_bits::<bf16>(), 8);
        assert_eq!(significant_bits::<F8E4M3>(), 4);
        assert_eq!(significant_bits::<F8E5M2>(), 3);
    }
}
