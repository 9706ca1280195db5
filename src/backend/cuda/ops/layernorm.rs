//! Launch wrappers for `kernels/layernorm.cu`: LayerNorm over the last axis, one warp per row, and
//! its parameter gradients as deterministic column sums.
//!
//! f32 or bf16 activations: x (and dy) set the type of y (and dx); the statistics, parameters and
//! parameter gradients are f32 either way.

use super::linear::RowChunks;
use super::{activation_dtype, int, kernel_name, param_ptr};
use crate::backend::checks::{
    check_disjoint_slots, check_param, check_same_shape, layernorm_backward_dims, rows_cols,
};
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{KernelArgs, LaunchConfig};
use crate::backend::{LayerNormOut, Param};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Warps (rows) per block of the one-warp-per-row kernels.
const ROWS_PER_BLOCK: usize = 8;
/// Threads per block of the one-thread-per-column kernel.
const THREADS: u32 = 256;

/// One warp per row, 8 rows per block.
fn per_row(rows: usize) -> Result<LaunchConfig> {
    let blocks = u32::try_from(rows.div_ceil(ROWS_PER_BLOCK))
        .map_err(|_| Error::Config(format!("layernorm: {rows} rows exceed one grid")))?;
    Ok(LaunchConfig::linear(blocks, 32 * ROWS_PER_BLOCK as u32, 0))
}

pub fn forward(
    backend: &GpuBackend,
    x: &Tensor,
    params: &Tensor,
    weight: Param,
    bias: Param,
    eps: f32,
) -> Result<LayerNormOut> {
    Ok(forward_after_add(backend, x, None, params, weight, bias, eps)?.1)
}

/// `s = a + b` and `LayerNorm(s)` in one kernel (`add_layernorm_forward`): the residual add fused
/// into the LayerNorm that follows it. Returns `s` and LayerNorm's output.
pub fn add_forward(
    backend: &GpuBackend,
    a: &Tensor,
    b: &Tensor,
    params: &Tensor,
    weight: Param,
    bias: Param,
    eps: f32,
) -> Result<(Tensor, LayerNormOut)> {
    check_same_shape(a, b, "add")?;
    let (sum, out) = forward_after_add(backend, a, Some(b), params, weight, bias, eps)?;
    Ok((sum.expect("a sum is made when there is a residual"), out))
}

/// LayerNorm of `x`, or of `x + residual` (then also returned).
fn forward_after_add(
    backend: &GpuBackend,
    x: &Tensor,
    residual: Option<&Tensor>,
    params: &Tensor,
    weight: Param,
    bias: Param,
    eps: f32,
) -> Result<(Option<Tensor>, LayerNormOut)> {
    let (rows, c) = rows_cols(x, "layernorm input")?;
    let p = backend.ptr(params, DType::F32, "parameters")?;
    let w = param_ptr(p, params, weight, c, "layernorm weight")?;
    let b = param_ptr(p, params, bias, c, "layernorm bias")?;
    let dtype = activation_dtype(x, "layernorm input")?;
    let x_ptr = backend.ptr(x, dtype, "layernorm input")?;
    let residual_ptr = residual.map(|r| backend.ptr(r, dtype, "add")).transpose()?;
    let sum = residual
        .map(|_| backend.empty(x.shape(), dtype))
        .transpose()?;
    let out = LayerNormOut {
        y: backend.empty(x.shape(), dtype)?,
        mean: backend.empty(&[rows], DType::F32)?,
        rstd: backend.empty(&[rows], DType::F32)?,
    };
    if rows == 0 {
        return Ok((sum, out));
    }
    let mut args = KernelArgs::new().ptr(x_ptr);
    if let (Some(r), Some(s)) = (residual_ptr, &sum) {
        args = args.ptr(r).ptr(backend.ptr(s, dtype, "add output")?);
    }
    let mut args = args
        .ptr(w)
        .ptr(b)
        .ptr(backend.ptr(&out.y, dtype, "layernorm output")?)
        .ptr(backend.ptr(&out.mean, DType::F32, "layernorm mean")?)
        .ptr(backend.ptr(&out.rstd, DType::F32, "layernorm rstd")?)
        .i32(int(rows, "layernorm rows")?)
        .i32(int(c, "layernorm features")?)
        .f32(eps);
    let kernel = if residual.is_some() {
        "add_layernorm_forward"
    } else {
        "layernorm_forward"
    };
    backend
        .runtime()
        .launch(&kernel_name(kernel, dtype), &per_row(rows)?, &mut args)?;
    Ok((sum, out))
}

