//! The op set: every computation the model performs, as forward/backward pairs behind one trait.
//!
//! The model and the tape only ever talk to `dyn Backend`. The CPU backend ([`cpu`]) implements
//! every op in plain Rust f32 and is the reference each GPU kernel is checked against; a CUDA
//! backend implements the same trait with hand-written kernels.
//!
//! Conventions shared by every op:
//! - activations are row-major `[rows, features]`, where rows are the flattened `batch x sequence`
//!   token axis;
//! - parameters are [`Param`] views into one flat f32 buffer, and their gradients are *added* into
//!   the flat gradient buffer at the same offset (the trainer zeroes it once per step);
//! - integer inputs (tokens, masks, labels, row indices) are `I32` tensors.

mod checks;
pub mod cpu;
pub mod cuda;
pub mod traffic;

pub use traffic::HostTraffic;

use crate::device::Device;
use crate::error::Result;
use crate::tensor::Tensor;

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
    /// `[batch * seq, hidden]`, heads concatenated along the feature axis.
    pub out: Tensor,
    /// Log-sum-exp of each score row, `[batch, heads, seq]`; backward rebuilds the probabilities
    /// from it instead of storing them. `-inf` for a row with no valid key.
    pub lse: Tensor,
}

/// The fused loss and its gradient.
#[derive(Debug, Clone)]
pub struct CrossEntropyOut {
    /// Mean loss over labelled rows.
    pub loss: f32,
    /// Number of labelled rows (label != -100).
    pub count: usize,
    /// d(loss)/d(logits), `[rows, vocab]`, when asked for.
    pub dlogits: Option<Tensor>,
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
/// ([`Backend::softmax_top_k`]).
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

/// The op set. Every method validates the shapes it is given and returns a typed error.
pub trait Backend: Send + Sync {
    fn device(&self) -> Device;

    /// The arithmetic this backend runs the model in (f32 unless a GPU backend was asked for bf16).
    fn precision(&self) -> crate::device::Precision {
        crate::device::Precision::F32
    }

    // ---- memory ----
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

    fn upload_f32(&self, shape: &[usize], data: &[f32]) -> Result<Tensor>;
    fn upload_i32(&self, shape: &[usize], data: &[i32]) -> Result<Tensor>;
    fn zeros_f32(&self, shape: &[usize]) -> Result<Tensor>;
    /// Copies any tensor (from any device) to this backend's device.
    fn to_device(&self, t: &Tensor) -> Result<Tensor>;
    fn download_f32(&self, t: &Tensor) -> Result<Vec<f32>>;
    fn download_i32(&self, t: &Tensor) -> Result<Vec<i32>>;
    /// Sets every element of an f32 tensor to zero.
    fn fill_zero(&self, t: &mut Tensor) -> Result<()>;

    // ---- embedding ----
    /// `out[b*S + j] = token[tokens[b, j]] + instruction[i(b, j)] + argument[a(b, j)]`, with the
    /// instruction and argument indices derived from `[NEXT]` (see `cpu::embedding`).
    /// `tokens`: `[batch, seq]`; returns `[batch * seq, hidden]`.
    #[allow(clippy::too_many_arguments)]
    fn embedding_forward(
        &self,
        tokens: &Tensor,
        next_token_id: i32,
        params: &Tensor,
        token: Param,
        instruction: Param,
        argument: Param,
        hidden: usize,
    ) -> Result<Tensor>;

    /// Adds `dout` into the three tables' gradients.
    #[allow(clippy::too_many_arguments)]
    fn embedding_backward(
        &self,
        dout: &Tensor,
        tokens: &Tensor,
        next_token_id: i32,
        grads: &mut Tensor,
        token: Param,
        instruction: Param,
        argument: Param,
    ) -> Result<()>;

    // ---- LayerNorm over the last axis ----
    fn layernorm_forward(
        &self,
        x: &Tensor,
        params: &Tensor,
        weight: Param,
        bias: Param,
        eps: f32,
    ) -> Result<LayerNormOut>;

    /// Returns dx; adds dweight and dbias into `grads`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        params: &Tensor,
        grads: &mut Tensor,
        weight: Param,
        bias: Param,
    ) -> Result<Tensor>;

    /// `s = a + b` and `LayerNorm(s)`: the residual add and the LayerNorm after it, which a backend
    /// may fuse into one pass. Returns `s` (LayerNorm's input, kept for its backward) and the
    /// LayerNorm output. The backward is that of the two ops apart.
    #[allow(clippy::too_many_arguments)]
    fn add_layernorm_forward(
        &self,
        a: &Tensor,
        b: &Tensor,
        params: &Tensor,
        weight: Param,
        bias: Param,
        eps: f32,
    ) -> Result<(Tensor, LayerNormOut)> {
        let s = self.add(a, b)?;
        let out = self.layernorm_forward(&s, params, weight, bias, eps)?;
        Ok((s, out))
    }

    // ---- linear: y = x W^T + b, W is [out, in] like torch.nn.Linear ----
    fn linear_forward(
        &self,
        x: &Tensor,
        params: &Tensor,
        weight: Param,
        bias: Param,
        out_features: usize,
    ) -> Result<Tensor>;

