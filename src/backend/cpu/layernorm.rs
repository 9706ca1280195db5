//! LayerNorm over the last axis: `y = (x - mean) * rstd * weight + bias`, `rstd = 1/sqrt(var+eps)`
//! with the biased variance, as `torch.nn.LayerNorm`.

use rayon::prelude::*;

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
    // dx row by row in parallel; the weight and bias gradients reduce over rows, so each rayon
    // task sums its own rows and the partial sums are added at the end.
    let (dw, db) = dx
        .par_chunks_mut(c)
        .zip(dy.par_chunks(c).zip(x.par_chunks(c)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .fold(
            || (vec![0.0f32; c], vec![0.0f32; c]),
            |(mut dw, mut db), ((dx, (dy, x)), (&m, &s))| {
                let mut mean_g = 0.0f32;
                let mut mean_gx = 0.0f32;
                for i in 0..c {
                    let xhat = (x[i] - m) * s;
                    let g = dy[i] * weight[i];
                    mean_g += g;
                    mean_gx += g * xhat;
                    dw[i] += dy[i] * xhat;
                    db[i] += dy[i];
                }
                mean_g /= c as f32;
                mean_gx /= c as f32;
                for i in 0..c {
                    let xhat = (x[i] - m) * s;
                    dx[i] = s * (dy[i] * weight[i] - mean_g - xhat * mean_gx);
                }
                (dw, db)
            },
        )
        .reduce(
            || (vec![0.0f32; c], vec![0.0f32; c]),
            |(mut a, mut b), (c2, d2)| {
                a.iter_mut().zip(&c2).for_each(|(p, q)| *p += q);
                b.iter_mut().zip(&d2).for_each(|(p, q)| *p += q);
                (a, b)
            },
        );
    dweight.iter_mut().zip(&dw).for_each(|(g, d)| *g += d);
    dbias.iter_mut().zip(&db).for_each(|(g, d)| *g += d);
}
