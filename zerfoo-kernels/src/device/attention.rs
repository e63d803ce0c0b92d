//! Fused attention on a device ([`crate::cpu::attention`]): softmax(q kᵀ ·
//! scale + mask) v without materializing the full score matrix, and its
//! backward from the saved log-sum-exp.

use super::{Cpu, Device, DeviceError, ShapeKernels};
use crate::cpu::attention::{AttnMask, HeadsOrder};
use crate::cpu::profile;
use crate::{FloatDtype, Layout};

/// The gradients of `q`, `k` and `v`.
pub type AttentionGrads<S> = (S, S, S);

/// Attention kernels: `q` is `[B, H, Tq, D]`, `k` is `[B, H, Tk, D]`, `v` is
/// `[B, H, Tk, Dv]` (any strides); the output is `[B, H, Tq, Dv]`. The
/// results (the output, the gradients) are stored in `order`.
pub trait AttentionKernels: Device {
    /// The output (stored in `order`) and the row log-sum-exp (compute
    /// type, `(B, H, Tq)` row-major) for the backward.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn attention_forward<E: FloatDtype>(
        &self,
        q: &Self::Storage<E>,
        ql: &Layout,
        k: &Self::Storage<E>,
        kl: &Layout,
        v: &Self::Storage<E>,
        vl: &Layout,
        mask: &AttnMask<'_>,
        scale: f64,
        order: HeadsOrder,
    ) -> Result<(Self::Storage<E>, Self::Storage<E::Acc>), DeviceError>;

    /// [`attention_forward`](Self::attention_forward) in a training step,
    /// whose backward will run: the same output, and what the backward
    /// needs. By default the log-sum-exp alone; the CPU also keeps the
    /// softmax probabilities where they are cheap to keep (see
    /// [`crate::cpu::attention::attention_forward_for_backward`]), so that
    /// its backward need not recompute them.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn attention_forward_for_backward<E: FloatDtype>(
        &self,
        q: &Self::Storage<E>,
        ql: &Layout,
        k: &Self::Storage<E>,
        kl: &Layout,
        v: &Self::Storage<E>,
        vl: &Layout,
        mask: &AttnMask<'_>,
        scale: f64,
        order: HeadsOrder,
    ) -> Result<(Self::Storage<E>, Self::Storage<E::Acc>), DeviceError> {
        self.attention_forward(q, ql, k, kl, v, vl, mask, scale, order)
    }

    /// The gradients of `q`, `k`, `v` (stored in `order`) from the output
    /// (stored in `order`), its log-sum-exp and the output's gradient
    /// `dout` (layout `dl`).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward<E: FloatDtype>(
        &self,
        q: &Self::Storage<E>,
        ql: &Layout,
        k: &Self::Storage<E>,
        kl: &Layout,
        v: &Self::Storage<E>,
        vl: &Layout,
        out: &Self::Storage<E>,
        lse: &Self::Storage<E::Acc>,
        dout: &Self::Storage<E>,
        dl: &Layout,
        mask: &AttnMask<'_>,
        scale: f64,
        order: HeadsOrder,
    ) -> Result<AttentionGrads<Self::Storage<E>>, DeviceError>;

    /// The gradients of `q`, `k`, `v` side by side in one
    /// `(B, T, H·D + H·D + H·Dv)` row-major buffer: the gradient of the one
    /// projection self-attention split them from (see
    /// [`crate::cpu::attention::attention_backward_packed`]); the output is
    /// stored in [`HeadsOrder::SeqMajor`]. By default the three gradients
    /// joined by a copy; the CPU writes them in place.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward_packed<E: FloatDtype>(
        &self,
        q: &Self::Storage<E>,
        ql: &Layout,
        k: &Self::Storage<E>,
        kl: &Layout,
        v: &Self::Storage<E>,
        vl: &Layout,
        out: &Self::Storage<E>,
        lse: &Self::Storage<E::Acc>,
        dout: &Self::Storage<E>,
        dl: &Layout,
        mask: &AttnMask<'_>,
        scale: f64,
    ) -> Result<Self::Storage<E>, DeviceError>
    where
        Self: ShapeKernels,
    {
        let order = HeadsOrder::SeqMajor;
        let (gq, gk, gv) =
            self.attention_backward(q, ql, k, kl, v, vl, out, lse, dout, dl, mask, scale, order)?;
        let dims = crate::cpu::attention::AttnDims::of(ql, kl, vl);
        let rows = |w: usize| Layout::contiguous(&[dims.b, dims.tq, dims.h * w]);
        let (lq, lv) = (rows(dims.d), rows(dims.dv));
        self.concat(&[(&gq, &lq), (&gk, &lq), (&gv, &lv)], 2)
    }
}

