//! Narrowing one axis (a view) and the ops built on it: slice, split, chunk.
//! The backward adds the gradient into the matching block of the input's
//! gradient (zeros elsewhere).

use core::ops::{Bound, RangeBounds};

use zerfoo_kernels::{Backend, FloatDtype};

use crate::autograd::{device_ok, record, TapeState, TensorId};
use crate::error::or_panic;
use crate::shape::{ResizeAxis, Shape};
use crate::tensor::Tensor;
use crate::{Error, Result};

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// The view of `start..start + len` along `axis` (bounds checked by the caller).
    pub(crate) fn narrow_view<S2: Shape>(
        self,
        axis: usize,
        start: usize,
        len: usize,
        out: S2,
    ) -> Tensor<S2, E, D, T> {
        let layout = self.layout.narrow(axis, start, len);
        let out_id = TensorId::fresh();
        let (in_id, dims, dev) = (self.id, self.dims(), self.device.clone());
        let tape = record::<T>(out_id, &[self.tape.node()], move |g| {
            if let Some(gy) = g.take_on::<D, E>(out_id) {
                let gx = g.grad_mut_on::<D, E>(&dev, in_id, dims.iter().product());
                device_ok(dev.add_narrow_into(gx, &dims, axis, start, len, &gy));
            }
        });
        Tensor {
            shape: out,
            layout,
            data: self.data,
            id: out_id,
            tape,
            device: self.device,
        }
    }

    /// Elements `start..start + len` along the axis `Ax` (a view, no copy);
    /// that dim becomes `Dyn`. An error if the range does not fit the axis.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U4), f32>::from_vec(Default::default(), (0..8).map(|i| i as f32).collect()).unwrap();
    /// let y: Tensor<(U2, Dyn), f32> = x.narrow::<Axis<1>>(1, 2);
    /// assert_eq!(y.to_vec(), [1., 2., 5., 6.]);
    /// ```
    pub fn try_narrow<Ax>(
        self,
        start: usize,
        len: usize,
    ) -> Result<Tensor<<S as ResizeAxis<Ax>>::Resized, E, D, T>>
    where
        S: ResizeAxis<Ax>,
    {
        let axis = S::AXIS;
        let size = self.layout.shape()[axis];
        match start.checked_add(len) {
            Some(end) if end <= size => {}
            _ => {
                return Err(Error::InvalidArgument {
                    op: "narrow",
                    reason: format!(
                        "the range {start}..{} does not fit axis {axis} of size {size}",
                        start as u128 + len as u128
                    ),
                })
            }
        }
        let out = self.shape.resized(len);
        Ok(self.narrow_view(axis, start, len, out))
    }

    /// Panicking twin of [`try_narrow`](Self::try_narrow).
    #[track_caller]
    pub fn narrow<Ax>(
        self,
        start: usize,
        len: usize,
    ) -> Tensor<<S as ResizeAxis<Ax>>::Resized, E, D, T>
    where
        S: ResizeAxis<Ax>,
    {
        or_panic(self.try_narrow::<Ax>(start, len))
    }

    /// [`narrow`](Self::narrow) with a range: `x.slice::<Axis<1>>(1..3)`,
    /// `x.slice::<Axis<0>>(2..)`.
    pub fn try_slice<Ax>(
        self,
        range: impl RangeBounds<usize>,
    ) -> Result<Tensor<<S as ResizeAxis<Ax>>::Resized, E, D, T>>
    where
        S: ResizeAxis<Ax>,
    {
        let size = self.layout.shape()[S::AXIS];
        let start = match range.start_bound() {
            Bound::Included(&s) => Some(s),
            Bound::Excluded(&s) => s.checked_add(1),
            Bound::Unbounded => Some(0),
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => Some(size),
        };
        let reason = match (start, end) {
            (Some(s), Some(e)) if s <= e => return self.try_narrow::<Ax>(s, e - s),
            (Some(s), Some(e)) => format!("the range {s}..{e} ends before it starts"),
            _ => "a bound of the range overflows `usize`".to_string(),
        };
        Err(Error::InvalidArgument {
            op: "slice",
            reason,
        })
    }

    /// Panicking twin of [`try_slice`](Self::try_slice).
    #[track_caller]
    pub fn slice<Ax>(
        self,
        range: impl RangeBounds<usize>,
    ) -> Tensor<<S as ResizeAxis<Ax>>::Resized, E, D, T>
    where
        S: ResizeAxis<Ax>,
    {
        or_panic(self.try_slice::<Ax>(range))
    }

    /// Splits along the axis `Ax` into consecutive pieces of the given sizes,
    /// which must add up to that dim (zero sizes give empty pieces). Each
    /// piece is a view with its own backward.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U5,), f32>::from_vec(Default::default(), vec![0., 1., 2., 3., 4.]).unwrap();
    /// let parts = x.split::<Axis<0>>(&[2, 3]);
    /// assert_eq!(parts[0].to_vec(), [0., 1.]);
    /// assert_eq!(parts[1].to_vec(), [2., 3., 4.]);
    /// ```
    pub fn try_split<Ax>(
        self,
        sizes: &[usize],
    ) -> Result<Vec<Tensor<<S as ResizeAxis<Ax>>::Resized, E, D, T>>>
    where
        S: ResizeAxis<Ax>,
    {
        let axis = S::AXIS;
        let size = self.layout.shape()[axis];
        let total = sizes.iter().try_fold(0usize, |a, &s| a.checked_add(s));
        if total != Some(size) {
            return Err(Error::InvalidArgument {
                op: "split",
                reason: format!(
                    "the sizes {sizes:?} do not add up to {size}, the size of axis {axis}"
                ),
            });
        }
        let mut start = 0;
        let mut parts = Vec::with_capacity(sizes.len());
        for &len in sizes {
            let out = self.shape.resized(len);
            parts.push(self.clone().narrow_view(axis, start, len, out));
            start += len;
        }
        Ok(parts)
    }

    /// Panicking twin of [`try_split`](Self::try_split).
    #[track_caller]
    pub fn split<Ax>(self, sizes: &[usize]) -> Vec<Tensor<<S as ResizeAxis<Ax>>::Resized, E, D, T>>
    where
        S: ResizeAxis<Ax>,
    {
        or_panic(self.try_split::<Ax>(sizes))
    }

    /// Splits along `Ax` into `n` pieces as PyTorch's `chunk` does: each of
    /// `ceil(size / n)` elements, the last one smaller, so there may be fewer
    /// than `n` pieces (none for an empty axis). An error if `n == 0`.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x: Tensor<(U2, U7), f32> = Tensor::zeros(Default::default());
    /// let dims: Vec<usize> = x.chunk::<Axis<1>>(3).iter().map(|c| c.dims()[1]).collect();
    /// assert_eq!(dims, [3, 3, 1]);
    /// ```
    pub fn try_chunk<Ax>(
        self,
        n: usize,
    ) -> Result<Vec<Tensor<<S as ResizeAxis<Ax>>::Resized, E, D, T>>>
    where
        S: ResizeAxis<Ax>,
    {
        if n == 0 {
            return Err(Error::InvalidArgument {
                op: "chunk",
                reason: "cannot split into 0 chunks".to_string(),
            });
        }
        let size = self.layout.shape()[S::AXIS];
        let step = size.div_ceil(n);
        let sizes: Vec<usize> = (0..size)
            .step_by(step.max(1))
            .map(|s| step.min(size - s))
            .collect();
        self.try_split::<Ax>(&sizes)
    }

    /// Panicking twin of [`try_chunk`](Self::try_chunk).
    #[track_caller]
    pub fn chunk<Ax>(self, n: usize) -> Vec<Tensor<<S as ResizeAxis<Ax>>::Resized, E, D, T>>
    where
        S: ResizeAxis<Ax>,
    {
        or_panic(self.try_chunk::<Ax>(n))
    }
}
