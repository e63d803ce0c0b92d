//! Optimizers that match PyTorch's update rules exactly (SGD with momentum /
//! Nesterov / weight decay, Adam, AdamW), parameter groups, global-norm
//! gradient clipping and learning-rate schedules.
//!
//! Optimizers walk the model with the [`Module`] traversal and look up each
//! parameter's gradient by id. Freezing ([`Optimizer::freeze`]) is a predicate
//! on the dotted path; gradient accumulation sums [`Gradients`] values
//! ([`Gradients::accumulate`]); the state saves to a safetensors file
//! ([`Optimizer::save_state`] / [`Optimizer::load_state`]). State (momentum, Adam moments) is kept per
//! parameter path in the parameter's compute type (`f32` for f8/f16/bf16/f32
//! parameters, `f64` for f64), so f64 models reproduce PyTorch to rounding.

mod clip;
mod schedule;
mod state;

pub use clip::{clip_coef, clip_grad_norm, grad_norm};
pub use schedule::{Constant, CosineWithWarmup, LinearWarmup, LrSchedule, StepDecay};
pub use state::OptimizerState;

use std::collections::HashMap;

use zerfoo_kernels::cpu::optim::{run_updates, AdamStep, QueuedUpdate, SgdStep};
use zerfoo_kernels::{Backend, FloatDtype};

use crate::autograd::{Gradients, NoTape};
use crate::nn::{Module, ParamVisitorMut};
use crate::shape::Shape;
use crate::tensor::Tensor;

/// Per-group settings: which parameters a group holds is decided by a
/// function of the parameter path (see [`Optimizer::with_groups`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupConfig {
    /// Weight decay for this group.
    pub weight_decay: f64,
    /// Multiplies the optimizer's learning rate.
    pub lr_scale: f64,
}

/// Chooses a parameter's group from its dotted path.
pub type GroupFn = Box<dyn Fn(&str) -> usize + Send + Sync>;

/// Decides from a dotted path whether a parameter is frozen.
pub type FreezeFn = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// The usual split: no weight decay on biases and norm weights (paths whose
/// last segment is `bias`, or that contain `norm` or `ln`).
pub fn no_decay_on_norms_and_biases(path: &str) -> usize {
    let last = path.rsplit('.').next().unwrap_or(path);
    let no_decay = last == "bias"
        || path
            .split('.')
            .any(|s| s.contains("norm") || s.starts_with("ln"));
    usize::from(no_decay)
}

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// `torch.optim.SGD`.
    Sgd {
        /// Momentum factor (0 disables the buffer).
        momentum: f64,
        /// Dampening for momentum.
        dampening: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// `torch.optim.Adam` (L2 weight decay added to the gradient).
    Adam {
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// ε, added after the square root of the bias-corrected second moment.
        eps: f64,
    },
    /// `torch.optim.AdamW` (decoupled weight decay).
    AdamW {
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// ε.
        eps: f64,
    },
}

/// An optimizer: a [`Rule`], a learning rate, parameter groups and state.
pub struct Optimizer {
    rule: Rule,
    lr: f64,
    groups: Vec<GroupConfig>,
    group_of: GroupFn,
    step: u64,
    state: HashMap<String, state::ParamState>,
    frozen: Vec<FreezeFn>,
}

impl Optimizer {
    /// SGD with momentum, dampening, Nesterov and weight decay, as in PyTorch.
    pub fn sgd(lr: f64, momentum: f64, weight_decay: f64, nesterov: bool) -> Self {
        Self::new(
            Rule::Sgd {
                momentum,
                dampening: 0.0,
                nesterov,
            },
            lr,
            weight_decay,
        )
    }

    /// Adam (`weight_decay` is L2, added to the gradient).
    pub fn adam(lr: f64, betas: (f64, f64), eps: f64, weight_decay: f64) -> Self {
        Self::new(
            Rule::Adam {
                beta1: betas.0,
                beta2: betas.1,
                eps,
            },
            lr,
            weight_decay,
        )
    }

    /// AdamW (decoupled weight decay).
    ///
    /// ```
    /// use zerfoo::optim::Optimizer;
    /// let opt = Optimizer::adamw(1e-3, (0.9, 0.99), 1e-8, 0.1);
    /// assert_eq!(opt.lr(), 1e-3);
    /// ```
    pub fn adamw(lr: f64, betas: (f64, f64), eps: f64, weight_decay: f64) -> Self {
        Self::new(
            Rule::AdamW {
                beta1: betas.0,
                beta2: betas.1,
                eps,
            },
            lr,
            weight_decay,
        )
    }

    /// An optimizer with one group holding every parameter.
    pub fn new(rule: Rule, lr: f64, weight_decay: f64) -> Self {
        Optimizer {
            rule,
            lr,
            groups: vec![GroupConfig {
                weight_decay,
                lr_scale: 1.0,
            }],
            group_of: Box::new(|_| 0),
            step: 0,
            state: HashMap::new(),
            frozen: Vec::new(),
        }
    }

