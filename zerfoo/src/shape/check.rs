//! Shape rules as trait bounds, compared by value.
//!
//! Each dim has a kind ([`Static`] or [`Dynamic`]). Comparing two static kinds
//! yields typenum's `B1`/`B0`; a static with a dynamic dim yields
//! [`RuntimeCheck`] (two dynamic dims yield `B1`: their sizes are compared at
//! run time by every op anyway, and it lets generic code prove a shape equal
//! to itself). The diagnostic traits below are implemented only for
//! `B1` and `RuntimeCheck`, so a static mismatch is a compile error whose first
//! line names the operation and the dims, and a dynamic one is checked at run
//! time (`try_*` methods return [`Error::ShapeMismatch`](crate::Error)).

use core::ops::{Add, Mul};

use typenum::{Eq, IsEqual, Prod, Sum, B1};

use super::dim::{Dim, Dynamic, Static};

/// The result of comparing dims when at least one is dynamic: checked at run time.
pub struct RuntimeCheck;

/// Compares two dim kinds by value.
pub trait KindEq<R> {
    /// `B1`, `B0` or [`RuntimeCheck`].
    type Out;
}
impl<A: IsEqual<B>, B> KindEq<Static<B>> for Static<A> {
    type Out = Eq<A, B>;
}
/// Two dynamic dims: the kinds agree (the sizes are compared at run time by every op).
impl KindEq<Dynamic> for Dynamic {
    type Out = B1;
}
impl<A> KindEq<Static<A>> for Dynamic {
    type Out = RuntimeCheck;
}
impl<A> KindEq<Dynamic> for Static<A> {
    type Out = RuntimeCheck;
}

/// Multiplies two dim kinds (static × static stays static).
pub trait KindMul<R> {
    /// The product's kind.
    type Out;
}
impl<A: Mul<B>, B> KindMul<Static<B>> for Static<A> {
    type Out = Static<Prod<A, B>>;
}
impl<K> KindMul<K> for Dynamic {
    type Out = Dynamic;
}
impl<A> KindMul<Dynamic> for Static<A> {
    type Out = Dynamic;
}

/// Adds two dim kinds (static + static stays static).
pub trait KindAdd<R> {
    /// The sum's kind.
    type Out;
}
impl<A: Add<B>, B> KindAdd<Static<B>> for Static<A> {
    type Out = Static<Sum<A, B>>;
}
impl<K> KindAdd<K> for Dynamic {
    type Out = Dynamic;
}
impl<A> KindAdd<Dynamic> for Static<A> {
    type Out = Dynamic;
}

/// The diagnostic for "these two dims (or shapes) must be equal".
#[diagnostic::on_unimplemented(
    message = "shape error in `{Op}`: `{L}` does not match `{R}`",
    label = "these shapes do not line up",
    note = "dims are compared by value; declare dims with `dim!` so errors name them"
)]
pub trait ShapeCheck<Op, L, R> {}
impl<Op, L, R> ShapeCheck<Op, L, R> for B1 {}
impl<Op, L, R> ShapeCheck<Op, L, R> for RuntimeCheck {}

/// The diagnostic for "these two shapes must hold the same number of elements".
#[diagnostic::on_unimplemented(
    message = "shape error in `{Op}`: `{L}` and `{R}` have different element counts",
    label = "cannot reshape between these shapes"
)]
pub trait NumelCheck<Op, L, R> {}
impl<Op, L, R> NumelCheck<Op, L, R> for B1 {}
impl<Op, L, R> NumelCheck<Op, L, R> for RuntimeCheck {}

/// `L` and `R` are the same size (checked at compile time when both are static).
///
/// `Op` names the operation in the error message.
pub trait SameDim<R, Op>: Dim {}
impl<L: Dim, R: Dim, Op> SameDim<R, Op> for L
where
    L::Kind: KindEq<R::Kind>,
    <L::Kind as KindEq<R::Kind>>::Out: ShapeCheck<Op, L, R>,
{
}

/// The kind of a product of dims (`(H, Hd)` → `H * Hd`).
pub trait ProductKind {
    /// [`Static`] of the product, or [`Dynamic`].
    type Kind;
}
impl ProductKind for () {
    type Kind = Static<typenum::U1>;
}
macro_rules! product_kind {
    ($first:ident $(, $rest:ident)*) => {
        impl<$first: Dim, $($rest: Dim),*> ProductKind for ($first, $($rest,)*)
        where
            ($($rest,)*): ProductKind,
            $first::Kind: KindMul<<($($rest,)*) as ProductKind>::Kind>,
        {
            type Kind = <$first::Kind as KindMul<<($($rest,)*) as ProductKind>::Kind>>::Out;
        }
    };
}
product_kind!(A);
product_kind!(A, B);
product_kind!(A, B, C);
product_kind!(A, B, C, D);
product_kind!(A, B, C, D, E);
product_kind!(A, B, C, D, E, F);

/// `D` equals the product of the dims in the tuple `P` (e.g. `Hidden == Heads * HeadDim`).
pub trait ProductOf<P, Op>: Dim {}
impl<L: Dim, P: ProductKind, Op> ProductOf<P, Op> for L
where
    L::Kind: KindEq<P::Kind>,
    <L::Kind as KindEq<P::Kind>>::Out: ShapeCheck<Op, L, P>,
{
}
