//! Elementwise kernels on a device: unary and binary maths with their
//! backward ([`crate::cpu::unary`], [`crate::cpu::binary`]), copies into
//! row-major order, dtype conversion, and the in-place updates gradients
//! need (accumulate, scale).

use super::{Cpu, Device, DeviceError};
use crate::cpu::binary::BinaryOp;
use crate::cpu::profile;
use crate::cpu::unary::UnaryOp;
use crate::{FloatDtype, Layout};

/// Elementwise kernels; outputs are contiguous (row-major) storage.
pub trait ElementwiseKernels: Device {
    /// `y = op(x)` for `x` in any layout.
    fn unary_forward<E: FloatDtype, O: UnaryOp>(
        &self,
        op: O,
        x: &Self::Storage<E>,
        lx: &Layout,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// `grad_x = grad_y * op'(x)`; `y` and `grad_y` contiguous.
    fn unary_backward<E: FloatDtype, O: UnaryOp>(
        &self,
        op: O,
        x: &Self::Storage<E>,
        lx: &Layout,
        y: &Self::Storage<E>,
        grad_y: &Self::Storage<E>,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// `y = op(a, b)`; both layouts have the same shape.
    fn binary_forward<E: FloatDtype, O: BinaryOp>(
        &self,
        op: O,
        a: &Self::Storage<E>,
        la: &Layout,
        b: &Self::Storage<E>,
        lb: &Layout,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// The gradients of both operands (`None` where `need` says so), shaped
    /// like the output.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn binary_backward<E: FloatDtype, O: BinaryOp>(
        &self,
        op: O,
        a: &Self::Storage<E>,
        la: &Layout,
        b: &Self::Storage<E>,
        lb: &Layout,
        grad_y: Self::Storage<E>,
        need: (bool, bool),
    ) -> Result<(Option<Self::Storage<E>>, Option<Self::Storage<E>>), DeviceError>;

    /// The elements `lx` selects, row-major.
    fn contiguous<E: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// Every element converted to `E2` (to nearest, ties to even), row-major.
    fn convert<E: FloatDtype, E2: FloatDtype>(
        &self,
        x: &Self::Storage<E>,
        lx: &Layout,
    ) -> Result<Self::Storage<E2>, DeviceError>;

    /// `acc += g` elementwise (both contiguous, same length), in the compute
    /// type, rounding once.
    fn add_assign<E: FloatDtype>(
        &self,
        acc: &mut Self::Storage<E>,
        g: &Self::Storage<E>,
    ) -> Result<(), DeviceError>;

    /// `acc += scale * g` elementwise (both contiguous, same length).
    fn add_scaled<E: FloatDtype>(
        &self,
        acc: &mut Self::Storage<E>,
        g: &Self::Storage<E>,
        scale: f64,
    ) -> Result<(), DeviceError>;

    /// `x *= factor` in place, in the compute type, rounding once.
    fn scale<E: FloatDtype>(
        &self,
        x: &mut Self::Storage<E>,
        factor: f64,
    ) -> Result<(), DeviceError>;

    /// `len` zeros.
    fn zeros<E: FloatDtype>(&self, len: usize) -> Result<Self::Storage<E>, DeviceError>;
}

/// Whether a compute type is `f64` (decides how a conversion rounds: through
/// `f64` when either side computes in it, else through `f32`).
fn acc_is_f64<A: 'static>() -> bool {
    core::any::TypeId::of::<A>() == core::any::TypeId::of::<f64>()
}

/// One element converted between float dtypes, rounding once.
#[inline(always)]
pub fn convert_element<E: FloatDtype, E2: FloatDtype>(x: E) -> E2 {
    if acc_is_f64::<E::Acc>() || acc_is_f64::<E2::Acc>() {
        E2::from_f64(x.to_f64())
    } else {
        E2::from_f32(x.to_f32())
    }
}

impl ElementwiseKernels for Cpu {
    fn unary_forward<E: FloatDtype, O: UnaryOp>(
        &self,
        op: O,
        x: &Vec<E>,
        lx: &Layout,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || format!("unary/{} forward {}", O::NAME, E::DTYPE),
            || Ok(crate::cpu::unary::unary_forward(op, x, lx)),
        )
    }

