//! Layer norm and RMS norms over the last axis on a device
//! ([`crate::cpu::norm`]), with their backward.

use super::{Cpu, Device, DeviceError};
use crate::cpu::norm::{NormKind, NormStats};
use crate::cpu::profile;
use crate::{FloatDtype, Layout, Real};

/// The gradients of a normalization: input (unless it was added into the
/// caller's), weight (if any), bias (if any).
pub type NormGradParts<S> = (Option<S>, Option<S>, Option<S>);

/// Normalization kernels.
pub trait NormKernels: Device {
    /// Per-row statistics saved by the forward pass, in the compute type `A`.
    type NormStats<A: Real>: Send + Sync + 'static;

    /// The normalized (and scaled, shifted) rows, and their statistics.
    #[allow(clippy::type_complexity)]
    fn norm_forward<E: FloatDtype>(
        &self,
        kind: NormKind,
        x: &Self::Storage<E>,
        lx: &Layout,
        weight: Option<(&Self::Storage<E>, &Layout)>,
        bias: Option<(&Self::Storage<E>, &Layout)>,
        eps: f64,
    ) -> Result<(Self::Storage<E>, Self::NormStats<E::Acc>), DeviceError>;

    /// The gradients of input, weight and bias. With `into` (the input's
    /// gradient so far) the input's is added there instead of returned
    /// (`None`), with the bits of adding it by
    /// [`add_assign`](super::ElementwiseKernels::add_assign): the CPU in the
    /// backward's own pass, other devices as a second step.
    #[allow(clippy::too_many_arguments)]
    fn norm_backward<E: FloatDtype>(
        &self,
        kind: NormKind,
        x: &Self::Storage<E>,
        lx: &Layout,
        weight: Option<(&Self::Storage<E>, &Layout)>,
        has_bias: bool,
        stats: &Self::NormStats<E::Acc>,
        grad_y: &Self::Storage<E>,
        into: Option<&mut Self::Storage<E>>,
    ) -> Result<NormGradParts<Self::Storage<E>>, DeviceError>;
}

impl NormKernels for Cpu {
    type NormStats<A: Real> = Vec<NormStats<A>>;

    fn norm_forward<E: FloatDtype>(
        &self,
        kind: NormKind,
        x: &Vec<E>,
        lx: &Layout,
        weight: Option<(&Vec<E>, &Layout)>,
        bias: Option<(&Vec<E>, &Layout)>,
        eps: f64,
    ) -> Result<(Vec<E>, Vec<NormStats<E::Acc>>), DeviceError> {
        profile::time(
            || profile::name("norm/forward", E::DTYPE),
            || {
                let w = weight.map(|(s, l)| (&s[..], l));
                let b = bias.map(|(s, l)| (&s[..], l));
                Ok(crate::cpu::norm::norm_forward(kind, x, lx, w, b, eps))
            },
        )
    }

    fn norm_backward<E: FloatDtype>(
        &self,
        kind: NormKind,
        x: &Vec<E>,
        lx: &Layout,
        weight: Option<(&Vec<E>, &Layout)>,
        has_bias: bool,
        stats: &Vec<NormStats<E::Acc>>,
        grad_y: &Vec<E>,
        into: Option<&mut Vec<E>>,
    ) -> Result<NormGradParts<Vec<E>>, DeviceError> {
        profile::time(
            || profile::name("norm/backward", E::DTYPE),
            || {
                let w = weight.map(|(s, l)| (&s[..], l));
                let into = into.map(|v| &mut v[..]);
                let g =
                    crate::cpu::norm::norm_backward(kind, x, lx, w, has_bias, stats, grad_y, into);
                Ok((g.x, g.weight, g.bias))
            },
        )
    }
}

#[cfg(feature = "cuda")]
mod cuda_impl {
    use super::*;
    use crate::cuda::ops::norm::{self as k, CudaNormStats};
    use crate::cuda::{CudaBuffer, CudaDevice};

    impl NormKernels for CudaDevice {
        type NormStats<A: Real> = CudaNormStats<A>;

        fn norm_forward<E: FloatDtype>(
            &self,
            kind: NormKind,
            x: &CudaBuffer<E>,
            lx: &Layout,
            weight: Option<(&CudaBuffer<E>, &Layout)>,
            bias: Option<(&CudaBuffer<E>, &Layout)>,
            eps: f64,
        ) -> Result<(CudaBuffer<E>, CudaNormStats<E::Acc>), DeviceError> {
            k::norm_forward(kind, x, lx, weight, bias, eps)
        }

        fn norm_backward<E: FloatDtype>(
            &self,
            kind: NormKind,
            x: &CudaBuffer<E>,
            lx: &Layout,
            weight: Option<(&CudaBuffer<E>, &Layout)>,
            has_bias: bool,
            stats: &CudaNormStats<E::Acc>,
            grad_y: &CudaBuffer<E>,
            into: Option<&mut CudaBuffer<E>>,
        ) -> Result<NormGradParts<CudaBuffer<E>>, DeviceError> {
            let g = k::norm_backward(kind, x, lx, weight, has_bias, stats, grad_y)?;
            let x = match into {
                Some(acc) => {
                    crate::device::ElementwiseKernels::add_assign(self, acc, &g.x)?;
                    None
                }
                None => Some(g.x),
            };
            Ok((x, g.weight, g.bias))
        }
    }
}
