//! The reference's tokenizer recipe through the `tokenizers` crate.