    fn unary_backward<E: FloatDtype, O: UnaryOp>(
        &self,
        op: O,
        x: &Vec<E>,
        lx: &Layout,
        y: &Vec<E>,
        grad_y: &Vec<E>,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || format!("unary/{} backward {}", O::NAME, E::DTYPE),
            || Ok(crate::cpu::unary::unary_backward(op, x, lx, y, grad_y)),
        )
    }

    fn binary_forward<E: FloatDtype, O: BinaryOp>(
        &self,
        op: O,
        a: &Vec<E>,
        la: &Layout,
        b: &Vec<E>,
        lb: &Layout,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || format!("binary/{} forward {}", O::NAME, E::DTYPE),
            || Ok(crate::cpu::binary::binary_forward(op, a, la, b, lb)),
        )
    }

    fn binary_backward<E: FloatDtype, O: BinaryOp>(
        &self,
        op: O,
        a: &Vec<E>,
        la: &Layout,
        b: &Vec<E>,
        lb: &Layout,
        grad_y: Vec<E>,
        need: (bool, bool),
    ) -> Result<(Option<Vec<E>>, Option<Vec<E>>), DeviceError> {
        profile::time(
            || format!("binary/{} backward {}", O::NAME, E::DTYPE),
            || {
                let (ga, gb) = crate::cpu::binary::binary_backward(op, a, la, b, lb, grad_y, need);
                Ok((need.0.then_some(ga), need.1.then_some(gb)))
            },
        )
    }

    fn contiguous<E: FloatDtype>(&self, x: &Vec<E>, lx: &Layout) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("elementwise/contiguous", E::DTYPE),
            || Ok(crate::cpu::to_contiguous(x, lx)),
        )
    }

    fn convert<E: FloatDtype, E2: FloatDtype>(
        &self,
        x: &Vec<E>,
        lx: &Layout,
    ) -> Result<Vec<E2>, DeviceError> {
        profile::time(
            || format!("elementwise/convert {} -> {}", E::DTYPE, E2::DTYPE),
            || Ok(crate::cpu::map(x, lx, convert_element::<E, E2>)),
        )
    }

    /// [`add_scaled`](Self::add_scaled) by 1 (`g · 1` is exact: the same
    /// bits as a plain sum).
    fn add_assign<E: FloatDtype>(&self, acc: &mut Vec<E>, g: &Vec<E>) -> Result<(), DeviceError> {
        profile::time(
            || profile::name("elementwise/add_assign", E::DTYPE),
            || self.add_scaled(acc, g, 1.0),
        )
    }

    /// In the compute type, rounding once per element; chunks shared out
    /// over the pool for a long gradient.
    fn add_scaled<E: FloatDtype>(
        &self,
        acc: &mut Vec<E>,
        g: &Vec<E>,
        scale: f64,
    ) -> Result<(), DeviceError> {
        profile::time(
            || profile::name("elementwise/add_scaled", E::DTYPE),
            || {
                debug_assert_eq!(acc.len(), g.len());
                let s = <E::Acc as crate::Real>::of_f64(scale);
                crate::cpu::for_each_chunk(acc, |(i, part)| {
                    let g = &g[i * crate::cpu::CHUNK..][..part.len()];
                    crate::cpu::simd::vectorized(
                        #[inline(always)]
                        || {
                            for (a, g) in part.iter_mut().zip(g) {
                                *a = E::from_acc(a.to_acc() + g.to_acc() * s);
                            }
                        },
                    )
                });
                Ok(())
            },
        )
    }

    fn scale<E: FloatDtype>(&self, x: &mut Vec<E>, factor: f64) -> Result<(), DeviceError> {
        profile::time(
            || profile::name("elementwise/scale", E::DTYPE),
            || {
                crate::cpu::optim::scale_in_place(x, factor);
                Ok(())
            },
        )
    }

    fn zeros<E: FloatDtype>(&self, len: usize) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("elementwise/zeros", E::DTYPE),
            || Ok(crate::cpu::zeros(len)),
        )
    }
}

