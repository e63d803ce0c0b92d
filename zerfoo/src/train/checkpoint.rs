//! Training checkpoints: a folder holding everything a run needs to continue
//! exactly where it stopped.
//!
//! ```text
//! <dir>/model.safetensors      parameters by dotted path (metadata: train_step)
//! <dir>/optimizer.safetensors  optimizer buffers `<path>.m`, `<path>.v` (metadata: steps, lr)
//! <dir>/config.json            the user's run configuration, if given
//! <dir>/tokenizer.json         the tokenizer, if given
//! <dir>/state.json             step, seed, losses, elapsed time; written last
//! ```
//!
//! Every file is written atomically, `state.json` last, and every file
//! records the step it was written at, so that [`load_checkpoint`] detects a
//! folder left half-overwritten by a crash instead of resuming from a mix.
//! The data position needs no file of its own: batch `i` of a run is drawn
//! from `(seed, i)`, and step `s` uses batches `s * accum ..`, so the step and
//! the seed are enough.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype as StDtype, TensorView};
use serde_json::{json, Value};

use crate::io::{self, decode_f64, parse_safetensors, read_file, write_atomic};
use crate::nn::Module;
use crate::optim::{Optimizer, OptimizerState};
use crate::{Error, Result};

/// The parameters' file in a checkpoint folder.
pub const MODEL_FILE: &str = "model.safetensors";
/// The optimizer state's file.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The training state's file (written last).
pub const STATE_FILE: &str = "state.json";
/// The user's configuration.
pub const CONFIG_FILE: &str = "config.json";
/// The tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The folder, under a run folder, that holds its checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// The best-validation-loss checkpoint's folder name under [`CHECKPOINTS_DIR`].
pub const BEST_DIR: &str = "best";

const STATE_FORMAT: &str = "zerfoo-train-state/1";
const OPTIMIZER_FORMAT: &str = "zerfoo-optimizer/1";

/// The training state stored in `state.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointState {
    /// Optimizer steps done; a resumed run starts at this step.
    pub step: u64,
    /// The run's seed (batch draws and per-step seeds derive from it).
    pub seed: u64,
    /// Micro-batches per step (batch indices of step `s` start at `s * accum`).
    pub accum: usize,
    /// The last step's training loss.
    pub train_loss: Option<f64>,
    /// The validation loss at this step, if it was evaluated.
    pub val_loss: Option<f64>,
    /// The best validation loss so far (stored exactly).
    pub best_val_loss: Option<f64>,
    /// Seconds of training so far.
    pub elapsed: f64,
    /// The trainer's settings, for the record (`null` if none).
    pub train_config: Value,
}

impl CheckpointState {
    /// The JSON of `state.json`. Floats that decide the future of the run
    /// (`best_val_loss`) are stored as exact decimal strings.
    pub fn to_json(&self) -> Value {
        json!({
            "format": STATE_FORMAT,
            "step": self.step,
            "seed": self.seed,
            "accum": self.accum,
            "next_batch_index": self.step.saturating_mul(self.accum as u64),
            "train_loss": self.train_loss.map(num),
            "val_loss": self.val_loss.map(num),
            "best_val_loss": self.best_val_loss.map(exact),
            "elapsed": num(self.elapsed),
            "train_config": self.train_config,
        })
    }

    /// Parses `state.json`.
    pub fn from_json(v: &Value) -> Result<Self> {
        let bad = |reason: String| Error::Format {
            what: STATE_FILE.into(),
            reason,
        };
        if v.get("format").and_then(Value::as_str) != Some(STATE_FORMAT) {
            return Err(bad(format!(
                "expected \"format\": \"{STATE_FORMAT}\", found {}",
                v.get("format").unwrap_or(&Value::Null)
            )));
        }
        let int = |key: &str| {
            v.get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| bad(format!("`{key}` is missing or not an integer")))
        };
        let float = |key: &str| -> Result<Option<f64>> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => s
                    .parse::<f64>()
                    .map(Some)
                    .map_err(|_| bad(format!("`{key}` is not a number: {s:?}"))),
                Some(x) => x
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| bad(format!("`{key}` is not a number: {x}"))),
            }
        };
        Ok(CheckpointState {
            step: int("step")?,
            seed: int("seed")?,
            accum: int("accum")? as usize,
            train_loss: float("train_loss")?,
            val_loss: float("val_loss")?,
            best_val_loss: float("best_val_loss")?,
            elapsed: float("elapsed")?.unwrap_or(0.0),
            train_config: v.get("train_config").cloned().unwrap_or(Value::Null),
        })
    }
}

fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// A float as the shortest decimal string that parses back to the same bits.
fn exact(x: f64) -> Value {
    Value::String(format!("{x:?}"))
}

fn json_bytes(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s.into_bytes()
}

/// Serializes an optimizer snapshot to safetensors bytes: per parameter
/// path, 1-D tensors `<path>.m` and `<path>.v` (its two buffers: momentum,
/// or Adam's first and second moments), stored as f32 when that is exact
/// (always, for f32 state) and as f64 otherwise. The header metadata holds
/// the step count, the learning rate, each parameter's own step count and
/// `extra`.
pub fn optimizer_state_to_bytes(
    state: &OptimizerState,
    extra: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut paths: Vec<&String> = state.params.keys().collect();
    paths.sort();
    let mut buffers: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut param_steps = serde_json::Map::new();
    for path in paths {
        let (steps, bufs) = &state.params[path];
        param_steps.insert(path.clone(), json!(steps));
        for (suffix, buf) in [("m", &bufs[0]), ("v", &bufs[1])] {
            let as_f32 = buf.iter().all(|&x| (x as f32) as f64 == x || x.is_nan());
            let (dtype, bytes) = if as_f32 {
                let v: Vec<f32> = buf.iter().map(|&x| x as f32).collect();
                (StDtype::F32, io::to_le_bytes(&v))
            } else {
                (StDtype::F64, io::to_le_bytes(buf))
            };
            buffers.push((format!("{path}.{suffix}"), dtype, vec![buf.len()], bytes));
        }
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Format {
                    what: "optimizer state".into(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = extra;
    meta.insert("format".into(), OPTIMIZER_FORMAT.into());
    meta.insert("step".into(), state.step.to_string());
    meta.insert("lr".into(), format!("{:?}", state.lr));
    meta.insert("param_steps".into(), Value::Object(param_steps).to_string());
    safetensors::tensor::serialize(views, Some(meta)).map_err(|e| Error::Format {
        what: "optimizer state".into(),
        reason: e.to_string(),
    })
}

/// Parses what [`optimizer_state_to_bytes`] wrote; returns the snapshot and
/// the header metadata.
pub fn optimizer_state_from_bytes(
    bytes: &[u8],
) -> Result<(OptimizerState, HashMap<String, String>)> {
    let what = "optimizer state";
    let bad = |reason: String| Error::Format {
        what: what.into(),
        reason,
    };
    let (_, header) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(OPTIMIZER_FORMAT) {
        return Err(bad(format!(
            "not a zerfoo optimizer state (format {:?})",
            meta.get("format")
        )));
    }
    let step = meta
        .get("step")
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| bad("`step` is missing from the metadata".into()))?;
    let lr = meta
        .get("lr")
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or_else(|| bad("`lr` is missing from the metadata".into()))?;
    let steps: Value = meta
        .get("param_steps")
        .map(|s| serde_json::from_str(s))
        .transpose()
        .map_err(|e| bad(format!("`param_steps`: {e}")))?
        .unwrap_or(Value::Object(Default::default()));
    let file = parse_safetensors(bytes, what)?;
    let read = |name: &str| -> Result<Vec<f64>> {
        let view = file
            .tensor(name)
            .map_err(|_| bad(format!("tensor `{name}` is missing")))?;
        decode_f64(view.dtype(), view.data())
            .ok_or_else(|| bad(format!("`{name}` has dtype {:?}", view.dtype())))
    };
    let mut params = HashMap::new();
    let obj = steps
        .as_object()
        .ok_or_else(|| bad("`param_steps` is not a JSON object".into()))?;
    for (path, n) in obj {
        let n = n
            .as_u64()
            .ok_or_else(|| bad(format!("step count of `{path}` is not an integer")))?;
        let m = read(&format!("{path}.m"))?;
        let v = read(&format!("{path}.v"))?;
        params.insert(path.clone(), (n, [m, v]));
    }
    if file.len() != 2 * params.len() {
        return Err(bad(format!(
            "{} tensors for {} parameters (expected `.m` and `.v` for each)",
            file.len(),
            params.len()
        )));
    }
    Ok((OptimizerState { step, lr, params }, meta))
}

/// Writes an optimizer snapshot to a safetensors file, atomically.
pub fn save_optimizer_state(
    path: impl AsRef<Path>,
    state: &OptimizerState,
    extra: HashMap<String, String>,
) -> Result<()> {
    write_atomic(path.as_ref(), &optimizer_state_to_bytes(state, extra)?)
}

/// Reads an optimizer snapshot written by [`save_optimizer_state`].
pub fn load_optimizer_state(
    path: impl AsRef<Path>,
) -> Result<(OptimizerState, HashMap<String, String>)> {
    optimizer_state_from_bytes(&read_file(path.as_ref())?)
}

/// What goes into a checkpoint besides the model and the optimizer.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckpointExtras<'a> {
    /// The user's run configuration, written as `config.json`.
    pub config: Option<&'a Value>,
    /// The tokenizer's JSON, written as `tokenizer.json`.
    pub tokenizer_json: Option<&'a str>,
}

/// Saves a checkpoint folder (see the module docs); `state.json` is written
/// last.
pub fn save_checkpoint<M: Module>(
    dir: impl AsRef<Path>,
    model: &M,
    opt: &Optimizer,
    state: &CheckpointState,
    extras: CheckpointExtras<'_>,
) -> Result<()> {
    let dir = dir.as_ref();
    let step = state.step.to_string();
    let model_meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("train_step".to_string(), step.clone()),
    ]);
    io::save_with_metadata(model, dir.join(MODEL_FILE), Some(model_meta))?;
    save_optimizer_state(
        dir.join(OPTIMIZER_FILE),
        &opt.state(),
        HashMap::from([("train_step".to_string(), step)]),
    )?;
    if let Some(cfg) = extras.config {
        write_atomic(&dir.join(CONFIG_FILE), &json_bytes(cfg))?;
    }
    if let Some(tok) = extras.tokenizer_json {
        write_atomic(&dir.join(TOKENIZER_FILE), tok.as_bytes())?;
    }
    write_atomic(&dir.join(STATE_FILE), &json_bytes(&state.to_json()))
}

