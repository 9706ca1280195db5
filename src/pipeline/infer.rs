//! `maskedlm infer`: fill the `[MASK]` tokens of pre-tokenized disassembly.
//!
//! Each input is encoded with the tokenizer (truncated to its sequence length like the reference),
//! the model's logits are computed at the `[MASK]` positions only, and each mask is replaced by
//! its most probable token. The output is decoded with special tokens kept and `[PAD]` removed,
//! as the reference's infer pipeline prints it. Candidates carry softmax probabilities, computed
//! with the choice of the best candidates by the backend (`softmax_top_k` on a [`Backend`]), where the
//! logits are. Several texts are filled in one forward pass ([`fill_masks_batch`]).
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
    /// The token's id.
    pub id: i32,
    /// The token's string.
    pub token: String,
    /// Its softmax probability at the mask.
    pub probability: f64,
}

/// The candidates for the mask at token position `position`, best first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaskPrediction {
    /// The mask's token position in the encoded input.
    pub position: usize,
    /// The most probable tokens, best first.
    pub candidates: Vec<Candidate>,
}

/// One input with its masks filled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Filled {
    /// The text as given.
    pub input: String,
    /// The text with each mask replaced by its best candidate, decoded.
    pub output: String,
    /// Each mask's candidates, in the order of their positions.
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
    let mut filled = fill_masks_batch(model, tokenizer, &[text], top_k)?;
    Ok(filled.remove(0))
}

/// [`fill_masks`] for several texts, in one forward pass.
pub fn fill_masks_batch(
    model: &Model,
    tokenizer: &InstructionTokenizer,
    texts: &[&str],
    top_k: usize,
) -> Result<Vec<Filled>> {
    if top_k == 0 {
        return Err(Error::Config(
            "top-k is 0: at least one candidate per mask is needed".into(),
        ));
    }
    let mut batch = EncodedBatch::new(tokenizer, texts)?;
    let positions = batch.mask_positions(tokenizer.mask_token_id());
    let mut masks = vec![Vec::new(); texts.len()];
    if !positions.is_empty() {
        let logits = model.logits_at_positions(&batch.tokens, batch.mask.as_ref(), &positions)?;
        // The softmax and the choice of the k best run where the logits are: only k ids and k
        // probabilities per mask come back from a GPU.
        let backend = model.backend();
        let k = top_k.min(model.config().vocab_size);
        let top = backend.softmax_top_k(&logits, k)?;
        let best_ids = backend.download_i32(&top.ids)?;
        let probabilities = backend.download_f32(&top.probabilities)?;
        for ((ids_k, probabilities_k), &flat) in best_ids
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
            let (row, position) = batch.locate(flat);
            batch.rows[row][position] = candidates[0].id;
            masks[row].push(MaskPrediction {
                position,
                candidates,
            });
        }
    }
    texts
        .iter()
        .zip(batch.rows.iter().zip(&batch.truncated))
        .zip(masks)
        .map(|((text, (ids, &truncated)), masks)| {
            Ok(Filled {
                input: text.to_string(),
                output: tokenizer.decode(ids)?,
                warnings: warnings(text, truncated, masks.is_empty(), tokenizer),
                masks,
                truncated,
            })
        })
        .collect()
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
    /// The n-th line of standard input (displayed `line n`).
    Line(usize),
    /// The n-th input on the command line (displayed `input n`).
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

/// Texts encoded for one forward pass: the real tokens of each (without the tokenizer's
/// padding), padded again only to the longest of them.
pub(crate) struct EncodedBatch {
    /// I32 `[texts, width]`.
    pub tokens: Tensor,
    /// I32 `[texts, width]`; `None` when no row is padded (every position is real).
    pub mask: Option<Tensor>,
    /// The real tokens of each text.
    pub rows: Vec<Vec<i32>>,
    /// Whether each text was cut at the tokenizer's sequence length.
    pub truncated: Vec<bool>,
    /// The longest row's length.
    pub width: usize,
}

impl EncodedBatch {
    pub fn new(tokenizer: &InstructionTokenizer, texts: &[&str]) -> Result<Self> {
        if texts.is_empty() {
            return Err(Error::shape("texts", "at least one text", &[0]));
        }
        let encodings = tokenizer.encode_batch(texts)?;
        let rows: Vec<Vec<i32>> = encodings.iter().map(|e| e.real_tokens()).collect();
        let truncated = encodings.iter().map(|e| e.truncated).collect();
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let pad = tokenizer.pad_token_id();
        let mut tokens = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len() * width);
        for row in &rows {
            tokens.extend(
                row.iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad, width - row.len())),
            );
            mask.extend((0..width).map(|j| i32::from(j < row.len())));
        }
        let padded = rows.iter().any(|r| r.len() != width);
        let shape = [rows.len(), width];
        Ok(EncodedBatch {
            tokens: Tensor::from_i32(&shape, tokens)?,
            mask: padded.then(|| Tensor::from_i32(&shape, mask)).transpose()?,
            rows,
            truncated,
            width,
        })
    }

    /// The flat positions (row * width + position) holding `id`.
    pub fn mask_positions(&self, id: i32) -> Vec<i32> {
        self.rows
            .iter()
            .enumerate()
            .flat_map(|(r, row)| {
                row.iter()
                    .enumerate()
                    .filter(move |&(_, &t)| t == id)
                    .map(move |(j, _)| (r * self.width + j) as i32)
            })
            .collect()
    }

    /// The row and position of a flat position.
    pub fn locate(&self, flat: i32) -> (usize, usize) {
        let flat = flat as usize;
        (flat / self.width, flat % self.width)
    }
}
