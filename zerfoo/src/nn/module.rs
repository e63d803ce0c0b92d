//! [`Module`]: parameter traversal with dotted paths, which optimizers,
//! checkpoints, freezing and parameter counts all reuse. `#[derive(Module)]`
//! writes it for a struct.

use zerfoo_kernels::{Cpu, DType, FloatDtype};

use crate::autograd::{NoTape, TensorId};
use crate::shape::{Dims, Shape};
use crate::tensor::Tensor;

/// Sees every parameter of a module, read-only, with its dotted path.
pub trait ParamVisitor {
    /// Called once per parameter.
    fn visit<S: Shape, E: FloatDtype>(&mut self, path: &str, param: &Tensor<S, E, Cpu, NoTape>);
}

/// Sees every parameter of a module, mutably, with its dotted path.
pub trait ParamVisitorMut {
    /// Called once per parameter.
    fn visit<S: Shape, E: FloatDtype>(&mut self, path: &str, param: &mut Tensor<S, E, Cpu, NoTape>);
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
            fn visit<S: Shape, E: FloatDtype>(&mut self, _: &str, p: &Tensor<S, E, Cpu, NoTape>) {
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
            fn visit<S: Shape, E: FloatDtype>(
                &mut self,
                path: &str,
                p: &Tensor<S, E, Cpu, NoTape>,
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

impl<S: Shape, E: FloatDtype> Module for Tensor<S, E, Cpu, NoTape> {
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
pub trait Forward<X> {
    /// What the forward pass returns.
    type Output;
    /// Runs the module.
    fn forward(&self, x: X) -> Self::Output;
}
