//! The error function in f32, branch-free so that loops over it vectorise (see [`super::simd`]).
//!
//! With `a = |x|`, two approximations are computed and one is selected per element:
//!
//!   a < 1:       erf(a) = a + a Q(a^2),            Q of degree 6 (erf(a)/a - 1, so the leading
//!                                                  term is exact and tiny `a` keeps full precision);
//!   1 <= a < 4:  erf(a) = 1 - e^(-a^2) R(a),       R of degree 11 in t = (a - 2.5) / 1.5 (R is
//!                                                  `erfc(a) e^(a^2)`, smooth and between 0.1 and
//!                                                  0.5, so `t` keeps Horner's scheme well conditioned);
//!   a >= 4:      erf(a) rounds to 1 (erfc(4) = 1.5e-8 is under half an ulp of 1).
//!
//! Both polynomials are Chebyshev interpolants of the exact functions, accurate to 1.2e-9 (Q,
//! absolute on erf) and 3.4e-8 (R, relative) before rounding to f32. The odd symmetry restores the
//! sign. The result is within 1.25 ulp of the exact value over all f32 (the test sweeps them against
//! f64; the C library's `erff` reaches 0.86): the worst case is just below 1, where the rounding
//! of Horner's intermediate terms (up to 0.29 against a result term of 0.16) adds to the final
//! rounding. Above 1 the exponential's own error is scaled by `erfc(a) <= 0.16`.

use super::exp::exp;

/// Where the approximation switches from the odd polynomial to the exponential form.
const SPLIT: f32 = 1.0;
/// From here on erf(x) rounds to ±1 in f32.
const SATURATION: f32 = 4.0;

/// `erf(x)` within 1.25 ulp; see the module documentation. NaN stays NaN.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    // Below SPLIT: a + a Q(a^2).
    let s = a * a;
    let mut q = 7.875_875e-5_f32;
    q = q * s - 8.016_864_3e-4;
    q = q * s + 5.189_087_2e-3;
    q = q * s - 2.685_421_1e-2;
    q = q * s + 1.128_359_4e-1;
    q = q * s - 3.761_262_6e-1;
    q = q * s + 1.283_791_7e-1;
    let small = a + a * q;
    // From SPLIT to SATURATION: 1 - e^(-a^2) R(a), with `a` clamped so that R stays in the range it
    // was fitted on (beyond it the result is 1 anyway). NaN compares false and is clamped too; it
    // is put back at the end.
    let b = if a < SATURATION { a } else { SATURATION };
    let t = (b - 2.5) * 0.666_666_7;
    let mut r = -3.566_418e-5_f32;
    r = r * t + 9.629_12e-5;
    r = r * t - 1.474_161_4e-4;
    r = r * t + 3.681_511e-4;
    r = r * t - 1.013_662_5e-3;
    r = r * t + 2.425_639e-3;
    r = r * t - 5.568_837_7e-3;
    r = r * t + 1.248_412_3e-2;
    r = r * t - 2.700_545_8e-2;
    r = r * t + 5.611_095e-2;
    r = r * t - 1.115_210_2e-1;
    r = r * t + 2.108_063_5e-1;
    let large = 1.0 - exp(-(b * b)) * r;
    let magnitude = if a < SPLIT { small } else { large };
    let signed = magnitude.copysign(x);
    if x.is_nan() { x } else { signed }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One ulp of the f32 nearest `want` (the spacing above its magnitude), as f64.
    pub(crate) fn ulp(want: f64) -> f64 {
        let w = (want as f32).abs();
        if w == 0.0 {
            f32::from_bits(1) as f64
        } else {
            (f32::from_bits(w.to_bits() + 1) - w) as f64
        }
    }

    /// Every f32 of `[-limit, limit]` whose bit pattern is a multiple of `stride` (so every
    /// exponent is covered densely, subnormals included), and both signs.
    pub(crate) fn sweep(limit: f32, stride: u32) -> impl Iterator<Item = f32> {
        (0..=limit.to_bits())
            .step_by(stride as usize)
            .map(f32::from_bits)
            .flat_map(|x| [x, -x])
    }

    #[test]
    fn erf_is_within_one_and_a_quarter_ulp_of_the_exact_value() {
        let mut worst = (0.0f64, 0.0f32);
        for x in sweep(10.0, 61) {
            let want = libm::erf(x as f64);
            let err = (erf(x) as f64 - want).abs() / ulp(want);
            if err > worst.0 {
                worst = (err, x);
            }
        }
        assert!(
            worst.0 <= 1.25,
            "worst error {} ulp at {}",
            worst.0,
            worst.1
        );
    }

    #[test]
    fn erf_is_exact_at_the_special_values() {
        assert_eq!(erf(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(erf(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
        assert_eq!(erf(f32::MAX), 1.0);
        assert_eq!(erf(-f32::MAX), -1.0);
        assert_eq!(erf(1e30), 1.0);
        assert!(erf(f32::NAN).is_nan());
        // erf(x) = 2x / sqrt(pi) to f32 precision for tiny x, subnormals included.
        for x in [f32::from_bits(1), 1e-40, f32::MIN_POSITIVE, 1e-30, 1e-10] {
            let want = (x as f64) * std::f64::consts::FRAC_2_SQRT_PI;
            assert!((erf(x) as f64 - want).abs() <= ulp(want), "erf({x})");
            assert_eq!(erf(-x), -erf(x));
        }
    }
}
