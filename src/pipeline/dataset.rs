//! Reading a tokenized dataset for a model: the one check every command that reads one
//! (`pretrain`, its validation set, `evaluate`) makes, so a bad row is reported the same way
//! everywhere, by file, row id and position.

use std::path::Path;

use crate::data::Example;
use crate::data::parquet::read_tokenized;
use crate::error::{Error, Result};
use crate::model::Config;

/// Reads tokenized rows and checks they fit the model: at least one row, every token id below
/// `vocab_size`, every mask entry 0 or 1, no row longer than `sequence_length`. An error names
/// the file and the row's id.
pub fn load_examples(path: &Path, config: &Config) -> Result<Vec<Example>> {
    let rows = read_tokenized(path)?;
    if rows.is_empty() {
        return Err(Error::dataset(path, "it has no rows"));
    }
    for r in &rows {
        if let Some((j, &id)) = r
            .tokens
            .iter()
            .enumerate()
            .find(|(_, id)| **id < 0 || **id as usize >= config.vocab_size)
        {
            return Err(Error::dataset(
                path,
                format!(
                    "row {:?}: token id {id} at position {j} is not below vocab_size {}",
                    r.id, config.vocab_size
                ),
            ));
        }
        if let Some((j, &m)) = r
            .mask
            .iter()
            .enumerate()
            .find(|(_, m)| **m != 0 && **m != 1)
        {
            return Err(Error::dataset(
                path,
                format!(
                    "row {:?}: mask value {m} at position {j} is not 0 or 1",
                    r.id
                ),
            ));
        }
        if r.tokens.len() > config.sequence_length {
            return Err(Error::dataset(
                path,
                format!(
                    "row {:?} has {} tokens but the model's sequence_length is {}",
                    r.id,
                    r.tokens.len(),
                    config.sequence_length
                ),
            ));
        }
    }
    Ok(rows.into_iter().map(|r| r.example()).collect())
}
