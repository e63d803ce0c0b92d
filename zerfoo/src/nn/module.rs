//! [`Module`]: parameter traversal with dotted paths, which optimizers,
//! checkpoints, freezing and parameter counts all reuse. `#[derive(Module)]`
//! writes it for a struct, together with [`ToDtype`] (dtype moves).
//!
//! What the one traversal gives:
//!
//! - visiting every parameter by reference ([`Module::visit_params`]) and
//!   mutably ([`Module::visit_params_mut`]), with its dotted path;
//! - [`Module::num_params`] and [`Module::param_info`];
//! - zeroing gradients: there is nothing to zero. `backward()` returns a fresh
//!   [`Gradients`](crate::autograd::Gradients) value keyed by parameter id, and
//!   parameters hold no gradient buffer. To accumulate over micro-batches, add
//!   them up with [`Gradients::accumulate`](crate::autograd::Gradients::accumulate)
//!   (and [`Gradients::scale`](crate::autograd::Gradients::scale) to average);
//!   dropping the sum is the `zero_grad`;
//! - freezing: [`Optimizer::freeze`](crate::optim::Optimizer::freeze) takes a
//!   predicate on the dotted path;
//! - dtype moves: [`Module::to_dtype`] (`model.to_dtype::<bf16>()`) builds the
//!   same struct with its dtype parameter replaced;
//! - checkpoints by path: [`io::save`](crate::io::save) / [`io::load`](crate::io::load).
//!
//! - device moves: [`Module::to_device`] (`model.to_device(&cuda)`) builds
//!   the same struct with its device parameter replaced ([`ToDevice`]).
//!
//! Visitors see parameters on any device (`D: Backend`): read them with
//! `to_vec`, replace them with a tensor moved to `p.device()`.

use zerfoo_kernels::{Backend, DType, FloatDtype};

use crate::autograd::{NoTape, TensorId};
use crate::shape::{Dims, Shape};
use crate::tensor::Tensor;

/// Sees every parameter of a module, read-only, with its dotted path.
pub trait ParamVisitor {
    /// Called once per parameter.
    fn visit<S: Shape, E: FloatDtype, D: Backend>(
        &mut self,
        path: &str,
        param: &Tensor<S, E, D, NoTape>,
    );
}

/// Sees every parameter of a module, mutably, with its dotted path.
pub trait ParamVisitorMut {
    /// Called once per parameter.
    fn visit<S: Shape, E: FloatDtype, D: Backend>(
        &mut self,
        path: &str,
        param: &mut Tensor<S, E, D, NoTape>,
    );
}

/// Something with parameters: a layer, a model, a stack of them.
///
/// Paths join field names with dots: `blocks.3.attn.q_proj.weight`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `Module`",
    label = "this field is neither a module nor a parameter tensor",
    note = "mark configuration fields with `#[module(skip)]`, or derive `Module` for this type"
)]
pub trait Module {
    /// Visits every parameter under `prefix` (empty at the root).
    fn visit_params<V: ParamVisitor>(&self, prefix: &str, v: &mut V);
    /// Visits every parameter mutably under `prefix`.
    fn visit_params_mut<V: ParamVisitorMut>(&mut self, prefix: &str, v: &mut V);

    /// Number of scalar parameters.
    fn num_params(&self) -> usize {
        struct Count(usize);
        impl ParamVisitor for Count {
            fn visit<S: Shape, E: FloatDtype, D: Backend>(
                &mut self,
                _: &str,
                p: &Tensor<S, E, D, NoTape>,
            ) {
                self.0 += p.numel();
            }
        }
        let mut c = Count(0);
        self.visit_params("", &mut c);
        c.0
    }

    /// Every parameter's path, id, dims and dtype, in traversal order.
    fn param_info(&self) -> Vec<ParamInfo> {
        struct Collect(Vec<ParamInfo>);
        impl ParamVisitor for Collect {
            fn visit<S: Shape, E: FloatDtype, D: Backend>(
                &mut self,
                path: &str,
                p: &Tensor<S, E, D, NoTape>,
            ) {
                self.0.push(ParamInfo {
                    path: path.to_string(),
                    id: p.id(),
                    dims: p.dims(),
                    dtype: E::DTYPE,
                });
            }
        }
        let mut c = Collect(Vec::new());
        self.visit_params("", &mut c);
        c.0
    }

