//! The devices: the narrow trait each backend implements, and the types the ops exchange.
//!
//! The model and the tape only ever talk to `dyn Backend`, through the checked front in
//! [`crate::ops`]. The CPU backend ([`cpu`]) implements every op family in plain Rust f32 and is the
//! reference each GPU kernel is checked against; the CUDA backend ([`cuda`]) implements the same
//! families with hand-written kernels.
//!
//! Conventions shared by every op:
//! - activations are row-major `[rows, features]`, where rows are the flattened `batch x sequence`
//!   token axis;
//! - parameters are [`Param`] views into one flat f32 buffer, and their gradients are *added* into
//!   the flat gradient buffer at the same offset (the trainer zeroes it once per step);
//! - integer inputs (tokens, masks, labels, row indices) are `I32` tensors.

pub mod cpu;
pub mod cuda;
mod pending;
pub mod traffic;

pub use pending::PendingScalar;
pub use traffic::HostTraffic;

use crate::device::Device;
use crate::error::Result;
use crate::ops::adamw::AdamWKernels;
use crate::ops::attention::AttentionKernels;
use crate::ops::convert::ConvertKernels;
use crate::ops::cross_entropy::CrossEntropyKernels;
use crate::ops::dropout::DropoutKernels;
use crate::ops::elementwise::ElementwiseKernels;
use crate::ops::embedding::EmbeddingKernels;
use crate::ops::layernorm::LayerNormKernels;
use crate::ops::linear::LinearKernels;
use crate::ops::memory::HostData;
use crate::ops::rows::RowKernels;
use crate::tensor::{DType, Tensor};

/// A parameter: `len` elements at `offset` in the flat parameter (and gradient) buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    pub offset: usize,
    pub len: usize,
}

/// What LayerNorm's forward saves for its backward.
#[derive(Debug, Clone)]
pub struct LayerNormOut {
    pub y: Tensor,
    /// Per-row mean, `[rows]`.
    pub mean: Tensor,
    /// Per-row `1 / sqrt(var + eps)`, `[rows]`.
    pub rstd: Tensor,
}

/// What attention's forward saves for its backward.
#[derive(Debug, Clone)]
pub struct AttentionOut {
    /// `[tokens, hidden]`, heads concatenated along the feature axis.
    pub out: Tensor,
    /// Log-sum-exp of each score row, `[heads, tokens]`; backward rebuilds the probabilities
    /// from it instead of storing them. `-inf` for a row with no valid key.
    pub lse: Tensor,
}

/// The fused loss and its gradient.
#[derive(Debug, Clone)]
pub struct CrossEntropyOut {
    /// Mean loss over labelled rows: a one-element f32 tensor on the device, so that computing it
    /// never waits for the device ([`loss_value`](Self::loss_value) reads it).
    pub loss: Tensor,
    /// Number of labelled rows (label != -100).
    pub count: usize,
    /// d(loss)/d(logits), `[rows, vocab]`, when asked for.
    pub dlogits: Option<Tensor>,
}

impl CrossEntropyOut {
    /// The mean loss, read back to the host (this waits for the device).
    pub fn loss_value(&self) -> Result<f32> {
        Ok(self.loss.to_vec_f32()?[0])
    }
}

/// Device memory held by a backend's tensors ([`Backend::memory_use`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// Bytes held now.
    pub live: usize,
    /// The most bytes held at once since the last reset.
    pub peak: usize,
}

/// The `k` most probable entries of each row of a softmax, best first
/// (`softmax_top_k` on a [`Backend`]).
#[derive(Debug, Clone)]
pub struct TopK {
    /// `[rows, k]` i32: the entries' indices (token ids, for logits over a vocabulary).
    pub ids: Tensor,
    /// `[rows, k]` f32: their softmax probabilities.
    pub probabilities: Tensor,
}

