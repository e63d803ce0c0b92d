//! Reductions over chosen axes on a device ([`crate::cpu::reduce`]): scaled
//! sums (sum, mean), max/min, the variance and logsumexp, with their
//! backward, and argmax/argmin.

use num_traits::Zero;

use super::{Cpu, Device, DeviceError};
use crate::cpu::profile;
use crate::{FloatDtype, Layout, Real};

/// Reduction kernels; outputs are contiguous in the kept dims' order.
pub trait ReduceKernels: Device {
    /// How many elements tie for each max/min (saved for the backward).
    type Counts: Send + Sync + 'static;

    /// `scale * sum(x)` over `axes`.
    fn sum_axes<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        axes: &[usize],
        scale: f64,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// `scale * grad_y` spread back over the reduced `axes` of `dims`.
    fn sum_backward<E: FloatDtype>(
        &self,
        grad_y: &Self::Storage<E>,
        dims: &[usize],
        axes: &[usize],
        scale: f64,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// Max (`MAX = true`) or min over `axes`, and how many elements tie.
    fn extreme_axes<E: FloatDtype, const MAX: bool>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        axes: &[usize],
    ) -> Result<(Self::Storage<E>, Self::Counts), DeviceError>;

    /// The gradient of max/min: split evenly among the tied elements.
    fn extreme_backward<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        axes: &[usize],
        y: &Self::Storage<E>,
        counts: &Self::Counts,
        grad_y: &Self::Storage<E>,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// `Σ (x - mean)² / (n - correction)` over `axes`, and the means (in the
    /// compute type) for the backward.
    #[allow(clippy::type_complexity)]
    fn var_axes<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        axes: &[usize],
        correction: usize,
    ) -> Result<(Self::Storage<E>, Self::Storage<E::Acc>), DeviceError>;

    /// The variance's gradient: `2 (x - mean) / (n - correction) * grad_y`.
    #[allow(clippy::too_many_arguments)]
    fn var_backward<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        axes: &[usize],
        means: &Self::Storage<E::Acc>,
        correction: usize,
        grad_y: &Self::Storage<E>,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// `log(sum(exp(x)))` over `axes`, stable for large inputs: the result
    /// rounded to `E`, and the sums in the compute type for the backward.
    #[allow(clippy::type_complexity)]
    fn logsumexp_axes<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        axes: &[usize],
    ) -> Result<(Self::Storage<E>, Self::Storage<E::Acc>), DeviceError>;

    /// The gradient of `logsumexp`: `grad_y * exp(x - lse)`.
    fn logsumexp_backward<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        axes: &[usize],
        lse: &Self::Storage<E::Acc>,
        grad_y: &Self::Storage<E>,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// The position (row-major within the reduced axes) of each block's
    /// maximum (`MAX = true`) or minimum: the first on ties, the first NaN
    /// if there is one (as in PyTorch); 0 for an empty block.
    fn arg_extreme_axes<E: FloatDtype, const MAX: bool>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
        axes: &[usize],
    ) -> Result<Self::Storage<i64>, DeviceError>;
}

impl ReduceKernels for Cpu {
    type Counts = Vec<usize>;

