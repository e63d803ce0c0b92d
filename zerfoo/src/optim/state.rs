//! Per-parameter optimizer state, snapshots of it, and saving it to a
//! safetensors file.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, TensorView};
use std::any::Any;

use zerfoo_kernels::{Backend, Dtype, Layout, Real};

use super::{Optimizer, Rule};
use crate::io::{parse_safetensors, read_file, write_atomic};
use crate::nn::Module;
use crate::{Error, Result};

/// State of one parameter: two buffers in its compute type, on the
/// parameter's device (created on its first step; a loaded snapshot waits
/// on the host until then).
pub(crate) struct ParamState {
    pub(crate) steps: u64,
    /// The buffers, once the parameter has stepped on its device.
    slots: Option<Box<dyn StateSlots>>,
    /// Buffers loaded from a snapshot, not yet on the device.
    pending: Option<[Vec<f64>; 2]>,
    /// Number of elements of each buffer.
    len: usize,
    /// The parameter's dims (the shape of the buffers on disk).
    dims: Vec<usize>,
}

/// Two state buffers on some device, type-erased.
trait StateSlots: Any + Send + Sync {
    /// Buffer `i` on the host, as f64 (exact for f32/f64 state).
    fn to_f64(&self, i: usize) -> Result<Vec<f64>>;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The buffers of one parameter on device `D`, in compute type `A`.
struct Slots<D: Backend, A: Real + Dtype> {
    dev: D,
    bufs: [D::Storage<A>; 2],
}

impl<D: Backend, A: Real + Dtype> StateSlots for Slots<D, A> {
    fn to_f64(&self, i: usize) -> Result<Vec<f64>> {
        let l = Layout::contiguous(&[D::storage_len(&self.bufs[i])]);
        Ok(self
            .dev
            .to_host(&self.bufs[i], &l)?
            .into_iter()
            .map(|v| v.as_f64())
            .collect())
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl ParamState {
    pub(crate) fn new(dims: &[usize]) -> Self {
        ParamState {
            steps: 0,
            slots: None,
            pending: None,
            len: dims.iter().product(),
            dims: dims.to_vec(),
        }
    }

    /// The two buffers on `dev` in compute type `A` (zeros on the first
    /// step, or the loaded snapshot).
    #[allow(clippy::type_complexity)]
    pub(crate) fn slots_on<D: Backend, A: Real + Dtype>(
        &mut self,
        dev: &D,
    ) -> Result<(&mut D::Storage<A>, &mut D::Storage<A>)> {
        if self.slots.is_none() {
            let host = self
                .pending
                .take()
                .unwrap_or_else(|| [vec![0.0; self.len], vec![0.0; self.len]]);
            let [a, b] = host.map(|v| v.into_iter().map(A::of_f64).collect::<Vec<A>>());
            let bufs = [dev.upload(a)?, dev.upload(b)?];
            self.slots = Some(Box::new(Slots {
                dev: dev.clone(),
                bufs,
            }));
        }
        let slots = self
            .slots
            .as_mut()
            .expect("created above")
            .as_any_mut()
            .downcast_mut::<Slots<D, A>>()
            .ok_or_else(|| Error::InvalidArgument {
                op: "optimizer step",
                reason: "a parameter changed device or compute type between steps".into(),
            })?;
        let [a, b] = &mut slots.bufs;
        Ok((a, b))
    }

    fn as_f64(&self, i: usize) -> Result<Vec<f64>> {
        match (&self.slots, &self.pending) {
            (Some(s), _) => s.to_f64(i),
            (None, Some(p)) => Ok(p[i].clone()),
            (None, None) => Ok(vec![0.0; self.len]),
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
    /// A snapshot of the state (for checkpoints), copied to the host.
    ///
    /// Panics if a device fails to copy (see [`try_state`](Self::try_state)).
    pub fn state(&self) -> OptimizerState {
        crate::error::or_panic(self.try_state())
    }

    /// A snapshot of the state, or the device's error.
    pub fn try_state(&self) -> Result<OptimizerState> {
        let mut params = HashMap::new();
        for (k, s) in &self.state {
            params.insert(k.clone(), (s.steps, [s.as_f64(0)?, s.as_f64(1)?]));
        }
        Ok(OptimizerState {
            step: self.step,
            lr: self.lr,
            params,
        })
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
            let mut st = ParamState::new(&info.dims);
            st.pending = Some(bufs.clone());
            st.steps = *steps;
            self.state.insert(info.path, st);
        }
        Ok(())
    }
}

/// `format` in the metadata of an optimizer-state file.
const FORMAT: &str = "zerfoo-optimizer-state";
/// `version` in the metadata.
const VERSION: &str = "1";

/// The update rule as one line of metadata: `adamw beta1=0.9 beta2=0.95 eps=1e-8`.
fn rule_to_string(rule: Rule) -> String {
    match rule {
        Rule::Sgd {
            momentum,
            dampening,
            nesterov,
        } => format!("sgd momentum={momentum:?} dampening={dampening:?} nesterov={nesterov}"),
        Rule::Adam { beta1, beta2, eps } => {
            format!("adam beta1={beta1:?} beta2={beta2:?} eps={eps:?}")
        }
        Rule::AdamW { beta1, beta2, eps } => {
            format!("adamw beta1={beta1:?} beta2={beta2:?} eps={eps:?}")
        }
    }
}

/// Parses [`rule_to_string`]'s output.
fn rule_from_str(s: &str) -> Option<Rule> {
    let mut words = s.split_whitespace();
    let kind = words.next()?;
    let mut kv = HashMap::new();
    for w in words {
        let (k, v) = w.split_once('=')?;
        kv.insert(k, v);
    }
    let f = |k: &str| kv.get(k).and_then(|v| v.parse::<f64>().ok());
    let rule = match kind {
        "sgd" => Rule::Sgd {
            momentum: f("momentum")?,
            dampening: f("dampening")?,
            nesterov: kv.get("nesterov")?.parse().ok()?,
        },
        "adam" | "adamw" => {
            let (beta1, beta2, eps) = (f("beta1")?, f("beta2")?, f("eps")?);
            if kind == "adam" {
                Rule::Adam { beta1, beta2, eps }
            } else {
                Rule::AdamW { beta1, beta2, eps }
            }
        }
        _ => return None,
    };
    Some(rule)
}

fn format_err(reason: impl Into<String>) -> Error {
    Error::Format {
        what: "optimizer state file".into(),
        reason: reason.into(),
    }
}

fn le_f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl Optimizer {
    /// Saves the optimizer's state to a safetensors file, atomically: every
    /// parameter's buffers as f64 tensors `state.<path>.0` and
    /// `state.<path>.1` (shaped like the parameter; exact for the f32/f64
    /// compute types), and in the metadata the step count, the learning
    /// rate, the rule and each parameter's own step count (`steps.<path>`).
    ///
    /// Group settings and frozen predicates are code, not state: build the
    /// optimizer the same way before [`load_state`](Self::load_state).
    pub fn save_state(&self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = self.state_to_bytes()?;
        write_atomic(path.as_ref(), &bytes)
    }

    /// The bytes [`save_state`](Self::save_state) writes.
    pub fn state_to_bytes(&self) -> Result<Vec<u8>> {
        let mut metadata = HashMap::new();
        metadata.insert("format".to_string(), FORMAT.to_string());
        metadata.insert("version".to_string(), VERSION.to_string());
        metadata.insert("step".to_string(), self.step.to_string());
        metadata.insert("lr".to_string(), format!("{:?}", self.lr));
        metadata.insert("rule".to_string(), rule_to_string(self.rule));
        let mut paths: Vec<&String> = self.state.keys().collect();
        paths.sort();
        let mut buffers = Vec::new();
        for p in paths {
            let st = &self.state[p];
            metadata.insert(format!("steps.{p}"), st.steps.to_string());
            for i in 0..2 {
                buffers.push((
                    format!("state.{p}.{i}"),
                    st.dims.clone(),
                    le_f64_bytes(&st.as_f64(i)?),
                ));
            }
        }
        let views: Vec<(String, TensorView<'_>)> = buffers
            .iter()
            .map(|(name, dims, bytes)| {
                TensorView::new(StDtype::F64, dims.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::Format {
                        what: "optimizer state tensor".into(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<_>>()?;
        safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| Error::Format {
            what: "optimizer state output".into(),
            reason: e.to_string(),
        })
    }

    /// Loads a file written by [`save_state`](Self::save_state) for the
    /// parameters of `module`, strictly: the rule must be this optimizer's,
    /// every state tensor must belong to a parameter of `module` (error
    /// naming the tensor otherwise), be f64 and have the parameter's shape,
    /// and come in pairs. A parameter without state in the file starts fresh
    /// (it had no gradient yet, or was frozen). A malformed file is
    /// [`Error::Format`]. On any error the optimizer is left unchanged.
    pub fn load_state<M: Module>(&mut self, path: impl AsRef<Path>, module: &M) -> Result<()> {
        let bytes = read_file(path.as_ref())?;
        self.load_state_bytes(&bytes, module)
    }

    /// [`load_state`](Self::load_state) from bytes.
    pub fn load_state_bytes<M: Module>(&mut self, bytes: &[u8], module: &M) -> Result<()> {
        let file = parse_safetensors(bytes, "optimizer state file")?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| Error::Format {
                what: "optimizer state file".into(),
                reason: e.to_string(),
            })?;
        let meta = header
            .metadata()
            .as_ref()
            .ok_or_else(|| format_err("no metadata: not an optimizer state file"))?;
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| format_err(format!("metadata `{k}` is missing")))
        };
        if get("format")? != FORMAT {
            return Err(format_err(format!(
                "metadata `format` is `{}`, expected `{FORMAT}`",
                meta["format"]
            )));
        }
        if get("version")? != VERSION {
            return Err(format_err(format!(
                "version `{}` is not supported (this build reads version {VERSION})",
                meta["version"]
            )));
        }
        let step: u64 = get("step")?
            .parse()
            .map_err(|_| format_err("metadata `step` is not an integer"))?;
        let lr: f64 = get("lr")?
            .parse()
            .map_err(|_| format_err("metadata `lr` is not a number"))?;
        let rule = rule_from_str(get("rule")?).ok_or_else(|| {
            format_err(format!("metadata `rule` is unreadable: `{}`", meta["rule"]))
        })?;
        if rule != self.rule {
            return Err(Error::Checkpoint {
                tensor: "__metadata__.rule".into(),
                reason: format!(
                    "the file holds state for `{}`, this optimizer is `{}`",
                    rule_to_string(rule),
                    rule_to_string(self.rule)
                ),
            });
        }

        let params: HashMap<String, crate::nn::ParamInfo> = module
            .param_info()
            .into_iter()
            .map(|p| (p.path.clone(), p))
            .collect();
        // Every parameter with a step count, in a fixed order.
        let mut with_state = BTreeSet::new();
        for (k, v) in meta {
            let Some(p) = k.strip_prefix("steps.") else {
                continue;
            };
            if !params.contains_key(p) {
                return Err(Error::Checkpoint {
                    tensor: format!("state.{p}"),
                    reason: "in the optimizer state but not a parameter of the module".into(),
                });
            }
            let steps: u64 = v
                .parse()
                .map_err(|_| format_err(format!("metadata `{k}` is not an integer")))?;
            with_state.insert((p.to_string(), steps));
        }
        let mut expected = BTreeSet::new();
        let mut state = HashMap::new();
        for (p, steps) in with_state {
            let info = &params[&p];
            let mut st = ParamState::new(&info.dims);
            let mut loaded: [Vec<f64>; 2] = Default::default();
            for (i, slot) in loaded.iter_mut().enumerate() {
                let name = format!("state.{p}.{i}");
                let view = file.tensor(&name).map_err(|_| Error::Checkpoint {
                    tensor: name.clone(),
                    reason: "missing from the optimizer state".into(),
                })?;
                if view.dtype() != StDtype::F64 {
                    return Err(Error::Checkpoint {
                        tensor: name,
                        reason: format!("dtype {:?} in the file, expected F64", view.dtype()),
                    });
                }
                if view.shape() != &*info.dims {
                    return Err(Error::Checkpoint {
                        tensor: name,
                        reason: format!(
                            "shape {:?} in the file, the parameter is {:?}",
                            view.shape(),
                            &*info.dims
                        ),
                    });
                }
                let values: Vec<f64> = view
                    .data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect();
                *slot = values;
                expected.insert(name);
            }
            st.pending = Some(loaded);
            st.steps = steps;
            state.insert(p, st);
        }
        let mut names = file.names();
        names.sort();
        if let Some(extra) = names.into_iter().find(|n| !expected.contains(*n)) {
            return Err(Error::Checkpoint {
                tensor: extra.to_string(),
                reason: "in the optimizer state but not a buffer of a parameter of the module"
                    .into(),
            });
        }
        self.step = step;
        self.lr = lr;
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_round_trip_through_metadata() {
        for rule in [
            Rule::Sgd {
                momentum: 0.9,
                dampening: 0.1,
                nesterov: true,
            },
            Rule::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            Rule::AdamW {
                beta1: 0.85,
                beta2: 0.95,
                eps: 3e-7,
            },
        ] {
            assert_eq!(rule_from_str(&rule_to_string(rule)), Some(rule));
        }
        assert_eq!(rule_from_str("rmsprop alpha=0.9"), None);
        assert_eq!(rule_from_str("adam beta1=0.9"), None);
    }
}
