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
    }
}
