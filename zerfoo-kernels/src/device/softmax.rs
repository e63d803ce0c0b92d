//! Softmax and log-softmax along one axis on a device
//! ([`crate::cpu::softmax`]), with their backward.

use super::{Cpu, Device, DeviceError};
use crate::cpu::profile;
use crate::{FloatDtype, Layout};

/// Softmax kernels; outputs are contiguous.
pub trait SoftmaxKernels: Device {
    /// Softmax (`LOG = false`) or log-softmax along `axis`.
    fn softmax_forward<E: FloatDtype, const LOG: bool>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        axis: usize,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// The input gradient from the (contiguous) output `y` and `grad_y`.
    fn softmax_backward<E: FloatDtype, const LOG: bool>(
        &self,
        y: &Self::Storage<E>,
        grad_y: &Self::Storage<E>,
        dims: &[usize],
        axis: usize,
    ) -> Result<Self::Storage<E>, DeviceError>;
}

impl SoftmaxKernels for Cpu {
    fn softmax_forward<E: FloatDtype, const LOG: bool>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        axis: usize,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || {
                profile::name(
                    ["softmax/forward", "softmax/log_forward"][LOG as usize],
                    E::DTYPE,
                )
            },
            || Ok(crate::cpu::softmax::softmax_forward::<E, LOG>(x, lx, axis)),
        )
    }

    fn softmax_backward<E: FloatDtype, const LOG: bool>(
        &self,
        y: &Vec<E>,
        grad_y: &Vec<E>,
        dims: &[usize],
        axis: usize,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || {
                profile::name(
                    ["softmax/backward", "softmax/log_backward"][LOG as usize],
                    E::DTYPE,
                )
            },
            || {
                Ok(crate::cpu::softmax::softmax_backward::<E, LOG>(
                    y, grad_y, dims, axis,
                ))
            },
        )
    }
}

#[cfg(feature = "cuda")]
impl SoftmaxKernels for crate::cuda::CudaDevice {
    fn softmax_forward<E: FloatDtype, const LOG: bool>(
        &self,
        x: &crate::cuda::CudaBuffer<E>,
        lx: &Layout,
        axis: usize,
    ) -> Result<crate::cuda::CudaBuffer<E>, DeviceError> {
        crate::cuda::ops::softmax::softmax_forward::<E, LOG>(x, lx, axis)
    }

    fn softmax_backward<E: FloatDtype, const LOG: bool>(
        &self,
        y: &crate::cuda::CudaBuffer<E>,
        grad_y: &crate::cuda::CudaBuffer<E>,
        dims: &[usize],
        axis: usize,
    ) -> Result<crate::cuda::CudaBuffer<E>, DeviceError> {
        crate::cuda::ops::softmax::softmax_backward::<E, LOG>(y, grad_y, dims, axis)
    }
}
