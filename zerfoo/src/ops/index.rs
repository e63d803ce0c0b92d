//! Indexing: [`select`](Tensor::select) (one entry of an axis, a view),
//! [`index_select`](Tensor::index_select) (entries listed by a vector of ids),
//! [`gather`](Tensor::gather) (`torch.gather`) and
//! [`embedding`](Tensor::embedding) (rows of a `(V, D)` table).
//!
//! Ids are integer tensors (`i64` or `u32`, any [`IntDtype`]) of any layout.
//! An id out of range is [`Error::IndexOutOfRange`] from the `try_*` form (the
//! panicking form panics with the same message) — never an index panic in a
//! kernel. Every backward scatter-adds, deterministically: a repeated id
//! accumulates its gradients in a fixed order, whatever the thread count.
//!
//! Ids may carry a tape (a traced model input): the output's tape is then
//! merged, so that a parameter indexed by traced ids gets its gradient.

use std::sync::Arc;

use zerfoo_kernels::cpu::index as k;
use zerfoo_kernels::{Backend, Device, FloatDtype, IntDtype, Layout};

use crate::autograd::{device_ok, record, Merge, Node, TapeState, TensorId};
use crate::error::or_panic;
use crate::shape::{Axis, Dim, HasAxes, Shape, SingleAxis};
use crate::tensor::Tensor;
use crate::{Error, Result};

mod sealed {
    pub trait Sealed {}
}

/// A tensor of integer ids: `Tensor<S, I, D, T>` with `I: IntDtype`
/// (`i64`, `u32`), any shape, layout, tape and device (ids on the host can
/// index a table on a GPU: they are checked on the host and uploaded).
pub trait IdTensor: sealed::Sealed {
    /// The ids' shape.
    type Shape: Shape;
    /// The ids' tape state (merged into the output's).
    type Tape: TapeState;
    /// The ids' shape value.
    #[doc(hidden)]
    fn ids_shape(&self) -> Self::Shape;
    /// The ids row-major as indices, each checked to lie in `0..size`.
    #[doc(hidden)]
    fn try_indices(&self, op: &'static str, size: usize) -> Result<Vec<usize>>;
    /// The node that produced the ids, if any.
    #[doc(hidden)]
    fn ids_node(&self) -> Option<Arc<Node>>;
}

impl<S: Shape, I: IntDtype, D: Device, T: TapeState> sealed::Sealed for Tensor<S, I, D, T> {}

impl<S: Shape, I: IntDtype, D: Device, T: TapeState> IdTensor for Tensor<S, I, D, T> {
    type Shape = S;
    type Tape = T;
    fn ids_shape(&self) -> S {
        self.shape
    }
    fn try_indices(&self, op: &'static str, size: usize) -> Result<Vec<usize>> {
        let ids = self.try_to_vec()?;
        k::to_indices(&ids, &Layout::contiguous(&[ids.len()]), size).map_err(|bad| {
            Error::IndexOutOfRange {
                op,
                index: id_value(bad),
                size,
            }
        })
    }
    fn ids_node(&self) -> Option<Arc<Node>> {
        self.tape.node()
    }
}

/// An id as `i64` for an error message (saturating beyond the `i64` range).
fn id_value<I: IntDtype>(v: I) -> i64 {
    match v.to_index() {
        Some(i) => i64::try_from(i).unwrap_or(i64::MAX),
        // negative: i64 ids are the only signed ones
        None => {
            let f = v.to_f64();
            if f < i64::MIN as f64 {
                i64::MIN
            } else {
                f as i64
            }
        }
    }
}

/// The ids of `index_select`: a vector `(N,)`.
#[diagnostic::on_unimplemented(
    message = "shape error in `index_select`: the ids must be a vector `(N,)`, not `{Self}`",
    label = "ids of the wrong rank"
)]
pub trait VectorShape: Shape {
    /// `N`.
    type Len: Dim;
    /// The dim value.
    fn len_dim(&self) -> Self::Len;
}
impl<N: Dim> VectorShape for (N,) {
    type Len = N;
    #[inline]
    fn len_dim(&self) -> N {
        self.0
    }
}

/// `Self` has axis `Ax`, and indexing it with the vector of ids `Ids = (N,)`
/// replaces that axis by `N` (the shape rule of `index_select`).
#[diagnostic::on_unimplemented(
    message = "shape error in `index_select`: `{Self}` has no axis `{Ax}`",
    label = "no such axis",
    note = "axes count from 0; the chosen axis becomes the ids' length"
)]
pub trait IndexAxis<Ax, Ids: VectorShape>: Shape {
    /// `Self` with axis `Ax` replaced by the ids' length.
    type Out: Shape;
    /// The axis.
    const AXIS: usize;
    /// The output shape value.
    fn replaced(&self, ids: &Ids) -> Self::Out;
}

