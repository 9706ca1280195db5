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
//! holds its head_dim. Blocks own 64 rows of one (sequence, head). The grid is one-dimensional over a
//! schedule of (sequence, tile) pairs ([`schedule`]): every 64-row tile of every sequence once, no
//! tile past a sequence's end, the longest sequences first; `entries * heads` blocks, heads fastest.
//! The schedule is built from the host offsets the first time a [`Sequences`] is attended over and
//! cached with it, so every layer, forward and backward, launches from the same device copy. The
//! backward is two kernels: dQ (which also saves `D_i = dO_i . out_i` in a `[heads, tokens]` scratch
//! buffer) and then dK/dV, which reads it.
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
use crate::backend::cuda::launch::{DevicePtr, KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::ops::attention::AttentionKernels;
use crate::ops::checks::AttentionDims;
use crate::ops::sequences::Sequences;
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

/// The kernel variant for these sizes: its name suffix (`d64`) and threads per block.
struct Variant {
    suffix: String,
    threads: u32,
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
    Ok(Variant {
        suffix: format!("d{capacity}"),
        threads,
    })
}

/// The kernels' work list for sequences with these offsets (`cu_seqlens`): one `(sequence, tile)`
/// pair per 64-row tile of every sequence, flattened. Every tile of a sequence costs about its
/// length (a query tile visits all its keys, a key tile all its queries), so listing the longest
/// sequences first is longest-processing-time-first: the GPU starts the longest blocks at once and
/// fills in behind them with short ones, and a batch of one long and many short sequences does not
/// end on the long one's last blocks. Ties keep the sequences' order; an empty sequence has no tile.
pub fn schedule(offsets: &[i32]) -> Vec<i32> {
    let mut sequences: Vec<(usize, i32)> = offsets
        .windows(2)
        .enumerate()
        .map(|(s, w)| (s, w[1] - w[0]))
        .collect();
    sequences.sort_by_key(|&(s, len)| (std::cmp::Reverse(len), s));
    let mut entries = Vec::new();
    for (s, len) in sequences {
        for tile in 0..(len as usize).div_ceil(ROWS) {
            entries.extend([s as i32, tile as i32]);
        }
    }
    entries
}

/// The schedule of `sequences` on this backend, built and uploaded on first use, and the grid it
/// gives: one block per (entry, head).
fn grid<'s>(
    backend: &GpuBackend,
    sequences: &'s Sequences,
    dims: &AttentionDims,
) -> Result<(&'s Tensor, u32)> {
    let schedule = sequences.schedule(|offsets| {
        let entries = schedule(offsets);
        backend.upload_i32(&[entries.len() / 2, 2], &entries)
    })?;
    let blocks = int(schedule.shape()[0] * dims.heads, "attention blocks")?;
    Ok((schedule, blocks as u32))
}

/// The sequence arguments every kernel takes after its leading tensors: offsets, schedule and the
/// key mask (null when every key is real).
fn sequence_args(
    backend: &GpuBackend,
    args: KernelArgs,
    sequences: &Sequences,
    schedule: &Tensor,
) -> Result<KernelArgs> {
    let mask = match sequences.key_mask() {
        Some(mask) => backend.ptr(mask)?,
        None => DevicePtr::NULL,
    };
    Ok(args
        .ptr(backend.ptr(sequences.device_offsets())?)
        .ptr(backend.ptr(schedule)?)
        .ptr(mask))
}

/// The sizes every kernel takes after its pointers: tokens, heads, head_dim and the score scale
/// `1 / sqrt(head_dim)`, computed exactly as the CPU backend computes it.
fn size_args(args: KernelArgs, dims: &AttentionDims) -> Result<KernelArgs> {
    Ok(args
        .i32(int(dims.tokens, "attention tokens")?)
        .i32(int(dims.heads, "attention heads")?)
        .i32(int(dims.head_dim, "head_dim")?)
        .f32(1.0 / (dims.head_dim as f32).sqrt()))
}

impl AttentionKernels for GpuBackend {
    fn attention_forward_into(
        &self,
        qkv: &Tensor,
        sequences: &Sequences,
        dims: AttentionDims,
        out: &mut AttentionOut,
    ) -> Result<()> {
        let dtype = qkv.dtype();
        let mut variant = variant(&dims)?;
        let mut name = type_name(dtype).to_string();
        if dtype == DType::BF16 && self.attention.0 == ForwardKernel::TensorCores {
            name.push_str("_mma");
            variant.threads = MMA_THREADS;
        }
        let (schedule, blocks) = grid(self, sequences, &dims)?;
        let args = sequence_args(
            self,
            KernelArgs::new().ptr(self.ptr(qkv)?),
            sequences,
            schedule,
        )?;
        let mut args = size_args(
            args.ptr(self.ptr_mut(&mut out.out)?)
                .ptr(self.ptr_mut(&mut out.lse)?),
            &dims,
        )?;
        self.runtime().launch(
            &format!("attention_forward_{name}_{}", variant.suffix),
            &LaunchConfig::linear(blocks, variant.threads, 0),
            &mut args,
        )
    }

    fn attention_backward_into(
        &self,
        dout: &Tensor,
        qkv: &Tensor,
        sequences: &Sequences,
        out: &Tensor,
        lse: &Tensor,
        dims: AttentionDims,
        dqkv: &mut Tensor,
    ) -> Result<()> {
        let dtype = qkv.dtype();
        let mut name = type_name(dtype).to_string();
        let mut variant = variant(&dims)?;
        if dtype == DType::BF16 && self.attention.1 == BackwardKernel::TensorCores {
            name.push_str("_mma");
            variant.threads = MMA_THREADS;
        }
        let (schedule, blocks) = grid(self, sequences, &dims)?;
        let config = LaunchConfig::linear(blocks, variant.threads, 0);
        let (dout_ptr, qkv_ptr, lse_ptr) = (self.ptr(dout)?, self.ptr(qkv)?, self.ptr(lse)?);
        // D_i = dO_i . out_i for every (head, row): written by the dQ kernel, read by dK/dV.
        let delta = self.alloc(&[dims.heads, dims.tokens], DType::F32)?;
        let delta_ptr = self.ptr(&delta)?;
        let dqkv_ptr = self.ptr_mut(dqkv)?;

        let dq_args = sequence_args(
            self,
            KernelArgs::new().ptr(dout_ptr).ptr(qkv_ptr),
            sequences,
            schedule,
        )?;
        let mut dq_args = size_args(
            dq_args
                .ptr(self.ptr(out)?)
                .ptr(lse_ptr)
                .ptr(delta_ptr)
                .ptr(dqkv_ptr),
            &dims,
        )?;
        self.runtime().launch(
            &format!("attention_backward_dq_{name}_{}", variant.suffix),
            &config,
            &mut dq_args,
        )?;
        let dkv_args = sequence_args(
            self,
            KernelArgs::new().ptr(dout_ptr).ptr(qkv_ptr),
            sequences,
            schedule,
        )?;
        let mut dkv_args = size_args(dkv_args.ptr(lse_ptr).ptr(delta_ptr).ptr(dqkv_ptr), &dims)?;
        self.runtime().launch(
            &format!("attention_backward_dkv_{name}_{}", variant.suffix),
            &config,
            &mut dkv_args,
        )
    }
}
