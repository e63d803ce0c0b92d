//! Shape kernels on a device ([`crate::cpu::shape`]): concatenation along an
//! axis, and adding a gradient into a slice of a buffer (the backward of
//! narrow and split).

use super::{Cpu, Device, DeviceError};
use crate::cpu::profile;
use crate::{FloatDtype, Layout};

/// Shape kernels.
pub trait ShapeKernels: Device {
    /// The parts (any layouts, equal except along `axis`) joined along
    /// `axis`, contiguous.
    fn concat<E: FloatDtype>(
        &self,
        parts: &[(&Self::Storage<E>, &Layout)],
        axis: usize,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// Adds the contiguous `src` (shaped like `dims` with `len` along
    /// `axis`) into `dst[.., start..start + len, ..]` (contiguous, `dims`).
    #[allow(clippy::too_many_arguments)]
    fn add_narrow_into<E: FloatDtype>(
        &self,
        dst: &mut Self::Storage<E>,
        dims: &[usize],
        axis: usize,
        start: usize,
        len: usize,
        src: &Self::Storage<E>,
    ) -> Result<(), DeviceError>;
}

impl ShapeKernels for Cpu {
    fn concat<E: FloatDtype>(
        &self,
        parts: &[(&Vec<E>, &Layout)],
        axis: usize,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("shape/concat", E::DTYPE),
            || {
                let p: Vec<(&[E], &Layout)> = parts.iter().map(|(s, l)| (&s[..], *l)).collect();
                Ok(crate::cpu::shape::concat(&p, axis))
            },
        )
    }

    fn add_narrow_into<E: FloatDtype>(
        &self,
        dst: &mut Vec<E>,
        dims: &[usize],
        axis: usize,
        start: usize,
        len: usize,
        src: &Vec<E>,
    ) -> Result<(), DeviceError> {
        profile::time(
            || profile::name("shape/add_narrow_into", E::DTYPE),
            || {
                crate::cpu::shape::add_narrow_into(dst, dims, axis, start, len, src);
                Ok(())
            },
        )
    }
}

#[cfg(feature = "cuda")]
mod cuda_impl {
    use super::*;
    use crate::cuda::ops::shape as k;
    use crate::cuda::{CudaBuffer, CudaDevice};

    impl ShapeKernels for CudaDevice {
        fn concat<E: FloatDtype>(
            &self,
            parts: &[(&CudaBuffer<E>, &Layout)],
            axis: usize,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::concat(parts, axis)
        }

        fn add_narrow_into<E: FloatDtype>(
            &self,
            dst: &mut CudaBuffer<E>,
            dims: &[usize],
            axis: usize,
            start: usize,
            len: usize,
            src: &CudaBuffer<E>,
        ) -> Result<(), DeviceError> {
            k::add_narrow_into(dst, dims, axis, start, len, src)
        }
    }
}
