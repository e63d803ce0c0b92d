//! Elementwise unary maths: each op knows its value and its derivative.

use crate::{cpu::map, FloatDtype, Layout, Real};

/// An elementwise function with a derivative, computed in `A` (`f32`/`f64`).
pub trait UnaryOp: Copy + Send + Sync + 'static {
    /// The op's name, for errors and benchmarks.
    const NAME: &'static str;
    /// `y = f(x)`.
    fn f<A: Real>(&self, x: A) -> A;
    /// `dy/dx` at `x`, given `y = f(x)` (many derivatives are cheaper from `y`).
    fn df<A: Real>(&self, x: A, y: A) -> A;
    /// Whether [`UnaryOp::df`] reads `y`; when it does not, the backward
    /// pass does not read the saved output at all (one memory pass less).
    const USES_Y: bool = true;
    /// The op's code in the device kernels (`cuda/kernels/unary.cu`) and up
    /// to two constants; `None` for an op only the CPU runs (a device then
    /// reports an error naming the op).
    fn device_code(&self) -> Option<(i32, f64, f64)> {
        None
    }
}

/// Applies `op` to every element (any layout), writing contiguous output.
pub fn unary_forward<E: FloatDtype, O: UnaryOp>(op: O, x: &[E], layout: &Layout) -> Vec<E> {
    map(
        x,
        layout,
        #[inline(always)]
        |v: E| E::from_acc(op.f(v.to_acc())),
    )
}

/// `grad_x = grad_y * f'(x)`; `x` in any layout, `y` and `grad_y` contiguous.
pub fn unary_backward<E: FloatDtype, O: UnaryOp>(
    op: O,
    x: &[E],
    x_layout: &Layout,
    y: &[E],
    grad_y: &[E],
) -> Vec<E> {
    let contiguous = Layout::contiguous(x_layout.shape());
    if !O::USES_Y {
        return crate::cpu::zip_map(
            x,
            x_layout,
            grad_y,
            &contiguous,
            #[inline(always)]
            // (`derivative` does not read its `y` here.)
            |x, g| E::from_acc(g.to_acc() * derivative(op, x, x)),
        );
    }
    crate::cpu::zip3_map(
        x,
        x_layout,
        y,
        &contiguous,
        grad_y,
        &contiguous,
        #[inline(always)]
        |x, y, g| E::from_acc(g.to_acc() * derivative(op, x, y)),
    )
}

/// [`unary_backward`] for a contiguous `x`, multiplying `grad` (the
/// upstream gradient, contiguous like `x` and `y`) by `f'(x)` in place: the
/// same values, and no fresh output to write.
///
/// # Panics
/// If `x` or `y` is shorter than `grad`.
pub(crate) fn unary_backward_in_place<E: FloatDtype, O: UnaryOp>(
    op: O,
    x: &[E],
    y: &[E],
    grad: &mut [E],
) {
    crate::cpu::for_each_chunk(grad, |(ch, g)| {
        let at = ch * crate::cpu::CHUNK;
        let (x, y) = (&x[at..at + g.len()], &y[at..at + g.len()]);
        crate::cpu::simd::vectorized(
            #[inline(always)]
            || {
                for ((g, &x), &y) in g.iter_mut().zip(x).zip(y) {
                    *g = E::from_acc(g.to_acc() * derivative(op, x, y));
                }
            },
        )
    });
}

/// `f'(x)` in the compute type, given `y = f(x)`: an op whose derivative
/// ignores `y` ([`UnaryOp::USES_Y`] false) is given `x` there, so its
/// saved output is never read.
#[inline(always)]
pub(crate) fn derivative<E: FloatDtype, O: UnaryOp>(op: O, x: E, y: E) -> E::Acc {
    let x = x.to_acc();
    op.df(x, if O::USES_Y { y.to_acc() } else { x })
}

