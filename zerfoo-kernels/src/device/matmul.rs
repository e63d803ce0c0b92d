//! Matrix products on a device ([`crate::cpu::matmul`]; cuBLAS on CUDA):
//! batched and broadcast products, and the sum over a batch of products
//! (the gradient of a weight shared by the batch).

use super::{Cpu, Device, DeviceError, ElementwiseKernels};
use crate::cpu::binary::AddOp;
use crate::cpu::matmul::product_columns;
use crate::cpu::profile;
use crate::cpu::unary::UnaryOp;
use crate::{FloatDtype, Layout};

/// Multiply-adds from which a CPU product's backward computes its two
/// gradients side by side (see
/// [`MatmulKernels::gradients_side_by_side`]): gpt6's products (3-12 x
/// 10^8), not the Shakespeare model's (under 10^8). Those are kept out
/// because an earlier version of the same idea (each gradient on a thread
/// of its own) made its step 3.6% slower; this version was not measured
/// on them.
pub const SIDE_BY_SIDE_MACS: usize = 1 << 27;

/// Matrix-product kernels; outputs are contiguous row-major.
pub trait MatmulKernels: Device {
    /// Whether a product's backward should compute its two gradients (the
    /// right operand's and the left's, `macs` multiply-adds each) side by
    /// side instead of one after the other. The CPU does for large
    /// products when its pool has more than one thread: the two products'
    /// tasks then share the threads, and one's packing and other
    /// memory-bound work overlaps the other's arithmetic (gpt6 step, 2
    /// threads, two pairs of paired runs in both orders: 0.9% and 1.6%
    /// faster). A GPU's kernels queue on one stream: no.
    ///
    /// ```
    /// use zerfoo_kernels::device::MatmulKernels;
    /// use zerfoo_kernels::Cpu;
    /// assert!(!Cpu.gradients_side_by_side(64 * 64 * 64));
    /// ```
    fn gradients_side_by_side(&self, macs: usize) -> bool {
        let _ = macs;
        false
    }

