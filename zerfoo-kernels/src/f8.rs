//! 8-bit floats with PyTorch's semantics: `F8E4M3` (`torch.float8_e4m3fn`)
//! and `F8E5M2` (`torch.float8_e5m2`).
//!
//! Conversions round to nearest, ties to even. E4M3FN has no infinity:
//! anything beyond ±448 (and ±inf) saturates to ±448. E5M2 overflows to ±inf.
//! NaN becomes the pattern `0x7F` in both.

use core::fmt;

/// Parameters of one 8-bit float format.
struct Format {
    mantissa_bits: u32,
    bias: i32,
    /// Largest finite value.
    max_finite: f64,
    /// Whether the all-ones exponent encodes inf/NaN (IEEE style, E5M2)
    /// or ordinary numbers (E4M3FN, where only `S.1111.111` is NaN).
    ieee_specials: bool,
}

const E4M3: Format = Format {
    mantissa_bits: 3,
    bias: 7,
    max_finite: 448.0,
    ieee_specials: false,
};

const E5M2: Format = Format {
    mantissa_bits: 2,
    bias: 15,
    max_finite: 57344.0,
    ieee_specials: true,
};

const NAN_BITS: u8 = 0x7F;

impl Format {
    fn decode(&self, bits: u8) -> f64 {
        let sign = if bits & 0x80 != 0 { -1.0 } else { 1.0 };
        let exp_bits = 7 - self.mantissa_bits;
        let exp_max = (1u32 << exp_bits) - 1;
        let mant_mask = (1u32 << self.mantissa_bits) - 1;
        let e = ((bits as u32) >> self.mantissa_bits) & exp_max;
        let m = (bits as u32) & mant_mask;
        if self.ieee_specials && e == exp_max {
            return if m == 0 {
                sign * f64::INFINITY
            } else {
                f64::NAN
            };
        }
        if !self.ieee_specials && e == exp_max && m == mant_mask {
            return f64::NAN;
        }
        let scale = (1u32 << self.mantissa_bits) as f64;
        let value = if e == 0 {
            (m as f64 / scale) * 2f64.powi(1 - self.bias)
        } else {
            (1.0 + m as f64 / scale) * 2f64.powi(e as i32 - self.bias)
        };
        sign * value
    }

    fn encode(&self, x: f64) -> u8 {
        if x.is_nan() {
            return NAN_BITS;
        }
        let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
        let a = x.abs();
        let overflow = |s: u8| {
            if self.ieee_specials {
                // infinity: all-ones exponent, zero mantissa
                s | (0x7F & !((1u8 << self.mantissa_bits) - 1))
            } else {
                // saturate to the largest finite value
                s | self.encode_finite(self.max_finite)
            }
        };
        if a.is_infinite() {
            return overflow(sign);
        }
        let min_normal_exp = 1 - self.bias;
        let exp = if a == 0.0 {
            min_normal_exp
        } else {
            (binary_exponent(a)).max(min_normal_exp)
        };
        let quantum = 2f64.powi(exp - self.mantissa_bits as i32);
        let rounded = (a / quantum).round_ties_even() * quantum;
        if rounded > self.max_finite {
            return overflow(sign);
        }
        sign | self.encode_finite(rounded)
    }

    /// Bits of a non-negative value that is exactly representable.
    fn encode_finite(&self, r: f64) -> u8 {
        let min_normal_exp = 1 - self.bias;
        let scale = (1u32 << self.mantissa_bits) as f64;
        if r < 2f64.powi(min_normal_exp) {
            let m = (r / 2f64.powi(min_normal_exp) * scale) as u8;
            return m;
        }
        let e = binary_exponent(r);
        let m = ((r / 2f64.powi(e) - 1.0) * scale) as u8;
        (((e + self.bias) as u8) << self.mantissa_bits) | m
    }
}

/// `floor(log2(a))` for a positive, finite, normal `f64`.
fn binary_exponent(a: f64) -> i32 {
    ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023
}

macro_rules! f8_type {
    ($name:ident, $fmt:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
        #[repr(transparent)]
        pub struct $name(pub u8);

        impl $name {
            /// The value with these bits.
            pub const fn from_bits(bits: u8) -> Self {
                Self(bits)
            }
            /// The bit pattern.
            pub const fn to_bits(self) -> u8 {
                self.0
            }
            /// Rounds an `f32` to nearest (ties to even).
            pub fn from_f32(x: f32) -> Self {
                Self($fmt.encode(x as f64))
            }
            /// Rounds an `f64` to nearest (ties to even), without going through `f32`.
            pub fn from_f64(x: f64) -> Self {
                Self($fmt.encode(x))
            }
            /// The exact value as `f32`.
            pub fn to_f32(self) -> f32 {
                $fmt.decode(self.0) as f32
            }
            /// Whether this is a NaN pattern.
            pub fn is_nan(self) -> bool {
                $fmt.decode(self.0).is_nan()
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
                self.to_f32().partial_cmp(&other.to_f32())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.to_f32(), f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.to_f32(), f)
            }
        }
    };
}

f8_type!(
    F8E4M3,
    E4M3,
    "An 8-bit float with 4 exponent and 3 mantissa bits and no infinities (`float8_e4m3fn`). Largest value ±448.\n\n```\nuse zerfoo_kernels::F8E4M3;\nassert_eq!(F8E4M3::from_f32(1000.0).to_f32(), 448.0);\n```"
);
f8_type!(
    F8E5M2,
    E5M2,
    "An 8-bit float with 5 exponent and 2 mantissa bits (`float8_e5m2`). Largest finite value ±57344.\n\n```\nuse zerfoo_kernels::F8E5M2;\nassert!(F8E5M2::from_f32(1e6).to_f32().is_infinite());\n```"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(F8E4M3::from_f32(1.0).0, 0x38);
        assert_eq!(F8E4M3::from_f32(448.0).0, 0x7E);
        assert_eq!(F8E4M3::from_f32(f32::INFINITY).0, 0x7E);
        assert_eq!(F8E4M3::from_f32(f32::NEG_INFINITY).0, 0xFE);
        assert_eq!(F8E4M3::from_f32(f32::NAN).0, 0x7F);
        assert_eq!(F8E5M2::from_f32(f32::INFINITY).0, 0x7C);
        assert_eq!(F8E5M2::from_f32(1.0).0, 0x3C);
        // smallest subnormals
        assert_eq!(F8E4M3::from_bits(1).to_f32(), 2f32.powi(-9));
        assert_eq!(F8E5M2::from_bits(1).to_f32(), 2f32.powi(-16));
    }

    #[test]
    fn every_finite_pattern_round_trips() {
        for bits in 0..=255u8 {
            let a = F8E4M3::from_bits(bits);
            if !a.is_nan() {
                let back = F8E4M3::from_f32(a.to_f32()).0;
                // -0 and +0 keep their sign
                assert_eq!(back, bits, "e4m3 {bits:#x}");
            }
            let b = F8E5M2::from_bits(bits);
            if !b.is_nan() {
                assert_eq!(F8E5M2::from_f32(b.to_f32()).0, bits, "e5m2 {bits:#x}");
            }
        }
    }
}
