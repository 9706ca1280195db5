//! The training loop: collate, forward and backward with the head at labelled positions only,
//! one AdamW step at the scheduled learning rate; and checkpoints from which training resumes
//! exactly (same weights as a run that never stopped).
//!
//! ```
//! use undertale_maskedlm::data::synthetic::{Vocabulary, dataset};
//! use undertale_maskedlm::train::{Continue, Trainer, TrainerOptions};
//! use undertale_maskedlm::{Config, Device, InstructionTraceTransformerEncoderForMaskedLM, Size};
//!
//! let vocab = Vocabulary::synthetic();
//! let mut size = Size::TINY;
//! size.sequence_length = 32;
//! let config = Config::new(size, vocab.len(), vocab.next_id(), vocab.mask_id());
//! let model = InstructionTraceTransformerEncoderForMaskedLM::new(config, Device::Cpu, 0)?;
//! let rows = dataset(&vocab, 8, 32, 0);
//! let options = TrainerOptions { batch_size: 4, seed: 1, ..TrainerOptions::new(4) };
//! let mut trainer = Trainer::new(model, options)?;
//! // Two epochs of two batches: the schedule's four steps.
//! trainer.train(&rows, 2, None, |_, _| Ok(()), |_, _| Ok(Continue::Yes))?;
//! assert_eq!(trainer.state().step, 4);
//! // One more step on a batch of the caller's choosing, past the schedule's end (lr 0).
//! let report = trainer.step(&rows[..4])?;
//! assert_eq!((report.step, report.lr), (5, 0.0));
//!
//! let dir = tempfile::tempdir().unwrap();
//! trainer.save(&dir.path().join("last"))?;
//! let resumed = Trainer::resume(&dir.path().join("last"), Device::Cpu)?;
//! assert_eq!(resumed.state().step, trainer.state().step);
//! # Ok::<(), undertale_maskedlm::Error>(())
//! ```

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::{AdamW, AdamWConfig, EarlyStopping, LrSchedule};
use crate::backend::PendingScalar;
use crate::checkpoint::{TOKENIZER_FILE, check_tokenizer_matches, load_tokenizer};
use crate::checkpoint::{
    load_model, read_f32_tensors, write_dir_atomically, write_f32_tensors, write_model_files,
};
use crate::data::tokenizer::InstructionTokenizer;
use crate::data::{CollatorState, Example, MaskedLMCollator, collator::DEFAULT_PROBABILITY};
use crate::device::{Device, Precision};
use crate::error::{Error, Result};
use crate::model::{DropoutSchedule, InstructionTraceTransformerEncoderForMaskedLM as Model};
use crate::ops::adamw::LossGuard;
use crate::tensor::Tensor;

/// AdamW's moments in a training checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// [`TrainerState`] in a training checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps taken.
    pub step: u64,
    /// The epoch in progress (0-based).
    pub epoch: u64,
    /// Batches of that epoch already trained on.
    pub batch_in_epoch: u64,
    /// Optimiser steps the schedule spans (epochs x batches per epoch).
    pub total_steps: u64,
    /// Rows per batch.
    pub batch_size: usize,
    /// Seed of the dropout masks (they are keyed by this seed and the step).
    pub dropout_seed: u64,
    /// The share of real tokens the collator masks.
    pub masking_probability: f32,
    /// The collator's random state.
    pub collator: CollatorState,
    /// AdamW's hyperparameters.
    pub adamw: AdamWConfig,
    /// The training losses of the epoch in progress, each weighted by its batch's rows (as
    /// Lightning averages a logged value over an epoch), and the rows counted.
    #[serde(default)]
    pub epoch_loss_sum: f64,
    /// The rows counted in `epoch_loss_sum`.
    #[serde(default)]
    pub epoch_loss_count: u64,
    /// The early-stopping monitor, when the caller uses one.
    #[serde(default)]
    pub early_stopping: Option<EarlyStopping>,
}

/// What the end-of-epoch callback learns about the epoch that just finished.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochEnd {
    /// 1-based number of the finished epoch.
    pub epoch: u64,
    /// Mean training loss over its steps, weighted by batch size.
    pub mean_loss: f64,
}

/// Whether training goes on after an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continue {
    /// Go on to the next epoch.
    Yes,
    /// Stop training here.
    Stop,
}

