//! Joining tensors: `concat` of two along an axis (static sum of the joined
//! dims when both are static), `concat_all` of a list, `stack` along a new
//! axis. The backward hands each input its block of the gradient.

use std::sync::Arc;

use zerfoo_kernels::{Backend, FloatDtype, Layout, MAX_RANK};

use crate::autograd::{device_ok, record, Merge, TapeState, TensorId};
use crate::error::or_panic;
use crate::shape::{shape_from_dims, ConcatAlong, InsertAxis, ResizeAxis, Shape};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// One input of a join: its storage, its layout as joined (a stack inserts a
/// size-1 axis) and its id.
struct Part<'a, E: FloatDtype, D: Backend> {
    data: &'a D::Storage<E>,
    layout: Layout,
    id: TensorId,
}

/// Joins `parts` along `axis` into a tensor of shape `out`; the caller checked
/// that their dims agree off the axis. The backward copies each input's block
/// of the gradient to it (a tensor given twice gets both blocks added).
fn join<S2: Shape, E: FloatDtype, D: Backend, T: TapeState>(
    dev: &D,
    parts: &[Part<'_, E, D>],
    nodes: &[Option<Arc<crate::autograd::Node>>],
    axis: usize,
    out: S2,
) -> Result<Tensor<S2, E, D, T>> {
    let views: Vec<(&D::Storage<E>, &Layout)> = parts.iter().map(|p| (p.data, &p.layout)).collect();
    let y = dev.concat(&views, axis)?;
    let dims = out.dims();
    debug_assert_eq!(D::storage_len(&y), dims.iter().product::<usize>());
    let out_id = TensorId::fresh();
    let mut start = 0;
    let blocks: Vec<(TensorId, usize, usize)> = parts
        .iter()
        .map(|p| {
            let len = p.layout.shape()[axis];
            start += len;
            (p.id, start - len, len)
        })
        .collect();
    let gdev = dev.clone();
    let tape = record::<T>(out_id, nodes, move |g| {
        if let Some(gy) = g.take_on::<D, E>(out_id) {
            let full = Layout::contiguous(&dims);
            for (id, start, len) in blocks {
                let gx = device_ok(gdev.contiguous(&gy, &full.narrow(axis, start, len)));
                g.accumulate_on(&gdev, id, gx);
            }
        }
    });
    Ok(Tensor {
        layout: Layout::contiguous(&dims),
        shape: out,
        data: Arc::new(y),
        id: out_id,
        tape,
        device: dev.clone(),
    })
}

/// The dims of `a` and `b` agree except at `axis`.
fn same_off_axis(a: &[usize], b: &[usize], axis: usize) -> bool {
    a.len() == b.len() && (0..a.len()).all(|d| d == axis || a[d] == b[d])
}

/// Concatenation of two tensors along an axis: `x.concat::<Axis<1>>(y)`.
///
/// A trait (in the prelude) rather than an inherent method so that only the
/// axis needs naming; the other tensor's shape and tape are inferred (its
/// dtype must be the same).
/// Every dim but the joined one must match (by value: at compile time when
/// static, at run time for `Dyn`). The joined dim is the static sum when both
/// are static, else `Dyn`.
///
/// ```
/// use zerfoo::prelude::*;
/// let a = Tensor::<(U2, U1), f32>::from_vec(Default::default(), vec![1., 2.]).unwrap();
/// let b = Tensor::<(U2, U2), f32>::from_vec(Default::default(), vec![3., 4., 5., 6.]).unwrap();
/// let c: Tensor<(U2, U3), f32> = a.concat::<Axis<1>>(b);
/// assert_eq!(c.to_vec(), [1., 3., 4., 2., 5., 6.]);
/// ```
///
/// ```compile_fail
/// use zerfoo::prelude::*;
/// let a: Tensor<(U2, U3), f32> = Tensor::zeros(Default::default());
/// let b: Tensor<(U4, U3), f32> = Tensor::zeros(Default::default());
/// let _ = a.concat::<Axis<1>>(b); // shape error in `Concatenate`: 2 vs 4 off the axis
/// ```
pub trait ConcatWith<S2: Shape, T2: TapeState>: Sized {
    /// The shape of `self`.
    type Shape: Shape;
    /// The dtype of `self`.
    type Elem: FloatDtype;
    /// The tape of `self`.
    type Tape: TapeState + Merge<T2>;
    /// The device of `self` (and of `other`).
    type Device: Backend;

    /// Joins `self` and `other` along `Ax`; an error if a `Dyn` dim off the
    /// axis differs.
    fn try_concat<Ax>(
        self,
        other: Tensor<S2, Self::Elem, Self::Device, T2>,
    ) -> Result<
        Tensor<
            <Self::Shape as ConcatAlong<S2, Ax>>::Out,
            Self::Elem,
            Self::Device,
            <Self::Tape as Merge<T2>>::Out,
        >,
    >
    where
        Self::Shape: ConcatAlong<S2, Ax>;

    /// Panicking twin of [`try_concat`](Self::try_concat).
    #[track_caller]
    fn concat<Ax>(
        self,
        other: Tensor<S2, Self::Elem, Self::Device, T2>,
    ) -> Tensor<
        <Self::Shape as ConcatAlong<S2, Ax>>::Out,
        Self::Elem,
        Self::Device,
        <Self::Tape as Merge<T2>>::Out,
    >
    where
        Self::Shape: ConcatAlong<S2, Ax>,
    {
        or_panic(self.try_concat::<Ax>(other))
    }
}

impl<S, E, D, T, S2, T2> ConcatWith<S2, T2> for Tensor<S, E, D, T>
where
    S: Shape,
    E: FloatDtype,
    D: Backend,
    T: TapeState + Merge<T2>,
    S2: Shape,
    T2: TapeState,
{
    type Shape = S;
    type Elem = E;
    type Tape = T;
    type Device = D;

    fn try_concat<Ax>(
        self,
        other: Tensor<S2, E, D, T2>,
    ) -> Result<Tensor<<S as ConcatAlong<S2, Ax>>::Out, E, D, <T as Merge<T2>>::Out>>
    where
        S: ConcatAlong<S2, Ax>,
    {
        let axis = <S as ConcatAlong<S2, Ax>>::AXIS;
        let (da, db) = (self.dims(), other.dims());
        if !same_off_axis(&da, &db, axis) {
            return Err(Error::ShapeMismatch {
                op: "concat",
                lhs: da.to_vec(),
                rhs: db.to_vec(),
            });
        }
        let mut dims = [0usize; MAX_RANK];
        dims[..da.len()].copy_from_slice(&da);
        dims[axis] += db[axis];
        let out = shape_from_dims::<<S as ConcatAlong<S2, Ax>>::Out>("concat", &dims[..da.len()])?;
        let parts = [
            Part {
                data: &*self.data,
                layout: self.layout,
                id: self.id,
            },
            Part {
                data: &*other.data,
                layout: other.layout,
                id: other.id,
            },
        ];
        join(
            &self.device,
            &parts,
            &[self.tape.node(), other.tape.node()],
            axis,
            out,
        )
    }
}

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// Concatenates a list of same-typed tensors along `Ax`; the joined dim
    /// becomes `Dyn`. An error if the list is empty or a `Dyn` dim off the
    /// axis differs.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let xs: Vec<Tensor<(U2,), f32>> = (0..3).map(|i| Tensor::full(Default::default(), i as f64)).collect();
    /// let y: Tensor<(Dyn,), f32> = Tensor::concat_all::<Axis<0>>(xs);
    /// assert_eq!(y.to_vec(), [0., 0., 1., 1., 2., 2.]);
    /// ```
    pub fn try_concat_all<Ax>(
        xs: impl IntoIterator<Item = Self>,
    ) -> Result<Tensor<<S as ResizeAxis<Ax>>::Resized, E, D, T>>
    where
        S: ResizeAxis<Ax>,
    {
        let xs: Vec<Self> = xs.into_iter().collect();
        let axis = S::AXIS;
        let Some(first) = xs.first() else {
            return Err(Error::InvalidArgument {
                op: "concat_all",
                reason: "no tensors to concatenate".to_string(),
            });
        };
        let d0 = first.dims();
        let mut total = 0;
        for x in &xs {
            if !same_off_axis(&d0, &x.dims(), axis) {
                return Err(Error::ShapeMismatch {
                    op: "concat_all",
                    lhs: d0.to_vec(),
                    rhs: x.dims().to_vec(),
                });
            }
            total += x.dims()[axis];
        }
        let out = first.shape.resized(total);
        let parts: Vec<Part<'_, E, D>> = xs
            .iter()
            .map(|x| Part {
                data: &*x.data,
                layout: x.layout,
                id: x.id,
            })
            .collect();
        let nodes: Vec<_> = xs.iter().map(|x| x.tape.node()).collect();
        join(&first.device, &parts, &nodes, axis, out)
    }

    /// Panicking twin of [`try_concat_all`](Self::try_concat_all).
    #[track_caller]
    pub fn concat_all<Ax>(
        xs: impl IntoIterator<Item = Self>,
    ) -> Tensor<<S as ResizeAxis<Ax>>::Resized, E, D, T>
    where
        S: ResizeAxis<Ax>,
    {
        or_panic(Self::try_concat_all::<Ax>(xs))
    }

    /// Stacks same-shaped tensors along a new axis `Ax` (position `0..=rank`)
    /// whose dim is `Dyn` (the number of tensors). Takes a `Vec` or an array.
    /// An error if the list is empty or a `Dyn` dim differs between tensors.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let a = Tensor::<(U2,), f32>::from_vec(Default::default(), vec![1., 2.]).unwrap();
    /// let b = Tensor::<(U2,), f32>::from_vec(Default::default(), vec![3., 4.]).unwrap();
    /// let s: Tensor<(U2, Dyn), f32> = Tensor::stack::<Axis<1>>([a, b]);
    /// assert_eq!(s.to_vec(), [1., 3., 2., 4.]);
    /// ```
    pub fn try_stack<Ax>(
        xs: impl IntoIterator<Item = Self>,
    ) -> Result<Tensor<<S as InsertAxis<Ax>>::Inserted, E, D, T>>
    where
        S: InsertAxis<Ax>,
    {
        let xs: Vec<Self> = xs.into_iter().collect();
        let axis = <S as InsertAxis<Ax>>::AXIS;
        let Some(first) = xs.first() else {
            return Err(Error::InvalidArgument {
                op: "stack",
                reason: "no tensors to stack".to_string(),
            });
        };
        let d0 = first.dims();
        if let Some(x) = xs.iter().find(|x| x.dims() != d0) {
            return Err(Error::ShapeMismatch {
                op: "stack",
                lhs: d0.to_vec(),
                rhs: x.dims().to_vec(),
            });
        }
        let out = first.shape.inserted(xs.len());
        let parts: Vec<Part<'_, E, D>> = xs
            .iter()
            .map(|x| {
                // The input as a view with a size-1 axis inserted at `axis`.
                let (mut sh, mut st) = ([1usize; MAX_RANK], [0usize; MAX_RANK]);
                let r = x.layout.rank();
                for i in 0..r {
                    let j = if i < axis { i } else { i + 1 };
                    sh[j] = x.layout.shape()[i];
                    st[j] = x.layout.strides()[i];
                }
                Part {
                    data: &*x.data,
                    layout: Layout::new(&sh[..=r], &st[..=r], x.layout.offset),
                    id: x.id,
                }
            })
            .collect();
        let nodes: Vec<_> = xs.iter().map(|x| x.tape.node()).collect();
        join(&first.device, &parts, &nodes, axis, out)
    }

    /// Panicking twin of [`try_stack`](Self::try_stack).
    #[track_caller]
    pub fn stack<Ax>(
        xs: impl IntoIterator<Item = Self>,
    ) -> Tensor<<S as InsertAxis<Ax>>::Inserted, E, D, T>
    where
        S: InsertAxis<Ax>,
    {
        or_panic(Self::try_stack::<Ax>(xs))
    }
}