    /// The same module with its dtype parameter replaced by `E2`: every
    /// parameter is converted (rounding to nearest even) into a new tensor
    /// with a fresh id; configuration fields are cloned.
    ///
    /// `#[derive(Module)]` implements [`ToDtype`] for a struct generic over
    /// its dtype (the type parameter bounded by `FloatDtype`, or the one named
    /// by `#[module(dtype = E)]`). Fields whose type does not mention that
    /// parameter keep their type (an `f32` norm stays `f32` in a `bf16`
    /// model); a struct without a dtype parameter converts only to itself
    /// ([`FixedDtype`]: parameterless layers nest anywhere, an `f32`-only
    /// struct moves to `f32` only).
    ///
    /// ```
    /// use zerfoo::nn::{Linear, Module};
    /// use zerfoo::prelude::*;
    /// dim!(In = 3);
    /// dim!(Out = 2);
    /// let m: Linear<In, Out, f64> = Linear::new(In, Out, true, 0);
    /// let h: Linear<In, Out, bf16> = m.to_dtype::<bf16>();
    /// assert_eq!(h.weight.to_vec()[0], bf16::from_f64(m.weight.to_vec()[0]));
    /// ```
    fn to_dtype<E2: FloatDtype>(&self) -> <Self as ToDtype<E2>>::Output
    where
        Self: ToDtype<E2> + Sized,
    {
        ToDtype::<E2>::convert_dtype(self)
    }

    /// The same module on `device`: every parameter copied there (fresh
    /// ids), configuration fields cloned, the struct's device parameter
    /// replaced (see [`ToDevice`]). An error if the device fails (out of
    /// memory, a dtype it cannot hold).
    ///
    /// ```
    /// use zerfoo::nn::{Linear, Module};
    /// use zerfoo::prelude::*;
    /// dim!(In = 3);
    /// dim!(Out = 2);
    /// let m: Linear<In, Out, f32> = Linear::new(In, Out, true, 0);
    /// let same: Linear<In, Out, f32, Cpu> = m.try_to_device(&Cpu).unwrap();
    /// assert_eq!(same.weight.to_vec(), m.weight.to_vec());
    /// ```
    fn try_to_device<D2: Backend>(
        &self,
        device: &D2,
    ) -> crate::Result<<Self as ToDevice<D2>>::Output>
    where
        Self: ToDevice<D2> + Sized,
    {
        ToDevice::<D2>::convert_device(self, device)
    }

    /// Panicking twin of [`Module::try_to_device`].
    #[track_caller]
    fn to_device<D2: Backend>(&self, device: &D2) -> <Self as ToDevice<D2>>::Output
    where
        Self: ToDevice<D2> + Sized,
    {
        crate::error::or_panic(self.try_to_device(device))
    }
}

/// A module (or a field of one) that can be rebuilt on device `D2`. Call it
/// through [`Module::to_device`]; `#[derive(Module)]` implements it for a
/// struct generic over its device (the type parameter bounded by
/// `Backend`, or the one named by `#[module(device = D)]`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot move to device `{D2}`",
    label = "no device move to `{D2}` for this type",
    note = "`to_device` replaces a struct's device parameter (the type parameter bounded by `Backend`, e.g. `Linear<I, O, E, D>`); a struct holding tensors of a fixed device cannot move"
)]
pub trait ToDevice<D2: Backend> {
    /// The moved type.
    type Output;
    /// Copies every parameter to `device` (use [`Module::to_device`]).
    fn convert_device(&self, device: &D2) -> crate::Result<Self::Output>;
}

impl<S: Shape, E: FloatDtype, D: Backend, D2: Backend> ToDevice<D2> for Tensor<S, E, D, NoTape> {
    type Output = Tensor<S, E, D2, NoTape>;
    fn convert_device(&self, device: &D2) -> crate::Result<Self::Output> {
        self.try_to_device(device)
    }
}

