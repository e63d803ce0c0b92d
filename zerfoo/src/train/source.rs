//! Where batches come from: a [`BatchSource`] draws batch `i` reproducibly,
//! so a resumed run sees exactly the batches an uninterrupted one would.

use std::sync::Mutex;

use super::trainer::TrainConfig;
use crate::data::{Batch, TokenDataset, TorchGenerator};
use crate::{Error, Result};

/// Reproducible training and validation batches.
///
/// `train_batch(i)` must depend only on `i` (and the source's own settings):
/// the trainer draws batches `s * accum .. (s + 1) * accum` at step `s`, so a
/// run resumed at step `s` continues with the same batches.
/// `val_batch(i)` for `i < eval_batches` is the fixed validation set.
pub trait BatchSource {
    /// One batch.
    type Batch;
    /// Training batch number `index`.
    fn train_batch(&self, index: u64) -> Result<Self::Batch>;
    /// Validation batch number `index`.
    fn val_batch(&self, index: u64) -> Result<Self::Batch>;
    /// Validation batch `index` of the evaluation after `step` optimizer
    /// steps (what [`Trainer::fit`](super::Trainer::fit) evaluates on). By
    /// default the fixed set, `val_batch(index)`, at every step.
    fn eval_batch(&self, step: u64, index: u64) -> Result<Self::Batch> {
        let _ = step;
        self.val_batch(index)
    }
    /// Tokens (or examples) in a batch, for the throughput figure.
    fn tokens(&self, batch: &Self::Batch) -> usize;
}

/// Language-model batches: random windows of a training and a validation
/// token sequence ([`TokenDataset::batch`]), `batch` rows of `block` tokens.
#[derive(Clone, Debug)]
pub struct TokenBatches {
    /// Training tokens.
    pub train: TokenDataset,
    /// Validation tokens.
    pub val: TokenDataset,
    /// Rows per batch.
    pub batch: usize,
    /// Tokens per row.
    pub block: usize,
    /// Seed of the window draws.
    pub seed: u64,
}

/// Mixed into the seed of validation draws so they differ from training ones.
const VAL_SALT: u64 = 0x5641_4C5F_5345_4544;

impl BatchSource for TokenBatches {
    type Batch = Batch;
    fn train_batch(&self, index: u64) -> Result<Batch> {
        self.train.batch(self.batch, self.block, self.seed, index)
    }
    fn val_batch(&self, index: u64) -> Result<Batch> {
        self.val
            .batch(self.batch, self.block, self.seed ^ VAL_SALT, index)
    }
    fn tokens(&self, b: &Batch) -> usize {
        b.batch * b.block
    }
}

/// Language-model batches drawn exactly as nanoGPT's `train.py` draws them
/// from PyTorch's generator: the first training batch before the loop;
/// at each evaluation (step 0, every `eval_every` steps and the last)
/// `eval_batches` training and then `eval_batches` validation batches
/// (`estimate_loss`); the next training batch during each micro-step.
/// Every batch is `torch.randint(len - block, (batch,))` window starts.
///
/// Started from the generator the model's initialization left
/// ([`Gpt::try_new_nanogpt`](crate::models::Gpt::try_new_nanogpt)), a
/// zerfoo run sees nanoGPT's batches, and each evaluation nanoGPT's
/// validation batches. Batch `i` still depends only on `i` (the generator
/// is replayed to its position), so resuming is exact; the schedule is fixed
/// when the source is built, so build it from the whole run's config (its
/// `max_steps`) when resuming too. Dropout masks are
/// not drawn from this generator: with dropout the draws stay those of a
/// nanoGPT run without it.
///
/// ```
/// use zerfoo::data::{TokenDataset, TorchGenerator};
/// use zerfoo::train::{BatchSource, NanoGptBatches, TrainConfig};
/// let train = TokenDataset::new((0..100).collect());
/// let val = TokenDataset::new((0..50).collect());
/// let cfg = TrainConfig { max_steps: 10, eval_every: 5, eval_batches: 2, ..Default::default() };
/// let data = NanoGptBatches::new(train, val, 4, 8, &cfg, TorchGenerator::new(1337)).unwrap();
/// let first = data.train_batch(0).unwrap();
/// assert_eq!(first.inputs.len(), 4 * 8);
/// assert_eq!(data.train_batch(0).unwrap(), first);
/// ```
#[derive(Debug)]
pub struct NanoGptBatches {
    train: TokenDataset,
    val: TokenDataset,
    batch: usize,
    block: usize,
    accum: u64,
    /// Evaluation steps, ascending.
    evals: Vec<u64>,
    eval_batches: u64,
    start: TorchGenerator,
    cursor: Mutex<TorchGenerator>,
}

