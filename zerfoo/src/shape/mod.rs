//! Dims and shapes in the type system.
//!
//! A shape is a tuple of [`Dim`]s of rank 0..=6: `(Dyn, U128, Hidden)` is a
//! runtime batch, a static sequence and a named static width. Shape rules are
//! trait bounds ([`SameShape`], [`ReshapeTo`], [`HasAxes`], [`ConcatAlong`], ...)
//! that compare dims by value and print readable errors.

mod axes;
mod check;
mod dim;

pub use axes::{
    Axes2, Axes3, Axes4, Axes5, Axes6, Axis, ConcatAlong, HasAxes, InsertAxis, Perm2, Perm3, Perm4,
    Perm5, PermuteAxes, ResizeAxis, SwapAxes,
};
pub use check::{
    KindAdd, KindEq, KindMul, NumelCheck, ProductKind, ProductOf, RuntimeCheck, SameDim, ShapeCheck,
};
pub use dim::{Dim, Dyn, Dynamic, Static, StaticDim};

use core::fmt::Debug;

use crate::ops;
use zerfoo_kernels::MAX_RANK;

/// Exactly one axis, `Axis<I>`: what softmax, select, gather and the like take.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a single axis: this op works along exactly one axis",
    label = "expected `Axis<I>`",
    note = "pick one axis, e.g. `Axis<1>`"
)]
pub trait SingleAxis {
    /// The axis.
    const AXIS: usize;
}
impl<const I: usize> SingleAxis for Axis<I> {
    const AXIS: usize = I;
}

/// The run-time dims of a shape: a small array, no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dims {
    len: u8,
    data: [usize; MAX_RANK],
}

impl Dims {
    /// Dims from a slice (rank ≤ 6).
    pub fn from_slice(d: &[usize]) -> Self {
        assert!(d.len() <= MAX_RANK);
        let mut data = [0; MAX_RANK];
        data[..d.len()].copy_from_slice(d);
        Dims {
            len: d.len() as u8,
            data,
        }
    }
}

impl core::ops::Deref for Dims {
    type Target = [usize];
    fn deref(&self) -> &[usize] {
        &self.data[..self.len as usize]
    }
}

impl Debug for Dims {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        Debug::fmt(&**self, f)
    }
}

impl<const N: usize> PartialEq<[usize; N]> for Dims {
    fn eq(&self, other: &[usize; N]) -> bool {
        **self == other[..]
    }
}

/// A tensor shape: a tuple of dims, rank 0..=6.
///
/// The `SameShape<Self, _>` supertraits let generic code (`fn f<S: Shape>`)
/// combine two tensors of the same shape type with elementwise ops.
pub trait Shape:
    Copy
    + Clone
    + Debug
    + PartialEq
    + Send
    + Sync
    + 'static
    + SameShape<Self, ops::Addition>
    + SameShape<Self, ops::Subtraction>
    + SameShape<Self, ops::Multiplication>
    + SameShape<Self, ops::Division>
    + SameShape<Self, ops::Maximum>
    + SameShape<Self, ops::Minimum>
    + SameShape<Self, ops::Power>
    + SameShape<Self, ops::Where>
    + SameShape<Self, ops::MaskedFill>
{
    /// Number of dims.
    const RANK: usize;
    /// The run-time sizes.
    fn dims(&self) -> Dims;
    /// Builds the shape from run-time sizes; `None` if the rank differs or a
    /// static dim has another size.
    fn try_from_dims(dims: &[usize]) -> Option<Self>;
    /// The compile-time size of each dim (`None` where dynamic).
    fn static_sizes() -> Vec<Option<usize>>;
    /// Number of elements.
    fn numel(&self) -> usize {
        self.dims().iter().product()
    }
}

/// A shape all of whose dims are static: it can be built without values.
pub trait ConstShape: Shape + Default {}

/// A rank-0 shape: the only one `backward` accepts.
#[diagnostic::on_unimplemented(
    message = "`backward` needs a scalar loss, but this tensor has shape `{Self}`",
    label = "not a scalar",
    note = "reduce the loss to a scalar first, e.g. with `.mean()` or `.sum()`"
)]
pub trait ScalarShape: Shape {}
impl ScalarShape for () {}

impl Shape for () {
    const RANK: usize = 0;
    fn dims(&self) -> Dims {
        Dims::from_slice(&[])
    }
    fn try_from_dims(dims: &[usize]) -> Option<Self> {
        dims.is_empty().then_some(())
    }
    fn static_sizes() -> Vec<Option<usize>> {
        Vec::new()
    }
}
impl ConstShape for () {}

