//! Elementwise binary maths on same-shaped operands (a broadcast operand is a
//! stride-0 view), each op with its two partial derivatives.

use crate::{cpu::zip_map, FloatDtype, Layout, Real};

/// An elementwise function of two arguments with its partial derivatives.
pub trait BinaryOp: Copy + Send + Sync + 'static {
    /// The op's name.
    const NAME: &'static str;
    /// `y = f(a, b)`.
    fn f<A: Real>(&self, a: A, b: A) -> A;
    /// `∂y/∂a`.
    fn da<A: Real>(&self, a: A, b: A) -> A;
    /// `∂y/∂b`.
    fn db<A: Real>(&self, a: A, b: A) -> A;
    /// `Some((∂y/∂a, ∂y/∂b))` when both partials are constants (add, sub):
    /// the backward then never reads the operands.
    const CONSTANT_PARTIALS: Option<(f64, f64)> = None;
    /// The op's code in the device kernels (`cuda/kernels/binary.cu`);
    /// `None` for an op only the CPU runs.
    const DEVICE_CODE: Option<i32> = None;
}

/// `y = f(a, b)` elementwise; both layouts have the same shape.
pub fn binary_forward<E: FloatDtype, O: BinaryOp>(
    op: O,
    a: &[E],
    la: &Layout,
    b: &[E],
    lb: &Layout,
) -> Vec<E> {
    zip_map(
        a,
        la,
        b,
        lb,
        #[inline(always)]
        |x: E, y: E| E::from_acc(op.f(x.to_acc(), y.to_acc())),
    )
}

/// The gradients `(grad_a, grad_b)` (contiguous) given contiguous `grad_y`.
/// A side whose flag is `false` is skipped (returned empty).
pub fn binary_backward<E: FloatDtype, O: BinaryOp>(
    op: O,
    a: &[E],
    la: &Layout,
    b: &[E],
    lb: &Layout,
    grad_y: Vec<E>,
    need: (bool, bool),
) -> (Vec<E>, Vec<E>) {
    if let Some((ca, cb)) = O::CONSTANT_PARTIALS {
        // grad_y times a constant: the gradient itself (moved or copied
        // once) when the constant is 1, no operand reads either way.
        let scaled = |c: f64, g: &[E]| -> Vec<E> {
            let c = E::Acc::of_f64(c);
            crate::cpu::map(g, &Layout::contiguous(&[g.len()]), move |v: E| {
                E::from_acc(v.to_acc() * c)
            })
        };
        let ga = match (need.0, ca == 1.0) {
            (false, _) => Vec::new(),
            (true, true) => grad_y.clone(),
            (true, false) => scaled(ca, &grad_y),
        };
        let gb = match (need.1, cb == 1.0) {
            (false, _) => Vec::new(),
            (true, true) => grad_y,
            (true, false) => scaled(cb, &grad_y),
        };
        return (ga, gb);
    }
    let grad_y = &grad_y[..];
    let lg = Layout::contiguous(la.shape());
    let ga = if need.0 {
        crate::cpu::zip3_map(
            a,
            la,
            b,
            lb,
            grad_y,
            &lg,
            #[inline(always)]
            |x: E, y: E, g: E| E::from_acc(g.to_acc() * op.da(x.to_acc(), y.to_acc())),
        )
    } else {
        Vec::new()
    };
    let gb = if need.1 {
        crate::cpu::zip3_map(
            a,
            la,
            b,
            lb,
            grad_y,
            &lg,
            #[inline(always)]
            |x: E, y: E, g: E| E::from_acc(g.to_acc() * op.db(x.to_acc(), y.to_acc())),
        )
    } else {
        Vec::new()
    };
    (ga, gb)
}

macro_rules! binary_op {
    ($(#[$m:meta])* $name:ident, $text:literal, $code:literal, |$a:ident, $b:ident| $f:expr, $da:expr, $db:expr $(, constant $partials:expr)?) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default)]
        pub struct $name;
        impl BinaryOp for $name {
            const NAME: &'static str = $text;
            const DEVICE_CODE: Option<i32> = Some($code);
            $(const CONSTANT_PARTIALS: Option<(f64, f64)> = Some($partials);)?
            #[inline(always)]
            fn f<A: Real>(&self, $a: A, $b: A) -> A {
                $f
            }
            #[inline(always)]
            #[allow(unused_variables)]
            fn da<A: Real>(&self, $a: A, $b: A) -> A {
                $da
            }
            #[inline(always)]
            #[allow(unused_variables)]
            fn db<A: Real>(&self, $a: A, $b: A) -> A {
                $db
            }
        }
    };
}

binary_op!(/// `a + b`
    AddOp, "add", 0, |a, b| a + b, A::one(), A::one(), constant (1.0, 1.0));
binary_op!(/// `a - b`
    SubOp, "sub", 1, |a, b| a - b, A::one(), -A::one(), constant (1.0, -1.0));
binary_op!(/// `a * b`
    MulOp, "mul", 2, |a, b| a * b, b, a);
binary_op!(/// `a / b`
    DivOp, "div", 3, |a, b| a / b, b.recip(), -a / (b * b));
binary_op!(/// `max(a, b)`; ties split the gradient in halves (PyTorch's rule)
    MaximumOp, "maximum", 4, |a, b| a.max(b), super::unary::tie_grad(a, b), super::unary::tie_grad(b, a));
binary_op!(/// `min(a, b)`; ties split the gradient in halves
    MinimumOp, "minimum", 5, |a, b| a.min(b), super::unary::tie_grad(b, a), super::unary::tie_grad(a, b));
binary_op!(/// `a ^ b`; `∂/∂b = a^b ln a` (0 where `a == 0`, as in PyTorch)
    PowOp, "pow", 6, |a, b| a.powf(b),
    if b == A::zero() { A::zero() } else { b * a.powf(b - A::one()) },
    if a == A::zero() { A::zero() } else { a.powf(b) * a.ln() });
