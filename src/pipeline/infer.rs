//! `maskedlm infer`: fill the `[MASK]` tokens of pre-tokenized disassembly.
//!
//! Each input is encoded with the tokenizer (truncated to its sequence length like the reference),
//! the model's logits are computed at the `[MASK]` positions only, and each mask is replaced by
//! its most probable token. The output is decoded with special tokens kept and `[PAD]` removed,
//! as the reference's infer pipeline prints it. Candidates carry softmax probabilities, computed
//! with the choice of the best candidates by the backend (`Backend::softmax_top_k`), where the
//! logits are.

use serde::Serialize;

use crate::data::tokenizer::InstructionTokenizer;
use crate::error::{Error, Result};
use crate::model::InstructionTraceTransformerEncoderForMaskedLM as Model;
use crate::tensor::Tensor;

/// One candidate token for a mask.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// The token's id.
    pub id: i32,
    /// The token's string.
    pub token: String,
    /// Its softmax probability at the mask.
    pub probability: f64,
}

/// The candidates for the mask at token position `position`, best first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaskPrediction {
    /// The mask's token position in the encoded input.
    pub position: usize,
    /// The most probable tokens, best first.
    pub candidates: Vec<Candidate>,
}

/// One input with its masks filled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Filled {
    /// The text as given.
    pub input: String,
    /// The text with each mask replaced by its best candidate, decoded.
    pub output: String,
    /// Each mask's candidates, in the order of their positions.
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
    let mut filled = fill_masks_batch(model, tokenizer, &[text], top_k)?;
    Ok(filled.remove(0))
}

/// [`fill_masks`] for several texts, in one forward pass.
pub fn fill_masks_batch(
    model: &Model,
    tokenizer: &InstructionTokenizer,
    texts: &[&str],
    top_k: usize,
) -> Result<Vec<Filled>> {
    let mut batch = EncodedBatch::new(tokenizer, texts)?;
    let positions = batch.mask_positions(tokenizer.mask_token_id());
    let mut masks = vec![Vec::new(); texts.len()];
    if !positions.is_empty() {
        let logits = model.logits_at_positions(&batch.tokens, batch.mask.as_ref(), &positions)?;
        // The softmax and the choice of the k best run where the logits are: only k ids and k
        // probabilities per mask come back from a GPU.
        let backend = model.backend();
        let k = top_k.clamp(1, model.config().vocab_size);
        let top = backend.softmax_top_k(&logits, k)?;
        let best_ids = backend.download_i32(&top.ids)?;
        let probabilities = backend.download_f32(&top.probabilities)?;
        for ((ids_k, probabilities_k), &flat) in best_ids
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
            let (row, position) = batch.locate(flat);
            batch.rows[row][position] = candidates[0].id;
            masks[row].push(MaskPrediction {
                position,
                candidates,
            });
        }
    }
    texts
        .iter()
        .zip(batch.rows.iter().zip(&batch.truncated))
        .zip(masks)
        .map(|((text, (ids, &truncated)), masks)| {
            Ok(Filled {
                input: text.to_string(),
                output: tokenizer.decode(ids)?,
                masks,
                truncated,
            })
        })
        .collect()
}

/// Texts encoded for one forward pass: the real tokens of each (without the tokenizer's
/// padding), padded again only to the longest of them.
pub(crate) struct EncodedBatch {
    /// I32 `[texts, width]`.
    pub tokens: Tensor,
    /// I32 `[texts, width]`; `None` when no row is padded (every position is real).
    pub mask: Option<Tensor>,
    /// The real tokens of each text.
    pub rows: Vec<Vec<i32>>,
    /// Whether each text was cut at the tokenizer's sequence length.
    pub truncated: Vec<bool>,
    /// The longest row's length.
    pub width: usize,
}

impl EncodedBatch {
    pub fn new(tokenizer: &InstructionTokenizer, texts: &[&str]) -> Result<Self> {
        if texts.is_empty() {
            return Err(Error::shape("texts", "at least one text", &[0]));
        }
        let encodings = tokenizer.encode_batch(texts)?;
        let rows: Vec<Vec<i32>> = encodings.iter().map(|e| e.real_tokens()).collect();
        let truncated = encodings.iter().map(|e| e.truncated).collect();
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let pad = tokenizer.pad_token_id();
        let mut tokens = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len() * width);
        for row in &rows {
            tokens.extend(
                row.iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad, width - row.len())),
            );
            mask.extend((0..width).map(|j| i32::from(j < row.len())));
        }
        let padded = rows.iter().any(|r| r.len() != width);
        let shape = [rows.len(), width];
        Ok(EncodedBatch {
            tokens: Tensor::from_i32(&shape, tokens)?,
            mask: padded.then(|| Tensor::from_i32(&shape, mask)).transpose()?,
            rows,
            truncated,
            width,
        })
    }

    /// The flat positions (row * width + position) holding `id`.
    pub fn mask_positions(&self, id: i32) -> Vec<i32> {
        self.rows
            .iter()
            .enumerate()
            .flat_map(|(r, row)| {
                row.iter()
                    .enumerate()
                    .filter(move |&(_, &t)| t == id)
                    .map(move |(j, _)| (r * self.width + j) as i32)
            })
            .collect()
    }

    /// The row and position of a flat position.
    pub fn locate(&self, flat: i32) -> (usize, usize) {
        let flat = flat as usize;
        (flat / self.width, flat % self.width)
    }
}
