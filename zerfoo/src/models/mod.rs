//! Complete models built from the [`nn`](crate::nn) layers.

pub mod gpt;

pub use gpt::{GenerateOpts, Gpt, GptConfig};
