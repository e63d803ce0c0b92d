//! The element types a tensor can hold, behind one [`Dtype`] trait.

use core::fmt::{Debug, Display};
use core::iter::Sum;
use core::ops::{AddAssign, MulAssign};

use half::{bf16, f16};
use num_traits::{Float, FromPrimitive};

use crate::f8::{F8E4M3, F8E5M2};

/// The runtime name of an element type (what a checkpoint or an error message shows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 8-bit float, 4 exponent bits, 3 mantissa bits, no infinities (`torch.float8_e4m3fn`).
    F8E4M3,
    /// 8-bit float, 5 exponent bits, 2 mantissa bits (`torch.float8_e5m2`).
    F8E5M2,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// 64-bit signed integer (token ids).
    I64,
    /// 32-bit unsigned integer (indices).
    U32,
    /// Boolean (masks).
    Bool,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F8E4M3 | DType::F8E5M2 | DType::Bool => 1,
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::U32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        !matches!(self, DType::I64 | DType::U32 | DType::Bool)
    }
}

impl Display for DType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            DType::F8E4M3 => "f8e4m3",
            DType::F8E5M2 => "f8e5m2",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::U32 => "u32",
            DType::Bool => "bool",
        };
        f.write_str(s)
    }
}

/// An element stored as its plain bit pattern: no padding, no pointers, its
/// size is its [`DType::size_in_bytes`], so devices copy it as bytes.
///
/// Sealed: implemented exactly for the element types of this crate (the
/// [`DType`] list), which is what lets device storage (a GPU buffer) hold
/// any [`Dtype`] soundly.
pub trait PlainData: sealed::Sealed + Copy + Default + Send + Sync + 'static {
    /// The storage type's name in device kernel source (`float`, `zf_bf16`, ...).
    const C_TYPE: &'static str;
}

mod sealed {
    /// Only this crate's element types.
    pub trait Sealed {}
}

macro_rules! plain_data {
    ($($t:ty = $c:expr),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl PlainData for $t {
            const C_TYPE: &'static str = $c;
        }
    )*};
}
plain_data!(
    f32 = "float",
    f64 = "double",
    f16 = "zf_f16",
    bf16 = "zf_bf16",
    F8E4M3 = "zf_f8e4m3",
    F8E5M2 = "zf_f8e5m2",
    u32 = "u32",
    i64 = "i64",
    bool = "bool",
);

/// An element type a tensor can hold (sealed through [`PlainData`]: the
/// types of the [`DType`] list).
pub trait Dtype:
    PlainData + Copy + Clone + Send + Sync + Debug + Default + PartialEq + PartialOrd + 'static
{
    /// The runtime name of this type.
    const DTYPE: DType;
    /// Converts to `f64` (exact for every type here but `i64` beyond 2^53).
    fn to_f64(self) -> f64;
    /// Converts from `f64`, rounding to nearest (ties to even) for floats,
    /// truncating toward zero and saturating for integers.
    fn from_f64(v: f64) -> Self;
}

