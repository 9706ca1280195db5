//! Multi-head attention over variable-length sequences (see [`Sequences`]), with a key-padding
//! mask, fused (FlashAttention-2's algorithm on the GPU): the probabilities are never stored; the
//! backward rebuilds them from the saved log-sum-exp.

use super::checks::{AttentionDims, attention_dims, check_attention_saved};
use super::sequences::Sequences;
use super::{activation, expect};
use crate::backend::{AttentionOut, Backend};
use crate::error::Result;
use crate::tape::{BackwardPass, Rule, Tape, Var};
use crate::tensor::{DType, Tensor};

pub trait AttentionKernels {
    /// `out` `[tokens, hidden]` (activation type) and `lse` `[heads, tokens]` (f32) from `qkv`
    /// `[tokens, 3 * hidden]` (all heads' q, then k, then v): each row attends to the real keys of
    /// its own sequence (`sequences`: offsets, and the key mask when some row is not a real key).
    /// `tokens > 0`.
    fn attention_forward_into(
        &self,
        qkv: &Tensor,
        sequences: &Sequences,
        dims: AttentionDims,
        out: &mut AttentionOut,
    ) -> Result<()>;

    /// Writes `dqkv` (like `qkv`) from `dout` and what the forward saved.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward_into(
        &self,
        dout: &Tensor,
        qkv: &Tensor,
        sequences: &Sequences,
        out: &Tensor,
        lse: &Tensor,
        dims: AttentionDims,
        dqkv: &mut Tensor,
    ) -> Result<()>;
}

impl dyn Backend + '_ {
    /// `qkv`: `[tokens, 3 * hidden]` laid out as all heads' q, then k, then v (head n's
    /// features at `n * d .. (n + 1) * d` inside each third), one row per row of `sequences`.
    pub fn attention_forward(
        &self,
        qkv: &Tensor,
        sequences: &Sequences,
        heads: usize,
    ) -> Result<AttentionOut> {
        let dims = attention_dims(qkv, sequences, heads)?;
        let dtype = activation(self, qkv, "qkv")?;
        sequences.check_device(self)?;
        let mut out = AttentionOut {
            out: self.alloc(&[dims.tokens, heads * dims.head_dim], dtype)?,
            lse: self.alloc(&[heads, dims.tokens], DType::F32)?,
        };
        if dims.tokens > 0 {
            self.attention_forward_into(qkv, sequences, dims, &mut out)?;
        }
        Ok(out)
    }

    /// Returns dqkv.
    pub fn attention_backward(
        &self,
        dout: &Tensor,
        qkv: &Tensor,
        sequences: &Sequences,
        out: &Tensor,
        lse: &Tensor,
        heads: usize,
    ) -> Result<Tensor> {
        let dims = attention_dims(qkv, sequences, heads)?;
        check_attention_saved(&dims, dout, out, lse)?;
        let dtype = activation(self, qkv, "qkv")?;
        expect(self, dout, dtype, "attention dout")?;
        sequences.check_device(self)?;
        expect(self, out, dtype, "attention output")?;
        expect(self, lse, DType::F32, "attention lse")?;
        let mut dqkv = self.alloc(qkv.shape(), dtype)?;
        if dims.tokens > 0 {
            self.attention_backward_into(dout, qkv, sequences, out, lse, dims, &mut dqkv)?;
        }
        Ok(dqkv)
    }
}

struct AttentionRule<'a> {
    qkv: Var,
    sequences: &'a Sequences,
    out: Var,
    lse: Tensor,
    heads: usize,
}

impl Rule for AttentionRule<'_> {
    fn output(&self) -> Var {
        self.out
    }

    fn backward(self: Box<Self>, pass: &mut BackwardPass<'_, '_>, dy: Tensor) -> Result<()> {
        let dqkv = pass.backend.attention_backward(
            &dy,
            pass.value(self.qkv)?,
            self.sequences,
            pass.value(self.out)?,
            &self.lse,
            self.heads,
        )?;
        pass.accumulate(self.qkv, dqkv)
    }
}

impl<'a> Tape<'a> {
    /// Multi-head attention over `qkv`'s rows, each row attending within its sequence.
    pub fn attention(&mut self, qkv: Var, sequences: &'a Sequences, heads: usize) -> Result<Var> {
        let r = self
            .backend()
            .attention_forward(self.value(qkv)?, sequences, heads)?;
        let out = self.push(r.out);
        self.record(AttentionRule {
            qkv,
            sequences,
            out,
            lse: r.lse,
            heads,
        });
        Ok(out)
    }
}
