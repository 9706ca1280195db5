//! The command line's jobs as library functions: disassemble binaries into a corpus, pretrain,
//! fill masks, evaluate, the whole workflow end to end, and the benchmark against PyTorch.

#[doc(hidden)]
pub mod bench;
pub mod corpus;
pub mod dataset;
pub mod evaluate;
pub mod infer;
pub mod pretrain;
pub mod probes;
pub mod quickstart;
