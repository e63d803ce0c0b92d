//! Global-norm gradient clipping (`torch.nn.utils.clip_grad_norm_`).

use zerfoo_kernels::{Backend, FloatDtype};

use crate::autograd::{device_ok, Gradients, NoTape};
use crate::nn::{Module, ParamVisitor};
use crate::shape::Shape;
use crate::tensor::Tensor;

/// Scales the gradients of `module`'s parameters so their global L2 norm is
/// at most `max_norm`, exactly as PyTorch: `coef = min(1, max_norm / (total
/// + 1e-6))`. Returns the norm before clipping.
pub fn clip_grad_norm<M: Module>(module: &M, grads: &mut Gradients, max_norm: f64) -> f64 {
    struct SumSq<'a> {
        grads: &'a Gradients,
        total: f64,
    }
    impl ParamVisitor for SumSq<'_> {
        fn visit<S: Shape, E: FloatDtype, D: Backend>(
            &mut self,
            _: &str,
            p: &Tensor<S, E, D, NoTape>,
        ) {
            if let Some(g) = self.grads.get_storage::<D, E>(p.id()) {
                self.total += device_ok(p.device().sum_squares(g));
            }
        }
    }
    let mut s = SumSq { grads, total: 0.0 };
    module.visit_params("", &mut s);
    let total = s.total.sqrt();
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    if coef < 1.0 {
        struct Scale<'a> {
            grads: &'a mut Gradients,
            coef: f64,
        }
        impl ParamVisitor for Scale<'_> {
            fn visit<S: Shape, E: FloatDtype, D: Backend>(
                &mut self,
                _: &str,
                p: &Tensor<S, E, D, NoTape>,
            ) {
                if let Some(g) = self.grads.get_storage_mut::<D, E>(p.id()) {
                    device_ok(p.device().scale(g, self.coef));
                }
            }
        }
        module.visit_params("", &mut Scale { grads, coef });
    }
    total
}
