//! `InstructionTracePositionEmbedding`: token + instruction + argument embeddings, LayerNorm,
//! dropout.

use super::params::{Init, ParamLayout};
use super::{DropoutSchedule, SITE_EMBEDDING};
use crate::backend::Param;
use crate::error::Result;
use crate::ops::sequences::Sequences;
use crate::tape::{Tape, Var};

#[derive(Debug, Clone)]
pub struct InstructionTracePositionEmbedding {
    pub token: Param,
    pub instruction: Param,
    pub argument: Param,
    pub norm_weight: Param,
    pub norm_bias: Param,
    hidden: usize,
    next_token_id: i32,
    eps: f32,
}

impl InstructionTracePositionEmbedding {
    pub fn new(
        layout: &mut ParamLayout,
        prefix: &str,
        vocab_size: usize,
        sequence_length: usize,
        hidden: usize,
        next_token_id: i32,
        eps: f32,
    ) -> Self {
        InstructionTracePositionEmbedding {
            token: layout.add(
                format!("{prefix}.token.weight"),
                &[vocab_size, hidden],
                Init::Normal,
            ),
            instruction: layout.add(
                format!("{prefix}.instruction.weight"),
                &[sequence_length, hidden],
                Init::Normal,
            ),
            argument: layout.add(
                format!("{prefix}.argument.weight"),
                &[sequence_length, hidden],
                Init::Normal,
            ),
            norm_weight: layout.add(format!("{prefix}.norm.weight"), &[hidden], Init::Ones),
            norm_bias: layout.add(format!("{prefix}.norm.bias"), &[hidden], Init::Zeros),
            hidden,
            next_token_id,
            eps,
        }
    }

    /// `tokens`: `[tokens]` ids, the rows of `sequences`; returns `[tokens, hidden]`.
    pub fn forward<'a>(
        &self,
        tape: &mut Tape<'a>,
        tokens: Var,
        sequences: &'a Sequences,
        dropout: Option<DropoutSchedule>,
    ) -> Result<Var> {
        let summed = tape.embedding(
            tokens,
            sequences,
            self.next_token_id,
            [self.token, self.instruction, self.argument],
            self.hidden,
        )?;
        let normed = tape.layernorm(summed, self.norm_weight, self.norm_bias, self.eps)?;
        let key = dropout.map(|d| d.key(SITE_EMBEDDING));
        tape.dropout(normed, key, sequences.dropout_rows())
    }
}
