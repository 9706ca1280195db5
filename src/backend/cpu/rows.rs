//! Row selection: gather, its adjoint scatter, argmax, and the softmax's top k.

use super::{CpuBackend, activation, f32s_mut, i32s, i32s_mut, write_activation};
use crate::backend::TopK;
use crate::error::Result;
use crate::ops::rows::RowKernels;
use crate::tensor::Tensor;
use std::cmp::Ordering;

use rayon::prelude::*;

use super::row_exp::{row_max, sum_exp};
use super::simd::{Level, multiversion};

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
/// `[rows, k]`. The log-sum-exp is formed from f32 exponentials (with the max left out of the
/// exponents, so nothing overflows) summed in f64; a NaN logit makes the row's probabilities NaN.
/// `k` is in `1..=width`.
pub fn softmax_top_k(
    ids: &mut [i32],
    probabilities: &mut [f32],
    x: &[f32],
    width: usize,
    k: usize,
) {
    let level = Level::best();
    ids.par_chunks_mut(k)
        .zip(probabilities.par_chunks_mut(k))
        .zip(x.par_chunks(width))
        .for_each(|((ids, probabilities), row)| {
            let lse = log_sum_exp(level, row);
            let order = if k <= SCAN_K {
                top_k_by_scan(row, k)
            } else {
                top_k_by_selection(row, k)
            };
            for ((id, p), j) in ids.iter_mut().zip(probabilities.iter_mut()).zip(order) {
                *id = j as i32;
                *p = (row[j] as f64 - lse).exp() as f32;
            }
        });
}

multiversion! {
    /// `max + ln sum e^(x - max)` over the finite and +inf logits of a row (-inf ones add nothing).
    fn log_sum_exp(row: &[f32]) -> f64 {
        let max = row_max(row);
        max as f64 + sum_exp(row, max).ln()
    }
}

/// Up to this `k`, the best `k` are kept in a sorted list during one pass over the row.
const SCAN_K: usize = 32;

/// The `k` best indices of `row` in [`rank`] order, in one pass: an index enters the list only
/// when it ranks before the current last, which for small `k` is one comparison for most indices.
/// Indices arrive in increasing order, so an equal logit never displaces an earlier index.
fn top_k_by_scan(row: &[f32], k: usize) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    for j in 0..row.len() {
        if best.len() == k && rank(row, j, best[k - 1]) != Ordering::Less {
            continue;
        }
        let at = best.partition_point(|&b| rank(row, b, j) == Ordering::Less);
        best.insert(at, j);
        best.truncate(k);
    }
    best
}

/// The `k` best indices of `row` in [`rank`] order, by selection then sorting the selected.
fn top_k_by_selection(row: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    // The k best in O(width), then only those sorted.
    if k < row.len() {
        order.select_nth_unstable_by(k - 1, |&a, &b| rank(row, a, b));
    }
    order.truncate(k);
    order.sort_unstable_by(|&a, &b| rank(row, a, b));
    order
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Random logits with ties, and with NaN and -inf sprinkled in when `specials`.
    fn logits(n: usize, seed: u64, specials: bool) -> Vec<f32> {
        let mut state = seed | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                match (specials, state % 23) {
                    (true, 0) => f32::NAN,
                    (true, 1) => f32::NEG_INFINITY,
                    // Few distinct values, so ties are common.
                    _ => ((state >> 40) % 17) as f32 * 0.75 - 6.0,
                }
            })
            .collect()
    }

    #[test]
    fn the_scan_selects_the_same_top_k_as_the_sort_with_ties_and_nan() {
        for (width, seed) in [(1usize, 1u64), (5, 2), (40, 3), (300, 4), (1000, 5)] {
            for specials in [false, true] {
                let row = logits(width, seed, specials);
                for k in [1, 2, 5, 17, 32].into_iter().filter(|&k| k <= width) {
                    assert_eq!(
                        top_k_by_scan(&row, k),
                        top_k_by_selection(&row, k),
                        "width {width}, k {k}"
                    );
                }
            }
        }
    }

    /// Every level gives the same bits, within rounding of the f64 log-sum-exp.
    #[test]
    fn log_sum_exp_matches_across_levels_and_the_f64_reference() {
        for width in [1usize, 15, 16, 17, 1000] {
            let row = logits(width, width as u64, false);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let want = max
                + row
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            let base = log_sum_exp(Level::Generic, &row);
            assert!(
                (base - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{base} vs {want}"
            );
            for level in Level::supported() {
                assert_eq!(
                    log_sum_exp(level, &row).to_bits(),
                    base.to_bits(),
                    "{level:?}"
                );
            }
        }
        // -inf logits add nothing; a row of only -inf has no finite log-sum-exp.
        assert_eq!(log_sum_exp(Level::best(), &[0.0, f32::NEG_INFINITY]), 0.0);
        assert!(!log_sum_exp(Level::best(), &[f32::NEG_INFINITY; 3]).is_finite());
    }
}
