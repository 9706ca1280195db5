//! undertale's masked language model over disassembled binary code.
//!
//! A BERT-style encoder over instruction traces (`push rbp [NEXT] mov rbp rsp [NEXT] ...`), the
//! same model, collator, loss, optimiser and schedule as the PyTorch `undertale` package, number for
//! number. Ops run behind one [`Backend`](backend::Backend) trait; a manual autograd [`tape`]
//! composes them into training.
//!
//! ```
//! use undertale_maskedlm::{Config, Device, InstructionTraceTransformerEncoderForMaskedLM, Size, Tensor};
//!
//! // vocab_size, next_token_id and mask_token_id come from the tokenizer.
//! let config = Config::new(Size::TINY, 40, 5, 4);
//! let model = InstructionTraceTransformerEncoderForMaskedLM::new(config, Device::Cpu, 0)?;
//! // `foo bar [NEXT] baz [MASK] qux` as ids; shorter than sequence_length, so no padding needed.
//! let tokens = Tensor::from_i32(&[6], vec![10, 11, 5, 12, 4, 13])?;
//! let logits = model.forward(&tokens, None)?;
//! assert_eq!(logits.shape(), &[1, 6, 40]);
//! let filled = model.infer(&tokens, None)?; // the [MASK] replaced by its argmax prediction
//! assert_eq!(filled.shape(), &[6]);
//! # Ok::<(), undertale_maskedlm::Error>(())
//! ```

pub mod backend;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod error;
pub mod fill_mask;
pub mod model;
pub mod ops;
pub mod philox;
pub mod pipeline;
pub mod tape;
pub mod tensor;
pub mod train;

pub use data::MaskedLMCollator;
pub use device::Device;
pub use error::{Error, Result};
pub use fill_mask::{MaskFiller, MaskLogits};
pub use model::{
    Config, InstructionTraceTransformerEncoderForMaskedLM,
    InstructionTraceTransformerEncoderForMaskedLMConfiguration, MaskedLMHead, Size,
};
pub use tensor::{DType, Storage, Tensor};
