//! Launch wrappers for `kernels/cross_entropy.cu`: softmax cross-entropy with ignore index -100 and
//! mean reduction, fused with its gradient.
//!
//! The front counted the labelled rows on the host (from the labels' host copy) before anything
//! was queued; the count scales the gradient inside the kernel. The per-row losses then go through
//! `cross_entropy_mean_f32`, which adds them in row order in f64 exactly as the CPU sums its row
//! losses and divides by the count: the mean is deterministic and never leaves the device unless
//! the caller reads it.
//!
//! Mixed precision: the logits are f32 or bf16 and the gradient has their element type; the max,
//! the sum and the per-row losses are f32 either way (`cross_entropy_forward_backward_f32` /
//! `_bf16`).

use super::{int, kernel_name};
use crate::backend::Backend;
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{DevicePtr, KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::ops::cross_entropy::CrossEntropyKernels;
use crate::tensor::{DType, Tensor};

/// The most threads per row: enough to keep a large vocabulary's row in flight with coalesced loads.
const MAX_THREADS: usize = 512;

/// Where the gradient goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gradient {
    None,
    Into(DevicePtr),
    OverLogits,
}

#[allow(clippy::too_many_arguments)]
fn run(
    backend: &GpuBackend,
    logits: DevicePtr,
    shape: &[usize],
    dtype: DType,
    labels: &Tensor,
    count: usize,
    loss: &mut Tensor,
    gradient: Gradient,
) -> Result<()> {
    let vocab = shape.last().copied().unwrap_or(0);
    let rows: usize = shape.iter().product::<usize>() / vocab.max(1);
    // A labelled row has vocab >= 1 (its label is below vocab), and there is one: rows >= 1.
    let losses = backend.alloc(&[rows], DType::F32)?;
    let losses_ptr = backend.ptr(&losses)?;
    let dlogits = match gradient {
        Gradient::None => DevicePtr(0),
        Gradient::Into(d) => d,
        Gradient::OverLogits => logits,
    };
    // The CPU scales by 1 / count in f64; the kernel multiplies in f32 by the rounded reciprocal.
    let inv_count = (1.0 / count as f64) as f32;
    let mut args = KernelArgs::new()
        .ptr(logits)
        .ptr(backend.ptr(labels)?)
        .ptr(losses_ptr)
        .ptr(dlogits)
        .i32(int(vocab, "vocabulary size")?)
        .f32(inv_count);
    let threads = vocab.next_multiple_of(32).min(MAX_THREADS) as u32;
    let blocks = u32::try_from(rows)
        .map_err(|_| Error::Config(format!("rows = {rows} exceeds the grid")))?;
    backend.runtime().launch(
        &kernel_name("cross_entropy_forward_backward", dtype),
        &LaunchConfig::linear(blocks, threads, 0),
        &mut args,
    )?;
    let mut args = KernelArgs::new()
        .ptr(losses_ptr)
        .i32(int(rows, "rows")?)
        .i32(int(count, "labelled rows")?)
        .ptr(backend.ptr_mut(loss)?);
    backend.runtime().launch(
        "cross_entropy_mean_f32",
        &LaunchConfig::linear(1, 32, 0),
        &mut args,
    )
}

impl CrossEntropyKernels for GpuBackend {
    fn cross_entropy_into(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        count: usize,
        loss: &mut Tensor,
        dlogits: Option<&mut Tensor>,
    ) -> Result<()> {
        let gradient = match dlogits {
            Some(d) => Gradient::Into(self.ptr_mut(d)?),
            None => Gradient::None,
        };
        let logits_ptr = self.ptr(logits)?;
        run(
            self,
            logits_ptr,
            logits.shape(),
            logits.dtype(),
            labels,
            count,
            loss,
            gradient,
        )
    }

    /// llm.c's fused classifier: no second `[rows, vocab]` buffer. A buffer shared with a clone is
    /// copied first, so the clone keeps the logits.
    fn cross_entropy_over_logits(
        &self,
        logits: &mut Tensor,
        labels: &Tensor,
        count: usize,
        loss: &mut Tensor,
    ) -> Result<()> {
        let logits_ptr = self.ptr_mut(logits)?;
        run(
            self,
            logits_ptr,
            logits.shape(),
            logits.dtype(),
            labels,
            count,
            loss,
            Gradient::OverLogits,
        )
    }
}
