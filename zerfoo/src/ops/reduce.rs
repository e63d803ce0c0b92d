//! Reductions over chosen axes: sum, mean, max, min, var, logsumexp (each
//! with its backward), and argmax/argmin (no gradient). Axes are checked at
//! compile time through [`HasAxes`]: reducing over an axis the shape lacks
//! does not compile.

use std::sync::Arc;

use zerfoo_kernels::{Backend, FloatDtype, Layout};

use crate::autograd::{device_ok, record, NoTape, TapeState, TensorId};
use crate::shape::{HasAxes, Shape};
use crate::tensor::Tensor;

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// `scale * sum` over `axes`, producing shape `out`; backward spreads the
    /// gradient back over the reduced axes.
    pub(crate) fn sum_axes_scaled<S2: Shape>(
        self,
        axes: &'static [usize],
        out: S2,
        scale_by_count: bool,
    ) -> Tensor<S2, E, D, T> {
        let count: usize = axes.iter().map(|&a| self.layout.shape()[a]).product();
        let scale = if scale_by_count {
            1.0 / count.max(1) as f64
        } else {
            1.0
        };
        let y = device_ok(self.device.sum_axes(&self.data, &self.layout, axes, scale));
        let out_id = TensorId::fresh();
        let (in_id, dims, dev) = (self.id, self.shape.dims(), self.device.clone());
        let tape = record::<T>(out_id, &[self.tape.node()], move |g| {
            if let Some(gy) = g.take_on::<D, E>(out_id) {
                let gx = device_ok(dev.sum_backward(&gy, &dims, axes, scale));
                g.accumulate_on(&dev, in_id, gx);
            }
        });
        Tensor {
            layout: Layout::contiguous(&out.dims()),
            shape: out,
            data: Arc::new(y),
            id: out_id,
            tape,
            device: self.device,
        }
    }

    /// Sum over the axes `Ax` (`Axis<1>`, `Axes2<0, 2>`, ...).
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U3), f32>::from_vec(Default::default(), vec![1., 2., 3., 4., 5., 6.]).unwrap();
    /// assert_eq!(x.sum::<Axis<1>>().to_vec(), [6., 15.]);
    /// ```
    pub fn sum<Ax>(self) -> Tensor<S::Reduced, E, D, T>
    where
        S: HasAxes<Ax>,
    {
        let out = self.shape.reduced();
        self.sum_axes_scaled(S::AXES, out, false)
    }

    /// Mean over the axes `Ax`.
    pub fn mean<Ax>(self) -> Tensor<S::Reduced, E, D, T>
    where
        S: HasAxes<Ax>,
    {
        let out = self.shape.reduced();
        self.sum_axes_scaled(S::AXES, out, true)
    }

    /// Sum of every element (a scalar).
    pub fn sum_all(self) -> Tensor<(), E, D, T> {
        self.sum_axes_scaled(ALL_AXES[S::RANK], (), false)
    }

    /// Mean of every element (a scalar).
    pub fn mean_all(self) -> Tensor<(), E, D, T> {
        self.sum_axes_scaled(ALL_AXES[S::RANK], (), true)
    }
}

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// Max (`MAX = true`) or min over `axes`; backward splits the gradient
    /// evenly among the elements equal to the result.
    fn extreme_axes<S2: Shape, const MAX: bool>(
        self,
        axes: &'static [usize],
        out: S2,
    ) -> Tensor<S2, E, D, T> {
        let (y, counts) = device_ok(self.device.extreme_axes::<E, MAX>(
            &self.data,
            &self.layout,
            axes,
        ));
        let out_id = TensorId::fresh();
        let y = Arc::new(y);
        let tape = if T::TRACKED {
            let (x, lx, in_id, y_saved) = (self.data.clone(), self.layout, self.id, y.clone());
            let dev = self.device.clone();
            record::<T>(out_id, &[self.tape.node()], move |g| {
                if let Some(gy) = g.take_on::<D, E>(out_id) {
                    let gx = device_ok(dev.extreme_backward(&x, &lx, axes, &y_saved, &counts, &gy));
                    g.accumulate_on(&dev, in_id, gx);
                }
            })
        } else {
            T::from_node(None)
        };
        Tensor {
            layout: Layout::contiguous(&out.dims()),
            shape: out,
            data: y,
            id: out_id,
            tape,
            device: self.device,
        }
    }

    /// Maximum over the axes `Ax`. NaN propagates.
    ///
    /// Backward: the gradient goes to the position of the maximum; where
    /// several elements tie for it, they share it evenly (PyTorch's `amax`
    /// rule, so the gradient is the same whatever the tie order).
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U3), f32>::from_vec(Default::default(), vec![1., 5., 3., 4., 2., 0.]).unwrap();
    /// assert_eq!(x.max::<Axis<1>>().to_vec(), [5., 4.]);
    /// ```
    ///
    /// Reducing over an axis the shape lacks does not compile:
    ///
    /// ```compile_fail
    /// use zerfoo::prelude::*;
    /// let x: Tensor<(U2, U3), f32> = Tensor::zeros(Default::default());
    /// let _ = x.max::<Axis<2>>(); // shape `(U2, U3)` has no axis `Axis<2>`
    /// ```
    pub fn max<Ax>(self) -> Tensor<S::Reduced, E, D, T>
    where
        S: HasAxes<Ax>,
    {
        let out = self.shape.reduced();
        self.extreme_axes::<_, true>(S::AXES, out)
    }

    /// Minimum over the axes `Ax`. NaN propagates; ties share the gradient
    /// evenly (PyTorch's `amin` rule).
    pub fn min<Ax>(self) -> Tensor<S::Reduced, E, D, T>
    where
        S: HasAxes<Ax>,
    {
        let out = self.shape.reduced();
        self.extreme_axes::<_, false>(S::AXES, out)
    }

    /// Maximum of every element (a scalar); ties share the gradient evenly.
    pub fn max_all(self) -> Tensor<(), E, D, T> {
        self.extreme_axes::<_, true>(ALL_AXES[S::RANK], ())
    }

    /// Minimum of every element (a scalar); ties share the gradient evenly.
    pub fn min_all(self) -> Tensor<(), E, D, T> {
        self.extreme_axes::<_, false>(ALL_AXES[S::RANK], ())
    }

    /// Variance over the axes `Ax`: `sum((x - mean)^2) / (n - correction)`.
    /// `correction = 1` is PyTorch's unbiased default, `0` the biased
    /// (population) variance. Computed in one pass (Welford) in the compute
    /// type. With `n <= correction` the result is NaN or inf, as in PyTorch.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U4,), f64>::from_vec(Default::default(), vec![1., 2., 3., 4.]).unwrap();
    /// assert_eq!(x.clone().var::<Axis<0>>(0).item(), 1.25);
    /// assert!((x.var::<Axis<0>>(1).item() - 5.0 / 3.0).abs() < 1e-15);
    /// ```
    pub fn var<Ax>(self, correction: usize) -> Tensor<S::Reduced, E, D, T>
    where
        S: HasAxes<Ax>,
    {
        let out = self.shape.reduced();
        let axes = S::AXES;
        let (y, means) =
            device_ok(
                self.device
                    .var_axes(&self.data, &self.layout, axes, correction),
            );
        let out_id = TensorId::fresh();
        let tape = if T::TRACKED {
            let (x, lx, in_id) = (self.data.clone(), self.layout, self.id);
            let dev = self.device.clone();
            record::<T>(out_id, &[self.tape.node()], move |g| {
                if let Some(gy) = g.take_on::<D, E>(out_id) {
                    let gx = device_ok(dev.var_backward(&x, &lx, axes, &means, correction, &gy));
                    g.accumulate_on(&dev, in_id, gx);
                }
            })
        } else {
            T::from_node(None)
        };
        Tensor {
            layout: Layout::contiguous(&out.dims()),
            shape: out,
            data: Arc::new(y),
            id: out_id,
            tape,
            device: self.device,
        }
    }
}

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// `log(sum(exp(x)))` over the axes `Ax`, numerically stable (the max is
    /// subtracted before exponentiating, so `x = 1e4` does not overflow).
    /// Backward: `grad * softmax(x)` over the reduced axes.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2,), f32>::from_vec(Default::default(), vec![1e4, 1e4]).unwrap();
    /// let y = x.logsumexp::<Axis<0>>().item();
    /// assert!((y - (1e4 + 2f32.ln())).abs() < 1e-2);
    /// ```
    pub fn logsumexp<Ax>(self) -> Tensor<S::Reduced, E, D, T>
    where
        S: HasAxes<Ax>,
    {
        let out = self.shape.reduced();
        let axes = S::AXES;
        let (y, lse) = device_ok(self.device.logsumexp_axes(&self.data, &self.layout, axes));
        let out_id = TensorId::fresh();
        let tape = if T::TRACKED {
            let (x, lx, in_id) = (self.data.clone(), self.layout, self.id);
            let dev = self.device.clone();
            record::<T>(out_id, &[self.tape.node()], move |g| {
                if let Some(gy) = g.take_on::<D, E>(out_id) {
                    let gx = device_ok(dev.logsumexp_backward(&x, &lx, axes, &lse, &gy));
                    g.accumulate_on(&dev, in_id, gx);
                }
            })
        } else {
            T::from_node(None)
        };
        Tensor {
            layout: Layout::contiguous(&out.dims()),
            shape: out,
            data: Arc::new(y),
            id: out_id,
            tape,
            device: self.device,
        }
    }

    /// The index of the maximum along the axes `Ax` (row-major within the
    /// reduced axes when there are several), on the tensor's device. On
    /// ties the first index wins; NaN counts as the maximum (the first NaN
    /// wins), as in PyTorch. No gradient flows through an index. An empty
    /// axis gives 0.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U3), f32>::from_vec(Default::default(), vec![1., 5., 5., 4., 2., 0.]).unwrap();
    /// assert_eq!(x.argmax::<Axis<1>>().to_vec(), [1, 0]);
    /// ```
    pub fn argmax<Ax>(&self) -> Tensor<S::Reduced, i64, D, NoTape>
    where
        S: HasAxes<Ax>,
    {
        self.arg_extreme::<Ax, true>()
    }

    /// The index of the minimum along the axes `Ax`: first index on ties,
    /// NaN counts as the minimum (the first NaN wins), as in PyTorch.
    pub fn argmin<Ax>(&self) -> Tensor<S::Reduced, i64, D, NoTape>
    where
        S: HasAxes<Ax>,
    {
        self.arg_extreme::<Ax, false>()
    }

    fn arg_extreme<Ax, const MAX: bool>(&self) -> Tensor<S::Reduced, i64, D, NoTape>
    where
        S: HasAxes<Ax>,
    {
        let idx = device_ok(self.device.arg_extreme_axes::<E, MAX>(
            &self.data,
            &self.layout,
            S::AXES,
        ));
        let out = self.shape.reduced();
        Tensor {
            layout: Layout::contiguous(&out.dims()),
            shape: out,
            data: Arc::new(idx),
            id: TensorId::fresh(),
            tape: NoTape,
            device: self.device.clone(),
        }
    }
}

/// `ALL_AXES[r]` = `[0, 1, .., r-1]`.
pub(crate) const ALL_AXES: [&[usize]; 7] = [
    &[],
    &[0],
    &[0, 1],
    &[0, 1, 2],
    &[0, 1, 2, 3],
    &[0, 1, 2, 3, 4],
    &[0, 1, 2, 3, 4, 5],
];
