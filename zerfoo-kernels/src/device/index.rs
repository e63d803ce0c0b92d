//! Indexing on a device ([`crate::cpu::index`]): row selection along an
//! axis (the embedding lookup) and `torch.gather`, with their scatter-add
//! backward, and the backward of selecting one entry of an axis.

use super::{Cpu, Device, DeviceError};
use crate::cpu::profile;
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

    /// `torch.gather` along `axis`: output shaped `idx_dims`.
    fn gather<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        axis: usize,
        idx: &Self::Indices,
        idx_dims: &[usize],
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// The gather's gradient: `grad_y` scatter-added into zeros shaped `x_dims`.
    fn gather_backward<E: FloatDtype>(
        &self,
        grad_y: &Self::Storage<E>,
        x_dims: &[usize],
        axis: usize,
        idx: &Self::Indices,
        idx_dims: &[usize],
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// `grad_y` placed at entry `index` of `axis` in zeros shaped `x_dims`.
    fn select_backward<E: FloatDtype>(
        &self,
        grad_y: &Self::Storage<E>,
        x_dims: &[usize],
        axis: usize,
        index: usize,
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
        profile::time(
            || profile::name("index/index_select", E::DTYPE),
            || Ok(crate::cpu::index::index_select(x, lx, axis, idx)),
        )
    }

    fn index_select_backward<E: FloatDtype>(
        &self,
        grad_y: &Vec<E>,
        x_dims: &[usize],
        axis: usize,
        idx: &Vec<usize>,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("index/index_select_backward", E::DTYPE),
            || {
                Ok(crate::cpu::index::index_select_backward(
                    grad_y, x_dims, axis, idx,
                ))
            },
        )
    }

    fn gather<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        axis: usize,
        idx: &Vec<usize>,
        idx_dims: &[usize],
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("index/gather", E::DTYPE),
            || Ok(crate::cpu::index::gather(x, lx, axis, idx, idx_dims)),
        )
    }

    fn gather_backward<E: FloatDtype>(
        &self,
        grad_y: &Vec<E>,
        x_dims: &[usize],
        axis: usize,
        idx: &Vec<usize>,
        idx_dims: &[usize],
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("index/gather_backward", E::DTYPE),
            || {
                Ok(crate::cpu::index::gather_backward(
                    grad_y, x_dims, axis, idx, idx_dims,
                ))
            },
        )
    }

    fn select_backward<E: FloatDtype>(
        &self,
        grad_y: &Vec<E>,
        x_dims: &[usize],
        axis: usize,
        index: usize,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("index/select_backward", E::DTYPE),
            || {
                Ok(crate::cpu::index::select_backward(
                    grad_y, x_dims, axis, index,
                ))
            },
        )
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

        fn gather<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            axis: usize,
            idx: &CudaBuffer<u32>,
            idx_dims: &[usize],
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::gather(x, lx, axis, idx, idx_dims)
        }

        fn gather_backward<E: FloatDtype>(
            &self,
            grad_y: &CudaBuffer<E>,
            x_dims: &[usize],
            axis: usize,
            idx: &CudaBuffer<u32>,
            idx_dims: &[usize],
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::gather_backward(grad_y, x_dims, axis, idx, idx_dims)
        }

        fn select_backward<E: FloatDtype>(
            &self,
            grad_y: &CudaBuffer<E>,
            x_dims: &[usize],
            axis: usize,
            index: usize,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::select_backward(grad_y, x_dims, axis, index)
        }
    }
}
