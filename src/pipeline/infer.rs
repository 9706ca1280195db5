//! `maskedlm infer`: fill the `[MASK]` tokens of pre-tokenized disassembly.
//!
//! Each input is encoded with the tokenizer (truncated to its sequence length like the reference),
//! the model's logits are computed at the `[MASK]` positions only, and each mask is replaced by
//! its most probable token. The output is decoded with special tokens kept and `[PAD]` removed,
//! as the reference's infer pipeline prints it. Candidates carry softmax probabilities.

use serde::Serialize;

use crate::data::tokenizer::InstructionTokenizer;
use crate::error::Result;
use crate::model::InstructionTraceTransformerEncoderForMaskedLM as Model;
use crate::tensor::Tensor;

/// One candidate token for a mask.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub id: i32,
    pub token: String,
    pub probability: f64,
}

/// The candidates for the mask at token position `position`, best first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaskPrediction {
    pub position: usize,
    pub candidates: Vec<Candidate>,
}

/// One input with its masks filled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Filled {
    pub input: String,
    pub output: String,
    pub masks: Vec<MaskPrediction>,
    /// The input was longer than the tokenizer's sequence length and was cut.
    #[serde(skip)]
    pub truncated: bool,
}

/// Softmax of one row of logits, in f64.
fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Fills the masks of `text`, keeping the `top_k` best candidates of each (at least one).
pub fn fill_masks(
    model: &Model,
    tokenizer: &InstructionTokenizer,
    text: &str,
    top_k: usize,
) -> Result<Filled> {
    let encoding = tokenizer.encode(text)?;
    let mut ids = encoding.real_tokens();
    let mask_id = tokenizer.mask_token_id() as i32;
    let positions: Vec<i32> = (0..ids.len() as i32)
        .filter(|&j| ids[j as usize] == mask_id)
        .collect();
    let mut masks = Vec::with_capacity(positions.len());
    if !positions.is_empty() {
        let tokens = Tensor::from_i32(&[ids.len()], ids.clone())?;
        let logits = model.logits_at_positions(&tokens, None, &positions)?;
        let logits = model.backend().download_f32(&logits)?;
        let vocab = model.config().vocab_size;
        for (row, &position) in logits.chunks(vocab).zip(&positions) {
            let probabilities = softmax(row);
            let mut order: Vec<usize> = (0..vocab).collect();
            // Best first; ties keep the lower id first, matching argmax.
            order.sort_by(|&a, &b| {
                probabilities[b]
                    .total_cmp(&probabilities[a])
                    .then(a.cmp(&b))
            });
            let candidates = order
                .into_iter()
                .take(top_k.max(1))
                .map(|id| Candidate {
                    id: id as i32,
                    token: tokenizer.token(id as i32).unwrap_or_default(),
                    probability: probabilities[id],
                })
                .collect::<Vec<_>>();
            ids[position as usize] = candidates[0].id;
            masks.push(MaskPrediction {
                position: position as usize,
                candidates,
            });
        }
    }
    Ok(Filled {
        input: text.to_string(),
        output: tokenizer.decode(&ids)?,
        masks,
        truncated: encoding.truncated,
    })
}
