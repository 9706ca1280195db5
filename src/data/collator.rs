//! `MaskedLMCollator`: BERT-style masking exactly as the reference does it.
//!
//! 1. `candidate = uniform < probability AND mask == 1`, independently per position;
//! 2. `labels = token` at candidates, `-100` elsewhere;
//! 3. a second uniform `d` per position: candidates with `d < 0.8` become `[MASK]`, with
//!    `0.8 <= d < 0.9` a uniform random id in `[0, vocab_size)` (special ids included), and the
//!    rest keep their token.
//!
//! Draw order (fixed, so a seed reproduces a batch): the first uniform for every position of the
//! batch in row-major order, then the second uniform for every position, then one random id per
//! random-replacement position in row-major order.
//!
//! [`RowKeyedCollator`] masks the same way for evaluation, each row from its own generator.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::Example;
use crate::backend::cpu::IGNORE_INDEX;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A collated batch: `[batch, seq]` I32 tensors on the CPU.
#[derive(Debug, Clone)]
pub struct MaskedBatch {
    /// The rows' ids with the chosen positions masked or replaced.
    pub tokens: Tensor,
    /// The rows' attention masks, unchanged.
    pub mask: Tensor,
    /// The original id at each chosen position, -100 elsewhere (ignored by the loss).
    pub labels: Tensor,
}

/// The generator's position, so a resumed run continues the same random stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollatorState {
    /// The ChaCha seed.
    pub seed: [u8; 32],
    /// The ChaCha stream.
    pub stream: u64,
    /// Position in the ChaCha keystream, in 32-bit words (a decimal string: JSON numbers are
    /// not 128-bit).
    pub word_pos: String,
}

/// Collation function for masked language modeling.
///
/// ```
/// use undertale_maskedlm::MaskedLMCollator;
/// use undertale_maskedlm::data::Example;
///
/// // [MASK] is id 4 of 50; mask every real token (probability 1) to see the effect.
/// let mut collator = MaskedLMCollator::new(4, 50, 1.0, 0)?;
/// let row = Example { tokens: vec![10, 11, 5, 12, 0, 0], mask: vec![1, 1, 1, 1, 0, 0] };
/// let batch = collator.collate(&[row])?;
/// assert_eq!(batch.tokens.shape(), &[1, 6]);
/// // Every real position is labelled with its original id; padding is ignored (-100).
/// assert_eq!(batch.labels.to_vec_i32()?, vec![10, 11, 5, 12, -100, -100]);
/// # Ok::<(), undertale_maskedlm::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct MaskedLMCollator {
    /// The id real tokens are replaced by (80% of the chosen ones).
    pub mask_token_id: i32,
    /// Random replacements (10% of the chosen ones) are drawn below this.
    pub vocab_size: usize,
    /// The share of real tokens chosen.
    pub probability: f32,
    rng: ChaCha8Rng,
}

/// The reference's default masking probability.
pub const DEFAULT_PROBABILITY: f32 = 0.15;