    /// `[..batch, M, K] x [..batch, K, N] -> [..batch, M, N]`; a batch
    /// stride of 0 repeats an operand.
    fn gemm_batched<E: FloatDtype>(
        &self,
        a: &Self::Storage<E>,
        la: &Layout,
        b: &Self::Storage<E>,
        lb: &Layout,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// `Σ_batch A_b · B_b` as `[M, N]`.
    fn gemm_batch_sum<E: FloatDtype>(
        &self,
        a: &Self::Storage<E>,
        la: &Layout,
        b: &Self::Storage<E>,
        lb: &Layout,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// [`gemm_batched`](Self::gemm_batched) plus `bias` (`N` contiguous
    /// values) on every row: a linear layer's `x · Wᵀ + b`. The CPU adds
    /// the bias in the product's store (no pass of its own): `(A · B) +
    /// bias` in the compute type, rounded to `E` once. CUDA rounds the
    /// product to `E` and then adds (the same bits in `f32`/`f64`; in
    /// `f16`/`bf16` one rounding more). A bias of the wrong length is an
    /// error.
    fn gemm_batched_bias<E: FloatDtype>(
        &self,
        a: &Self::Storage<E>,
        la: &Layout,
        b: &Self::Storage<E>,
        lb: &Layout,
        bias: &Self::Storage<E>,
    ) -> Result<Self::Storage<E>, DeviceError>;

    /// [`gemm_batched_bias`](Self::gemm_batched_bias) with a bias,
    /// [`gemm_batched`](Self::gemm_batched) without.
    fn gemm_batched_maybe_bias<E: FloatDtype>(
        &self,
        a: &Self::Storage<E>,
        la: &Layout,
        b: &Self::Storage<E>,
        lb: &Layout,
        bias: Option<&Self::Storage<E>>,
    ) -> Result<Self::Storage<E>, DeviceError> {
        match bias {
            Some(bias) => self.gemm_batched_bias(a, la, b, lb, bias),
            None => self.gemm_batched(a, la, b, lb),
        }
    }

    /// A linear layer and its activation: `h` = [`gemm_batched_bias`]
    /// (or [`gemm_batched`](Self::gemm_batched) without a bias) and
    /// `y = act(h)`, both contiguous. The CPU applies `act` to each part of
    /// the product as it is finished, in cache (`f32`/`f64`; the same bits
    /// as the two steps); other devices run the two steps.
    ///
    /// [`gemm_batched_bias`]: Self::gemm_batched_bias
    #[allow(clippy::type_complexity)]
    fn gemm_batched_bias_act<E: FloatDtype, O: UnaryOp>(
        &self,
        a: &Self::Storage<E>,
        la: &Layout,
        b: &Self::Storage<E>,
        lb: &Layout,
        bias: Option<&Self::Storage<E>>,
        act: O,
    ) -> Result<(Self::Storage<E>, Self::Storage<E>), DeviceError>
    where
        Self: ElementwiseKernels,
    {
        let h = self.gemm_batched_maybe_bias(a, la, b, lb, bias)?;
        let y = self.unary_forward(act, &h, &result_layout(la, lb))?;
        Ok((h, y))
    }

    /// `residual + (a · b + bias)` (bias optional), contiguous: a layer's
    /// output projection with the residual connection around it
    /// (`residual` any layout of the result's shape). The CPU adds the
    /// residual to each part of the product as it is finished
    /// (`f32`/`f64`; the same bits as the two steps); other devices run
    /// the product, then the addition.
    #[allow(clippy::too_many_arguments)]
    fn gemm_batched_bias_residual<E: FloatDtype>(
        &self,
        a: &Self::Storage<E>,
        la: &Layout,
        b: &Self::Storage<E>,
        lb: &Layout,
        bias: Option<&Self::Storage<E>>,
        residual: &Self::Storage<E>,
        lr: &Layout,
    ) -> Result<Self::Storage<E>, DeviceError>
    where
        Self: ElementwiseKernels,
    {
        let h = self.gemm_batched_maybe_bias(a, la, b, lb, bias)?;
        self.binary_forward(AddOp, residual, lr, &h, &result_layout(la, lb))
    }

    /// The gradient of an activation's input `x` (its output `y`, both
    /// contiguous `[..batch, M, N]`) from the gradient `g` of the layer
    /// after it, whose (transposed) weight is `b`: `(g · b) ⊙ act'(x)`. The
    /// CPU multiplies each part of the product by `act'` as it is finished
    /// (`f32`/`f64`; the same bits as the two steps); other devices run
    /// [`gemm_batched`](Self::gemm_batched) then `unary_backward`. `x` or
    /// `y` of the wrong length is an error.
    #[allow(clippy::too_many_arguments)]
    fn gemm_batched_act_grad<E: FloatDtype, O: UnaryOp>(
        &self,
        g: &Self::Storage<E>,
        lg: &Layout,
        b: &Self::Storage<E>,
        lb: &Layout,
        act: O,
        x: &Self::Storage<E>,
        y: &Self::Storage<E>,
    ) -> Result<Self::Storage<E>, DeviceError>
    where
        Self: ElementwiseKernels,
    {
        let lx = result_layout(lg, lb);
        check_activation(&lx, Self::storage_len(x), Self::storage_len(y))?;
        let ga = self.gemm_batched(g, lg, b, lb)?;
        self.unary_backward(act, x, &lx, y, &ga)
    }
}

/// The contiguous layout of a product's result `[..batch, M, N]` (some
/// layout for malformed operands, which the product itself reports).
fn result_layout(la: &Layout, lb: &Layout) -> Layout {
    Layout::contiguous(&crate::cpu::matmul::result_shape(la, lb))
}

/// The error for an activation's saved input or output whose length is
/// not the product's result's.
fn check_activation(lx: &Layout, x: usize, y: usize) -> Result<(), DeviceError> {
    if x == lx.numel() && y == lx.numel() {
        return Ok(());
    }
    Err(DeviceError::new(
        "gemm_batched_act_grad",
        format!(
            "the activation's input and output have {x} and {y} values for a {:?} result",
            lx.shape()
        ),
    ))
}

/// The error for a bias whose length is not the product's column count.
/// `bias` as a slice, if any, after checking it has one value per column
/// of `lb`.
fn checked_bias<'a, E>(
    lb: &Layout,
    bias: Option<&'a Vec<E>>,
) -> Result<Option<&'a [E]>, DeviceError> {
    match bias {
        Some(b) if b.len() != product_columns(lb) => Err(bias_mismatch(lb, b.len())),
        other => Ok(other.map(|b| &b[..])),
    }
}