macro_rules! index_axis {
    ($ax:literal: ($($d:ident),+) -> ($($o:ty),+) = |$s:ident, $n:ident| $val:expr) => {
        impl<$($d: Dim,)+ Ids: VectorShape> IndexAxis<Axis<$ax>, Ids> for ($($d,)+) {
            type Out = ($($o,)+);
            const AXIS: usize = $ax;
            #[inline]
            #[allow(unused_variables)]
            fn replaced(&self, ids: &Ids) -> Self::Out {
                let ($s, $n) = (self, ids.len_dim());
                $val
            }
        }
    };
}
index_axis!(0: (A) -> (Ids::Len) = |s, n| (n,));
index_axis!(0: (A, B) -> (Ids::Len, B) = |s, n| (n, s.1));
index_axis!(1: (A, B) -> (A, Ids::Len) = |s, n| (s.0, n));
index_axis!(0: (A, B, C) -> (Ids::Len, B, C) = |s, n| (n, s.1, s.2));
index_axis!(1: (A, B, C) -> (A, Ids::Len, C) = |s, n| (s.0, n, s.2));
index_axis!(2: (A, B, C) -> (A, B, Ids::Len) = |s, n| (s.0, s.1, n));
index_axis!(0: (A, B, C, D) -> (Ids::Len, B, C, D) = |s, n| (n, s.1, s.2, s.3));
index_axis!(1: (A, B, C, D) -> (A, Ids::Len, C, D) = |s, n| (s.0, n, s.2, s.3));
index_axis!(2: (A, B, C, D) -> (A, B, Ids::Len, D) = |s, n| (s.0, s.1, n, s.3));
index_axis!(3: (A, B, C, D) -> (A, B, C, Ids::Len) = |s, n| (s.0, s.1, s.2, n));
index_axis!(0: (A, B, C, D, E) -> (Ids::Len, B, C, D, E) = |s, n| (n, s.1, s.2, s.3, s.4));
index_axis!(1: (A, B, C, D, E) -> (A, Ids::Len, C, D, E) = |s, n| (s.0, n, s.2, s.3, s.4));
index_axis!(2: (A, B, C, D, E) -> (A, B, Ids::Len, D, E) = |s, n| (s.0, s.1, n, s.3, s.4));
index_axis!(3: (A, B, C, D, E) -> (A, B, C, Ids::Len, E) = |s, n| (s.0, s.1, s.2, n, s.4));
index_axis!(4: (A, B, C, D, E) -> (A, B, C, D, Ids::Len) = |s, n| (s.0, s.1, s.2, s.3, n));
index_axis!(0: (A, B, C, D, E, F) -> (Ids::Len, B, C, D, E, F) = |s, n| (n, s.1, s.2, s.3, s.4, s.5));
index_axis!(1: (A, B, C, D, E, F) -> (A, Ids::Len, C, D, E, F) = |s, n| (s.0, n, s.2, s.3, s.4, s.5));
index_axis!(2: (A, B, C, D, E, F) -> (A, B, Ids::Len, D, E, F) = |s, n| (s.0, s.1, n, s.3, s.4, s.5));
index_axis!(3: (A, B, C, D, E, F) -> (A, B, C, Ids::Len, E, F) = |s, n| (s.0, s.1, s.2, n, s.4, s.5));
index_axis!(4: (A, B, C, D, E, F) -> (A, B, C, D, Ids::Len, F) = |s, n| (s.0, s.1, s.2, s.3, n, s.5));
index_axis!(5: (A, B, C, D, E, F) -> (A, B, C, D, E, Ids::Len) = |s, n| (s.0, s.1, s.2, s.3, s.4, n));

/// The rank of a shape, as a typenum number (for by-value rank rules).
pub trait RankOf: Shape {
    /// `U0` ..= `U6`.
    type Rank;
}
impl RankOf for () {
    type Rank = typenum::U0;
}
impl<A: Dim> RankOf for (A,) {
    type Rank = typenum::U1;
}
impl<A: Dim, B: Dim> RankOf for (A, B) {
    type Rank = typenum::U2;
}
impl<A: Dim, B: Dim, C: Dim> RankOf for (A, B, C) {
    type Rank = typenum::U3;
}
impl<A: Dim, B: Dim, C: Dim, D: Dim> RankOf for (A, B, C, D) {
    type Rank = typenum::U4;
}
impl<A: Dim, B: Dim, C: Dim, D: Dim, E: Dim> RankOf for (A, B, C, D, E) {
    type Rank = typenum::U5;
}
impl<A: Dim, B: Dim, C: Dim, D: Dim, E: Dim, F: Dim> RankOf for (A, B, C, D, E, F) {
    type Rank = typenum::U6;
}