    fn sum_axes<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        axes: &[usize],
        scale: f64,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("reduce/sum_axes", E::DTYPE),
            || {
                let s = E::Acc::of_f64(scale);
                // Leading axes of a contiguous tensor, in order: whole rows at a time.
                let k = axes.len();
                if lx.is_contiguous()
                    && k < lx.rank()
                    && axes.iter().enumerate().all(|(i, &a)| a == i)
                {
                    let rows = lx.shape()[..k].iter().product();
                    let n = lx.shape()[k..].iter().product();
                    return Ok(crate::cpu::reduce::sum_leading_rows(
                        &x[lx.offset..],
                        rows,
                        n,
                        s,
                    ));
                }
                Ok(crate::cpu::reduce::reduce_axes(
                    x,
                    lx,
                    axes,
                    E::Acc::zero(),
                    |a, v: E| a + v.to_acc(),
                    |a, _| E::from_acc(a * s),
                ))
            },
        )
    }

    fn sum_backward<E: FloatDtype>(
        &self,
        grad_y: &Vec<E>,
        dims: &[usize],
        axes: &[usize],
        scale: f64,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("reduce/sum_backward", E::DTYPE),
            || {
                let l = crate::cpu::reduce::expand_layout(dims, axes);
                let s = E::Acc::of_f64(scale);
                Ok(crate::cpu::map(grad_y, &l, |v: E| {
                    E::from_acc(v.to_acc() * s)
                }))
            },
        )
    }

    fn extreme_axes<E: FloatDtype, const MAX: bool>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        axes: &[usize],
    ) -> Result<(Vec<E>, Vec<usize>), DeviceError> {
        profile::time(
            || {
                profile::name(
                    ["reduce/min_axes", "reduce/max_axes"][MAX as usize],
                    E::DTYPE,
                )
            },
            || Ok(crate::cpu::reduce::extreme_axes::<E, MAX>(x, lx, axes)),
        )
    }

    fn extreme_backward<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        axes: &[usize],
        y: &Vec<E>,
        counts: &Vec<usize>,
        grad_y: &Vec<E>,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("reduce/extreme_backward", E::DTYPE),
            || {
                Ok(crate::cpu::reduce::extreme_backward(
                    x, lx, axes, y, counts, grad_y,
                ))
            },
        )
    }

    fn var_axes<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        axes: &[usize],
        correction: usize,
    ) -> Result<(Vec<E>, Vec<E::Acc>), DeviceError> {
        profile::time(
            || profile::name("reduce/var_axes", E::DTYPE),
            || Ok(crate::cpu::reduce::var_axes(x, lx, axes, correction)),
        )
    }

    fn var_backward<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        axes: &[usize],
        means: &Vec<E::Acc>,
        correction: usize,
        grad_y: &Vec<E>,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("reduce/var_backward", E::DTYPE),
            || {
                Ok(crate::cpu::reduce::var_backward(
                    x, lx, axes, means, correction, grad_y,
                ))
            },
        )
    }

    fn logsumexp_axes<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        axes: &[usize],
    ) -> Result<(Vec<E>, Vec<E::Acc>), DeviceError> {
        profile::time(
            || profile::name("reduce/logsumexp_axes", E::DTYPE),
            || {
                let lse = crate::cpu::reduce::logsumexp_axes(x, lx, axes);
                Ok((lse.iter().map(|&v| E::from_acc(v)).collect(), lse))
            },
        )
    }

    fn logsumexp_backward<E: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        axes: &[usize],
        lse: &Vec<E::Acc>,
        grad_y: &Vec<E>,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("reduce/logsumexp_backward", E::DTYPE),
            || {
                Ok(crate::cpu::reduce::logsumexp_backward(
                    x, lx, axes, lse, grad_y,
                ))
            },
        )
    }

    fn arg_extreme_axes<E: FloatDtype, const MAX: bool>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
        axes: &[usize],
    ) -> Result<Vec<i64>, DeviceError> {
        profile::time(
            || {
                profile::name(
                    ["reduce/argmin_axes", "reduce/argmax_axes"][MAX as usize],
                    E::DTYPE,
                )
            },
            || {
                let pos = crate::cpu::reduce::arg_extreme_axes::<E, MAX>(x, lx, axes);
                Ok(pos.into_iter().map(|i| i as i64).collect())
            },
        )
    }
}

#[cfg(feature = "cuda")]
mod cuda_impl {
    use super::*;
    use crate::cuda::ops::reduce as k;
    use crate::cuda::{CudaBuffer, CudaDevice};

    impl ReduceKernels for CudaDevice {
        type Counts = CudaBuffer<u32>;

        fn sum_axes<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            axes: &[usize],
            scale: f64,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::sum_axes(x, lx, axes, scale)
        }

        fn sum_backward<E: FloatDtype>(
            &self,
            grad_y: &CudaBuffer<E>,
            dims: &[usize],
            axes: &[usize],
            scale: f64,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::sum_backward(grad_y, dims, axes, scale)
        }

        fn extreme_axes<E: FloatDtype, const MAX: bool>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            axes: &[usize],
        ) -> Result<(CudaBuffer<E>, CudaBuffer<u32>), DeviceError> {
            k::extreme_axes::<E, MAX>(x, lx, axes)
        }

        fn extreme_backward<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            axes: &[usize],
            y: &CudaBuffer<E>,
            counts: &CudaBuffer<u32>,
            grad_y: &CudaBuffer<E>,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::extreme_backward(x, lx, axes, y, counts, grad_y)
        }

        fn var_axes<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            axes: &[usize],
            correction: usize,
        ) -> Result<(CudaBuffer<E>, CudaBuffer<E::Acc>), DeviceError> {
            k::var_axes(x, lx, axes, correction)
        }

        fn var_backward<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            axes: &[usize],
            means: &CudaBuffer<E::Acc>,
            correction: usize,
            grad_y: &CudaBuffer<E>,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::var_backward(x, lx, axes, means, correction, grad_y)
        }

        fn logsumexp_axes<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            axes: &[usize],
        ) -> Result<(CudaBuffer<E>, CudaBuffer<E::Acc>), DeviceError> {
            let lse = k::logsumexp_axes(x, lx, axes)?;
            // Rounded to `E` through the host (one value per block): a
            // conversion kernel would need two dtypes in one module.
            let y: Vec<E> = lse.to_host()?.into_iter().map(E::from_acc).collect();
            Ok((self.to_device(&y)?, lse))
        }

        fn logsumexp_backward<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            axes: &[usize],
            lse: &CudaBuffer<E::Acc>,
            grad_y: &CudaBuffer<E>,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::logsumexp_backward(x, lx, axes, lse, grad_y)
        }

        fn arg_extreme_axes<E: FloatDtype, const MAX: bool>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
            axes: &[usize],
        ) -> Result<CudaBuffer<i64>, DeviceError> {
            // The kernel gives u32 positions; widened to i64 (PyTorch's
            // index type) through the host, one value per block.
            let pos = k::arg_extreme_axes::<E, MAX>(x, lx, axes)?;
            let idx: Vec<i64> = pos.to_host()?.into_iter().map(i64::from).collect();
            self.to_device(&idx)
        }
    }
}
