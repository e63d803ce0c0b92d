//! Dimensions: static (a typenum value, usually behind a named `dim!`) or dynamic ([`Dyn`]).

use core::fmt::Debug;
use core::marker::PhantomData;

use typenum::{Bit, IsEqual, UInt, UTerm, Unsigned, B1};

use super::check::KindEq;

/// The kind of a static dim: its size as a typenum unsigned `U`.
pub struct Static<U>(PhantomData<U>);

/// The kind of a dynamic dim: its size is known only at run time.
pub struct Dynamic;

/// A dimension of a shape.
///
/// Implemented by typenum unsigneds (`U4`), named dims declared with
/// [`dim!`](crate::dim) and [`Dyn`]. Shape rules compare dims by value through
/// [`Dim::Kind`], so two differently named dims of equal size line up.
pub trait Dim: Copy + Clone + Debug + PartialEq + Send + Sync + 'static {
    /// [`Static<U>`] or [`Dynamic`]. Comparing a kind with itself is `B1`,
    /// which lets generic code (`fn f<N: Dim>(..)`) combine tensors of the
    /// same shape type without extra bounds.
    type Kind: KindEq<Self::Kind, Out = B1>;
    /// The size when known at compile time.
    const STATIC: Option<usize>;
    /// The size.
    fn size(&self) -> usize;
    /// Builds the dim from a run-time size; `None` if a static dim has another size.
    fn from_size(n: usize) -> Option<Self>;
}

/// A dim whose size is fixed at compile time (can be built without a value).
pub trait StaticDim: Dim + Default {}

/// A dimension whose size is chosen at run time.
///
/// ```
/// use zerfoo::prelude::*;
/// let x: Tensor<(Dyn, U3), f32> = Tensor::zeros((Dyn(2), U3::default()));
/// assert_eq!(x.dims(), [2, 3]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dyn(pub usize);

impl Dim for Dyn {
    type Kind = Dynamic;
    const STATIC: Option<usize> = None;
    #[inline]
    fn size(&self) -> usize {
        self.0
    }
    #[inline]
    fn from_size(n: usize) -> Option<Self> {
        Some(Dyn(n))
    }
}

impl<U: Unsigned, B: Bit> Dim for UInt<U, B>
where
    UInt<U, B>: Copy + Debug + Default + PartialEq + Send + Sync + 'static,
    UInt<U, B>: IsEqual<UInt<U, B>, Output = B1>,
{
    type Kind = Static<Self>;
    const STATIC: Option<usize> = Some(<Self as Unsigned>::USIZE);
    #[inline]
    fn size(&self) -> usize {
        <Self as Unsigned>::USIZE
    }
    #[inline]
    fn from_size(n: usize) -> Option<Self> {
        (n == <Self as Unsigned>::USIZE).then(Self::default)
    }
}

impl<U: Unsigned, B: Bit> StaticDim for UInt<U, B>
where
    UInt<U, B>: Copy + Debug + Default + PartialEq + Send + Sync + 'static,
    UInt<U, B>: IsEqual<UInt<U, B>, Output = B1>,
{
}

impl Dim for UTerm {
    type Kind = Static<UTerm>;
    const STATIC: Option<usize> = Some(0);
    fn size(&self) -> usize {
        0
    }
    fn from_size(n: usize) -> Option<Self> {
        (n == 0).then_some(UTerm)
    }
}

impl StaticDim for UTerm {}
