//! Learning-rate schedules: a function from the step (0-based) to the rate.

/// A learning-rate schedule.
pub trait LrSchedule {
    /// The learning rate for step `step` (0-based).
    fn lr(&self, step: usize) -> f64;
}

/// The same rate at every step.
#[derive(Clone, Copy, Debug)]
pub struct Constant(pub f64);
impl LrSchedule for Constant {
    fn lr(&self, _: usize) -> f64 {
        self.0
    }
}

/// Linear warm-up from 0 to `lr` over `warmup` steps, then constant.
#[derive(Clone, Copy, Debug)]
pub struct LinearWarmup {
    /// Peak rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
}
impl LrSchedule for LinearWarmup {
    fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            self.lr * (step + 1) as f64 / self.warmup as f64
        } else {
            self.lr
        }
    }
}

/// nanoGPT's schedule: linear warm-up to `max_lr`, cosine decay to `min_lr`
/// at `decay_steps`, then `min_lr`.
///
/// ```
/// use zerfoo::optim::{CosineWithWarmup, LrSchedule};
/// let s = CosineWithWarmup { max_lr: 1e-3, min_lr: 1e-4, warmup: 100, decay_steps: 2000 };
/// assert!((s.lr(99) - 1e-3).abs() < 1e-12);
/// assert!((s.lr(2000) - 1e-4).abs() < 1e-12);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct CosineWithWarmup {
    /// Peak rate.
    pub max_lr: f64,
    /// Floor.
    pub min_lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Step at which the decay reaches the floor.
    pub decay_steps: usize,
}
impl LrSchedule for CosineWithWarmup {
    fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.max_lr * (step + 1) as f64 / self.warmup as f64;
        }
        if step >= self.decay_steps {
            return self.min_lr;
        }
        let ratio = (step - self.warmup) as f64 / (self.decay_steps - self.warmup) as f64;
        let coeff = 0.5 * (1.0 + (core::f64::consts::PI * ratio).cos());
        self.min_lr + coeff * (self.max_lr - self.min_lr)
    }
}

/// Multiplies the rate by `gamma` every `every` steps (`torch.optim.lr_scheduler.StepLR`).
#[derive(Clone, Copy, Debug)]
pub struct StepDecay {
    /// Initial rate.
    pub lr: f64,
    /// Steps between decays.
    pub every: usize,
    /// Factor per decay.
    pub gamma: f64,
}
impl LrSchedule for StepDecay {
    fn lr(&self, step: usize) -> f64 {
        self.lr * self.gamma.powi((step / self.every.max(1)) as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_by_hand() {
        let w = LinearWarmup { lr: 1.0, warmup: 4 };
        assert_eq!([w.lr(0), w.lr(3), w.lr(10)], [0.25, 1.0, 1.0]);
        let c = CosineWithWarmup {
            max_lr: 1.0,
            min_lr: 0.0,
            warmup: 0,
            decay_steps: 10,
        };
        assert!((c.lr(5) - 0.5).abs() < 1e-12);
        let s = StepDecay {
            lr: 1.0,
            every: 3,
            gamma: 0.5,
        };
        assert_eq!([s.lr(2), s.lr(3), s.lr(7)], [1.0, 0.5, 0.25]);
    }
}