/// What one optimiser step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// 1-based number of the step just taken.
    pub step: u64,
    /// NaN when the collator masked no position of the batch (see [`Trainer::step`]).
    pub loss: f32,
    /// The learning rate this step used.
    pub lr: f64,
    /// Real (unpadded) tokens in the batch.
    pub tokens: usize,
}

/// How to build a [`Trainer`]: the schedule's length, the batch size, the seed, and optionally the
/// tokenizer to save into every checkpoint. The learning rate and its warmup are the model's
/// ([`Config::lr`](crate::Config::lr), [`Config::warmup`](crate::Config::warmup)), as in the
/// reference, where they are the model's hyperparameters.
#[derive(Debug, Clone)]
pub struct TrainerOptions {
    /// Rows per optimiser step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Optimiser steps the learning-rate schedule spans; must be positive.
    pub total_steps: u64,
    /// Seeds the collator's masks and the dropout masks.
    pub seed: u64,
    /// Saved as `tokenizer.json` in every checkpoint, so that a checkpoint is self-contained; it
    /// must match the model.
    pub tokenizer: Option<InstructionTokenizer>,
}

impl TrainerOptions {
    /// Options for a schedule of `total_steps` steps, batches of 8 (the CLI's default), seed 0, and
    /// no tokenizer.
    pub fn new(total_steps: u64) -> Self {
        TrainerOptions {
            batch_size: 8,
            total_steps,
            seed: 0,
            tokenizer: None,
        }
    }
}

/// Trains a model with the reference's masked-LM recipe: the reference's collator, the loss at
/// masked positions, AdamW at a linear warmup-and-decay schedule, dropout as in training mode.
/// Built with [`Trainer::new`] or restored from a checkpoint with [`Trainer::resume`]; see the
/// [module documentation](self) for an example.
pub struct Trainer {
    /// The model being trained (its parameters change with every step).
    pub model: Model,
    tokenizer: Option<InstructionTokenizer>,
    optimizer: AdamW,
    collator: MaskedLMCollator,
    grads: Tensor,
    /// The device's flag that a step's loss was not finite (see [`LossGuard`]): set on the device,
    /// it stops every later update until the host has seen the error.
    halted: Tensor,
    state: TrainerState,
    /// Set from outside (a Ctrl-C handler): [`train`](Self::train) returns after the step in
    /// progress, as it does at `max_steps`.
    stop_requested: Option<Arc<AtomicBool>>,
}

/// A step whose work is queued on the device and whose loss is on its way to the host.
#[derive(Debug)]
pub struct QueuedStep {
    step: u64,
    lr: f64,
    rows: usize,
    tokens: usize,
    /// `None` when the collator masked nothing (no loss).
    loss: Option<PendingScalar>,
}

/// Batches per epoch when the last partial batch is kept, as the reference's loader does.
pub fn batches_per_epoch(rows: usize, batch_size: usize) -> u64 {
    rows.div_ceil(batch_size.max(1)) as u64
}

impl Trainer {
    /// A trainer for `model` with a fresh optimiser. A batch size or a schedule length of zero,
    /// or a tokenizer that does not match the model, is an error.
    pub fn new(model: Model, options: TrainerOptions) -> Result<Self> {
        let TrainerOptions {
            batch_size,
            total_steps,
            seed,
            tokenizer,
        } = options;
        if batch_size == 0 {
            return Err(Error::Config("batch size must be positive, got 0".into()));
        }
        if total_steps == 0 {
            return Err(Error::Config(
                "total_steps must be positive, got 0 (the learning-rate schedule spans total_steps optimiser steps)".into(),
            ));
        }
        if let Some(tokenizer) = &tokenizer {
            check_tokenizer_matches(model.config(), tokenizer)?;
        }
        let config = model.config().clone();
        let collator = MaskedLMCollator::new(
            config.mask_token_id,
            config.vocab_size,
            DEFAULT_PROBABILITY,
            seed,
        )?;
        let backend = model.backend();
        let optimizer = AdamW::new(backend, model.num_parameters(), AdamWConfig::default())?;
        let grads = backend.zeros_f32(&[model.num_parameters()])?;
        let halted = backend.upload_i32(&[1], &[0])?;
        let state = TrainerState {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            total_steps,
            batch_size,
            dropout_seed: seed,
            masking_probability: DEFAULT_PROBABILITY,
            collator: collator.state(),
            adamw: optimizer.config,
            epoch_loss_sum: 0.0,
            epoch_loss_count: 0,
            early_stopping: None,
        };
        Ok(Trainer {
            model,
            tokenizer,
            optimizer,
            collator,
            grads,
            halted,
            state,
            stop_requested: None,
        })
    }