    /// Freezes every parameter whose dotted path satisfies `frozen`: [`step`](Self::step)
    /// leaves it alone entirely (no update, no weight decay, no state), as if
    /// it had no gradient. Several calls freeze the union.
    ///
    /// `backward` still computes a frozen parameter's gradient; to keep it
    /// out of [`clip_grad_norm`] too, drop it first with
    /// [`remove_frozen_grads`](Self::remove_frozen_grads).
    ///
    /// ```
    /// use zerfoo::optim::Optimizer;
    /// let opt = Optimizer::sgd(0.1, 0.0, 0.0, false).freeze(|path| path.starts_with("embed."));
    /// assert!(opt.is_frozen("embed.weight"));
    /// assert!(!opt.is_frozen("head.weight"));
    /// ```
    pub fn freeze(mut self, frozen: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.frozen.push(Box::new(frozen));
        self
    }

    /// Unfreezes every parameter (e.g. after a warm-up of the new layers).
    pub fn unfreeze_all(&mut self) {
        self.frozen.clear();
    }

    /// Whether the parameter at `path` is frozen.
    pub fn is_frozen(&self, path: &str) -> bool {
        self.frozen.iter().any(|f| f(path))
    }

    /// Removes the gradients of `module`'s frozen parameters from `grads`, so
    /// that clipping and logging see exactly what [`step`](Self::step) uses.
    pub fn remove_frozen_grads<M: Module>(&self, module: &M, grads: &mut Gradients) {
        struct Remove<'a> {
            opt: &'a Optimizer,
            grads: &'a mut Gradients,
        }
        impl crate::nn::ParamVisitor for Remove<'_> {
            fn visit<S: Shape, E: FloatDtype, D: Backend>(
                &mut self,
                path: &str,
                p: &Tensor<S, E, D, NoTape>,
            ) {
                if self.opt.is_frozen(path) {
                    self.grads.remove_storage::<D, E>(p.id());
                }
            }
        }
        module.visit_params("", &mut Remove { opt: self, grads });
    }

    /// Splits parameters into groups: `group_of(path)` picks an index into `groups`.
    ///
    /// ```
    /// use zerfoo::optim::{no_decay_on_norms_and_biases, GroupConfig, Optimizer};
    /// let opt = Optimizer::adamw(1e-3, (0.9, 0.95), 1e-8, 0.1).with_groups(
    ///     vec![
    ///         GroupConfig { weight_decay: 0.1, lr_scale: 1.0 },
    ///         GroupConfig { weight_decay: 0.0, lr_scale: 1.0 },
    ///     ],
    ///     no_decay_on_norms_and_biases,
    /// );
    /// # let _ = opt;
    /// ```
    pub fn with_groups(
        mut self,
        groups: Vec<GroupConfig>,
        group_of: impl Fn(&str) -> usize + Send + Sync + 'static,
    ) -> Self {
        self.groups = groups;
        self.group_of = Box::new(group_of);
        self
    }

    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }
    /// Sets the base learning rate (schedules call this every step).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }
    /// The update rule.
    pub fn rule(&self) -> Rule {
        self.rule
    }

    /// Applies one update to every parameter of `module` that has a gradient
    /// in `grads` (parameters without one are left alone, as in PyTorch).
    pub fn step<M: Module>(&mut self, module: &mut M, grads: &Gradients) -> crate::Result<()> {
        self.step_scaled(module, grads, 1.0)
    }

    /// [`step`](Self::step) with every gradient multiplied by `grad_scale`
    /// first, in the update's own pass (each scaled value rounded to the
    /// gradient's type, as scaling it in place would): clipping by norm
    /// without a pass of its own over the gradients.
    ///
    /// ```
    /// use zerfoo::optim::{clip_coef, grad_norm, Optimizer};
    /// use zerfoo::prelude::*;
    /// let mut w = Tensor::<(U2,), f32>::from_vec(Default::default(), vec![1.0, 2.0]).unwrap();
    /// let g = w.clone().traced().square().sum_all().backward(); // gradient 2w
    /// let norm = grad_norm(&w, &g); // |(2, 4)|
    /// let mut opt = Optimizer::sgd(0.5, 0.0, 0.0, false);
    /// opt.step_scaled(&mut w, &g, clip_coef(1.0, norm))?;
    /// // each moved by 0.5 * (2, 4) / |(2, 4)|
    /// let n = 20f32.sqrt();
    /// assert!((w.to_vec()[1] - (2.0 - 2.0 / n)).abs() < 1e-6);
    /// # Ok::<(), zerfoo::Error>(())
    /// ```
    pub fn step_scaled<M: Module>(
        &mut self,
        module: &mut M,
        grads: &Gradients,
        grad_scale: f64,
    ) -> crate::Result<()> {
        self.step += 1;
        let mut v = Update {
            opt: self,
            grad_scale,
            grads,
            error: None,
            queued: Vec::new(),
            queued_params: Vec::new(),
        };
        module.visit_params_mut("", &mut v);
        // The CPU parameters' updates, all in one parallel pass (also those
        // queued before an error: as if they had run one by one).
        run_updates(&v.queued);
        match v.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

struct Update<'a> {
    opt: &'a mut Optimizer,
    /// Multiplies every gradient first ([`Optimizer::step_scaled`]).
    grad_scale: f64,
    grads: &'a Gradients,
    error: Option<crate::Error>,
    /// Updates of CPU parameters, run together once the walk is over.
    queued: Vec<QueuedUpdate>,
    /// The addresses of the queued parameters' values: a parameter visited
    /// twice (never in the models here) first has its queued update run.
    queued_params: Vec<usize>,
}

