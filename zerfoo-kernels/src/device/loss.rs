//! Losses on a device ([`crate::cpu::loss`]): cross-entropy over the last
//! axis, with label smoothing and ignored rows, the squared error, and
//! binary cross-entropy on logits.

use super::{Cpu, Device, DeviceError};
use crate::cpu::loss::RowStats;
use crate::cpu::profile;
use crate::{FloatDtype, Layout, Real};

/// Loss kernels.
pub trait LossKernels: Device {
    /// Class targets in this device's memory (one per row; [`IGNORED`](crate::cpu::loss::IGNORED) rows
    /// are skipped).
    type Targets: Send + Sync + 'static;
    /// Per-row statistics saved by the cross-entropy forward pass.
    type CeStats<A: Real>: Send + Sync + 'static;

    /// Uploads targets, each `< classes` or [`IGNORED`](crate::cpu::loss::IGNORED).
    fn targets(&self, rows: Vec<usize>) -> Result<Self::Targets, DeviceError>;

    /// The sum over non-ignored rows of the rows' cross-entropy (in the
    /// compute type, returned to the host), and the row statistics.
    #[allow(clippy::type_complexity)]
    fn cross_entropy_forward<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        targets: &Self::Targets,
        eps: f64,
    ) -> Result<(E::Acc, Self::CeStats<E::Acc>), DeviceError>;

    /// The logits' gradient times `scale`, contiguous.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_backward<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        targets: &Self::Targets,
        stats: &Self::CeStats<E::Acc>,
        eps: f64,
        scale: E::Acc,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// `Σ (a - b)²` in the compute type, returned to the host.
    fn mse_forward<E: FloatDtype>(
        &self,
        a: &Self::Storage<E>,
        la: &Layout,
        b: &Self::Storage<E>,
        lb: &Layout,
    ) -> Result<E::Acc, DeviceError>;

    /// The gradients `±2 scale (a - b)` of both operands, contiguous.
    #[allow(clippy::type_complexity)]
    fn mse_backward<E: FloatDtype>(
        &self,
        a: &Self::Storage<E>,
        la: &Layout,
        b: &Self::Storage<E>,
        lb: &Layout,
        scale: E::Acc,
    ) -> Result<(Self::Storage<E>, Self::Storage<E>), DeviceError>;

    /// `Σ` binary cross-entropy of logits `x` against targets `y`, with an
    /// optional per-class (last axis) positive weight in the compute type;
    /// in the compute type, returned to the host.
    fn bce_logits_forward<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        y: &Self::Storage<E>,
        ly: &Layout,
        pos_weight: Option<&Self::Storage<E::Acc>>,
    ) -> Result<E::Acc, DeviceError>;

    /// The gradients of logits, targets and (if given) the positive weight,
    /// times `scale`.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn bce_logits_backward<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        y: &Self::Storage<E>,
        ly: &Layout,
        pos_weight: Option<&Self::Storage<E::Acc>>,
        scale: E::Acc,
    ) -> Result<(Self::Storage<E>, Self::Storage<E>, Option<Self::Storage<E>>), DeviceError>;
}

impl LossKernels for Cpu {
    type Targets = Vec<usize>;
    type CeStats<A: Real> = Vec<RowStats<A>>;

    fn targets(&self, rows: Vec<usize>) -> Result<Vec<usize>, DeviceError> {
        Ok(rows)
    }

