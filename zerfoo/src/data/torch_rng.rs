//! PyTorch's CPU random number generator, draw for draw.
//!
//! [`TorchGenerator`] is the Mersenne Twister (MT19937) that
//! `torch.manual_seed(seed)` seeds, with PyTorch's rules for turning its
//! 32-bit outputs into `torch.randint`, `Tensor.uniform_` and
//! `Tensor.normal_` values. A zerfoo program that draws through it in the
//! same order as a PyTorch script gets the same integers and (to float
//! rounding) the same weights: it can rerun a PyTorch experiment, nanoGPT's
//! `train_shakespeare_char` for instance, with the very same draws.

use crate::{Error, Result};

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// PyTorch's CPU generator (`torch.Generator()` / the default one after
/// `torch.manual_seed(seed)`): MT19937 and PyTorch's conversions.
///
/// ```
/// use zerfoo::data::TorchGenerator;
/// // torch.manual_seed(1337); torch.randint(1000, (3,)) -> tensor([415, 957, 492])
/// let mut g = TorchGenerator::new(1337);
/// assert_eq!([g.randint(1000), g.randint(1000), g.randint(1000)], [415, 957, 492]);
/// ```
#[derive(Clone)]
pub struct TorchGenerator {
    state: [u32; N],
    next: usize,
    draws: u64,
}

impl std::fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchGenerator")
            .field("draws", &self.draws)
            .finish_non_exhaustive()
    }
}