macro_rules! unary_op {
    ($(#[$m:meta])* $name:ident, $text:literal, $code:literal, |$x:ident| $f:expr, |$dx:ident, _| $df:expr) => {
        unary_op!(@def $(#[$m])* $name, $text, $code, |$x| $f, |$dx, _y| $df, false);
    };
    ($(#[$m:meta])* $name:ident, $text:literal, $code:literal, |$x:ident| $f:expr, |$dx:ident, $dy:ident| $df:expr) => {
        unary_op!(@def $(#[$m])* $name, $text, $code, |$x| $f, |$dx, $dy| $df, true);
    };
    (@def $(#[$m:meta])* $name:ident, $text:literal, $code:literal, |$x:ident| $f:expr, |$dx:ident, $dy:ident| $df:expr, $uses_y:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default)]
        pub struct $name;
        impl UnaryOp for $name {
            const NAME: &'static str = $text;
            const USES_Y: bool = $uses_y;
            fn device_code(&self) -> Option<(i32, f64, f64)> {
                Some(($code, 0.0, 0.0))
            }
            #[inline(always)]
            fn f<A: Real>(&self, $x: A) -> A {
                $f
            }
            #[inline(always)]
            #[allow(unused_variables)]
            fn df<A: Real>(&self, $dx: A, $dy: A) -> A {
                $df
            }
        }
    };
}

fn c<A: Real>(v: f64) -> A {
    A::of_f64(v)
}

unary_op!(/// `-x`
    Neg, "neg", 0, |x| -x, |x, _| -A::one());
unary_op!(/// `|x|` (derivative `sign(x)`, 0 at 0 as in PyTorch)
    Abs, "abs", 1, |x| x.abs(), |x, _| if x > A::zero() { A::one() } else if x < A::zero() { -A::one() } else { A::zero() });
unary_op!(/// `e^x`
    Exp, "exp", 2, |x| x.fast_exp(), |x, y| y);
unary_op!(/// natural log
    Log, "log", 3, |x| x.fast_ln(), |x, _| x.recip());
unary_op!(/// `√x`
    Sqrt, "sqrt", 4, |x| x.sqrt(), |x, y| c::<A>(0.5) / y);
unary_op!(/// `1/√x`
    Rsqrt, "rsqrt", 5, |x| x.sqrt().recip(), |x, y| c::<A>(-0.5) * y * y * y);
unary_op!(/// sine
    Sin, "sin", 6, |x| x.fast_sin(), |x, _| x.fast_cos());
unary_op!(/// cosine
    Cos, "cos", 7, |x| x.fast_cos(), |x, _| -x.fast_sin());
unary_op!(/// hyperbolic tangent
    Tanh, "tanh", 8, |x| x.fast_tanh(), |x, y| A::one() - y * y);
unary_op!(/// logistic sigmoid `1/(1+e^-x)`
    Sigmoid, "sigmoid", 9, |x| sigmoid(x), |x, y| y * (A::one() - y));
unary_op!(/// `max(x, 0)` (derivative 0 at 0 as in PyTorch)
    Relu, "relu", 10, |x| if x > A::zero() { x } else { A::zero() }, |x, _| if x > A::zero() { A::one() } else { A::zero() });
unary_op!(/// GELU, exact form `x Φ(x)` with the error function
GeluErf, "gelu", 11, |x| c::<A>(0.5) * x * (A::one() + (x * c::<A>(core::f64::consts::FRAC_1_SQRT_2)).erf()),
|x, y| {
    // Φ(x) from the saved output `y = x Φ(x)` (no second `erf`: it was
    // half the backward's cost); below |x| = 1e-7, Φ(x) rounds to 1/2.
    // In f16/bf16, `y` was rounded to the dtype, so Φ(x) carries that
    // rounding: the same size as the gradient's own rounding to the dtype.
    let cdf = if x.abs() < c::<A>(1e-7) { c::<A>(0.5) } else { y / x };
    let pdf = (c::<A>(-0.5) * x * x).fast_exp() * c::<A>(0.398_942_280_401_432_7);
    cdf + x * pdf
});
unary_op!(/// GELU, tanh approximation (`gelu_pytorch_tanh`, GPT-2's `new_gelu`),
/// `x (1 + tanh u) / 2` with `u = √(2/π) (x + 0.044715 x³)`, computed as
/// the identical `x σ(2u)` with the sigmoid below: one exponential and a
/// division, which vectorize (a scalar `tanh` per value was ~20x slower in
/// f32).
GeluTanh, "gelu_tanh", 12, |x| x * sigmoid(c::<A>(2.0) * gelu_tanh_u(x)),
|x, _| {
    // d/dx x σ(2u) = σ + 2x σ (1 - σ) u', σ = σ(2u). Past |x| = 20 the
    // second term is 0 (σ is 0 or 1) and `x` is held there so that `u'`
    // stays finite (no 0 · ∞).
    let s = sigmoid(c::<A>(2.0) * gelu_tanh_u(x));
    let lim = c::<A>(20.0);
    let x = if x > lim { lim } else if x < -lim { -lim } else { x };
    let du = c::<A>(0.797_884_560_802_865_4) * (A::one() + c::<A>(3.0 * 0.044715) * x * x);
    s + c::<A>(2.0) * x * s * (A::one() - s) * du
});
unary_op!(/// SiLU / swish `x σ(x)`
    Silu, "silu", 13, |x| x * sigmoid(x), |x, _| { let s = sigmoid(x); s * (A::one() + x * (A::one() - s)) });
unary_op!(/// `x²`
    Square, "square", 14, |x| x * x, |x, _| c::<A>(2.0) * x);

/// `u = √(2/π) (x + 0.044715 x³)`, GELU's tanh argument: `(1 + tanh u) / 2
/// = σ(2u)`. Past `x ≈ -10`, `σ(2u)` is 0 (GELU's value `-0`, the
/// derivative 0), past `x ≈ 10` it is 1 (value `x`, derivative 1).
#[inline(always)]
fn gelu_tanh_u<A: Real>(x: A) -> A {
    c::<A>(0.797_884_560_802_865_4) * (x + c::<A>(0.044715) * x * x * x)
}

/// `1 / (1 + e^-x)`: one exponential and one division, no branch, so a
/// vectorized loop evaluates one form (two branches, `1 / (1 + e^-x)` and
/// `e^x / (1 + e^x)`, were both computed: f32, one thread, 0.73 -> 0.42
/// ns a value; SiLU 0.74 -> 0.43). Where `e^-x` overflows (x < -88.7) the
/// value is 0, against a true one below 2^-128.
#[inline(always)]
fn sigmoid<A: Real>(x: A) -> A {
    (A::one() + (-x).fast_exp()).recip()
}

/// `x^p` for a constant `p`.
#[derive(Clone, Copy, Debug)]
pub struct Powf(pub f64);
impl UnaryOp for Powf {
    const USES_Y: bool = false;
    const NAME: &'static str = "powf";
    fn device_code(&self) -> Option<(i32, f64, f64)> {
        Some((15, self.0, 0.0))
    }
    fn f<A: Real>(&self, x: A) -> A {
        x.powf(A::of_f64(self.0))
    }
    fn df<A: Real>(&self, x: A, _y: A) -> A {
        let p = A::of_f64(self.0);
        if self.0 == 0.0 {
            return A::zero();
        }
        p * x.powf(p - A::one())
    }
}

/// `min(max(x, lo), hi)`; derivative 1 where `lo <= x <= hi` (as in PyTorch).
#[derive(Clone, Copy, Debug)]
pub struct Clamp(pub f64, pub f64);
impl UnaryOp for Clamp {
    const USES_Y: bool = false;
    const NAME: &'static str = "clamp";
    fn device_code(&self) -> Option<(i32, f64, f64)> {
        Some((16, self.0, self.1))
    }
    fn f<A: Real>(&self, x: A) -> A {
        x.max(A::of_f64(self.0)).min(A::of_f64(self.1))
    }
    fn df<A: Real>(&self, x: A, _y: A) -> A {
        if x >= A::of_f64(self.0) && x <= A::of_f64(self.1) {
            A::one()
        } else {
            A::zero()
        }
    }
}

/// `x + c` for a constant `c`.
#[derive(Clone, Copy, Debug)]
pub struct AddScalar(pub f64);
impl UnaryOp for AddScalar {
    const USES_Y: bool = false;
    const NAME: &'static str = "add_scalar";
    fn device_code(&self) -> Option<(i32, f64, f64)> {
        Some((17, self.0, 0.0))
    }
    fn f<A: Real>(&self, x: A) -> A {
        x + A::of_f64(self.0)
    }
    fn df<A: Real>(&self, _x: A, _y: A) -> A {
        A::one()
    }
}

/// `x * c` for a constant `c`.
#[derive(Clone, Copy, Debug)]
pub struct MulScalar(pub f64);
impl UnaryOp for MulScalar {
    const USES_Y: bool = false;
    const NAME: &'static str = "mul_scalar";
    fn device_code(&self) -> Option<(i32, f64, f64)> {
        Some((18, self.0, 0.0))
    }
    fn f<A: Real>(&self, x: A) -> A {
        x * A::of_f64(self.0)
    }
    fn df<A: Real>(&self, _x: A, _y: A) -> A {
        A::of_f64(self.0)
    }
}

/// `c / x` for a constant `c`.
#[derive(Clone, Copy, Debug)]
pub struct ScalarDiv(pub f64);
impl UnaryOp for ScalarDiv {
    const USES_Y: bool = false;
    const NAME: &'static str = "scalar_div";
    fn device_code(&self) -> Option<(i32, f64, f64)> {
        Some((19, self.0, 0.0))
    }
    fn f<A: Real>(&self, x: A) -> A {
        A::of_f64(self.0) / x
    }
    fn df<A: Real>(&self, x: A, _y: A) -> A {
        -A::of_f64(self.0) / (x * x)
    }
}

/// `c ^ x` for a constant `c > 0`.
#[derive(Clone, Copy, Debug)]
pub struct ScalarPow(pub f64);
impl UnaryOp for ScalarPow {
    const NAME: &'static str = "scalar_pow";
    fn device_code(&self) -> Option<(i32, f64, f64)> {
        Some((20, self.0, 0.0))
    }
    fn f<A: Real>(&self, x: A) -> A {
        A::of_f64(self.0).powf(x)
    }
    fn df<A: Real>(&self, _x: A, y: A) -> A {
        y * A::of_f64(self.0).ln()
    }
}

/// `max(x, c)`; derivative 1 where `x > c`, ½ where equal (PyTorch's rule).
#[derive(Clone, Copy, Debug)]
pub struct MaxScalar(pub f64);
impl UnaryOp for MaxScalar {
    const USES_Y: bool = false;
    const NAME: &'static str = "maximum_scalar";
    fn device_code(&self) -> Option<(i32, f64, f64)> {
        Some((21, self.0, 0.0))
    }
    fn f<A: Real>(&self, x: A) -> A {
        x.max(A::of_f64(self.0))
    }
    fn df<A: Real>(&self, x: A, _y: A) -> A {
        tie_grad(x, A::of_f64(self.0))
    }
}

/// `min(x, c)`; derivative 1 where `x < c`, ½ where equal.
#[derive(Clone, Copy, Debug)]
pub struct MinScalar(pub f64);
impl UnaryOp for MinScalar {
    const USES_Y: bool = false;
    const NAME: &'static str = "minimum_scalar";
    fn device_code(&self) -> Option<(i32, f64, f64)> {
        Some((22, self.0, 0.0))
    }
    fn f<A: Real>(&self, x: A) -> A {
        x.min(A::of_f64(self.0))
    }
    fn df<A: Real>(&self, x: A, _y: A) -> A {
        tie_grad(A::of_f64(self.0), x)
    }
}

/// 1 if `a > b`, ½ if equal, 0 otherwise.
#[inline(always)]
pub fn tie_grad<A: Real>(a: A, b: A) -> A {
    if a > b {
        A::one()
    } else if a == b {
        A::of_f64(0.5)
    } else {
        A::zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each derivative against a central difference in f64.
    #[test]
    fn derivatives_match_finite_differences() {
        fn check<O: UnaryOp>(op: O, xs: &[f64]) {
            for &x in xs {
                let h = 1e-6;
                let fd = (op.f(x + h) - op.f(x - h)) / (2.0 * h);
                let an = op.df(x, op.f(x));
                assert!(
                    (fd - an).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{} at {x}: {fd} vs {an}",
                    O::NAME
                );
            }
        }
        let xs = [-2.3, -0.7, 0.3, 1.1, 2.9];
        let pos = [0.2, 0.9, 1.7, 3.1];
        check(Neg, &xs);
        check(Abs, &xs);
        check(Exp, &xs);
        check(Log, &pos);
        check(Sqrt, &pos);
        check(Rsqrt, &pos);
        check(Sin, &xs);
        check(Cos, &xs);
        check(Tanh, &xs);
        check(Sigmoid, &xs);
        check(Relu, &xs);
        check(GeluErf, &xs);
        check(GeluTanh, &xs);
        check(Silu, &xs);
        check(Square, &xs);
        check(Powf(2.5), &pos);
        check(Clamp(-1.0, 1.0), &xs);
        check(ScalarDiv(2.0), &pos);
        check(ScalarPow(1.7), &xs);
    }

    /// GELU's derivative takes `Φ(x)` from the saved output (`y / x`): in
    /// `f32`, within a few ulp of the textbook `Φ(x) + x φ(x)` in `f64`,
    /// at 0, tiny and subnormal inputs, and far into both tails.
    #[test]
    fn gelu_derivative_from_the_output() {
        let exact = |x: f64| {
            let cdf = 0.5 * (1.0 + libm::erf(x / core::f64::consts::SQRT_2));
            cdf + x * (-0.5 * x * x).exp() / (2.0 * core::f64::consts::PI).sqrt()
        };
        let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.004).collect();
        xs.extend([
            0.0, -0.0, 1e-8, -1e-8, 2e-7, -2e-7, 1e-40, -1e-40, 6.0, -6.0, 9.0, -9.0,
        ]);
        for x in xs {
            let got = GeluErf.df(x, GeluErf.f(x)) as f64;
            let want = exact(x as f64);
            // The forward's `1 + erf` loses digits for x < 0 (as PyTorch's
            // does); measured against the derivative's scale, not its value.
            assert!(
                (got - want).abs() <= 2e-6 * want.abs().max(1e-1),
                "gelu'({x}): {got} vs {want}"
            );
        }
    }

    /// GELU's tanh form, computed as `x σ(2u)`, against the textbook
    /// `x (1 + tanh u) / 2` and its derivative in `f64`: in `f32` within a
    /// few ulp of the value's scale, from deep in the negative tail (where
    /// the value is `-0` or tiny) to far past the positive one.
    #[test]
    fn gelu_tanh_matches_the_tanh_form() {
        let k = (2.0 / core::f64::consts::PI).sqrt();
        let exact = |x: f64| {
            let u = k * (x + 0.044715 * x * x * x);
            let du = k * (1.0 + 3.0 * 0.044715 * x * x);
            let t = u.tanh();
            if 1.0 + t > 1e-3 {
                (
                    0.5 * x * (1.0 + t),
                    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du,
                )
            } else {
                // Where `1 + tanh u` cancels even in f64, the same
                // function as `(1 + tanh u) / 2 = 1 / (1 + e^(-2u))`.
                let h = 1.0 / (1.0 + (-2.0 * u).exp());
                (x * h, h + 2.0 * x * h * (1.0 - h) * du)
            }
        };
        let mut xs: Vec<f32> = (-3000..=3000).map(|i| i as f32 * 0.005).collect();
        xs.extend([
            0.0, -0.0, 1e-8, -1e-8, 1e-40, 30.0, -30.0, 200.0, -200.0, 1e30, -1e30,
        ]);
        for x in xs {
            let (want, dwant) = exact(x as f64);
            let (got, dgot) = (GeluTanh.f(x) as f64, GeluTanh.df(x, 0.0) as f64);
            // `u` rounded to f32 (a few half-ulp, ~1e-7 |u|) moves the
            // value by up to 2 |u| times that, relative, in the negative
            // tail; at most 1e-37 away where it leaves f32's normal range.
            let u = (k * (x as f64 + 0.044715 * (x as f64).powi(3))).abs();
            let rel = 2.5e-7 * (1.0 + 2.0 * u.min(1e3));
            assert!(
                (got - want).abs() <= rel * want.abs() + 1e-37,
                "gelu_tanh({x}): {got} vs {want}"
            );
            assert!(
                (dgot - dwant).abs() <= 4.0 * rel * dwant.abs().max(1e-1),
                "gelu_tanh'({x}): {dgot} vs {dwant}"
            );
        }
        // f64 agrees with the tanh form to rounding.
        for i in -150..=400 {
            let x = i as f64 * 0.02;
            let (want, dwant) = exact(x);
            assert!(
                (GeluTanh.f(x) - want).abs() <= 1e-15 * want.abs().max(1.0),
                "{x}"
            );
            assert!(
                (GeluTanh.df(x, 0.0) - dwant).abs() <= 1e-14 * dwant.abs().max(1.0),
                "{x}"
            );
        }
    }

    /// An op that says its derivative ignores `y` really does: the backward
    /// pass then never reads the saved output.
    #[test]
    fn ops_without_y_ignore_it() {
        fn check<O: UnaryOp>(op: O) {
            assert!(!O::USES_Y, "{}", O::NAME);
            for x in [-2.3f64, -0.7, 0.3, 1.1, 2.9] {
                let want = op.df(x, op.f(x));
                assert_eq!(op.df(x, 12345.0).to_bits(), want.to_bits(), "{}", O::NAME);
            }
        }
        check(Neg);
        check(Abs);
        check(Log);
        check(Sin);
        check(Cos);
        check(Relu);
        check(GeluTanh);
        check(Silu);
        check(Square);
        check(Powf(2.5));
        check(Clamp(-1.0, 1.0));
        check(AddScalar(0.5));
        check(MulScalar(-3.0));
        check(ScalarDiv(2.0));
        check(MaxScalar(0.3));
        check(MinScalar(0.3));
        const { assert!(!GeluTanh::USES_Y && Tanh::USES_Y && Exp::USES_Y && Sigmoid::USES_Y) };
        const { assert!(GeluErf::USES_Y) };
    }

    /// Both backward paths (with and without the saved output) against
    /// `grad_y * df(x, y)` element by element, on a transposed input.
    #[test]
    fn backward_matches_elementwise_on_any_layout() {
        fn check<O: UnaryOp>(op: O) {
            let (r, c) = (67, 129);
            let x: Vec<f32> = (0..r * c)
                .map(|i| ((i * 37) % 401) as f32 / 80.0 - 2.5)
                .collect();
            let mut lx = Layout::contiguous(&[r, c]);
            lx.swap_axes(0, 1);
            let y = unary_forward(op, &x, &lx);
            let g: Vec<f32> = (0..r * c)
                .map(|i| ((i * 11) % 17) as f32 / 8.0 - 1.0)
                .collect();
            let got = unary_backward(op, &x, &lx, &y, &g);
            for i in 0..c {
                for j in 0..r {
                    let k = i * r + j;
                    let xv = x[j * c + i];
                    let want = g[k] * op.df(xv, y[k]);
                    assert_eq!(got[k].to_bits(), want.to_bits(), "{} at {i},{j}", O::NAME);
                }
            }
        }
        check(GeluErf);
        check(Tanh);
        check(Relu);
        check(Sigmoid);
    }

    #[test]
    fn sigmoid_is_stable_at_extremes() {
        assert_eq!(Sigmoid.f(-1e4f32), 0.0);
        assert_eq!(Sigmoid.f(1e4f32), 1.0);
    }

    /// Sigmoid and SiLU in f32 within a few ulp of f64 from deep in the
    /// negative tail (values down to ~1e-38) to saturation, NaN kept.
    #[test]
    fn sigmoid_and_silu_are_within_a_few_ulp() {
        use crate::fastmath::tests::ulps;
        let (mut ws, mut wl) = (0f64, 0f64);
        for i in -87_000..=20_000 {
            let x = i as f32 * 1e-3;
            let s = 1.0 / (1.0 + (-(x as f64)).exp());
            ws = ws.max(ulps(Sigmoid.f(x), s));
            wl = wl.max(ulps(Silu.f(x), x as f64 * s));
        }
        assert!(ws <= 3.0 && wl <= 4.0, "sigmoid {ws} ulp, silu {wl} ulp");
        assert!(Sigmoid.f(f32::NAN).is_nan() && Silu.f(f32::NAN).is_nan());
        assert_eq!(Sigmoid.f(0.0f32), 0.5);
    }
}
