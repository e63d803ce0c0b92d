//! 2-D convolution, pooling and batch normalization on a device
//! ([`crate::cpu::conv`] on the host, [`crate::cuda::ops::conv`] on a GPU),
//! with their backward.

use super::{Cpu, Device, DeviceError};
use crate::cpu::conv::{AvgDivisor, Window2d};
use crate::cpu::profile;
use crate::{FloatDtype, Layout};

/// The three gradients of a convolution, in a device's storage (`Vec<E>`
/// on the CPU, a device buffer on a GPU).
#[derive(Clone, Debug)]
pub struct ConvGrads<S> {
    /// Input gradient, `[N, C, H, W]` contiguous.
    pub x: S,
    /// Weight gradient, `[O, C / groups, KH, KW]` contiguous.
    pub weight: S,
    /// Bias gradient `[O]` (when asked for).
    pub bias: Option<S>,
}

/// Per-channel statistics of a batch norm in the compute type, in a
/// device's storage (`Vec<A>` on the CPU, a device buffer on a GPU).
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelStats<S> {
    /// The mean over `(N, H, W)` (the running mean in eval mode).
    pub mean: S,
    /// The biased variance over `(N, H, W)` (the running variance in eval mode).
    pub var: S,
    /// `1 / sqrt(var + eps)`.
    pub rstd: S,
}

/// The three gradients of a batch norm, in a device's storage.
#[derive(Clone, Debug)]
pub struct BatchNormGrads<S> {
    /// Input gradient, `[N, C, H, W]` contiguous.
    pub x: S,
    /// Weight gradient `[C]`: `Σ gy * xhat`.
    pub weight: S,
    /// Bias gradient `[C]`: `Σ gy`.
    pub bias: S,
}

/// Convolution, pooling and batch-norm kernels; outputs are contiguous.
pub trait ConvKernels: Device {
    /// Where each max-pooling output came from (saved for the backward).
    type PoolArgmax: Send + Sync + 'static;

    /// PyTorch's `F.conv2d` (cross-correlation): `x` `[N, C, H, W]`, `w`
    /// `[O, C / groups, KH, KW]`, `bias` `[O]`, any layouts.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_forward<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        w: &Self::Storage<E>,
        lw: &Layout,
        bias: Option<(&Self::Storage<E>, &Layout)>,
        groups: usize,
        win: &Window2d,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// The gradients of [`ConvKernels::conv2d_forward`] from the contiguous
    /// output gradient `gy`.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        w: &Self::Storage<E>,
        lw: &Layout,
        with_bias: bool,
        groups: usize,
        win: &Window2d,
        gy: &Self::Storage<E>,
    ) -> Result<ConvGrads<Self::Storage<E>>, DeviceError>;

    /// Max pooling over the windows `rows` x `cols` (`[start, end)` ranges
    /// per output row and column); padding never wins.
    #[allow(clippy::type_complexity)]
    fn max_pool2d_forward<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        rows: &[(usize, usize)],
        cols: &[(usize, usize)],
    ) -> Result<(Self::Storage<E>, Self::PoolArgmax), DeviceError>;

    /// The input gradient (`[N, C, H, W]` = `dims`) of max pooling: each
    /// output's gradient to the position it came from.
    fn max_pool2d_backward<E: FloatDtype>(
        &self,
        gy: &Self::Storage<E>,
        argmax: &Self::PoolArgmax,
        dims: [usize; 4],
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// Average pooling over the windows, divided as `divisor` says.
    fn avg_pool2d_forward<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        rows: &[(usize, usize)],
        cols: &[(usize, usize)],
        divisor: AvgDivisor,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// The input gradient (`[N, C, H, W]` = `dims`) of average pooling.
    fn avg_pool2d_backward<E: FloatDtype>(
        &self,
        gy: &Self::Storage<E>,
        dims: [usize; 4],
        rows: &[(usize, usize)],
        cols: &[(usize, usize)],
        divisor: AvgDivisor,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// The batch statistics of `x` (`[N, C, H, W]`, any layout) per
    /// channel: mean and biased variance over `(N, H, W)`, and
    /// `1 / sqrt(var + eps)`, in the compute type.
    fn batch_norm_stats<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        eps: f64,
    ) -> Result<ChannelStats<Self::Storage<E::Acc>>, DeviceError>;

    /// Statistics from running mean and variance vectors (`[C]`, any
    /// layout), for eval mode.
    fn running_stats<E: FloatDtype>(
        &self,
        mean: (&Self::Storage<E>, &Layout),
        var: (&Self::Storage<E>, &Layout),
        eps: f64,
    ) -> Result<ChannelStats<Self::Storage<E::Acc>>, DeviceError>;

    /// `(x - mean) * rstd * weight + bias` per channel, in the compute type,
    /// rounded once; `weight` and `bias` are `[C]` or absent.
    fn batch_norm_apply<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        stats: &ChannelStats<Self::Storage<E::Acc>>,
        weight: Option<(&Self::Storage<E>, &Layout)>,
        bias: Option<(&Self::Storage<E>, &Layout)>,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// The gradients of [`ConvKernels::batch_norm_apply`] from the
    /// contiguous output gradient `gy`; `training`: the statistics came from
    /// [`ConvKernels::batch_norm_stats`] and depend on `x`.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        stats: &ChannelStats<Self::Storage<E::Acc>>,
        weight: Option<(&Self::Storage<E>, &Layout)>,
        gy: &Self::Storage<E>,
        training: bool,
    ) -> Result<BatchNormGrads<Self::Storage<E>>, DeviceError>;
}

