//! `to_dtype` between every pair of float dtypes, bit for bit, against an
//! independent reference; its gradient; dtype names.
//!
//! The reference decodes each small format from its bit layout and rounds an
//! exact `f64` value by searching the sorted table of all its finite values
//! for the nearest one (ties to the even bit pattern), with each format's
//! overflow rule: IEEE formats (f16, bf16, E5M2) round to infinity past the
//! largest finite value like any other grid point, E4M3FN saturates to ±448
//! (PyTorch's `float8_e4m3fn`). f32 targets use Rust's `as` (IEEE
//! round-to-nearest-even in hardware); f64 targets are exact.

use zerfoo::kernels::{bf16, f16, FloatDtype, F8E4M3, F8E5M2};
use zerfoo::prelude::*;
use zerfoo_tests::{check_grad1, numeric_grad, rel_err, weighted_sum};

// ---------------------------------------------------------------------------
// Reference formats

/// A small binary float format: 1 sign bit, `exp` exponent bits, `man`
/// mantissa bits. `ieee`: the all-ones exponent holds inf/NaN; otherwise
/// (E4M3FN) only `S.1111.111` is NaN and there is no infinity.
#[derive(Clone, Copy, Debug)]
struct Format {
    exp: u32,
    man: u32,
    ieee: bool,
}

const F16_FMT: Format = Format {
    exp: 5,
    man: 10,
    ieee: true,
};
const BF16_FMT: Format = Format {
    exp: 8,
    man: 7,
    ieee: true,
};
const E4M3_FMT: Format = Format {
    exp: 4,
    man: 3,
    ieee: false,
};
const E5M2_FMT: Format = Format {
    exp: 5,
    man: 2,
    ieee: true,
};

impl Format {
    fn sign_bit(self) -> u64 {
        1 << (self.exp + self.man)
    }
    fn bias(self) -> i32 {
        (1 << (self.exp - 1)) - 1
    }
    /// The exact value of a bit pattern.
    fn decode(self, bits: u64) -> f64 {
        let sign = if bits & self.sign_bit() != 0 {
            -1.0
        } else {
            1.0
        };
        let e_all = (1u64 << self.exp) - 1;
        let m_all = (1u64 << self.man) - 1;
        let e = (bits >> self.man) & e_all;
        let m = bits & m_all;
        if self.ieee && e == e_all {
            return if m == 0 {
                sign * f64::INFINITY
            } else {
                f64::NAN
            };
        }
        if !self.ieee && e == e_all && m == m_all {
            return f64::NAN;
        }
        let frac = m as f64 / (1u64 << self.man) as f64;
        if e == 0 {
            sign * frac * 2f64.powi(1 - self.bias())
        } else {
            sign * (1.0 + frac) * 2f64.powi(e as i32 - self.bias())
        }
    }
}

/// Rounds exact values into a [`Format`] by nearest search over its table.
struct Rounder {
    fmt: Format,
    /// Non-negative finite values with their bits, ascending; for IEEE
    /// formats the infinity pattern closes the table at `2^(emax + 1)`, the
    /// value the rounding rule gives it.
    grid: Vec<(f64, u64)>,
}

impl Rounder {
    fn new(fmt: Format) -> Self {
        let mut grid: Vec<(f64, u64)> = (0..fmt.sign_bit())
            .map(|b| (fmt.decode(b), b))
            .filter(|(v, _)| v.is_finite())
            .collect();
        if fmt.ieee {
            let inf_bits = ((1u64 << fmt.exp) - 1) << fmt.man;
            assert!(fmt.decode(inf_bits).is_infinite());
            grid.push((2f64.powi(fmt.bias() + 1), inf_bits));
        }
        assert!(grid.windows(2).all(|w| w[0].0 < w[1].0), "table not sorted");
        Rounder { fmt, grid }
    }

