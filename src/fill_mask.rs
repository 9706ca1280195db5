//! [`MaskFiller`]: a model with its tokenizer, from text to filled text, candidates, logits at the
//! masks, or embeddings (the `fill-mask` and feature-extraction pipelines of other libraries).

use std::path::Path;

use crate::checkpoint::{check_tokenizer_matches, load_model, resolve_tokenizer};
use crate::data::tokenizer::InstructionTokenizer;
use crate::device::Device;
use crate::error::Result;
use crate::model::InstructionTraceTransformerEncoderForMaskedLM as Model;
use crate::pipeline::infer::{EncodedBatch, Filled, fill_masks_batch};
use crate::tensor::Tensor;

/// The logits of one text at its `[MASK]` positions.
#[derive(Debug, Clone)]
pub struct MaskLogits {
    /// The token positions of the masks, in order.
    pub positions: Vec<usize>,
    /// F32 `[positions, vocab_size]` on the host: row `i` is the logits at `positions[i]`.
    pub logits: Tensor,
}

/// A masked language model and the tokenizer it was trained with.
///
/// Inputs are pre-tokenized disassembly (`push rbp [NEXT] mov rbp rsp [NEXT] ...`), encoded as
/// the reference encodes them (cut at the tokenizer's sequence length). Each method has a
/// batched form that runs every text in one forward pass.
///
/// ```
/// use undertale_maskedlm::data::tokenizer::InstructionTokenizer;
/// use undertale_maskedlm::{Config, Device, InstructionTraceTransformerEncoderForMaskedLM, MaskFiller, Size};
///
/// let tokenizer = InstructionTokenizer::load("tests/fixtures/tokenizer_reference.json".as_ref())?;
/// let config = Config::for_tokenizer(Size::TINY, &tokenizer);
/// // An untrained model; `MaskFiller::from_checkpoint(dir, device)` loads a trained one.
/// let model = InstructionTraceTransformerEncoderForMaskedLM::new(config, Device::Cpu, 0)?;
/// let filler = MaskFiller::new(model, tokenizer)?;
///
/// let text = "push rbp [NEXT] mov rbp [MASK] [NEXT] ret";
/// let filled = filler.fill(text)?;
/// assert!(!filled.contains("[MASK]"));
/// let predictions = filler.candidates(text, 3)?;
/// assert_eq!(predictions.masks[0].candidates.len(), 3);
/// let embedding = filler.embed(text)?;
/// assert_eq!(embedding.len(), Size::TINY.hidden_dimensions);
/// # Ok::<(), undertale_maskedlm::Error>(())
/// ```
pub struct MaskFiller {
    model: Model,
    tokenizer: InstructionTokenizer,
}

impl MaskFiller {
    /// A model and its tokenizer; an error if the tokenizer's ids or sequence length do not fit
    /// the model ([`check_tokenizer_matches`]).
    pub fn new(model: Model, tokenizer: InstructionTokenizer) -> Result<Self> {
        check_tokenizer_matches(model.config(), &tokenizer)?;
        Ok(MaskFiller { model, tokenizer })
    }

    /// Loads a checkpoint directory and the tokenizer saved in it (`tokenizer.json`) onto
    /// `device`.
    pub fn from_checkpoint(dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        let dir = dir.as_ref();
        let model = load_model(dir, device)?;
        let tokenizer = resolve_tokenizer(dir, None)?;
        Self::new(model, tokenizer)
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &InstructionTokenizer {
        &self.tokenizer
    }

    /// The model and the tokenizer, taken apart.
    pub fn into_parts(self) -> (Model, InstructionTokenizer) {
        (self.model, self.tokenizer)
    }

    /// `text` with each `[MASK]` replaced by its most probable token, decoded as the reference's
    /// infer prints it (special tokens kept, padding removed).
    pub fn fill(&self, text: &str) -> Result<String> {
        Ok(self.fill_batch(&[text])?.remove(0))
    }

    /// [`fill`](Self::fill) for several texts.
    pub fn fill_batch(&self, texts: &[&str]) -> Result<Vec<String>> {
        Ok(self
            .candidates_batch(texts, 1)?
            .into_iter()
            .map(|f| f.output)
            .collect())
    }

    /// The filled text and, for each mask, its `top_k` most probable tokens with their
    /// probabilities, best first (at least one; at most the vocabulary).
    pub fn candidates(&self, text: &str, top_k: usize) -> Result<Filled> {
        Ok(self.candidates_batch(&[text], top_k)?.remove(0))
    }

    /// [`candidates`](Self::candidates) for several texts.
    pub fn candidates_batch(&self, texts: &[&str], top_k: usize) -> Result<Vec<Filled>> {
        fill_masks_batch(&self.model, &self.tokenizer, texts, top_k)
    }

    /// The logits at each `[MASK]` of `text` (none when it has no mask).
    pub fn logits(&self, text: &str) -> Result<MaskLogits> {
        Ok(self.logits_batch(&[text])?.remove(0))
    }

    /// [`logits`](Self::logits) for several texts.
    pub fn logits_batch(&self, texts: &[&str]) -> Result<Vec<MaskLogits>> {
        let batch = EncodedBatch::new(&self.tokenizer, texts)?;
        let flat = batch.mask_positions(self.tokenizer.mask_token_id());
        let vocab = self.model.config().vocab_size;
        let values = if flat.is_empty() {
            Vec::new()
        } else {
            let logits =
                self.model
                    .logits_at_positions(&batch.tokens, batch.mask.as_ref(), &flat)?;
            self.model.backend().download_f32(&logits)?
        };
        let mut out: Vec<(Vec<usize>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); texts.len()];
        for (&f, row_logits) in flat.iter().zip(values.chunks(vocab)) {
            let (row, position) = batch.locate(f);
            out[row].0.push(position);
            out[row].1.extend_from_slice(row_logits);
        }
        out.into_iter()
            .map(|(positions, logits)| {
                Ok(MaskLogits {
                    logits: Tensor::from_f32(&[positions.len(), vocab], logits)?,
                    positions,
                })
            })
            .collect()
    }

    /// An embedding of `text`: the mean of the encoder's last hidden state over its real tokens
    /// (the pooling of the reference's classifiers), `hidden_dimensions` long.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>> {
        Ok(self.embed_batch(&[text])?.remove(0))
    }

    /// [`embed`](Self::embed) for several texts.
    pub fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let batch = EncodedBatch::new(&self.tokenizer, texts)?;
        let states = self
            .model
            .hidden_states(&batch.tokens, batch.mask.as_ref())?;
        let hidden = self.model.config().hidden_dimensions;
        let values = self.model.backend().download_f32(&states)?;
        Ok(batch
            .rows
            .iter()
            .zip(values.chunks(batch.width * hidden))
            .map(|(row, states)| {
                // Padding sits after the real tokens: the first row.len() positions are real.
                let mut sum = vec![0f64; hidden];
                for position in states.chunks(hidden).take(row.len()) {
                    for (s, &v) in sum.iter_mut().zip(position) {
                        *s += v as f64;
                    }
                }
                let n = row.len().max(1) as f64;
                sum.into_iter().map(|s| (s / n) as f32).collect()
            })
            .collect())
    }
}
