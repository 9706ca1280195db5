//! The crate's error type: every failure a caller can cause is a variant that names the bad value.

use std::path::PathBuf;

/// Everything that can go wrong in this crate, with the value that was wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor or input has the wrong rank or shape.
    #[error("{what}: expected shape {expected}, got {got:?}")]
    Shape {
        /// What was checked.
        what: String,
        /// What was expected.
        expected: String,
        /// What was found.
        got: Vec<usize>,
    },

    /// A tensor has the wrong element type for the operation.
    #[error("{what}: expected dtype {expected:?}, got {got:?}")]
    DType {
        /// What was checked.
        what: String,
        /// What was expected.
        expected: crate::DType,
        /// What was found.
        got: crate::DType,
    },

    /// A tensor lives on another device than the backend that was asked to use it.
    #[error("{what}: tensor is on {got}, the backend runs on {expected}")]
    Device {
        /// What was checked.
        what: String,
        /// What was expected.
        expected: crate::Device,
        /// What was found.
        got: crate::Device,
    },

    /// A token id is negative or not below the vocabulary size.
    #[error(
        "token id {id} at row {row}, position {position} is out of range: vocab_size is {vocab_size}"
    )]
    TokenOutOfRange {
        /// The id.
        id: i64,
        /// The row in the batch.
        row: usize,
        /// The position in the row.
        position: usize,
        /// The vocabulary size.
        vocab_size: usize,
    },

    /// A label is neither -100 (ignored) nor a valid token id.
    #[error(
        "label {label} at row {row}, position {position} is out of range: expected -100 or an id below {vocab_size}"
    )]
    LabelOutOfRange {
        /// The label.
        label: i64,
        /// The row in the batch.
        row: usize,
        /// The position in the row.
        position: usize,
        /// The vocabulary size.
        vocab_size: usize,
    },

    /// An index (a row to gather, a position to read) that is negative or not below the length
    /// it indexes.
    #[error("{what} {index} is out of range: expected an index in [0, {len})")]
    IndexOutOfRange {
        /// What the index picks (e.g. "row index").
        what: String,
        /// The index as given.
        index: i64,
        /// The length it must be below.
        len: usize,
    },

    /// An error in one input of several (a line of standard input, a command-line argument),
    /// named so the caller knows which.
    #[error("{input}: {source}")]
    Input {
        /// The input's name (e.g. "line 3", "input 2").
        input: String,
        /// What went wrong with it.
        #[source]
        source: Box<Error>,
    },

    /// An attention-mask entry other than 0 or 1.
    #[error("mask value {value} at row {row}, position {position}: mask entries must be 0 or 1")]
    MaskValue {
        /// The value.
        value: i64,
        /// The row in the batch.
        row: usize,
        /// The position in the row.
        position: usize,
    },

    /// An input sequence longer than the model's position tables.
    #[error("sequence of length {length} is longer than the model's sequence_length {max}")]
    SequenceTooLong {
        /// The sequence's length.
        length: usize,
        /// The model's `sequence_length`.
        max: usize,
    },

    /// A label at a position the mask marks as padding: the model never predicts padding (the
    /// packed layout does not even compute it).
    #[error(
        "label {label} at row {row}, position {position} labels padding (its mask is 0): only real tokens can be labelled"
    )]
    LabelOnPadding {
        /// The label.
        label: i64,
        /// The row in the batch.
        row: usize,
        /// The position in the row.
        position: usize,
    },

    /// A row whose mask is all zero: attention has no key to attend to.
    #[error(
        "row {row} has no real token (its mask is all zero), so attention over it is undefined"
    )]
    EmptyRow {
        /// The row in the batch.
        row: usize,
    },

    /// A batch in which every label is -100: the mean loss divides by zero.
    #[error("the batch has no labelled position (every label is -100), so the loss is undefined")]
    NoLabels,

    /// A special token the model needs is missing from the vocabulary.
    #[error("special token {token} is missing from the vocabulary")]
    MissingSpecialToken {
        /// The token.
        token: String,
    },

    /// The loss became NaN or infinite.
    #[error("non-finite loss {loss} at step {step}")]
    NonFiniteLoss {
        /// The loss.
        loss: f32,
        /// The optimiser step.
        step: u64,
    },

    /// A model configuration that cannot be built.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A checkpoint that cannot be read or does not fit the model.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint's path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A dataset file that cannot be read or does not have the expected columns and values.
    #[error("dataset {path}: {reason}")]
    Dataset {
        /// The dataset's path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A tokenizer that cannot be trained, loaded or used.
    #[error("tokenizer: {reason}")]
    Tokenizer {
        /// What is wrong.
        reason: String,
    },

    /// A GPU kernel (or its emulated twin) that could not be found, launched or run to completion.
    #[error("kernel `{kernel}`: {reason}")]
    Kernel {
        /// The kernel's name.
        kernel: String,
        /// What is wrong.
        reason: String,
    },

    /// A binary that looked like an ELF file but could not be read.
    #[error("disassembly of {path}: {reason}")]
    Disassembly {
        /// The binary's path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A file or directory that could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// JSON that could not be read or written.
    #[error("{context}: {source}")]
    Json {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn shape(
        what: impl Into<String>,
        expected: impl Into<String>,
        got: &[usize],
    ) -> Self {
        Error::Shape {
            what: what.into(),
            expected: expected.into(),
            got: got.to_vec(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn dataset(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Dataset {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn tokenizer(reason: impl Into<String>) -> Self {
        Error::Tokenizer {
            reason: reason.into(),
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
