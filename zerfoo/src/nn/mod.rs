//! Neural-network building blocks: the [`Module`] traversal, [`Forward`],
//! and (with `#[derive(Module)]`) user models.

mod attention;
mod embedding;
pub mod init;
mod linear;
mod module;
mod norm;
mod position;
mod transformer;

pub use attention::{
    scaled_dot_product_attention, try_scaled_dot_product_attention, Attention, AttentionConfig,
    GroupedQuery, GroupsCheck, KindDivides, KvCache, KvHeadsDivide, LayerCache, MultiHeadAttention,
    QkNorm,
};
pub use embedding::Embedding;
pub use linear::Linear;
pub use module::{
    join_path, DtypeEq, FixedDtype, Forward, Module, ParamInfo, ParamVisitor, ParamVisitorMut,
    ToDtype,
};
pub use norm::{LayerNorm, RmsNorm};
pub use position::{LearnedPositions, PositionEncoding, SinusoidalPositions};
pub use transformer::{
    BlockConfig, BlockMlp, BlockNorm, Decoder, DecoderBlock, Encoder, EncoderBlock,
    TransformerBlock,
};
pub use zerfoo_macros::Module;
