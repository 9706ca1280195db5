//! `InstructionTraceTransformerEncoderForMaskedLM`: the encoder, the MLM head, the loss, `infer`.

use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::encoder::InstructionTraceTransformerEncoder;
use super::inputs::{CheckedInputs, Packing, TokenAxis, check_inputs, labelled_positions};
use super::params::ParamLayout;
use super::{Config, DropoutSchedule, MaskedLMHead};
use crate::backend::Backend;
use crate::device::{Device, Precision};
use crate::error::{Error, Result};
use crate::ops::Weights;
use crate::ops::checks::check_rows;
use crate::ops::sequences::Sequences;
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

/// Loss and accuracy over the labelled positions of a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Mean cross-entropy over the labelled positions.
    pub loss: f32,
    /// Labelled positions whose argmax prediction equals the label.
    pub correct: usize,
    /// Labelled positions.
    pub count: usize,
}

/// A transformer encoder with a masked language modeling head.
pub struct InstructionTraceTransformerEncoderForMaskedLM {
    config: Config,
    backend: Arc<dyn Backend>,
    layout: ParamLayout,
    params: Tensor,
    /// In bf16 mixed precision, the bf16 copy of `params` the GEMMs multiply by: made here when
    /// the precision is set, rewritten by AdamW in the same pass as the master values.
    gemm_copy: Option<Tensor>,
    encoder: InstructionTraceTransformerEncoder,
    head: MaskedLMHead,
    packing: Packing,
}

impl InstructionTraceTransformerEncoderForMaskedLM {
    /// The layout, encoder and head for a configuration, without values.
    fn structure(
        config: &Config,
    ) -> (
        ParamLayout,
        InstructionTraceTransformerEncoder,
        MaskedLMHead,
    ) {
        let mut layout = ParamLayout::new();
        let encoder = InstructionTraceTransformerEncoder::new(&mut layout, config);
        let head = MaskedLMHead::new(
            &mut layout,
            config.hidden_dimensions,
            config.vocab_size,
            config.eps,
        );
        (layout, encoder, head)
    }

    /// The parameter layout a configuration produces.
    #[doc(hidden)]
    pub fn layout_for(config: &Config) -> ParamLayout {
        Self::structure(config).0
    }

    /// A freshly initialised model (PyTorch's default initialisation), reproducible from `seed`.
    pub fn new(config: Config, device: Device, seed: u64) -> Result<Self> {
        config.validate()?;
        let layout = Self::layout_for(&config);
        let values = layout.initialise(&mut ChaCha8Rng::seed_from_u64(seed));
        Self::from_parameters(config, device, &values)
    }

    /// A model with the given flat parameter values (in layout order).
    pub fn from_parameters(config: Config, device: Device, values: &[f32]) -> Result<Self> {
        config.validate()?;
        let (layout, encoder, head) = Self::structure(&config);
        if values.len() != layout.len() {
            return Err(Error::shape(
                "parameters",
                format!("[{}]", layout.len()),
                &[values.len()],
            ));
        }
        let backend = device.backend()?;
        let params = backend.upload_f32(&[layout.len()], values)?;
        Ok(Self {
            config,
            backend,
            layout,
            params,
            gemm_copy: None,
            encoder,
            head,
            packing: Packing::default(),
        })
    }

    /// Loads a checkpoint directory (`model.safetensors` and `config.json`, as
    /// [`checkpoint::save_model`](crate::checkpoint::save_model) and the trainer write them, or as
    /// converted from a reference PyTorch checkpoint) onto `device`. Every tensor's name, shape and
    /// dtype is checked against the configuration.
    pub fn from_checkpoint(dir: impl AsRef<std::path::Path>, device: Device) -> Result<Self> {
        crate::checkpoint::load_model(dir.as_ref(), device)
    }