    /// The bits nearest to `v` (ties to even bits); `None` for NaN.
    fn round(&self, v: f64) -> Option<u64> {
        if v.is_nan() {
            return None;
        }
        let sign = if v.is_sign_negative() {
            self.fmt.sign_bit()
        } else {
            0
        };
        let a = v.abs();
        let i = self.grid.partition_point(|&(g, _)| g <= a);
        let last = self.grid[self.grid.len() - 1];
        if i == self.grid.len() {
            // beyond the table: infinity (IEEE) or the largest value (saturating)
            return Some(sign | last.1);
        }
        let (lo, lo_bits) = self.grid[i - 1];
        let (hi, hi_bits) = self.grid[i];
        // Adjacent grid points satisfy hi <= 2 lo (or lo = 0), so both
        // differences are exact (Sterbenz).
        let (dl, dh) = (a - lo, hi - a);
        let bits = if dl < dh {
            lo_bits
        } else if dh < dl {
            hi_bits
        } else if lo_bits % 2 == 0 {
            lo_bits
        } else {
            hi_bits
        };
        Some(sign | bits)
    }

    /// Midpoints between neighbouring table entries (the ties), positive.
    fn midpoints(&self) -> Vec<f64> {
        self.grid
            .windows(2)
            .map(|w| w[0].0 + (w[1].0 - w[0].0) / 2.0)
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The six float dtypes as bit patterns

trait Bits: FloatDtype {
    fn bits(self) -> u64;
    fn of_bits(b: u64) -> Self;
}
impl Bits for f64 {
    fn bits(self) -> u64 {
        self.to_bits()
    }
    fn of_bits(b: u64) -> Self {
        f64::from_bits(b)
    }
}
impl Bits for f32 {
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
    fn of_bits(b: u64) -> Self {
        f32::from_bits(b as u32)
    }
}
impl Bits for f16 {
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
    fn of_bits(b: u64) -> Self {
        f16::from_bits(b as u16)
    }
}
impl Bits for bf16 {
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
    fn of_bits(b: u64) -> Self {
        bf16::from_bits(b as u16)
    }
}
impl Bits for F8E4M3 {
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
    fn of_bits(b: u64) -> Self {
        F8E4M3::from_bits(b as u8)
    }
}
impl Bits for F8E5M2 {
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
    fn of_bits(b: u64) -> Self {
        F8E5M2::from_bits(b as u8)
    }
}

/// The reference rounding of exact values into one target dtype.
enum Reference {
    F64,
    F32,
    /// A small format; `nan`: the one NaN pattern required (f8: `0x7F`,
    /// PyTorch's), or `None` where any NaN will do.
    Small(Rounder, Option<u64>),
}

/// What converting `v` must give: `Ok(bits)`, or `Err(nan)` for a NaN
/// (`Some(bits)` when one NaN pattern is required).
fn expected(r: &Reference, v: f64) -> Result<u64, Option<u64>> {
    match r {
        _ if v.is_nan() => Err(match r {
            Reference::Small(_, nan) => *nan,
            _ => None,
        }),
        Reference::F64 => Ok(v.to_bits()),
        Reference::F32 => Ok((v as f32).to_bits() as u64),
        Reference::Small(rd, _) => Ok(rd.round(v).unwrap()),
    }
}

fn reference_for(d: DType) -> Reference {
    match d {
        DType::F64 => Reference::F64,
        DType::F32 => Reference::F32,
        DType::F16 => Reference::Small(Rounder::new(F16_FMT), None),
        DType::BF16 => Reference::Small(Rounder::new(BF16_FMT), None),
        DType::F8E4M3 => Reference::Small(Rounder::new(E4M3_FMT), Some(0x7F)),
        DType::F8E5M2 => Reference::Small(Rounder::new(E5M2_FMT), Some(0x7F)),
        other => panic!("not a float dtype: {other}"),
    }
}

/// The exact value of a source element, decoded independently of the crate.
fn exact_value<E: Bits>(x: E) -> f64 {
    let b = x.bits();
    match E::DTYPE {
        DType::F64 => f64::from_bits(b),
        DType::F32 => f32::from_bits(b as u32) as f64,
        DType::F16 => F16_FMT.decode(b),
        DType::BF16 => BF16_FMT.decode(b),
        DType::F8E4M3 => E4M3_FMT.decode(b),
        DType::F8E5M2 => E5M2_FMT.decode(b),
        other => panic!("not a float dtype: {other}"),
    }
}

/// Converts `inputs` with `to_dtype::<Dst>()` (on a tensor and on a
/// non-contiguous view of it) and with the scalar conversions the kernels
/// use, and compares every result's bits with the reference. Returns the
/// number of elements checked.
fn check_pair<Src: Bits, Dst: Bits>(inputs: &[Src]) -> usize {
    let r = reference_for(Dst::DTYPE);
    let n = inputs.len();
    let t = Tensor::<(Dyn,), Src>::from_vec((Dyn(n),), inputs.to_vec()).unwrap();
    let out = t.clone().to_dtype::<Dst>();
    assert!(out.is_contiguous());
    assert_eq!(out.dims(), [n]);
    let out = out.to_vec();
    // a stride-0 view: row 1 of a broadcast repeats every element
    let view = t.broadcast::<_, Axis<0>>((U2::default(), Dyn(n)));
    assert!(!view.is_contiguous());
    let out_view = view.to_dtype::<Dst>().to_vec();
    assert_eq!(out_view.len(), 2 * n);
    let mut bad = Vec::new();
    for (i, &x) in inputs.iter().enumerate() {
        let v = exact_value(x);
        // the crate's own widening must be exact too
        let w = x.to_f64();
        assert!(
            (v.is_nan() && w.is_nan()) || v.to_bits() == w.to_bits(),
            "{}: to_f64 of {:#x} gave {w:?}, exact {v:?}",
            Src::DTYPE,
            x.bits()
        );
        let mut got = vec![
            ("tensor", out[i]),
            ("view", out_view[n + i]),
            ("Dtype::from_f64", Dst::from_f64(v)),
        ];
        if Src::DTYPE != DType::F64 {
            // f32 holds every other source exactly
            got.push(("FloatDtype::from_f32", Dst::from_f32(v as f32)));
        }
        for (how, y) in got {
            let ok = match expected(&r, v) {
                Ok(b) => y.bits() == b,
                Err(None) => y.to_f64().is_nan(),
                Err(Some(b)) => y.bits() == b,
            };
            if !ok {
                bad.push(format!(
                    "{how}: {v:e} ({:#x}) -> {:#x}, want {:?}",
                    x.bits(),
                    y.bits(),
                    expected(&r, v).map(|b| format!("{b:#x}"))
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} -> {}: {} mismatches, first ones:\n{}",
        Src::DTYPE,
        Dst::DTYPE,
        bad.len(),
        bad[..bad.len().min(20)].join("\n")
    );
    n
}

macro_rules! to_every_dtype {
    ($src:ty, $inputs:expr) => {{
        let inputs: Vec<$src> = $inputs;
        let mut n = 0;
        n += check_pair::<$src, f64>(&inputs);
        n += check_pair::<$src, f32>(&inputs);
        n += check_pair::<$src, f16>(&inputs);
        n += check_pair::<$src, bf16>(&inputs);
        n += check_pair::<$src, F8E4M3>(&inputs);
        n += check_pair::<$src, F8E5M2>(&inputs);
        n
    }};
}

// ---------------------------------------------------------------------------
// Inputs

/// SplitMix64, for reproducible random bit patterns.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn every_pattern<E: Bits>(count: u64) -> Vec<E> {
    (0..count).map(E::of_bits).collect()
}

/// Values every small format cares about: its own values, the ties between
/// neighbours (including the one past the largest finite value) and both
/// sides of each tie, plus specials. `step` moves a value by one unit of the
/// carrying type; `sticky` by a relative amount far below f32's precision
/// (only representable in f64).
fn interesting(step: impl Fn(f64, bool) -> f64, sticky: Option<f64>) -> Vec<f64> {
    let mut v = vec![
        0.0,
        1.0,
        -1.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        f32::MAX as f64,
        f32::MIN_POSITIVE as f64,
        1e-45,
        1e-40,
        1e-30,
        1e30,
        1e38,
        3.0e38,
        464.0,
        480.0,
        448.0,
        449.0,
        57344.0,
        61440.0,
        65504.0,
        65519.0,
        65520.0,
    ];
    v.push(-0.0);
    for fmt in [F16_FMT, BF16_FMT, E4M3_FMT, E5M2_FMT] {
        let r = Rounder::new(fmt);
        for &(g, _) in &r.grid {
            v.push(g);
        }
        for m in r.midpoints() {
            v.push(m);
            v.push(step(m, true));
            v.push(step(m, false));
            if let Some(s) = sticky {
                v.push(m * (1.0 + s));
                v.push(m * (1.0 - s));
            }
        }
    }
    let negs: Vec<f64> = v.iter().map(|x| -x).collect();
    v.extend(negs);
    v
}

fn next_f32(x: f64, up: bool) -> f64 {
    let f = x as f32;
    assert_eq!(f as f64, x, "not an f32");
    let b = f.to_bits();
    let b = if (f > 0.0) == up { b + 1 } else { b - 1 };
    f32::from_bits(b) as f64
}

fn next_f64(x: f64, up: bool) -> f64 {
    let b = x.to_bits();
    f64::from_bits(if (x > 0.0) == up { b + 1 } else { b - 1 })
}

fn f32_inputs() -> Vec<f32> {
    let mut v: Vec<f32> = interesting(next_f32, None)
        .into_iter()
        .map(|x| x as f32)
        .collect();
    let mut rng = Rng(1);
    // random bit patterns over the whole range
    v.extend((0..20_000).map(|_| f32::from_bits(rng.next() as u32)));
    // random values where the small formats live (|x| in 2^-20 .. 2^20)
    v.extend((0..20_000).map(|_| {
        let m = f32::from_bits(0x3F80_0000 | (rng.next() as u32 & 0x007F_FFFF));
        let e = (rng.next() % 41) as i32 - 20;
        let s = if rng.next() & 1 == 0 { 1.0 } else { -1.0 };
        s * m * 2f32.powi(e)
    }));
    v
}

fn f64_inputs() -> Vec<f64> {
    let mut v = interesting(next_f64, Some(2f64.powi(-40)));
    v.extend(f32_inputs().into_iter().map(|x| x as f64));
    let mut rng = Rng(2);
    v.extend((0..10_000).map(|_| f64::from_bits(rng.next())));
    v.extend((0..20_000).map(|_| {
        let m = f64::from_bits(0x3FF0_0000_0000_0000 | (rng.next() & 0x000F_FFFF_FFFF_FFFF));
        let e = (rng.next() % 61) as i32 - 30;
        let s = if rng.next() & 1 == 0 { 1.0 } else { -1.0 };
        s * m * 2f64.powi(e)
    }));
    // ties between neighbouring f32 values, and one f64 ulp either side
    for _ in 0..10_000 {
        let a = f32::from_bits(rng.next() as u32 & 0x7F7F_FFFF);
        let b = f32::from_bits(a.to_bits() + 1);
        let m = (a as f64 + b as f64) / 2.0;
        v.extend([m, next_f64(m, true), next_f64(m, false), -m]);
    }
    // past f32::MAX: the tie at MAX + half an ulp goes to infinity
    let half_ulp = 2f64.powi(103);
    v.extend([
        f32::MAX as f64 + half_ulp,
        next_f64(f32::MAX as f64 + half_ulp, false),
        -(f32::MAX as f64 + half_ulp),
    ]);
    v
}

// ---------------------------------------------------------------------------
// Tests: every pair

#[test]
fn from_f8_e4m3_to_every_dtype() {
    let n = to_every_dtype!(F8E4M3, every_pattern(256));
    assert_eq!(n, 6 * 256);
}

#[test]
fn from_f8_e5m2_to_every_dtype() {
    let n = to_every_dtype!(F8E5M2, every_pattern(256));
    assert_eq!(n, 6 * 256);
}

#[test]
fn from_f16_to_every_dtype() {
    let n = to_every_dtype!(f16, every_pattern(1 << 16));
    assert_eq!(n, 6 << 16);
}

#[test]
fn from_bf16_to_every_dtype() {
    let n = to_every_dtype!(bf16, every_pattern(1 << 16));
    assert_eq!(n, 6 << 16);
}

#[test]
fn from_f32_to_every_dtype() {
    let n = to_every_dtype!(f32, f32_inputs());
    println!("f32 -> *: {n} conversions");
    assert!(n > 6 * 100_000);
}

#[test]
fn from_f64_to_every_dtype() {
    let n = to_every_dtype!(f64, f64_inputs());
    println!("f64 -> *: {n} conversions");
    assert!(n > 6 * 100_000);
}

// ---------------------------------------------------------------------------
// Hand-made ties and near-ties

fn f32_to_bf16_bits(bits: u32) -> u16 {
    let t = Tensor::<(U1,), f32>::from_vec(Default::default(), vec![f32::from_bits(bits)]).unwrap();
    t.to_dtype::<bf16>().to_vec()[0].to_bits()
}

#[test]
fn f32_to_bf16_rounds_to_nearest_even() {
    // bf16 keeps the top 16 bits of an f32; the low 16 decide the rounding.
    // 1 + 2^-8 = 0x3F80_8000 lies exactly between 0x3F80 (1, even) and 0x3F81.
    assert_eq!(f32_to_bf16_bits(0x3F80_8000), 0x3F80);
    // 1 + 3 * 2^-8 lies between 0x3F81 (odd) and 0x3F82 (even).
    assert_eq!(f32_to_bf16_bits(0x3F81_8000), 0x3F82);
    // one f32 ulp off a tie decides it
    assert_eq!(f32_to_bf16_bits(0x3F80_8001), 0x3F81);
    assert_eq!(f32_to_bf16_bits(0x3F80_7FFF), 0x3F80);
    assert_eq!(f32_to_bf16_bits(0x3F81_7FFF), 0x3F81);
    // negative: same magnitude, sign kept
    assert_eq!(f32_to_bf16_bits(0xBF80_8000), 0xBF80);
    assert_eq!(f32_to_bf16_bits(0xBF81_8000), 0xBF82);
    // the tie past bf16's largest finite value (0x7F7F) goes to inf (0x7F80, even)
    assert_eq!(f32_to_bf16_bits(0x7F7F_8000), 0x7F80);
    assert_eq!(f32_to_bf16_bits(0x7F7F_7FFF), 0x7F7F);
    // subnormal ties: 2^-134 is halfway between 0 and the least bf16 subnormal
    assert_eq!(f32_to_bf16_bits(0x0000_8000), 0x0000);
    assert_eq!(f32_to_bf16_bits(0x0001_8000), 0x0002);
    assert_eq!(f32_to_bf16_bits(0x8000_8000), 0x8000);
    // a carry through the mantissa into the exponent: 2 - 2^-9 rounds to 2
    assert_eq!(f32_to_bf16_bits(0x3FFF_C000), 0x4000);
    // the values themselves
    assert_eq!(bf16::from_bits(0x3F82).to_f32(), 1.0 + 2.0 / 128.0);
}

fn f64_to<E: Bits>(v: f64) -> u64 {
    let t = Tensor::<(U1,), f64>::from_vec(Default::default(), vec![v]).unwrap();
    t.to_dtype::<E>().to_vec()[0].bits()
}

#[test]
fn f64_rounds_once_not_through_f32() {
    // Bits below f32's precision must still break a tie: rounding through f32
    // first (or dropping the low mantissa bits) would see an exact tie.
    let tiny = 2f64.powi(-40);
    // bf16: 1 + 2^-8 is a tie (→ 1.0); a hair above rounds up.
    assert_eq!(f64_to::<bf16>(1.0 + 2f64.powi(-8)), 0x3F80);
    assert_eq!(f64_to::<bf16>(1.0 + 2f64.powi(-8) + tiny), 0x3F81);
    assert_eq!(f64_to::<bf16>(1.0 + 3.0 * 2f64.powi(-8) - tiny), 0x3F81);
    assert_eq!(f64_to::<bf16>(-(1.0 + 2f64.powi(-8) + tiny)), 0xBF81);
    // f16: 1 + 2^-11 is a tie (→ 1.0 = 0x3C00); a hair above rounds up.
    assert_eq!(f64_to::<f16>(1.0 + 2f64.powi(-11)), 0x3C00);
    assert_eq!(f64_to::<f16>(1.0 + 2f64.powi(-11) + tiny), 0x3C01);
    assert_eq!(f64_to::<f16>(1.0 + 2f64.powi(-11) + 2f64.powi(-30)), 0x3C01);
    assert_eq!(f64_to::<f16>(1.0 + 3.0 * 2f64.powi(-11) - tiny), 0x3C01);
    // f16 subnormal: halfway between 0 and 2^-24, plus a hair
    assert_eq!(f64_to::<f16>(2f64.powi(-25)), 0x0000);
    assert_eq!(f64_to::<f16>(2f64.powi(-25) * (1.0 + tiny)), 0x0001);
    // f16 overflow: 65520 is the tie with "65536" → inf; a hair below → 65504
    assert_eq!(f64_to::<f16>(65520.0), 0x7C00);
    assert_eq!(f64_to::<f16>(65520.0 - tiny * 65536.0), 0x7BFF);
    // f8 rounds from f64 directly as well
    assert_eq!(f64_to::<F8E4M3>(1.0625), 0x38);
    assert_eq!(f64_to::<F8E4M3>(1.0625 + tiny), 0x39);
    assert_eq!(f64_to::<F8E5M2>(1.125 + tiny), 0x3D);
    // f32: a tie between f32 neighbours and a hair above
    let m = 1.0 + 2f64.powi(-24);
    assert_eq!(f64_to::<f32>(m), 1f32.to_bits() as u64);
    assert_eq!(
        f64_to::<f32>(next_f64(m, true)),
        (1.0f32 + f32::EPSILON).to_bits() as u64
    );
}

#[test]
fn signed_zero_nan_and_infinity_survive() {
    assert_eq!(f64_to::<f32>(-0.0), (-0.0f32).to_bits() as u64);
    assert_eq!(f64_to::<f16>(-0.0), 0x8000);
    assert_eq!(f64_to::<bf16>(-1e-300), 0x8000);
    assert_eq!(f64_to::<F8E4M3>(-0.0), 0x80);
    assert_eq!(f64_to::<F8E4M3>(f64::NAN), 0x7F);
    assert_eq!(f64_to::<F8E5M2>(f64::NAN), 0x7F);
    assert!(f16::from_bits(f64_to::<f16>(f64::NAN) as u16).is_nan());
    assert!(bf16::from_bits(f64_to::<bf16>(f64::NAN) as u16).is_nan());
    assert_eq!(f64_to::<bf16>(f64::NEG_INFINITY), 0xFF80);
    assert_eq!(f64_to::<F8E4M3>(f64::INFINITY), 0x7E); // saturates: 448
    assert_eq!(f64_to::<F8E5M2>(f64::NEG_INFINITY), 0xFC);
}

// ---------------------------------------------------------------------------
// Gradients

dim!(Rows = 3);
dim!(Cols = 5);

#[test]
fn gradient_through_f32_and_back_is_exact() {
    // loss = sum(w * f64(f32(x))): the gradient reaching x is w rounded to
    // f32 on its way back through the f32 node.
    let x: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 21);
    let w: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 22);
    let loss = (x.clone().traced().to_dtype::<f32>().to_dtype::<f64>() * w.clone()).sum_all();
    let g = loss.backward().get(&x).unwrap().to_f64_vec();
    let want: Vec<f64> = w.to_vec().iter().map(|&v| v as f32 as f64).collect();
    assert_eq!(g, want);
}

#[test]
fn gradient_through_f32_matches_finite_differences_loosely() {
    // exp(f64(f32(x))): the f32 rounding makes a tiny step useless, so
    // step 1e-3 and allow the rounding noise (~2^-24 / 1e-3) plus O(h^2).
    let x: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 23);
    let f = |x: Tensor<(Rows, Cols), f64, Cpu, Tape>| {
        weighted_sum(x.to_dtype::<f32>().to_dtype::<f64>().exp(), 24)
    };
    let g = f(x.clone().traced())
        .backward()
        .get(&x)
        .unwrap()
        .to_f64_vec();
    let num = numeric_grad(&x.to_f64_vec(), 1e-3, |v| {
        let t = Tensor::from_vec((Rows, Cols), v.to_vec()).unwrap();
        f(t.traced()).item()
    });
    let e = rel_err(&g, &num);
    assert!(e < 1e-3, "rel err {e:e}\n{g:?}\n{num:?}");
}

#[test]
fn gradient_through_identity_conversion_is_tight() {
    let x: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 25);
    check_grad1(x, |x| weighted_sum(x.to_dtype::<f64>().tanh(), 26));
}

