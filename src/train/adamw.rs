//! AdamW over the flat parameter buffer with PyTorch's defaults.

use serde::{Deserialize, Serialize};

use crate::backend::{AdamWStep, Backend};
use crate::error::Result;
use crate::ops::adamw::LossGuard;
use crate::tensor::Tensor;

/// `torch.optim.AdamW` hyper-parameters; the defaults are PyTorch's, applied to every parameter
/// (biases and norms included), as the reference does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// The first moment's decay.
    pub beta1: f64,
    /// The second moment's decay.
    pub beta2: f64,
    /// Added to the second moment's root.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// The optimiser state: both moments, flat and aligned with the parameters, and the step count.
pub struct AdamW {
    /// The hyperparameters.
    pub config: AdamWConfig,
    /// The first moments.
    pub exp_avg: Tensor,
    /// The second moments.
    pub exp_avg_sq: Tensor,
    /// Steps taken so far.
    pub steps: u64,
}

impl AdamW {
    /// Zero moments for `num_parameters` parameters on the backend's device.
    pub fn new(backend: &dyn Backend, num_parameters: usize, config: AdamWConfig) -> Result<Self> {
        Ok(AdamW {
            config,
            exp_avg: backend.zeros_f32(&[num_parameters])?,
            exp_avg_sq: backend.zeros_f32(&[num_parameters])?,
            steps: 0,
        })
    }

    /// One update of every parameter at learning rate `lr`, rewriting `gemm_copy` (the bf16 copy
    /// of the weights in mixed precision) in the same pass, and skipped on the device under `guard`.
    pub fn step(
        &mut self,
        backend: &dyn Backend,
        (params, gemm_copy): (&mut Tensor, Option<&mut Tensor>),
        grads: &Tensor,
        lr: f64,
        guard: Option<LossGuard<'_>>,
    ) -> Result<()> {
        let step = AdamWStep {
            lr,
            beta1: self.config.beta1,
            beta2: self.config.beta2,
            eps: self.config.eps,
            weight_decay: self.config.weight_decay,
            t: self.steps + 1,
        };
        backend.adamw_step_guarded(
            params,
            gemm_copy,
            grads,
            &mut self.exp_avg,
            &mut self.exp_avg_sq,
            step,
            guard,
        )?;
        self.steps += 1;
        Ok(())
    }
}