impl ConvKernels for Cpu {
    type PoolArgmax = Vec<usize>;

    fn conv2d_forward<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        w: &Vec<E>,
        lw: &Layout,
        bias: Option<(&Vec<E>, &Layout)>,
        groups: usize,
        win: &Window2d,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("conv/conv2d_forward", E::DTYPE),
            || {
                let bias = bias.map(|(b, lb)| (b.as_slice(), lb));
                Ok(crate::cpu::conv::conv2d_forward(
                    x, lx, w, lw, bias, groups, win,
                ))
            },
        )
    }

    fn conv2d_backward<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        w: &Vec<E>,
        lw: &Layout,
        with_bias: bool,
        groups: usize,
        win: &Window2d,
        gy: &Vec<E>,
    ) -> Result<ConvGrads<Vec<E>>, DeviceError> {
        profile::time(
            || profile::name("conv/conv2d_backward", E::DTYPE),
            || {
                Ok(crate::cpu::conv::conv2d_backward(
                    x, lx, w, lw, with_bias, groups, win, gy,
                ))
            },
        )
    }

    fn max_pool2d_forward<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        rows: &[(usize, usize)],
        cols: &[(usize, usize)],
    ) -> Result<(Vec<E>, Vec<usize>), DeviceError> {
        profile::time(
            || profile::name("conv/max_pool2d_forward", E::DTYPE),
            || Ok(crate::cpu::conv::max_pool2d_forward(x, lx, rows, cols)),
        )
    }

    fn max_pool2d_backward<E: FloatDtype>(
        &self,
        gy: &Vec<E>,
        argmax: &Vec<usize>,
        dims: [usize; 4],
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("conv/max_pool2d_backward", E::DTYPE),
            || Ok(crate::cpu::conv::max_pool2d_backward(gy, argmax, dims)),
        )
    }

    fn avg_pool2d_forward<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        rows: &[(usize, usize)],
        cols: &[(usize, usize)],
        divisor: AvgDivisor,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("conv/avg_pool2d_forward", E::DTYPE),
            || {
                Ok(crate::cpu::conv::avg_pool2d_forward(
                    x, lx, rows, cols, divisor,
                ))
            },
        )
    }

    fn avg_pool2d_backward<E: FloatDtype>(
        &self,
        gy: &Vec<E>,
        dims: [usize; 4],
        rows: &[(usize, usize)],
        cols: &[(usize, usize)],
        divisor: AvgDivisor,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("conv/avg_pool2d_backward", E::DTYPE),
            || {
                Ok(crate::cpu::conv::avg_pool2d_backward(
                    gy, dims, rows, cols, divisor,
                ))
            },
        )
    }

    fn batch_norm_stats<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        eps: f64,
    ) -> Result<ChannelStats<Vec<E::Acc>>, DeviceError> {
        profile::time(
            || profile::name("conv/batch_norm_stats", E::DTYPE),
            || Ok(crate::cpu::conv::batch_norm_stats(x, lx, eps)),
        )
    }

    fn running_stats<E: FloatDtype>(
        &self,
        mean: (&Vec<E>, &Layout),
        var: (&Vec<E>, &Layout),
        eps: f64,
    ) -> Result<ChannelStats<Vec<E::Acc>>, DeviceError> {
        profile::time(
            || profile::name("conv/running_stats", E::DTYPE),
            || {
                Ok(crate::cpu::conv::running_stats(
                    (mean.0.as_slice(), mean.1),
                    (var.0.as_slice(), var.1),
                    eps,
                ))
            },
        )
    }

    fn batch_norm_apply<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        stats: &ChannelStats<Vec<E::Acc>>,
        weight: Option<(&Vec<E>, &Layout)>,
        bias: Option<(&Vec<E>, &Layout)>,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("conv/batch_norm_apply", E::DTYPE),
            || {
                let weight = weight.map(|(w, l)| (w.as_slice(), l));
                let bias = bias.map(|(b, l)| (b.as_slice(), l));
                Ok(crate::cpu::conv::batch_norm_apply(
                    x, lx, stats, weight, bias,
                ))
            },
        )
    }

    fn batch_norm_backward<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        stats: &ChannelStats<Vec<E::Acc>>,
        weight: Option<(&Vec<E>, &Layout)>,
        gy: &Vec<E>,
        training: bool,
    ) -> Result<BatchNormGrads<Vec<E>>, DeviceError> {
        profile::time(
            || profile::name("conv/batch_norm_backward", E::DTYPE),
            || {
                let weight = weight.map(|(w, l)| (w.as_slice(), l));
                Ok(crate::cpu::conv::batch_norm_backward(
                    x, lx, stats, weight, gy, training,
                ))
            },
        )
    }
}

