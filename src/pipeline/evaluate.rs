//! `maskedlm evaluate`: masked-LM loss and accuracy of a checkpoint on a tokenized dataset, and
//! the forward throughput.
//!
//! Every evaluation (this command and `pretrain`'s validation) masks with a
//! [`RowKeyedCollator`] seeded by [`EVALUATION_SEED`]: a row's masks depend only on the seed and
//! the row's index in the dataset, so the scores do not change with the batch size, and
//! `evaluate` of a checkpoint reproduces the validation scores `pretrain` logged for it.

use std::time::Instant;

use serde::Serialize;

use crate::data::collator::DEFAULT_PROBABILITY;
use crate::data::{Example, MaskedBatch, RowKeyedCollator};
use crate::error::{Error, Result};
use crate::model::{Config, Evaluation, InstructionTraceTransformerEncoderForMaskedLM as Model};

/// Loss and accuracy summed over batches. A batch in which the collator masked nothing has
/// nothing to score and is skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    loss_sum: f64,
    correct: usize,
    count: usize,
}

impl Totals {
    /// Adds one batch's scores, weighting its mean loss by its masked positions. A batch that
    /// failed with [`Error::NoLabels`] is skipped; any other error is returned.
    pub fn add(&mut self, batch: Result<Evaluation>) -> Result<()> {
        match batch {
            Ok(e) => {
                self.loss_sum += e.loss as f64 * e.count as f64;
                self.correct += e.correct;
                self.count += e.count;
                Ok(())
            }
            Err(Error::NoLabels) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Mean loss and accuracy over every masked position.
    pub fn finish(&self) -> Result<(f64, f64)> {
        if self.count == 0 {
            return Err(Error::NoLabels);
        }
        Ok((
            self.loss_sum / self.count as f64,
            self.correct as f64 / self.count as f64,
        ))
    }
}

/// The masking seed of every evaluation, `evaluate`'s and `pretrain`'s validation alike, so
/// every path scores a checkpoint on the same masks.
pub const EVALUATION_SEED: u64 = 0;

/// `rows` masked for evaluation under `seed`, in batches of `batch_size` (the last may be
/// shorter). Row `i` of `rows` is masked the same whatever the batch size.
pub fn evaluation_batches<'a>(
    config: &Config,
    rows: &'a [Example],
    batch_size: usize,
    seed: u64,
) -> Result<impl Iterator<Item = Result<MaskedBatch>> + 'a> {
    if batch_size == 0 {
        return Err(Error::Config("batch size must be positive".into()));
    }
    let collator = RowKeyedCollator::new(
        config.mask_token_id,
        config.vocab_size,
        DEFAULT_PROBABILITY,
        seed,
    )?;
    Ok(rows
        .chunks(batch_size)
        .enumerate()
        .map(move |(k, chunk)| collator.collate(chunk, k * batch_size)))
}

/// Mean loss and accuracy of `model` over the masked positions of `rows` under `seed`.
pub fn score(model: &Model, rows: &[Example], batch_size: usize, seed: u64) -> Result<(f64, f64)> {
    let mut totals = Totals::default();
    for batch in evaluation_batches(model.config(), rows, batch_size, seed)? {
        let batch = batch?;
        totals.add(model.evaluate(&batch.tokens, &batch.mask, &batch.labels))?;
    }
    totals.finish()
}

/// What [`evaluate`] measured; serialised as `evaluate`'s JSON output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvaluationReport {
    /// Mean cross-entropy over the masked positions.
    pub loss: f64,
    /// Masked-token accuracy, which is the reference's micro-F1 over labelled positions.
    pub accuracy: f64,
    /// Rows scored.
    pub sequences: usize,
    /// Time in forward passes, after one untimed warm-up batch.
    pub seconds: f64,
    /// `sequences` over `seconds`.
    pub sequences_per_second: f64,
}

/// Scores `model` on `rows` in batches of `batch_size`, masked under [`EVALUATION_SEED`]; the
/// loss and accuracy do not depend on `batch_size` (beyond f32 rounding).
pub fn evaluate(model: &Model, rows: &[Example], batch_size: usize) -> Result<EvaluationReport> {
    if rows.is_empty() {
        return Err(Error::Config("the evaluation dataset has no rows".into()));
    }
    let batches = evaluation_batches(model.config(), rows, batch_size, EVALUATION_SEED)?
        .collect::<Result<Vec<_>>>()?;
    // Warm-up: the first pass pays for allocations the later ones reuse. Its result (a batch with
    // no label, say) is the first timed pass's to report.
    let warm = &batches[0];
    let _ = model.evaluate(&warm.tokens, &warm.mask, &warm.labels);

    let mut totals = Totals::default();
    let mut seconds = 0.0;
    for batch in &batches {
        let start = Instant::now();
        let result = model.evaluate(&batch.tokens, &batch.mask, &batch.labels);
        seconds += start.elapsed().as_secs_f64();
        totals.add(result)?;
    }
    let (loss, accuracy) = totals.finish()?;
    Ok(EvaluationReport {
        loss,
        accuracy,
        sequences: rows.len(),
        seconds,
        sequences_per_second: rows.len() as f64 / seconds.max(1e-12),
    })
}
