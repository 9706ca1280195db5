//! Token + instruction + argument embedding, with the instruction and argument index of every
//! token derived from `[NEXT]` (see `backend::cpu::embedding`).

use super::checks::{
    check_disjoint_slots, check_param, check_token_ids, embedding_dims, rows_cols,
};
use super::sequences::Sequences;
use super::{activation, expect_buffer, host_ints};
use crate::backend::{Backend, Param};
use crate::error::{Error, Result};
use crate::tape::{BackwardPass, Rule, Tape, Var};
use crate::tensor::{DType, Tensor};

/// The sizes of one embedding call: `tokens` ids, rows of `hidden` features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddingDims {
    pub tokens: usize,
    pub hidden: usize,
    pub next_token_id: i32,
}

pub trait EmbeddingKernels {
    /// `out[t] = token[tokens[t]] + instruction[i(t)] + argument[a(t)]`, with the positions `i`, `a`
    /// counted from each sequence's first row. The ids are below the token table's rows and every
    /// sequence within the position tables (checked by the front); `out` is `[tokens, hidden]` of
    /// the activation type, and `tokens * hidden > 0`.
    fn embedding_forward_into(
        &self,
        tokens: &Tensor,
        sequences: &Sequences,
        dims: EmbeddingDims,
        params: &Tensor,
        tables: [Param; 3],
        out: &mut Tensor,
    ) -> Result<()>;

    /// Adds `dout` into the three tables' slots of `grads` (disjoint, checked by the front).
    fn embedding_backward_into(
        &self,
        dout: &Tensor,
        tokens: &Tensor,
        sequences: &Sequences,
        dims: EmbeddingDims,
        grads: &mut Tensor,
        tables: [Param; 3],
    ) -> Result<()>;
}

/// The token count of an embedding call, its ids checked.
fn checked_tokens(
    backend: &dyn Backend,
    tokens: &Tensor,
    sequences: &Sequences,
    tables: [Param; 3],
    hidden: usize,
) -> Result<usize> {
    let [token, instruction, argument] = tables;
    let count = embedding_dims(tokens, sequences, instruction, argument, hidden)?;
    let ids = host_ints(backend, tokens, "embedding tokens")?;
    check_token_ids(&ids, sequences, token.len / hidden.max(1))?;
    sequences.check_device(backend)?;
    Ok(count)
}

impl dyn Backend + '_ {
    /// `tokens`: `[tokens]` I32, the rows of `sequences`; returns `[tokens, hidden]` of the
    /// backend's activation type.
    #[allow(clippy::too_many_arguments)]
    pub fn embedding_forward(
        &self,
        tokens: &Tensor,
        sequences: &Sequences,
        next_token_id: i32,
        params: &Tensor,
        token: Param,
        instruction: Param,
        argument: Param,
        hidden: usize,
    ) -> Result<Tensor> {
        let tables = [token, instruction, argument];
        let count = checked_tokens(self, tokens, sequences, tables, hidden)?;
        expect_buffer(self, params, "parameters")?;
        let vocab = token.len / hidden.max(1);
        let positions = instruction.len / hidden.max(1);
        check_param(
            token,
            vocab * hidden,
            params.numel(),
            "embedding token table",
        )?;
        check_param(
            instruction,
            positions * hidden,
            params.numel(),
            "embedding instruction table",
        )?;
        check_param(
            argument,
            positions * hidden,
            params.numel(),
            "embedding argument table",
        )?;
        let dtype = match self.precision() {
            crate::device::Precision::F32 => DType::F32,
            crate::device::Precision::Bf16 => DType::BF16,
        };
        let mut out = self.alloc(&[count, hidden], dtype)?;
        if count * hidden > 0 {
            let dims = EmbeddingDims {
                tokens: count,
                hidden,
                next_token_id,
            };
            self.embedding_forward_into(tokens, sequences, dims, params, tables, &mut out)?;
        }
        Ok(out)
    }

    /// Adds `dout` (`[tokens, hidden]`) into the three tables' gradients. The ids index the
    /// gradient tables, so they are checked here too, and the gradients are untouched on an error.
    #[allow(clippy::too_many_arguments)]
    pub fn embedding_backward(
        &self,
        dout: &Tensor,
        tokens: &Tensor,
        sequences: &Sequences,
        next_token_id: i32,
        grads: &mut Tensor,
        token: Param,
        instruction: Param,
        argument: Param,
    ) -> Result<()> {
        let tables = [token, instruction, argument];
        let (rows, hidden) = rows_cols(dout, "embedding dout")?;
        let count = checked_tokens(self, tokens, sequences, tables, hidden)?;
        if rows != count {
            return Err(Error::shape(
                "embedding dout",
                format!("[{}, {hidden}]", tokens.numel()),
                dout.shape(),
            ));
        }
        activation(self, dout, "embedding dout")?;
        expect_buffer(self, grads, "gradients")?;
        check_disjoint_slots(&tables, grads.numel(), "embedding")?;
        if rows * hidden == 0 {
            return Ok(());
        }
        let dims = EmbeddingDims {
            tokens: count,
            hidden,
            next_token_id,
        };
        self.embedding_backward_into(dout, tokens, sequences, dims, grads, tables)
    }
}

/// The embedding's backward: the tables' gradients, from the tokens the forward read.
struct EmbeddingRule<'a> {
    tokens: Var,
    sequences: &'a Sequences,
    out: Var,
    next_token_id: i32,
    tables: [Param; 3],
}

impl Rule for EmbeddingRule<'_> {
    fn output(&self) -> Var {
        self.out
    }

    fn backward(self: Box<Self>, pass: &mut BackwardPass<'_, '_>, dy: Tensor) -> Result<()> {
        let tokens = pass.value(self.tokens)?;
        let [token, instruction, argument] = self.tables;
        pass.backend.embedding_backward(
            &dy,
            tokens,
            self.sequences,
            self.next_token_id,
            pass.grads,
            token,
            instruction,
            argument,
        )
    }
}

impl<'a> Tape<'a> {
    /// The summed embedding of `tokens` (`[tokens]`, the rows of `sequences`).
    pub fn embedding(
        &mut self,
        tokens: Var,
        sequences: &'a Sequences,
        next_token_id: i32,
        tables: [Param; 3],
        hidden: usize,
    ) -> Result<Var> {
        let [token, instruction, argument] = tables;
        let y = self.backend().embedding_forward(
            self.value(tokens)?,
            sequences,
            next_token_id,
            self.weights().values,
            token,
            instruction,
            argument,
            hidden,
        )?;
        let out = self.push(y);
        self.record(EmbeddingRule {
            tokens,
            sequences,
            out,
            next_token_id,
            tables,
        });
        Ok(out)
    }
}
