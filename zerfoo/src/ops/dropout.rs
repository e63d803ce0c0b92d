//! Seeded dropout. Element `i` (row-major) is dropped iff the `i`-th uniform
//! draw of stream `seed` is below `p` — the same draw as
//! `Tensor::rand(shape, seed)` at `i` — so the mask depends only on
//! `(seed, i)`: identical across runs and thread counts. The backward
//! recomputes the same mask.

use zerfoo_kernels::{Backend, FloatDtype, Layout};

use super::index::op_output;
use crate::autograd::{device_ok, record, TapeState, TensorId};
use crate::error::or_panic;
use crate::shape::Shape;
use crate::tensor::Tensor;
use crate::{Error, Result};

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// Zeroes each element with probability `p` and scales the kept ones by
    /// `1 / (1 - p)`, with a mask drawn from `seed` (see the module docs).
    /// `p` must lie in `[0, 1)`, else [`Error::InvalidArgument`]; `p = 0`
    /// returns `self` unchanged.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U4, U4), f32>::ones(Default::default());
    /// let y = x.clone().dropout(0.5, 7).to_vec();
    /// assert!(y.iter().all(|&v| v == 0.0 || v == 2.0));
    /// assert_eq!(y, x.clone().dropout(0.5, 7).to_vec()); // same seed, same mask
    /// assert!(x.try_dropout(1.0, 7).is_err());
    /// ```
    pub fn try_dropout(self, p: f64, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument {
                op: "dropout",
                reason: format!("the drop probability must lie in [0, 1), got {p}"),
            });
        }
        if p == 0.0 {
            return Ok(self);
        }
        let scale = 1.0 / (1.0 - p);
        let y = self
            .device
            .dropout(&self.data, &self.layout, seed, p, scale)?;
        let out_id = TensorId::fresh();
        let (in_id, dims, dev) = (self.id, self.dims(), self.device.clone());
        let tape = record::<T>(out_id, &[self.tape.node()], move |g| {
            if let Some(gy) = g.take_on::<D, E>(out_id) {
                let l = Layout::contiguous(&dims);
                let gx = device_ok(dev.dropout(&gy, &l, seed, p, scale));
                g.accumulate_on(&dev, in_id, gx);
            }
        });
        Ok(op_output(self.shape, y, out_id, tape, self.device))
    }

    /// Panicking twin of [`try_dropout`](Self::try_dropout).
    #[track_caller]
    pub fn dropout(self, p: f64, seed: u64) -> Self {
        or_panic(self.try_dropout(p, seed))
    }
}