    /// The model's configuration (the reference's constructor arguments).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The same model computing in `precision` (bf16 mixed precision needs a GPU or a CPU with
    /// AVX512_BF16). The f32 parameters are kept as they are; only the arithmetic of the ops
    /// changes.
    pub fn with_precision(self, precision: Precision) -> Result<Self> {
        if precision == self.backend.precision() {
            return Ok(self);
        }
        let backend = self.device().backend_with(precision)?;
        self.on_backend(backend)
    }

    /// The same model running on `backend`, in its precision: for tests and benchmarks that
    /// compare two backends of one device (a CPU's kernels forced to their portable path, say).
    #[doc(hidden)]
    pub fn on_backend(mut self, backend: Arc<dyn Backend>) -> Result<Self> {
        let precision = backend.precision();
        self.params = backend.to_device(&self.params)?;
        self.gemm_copy = match precision {
            Precision::F32 => None,
            Precision::Bf16 => Some(backend.cast(&self.params, crate::tensor::DType::BF16)?),
        };
        self.backend = backend;
        Ok(self)
    }

    /// The same model running training, evaluation and inference batches in `packing`: packed
    /// (the default: only real tokens are computed) or padded (every position, as the reference
    /// runs them; the slower path, kept for comparison). [`forward`](Self::forward) and
    /// [`hidden_states`](Self::hidden_states) return every padded position either way.
    pub fn with_packing(mut self, packing: Packing) -> Self {
        self.set_packing(packing);
        self
    }

    /// [`with_packing`](Self::with_packing) in place.
    pub fn set_packing(&mut self, packing: Packing) {
        self.packing = packing;
    }

    /// How training, evaluation and inference batches are laid out.
    pub fn packing(&self) -> Packing {
        self.packing
    }

    /// The arithmetic the model runs in.
    pub fn precision(&self) -> Precision {
        self.backend.precision()
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.backend.device()
    }

    /// The backend the ops run on.
    #[doc(hidden)]
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The backend, shared (for callers that update the parameters while holding it).
    #[doc(hidden)]
    pub fn shared_backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// Where each named parameter sits in the flat parameter buffer.
    #[doc(hidden)]
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The flat parameter buffer.
    pub fn parameters(&self) -> &Tensor {
        &self.params
    }

