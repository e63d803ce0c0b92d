//! Reshape, and splitting / merging attention heads (reshapes of the last dims).

use std::sync::Arc;

use zerfoo_kernels::{Backend, FloatDtype, Layout};

use super::{HeadsDim, MergeHeads};
use crate::autograd::{device_ok, record, TapeState, TensorId};
use crate::error::or_panic;
use crate::ops::{Reshape, SplitHeads};
use crate::shape::{ConstShape, Dim, ReshapeTo, Shape};
use crate::tensor::Tensor;
use crate::{Error, Result};

impl<S: Shape, E: FloatDtype, Dv: Backend, T: TapeState> Tensor<S, E, Dv, T> {
    /// Reinterprets the elements (row-major) under `dst`, which must hold as many.
    /// A view when the layout allows one, else a copy. The caller checked the count.
    pub(crate) fn reshape_unchecked<Dst: Shape>(self, dst: Dst) -> Tensor<Dst, E, Dv, T> {
        let dims = dst.dims();
        debug_assert_eq!(dims.iter().product::<usize>(), self.numel());
        // A view wherever the regrouped axes allow one (splitting the last
        // axis of a narrowed view into heads, say), else a copy.
        let (data, layout) = match self.layout.reshaped(&dims) {
            Some(l) => (self.data, l),
            None => {
                let copy = device_ok(self.device.contiguous(&self.data, &self.layout));
                (Arc::new(copy), Layout::contiguous(&dims))
            }
        };
        let out_id = TensorId::fresh();
        let (in_id, dev) = (self.id, self.device.clone());
        let tape = record::<T>(out_id, &[self.tape.node()], move |g| {
            // Row-major order is the same on both sides: the gradient passes through.
            if let Some(gy) = g.take_on::<Dv, E>(out_id) {
                g.accumulate_on(&dev, in_id, gy);
            }
        });
        Tensor {
            shape: dst,
            layout,
            data,
            id: out_id,
            tape,
            device: self.device,
        }
    }

    /// The same elements (row-major) under the shape `dst`, which must hold as
    /// many: checked at compile time when both shapes are static, at run time
    /// otherwise. A view when the layout allows one (`self` contiguous, or
    /// every merged or split group of axes contiguous within itself), else a
    /// copy.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U3), f32>::from_vec(Default::default(), vec![0., 1., 2., 3., 4., 5.]).unwrap();
    /// let y = x.try_reshape((U3::default(), Dyn(2))).unwrap();
    /// assert_eq!(y.dims(), [3, 2]);
    /// assert_eq!(y.to_vec(), [0., 1., 2., 3., 4., 5.]);
    /// ```
    ///
    /// Different static element counts do not compile:
    ///
    /// ```compile_fail
    /// use zerfoo::prelude::*;
    /// let x: Tensor<(U2, U3), f32> = Tensor::zeros(Default::default());
    /// let _ = x.reshape((U7::default(),)); // shape error in `Reshape`
    /// ```
    pub fn try_reshape<Dst: Shape>(self, dst: Dst) -> Result<Tensor<Dst, E, Dv, T>>
    where
        S: ReshapeTo<Dst, Reshape>,
    {
        if self.numel() != dst.numel() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.dims().to_vec(),
                rhs: dst.dims().to_vec(),
            });
        }
        Ok(self.reshape_unchecked(dst))
    }

    /// Panicking twin of [`try_reshape`](Self::try_reshape).
    #[track_caller]
    pub fn reshape<Dst: Shape>(self, dst: Dst) -> Tensor<Dst, E, Dv, T>
    where
        S: ReshapeTo<Dst, Reshape>,
    {
        or_panic(self.try_reshape(dst))
    }

    /// [`reshape`](Self::reshape) to an all-static shape named by its type:
    /// `x.reshape_static::<(U3, U2)>()`. Panics if a `Dyn` dim of `self` makes
    /// the element counts differ.
    #[track_caller]
    pub fn reshape_static<Dst: ConstShape>(self) -> Tensor<Dst, E, Dv, T>
    where
        S: ReshapeTo<Dst, Reshape>,
    {
        or_panic(self.try_reshape(Dst::default()))
    }
}