#[cfg(feature = "cuda")]
mod cuda_impl {
    use super::*;
    use crate::cpu::unary::MulScalar;
    use crate::cuda::ops::elementwise as k;
    use crate::cuda::{CudaBuffer, CudaDevice};

    impl ElementwiseKernels for CudaDevice {
        fn unary_forward<E: FloatDtype, O: UnaryOp>(
            &self,
            op: O,
            x: &CudaBuffer<E>,
            lx: &Layout,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::unary_forward(op, x, lx)
        }

        fn unary_backward<E: FloatDtype, O: UnaryOp>(
            &self,
            op: O,
            x: &CudaBuffer<E>,
            lx: &Layout,
            y: &CudaBuffer<E>,
            grad_y: &CudaBuffer<E>,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::unary_backward(op, x, lx, y, grad_y)
        }

        fn binary_forward<E: FloatDtype, O: BinaryOp>(
            &self,
            op: O,
            a: &CudaBuffer<E>,
            la: &Layout,
            b: &CudaBuffer<E>,
            lb: &Layout,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::binary_forward(op, a, la, b, lb)
        }

        fn binary_backward<E: FloatDtype, O: BinaryOp>(
            &self,
            op: O,
            a: &CudaBuffer<E>,
            la: &Layout,
            b: &CudaBuffer<E>,
            lb: &Layout,
            grad_y: CudaBuffer<E>,
            need: (bool, bool),
        ) -> Result<(Option<CudaBuffer<E>>, Option<CudaBuffer<E>>), DeviceError> {
            k::binary_backward(op, a, la, b, lb, &grad_y, need)
        }

        fn contiguous<E: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::to_contiguous(x, lx)
        }

        fn convert<E: FloatDtype, E2: FloatDtype>(
            &self,
            x: &CudaBuffer<E>,
            lx: &Layout,
        ) -> Result<CudaBuffer<E2>, DeviceError> {
            crate::cuda::ops::shape::convert::<E, E2>(x, lx)
        }

        fn add_assign<E: FloatDtype>(
            &self,
            acc: &mut CudaBuffer<E>,
            g: &CudaBuffer<E>,
        ) -> Result<(), DeviceError> {
            let l = Layout::contiguous(&[acc.len()]);
            *acc = k::binary_forward(crate::cpu::binary::AddOp, acc, &l, g, &l)?;
            Ok(())
        }

        /// Scales then adds: two roundings for low-precision dtypes (the CPU
        /// rounds once), within the dtype's tolerance.
        fn add_scaled<E: FloatDtype>(
            &self,
            acc: &mut CudaBuffer<E>,
            g: &CudaBuffer<E>,
            scale: f64,
        ) -> Result<(), DeviceError> {
            let l = Layout::contiguous(&[g.len()]);
            let scaled = k::unary_forward(MulScalar(scale), g, &l)?;
            self.add_assign(acc, &scaled)
        }

        fn scale<E: FloatDtype>(
            &self,
            x: &mut CudaBuffer<E>,
            factor: f64,
        ) -> Result<(), DeviceError> {
            let l = Layout::contiguous(&[x.len()]);
            *x = k::unary_forward(MulScalar(factor), x, &l)?;
            Ok(())
        }

        fn zeros<E: FloatDtype>(&self, len: usize) -> Result<CudaBuffer<E>, DeviceError> {
            CudaDevice::zeros(self, len)
        }
    }
}
