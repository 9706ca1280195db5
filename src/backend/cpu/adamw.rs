//! AdamW exactly as `torch.optim.AdamW`'s single-tensor path computes it, element by element:
//! ```text
//! p *= 1 - lr * wd
//! m  = lerp(m, g, 1 - b1)           (m + (1 - b1) (g - m))
//! v  = v * b2 + (1 - b2) g^2
//! p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```
//! The scalar coefficients are computed in f64 on the host, as PyTorch does, then applied in f32.

use super::{CpuBackend, bf16s_mut, cast, f32s, f32s_mut, i32s_mut};
use crate::error::Result;
use crate::ops::adamw::{AdamWKernels, LossGuard};
use crate::tensor::Tensor;
use rayon::prelude::*;

use crate::backend::AdamWCoefficients;

const CHUNK: usize = 8192;

pub fn update(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    coefficients: AdamWCoefficients,
) {
    let AdamWCoefficients {
        decay,
        one_minus_beta1: one_minus_b1,
        beta2: b2,
        one_minus_beta2: one_minus_b2,
        step_size,
        bias_correction2_sqrt: bc2_sqrt,
        eps,
    } = coefficients;
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

impl AdamWKernels for CpuBackend {
    fn adamw_update(
        &self,
        params: &mut Tensor,
        gemm_copy: Option<&mut Tensor>,
        grads: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        coefficients: AdamWCoefficients,
        guard: Option<LossGuard<'_>>,
    ) -> Result<()> {
        if let Some(guard) = guard {
            let loss = guard
                .loss
                .map(|l| f32s(l, "adamw guard loss"))
                .transpose()?;
            let finite = loss.is_none_or(|l| l[0].is_finite());
            let halted = &mut i32s_mut(guard.halted, "adamw guard flag")?[0];
            if *halted != 0 || !finite {
                *halted = 1;
                return Ok(());
            }
        }
        let params = f32s_mut(params, "adamw parameters")?;
        update(
            params,
            f32s(grads, "adamw gradients")?,
            f32s_mut(m, "adamw first moment")?,
            f32s_mut(v, "adamw second moment")?,
            coefficients,
        );
        // In mixed precision the GEMMs read a bf16 copy of the weights, refreshed here from the
        // f32 master weights.
        if let Some(copy) = gemm_copy {
            cast::narrow(bf16s_mut(copy, "adamw bf16 weights")?, params);
        }
        Ok(())
    }
}
