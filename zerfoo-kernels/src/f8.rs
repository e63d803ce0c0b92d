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
    /// The pattern of `max_finite`.
    max_bits: u8,
}

const E4M3: Format = Format {
    mantissa_bits: 3,
    bias: 7,
    max_finite: 448.0,
    ieee_specials: false,
    max_bits: 0x7E,
};

const E5M2: Format = Format {
    mantissa_bits: 2,
    bias: 15,
    max_finite: 57344.0,
    ieee_specials: true,
    max_bits: 0x7B,
};

const NAN_BITS: u8 = 0x7F;

impl Format {
    /// The value of `bits`, in `f64` arithmetic: the reference that the
    /// table ([`Format::table`]) is checked against.
    #[cfg(test)]
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

    /// The bits of the `f32` with the value of `bits` (a NaN pattern gives
    /// a quiet NaN): [`decode`](Format::decode) in integer arithmetic, so
    /// that it can fill a table at compile time.
    const fn f32_bits(&self, bits: u8) -> u32 {
        let sign = ((bits as u32) >> 7) << 31;
        let mb = self.mantissa_bits;
        let exp_max = (1u32 << (7 - mb)) - 1;
        let mant_mask = (1u32 << mb) - 1;
        let e = ((bits as u32) >> mb) & exp_max;
        let m = (bits as u32) & mant_mask;
        let nan = 0x7FC0_0000;
        if self.ieee_specials && e == exp_max {
            return if m == 0 { sign | 0x7F80_0000 } else { nan };
        }
        if !self.ieee_specials && e == exp_max && m == mant_mask {
            return nan;
        }
        if e == 0 {
            if m == 0 {
                return sign;
            }
            // m · 2^(1 - bias - mb): normalize around m's highest bit `p`.
            let p = 31 - m.leading_zeros();
            let exp = p as i32 + 1 - self.bias - mb as i32;
            let frac = (m - (1 << p)) << (23 - p);
            return sign | (((exp + 127) as u32) << 23) | frac;
        }
        let exp = e as i32 - self.bias;
        sign | (((exp + 127) as u32) << 23) | (m << (23 - mb))
    }

    /// Every pattern's value as `f32`.
    const fn table(&self) -> [f32; 256] {
        let mut t = [0f32; 256];
        let mut b = 0;
        while b < 256 {
            t[b] = f32::from_bits(self.f32_bits(b as u8));
            b += 1;
        }
        t
    }

    /// [`encode`](Format::encode) of an `f32`, in integer arithmetic: the
    /// same bits (an `f32` widens to `f64` exactly), without the `f64`
    /// powers, and without branches (selects only), so that a loop
    /// narrowing a product's results vectorizes.
    #[inline(always)]
    fn encode_f32(&self, x: f32) -> u8 {
        let bits = x.to_bits();
        let sign = (bits >> 24) & 0x80;
        let a = bits & 0x7FFF_FFFF;
        let mb = self.mantissa_bits as i32;
        // `a` is sig · 2^(exp - 23) with sig < 2^24 (an f32 subnormal as
        // exponent -126 without the implicit bit).
        let (biased, frac) = ((a >> 23) as i32, a & 0x7F_FFFF);
        let subnormal = biased == 0;
        let exp = if subnormal { -126 } else { biased - 127 };
        let sig = if subnormal { frac } else { frac | 0x80_0000 };
        // Counted in quanta of the target's binade (the subnormals share
        // the lowest normal binade's quantum), rounded to nearest even. A
        // shift of 31 or more leaves nothing (sig < 2^24 < half).
        let emin = 1 - self.bias;
        let binade = exp.max(emin);
        let shift = ((binade - mb - (exp - 23)) as u32).min(31);
        let (r, rem) = (sig >> shift, sig & ((1u32 << shift) - 1));
        let half = 1u32 << (shift - 1);
        let q = r + u32::from((rem > half) | ((rem == half) & (r & 1 == 1)));
        // Binade `emin + j` starts at pattern `j << mb`; a carry out of
        // the mantissa lands on the next binade's first pattern.
        let out = (((binade - emin) as u32) << mb) + q;
        let max = self.max_bits as u32;
        // Past the largest finite pattern (and at infinity): infinity, or
        // the largest finite value where there is none.
        let overflow = if self.ieee_specials { max + 1 } else { max };
        let out = if out > max || a >= 0x7F80_0000 {
            overflow
        } else {
            out
        };
        (if a > 0x7F80_0000 {
            NAN_BITS as u32
        } else {
            out | sign
        }) as u8
    }
}