    /// The parameter buffers the ops read: the f32 values, and in mixed precision the bf16 copy
    /// the GEMMs multiply by.
    #[doc(hidden)]
    pub fn weights(&self) -> Weights<'_> {
        match &self.gemm_copy {
            Some(copy) => Weights::mixed(&self.params, copy),
            None => Weights::f32(&self.params),
        }
    }

    /// The flat parameter buffer to write, and the bf16 copy (mixed precision) that must be written
    /// with it: AdamW writes both in one pass.
    #[doc(hidden)]
    pub fn parameters_mut(&mut self) -> (&mut Tensor, Option<&mut Tensor>) {
        (&mut self.params, self.gemm_copy.as_mut())
    }

    /// The number of parameters (f32 values).
    pub fn num_parameters(&self) -> usize {
        self.layout.len()
    }

    /// The hidden states `[tokens, hidden]` of the axis's rows.
    fn encode<'a>(
        &self,
        tape: &mut Tape<'a>,
        axis: &TokenAxis,
        sequences: &'a Sequences,
        dropout: Option<DropoutSchedule>,
    ) -> Result<Var> {
        let tokens = tape.input(
            self.backend
                .upload_i32(&[axis.tokens.len()], &axis.tokens)?,
        );
        self.encoder.forward(tape, tokens, sequences, dropout)
    }

    /// Logits `[batch, seq, vocab]` at every position, padding included, as the reference's
    /// `forward(tokens, mask)` (evaluation mode: no dropout). `tokens` and `mask` are I32
    /// `[batch, seq]` or `[seq]`; no mask means every position is real. Sequences may be shorter
    /// than `sequence_length`.
    pub fn forward(&self, tokens: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let inputs = check_inputs(&self.config, tokens, mask)?;
        let axis = TokenAxis::new(&inputs, Packing::Padded);
        let sequences = axis.sequences(self.backend(), false)?;
        let mut tape = Tape::inference(self.backend.as_ref(), self.weights());
        let state = self.encode(&mut tape, &axis, &sequences, None)?;
        let logits = self.head.forward(&mut tape, state)?;
        tape.take(logits)?
            .reshape(&[inputs.batch, inputs.seq, self.config.vocab_size])
    }

    /// The encoder's last hidden state `[batch, seq, hidden_dimensions]` (evaluation mode: no
    /// dropout), before the masked-LM head: what the reference's classifiers pool into an
    /// embedding; F32, or BF16 in mixed precision. `tokens` and `mask` as for
    /// [`forward`](Self::forward).
    pub fn hidden_states(&self, tokens: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let inputs = check_inputs(&self.config, tokens, mask)?;
        let axis = TokenAxis::new(&inputs, Packing::Padded);
        let sequences = axis.sequences(self.backend(), false)?;
        let mut tape = Tape::inference(self.backend.as_ref(), self.weights());
        let state = self.encode(&mut tape, &axis, &sequences, None)?;
        tape.take(state)?
            .reshape(&[inputs.batch, inputs.seq, self.config.hidden_dimensions])
    }

    /// Fills every `[MASK]` of one sequence with its argmax prediction and keeps every other
    /// token, as the reference's `infer`. Returns a 1-D I32 tensor of the sequence's length.
    pub fn infer(&self, tokens: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let inputs = check_inputs(&self.config, tokens, mask)?;
        if inputs.batch != 1 {
            return Err(Error::shape(
                "infer tokens",
                "one sequence, [seq] or [1, seq]",
                tokens.shape(),
            ));
        }
        Tensor::from_i32(&[inputs.seq], self.fill_masks(&inputs)?)
    }

    /// [`infer`](Self::infer) over a batch: every `[MASK]` of every sequence filled with its argmax
    /// prediction, in one forward pass whose head runs only at the masked positions. `tokens`:
    /// `[batch, seq]` or `[seq]`; returns an I32 tensor of the same shape.
    pub fn infer_batch(&self, tokens: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let inputs = check_inputs(&self.config, tokens, mask)?;
        Tensor::from_i32(tokens.shape(), self.fill_masks(&inputs)?)
    }

    /// The checked tokens with every `[MASK]` replaced by its argmax prediction.
    fn fill_masks(&self, inputs: &CheckedInputs) -> Result<Vec<i32>> {
        let mask_id = self.config.mask_token_id;
        let rows: Vec<i32> = (0..inputs.tokens.len() as i32)
            .filter(|&j| inputs.tokens[j as usize] == mask_id)
            .collect();
        let mut filled = inputs.tokens.clone();
        if !rows.is_empty() {
            let predictions = self.predict_rows(inputs, &rows)?;
            for (&row, &id) in rows.iter().zip(&predictions) {
                filled[row as usize] = id;
            }
        }
        Ok(filled)
    }

    /// Argmax predictions at the given flat positions, computing the head only there.
    fn predict_rows(&self, inputs: &CheckedInputs, rows: &[i32]) -> Result<Vec<i32>> {
        let logits = self.logits_at(inputs, rows)?;
        self.backend
            .download_i32(&self.backend.argmax_rows(&logits)?)
    }

    /// Logits `[rows, vocab]` at the given flat positions only (no dropout).
    pub fn logits_at_positions(
        &self,
        tokens: &Tensor,
        mask: Option<&Tensor>,
        rows: &[i32],
    ) -> Result<Tensor> {
        let inputs = check_inputs(&self.config, tokens, mask)?;
        self.logits_at(&inputs, rows)
    }

    /// Logits at flat padded positions `rows`, in the model's packing (padded if packing would
    /// cut one of them: a position after its row's last real token).
    fn logits_at(&self, inputs: &CheckedInputs, rows: &[i32]) -> Result<Tensor> {
        check_rows(rows, inputs.batch * inputs.seq)?;
        let mut axis = TokenAxis::new(inputs, self.packing);
        let rows = match axis.rows_of(rows) {
            Some(rows) => rows,
            None => {
                axis = TokenAxis::new(inputs, Packing::Padded);
                rows.to_vec()
            }
        };
        let sequences = axis.sequences(self.backend(), false)?;
        let mut tape = Tape::inference(self.backend.as_ref(), self.weights());
        let state = self.encode(&mut tape, &axis, &sequences, None)?;
        let rows = tape.input(self.backend.upload_i32(&[rows.len()], &rows)?);
        let picked = tape.gather_rows(state, rows)?;
        let logits = self.head.forward(&mut tape, picked)?;
        tape.take(logits)
    }

    /// The training loss of a masked batch and its gradient, added into `grads` (the flat buffer
    /// aligned with [`parameters`](Self::parameters)). The head runs only at labelled positions:
    /// the loss is exactly the reference's mean cross-entropy over labels != -100.
    pub fn loss_and_backward(
        &self,
        tokens: &Tensor,
        mask: &Tensor,
        labels: &Tensor,
        grads: &mut Tensor,
        dropout: Option<DropoutSchedule>,
    ) -> Result<f32> {
        self.backend
            .download_f32(&self.queue_loss_and_backward(tokens, mask, labels, grads, dropout)?)
            .map(|loss| loss[0])
    }

    /// [`loss_and_backward`](Self::loss_and_backward) without waiting for the device: the work is
    /// queued, and the loss comes back as a one-element tensor on the device. Every input is checked
    /// on the host first, so on an error nothing has been queued and `grads` is untouched.
    pub fn queue_loss_and_backward(
        &self,
        tokens: &Tensor,
        mask: &Tensor,
        labels: &Tensor,
        grads: &mut Tensor,
        dropout: Option<DropoutSchedule>,
    ) -> Result<Tensor> {
        let inputs = check_inputs(&self.config, tokens, Some(mask))?;
        let (rows, targets) = labelled_positions(&self.config, &inputs, labels)?;
        let axis = TokenAxis::new(&inputs, self.packing);
        // Labels are on real tokens only (checked), and packing keeps every real token.
        let rows = axis
            .rows_of(&rows)
            .expect("packing keeps every labelled position");
        let sequences = axis.sequences(self.backend(), dropout.is_some())?;
        let mut tape = Tape::new(self.backend.as_ref(), self.weights());
        let state = self.encode(&mut tape, &axis, &sequences, dropout)?;
        let rows = tape.input(self.backend.upload_i32(&[rows.len()], &rows)?);
        let picked = tape.gather_rows(state, rows)?;
        let logits = self.head.forward(&mut tape, picked)?;
        let targets = self.backend.upload_i32(&[targets.len()], &targets)?;
        // The logits are not needed after the loss: hand them over, so that the GPU writes the
        // gradient over them.
        let ce = self
            .backend
            .cross_entropy_in_place(tape.take(logits)?, &targets)?;
        let dlogits = ce
            .dlogits
            .expect("cross_entropy was asked for the gradient");
        tape.backward(logits, dlogits, grads)?;
        Ok(ce.loss)
    }

    /// Loss and masked-token accuracy over the labelled positions (no dropout). Micro-F1 over
    /// labelled positions, the reference's validation metric, equals this accuracy.
    pub fn evaluate(&self, tokens: &Tensor, mask: &Tensor, labels: &Tensor) -> Result<Evaluation> {
        let inputs = check_inputs(&self.config, tokens, Some(mask))?;
        let (rows, targets) = labelled_positions(&self.config, &inputs, labels)?;
        let logits = self.logits_at(&inputs, &rows)?;
        let labels_t = self.backend.upload_i32(&[targets.len()], &targets)?;
        let ce = self.backend.cross_entropy(&logits, &labels_t, false)?;
        let predictions = self
            .backend
            .download_i32(&self.backend.argmax_rows(&logits)?)?;
        let correct = predictions
            .iter()
            .zip(&targets)
            .filter(|(p, t)| p == t)
            .count();
        Ok(Evaluation {
            loss: ce.loss_value()?,
            correct,
            count: targets.len(),
        })
    }
}