/// The arithmetic type kernels compute in: `f32` or `f64`.
pub trait Real:
    PlainData
    + Float
    + FromPrimitive
    + Send
    + Sync
    + Debug
    + Display
    + Default
    + AddAssign
    + MulAssign
    + Sum
    + 'static
{
    /// The error function (`f32`: branch-free, within 8 ulp, see
    /// [`crate::fastmath::erf_f32`]; `f64`: libm).
    fn erf(self) -> Self;
    /// `e^x` for kernel loops (`f32`: branch-free so loops vectorize, within
    /// 2 ulp, see [`crate::fastmath::exp_f32`]; `f64`: libm's `exp`).
    fn fast_exp(self) -> Self;
    /// `ln x` for kernel loops (`f32`: branch-free so loops vectorize, within
    /// 2 ulp, see [`crate::fastmath::ln_f32`]; `f64`: libm's `log`).
    fn fast_ln(self) -> Self;
    /// `sin x` for kernel loops (`f32`: branch-free so loops vectorize,
    /// within 2 ulp for |x| < 1e14, see [`crate::fastmath::sin_f32`]; `f64`:
    /// libm's `sin`).
    fn fast_sin(self) -> Self;
    /// `cos x` for kernel loops (as [`Real::fast_sin`]).
    fn fast_cos(self) -> Self;
    /// `tanh x` for kernel loops (`f32`: branch-free so loops vectorize,
    /// within 2 ulp, see [`crate::fastmath::tanh_f32`]; `f64`: libm's `tanh`).
    fn fast_tanh(self) -> Self;
    /// Converts to `f64`.
    fn as_f64(self) -> f64;
    /// Converts from `f64` (rounding to nearest).
    fn of_f64(v: f64) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn erf(self) -> Self {
        crate::fastmath::erf_f32(self)
    }
    #[inline(always)]
    fn fast_exp(self) -> Self {
        crate::fastmath::exp_f32(self)
    }
    #[inline(always)]
    fn fast_ln(self) -> Self {
        crate::fastmath::ln_f32(self)
    }
    #[inline(always)]
    fn fast_sin(self) -> Self {
        crate::fastmath::sin_f32(self)
    }
    #[inline(always)]
    fn fast_cos(self) -> Self {
        crate::fastmath::cos_f32(self)
    }
    #[inline(always)]
    fn fast_tanh(self) -> Self {
        crate::fastmath::tanh_f32(self)
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
    fn of_f64(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    fn erf(self) -> Self {
        libm::erf(self)
    }
    #[inline(always)]
    fn fast_exp(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn fast_ln(self) -> Self {
        self.ln()
    }
    #[inline(always)]
    fn fast_sin(self) -> Self {
        self.sin()
    }
    #[inline(always)]
    fn fast_cos(self) -> Self {
        self.cos()
    }
    #[inline(always)]
    fn fast_tanh(self) -> Self {
        self.tanh()
    }
    fn as_f64(self) -> f64 {
        self
    }
    fn of_f64(v: f64) -> Self {
        v
    }
}

/// A floating-point element type. Kernels convert to [`FloatDtype::Acc`],
/// compute there, and round once on store.
pub trait FloatDtype: Dtype {
    /// What this type computes and accumulates in (`f32` for f8/f16/bf16/f32, `f64` for f64).
    type Acc: Real + Dtype;
    /// Widens to the compute type.
    fn to_acc(self) -> Self::Acc;
    /// Rounds from the compute type (to nearest, ties to even).
    fn from_acc(a: Self::Acc) -> Self;
    /// Converts from `f32`, rounding to nearest (ties to even).
    fn from_f32(v: f32) -> Self;
    /// Converts to `f32`.
    fn to_f32(self) -> f32;
}

/// An integer element type (token ids, indices).
pub trait IntDtype: Dtype + Eq + core::hash::Hash {
    /// Converts to an index; `None` if negative or too large.
    fn to_index(self) -> Option<usize>;
    /// Converts from an index (saturating).
    fn from_index(i: usize) -> Self;
}

macro_rules! float_via_f32 {
    ($t:ty, $d:expr, $from:expr, $to:expr) => {
        impl Dtype for $t {
            const DTYPE: DType = $d;
            #[inline(always)]
            fn to_f64(self) -> f64 {
                let f: fn($t) -> f32 = $to;
                f(self) as f64
            }
            fn from_f64(v: f64) -> Self {
                // Double rounding through f32 can differ from direct rounding
                // only for values that are exact ties after the first rounding;
                // round directly where the type offers it.
                <$t as FromF64Exact>::from_f64_exact(v)
            }
        }
        impl FloatDtype for $t {
            type Acc = f32;
            #[inline(always)]
            fn to_acc(self) -> f32 {
                let f: fn($t) -> f32 = $to;
                f(self)
            }
            #[inline(always)]
            fn from_acc(a: f32) -> Self {
                let f: fn(f32) -> $t = $from;
                f(a)
            }
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                let f: fn(f32) -> $t = $from;
                f(v)
            }
            #[inline(always)]
            fn to_f32(self) -> f32 {
                let f: fn($t) -> f32 = $to;
                f(self)
            }
        }
    };
}

/// Correctly rounded conversion from `f64` (to nearest, ties to even).
trait FromF64Exact {
    fn from_f64_exact(v: f64) -> Self;
}

/// Rounds `v` to `f32` toward zero and sets the last mantissa bit when the
/// result is inexact ("round to odd"). Rounding that `f32` to nearest-even
/// in any format with at least two fewer mantissa bits (f16: 11, bf16: 8,
/// f32: 24) gives exactly the correctly rounded value of `v`.
///
/// `half`'s own `f16::from_f64` / `bf16::from_f64` are not correctly
/// rounded: they drop the low 32 mantissa bits of the `f64` (or go through
/// `f32` with round-to-nearest), so e.g. `1 + 2^-8 + 2^-40` became the tie
/// `1 + 2^-8` and rounded down to bf16 `1.0` instead of up.
pub(crate) fn f64_to_f32_round_odd(v: f64) -> f32 {
    let r = v as f32;
    if v.is_nan() || r as f64 == v {
        return r;
    }
    let mut bits = r.to_bits();
    if (r as f64).abs() > v.abs() {
        // `as` rounded away from zero (possibly to infinity): step back.
        bits -= 1;
    }
    f32::from_bits(bits | 1)
}
impl FromF64Exact for f16 {
    fn from_f64_exact(v: f64) -> Self {
        f16::from_f32(f64_to_f32_round_odd(v))
    }
}
impl FromF64Exact for bf16 {
    fn from_f64_exact(v: f64) -> Self {
        bf16::from_f32(f64_to_f32_round_odd(v))
    }
}
impl FromF64Exact for f32 {
    fn from_f64_exact(v: f64) -> Self {
        v as f32
    }
}
impl FromF64Exact for F8E4M3 {
    fn from_f64_exact(v: f64) -> Self {
        F8E4M3::from_f64(v)
    }
}
impl FromF64Exact for F8E5M2 {
    fn from_f64_exact(v: f64) -> Self {
        F8E5M2::from_f64(v)
    }
}

float_via_f32!(f16, DType::F16, f16::from_f32, f16::to_f32);
float_via_f32!(bf16, DType::BF16, bf16::from_f32, bf16::to_f32);
float_via_f32!(f32, DType::F32, |x| x, |x| x);
float_via_f32!(F8E4M3, DType::F8E4M3, F8E4M3::from_f32, F8E4M3::to_f32);
float_via_f32!(F8E5M2, DType::F8E5M2, F8E5M2::from_f32, F8E5M2::to_f32);

impl Dtype for f64 {
    const DTYPE: DType = DType::F64;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

impl FloatDtype for f64 {
    type Acc = f64;
    #[inline(always)]
    fn to_acc(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_acc(a: f64) -> Self {
        a
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v as f64
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
}

impl Dtype for i64 {
    const DTYPE: DType = DType::I64;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as i64
    }
}

impl IntDtype for i64 {
    fn to_index(self) -> Option<usize> {
        usize::try_from(self).ok()
    }
    fn from_index(i: usize) -> Self {
        i64::try_from(i).unwrap_or(i64::MAX)
    }
}

impl Dtype for u32 {
    const DTYPE: DType = DType::U32;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as u32
    }
}

impl IntDtype for u32 {
    fn to_index(self) -> Option<usize> {
        usize::try_from(self).ok()
    }
    fn from_index(i: usize) -> Self {
        u32::try_from(i).unwrap_or(u32::MAX)
    }
}

/// Masks: `true` is 1, `false` is 0; `from_f64` is `v != 0` (NaN is `true`).
/// Not a [`FloatDtype`] nor an [`IntDtype`].
impl Dtype for bool {
    const DTYPE: DType = DType::Bool;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        if self {
            1.0
        } else {
            0.0
        }
    }
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_precision_round_trips_through_acc() {
        assert_eq!(bf16::from_acc(1.0f32.to_acc()).to_f32(), 1.0);
        assert_eq!(f16::from_f64(0.1).to_f64(), f16::from_f32(0.1).to_f64());
        assert_eq!(<f64 as FloatDtype>::from_acc(2.5), 2.5);
    }

    #[test]
    fn f64_rounds_once_to_half_types() {
        let tiny = 2f64.powi(-40);
        // exact ties go to even; anything past them, however far below f32's
        // precision, decides the rounding
        assert_eq!(
            <bf16 as Dtype>::from_f64(1.0 + 2f64.powi(-8)).to_bits(),
            0x3F80
        );
        assert_eq!(
            <bf16 as Dtype>::from_f64(1.0 + 2f64.powi(-8) + tiny).to_bits(),
            0x3F81
        );
        assert_eq!(
            <f16 as Dtype>::from_f64(1.0 + 2f64.powi(-11)).to_bits(),
            0x3C00
        );
        assert_eq!(
            <f16 as Dtype>::from_f64(1.0 + 2f64.powi(-11) + tiny).to_bits(),
            0x3C01
        );
        assert_eq!(
            <f16 as Dtype>::from_f64(-(1.0 + 2f64.powi(-11) + tiny)).to_bits(),
            0xBC01
        );
        // an f32 value whose lowest bits break a bf16 tie
        let x = f32::from_bits(0x3700_8001) as f64;
        assert_eq!(<bf16 as Dtype>::from_f64(x).to_bits(), 0x3701);
        // overflow, underflow, specials
        assert_eq!(<bf16 as Dtype>::from_f64(1e300).to_bits(), 0x7F80);
        assert_eq!(<f16 as Dtype>::from_f64(65519.99).to_bits(), 0x7BFF);
        assert_eq!(<f16 as Dtype>::from_f64(65520.0).to_bits(), 0x7C00);
        assert_eq!(<bf16 as Dtype>::from_f64(-1e-300).to_bits(), 0x8000);
        assert_eq!(
            <f16 as Dtype>::from_f64(2f64.powi(-25) * (1.0 + tiny)).to_bits(),
            1
        );
        assert!(<f16 as Dtype>::from_f64(f64::NAN).is_nan());
        assert_eq!(f64_to_f32_round_odd(f64::INFINITY), f32::INFINITY);
        assert_eq!(f64_to_f32_round_odd(1e300), f32::MAX);
    }

    #[test]
    fn integer_indices_reject_negative() {
        assert_eq!((-1i64).to_index(), None);
        assert_eq!(7u32.to_index(), Some(7));
    }

    #[test]
    fn bool_is_a_one_byte_non_float_dtype() {
        assert_eq!(bool::DTYPE.size_in_bytes(), 1);
        assert!(!DType::Bool.is_float());
        assert_eq!(DType::Bool.to_string(), "bool");
        assert!(bool::from_f64(2.0) && !bool::from_f64(0.0));
        assert_eq!(true.to_f64(), 1.0);
    }
}
