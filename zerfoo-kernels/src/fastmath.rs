//! Branch-free `f32` maths for kernel loops.
//!
//! libm's `expf`/`erff` are scalar calls with branches, so a loop over them
//! runs one element at a time. These are straight-line arithmetic and bit
//! operations (selects instead of branches), so the compiler vectorizes a
//! loop over them with whatever vector width the loop is compiled for (see
//! [`crate::cpu::simd::vectorized`]). Their polynomials are evaluated with
//! fused multiply-adds (`mul_add`): one instruction each in the vectorized
//! AVX2/AVX-512 paths, libm's correctly rounded `fmaf` elsewhere, so every
//! path gives the same bits. Accuracy is measured in the tests against
//! `f64` libm on a dense sweep.

/// `e^x` in `f32` within 2 ulp where the result is normal; `+inf` above
/// 88.72, subnormal results below -87.34, `0` below -103.97, NaN stays NaN.
///
/// ```
/// let y = zerfoo_kernels::fastmath::exp_f32(1.0);
/// assert!((y - core::f32::consts::E).abs() <= 2.0 * f32::EPSILON * core::f32::consts::E);
/// assert_eq!(zerfoo_kernels::fastmath::exp_f32(f32::NEG_INFINITY), 0.0);
/// ```
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    // Cody–Waite reduction x = n ln2 + r, |r| <= ln2/2, then Cephes' degree-6
    // polynomial for e^r and 2^n assembled from exponent bits.
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    const HI: f32 = 88.722_83;
    const LO: f32 = -103.972_08;
    // Below LO the result is 0 (selected at the end); computing it from
    // x = 0 instead of LO keeps the discarded intermediate normal: a
    // subnormal product costs a microcode assist (~100 cycles) per lane on
    // x86, and masked attention scores (-inf) would pay it for every
    // hidden key.
    let xc = if x < LO { 0.0 } else { x.clamp(LO, HI) };
    let k = xc.mul_add(LOG2E, MAGIC);
    let n = k - MAGIC;
    let ni = (k.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, xc));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 0.166_666_65);
    p = p.mul_add(r, 0.5);
    let er = p.mul_add(r * r, r) + 1.0;
    // n spans [-150, 128], beyond one exponent field: scale in two halves.
    let a = ni >> 1;
    let b = ni - a;
    let y =
        er * f32::from_bits(((a + 127) as u32) << 23) * f32::from_bits(((b + 127) as u32) << 23);
    let y = if x > HI { f32::INFINITY } else { y };
    let y = if x < LO { 0.0 } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// [`exp_f32`] on 16 lanes with AVX-512: the same reduction and
/// polynomial, with `2^n` applied by one `vscalefps` instead of two
/// exponent-bit products, so every lane has [`exp_f32`]'s bits (both round
/// `er · 2^n` once) in about two thirds of the instructions.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn exp_f32x16(x: core::arch::x86_64::__m512) -> core::arch::x86_64::__m512 {
    use core::arch::x86_64::*;
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const MAGIC: f32 = 12_582_912.0;
    const HI: f32 = 88.722_83;
    const LO: f32 = -103.972_08;
    let set = _mm512_set1_ps;
    // Lanes to compute: not below LO (NaN included: it flows through).
    let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, set(LO));
    let over = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, set(HI));
    // `max`/`min` return their second operand for a NaN one: NaN stays.
    let xc = _mm512_min_ps(set(HI), _mm512_max_ps(set(LO), x));
    let k = _mm512_fmadd_ps(xc, set(LOG2E), set(MAGIC));
    let n = _mm512_sub_ps(k, set(MAGIC));
    let neg_n = _mm512_sub_ps(_mm512_setzero_ps(), n);
    let r = _mm512_fmadd_ps(
        neg_n,
        set(-2.121_944_4e-4),
        _mm512_fmadd_ps(neg_n, set(0.693_359_4), xc),
    );
    let mut p = set(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, set(c));
    }
    let er = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), set(1.0));
    let y = _mm512_maskz_scalef_ps(keep, er, n);
    _mm512_mask_mov_ps(y, over, set(f32::INFINITY))
}

/// The polynomial `((lead x + c0) x + c1) x + ...` by fused multiply-adds
/// (Horner's scheme, highest coefficient first).
#[inline(always)]
fn horner<const N: usize>(x: f32, lead: f32, rest: [f32; N]) -> f32 {
    rest.iter().fold(lead, |p, &c| p.mul_add(x, c))
}

