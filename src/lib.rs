//! undertale's masked language model over disassembled binary code.
//!
//! A BERT-style encoder over instruction traces (`push rbp [NEXT] mov rbp rsp [NEXT] ...`), the
//! same model, collator, loss, optimiser and schedule as the PyTorch `undertale` package, number for
//! number. Ops run behind one device trait (a CPU backend, and CUDA kernels on a GPU); a manual
//! autograd tape composes them into training.
//!
//! The front door:
//!
//! - [`InstructionTraceTransformerEncoderForMaskedLM`], the model: built from a [`Config`]
//!   ([`new`](InstructionTraceTransformerEncoderForMaskedLM::new)) or loaded from a checkpoint
//!   directory ([`from_checkpoint`](InstructionTraceTransformerEncoderForMaskedLM::from_checkpoint));
//! - [`MaskFiller`], a model with its tokenizer: text to filled text, candidates, logits at the
//!   masks, or embeddings, one text or a batch;
//! - [`InstructionTokenizer`](data::tokenizer::InstructionTokenizer), the reference's tokenizer;
//! - [`MaskedLMCollator`], the reference's masking of a batch;
//! - [`Trainer`] with [`TrainerOptions`], the training
//!   loop and its resumable checkpoints ([`checkpoint`] describes the directory).
//!
//! The README's "Using the library" walks through loading, filling, training and saving, and
//! `examples/` has runnable programs.
//!
//! # Token ids
//!
//! A token id is an `i32` everywhere in the API: in tensors, in [`Example`](data::Example) rows,
//! in [`Config::mask_token_id`] and [`Config::next_token_id`], from the tokenizer
//! (`token_id`, `mask_token_id`, `encode`, ...) and into it (`token`, `decode`), and in
//! [`Candidate::id`](pipeline::infer::Candidate::id). Sizes, counts and positions (`vocab_size`,
//! `sequence_length`, a mask's position) are `usize`.
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

// Every public item of the documented API carries documentation.
#![warn(missing_docs)]

// The device trait, its CPU and CUDA implementations, the op front, the autograd tape and the
// dropout generator are the model's machinery: public for the tests, benches and tools that
// check them, but not part of the documented API.
#[doc(hidden)]
pub mod backend;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod error;
pub mod fill_mask;
pub mod model;
#[doc(hidden)]
pub mod ops;
#[doc(hidden)]
pub mod philox;
pub mod pipeline;
#[doc(hidden)]
pub mod tape;
pub mod tensor;
pub mod train;

/// The README's code blocks, compiled and run by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use data::MaskedLMCollator;
pub use device::Device;
pub use error::{Error, Result};
pub use fill_mask::{MaskFiller, MaskLogits};
#[doc(hidden)]
pub use model::MaskedLMHead;
pub use model::{
    Config, InstructionTraceTransformerEncoderForMaskedLM,
    InstructionTraceTransformerEncoderForMaskedLMConfiguration, Size,
};
pub use tensor::{DType, Storage, Tensor};
pub use train::{Trainer, TrainerOptions};
