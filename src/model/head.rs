//! `MaskedLMHead`: transform Linear(H, H), exact GELU, LayerNorm(config eps), decode
//! Linear(H, vocab) with its own bias (no weight tying).

use super::encoder::{layer_norm, linear_params};
use super::params::ParamLayout;
use crate::backend::Param;
use crate::error::Result;
use crate::tape::{Tape, Var};

#[derive(Debug, Clone)]
pub struct MaskedLMHead {
    pub transform: [Param; 2],
    pub norm: [Param; 2],
    pub decode: [Param; 2],
    hidden: usize,
    vocab_size: usize,
    eps: f32,
}

impl MaskedLMHead {
    /// The reference's `MaskedLMHead(hidden_dimensions, vocab_size, eps)`, registering its
    /// parameters under `head.*`.
    pub fn new(
        layout: &mut ParamLayout,
        hidden_dimensions: usize,
        vocab_size: usize,
        eps: f32,
    ) -> Self {
        MaskedLMHead {
            transform: linear_params(
                layout,
                "head.transform",
                hidden_dimensions,
                hidden_dimensions,
            ),
            norm: layer_norm(layout, "head.norm", hidden_dimensions),
            decode: linear_params(layout, "head.decode", vocab_size, hidden_dimensions),
            hidden: hidden_dimensions,
            vocab_size,
            eps,
        }
    }

    /// `state`: `[rows, hidden]`; returns logits `[rows, vocab]`.
    pub fn forward(&self, tape: &mut Tape, state: Var) -> Result<Var> {
        let h = tape.linear(state, self.transform[0], self.transform[1], self.hidden)?;
        let h = tape.gelu(h)?;
        let h = tape.layernorm(h, self.norm[0], self.norm[1], self.eps)?;
        tape.linear(h, self.decode[0], self.decode[1], self.vocab_size)
    }
}