/// The natural logarithm in `f32` within 2 ulp, subnormal inputs included;
/// `-inf` at ±0, `+inf` at `+inf`, NaN below 0 and for NaN.
///
/// ```
/// let y = zerfoo_kernels::fastmath::ln_f32(core::f32::consts::E);
/// assert!((y - 1.0).abs() <= 2.0 * f32::EPSILON);
/// assert_eq!(zerfoo_kernels::fastmath::ln_f32(0.0), f32::NEG_INFINITY);
/// assert!(zerfoo_kernels::fastmath::ln_f32(-1.0).is_nan());
/// ```
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    // Subnormals scaled into the normal range first (by 2^23).
    let tiny = x < f32::MIN_POSITIVE;
    let xs = if tiny { x * 8_388_608.0 } else { x };
    let bits = xs.to_bits();
    // x = m 2^e with m in [sqrt(1/2), sqrt(2)): ln x = e ln 2 + ln m, and
    // ln(1 + f) for f = m - 1 in [-0.29, 0.41] by Cephes' `logf` polynomial.
    let e = ((bits >> 23) & 0xff) as i32 - 126 - if tiny { 23 } else { 0 };
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000); // [0.5, 1)
    let low = m < core::f32::consts::FRAC_1_SQRT_2;
    let (e, f) = if low {
        (e - 1, m + m - 1.0)
    } else {
        (e, m - 1.0)
    };
    let e = e as f32;
    let z = f * f;
    let p = horner(
        f,
        7.037_683_6e-2,
        [
            -1.151_461e-1,
            1.167_699_9e-1,
            -1.242_014_1e-1,
            1.424_932_3e-1,
            -1.666_805_8e-1,
            2.000_071_4e-1,
            -2.499_999_4e-1,
            3.333_333e-1,
        ],
    );
    // ln 2 split as 0.693359375 (exact in few bits) - 2.12194440e-4.
    let y = e.mul_add(-2.121_944_4e-4, p * f * z);
    let y = (-0.5f32).mul_add(z, y);
    let r = e.mul_add(0.693_359_4, f + y);
    if x == 0.0 {
        f32::NEG_INFINITY
    } else if x < 0.0 || x.is_nan() {
        f32::NAN
    } else if x == f32::INFINITY {
        x
    } else {
        r
    }
}

/// `tanh x` in `f32` within 2 ulp: an odd polynomial below |x| = 0.625 (a
/// least-squares fit of `tanh(x)/x` on Chebyshev points), above it
/// `1 - 2 / (e^(2|x|) + 1)` with the sign of `x`; ±1 far out, `tanh(-0) =
/// -0`, NaN stays NaN.
///
/// ```
/// let y = zerfoo_kernels::fastmath::tanh_f32(0.5);
/// assert!((y - 0.462_117_16).abs() <= 2.0 * f32::EPSILON);
/// ```
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let t = x * x;
    let p = horner(
        t,
        2.295_841_2e-3,
        [
            -8.346_98e-3,
            2.176_996_1e-2,
            -5.395_940_7e-2,
            1.333_330_4e-1,
            -3.333_333_4e-1,
        ],
    );
    // x (1 + t p): `x + x t p` would turn -0 into +0.
    let small = x * t.mul_add(p, 1.0);
    let a = x.abs();
    let big = 1.0 - 2.0 / (exp_f32(a + a) + 1.0);
    if a < 0.625 {
        small
    } else {
        big.copysign(x)
    }
}

/// `x` reduced by the nearest multiple `j` of π/2: `(r, q)` with `r = x - j π/2`
/// in [-π/4, π/4] and `q = j mod 4` (0 to 3, as a float). The reduction runs
/// in `f64` against π/2 to 106 bits (two fused multiply-adds), so its error
/// is about `|j| 2^-106`: far below an ulp of `r` for `|x| < 1e14`. (Past
/// that, `j` itself, from `x 2/π` rounded in `f64`, can be one off.)
#[inline(always)]
fn quarter_turns(x: f32) -> (f32, f64) {
    const PIO2_HI: f64 = core::f64::consts::FRAC_PI_2;
    const PIO2_LO: f64 = 6.123_233_995_736_766e-17;
    let xd = x as f64;
    let j = (xd * core::f64::consts::FRAC_2_PI).round_ties_even();
    let r = (-j).mul_add(PIO2_LO, (-j).mul_add(PIO2_HI, xd));
    (r as f32, j - 4.0 * (j * 0.25).floor())
}

/// `sin r` and `cos r` for `r` in [-π/4, π/4] (Cephes' `sinf`/`cosf`
/// polynomials).
#[inline(always)]
fn sin_cos_kernel(r: f32) -> (f32, f32) {
    let z = r * r;
    let ps = horner(z, -1.951_529_6e-4, [8.332_161e-3, -1.666_665_5e-1]);
    let sin = (r * z).mul_add(ps, r);
    let pc = horner(z, 2.443_315_7e-5, [-1.388_731_6e-3, 4.166_664_6e-2]);
    let cos = (z * z).mul_add(pc, (-0.5f32).mul_add(z, 1.0));
    (sin, cos)
}