impl<B: Dim, L: Dim, D: Dim, E: FloatDtype, Dv: Backend, T: TapeState> Tensor<(B, L, D), E, Dv, T> {
    /// Splits the last dim into heads: `(B, T, D) -> (B, T, H, Hd)` with
    /// `D = H * Hd` (a reshape; a view when contiguous). At most one of `H`,
    /// `Hd` may be [`Dyn`](crate::shape::Dyn); its size is then `D` divided by
    /// the other. `D` against `H * Hd` is checked at compile time when all
    /// three are static, at run time otherwise.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// dim!(Model = 6);
    /// dim!(Heads = 2);
    /// dim!(HeadDim = 3);
    /// let x: Tensor<(U1, U4, Model), f32> = Tensor::zeros(Default::default());
    /// let h = x.clone().split_heads::<Heads, HeadDim>();
    /// assert_eq!(h.dims(), [1, 4, 2, 3]);
    /// let h2 = x.split_heads::<Heads, Dyn>(); // head dim 6 / 2
    /// assert_eq!(h2.dims(), [1, 4, 2, 3]);
    /// ```
    pub fn try_split_heads<H: Dim, Hd: Dim>(self) -> Result<Tensor<(B, L, H, Hd), E, Dv, T>>
    where
        D: HeadsDim<H, Hd, SplitHeads>,
    {
        let d = self.shape.2.size();
        let (h, hd) = match (H::STATIC, Hd::STATIC) {
            (Some(h), Some(hd)) => (h, hd),
            (Some(h), None) if h > 0 && d % h == 0 => (h, d / h),
            (None, Some(hd)) if hd > 0 && d % hd == 0 => (d / hd, hd),
            (None, None) => {
                return Err(Error::InvalidArgument {
                    op: "split_heads",
                    reason: "both the head count and the head dim are `Dyn`; \
                             give their sizes with `split_heads_to`"
                        .to_string(),
                })
            }
            (h, hd) => {
                return Err(Error::InvalidArgument {
                    op: "split_heads",
                    reason: format!(
                        "the last dim {d} is not a multiple of {}",
                        h.or(hd).unwrap_or(0)
                    ),
                })
            }
        };
        match (H::from_size(h), Hd::from_size(hd)) {
            (Some(h), Some(hd)) => self.try_split_heads_to(h, hd),
            _ => Err(Error::ShapeMismatch {
                op: "split_heads",
                lhs: vec![d],
                rhs: vec![h, hd],
            }),
        }
    }

    /// Panicking twin of [`try_split_heads`](Self::try_split_heads).
    #[track_caller]
    pub fn split_heads<H: Dim, Hd: Dim>(self) -> Tensor<(B, L, H, Hd), E, Dv, T>
    where
        D: HeadsDim<H, Hd, SplitHeads>,
    {
        or_panic(self.try_split_heads())
    }

    /// [`split_heads`](Self::split_heads) with the sizes given as values (for
    /// `Dyn` heads and head dim); an error unless `D == heads * head_dim`.
    pub fn try_split_heads_to<H: Dim, Hd: Dim>(
        self,
        heads: H,
        head_dim: Hd,
    ) -> Result<Tensor<(B, L, H, Hd), E, Dv, T>>
    where
        D: HeadsDim<H, Hd, SplitHeads>,
    {
        let (d, h, hd) = (self.shape.2.size(), heads.size(), head_dim.size());
        if h.checked_mul(hd) != Some(d) {
            return Err(Error::ShapeMismatch {
                op: "split_heads",
                lhs: vec![d],
                rhs: vec![h, hd],
            });
        }
        let (b, l) = (self.shape.0, self.shape.1);
        Ok(self.reshape_unchecked((b, l, heads, head_dim)))
    }

    /// Panicking twin of [`try_split_heads_to`](Self::try_split_heads_to).
    #[track_caller]
    pub fn split_heads_to<H: Dim, Hd: Dim>(
        self,
        heads: H,
        head_dim: Hd,
    ) -> Tensor<(B, L, H, Hd), E, Dv, T>
    where
        D: HeadsDim<H, Hd, SplitHeads>,
    {
        or_panic(self.try_split_heads_to(heads, head_dim))
    }
}

impl<B: Dim, L: Dim, H: Dim, Hd: Dim, E: FloatDtype, Dv: Backend, T: TapeState>
    Tensor<(B, L, H, Hd), E, Dv, T>
{
    /// Merges the heads back: `(B, T, H, Hd) -> (B, T, D)` with `D = H * Hd`.
    /// Name the merged dim (`merge_heads::<Model>()`, checked like
    /// [`split_heads`](Tensor::split_heads)) or take it as
    /// [`Dyn`](crate::shape::Dyn) (`merge_heads::<Dyn>()`, never fails). A view
    /// when the layout allows one, else a copy (after a transpose of the heads).
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// dim!(Model = 6);
    /// let x: Tensor<(U1, U4, U2, U3), f32> = Tensor::zeros(Default::default());
    /// assert_eq!(x.clone().merge_heads::<Model>().dims(), [1, 4, 6]);
    /// assert_eq!(x.merge_heads::<Dyn>().dims(), [1, 4, 6]);
    /// ```
    pub fn try_merge_heads<D>(self) -> Result<Tensor<(B, L, D), E, Dv, T>>
    where
        D: HeadsDim<H, Hd, MergeHeads>,
    {
        let (h, hd) = (self.shape.2.size(), self.shape.3.size());
        let d = h.checked_mul(hd).and_then(D::from_size);
        let Some(d) = d else {
            return Err(Error::ShapeMismatch {
                op: "merge_heads",
                lhs: vec![h, hd],
                rhs: D::STATIC.into_iter().collect(),
            });
        };
        let (b, l) = (self.shape.0, self.shape.1);
        Ok(self.reshape_unchecked((b, l, d)))
    }

    /// Panicking twin of [`try_merge_heads`](Self::try_merge_heads).
    #[track_caller]
    pub fn merge_heads<D>(self) -> Tensor<(B, L, D), E, Dv, T>
    where
        D: HeadsDim<H, Hd, MergeHeads>,
    {
        or_panic(self.try_merge_heads())
    }
}