/// Every E4M3FN pattern's value.
static E4M3_VALUES: [f32; 256] = E4M3.table();
/// Every E5M2 pattern's value.
static E5M2_VALUES: [f32; 256] = E5M2.table();

/// `floor(log2(a))` for a positive, finite, normal `f64`.
fn binary_exponent(a: f64) -> i32 {
    ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023
}

macro_rules! f8_type {
    ($name:ident, $fmt:expr, $values:expr, $doc:literal) => {
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
            #[inline]
            pub fn from_f32(x: f32) -> Self {
                Self($fmt.encode_f32(x))
            }
            /// Rounds an `f64` to nearest (ties to even), without going through `f32`.
            pub fn from_f64(x: f64) -> Self {
                Self($fmt.encode(x))
            }
            /// The exact value as `f32` (a table lookup).
            #[inline]
            pub fn to_f32(self) -> f32 {
                $values[self.0 as usize]
            }
            /// Whether this is a NaN pattern.
            pub fn is_nan(self) -> bool {
                self.to_f32().is_nan()
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
    E4M3_VALUES,
    "An 8-bit float with 4 exponent and 3 mantissa bits and no infinities (`float8_e4m3fn`). Largest value ±448.\n\n```\nuse zerfoo_kernels::F8E4M3;\nassert_eq!(F8E4M3::from_f32(1000.0).to_f32(), 448.0);\n```"
);
f8_type!(
    F8E5M2,
    E5M2,
    E5M2_VALUES,
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

    /// The tables `to_f32` reads hold the reference decoding of every
    /// pattern, bit for bit (NaN for NaN).
    #[test]
    fn value_tables_match_the_reference_decoding() {
        for (fmt, table) in [(&E4M3, &E4M3_VALUES), (&E5M2, &E5M2_VALUES)] {
            for bits in 0..=255u8 {
                let (got, want) = (table[bits as usize], fmt.decode(bits));
                if want.is_nan() {
                    assert!(got.is_nan(), "{bits:#04x}: {got}");
                } else {
                    assert_eq!(got.to_bits(), (want as f32).to_bits(), "{bits:#04x}");
                }
            }
        }
    }

    /// The integer `f32` rounding gives the reference (`f64`) rounding's
    /// bits: at every tie between neighbouring patterns and one `f32` step
    /// either side of it, at every pattern's value, around the overflow,
    /// for the special values and for a million random bit patterns.
    #[test]
    fn f32_rounding_matches_the_reference() {
        let check = |fmt: &Format, x: f32| {
            let (got, want) = (fmt.encode_f32(x), fmt.encode(x as f64));
            assert_eq!(
                got,
                want,
                "{x:e} ({:#010x}): {got:#04x} vs {want:#04x}",
                x.to_bits()
            );
        };
        let around = |x: f32| {
            let b = x.to_bits();
            [
                f32::from_bits(b.saturating_sub(1)),
                x,
                f32::from_bits(b + 1),
            ]
        };
        for (fmt, table) in [(&E4M3, &E4M3_VALUES), (&E5M2, &E5M2_VALUES)] {
            let finite: Vec<f32> = table[..128]
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            // Past the largest finite value: where it would round on.
            let max = fmt.max_finite as f32;
            let next = max + (max - finite[finite.len() - 2]);
            for w in finite.windows(2).chain([[max, next].as_slice()]) {
                let tie = (w[0] + w[1]) / 2.0; // exact: two more bits at most
                for x in around(tie).into_iter().chain(around(w[0])) {
                    check(fmt, x);
                    check(fmt, -x);
                }
            }
            for x in [
                0.0,
                f32::MIN_POSITIVE,
                f32::from_bits(1),
                f32::MAX,
                f32::INFINITY,
                f32::NAN,
                1e-30,
                3e38,
            ] {
                check(fmt, x);
                check(fmt, -x);
            }
            let mut r = 0x9E37_79B9u32;
            for _ in 0..1_000_000 {
                r ^= r << 13;
                r ^= r >> 17;
                r ^= r << 5;
                check(fmt, f32::from_bits(r));
            }
        }
    }

    #[test]
    fn max_bits_encode_the_largest_finite_value() {
        for fmt in [&E4M3, &E5M2] {
            assert_eq!(fmt.max_bits, fmt.encode_finite(fmt.max_finite));
            assert_eq!(fmt.decode(fmt.max_bits), fmt.max_finite);
        }
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
