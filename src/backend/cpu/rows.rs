//! Row selection: gather, its adjoint scatter, argmax, and the softmax's top k.

use super::{CpuBackend, activation, f32s_mut, i32s, i32s_mut, write_activation};
use crate::backend::TopK;
use crate::error::Result;
use crate::ops::rows::RowKernels;
use crate::tensor::Tensor;
use std::cmp::Ordering;

use rayon::prelude::*;

pub fn gather(out: &mut [f32], x: &[f32], rows: &[i32], width: usize) {
    out.par_chunks_mut(width)
        .zip(rows.par_iter())
        .for_each(|(o, &r)| o.copy_from_slice(&x[r as usize * width..][..width]));
}

/// `out` starts at zero; repeated rows accumulate, in index order.
pub fn scatter_add(out: &mut [f32], dy: &[f32], rows: &[i32], width: usize) {
    for (d, &r) in dy.chunks(width).zip(rows) {
        out[r as usize * width..][..width]
            .iter_mut()
            .zip(d)
            .for_each(|(o, v)| *o += v);
    }
}

/// First index of the maximum of each row.
pub fn argmax(out: &mut [i32], x: &[f32], width: usize) {
    out.par_iter_mut()
        .zip(x.par_chunks(width))
        .for_each(|(o, row)| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            *o = best as i32;
        });
}

/// The order of [`softmax_top_k`]: a larger logit first, the lower index first on ties, NaN logits
/// after every number (among themselves by index). Total, so the top k are well defined.
fn rank(row: &[f32], a: usize, b: usize) -> Ordering {
    let (x, y) = (row[a], row[b]);
    match (x.is_nan(), y.is_nan()) {
        (false, false) => y.partial_cmp(&x).expect("not NaN").then(a.cmp(&b)),
        (nan_x, nan_y) => nan_x.cmp(&nan_y).then(a.cmp(&b)),
    }
}

/// The `k` most probable entries of each row's softmax, best first: `ids` and `probabilities` are
/// `[rows, k]`. The log-sum-exp is formed in f64 (with the max left out of the exponents, so nothing
/// overflows); a NaN logit makes the row's probabilities NaN. `k` is in `1..=width`.
pub fn softmax_top_k(
    ids: &mut [i32],
    probabilities: &mut [f32],
    x: &[f32],
    width: usize,
    k: usize,
) {
    ids.par_chunks_mut(k)
        .zip(probabilities.par_chunks_mut(k))
        .zip(x.par_chunks(width))
        .for_each(|((ids, probabilities), row)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row
                .iter()
                .filter(|&&v| v != f32::NEG_INFINITY)
                .map(|&v| (v as f64 - max).exp())
                .sum();
            let lse = max + sum.ln();
            let mut order: Vec<usize> = (0..width).collect();
            // The k best in O(width), then only those sorted.
            if k < width {
                order.select_nth_unstable_by(k - 1, |&a, &b| rank(row, a, b));
            }
            order.truncate(k);
            order.sort_unstable_by(|&a, &b| rank(row, a, b));
            for ((id, p), j) in ids.iter_mut().zip(probabilities.iter_mut()).zip(order) {
                *id = j as i32;
                *p = (row[j] as f64 - lse).exp() as f32;
            }
        });
}

fn width(t: &Tensor) -> usize {
    t.shape().last().copied().unwrap_or(0)
}

impl RowKernels for CpuBackend {
    fn gather_rows_into(&self, x: &Tensor, rows: &Tensor, out: &mut Tensor) -> Result<()> {
        let (x_values, rows) = (activation(x, "gather input")?, i32s(rows, "gather rows")?);
        write_activation(out, "gather output", false, |out| {
            gather(out, &x_values, rows, width(x))
        })
    }

    fn scatter_rows_into(
        &self,
        dy: &Tensor,
        _rows: &Tensor,
        host_rows: &[i32],
        out: &mut Tensor,
    ) -> Result<()> {
        let dy_values = activation(dy, "scatter dy")?;
        // scatter_add adds into the output, so a bf16 output is widened first.
        write_activation(out, "scatter output", true, |out| {
            scatter_add(out, &dy_values, host_rows, width(dy))
        })
    }

    fn argmax_rows_into(&self, x: &Tensor, out: &mut Tensor) -> Result<()> {
        argmax(
            i32s_mut(out, "argmax output")?,
            &activation(x, "argmax input")?,
            width(x),
        );
        Ok(())
    }

    fn softmax_top_k_into(&self, logits: &Tensor, k: usize, out: &mut TopK) -> Result<()> {
        softmax_top_k(
            i32s_mut(&mut out.ids, "top-k ids")?,
            f32s_mut(&mut out.probabilities, "top-k probabilities")?,
            &activation(logits, "top-k logits")?,
            width(logits),
            k,
        );
        Ok(())
    }
}