#[test]
fn mixed_precision_gradient_lands_on_f32_master() {
    // f32 master weights, bf16 compute: d/dw sum(bf16(w) * x) = x, exactly,
    // returned in the master's dtype.
    let w: Tensor<(Rows, Cols), f32> = Tensor::randn((Rows, Cols), 27);
    let x: Tensor<(Rows, Cols), bf16> = Tensor::randn((Rows, Cols), 28);
    let loss = (w.clone().traced().to_dtype::<bf16>() * x.clone()).sum_all();
    let grads = loss.backward();
    let g: Tensor<(Rows, Cols), f32> = grads.get(&w).unwrap();
    let want: Vec<f32> = x.to_vec().iter().map(|v| v.to_f32()).collect();
    assert_eq!(g.to_vec(), want);
    // every dtype pair passes its gradient back (f8 compute, f16 master)
    let m: Tensor<(Cols,), f16> = Tensor::full((Cols,), 0.5);
    let loss = m
        .clone()
        .traced()
        .to_dtype::<F8E4M3>()
        .mul_scalar(2.0)
        .sum_all();
    let g = loss.backward().get(&m).unwrap().to_f64_vec();
    assert_eq!(g, vec![2.0; 5]);
}

#[test]
fn to_dtype_keeps_shape_and_values_on_views() {
    let x = Tensor::<(U2, U3), f32>::from_vec(Default::default(), vec![1., 2., 3., 4., 5., 6.])
        .unwrap();
    let b = x.broadcast::<_, Axis<1>>((U2::default(), U2::default(), U3::default()));
    let h = b.to_dtype::<f16>();
    assert_eq!(h.dims(), [2, 2, 3]);
    assert!(h.is_contiguous());
    assert_eq!(
        h.to_f64_vec(),
        [1., 2., 3., 1., 2., 3., 4., 5., 6., 4., 5., 6.]
    );
}