    fn cross_entropy_forward<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        targets: &Vec<usize>,
        eps: f64,
    ) -> Result<(E::Acc, Vec<RowStats<E::Acc>>), DeviceError> {
        profile::time(
            || profile::name("loss/cross_entropy_forward", E::DTYPE),
            || Ok(crate::cpu::loss::cross_entropy_forward(x, lx, targets, eps)),
        )
    }

    fn cross_entropy_backward<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        targets: &Vec<usize>,
        stats: &Vec<RowStats<E::Acc>>,
        eps: f64,
        scale: E::Acc,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("loss/cross_entropy_backward", E::DTYPE),
            || {
                Ok(crate::cpu::loss::cross_entropy_backward(
                    x, lx, targets, stats, eps, scale,
                ))
            },
        )
    }

    fn mse_forward<E: FloatDtype>(
        &self,
        a: &Vec<E>,
        la: &Layout,
        b: &Vec<E>,
        lb: &Layout,
    ) -> Result<E::Acc, DeviceError> {
        profile::time(
            || profile::name("loss/mse_forward", E::DTYPE),
            || Ok(crate::cpu::loss::mse_forward(a, la, b, lb)),
        )
    }

    fn mse_backward<E: FloatDtype>(
        &self,
        a: &Vec<E>,
        la: &Layout,
        b: &Vec<E>,
        lb: &Layout,
        scale: E::Acc,
    ) -> Result<(Vec<E>, Vec<E>), DeviceError> {
        profile::time(
            || profile::name("loss/mse_backward", E::DTYPE),
            || Ok(crate::cpu::loss::mse_backward(a, la, b, lb, scale)),
        )
    }

    fn bce_logits_forward<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        y: &Vec<E>,
        ly: &Layout,
        pos_weight: Option<&Vec<E::Acc>>,
    ) -> Result<E::Acc, DeviceError> {
        profile::time(
            || profile::name("loss/bce_logits_forward", E::DTYPE),
            || {
                let pw = pos_weight.map(|p| &p[..]);
                Ok(crate::cpu::loss::bce_logits_forward(x, lx, y, ly, pw))
            },
        )
    }

    fn bce_logits_backward<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        y: &Vec<E>,
        ly: &Layout,
        pos_weight: Option<&Vec<E::Acc>>,
        scale: E::Acc,
    ) -> Result<(Vec<E>, Vec<E>, Option<Vec<E>>), DeviceError> {
        profile::time(
            || profile::name("loss/bce_logits_backward", E::DTYPE),
            || {
                let pw = pos_weight.map(|p| &p[..]);
                Ok(crate::cpu::loss::bce_logits_backward(
                    x, lx, y, ly, pw, scale,
                ))
            },
        )
    }
}

#[cfg(feature = "cuda")]
mod cuda_impl {
    use super::*;
    use crate::cpu::loss::IGNORED;
    use crate::cuda::ops::loss::{self as k, CudaRowStats};
    use crate::cuda::{CudaBuffer, CudaDevice};

    impl LossKernels for CudaDevice {
        type Targets = CudaBuffer<u32>;
        type CeStats<A: Real> = CudaRowStats<A>;

        fn targets(&self, rows: Vec<usize>) -> Result<CudaBuffer<u32>, DeviceError> {
            let t: Vec<u32> = rows
                .iter()
                .map(|&r| {
                    if r == IGNORED {
                        Ok(k::IGNORED)
                    } else {
                        u32::try_from(r)
                            .ok()
                            .filter(|&v| v != k::IGNORED)
                            .ok_or_else(|| {
                                DeviceError::new(
                                    "cross_entropy targets",
                                    format!("class {r} does not fit the GPU's u32 targets"),
                                )
                            })
                    }
                })
                .collect::<Result<_, _>>()?;
            self.to_device(&t)
        }

        fn cross_entropy_forward<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            targets: &CudaBuffer<u32>,
            eps: f64,
        ) -> Result<(E::Acc, CudaRowStats<E::Acc>), DeviceError> {
            let (sum, stats) = k::cross_entropy_forward(x, lx, targets, eps)?;
            Ok((sum.to_host()?[0], stats))
        }

        fn cross_entropy_backward<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            targets: &CudaBuffer<u32>,
            stats: &CudaRowStats<E::Acc>,
            eps: f64,
            scale: E::Acc,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::cross_entropy_backward(x, lx, targets, stats, eps, scale.as_f64())
        }

        fn mse_forward<E: FloatDtype>(
            &self,
            a: &CudaBuffer<E>,
            la: &Layout,
            b: &CudaBuffer<E>,
            lb: &Layout,
        ) -> Result<E::Acc, DeviceError> {
            Ok(k::mse_forward(a, la, b, lb)?.to_host()?[0])
        }

        fn mse_backward<E: FloatDtype>(
            &self,
            a: &CudaBuffer<E>,
            la: &Layout,
            b: &CudaBuffer<E>,
            lb: &Layout,
            scale: E::Acc,
        ) -> Result<(CudaBuffer<E>, CudaBuffer<E>), DeviceError> {
            k::mse_backward(a, la, b, lb, scale.as_f64())
        }

        fn bce_logits_forward<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            y: &CudaBuffer<E>,
            ly: &Layout,
            pos_weight: Option<&CudaBuffer<E::Acc>>,
        ) -> Result<E::Acc, DeviceError> {
            Ok(k::bce_logits_forward(x, lx, y, ly, pos_weight)?.to_host()?[0])
        }

        fn bce_logits_backward<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            y: &CudaBuffer<E>,
            ly: &Layout,
            pos_weight: Option<&CudaBuffer<E::Acc>>,
            scale: E::Acc,
        ) -> Result<(CudaBuffer<E>, CudaBuffer<E>, Option<CudaBuffer<E>>), DeviceError> {
            k::bce_logits_backward(x, lx, y, ly, pos_weight, scale.as_f64())
        }
    }
}
