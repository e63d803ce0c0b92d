//! The reusable training loop: [`Trainer::fit`] runs any [`Module`] on any
//! [`BatchSource`] with a learning-rate schedule, gradient accumulation,
//! clipping, periodic evaluation, a progress bar, `metrics.jsonl`, a
//! `loss.svg` curve, checkpoints (periodic, best and on Ctrl-C) and exact
//! resume.
//!
//! A run folder looks like:
//!
//! ```text
//! run_dir/metrics.jsonl                   one JSON object per step
//! run_dir/loss.svg                        train and val loss curves
//! run_dir/checkpoints/step_00000500/      periodic (and Ctrl-C) checkpoints
//! run_dir/checkpoints/best/               best validation loss so far
//! ```
//!
//! A bigram language model (an embedding whose rows are next-token logits)
//! trained for a few steps:
//!
//! ```
//! use zerfoo::data::{Batch, TokenDataset};
//! use zerfoo::nn::{Embedding, Forward, Module};
//! use zerfoo::optim::{Constant, Optimizer};
//! use zerfoo::prelude::*;
//! use zerfoo::train::{MicroStep, Progress, TokenBatches, TrainConfig, Trainer};
//! use zerfoo::autograd::TapeState;
//!
//! dim!(Vocab = 4);
//! dim!(Rows = 2);
//! dim!(Block = 3);
//! #[derive(Module)]
//! struct Bigram { emb: Embedding<Vocab, Vocab, f32> }
//!
//! fn loss<T: TapeState>(m: &Bigram, ids: Tensor<(Rows, Block), i64, Cpu, T>, b: &Batch)
//!     -> Tensor<(), f32, Cpu, T> {
//!     let targets = Tensor::<(Rows, Block, U1), i64>::from_vec(Default::default(), b.targets.clone()).unwrap();
//!     -m.emb.forward(ids).log_softmax::<Axis<2>>().gather::<Axis<2>, _>(&targets).mean_all()
//! }
//! let ids = |b: &Batch| Tensor::<(Rows, Block), i64>::from_vec(Default::default(), b.inputs.clone());
//!
//! let tokens: Vec<u32> = (0..200).map(|i| i % 4).collect();
//! let (train, val) = TokenDataset::new(tokens).split(0.9)?;
//! let data = TokenBatches { train, val, batch: 2, block: 3, seed: 0 };
//! let mut model = Bigram { emb: Embedding::new(Vocab, Vocab, 0) };
//! let mut opt = Optimizer::adamw(0.1, (0.9, 0.99), 1e-8, 0.0);
//! let mut trainer = Trainer::new(TrainConfig {
//!     max_steps: 30, eval_batches: 2, progress: Progress::Quiet, ..Default::default()
//! });
//! let report = trainer.fit(
//!     &mut model, &mut opt, &Constant(0.1), &data,
//!     |m: &Bigram, b: &Batch, _: &MicroStep| Ok(loss(m, ids(b)?.traced(), b)),
//!     |m: &Bigram, b: &Batch| Ok(loss(m, ids(b)?, b)),
//! )?;
//! assert!(report.history[29].train_loss < report.history[0].train_loss);
//! # Ok::<(), zerfoo::Error>(())
//! ```
//!
//! [`Module`]: crate::nn::Module

pub mod checkpoint;
pub mod metrics;
pub mod plot;
mod progress;
mod source;
mod trainer;

pub use checkpoint::{
    load_checkpoint, load_optimizer_state, save_checkpoint, save_optimizer_state, CheckpointExtras,
    CheckpointState,
};
pub use metrics::{read_metrics, MetricsLog, StepMetrics};
pub use plot::{line_chart_svg, loss_curve_svg, write_loss_svg, Series};
pub use progress::Progress;
pub use source::{BatchSource, NanoGptBatches, TokenBatches};
pub use trainer::{
    add_param_grads, ctrlc_pressed, install_ctrlc_handler, request_stop, MicroStep, StepGate,
    TrainConfig, TrainReport, TrainStatus, Trainer, LOSS_SVG_FILE, METRICS_FILE,
};
