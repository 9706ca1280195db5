//! Data: dataset rows, the masked-LM collator, and the built-in synthetic corpus.

pub mod collator;
pub mod synthetic;

pub use collator::{CollatorState, MaskedBatch, MaskedLMCollator};

/// One tokenized row: token ids and the attention mask (1 = real token, 0 = padding), of equal
/// length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub tokens: Vec<i32>,
    pub mask: Vec<i32>,
}
