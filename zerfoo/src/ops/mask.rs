//! Masks: boolean tensors (`Tensor<S, bool>`) and the float ops that use
//! them — [`where_cond`](Tensor::where_cond), [`masked_fill`](Tensor::masked_fill) —
//! plus triangular masks ([`tril_mask`](Tensor::tril_mask),
//! [`triu_mask`](Tensor::triu_mask), [`causal_mask`](Tensor::causal_mask)) and
//! the float ops [`tril`](Tensor::tril) / [`triu`](Tensor::triu) on the last
//! two axes.
//!
//! A mask's shape is compared with the data's by value ([`SameShape`]); a mask
//! meant for many rows is broadcast first with
//! [`broadcast_mask`](Tensor::broadcast_mask) (a view).

use zerfoo_kernels::cpu::mask as k;
use zerfoo_kernels::{Backend, Cpu, Device, FloatDtype, Layout};

use super::binary::SameDtype;
use super::index::op_output;
use crate::autograd::{device_ok, record, Merge, NoTape, TapeState, TensorId};
use crate::error::or_panic;
use crate::shape::{Dim, HasAxes, SameShape, Shape};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Names `tril` in shape errors.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tril;
/// Names `triu` in shape errors.
#[derive(Clone, Copy, Debug, Default)]
pub struct Triu;

/// The shape has at least two axes: ops on the last two (`tril`, `triu`,
/// `rope` on `(.., T, Hd)`).
#[diagnostic::on_unimplemented(
    message = "shape error in `{Op}`: `{Self}` has fewer than two axes",
    label = "needs at least two axes",
    note = "this op works on the last two axes"
)]
pub trait LastTwoAxes<Op>: Shape {}
impl<A: Dim, B: Dim, Op> LastTwoAxes<Op> for (A, B) {}
impl<A: Dim, B: Dim, C: Dim, Op> LastTwoAxes<Op> for (A, B, C) {}
impl<A: Dim, B: Dim, C: Dim, D: Dim, Op> LastTwoAxes<Op> for (A, B, C, D) {}
impl<A: Dim, B: Dim, C: Dim, D: Dim, E: Dim, Op> LastTwoAxes<Op> for (A, B, C, D, E) {}
impl<A: Dim, B: Dim, C: Dim, D: Dim, E: Dim, F: Dim, Op> LastTwoAxes<Op> for (A, B, C, D, E, F) {}

fn check_same(op: &'static str, lhs: &[usize], rhs: &[usize]) -> Result<()> {
    if lhs == rhs {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            op,
            lhs: lhs.to_vec(),
            rhs: rhs.to_vec(),
        })
    }
}

impl<N: Dim> Tensor<(N, N), bool, Cpu, NoTape> {
    /// `true` on and below diagonal `diagonal`: entry `(i, j)` is set where
    /// `j - i <= diagonal` (`torch.tril(ones(n, n), diagonal).bool()`).
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let m = Tensor::<(U2, U2), bool>::tril_mask(U2::default(), 0);
    /// assert_eq!(m.to_vec(), [true, false, true, true]);
    /// ```
    pub fn tril_mask(n: N, diagonal: i64) -> Self {
        let s = n.size();
        Tensor::from_contiguous((n, n), k::tri_mask(s, s, true, diagonal))
    }

    /// `true` on and above diagonal `diagonal`: entry `(i, j)` is set where
    /// `j - i >= diagonal` (`torch.triu(ones(n, n), diagonal).bool()`).
    pub fn triu_mask(n: N, diagonal: i64) -> Self {
        let s = n.size();
        Tensor::from_contiguous((n, n), k::tri_mask(s, s, false, diagonal))
    }

    /// The positions a causal attention must hide: `true` where key `j` is
    /// after query `i` (`j > i`, i.e. `triu_mask(n, 1)`), ready for
    /// [`masked_fill`](Tensor::masked_fill) with `-inf`. Its
    /// [`logical_not`](Tensor::logical_not) is the allowed set `j <= i`.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let m = Tensor::<(U3, U3), bool>::causal_mask(U3::default());
    /// assert_eq!(m.to_vec(), [false, true, true, false, false, true, false, false, false]);
    /// ```
    pub fn causal_mask(n: N) -> Self {
        Self::triu_mask(n, 1)
    }
}

