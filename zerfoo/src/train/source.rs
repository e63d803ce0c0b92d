//! Where batches come from: a [`BatchSource`] draws batch `i` reproducibly,
//! so a resumed run sees exactly the batches an uninterrupted one would.

use crate::data::{Batch, TokenDataset};
use crate::Result;

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
