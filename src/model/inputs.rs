//! Validation of what callers hand the model: token ids, attention masks, labels.

use crate::error::{Error, Result};
use crate::model::Config;
use crate::ops::sequences::Sequences;
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
        if inputs.mask[i] == 0 {
            return Err(Error::LabelOnPadding {
                label: l as i64,
                row: i / inputs.seq,
                position: i % inputs.seq,
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

/// How a batch runs: its padded rows as the reference computes them, or only their real tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Packing {
    /// Each row cut after its last real token and the rows laid back to back: no op computes a
    /// padding position. The same loss, logits and gradients as `Padded`, to rounding.
    #[default]
    Packed,
    /// Every position of every row, padding included, as the reference runs a batch.
    Padded,
}

/// A checked batch laid out on a token axis: the ids of its rows and where each sequence starts.
#[derive(Debug, Clone)]
pub(crate) struct TokenAxis {
    /// The ids of the axis's rows, `[tokens]`.
    pub tokens: Vec<i32>,
    /// Each sequence's length.
    pub lengths: Vec<usize>,
    /// One 0/1 per row, when some row is not a real key.
    pub key_mask: Option<Vec<i32>>,
    /// Each row's index in the padded batch, when the axis is not that batch.
    pub padded_rows: Option<Vec<i32>>,
    /// The padded batch's row length (positions per sequence in the padded layout).
    seq: usize,
}

impl TokenAxis {
    /// The axis of `inputs` in the given layout. Packed, a row keeps its positions up to its last
    /// real token; a hole before it (a 0 in the mask followed by a 1) stays, masked as a key.
    pub fn new(inputs: &CheckedInputs, packing: Packing) -> Self {
        let seq = inputs.seq;
        if packing == Packing::Padded {
            return TokenAxis {
                tokens: inputs.tokens.clone(),
                lengths: vec![seq; inputs.batch],
                key_mask: inputs.mask.contains(&0).then(|| inputs.mask.clone()),
                padded_rows: None,
                seq,
            };
        }
        let mut axis = TokenAxis {
            tokens: Vec::new(),
            lengths: Vec::with_capacity(inputs.batch),
            key_mask: None,
            padded_rows: None,
            seq,
        };
        let mut key_mask = Vec::new();
        let mut padded_rows = Vec::new();
        for (b, row) in inputs.mask.chunks(seq).enumerate() {
            // check_inputs guarantees a real token in every row.
            let len = row.iter().rposition(|&m| m == 1).map_or(0, |last| last + 1);
            axis.lengths.push(len);
            axis.tokens
                .extend_from_slice(&inputs.tokens[b * seq..][..len]);
            key_mask.extend_from_slice(&row[..len]);
            padded_rows.extend((b * seq..b * seq + len).map(|r| r as i32));
        }
        if key_mask.contains(&0) {
            axis.key_mask = Some(key_mask);
        }
        if axis.tokens.len() < inputs.tokens.len() {
            axis.padded_rows = Some(padded_rows);
        }
        axis
    }

    /// The axis's sequences, uploaded to `backend`; with `dropout`, each row's place in the padded
    /// batch too (dropout's key), which nothing else reads.
    pub fn sequences(
        &self,
        backend: &dyn crate::backend::Backend,
        dropout: bool,
    ) -> Result<Sequences> {
        let padded_rows = self.padded_rows.as_deref().filter(|_| dropout);
        Sequences::new(
            backend,
            &self.lengths,
            self.key_mask.as_deref(),
            padded_rows,
        )
    }

    /// The axis row of each flat padded position `b * seq + j` (each below `batch * seq`), or
    /// `None` if one was cut (it lies after its row's last real token).
    pub fn rows_of(&self, padded: &[i32]) -> Option<Vec<i32>> {
        if self.padded_rows.is_none() {
            return Some(padded.to_vec());
        }
        let mut starts = Vec::with_capacity(self.lengths.len());
        let mut total = 0;
        for &len in &self.lengths {
            starts.push(total);
            total += len;
        }
        padded
            .iter()
            .map(|&p| {
                let (b, j) = (p as usize / self.seq, p as usize % self.seq);
                (j < self.lengths[b]).then(|| (starts[b] + j) as i32)
            })
            .collect()
    }
}
