//! Every op, each family in its own module with its forward and backward.
//!
//! The unit structs below name operations in compile-time shape errors
//! (`shape error in `Matmul`: ...`).

mod binary;
mod broadcast;
mod dropout;
mod index;
mod mask;
mod reduce;
mod rotary;
mod unary;

pub use binary::SameDtype;
pub use index::{
    AppendDim, IdTensor, IndexAxis, RankCheck, RankOf, SameRank, SingleAxis, VectorShape,
};
pub use mask::{LastTwoAxes, Tril, Triu};

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
    Add,
    /// Elementwise subtraction.
    Sub,
    /// Elementwise multiplication.
    Mul,
    /// Elementwise division.
    Div,
    /// Elementwise maximum.
    Maximum,
    /// Elementwise minimum.
    Minimum,
    /// Elementwise power.
    Pow,
    /// Matrix multiplication.
    Matmul,
    /// Reshape to another shape with the same element count.
    Reshape,
    /// Concatenation along an axis.
    Concat,
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