#[cfg(feature = "cuda")]
mod cuda_impl {
    use super::*;
    use crate::cuda::ops::conv as k;
    use crate::cuda::{CudaBuffer, CudaDevice};

    impl ConvKernels for CudaDevice {
        type PoolArgmax = CudaBuffer<u32>;

        fn conv2d_forward<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            w: &CudaBuffer<E>,
            lw: &Layout,
            bias: Option<(&CudaBuffer<E>, &Layout)>,
            groups: usize,
            win: &Window2d,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::conv2d_forward(x, lx, w, lw, bias, groups, win)
        }

        fn conv2d_backward<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            w: &CudaBuffer<E>,
            lw: &Layout,
            with_bias: bool,
            groups: usize,
            win: &Window2d,
            gy: &CudaBuffer<E>,
        ) -> Result<ConvGrads<CudaBuffer<E>>, DeviceError> {
            k::conv2d_backward(x, lx, w, lw, with_bias, groups, win, gy)
        }

        fn max_pool2d_forward<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            rows: &[(usize, usize)],
            cols: &[(usize, usize)],
        ) -> Result<(CudaBuffer<E>, CudaBuffer<u32>), DeviceError> {
            k::max_pool2d_forward(x, lx, rows, cols)
        }

        fn max_pool2d_backward<E: FloatDtype>(
            &self,
            gy: &CudaBuffer<E>,
            argmax: &CudaBuffer<u32>,
            dims: [usize; 4],
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::max_pool2d_backward(gy, argmax, dims)
        }

        fn avg_pool2d_forward<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            rows: &[(usize, usize)],
            cols: &[(usize, usize)],
            divisor: AvgDivisor,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::avg_pool2d_forward(x, lx, rows, cols, divisor)
        }

        fn avg_pool2d_backward<E: FloatDtype>(
            &self,
            gy: &CudaBuffer<E>,
            dims: [usize; 4],
            rows: &[(usize, usize)],
            cols: &[(usize, usize)],
            divisor: AvgDivisor,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::avg_pool2d_backward(gy, dims, rows, cols, divisor)
        }

        fn batch_norm_stats<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            eps: f64,
        ) -> Result<ChannelStats<CudaBuffer<E::Acc>>, DeviceError> {
            k::batch_norm_stats(x, lx, eps)
        }

        fn running_stats<E: FloatDtype>(
            &self,
            mean: (&CudaBuffer<E>, &Layout),
            var: (&CudaBuffer<E>, &Layout),
            eps: f64,
        ) -> Result<ChannelStats<CudaBuffer<E::Acc>>, DeviceError> {
            k::running_stats(mean, var, eps)
        }

        fn batch_norm_apply<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            stats: &ChannelStats<CudaBuffer<E::Acc>>,
            weight: Option<(&CudaBuffer<E>, &Layout)>,
            bias: Option<(&CudaBuffer<E>, &Layout)>,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::batch_norm_apply(x, lx, stats, weight, bias)
        }

        fn batch_norm_backward<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            stats: &ChannelStats<CudaBuffer<E::Acc>>,
            weight: Option<(&CudaBuffer<E>, &Layout)>,
            gy: &CudaBuffer<E>,
            training: bool,
        ) -> Result<BatchNormGrads<CudaBuffer<E>>, DeviceError> {
            k::batch_norm_backward(x, lx, stats, weight, gy, training)
        }
    }
}
