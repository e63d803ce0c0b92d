//! f8 conversions against PyTorch, bit for bit (`../shared/fixtures/f8/`).
//!
//! For E4M3FN and E5M2: every one of the 256 bit patterns decodes to the f32
//! PyTorch lists (NaN where NaN), and every listed f32 input encodes to the
//! listed bits through `from_f32`, `from_f64`, the `Dtype`/`FloatDtype`
//! conversions the kernels use, and a tensor `to_dtype` from f32 and f64.

use zerfoo::kernels::{FloatDtype, Real, F8E4M3, F8E5M2};
use zerfoo::prelude::*;
use zerfoo_tests::fixtures::{get, load_fixture, FixtureDtype, FixtureTensor};

const FILE: &str = "f8/f8_conversions.safetensors";

/// What an 8-bit type offers, so both formats share one checker.
trait F8: FloatDtype {
    const NAME: &'static str;
    fn bits(self) -> u8;
    fn of_bits(b: u8) -> Self;
    fn inherent_from_f32(x: f32) -> Self;
    fn inherent_from_f64(x: f64) -> Self;
}

macro_rules! f8 {
    ($t:ty, $name:literal) => {
        impl F8 for $t {
            const NAME: &'static str = $name;
            fn bits(self) -> u8 {
                self.to_bits()
            }
            fn of_bits(b: u8) -> Self {
                <$t>::from_bits(b)
            }
            fn inherent_from_f32(x: f32) -> Self {
                <$t>::from_f32(x)
            }
            fn inherent_from_f64(x: f64) -> Self {
                <$t>::from_f64(x)
            }
        }
    };
}
f8!(F8E4M3, "e4m3fn");
f8!(F8E5M2, "e5m2");

