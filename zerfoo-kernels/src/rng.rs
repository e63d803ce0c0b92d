//! Counter-based random numbers: draw `i` of stream `seed` depends only on
//! `(seed, i)`, so tensors drawn with it, and dropout masks, are identical
//! across runs, thread counts and devices (the CUDA dropout kernel computes
//! [`uniform`] bit for bit).

/// SplitMix64's finalizer: a bijective 64-bit mixer.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `i`-th 64 random bits of stream `seed`.
#[inline]
pub fn bits(seed: u64, i: u64) -> u64 {
    mix(mix(seed) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// A uniform `f64` in `[0, 1)` (53 random bits).
#[inline]
pub fn uniform(seed: u64, i: u64) -> f64 {
    (bits(seed, i) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A standard normal `f64` (Box–Muller on draws `2i` and `2i + 1`).
#[inline]
pub fn normal(seed: u64, i: u64) -> f64 {
    let u1 = 1.0 - uniform(seed, 2 * i); // (0, 1]
    let u2 = uniform(seed, 2 * i + 1);
    (-2.0 * u1.ln()).sqrt() * (core::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_has_unit_moments() {
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|i| normal(7, i)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
        let u: Vec<f64> = (0..n).map(|i| uniform(3, i)).collect();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        assert!((u.iter().sum::<f64>() / n as f64 - 0.5).abs() < 0.01);
    }
}
