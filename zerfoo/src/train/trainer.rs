//! The training loop: LR schedule, gradient accumulation, clipping,
//! optimizer step, periodic evaluation, metrics, loss curve, checkpoints,
//! resume and Ctrl-C.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde_json::{json, Value};
use zerfoo_kernels::{Backend, FloatDtype};

use super::checkpoint::{self, CheckpointExtras, CheckpointState};
use super::metrics::{MetricsLog, StepMetrics};
use super::plot::write_loss_svg;
use super::progress::{Progress, Reporter};
use super::source::BatchSource;
use crate::autograd::{Gradients, NoTape, Tape, TensorId};
use crate::nn::{Module, ParamVisitor};
use crate::optim::{clip_coef, grad_norm, LrSchedule, Optimizer};
use crate::shape::Shape;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// The metrics file in a run folder.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The loss-curve picture in a run folder.
pub const LOSS_SVG_FILE: &str = "loss.svg";

/// Settings of a training run.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Train until this many optimizer steps are done.
    pub max_steps: u64,
    /// Micro-batches per optimizer step (gradient accumulation, at least 1).
    /// Their gradients are averaged.
    pub accum: usize,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub grad_clip: Option<f64>,
    /// Evaluate every this many steps (and at the last step; 0: only there).
    pub eval_every: u64,
    /// Validation batches per evaluation (0: never evaluate).
    pub eval_batches: usize,
    /// Save a checkpoint every this many steps (and at the last step, and on
    /// Ctrl-C; 0: only then). Needs `run_dir`.
    pub ckpt_every: u64,
    /// Periodic checkpoints to keep (0: all). The best one is kept apart.
    pub keep_last: usize,
    /// In line mode, print a line every this many steps.
    pub log_every: u64,
    /// The run's seed, handed to the loss function per micro-batch
    /// ([`MicroStep::seed`], e.g. for dropout) and recorded in checkpoints.
    pub seed: u64,
    /// Where metrics, the loss curve and checkpoints go (`None`: nowhere).
    pub run_dir: Option<PathBuf>,
    /// How progress is shown.
    pub progress: Progress,
    /// Install a Ctrl-C handler: the first Ctrl-C saves a checkpoint and
    /// stops the run with [`TrainStatus::Stopped`]; a second one exits at once.
    pub handle_ctrlc: bool,
    /// The user's run configuration, saved as `config.json` in checkpoints.
    pub config: Option<Value>,
    /// The tokenizer's JSON, saved as `tokenizer.json` in checkpoints.
    pub tokenizer_json: Option<String>,
    /// Asked before each step whether to run it (see [`StepGate`]; `None`:
    /// always).
    pub step_gate: Option<StepGate>,
}

/// A check the training loop makes before each step, with the step's index:
/// `true` runs the step, `false` stops the run as the stop flag does (a
/// checkpoint saved, [`TrainStatus::Stopped`]). It is called between steps,
/// before the step's timer starts and while the loop's worker threads are
/// idle, so it may block: the side-by-side benchmark uses one to run
/// zerfoo and PyTorch one step each in turn, so that both see the machine
/// in the same state (`bench/gpt_vs_pytorch.py --paired`).
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use zerfoo::train::StepGate;
/// // Lets steps 0-2 run, then stops the run.
/// let gate = StepGate::new(|step| step < 3);
/// assert!(gate.allows(2) && !gate.allows(3));
/// // Counts the steps it is asked about.
/// let asked = Arc::new(AtomicU64::new(0));
/// let seen = asked.clone();
/// let counting = StepGate::new(move |_| {
///     seen.fetch_add(1, Ordering::Relaxed);
///     true
/// });
/// assert!(counting.allows(0));
/// assert_eq!(asked.load(Ordering::Relaxed), 1);
/// ```
#[derive(Clone)]
pub struct StepGate(Arc<dyn Fn(u64) -> bool + Send + Sync>);

impl StepGate {
    /// A gate that asks `f(step)`.
    pub fn new(f: impl Fn(u64) -> bool + Send + Sync + 'static) -> Self {
        StepGate(Arc::new(f))
    }

    /// Whether step `step` may run.
    pub fn allows(&self, step: u64) -> bool {
        (self.0)(step)
    }
}

impl std::fmt::Debug for StepGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepGate(..)")
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            max_steps: 1000,
            accum: 1,
            grad_clip: Some(1.0),
            eval_every: 100,
            eval_batches: 20,
            ckpt_every: 500,
            keep_last: 2,
            log_every: 10,
            seed: 0,
            run_dir: None,
            progress: Progress::Auto,
            handle_ctrlc: false,
            config: None,
            tokenizer_json: None,
            step_gate: None,
        }
    }
}

