//! The reference's tokenizer recipe through the `tokenizers` crate.
//!
//! The tokenizer file is a Hugging Face `tokenizer.json`, and any file the reference (the Python
//! `undertale` package, built on the `tokenizers` Python package, which wraps this same crate)
//! trained loads and behaves identically here: [`InstructionTokenizer::load`] hands it to
//! `tokenizers` unchanged.
//!
//! # Input
//!
//! Pre-tokenized disassembly: whitespace-separated tokens, `[NEXT]` between instructions, e.g.
//! `push rbp [NEXT] mov rbp rsp [NEXT] mov eax 4096 [NEXT] ret`.
//!
//! # Training recipe
//!
//! [`InstructionTokenizer::train`] is the reference's `train`:
//!
//! 1. Every text is split on whitespace (Python's `str.split()`: Unicode whitespace plus the
//!    separators `\x1c`..`\x1f`). A token for which Python's `int(token)` succeeds is an
//!    *immediate*; every other token (mnemonics, registers, `[`, `]`, `+`, `-`, `*`, size words,
//!    `rel`, and `[NEXT]` itself) is a *word*. As `int()`, an immediate is ASCII digits with an
//!    optional leading `+` or `-` and single `_` between digits (`16`, `0009`, `-16`, `1_000`);
//!    the corpus writer only emits plain non-negative decimals. (`int()` also takes non-ASCII
//!    decimal digits such as `٣`; those tokens are words here, the one known difference.)
//! 2. A `BPE` model with unk token `[UNK]` and the `Whitespace` pre-tokenizer is trained with a
//!    `BpeTrainer` (`vocab_size`, `continuing_subword_prefix` `__`, special tokens
//!    [`SPECIAL_TOKENS`], which therefore get ids 0..5) on the immediates only. The pre-tokenizer
//!    splits a sign off (`-16` trains as `-` and `16`).
//! 3. Every word is added whole with `add_tokens`, in order of first appearance in the corpus
//!    (the order of the reference's counting dict); they get the ids after the BPE vocabulary
//!    (a word the BPE vocabulary already holds, such as `-` when signed immediates were seen,
//!    keeps its BPE id). Then the special tokens are added again with `add_special_tokens`.
//! 4. Padding (`Fixed(sequence_length)`, pad token `[PAD]`, pad id 0) and truncation
//!    (`max_length = sequence_length`) are both enabled, so every encoding is exactly
//!    `sequence_length` long.
//!
//! **Canonical numbering.** The `tokenizers` BPE trainer is not reproducible from run to run, in
//! Python or in Rust: it numbers the initial continuing-subword tokens (`__0` .. `__9`, one per
//! character seen after the first character of an immediate) in the iteration order of a randomly
//! seeded hash map, and breaks ties between equally frequent merges by those ids. `train` therefore
//! renumbers that block of ids in code-point order (`__0` < `__1` < ...), which is the numbering the
//! trainer gives in a run whose hash order visits them in that order. When no merge depends on a
//! tie, the result is the same on every run and equal, byte for byte, to what the reference (with
//! the same renumbering) writes; with ties, the merges themselves can differ from run to run, in
//! the reference as here. Only ids change: the renumbered tokenizer splits every input into the
//! same token strings.
//!
//! # Encoding: added tokens are matched inside words
//!
//! `tokenizers` looks for added tokens (every word of the corpus) in the raw text *before*
//! pre-tokenization, leftmost-longest, with no word-boundary check. Known words therefore split
//! unknown ones: with `ax`, `eax` and `rax` in the vocabulary, `raxeax` encodes as `rax` `eax`,
//! `xax` as `[UNK]` `ax`, `movs` (unseen) as `mov` `[UNK]` (the `s` is not in the BPE alphabet, and
//! every unknown character is its own `[UNK]`), and `eax4096` as `eax` `40` `__96`. A known word is
//! never split by a shorter one (`rax` stays `rax`, not `r` `ax`). This is the reference's
//! behaviour, reproduced exactly because it is the same library.
//!
//! # Decoding
//!
//! [`InstructionTokenizer::decode`] prints as the reference does:
//! `tokenizer.decode(ids, skip_special_tokens=False).replace("[PAD]", "").strip()`. Tokens are
//! joined with single spaces (there is no decoder, so BPE pieces stay apart: `4198400` encoded as
//! `41984` `__00` decodes to `41984 __00`), special tokens are kept, every `[PAD]` text is removed
//! and the whitespace at both ends is stripped; a `[PAD]` between other tokens leaves its two
//! spaces. Unlike the reference, which skips ids it does not know, an id with no token is an error.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{
    AddedToken, PaddingParams, PaddingStrategy, PostProcessor, Tokenizer, TruncationParams,
};

