//! Per-parameter optimizer state, and saving it.

use std::collections::HashMap;

use zerfoo_kernels::Real;

/// State of one parameter: up to two buffers in its compute type.
pub(crate) struct ParamState {
    pub(crate) steps: u64,
    /// `Vec<A>` buffers (`A` = the parameter's compute type).
    slots: [Box<dyn std::any::Any + Send + Sync>; 2],
    /// The same buffers as f64, refreshed on demand for saving.
    len: usize,
}

impl ParamState {
    pub(crate) fn new<A: Real>(n: usize) -> Self {
        ParamState {
            steps: 0,
            slots: [Box::new(vec![A::zero(); n]), Box::new(vec![A::zero(); n])],
            len: n,
        }
    }

    pub(crate) fn slot<A: Real>(&mut self, i: usize) -> &mut Vec<A> {
        self.slots[i]
            .downcast_mut::<Vec<A>>()
            .expect("optimizer state changed compute type")
    }

    pub(crate) fn two_slots<A: Real>(&mut self) -> (&mut Vec<A>, &mut Vec<A>) {
        let [a, b] = &mut self.slots;
        (
            a.downcast_mut::<Vec<A>>().expect("optimizer state type"),
            b.downcast_mut::<Vec<A>>().expect("optimizer state type"),
        )
    }

    fn as_f64(&self, i: usize) -> Vec<f64> {
        if let Some(v) = self.slots[i].downcast_ref::<Vec<f64>>() {
            v.clone()
        } else if let Some(v) = self.slots[i].downcast_ref::<Vec<f32>>() {
            v.iter().map(|&x| x as f64).collect()
        } else {
            vec![0.0; self.len]
        }
    }

    fn set_f64(&mut self, i: usize, values: &[f64]) {
        if let Some(v) = self.slots[i].downcast_mut::<Vec<f64>>() {
            v.copy_from_slice(values);
        } else if let Some(v) = self.slots[i].downcast_mut::<Vec<f32>>() {
            for (d, &s) in v.iter_mut().zip(values) {
                *d = s as f32;
            }
        }
    }
}

/// A snapshot of an optimizer's state: its step count, learning rate and
/// every parameter's buffers (as f64, exact for f32/f64 state), by path.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// Steps taken.
    pub step: u64,
    /// Learning rate at the snapshot.
    pub lr: f64,
    /// `path -> (steps, [buffer0, buffer1])`.
    pub params: HashMap<String, (u64, [Vec<f64>; 2])>,
}

impl super::Optimizer {
    /// A snapshot of the state (for checkpoints).
    pub fn state(&self) -> OptimizerState {
        OptimizerState {
            step: self.step,
            lr: self.lr,
            params: self
                .state
                .iter()
                .map(|(k, s)| (k.clone(), (s.steps, [s.as_f64(0), s.as_f64(1)])))
                .collect(),
        }
    }

    /// Restores a snapshot taken by [`state`](Self::state). Buffers of
    /// parameters not yet seen are created on their first step with the
    /// parameter's compute type, so `load_state` must follow a `step` or be
    /// given a module: use [`load_state_for`](Self::load_state_for).
    pub fn load_state_for<M: crate::nn::Module>(
        &mut self,
        module: &M,
        snapshot: &OptimizerState,
    ) -> crate::Result<()> {
        self.step = snapshot.step;
        self.lr = snapshot.lr;
        self.state.clear();
        for info in module.param_info() {
            let Some((steps, bufs)) = snapshot.params.get(&info.path) else {
                continue;
            };
            let n: usize = info.dims.iter().product();
            if bufs[0].len() != n || bufs[1].len() != n {
                return Err(crate::Error::Checkpoint {
                    tensor: info.path.clone(),
                    reason: format!(
                        "optimizer state holds {} values, the parameter {}",
                        bufs[0].len(),
                        n
                    ),
                });
            }
            let mut st = if info.dtype == zerfoo_kernels::DType::F64 {
                ParamState::new::<f64>(n)
            } else {
                ParamState::new::<f32>(n)
            };
            st.set_f64(0, &bufs[0]);
            st.set_f64(1, &bufs[1]);
            st.steps = *steps;
            self.state.insert(info.path, st);
        }
        Ok(())
    }
}