impl AttentionKernels for Cpu {
    fn attention_forward<E: FloatDtype>(
        &self,
        q: &Vec<E>,
        ql: &Layout,
        k: &Vec<E>,
        kl: &Layout,
        v: &Vec<E>,
        vl: &Layout,
        mask: &AttnMask<'_>,
        scale: f64,
        order: HeadsOrder,
    ) -> Result<(Vec<E>, Vec<E::Acc>), DeviceError> {
        profile::time(
            || profile::name("attention/forward", E::DTYPE),
            || {
                Ok(crate::cpu::attention::attention_forward(
                    q, ql, k, kl, v, vl, mask, scale, order,
                ))
            },
        )
    }

    fn attention_forward_for_backward<E: FloatDtype>(
        &self,
        q: &Vec<E>,
        ql: &Layout,
        k: &Vec<E>,
        kl: &Layout,
        v: &Vec<E>,
        vl: &Layout,
        mask: &AttnMask<'_>,
        scale: f64,
        order: HeadsOrder,
    ) -> Result<(Vec<E>, Vec<E::Acc>), DeviceError> {
        profile::time(
            || profile::name("attention/forward_for_backward", E::DTYPE),
            || {
                Ok(crate::cpu::attention::attention_forward_for_backward(
                    q, ql, k, kl, v, vl, mask, scale, order,
                ))
            },
        )
    }

    fn attention_backward<E: FloatDtype>(
        &self,
        q: &Vec<E>,
        ql: &Layout,
        k: &Vec<E>,
        kl: &Layout,
        v: &Vec<E>,
        vl: &Layout,
        out: &Vec<E>,
        lse: &Vec<E::Acc>,
        dout: &Vec<E>,
        dl: &Layout,
        mask: &AttnMask<'_>,
        scale: f64,
        order: HeadsOrder,
    ) -> Result<AttentionGrads<Vec<E>>, DeviceError> {
        profile::time(
            || profile::name("attention/backward", E::DTYPE),
            || {
                Ok(crate::cpu::attention::attention_backward(
                    q, ql, k, kl, v, vl, out, lse, dout, dl, mask, scale, order,
                ))
            },
        )
    }

    fn attention_backward_packed<E: FloatDtype>(
        &self,
        q: &Vec<E>,
        ql: &Layout,
        k: &Vec<E>,
        kl: &Layout,
        v: &Vec<E>,
        vl: &Layout,
        out: &Vec<E>,
        lse: &Vec<E::Acc>,
        dout: &Vec<E>,
        dl: &Layout,
        mask: &AttnMask<'_>,
        scale: f64,
    ) -> Result<Vec<E>, DeviceError> {
        profile::time(
            || profile::name("attention/backward_packed", E::DTYPE),
            || {
                Ok(crate::cpu::attention::attention_backward_packed(
                    q, ql, k, kl, v, vl, out, lse, dout, dl, mask, scale,
                ))
            },
        )
    }
}

#[cfg(feature = "cuda")]
mod cuda_impl {
    use super::*;
    use crate::cpu::attention::AttnDims;
    use crate::cuda::ops::attention::{self as k, CudaAttnMask};
    use crate::cuda::{CudaBuffer, CudaDevice};
    use crate::device::ElementwiseKernels;