use crate::{Error, Result};

/// The special tokens, in the reference's order: a tokenizer it trained gives them ids 0..5.
pub const SPECIAL_TOKENS: [&str; 6] = ["[PAD]", "[UNK]", "[SEP]", "[CLS]", "[MASK]", "[NEXT]"];

/// The padding token.
pub const PAD_TOKEN: &str = "[PAD]";
/// The unknown token (the BPE model's unk token).
pub const UNK_TOKEN: &str = "[UNK]";
/// The mask token the masked-LM collator writes.
pub const MASK_TOKEN: &str = "[MASK]";
/// The token between instructions.
pub const NEXT_TOKEN: &str = "[NEXT]";

/// The reference's default BPE vocabulary size (for the immediates, before the words are added).
pub const DEFAULT_VOCAB_SIZE: usize = 4096;
/// The reference's default sequence length.
pub const DEFAULT_SEQUENCE_LENGTH: usize = 512;

/// The BPE trainer's `continuing_subword_prefix`.
const CONTINUING_SUBWORD_PREFIX: &str = "__";

/// A trained tokenizer: the `tokenizers` tokenizer, its sequence length, and the ids the model
/// and the collator need.
///
/// ```
/// use undertale_maskedlm::data::tokenizer::InstructionTokenizer;
///
/// let texts = ["push rbp [NEXT] mov rbp rsp [NEXT] ret", "xor eax eax [NEXT] ret"];
/// // A vocabulary of at most 64 ids; every encoding 16 ids long.
/// let tokenizer = InstructionTokenizer::train(texts.into_iter(), 64, 16)?;
/// let encoding = tokenizer.encode("mov rbp [MASK] [NEXT] ret")?;
/// assert_eq!(encoding.tokens.len(), 16);
/// assert!(encoding.real_tokens().contains(&tokenizer.mask_token_id()));
/// assert_eq!(tokenizer.decode(&encoding.tokens)?, "mov rbp [MASK] [NEXT] ret");
/// # Ok::<(), undertale_maskedlm::Error>(())
/// ```
#[derive(Clone)]
pub struct InstructionTokenizer {
    inner: Tokenizer,
    sequence_length: usize,
    vocab_size: usize,
    pad_id: usize,
    mask_id: usize,
    next_id: usize,
}

impl std::fmt::Debug for InstructionTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstructionTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("sequence_length", &self.sequence_length)
            .field("pad_token_id", &self.pad_id)
            .field("mask_token_id", &self.mask_id)
            .field("next_token_id", &self.next_id)
            .finish()
    }
}

/// One encoded input: ids and attention mask, both exactly `sequence_length` long (padded), and
/// whether it was truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids, `[PAD]` after the real tokens.
    pub tokens: Vec<i32>,
    /// 1 at real tokens, 0 at padding.
    pub mask: Vec<i32>,
    /// The text had more tokens than `sequence_length` and was cut.
    pub truncated: bool,
}

impl Encoding {
    /// The tokens whose mask is 1: the input without its padding.
    pub fn real_tokens(&self) -> Vec<i32> {
        self.tokens
            .iter()
            .zip(&self.mask)
            .filter(|(_, m)| **m == 1)
            .map(|(t, _)| *t)
            .collect()
    }
}

