//! Softmax cross-entropy with ignore index -100 and mean reduction over the labelled rows, fused
//! with its gradient (llm.c's fused classifier). The loss stays on the device as a one-element
//! tensor: computing it never waits for the device.

use super::checks::{check_labels, cross_entropy_dims};
use super::{activation, host_ints};
use crate::backend::cpu::IGNORE_INDEX;
use crate::backend::{Backend, CrossEntropyOut};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

pub trait CrossEntropyKernels {
    /// Writes the mean loss over the `count > 0` labelled rows into the one-element f32 `loss`
    /// (row losses summed in row order in f64, as the CPU sums them, then divided by `count`), and
    /// with `dlogits`, d(loss)/d(logits) of the logits' shape and type. Labels are -100 or below the
    /// vocabulary (checked by the front).
    fn cross_entropy_into(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        count: usize,
        loss: &mut Tensor,
        dlogits: Option<&mut Tensor>,
    ) -> Result<()>;

    /// [`cross_entropy_into`](Self::cross_entropy_into) with d(loss)/d(logits) written over the
    /// logits.
    fn cross_entropy_over_logits(
        &self,
        logits: &mut Tensor,
        labels: &Tensor,
        count: usize,
        loss: &mut Tensor,
    ) -> Result<()>;
}

impl dyn Backend + '_ {
    /// The labelled count of a loss call, after every check.
    fn check_cross_entropy(&self, logits: &Tensor, labels: &Tensor) -> Result<usize> {
        let (_, vocab) = cross_entropy_dims(logits, labels)?;
        let ls = host_ints(self, labels, "cross-entropy labels")?;
        check_labels(&ls, vocab)?;
        activation(self, logits, "cross-entropy logits")?;
        match ls.iter().filter(|&&l| l != IGNORE_INDEX).count() {
            0 => Err(Error::NoLabels),
            count => Ok(count),
        }
    }

    /// Softmax cross-entropy of `logits` `[rows, vocab]` against `labels` `[rows]`, ignoring label
    /// -100, mean over the labelled rows; with `want_grad` also d(loss)/d(logits).
    pub fn cross_entropy(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        want_grad: bool,
    ) -> Result<CrossEntropyOut> {
        let count = self.check_cross_entropy(logits, labels)?;
        let mut loss = self.alloc(&[1], DType::F32)?;
        let mut dlogits = want_grad
            .then(|| self.alloc(logits.shape(), logits.dtype()))
            .transpose()?;
        self.cross_entropy_into(logits, labels, count, &mut loss, dlogits.as_mut())?;
        Ok(CrossEntropyOut {
            loss,
            count,
            dlogits,
        })
    }

    /// `cross_entropy` with the gradient, taking the logits by value: the
    /// gradient is written over them instead of into a second `[rows, vocab]` buffer, and is
    /// always returned.
    pub fn cross_entropy_in_place(
        &self,
        mut logits: Tensor,
        labels: &Tensor,
    ) -> Result<CrossEntropyOut> {
        let count = self.check_cross_entropy(&logits, labels)?;
        let mut loss = self.alloc(&[1], DType::F32)?;
        self.cross_entropy_over_logits(&mut logits, labels, count, &mut loss)?;
        Ok(CrossEntropyOut {
            loss,
            count,
            dlogits: Some(logits),
        })
    }
}
