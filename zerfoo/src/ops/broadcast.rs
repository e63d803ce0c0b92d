//! Explicit broadcasting: a stride-0 view along new axes checked at compile
//! time. Its backward sums the gradient over those axes.

use zerfoo_kernels::{Backend, FloatDtype};

use crate::autograd::{device_ok, record, TapeState, TensorId};
use crate::error::or_panic;
use crate::shape::{HasAxes, SameShape, Shape};
use crate::tensor::Tensor;
use crate::{Error, Result};

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// Repeats this tensor along the new axes `Ax` of `dst` (a view, no copy).
    /// `dst` without the axes `Ax` must equal this tensor's shape; a `Dyn`
    /// mismatch is an error.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let bias = Tensor::<(U3,), f32>::from_vec(Default::default(), vec![1., 2., 3.]).unwrap();
    /// let b = bias.broadcast::<_, Axis<0>>((Dyn(2), U3::default()));
    /// assert_eq!(b.to_vec(), [1., 2., 3., 1., 2., 3.]);
    /// ```
    pub fn try_broadcast<Dst, Ax>(self, dst: Dst) -> Result<Tensor<Dst, E, D, T>>
    where
        Dst: HasAxes<Ax>,
        S: SameShape<Dst::Reduced, super::Broadcast>,
    {
        let kept = dst.reduced().dims();
        if *kept != *self.dims() {
            return Err(Error::ShapeMismatch {
                op: "broadcast",
                lhs: self.dims().to_vec(),
                rhs: dst.dims().to_vec(),
            });
        }
        let axes = Dst::AXES;
        let dims = dst.dims();
        let mut strides = [0usize; 6];
        let mut j = 0;
        for (d, s) in strides.iter_mut().enumerate().take(dims.len()) {
            if !axes.contains(&d) {
                *s = self.layout.strides()[j];
                j += 1;
            }
        }
        let layout = self.layout.with_dims(&dims, &strides[..dims.len()]);
        let out_id = TensorId::fresh();
        let in_id = self.id;
        let dev = self.device.clone();
        let tape = record::<T>(out_id, &[self.tape.node()], move |g| {
            if let Some(gy) = g.take_on::<D, E>(out_id) {
                let l = zerfoo_kernels::Layout::contiguous(&dims);
                let gx = device_ok(dev.sum_axes(&gy, &l, axes, 1.0));
                g.accumulate_on(&dev, in_id, gx);
            }
        });
        Ok(Tensor {
            shape: dst,
            layout,
            data: self.data,
            id: out_id,
            tape,
            device: self.device,
        })
    }

    /// Panicking twin of [`try_broadcast`](Self::try_broadcast).
    #[track_caller]
    pub fn broadcast<Dst, Ax>(self, dst: Dst) -> Tensor<Dst, E, D, T>
    where
        Dst: HasAxes<Ax>,
        S: SameShape<Dst::Reduced, super::Broadcast>,
    {
        or_panic(self.try_broadcast(dst))
    }

    /// Broadcasts to the shape of `other` along the axes `Ax`.
    #[track_caller]
    pub fn broadcast_like<Dst, Ax, E2: FloatDtype, T2>(
        self,
        other: &Tensor<Dst, E2, D, T2>,
    ) -> Tensor<Dst, E, D, T>
    where
        Dst: HasAxes<Ax>,
        S: SameShape<Dst::Reduced, super::Broadcast>,
    {
        self.broadcast(other.shape())
    }
}