impl<M: ToDevice<D2>, D2: Backend> ToDevice<D2> for Vec<M> {
    type Output = Vec<M::Output>;
    fn convert_device(&self, device: &D2) -> crate::Result<Self::Output> {
        self.iter().map(|m| m.convert_device(device)).collect()
    }
}

impl<M: ToDevice<D2>, D2: Backend, const N: usize> ToDevice<D2> for [M; N] {
    type Output = [M::Output; N];
    fn convert_device(&self, device: &D2) -> crate::Result<Self::Output> {
        let moved: Vec<M::Output> = self
            .iter()
            .map(|m| m.convert_device(device))
            .collect::<crate::Result<_>>()?;
        Ok(moved
            .try_into()
            .unwrap_or_else(|_| unreachable!("N elements in, N out")))
    }
}

impl<M: ToDevice<D2>, D2: Backend> ToDevice<D2> for Option<M> {
    type Output = Option<M::Output>;
    fn convert_device(&self, device: &D2) -> crate::Result<Self::Output> {
        self.as_ref().map(|m| m.convert_device(device)).transpose()
    }
}

/// A skipped-style marker holds nothing on a device.
impl<T: ?Sized, D2: Backend> ToDevice<D2> for core::marker::PhantomData<T> {
    type Output = core::marker::PhantomData<T>;
    fn convert_device(&self, _: &D2) -> crate::Result<Self::Output> {
        Ok(core::marker::PhantomData)
    }
}

/// A module (or a field of one) that can be rebuilt with dtype `E2`.
/// Call it through [`Module::to_dtype`]; `#[derive(Module)]` implements it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot change its dtype to `{E2}`",
    label = "no dtype move to `{E2}` for this type",
    note = "`to_dtype` replaces a struct's dtype parameter (the type parameter bounded by `FloatDtype`, or `#[module(dtype = E)]`); a struct without one, holding tensors of a fixed dtype, converts only to itself"
)]
pub trait ToDtype<E2: FloatDtype> {
    /// The converted type.
    type Output;
    /// Builds the converted value (use [`Module::to_dtype`]).
    fn convert_dtype(&self) -> Self::Output;
}

impl<S: Shape, E: FloatDtype, E2: FloatDtype, D: Backend> ToDtype<E2> for Tensor<S, E, D, NoTape> {
    type Output = Tensor<S, E2, D, NoTape>;
    fn convert_dtype(&self) -> Self::Output {
        self.clone().to_dtype::<E2>()
    }
}

impl<M: ToDtype<E2>, E2: FloatDtype> ToDtype<E2> for Vec<M> {
    type Output = Vec<M::Output>;
    fn convert_dtype(&self) -> Self::Output {
        self.iter().map(ToDtype::convert_dtype).collect()
    }
}

impl<M: ToDtype<E2>, E2: FloatDtype, const N: usize> ToDtype<E2> for [M; N] {
    type Output = [M::Output; N];
    fn convert_dtype(&self) -> Self::Output {
        self.each_ref().map(ToDtype::convert_dtype)
    }
}

impl<M: ToDtype<E2>, E2: FloatDtype> ToDtype<E2> for Option<M> {
    type Output = Option<M::Output>;
    fn convert_dtype(&self) -> Self::Output {
        self.as_ref().map(ToDtype::convert_dtype)
    }
}

/// A module whose parameters all have dtype `E2` already (or that has none):
/// moving it to `E2` copies it. `#[derive(Module)]` implements it; a struct
/// without a dtype parameter uses it for [`ToDtype`].
pub trait FixedDtype<E2: FloatDtype>: Sized {
    /// A copy with fresh parameter ids.
    fn keep_dtype(&self) -> Self;
}

/// `E` is `E2`: the check behind [`FixedDtype`] for a tensor.
#[diagnostic::on_unimplemented(
    message = "a `{Self}` parameter cannot become `{E2}`: its struct has no dtype parameter",
    label = "`to_dtype::<{E2}>()` needs this parameter to change dtype",
    note = "make the struct generic over its dtype (`E: FloatDtype`, used in its fields) so `to_dtype` can replace it"
)]
pub trait DtypeEq<E2> {}
impl<E: FloatDtype> DtypeEq<E> for E {}

