//! Parquet datasets in the reference's layouts: corpora (`id`, `name`, `disassembly`) and tokenized rows (`id`, `tokens`, `mask`).
