//! The masked language model, built from the reference's modules.

pub mod config;
// The layers, the input checks and the parameter layout are the model's machinery (public for the
// tests and benches), not part of the documented API.
#[doc(hidden)]
pub mod embedding;
#[doc(hidden)]
pub mod encoder;
#[doc(hidden)]
pub mod head;
#[doc(hidden)]
pub mod inputs;
pub mod maskedlm;
#[doc(hidden)]
pub mod params;
pub mod state_dict;

pub use config::{Config, InstructionTraceTransformerEncoderForMaskedLMConfiguration, Size};
#[doc(hidden)]
pub use head::MaskedLMHead;
pub use inputs::Packing;
pub use maskedlm::{Evaluation, InstructionTraceTransformerEncoderForMaskedLM};
#[doc(hidden)]
pub use params::{Init, ParamEntry, ParamLayout};

use crate::backend::DropoutKey;

/// Dropout during training: the probability and the key of this step's masks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutSchedule {
    /// The probability of dropping an element.
    pub p: f32,
    /// The run's dropout seed.
    pub seed: u64,
    /// The optimiser step the masks are drawn for.
    pub step: u64,
}

/// Dropout site ids: each dropout in the network draws from its own Philox stream.
#[doc(hidden)]
pub const SITE_EMBEDDING: u32 = 0;

/// The feed-forward dropout of layer `layer`.
#[doc(hidden)]
pub fn site_feed_forward(layer: usize) -> u32 {
    1 + layer as u32
}

impl DropoutSchedule {
    /// The key of the masks at one dropout site.
    #[doc(hidden)]
    pub fn key(&self, site: u32) -> DropoutKey {
        DropoutKey {
            p: self.p,
            seed: self.seed,
            step: self.step,
            site,
        }
    }
}