/// Returns `dx`; adds `dweight` and `dbias` into their slots of `grads`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    backend: &GpuBackend,
    dy: &Tensor,
    x: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    params: &Tensor,
    grads: &mut Tensor,
    weight: Param,
    bias: Param,
) -> Result<Tensor> {
    // Every check before anything runs, in the CPU backend's order, so errors match; the bias
    // slot's length is checked too (the CPU backend only checks that it lies in the buffer).
    let (rows, c) = layernorm_backward_dims(dy, x, mean, rstd)?;
    let p = backend.ptr(params, DType::F32, "parameters")?;
    let w = param_ptr(p, params, weight, c, "layernorm weight")?;
    backend.ptr(grads, DType::F32, "gradients")?;
    check_disjoint_slots(&[weight, bias], grads.numel(), "layernorm")?;
    check_param(bias, c, grads.numel(), "layernorm bias")?;
    // x sets the activation type; dy, its gradient, must have the same.
    let dtype = activation_dtype(x, "layernorm input")?;
    let dy_ptr = backend.ptr(dy, dtype, "layernorm dy")?;
    let x_ptr = backend.ptr(x, dtype, "layernorm input")?;
    let mean_ptr = backend.ptr(mean, DType::F32, "layernorm mean")?;
    let rstd_ptr = backend.ptr(rstd, DType::F32, "layernorm rstd")?;

    let dx = backend.empty(x.shape(), dtype)?;
    if rows == 0 {
        return Ok(dx);
    }
    let g = backend.ptr_mut(grads, DType::F32, "gradients")?;
    let dw = param_ptr(g, grads, weight, c, "layernorm weight")?;
    let db = param_ptr(g, grads, bias, c, "layernorm bias")?;
    let (rows_i, c_i) = (int(rows, "layernorm rows")?, int(c, "layernorm features")?);
    // The last kernel indexes [dweight | dbias] with one int.
    int(2 * c, "twice the layernorm features")?;

    // dx, one warp per row.
    let mut args = KernelArgs::new()
        .ptr(dy_ptr)
        .ptr(x_ptr)
        .ptr(mean_ptr)
        .ptr(rstd_ptr)
        .ptr(w)
        .ptr(backend.ptr(&dx, dtype, "layernorm dx")?)
        .i32(rows_i)
        .i32(c_i);
    backend.runtime().launch(
        &kernel_name("layernorm_backward_dx", dtype),
        &per_row(rows)?,
        &mut args,
    )?;

    // dweight and dbias: per-chunk column sums into [chunks, 2, c] f32 partials ...
    let chunks = RowChunks::new(rows);
    let partials = backend.empty(&[chunks.count, 2, c], DType::F32)?;
    let partials_ptr = backend.ptr(&partials, DType::F32, "layernorm partials")?;
    let mut args = KernelArgs::new()
        .ptr(dy_ptr)
        .ptr(x_ptr)
        .ptr(mean_ptr)
        .ptr(rstd_ptr)
        .ptr(partials_ptr)
        .i32(rows_i)
        .i32(c_i)
        .i32(int(chunks.rows_per_chunk, "rows per chunk")?);
    backend.runtime().launch(
        &kernel_name("layernorm_backward_partials", dtype),
        &chunks.launch_config(c, "layernorm parameter gradients")?,
        &mut args,
    )?;
    // ... then the chunks summed in order and added into the gradient slots, one thread per
    // entry of [dweight | dbias] (f32 throughout, one kernel for both activation types).
    let mut args = KernelArgs::new()
        .ptr(partials_ptr)
        .ptr(dw)
        .ptr(db)
        .i32(int(chunks.count, "chunks")?)
        .i32(c_i);
    backend.runtime().launch(
        "layernorm_backward_params_f32",
        &LaunchConfig::for_elements(2 * c, THREADS),
        &mut args,
    )?;
    Ok(dx)
}
