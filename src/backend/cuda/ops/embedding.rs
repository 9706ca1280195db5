//! Launch wrappers for `kernels/embedding.cu`: token + instruction + argument embedding, with the
//! positions derived from `[NEXT]` on the device.
//!
//! Both directions first run `embedding_positions` (one block per sequence: the prefix scans that
//! give every token its instruction and argument index), then the gather or its atomic adjoint,
//! one warp per token row. The token ids were checked on the host by the front, before upload.
//!
//! Mixed precision: the tables are f32 parameters either way. The forward's output has the
//! activation type (in bf16, the three rows are summed in f32 and rounded once); the backward takes
//! an f32 or bf16 `dout` and adds it into the f32 gradient buffer.

use super::{int, kernel_name, slot};
use crate::backend::Backend;
use crate::backend::Param;
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{DevicePtr, KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::ops::embedding::{EmbeddingDims, EmbeddingKernels};
use crate::tensor::{DType, Tensor};

/// Warps (token rows) per block of the gather and scatter kernels.
const WARPS_PER_BLOCK: usize = 8;
/// The largest block of the positions scan; longer sequences are scanned in chunks of this many.
const MAX_SCAN_THREADS: usize = 256;

/// One warp per row.
fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig::for_elements(rows * 32, (WARPS_PER_BLOCK * 32) as u32)
}

/// The instruction and argument index of every token: `[2, batch * seq]`, all instruction indices,
/// then all argument indices.
fn positions(backend: &GpuBackend, tokens: &Tensor, dims: EmbeddingDims) -> Result<Tensor> {
    let rows = dims.tokens;
    let indices = backend.alloc(&[2, rows], DType::I32)?;
    let instruction = backend.ptr(&indices)?;
    // Flat token indices are `int`s in the kernels.
    int(rows, "token rows")?;
    let mut args = KernelArgs::new()
        .ptr(backend.ptr(tokens)?)
        .i32(int(dims.tokens, "sequence length")?)
        .i32(dims.next_token_id)
        .ptr(instruction)
        .ptr(DevicePtr(instruction.0 + (rows * 4) as u64));
    // A multiple of 32 threads covering the sequence, up to MAX_SCAN_THREADS.
    let threads = dims.tokens.next_multiple_of(32).min(MAX_SCAN_THREADS) as u32;
    let blocks = u32::try_from(dims.tokens)
        .map_err(|_| Error::Config(format!("batch = {} exceeds the grid", dims.tokens)))?;
    backend.runtime().launch(
        "embedding_positions",
        &LaunchConfig::linear(blocks, threads, 0),
        &mut args,
    )?;
    Ok(indices)
}

impl EmbeddingKernels for GpuBackend {
    fn embedding_forward_into(
        &self,
        _tokens: &Tensor,
        _sequences: &crate::ops::sequences::Sequences,
        _dims: EmbeddingDims,
        _params: &Tensor,
        _tables: [Param; 3],
        _out: &mut Tensor,
    ) -> Result<()> {
        Err(crate::error::Error::Config("pending: packed CUDA kernels".into()))
    }

    fn embedding_backward_into(
        &self,
        _dout: &Tensor,
        _tokens: &Tensor,
        _sequences: &crate::ops::sequences::Sequences,
        _dims: EmbeddingDims,
        _grads: &mut Tensor,
        _tables: [Param; 3],
    ) -> Result<()> {
        Err(crate::error::Error::Config("pending: packed CUDA kernels".into()))
    }
}
