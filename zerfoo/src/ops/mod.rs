//! Every op, each family in its own module with its forward and backward.
//!
//! The unit structs below name operations in compile-time shape errors
//! (`shape error in `Matmul`: ...`).

mod attention;
mod binary;
mod broadcast;
mod conv;
mod dropout;
mod index;
mod mask;
mod matmul;
mod norm;
mod reduce;
mod rotary;
mod shape_ops;
mod softmax;
mod unary;

pub use attention::{
    fused_attention, fused_attention_bthd, try_fused_attention, try_fused_attention_bthd,
    try_fused_attention_qkv, AttentionMask,
};
pub use binary::{ElementwiseRhs, SameDtype};
pub use conv::{
    AvgPooling, BatchNormalization, BatchStats, Conv2dArgs, Conv2dConfig, ConvOut, ConvOutDim,
    ConvSpec, Convolution, DividesKind, FlattenCheck, FlattenDim, Flattening, GroupsDivide,
    GroupsFit, MaxPooling, Pool2dArgs, Pool2dConfig, PoolOut, PoolOutDim, PoolPaddingFits,
    PoolSpec, Positive, StrideDiv, WindowFits, WindowKind,
};
pub use index::{AppendDim, IdTensor, IndexAxis, RankCheck, RankOf, SameRank, VectorShape};
pub use mask::{LastTwoAxes, Tril, Triu};
pub use matmul::{LinearAct, MatMulShapes, TransposeShape};
pub use norm::{LastDim, Merge3};
pub use shape_ops::{ConcatWith, HeadsCheck, HeadsDim, KindIsDyn, MergeHeads};

macro_rules! op_names {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {
        $(
            $(#[$m])*
            #[derive(Clone, Copy, Debug, Default)]
            pub struct $name;
        )*
    };
}

op_names!(
    /// Elementwise addition.
    Addition,
    /// Elementwise subtraction.
    Subtraction,
    /// Elementwise multiplication.
    Multiplication,
    /// Elementwise division.
    Division,
    /// Elementwise maximum.
    Maximum,
    /// Elementwise minimum.
    Minimum,
    /// Elementwise power.
    Power,
    /// Matrix multiplication.
    Matmul,
    /// Reshape to another shape with the same element count.
    Reshape,
    /// Concatenation along an axis.
    Concatenate,
    /// Stacking along a new axis.
    Stack,
    /// Broadcast along new axes.
    Broadcast,
    /// Splitting the last dim into heads: `D = H * Hd`.
    SplitHeads,
    /// Selecting by a boolean mask.
    Where,
    /// Filling where a mask is set.
    MaskedFill,
    /// Layer normalization.
    LayerNorm,
    /// RMS normalization.
    RmsNorm,
    /// Rotary position embedding.
    Rotary,
    /// Gathering along an axis.
    Gather,
    /// Embedding lookup.
    Embedding,
);
