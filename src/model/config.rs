//! The model's constructor arguments, under the reference's key names, and the size presets.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The arguments of the reference's `InstructionTraceTransformerEncoderForMaskedLM(...)`, which
/// are also the keys of a checkpoint's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Encoder layers.
    pub depth: usize,
    /// The width of every hidden state.
    pub hidden_dimensions: usize,
    /// Token ids the model knows (the tokenizer's `vocab_size`).
    pub vocab_size: usize,
    /// The most positions an input may have.
    pub sequence_length: usize,
    /// Attention heads per layer (they divide `hidden_dimensions`).
    pub heads: usize,
    /// The width of each layer's feed-forward block.
    pub intermediate_dimensions: usize,
    /// The id of `[NEXT]`, which separates instructions (positions restart after it).
    pub next_token_id: i32,
    /// The id of `[MASK]`.
    pub mask_token_id: i32,
    /// The dropout probability in training.
    pub dropout: f32,
    /// The layer norms' epsilon.
    pub eps: f32,
    /// The peak learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// The share of training steps spent warming the learning rate up.
    #[serde(default = "default_warmup")]
    pub warmup: f64,
}

fn default_lr() -> f64 {
    1e-4
}

fn default_warmup() -> f64 {
    0.025
}

/// The size keys of a preset: everything that does not come from the tokenizer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Size {
    /// Encoder layers.
    pub depth: usize,
    /// The width of every hidden state.
    pub hidden_dimensions: usize,
    /// Attention heads per layer.
    pub heads: usize,
    /// The width of each layer's feed-forward block.
    pub intermediate_dimensions: usize,
    /// The most positions an input may have.
    pub sequence_length: usize,
}

/// The reference's name for its size table: `InstructionTraceTransformerEncoderForMaskedLMConfiguration::MEDIUM`.
pub type InstructionTraceTransformerEncoderForMaskedLMConfiguration = Size;

/// The reference's `regularization` block: the dropout probability.
pub const DROPOUT: f32 = 0.1;
/// The reference's `regularization` block: the layer norms' epsilon.
pub const EPS: f32 = 1e-12;

impl Size {
    /// `tiny`: 2 layers, 64 hidden, 4 heads, 256 intermediate, 128 positions. For tests and demos.
    pub const TINY: Size = Size {
        depth: 2,
        hidden_dimensions: 64,
        heads: 4,
        intermediate_dimensions: 256,
        sequence_length: 128,
    };
    /// `small`: 4 layers, 256 hidden, 4 heads (head size 64), 1024 intermediate, 512 positions.
    /// For CPU training and benchmarks.
    pub const SMALL: Size = Size {
        depth: 4,
        hidden_dimensions: 256,
        heads: 4,
        intermediate_dimensions: 1024,
        sequence_length: 512,
    };
    /// `medium`: the reference's only size. 12 layers, 768 hidden, 12 heads, 3072 intermediate,
    /// 512 positions.
    pub const MEDIUM: Size = Size {
        depth: 12,
        hidden_dimensions: 768,
        heads: 12,
        intermediate_dimensions: 3072,
        sequence_length: 512,
    };

    /// Every preset by its command-line name.
    pub const PRESETS: [(&'static str, Size); 3] = [
        ("tiny", Size::TINY),
        ("small", Size::SMALL),
        ("medium", Size::MEDIUM),
    ];

    /// The preset of that name (`tiny`, `small`, `medium`).
    pub fn preset(name: &str) -> Result<Size> {
        Size::PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown size preset {name:?}: expected one of tiny, small, medium"
                ))
            })
    }
}

impl Config {
    /// A configuration from a size and the ids the tokenizer defines, with the reference's
    /// regularization and optimiser defaults.
    pub fn new(size: Size, vocab_size: usize, next_token_id: i32, mask_token_id: i32) -> Self {
        Config {
            depth: size.depth,
            hidden_dimensions: size.hidden_dimensions,
            vocab_size,
            sequence_length: size.sequence_length,
            heads: size.heads,
            intermediate_dimensions: size.intermediate_dimensions,
            next_token_id,
            mask_token_id,
            dropout: DROPOUT,
            eps: EPS,
            lr: default_lr(),
            warmup: default_warmup(),
        }
    }

    /// [`Config::new`] with the vocabulary size, `[NEXT]` and `[MASK]` ids of `tokenizer`: the
    /// usual way to build a model for a trained tokenizer.
    pub fn for_tokenizer(
        size: Size,
        tokenizer: &crate::data::tokenizer::InstructionTokenizer,
    ) -> Self {
        Config::new(
            size,
            tokenizer.vocab_size(),
            tokenizer.next_token_id(),
            tokenizer.mask_token_id(),
        )
    }

    /// The width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_dimensions / self.heads
    }

    /// Checks everything the model needs to be buildable, naming the first bad value.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("depth", self.depth),
            ("hidden_dimensions", self.hidden_dimensions),
            ("vocab_size", self.vocab_size),
            ("sequence_length", self.sequence_length),
            ("heads", self.heads),
            ("intermediate_dimensions", self.intermediate_dimensions),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config(format!("{name} must be positive, got 0")));
        }
        if !self.hidden_dimensions.is_multiple_of(self.heads) {
            return Err(Error::Config(format!(
                "hidden_dimensions {} is not divisible by heads {}",
                self.hidden_dimensions, self.heads
            )));
        }
        for (name, id) in [
            ("next_token_id", self.next_token_id),
            ("mask_token_id", self.mask_token_id),
        ] {
            if usize::try_from(id).map_or(true, |id| id >= self.vocab_size) {
                return Err(Error::Config(format!(
                    "{name} {id} is not in 0..vocab_size {}",
                    self.vocab_size
                )));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "dropout {} is not in [0, 1)",
                self.dropout
            )));
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(Error::Config(format!("eps {} must be positive", self.eps)));
        }
        if !(0.0..=1.0).contains(&self.warmup) {
            return Err(Error::Config(format!(
                "warmup {} is not a fraction in [0, 1]",
                self.warmup
            )));
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            return Err(Error::Config(format!("lr {} must be positive", self.lr)));
        }
        Ok(())
    }
}