// ---------------------------------------------------------------------------
// Names

#[test]
fn dtype_constants_and_names() {
    let cases: [(DType, DType, &str, usize, bool); 8] = [
        (<f64 as Dtype>::DTYPE, DType::F64, "f64", 8, true),
        (<f32 as Dtype>::DTYPE, DType::F32, "f32", 4, true),
        (<f16 as Dtype>::DTYPE, DType::F16, "f16", 2, true),
        (<bf16 as Dtype>::DTYPE, DType::BF16, "bf16", 2, true),
        (<F8E4M3 as Dtype>::DTYPE, DType::F8E4M3, "f8e4m3", 1, true),
        (<F8E5M2 as Dtype>::DTYPE, DType::F8E5M2, "f8e5m2", 1, true),
        (<i64 as Dtype>::DTYPE, DType::I64, "i64", 8, false),
        (<u32 as Dtype>::DTYPE, DType::U32, "u32", 4, false),
    ];
    for (got, want, name, size, float) in cases {
        assert_eq!(got, want);
        assert_eq!(got.to_string(), name);
        assert_eq!(got.size_in_bytes(), size, "{name}");
        assert_eq!(got.is_float(), float, "{name}");
    }
    let t: Tensor<(U2,), bf16> = Tensor::zeros(Default::default());
    assert_eq!(t.dtype(), DType::BF16);
    assert_eq!(t.to_dtype::<F8E5M2>().dtype().to_string(), "f8e5m2");
}