impl<S: Shape> Tensor<S, bool, Cpu, NoTape> {
    /// Flips every entry (a new contiguous mask).
    pub fn logical_not(self) -> Self {
        Tensor::from_contiguous(
            self.shape,
            zerfoo_kernels::cpu::map(&self.data, &self.layout, |b: bool| !b),
        )
    }
}

impl<S: Shape, D: Device> Tensor<S, bool, D, NoTape> {
    /// Repeats this mask along the new axes `Ax` of `dst` (a view, no copy),
    /// like [`broadcast`](Tensor::broadcast) for float tensors. `dst`
    /// without the axes `Ax` must equal this mask's shape.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let causal = Tensor::<(Dyn, Dyn), bool>::causal_mask(Dyn(2));
    /// let per_head = causal.broadcast_mask::<_, Axis<0>>((U3::default(), Dyn(2), Dyn(2)));
    /// assert_eq!(per_head.to_vec().len(), 12);
    /// ```
    pub fn try_broadcast_mask<Dst, Ax>(self, dst: Dst) -> Result<Tensor<Dst, bool, D, NoTape>>
    where
        Dst: HasAxes<Ax>,
        S: SameShape<Dst::Reduced, super::Broadcast>,
    {
        check_same("broadcast", &self.dims(), &dst.reduced().dims())?;
        let dims = dst.dims();
        let mut strides = [0usize; 6];
        let mut j = 0;
        for (d, s) in strides.iter_mut().enumerate().take(dims.len()) {
            if !Dst::AXES.contains(&d) {
                *s = self.layout.strides()[j];
                j += 1;
            }
        }
        Ok(Tensor {
            shape: dst,
            layout: self.layout.with_dims(&dims, &strides[..dims.len()]),
            data: self.data,
            id: TensorId::fresh(),
            tape: NoTape,
            device: self.device,
        })
    }

