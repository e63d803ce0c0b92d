//! Rotary position embedding (RoPE), rotate-half convention as in HF
//! LLaMA / Gemma / GPT-NeoX.

use zerfoo_kernels::{Backend, FloatDtype, Layout};

use super::index::op_output;
use super::mask::LastTwoAxes;
use crate::autograd::{device_ok, record, TapeState, TensorId};
use crate::error::or_panic;
use crate::shape::Shape;
use crate::tensor::Tensor;
use crate::{Error, Result};

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// Rotates the last dim `Hd` (even) of a `(.., T, Hd)` tensor — e.g.
    /// `(B, H, T, Hd)` queries or keys — by position: with `h = Hd / 2`,
    /// `inv_freq[i] = 1 / base^(2i / Hd)` and angle
    /// `a[t][i] = (t + position_offset) * inv_freq[i]`,
    ///
    /// ```text
    /// y = x * cos(cat(a, a)) + rotate_half(x) * sin(cat(a, a)),  rotate_half([x1, x2]) = [-x2, x1]
    /// ```
    ///
    /// Positions are taken from the second-to-last axis. Angles are formed
    /// in the compute type as PyTorch does (f32 for f32 and below), `cos` and
    /// `sin` are evaluated in f64 and rounded once. An odd `Hd`, or a `base`
    /// that is not finite and positive, is [`Error::InvalidArgument`]. The
    /// backward is the inverse rotation.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// // one head, positions 0 and 1, Hd = 2: x = [1, 0] is rotated by angle t
    /// let x = Tensor::<(U2, U2), f64>::from_vec(Default::default(), vec![1., 0., 1., 0.]).unwrap();
    /// let y = x.rope(10000.0, 0).to_vec();
    /// assert_eq!(y[..2], [1.0, 0.0]);
    /// assert!((y[2] - 1f64.cos()).abs() < 1e-15 && (y[3] - 1f64.sin()).abs() < 1e-15);
    /// ```
    pub fn try_rope(self, base: f64, position_offset: usize) -> Result<Self>
    where
        S: LastTwoAxes<super::Rotary>,
    {
        let dims = self.dims();
        let hd = dims[dims.len() - 1];
        if hd % 2 != 0 {
            return Err(Error::InvalidArgument {
                op: "rope",
                reason: format!("the last dim (head dim) must be even, got {hd}"),
            });
        }
        if !(base.is_finite() && base > 0.0) {
            return Err(Error::InvalidArgument {
                op: "rope",
                reason: format!("the base must be finite and positive, got {base}"),
            });
        }
        let y = self
            .device
            .rope(&self.data, &self.layout, base, position_offset, false)?;
        let out_id = TensorId::fresh();
        let (in_id, dev) = (self.id, self.device.clone());
        let tape = record::<T>(out_id, &[self.tape.node()], move |g| {
            if let Some(gy) = g.take_on::<D, E>(out_id) {
                let l = Layout::contiguous(&dims);
                let gx = device_ok(dev.rope(&gy, &l, base, position_offset, true));
                g.accumulate_on(&dev, in_id, gx);
            }
        });
        Ok(op_output(self.shape, y, out_id, tape, self.device))
    }

    /// Panicking twin of [`try_rope`](Self::try_rope).
    #[track_caller]
    pub fn rope(self, base: f64, position_offset: usize) -> Self
    where
        S: LastTwoAxes<super::Rotary>,
    {
        or_panic(self.try_rope(base, position_offset))
    }
}
