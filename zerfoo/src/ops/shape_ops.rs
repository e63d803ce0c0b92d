//! Structural shape ops: reshape, permute / transpose, narrow / slice / split /
//! chunk, concat / stack, split and merge heads.
//!
//! Reshape (of a contiguous tensor), permute, transpose and narrow are views:
//! they change only the [`Layout`](zerfoo_kernels::Layout) and share storage.
//! Each records a backward on the tape (reshape back, the inverse
//! permutation, scatter into zeros, split the gradient). Shape rules are trait
//! bounds: [`ReshapeTo`](crate::shape::ReshapeTo),
//! [`PermuteAxes`](crate::shape::PermuteAxes), [`SwapAxes`](crate::shape::SwapAxes),
//! [`ResizeAxis`](crate::shape::ResizeAxis), [`ConcatAlong`](crate::shape::ConcatAlong),
//! [`InsertAxis`](crate::shape::InsertAxis) and [`HeadsDim`].

// Typed shapes in signatures (`Result<Tensor<<S as ResizeAxis<Ax>>::Resized, ..>>`)
// are the point of these ops, not accidental complexity.
#![allow(clippy::type_complexity)]

mod concat;
mod narrow;
mod permute;
mod reshape;

pub use concat::ConcatWith;

use typenum::{B0, B1};

use crate::shape::{Dim, Dynamic, ProductOf, Static};

/// Merging heads: `(B, T, H, Hd) -> (B, T, D)` with `D = H * Hd`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MergeHeads;

/// `Self` can hold `H * Hd` elements: checked by
/// [`ProductOf<(H, Hd), Op>`](ProductOf) for a static dim (at compile time when
/// `H` and `Hd` are static too), always accepted for [`Dyn`](crate::shape::Dyn)
/// (checked at run time). Splitting or merging into a `Dyn` dim therefore needs
/// no extra bounds in code generic over `H` and `Hd`.
pub trait HeadsDim<H, Hd, Op>: Dim {}
impl<D: Dim, H, Hd, Op> HeadsDim<H, Hd, Op> for D
where
    D::Kind: KindIsDyn,
    <D::Kind as KindIsDyn>::Out: HeadsCheck<D, H, Hd, Op>,
{
}

/// Whether a dim kind is dynamic: `B1` for [`Dynamic`], `B0` for [`Static`].
pub trait KindIsDyn {
    /// `B1` or `B0`.
    type Out;
}
impl KindIsDyn for Dynamic {
    type Out = B1;
}
impl<U> KindIsDyn for Static<U> {
    type Out = B0;
}

/// [`HeadsDim`] by the kind of the merged dim `D`: nothing to check at compile
/// time for a dynamic one (`B1`), [`ProductOf`] for a static one (`B0`).
pub trait HeadsCheck<D, H, Hd, Op> {}
impl<D, H, Hd, Op> HeadsCheck<D, H, Hd, Op> for B1 {}
impl<D, H, Hd, Op> HeadsCheck<D, H, Hd, Op> for B0 where D: ProductOf<(H, Hd), Op> {}