impl MaskedLMCollator {
    /// The reference's `MaskedLMCollator(mask_token_id, vocab_size, probability=0.15)`, with the
    /// random stream seeded by `seed`.
    pub fn new(mask_token_id: i32, vocab_size: usize, probability: f32, seed: u64) -> Result<Self> {
        if usize::try_from(mask_token_id).map_or(true, |id| id >= vocab_size) {
            return Err(Error::Config(format!(
                "mask_token_id {mask_token_id} is not in 0..vocab_size {vocab_size}"
            )));
        }
        if !(0.0..=1.0).contains(&probability) {
            return Err(Error::Config(format!(
                "masking probability {probability} is not in [0, 1]"
            )));
        }
        Ok(MaskedLMCollator {
            mask_token_id,
            vocab_size,
            probability,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// The random stream's position, to save.
    pub fn state(&self) -> CollatorState {
        CollatorState {
            seed: self.rng.get_seed(),
            stream: self.rng.get_stream(),
            word_pos: self.rng.get_word_pos().to_string(),
        }
    }

    /// Continues the random stream from a saved position.
    pub fn restore(&mut self, state: &CollatorState) -> Result<()> {
        let word_pos: u128 = state.word_pos.parse().map_err(|_| {
            Error::Config(format!(
                "collator word_pos {:?} is not a number",
                state.word_pos
            ))
        })?;
        let mut rng = ChaCha8Rng::from_seed(state.seed);
        rng.set_stream(state.stream);
        rng.set_word_pos(word_pos);
        self.rng = rng;
        Ok(())
    }

    /// Masks a batch of equally long rows, drawing from the collator's one stream in the order the
    /// module documentation gives (the training order: it continues from batch to batch).
    pub fn collate(&mut self, rows: &[Example]) -> Result<MaskedBatch> {
        let (mut tokens, mask, seq) = flatten(rows)?;
        let mut labels = vec![IGNORE_INDEX; tokens.len()];
        self.masking()
            .apply(&mut self.rng, &mut tokens, &mask, &mut labels);
        batch(rows.len(), seq, tokens, mask, labels)
    }

    fn masking(&self) -> Masking {
        Masking {
            mask_token_id: self.mask_token_id,
            vocab_size: self.vocab_size,
            probability: self.probability,
        }
    }
}

/// Evaluation masking: the collator's masking, but each row drawn from its own generator keyed
/// by (seed, the row's index in the dataset), so that a row's masks do not depend on the batch
/// size, on the rows batched with it or on what was scored before it. `evaluate` and
/// `pretrain`'s validation both score a checkpoint through it, and so agree.
///
/// The key is the ChaCha8 generator seeded by `seed`, on stream `row` (ChaCha's 64-bit stream
/// number: every row a separate keystream); within a row the draw order is the collator's.
#[derive(Debug, Clone)]
pub struct RowKeyedCollator {
    masking: Masking,
    /// The ChaCha8 seed every row's generator shares; the row index picks its stream.
    seed: u64,
}

impl RowKeyedCollator {
    /// The arguments of [`MaskedLMCollator::new`], checked the same way.
    pub fn new(mask_token_id: i32, vocab_size: usize, probability: f32, seed: u64) -> Result<Self> {
        let checked = MaskedLMCollator::new(mask_token_id, vocab_size, probability, seed)?;
        Ok(RowKeyedCollator {
            masking: checked.masking(),
            seed,
        })
    }

    /// Masks equally long rows whose first is row `first_row` of the dataset (the next are
    /// `first_row + 1`, ...).
    pub fn collate(&self, rows: &[Example], first_row: usize) -> Result<MaskedBatch> {
        let (mut tokens, mask, seq) = flatten(rows)?;
        let mut labels = vec![IGNORE_INDEX; tokens.len()];
        for (i, ((t, m), l)) in tokens
            .chunks_mut(seq.max(1))
            .zip(mask.chunks(seq.max(1)))
            .zip(labels.chunks_mut(seq.max(1)))
            .enumerate()
        {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
            rng.set_stream((first_row + i) as u64);
            self.masking.apply(&mut rng, t, m, l);
        }
        batch(rows.len(), seq, tokens, mask, labels)
    }
}

/// The masking rule, shared by both collators.
#[derive(Debug, Clone)]
struct Masking {
    mask_token_id: i32,
    vocab_size: usize,
    probability: f32,
}

impl Masking {
    /// Masks `tokens` in place and writes `labels`, drawing from `rng` in the module's order.
    fn apply(&self, rng: &mut ChaCha8Rng, tokens: &mut [i32], mask: &[i32], labels: &mut [i32]) {
        let n = tokens.len();
        let selected: Vec<bool> = (0..n)
            .map(|i| rng.random::<f32>() < self.probability && mask[i] == 1)
            .collect();
        let split: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
        for i in 0..n {
            if !selected[i] {
                continue;
            }
            labels[i] = tokens[i];
            if split[i] < 0.8 {
                tokens[i] = self.mask_token_id;
            } else if split[i] < 0.9 {
                tokens[i] = rng.random_range(0..self.vocab_size) as i32;
            }
        }
    }
}

/// The rows' tokens and masks, row-major, and their common length.
fn flatten(rows: &[Example]) -> Result<(Vec<i32>, Vec<i32>, usize)> {
    let Some(first) = rows.first() else {
        return Err(Error::shape("collate", "at least one row", &[0]));
    };
    let seq = first.tokens.len();
    for (i, r) in rows.iter().enumerate() {
        if r.tokens.len() != seq || r.mask.len() != seq {
            return Err(Error::shape(
                format!("row {i} (tokens, mask)"),
                format!("length {seq} like row 0"),
                &[r.tokens.len(), r.mask.len()],
            ));
        }
    }
    let tokens = rows.iter().flat_map(|r| r.tokens.iter().copied()).collect();
    let mask = rows.iter().flat_map(|r| r.mask.iter().copied()).collect();
    Ok((tokens, mask, seq))
}

fn batch(
    rows: usize,
    seq: usize,
    tokens: Vec<i32>,
    mask: Vec<i32>,
    labels: Vec<i32>,
) -> Result<MaskedBatch> {
    let shape = [rows, seq];
    Ok(MaskedBatch {
        tokens: Tensor::from_i32(&shape, tokens)?,
        mask: Tensor::from_i32(&shape, mask)?,
        labels: Tensor::from_i32(&shape, labels)?,
    })
}
