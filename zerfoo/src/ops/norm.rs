//! Layer norm and RMS norm over the last axis, with weight (and bias)
//! vectors whose length must equal the last dim (compared by value at compile
//! time, at run time for `Dyn`).
//!
//! Forward and backward are single fused kernels per row. The weight and
//! bias may carry tapes of their own (the output's tape is the [`Merge`] of
//! all inputs); either way they receive gradients by id, like every tensor
//! that feeds a loss.

use std::sync::Arc;

use zerfoo_kernels::cpu::norm::NormKind;
use zerfoo_kernels::{Backend, FloatDtype, Layout};

use crate::autograd::{device_ok, record, Merge, Node, TapeState, TensorId};
use crate::error::or_panic;
use crate::ops::{LayerNorm, RmsNorm, SameDtype};
use crate::shape::{Dim, SameDim, Shape};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// The last dim of a shape: normalizations work along it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no last dim: normalization needs a tensor of rank 1 or more",
    label = "a scalar cannot be normalized"
)]
pub trait LastDim: Shape {
    /// The last dim's type.
    type Last: Dim;
    /// The last dim's value.
    fn last_dim(&self) -> Self::Last;
}

macro_rules! last_dim {
    ($last:ident $i:tt; $($d:ident),*) => {
        impl<$($d: Dim,)* $last: Dim> LastDim for ($($d,)* $last,) {
            type Last = $last;
            #[inline]
            fn last_dim(&self) -> $last {
                self.$i
            }
        }
    };
}
last_dim!(A 0;);
last_dim!(B 1; A);
last_dim!(C 2; A, B);
last_dim!(D 3; A, B, C);
last_dim!(E 4; A, B, C, D);
last_dim!(F 5; A, B, C, D, E);

/// The output tape of an op with three inputs.
pub type Merge3<T, Tw, Tb> = <<T as Merge<Tw>>::Out as Merge<Tb>>::Out;

/// What a normalization keeps of its weight or bias.
struct Param<E: FloatDtype, D: Backend> {
    data: Arc<D::Storage<E>>,
    layout: Layout,
    id: TensorId,
    node: Option<Arc<Node>>,
}