/// The diagnostic for "these two shapes must have the same rank".
#[diagnostic::on_unimplemented(
    message = "shape error in `{Op}`: `{L}` and `{R}` have different ranks",
    label = "ranks differ",
    note = "`gather` takes ids of the same rank as the tensor (as `torch.gather`)"
)]
pub trait RankCheck<Op, L, R> {}
impl<Op, L, R> RankCheck<Op, L, R> for typenum::B1 {}

/// `Self` and `R` have the same rank (the shape rule of `gather`).
pub trait SameRank<R, Op>: Shape {}
impl<L: RankOf, R: RankOf, Op> SameRank<R, Op> for L
where
    L::Rank: typenum::IsEqual<R::Rank>,
    typenum::Eq<L::Rank, R::Rank>: RankCheck<Op, L, R>,
{
}

/// `Self` (the ids' shape) extended by a last dim `D` (the shape rule of `embedding`).
#[diagnostic::on_unimplemented(
    message = "shape error in `embedding`: ids of shape `{Self}` have more than 5 axes",
    label = "the output would exceed rank 6"
)]
pub trait AppendDim<D: Dim>: Shape {
    /// `Self` with `D` appended.
    type Out: Shape;
    /// The output shape value.
    fn append(&self, d: D) -> Self::Out;
}
impl<D: Dim> AppendDim<D> for () {
    type Out = (D,);
    fn append(&self, d: D) -> (D,) {
        (d,)
    }
}
macro_rules! append_dim {
    ($($a:ident $i:tt),+) => {
        impl<$($a: Dim,)+ D: Dim> AppendDim<D> for ($($a,)+) {
            type Out = ($($a,)+ D);
            #[inline]
            fn append(&self, d: D) -> Self::Out {
                ($(self.$i,)+ d)
            }
        }
    };
}
append_dim!(A 0);
append_dim!(A 0, B 1);
append_dim!(A 0, B 1, C 2);
append_dim!(A 0, B 1, C 2, E 3);
append_dim!(A 0, B 1, C 2, E 3, F 4);

/// The tape of an op on a tensor with tape `T` and ids `X`.
type Merged<T, X> = <T as Merge<<X as IdTensor>::Tape>>::Out;
/// The output of an indexing op: shape `S`, dtype `E`, tape merged from `T` and the ids `X`.
type Indexed<S, E, D, T, X> = Tensor<S, E, D, Merged<T, X>>;
/// The shape of an embedding of ids `X` with width `D`.
type Embedded<X, D> = <<X as IdTensor>::Shape as AppendDim<D>>::Out;