fn f32s(t: &FixtureTensor) -> Vec<f32> {
    assert_eq!(t.dtype, FixtureDtype::F32);
    t.bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Equal bit for bit, except that any NaN matches any NaN.
fn same_f32(a: f32, b: f32) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

/// Returns (decoded patterns, encoded inputs) checked.
fn check_format<E: F8>() -> (usize, usize) {
    let fx = load_fixture(FILE);
    let name = E::NAME;

    // --- decode: all 256 patterns ---
    let want = f32s(get(&fx, &format!("{name}_all_bits_to_f32")));
    assert_eq!(want.len(), 256);
    let mut mismatches = Vec::new();
    for (b, &w) in want.iter().enumerate() {
        let v = E::of_bits(b as u8);
        let got = [v.to_f32(), v.to_acc().as_f64() as f32, v.to_f64() as f32];
        for g in got {
            if !same_f32(g, w) {
                mismatches.push(format!("bits {b:#04x}: got {g:?}, PyTorch {w:?}"));
            }
        }
        // NaN-ness agrees, and f64 widening is exact.
        assert_eq!(v.to_f64().is_nan(), w.is_nan(), "{name} {b:#04x}");
        if !w.is_nan() {
            assert_eq!(v.to_f64(), w as f64, "{name} {b:#04x} to_f64");
        }
    }
    // decode through tensors: f8 -> f32 and f8 -> f64
    let pats: Vec<E> = (0..=255u8).map(E::of_bits).collect();
    let t = Tensor::<(Dyn,), E>::from_vec((Dyn(256),), pats).unwrap();
    let as32 = t.clone().to_dtype::<f32>().to_vec();
    let as64 = t.to_dtype::<f64>().to_vec();
    for b in 0..256 {
        if !same_f32(as32[b], want[b]) || !same_f32(as64[b] as f32, want[b]) {
            mismatches.push(format!(
                "tensor decode bits {b:#04x}: f32 {:?}, f64 {:?}, PyTorch {:?}",
                as32[b], as64[b], want[b]
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{name} decode: {} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );

    // --- encode: every listed input ---
    let inputs = f32s(get(&fx, &format!("{name}_from_f32_input")));
    let bits_t = get(&fx, &format!("{name}_from_f32_bits"));
    assert_eq!(bits_t.dtype, FixtureDtype::U8);
    let want_bits = &bits_t.bytes;
    assert_eq!(inputs.len(), want_bits.len());
    let n = inputs.len();
    let t32 = Tensor::<(Dyn,), f32>::from_vec((Dyn(n),), inputs.clone()).unwrap();
    let via_t32: Vec<u8> = t32
        .to_dtype::<E>()
        .to_vec()
        .into_iter()
        .map(E::bits)
        .collect();
    let inputs64: Vec<f64> = inputs.iter().map(|&x| x as f64).collect();
    let t64 = Tensor::<(Dyn,), f64>::from_vec((Dyn(n),), inputs64).unwrap();
    let via_t64: Vec<u8> = t64
        .to_dtype::<E>()
        .to_vec()
        .into_iter()
        .map(E::bits)
        .collect();
    for (i, (&x, &w)) in inputs.iter().zip(want_bits.iter()).enumerate() {
        let got = [
            ("from_f32", E::inherent_from_f32(x).bits()),
            ("from_f64", E::inherent_from_f64(x as f64).bits()),
            (
                "FloatDtype::from_f32",
                <E as FloatDtype>::from_f32(x).bits(),
            ),
            (
                "FloatDtype::from_acc",
                E::from_acc(E::Acc::of_f64(x as f64)).bits(),
            ),
            ("Dtype::from_f64", <E as Dtype>::from_f64(x as f64).bits()),
            ("f32 tensor to_dtype", via_t32[i]),
            ("f64 tensor to_dtype", via_t64[i]),
        ];
        for (how, g) in got {
            if g != w {
                mismatches.push(format!(
                    "{how}({x:?} = {:#010x}): got {g:#04x}, PyTorch {w:#04x}",
                    x.to_bits()
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{name} encode: {} mismatches (first 50):\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(50)].join("\n")
    );

    // Sanity on the fixture itself: it does exercise the special cases.
    assert!(inputs.iter().any(|x| x.is_nan()), "{name}: no NaN input");
    assert!(
        inputs.iter().any(|x| x.is_infinite()),
        "{name}: no inf input"
    );
    println!(
        "{name}: {} patterns decoded, {n} inputs encoded, 7 ways each",
        want.len()
    );
    (want.len(), n)
}

#[test]
fn e4m3fn_matches_pytorch_bit_for_bit() {
    let (d, e) = check_format::<F8E4M3>();
    assert_eq!((d, e), (256, 24267));
}

#[test]
fn e5m2_matches_pytorch_bit_for_bit() {
    let (d, e) = check_format::<F8E5M2>();
    assert_eq!((d, e), (256, 24261));
}

/// The semantics the fixture README states, spelled out on hand-picked values.
#[test]
fn documented_specials() {
    assert_eq!(F8E4M3::from_f32(f32::INFINITY).to_bits(), 126);
    assert_eq!(F8E4M3::from_f32(f32::NEG_INFINITY).to_bits(), 254);
    assert_eq!(F8E4M3::from_f32(1e9).to_bits(), 126);
    assert_eq!(F8E4M3::from_f32(f32::NAN).to_bits(), 127);
    assert_eq!(F8E5M2::from_f32(f32::INFINITY).to_bits(), 124);
    assert_eq!(F8E5M2::from_f32(f32::NEG_INFINITY).to_bits(), 252);
    assert_eq!(F8E5M2::from_f32(f32::NAN).to_bits(), 127);
    // E4M3FN: 464 is halfway between 448 and (non-existent) 480: saturates.
    assert_eq!(F8E4M3::from_f32(464.0).to_f32(), 448.0);
    // ties to even: 1 + 1/16 is halfway between 1 and 1.125 → 1 (even mantissa)
    assert_eq!(F8E4M3::from_f32(1.0625).to_f32(), 1.0);
    // 1 + 3/16 is halfway between 1.125 and 1.25 → 1.25 (even mantissa)
    assert_eq!(F8E4M3::from_f32(1.1875).to_f32(), 1.25);
}
