//! The token axis of a batch: which rows of an activation belong to which sequence.
//!
//! Every per-token op (GEMMs, LayerNorm, GELU, dropout, the head) sees only `[tokens, features]`
//! rows and does not care where one sequence ends. Two ops do: the embedding, whose instruction and
//! argument positions restart at each sequence's first token, and attention, where a query attends
//! to the keys of its own sequence only. They take a [`Sequences`]: sequence `s` is the rows
//! `offsets[s] .. offsets[s + 1]` (FlashAttention's `cu_seqlens`).
//!
//! - **Padded** (the reference's layout, what [`forward`] returns logits for): every row of a
//!   `[batch, seq]` batch is a sequence of length `seq`, padding included, and a key mask removes
//!   the padding keys.
//! - **Packed** (what training, evaluation and inference run): each row is cut after its last real
//!   token and the rows are laid back to back, so no op computes a padding position. A row whose
//!   mask has a hole (a 0 before its last 1) keeps the hole as a position and the key mask removes
//!   it, exactly the reference's key-padding semantics; the tokenizer never makes such rows.
//!
//! Dropout draws its masks from the element's place in the *padded* batch (`dropout_rows`), so a
//! packed step and a padded step of the same seed drop the same elements.
//!
//! [`forward`]: crate::model::InstructionTraceTransformerEncoderForMaskedLM::forward

use std::cell::OnceCell;

use super::expect;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// A batch's token axis divided into sequences, on one backend's device.
#[derive(Debug)]
pub struct Sequences {
    /// `offsets[s] .. offsets[s + 1]` are sequence `s`'s rows; `offsets[0] == 0`, non-decreasing.
    offsets: Vec<i32>,
    max_len: usize,
    /// `offsets` on the device, I32 `[sequences + 1]`.
    device_offsets: Tensor,
    /// I32 `[tokens]`, 1 = a real key; `None` when every row is real.
    key_mask: Option<Tensor>,
    /// I32 `[tokens]`: each row's index in the padded `[batch * seq]` batch it came from; `None`
    /// when the rows are that batch itself.
    dropout_rows: Option<Tensor>,
    /// A backend's work list for these sequences (the GPU's attention tiles), built on first use
    /// and shared by every layer, forward and backward.
    schedule: OnceCell<Tensor>,
}

impl Sequences {
    /// Sequences of the given lengths, back to back. `key_mask` (one 0/1 per row) is needed only if
    /// some row is not a real key; `dropout_rows` maps each row to its index in the padded batch.
    pub fn new(
        backend: &dyn Backend,
        lengths: &[usize],
        key_mask: Option<&[i32]>,
        dropout_rows: Option<&[i32]>,
    ) -> Result<Self> {
        let mut offsets = Vec::with_capacity(lengths.len() + 1);
        offsets.push(0i32);
        let mut total = 0usize;
        for &len in lengths {
            total += len;
            offsets.push(i32::try_from(total).map_err(|_| {
                Error::Config(format!("a batch of {total} tokens exceeds i32 offsets"))
            })?);
        }
        for (what, rows) in [("key mask", key_mask), ("dropout rows", dropout_rows)] {
            if let Some(rows) = rows
                && rows.len() != total
            {
                return Err(Error::shape(what, format!("[{total}]"), &[rows.len()]));
            }
        }
        if let Some((row, &v)) = key_mask
            .into_iter()
            .flatten()
            .enumerate()
            .find(|(_, v)| **v != 0 && **v != 1)
        {
            return Err(Error::Config(format!(
                "key mask value {v} at row {row}: entries must be 0 or 1"
            )));
        }
        if let Some((row, &v)) = dropout_rows
            .into_iter()
            .flatten()
            .enumerate()
            .find(|(_, v)| **v < 0)
        {
            return Err(Error::IndexOutOfRange {
                what: format!("row {row}'s place in the padded batch"),
                index: i64::from(v),
                len: i32::MAX as usize,
            });
        }
        let upload = |rows: Option<&[i32]>| -> Result<Option<Tensor>> {
            rows.map(|r| backend.upload_i32(&[r.len()], r)).transpose()
        };
        Ok(Sequences {
            device_offsets: backend.upload_i32(&[offsets.len()], &offsets)?,
            max_len: lengths.iter().copied().max().unwrap_or(0),
            offsets,
            key_mask: upload(key_mask)?,
            dropout_rows: upload(dropout_rows)?,
            schedule: OnceCell::new(),
        })
    }

    /// `batch` rows of `seq` positions each, the padded layout; `mask` (`[batch * seq]`, 0/1) is the
    /// key mask, dropped when every position is real.
    pub fn padded(backend: &dyn Backend, batch: usize, seq: usize, mask: &[i32]) -> Result<Self> {
        let key_mask = mask.contains(&0).then_some(mask);
        Self::new(backend, &vec![seq; batch], key_mask, None)
    }

    /// Rows in all sequences together.
    pub fn tokens(&self) -> usize {
        *self.offsets.last().unwrap_or(&0) as usize
    }

    /// The number of sequences.
    pub fn count(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The longest sequence's length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The host copy of the offsets (`[count + 1]`).
    pub fn offsets(&self) -> &[i32] {
        &self.offsets
    }

    /// Sequence `s`'s first row and length.
    pub fn range(&self, s: usize) -> (usize, usize) {
        let start = self.offsets[s] as usize;
        (start, self.offsets[s + 1] as usize - start)
    }

    /// The offsets on the device, I32 `[count + 1]`.
    pub fn device_offsets(&self) -> &Tensor {
        &self.device_offsets
    }

    /// The key mask, I32 `[tokens]`; `None` when every row is a real key.
    pub fn key_mask(&self) -> Option<&Tensor> {
        self.key_mask.as_ref()
    }

    /// Each row's index in the padded batch, I32 `[tokens]`; `None` when the rows are that batch.
    pub fn dropout_rows(&self) -> Option<&Tensor> {
        self.dropout_rows.as_ref()
    }

    /// The sequences' device tensors live on `backend`'s device (checked by the ops that read them).
    pub(crate) fn check_device(&self, backend: &dyn Backend) -> Result<()> {
        expect(
            backend,
            &self.device_offsets,
            DType::I32,
            "sequence offsets",
        )?;
        if let Some(mask) = &self.key_mask {
            expect(backend, mask, DType::I32, "attention key mask")?;
        }
        if let Some(rows) = &self.dropout_rows {
            expect(backend, rows, DType::I32, "dropout rows")?;
        }
        Ok(())
    }

    /// The backend's work list for these sequences, built by `build` from the host offsets the
    /// first time it is asked for.
    pub fn schedule(&self, build: impl FnOnce(&[i32]) -> Result<Tensor>) -> Result<&Tensor> {
        if let Some(s) = self.schedule.get() {
            return Ok(s);
        }
        let built = build(&self.offsets)?;
        Ok(self.schedule.get_or_init(|| built))
    }
}
