//! Optimizer updates on a device ([`crate::cpu::optim`]): one fused pass per
//! parameter for AdamW/Adam and SGD, and the sum of squares for clipping.

use super::{Cpu, Device, DeviceError};
use crate::cpu::optim::{AdamStep, SgdStep};
use crate::cpu::profile;
use crate::FloatDtype;

/// Optimizer kernels, in place on the parameter and its state.
pub trait OptimKernels: Device {
    /// One Adam/AdamW step on `param` with moments `m`, `v`.
    fn adam_update<E: FloatDtype>(
        &self,
        param: &mut Self::Storage<E>,
        grad: &Self::Storage<E>,
        m: &mut Self::Storage<E::Acc>,
        v: &mut Self::Storage<E::Acc>,
        s: &AdamStep,
    ) -> Result<(), DeviceError>;

    /// One SGD step on `param` with momentum buffer `buf`.
    fn sgd_update<E: FloatDtype>(
        &self,
        param: &mut Self::Storage<E>,
        grad: &Self::Storage<E>,
        buf: &mut Self::Storage<E::Acc>,
        s: &SgdStep,
    ) -> Result<(), DeviceError>;

    /// `total[0] += Σ x²` in `f64` (deterministic order), for gradient-norm
    /// clipping: the total stays on the device, so a norm over many tensors
    /// is read back once.
    fn add_sum_squares<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        total: &mut Self::Storage<f64>,
    ) -> Result<(), DeviceError>;
}

impl OptimKernels for Cpu {
    fn adam_update<E: FloatDtype>(
        &self,
        param: &mut Vec<E>,
        grad: &Vec<E>,
        m: &mut Vec<E::Acc>,
        v: &mut Vec<E::Acc>,
        s: &AdamStep,
    ) -> Result<(), DeviceError> {
        profile::time(
            || profile::name("optim/adam_update", E::DTYPE),
            || {
                crate::cpu::optim::adam_update(param, grad, m, v, s);
                Ok(())
            },
        )
    }

    fn sgd_update<E: FloatDtype>(
        &self,
        param: &mut Vec<E>,
        grad: &Vec<E>,
        buf: &mut Vec<E::Acc>,
        s: &SgdStep,
    ) -> Result<(), DeviceError> {
        profile::time(
            || profile::name("optim/sgd_update", E::DTYPE),
            || {
                crate::cpu::optim::sgd_update(param, grad, buf, s);
                Ok(())
            },
        )
    }

    fn add_sum_squares<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        total: &mut Vec<f64>,
    ) -> Result<(), DeviceError> {
        profile::time(
            || profile::name("optim/add_sum_squares", E::DTYPE),
            || {
                total[0] += crate::cpu::optim::sum_squares(x);
                Ok(())
            },
        )
    }
}

#[cfg(feature = "cuda")]
mod cuda_impl {
    use super::*;
    use crate::cuda::ops::optim as k;
    use crate::cuda::{CudaBuffer, CudaDevice};

    impl OptimKernels for CudaDevice {
        fn adam_update<E: FloatDtype>(
            &self,
            param: &mut CudaBuffer<E>,
            grad: &CudaBuffer<E>,
            m: &mut CudaBuffer<E::Acc>,
            v: &mut CudaBuffer<E::Acc>,
            s: &AdamStep,
        ) -> Result<(), DeviceError> {
            k::adam_update(param, grad, m, v, s)
        }

        fn sgd_update<E: FloatDtype>(
            &self,
            param: &mut CudaBuffer<E>,
            grad: &CudaBuffer<E>,
            buf: &mut CudaBuffer<E::Acc>,
            s: &SgdStep,
        ) -> Result<(), DeviceError> {
            k::sgd_update(param, grad, buf, s)
        }

        fn add_sum_squares<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            total: &mut CudaBuffer<f64>,
        ) -> Result<(), DeviceError> {
            k::add_sum_squares(x, total)
        }
    }
}
