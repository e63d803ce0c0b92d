//! Neural-network building blocks: the [`Module`] traversal, [`Forward`],
//! layers, activations, losses, and (with `#[derive(Module)]`) user models.

mod activation;
mod attention;
mod conv;
mod dropout;
mod embedding;
mod feedforward;
pub mod init;
mod linear;
pub mod loss;
mod module;
mod norm;
mod position;
mod transformer;

pub use activation::{Activation, Gelu, GeluTanh, Relu, Sigmoid, Silu, Tanh};
pub use attention::{
    scaled_dot_product_attention, try_scaled_dot_product_attention, Attention, AttentionConfig,
    GroupedQuery, GroupsCheck, KindDivides, KvCache, KvHeadsDivide, LayerCache, MultiHeadAttention,
    QkNorm,
};
pub use conv::{AvgPool2d, BatchNorm2d, Buffer, Conv2d, Flatten, MaxPool2d};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use feedforward::{FeedForward, GatedFeedForward, GeGlu, GeGluTanh, SwiGlu};
pub use linear::{ForwardAct, ForwardResidual, Linear};
pub use loss::{
    binary_cross_entropy_with_logits, binary_cross_entropy_with_logits_weighted, cross_entropy,
    mse_loss, try_binary_cross_entropy_with_logits, try_binary_cross_entropy_with_logits_weighted,
    try_cross_entropy, try_mse_loss, CrossEntropyOpts, Reduction,
};
pub use module::{
    join_path, DtypeEq, FixedDtype, Forward, Module, ParamInfo, ParamVisitor, ParamVisitorMut,
    ToDevice, ToDtype,
};
pub use norm::{LayerNorm, RmsNorm};
pub use position::{LearnedPositions, PositionEncoding, SinusoidalPositions};
pub use transformer::{
    BlockConfig, BlockMlp, BlockNorm, Decoder, DecoderBlock, Encoder, EncoderBlock, NewBlockNorm,
    TransformerBlock,
};
pub use zerfoo_macros::Module;