    /// Panicking twin of [`try_broadcast_mask`](Self::try_broadcast_mask).
    #[track_caller]
    pub fn broadcast_mask<Dst, Ax>(self, dst: Dst) -> Tensor<Dst, bool, D, NoTape>
    where
        Dst: HasAxes<Ax>,
        S: SameShape<Dst::Reduced, super::Broadcast>,
    {
        or_panic(self.try_broadcast_mask(dst))
    }
}

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// `mask ? on_true : on_false` elementwise (`torch.where`). The three
    /// shapes must agree (by value; `Dyn` dims at run time). Gradients flow
    /// to both branches: to `on_true` where the mask is set, to `on_false`
    /// elsewhere.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let m = Tensor::<(U3,), bool>::from_vec(Default::default(), vec![true, false, true]).unwrap();
    /// let a = Tensor::<(U3,), f32>::full(Default::default(), 1.0);
    /// let b = Tensor::<(U3,), f32>::full(Default::default(), 2.0);
    /// assert_eq!(Tensor::where_cond(&m, a, b).to_vec(), [1., 2., 1.]);
    /// ```
    pub fn try_where_cond<Sm: Shape, S3: Shape, E3: FloatDtype, T3: TapeState>(
        mask: &Tensor<Sm, bool, D>,
        on_true: Self,
        on_false: Tensor<S3, E3, D, T3>,
    ) -> Result<Tensor<S, E, D, <T as Merge<T3>>::Out>>
    where
        S: SameShape<Sm, super::Where> + SameShape<S3, super::Where>,
        E: SameDtype<E3, super::Where>,
        T: Merge<T3>,
    {
        let on_false = E::same(on_false);
        let dims = on_true.dims();
        check_same("where_cond", &dims, &mask.dims())?;
        check_same("where_cond", &dims, &on_false.dims())?;
        let dev = on_true.device.clone();
        let y = dev.where_select(
            &mask.data,
            &mask.layout,
            &on_true.data,
            &on_true.layout,
            &on_false.data,
            &on_false.layout,
        )?;
        let out_id = TensorId::fresh();
        let (ida, idb) = (on_true.id, on_false.id);
        let (m, lm, gdev) = (mask.data.clone(), mask.layout, dev.clone());
        let tape = record::<<T as Merge<T3>>::Out>(
            out_id,
            &[on_true.tape.node(), on_false.tape.node()],
            move |g| {
                if let Some(gy) = g.take_on::<D, E>(out_id) {
                    let ga = device_ok(gdev.mask_grad(&m, &lm, &gy, true));
                    let gb = device_ok(gdev.mask_grad(&m, &lm, &gy, false));
                    g.accumulate_on(&gdev, ida, ga);
                    g.accumulate_on(&gdev, idb, gb);
                }
            },
        );
        Ok(op_output(on_true.shape, y, out_id, tape, dev))
    }

    /// Panicking twin of [`try_where_cond`](Self::try_where_cond).
    #[track_caller]
    pub fn where_cond<Sm: Shape, S3: Shape, E3: FloatDtype, T3: TapeState>(
        mask: &Tensor<Sm, bool, D>,
        on_true: Self,
        on_false: Tensor<S3, E3, D, T3>,
    ) -> Tensor<S, E, D, <T as Merge<T3>>::Out>
    where
        S: SameShape<Sm, super::Where> + SameShape<S3, super::Where>,
        E: SameDtype<E3, super::Where>,
        T: Merge<T3>,
    {
        or_panic(Self::try_where_cond(mask, on_true, on_false))
    }

    /// `value` where the mask is set, `self` elsewhere
    /// (`torch.masked_fill`); `value` is rounded to `E` (`-inf` works). The
    /// gradient is zero where filled.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U2), f32>::ones(Default::default());
    /// let y = x.masked_fill(&Tensor::causal_mask(U2::default()), f64::NEG_INFINITY);
    /// assert_eq!(y.to_vec(), [1., f32::NEG_INFINITY, 1., 1.]);
    /// ```
    pub fn try_masked_fill<Sm: Shape>(self, mask: &Tensor<Sm, bool, D>, value: f64) -> Result<Self>
    where
        S: SameShape<Sm, super::MaskedFill>,
    {
        check_same("masked_fill", &self.dims(), &mask.dims())?;
        let y = self.device.masked_fill(
            &self.data,
            &self.layout,
            &mask.data,
            &mask.layout,
            E::from_f64(value),
        )?;
        let out_id = TensorId::fresh();
        let (in_id, dev) = (self.id, self.device.clone());
        let (m, lm) = (mask.data.clone(), mask.layout);
        let tape = record::<T>(out_id, &[self.tape.node()], move |g| {
            if let Some(gy) = g.take_on::<D, E>(out_id) {
                let gx = device_ok(dev.mask_grad(&m, &lm, &gy, false));
                g.accumulate_on(&dev, in_id, gx);
            }
        });
        Ok(op_output(self.shape, y, out_id, tape, self.device))
    }

    /// Panicking twin of [`try_masked_fill`](Self::try_masked_fill).
    #[track_caller]
    pub fn masked_fill<Sm: Shape>(self, mask: &Tensor<Sm, bool, D>, value: f64) -> Self
    where
        S: SameShape<Sm, super::MaskedFill>,
    {
        or_panic(self.try_masked_fill(mask, value))
    }

    /// Keeps the lower triangle of the last two axes, `col - row <=
    /// diagonal`, and zeroes the rest (`torch.tril`). The gradient is masked
    /// the same way.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U2), f32>::ones(Default::default());
    /// assert_eq!(x.tril(0).to_vec(), [1., 0., 1., 1.]);
    /// ```
    pub fn tril(self, diagonal: i64) -> Self
    where
        S: LastTwoAxes<Tril>,
    {
        self.triangle(true, diagonal)
    }

    /// Keeps the upper triangle of the last two axes, `col - row >=
    /// diagonal`, and zeroes the rest (`torch.triu`). The gradient is masked
    /// the same way.
    pub fn triu(self, diagonal: i64) -> Self
    where
        S: LastTwoAxes<Triu>,
    {
        self.triangle(false, diagonal)
    }

    fn triangle(self, lower: bool, diagonal: i64) -> Self {
        let y = device_ok(self.device.tri(&self.data, &self.layout, lower, diagonal));
        let out_id = TensorId::fresh();
        let (in_id, dims, dev) = (self.id, self.dims(), self.device.clone());
        let tape = record::<T>(out_id, &[self.tape.node()], move |g| {
            if let Some(gy) = g.take_on::<D, E>(out_id) {
                let l = Layout::contiguous(&dims);
                let gx = device_ok(dev.tri(&gy, &l, lower, diagonal));
                g.accumulate_on(&dev, in_id, gx);
            }
        });
        op_output(self.shape, y, out_id, tape, self.device)
    }
}