/// Identifies one dropout mask. Masks come from a counter-based generator (Philox4x32-10) keyed by
/// `(seed, step, site, element)`, so any backend draws the same mask and backward regenerates it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutKey {
    /// Probability of dropping an element.
    pub p: f32,
    pub seed: u64,
    /// Optimiser step: a new mask every step.
    pub step: u64,
    /// Which dropout in the network (embedding, layer l's feed-forward, ...).
    pub site: u32,
}

/// One AdamW update, with the scalars PyTorch computes on the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// 1-based step number, for bias correction.
    pub t: u64,
}

/// The per-step scalars of [`AdamWStep`], computed in f64 on the host as PyTorch does, then rounded
/// to the f32 the element-wise update uses. Every backend applies exactly these.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWCoefficients {
    /// `1 - lr * weight_decay`.
    pub decay: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f32,
    /// `sqrt(1 - beta2^t)`.
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
}

impl AdamWStep {
    pub fn coefficients(&self) -> AdamWCoefficients {
        AdamWCoefficients {
            decay: (1.0 - self.lr * self.weight_decay) as f32,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            step_size: (self.lr / (1.0 - self.beta1.powi(self.t as i32))) as f32,
            bias_correction2_sqrt: (1.0 - self.beta2.powi(self.t as i32)).sqrt() as f32,
            eps: self.eps as f32,
        }
    }
}

/// A device: memory, and every op family's kernels (each family's trait is declared by its front
/// module in [`crate::ops`], which checks the inputs and allocates the outputs before calling it).
///
/// Callers use the front (`backend.layernorm_forward(..)`, inherent methods of `dyn Backend`);
/// the methods here only move memory and compute on operands the front has checked.
pub trait Backend:
    Send
    + Sync
    + EmbeddingKernels
    + LayerNormKernels
    + LinearKernels
    + ElementwiseKernels
    + AttentionKernels
    + DropoutKernels
    + CrossEntropyKernels
    + RowKernels
    + AdamWKernels
    + ConvertKernels
{
    fn device(&self) -> Device;

    /// The arithmetic this backend runs the model in (f32 unless a GPU backend was asked for bf16).
    fn precision(&self) -> crate::device::Precision {
        crate::device::Precision::F32
    }

    /// Waits until every operation queued so far has finished (a GPU runs them asynchronously):
    /// for timing. The CPU finishes each op before returning.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Bytes of device memory this backend's tensors hold, now and at their peak since the last
    /// [`reset_peak_memory`](Self::reset_peak_memory); `None` where not tracked (the CPU, whose
    /// tensors are ordinary heap memory).
    fn memory_use(&self) -> Option<MemoryUse> {
        None
    }

    /// Starts a new peak for [`memory_use`](Self::memory_use).
    fn reset_peak_memory(&self) {}

    /// Host <-> device copies and synchronisations since this backend's device runtime was made
    /// (all zero on the CPU, whose tensors are host memory).
    fn host_traffic(&self) -> HostTraffic {
        HostTraffic::default()
    }

    /// A new tensor of `shape` and `dtype` whose contents are unspecified (poisoned with NaN bytes
    /// in the emulator): an op's output, which its kernel writes in full.
    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor>;

    /// A new tensor holding `data`, whose length is `shape`'s element count (checked by the
    /// front). An I32 tensor keeps the host copy ([`Tensor::host_i32`]), from which the front checks
    /// token ids, labels and row indices without reading the device.
    fn upload(&self, shape: &[usize], data: HostData<'_>) -> Result<Tensor>;
    /// Copies an f32 (or bf16, widened) tensor of this device to the host, waiting for it.
    fn download_f32(&self, t: &Tensor) -> Result<Vec<f32>>;
    fn download_i32(&self, t: &Tensor) -> Result<Vec<i32>>;
    /// Starts copying a one-element f32 tensor to the host without waiting for the queue: the
    /// training loss, read a step later.
    fn read_scalar(&self, t: &Tensor) -> Result<PendingScalar>;
    /// Sets every element of an f32 or bf16 tensor to zero.
    fn fill_zero(&self, t: &mut Tensor) -> Result<()>;
}
