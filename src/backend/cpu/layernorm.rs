//! LayerNorm over the last axis: `y = (x - mean) * rstd * weight + bias`, `rstd = 1/sqrt(var+eps)`
//! with the biased variance, as `torch.nn.LayerNorm`. Row sums run in vector lanes (see [`lane_sum`]).

use super::{
    CpuBackend, activation, bf16s, bf16s_mut, cast, f32s, f32s_mut, param, params_mut,
    write_activation,
};
use crate::backend::{LayerNormOut, Param};
use crate::error::Result;
use crate::ops::layernorm::LayerNormKernels;
use crate::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::reduce::sum_over_row_blocks;
use super::simd::{Level, fold_lanes, multiversion};

/// Lanes of the row sums: sixteen partial sums, added pairwise at the end, so the loop vectorises
/// (an f32 sum taken in order cannot be reordered by the compiler). This is also more accurate
/// than one running sum.
const LANES: usize = 16;

/// `sum f(a[i], b[i])` over equal-length slices, in `LANES` partial sums.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (a_main, a_tail) = a.split_at(a.len() / LANES * LANES);
    let (b_main, b_tail) = b.split_at(a_main.len());
    for (a, b) in a_main.chunks_exact(LANES).zip(b_main.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += f(a[l], b[l]);
        }
    }
    for (l, (&a, &b)) in a_tail.iter().zip(b_tail).enumerate() {
        acc[l] += f(a, b);
    }
    fold_lanes(acc)
}

