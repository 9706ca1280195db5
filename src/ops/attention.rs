//! Multi-head attention with a key-padding mask, fused (FlashAttention-2's algorithm on the GPU):
//! the probabilities are never stored; the backward rebuilds them from the saved log-sum-exp.

use super::checks::{AttentionDims, attention_dims, check_attention_saved};
use super::{activation, expect};
use crate::backend::{AttentionOut, Backend};
use crate::error::Result;
use crate::tape::{BackwardPass, Rule, Tape, Var};
use crate::tensor::{DType, Tensor};

pub trait AttentionKernels {
    /// `out` `[batch * seq, hidden]` (activation type) and `lse` `[batch, heads, seq]` (f32) from
    /// `qkv` `[batch * seq, 3 * hidden]` (all heads' q, then k, then v) and the I32 key mask
    /// `[batch, seq]` (1 = real key). `batch * seq > 0`.
    fn attention_forward_into(
        &self,
        qkv: &Tensor,
        mask: &Tensor,
        dims: AttentionDims,
        out: &mut AttentionOut,
    ) -> Result<()>;

    /// Writes `dqkv` (like `qkv`) from `dout` and what the forward saved.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward_into(
        &self,
        dout: &Tensor,
        qkv: &Tensor,
        mask: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        dims: AttentionDims,
        dqkv: &mut Tensor,
    ) -> Result<()>;
}

impl dyn Backend + '_ {
    /// `qkv`: `[batch * seq, 3 * hidden]` laid out as all heads' q, then k, then v (head n's
    /// features at `n * d .. (n + 1) * d` inside each third). `mask`: `[batch, seq]`, 1 = real key.
    pub fn attention_forward(
        &self,
        qkv: &Tensor,
        mask: &Tensor,
        heads: usize,
    ) -> Result<AttentionOut> {
        let dims = attention_dims(qkv, mask, heads)?;
        let dtype = activation(self, qkv, "qkv")?;
        expect(self, mask, DType::I32, "attention mask")?;
        let rows = dims.batch * dims.seq;
        let mut out = AttentionOut {
            out: self.alloc(&[rows, heads * dims.head_dim], dtype)?,
            lse: self.alloc(&[dims.batch, heads, dims.seq], DType::F32)?,
        };
        if rows > 0 {
            self.attention_forward_into(qkv, mask, dims, &mut out)?;
        }
        Ok(out)
    }

    /// Returns dqkv.
    pub fn attention_backward(
        &self,
        dout: &Tensor,
        qkv: &Tensor,
        mask: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        heads: usize,
    ) -> Result<Tensor> {
        let dims = attention_dims(qkv, mask, heads)?;
        check_attention_saved(&dims, dout, out, lse)?;
        let dtype = activation(self, qkv, "qkv")?;
        expect(self, dout, dtype, "attention dout")?;
        expect(self, mask, DType::I32, "attention mask")?;
        expect(self, out, dtype, "attention output")?;
        expect(self, lse, DType::F32, "attention lse")?;
        let mut dqkv = self.alloc(qkv.shape(), dtype)?;
        if dims.batch * dims.seq > 0 {
            self.attention_backward_into(dout, qkv, mask, out, lse, dims, &mut dqkv)?;
        }
        Ok(dqkv)
    }
}

struct AttentionRule {
    qkv: Var,
    mask: Var,
    out: Var,
    lse: Tensor,
    heads: usize,
}

impl Rule for AttentionRule {
    fn output(&self) -> Var {
        self.out
    }

    fn backward(self: Box<Self>, pass: &mut BackwardPass<'_, '_>, dy: Tensor) -> Result<()> {
        let dqkv = pass.backend.attention_backward(
            &dy,
            pass.value(self.qkv)?,
            pass.value(self.mask)?,
            pass.value(self.out)?,
            &self.lse,
            self.heads,
        )?;
        pass.accumulate(self.qkv, dqkv)
    }
}

impl Tape<'_> {
    pub fn attention(&mut self, qkv: Var, mask: Var, heads: usize) -> Result<Var> {
        let r = self
            .backend()
            .attention_forward(self.value(qkv)?, self.value(mask)?, heads)?;
        let out = self.push(r.out);
        self.record(AttentionRule {
            qkv,
            mask,
            out,
            lse: r.lse,
            heads,
        });
        Ok(out)
    }
}