macro_rules! tuple_shape {
    ($n:literal; $($d:ident $i:tt),+) => {
        impl<$($d: Dim),+> Shape for ($($d,)+) {
            const RANK: usize = $n;
            #[inline]
            fn dims(&self) -> Dims {
                Dims::from_slice(&[$(self.$i.size()),+])
            }
            fn try_from_dims(dims: &[usize]) -> Option<Self> {
                if dims.len() != $n {
                    return None;
                }
                Some(($($d::from_size(dims[$i])?,)+))
            }
            fn static_sizes() -> Vec<Option<usize>> {
                vec![$($d::STATIC),+]
            }
        }
        impl<$($d: StaticDim),+> ConstShape for ($($d,)+) {}
    };
}
tuple_shape!(1; A 0);
tuple_shape!(2; A 0, B 1);
tuple_shape!(3; A 0, B 1, C 2);
tuple_shape!(4; A 0, B 1, C 2, D 3);
tuple_shape!(5; A 0, B 1, C 2, D 3, E 4);
tuple_shape!(6; A 0, B 1, C 2, D 3, E 4, F 5);

/// A scalar shape.
pub type Rank0 = ();
/// A vector.
pub type Rank1<A> = (A,);
/// A matrix.
pub type Rank2<A, B> = (A, B);
/// Rank 3.
pub type Rank3<A, B, C> = (A, B, C);
/// Rank 4.
pub type Rank4<A, B, C, D> = (A, B, C, D);
/// Rank 5.
pub type Rank5<A, B, C, D, E> = (A, B, C, D, E);
/// Rank 6.
pub type Rank6<A, B, C, D, E, F> = (A, B, C, D, E, F);

/// `Self` and `R` have the same dims (by value; dynamic dims are checked at
/// run time). `Op` names the operation in the error message, which names the
/// first pair of dims that differ.
#[diagnostic::on_unimplemented(
    message = "shape error in `{Op}`: `{Self}` and `{R}` have different ranks",
    label = "ranks differ"
)]
pub trait SameShape<R, Op> {}
impl<Op> SameShape<(), Op> for () {}
macro_rules! same_shape {
    ($($a:ident $b:ident),+) => {
        impl<$($a: Dim, $b: Dim,)+ Op> SameShape<($($b,)+), Op> for ($($a,)+)
        where
            $($a: SameDim<$b, Op>,)+
        {
        }
    };
}
same_shape!(A0 B0);
same_shape!(A0 B0, A1 B1);
same_shape!(A0 B0, A1 B1, A2 B2);
same_shape!(A0 B0, A1 B1, A2 B2, A3 B3);
same_shape!(A0 B0, A1 B1, A2 B2, A3 B3, A4 B4);
same_shape!(A0 B0, A1 B1, A2 B2, A3 B3, A4 B4, A5 B5);

/// `Self` holds as many elements as `Dst` (checked at compile time when both are static).
pub trait ReshapeTo<Dst, Op>: Shape {}
impl<L: Shape + ProductKind, Dst: Shape + ProductKind, Op> ReshapeTo<Dst, Op> for L
where
    L::Kind: KindEq<Dst::Kind>,
    <L::Kind as KindEq<Dst::Kind>>::Out: NumelCheck<Op, L, Dst>,
{
}

/// Turns a dim kind back into a dim type: `Static<U>` → `U`, `Dynamic` → [`Dyn`].
pub trait KindDim {
    /// The dim type.
    type Dim: Dim;
}
impl<U> KindDim for Static<U>
where
    U: Dim,
{
    type Dim = U;
}
impl KindDim for Dynamic {
    type Dim = Dyn;
}

/// Builds shape `S` from run-time dims, checking rank and every static dim.
pub(crate) fn shape_from_dims<S: Shape>(op: &'static str, dims: &[usize]) -> crate::Result<S> {
    S::try_from_dims(dims).ok_or_else(|| crate::Error::StaticShape {
        op,
        got: dims.to_vec(),
        expected: static_pattern::<S>(),
    })
}

/// `S` as a pattern of its static sizes, `?` where dynamic: `[?, 128, 768]`.
pub fn static_pattern<S: Shape>() -> String {
    let parts: Vec<String> = S::static_sizes()
        .iter()
        .map(|d| d.map_or_else(|| "?".to_string(), |n| n.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}