fn out_of_range(op: &'static str, index: usize, size: usize) -> Error {
    Error::IndexOutOfRange {
        op,
        index: i64::try_from(index).unwrap_or(i64::MAX),
        size,
    }
}

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// Entry `index` of axis `Ax`, which disappears from the shape (a view,
    /// no copy). An index past the axis is [`Error::IndexOutOfRange`].
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U3), f32>::from_vec(Default::default(), vec![1., 2., 3., 4., 5., 6.]).unwrap();
    /// assert_eq!(x.clone().select::<Axis<1>>(2).to_vec(), [3., 6.]);
    /// assert!(x.try_select::<Axis<0>>(2).is_err());
    /// ```
    pub fn try_select<Ax>(self, index: usize) -> Result<Tensor<S::Reduced, E, D, T>>
    where
        S: HasAxes<Ax>,
        Ax: SingleAxis,
    {
        let axis = Ax::AXIS;
        let dims = self.dims();
        if index >= dims[axis] {
            return Err(out_of_range("select", index, dims[axis]));
        }
        let keep = |v: &[usize]| -> Vec<usize> {
            v.iter()
                .enumerate()
                .filter(|&(d, _)| d != axis)
                .map(|(_, &x)| x)
                .collect()
        };
        let layout = Layout::new(
            &keep(&dims),
            &keep(self.layout.strides()),
            self.layout.offset + index * self.layout.strides()[axis],
        );
        let out_id = TensorId::fresh();
        let (in_id, dev) = (self.id, self.device.clone());
        let tape = record::<T>(out_id, &[self.tape.node()], move |g| {
            if let Some(gy) = g.take_on::<D, E>(out_id) {
                let gx = device_ok(dev.select_backward(&gy, &dims, axis, index));
                g.accumulate_on(&dev, in_id, gx);
            }
        });
        Ok(Tensor {
            shape: self.shape.reduced(),
            layout,
            data: self.data,
            id: out_id,
            tape,
            device: self.device,
        })
    }

    /// Panicking twin of [`try_select`](Self::try_select).
    #[track_caller]
    pub fn select<Ax>(self, index: usize) -> Tensor<S::Reduced, E, D, T>
    where
        S: HasAxes<Ax>,
        Ax: SingleAxis,
    {
        or_panic(self.try_select::<Ax>(index))
    }

    /// `torch.gather` along `Ax`: ids of the same rank as `self`, output of
    /// the ids' shape, `out[m] = self[m with m[Ax] = ids[m]]`. Each dim of
    /// the ids other than `Ax` must be at most `self`'s (else
    /// [`Error::ShapeMismatch`]); an id outside the axis is
    /// [`Error::IndexOutOfRange`]. The backward scatter-adds.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U2), f32>::from_vec(Default::default(), vec![1., 2., 3., 4.]).unwrap();
    /// let ids = Tensor::<(U2, U2), i64>::from_vec(Default::default(), vec![0, 0, 1, 0]).unwrap();
    /// assert_eq!(x.gather::<Axis<1>, _>(&ids).to_vec(), [1., 1., 4., 3.]);
    /// ```
    pub fn try_gather<Ax, X: IdTensor>(self, ids: &X) -> Result<Indexed<X::Shape, E, D, T, X>>
    where
        S: HasAxes<Ax> + SameRank<X::Shape, super::Gather>,
        Ax: SingleAxis,
        T: Merge<X::Tape>,
    {
        let axis = Ax::AXIS;
        let dims = self.dims();
        let out_shape = ids.ids_shape();
        let idims = out_shape.dims();
        if dims
            .iter()
            .zip(idims.iter())
            .enumerate()
            .any(|(d, (&x, &i))| d != axis && i > x)
        {
            return Err(Error::ShapeMismatch {
                op: "gather",
                lhs: dims.to_vec(),
                rhs: idims.to_vec(),
            });
        }
        let idx = ids.try_indices("gather", dims[axis])?;
        let idx = self.device.indices(idx, dims[axis])?;
        let y = self
            .device
            .gather(&self.data, &self.layout, axis, &idx, &idims)?;
        let out_id = TensorId::fresh();
        let (in_id, dev) = (self.id, self.device.clone());
        let tape = record::<Merged<T, X>>(out_id, &[self.tape.node(), ids.ids_node()], move |g| {
            if let Some(gy) = g.take_on::<D, E>(out_id) {
                let gx = device_ok(dev.gather_backward(&gy, &dims, axis, &idx, &idims));
                g.accumulate_on(&dev, in_id, gx);
            }
        });
        Ok(op_output(out_shape, y, out_id, tape, self.device))
    }

    /// Panicking twin of [`try_gather`](Self::try_gather).
    #[track_caller]
    pub fn gather<Ax, X: IdTensor>(self, ids: &X) -> Indexed<X::Shape, E, D, T, X>
    where
        S: HasAxes<Ax> + SameRank<X::Shape, super::Gather>,
        Ax: SingleAxis,
        T: Merge<X::Tape>,
    {
        or_panic(self.try_gather::<Ax, X>(ids))
    }
}

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// The entries of axis `Ax` listed by a vector of ids `(N,)` (repeats
    /// allowed): the axis becomes `N` (`torch.index_select`). An id outside
    /// the axis is [`Error::IndexOutOfRange`]. The backward scatter-adds.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U3), f32>::from_vec(Default::default(), vec![1., 2., 3., 4., 5., 6.]).unwrap();
    /// let ids = Tensor::<(U4,), i64>::from_vec(Default::default(), vec![2, 0, 2, 1]).unwrap();
    /// let y: Tensor<(U2, U4), f32> = x.index_select::<Axis<1>, _>(&ids);
    /// assert_eq!(y.to_vec(), [3., 1., 3., 2., 6., 4., 6., 5.]);
    /// ```
    pub fn try_index_select<Ax, X: IdTensor>(self, ids: &X) -> Result<Indexed<S::Out, E, D, T, X>>
    where
        X::Shape: VectorShape,
        S: IndexAxis<Ax, X::Shape>,
        T: Merge<X::Tape>,
    {
        let axis = <S as IndexAxis<Ax, X::Shape>>::AXIS;
        let dims = self.dims();
        let idx = ids.try_indices("index_select", dims[axis])?;
        let out_shape = self.shape.replaced(&ids.ids_shape());
        let idx = self.device.indices(idx, dims[axis])?;
        let y = self
            .device
            .index_select(&self.data, &self.layout, axis, &idx)?;
        let out_id = TensorId::fresh();
        let (in_id, dev) = (self.id, self.device.clone());
        let tape = record::<Merged<T, X>>(out_id, &[self.tape.node(), ids.ids_node()], move |g| {
            if let Some(gy) = g.take_on::<D, E>(out_id) {
                let gx = device_ok(dev.index_select_backward(&gy, &dims, axis, &idx));
                g.accumulate_on(&dev, in_id, gx);
            }
        });
        Ok(op_output(out_shape, y, out_id, tape, self.device))
    }

    /// Panicking twin of [`try_index_select`](Self::try_index_select).
    #[track_caller]
    pub fn index_select<Ax, X: IdTensor>(self, ids: &X) -> Indexed<S::Out, E, D, T, X>
    where
        X::Shape: VectorShape,
        S: IndexAxis<Ax, X::Shape>,
        T: Merge<X::Tape>,
    {
        or_panic(self.try_index_select::<Ax, X>(ids))
    }
}

