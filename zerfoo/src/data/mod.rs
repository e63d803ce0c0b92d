//! Token datasets for language-model training: a train/val split and
//! seeded random contiguous windows.

use crate::tensor::rng;
use crate::{Error, Result};

mod torch_rng;
pub use torch_rng::TorchGenerator;

/// A sequence of token ids to sample training windows from.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenDataset {
    tokens: Vec<u32>,
}

/// One batch: `inputs[b][t]` and `targets[b][t] = inputs[b][t + 1]` of the
/// underlying sequence, flattened row-major (`batch * block` ids each).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Input ids, `batch * block`.
    pub inputs: Vec<i64>,
    /// Next-token targets, `batch * block`.
    pub targets: Vec<i64>,
    /// Rows.
    pub batch: usize,
    /// Columns.
    pub block: usize,
}

impl TokenDataset {
    /// Wraps a token sequence.
    pub fn new(tokens: Vec<u32>) -> Self {
        TokenDataset { tokens }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Splits into the first `train_fraction` of the tokens and the rest
    /// (nanoGPT uses 0.9).
    pub fn split(&self, train_fraction: f64) -> Result<(TokenDataset, TokenDataset)> {
        if !(0.0..=1.0).contains(&train_fraction) {
            return Err(Error::InvalidArgument {
                op: "TokenDataset::split",
                reason: format!("train fraction {train_fraction} is not in [0, 1]"),
            });
        }
        let n = (self.tokens.len() as f64 * train_fraction) as usize;
        Ok((
            TokenDataset::new(self.tokens[..n].to_vec()),
            TokenDataset::new(self.tokens[n..].to_vec()),
        ))
    }

    /// `batch` random windows of `block + 1` tokens. Window `b` of draw
    /// `index` depends only on `(seed, index, b)`, so a resumed run draws the
    /// same batches as an uninterrupted one.
    pub fn batch(&self, batch: usize, block: usize, seed: u64, index: u64) -> Result<Batch> {
        let starts = self.window_starts(block)?;
        self.windows(
            block,
            (0..batch as u64)
                .map(|b| rng::bits(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15), b) % starts),
        )
    }

    /// How many windows of `block + 1` tokens fit (the start of each is in
    /// `0..count`): an error when not even one does.
    pub fn window_starts(&self, block: usize) -> Result<u64> {
        if self.tokens.len() <= block {
            return Err(Error::InvalidArgument {
                op: "TokenDataset::batch",
                reason: format!(
                    "a window of {} tokens does not fit in {} tokens",
                    block + 1,
                    self.tokens.len()
                ),
            });
        }
        Ok((self.tokens.len() - block) as u64)
    }

    /// The batch of the windows starting at `starts` (each below
    /// [`window_starts`](Self::window_starts), else an error): inputs
    /// `tokens[s..s + block]`, targets one further.
    pub fn windows(&self, block: usize, starts: impl IntoIterator<Item = u64>) -> Result<Batch> {
        let limit = self.window_starts(block)?;
        let mut inputs = Vec::new();
        let mut targets = Vec::new();
        let mut batch = 0;
        for s in starts {
            if s >= limit {
                return Err(Error::InvalidArgument {
                    op: "TokenDataset::windows",
                    reason: format!("a window starting at {s} runs past {} tokens", self.len()),
                });
            }
            let s = s as usize;
            inputs.extend(self.tokens[s..s + block].iter().map(|&t| t as i64));
            targets.extend(self.tokens[s + 1..s + block + 1].iter().map(|&t| t as i64));
            batch += 1;
        }
        Ok(Batch {
            inputs,
            targets,
            batch,
            block,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_shifted_by_one_and_reproducible() {
        let d = TokenDataset::new((0..100).collect());
        let a = d.batch(4, 8, 7, 3).unwrap();
        let b = d.batch(4, 8, 7, 3).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, d.batch(4, 8, 7, 4).unwrap());
        for (x, y) in a.inputs.iter().zip(&a.targets) {
            assert_eq!(x + 1, *y);
        }
        // consecutive within a row
        assert_eq!(a.inputs[1], a.inputs[0] + 1);
        let (tr, va) = d.split(0.9).unwrap();
        assert_eq!((tr.len(), va.len()), (90, 10));
        assert!(va.batch(1, 10, 0, 0).is_err());
    }
}