multiversion! {
    /// One row: writes `y`, returns `(mean, rstd)`.
    fn forward_row(y: &mut [f32], x: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> (f32, f32) {
        let c = x.len();
        // Two passes (mean, then squared deviations) keep the variance accurate in f32.
        let m = lane_sum(x, x, |v, _| v) / c as f32;
        let var = lane_sum(x, x, |v, _| (v - m) * (v - m)) / c as f32;
        let s = 1.0 / (var + eps).sqrt();
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(weight).zip(bias) {
            *y = (x - m) * s * w + b;
        }
        (m, s)
    }
}

multiversion! {
    /// One row of dx.
    fn backward_row(dx: &mut [f32], dy: &[f32], x: &[f32], weight: &[f32], m: f32, s: f32) {
        let c = x.len();
        let mut g = [0.0f32; LANES];
        let mut gx = [0.0f32; LANES];
        let n = c / LANES * LANES;
        let (main, tail) = (0..n, n..c);
        // g = dy * weight and g * xhat, in LANES partial sums each.
        for i in main.step_by(LANES) {
            let (dy, x, w) = (&dy[i..i + LANES], &x[i..i + LANES], &weight[i..i + LANES]);
            for l in 0..LANES {
                let xhat = (x[l] - m) * s;
                let gl = dy[l] * w[l];
                g[l] += gl;
                gx[l] += gl * xhat;
            }
        }
        for (l, i) in tail.enumerate() {
            let xhat = (x[i] - m) * s;
            let gi = dy[i] * weight[i];
            g[l] += gi;
            gx[l] += gi * xhat;
        }
        let mut half = LANES;
        while half > 1 {
            half /= 2;
            for l in 0..half {
                g[l] += g[l + half];
                gx[l] += gx[l + half];
            }
        }
        let mean_g = g[0] / c as f32;
        let mean_gx = gx[0] / c as f32;
        for (((dx, &dy), &x), &w) in dx.iter_mut().zip(dy).zip(x).zip(weight) {
            let xhat = (x - m) * s;
            *dx = s * (dy * w - mean_g - xhat * mean_gx);
        }
    }
}

multiversion! {
    /// Adds one row's `dy * xhat` and `dy` to the weight and bias partials.
    fn accumulate_row(dw: &mut [f32], db: &mut [f32], dy: &[f32], x: &[f32], m: f32, s: f32) {
        for (((dw, db), &d), &x) in dw.iter_mut().zip(db.iter_mut()).zip(dy).zip(x) {
            *dw += d * (x - m) * s;
            *db += d;
        }
    }
}

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
    let level = Level::best();
    y.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((y, x), (mean, rstd))| {
            (*mean, *rstd) = forward_row(level, y, x, weight, bias, eps);
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
    let level = Level::best();
    dx.par_chunks_mut(c)
        .zip(dy.par_chunks(c).zip(x.par_chunks(c)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|((dx, (dy, x)), (&m, &s))| backward_row(level, dx, dy, x, weight, m, s));
    let sums = sum_over_row_blocks(rows, 2 * c, |first, count, partial| {
        let (dw, db) = partial.split_at_mut(c);
        for r in first..first + count {
            let (dy, x) = (&dy[r * c..][..c], &x[r * c..][..c]);
            accumulate_row(level, dw, db, dy, x, mean[r], rstd[r]);
        }
    });
    let (dw, db) = sums.split_at(c);
    dweight.iter_mut().zip(dw).for_each(|(g, d)| *g += d);
    dbias.iter_mut().zip(db).for_each(|(g, d)| *g += d);
}

/// The forward in bf16, a cache-sized block of rows at a time ([`cast::map_rows`]): the sum with
/// the residual rounded into `sum` first, then LayerNorm of the sum as stored (the values backward
/// sees as its input), its statistics in f32.
fn forward_bf16(
    x: &Tensor,
    residual: Option<(&Tensor, &mut Tensor)>,
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    out: &mut LayerNormOut,
) -> Result<()> {
    let c = weight.len();
    let mut input = bf16s(x, "layernorm input")?;
    if let Some((r, sum)) = residual {
        let sum = bf16s_mut(sum, "add output")?;
        cast::map_rows(sum, c, [input, bf16s(r, "add")?], |_, s, [a, b]| {
            s.iter_mut()
                .zip(a.iter().zip(b))
                .for_each(|(s, (a, b))| *s = a + b)
        });
        input = &*sum;
    }
    let blocks = cast::map_rows(
        bf16s_mut(&mut out.y, "layernorm output")?,
        c,
        [input],
        |_, y, [x]| {
            let rows = x.len() / c;
            let (mut mean, mut rstd) = (vec![0.0f32; rows], vec![0.0f32; rows]);
            forward(y, &mut mean, &mut rstd, x, weight, bias, eps);
            (mean, rstd)
        },
    );
    let (mean, rstd) = (
        f32s_mut(&mut out.mean, "layernorm mean")?,
        f32s_mut(&mut out.rstd, "layernorm rstd")?,
    );
    let (mut at_mean, mut at_rstd) = (0, 0);
    for (m, r) in blocks {
        mean[at_mean..at_mean + m.len()].copy_from_slice(&m);
        rstd[at_rstd..at_rstd + r.len()].copy_from_slice(&r);
        at_mean += m.len();
        at_rstd += r.len();
    }
    Ok(())
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
        if x.dtype() == DType::BF16 {
            return forward_bf16(x, residual, param(p, weight), param(p, bias), eps, out);
        }
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
        let (mean, rstd) = (f32s(mean, "layernorm mean")?, f32s(rstd, "layernorm rstd")?);
        if x.dtype() == DType::BF16 {
            // A cache-sized block of rows at a time: each block's dx, and its partial sums of
            // dweight and dbias, which are then added in row order.
            let c = w.len();
            let inputs = [bf16s(dy, "layernorm dy")?, bf16s(x, "layernorm input")?];
            let dx = bf16s_mut(dx, "layernorm dx")?;
            let partials = cast::map_rows(dx, c, inputs, |first, dx, [dy, x]| {
                let rows = x.len() / c;
                let (mut pw, mut pb) = (vec![0.0f32; c], vec![0.0f32; c]);
                let (m, r) = (&mean[first..first + rows], &rstd[first..first + rows]);
                backward(dx, &mut pw, &mut pb, dy, x, m, r, w);
                (pw, pb)
            });
            for (pw, pb) in partials {
                dw.iter_mut().zip(&pw).for_each(|(g, p)| *g += p);
                db.iter_mut().zip(&pb).for_each(|(g, p)| *g += p);
            }
            return Ok(());
        }
        let (dy, x) = (
            activation(dy, "layernorm dy")?,
            activation(x, "layernorm input")?,
        );
        write_activation(dx, "layernorm dx", false, |dx| {
            backward(dx, dw, db, &dy, &x, mean, rstd, w)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(n: usize, seed: u64) -> Vec<f32> {
        crate::backend::cpu::test_inputs::uniform(n, seed, -1.0, 3.0)
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// `(y, dx, mean, rstd)` of one row in f64.
    fn reference(x: &[f32], dy: &[f32], w: &[f32], b: &[f32], eps: f64) -> [Vec<f64>; 2] {
        let c = x.len() as f64;
        let m = x.iter().map(|&v| v as f64).sum::<f64>() / c;
        let var = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / c;
        let s = 1.0 / (var + eps).sqrt();
        let xhat: Vec<f64> = x.iter().map(|&v| (v as f64 - m) * s).collect();
        let g: Vec<f64> = dy
            .iter()
            .zip(w)
            .map(|(&d, &w)| d as f64 * w as f64)
            .collect();
        let mean_g = g.iter().sum::<f64>() / c;
        let mean_gx = g.iter().zip(&xhat).map(|(g, h)| g * h).sum::<f64>() / c;
        let y = xhat
            .iter()
            .zip(w.iter().zip(b))
            .map(|(h, (&w, &b))| h * w as f64 + b as f64);
        let dx = g
            .iter()
            .zip(&xhat)
            .map(|(g, h)| s * (g - mean_g - h * mean_gx));
        [y.collect(), dx.collect()]
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        let scale = want.iter().fold(1.0f64, |a, w| a.max(w.abs()));
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 * scale,
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    /// `(y, dx, (mean, rstd), dweight)` of one row, as bits.
    type RowBits = (Vec<u32>, Vec<u32>, (f32, f32), Vec<u32>);

    /// Every level gives the same bits, and those are within f32 rounding of the f64 values, over
    /// widths around the lane count.
    #[test]
    fn vector_rows_match_across_levels_and_the_f64_reference() {
        for c in [1usize, 15, 16, 17, 64, 768 + 5] {
            let (x, dy) = (inputs(c, c as u64), inputs(c, c as u64 + 7));
            let (w, b) = (inputs(c, 3), inputs(c, 4));
            let [y_want, dx_want] = reference(&x, &dy, &w, &b, 1e-5);
            let mut first: Option<RowBits> = None;
            for level in Level::supported() {
                let mut y = vec![f32::NAN; c];
                let (m, s) = forward_row(level, &mut y, &x, &w, &b, 1e-5);
                let mut dx = vec![f32::NAN; c];
                backward_row(level, &mut dx, &dy, &x, &w, m, s);
                let (mut dw, mut db) = (vec![0.5f32; c], vec![0.25f32; c]);
                accumulate_row(level, &mut dw, &mut db, &dy, &x, m, s);
                assert_close(&y, &y_want, "y");
                assert_close(&dx, &dx_want, "dx");
                for i in 0..c {
                    assert_eq!(dw[i], 0.5 + dy[i] * (x[i] - m) * s);
                    assert_eq!(db[i], 0.25 + dy[i]);
                }
                let got = (bits(&y), bits(&dx), (m, s), bits(&dw));
                match &first {
                    None => first = Some(got),
                    Some(f) => {
                        assert_eq!(&got, f, "{level:?} differs from the baseline, width {c}")
                    }
                }
            }
        }
    }
}
