//! Data: disassembly of binaries, the tokenizer, Parquet datasets, the masked-LM collator, and the
//! built-in synthetic corpus.

pub mod collator;
pub mod disassemble;
pub mod parquet;
pub mod synthetic;
pub mod tokenizer;

pub use collator::{CollatorState, MaskedBatch, MaskedLMCollator, RowKeyedCollator};

/// One tokenized row: token ids and the attention mask (1 = real token, 0 = padding), of equal
/// length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Token ids, padding included.
    pub tokens: Vec<i32>,
    /// 1 at real tokens, 0 at padding.
    pub mask: Vec<i32>,
}