impl TorchGenerator {
    /// The generator as `torch.manual_seed(seed)` leaves it (PyTorch keeps
    /// the low 32 bits of the seed).
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; N];
        state[0] = seed as u32;
        for j in 1..N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        TorchGenerator {
            state,
            next: N,
            draws: 0,
        }
    }

    /// 32-bit outputs drawn so far.
    pub fn draws(&self) -> u64 {
        self.draws
    }

    fn twist(&mut self) {
        let s = &mut self.state;
        for i in 0..N {
            let y = (s[i] & UPPER_MASK) | (s[(i + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            s[i] = s[(i + M) % N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    /// The next 32-bit output (PyTorch's `generator->random()`).
    pub fn next_u32(&mut self) -> u32 {
        if self.next >= N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        self.draws += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Skips `n` 32-bit outputs.
    pub fn discard(&mut self, n: u64) {
        for _ in 0..n {
            self.next_u32();
        }
    }

    /// A 64-bit output made of two 32-bit ones, the first high
    /// (PyTorch's `generator->random64()`).
    pub fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        let lo = self.next_u32() as u64;
        (hi << 32) | lo
    }

    /// One value of `torch.randint(high, ...)` (in `0..high`): the next
    /// output modulo `high`, a 64-bit output when `high ≥ 2²⁸` (PyTorch's
    /// rule, which keeps the modulo bias small). `high` must be positive.
    pub fn randint(&mut self, high: u64) -> u64 {
        debug_assert!(high > 0, "randint needs a positive bound");
        if Self::randint_draws(high) == 2 {
            self.next_u64() % high
        } else {
            self.next_u32() as u64 % high
        }
    }

    /// The 32-bit outputs one [`randint`](Self::randint)`(high)` draws: 2
    /// when `high ≥ 2²⁸`, else 1.
    pub fn randint_draws(high: u64) -> u64 {
        if high >= 1 << 28 {
            2
        } else {
            1
        }
    }

    /// One `f32` of `Tensor.uniform_(from, to)`: 24 random bits scaled into
    /// `[from, to)`.
    pub fn uniform_f32(&mut self, from: f32, to: f32) -> f32 {
        let x = (self.next_u32() & 0x00ff_ffff) as f32 * (1.0 / (1u32 << 24) as f32);
        x * (to - from) + from
    }

    /// Fills `out` as `Tensor.normal_(mean, std)` fills a contiguous `f32`
    /// tensor of that many elements: one uniform per element, then the
    /// Box–Muller transform on blocks of 16 (element `j` pairs with
    /// `j + 8`); when the length is not a multiple of 16 the last 16
    /// elements are drawn and transformed again. The integers drawn are
    /// PyTorch's exactly; the values agree to a few float roundings (PyTorch
    /// uses its own vector `log`/`sin`/`cos`).
    ///
    /// PyTorch fills tensors of fewer than 16 elements another way, one
    /// double at a time; that is not reproduced and is an error here.
    pub fn normal_f32(&mut self, out: &mut [f32], mean: f32, std: f32) -> Result<()> {
        let n = out.len();
        if n < 16 {
            return Err(Error::InvalidArgument {
                op: "TorchGenerator::normal_f32",
                reason: format!(
                    "PyTorch draws tensors of fewer than 16 elements another way; got {n}"
                ),
            });
        }
        for v in out.iter_mut() {
            *v = self.uniform_f32(0.0, 1.0);
        }
        for chunk in out.chunks_exact_mut(16) {
            box_muller_16(chunk, mean, std);
        }
        if n % 16 != 0 {
            let tail = &mut out[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32(0.0, 1.0);
            }
            box_muller_16(tail, mean, std);
        }
        Ok(())
    }

    /// The 32-bit outputs `normal_f32` draws for `n ≥ 16` elements.
    pub fn normal_draws(n: u64) -> u64 {
        if n % 16 == 0 {
            n
        } else {
            n + 16
        }
    }
}

/// PyTorch's `normal_fill_16`: uniforms `u` in `[0, 1)` to normals.
fn box_muller_16(data: &mut [f32], mean: f32, std: f32) {
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f32::consts::PI * u2;
        data[j] = radius * theta.cos() * std + mean;
        data[j + 8] = radius * theta.sin() * std + mean;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values printed by PyTorch 2.15 (CPU):
    //   torch.manual_seed(1337); torch.randint(2**28 - 1, (3,))  (32-bit draws)
    //   torch.manual_seed(1337); torch.randint(2**28, (3,))      (64-bit draws)
    //   torch.manual_seed(0); torch.randint(10**12, (2,))
    //   torch.manual_seed(7); torch.randint(65, (5,)); torch.randint(1003790, (5,))
    //   torch.manual_seed(1337); torch.empty(20).normal_(0.0, 0.02)
    #[test]
    fn randint_matches_pytorch() {
        let mut g = TorchGenerator::new(1337);
        let got: Vec<u64> = (0..3).map(|_| g.randint((1 << 28) - 1)).collect();
        assert_eq!(got, [51645595, 259973317, 144671582]);
        assert_eq!(g.draws(), 3);
        let mut g = TorchGenerator::new(1337);
        let got: Vec<u64> = (0..3).map(|_| g.randint(1 << 28)).collect();
        assert_eq!(got, [259973309, 107750632, 185030105]);
        assert_eq!(g.draws(), 6);
        let mut g = TorchGenerator::new(7);
        let got: Vec<u64> = (0..5).map(|_| g.randint(65)).collect();
        assert_eq!(got, [45, 12, 56, 56, 3]);
        let got: Vec<u64> = (0..5).map(|_| g.randint(1003790)).collect();
        assert_eq!(got, [574197, 529237, 335569, 575628, 913331]);
        let mut g = TorchGenerator::new(0);
        let got: Vec<u64> = (0..2).map(|_| g.randint(1_000_000_000_000)).collect();
        assert_eq!(got, RANDINT64_0);
        assert_eq!(g.draws(), 4);
    }

    #[test]
    fn normal_matches_pytorch_including_the_redrawn_tail() {
        let mut g = TorchGenerator::new(1337);
        let mut v = vec![0f32; 20];
        g.normal_f32(&mut v, 0.0, 0.02).unwrap();
        for (a, b) in v.iter().zip(NORMAL_1337_20) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{a} vs {b}");
        }
        assert_eq!(g.draws(), TorchGenerator::normal_draws(20));
        assert!(g.normal_f32(&mut [0f32; 15], 0.0, 1.0).is_err());
    }

    const RANDINT64_0: [u64; 2] = [223749065263, 183495924928];
    #[allow(clippy::excessive_precision)]
    const NORMAL_1337_20: [f32; 20] = [
        0.003615431720390916,
        -0.001399761880747974,
        -0.007192469667643309,
        -0.018304089084267616,
        -0.04074299708008766,
        0.00986272469162941,
        0.029739970341324806,
        0.011820659041404724,
        -0.0009510466479696333,
        -0.021991834044456482,
        -0.035048872232437134,
        -0.021941184997558594,
        0.008955443277955055,
        -0.01603289507329464,
        0.030472228303551674,
        0.050171736627817154,
        0.003323644632473588,
        0.02410903573036194,
        0.003766357898712158,
        -0.04320071265101433,
    ];
}