impl<E: FloatDtype, D: Backend> Param<E, D> {
    fn of<N: Dim, T: TapeState>(t: Tensor<(N,), E, D, T>) -> Self {
        Param {
            node: t.tape.node(),
            data: t.data,
            layout: t.layout,
            id: t.id,
        }
    }
    fn view(&self) -> (&D::Storage<E>, &Layout) {
        (&self.data, &self.layout)
    }
}

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// Runs a normalization after checking the parameter lengths at run time.
    fn norm_op<Out: TapeState>(
        self,
        op: &'static str,
        kind: NormKind,
        weight: Option<Param<E, D>>,
        bias: Option<Param<E, D>>,
        eps: f64,
    ) -> Result<Tensor<S, E, D, Out>> {
        let dims = self.shape.dims();
        let last = dims.last().copied().unwrap_or(1);
        for p in weight.iter().chain(&bias) {
            if p.layout.shape() != [last] {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: dims.to_vec(),
                    rhs: p.layout.shape().to_vec(),
                });
            }
        }
        let (y, stats) = self.device.norm_forward(
            kind,
            &self.data,
            &self.layout,
            weight.as_ref().map(Param::view),
            bias.as_ref().map(Param::view),
            eps,
        )?;
        let out_id = TensorId::fresh();
        let tape = if Out::TRACKED {
            let parents = [
                self.tape.node(),
                weight.as_ref().and_then(|p| p.node.clone()),
                bias.as_ref().and_then(|p| p.node.clone()),
            ];
            let (x, lx, in_id) = (self.data.clone(), self.layout, self.id);
            let w = weight.map(|p| (p.data, p.layout, p.id));
            let bias_id = bias.map(|p| p.id);
            let dev = self.device.clone();
            record::<Out>(out_id, &parents, move |g| {
                if let Some(gy) = g.take_shared_on::<D, E>(out_id) {
                    // Only read: it may stay shared (see `GradStore::take_shared_on`).
                    let wv = w.as_ref().map(|(d, l, _)| (&**d, l));
                    // Into the input's gradient so far (a residual stream's)
                    // in the backward's own pass, when there is one.
                    let into = g.existing_mut_on::<D, E>(in_id);
                    let (gx, gw, gb) = device_ok(dev.norm_backward(
                        kind,
                        &x,
                        &lx,
                        wv,
                        bias_id.is_some(),
                        &stats,
                        &gy,
                        into,
                    ));
                    if let Some(gx) = gx {
                        g.accumulate_on(&dev, in_id, gx);
                    }
                    if let (Some((_, _, id)), Some(gw)) = (&w, gw) {
                        g.accumulate_on(&dev, *id, gw);
                    }
                    if let (Some(id), Some(gb)) = (bias_id, gb) {
                        g.accumulate_on(&dev, id, gb);
                    }
                }
            })
        } else {
            Out::from_node(None)
        };
        Ok(Tensor {
            layout: Layout::contiguous(&dims),
            shape: self.shape,
            data: Arc::new(y),
            id: out_id,
            tape,
            device: self.device,
        })
    }

    /// Layer norm over the last axis (PyTorch `F.layer_norm` with
    /// `normalized_shape = (D,)`): `(x - mean) / sqrt(var + eps) * weight + bias`
    /// with the biased variance, computed in `f32`/`f64` and rounded once.
    /// `weight` and `bias` have shape `(D,)`, `D` the last dim; a `Dyn`
    /// mismatch is an error.
    ///
    /// The output records if any of `self`, `weight`, `bias` does; the
    /// weight and bias get gradients by id either way.
    #[allow(clippy::type_complexity)]
    pub fn try_layer_norm<D2, D3, E2, Tw, Tb>(
        self,
        weight: &Tensor<(D2,), E2, D, Tw>,
        bias: &Tensor<(D3,), E2, D, Tb>,
        eps: f64,
    ) -> Result<Tensor<S, E, D, Merge3<T, Tw, Tb>>>
    where
        D2: Dim,
        D3: Dim,
        E2: FloatDtype,
        Tw: TapeState,
        Tb: TapeState,
        S: LastDim,
        S::Last: SameDim<D2, LayerNorm> + SameDim<D3, LayerNorm>,
        E: SameDtype<E2, LayerNorm>,
        T: Merge<Tw>,
        <T as Merge<Tw>>::Out: Merge<Tb>,
    {
        let w = Param::of(E::same(weight.clone()));
        let b = Param::of(E::same(bias.clone()));
        self.norm_op("layer_norm", NormKind::Layer, Some(w), Some(b), eps)
    }

    /// Panicking twin of [`try_layer_norm`](Self::try_layer_norm).
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// dim!(Hidden = 4);
    /// let x = Tensor::<(U1, Hidden), f32>::from_vec(Default::default(), vec![1., 2., 3., 4.]).unwrap();
    /// let (w, b) = (Tensor::ones((Hidden,)), Tensor::zeros((Hidden,)));
    /// let y = x.layer_norm(&w, &b, 0.0).to_vec();
    /// let s = 1.25f32.sqrt();
    /// assert!((y[0] + 1.5 / s).abs() < 1e-6 && (y[3] - 1.5 / s).abs() < 1e-6);
    /// ```
    ///
    /// A static weight of the wrong length does not compile:
    ///
    /// ```compile_fail
    /// use zerfoo::prelude::*;
    /// dim!(Hidden = 4);
    /// dim!(Ffn = 8);
    /// let x: Tensor<(U1, Hidden), f32> = Tensor::zeros(Default::default());
    /// let (w, b) = (Tensor::<(Ffn,), f32>::ones((Ffn,)), Tensor::<(Hidden,), f32>::zeros((Hidden,)));
    /// let _ = x.layer_norm(&w, &b, 1e-5); // shape error in `LayerNorm`: `Hidden` does not match `Ffn`
    /// ```
    #[track_caller]
    pub fn layer_norm<D2, D3, E2, Tw, Tb>(
        self,
        weight: &Tensor<(D2,), E2, D, Tw>,
        bias: &Tensor<(D3,), E2, D, Tb>,
        eps: f64,
    ) -> Tensor<S, E, D, Merge3<T, Tw, Tb>>
    where
        D2: Dim,
        D3: Dim,
        E2: FloatDtype,
        Tw: TapeState,
        Tb: TapeState,
        S: LastDim,
        S::Last: SameDim<D2, LayerNorm> + SameDim<D3, LayerNorm>,
        E: SameDtype<E2, LayerNorm>,
        T: Merge<Tw>,
        <T as Merge<Tw>>::Out: Merge<Tb>,
    {
        or_panic(self.try_layer_norm(weight, bias, eps))
    }

    /// Layer norm over the last axis without weight and bias:
    /// `(x - mean) / sqrt(var + eps)`.
    pub fn layer_norm_no_affine(self, eps: f64) -> Self
    where
        S: LastDim,
    {
        or_panic(self.norm_op("layer_norm", NormKind::Layer, None, None, eps))
    }

    /// Layer norm with a weight and no bias (`LayerNorm(D, bias=False)`):
    /// the kernel skips the shift and the backward computes no bias
    /// gradient. `weight` carries this tensor's tape type (a layer passes
    /// `weight.retaped::<T>()`).
    pub(crate) fn try_layer_norm_without_bias<N: Dim>(
        self,
        weight: &Tensor<(N,), E, D, T>,
        eps: f64,
    ) -> Result<Self>
    where
        S: LastDim,
    {
        self.norm_op(
            "layer_norm",
            NormKind::Layer,
            Some(Param::of(weight.clone())),
            None,
            eps,
        )
    }

    /// RMS norm over the last axis (T5, Llama):
    /// `x * rsqrt(mean(x^2) + eps) * weight`, computed in `f32`/`f64` and
    /// rounded once. `weight` has shape `(D,)`; a `Dyn` mismatch is an error.
    pub fn try_rms_norm<D2, E2, Tw>(
        self,
        weight: &Tensor<(D2,), E2, D, Tw>,
        eps: f64,
    ) -> Result<Tensor<S, E, D, <T as Merge<Tw>>::Out>>
    where
        D2: Dim,
        E2: FloatDtype,
        Tw: TapeState,
        S: LastDim,
        S::Last: SameDim<D2, RmsNorm>,
        E: SameDtype<E2, RmsNorm>,
        T: Merge<Tw>,
    {
        let w = Param::of(E::same(weight.clone()));
        self.norm_op("rms_norm", NormKind::Rms, Some(w), None, eps)
    }

    /// Panicking twin of [`try_rms_norm`](Self::try_rms_norm).
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2,), f32>::from_vec(Default::default(), vec![3., 4.]).unwrap();
    /// let w = Tensor::<(U2,), f32>::from_vec(Default::default(), vec![1., 2.]).unwrap();
    /// let y = x.rms_norm(&w, 0.0).to_vec(); // rms = sqrt(12.5)
    /// assert!((y[1] - 8.0 / 12.5f32.sqrt()).abs() < 1e-6);
    /// ```
    #[track_caller]
    pub fn rms_norm<D2, E2, Tw>(
        self,
        weight: &Tensor<(D2,), E2, D, Tw>,
        eps: f64,
    ) -> Tensor<S, E, D, <T as Merge<Tw>>::Out>
    where
        D2: Dim,
        E2: FloatDtype,
        Tw: TapeState,
        S: LastDim,
        S::Last: SameDim<D2, RmsNorm>,
        E: SameDtype<E2, RmsNorm>,
        T: Merge<Tw>,
    {
        or_panic(self.try_rms_norm(weight, eps))
    }

    /// RMS norm with a `1 + weight` scale (Gemma):
    /// `x * rsqrt(mean(x^2) + eps) * (1 + weight)`, the whole expression in
    /// `f32`/`f64` and rounded once. A `Dyn` mismatch is an error.
    pub fn try_rms_norm_offset<D2, E2, Tw>(
        self,
        weight: &Tensor<(D2,), E2, D, Tw>,
        eps: f64,
    ) -> Result<Tensor<S, E, D, <T as Merge<Tw>>::Out>>
    where
        D2: Dim,
        E2: FloatDtype,
        Tw: TapeState,
        S: LastDim,
        S::Last: SameDim<D2, RmsNorm>,
        E: SameDtype<E2, RmsNorm>,
        T: Merge<Tw>,
    {
        let w = Param::of(E::same(weight.clone()));
        self.norm_op("rms_norm_offset", NormKind::RmsOffset, Some(w), None, eps)
    }

    /// Panicking twin of [`try_rms_norm_offset`](Self::try_rms_norm_offset).
    #[track_caller]
    pub fn rms_norm_offset<D2, E2, Tw>(
        self,
        weight: &Tensor<(D2,), E2, D, Tw>,
        eps: f64,
    ) -> Tensor<S, E, D, <T as Merge<Tw>>::Out>
    where
        D2: Dim,
        E2: FloatDtype,
        Tw: TapeState,
        S: LastDim,
        S::Last: SameDim<D2, RmsNorm>,
        E: SameDtype<E2, RmsNorm>,
        T: Merge<Tw>,
    {
        or_panic(self.try_rms_norm_offset(weight, eps))
    }
}
