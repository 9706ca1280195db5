//! Softmax cross-entropy with ignore index -100 and mean reduction, fused with its gradient:
//! `loss_r = logsumexp(x_r) - x_r[label_r]`, `dx_r = (softmax(x_r) - onehot(label_r)) / count`.
//! The row passes run in vector lanes (see [`super::row_exp`]).

use super::{CpuBackend, activation, f32s_mut, i32s, write_activation};
use crate::error::Result;
use crate::ops::cross_entropy::CrossEntropyKernels;
use crate::tensor::Tensor;
use rayon::prelude::*;

use super::row_exp::{row_max, sum_exp, sum_exp_into};
use super::simd::{Level, multiversion};

pub const IGNORE_INDEX: i32 = -100;

multiversion! {
    /// One labelled row's loss, `logsumexp(x) - x[label]`.
    fn loss(x: &[f32], label: usize) -> f64 {
        let max = row_max(x);
        max as f64 + sum_exp(x, max).ln() - x[label] as f64
    }
}

multiversion! {
    /// One labelled row's loss, and its gradient `(softmax(x) - onehot(label)) * inv_count` in
    /// `dx`. The softmax is each f32 term `e^(x - max)` over their f64 sum.
    fn loss_and_gradient(x: &[f32], label: usize, inv_count: f64, dx: &mut [f32]) -> f64 {
        let max = row_max(x);
        let sum = sum_exp_into(dx, x, max);
        let inv_sum = 1.0 / sum;
        let term = dx[label];
        for d in dx.iter_mut() {
            *d = (*d as f64 * inv_sum * inv_count) as f32;
        }
        dx[label] = ((term as f64 * inv_sum - 1.0) * inv_count) as f32;
        max as f64 + sum.ln() - x[label] as f64
    }
}

/// Returns `(sum of row losses, labelled count)`; writes dlogits when given (zero on ignored rows).
pub fn forward_backward(
    logits: &[f32],
    labels: &[i32],
    vocab: usize,
    dlogits: Option<&mut [f32]>,
) -> (f64, usize) {
    let count = labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
    let inv_count = 1.0 / count as f64;
    let level = Level::best();
    let row_loss = |x: &[f32], label: i32, dx: Option<&mut [f32]>| -> f64 {
        if label == IGNORE_INDEX {
            if let Some(dx) = dx {
                dx.fill(0.0);
            }
            return 0.0;
        }
        match dx {
            Some(dx) => loss_and_gradient(level, x, label as usize, inv_count, dx),
            None => loss(level, x, label as usize),
        }
    };
    // Row losses are collected in order and summed sequentially, so the total's rounding does
    // not depend on how rayon split the rows.
    let losses: Vec<f64> = match dlogits {
        Some(dl) => dl
            .par_chunks_mut(vocab)
            .zip(logits.par_chunks(vocab).zip(labels.par_iter()))
            .map(|(dx, (x, &l))| row_loss(x, l, Some(dx)))
            .collect(),
        None => logits
            .par_chunks(vocab)
            .zip(labels.par_iter())
            .map(|(x, &l)| row_loss(x, l, None))
            .collect(),
    };
    (losses.iter().sum(), count)
}

/// The mean loss as the reference forms it: the row losses' f64 sum over the labelled count.
fn mean_loss(total: f64, count: usize) -> f32 {
    (total / count as f64) as f32
}

impl CrossEntropyKernels for CpuBackend {
    fn cross_entropy_into(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        count: usize,
        loss: &mut Tensor,
        dlogits: Option<&mut Tensor>,
    ) -> Result<()> {
        let vocab = logits.shape().last().copied().unwrap_or(0);
        let logits = activation(logits, "cross-entropy logits")?;
        let labels = i32s(labels, "cross-entropy labels")?;
        let (total, _) = match dlogits {
            Some(d) => write_activation(d, "cross-entropy dlogits", false, |d| {
                forward_backward(&logits, labels, vocab, Some(d))
            })?,
            None => forward_backward(&logits, labels, vocab, None),
        };
        f32s_mut(loss, "cross-entropy loss")?[0] = mean_loss(total, count);
        Ok(())
    }

    fn cross_entropy_over_logits(
        &self,
        logits: &mut Tensor,
        labels: &Tensor,
        count: usize,
        loss: &mut Tensor,
    ) -> Result<()> {
        // Rows read their logits before writing their gradient, but the row function takes both
        // at once: the gradient goes to a new buffer that then replaces the logits.
        let mut dlogits = self.alloc(logits.shape(), logits.dtype())?;
        self.cross_entropy_into(logits, labels, count, loss, Some(&mut dlogits))?;
        *logits = dlogits;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(n: usize, seed: u64) -> Vec<f32> {
        crate::backend::cpu::test_inputs::uniform(n, seed, -10.0, 10.0)
    }

    /// The loss sum and gradient with every exponential in f64.
    fn reference(x: &[f32], labels: &[i32], vocab: usize) -> (f64, Vec<f64>) {
        let count = labels.iter().filter(|&&l| l != IGNORE_INDEX).count() as f64;
        let mut total = 0.0;
        let mut dx = vec![0.0; x.len()];
        for (r, &label) in labels.iter().enumerate() {
            if label == IGNORE_INDEX {
                continue;
            }
            let row = &x[r * vocab..][..vocab];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            total += lse - row[label as usize] as f64;
            for (j, &v) in row.iter().enumerate() {
                let onehot = if j == label as usize { 1.0 } else { 0.0 };
                dx[r * vocab + j] = ((v as f64 - lse).exp() - onehot) / count;
            }
        }
        (total, dx)
    }

    #[test]
    fn vector_rows_are_within_rounding_of_the_f64_loss_and_gradient() {
        for vocab in [1usize, 17, 1000] {
            let rows = 6;
            let x = logits(rows * vocab, vocab as u64);
            let labels: Vec<i32> = (0..rows)
                .map(|r| {
                    if r == 2 {
                        IGNORE_INDEX
                    } else {
                        ((r * 7919) % vocab) as i32
                    }
                })
                .collect();
            let (want_total, want_dx) = reference(&x, &labels, vocab);
            let mut dx = vec![f32::NAN; x.len()];
            let (total, count) = forward_backward(&x, &labels, vocab, Some(&mut dx));
            assert_eq!(count, rows - 1);
            assert!((total - want_total).abs() <= 1e-6 * want_total.abs().max(1.0));
            let (no_grad_total, _) = forward_backward(&x, &labels, vocab, None);
            assert!((no_grad_total - want_total).abs() <= 1e-6 * want_total.abs().max(1.0));
            for (i, (&g, &w)) in dx.iter().zip(&want_dx).enumerate() {
                assert!(
                    (g as f64 - w).abs() <= 1e-6 * w.abs() + 1e-12,
                    "dx[{i}]: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn every_level_gives_the_same_loss_and_gradient() {
        let vocab = 1000 + 7;
        let x = logits(vocab, 11);
        let base_loss = loss(Level::Generic, &x, 5);
        let mut base_dx = vec![0.0; vocab];
        let base = loss_and_gradient(Level::Generic, &x, 5, 0.25, &mut base_dx);
        for level in Level::supported() {
            assert_eq!(
                loss(level, &x, 5).to_bits(),
                base_loss.to_bits(),
                "{level:?}"
            );
            let mut dx = vec![0.0; vocab];
            let l = loss_and_gradient(level, &x, 5, 0.25, &mut dx);
            assert_eq!(l.to_bits(), base.to_bits(), "{level:?}");
            assert_eq!(dx, base_dx, "{level:?}");
        }
    }
}
