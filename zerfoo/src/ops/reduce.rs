//! Reductions over chosen axes: sum and mean here; max, min, var,
//! logsumexp, argmax and argmin beside them. Axes are checked at compile time
//! through [`HasAxes`].

use std::sync::Arc;

use num_traits::Zero;
use zerfoo_kernels::cpu::{self, reduce as k};
use zerfoo_kernels::{Cpu, FloatDtype, Layout, Real};

use crate::autograd::{record, TapeState, TensorId};
use crate::shape::{HasAxes, Shape};
use crate::tensor::Tensor;

/// A layout that reads a reduced (contiguous, `kept`-shaped) buffer as if it
/// had the full `dims`: stride 0 on the reduced axes.
pub(crate) fn expand_layout(dims: &[usize], axes: &[usize]) -> Layout {
    let mut strides = vec![0usize; dims.len()];
    let mut s = 1;
    for d in (0..dims.len()).rev() {
        if !axes.contains(&d) {
            strides[d] = s;
            s *= dims[d];
        }
    }
    Layout::new(dims, &strides, 0)
}

impl<S: Shape, E: FloatDtype, T: TapeState> Tensor<S, E, Cpu, T> {
    /// `scale * sum` over `axes`, producing shape `out`; backward spreads the
    /// gradient back over the reduced axes.
    pub(crate) fn sum_axes_scaled<S2: Shape>(
        self,
        axes: &'static [usize],
        out: S2,
        scale_by_count: bool,
    ) -> Tensor<S2, E, Cpu, T> {
        let count: usize = axes.iter().map(|&a| self.layout.shape()[a]).product();
        let scale = if scale_by_count {
            1.0 / count.max(1) as f64
        } else {
            1.0
        };
        let y: Vec<E> = k::reduce_axes(
            &self.data,
            &self.layout,
            axes,
            E::Acc::zero(),
            |a, x: E| a + x.to_acc(),
            |a, _| E::from_acc(a * E::Acc::of_f64(scale)),
        );
        let out_id = TensorId::fresh();
        let (in_id, dims) = (self.id, self.shape.dims());
        let tape = record::<T>(out_id, &[self.tape.node()], move |g| {
            if let Some(gy) = g.take::<E>(out_id) {
                let l = expand_layout(&dims, axes);
                let s = E::Acc::of_f64(scale);
                let gx = cpu::map(&gy, &l, |v: E| E::from_acc(v.to_acc() * s));
                g.accumulate(in_id, gx);
            }
        });
        Tensor {
            layout: Layout::contiguous(&out.dims()),
            shape: out,
            data: Arc::new(y),
            id: out_id,
            tape,
            device: Cpu,
        }
    }

    /// Sum over the axes `Ax` (`Axis<1>`, `Axes2<0, 2>`, ...).
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U3), f32>::from_vec(Default::default(), vec![1., 2., 3., 4., 5., 6.]).unwrap();
    /// assert_eq!(x.sum::<Axis<1>>().to_vec(), [6., 15.]);
    /// ```
    pub fn sum<Ax>(self) -> Tensor<S::Reduced, E, Cpu, T>
    where
        S: HasAxes<Ax>,
    {
        let out = self.shape.reduced();
        self.sum_axes_scaled(S::AXES, out, false)
    }

    /// Mean over the axes `Ax`.
    pub fn mean<Ax>(self) -> Tensor<S::Reduced, E, Cpu, T>
    where
        S: HasAxes<Ax>,
    {
        let out = self.shape.reduced();
        self.sum_axes_scaled(S::AXES, out, true)
    }

    /// Sum of every element (a scalar).
    pub fn sum_all(self) -> Tensor<(), E, Cpu, T> {
        self.sum_axes_scaled(ALL_AXES[S::RANK], (), false)
    }

    /// Mean of every element (a scalar).
    pub fn mean_all(self) -> Tensor<(), E, Cpu, T> {
        self.sum_axes_scaled(ALL_AXES[S::RANK], (), true)
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
