//! Neural-network building blocks: the [`Module`] traversal, [`Forward`],
//! layers, activations, losses, and (with `#[derive(Module)]`) user models.

mod activation;
mod dropout;
mod embedding;
mod feedforward;
pub mod init;
mod linear;
pub mod loss;
mod module;
mod norm;

pub use activation::{Activation, Gelu, GeluTanh, Relu, Sigmoid, Silu, Tanh};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use feedforward::{FeedForward, GatedFeedForward, GeGlu, GeGluTanh, SwiGlu};
pub use linear::Linear;
pub use loss::{
    binary_cross_entropy_with_logits, binary_cross_entropy_with_logits_weighted, cross_entropy,
    mse_loss, try_binary_cross_entropy_with_logits, try_binary_cross_entropy_with_logits_weighted,
    try_cross_entropy, try_mse_loss, CrossEntropyOpts, Reduction,
};
pub use module::{join_path, Forward, Module, ParamVisitor, ParamVisitorMut};
pub use norm::{LayerNorm, RmsNorm};
pub use zerfoo_macros::Module;
