//! Launch wrapper for `kernels/cross_entropy.cu`: softmax cross-entropy with ignore index -100 and
//! mean reduction, fused with its gradient.
//!
//! The labels are downloaded first (one `int` per row): the CPU backend's range check and its
//! [`Error::LabelOutOfRange`] need them on the host, and so does the labelled count, which scales
//! the gradient inside the kernel and must be known before the launch ([`Error::NoLabels`] when it
//! is zero). After the kernel the per-row losses come back and are summed here in row order in f64,
//! exactly as the CPU sums its row losses: the mean is deterministic and needs no second kernel.
//! The caller reads the loss on the host anyway, so that download is the one synchronisation the
//! call needs.
//!
//! Mixed precision: the logits are f32 or bf16 and the gradient has their element type; the max,
//! the sum and the per-row losses are f32 either way (`cross_entropy_forward_backward_f32` /
//! `_bf16`).

use super::{activation, activation_mut, int, kernel_name};
use crate::backend::CrossEntropyOut;
use crate::backend::checks::{check_labels, cross_entropy_dims};
use crate::backend::cpu::IGNORE_INDEX;
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{DevicePtr, KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// The most threads per row: enough to keep a large vocabulary's row in flight with coalesced loads.
const MAX_THREADS: usize = 512;

pub fn forward_backward(
    backend: &GpuBackend,
    logits: &Tensor,
    labels: &Tensor,
    want_grad: bool,
) -> Result<CrossEntropyOut> {
    let gradient = if want_grad {
        Gradient::New
    } else {
        Gradient::None
    };
    run(backend, logits, labels, gradient)
}

/// The loss, with d(loss)/d(logits) written over the logits (llm.c's fused classifier): no second
/// `[rows, vocab]` buffer. The returned `dlogits` is the logits tensor itself.
pub fn forward_backward_in_place(
    backend: &GpuBackend,
    mut logits: Tensor,
    labels: &Tensor,
) -> Result<CrossEntropyOut> {
    // A buffer shared with a clone is copied first: the clone keeps the logits.
    activation_mut(backend, &mut logits, "cross-entropy logits")?;
    let mut out = run(backend, &logits, labels, Gradient::OverLogits)?;
    out.dlogits = Some(logits);
    Ok(out)
}

/// Where the gradient goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gradient {
    None,
    New,
    OverLogits,
}

fn run(
    backend: &GpuBackend,
    logits: &Tensor,
    labels: &Tensor,
    gradient: Gradient,
) -> Result<CrossEntropyOut> {
    // The CPU backend's checks, in its order.
    let (rows, vocab) = cross_entropy_dims(logits, labels)?;
    let labels_ptr = backend.ptr(labels, DType::I32, "cross-entropy labels")?;
    let ls = labels.to_vec_i32()?;
    check_labels(&ls, vocab)?;
    let (logits_ptr, dtype) = activation(backend, logits, "cross-entropy logits")?;
    let count = ls.iter().filter(|&&l| l != IGNORE_INDEX).count();
    if count == 0 {
        return Err(Error::NoLabels);
    }

    // A labelled row has vocab >= 1 (its label is below vocab), and there is one: rows >= 1.
    let losses = backend.empty(&[rows], DType::F32)?;
    let dlogits = match gradient {
        Gradient::New => Some(backend.empty(logits.shape(), dtype)?),
        Gradient::None | Gradient::OverLogits => None,
    };
    let dlogits_ptr = match (&dlogits, gradient) {
        (Some(d), _) => backend.ptr(d, dtype, "cross-entropy dlogits")?,
        (None, Gradient::OverLogits) => logits_ptr,
        (None, _) => DevicePtr(0),
    };
    // The CPU scales by 1 / count in f64; the kernel multiplies in f32 by the rounded reciprocal.
    let inv_count = (1.0 / count as f64) as f32;
    let mut args = KernelArgs::new()
        .ptr(logits_ptr)
        .ptr(labels_ptr)
        .ptr(backend.ptr(&losses, DType::F32, "cross-entropy losses")?)
        .ptr(dlogits_ptr)
        .i32(int(vocab, "vocabulary size")?)
        .f32(inv_count);
    let threads = vocab.next_multiple_of(32).min(MAX_THREADS) as u32;
    let blocks = u32::try_from(rows)
        .map_err(|_| Error::Config(format!("rows = {rows} exceeds the grid")))?;
    let kernel = kernel_name("cross_entropy_forward_backward", dtype);
    backend.runtime().launch(
        &kernel,
        &LaunchConfig::linear(blocks, threads, 0),
        &mut args,
    )?;

    // Row order, f64, as the CPU: an ignored row adds 0.
    let total: f64 = losses.to_vec_f32()?.iter().map(|&l| f64::from(l)).sum();
    Ok(CrossEntropyOut {
        loss: (total / count as f64) as f32,
        count,
        dlogits,
    })
}
