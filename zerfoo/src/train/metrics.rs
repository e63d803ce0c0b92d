//! Per-step metrics and the `metrics.jsonl` log: one JSON object per line.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::{Error, Result};

/// What one training step measured.
///
/// `step` counts the optimizer steps done, so the line with `step = n`
/// describes the model after `n` updates — the same model a checkpoint of
/// step `n` holds (and `val_loss` was measured on it).
#[derive(Clone, Debug, PartialEq)]
pub struct StepMetrics {
    /// Optimizer steps done (1 after the first step).
    pub step: u64,
    /// Mean training loss over the step's micro-batches.
    pub train_loss: f64,
    /// Mean validation loss, on the steps that evaluated.
    pub val_loss: Option<f64>,
    /// The learning rate the step used.
    pub lr: f64,
    /// Global gradient norm before clipping (when clipping is on).
    pub grad_norm: Option<f64>,
    /// Training tokens per second of this step (forward, backward, update).
    pub tokens_per_s: f64,
    /// Seconds since the run began (carried over a resume).
    pub elapsed: f64,
}

impl StepMetrics {
    /// The JSON object of one `metrics.jsonl` line. Absent values are left
    /// out; a non-finite number is written as `null`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("step".into(), json!(self.step));
        m.insert("train_loss".into(), num(self.train_loss));
        if let Some(v) = self.val_loss {
            m.insert("val_loss".into(), num(v));
        }
        m.insert("lr".into(), num(self.lr));
        if let Some(g) = self.grad_norm {
            m.insert("grad_norm".into(), num(g));
        }
        m.insert("tokens_per_s".into(), num(self.tokens_per_s));
        m.insert("elapsed".into(), num(self.elapsed));
        Value::Object(m)
    }

    /// Parses one `metrics.jsonl` line (`null` reads back as NaN).
    pub fn from_json(v: &Value) -> Result<Self> {
        let bad = |reason: String| Error::Format {
            what: "metrics line".into(),
            reason,
        };
        let obj = v
            .as_object()
            .ok_or_else(|| bad(format!("expected a JSON object, got {v}")))?;
        let float = |key: &str| -> Result<Option<f64>> {
            match obj.get(key) {
                None => Ok(None),
                Some(Value::Null) => Ok(Some(f64::NAN)),
                Some(x) => x
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| bad(format!("`{key}` is not a number: {x}"))),
            }
        };
        let required = |key: &str| -> Result<f64> {
            float(key)?.ok_or_else(|| bad(format!("`{key}` is missing")))
        };
        Ok(StepMetrics {
            step: obj
                .get("step")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("`step` is missing or not an integer".into()))?,
            train_loss: required("train_loss")?,
            val_loss: float("val_loss")?,
            lr: required("lr")?,
            grad_norm: float("grad_norm")?,
            tokens_per_s: float("tokens_per_s")?.unwrap_or(f64::NAN),
            elapsed: float("elapsed")?.unwrap_or(f64::NAN),
        })
    }
}

fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Reads every line of a `metrics.jsonl` file (blank lines skipped).
pub fn read_metrics(path: impl AsRef<Path>) -> Result<Vec<StepMetrics>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse_lines(&text, path)
}

fn parse_lines(text: &str, path: &Path) -> Result<Vec<StepMetrics>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).map_err(|e| Error::Format {
                what: format!("{} line {}", path.display(), i + 1),
                reason: e.to_string(),
            })?;
            StepMetrics::from_json(&v)
        })
        .collect()
}

/// An append-only `metrics.jsonl`: each [`append`](Self::append) writes one
/// complete line and flushes it, so a crash loses at most the line being
/// written.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `path` for appending, creating it (and its folder) if needed.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        Ok(MetricsLog { path, file })
    }

    /// Opens `path` keeping only the lines with `step <= last_step` (a
    /// resumed run drops what the interrupted run logged after its
    /// checkpoint), and returns them. The kept lines are rewritten
    /// atomically. A missing file starts empty.
    pub fn open_truncated(
        path: impl AsRef<Path>,
        last_step: u64,
    ) -> Result<(Self, Vec<StepMetrics>)> {
        let path = path.as_ref();
        let mut kept = Vec::new();
        if path.exists() {
            let all = read_metrics(path)?;
            let n = all.len();
            kept = all.into_iter().filter(|m| m.step <= last_step).collect();
            if kept.len() != n {
                let mut text = String::new();
                for m in &kept {
                    text.push_str(&m.to_json().to_string());
                    text.push('\n');
                }
                crate::io::write_atomic(path, text.as_bytes())?;
            }
        }
        Ok((Self::open(path)?, kept))
    }

    /// Appends one line.
    pub fn append(&mut self, m: &StepMetrics) -> Result<()> {
        let mut line = m.to_json().to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| io_err(&self.path, e))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn io_err(p: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: p.display().to_string(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_nan() {
        let m = StepMetrics {
            step: 7,
            train_loss: 2.5,
            val_loss: Some(2.75),
            lr: 1e-3,
            grad_norm: None,
            tokens_per_s: 1000.0,
            elapsed: 1.5,
        };
        let line = m.to_json().to_string();
        assert!(!line.contains("grad_norm"));
        let back = StepMetrics::from_json(&serde_json::from_str(&line).unwrap()).unwrap();
        assert_eq!(back, m);
        let nan = StepMetrics {
            train_loss: f64::NAN,
            ..m
        };
        let v = nan.to_json();
        assert!(v["train_loss"].is_null());
        assert!(StepMetrics::from_json(&v).unwrap().train_loss.is_nan());
        assert!(StepMetrics::from_json(&json!({"step": 1})).is_err());
        assert!(StepMetrics::from_json(&json!([1, 2])).is_err());
    }
}