impl TrainConfig {
    /// The loop settings as JSON (recorded in each checkpoint's `state.json`).
    pub fn to_json(&self) -> Value {
        json!({
            "max_steps": self.max_steps,
            "accum": self.accum,
            "grad_clip": self.grad_clip,
            "eval_every": self.eval_every,
            "eval_batches": self.eval_batches,
            "ckpt_every": self.ckpt_every,
            "keep_last": self.keep_last,
            "seed": self.seed,
        })
    }
}

/// Where the loss function is called from: the step, the micro-batch and a
/// seed for anything random in the forward pass (dropout). Identical on a
/// resumed run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MicroStep {
    /// The step (0-based).
    pub step: u64,
    /// The micro-batch within the step (`0..accum`).
    pub micro: usize,
    /// The batch index (`step * accum + micro`).
    pub index: u64,
    /// A seed derived from the run's seed and `index`.
    pub seed: u64,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainStatus {
    /// `max_steps` were done.
    Finished,
    /// The stop flag (Ctrl-C) was raised; a checkpoint was saved.
    Stopped,
    /// The training loss was not finite; the step was not applied and the
    /// run stopped (the last checkpoint is untouched).
    Diverged,
}

/// What [`Trainer::fit`] did.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// How it ended.
    pub status: TrainStatus,
    /// Optimizer steps done when it returned.
    pub step: u64,
    /// The metrics of each step this call did.
    pub history: Vec<StepMetrics>,
    /// The best validation loss so far (over resumes too).
    pub best_val_loss: Option<f64>,
    /// The last periodic (or Ctrl-C) checkpoint written, if any.
    pub last_checkpoint: Option<PathBuf>,
}

static CTRLC: AtomicBool = AtomicBool::new(false);
static CTRLC_INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Installs the process-wide Ctrl-C handler (once; later calls return the
/// first call's outcome). The first Ctrl-C raises a flag that
/// [`Trainer::fit`] checks every step; a second one exits with status 130.
pub fn install_ctrlc_handler() -> Result<()> {
    CTRLC_INSTALLED
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                if CTRLC.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
            })
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|reason| Error::InvalidArgument {
            op: "install_ctrlc_handler",
            reason,
        })
}

/// Whether Ctrl-C was pressed (or [`request_stop`] called) since the
/// handler was installed or since the last [`Trainer::fit`] with
/// `handle_ctrlc` began.
pub fn ctrlc_pressed() -> bool {
    CTRLC.load(Ordering::SeqCst)
}

/// Raises the process-wide flag that Ctrl-C raises: a running
/// [`Trainer::fit`] with `handle_ctrlc` saves a checkpoint and stops before
/// its next step.
pub fn request_stop() {
    CTRLC.store(true, Ordering::SeqCst);
}

/// Runs training loops (see [`Trainer::fit`]), remembering where the last
/// one stopped so that a later `fit` (or one after [`Trainer::resume`])
/// continues from there.
pub struct Trainer {
    config: TrainConfig,
    stop: Arc<AtomicBool>,
    start_step: u64,
    best_val: Option<f64>,
    elapsed_before: f64,
    resumed: bool,
}

impl Trainer {
    /// A trainer that starts at step 0.
    pub fn new(config: TrainConfig) -> Self {
        Trainer {
            config,
            stop: Arc::new(AtomicBool::new(false)),
            start_step: 0,
            best_val: None,
            elapsed_before: 0.0,
            resumed: false,
        }
    }

    /// The settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The settings, mutably (e.g. to raise `max_steps` between fits).
    pub fn config_mut(&mut self) -> &mut TrainConfig {
        &mut self.config
    }

    /// The stop flag: raising it makes the running `fit` save a checkpoint
    /// and return [`TrainStatus::Stopped`] before its next step (the Ctrl-C
    /// handler raises an equivalent global flag). `fit` lowers it when it
    /// returns.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The step the next `fit` starts at.
    pub fn start_step(&self) -> u64 {
        self.start_step
    }

    /// The best validation loss seen so far.
    pub fn best_val_loss(&self) -> Option<f64> {
        self.best_val
    }

