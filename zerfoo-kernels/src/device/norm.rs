//! Layer norm and RMS norms over the last axis on a device
//! ([`crate::cpu::norm`]), with their backward.

use super::{Cpu, Device, DeviceError};
use crate::cpu::norm::{NormKind, NormStats};
use crate::{FloatDtype, Layout, Real};

/// The gradients of a normalization: input, weight (if any), bias (if any).
pub type NormGradParts<S> = (S, Option<S>, Option<S>);

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

    /// The gradients of input, weight and bias.
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
    ) -> Result<NormGradParts<Self::Storage<E>>, DeviceError>;

    /// [`norm_backward`](Self::norm_backward) with the input gradient added
    /// into `acc` (the input's gradient so far), with the bits of adding
    /// it there by [`add_assign`](super::ElementwiseKernels::add_assign);
    /// returns the weight and bias gradients. This default runs the two
    /// steps; the CPU does it in the backward's own pass.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn norm_backward_add<E: FloatDtype>(
        &self,
        kind: NormKind,
        x: &Self::Storage<E>,
        lx: &Layout,
        weight: Option<(&Self::Storage<E>, &Layout)>,
        has_bias: bool,
        stats: &Self::NormStats<E::Acc>,
        grad_y: &Self::Storage<E>,
        acc: &mut Self::Storage<E>,
    ) -> Result<(Option<Self::Storage<E>>, Option<Self::Storage<E>>), DeviceError>
    where
        Self: super::ElementwiseKernels,
    {
        let (gx, gw, gb) = self.norm_backward(kind, x, lx, weight, has_bias, stats, grad_y)?;
        self.add_assign(acc, &gx)?;
        Ok((gw, gb))
    }
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
        let w = weight.map(|(s, l)| (&s[..], l));
        let b = bias.map(|(s, l)| (&s[..], l));
        Ok(crate::cpu::norm::norm_forward(kind, x, lx, w, b, eps))
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
    ) -> Result<NormGradParts<Vec<E>>, DeviceError> {
        let w = weight.map(|(s, l)| (&s[..], l));
        let g = crate::cpu::norm::norm_backward(kind, x, lx, w, has_bias, stats, grad_y);
        Ok((g.x, g.weight, g.bias))
    }

    fn norm_backward_add<E: FloatDtype>(
        &self,
        kind: NormKind,
        x: &Vec<E>,
        lx: &Layout,
        weight: Option<(&Vec<E>, &Layout)>,
        has_bias: bool,
        stats: &Vec<NormStats<E::Acc>>,
        grad_y: &Vec<E>,
        acc: &mut Vec<E>,
    ) -> Result<(Option<Vec<E>>, Option<Vec<E>>), DeviceError> {
        let w = weight.map(|(s, l)| (&s[..], l));
        Ok(crate::cpu::norm::norm_backward_add(
            kind, x, lx, w, has_bias, stats, grad_y, acc,
        ))
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
        ) -> Result<NormGradParts<CudaBuffer<E>>, DeviceError> {
            let g = k::norm_backward(kind, x, lx, weight, has_bias, stats, grad_y)?;
            Ok((g.x, g.weight, g.bias))
        }
    }
}
