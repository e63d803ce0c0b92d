//! Devices and their storage: [`Device`] says where a tensor's elements live
//! ([`Device::Storage`]) and moves them to and from the host; the kernel
//! families a device runs are the traits of the submodules, gathered in
//! [`Backend`]. [`Cpu`] runs [`crate::cpu`]'s kernels on host memory; with
//! the cargo feature `cuda`, `CudaDevice` (in `crate::cuda`) runs the
//! kernels of `crate::cuda::ops` on GPU memory.

mod error;

pub use error::DeviceError;

use crate::{Dtype, Layout};

/// A compute device. Tensors carry theirs in their type, and their elements
/// in the device's [`Device::Storage`].
pub trait Device: Clone + core::fmt::Debug + PartialEq + Send + Sync + 'static {
    /// Where a tensor's elements live on this device: a `Vec<E>` on the
    /// CPU, a device buffer on a GPU.
    type Storage<E: Dtype>: Send + Sync + 'static;

    /// A short name for messages: `cpu`, `cuda:0`.
    fn name(&self) -> String;

    /// Number of elements in `s`.
    fn storage_len<E: Dtype>(s: &Self::Storage<E>) -> usize;

    /// Moves host elements into storage on this device (no copy on the CPU).
    fn upload<E: Dtype>(&self, v: Vec<E>) -> Result<Self::Storage<E>, DeviceError>;

    /// The elements `layout` selects from `s`, row-major, on the host.
    fn to_host<E: Dtype>(
        &self,
        s: &Self::Storage<E>,
        layout: &Layout,
    ) -> Result<Vec<E>, DeviceError>;
}

/// The host CPU: kernels run on rayon's thread pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Cpu;

impl Device for Cpu {
    type Storage<E: Dtype> = Vec<E>;

    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn storage_len<E: Dtype>(s: &Vec<E>) -> usize {
        s.len()
    }

    fn upload<E: Dtype>(&self, v: Vec<E>) -> Result<Vec<E>, DeviceError> {
        Ok(v)
    }

    fn to_host<E: Dtype>(&self, s: &Vec<E>, layout: &Layout) -> Result<Vec<E>, DeviceError> {
        Ok(crate::cpu::to_contiguous(s, layout))
    }
}

#[cfg(feature = "cuda")]
impl Device for crate::cuda::CudaDevice {
    type Storage<E: Dtype> = crate::cuda::CudaBuffer<E>;

    fn name(&self) -> String {
        format!("cuda:{}", self.ordinal())
    }

    fn storage_len<E: Dtype>(s: &crate::cuda::CudaBuffer<E>) -> usize {
        s.len()
    }

    fn upload<E: Dtype>(&self, v: Vec<E>) -> Result<crate::cuda::CudaBuffer<E>, DeviceError> {
        self.to_device(&v)
    }

    fn to_host<E: Dtype>(
        &self,
        s: &crate::cuda::CudaBuffer<E>,
        layout: &Layout,
    ) -> Result<Vec<E>, DeviceError> {
        let all = s.to_host()?;
        if layout.is_contiguous() && layout.offset == 0 && all.len() == layout.numel() {
            return Ok(all);
        }
        Ok(crate::cpu::to_contiguous(&all, layout))
    }
}

mod elementwise;

pub use elementwise::{convert_element, ElementwiseKernels};
mod reduce;
mod softmax;

pub use reduce::ReduceKernels;
pub use softmax::SoftmaxKernels;
mod index;
mod loss;
mod matmul;
mod norm;
mod optim;
mod shape;

pub use index::IndexKernels;
pub use loss::LossKernels;
pub use matmul::MatmulKernels;
pub use norm::{NormGradParts, NormKernels};
pub use optim::OptimKernels;
pub use shape::ShapeKernels;
mod attention;
mod conv;
mod mask;

pub use attention::{AttentionGrads, AttentionKernels};
pub use conv::{BatchNormGrads, ChannelStats, ConvGrads, ConvKernels};
pub use mask::MaskKernels;

/// Every kernel family: what a device needs to run the typed ops, layers
/// and optimizers. Implemented by [`Cpu`] and, with the cargo feature
/// `cuda`, by `crate::cuda::CudaDevice`.
pub trait Backend:
    Device
    + ElementwiseKernels
    + ReduceKernels
    + SoftmaxKernels
    + NormKernels
    + IndexKernels
    + LossKernels
    + MatmulKernels
    + AttentionKernels
    + ShapeKernels
    + OptimKernels
    + MaskKernels
    + ConvKernels
{
}

impl<D> Backend for D where
    D: Device
        + ElementwiseKernels
        + ReduceKernels
        + SoftmaxKernels
        + NormKernels
        + IndexKernels
        + LossKernels
        + MatmulKernels
        + AttentionKernels
        + ShapeKernels
        + OptimKernels
        + MaskKernels
        + ConvKernels
{
}
