//! `maskedlm infer`: fill the `[MASK]` tokens of pre-tokenized disassembly.
//!
//! Each input is encoded with the tokenizer (truncated to its sequence length like the reference),
//! the model's logits are computed at the `[MASK]` positions only, and each mask is replaced by
//! its most probable token. The output is decoded with special tokens kept and `[PAD]` removed,
//! as the reference's infer pipeline prints it. Candidates carry softmax probabilities, computed
//! with the choice of the best candidates by the backend (`softmax_top_k` on a [`Backend`]).
//!
//! [`fill_inputs`] runs many inputs as the command line does: one output line per input (a blank
//! input gives an empty line), warnings and errors naming the input by its line or argument
//! number.
//!
//! [`Backend`]: crate::backend::Backend

use std::fmt;
use std::io::Write;

use serde::Serialize;

use crate::data::tokenizer::{InstructionTokenizer, MASK_TOKEN};
use crate::error::{Error, Result};
use crate::model::InstructionTraceTransformerEncoderForMaskedLM as Model;
use crate::tensor::Tensor;

/// One candidate token for a mask.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub id: i32,
    pub token: String,
    pub probability: f64,
}

/// The candidates for the mask at token position `position`, best first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaskPrediction {
    pub position: usize,
    pub candidates: Vec<Candidate>,
}

/// One input with its masks filled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Filled {
    pub input: String,
    pub output: String,
    pub masks: Vec<MaskPrediction>,
    /// The input was longer than the tokenizer's sequence length and was cut.
    #[serde(skip)]
    pub truncated: bool,
    /// What the user should be told about this input (it was cut, it has no mask to fill),
    /// without the input's name.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// Fills the masks of `text`, keeping the `top_k` best candidates of each (at least one is
/// asked for; more than the vocabulary gives the whole vocabulary).
pub fn fill_masks(
    model: &Model,
    tokenizer: &InstructionTokenizer,
    text: &str,
    top_k: usize,
) -> Result<Filled> {
    if top_k == 0 {
        return Err(Error::Config(
            "top-k is 0: at least one candidate per mask is needed".into(),
        ));
    }
    let encoding = tokenizer.encode(text)?;
    let mut ids = encoding.real_tokens();
    let mask_id = tokenizer.mask_token_id() as i32;
    let positions: Vec<i32> = (0..ids.len() as i32)
        .filter(|&j| ids[j as usize] == mask_id)
        .collect();
    let mut masks = Vec::with_capacity(positions.len());
    if !positions.is_empty() {
        let tokens = Tensor::from_i32(&[ids.len()], ids.clone())?;
        let logits = model.logits_at_positions(&tokens, None, &positions)?;
        // The softmax and the choice of the k best run where the logits are: only k ids and k
        // probabilities per mask come back from a GPU.
        let backend = model.backend();
        let k = top_k.min(model.config().vocab_size);
        let top = backend.softmax_top_k(&logits, k)?;
        let best_ids = backend.download_i32(&top.ids)?;
        let probabilities = backend.download_f32(&top.probabilities)?;
        for ((ids_k, probabilities_k), &position) in best_ids
            .chunks(k)
            .zip(probabilities.chunks(k))
            .zip(&positions)
        {
            let candidates = ids_k
                .iter()
                .zip(probabilities_k)
                .map(|(&id, &probability)| Candidate {
                    id,
                    token: tokenizer.token(id).unwrap_or_default(),
                    probability: probability as f64,
                })
                .collect::<Vec<_>>();
            ids[position as usize] = candidates[0].id;
            masks.push(MaskPrediction {
                position: position as usize,
                candidates,
            });
        }
    }
    let warnings = warnings(text, encoding.truncated, masks.is_empty(), tokenizer);
    Ok(Filled {
        input: text.to_string(),
        output: tokenizer.decode(&ids)?,
        masks,
        truncated: encoding.truncated,
        warnings,
    })
}

