//! Elementwise binary ops between tensors of the same shape and dtype.
//!
//! Shapes must match (checked by value at compile time, at run time for `Dyn`
//! dims); broadcasting is explicit (`broadcast`), never silent.

use std::sync::Arc;

use zerfoo_kernels::cpu::binary::{self as k, BinaryOp};
use zerfoo_kernels::{Backend, Device, Dtype, FloatDtype, Layout};

use crate::autograd::{device_ok, record, Merge, TapeState, TensorId};
use crate::error::or_panic;
use crate::shape::{SameShape, Shape};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Both operands have the same dtype; mixing dtypes needs an explicit `to_dtype`.
///
/// A single blanket impl, so the compiler infers an operand's dtype from the
/// other's. Ops that take their operand through a trait of their own
/// ([`ElementwiseRhs`]) print this message for a mismatch; ops that name the
/// operand's type directly get rustc's plain "mismatched types".
#[diagnostic::on_unimplemented(
    message = "dtype error in `{Op}`: `{Self}` and `{R}` are different dtypes",
    label = "mixed dtypes",
    note = "convert one operand first, e.g. `.to_dtype::<{Self}>()`"
)]
pub trait SameDtype<R: Dtype, Op>: Dtype {
    /// Views a tensor of dtype `R` (= `Self`) as dtype `Self`.
    fn same<S: Shape, D: Device, T>(t: Tensor<S, R, D, T>) -> Tensor<S, Self, D, T>;
}
impl<E: Dtype, Op> SameDtype<E, Op> for E {
    #[inline]
    fn same<S: Shape, D: Device, T>(t: Tensor<S, E, D, T>) -> Tensor<S, E, D, T> {
        t
    }
}

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// Runs a [`BinaryOp`] on two same-shaped tensors and records its backward.
    pub(crate) fn try_binary_op<O: BinaryOp, S2: Shape, T2: TapeState>(
        self,
        rhs: Tensor<S2, E, D, T2>,
        op: O,
    ) -> Result<Tensor<S, E, D, <T as Merge<T2>>::Out>>
    where
        T: Merge<T2>,
    {
        if self.layout.shape() != rhs.layout.shape() {
            return Err(Error::ShapeMismatch {
                op: O::NAME,
                lhs: self.layout.shape().to_vec(),
                rhs: rhs.layout.shape().to_vec(),
            });
        }
        let y = self
            .device
            .binary_forward(op, &self.data, &self.layout, &rhs.data, &rhs.layout)?;
        let out_id = TensorId::fresh();
        type Out<T, T2> = <T as Merge<T2>>::Out;
        let tape = if Out::<T, T2>::TRACKED {
            let (a, la, ida) = (self.data.clone(), self.layout, self.id);
            let (b, lb, idb) = (rhs.data.clone(), rhs.layout, rhs.id);
            let dev = self.device.clone();
            record::<Out<T, T2>>(out_id, &[self.tape.node(), rhs.tape.node()], move |g| {
                if O::CONSTANT_PARTIALS == Some((1.0, 1.0)) {
                    // An addition: both operands' gradients are the output's,
                    // one buffer shared until someone writes it (a residual
                    // stream's gradient is then never copied).
                    if let Some(gy) = g.take_shared_on::<D, E>(out_id) {
                        g.accumulate_shared_on(&dev, ida, gy.clone());
                        g.accumulate_shared_on(&dev, idb, gy);
                    }
                } else if let Some(gy) = g.take_on::<D, E>(out_id) {
                    let (ga, gb) =
                        device_ok(dev.binary_backward(op, &a, &la, &b, &lb, gy, (true, true)));
                    if let Some(ga) = ga {
                        g.accumulate_on(&dev, ida, ga);
                    }
                    if let Some(gb) = gb {
                        g.accumulate_on(&dev, idb, gb);
                    }
                }
            })
        } else {
            Out::<T, T2>::from_node(None)
        };
        Ok(Tensor {
            layout: Layout::contiguous(&self.shape.dims()),
            shape: self.shape,
            data: Arc::new(y),
            id: out_id,
            tape,
            device: self.device,
        })
    }
}

