//! AdamW exactly as `torch.optim.AdamW`'s single-tensor path computes it, element by element:
//! ```text
//! p *= 1 - lr * wd
//! m  = lerp(m, g, 1 - b1)           (m + (1 - b1) (g - m))
//! v  = v * b2 + (1 - b2) g^2
//! p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```
//! The scalar coefficients are computed in f64 on the host, as PyTorch does, then applied in f32.

use rayon::prelude::*;

use crate::backend::{AdamWCoefficients, AdamWStep};

const CHUNK: usize = 8192;

pub fn step(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) {
    let AdamWCoefficients {
        decay,
        one_minus_beta1: one_minus_b1,
        beta2: b2,
        one_minus_beta2: one_minus_b2,
        step_size,
        bias_correction2_sqrt: bc2_sqrt,
        eps,
    } = s.coefficients();
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for i in 0..p.len() {
                p[i] *= decay;
                m[i] += one_minus_b1 * (g[i] - m[i]);
                v[i] = v[i] * b2 + one_minus_b2 * g[i] * g[i];
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * m[i] / denom;
            }
        });
}