/// The warnings of one input: cut to the sequence length; nothing to fill (a blank input is an
/// empty output, not worth a warning).
fn warnings(
    text: &str,
    truncated: bool,
    no_masks: bool,
    tokenizer: &InstructionTokenizer,
) -> Vec<String> {
    let length = tokenizer.sequence_length();
    let mut out = Vec::new();
    if truncated {
        out.push(format!(
            "longer than the tokenizer's sequence length of {length} tokens; truncated to it, as the reference does"
        ));
    }
    if no_masks && !text.trim().is_empty() {
        out.push(if text.contains(MASK_TOKEN) {
            format!("its {MASK_TOKEN} tokens lie past the {length} tokens kept; nothing to fill")
        } else if text.to_ascii_uppercase().contains(MASK_TOKEN) {
            // The tokenizer matches special tokens case-sensitively.
            format!(
                "no {MASK_TOKEN} token to fill (the mask token is upper-case: a lower-case one is not a mask)"
            )
        } else {
            format!("no {MASK_TOKEN} token to fill")
        });
    }
    out
}

/// Where an input came from: its line of standard input or its place among the command-line
/// arguments, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputName {
    Line(usize),
    Argument(usize),
}

impl fmt::Display for InputName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputName::Line(n) => write!(f, "line {n}"),
            InputName::Argument(n) => write!(f, "input {n}"),
        }
    }
}

/// How [`fill_inputs`] writes each filled input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// The filled text, one line per input.
    Text,
    /// The filled text, then one indented line per mask with its candidates:
    /// `    position 3: mov (0.4120), push (0.2010)`. The unindented lines stay one per input.
    TextWithCandidates,
    /// One JSON object ([`Filled`]) per input, one per line.
    Json,
}

/// Fills every input in order and writes one output line per input to `out` (an empty line for a
/// blank input, or with [`OutputFormat::Json`] an object with no masks), passing each warning to
/// `warn` prefixed by the input's name. The first input that fails stops the run: its error is
/// returned as [`Error::Input`] naming it, and the outputs of the inputs before it are already
/// written. An output closed by its reader (a broken pipe) ends the run quietly. Returns the
/// number of inputs filled.
pub fn fill_inputs<W: Write>(
    model: &Model,
    tokenizer: &InstructionTokenizer,
    inputs: impl IntoIterator<Item = (InputName, std::io::Result<String>)>,
    top_k: usize,
    format: OutputFormat,
    out: &mut W,
    warn: &mut dyn FnMut(String),
) -> Result<usize> {
    let mut filled_count = 0;
    for (name, input) in inputs {
        let named = |source: Error| Error::Input {
            input: name.to_string(),
            source: Box::new(source),
        };
        let text = input.map_err(|e| named(Error::io("reading the input", e)))?;
        let filled = fill_masks(model, tokenizer, &text, top_k).map_err(named)?;
        for w in &filled.warnings {
            warn(format!("{name}: {w}"));
        }
        match write_filled(out, &filled, format) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(filled_count),
            Err(e) => return Err(Error::io("writing the output", e)),
        }
        filled_count += 1;
    }
    Ok(filled_count)
}

fn write_filled<W: Write>(
    out: &mut W,
    filled: &Filled,
    format: OutputFormat,
) -> std::io::Result<()> {
    match format {
        OutputFormat::Json => {
            serde_json::to_writer(&mut *out, filled)?;
            writeln!(out)
        }
        OutputFormat::Text => writeln!(out, "{}", filled.output),
        OutputFormat::TextWithCandidates => {
            writeln!(out, "{}", filled.output)?;
            for mask in &filled.masks {
                let candidates = mask
                    .candidates
                    .iter()
                    .map(|c| format!("{} ({:.4})", c.token, c.probability))
                    .collect::<Vec<_>>()
                    .join(", ");
                writeln!(out, "    position {}: {candidates}", mask.position)?;
            }
            Ok(())
        }
    }
}