/// The right operand of an elementwise op on a `Tensor<S, E, D, _>`: a
/// tensor on the same device type `D` whose shape equals `S` by value
/// ([`SameShape`]) and whose dtype is `E` ([`SameDtype`]).
///
/// The binary methods take their operand as one type `R: ElementwiseRhs<..>`
/// rather than as `Tensor<S2, E2, ..>` with bounds on `S2` and `E2`: with the
/// latter, rustc infers `E2 = E` (and the rank of `S2`) from the bounds'
/// only impl before it looks at the argument, and a mismatch surfaces as a
/// bare E0308 "mismatched types". Checked once the argument's type is
/// known, a mismatch reports the shape or dtype diagnostic instead, and an
/// operand whose dtype is still open (`Tensor::ones(shape)`) is still
/// inferred to be `E`.
#[diagnostic::on_unimplemented(
    message = "device error in `{Op}`: `{Self}` is not a tensor on device `{D}`",
    label = "not on the left operand's device",
    note = "move it first, e.g. `.to_device(&device)`; both operands of an elementwise op live on one device"
)]
pub trait ElementwiseRhs<S: Shape, E: Dtype, D: Device, Op> {
    /// The operand's shape type.
    type Shape: Shape;
    /// The operand's tape.
    type Tape: TapeState;
    /// The operand, its dtype spelled `E`.
    fn into_rhs(self) -> Tensor<Self::Shape, E, D, Self::Tape>;
}

impl<S, S2, E, E2, D, T2, Op> ElementwiseRhs<S, E, D, Op> for Tensor<S2, E2, D, T2>
where
    S: Shape + SameShape<S2, Op>,
    S2: Shape,
    E: SameDtype<E2, Op>,
    E2: Dtype,
    D: Device,
    T2: TapeState,
{
    type Shape = S2;
    type Tape = T2;
    #[inline]
    fn into_rhs(self) -> Tensor<S2, E, D, T2> {
        E::same(self)
    }
}

macro_rules! binary_method {
    ($try_name:ident, $name:ident, $kop:ident, $marker:ident, $doc:literal) => {
        #[allow(clippy::should_implement_trait)] // the std operator traits are implemented too, below
        impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
            #[doc = concat!($doc, " Fails if a `Dyn` dim differs at run time.")]
            pub fn $try_name<R>(self, rhs: R) -> Result<Tensor<S, E, D, <T as Merge<R::Tape>>::Out>>
            where
                R: ElementwiseRhs<S, E, D, super::$marker>,
                T: Merge<R::Tape>,
            {
                self.try_binary_op(rhs.into_rhs(), k::$kop)
            }
            #[doc = concat!($doc, " Panics if a `Dyn` dim differs at run time.")]
            #[track_caller]
            #[allow(clippy::should_implement_trait)] // the operators are implemented too
            pub fn $name<R>(self, rhs: R) -> Tensor<S, E, D, <T as Merge<R::Tape>>::Out>
            where
                R: ElementwiseRhs<S, E, D, super::$marker>,
                T: Merge<R::Tape>,
            {
                or_panic(self.$try_name(rhs))
            }
        }
    };
}

binary_method!(try_add, add, AddOp, Addition, "Elementwise `self + rhs`.");
binary_method!(
    try_sub,
    sub,
    SubOp,
    Subtraction,
    "Elementwise `self - rhs`."
);
binary_method!(
    try_mul,
    mul,
    MulOp,
    Multiplication,
    "Elementwise `self * rhs`."
);
binary_method!(try_div, div, DivOp, Division, "Elementwise `self / rhs`.");
binary_method!(
    try_maximum,
    maximum,
    MaximumOp,
    Maximum,
    "Elementwise `max(self, rhs)`."
);
binary_method!(
    try_minimum,
    minimum,
    MinimumOp,
    Minimum,
    "Elementwise `min(self, rhs)`."
);
binary_method!(try_pow, pow, PowOp, Power, "Elementwise `self ^ rhs`.");

macro_rules! binary_std_op {
    ($tr:ident, $m:ident, $marker:ident) => {
        impl<S, S2, E, E2, D, T, T2> core::ops::$tr<Tensor<S2, E2, D, T2>> for Tensor<S, E, D, T>
        where
            S: Shape + SameShape<S2, super::$marker>,
            S2: Shape,
            E: FloatDtype + SameDtype<E2, super::$marker>,
            E2: FloatDtype,
            D: Backend,
            T: TapeState + Merge<T2>,
            T2: TapeState,
        {
            type Output = Tensor<S, E, D, <T as Merge<T2>>::Out>;
            #[track_caller]
            fn $m(self, rhs: Tensor<S2, E2, D, T2>) -> Self::Output {
                Tensor::$m(self, rhs)
            }
        }
    };
}
binary_std_op!(Add, add, Addition);
binary_std_op!(Sub, sub, Subtraction);
binary_std_op!(Mul, mul, Multiplication);
binary_std_op!(Div, div, Division);
