//! Validation of what callers hand the model: token ids, attention masks, labels.

use crate::error::{Error, Result};
use crate::model::Config;
use crate::tensor::{DType, Tensor};

/// Token ids and mask that passed every check, as `[batch, seq]` host arrays.
#[derive(Debug, Clone)]
pub struct CheckedInputs {
    pub tokens: Vec<i32>,
    pub mask: Vec<i32>,
    pub batch: usize,
    pub seq: usize,
}

fn batch_seq(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    if t.dtype() != DType::I32 {
        return Err(t.dtype_error(what, DType::I32));
    }
    match *t.shape() {
        [seq] => Ok((1, seq)),
        [batch, seq] => Ok((batch, seq)),
        _ => Err(Error::shape(what, "[batch, seq] or [seq]", t.shape())),
    }
}

/// Checks tokens `[batch, seq]` (or `[seq]`) and an optional mask of the same shape (none means
/// every position is real): ids in range, mask of 0/1, length within `sequence_length`, and at
/// least one real token per row.
pub fn check_inputs(
    config: &Config,
    tokens: &Tensor,
    mask: Option<&Tensor>,
) -> Result<CheckedInputs> {
    let (batch, seq) = batch_seq(tokens, "tokens")?;
    if batch == 0 || seq == 0 {
        return Err(Error::shape(
            "tokens",
            "a non-empty [batch, seq]",
            tokens.shape(),
        ));
    }
    if seq > config.sequence_length {
        return Err(Error::SequenceTooLong {
            length: seq,
            max: config.sequence_length,
        });
    }
    let ids = tokens.to_vec_i32()?;
    if let Some((i, &id)) = ids
        .iter()
        .enumerate()
        .find(|(_, id)| **id < 0 || **id as usize >= config.vocab_size)
    {
        return Err(Error::TokenOutOfRange {
            id: id as i64,
            row: i / seq,
            position: i % seq,
            vocab_size: config.vocab_size,
        });
    }
    let mask = match mask {
        None => vec![1; ids.len()],
        Some(m) => {
            if batch_seq(m, "mask")? != (batch, seq) {
                return Err(Error::shape(
                    "mask",
                    format!("[{batch}, {seq}] like the tokens"),
                    m.shape(),
                ));
            }
            let values = m.to_vec_i32()?;
            if let Some((i, &v)) = values
                .iter()
                .enumerate()
                .find(|(_, v)| **v != 0 && **v != 1)
            {
                return Err(Error::MaskValue {
                    value: v as i64,
                    row: i / seq,
                    position: i % seq,
                });
            }
            values
        }
    };
    if let Some(row) = mask.chunks(seq).position(|r| r.iter().all(|&m| m == 0)) {
        return Err(Error::EmptyRow { row });
    }
    Ok(CheckedInputs {
        tokens: ids,
        mask,
        batch,
        seq,
    })
}

/// Checks labels against the inputs' shape: each is -100 or a valid id, and none labels padding.
/// Returns the flat indices of the labelled positions and their labels.
pub fn labelled_positions(
    config: &Config,
    inputs: &CheckedInputs,
    labels: &Tensor,
) -> Result<(Vec<i32>, Vec<i32>)> {
    if batch_seq(labels, "labels")? != (inputs.batch, inputs.seq) {
        return Err(Error::shape(
            "labels",
            format!("[{}, {}] like the tokens", inputs.batch, inputs.seq),
            labels.shape(),
        ));
    }
    let values = labels.to_vec_i32()?;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (i, &l) in values.iter().enumerate() {
        if l == crate::backend::cpu::IGNORE_INDEX {
            continue;
        }
        if l < 0 || l as usize >= config.vocab_size {
            return Err(Error::LabelOutOfRange {
                label: l as i64,
                row: i / inputs.seq,
                position: i % inputs.seq,
                vocab_size: config.vocab_size,
            });
        }
        rows.push(i as i32);
        targets.push(l);
    }
    if rows.is_empty() {
        return Err(Error::NoLabels);
    }
    Ok((rows, targets))
}
