//! undertale's masked language model over disassembled binary code.
//!
//! A BERT-style encoder over instruction traces (`push rbp [NEXT] mov rbp rsp [NEXT] ...`), the
//! same model, collator, loss, optimiser and schedule as the PyTorch `undertale` package, number for
//! number. Ops run behind one [`Backend`](backend::Backend) trait; a manual autograd [`tape`]
//! composes them into training.

pub mod backend;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod error;
pub mod model;
pub mod philox;
pub mod tape;
pub mod tensor;
pub mod train;

pub use device::Device;
pub use error::{Error, Result};
pub use tensor::{DType, Storage, Tensor};