    /// Loads a checkpoint folder into `model` and `opt` (fresh ones, built
    /// like the originals) and makes the next `fit` continue from its step,
    /// exactly as if the run had never stopped (same batches, same updates)
    /// — given the same data source, schedule, seed and `accum`.
    ///
    /// Resuming from an earlier checkpoint than the run folder's latest is
    /// allowed: the next `fit` discards the metrics and checkpoints of the
    /// later steps.
    pub fn resume<M: Module>(
        &mut self,
        dir: impl AsRef<Path>,
        model: &mut M,
        opt: &mut Optimizer,
    ) -> Result<CheckpointState> {
        let st = checkpoint::load_checkpoint(dir, model, opt)?;
        self.start_step = st.step;
        self.best_val = st.best_val_loss;
        self.elapsed_before = st.elapsed;
        self.resumed = true;
        Ok(st)
    }

    /// Resumes from the latest periodic checkpoint of `run_dir`, if there is
    /// one; otherwise leaves everything as it is and returns `None`.
    pub fn resume_latest<M: Module>(
        &mut self,
        model: &mut M,
        opt: &mut Optimizer,
    ) -> Result<Option<CheckpointState>> {
        let Some(run_dir) = &self.config.run_dir else {
            return Ok(None);
        };
        match checkpoint::latest_checkpoint(run_dir)? {
            Some(dir) => self.resume(dir, model, opt).map(Some),
            None => Ok(None),
        }
    }

    /// The mean of `eval_loss` over the fixed validation batches
    /// `0..eval_batches` (no tape: the loss function gets `NoTape` inputs).
    pub fn evaluate<M, S, E, D, V>(&self, model: &M, data: &S, mut eval_loss: V) -> Result<f64>
    where
        S: BatchSource,
        E: FloatDtype,
        D: Backend,
        V: FnMut(&M, &S::Batch) -> Result<Tensor<(), E, D, NoTape>>,
    {
        evaluate(model, data, &mut eval_loss, self.config.eval_batches, None)
    }