impl<S: Shape, E: FloatDtype + DtypeEq<E2>, E2: FloatDtype, D: Backend> FixedDtype<E2>
    for Tensor<S, E, D, NoTape>
{
    fn keep_dtype(&self) -> Self {
        self.clone().to_dtype::<E>()
    }
}

impl<M: FixedDtype<E2>, E2: FloatDtype> FixedDtype<E2> for Vec<M> {
    fn keep_dtype(&self) -> Self {
        self.iter().map(FixedDtype::keep_dtype).collect()
    }
}

impl<M: FixedDtype<E2>, E2: FloatDtype, const N: usize> FixedDtype<E2> for [M; N] {
    fn keep_dtype(&self) -> Self {
        self.each_ref().map(FixedDtype::keep_dtype)
    }
}

impl<M: FixedDtype<E2>, E2: FloatDtype> FixedDtype<E2> for Option<M> {
    fn keep_dtype(&self) -> Self {
        self.as_ref().map(FixedDtype::keep_dtype)
    }
}

/// A skipped `PhantomData<E>` follows the dtype parameter.
impl<E: FloatDtype, E2: FloatDtype> ToDtype<E2> for core::marker::PhantomData<E> {
    type Output = core::marker::PhantomData<E2>;
    fn convert_dtype(&self) -> Self::Output {
        core::marker::PhantomData
    }
}

/// One parameter's identity, as [`Module::param_info`] lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    /// Dotted path, e.g. `layers.0.attn.wq.weight`.
    pub path: String,
    /// The id its gradient is keyed by.
    pub id: TensorId,
    /// Its dims.
    pub dims: Dims,
    /// Its dtype.
    pub dtype: DType,
}

/// `prefix.name`, or `name` at the root.
pub fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl<S: Shape, E: FloatDtype, D: Backend> Module for Tensor<S, E, D, NoTape> {
    fn visit_params<V: ParamVisitor>(&self, prefix: &str, v: &mut V) {
        v.visit(prefix, self);
    }
    fn visit_params_mut<V: ParamVisitorMut>(&mut self, prefix: &str, v: &mut V) {
        v.visit(prefix, self);
    }
}

impl<M: Module> Module for Vec<M> {
    fn visit_params<V: ParamVisitor>(&self, prefix: &str, v: &mut V) {
        for (i, m) in self.iter().enumerate() {
            m.visit_params(&join_path(prefix, &i.to_string()), v);
        }
    }
    fn visit_params_mut<V: ParamVisitorMut>(&mut self, prefix: &str, v: &mut V) {
        for (i, m) in self.iter_mut().enumerate() {
            m.visit_params_mut(&join_path(prefix, &i.to_string()), v);
        }
    }
}

impl<M: Module, const N: usize> Module for [M; N] {
    fn visit_params<V: ParamVisitor>(&self, prefix: &str, v: &mut V) {
        for (i, m) in self.iter().enumerate() {
            m.visit_params(&join_path(prefix, &i.to_string()), v);
        }
    }
    fn visit_params_mut<V: ParamVisitorMut>(&mut self, prefix: &str, v: &mut V) {
        for (i, m) in self.iter_mut().enumerate() {
            m.visit_params_mut(&join_path(prefix, &i.to_string()), v);
        }
    }
}

impl<M: Module> Module for Option<M> {
    fn visit_params<V: ParamVisitor>(&self, prefix: &str, v: &mut V) {
        if let Some(m) = self {
            m.visit_params(prefix, v);
        }
    }
    fn visit_params_mut<V: ParamVisitorMut>(&mut self, prefix: &str, v: &mut V) {
        if let Some(m) = self {
            m.visit_params_mut(prefix, v);
        }
    }
}

/// A module's forward pass on input `X`. `#[module(sequential)]` derives it by
/// chaining the fields, so the compiler checks that each output is the next
/// layer's input.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot take `{X}` as input",
    label = "this layer's input does not fit",
    note = "in a `#[module(sequential)]` model each layer's output is the next layer's input: check the dims where they meet"
)]
pub trait Forward<X> {
    /// What the forward pass returns.
    type Output;
    /// Runs the module.
    fn forward(&self, x: X) -> Self::Output;
}