/// Reads a checkpoint folder's `state.json`.
pub fn read_checkpoint_state(dir: impl AsRef<Path>) -> Result<CheckpointState> {
    let path = dir.as_ref().join(STATE_FILE);
    let text = read_file(&path)?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| Error::Format {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    CheckpointState::from_json(&v)
}

/// Reads a checkpoint folder's `config.json`, if it has one.
pub fn read_checkpoint_config(dir: impl AsRef<Path>) -> Result<Option<Value>> {
    let path = dir.as_ref().join(CONFIG_FILE);
    if !path.exists() {
        return Ok(None);
    }
    serde_json::from_slice(&read_file(&path)?)
        .map(Some)
        .map_err(|e| Error::Format {
            what: path.display().to_string(),
            reason: e.to_string(),
        })
}

fn check_step(file: &Path, meta: Option<&String>, step: u64) -> Result<()> {
    let written = meta.and_then(|s| s.parse::<u64>().ok());
    if written != Some(step) {
        return Err(Error::Checkpoint {
            tensor: file.display().to_string(),
            reason: format!(
                "written at step {}, but {STATE_FILE} says step {step}: the checkpoint is incomplete",
                written.map_or("?".to_string(), |s| s.to_string())
            ),
        });
    }
    Ok(())
}

/// Loads a checkpoint folder into `model` (strictly: every parameter, no
/// extra tensor) and `opt`, and returns its training state. Fails if the
/// files were written at different steps.
pub fn load_checkpoint<M: Module>(
    dir: impl AsRef<Path>,
    model: &mut M,
    opt: &mut Optimizer,
) -> Result<CheckpointState> {
    let dir = dir.as_ref();
    let state = read_checkpoint_state(dir)?;
    let model_path = dir.join(MODEL_FILE);
    let bytes = read_file(&model_path)?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::Format {
            what: model_path.display().to_string(),
            reason: e.to_string(),
        })?;
    let meta = header.metadata().clone().unwrap_or_default();
    check_step(&model_path, meta.get("train_step"), state.step)?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let (snapshot, opt_meta) = load_optimizer_state(&opt_path)?;
    check_step(&opt_path, opt_meta.get("train_step"), state.step)?;
    io::load_bytes_with(model, &bytes, io::LoadOptions::default())?;
    opt.load_state_for(model, &snapshot)?;
    Ok(state)
}