fn bias_mismatch(lb: &Layout, len: usize) -> DeviceError {
    DeviceError::new(
        "gemm_batched_bias",
        format!(
            "a bias of {len} values for {} columns (rhs {:?})",
            product_columns(lb),
            lb.shape()
        ),
    )
}

impl MatmulKernels for Cpu {
    fn gradients_side_by_side(&self, macs: usize) -> bool {
        macs >= SIDE_BY_SIDE_MACS && rayon::current_num_threads() > 1
    }

    fn gemm_batched<E: FloatDtype>(
        &self,
        a: &Vec<E>,
        la: &Layout,
        b: &Vec<E>,
        lb: &Layout,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::product("gemm_batched".into(), E::DTYPE, la, lb),
            || Ok(crate::cpu::matmul::gemm_batched(a, la, b, lb)),
        )
    }

    fn gemm_batch_sum<E: FloatDtype>(
        &self,
        a: &Vec<E>,
        la: &Layout,
        b: &Vec<E>,
        lb: &Layout,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::product("gemm_batch_sum".into(), E::DTYPE, la, lb),
            || Ok(crate::cpu::matmul::gemm_batch_sum(a, la, b, lb)),
        )
    }

    fn gemm_batched_bias<E: FloatDtype>(
        &self,
        a: &Vec<E>,
        la: &Layout,
        b: &Vec<E>,
        lb: &Layout,
        bias: &Vec<E>,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::product("gemm_batched_bias".into(), E::DTYPE, la, lb),
            || {
                let bias = checked_bias(lb, Some(bias))?;
                Ok(crate::cpu::matmul::gemm_batched_bias(a, la, b, lb, bias))
            },
        )
    }

    fn gemm_batched_bias_act<E: FloatDtype, O: UnaryOp>(
        &self,
        a: &Vec<E>,
        la: &Layout,
        b: &Vec<E>,
        lb: &Layout,
        bias: Option<&Vec<E>>,
        act: O,
    ) -> Result<(Vec<E>, Vec<E>), DeviceError> {
        profile::time(
            || {
                profile::product(
                    format!("gemm_batched_bias_act {}", O::NAME),
                    E::DTYPE,
                    la,
                    lb,
                )
            },
            || {
                let bias = checked_bias(lb, bias)?;
                Ok(crate::cpu::matmul::gemm_batched_bias_act(
                    a, la, b, lb, bias, act,
                ))
            },
        )
    }

    fn gemm_batched_bias_residual<E: FloatDtype>(
        &self,
        a: &Vec<E>,
        la: &Layout,
        b: &Vec<E>,
        lb: &Layout,
        bias: Option<&Vec<E>>,
        residual: &Vec<E>,
        lr: &Layout,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::product("gemm_batched_bias_residual".into(), E::DTYPE, la, lb),
            || {
                let bias = checked_bias(lb, bias)?;
                let shape = crate::cpu::matmul::result_shape(la, lb);
                if lr.shape() != shape {
                    return Err(DeviceError::new(
                        "gemm_batched_bias_residual",
                        format!(
                            "a residual of shape {:?} for a product of shape {shape:?}",
                            lr.shape()
                        ),
                    ));
                }
                Ok(crate::cpu::matmul::gemm_batched_bias_residual(
                    a, la, b, lb, bias, residual, lr,
                ))
            },
        )
    }

    fn gemm_batched_act_grad<E: FloatDtype, O: UnaryOp>(
        &self,
        g: &Vec<E>,
        lg: &Layout,
        b: &Vec<E>,
        lb: &Layout,
        act: O,
        x: &Vec<E>,
        y: &Vec<E>,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || {
                profile::product(
                    format!("gemm_batched_act_grad {}", O::NAME),
                    E::DTYPE,
                    lg,
                    lb,
                )
            },
            || {
                check_activation(&result_layout(lg, lb), x.len(), y.len())?;
                Ok(crate::cpu::matmul::gemm_batched_act_grad(
                    g, lg, b, lb, act, x, y,
                ))
            },
        )
    }
}

