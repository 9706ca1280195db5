//! Launch wrappers for `kernels/embedding.cu`: token + instruction + argument embedding, with the
//! positions derived from `[NEXT]` on the device.
//!
//! Both directions first run `embedding_positions` (one block per sequence of the offsets, padded or
//! packed: the prefix scans that give every token its instruction and argument index), then the
//! gather or its atomic adjoint, one warp per token row. The token ids were checked on the host by the front, before upload.
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
use crate::ops::sequences::Sequences;
use crate::tensor::{DType, Tensor};

/// Warps (token rows) per block of the gather and scatter kernels.
const WARPS_PER_BLOCK: usize = 8;
/// The largest block of the positions scan; longer sequences are scanned in chunks of this many.
const MAX_SCAN_THREADS: usize = 256;

/// One warp per row.
fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig::for_elements(rows * 32, (WARPS_PER_BLOCK * 32) as u32)
}

/// The instruction and argument index of every token: `[2, tokens]`, all instruction indices,
/// then all argument indices.
fn positions(
    backend: &GpuBackend,
    tokens: &Tensor,
    sequences: &Sequences,
    dims: EmbeddingDims,
) -> Result<Tensor> {
    let rows = dims.tokens;
    let indices = backend.alloc(&[2, rows], DType::I32)?;
    let instruction = backend.ptr(&indices)?;
    // Flat token indices are `int`s in the kernels.
    int(rows, "token rows")?;
    let mut args = KernelArgs::new()
        .ptr(backend.ptr(tokens)?)
        .ptr(backend.ptr(sequences.device_offsets())?)
        .i32(dims.next_token_id)
        .ptr(instruction)
        .ptr(DevicePtr(instruction.0 + (rows * 4) as u64));
    // A multiple of 32 threads covering the longest sequence, up to MAX_SCAN_THREADS.
    let threads = sequences
        .max_len()
        .max(1)
        .next_multiple_of(32)
        .min(MAX_SCAN_THREADS) as u32;
    let blocks = u32::try_from(sequences.count())
        .map_err(|_| Error::Config(format!("{} sequences exceed the grid", sequences.count())))?;
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
        tokens: &Tensor,
        sequences: &Sequences,
        dims: EmbeddingDims,
        params: &Tensor,
        tables: [Param; 3],
        out: &mut Tensor,
    ) -> Result<()> {
        let rows = dims.tokens;
        let indices = positions(self, tokens, sequences, dims)?;
        let positions_ptr = self.ptr(&indices)?;
        let p = self.ptr(params)?;
        let [token, instruction, argument] = tables.map(|t| slot(p, t, DType::F32));
        let dtype = out.dtype();
        let mut args = KernelArgs::new()
            .ptr(self.ptr(tokens)?)
            .ptr(positions_ptr)
            .ptr(DevicePtr(positions_ptr.0 + (rows * 4) as u64))
            .ptr(token)
            .ptr(instruction)
            .ptr(argument)
            .ptr(self.ptr_mut(out)?)
            .i32(int(rows, "token rows")?)
            .i32(int(dims.hidden, "hidden size")?);
        self.runtime().launch(
            &kernel_name("embedding_forward", dtype),
            &rows_config(rows),
            &mut args,
        )
    }

    fn embedding_backward_into(
        &self,
        dout: &Tensor,
        tokens: &Tensor,
        sequences: &Sequences,
        dims: EmbeddingDims,
        grads: &mut Tensor,
        tables: [Param; 3],
    ) -> Result<()> {
        let rows = dims.tokens;
        let indices = positions(self, tokens, sequences, dims)?;
        let positions_ptr = self.ptr(&indices)?;
        let g = self.ptr_mut(grads)?;
        let [token, instruction, argument] = tables.map(|t| slot(g, t, DType::F32));
        let mut args = KernelArgs::new()
            .ptr(self.ptr(dout)?)
            .ptr(self.ptr(tokens)?)
            .ptr(positions_ptr)
            .ptr(DevicePtr(positions_ptr.0 + (rows * 4) as u64))
            .ptr(token)
            .ptr(instruction)
            .ptr(argument)
            .i32(int(rows, "token rows")?)
            .i32(int(dims.hidden, "hidden size")?);
        self.runtime().launch(
            &kernel_name("embedding_backward", dout.dtype()),
            &rows_config(rows),
            &mut args,
        )
    }
}
