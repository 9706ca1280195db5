//! Launch wrappers for `kernels/embedding.cu`: token + instruction + argument embedding, with the
//! positions derived from `[NEXT]` on the device.
//!
//! Both directions first run `embedding_positions` (one block per sequence: the prefix scans that
//! give every token its instruction and argument index, and the token-id check), then the gather
//! or its atomic adjoint, one warp per token row.
//!
//! Mixed precision: the tables are f32 parameters either way. The forward's output has the
//! backend's activation type ([`GpuBackend::activation_dtype`]: in bf16, the three rows are summed
//! in f32 and rounded once); the backward takes an f32 or bf16 `dout` and adds it into the f32
//! gradient buffer.
//!
//! Token ids are checked on the device: the positions kernel reads every id anyway, and lowers a
//! flag to the flat index of the first bad one with `atomicMin`. The host then reads back that one
//! `int` (4 bytes instead of the whole `[batch, seq]` tensor, and no host loop over it) and, when it
//! is set, reads the offending id itself to build the CPU's [`Error::TokenOutOfRange`], with the same
//! row and position, before the gather or the gradient update runs. Reading the flag waits for the
//! positions kernel (a synchronisation point), the price of returning a typed error from the call.

use super::{activation, int, kernel_name, param_ptr};
use crate::backend::checks::{check_disjoint_slots, embedding_dims, rows_cols};
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{DevicePtr, KernelArgs, LaunchConfig};
use crate::backend::{Backend, Param};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Warps (token rows) per block of the gather and scatter kernels.
const WARPS_PER_BLOCK: usize = 8;
/// The largest block of the positions scan; longer sequences are scanned in chunks of this many.
const MAX_SCAN_THREADS: usize = 256;

/// One warp per row.
fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig::for_elements(rows * 32, (WARPS_PER_BLOCK * 32) as u32)
}

/// The instruction and argument index of every token (`[2, batch * seq]`: all instruction indices,
/// then all argument indices), or [`Error::TokenOutOfRange`] for the first id outside
/// `[0, vocab)` in row-major order. `batch * seq` must be non-zero.
fn positions(
    backend: &GpuBackend,
    tokens: &Tensor,
    (batch, seq): (usize, usize),
    next_token_id: i32,
    vocab: usize,
) -> Result<Tensor> {
    let rows = batch * seq;
    let tokens_ptr = backend.ptr(tokens, DType::I32, "embedding tokens")?;
    let indices = backend.empty(&[2, rows], DType::I32)?;
    let instruction = backend.ptr(&indices, DType::I32, "embedding positions")?;
    let argument = DevicePtr(instruction.0 + (rows * 4) as u64);
    let first_bad = backend.upload_i32(&[1], &[i32::MAX])?;
    // Flat token indices are `int`s in the kernels.
    int(rows, "token rows")?;
    let mut args = KernelArgs::new()
        .ptr(tokens_ptr)
        .i32(int(seq, "sequence length")?)
        .i32(next_token_id)
        .i32(int(vocab, "vocabulary size")?)
        .ptr(instruction)
        .ptr(argument)
        .ptr(backend.ptr(&first_bad, DType::I32, "embedding token check")?);
    // A multiple of 32 threads covering the sequence, up to MAX_SCAN_THREADS.
    let threads = seq.next_multiple_of(32).min(MAX_SCAN_THREADS) as u32;
    let blocks = u32::try_from(batch)
        .map_err(|_| Error::Config(format!("batch = {batch} exceeds the grid")))?;
    backend.runtime().launch(
        "embedding_positions",
        &LaunchConfig::linear(blocks, threads, 0),
        &mut args,
    )?;

    let bad = backend.download_i32(&first_bad)?[0];
    if bad != i32::MAX {
        let index = bad as usize;
        let mut id = [0u8; 4];
        backend
            .runtime()
            .download(DevicePtr(tokens_ptr.0 + (index * 4) as u64), &mut id)?;
        return Err(Error::TokenOutOfRange {
            id: i64::from(i32::from_ne_bytes(id)),
            row: index / seq,
            position: index % seq,
            vocab_size: vocab,
        });
    }
    Ok(indices)
}

