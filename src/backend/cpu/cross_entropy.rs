//! Softmax cross-entropy with ignore index -100 and mean reduction, fused with its gradient:
//! `loss_r = logsumexp(x_r) - x_r[label_r]`, `dx_r = (softmax(x_r) - onehot(label_r)) / count`.

use super::{CpuBackend, activation, f32s_mut, i32s, write_activation};
use crate::error::Result;
use crate::ops::cross_entropy::CrossEntropyKernels;
use crate::tensor::Tensor;
use rayon::prelude::*;

pub const IGNORE_INDEX: i32 = -100;

/// Returns `(sum of row losses, labelled count)`; writes dlogits when given (zero on ignored rows).
pub fn forward_backward(
    logits: &[f32],
    labels: &[i32],
    vocab: usize,
    dlogits: Option<&mut [f32]>,
) -> (f64, usize) {
    let count = labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
    let row_loss = |x: &[f32], label: i32, dx: Option<&mut [f32]>| -> f64 {
        if label == IGNORE_INDEX {
            if let Some(dx) = dx {
                dx.fill(0.0);
            }
            return 0.0;
        }
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = x.iter().map(|&v| ((v - max) as f64).exp()).sum();
        let lse = max as f64 + sum.ln();
        if let Some(dx) = dx {
            let inv = 1.0 / count as f64;
            for (j, (d, &v)) in dx.iter_mut().zip(x).enumerate() {
                let p = (v as f64 - lse).exp();
                let onehot = if j == label as usize { 1.0 } else { 0.0 };
                *d = ((p - onehot) * inv) as f32;
            }
        }
        lse - x[label as usize] as f64
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
