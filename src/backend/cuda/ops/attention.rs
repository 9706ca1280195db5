//! Launch wrappers for `kernels/attention.cu`: fused multi-head attention with a key-padding mask,
//! forward and backward (FlashAttention-2; on CUDA cores, and on tensor cores for bf16), in f32 or
//! bf16.
//!
//! The element type follows qkv: bf16 qkv gives a bf16 output and needs bf16 dout and out in the
//! backward, which returns a bf16 dqkv; lse (and the backward's delta scratch) are f32 either way.
//! The CUDA-core kernels compute in f32; the tensor-core ones multiply bf16 operands (P and dS
//! rounded to bf16) and accumulate in f32.
//!
//! Each kernel exists once per head-dim capacity (16, 32, 64, 128); a call takes the smallest that
//! holds its head_dim. Blocks own 64 rows of one (sequence, head) and the grid is one-dimensional,
//! `ceil(seq / 64) * heads * batch` blocks with the row tile fastest. The backward is two kernels:
//! dQ (which also saves `D_i = dO_i . out_i` in a scratch buffer) and then dK/dV, which reads it.
//!
//! A bf16 forward runs on tensor cores (`attention_forward_bf16_mma_d*`: 4 warps of 16 query rows
//! per block, the same grid); a backend made with
//! [`GpuBackend::with_attention_kernels`] can run the CUDA-core bf16 kernel instead, the reference
//! the tests hold the tensor-core one to. The bf16 backward runs on tensor cores too
//! (`attention_backward_dq_bf16_mma_d*` and `attention_backward_dkv_bf16_mma_d*`: the same split,
//! grid and 128-thread blocks), or on the CUDA-core kernels when asked.

use super::int;
use crate::backend::AttentionOut;
use crate::backend::Backend;
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::ops::attention::AttentionKernels;
use crate::ops::checks::AttentionDims;
use crate::tensor::{DType, Tensor};

/// Rows of one (sequence, head) per block: `Tiles<D>::ROWS` in the kernel file.
const ROWS: usize = 64;

/// The compiled head-dim capacities and each one's threads per block (`Tiles<D>::THREADS`: 64 rows
/// times the `D / 16` lanes that share a row).
const VARIANTS: [(usize, u32); 4] = [(16, 64), (32, 128), (64, 256), (128, 512)];

/// Threads per block of the bf16 tensor-core kernels, forward and backward, for every capacity
/// (`MmaTiles<D>::THREADS`: 4 warps of 16 rows).
const MMA_THREADS: u32 = 128;

/// Which kernels run a bf16 forward. An f32 forward always runs on CUDA cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardKernel {
    /// `attention_forward_bf16_mma_d*` (mma.sync m16n8k16): the default.
    TensorCores,
    /// `attention_forward_bf16_d*`, the CUDA-core kernel templated over the element type.
    CudaCores,
}

/// Which kernels run a bf16 backward. An f32 backward always runs on CUDA cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackwardKernel {
    /// `attention_backward_{dq,dkv}_bf16_mma_d*` (mma.sync m16n8k16): the default.
    TensorCores,
    /// `attention_backward_{dq,dkv}_bf16_d*`, the CUDA-core kernels templated over the element type.
    CudaCores,
}

/// The kernel variant for these sizes: its name suffix (`d64`), threads per block and grid size.
struct Variant {
    suffix: String,
    blocks: u32,
    threads: u32,
}

impl Variant {
    fn config(&self) -> LaunchConfig {
        LaunchConfig::linear(self.blocks, self.threads, 0)
    }
}

/// The element type's part of a kernel name.
fn type_name(dtype: DType) -> &'static str {
    if dtype == DType::BF16 { "bf16" } else { "f32" }
}

fn variant(dims: &AttentionDims) -> Result<Variant> {
    let &(capacity, threads) = VARIANTS
        .iter()
        .find(|(capacity, _)| dims.head_dim <= *capacity)
        .ok_or_else(|| {
            Error::Config(format!(
                "attention head_dim {} exceeds the GPU kernels' maximum of {}",
                dims.head_dim,
                VARIANTS[VARIANTS.len() - 1].0
            ))
        })?;
    let blocks = int(
        dims.max_len.div_ceil(ROWS) * dims.heads * dims.sequences,
        "attention blocks",
    )?;
    Ok(Variant {
        suffix: format!("d{capacity}"),
        blocks: blocks as u32,
        threads,
    })
}

/// The sizes every kernel takes after its pointers: seq, heads, head_dim and the score scale
/// `1 / sqrt(head_dim)`, computed exactly as the CPU backend computes it.
fn size_args(args: KernelArgs, dims: &AttentionDims) -> Result<KernelArgs> {
    Ok(args
        .i32(int(dims.max_len, "sequence length")?)
        .i32(int(dims.heads, "attention heads")?)
        .i32(int(dims.head_dim, "head_dim")?)
        .f32(1.0 / (dims.head_dim as f32).sqrt()))
}

impl AttentionKernels for GpuBackend {
    fn attention_forward_into(
        &self,
        _qkv: &Tensor,
        _sequences: &crate::ops::sequences::Sequences,
        _dims: AttentionDims,
        _out: &mut AttentionOut,
    ) -> Result<()> {
        Err(crate::error::Error::Config("pending: packed CUDA kernels".into()))
    }

    fn attention_backward_into(
        &self,
        _dout: &Tensor,
        _qkv: &Tensor,
        _sequences: &crate::ops::sequences::Sequences,
        _out: &Tensor,
        _lse: &Tensor,
        _dims: AttentionDims,
        _dqkv: &mut Tensor,
    ) -> Result<()> {
        Err(crate::error::Error::Config("pending: packed CUDA kernels".into()))
    }
}