/// `sin x` from `x`'s quarter turns `q` (0 to 3, [`quarter_turns`]) and
/// the kernel's `sin r`, `cos r`: `sin r`, `cos r`, `-sin r`, `-cos r`.
/// (`cos x` passes `(cos r, -sin r)`: `sin` one quarter turn on.)
#[inline(always)]
fn sin_of_quadrant(q: f64, (s, c): (f32, f32)) -> f32 {
    if q == 0.0 {
        s
    } else if q == 1.0 {
        c
    } else if q == 2.0 {
        -s
    } else {
        -c
    }
}

/// `sin x` in `f32` within 2 ulp for |x| < 1e14 (beyond, the reduction by
/// π/2 loses accuracy); NaN for ±∞ and NaN; `sin(-0) = -0`.
///
/// ```
/// let y = zerfoo_kernels::fastmath::sin_f32(1.0);
/// assert!((y - 0.841_470_96).abs() <= 2.0 * f32::EPSILON);
/// ```
#[inline(always)]
pub fn sin_f32(x: f32) -> f32 {
    let (r, q) = quarter_turns(x);
    let v = sin_of_quadrant(q, sin_cos_kernel(r));
    // Tiny |x| (and ±0, whose sign the reduction drops): sin x rounds to x.
    if x.abs() < 1e-4 {
        x
    } else {
        v
    }
}

/// `cos x` in `f32` within 2 ulp for |x| < 1e14 (beyond, the reduction by
/// π/2 loses accuracy); NaN for ±∞ and NaN.
///
/// ```
/// let y = zerfoo_kernels::fastmath::cos_f32(1.0);
/// assert!((y - 0.540_302_3).abs() <= 2.0 * f32::EPSILON);
/// ```
#[inline(always)]
pub fn cos_f32(x: f32) -> f32 {
    let (r, q) = quarter_turns(x);
    let (s, c) = sin_cos_kernel(r);
    // One quarter turn on: cos r, -sin r, -cos r, sin r.
    sin_of_quadrant(q, (c, -s))
}