impl NanoGptBatches {
    /// Batches of `batch` windows of `block` tokens, drawn from `gen` in
    /// nanoGPT's order for the evaluation schedule of `config`
    /// (`max_steps`, `eval_every`, `eval_batches`, `accum`: train with the
    /// same config). Errors when a window does not fit in either split.
    pub fn new(
        train: TokenDataset,
        val: TokenDataset,
        batch: usize,
        block: usize,
        config: &TrainConfig,
        gen: TorchGenerator,
    ) -> Result<Self> {
        train.window_starts(block)?;
        val.window_starts(block)?;
        let max = config.max_steps;
        let mut evals = Vec::new();
        if config.eval_batches > 0 {
            evals.push(0);
            let every = config.eval_every;
            evals.extend((1..=max).filter(|s| (every > 0 && s % every == 0) || *s == max));
        }
        Ok(NanoGptBatches {
            train,
            val,
            batch,
            block,
            accum: config.accum.max(1) as u64,
            evals,
            eval_batches: config.eval_batches as u64,
            cursor: Mutex::new(gen.clone()),
            start: gen,
        })
    }

    /// 32-bit draws of one batch of `data`'s windows.
    fn batch_draws(&self, data: &TokenDataset) -> u64 {
        let high = data.len() as u64 - self.block as u64;
        self.batch as u64 * TorchGenerator::randint_draws(high)
    }

    fn train_draws(&self) -> u64 {
        self.batch_draws(&self.train)
    }

    fn val_draws(&self) -> u64 {
        self.batch_draws(&self.val)
    }

    /// Draws of one evaluation (its training and validation batches).
    fn eval_draws(&self) -> u64 {
        self.eval_batches * (self.train_draws() + self.val_draws())
    }

    /// Evaluations whose step is below `step`.
    fn evals_before(&self, step: u64) -> u64 {
        self.evals.partition_point(|&s| s < step) as u64
    }

    /// The windows of the `torch.randint` drawn `offset` outputs after the
    /// start.
    fn draw_at(&self, data: &TokenDataset, offset: u64) -> Result<Batch> {
        let mut gen = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        // Replay from the start when the cursor is already past `offset`.
        if gen.draws() - self.start.draws() > offset {
            *gen = self.start.clone();
        }
        let at = gen.draws() - self.start.draws();
        gen.discard(offset - at);
        let high = data.window_starts(self.block)?;
        let starts: Vec<u64> = (0..self.batch).map(|_| gen.randint(high)).collect();
        data.windows(self.block, starts)
    }
}

impl BatchSource for NanoGptBatches {
    type Batch = Batch;

    /// Training batch `index`: the one nanoGPT draws before micro-step
    /// `index` runs.
    fn train_batch(&self, index: u64) -> Result<Batch> {
        // Evaluation at step s comes after batch s·accum is drawn.
        let evals = self.evals.partition_point(|&s| s * self.accum < index) as u64;
        let offset = index * self.train_draws() + evals * self.eval_draws();
        self.draw_at(&self.train, offset)
    }

    /// The validation batches of the evaluation at step 0.
    fn val_batch(&self, index: u64) -> Result<Batch> {
        self.eval_batch(0, index)
    }

    fn eval_batch(&self, step: u64, index: u64) -> Result<Batch> {
        if self.evals.binary_search(&step).is_err() || index >= self.eval_batches {
            return Err(Error::InvalidArgument {
                op: "NanoGptBatches::eval_batch",
                reason: format!(
                    "the schedule has no validation batch {index} at step {step} \
                     (evaluations at {:?}, {} batches each)",
                    self.evals, self.eval_batches
                ),
            });
        }
        let offset = (step * self.accum + 1) * self.train_draws()
            + self.evals_before(step) * self.eval_draws()
            + self.eval_batches * self.train_draws()
            + index * self.val_draws();
        self.draw_at(&self.val, offset)
    }

    fn tokens(&self, b: &Batch) -> usize {
        b.batch * b.block
    }
}
