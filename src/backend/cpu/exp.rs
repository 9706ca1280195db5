//! `e^x` over slices of f32, written so that the compiler turns the loop into vector instructions.
//!
//! The attention softmax takes one exponential per score, `heads * seq^2` per sequence and layer
//! (a million at the `small` preset's 512 tokens): called one by one, the C library's `expf` was
//! about a tenth of a CPU forward pass. This is the Cephes single-precision algorithm with no
//! branch and no call, so LLVM vectorises the loop:
//!
//!   n = round(x log2 e),   r = x - n ln 2  (ln 2 in two parts, so r is exact to f32),
//!   e^x = 2^n e^r,         e^r = 1 + r + r^2 P(r) on |r| <= ln 2 / 2, P of degree 5,
//!
//! and 2^n is built directly in the exponent bits. Rounding uses the 1.5 * 2^23 trick (adding and
//! subtracting it leaves the nearest integer) instead of `round`, which has no SSE2 instruction.
//! The result is within 2 ulp of the exact value (the test checks it against f64). Below `MIN_ARG`,
//! where e^x is no longer a normal f32, it is exactly 0 (so e^-inf = 0: a padding key's probability
//! stays exactly 0); above `MAX_ARG` it is +inf; NaN stays NaN.

/// Below this `e^x` is under f32's smallest normal number; the result is flushed to 0.
const MIN_ARG: f32 = -87.336_55;
/// Above this `e^x` overflows f32.
const MAX_ARG: f32 = 88.722_84;

/// `e^x` within 2 ulp; see the module documentation.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let clamped = x.clamp(MIN_ARG, MAX_ARG);
    let shifted = clamped * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let er = p * r * r + r + 1.0;
    // 2^n for n in [-126, 128] as 2^a 2^b with a = floor(n / 2), b = n - a, both in [-63, 64]:
    // each a normal number built in the exponent field (2^128 itself is not an f32). The integer
    // ops wrap (they never overflow here) so that builds with overflow checks still vectorise.
    // The same n as an integer, read from the bits of `shifted`: in [2^23, 2^24) one unit of the
    // value is one unit of the bits, so the bits minus ROUND's are n. (`n as i32` would saturate
    // out-of-range values, which LLVM does lane by lane in scalar code: 8x slower here.)
    let n = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let a = n >> 1;
    let pow2 = |k: i32| f32::from_bits((k.wrapping_add(127) as u32) << 23);
    let y = er * pow2(a) * pow2(n.wrapping_sub(a));
    if x < MIN_ARG {
        0.0
    } else if x > MAX_ARG {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within 2 ulp of the f64 exponential over the whole range where the result is a normal
    /// number, on a dense grid.
    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value() {
        let mut worst = 0.0f64;
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = MIN_ARG + (MAX_ARG - MIN_ARG) * i as f32 / steps as f32;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            // One ulp of the f32 nearest the exact value.
            let ulp = {
                let w = want as f32;
                (f32::from_bits(w.to_bits() + 1) - w) as f64
            };
            worst = worst.max((got - want).abs() / ulp);
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
    }

    #[test]
    fn exp_limits_match_expf() {
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        for x in [0.5f32, -1.0, 2.0] {
            let want = (x as f64).exp();
            assert!((exp(x) as f64 - want).abs() < 1e-6 * want);
        }
    }
}