#[cfg(feature = "cuda")]
mod cuda_impl {
    use super::*;
    use crate::cuda::ops::matmul::{self as k, GemmOptions};
    use crate::cuda::{CudaBuffer, CudaDevice};

    impl CudaDevice {
        fn gemm_options(&self) -> GemmOptions {
            GemmOptions {
                allow_tf32: self.allow_tf32(),
            }
        }
    }

    impl MatmulKernels for CudaDevice {
        fn gemm_batched<E: FloatDtype>(
            &self,
            a: &CudaBuffer<E>,
            la: &Layout,
            b: &CudaBuffer<E>,
            lb: &Layout,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::gemm_batched(a, la, b, lb, self.gemm_options())
        }

        fn gemm_batch_sum<E: FloatDtype>(
            &self,
            a: &CudaBuffer<E>,
            la: &Layout,
            b: &CudaBuffer<E>,
            lb: &Layout,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            k::gemm_batch_sum(a, la, b, lb, self.gemm_options())
        }

        /// cuBLAS's product, then one broadcast add of the bias.
        fn gemm_batched_bias<E: FloatDtype>(
            &self,
            a: &CudaBuffer<E>,
            la: &Layout,
            b: &CudaBuffer<E>,
            lb: &Layout,
            bias: &CudaBuffer<E>,
        ) -> Result<CudaBuffer<E>, DeviceError> {
            let n = product_columns(lb);
            if bias.len() != n {
                return Err(bias_mismatch(lb, bias.len()));
            }
            let y = self.gemm_batched(a, la, b, lb)?;
            let rows = y.len().checked_div(n).unwrap_or(0);
            let ly = Layout::contiguous(&[rows, n]);
            let lbias = Layout::new(&[rows, n], &[0, 1], 0);
            crate::cuda::ops::elementwise::binary_forward(
                crate::cpu::binary::AddOp,
                &y,
                &ly,
                bias,
                &lbias,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::unary::Relu;

    /// A bias of the wrong length, or a residual of the wrong shape, is an
    /// error naming the operation, not a panic inside the kernels.
    #[test]
    fn bad_bias_or_residual_is_an_error() {
        let (a, la) = (vec![1.0f32; 6], Layout::contiguous(&[2, 3]));
        let (b, lb) = (vec![1.0f32; 12], Layout::contiguous(&[3, 4]));
        let short = vec![0.0f32; 3];
        let err = |r: Result<Vec<f32>, DeviceError>| r.unwrap_err().to_string();
        assert!(err(Cpu.gemm_batched_bias(&a, &la, &b, &lb, &short)).contains("a bias of 3"));
        let act = Cpu.gemm_batched_bias_act(&a, &la, &b, &lb, Some(&short), Relu);
        assert!(err(act.map(|(h, _)| h)).contains("a bias of 3"));
        let (r, lr) = (vec![0.0f32; 8], Layout::contiguous(&[2, 4]));
        let res = Cpu.gemm_batched_bias_residual(&a, &la, &b, &lb, Some(&short), &r, &lr);
        assert!(err(res).contains("a bias of 3"));
        let wrong = Layout::contiguous(&[4, 2]);
        let res = Cpu.gemm_batched_bias_residual(&a, &la, &b, &lb, None, &r, &wrong);
        let msg = err(res);
        assert!(
            msg.contains("gemm_batched_bias_residual") && msg.contains("[4, 2]"),
            "{msg}"
        );
        // And a good call: 3 + the residual's 0.
        let y = Cpu
            .gemm_batched_bias_residual(&a, &la, &b, &lb, None, &r, &lr)
            .unwrap();
        assert_eq!(y, [3.0; 8]);
    }
}
