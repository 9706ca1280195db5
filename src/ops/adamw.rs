//! One AdamW step over the whole flat buffers, exactly as `torch.optim.AdamW` (non-fused,
//! non-foreach) computes it, in one pass that also writes the GEMMs' bf16 copy of the weights in
//! mixed precision: the optimiser that writes the weights owns that copy (as llm.c does).

use super::checks::check_same_shape;
use super::{expect, expect_buffer};
use crate::backend::{AdamWCoefficients, AdamWStep, Backend};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// Skips an update on the device, without the host looking: when `loss` (a one-element f32 tensor,
/// the step's loss; `None` for a step without one) is not finite, or `halted` (a one-element I32
/// flag) is set, the update writes nothing and sets `halted`, so that every later update guarded by
/// the same flag is skipped too. The trainer reads the loss a step later; by then no non-finite
/// loss has touched the weights.
#[derive(Debug)]
pub struct LossGuard<'a> {
    pub loss: Option<&'a Tensor>,
    pub halted: &'a mut Tensor,
}

pub trait AdamWKernels {
    /// The update of every element (see `backend::cpu::adamw`), with `gemm_copy`, when given, set
    /// to the new parameters rounded to bf16. Buffers of one length, not empty; the guard's tensors
    /// hold one element each.
    #[allow(clippy::too_many_arguments)]
    fn adamw_update(
        &self,
        params: &mut Tensor,
        gemm_copy: Option<&mut Tensor>,
        grads: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        coefficients: AdamWCoefficients,
        guard: Option<LossGuard<'_>>,
    ) -> Result<()>;
}

impl dyn Backend + '_ {
    /// One AdamW step over the whole flat buffers.
    pub fn adamw_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: AdamWStep,
    ) -> Result<()> {
        self.adamw_step_guarded(params, None, grads, m, v, step, None)
    }

    /// `adamw_step` that also rewrites `gemm_copy` (the bf16 copy of the
    /// parameters the GEMMs read in mixed precision) and skips itself under `guard`.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_step_guarded(
        &self,
        params: &mut Tensor,
        gemm_copy: Option<&mut Tensor>,
        grads: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: AdamWStep,
        guard: Option<LossGuard<'_>>,
    ) -> Result<()> {
        check_same_shape(params, grads, "adamw gradients")?;
        check_same_shape(params, m, "adamw first moment")?;
        check_same_shape(params, v, "adamw second moment")?;
        expect_buffer(self, params, "adamw parameters")?;
        expect_buffer(self, grads, "adamw gradients")?;
        expect_buffer(self, m, "adamw first moment")?;
        expect_buffer(self, v, "adamw second moment")?;
        if let Some(copy) = &gemm_copy {
            check_same_shape(params, copy, "adamw bf16 weights")?;
            expect(self, copy, DType::BF16, "adamw bf16 weights")?;
        }
        if let Some(g) = &guard {
            let loss = g.loss.map(|l| (l, DType::F32, "adamw guard loss"));
            let flag = Some((&*g.halted, DType::I32, "adamw guard flag"));
            for (t, dtype, what) in loss.into_iter().chain(flag) {
                expect(self, t, dtype, what)?;
                if t.numel() != 1 {
                    return Err(crate::Error::shape(what, "[1]", t.shape()));
                }
            }
        }
        if params.numel() == 0 {
            return Ok(());
        }
        // The step's scalars, computed once on the host, the same for every backend.
        self.adamw_update(params, gemm_copy, grads, m, v, step.coefficients(), guard)
    }
}