    /// The mask with its padding (a host slice) uploaded.
    fn upload<'a>(
        dev: &CudaDevice,
        mask: &AttnMask<'_>,
        padding: &'a mut Option<CudaBuffer<bool>>,
    ) -> Result<CudaAttnMask<'a>, DeviceError> {
        *padding = mask.padding.map(|p| dev.to_device(p)).transpose()?;
        Ok(CudaAttnMask {
            causal: mask.causal,
            window: mask.window,
            padding: padding.as_ref(),
            q_offset: mask.q_offset,
            k_offset: mask.k_offset,
        })
    }

    /// A head-major `(B, H, T, W)` result of the CUDA kernels, stored in
    /// `order` (one copy for [`HeadsOrder::SeqMajor`]).
    fn reorder<E: FloatDtype>(
        dev: &CudaDevice,
        x: CudaBuffer<E>,
        [b, h, t, w]: [usize; 4],
        order: HeadsOrder,
    ) -> Result<CudaBuffer<E>, DeviceError> {
        match order {
            HeadsOrder::HeadMajor => Ok(x),
            HeadsOrder::SeqMajor => {
                let as_seq = Layout::contiguous(&[b, h, t, w]).permute(&[0, 2, 1, 3]);
                dev.contiguous(&x, &as_seq)
            }
        }
    }

    impl AttentionKernels for CudaDevice {
        fn attention_forward<E: FloatDtype>(
            &self,
            q: &CudaBuffer<E>,
            ql: &Layout,
            kb: &CudaBuffer<E>,
            kl: &Layout,
            v: &CudaBuffer<E>,
            vl: &Layout,
            mask: &AttnMask<'_>,
            scale: f64,
            order: HeadsOrder,
        ) -> Result<(CudaBuffer<E>, CudaBuffer<E::Acc>), DeviceError> {
            let mut pad = None;
            let m = upload(self, mask, &mut pad)?;
            let (out, lse) =
                k::attention_forward(k::AttentionPath::Auto, q, ql, kb, kl, v, vl, &m, scale)?;
            let d = AttnDims::of(ql, kl, vl);
            Ok((reorder(self, out, [d.b, d.h, d.tq, d.dv], order)?, lse))
        }

        fn attention_backward<E: FloatDtype>(
            &self,
            q: &CudaBuffer<E>,
            ql: &Layout,
            kb: &CudaBuffer<E>,
            kl: &Layout,
            v: &CudaBuffer<E>,
            vl: &Layout,
            out: &CudaBuffer<E>,
            lse: &CudaBuffer<E::Acc>,
            dout: &CudaBuffer<E>,
            dl: &Layout,
            mask: &AttnMask<'_>,
            scale: f64,
            order: HeadsOrder,
        ) -> Result<AttentionGrads<CudaBuffer<E>>, DeviceError> {
            let mut pad = None;
            let m = upload(self, mask, &mut pad)?;
            let AttnDims {
                b,
                h,
                tq,
                tk,
                d,
                dv,
            } = AttnDims::of(ql, kl, vl);
            // The kernels read the saved output head-major.
            let head_major;
            let out = match order {
                HeadsOrder::HeadMajor => out,
                HeadsOrder::SeqMajor => {
                    head_major = self.contiguous(out, &order.layout([b, h, tq, dv]))?;
                    &head_major
                }
            };
            let (dq, dk, dvs) = k::attention_backward(
                k::AttentionPath::Auto,
                q,
                ql,
                kb,
                kl,
                v,
                vl,
                out,
                lse,
                dout,
                dl,
                &m,
                scale,
            )?;
            Ok((
                reorder(self, dq, [b, h, tq, d], order)?,
                reorder(self, dk, [b, h, tk, d], order)?,
                reorder(self, dvs, [b, h, tk, dv], order)?,
            ))
        }
    }
}