pub fn forward(
    backend: &GpuBackend,
    tokens: &Tensor,
    next_token_id: i32,
    params: &Tensor,
    tables: [Param; 3],
    hidden: usize,
) -> Result<Tensor> {
    let [token, instruction, argument] = tables;
    // The checks every backend makes (shape, sequence length), then the device's.
    let (batch, seq) = embedding_dims(tokens, instruction, argument, hidden)?;
    let tokens_ptr = backend.ptr(tokens, DType::I32, "embedding tokens")?;
    let params_ptr = backend.ptr(params, DType::F32, "parameters")?;
    let vocab = token.len / hidden.max(1);
    let max_positions = instruction.len / hidden.max(1);
    let rows = batch * seq;
    let indices = if rows > 0 {
        Some(positions(
            backend,
            tokens,
            (batch, seq),
            next_token_id,
            vocab,
        )?)
    } else {
        None
    };
    let token_table = param_ptr(
        params_ptr,
        params,
        token,
        vocab * hidden,
        "embedding token table",
    )?;
    let instruction_table = param_ptr(
        params_ptr,
        params,
        instruction,
        max_positions * hidden,
        "embedding instruction table",
    )?;
    let argument_table = param_ptr(
        params_ptr,
        params,
        argument,
        max_positions * hidden,
        "embedding argument table",
    )?;

    let dtype = backend.activation_dtype();
    let out = backend.empty(&[rows, hidden], dtype)?;
    let Some(indices) = indices else {
        return Ok(out);
    };
    if hidden == 0 {
        return Ok(out);
    }
    let positions_ptr = backend.ptr(&indices, DType::I32, "embedding positions")?;
    let mut args = KernelArgs::new()
        .ptr(tokens_ptr)
        .ptr(positions_ptr)
        .ptr(DevicePtr(positions_ptr.0 + (rows * 4) as u64))
        .ptr(token_table)
        .ptr(instruction_table)
        .ptr(argument_table)
        .ptr(backend.ptr(&out, dtype, "embedding output")?)
        .i32(int(rows, "token rows")?)
        .i32(int(hidden, "hidden size")?);
    backend.runtime().launch(
        &kernel_name("embedding_forward", dtype),
        &rows_config(rows),
        &mut args,
    )?;
    Ok(out)
}

/// Adds `dout` (f32 or bf16) into the three tables' f32 gradients. Unlike the CPU backend, which trusts the ids its
/// forward checked (and would panic on a bad one), this checks them again, and the sequence length,
/// because a bad index here would write outside the gradient buffer; the gradients are untouched
/// when it returns an error.
pub fn backward(
    backend: &GpuBackend,
    dout: &Tensor,
    tokens: &Tensor,
    next_token_id: i32,
    grads: &mut Tensor,
    tables: [Param; 3],
) -> Result<()> {
    let [token, instruction, argument] = tables;
    let (rows, hidden) = rows_cols(dout, "embedding dout")?;
    let (batch, seq) = embedding_dims(tokens, instruction, argument, hidden)?;
    if rows != tokens.numel() {
        return Err(Error::shape(
            "embedding dout",
            format!("[{}, {hidden}]", tokens.numel()),
            dout.shape(),
        ));
    }
    let tokens_ptr = backend.ptr(tokens, DType::I32, "embedding tokens")?;
    let (dout_ptr, dtype) = activation(backend, dout, "embedding dout")?;
    backend.ptr(grads, DType::F32, "gradients")?;
    check_disjoint_slots(&tables, grads.numel(), "embedding")?;
    let vocab = token.len / hidden.max(1);
    if rows == 0 || hidden == 0 {
        return Ok(());
    }
    let indices = positions(backend, tokens, (batch, seq), next_token_id, vocab)?;
    let positions_ptr = backend.ptr(&indices, DType::I32, "embedding positions")?;
    let grads_ptr = backend.ptr_mut(grads, DType::F32, "gradients")?;
    let slot = |p: Param| DevicePtr(grads_ptr.0 + (p.offset * 4) as u64);
    let mut args = KernelArgs::new()
        .ptr(dout_ptr)
        .ptr(tokens_ptr)
        .ptr(positions_ptr)
        .ptr(DevicePtr(positions_ptr.0 + (rows * 4) as u64))
        .ptr(slot(token))
        .ptr(slot(instruction))
        .ptr(slot(argument))
        .i32(int(rows, "token rows")?)
        .i32(int(hidden, "hidden size")?);
    backend.runtime().launch(
        &kernel_name("embedding_backward", dtype),
        &rows_config(rows),
        &mut args,
    )
}