impl<V: Dim, W: Dim, E: FloatDtype, D: Backend, T: TapeState> Tensor<(V, W), E, D, T> {
    /// Embedding lookup: `self` is a `(V, D)` table, `ids` any shape `S`
    /// (rank ≤ 5); the output is `S + (D,)`, row `ids[m]` of the table at
    /// `m`. A token id that is negative or `>= V` is
    /// [`Error::IndexOutOfRange`]. The backward scatter-adds into the table's
    /// gradient (a repeated token accumulates), deterministically.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// dim!(Vocab = 3);
    /// dim!(Width = 2);
    /// let table = Tensor::<(Vocab, Width), f32>::from_vec((Vocab, Width), vec![0., 1., 10., 11., 20., 21.]).unwrap();
    /// let ids = Tensor::<(U2, U2), i64>::from_vec(Default::default(), vec![2, 0, 1, 2]).unwrap();
    /// let x: Tensor<(U2, U2, Width), f32> = table.clone().embedding(&ids);
    /// assert_eq!(x.to_vec(), [20., 21., 0., 1., 10., 11., 20., 21.]);
    /// let bad = Tensor::<(U1,), i64>::from_vec(Default::default(), vec![3]).unwrap();
    /// assert!(table.try_embedding(&bad).is_err());
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn try_embedding<X: IdTensor>(self, ids: &X) -> Result<Indexed<Embedded<X, W>, E, D, T, X>>
    where
        X::Shape: AppendDim<W>,
        T: Merge<X::Tape>,
    {
        let dims = self.dims();
        let idx = ids.try_indices("embedding", dims[0])?;
        let out_shape = ids.ids_shape().append(self.shape.1);
        let idx = self.device.indices(idx, dims[0])?;
        let y = self
            .device
            .index_select(&self.data, &self.layout, 0, &idx)?;
        let out_id = TensorId::fresh();
        let (in_id, dev) = (self.id, self.device.clone());
        let tape = record::<Merged<T, X>>(out_id, &[self.tape.node(), ids.ids_node()], move |g| {
            if let Some(gy) = g.take_on::<D, E>(out_id) {
                let gx = device_ok(dev.index_select_backward(&gy, &dims, 0, &idx));
                g.accumulate_on(&dev, in_id, gx);
            }
        });
        Ok(op_output(out_shape, y, out_id, tape, self.device))
    }

    /// Panicking twin of [`try_embedding`](Self::try_embedding).
    #[track_caller]
    pub fn embedding<X: IdTensor>(self, ids: &X) -> Indexed<Embedded<X, W>, E, D, T, X>
    where
        X::Shape: AppendDim<W>,
        T: Merge<X::Tape>,
    {
        or_panic(self.try_embedding(ids))
    }
}

/// A contiguous tensor from an op's output (for the ops of this family).
pub(super) fn op_output<S: Shape, E: FloatDtype, D: Backend, T: TapeState>(
    shape: S,
    data: D::Storage<E>,
    id: TensorId,
    tape: T,
    device: D,
) -> Tensor<S, E, D, T> {
    debug_assert_eq!(shape.numel(), D::storage_len(&data));
    Tensor {
        layout: Layout::contiguous(&shape.dims()),
        shape,
        data: Arc::new(data),
        id,
        tape,
        device,
    }
}
