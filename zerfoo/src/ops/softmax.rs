//! Softmax and log-softmax along one axis. One fused kernel per row
//! (max-subtracted, accumulated in `f32`/`f64`); the backward works from the
//! saved output, so nothing but `y` is kept for it.

use std::sync::Arc;

use zerfoo_kernels::{Backend, FloatDtype, Layout};

use crate::autograd::{device_ok, record, TapeState, TensorId};
use crate::shape::{HasAxes, Shape, SingleAxis};
use crate::tensor::Tensor;

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    fn softmax_op<const LOG: bool>(self, axis: usize) -> Self {
        let y = device_ok(
            self.device
                .softmax_forward::<E, LOG>(&self.data, &self.layout, axis),
        );
        let y = Arc::new(y);
        let out_id = TensorId::fresh();
        let dims = self.shape.dims();
        let tape = if T::TRACKED {
            let (y_saved, in_id, dev) = (y.clone(), self.id, self.device.clone());
            record::<T>(out_id, &[self.tape.node()], move |g| {
                if let Some(gy) = g.take_on::<D, E>(out_id) {
                    let gx = device_ok(dev.softmax_backward::<E, LOG>(&y_saved, &gy, &dims, axis));
                    g.accumulate_on(&dev, in_id, gx);
                }
            })
        } else {
            T::from_node(None)
        };
        Tensor {
            layout: Layout::contiguous(&dims),
            shape: self.shape,
            data: y,
            id: out_id,
            tape,
            device: self.device,
        }
    }

    /// `exp(x) / sum(exp(x))` along the axis `Ax` (`Axis<I>`); the shape is
    /// unchanged. Stable for any finite logits (the row max is subtracted
    /// first). A row holding NaN, or only `-inf`, gives NaN, as in PyTorch.
    ///
    /// Backward, from the output: `gx = y * (gy - sum(gy * y))`.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U1, U2), f32>::from_vec(Default::default(), vec![0.0, 2f32.ln()]).unwrap();
    /// let y = x.softmax::<Axis<1>>().to_vec();
    /// assert!((y[0] - 1.0 / 3.0).abs() < 1e-6 && (y[1] - 2.0 / 3.0).abs() < 1e-6);
    /// ```
    pub fn softmax<Ax: SingleAxis>(self) -> Self
    where
        S: HasAxes<Ax>,
    {
        self.softmax_op::<false>(S::AXES[0])
    }

    /// `x - log(sum(exp(x)))` along the axis `Ax` (`Axis<I>`), computed as
    /// `(x - max) - log(sum(exp(x - max)))` so that large logits stay exact.
    ///
    /// Backward, from the output: `gx = gy - exp(y) * sum(gy)`.
    pub fn log_softmax<Ax: SingleAxis>(self) -> Self
    where
        S: HasAxes<Ax>,
    {
        self.softmax_op::<true>(S::AXES[0])
    }
}