/// The error function in `f32` within 8 ulp (absolute error below 5e-7),
/// odd, exactly ±1 beyond |x| = 3.92 (as the rounded erf is); NaN stays NaN.
///
/// ```
/// let y = zerfoo_kernels::fastmath::erf_f32(0.5);
/// assert!((y - 0.520_499_9).abs() < 1e-6);
/// ```
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    // A rational x·P(x²)/Q(x²) on [-4, 4] (the minimax fit Eigen uses for
    // its vectorized erf); beyond 4, erf rounds to ±1 in f32.
    let xc = x.clamp(-4.0, 4.0);
    let x2 = xc * xc;
    let mut p = -2.726_142_3e-10f32;
    p = p.mul_add(x2, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_4e-5);
    p = p.mul_add(x2, -7.349_906e-4);
    p = p.mul_add(x2, -2.954_600_1e-3);
    p = p.mul_add(x2, -1.609_603_4e-2);
    let mut q = -1.456_607_2e-5f32;
    q = q.mul_add(x2, -2.133_740_6e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329_3e-3);
    q = q.mul_add(x2, -1.426_474e-2);
    let y = xc * p / q;
    // Past 3.92, 1 - erf(x) is below half an ulp of 1: the rounded result is ±1.
    let y = if xc.abs() >= 3.92 {
        1f32.copysign(xc)
    } else {
        y
    };
    if x.is_nan() {
        x
    } else {
        y
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// How many ulp (of `want`'s binade in f32) `got` lies from `want`.
    pub(crate) fn ulps(got: f32, want: f64) -> f64 {
        if want == 0.0 {
            return if got == 0.0 { 0.0 } else { f64::INFINITY };
        }
        let (_, e) = frexp(want);
        (got as f64 - want).abs() / 2f64.powi(e - 24)
    }

    fn frexp(v: f64) -> (f64, i32) {
        let e = v.abs().log2().floor() as i32 + 1;
        (v / 2f64.powi(e), e)
    }

    fn sweep(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * (i as f32 / n as f32))
    }

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0f64;
        for x in sweep(-87.0, 88.5, 400_000).chain(sweep(-1.0, 1.0, 100_000)) {
            let u = ulps(exp_f32(x), (x as f64).exp());
            worst = worst.max(u);
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
    }

    #[test]
    fn ln_is_within_two_ulp() {
        let mut worst = 0f64;
        let near_one = sweep(0.5, 2.0, 400_000);
        // Every binade from the smallest subnormal to the largest finite,
        // stepping through the bit patterns (`2f32.powi(e)` is 0 below
        // e = -127, so a sweep of `m * 2^e` would miss the subnormals).
        let every_binade = (1..0x7f80_0000u32).step_by(1999).map(f32::from_bits);
        for x in near_one.chain(every_binade) {
            let u = ulps(ln_f32(x), (x as f64).ln());
            worst = worst.max(u);
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
        assert_eq!(ln_f32(1.0), 0.0);
        assert_eq!(ln_f32(0.0), f32::NEG_INFINITY);
        assert_eq!(ln_f32(-0.0), f32::NEG_INFINITY);
        assert_eq!(ln_f32(f32::INFINITY), f32::INFINITY);
        assert!(
            ln_f32(-1.0).is_nan()
                && ln_f32(f32::NAN).is_nan()
                && ln_f32(f32::NEG_INFINITY).is_nan()
        );
    }

    #[test]
    fn tanh_is_within_two_ulp() {
        let mut worst = 0f64;
        // Both forms and their seam at 0.625, then far out.
        let xs = sweep(0.0, 20.0, 400_000).chain(sweep(0.62, 0.63, 20_000));
        for x in xs.chain([1e-30, 1e-40, 100.0, f32::MAX, f32::INFINITY]) {
            for x in [x, -x] {
                let (got, want) = (tanh_f32(x), (x as f64).tanh());
                worst = worst.max(ulps(got, want));
                assert_eq!(got.is_sign_negative(), x.is_sign_negative(), "{x}");
            }
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
        assert!(tanh_f32(f32::NAN).is_nan());
    }

    #[test]
    fn sin_cos_are_within_two_ulp() {
        let mut worst = 0f64;
        // Densely over a few turns, then every binade up to 1e14 (values
        // near multiples of π/2 included: the sweeps pass through them).
        let near = sweep(-20.0, 20.0, 800_000);
        let binades = (-30..50).flat_map(|e| sweep(1.0, 2.0, 4000).map(move |m| m * 2f32.powi(e)));
        for x in near.chain(binades).filter(|x| x.abs() < 1e14) {
            for x in [x, -x] {
                worst = worst.max(ulps(sin_f32(x), (x as f64).sin()));
                worst = worst.max(ulps(cos_f32(x), (x as f64).cos()));
            }
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
        assert_eq!(sin_f32(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(cos_f32(0.0), 1.0);
        for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
            assert!(sin_f32(bad).is_nan() && cos_f32(bad).is_nan());
        }
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1000.0), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        // The top of the range, where 2^n alone would overflow.
        let top = exp_f32(88.72);
        assert!(top.is_finite());
        assert!(ulps(top, (88.72f32 as f64).exp()) <= 2.0);
        // Subnormal results keep their magnitude.
        let tiny = exp_f32(-95.0) as f64;
        assert!((tiny / (-95f64).exp() - 1.0).abs() < 1e-3, "{tiny}");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn sixteen_lane_exp_has_the_scalar_bits() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let specials = [
            0.0,
            -0.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            88.722_83,
            88.722_84,
            -103.972_08,
            -103.972_09,
            -87.336_55,
            -95.0,
            f32::MIN,
            f32::MAX,
        ];
        let xs: Vec<f32> = sweep(-110.0, 95.0, 1_600_000)
            .chain(sweep(-1.0, 1.0, 100_000))
            .chain(specials)
            .collect();
        for c in xs.chunks(16) {
            let mut lanes = [0f32; 16];
            lanes[..c.len()].copy_from_slice(c);
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F is present (checked above).
            unsafe {
                use core::arch::x86_64::*;
                let v = exp_f32x16(_mm512_loadu_ps(lanes.as_ptr()));
                _mm512_storeu_ps(got.as_mut_ptr(), v);
            }
            for (&x, &y) in lanes.iter().zip(&got) {
                let want = exp_f32(x);
                assert!(
                    y.to_bits() == want.to_bits() || (y.is_nan() && want.is_nan()),
                    "exp({x}): {y} vs {want}"
                );
            }
        }
    }

    #[test]
    fn erf_is_within_eight_ulp_and_odd() {
        let mut worst = 0f64;
        for x in sweep(-6.0, 6.0, 400_000).chain(sweep(-1e-3, 1e-3, 10_000)) {
            let want = libm::erf(x as f64);
            worst = worst.max(ulps(erf_f32(x), want));
            assert_eq!(erf_f32(-x), -erf_f32(x));
        }
        assert!(worst <= 8.0, "worst {worst} ulp");
        assert_eq!(erf_f32(10.0), 1.0);
        assert_eq!(erf_f32(f32::NEG_INFINITY), -1.0);
        assert!(erf_f32(f32::NAN).is_nan());
    }
}