impl InstructionTokenizer {
    /// The reference recipe over pre-tokenized texts (see the module documentation): BPE with
    /// `vocab_size` over the immediates, then every other token added whole in order of first
    /// appearance, then the special tokens; padding and truncation at `sequence_length`.
    ///
    /// An empty corpus, or one whose texts hold no token but the special tokens, is an
    /// [`Error::Tokenizer`]: the vocabulary would map every real token to `[UNK]`.
    pub fn train<'a>(
        texts: impl Iterator<Item = &'a str>,
        vocab_size: usize,
        sequence_length: usize,
    ) -> Result<Self> {
        if sequence_length == 0 {
            return Err(Error::tokenizer("sequence_length must be positive, got 0"));
        }

        // Count the immediates and collect the words in order of first appearance, as the
        // reference's two counting dicts.
        let mut immediates: Vec<(&'a str, u64)> = Vec::new();
        let mut immediate_index: std::collections::HashMap<&'a str, usize> =
            std::collections::HashMap::new();
        let mut words: Vec<&'a str> = Vec::new();
        let mut seen_words: HashSet<&'a str> = HashSet::new();
        let mut functions = 0usize;
        for text in texts {
            functions += 1;
            for token in python_split(text) {
                if is_python_int(token) {
                    match immediate_index.get(token) {
                        Some(&i) => immediates[i].1 += 1,
                        None => {
                            immediate_index.insert(token, immediates.len());
                            immediates.push((token, 1));
                        }
                    }
                } else if seen_words.insert(token) {
                    words.push(token);
                }
            }
        }
        if functions == 0 {
            return Err(Error::tokenizer(
                "the corpus has no functions to train on (was it disassembled from stripped \
                 binaries or files that are not ELF x86-64?)",
            ));
        }

        let special: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();

        let model = BPE::builder()
            .unk_token(UNK_TOKEN.to_string())
            .build()
            .map_err(|e| Error::tokenizer(format!("cannot build the BPE model: {e}")))?;
        let mut tokenizer = Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(Whitespace {}));

        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .special_tokens(special.clone())
            .continuing_subword_prefix(CONTINUING_SUBWORD_PREFIX.to_string())
            .build()
            .into();
        // Each immediate as many times as it was seen, as the reference's generator yields them.
        let sequences = immediates
            .iter()
            .flat_map(|&(token, count)| std::iter::repeat_n(token, count as usize));
        tokenizer
            .train(&mut trainer, sequences)
            .map_err(|e| Error::tokenizer(format!("BPE training failed: {e}")))?;

        let words: Vec<AddedToken> = words.iter().map(|w| AddedToken::from(*w, false)).collect();
        tokenizer.add_tokens(&words);
        tokenizer.add_special_tokens(&special);

        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(sequence_length),
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: sequence_length,
                ..TruncationParams::default()
            }))
            .map_err(|e| Error::tokenizer(format!("cannot enable truncation: {e}")))?;

        let json = tokenizer.to_string(false).map_err(|e| {
            Error::tokenizer(format!("cannot serialize the trained tokenizer: {e}"))
        })?;
        let mut value: serde_json::Value = serde_json::from_str(&json).map_err(|e| {
            Error::tokenizer(format!("cannot read back the trained tokenizer: {e}"))
        })?;
        canonicalize(&mut value)?;
        let tokenizer = Tokenizer::from_str(&value.to_string()).map_err(|e| {
            Error::tokenizer(format!("cannot rebuild the renumbered tokenizer: {e}"))
        })?;

        let trained = Self::from_tokenizer(tokenizer, "the trained tokenizer")?;
        // A vocabulary of nothing but the special tokens turns every input into `[UNK]`s.
        if trained.vocab_size() <= SPECIAL_TOKENS.len() {
            return Err(Error::tokenizer(format!(
                "the corpus's {functions} functions hold no token besides the special tokens \
                 {SPECIAL_TOKENS:?}, so the trained vocabulary would be only those {}",
                trained.vocab_size()
            )));
        }
        Ok(trained)
    }

    /// Loads any `tokenizer.json`. It must hold `[PAD]`, `[MASK]` and `[NEXT]`
    /// ([`Error::MissingSpecialToken`] names the first one missing) and set a sequence length:
    /// truncation's `max_length`, else a fixed padding length (the other setting is then enabled
    /// at the same length, as the reference's `load` does). An unreadable or invalid file is an
    /// [`Error::Tokenizer`] naming the path.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::tokenizer(format!("cannot read {}: {e}", path.display())))?;
        let tokenizer = Tokenizer::from_str(&text).map_err(|e| {
            Error::tokenizer(format!(
                "{} is not a valid tokenizer.json: {e}",
                path.display()
            ))
        })?;
        Self::from_tokenizer(tokenizer, &path.display().to_string())
    }

    /// Checks a tokenizer and settles its sequence length; `source` names it in errors.
    fn from_tokenizer(mut inner: Tokenizer, source: &str) -> Result<Self> {
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .map(|id| id as usize)
                .ok_or_else(|| Error::MissingSpecialToken {
                    token: token.to_string(),
                })
        };
        let pad_id = id(PAD_TOKEN)?;
        let mask_id = id(MASK_TOKEN)?;
        let next_id = id(NEXT_TOKEN)?;

        let vocab = inner.get_vocab(true);
        let vocab_size = vocab.values().max().map_or(0, |&max| max as usize + 1);
        if vocab_size > i32::MAX as usize {
            return Err(Error::tokenizer(format!(
                "{source}: vocabulary of {vocab_size} ids does not fit i32 token ids"
            )));
        }

        let padding_length = match inner.get_padding().map(|p| &p.strategy) {
            Some(PaddingStrategy::Fixed(n)) => Some(*n),
            _ => None,
        };
        let sequence_length = match (inner.get_truncation(), padding_length) {
            (Some(truncation), Some(n)) if truncation.max_length != n => {
                return Err(Error::tokenizer(format!(
                    "{source}: truncation max_length {} differs from the fixed padding length \
                     {n}, so the sequence_length is ambiguous",
                    truncation.max_length
                )));
            }
            (Some(truncation), _) => truncation.max_length,
            (None, Some(n)) => n,
            (None, None) => {
                return Err(Error::tokenizer(format!(
                    "{source}: sets neither truncation (max_length) nor fixed-length padding, so \
                     its sequence_length is unknown"
                )));
            }
        };
        if sequence_length == 0 {
            return Err(Error::tokenizer(format!(
                "{source}: sequence_length must be positive, got 0"
            )));
        }

        // Padding: fixed at sequence_length, with [PAD].
        match inner.get_padding_mut() {
            Some(padding) => {
                padding.strategy = PaddingStrategy::Fixed(sequence_length);
                if padding.pad_token != PAD_TOKEN || padding.pad_id as usize != pad_id {
                    return Err(Error::tokenizer(format!(
                        "{source}: pads with {:?} (id {}), expected {PAD_TOKEN} (id {pad_id})",
                        padding.pad_token, padding.pad_id
                    )));
                }
                if let Some(multiple) = padding.pad_to_multiple_of
                    && multiple != 0
                    && sequence_length % multiple != 0
                {
                    return Err(Error::tokenizer(format!(
                        "{source}: pad_to_multiple_of {multiple} does not divide the \
                         sequence_length {sequence_length}"
                    )));
                }
            }
            None => {
                inner.with_padding(Some(PaddingParams {
                    strategy: PaddingStrategy::Fixed(sequence_length),
                    pad_id: pad_id as u32,
                    pad_token: PAD_TOKEN.to_string(),
                    ..PaddingParams::default()
                }));
            }
        }

        // Truncation at sequence_length, with room for what a post-processor adds.
        let added = inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        let truncation = inner
            .get_truncation()
            .cloned()
            .unwrap_or_else(|| TruncationParams {
                max_length: sequence_length,
                ..TruncationParams::default()
            });
        if added >= sequence_length || truncation.stride >= sequence_length - added {
            return Err(Error::tokenizer(format!(
                "{source}: truncation stride {} must be below the sequence_length \
                 {sequence_length} less the {added} tokens the post-processor adds",
                truncation.stride
            )));
        }
        inner
            .with_truncation(Some(truncation))
            .map_err(|e| Error::tokenizer(format!("{source}: {e}")))?;

        Ok(InstructionTokenizer {
            inner,
            sequence_length,
            vocab_size,
            pad_id,
            mask_id,
            next_id,
        })
    }

    /// The tokenizer as pretty `tokenizer.json` text, exactly what [`save`](Self::save) writes
    /// (and what the reference's `tokenizer.save(path)` writes).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| Error::tokenizer(format!("cannot serialize the tokenizer: {e}")))
    }

    /// Writes `tokenizer.json` atomically (a temporary file in the same directory, renamed over
    /// `path`), pretty JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.to_json()?;
        let name = path.file_name().ok_or_else(|| {
            Error::tokenizer(format!(
                "cannot save to {}: not a file path",
                path.display()
            ))
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(json.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("writing tokenizer {}", path.display()), e)
        })
    }

    /// Encodes one pre-tokenized text: ids and mask padded (or truncated) to `sequence_length`.
    pub fn encode(&self, text: &str) -> Result<Encoding> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::tokenizer(format!("cannot encode {:?}: {e}", preview(text))))?;
        self.convert(&encoding, text)
    }

    /// Encodes many texts (in parallel), each as [`encode`](Self::encode) would.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Encoding>> {
        // The `tokenizers` crate's encodings hold every token's string, offsets and the overflowing
        // remainder of a truncated text: several times our ids and mask. Encoding a whole corpus at
        // once held them all (23 GB for 719,086 functions); a chunk at a time, they are converted
        // and dropped before the next chunk, and each chunk is still encoded in parallel.
        const CHUNK: usize = 2048;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(CHUNK) {
            let encodings = self
                .inner
                .encode_batch(chunk.to_vec(), true)
                .map_err(|e| Error::tokenizer(format!("cannot encode a batch: {e}")))?;
            for (encoding, text) in encodings.iter().zip(chunk) {
                out.push(self.convert(encoding, text)?);
            }
        }
        Ok(out)
    }

    fn convert(&self, encoding: &tokenizers::Encoding, text: &str) -> Result<Encoding> {
        let ids = encoding.get_ids();
        let mask = encoding.get_attention_mask();
        if ids.len() != self.sequence_length || mask.len() != self.sequence_length {
            return Err(Error::tokenizer(format!(
                "encoding {:?} gave {} ids, expected sequence_length {}",
                preview(text),
                ids.len(),
                self.sequence_length
            )));
        }
        Ok(Encoding {
            // Every id is below vocab_size, checked at load to fit i32.
            tokens: ids.iter().map(|&i| i as i32).collect(),
            mask: mask.iter().map(|&m| m as i32).collect(),
            truncated: !encoding.get_overflowing().is_empty(),
        })
    }

    /// Decodes keeping special tokens, every `[PAD]` removed and the ends stripped, as the
    /// reference prints (see the module documentation). An id with no token is an error.
    pub fn decode(&self, ids: &[i32]) -> Result<String> {
        let ids = ids
            .iter()
            .enumerate()
            .map(|(position, &id)| {
                u32::try_from(id)
                    .ok()
                    .filter(|&id| self.inner.id_to_token(id).is_some())
                    .ok_or_else(|| {
                        Error::tokenizer(format!(
                            "cannot decode id {id} at position {position}: not in the vocabulary \
                             (vocab_size {})",
                            self.vocab_size
                        ))
                    })
            })
            .collect::<Result<Vec<u32>>>()?;
        let text = self
            .inner
            .decode(&ids, false)
            .map_err(|e| Error::tokenizer(format!("cannot decode: {e}")))?;
        Ok(text
            .replace(PAD_TOKEN, "")
            .trim_matches(is_python_whitespace)
            .to_string())
    }

    /// The token string of an id, if it has one.
    pub fn token(&self, id: i32) -> Option<String> {
        u32::try_from(id)
            .ok()
            .and_then(|id| self.inner.id_to_token(id))
    }

    /// The id of a token string, if the vocabulary holds it.
    pub fn token_id(&self, token: &str) -> Option<i32> {
        // Every id is below vocab_size, checked at load to fit i32.
        self.inner.token_to_id(token).map(|id| id as i32)
    }

    /// The number of ids, added tokens included: the largest id plus one (for a tokenizer the
    /// reference trained, ids are contiguous and this is `tokenizer.get_vocab_size()`).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The length of every encoding (the padding and truncation length).
    pub fn sequence_length(&self) -> usize {
        self.sequence_length
    }

    /// The id of `[PAD]`.
    pub fn pad_token_id(&self) -> i32 {
        self.pad_id as i32
    }

    /// The id of `[MASK]`.
    pub fn mask_token_id(&self) -> i32 {
        self.mask_id as i32
    }

    /// The id of `[NEXT]`.
    pub fn next_token_id(&self) -> i32 {
        self.next_id as i32
    }
}