    /// `z = x W^T + b` and `GELU(z)`, the feed-forward block's first layer, which a backend may
    /// fuse (the bias and GELU in one pass after the GEMM). Returns `(z, GELU(z))`; the backward is
    /// [`linear_gelu_backward`](Self::linear_gelu_backward).
    fn linear_gelu_forward(
        &self,
        x: &Tensor,
        params: &Tensor,
        weight: Param,
        bias: Param,
        out_features: usize,
    ) -> Result<(Tensor, Tensor)> {
        let z = self.linear_forward(x, params, weight, bias, out_features)?;
        let y = self.gelu_forward(&z)?;
        Ok((z, y))
    }

    /// Returns dx; adds dW and db into `grads`.
    fn linear_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        params: &Tensor,
        grads: &mut Tensor,
        weight: Param,
        bias: Param,
    ) -> Result<Tensor>;

    /// The backward of [`linear_gelu_forward`](Self::linear_gelu_forward): given `dy` (the gradient
    /// of `GELU(z)`), `z` and the layer's input `x`, returns dx and adds dW and db into `grads`. A
    /// backend may fuse GELU's backward into the bias gradient's pass; the default runs the two
    /// backwards apart.
    #[allow(clippy::too_many_arguments)]
    fn linear_gelu_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        z: &Tensor,
        params: &Tensor,
        grads: &mut Tensor,
        weight: Param,
        bias: Param,
    ) -> Result<Tensor> {
        let dz = self.gelu_backward(dy, z)?;
        self.linear_backward(&dz, x, params, grads, weight, bias)
    }

    // ---- exact (erf) GELU ----
    fn gelu_forward(&self, x: &Tensor) -> Result<Tensor>;
    fn gelu_backward(&self, dy: &Tensor, x: &Tensor) -> Result<Tensor>;

    // ---- multi-head attention with a key-padding mask ----
    /// `qkv`: `[batch * seq, 3 * hidden]` laid out as all heads' q, then k, then v (head n's
    /// features at `n * d .. (n + 1) * d` inside each third). `mask`: `[batch, seq]`, 1 = real key.
    fn attention_forward(&self, qkv: &Tensor, mask: &Tensor, heads: usize) -> Result<AttentionOut>;

    /// Returns dqkv.
    fn attention_backward(
        &self,
        dout: &Tensor,
        qkv: &Tensor,
        mask: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        heads: usize,
    ) -> Result<Tensor>;

    // ---- elementwise ----
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    fn add_assign(&self, acc: &mut Tensor, x: &Tensor) -> Result<()>;

    // ---- dropout (inverted: kept elements scaled by 1 / (1 - p)) ----
    fn dropout_forward(&self, x: &Tensor, key: DropoutKey) -> Result<Tensor>;
    fn dropout_backward(&self, dy: &Tensor, key: DropoutKey) -> Result<Tensor>;

    /// `residual + dropout(x)`: a dropout and the residual add after it, which a backend may fuse
    /// into one pass. The backward is that of the two ops apart.
    fn dropout_add_forward(
        &self,
        residual: &Tensor,
        x: &Tensor,
        key: DropoutKey,
    ) -> Result<Tensor> {
        let dropped = self.dropout_forward(x, key)?;
        self.add(residual, &dropped)
    }

    // ---- loss ----
    /// Softmax cross-entropy of `logits` `[rows, vocab]` against `labels` `[rows]`, ignoring
    /// label -100, mean over the labelled rows; with `want_grad` also d(loss)/d(logits).
    fn cross_entropy(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        want_grad: bool,
    ) -> Result<CrossEntropyOut>;

    /// [`cross_entropy`](Self::cross_entropy) with the gradient, taking the logits by value: a
    /// backend may write d(loss)/d(logits) over them (llm.c's fused classifier) instead of
    /// allocating a second `[rows, vocab]` buffer. `dlogits` is always returned.
    fn cross_entropy_in_place(&self, logits: Tensor, labels: &Tensor) -> Result<CrossEntropyOut> {
        self.cross_entropy(&logits, labels, true)
    }

    // ---- row selection ----
    /// `out[i] = x[rows[i]]`.
    fn gather_rows(&self, x: &Tensor, rows: &Tensor) -> Result<Tensor>;
    /// The adjoint of `gather_rows`: a `[n, features]` tensor, zero except `out[rows[i]] += dy[i]`.
    fn scatter_rows(&self, dy: &Tensor, rows: &Tensor, n: usize) -> Result<Tensor>;
    /// Index of the largest element of each row (the first one on ties), `[rows]` i32.
    fn argmax_rows(&self, x: &Tensor) -> Result<Tensor>;

    /// The `k` most probable entries of the softmax of each row of `logits` `[rows, width]`, best
    /// first: a larger logit first, the lower index first on ties (so entry 0 is
    /// [`argmax_rows`](Self::argmax_rows)' answer), NaN logits last. `k` must be in `1..=width`.
    fn softmax_top_k(&self, logits: &Tensor, k: usize) -> Result<TopK>;

    // ---- optimiser ----
    /// One AdamW step over the whole flat buffers, exactly as `torch.optim.AdamW` (non-fused,
    /// non-foreach) computes it.
    fn adamw_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: AdamWStep,
    ) -> Result<()>;
}