    /// The tokenizer saved with every checkpoint, if any.
    pub fn tokenizer(&self) -> Option<&InstructionTokenizer> {
        self.tokenizer.as_ref()
    }

    /// Sets (or removes) the tokenizer saved with every checkpoint; it must match the model.
    pub fn set_tokenizer(&mut self, tokenizer: Option<InstructionTokenizer>) -> Result<()> {
        if let Some(tokenizer) = &tokenizer {
            check_tokenizer_matches(self.model.config(), tokenizer)?;
        }
        self.tokenizer = tokenizer;
        Ok(())
    }

    /// The model being trained.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Runs the model's batches packed or padded (see [`Packing`](crate::model::Packing)); the
    /// steps' results are the same either way, to rounding.
    pub fn set_packing(&mut self, packing: crate::model::Packing) {
        self.model.set_packing(packing);
    }

    /// The step counters and everything else a checkpoint saves besides tensors.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// Makes [`train`](Self::train) return after the step in progress once `flag` is set (by a
    /// signal handler, another thread). The trainer's state is then that of a run cut short by
    /// `max_steps`: save it and resume it exactly.
    pub fn stop_when(&mut self, flag: Arc<AtomicBool>) {
        self.stop_requested = Some(flag);
    }

    /// Whether the flag given to [`stop_when`](Self::stop_when) is set.
    pub fn stop_requested(&self) -> bool {
        self.stop_requested
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// The early-stopping monitor is the caller's to set and update; it is saved with the state.
    pub fn early_stopping_mut(&mut self) -> &mut Option<EarlyStopping> {
        &mut self.state.early_stopping
    }

    /// The learning-rate schedule: the model's `lr` and `warmup` over `total_steps`.
    pub fn schedule(&self) -> LrSchedule {
        let c = self.model.config();
        LrSchedule::new(c.lr, c.warmup, self.state.total_steps)
    }

    /// Masks `rows`, computes the loss and its gradient, and takes one AdamW step. A non-finite
    /// loss is an error and leaves the parameters and the step count untouched.
    ///
    /// A batch in which the collator masked nothing (likely for a few short rows) has no loss.
    /// The reference then back-propagates a NaN loss whose gradient is zero everywhere and still
    /// takes the optimiser step (weight decay and momentum apply, the schedule advances); so does
    /// this, reporting the loss as NaN and leaving it out of the epoch's mean.
    ///
    /// This waits for the step's loss; [`train`](Self::train) instead queues the next step before
    /// reading a step's loss ([`queue_step`](Self::queue_step), [`finish_step`](Self::finish_step)).
    pub fn step(&mut self, rows: &[Example]) -> Result<StepReport> {
        let queued = self.queue_step(rows)?;
        self.finish_step(queued)
    }

    /// Collates `rows` and queues the step's whole work on the device (forward, backward, and the
    /// AdamW update, guarded on the device against a non-finite loss), then starts copying the loss
    /// back without waiting for it. Nothing is read back from the device.
    pub fn queue_step(&mut self, rows: &[Example]) -> Result<QueuedStep> {
        let batch = self.collator.collate(rows)?;
        // Kept current, so that `state()` always shows where the masking stream stands.
        self.state.collator = self.collator.state();
        let backend = self.model.shared_backend();
        backend.fill_zero(&mut self.grads)?;
        let dropout = DropoutSchedule {
            p: self.model.config().dropout,
            seed: self.state.dropout_seed,
            step: self.state.step,
        };
        let loss = match self.model.queue_loss_and_backward(
            &batch.tokens,
            &batch.mask,
            &batch.labels,
            &mut self.grads,
            Some(dropout),
        ) {
            Ok(loss) => Some(loss),
            // Labels are checked before any gradient is written, so the buffer is still zero.
            Err(Error::NoLabels) => None,
            Err(e) => return Err(e),
        };
        let lr = self.schedule().lr(self.state.step);
        let guard = LossGuard {
            loss: loss.as_ref(),
            halted: &mut self.halted,
        };
        self.optimizer.step(
            backend.as_ref(),
            self.model.parameters_mut(),
            &self.grads,
            lr,
            Some(guard),
        )?;
        self.state.step += 1;
        Ok(QueuedStep {
            step: self.state.step,
            lr,
            rows: rows.len(),
            tokens: rows
                .iter()
                .map(|r| r.mask.iter().filter(|&&m| m == 1).count())
                .sum(),
            loss: loss.map(|l| backend.read_scalar(&l)).transpose()?,
        })
    }

    /// Waits for a queued step's loss (only for the copy, not for work queued after it) and
    /// reports the step. A non-finite loss is [`Error::NonFiniteLoss`]: the device skipped that
    /// step's update and every one queued after it, so the parameters are those before it; the
    /// step count goes back to match, and the trainer can go on from there.
    pub fn finish_step(&mut self, queued: QueuedStep) -> Result<StepReport> {
        let loss = queued.loss.map(PendingScalar::wait).transpose()?;
        if let Some(loss) = loss.filter(|l| !l.is_finite()) {
            let before = queued.step - 1;
            self.state.step = before;
            self.optimizer.steps = before;
            self.model.shared_backend().fill_zero(&mut self.halted)?;
            return Err(Error::NonFiniteLoss {
                loss,
                step: queued.step,
            });
        }
        if let Some(loss) = loss {
            self.state.epoch_loss_sum += loss as f64 * queued.rows as f64;
            self.state.epoch_loss_count += queued.rows as u64;
        }
        Ok(StepReport {
            step: queued.step,
            loss: loss.unwrap_or(f32::NAN),
            lr: queued.lr,
            tokens: queued.tokens,
        })
    }

    /// Trains through `data` in order, batch by batch, up to `epochs` epochs (continuing from the
    /// current position after a resume) or until `max_steps` optimiser steps in total. `on_step`
    /// sees every step; `on_epoch` runs after each completed epoch (to evaluate, save a checkpoint,
    /// decide to stop). Returns whether `on_epoch` stopped training; it also returns, with
    /// [`Continue::Yes`], after the step in progress when a [`stop_when`](Self::stop_when) flag is
    /// set.
    pub fn train(
        &mut self,
        data: &[Example],
        epochs: u64,
        max_steps: Option<u64>,
        mut on_step: impl FnMut(&mut Trainer, &StepReport) -> Result<()>,
        mut on_epoch: impl FnMut(&mut Trainer, EpochEnd) -> Result<Continue>,
    ) -> Result<Continue> {
        if data.is_empty() {
            return Err(Error::Config("the training data has no rows".into()));
        }
        // A resumed run that had already stopped early stays stopped.
        if self
            .state
            .early_stopping
            .as_ref()
            .is_some_and(|e| e.should_stop())
        {
            return Ok(Continue::Stop);
        }
        let batch_size = self.state.batch_size;
        let batches: Vec<&[Example]> = data.chunks(batch_size).collect();
        if self.state.batch_in_epoch as usize > batches.len() {
            return Err(Error::Config(format!(
                "the run stopped after batch {} of epoch {}, but the data has only {} batches of {batch_size}: is it the same dataset?",
                self.state.batch_in_epoch,
                self.state.epoch + 1,
                batches.len()
            )));
        }
        while self.state.epoch < epochs {
            // Each step is queued before the one before it is reported, so the host collates and
            // queues step n + 1 while the device runs step n, and reads a loss only once the
            // device has moved past it.
            let mut in_flight: Option<QueuedStep> = None;
            while (self.state.batch_in_epoch as usize) < batches.len() {
                if max_steps.is_some_and(|m| self.state.step >= m) || self.stop_requested() {
                    break;
                }
                let queued = self.queue_step(batches[self.state.batch_in_epoch as usize])?;
                self.state.batch_in_epoch += 1;
                if let Some(previous) = in_flight.replace(queued) {
                    let report = self.finish_step(previous)?;
                    on_step(self, &report)?;
                }
            }
            if let Some(last) = in_flight.take() {
                let report = self.finish_step(last)?;
                on_step(self, &report)?;
            }
            if (self.state.batch_in_epoch as usize) < batches.len() {
                // Stopped by max_steps or a stop request inside the epoch.
                return Ok(Continue::Yes);
            }
            let end = EpochEnd {
                epoch: self.state.epoch + 1,
                mean_loss: self.state.epoch_loss_sum / self.state.epoch_loss_count.max(1) as f64,
            };
            self.state.epoch += 1;
            self.state.batch_in_epoch = 0;
            self.state.epoch_loss_sum = 0.0;
            self.state.epoch_loss_count = 0;
            if on_epoch(self, end)? == Continue::Stop {
                return Ok(Continue::Stop);
            }
        }
        Ok(Continue::Yes)
    }

    /// Writes a training checkpoint directory atomically: the model files (with the tokenizer,
    /// when the trainer has one) plus the optimiser's moments and the trainer state.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let backend = self.model.backend();
        let values = backend.download_f32(self.model.parameters())?;
        let exp_avg = backend.download_f32(&self.optimizer.exp_avg)?;
        let exp_avg_sq = backend.download_f32(&self.optimizer.exp_avg_sq)?;
        let state = self.state.clone();
        let config = self.model.config().clone();
        let adamw_steps = self.optimizer.steps;
        write_dir_atomically(dir, |tmp| {
            write_model_files(tmp, &config, &values, self.tokenizer.as_ref())?;
            let n = values.len();
            let metadata = HashMap::from([("adamw_steps".to_string(), adamw_steps.to_string())]);
            write_f32_tensors(
                &tmp.join(OPTIMIZER_FILE),
                &[
                    ("exp_avg".to_string(), vec![n], exp_avg.as_slice()),
                    ("exp_avg_sq".to_string(), vec![n], exp_avg_sq.as_slice()),
                ],
                Some(metadata),
            )?;
            let json = serde_json::to_string_pretty(&state).map_err(|e| Error::Json {
                context: "serialising trainer state".into(),
                source: e,
            })?;
            fs::write(tmp.join(STATE_FILE), json).map_err(|e| Error::io("writing trainer state", e))
        })
    }

