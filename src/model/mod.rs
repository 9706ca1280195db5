//! The masked language model, built from the reference's modules.

pub mod config;
pub mod embedding;
pub mod encoder;
pub mod head;
pub mod inputs;
pub mod maskedlm;
pub mod params;
pub mod state_dict;

pub use config::{Config, InstructionTraceTransformerEncoderForMaskedLMConfiguration, Size};
pub use head::MaskedLMHead;
pub use maskedlm::{Evaluation, InstructionTraceTransformerEncoderForMaskedLM};
pub use params::{Init, ParamEntry, ParamLayout};

use crate::backend::DropoutKey;

/// Dropout during training: the probability and the key of this step's masks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutSchedule {
    pub p: f32,
    pub seed: u64,
    pub step: u64,
}

/// Dropout site ids: each dropout in the network draws from its own Philox stream.
pub const SITE_EMBEDDING: u32 = 0;

/// The feed-forward dropout of layer `layer`.
pub fn site_feed_forward(layer: usize) -> u32 {
    1 + layer as u32
}

impl DropoutSchedule {
    pub fn key(&self, site: u32) -> DropoutKey {
        DropoutKey {
            p: self.p,
            seed: self.seed,
            step: self.step,
            site,
        }
    }
}