/// The folder of the periodic checkpoint at `step` in `run_dir`.
pub fn step_dir(run_dir: impl AsRef<Path>, step: u64) -> PathBuf {
    run_dir
        .as_ref()
        .join(CHECKPOINTS_DIR)
        .join(format!("step_{step:08}"))
}

/// The best-validation-loss checkpoint folder of `run_dir`.
pub fn best_dir(run_dir: impl AsRef<Path>) -> PathBuf {
    run_dir.as_ref().join(CHECKPOINTS_DIR).join(BEST_DIR)
}

/// The complete periodic checkpoints of `run_dir` (those with a readable
/// `state.json`), by increasing step.
pub fn list_checkpoints(run_dir: impl AsRef<Path>) -> Result<Vec<(u64, PathBuf)>> {
    let root = run_dir.as_ref().join(CHECKPOINTS_DIR);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("step_") || !e.path().is_dir() {
            continue;
        }
        if let Ok(st) = read_checkpoint_state(e.path()) {
            out.push((st.step, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The latest complete periodic checkpoint of `run_dir`, if any.
pub fn latest_checkpoint(run_dir: impl AsRef<Path>) -> Result<Option<PathBuf>> {
    Ok(list_checkpoints(run_dir)?.pop().map(|(_, p)| p))
}

/// Deletes the periodic checkpoints of `run_dir` past `current_step` (left
/// by a run that went further before this one resumed from an earlier
/// step), then all but the `keep` latest (`keep = 0`: keeps them all). The
/// best checkpoint is never touched.
pub fn prune_checkpoints(run_dir: impl AsRef<Path>, keep: usize, current_step: u64) -> Result<()> {
    let all = list_checkpoints(run_dir)?;
    let (kept, future): (Vec<_>, Vec<_>) = all.into_iter().partition(|(s, _)| *s <= current_step);
    let old = if keep == 0 {
        0
    } else {
        kept.len().saturating_sub(keep)
    };
    for (_, path) in future.into_iter().chain(kept.into_iter().take(old)) {
        std::fs::remove_dir_all(&path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_json_round_trips_exactly() {
        let s = CheckpointState {
            step: 12,
            seed: 3,
            accum: 2,
            train_loss: Some(1.25),
            val_loss: None,
            best_val_loss: Some(0.1 + 0.2),
            elapsed: 3.5,
            train_config: json!({"lr": 1e-3}),
        };
        let text = serde_json::to_string(&s.to_json()).unwrap();
        let back = CheckpointState::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            back.best_val_loss.unwrap().to_bits(),
            (0.1f64 + 0.2).to_bits()
        );
        assert!(CheckpointState::from_json(&json!({"step": 1})).is_err());
    }

    #[test]
    fn optimizer_state_round_trips() {
        let mut params = HashMap::new();
        params.insert(
            "a.weight".to_string(),
            (3, [vec![0.5, -1.0], vec![0.25, 2.0]]),
        );
        params.insert("b".to_string(), (1, [vec![0.1], vec![1e-300]]));
        let st = OptimizerState {
            step: 3,
            lr: 0.1 + 0.2,
            params,
        };
        let bytes =
            optimizer_state_to_bytes(&st, HashMap::from([("k".into(), "v".into())])).unwrap();
        let (back, meta) = optimizer_state_from_bytes(&bytes).unwrap();
        assert_eq!(back, st);
        assert_eq!(meta["k"], "v");
        let empty = OptimizerState {
            step: 0,
            lr: 1.0,
            params: HashMap::new(),
        };
        let bytes = optimizer_state_to_bytes(&empty, HashMap::new()).unwrap();
        assert_eq!(optimizer_state_from_bytes(&bytes).unwrap().0, empty);
        assert!(optimizer_state_from_bytes(b"garbage").is_err());
    }
}
