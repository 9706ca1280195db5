//! Exact GELU, `x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))`, as `torch.nn.GELU()` (not the tanh
//! approximation). The erf is [`super::erf`]'s branch-free one, so the loops vectorise.

use rayon::prelude::*;

use super::erf::erf;
use super::exp::exp;
use super::simd::{Level, multiversion};

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi), the standard normal density at 0.
const INV_SQRT_2PI: f32 = 0.398_942_3;
const CHUNK: usize = 4096;

#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

/// d/dx [x Phi(x)] = Phi(x) + x phi(x).
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)) + x * INV_SQRT_2PI * exp(-0.5 * x * x)
}

multiversion! {
    /// `y[i] = GELU(x[i])` on the calling thread.
    pub fn forward_chunk(y: &mut [f32], x: &[f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = gelu(x);
        }
    }
}

multiversion! {
    /// `dx[i] = dy[i] GELU'(x[i])` on the calling thread.
    pub fn backward_chunk(dx: &mut [f32], dy: &[f32], x: &[f32]) {
        for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
            *dx = dy * gelu_grad(x);
        }
    }
}

pub fn forward(y: &mut [f32], x: &[f32]) {
    let level = Level::best();
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| forward_chunk(level, y, x));
}

pub fn backward(dx: &mut [f32], dy: &[f32], x: &[f32]) {
    let level = Level::best();
    dx.par_chunks_mut(CHUNK)
        .zip(dy.par_chunks(CHUNK).zip(x.par_chunks(CHUNK)))
        .for_each(|(dx, (dy, x))| backward_chunk(level, dx, dy, x));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::erf::tests::{sweep, ulp};

    fn gelu_f64(x: f64) -> f64 {
        0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))
    }

    fn gelu_grad_f64(x: f64) -> f64 {
        let density = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2)) + x * density
    }

    /// The error of `got` against `want` in ulps of `scale`: for x < 0, `1 + erf` cancels (as in
    /// the reference formula), so the error is measured against the size of the terms, not of the
    /// small result.
    fn error(got: f32, want: f64, scale: f64) -> f64 {
        (got as f64 - want).abs() / ulp(scale)
    }

    #[test]
    fn gelu_is_within_two_ulp_of_the_exact_value() {
        let (mut worst_pos, mut worst_neg) = (0.0f64, 0.0f64);
        for x in sweep(10.0, 61) {
            let want = gelu_f64(x as f64);
            if x >= 0.0 {
                worst_pos = worst_pos.max(error(gelu(x), want, want));
            } else {
                worst_neg = worst_neg.max(error(gelu(x), want, 0.5 * x as f64));
            }
        }
        assert!(worst_pos <= 2.0, "x >= 0: worst error {worst_pos} ulp");
        assert!(
            worst_neg <= 1.6,
            "x < 0: worst error {worst_neg} ulp of x/2"
        );
    }

    #[test]
    fn gelu_grad_is_within_two_ulp_of_the_exact_value() {
        let mut worst = 0.0f64;
        for x in sweep(10.0, 61) {
            let want = gelu_grad_f64(x as f64);
            // The two terms can cancel; measure against the larger of them (Phi is at most 1).
            let scale = want.abs().max(0.5);
            worst = worst.max(error(gelu_grad(x), want, scale));
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
    }

    #[test]
    fn gelu_and_its_gradient_are_exact_at_the_special_values() {
        assert_eq!(gelu(0.0), 0.0);
        assert_eq!(gelu_grad(0.0), 0.5);
        assert_eq!(gelu(f32::INFINITY), f32::INFINITY);
        assert_eq!(gelu(1e30), 1e30);
        assert_eq!(gelu(-1e30), 0.0);
        assert_eq!(gelu_grad(1e30), 1.0);
        assert_eq!(gelu_grad(-1e30), 0.0);
        assert!(gelu(f32::NAN).is_nan());
        assert!(gelu_grad(f32::NAN).is_nan());
        for x in [1e-40f32, 1e-30, 1e-10] {
            assert!((gelu(x) as f64 - 0.5 * x as f64).abs() <= ulp(0.5 * x as f64));
        }
    }

    /// Random inputs, including ones past the ends of each approximation.
    fn inputs(n: usize, seed: u64) -> Vec<f32> {
        crate::backend::cpu::test_inputs::uniform(n, seed, -12.0, 12.0)
    }

    /// Every instruction-set copy gives the scalar function's bits, over lengths that leave
    /// vector remainders.
    #[test]
    fn every_level_matches_the_scalar_gelu_bit_for_bit() {
        for len in [0, 1, 15, 17, 4096 + 33] {
            let x = inputs(len, len as u64 + 1);
            let dy = inputs(len, len as u64 + 2);
            let want_y: Vec<f32> = x.iter().map(|&x| gelu(x)).collect();
            let want_dx: Vec<f32> = x.iter().zip(&dy).map(|(&x, &d)| d * gelu_grad(x)).collect();
            for level in Level::supported() {
                let mut y = vec![f32::NAN; len];
                forward_chunk(level, &mut y, &x);
                let mut dx = vec![f32::NAN; len];
                backward_chunk(level, &mut dx, &dy, &x);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&y),
                    bits(&want_y),
                    "forward at {level:?}, length {len}"
                );
                assert_eq!(
                    bits(&dx),
                    bits(&want_dx),
                    "backward at {level:?}, length {len}"
                );
            }
            let mut y = vec![0.0; len];
            forward(&mut y, &x);
            assert_eq!(y, want_y);
        }
    }
}