/// `storage` as the CPU's `Vec`, if that is what it is.
fn cpu_vec<S: 'static, T: 'static>(storage: &mut S) -> Option<&mut Vec<T>> {
    (storage as &mut dyn std::any::Any).downcast_mut::<Vec<T>>()
}

impl ParamVisitorMut for Update<'_> {
    fn visit<S: Shape, E: FloatDtype, D: Backend>(
        &mut self,
        path: &str,
        p: &mut Tensor<S, E, D, NoTape>,
    ) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.update(path, p) {
            self.error = Some(e);
        }
    }
}

impl Update<'_> {
    fn update<S: Shape, E: FloatDtype, D: Backend>(
        &mut self,
        path: &str,
        p: &mut Tensor<S, E, D, NoTape>,
    ) -> crate::Result<()> {
        let Some(g) = self.grads.get_storage::<D, E>(p.id()) else {
            return Ok(());
        };
        if self.opt.is_frozen(path) {
            return Ok(());
        }
        let gi = (self.opt.group_of)(path);
        let Some(group) = self.opt.groups.get(gi).copied() else {
            return Err(crate::Error::InvalidArgument {
                op: "optimizer step",
                reason: format!(
                    "parameter `{path}` was put in group {gi}, but only {} groups exist",
                    self.opt.groups.len()
                ),
            });
        };
        // A CPU parameter already queued (visited twice) is updated first.
        if let Some(at) = cpu_vec::<_, E>(p.storage_mut()?).map(|d| d.as_ptr() as usize) {
            if self.queued_params.contains(&at) {
                run_updates(&self.queued);
                self.queued.clear();
                self.queued_params.clear();
            }
            self.queued_params.push(at);
        }
        let st = self
            .opt
            .state
            .entry(path.to_string())
            .or_insert_with(|| state::ParamState::new(&p.dims()));
        // This parameter's own step, as PyTorch: a parameter that had no
        // gradient (or was frozen) for a while gets Adam's full bias
        // correction when it starts training.
        let t = st.steps + 1;
        let first = st.steps == 0;
        let lr = self.opt.lr * group.lr_scale;
        let dev = p.device().clone();
        let (m, v) = st.slots_on::<D, E::Acc>(&dev)?;
        let data = p.storage_mut()?;
        match self.opt.rule {
            Rule::Sgd {
                momentum,
                dampening,
                nesterov,
            } => {
                let step = SgdStep {
                    lr,
                    momentum,
                    dampening,
                    nesterov,
                    weight_decay: group.weight_decay,
                    first,
                    grad_scale: self.grad_scale,
                };
                let cpu = (cpu_vec::<_, E>(data), cpu_vec::<_, E::Acc>(m));
                match (cpu, (g as &dyn std::any::Any).downcast_ref::<Vec<E>>()) {
                    ((Some(data), Some(m)), Some(g)) => {
                        // SAFETY: the parameter, its gradient and its state are
                        // neither moved nor touched before `step` runs the queue
                        // (it holds the model and the gradients until then), and
                        // the queue was run above if this parameter was in it.
                        self.queued
                            .push(unsafe { QueuedUpdate::sgd(data, g, m, step) });
                    }
                    _ => dev.sgd_update(data, g, m, &step)?,
                }
            }
            Rule::Adam { beta1, beta2, eps } | Rule::AdamW { beta1, beta2, eps } => {
                let step = AdamStep {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay: group.weight_decay,
                    decoupled: matches!(self.opt.rule, Rule::AdamW { .. }),
                    step: t,
                    grad_scale: self.grad_scale,
                };
                let cpu = (
                    cpu_vec::<_, E>(data),
                    cpu_vec::<_, E::Acc>(m),
                    cpu_vec::<_, E::Acc>(v),
                );
                match (cpu, (g as &dyn std::any::Any).downcast_ref::<Vec<E>>()) {
                    ((Some(data), Some(m), Some(v)), Some(g)) => {
                        // SAFETY: as for SGD above.
                        self.queued
                            .push(unsafe { QueuedUpdate::adam(data, g, m, v, step) });
                    }
                    _ => dev.adam_update(data, g, m, v, &step)?,
                }
            }
        }
        st.steps += 1;
        Ok(())
    }
}
