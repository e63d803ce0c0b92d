//! Row selection along an axis on a device ([`crate::cpu::index`]): the
//! embedding lookup and its scatter-add backward.

use super::{Cpu, Device, DeviceError};
use crate::{FloatDtype, Layout};

/// Index kernels.
pub trait IndexKernels: Device {
    /// Checked indices in this device's memory.
    type Indices: Send + Sync + 'static;

    /// Uploads indices, each already checked to be below `size`.
    fn indices(&self, idx: Vec<usize>, size: usize) -> Result<Self::Indices, DeviceError>;

    /// The slices `idx` of `x` along `axis`, contiguous.
    fn index_select<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        axis: usize,
        idx: &Self::Indices,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// Scatter-adds `grad_y` back into zeros shaped `x_dims`.
    fn index_select_backward<E: FloatDtype>(
        &self,
        grad_y: &Self::Storage<E>,
        x_dims: &[usize],
        axis: usize,
        idx: &Self::Indices,
    ) -> Result<Self::Storage<E>, DeviceError>;
}

impl IndexKernels for Cpu {
    type Indices = Vec<usize>;

    fn indices(&self, idx: Vec<usize>, _size: usize) -> Result<Vec<usize>, DeviceError> {
        Ok(idx)
    }

    fn index_select<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        axis: usize,
        idx: &Vec<usize>,
    ) -> Result<Vec<E>, DeviceError> {
        Ok(crate::cpu::index::index_select(x, lx, axis, idx))
    }

    fn index_select_backward<E: FloatDtype>(
        &self,
        grad_y: &Vec<E>,
        x_dims: &[usize],
        axis: usize,
        idx: &Vec<usize>,
    ) -> Result<Vec<E>, DeviceError> {
        Ok(crate::cpu::index::index_select_backward(
            grad_y, x_dims, axis, idx,
        ))
    }
}

#[cfg(feature = "cuda")]
mod cuda_impl {
    use super::*;
    use crate::cuda::ops::index as k;
    use crate::cuda::{CudaBuffer, CudaDevice};

    impl IndexKernels for CudaDevice {
        type Indices = CudaBuffer<u32>;

        fn indices(&self, idx: Vec<usize>, size: usize) -> Result<CudaBuffer<u32>, DeviceError> {
            k::indices_to_device(self, &idx, size)
        }

        fn index_select<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            axis: usize,
            idx: &CudaBuffer<u32>,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::index_select(x, lx, axis, idx)
        }

        fn index_select_backward<E: FloatDtype>(
            &self,
            grad_y: &CudaBuffer<E>,
            x_dims: &[usize],
            axis: usize,
            idx: &CudaBuffer<u32>,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::index_select_backward(grad_y, x_dims, axis, idx)
        }
    }
}