/// Python's `str.isspace()`: Unicode `White_Space` plus the separators `\x1c`..`\x1f`.
fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Python's `str.split()` with no argument.
fn python_split(text: &str) -> impl Iterator<Item = &str> {
    text.split(is_python_whitespace).filter(|t| !t.is_empty())
}

/// Whether Python's `int(token)` accepts a whitespace-free token, for ASCII digits: an optional
/// sign, then digits with single underscores between them.
fn is_python_int(token: &str) -> bool {
    let digits = token.strip_prefix(['+', '-']).unwrap_or(token);
    let bytes = digits.as_bytes();
    !bytes.is_empty()
        && bytes[0].is_ascii_digit()
        && bytes[bytes.len() - 1].is_ascii_digit()
        && bytes.iter().all(|b| b.is_ascii_digit() || *b == b'_')
        && !digits.contains("__")
}

/// Renumbers the trainer's initial continuing-subword tokens in code-point order.
///
/// Those are the model tokens that are neither special, nor one character (the alphabet), nor
/// the result of a merge; the trainer numbers them in hash order. Their ids are reassigned among
/// themselves, sorted, so nothing else changes.
fn canonicalize(tokenizer: &mut serde_json::Value) -> Result<()> {
    let bad = |what: &str| Error::tokenizer(format!("trained tokenizer has no {what}"));
    let model = tokenizer.get_mut("model").ok_or_else(|| bad("model"))?;
    let merged: HashSet<String> = model
        .get("merges")
        .and_then(|m| m.as_array())
        .ok_or_else(|| bad("model.merges"))?
        .iter()
        .filter_map(|merge| {
            let (a, b) = match merge {
                serde_json::Value::Array(pair) => (pair.first()?.as_str()?, pair.get(1)?.as_str()?),
                serde_json::Value::String(pair) => pair.split_once(' ')?,
                _ => return None,
            };
            let b = b.strip_prefix(CONTINUING_SUBWORD_PREFIX).unwrap_or(b);
            Some(format!("{a}{b}"))
        })
        .collect();
    let vocab = model
        .get_mut("vocab")
        .and_then(|v| v.as_object_mut())
        .ok_or_else(|| bad("model.vocab"))?;
    let mut block: Vec<(String, u64)> = vocab
        .iter()
        .filter(|(token, _)| {
            !SPECIAL_TOKENS.contains(&token.as_str())
                && token.chars().count() != 1
                && !merged.contains(token.as_str())
        })
        .map(|(token, id)| (token.clone(), id.as_u64().unwrap_or(u64::MAX)))
        .collect();
    let mut ids: Vec<u64> = block.iter().map(|(_, id)| *id).collect();
    if ids.contains(&u64::MAX) {
        return Err(bad("integer ids in model.vocab"));
    }
    ids.sort_unstable();
    block.sort();
    for ((token, _), id) in block.into_iter().zip(ids) {
        vocab.insert(token, serde_json::Value::from(id));
    }
    Ok(())
}

/// The start of a text, for error messages.
fn preview(text: &str) -> String {
    const MAX: usize = 60;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_int() {
        for yes in [
            "0",
            "16",
            "0009",
            "-16",
            "+16",
            "1_000",
            "18446744073709551608",
        ] {
            assert!(is_python_int(yes), "{yes}");
        }
        for no in [
            "", "-", "+", "_1", "1_", "1__0", "--1", "+-1", "1-", "0x10", "rax", "1.5", "٣",
        ] {
            assert!(!is_python_int(no), "{no}");
        }
    }

    #[test]
    fn python_split_matches_str_split() {
        let tokens: Vec<&str> = python_split(" mov\x1ceax\u{3000}1 \t[NEXT]\n").collect();
        assert_eq!(tokens, ["mov", "eax", "1", "[NEXT]"]);
    }
}
