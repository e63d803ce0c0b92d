//! Complete models built from the [`nn`](crate::nn) layers.

pub mod gpt;

pub use gpt::{sample_from_checkpoint, GenerateOpts, Gpt, GptConfig};
