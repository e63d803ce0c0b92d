//! Matrix products on a device ([`crate::cpu::matmul`]; cuBLAS on CUDA):
//! batched and broadcast products, and the sum over a batch of products
//! (the gradient of a weight shared by the batch).

use super::{Cpu, Device, DeviceError};
use crate::{FloatDtype, Layout};

/// Matrix-product kernels; outputs are contiguous row-major.
pub trait MatmulKernels: Device {
    /// `[..batch, M, K] x [..batch, K, N] -> [..batch, M, N]`; a batch
    /// stride of 0 repeats an operand.
    fn gemm_batched<E: FloatDtype>(
        &self,
        a: &Self::Storage<E>,
        la: &Layout,
        b: &Self::Storage<E>,
        lb: &Layout,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// `Σ_batch A_b · B_b` as `[M, N]`.
    fn gemm_batch_sum<E: FloatDtype>(
        &self,
        a: &Self::Storage<E>,
        la: &Layout,
        b: &Self::Storage<E>,
        lb: &Layout,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// [`gemm_batched`](Self::gemm_batched) plus `bias` (`N` contiguous
    /// values) on every row: a linear layer's `x · Wᵀ + b`. The CPU adds
    /// the bias in the product's store (no pass of its own): `(A · B) +
    /// bias` in the compute type, rounded to `E` once. CUDA rounds the
    /// product to `E` and then adds (the same bits in `f32`/`f64`; in
    /// `f16`/`bf16` one rounding more). A bias of the wrong length is an
    /// error.
    fn gemm_batched_bias<E: FloatDtype>(
        &self,
        a: &Self::Storage<E>,
        la: &Layout,
        b: &Self::Storage<E>,
        lb: &Layout,
        bias: &Self::Storage<E>,
    ) -> Result<Self::Storage<E>, DeviceError>;
}

/// The product's column count (`N`), when the bias must match it.
fn bias_columns(lb: &Layout) -> usize {
    lb.rank().checked_sub(1).map_or(0, |i| lb.shape()[i])
}

/// The error for a bias whose length is not the product's column count.
fn bias_mismatch(lb: &Layout, len: usize) -> DeviceError {
    DeviceError::new(
        "gemm_batched_bias",
        format!(
            "a bias of {len} values for {} columns (rhs {:?})",
            bias_columns(lb),
            lb.shape()
        ),
    )
}

impl MatmulKernels for Cpu {
    fn gemm_batched<E: FloatDtype>(
        &self,
        a: &Vec<E>,
        la: &Layout,
        b: &Vec<E>,
        lb: &Layout,
    ) -> Result<Vec<E>, DeviceError> {
        Ok(crate::cpu::matmul::gemm_batched(a, la, b, lb))
    }

    fn gemm_batch_sum<E: FloatDtype>(
        &self,
        a: &Vec<E>,
        la: &Layout,
        b: &Vec<E>,
        lb: &Layout,
    ) -> Result<Vec<E>, DeviceError> {
        Ok(crate::cpu::matmul::gemm_batch_sum(a, la, b, lb))
    }

    fn gemm_batched_bias<E: FloatDtype>(
        &self,
        a: &Vec<E>,
        la: &Layout,
        b: &Vec<E>,
        lb: &Layout,
        bias: &Vec<E>,
    ) -> Result<Vec<E>, DeviceError> {
        if bias.len() != bias_columns(lb) {
            return Err(bias_mismatch(lb, bias.len()));
        }
        Ok(crate::cpu::matmul::gemm_batched_bias(
            a,
            la,
            b,
            lb,
            Some(bias),
        ))
    }
}

#[cfg(feature = "cuda")]
mod cuda_impl {
    use super::*;
    use crate::cuda::ops::matmul::{self as k, GemmOptions};
    use crate::cuda::{CudaBuffer, CudaDevice};

    impl CudaDevice {
        fn gemm_options(&self) -> GemmOptions {
            GemmOptions {
                allow_tf32: self.allow_tf32(),
            }
        }
    }

    impl MatmulKernels for CudaDevice {
        fn gemm_batched<E: FloatDtype>(
            &self,
            a: &CudaBuffer<E>,
            la: &Layout,
            b: &CudaBuffer<E>,
            lb: &Layout,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::gemm_batched(a, la, b, lb, self.gemm_options())
        }

        fn gemm_batch_sum<E: FloatDtype>(
            &self,
            a: &CudaBuffer<E>,
            la: &Layout,
            b: &CudaBuffer<E>,
            lb: &Layout,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::gemm_batch_sum(a, la, b, lb, self.gemm_options())
        }

        /// cuBLAS's product, then one broadcast add of the bias.
        fn gemm_batched_bias<E: FloatDtype>(
            &self,
            a: &CudaBuffer<E>,
            la: &Layout,
            b: &CudaBuffer<E>,
            lb: &Layout,
            bias: &CudaBuffer<E>,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            let n = bias_columns(lb);
            if bias.len() != n {
                return Err(bias_mismatch(lb, bias.len()));
            }
            let y = self.gemm_batched(a, la, b, lb)?;
            let rows = y.len().checked_div(n).unwrap_or(0);
            let ly = Layout::contiguous(&[rows, n]);
            let lbias = Layout::new(&[rows, n], &[0, 1], 0);
            crate::cuda::ops::elementwise::binary_forward(
                crate::cpu::binary::AddOp,
                &y,
                &ly,
                bias,
                &lbias,
            )
        }
    }
}
