//! Masks, triangles, dropout and rotary embedding on a device
//! ([`crate::cpu::mask`], [`crate::cpu::rotary`]). Masks are `bool`
//! storage on the same device, read in any layout of the output's shape
//! (stride 0 broadcasts).

use super::{Cpu, Device, DeviceError};
use crate::cpu::profile;
use crate::{FloatDtype, Layout};

/// Mask, dropout and rotary kernels; outputs are contiguous.
pub trait MaskKernels: Device {
    /// `mask ? a : b` elementwise.
    #[allow(clippy::too_many_arguments)]
    fn where_select<E: FloatDtype>(
        &self,
        mask: &Self::Storage<bool>,
        lm: &Layout,
        a: &Self::Storage<E>,
        la: &Layout,
        b: &Self::Storage<E>,
        lb: &Layout,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// `g` where `mask == keep_where`, 0 elsewhere (the gradient of one
    /// branch of a select or fill); `g` contiguous.
    fn mask_grad<E: FloatDtype>(
        &self,
        mask: &Self::Storage<bool>,
        lm: &Layout,
        g: &Self::Storage<E>,
        keep_where: bool,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// `value` where the mask is set, `x` elsewhere.
    fn masked_fill<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        mask: &Self::Storage<bool>,
        lm: &Layout,
        value: E,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// The lower (or upper) triangle over the last two axes from
    /// `diagonal`, zeros elsewhere.
    fn tri<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        lower: bool,
        diagonal: i64,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// Dropout with the counter-based mask of stream `seed` (element `i`
    /// kept iff [`crate::rng::uniform`]`(seed, i) >= p`), kept values scaled.
    fn dropout<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        seed: u64,
        p: f64,
        scale: f64,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// Rotary position embedding over the last axis of `[.., T, hd]`
    /// (positions from `offset`); `inverse` rotates back (the backward).
    fn rope<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        base: f64,
        offset: usize,
        inverse: bool,
    ) -> Result<Self::Storage<E>, DeviceError>;
}

impl MaskKernels for Cpu {
    fn where_select<E: FloatDtype>(
        &self,
        mask: &Vec<bool>,
        lm: &Layout,
        a: &Vec<E>,
        la: &Layout,
        b: &Vec<E>,
        lb: &Layout,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("mask/where_select", E::DTYPE),
            || Ok(crate::cpu::mask::where_select(mask, lm, a, la, b, lb)),
        )
    }

    fn mask_grad<E: FloatDtype>(
        &self,
        mask: &Vec<bool>,
        lm: &Layout,
        g: &Vec<E>,
        keep_where: bool,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("mask/mask_grad", E::DTYPE),
            || Ok(crate::cpu::mask::mask_grad(mask, lm, g, keep_where)),
        )
    }

    fn masked_fill<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        mask: &Vec<bool>,
        lm: &Layout,
        value: E,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("mask/masked_fill", E::DTYPE),
            || Ok(crate::cpu::mask::masked_fill(x, lx, mask, lm, value)),
        )
    }

    fn tri<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        lower: bool,
        diagonal: i64,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("mask/tri", E::DTYPE),
            || Ok(crate::cpu::mask::tri(x, lx, lower, diagonal)),
        )
    }

    fn dropout<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        seed: u64,
        p: f64,
        scale: f64,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("mask/dropout", E::DTYPE),
            || {
                let keep = crate::cpu::mask::dropout_keep(seed, p);
                Ok(crate::cpu::mask::dropout(x, lx, keep, scale))
            },
        )
    }

    fn rope<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        base: f64,
        offset: usize,
        inverse: bool,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("mask/rope", E::DTYPE),
            || Ok(crate::cpu::rotary::rope(x, lx, base, offset, inverse)),
        )
    }
}

#[cfg(feature = "cuda")]
mod cuda_impl {
    use super::*;
    use crate::cuda::ops::mask as k;
    use crate::cuda::{CudaBuffer, CudaDevice};

    impl MaskKernels for CudaDevice {
        fn where_select<E: FloatDtype>(
            &self,
            mask: &CudaBuffer<bool>,
            lm: &Layout,
            a: &CudaBuffer<E>,
            la: &Layout,
            b: &CudaBuffer<E>,
            lb: &Layout,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::where_select(mask, lm, a, la, b, lb)
        }

        fn mask_grad<E: FloatDtype>(
            &self,
            mask: &CudaBuffer<bool>,
            lm: &Layout,
            g: &CudaBuffer<E>,
            keep_where: bool,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::mask_grad(mask, lm, g, keep_where)
        }

        fn masked_fill<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            mask: &CudaBuffer<bool>,
            lm: &Layout,
            value: E,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::masked_fill(x, lx, mask, lm, value)
        }

        fn tri<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            lower: bool,
            diagonal: i64,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::tri(x, lx, lower, diagonal)
        }

        fn dropout<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            seed: u64,
            p: f64,
            scale: f64,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::dropout(x, lx, seed, p, scale)
        }

        fn rope<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            base: f64,
            offset: usize,
            inverse: bool,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            crate::cuda::ops::rotary::rope(x, lx, base, offset, inverse)
        }
    }
}
