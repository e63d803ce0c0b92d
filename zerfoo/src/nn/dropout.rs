//! `Dropout`: zeroes activations at random while training, reproducibly.

use std::sync::atomic::{AtomicU64, Ordering};

use zerfoo_kernels::{Backend, FloatDtype};

use super::Forward;
use crate::autograd::TapeState;
use crate::error::or_panic;
use crate::shape::Shape;
use crate::tensor::{rng, Tensor};
use crate::{Error, Result};

/// Dropout with probability `p` (`torch.nn.Dropout`): each element is zeroed
/// with probability `p` and the kept ones are scaled by `1 / (1 - p)`.
///
/// **Reproducible.** The mask of a call depends only on the layer's `seed`
/// and a *step* number: [`forward_at`](Dropout::forward_at) takes the step
/// explicitly, and [`Forward::forward`] uses an internal counter that
/// advances by one per training call (read and restore it with
/// [`calls`](Dropout::calls) / [`set_calls`](Dropout::set_calls) to resume a
/// run exactly). The same seeds and the same sequence of calls give the same
/// masks on every run and thread count. Give each dropout layer of a model
/// its own seed.
///
/// **Eval is the identity.** [`Forward::forward`] drops only when the layer
/// is in training mode (the default; see [`train`](Dropout::train) /
/// [`eval`](Dropout::eval)) *and* the input carries a tape: a forward pass
/// that records nothing (`NoTape`: inference, evaluation) computes no
/// gradient, so it never needs dropout and returns its input unchanged.
///
/// ```
/// use zerfoo::nn::{Dropout, Forward};
/// use zerfoo::prelude::*;
/// let mut layer = Dropout::new(0.5, 7);
/// let x = Tensor::<(U4, U4), f32>::ones(Default::default());
/// let a = layer.forward(x.clone().traced()).to_vec(); // step 0
/// let b = layer.forward(x.clone().traced()).to_vec(); // step 1: another mask
/// assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
/// assert_ne!(a, b);
/// assert_eq!(a, layer.forward_at(x.clone(), 0).to_vec()); // step 0 again
/// assert_eq!(layer.forward(x.clone()).to_vec(), x.to_vec()); // untraced: identity
/// layer.eval();
/// assert_eq!(layer.forward(x.clone().traced()).to_vec(), x.to_vec());
/// ```
#[derive(crate::nn::Module, Debug)]
pub struct Dropout {
    #[module(skip)]
    p: f64,
    #[module(skip)]
    seed: u64,
    #[module(skip)]
    training: bool,
    #[module(skip)]
    calls: AtomicU64,
}

impl Clone for Dropout {
    fn clone(&self) -> Self {
        Dropout {
            p: self.p,
            seed: self.seed,
            training: self.training,
            calls: AtomicU64::new(self.calls()),
        }
    }
}

impl Dropout {
    /// A layer dropping with probability `p` in `[0, 1)`, masks drawn from
    /// `seed`; an invalid `p` is [`Error::InvalidArgument`].
    pub fn try_new(p: f64, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument {
                op: "Dropout",
                reason: format!("the drop probability must lie in [0, 1), got {p}"),
            });
        }
        Ok(Dropout {
            p,
            seed,
            training: true,
            calls: AtomicU64::new(0),
        })
    }

    /// Panicking twin of [`try_new`](Self::try_new).
    #[track_caller]
    pub fn new(p: f64, seed: u64) -> Self {
        or_panic(Self::try_new(p, seed))
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }
    /// The seed masks are drawn from.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// Training mode: [`Forward::forward`] drops (on traced inputs).
    pub fn train(&mut self) {
        self.training = true;
    }
    /// Evaluation mode: [`Forward::forward`] is the identity.
    pub fn eval(&mut self) {
        self.training = false;
    }
    /// Whether the layer is in training mode.
    pub fn is_training(&self) -> bool {
        self.training
    }
    /// How many masks [`Forward::forward`] has drawn (the next step).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
    /// Sets the counter (to resume a run where a checkpoint left it).
    pub fn set_calls(&self, calls: u64) {
        self.calls.store(calls, Ordering::Relaxed);
    }

    /// Drops with the mask of step `step`, whatever the mode and tape: the
    /// same `(seed, step)` always gives the same mask.
    pub fn forward_at<S: Shape, E: FloatDtype, D: Backend, T: TapeState>(
        &self,
        x: Tensor<S, E, D, T>,
        step: u64,
    ) -> Tensor<S, E, D, T> {
        x.dropout(self.p, rng::bits(self.seed, step))
    }
}

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Forward<Tensor<S, E, D, T>> for Dropout {
    type Output = Tensor<S, E, D, T>;
    /// Drops in training mode on a traced input (advancing the counter),
    /// else returns `x` unchanged.
    fn forward(&self, x: Tensor<S, E, D, T>) -> Self::Output {
        if !self.training || !T::TRACKED || self.p == 0.0 {
            return x;
        }
        let step = self.calls.fetch_add(1, Ordering::Relaxed);
        self.forward_at(x, step)
    }
}