    /// Trains `model` from the current start step to `max_steps`.
    ///
    /// Each step: sets the learning rate from `schedule`, draws `accum`
    /// micro-batches from `data`, runs `train_loss` and `backward` on each
    /// and averages their gradients, clips the global norm, steps `opt`.
    /// Every `eval_every` steps it evaluates (`eval_loss`, mean over the
    /// validation batches [`BatchSource::eval_batch`] gives for the step),
    /// saves the best checkpoint when the validation loss improves and
    /// redraws `loss.svg`; every `ckpt_every` steps it saves a checkpoint.
    /// Each step appends a line to `metrics.jsonl`. In a run folder, lines and checkpoints of steps
    /// after the start step (left by a run that went further before being
    /// resumed from an earlier checkpoint) are removed first.
    ///
    /// A fresh run (step 0, not resumed) refuses a run folder that already
    /// holds checkpoints, rather than overwrite another run: resume it
    /// ([`resume_latest`](Self::resume_latest)) or pick another folder.
    pub fn fit<M, S, E, D, L, V>(
        &mut self,
        model: &mut M,
        opt: &mut Optimizer,
        schedule: &dyn LrSchedule,
        data: &S,
        mut train_loss: L,
        mut eval_loss: V,
    ) -> Result<TrainReport>
    where
        M: Module,
        S: BatchSource,
        E: FloatDtype,
        D: Backend,
        L: FnMut(&M, &S::Batch, &MicroStep) -> Result<Tensor<(), E, D, Tape>>,
        V: FnMut(&M, &S::Batch) -> Result<Tensor<(), E, D, NoTape>>,
    {
        let cfg = self.config.clone();
        if cfg.accum == 0 {
            return Err(Error::InvalidArgument {
                op: "Trainer::fit",
                reason: "accum must be at least 1".into(),
            });
        }
        let accum = cfg.accum as u64;
        let start = self.start_step;
        let mut reporter = Reporter::new(cfg.progress, start, cfg.max_steps, cfg.log_every);
        if cfg.handle_ctrlc {
            if let Err(e) = install_ctrlc_handler() {
                reporter.note(&format!("Ctrl-C will not save a checkpoint: {e}"));
            }
            CTRLC.store(false, Ordering::SeqCst);
        }
        let mut log = None;
        let mut history_all = Vec::new();
        if let Some(dir) = &cfg.run_dir {
            if start == 0 && !self.resumed {
                if let Some((step, _)) = checkpoint::list_checkpoints(dir)?.last() {
                    return Err(Error::InvalidArgument {
                        op: "Trainer::fit",
                        reason: format!(
                            "the run folder {} already holds checkpoints (up to step {step}): \
                             resume from them or choose another folder",
                            dir.display()
                        ),
                    });
                }
            }
            let (l, kept) = MetricsLog::open_truncated(dir.join(METRICS_FILE), start)?;
            log = Some(l);
            history_all = kept;
            checkpoint::prune_checkpoints(dir, 0, start)?;
        }
        let t0 = Instant::now();
        let elapsed_before = self.elapsed_before;
        let elapsed = move || elapsed_before + t0.elapsed().as_secs_f64();

        let mut report = TrainReport {
            status: TrainStatus::Finished,
            step: start,
            history: Vec::new(),
            best_val_loss: self.best_val,
            last_checkpoint: None,
        };
        let mut last_saved = None;
        let mut last_train = None;
        let mut last_val = None;
        for step in start..cfg.max_steps {
            // (The previous step's worker threads are idle by now: a gate
            // that blocks does not compete with anything for the cores.)
            let gate_stops = cfg.step_gate.as_ref().is_some_and(|g| !g.allows(step));
            if gate_stops
                || self.stop.load(Ordering::SeqCst)
                || (cfg.handle_ctrlc && ctrlc_pressed())
            {
                report.status = TrainStatus::Stopped;
                let mut saved = None;
                if let Some(dir) = &cfg.run_dir {
                    let path = checkpoint::step_dir(dir, step);
                    if last_saved != Some(step) {
                        let st = self.state(step, last_train, last_val, elapsed());
                        self.save(&path, model, opt, &st)?;
                        checkpoint::prune_checkpoints(dir, cfg.keep_last, step)?;
                        report.last_checkpoint = Some(path.clone());
                    }
                    saved = Some(path);
                }
                reporter.note(&match saved {
                    Some(p) => format!("stopped at step {step}; checkpoint in {}", p.display()),
                    None => format!("stopped at step {step} (no run folder: nothing saved)"),
                });
                break;
            }
            let lr = schedule.lr(step as usize);
            opt.set_lr(lr);
            let t_step = Instant::now();
            // Dropped at the end of the iteration (after any evaluation).
            let _warm = crate::WarmWorkers::start();
            let mut grads: Option<Gradients> = None;
            let mut loss_sum = 0.0;
            let mut tokens = 0usize;
            for micro in 0..cfg.accum {
                let index = step * accum + micro as u64;
                let batch = data.train_batch(index)?;
                tokens += data.tokens(&batch);
                let info = MicroStep {
                    step,
                    micro,
                    index,
                    seed: crate::tensor::rng::bits(cfg.seed, index),
                };
                let loss = train_loss(model, &batch, &info)?;
                loss_sum += loss.item().to_f64();
                let g = loss.backward();
                grads = Some(match grads {
                    None if cfg.accum == 1 => g,
                    None => {
                        let mut total = Gradients::default();
                        add_param_grads(model, &mut total, &g, 1.0 / cfg.accum as f64);
                        total
                    }
                    Some(mut total) => {
                        add_param_grads(model, &mut total, &g, 1.0 / cfg.accum as f64);
                        total
                    }
                });
            }
            let grads = grads.unwrap_or_default();
            let train = loss_sum / cfg.accum as f64;
            if !train.is_finite() {
                report.status = TrainStatus::Diverged;
                reporter.note(&format!(
                    "training loss is {train} at step {step}: stopping without applying it"
                ));
                break;
            }
            // Clipping scales the gradients inside the update's own pass.
            let grad_norm = cfg.grad_clip.map(|_| grad_norm(model, &grads));
            let coef = match (cfg.grad_clip, grad_norm) {
                (Some(max), Some(total)) => clip_coef(max, total),
                _ => 1.0,
            };
            opt.step_scaled(model, &grads, coef)?;
            drop(grads);
            let step_secs = t_step.elapsed().as_secs_f64();
            let done = step + 1;
            report.step = done;

            let is_last = done == cfg.max_steps;
            let eval_due = (cfg.eval_every > 0 && done % cfg.eval_every == 0) || is_last;
            let val = if eval_due && cfg.eval_batches > 0 {
                Some(evaluate(
                    model,
                    data,
                    &mut eval_loss,
                    cfg.eval_batches,
                    Some(done),
                )?)
            } else {
                None
            };
            last_train = Some(train);
            last_val = val;
            let m = StepMetrics {
                step: done,
                train_loss: train,
                val_loss: val,
                lr,
                grad_norm,
                tokens_per_s: tokens as f64 / step_secs.max(1e-12),
                elapsed: elapsed(),
            };
            if let Some(l) = &mut log {
                l.append(&m)?;
            }
            reporter.step(&m);
            history_all.push(m.clone());
            report.history.push(m);

            if let Some(v) = val {
                let improved = v.is_finite() && self.best_val.is_none_or(|b| v < b);
                if improved {
                    self.best_val = Some(v);
                    report.best_val_loss = Some(v);
                }
                if let Some(dir) = &cfg.run_dir {
                    if improved {
                        let st = self.state(done, Some(train), val, elapsed());
                        self.save(&checkpoint::best_dir(dir), model, opt, &st)?;
                    }
                    write_loss_svg(dir.join(LOSS_SVG_FILE), &history_all)?;
                }
            }
            let ckpt_due = (cfg.ckpt_every > 0 && done % cfg.ckpt_every == 0) || is_last;
            if let (true, Some(dir)) = (ckpt_due, &cfg.run_dir) {
                let path = checkpoint::step_dir(dir, done);
                let st = self.state(done, Some(train), val, elapsed());
                self.save(&path, model, opt, &st)?;
                checkpoint::prune_checkpoints(dir, cfg.keep_last, done)?;
                report.last_checkpoint = Some(path);
                last_saved = Some(done);
            }
        }
        if let Some(dir) = &cfg.run_dir {
            write_loss_svg(dir.join(LOSS_SVG_FILE), &history_all)?;
        }
        reporter.finish(report.status == TrainStatus::Finished);
        self.start_step = report.step;
        self.elapsed_before = elapsed();
        self.stop.store(false, Ordering::SeqCst);
        report.best_val_loss = self.best_val;
        Ok(report)
    }

