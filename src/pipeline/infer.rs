//! `maskedlm infer`: fill the `[MASK]` tokens of pre-tokenized disassembly.
//!
//! Each input is encoded with the tokenizer (truncated to its sequence length like the reference),
//! the model's logits are computed at the `[MASK]` positions only, and each mask is replaced by
//! its most probable token. The output is decoded with special tokens kept and `[PAD]` removed,
//! as the reference's infer pipeline prints it. Candidates carry softmax probabilities, computed
//! with the choice of the best candidates by the backend ([`Backend::softmax_top_k`]).
//!
//! [`Backend::softmax_top_k`]: crate::backend::Backend::softmax_top_k

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

/// Fills the masks of `text`, keeping the `top_k` best candidates of each (at least one).
pub fn fill_masks(
    model: &Model,
    tokenizer: &InstructionTokenizer,
    text: &str,
    top_k: usize,
) -> Result<Filled> {
    let encoding = tokenizer.encode(text)?;
    let mut ids = encoding.real_tokens();
    let mask_id = tokenizer.mask_token_id();
    let positions: Vec<i32> = (0..ids.len() as i32)
        .filter(|&j| ids[j as usize] == mask_id)
        .collect();
    let mut masks = Vec::with_capacity(positions.len());
    if !positions.is_empty() {
        let tokens = Tensor::from_i32(&[ids.len()], ids.clone())?;
        let logits = model.logits_at_positions(&tokens, None, &positions)?;
        // The softmax and the choice of the k best run where the logits are: only k ids and k
        // probabilities per mask come back from a GPU.
        let backend = model.backend();
        let k = top_k.clamp(1, model.config().vocab_size);
        let top = backend.softmax_top_k(&logits, k)?;
        let best_ids = backend.download_i32(&top.ids)?;
        let probabilities = backend.download_f32(&top.probabilities)?;
        for ((ids_k, probabilities_k), &position) in best_ids
            .chunks(k)
            .zip(probabilities.chunks(k))
            .zip(&positions)
        {
            let candidates = ids_k
                .iter()
                .zip(probabilities_k)
                .map(|(&id, &probability)| Candidate {
                    id,
                    token: tokenizer.token(id).unwrap_or_default(),
                    probability: probability as f64,
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
