//! LayerNorm over the last axis: `y = (x - mean) * rstd * weight + bias`, `rstd = 1/sqrt(var+eps)`
//! with the biased variance, as `torch.nn.LayerNorm`.

use super::{CpuBackend, activation, f32s, f32s_mut, param, params_mut, write_activation};
use crate::backend::{LayerNormOut, Param};
use crate::error::Result;
use crate::ops::layernorm::LayerNormKernels;
use crate::tensor::Tensor;
use rayon::prelude::*;

use super::reduce::sum_over_row_blocks;

/// Writes `y`, and the per-row `mean` and `rstd` that backward reuses.
pub fn forward(
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
) {
    let c = weight.len();
    y.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((y, x), (mean, rstd))| {
            // Two passes (mean, then squared deviations) keep the variance accurate in f32.
            let m = x.iter().sum::<f32>() / c as f32;
            let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / c as f32;
            let s = 1.0 / (var + eps).sqrt();
            for i in 0..c {
                y[i] = (x[i] - m) * s * weight[i] + bias[i];
            }
            *mean = m;
            *rstd = s;
        });
}

/// With `xhat = (x - mean) * rstd` and `g = dy * weight`:
/// `dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`, `dweight += sum_rows dy * xhat`,
/// `dbias += sum_rows dy`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dx: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dy: &[f32],
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    weight: &[f32],
) {
    let c = weight.len();
    let rows = x.len() / c;
    // dx is independent per row; dweight and dbias reduce over rows in fixed blocks (see
    // `reduce`), so their rounding is the same on every run. Partials are [dweight | dbias].
    dx.par_chunks_mut(c)
        .zip(dy.par_chunks(c).zip(x.par_chunks(c)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|((dx, (dy, x)), (&m, &s))| {
            let mut mean_g = 0.0f32;
            let mut mean_gx = 0.0f32;
            for i in 0..c {
                let xhat = (x[i] - m) * s;
                let g = dy[i] * weight[i];
                mean_g += g;
                mean_gx += g * xhat;
            }
            mean_g /= c as f32;
            mean_gx /= c as f32;
            for i in 0..c {
                let xhat = (x[i] - m) * s;
                dx[i] = s * (dy[i] * weight[i] - mean_g - xhat * mean_gx);
            }
        });
    let sums = sum_over_row_blocks(rows, 2 * c, |first, count, partial| {
        let (dw, db) = partial.split_at_mut(c);
        for r in first..first + count {
            let (m, s) = (mean[r], rstd[r]);
            for i in 0..c {
                let d = dy[r * c + i];
                dw[i] += d * (x[r * c + i] - m) * s;
                db[i] += d;
            }
        }
    });
    let (dw, db) = sums.split_at(c);
    dweight.iter_mut().zip(dw).for_each(|(g, d)| *g += d);
    dbias.iter_mut().zip(db).for_each(|(g, d)| *g += d);
}

impl LayerNormKernels for CpuBackend {
    fn layernorm_forward_into(
        &self,
        x: &Tensor,
        residual: Option<(&Tensor, &mut Tensor)>,
        params: &Tensor,
        weight: Param,
        bias: Param,
        eps: f32,
        out: &mut LayerNormOut,
    ) -> Result<()> {
        let p = f32s(params, "parameters")?;
        let x = activation(x, "layernorm input")?;
        // With a residual, LayerNorm's input is the sum, written first and read back as stored
        // (rounded, in bf16): the values backward will see as this LayerNorm's input.
        let input = match residual {
            Some((r, sum)) => {
                let r = activation(r, "add")?;
                write_activation(sum, "add output", false, |s| {
                    for ((s, a), b) in s.iter_mut().zip(x.iter()).zip(r.iter()) {
                        *s = a + b;
                    }
                })?;
                activation(sum, "add output")?.into_owned().into()
            }
            None => x,
        };
        let (mean, rstd) = (
            f32s_mut(&mut out.mean, "layernorm mean")?,
            f32s_mut(&mut out.rstd, "layernorm rstd")?,
        );
        write_activation(&mut out.y, "layernorm output", false, |y| {
            forward(y, mean, rstd, &input, param(p, weight), param(p, bias), eps)
        })
    }

    fn layernorm_backward_into(
        &self,
        dy: &Tensor,
        x: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        params: &Tensor,
        grads: &mut Tensor,
        weight: Param,
        bias: Param,
        dx: &mut Tensor,
    ) -> Result<()> {
        let w = param(f32s(params, "parameters")?, weight);
        let [dw, db] = params_mut(f32s_mut(grads, "gradients")?, [weight, bias]);
        let (dy, x) = (
            activation(dy, "layernorm dy")?,
            activation(x, "layernorm input")?,
        );
        let (mean, rstd) = (f32s(mean, "layernorm mean")?, f32s(rstd, "layernorm rstd")?);
        write_activation(dx, "layernorm dx", false, |dx| {
            backward(dx, dw, db, &dy, &x, mean, rstd, w)
        })
    }
}
