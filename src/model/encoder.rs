//! The pre-LayerNorm transformer encoder layer and the stack of them.
//!
//! ```text
//! h = LayerNorm1(x)        eps 1e-5, PyTorch's default, not the config eps
//! x = x + MHA(h, mask)
//! h = LayerNorm2(x)        eps 1e-5
//! x = x + Dropout(Linear2(GELU(Linear1(h))))
//! ```
//! Attention keeps one fused QKV weight `[3H, H]` per layer (all heads' q rows, then k, then v);
//! checkpoints split it into the reference's per-head `q`/`k`/`v` Linear modules.

use super::embedding::InstructionTracePositionEmbedding;
use super::params::{Init, ParamLayout};
use super::{Config, DropoutSchedule, site_feed_forward};
use crate::backend::Param;
use crate::error::Result;
use crate::ops::sequences::Sequences;
use crate::tape::{Tape, Var};

/// LayerNorm eps inside the encoder layers (`nn.LayerNorm`'s default).
pub const LAYER_NORM_EPS: f32 = 1e-5;

#[derive(Debug, Clone)]
pub struct EncoderLayer {
    pub norm1: [Param; 2],
    pub qkv: [Param; 2],
    pub output: [Param; 2],
    pub norm2: [Param; 2],
    pub linear1: [Param; 2],
    pub linear2: [Param; 2],
    index: usize,
    hidden: usize,
    intermediate: usize,
    heads: usize,
}

pub(crate) fn linear_params(
    layout: &mut ParamLayout,
    name: &str,
    out: usize,
    inp: usize,
) -> [Param; 2] {
    [
        layout.add(
            format!("{name}.weight"),
            &[out, inp],
            Init::Linear { fan_in: inp },
        ),
        layout.add(format!("{name}.bias"), &[out], Init::Linear { fan_in: inp }),
    ]
}

pub(crate) fn layer_norm(layout: &mut ParamLayout, name: &str, features: usize) -> [Param; 2] {
    [
        layout.add(format!("{name}.weight"), &[features], Init::Ones),
        layout.add(format!("{name}.bias"), &[features], Init::Zeros),
    ]
}

impl EncoderLayer {
    pub fn new(layout: &mut ParamLayout, prefix: &str, index: usize, config: &Config) -> Self {
        let h = config.hidden_dimensions;
        let i = config.intermediate_dimensions;
        EncoderLayer {
            norm1: layer_norm(layout, &format!("{prefix}.norm1"), h),
            // Each per-head q/k/v Linear(H, d) has fan_in H, so the fused weight shares the bound.
            qkv: linear_params(layout, &format!("{prefix}.attention.qkv"), 3 * h, h),
            output: linear_params(layout, &format!("{prefix}.attention.output"), h, h),
            norm2: layer_norm(layout, &format!("{prefix}.norm2"), h),
            linear1: linear_params(layout, &format!("{prefix}.ff.linear1"), i, h),
            linear2: linear_params(layout, &format!("{prefix}.ff.linear2"), h, i),
            index,
            hidden: h,
            intermediate: i,
            heads: config.heads,
        }
    }

    /// `x`: `[tokens, hidden]`, the rows of `sequences`.
    pub fn forward<'a>(
        &self,
        tape: &mut Tape<'a>,
        x: Var,
        sequences: &'a Sequences,
        dropout: Option<DropoutSchedule>,
    ) -> Result<Var> {
        let h = tape.layernorm(x, self.norm1[0], self.norm1[1], LAYER_NORM_EPS)?;
        let qkv = tape.linear(h, self.qkv[0], self.qkv[1], 3 * self.hidden)?;
        let heads = tape.attention(qkv, sequences, self.heads)?;
        let attended = tape.linear(heads, self.output[0], self.output[1], self.hidden)?;
        // x + attended, then norm2 of it: one fused pass on the GPU.
        let (x, h) =
            tape.add_layernorm(x, attended, self.norm2[0], self.norm2[1], LAYER_NORM_EPS)?;
        let h = tape.linear_gelu(h, self.linear1[0], self.linear1[1], self.intermediate)?;
        let h = tape.linear(h, self.linear2[0], self.linear2[1], self.hidden)?;
        let key = dropout.map(|d| d.key(site_feed_forward(self.index)));
        tape.dropout_add(x, h, key, sequences.dropout_rows())
    }
}

/// The embedding and the layer stack. There is no final LayerNorm.
#[derive(Debug, Clone)]
pub struct InstructionTraceTransformerEncoder {
    pub embedding: InstructionTracePositionEmbedding,
    pub layers: Vec<EncoderLayer>,
}

impl InstructionTraceTransformerEncoder {
    pub fn new(layout: &mut ParamLayout, config: &Config) -> Self {
        let embedding = InstructionTracePositionEmbedding::new(
            layout,
            "encoder.embedding",
            config.vocab_size,
            config.sequence_length,
            config.hidden_dimensions,
            config.next_token_id,
            config.eps,
        );
        let layers = (0..config.depth)
            .map(|l| EncoderLayer::new(layout, &format!("encoder.layers.{l}"), l, config))
            .collect();
        InstructionTraceTransformerEncoder { embedding, layers }
    }

    /// `tokens`: `[tokens]`, the rows of `sequences`; returns the hidden states `[tokens, hidden]`.
    pub fn forward<'a>(
        &self,
        tape: &mut Tape<'a>,
        tokens: Var,
        sequences: &'a Sequences,
        dropout: Option<DropoutSchedule>,
    ) -> Result<Var> {
        let mut x = self.embedding.forward(tape, tokens, sequences, dropout)?;
        for layer in &self.layers {
            x = layer.forward(tape, x, sequences, dropout)?;
            // On an inference tape this frees the finished layer's activations.
            tape.keep_only(&[tokens, x]);
        }
        Ok(x)
    }
}
