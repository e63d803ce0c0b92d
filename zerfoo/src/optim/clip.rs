//! Global-norm gradient clipping (`torch.nn.utils.clip_grad_norm_`).

use std::any::Any;

use zerfoo_kernels::cpu::optim::{run_sum_squares, QueuedSumSquares};
use zerfoo_kernels::{Backend, FloatDtype, Layout};

use crate::autograd::{device_ok, Gradients, NoTape};
use crate::nn::{Module, ParamVisitor};
use crate::shape::Shape;
use crate::tensor::Tensor;

/// Scales the gradients of `module`'s parameters so their global L2 norm is
/// at most `max_norm`, exactly as PyTorch: `coef = min(1, max_norm / (total
/// + 1e-6))`. Returns the norm before clipping.
///
/// Before an optimizer step, [`grad_norm`] and
/// [`Optimizer::step_scaled`](super::Optimizer::step_scaled) with
/// [`clip_coef`] do the same without this pass over the gradients.
pub fn clip_grad_norm<M: Module>(module: &M, grads: &mut Gradients, max_norm: f64) -> f64 {
    let total = grad_norm(module, grads);
    let coef = clip_coef(max_norm, total);
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

/// PyTorch's clipping coefficient for a global gradient norm `total`:
/// `min(1, max_norm / (total + 1e-6))`.
///
/// ```
/// assert_eq!(zerfoo::optim::clip_coef(1.0, 0.5), 1.0);
/// assert!((zerfoo::optim::clip_coef(1.0, 4.0) - 0.25).abs() < 1e-6);
/// ```
pub fn clip_coef(max_norm: f64, total: f64) -> f64 {
    (max_norm / (total + 1e-6)).min(1.0)
}

/// The global L2 norm of the gradients of `module`'s parameters (those
/// that have one), summed in f64 on their device.
pub fn grad_norm<M: Module>(module: &M, grads: &Gradients) -> f64 {
    // The sum of squares accumulates on the parameters' device (a
    // `D::Storage<f64>` of one element, behind `Any` since the visitor is
    // generic per parameter) and is read back once, by a second visit that
    // knows `D` again: one host round trip per step, not one per parameter.
    // CPU gradients are queued instead and summed as one parallel pass.
    struct SumSq<'a> {
        grads: &'a Gradients,
        total: Option<Box<dyn Any>>,
        cpu: Vec<QueuedSumSquares<'a>>,
    }
    impl<'a> ParamVisitor for SumSq<'a> {
        fn visit<S: Shape, E: FloatDtype, D: Backend>(
            &mut self,
            _: &str,
            p: &Tensor<S, E, D, NoTape>,
        ) {
            let grads: &'a Gradients = self.grads;
            if let Some(g) = grads.get_storage::<D, E>(p.id()) {
                if let Some(g) = (g as &dyn Any).downcast_ref::<Vec<E>>() {
                    self.cpu.push(QueuedSumSquares::new(g));
                    return;
                }
                let dev = p.device();
                let total = self
                    .total
                    .get_or_insert_with(|| Box::new(device_ok(dev.upload(vec![0.0f64]))))
                    .downcast_mut::<D::Storage<f64>>()
                    .expect("grad_norm: every parameter on one device");
                device_ok(dev.add_sum_squares(g, total));
            }
        }
    }
    struct ReadBack {
        total: Option<Box<dyn Any>>,
        value: f64,
    }
    impl ParamVisitor for ReadBack {
        fn visit<S: Shape, E: FloatDtype, D: Backend>(
            &mut self,
            _: &str,
            p: &Tensor<S, E, D, NoTape>,
        ) {
            if let Some(t) = self.total.take() {
                let t = t
                    .downcast::<D::Storage<f64>>()
                    .expect("grad_norm: every parameter on one device");
                self.value = device_ok(p.device().to_host(&t, &Layout::contiguous(&[1])))[0];
            }
        }
    }
    let mut s = SumSq {
        grads,
        total: None,
        cpu: Vec::new(),
    };
    module.visit_params("", &mut s);
    let mut read = ReadBack {
        total: s.total,
        value: 0.0,
    };
    if read.total.is_some() {
        module.visit_params("", &mut read);
    }
    (read.value + run_sum_squares(&s.cpu)).sqrt()
}