    fn state(
        &self,
        step: u64,
        train: Option<f64>,
        val: Option<f64>,
        elapsed: f64,
    ) -> CheckpointState {
        CheckpointState {
            step,
            seed: self.config.seed,
            accum: self.config.accum,
            train_loss: train,
            val_loss: val,
            best_val_loss: self.best_val,
            elapsed,
            train_config: self.config.to_json(),
        }
    }

    fn save<M: Module>(
        &self,
        dir: &Path,
        model: &M,
        opt: &Optimizer,
        st: &CheckpointState,
    ) -> Result<()> {
        checkpoint::save_checkpoint(
            dir,
            model,
            opt,
            st,
            CheckpointExtras {
                config: self.config.config.as_ref(),
                tokenizer_json: self.config.tokenizer_json.as_deref(),
            },
        )
    }
}

/// The mean of `eval_loss` over the validation batches of the evaluation
/// at `step` (`None`: the fixed set, [`BatchSource::val_batch`]).
fn evaluate<M, S, E, D, V>(
    model: &M,
    data: &S,
    eval_loss: &mut V,
    batches: usize,
    step: Option<u64>,
) -> Result<f64>
where
    S: BatchSource,
    E: FloatDtype,
    D: Backend,
    V: FnMut(&M, &S::Batch) -> Result<Tensor<(), E, D, NoTape>>,
{
    if batches == 0 {
        return Err(Error::InvalidArgument {
            op: "Trainer::evaluate",
            reason: "eval_batches is 0".into(),
        });
    }
    let mut sum = 0.0;
    for i in 0..batches {
        let b = match step {
            Some(step) => data.eval_batch(step, i as u64)?,
            None => data.val_batch(i as u64)?,
        };
        sum += eval_loss(model, &b)?.item().to_f64();
    }
    Ok(sum / batches as f64)
}

/// Adds `scale *` the gradient of each of `model`'s parameters in `micro`
/// to `total` (each parameter once, even if reachable by two paths).
pub fn add_param_grads<M: Module>(model: &M, total: &mut Gradients, micro: &Gradients, scale: f64) {
    struct Add<'a> {
        total: &'a mut Gradients,
        micro: &'a Gradients,
        scale: f64,
        seen: HashSet<TensorId>,
    }
    impl ParamVisitor for Add<'_> {
        fn visit<S: Shape, E: FloatDtype, D: Backend>(
            &mut self,
            _: &str,
            p: &Tensor<S, E, D, NoTape>,
        ) {
            if !self.seen.insert(p.id()) {
                return;
            }
            if let Some(g) = self.micro.get_storage::<D, E>(p.id()) {
                self.total
                    .accumulate_scaled_on(p.device(), p.id(), g, self.scale);
            }
        }
    }
    model.visit_params(
        "",
        &mut Add {
            total,
            micro,
            scale,
            seen: HashSet::new(),
        },
    );
}