    /// Restores a trainer from a training checkpoint, exactly where it stopped (with the
    /// checkpoint's tokenizer, when it holds one).
    pub fn resume(dir: &Path, device: Device) -> Result<Self> {
        Self::resume_with(dir, device, Precision::F32)
    }

    /// [`resume`](Self::resume) computing in `precision` (the checkpoint holds f32 values either way).
    pub fn resume_with(dir: &Path, device: Device, precision: Precision) -> Result<Self> {
        let model = load_model(dir, device)?.with_precision(precision)?;
        let tokenizer = load_tokenizer(dir)?;
        if let Some(tokenizer) = &tokenizer {
            check_tokenizer_matches(model.config(), tokenizer)
                .map_err(|e| Error::checkpoint(dir.join(TOKENIZER_FILE), e.to_string()))?;
        }
        let state_path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&state_path).map_err(|e| {
            Error::checkpoint(
                &state_path,
                format!("cannot read (not a training checkpoint?): {e}"),
            )
        })?;
        let state: TrainerState = serde_json::from_str(&text)
            .map_err(|e| Error::checkpoint(&state_path, format!("invalid trainer state: {e}")))?;
        if state.batch_size == 0 {
            return Err(Error::checkpoint(&state_path, "batch_size is 0"));
        }

        let opt_path = dir.join(OPTIMIZER_FILE);
        let mut tensors = read_f32_tensors(&opt_path)?;
        let n = model.num_parameters();
        let mut moment = |name: &str| -> Result<Vec<f32>> {
            match tensors.remove(name) {
                Some((shape, data)) if shape == [n] => Ok(data),
                Some((shape, _)) => Err(Error::checkpoint(
                    &opt_path,
                    format!("tensor {name} has shape {shape:?}, expected [{n}]"),
                )),
                None => Err(Error::checkpoint(
                    &opt_path,
                    format!("missing tensor {name}"),
                )),
            }
        };
        let (m, v) = (moment("exp_avg")?, moment("exp_avg_sq")?);
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::checkpoint(
                &opt_path,
                format!("unexpected tensor {extra}"),
            ));
        }

        let backend = model.backend();
        let mut optimizer = AdamW::new(backend, n, state.adamw)?;
        optimizer.exp_avg = backend.upload_f32(&[n], &m)?;
        optimizer.exp_avg_sq = backend.upload_f32(&[n], &v)?;
        optimizer.steps = state.step;
        let config = model.config();
        let mut collator = MaskedLMCollator::new(
            config.mask_token_id,
            config.vocab_size,
            state.masking_probability,
            0,
        )?;
        collator.restore(&state.collator)?;
        let grads = backend.zeros_f32(&[n])?;
        let halted = backend.upload_i32(&[1], &[0])?;
        Ok(Trainer {
            model,
            tokenizer,
            optimizer,
            collator,
            grads,
            halted,
            state,
            stop_requested: None,
        })
    }
}
