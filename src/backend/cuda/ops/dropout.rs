//! Launch wrapper for `kernels/dropout.cu`: inverted dropout with Philox masks, bit-identical to the
//! CPU backend's. Inverted dropout is its own adjoint (the same mask, the same scale), so forward and
//! backward both call [`apply`] with the same key.
//!
//! The element type follows the input: f32 in, f32 out; bf16 in (mixed precision), bf16 out, with the
//! same mask and each kept element `x * scale` formed in f32 and rounded once.

use super::{activation, int, kernel_name};
use crate::backend::DropoutKey;
use crate::backend::checks::{check_dropout_probability, check_same_shape};
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{KernelArgs, LaunchConfig};
use crate::error::Result;
use crate::tensor::Tensor;

/// Threads per block; each thread handles four elements (one Philox call) per iteration.
const THREADS: u32 = 256;
/// Enough blocks to fill a large GPU several times over; the kernel loops over the rest.
const MAX_BLOCKS: usize = 132 * 16;

/// `y = x * mask / (1 - p)` with the mask of `key`, of `x`'s element type (f32 or bf16).
pub fn apply(backend: &GpuBackend, x: &Tensor, key: DropoutKey) -> Result<Tensor> {
    run(backend, x, None, key)
}

/// `y = residual + dropout(x)` in one pass (`dropout_add`): the dropout fused into the residual add
/// that follows it.
pub fn apply_and_add(
    backend: &GpuBackend,
    residual: &Tensor,
    x: &Tensor,
    key: DropoutKey,
) -> Result<Tensor> {
    check_same_shape(residual, x, "add")?;
    run(backend, x, Some(residual), key)
}

fn run(
    backend: &GpuBackend,
    x: &Tensor,
    residual: Option<&Tensor>,
    key: DropoutKey,
) -> Result<Tensor> {
    check_dropout_probability(key.p)?;
    let (x_ptr, dtype) = activation(backend, x, "dropout input")?;
    let residual_ptr = residual.map(|r| backend.ptr(r, dtype, "add")).transpose()?;
    let y = backend.empty(x.shape(), dtype)?;
    let n = x.numel();
    if n == 0 {
        return Ok(y);
    }
    // In f32, as the CPU computes it, so that kept elements are scaled by the same number.
    let scale = 1.0f32 / (1.0 - key.p);
    let groups = n.div_ceil(4);
    let blocks = groups.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS);
    let mut args = KernelArgs::new().ptr(x_ptr);
    if let Some(r) = residual_ptr {
        args = args.ptr(r);
    }
    let mut args = args
        .ptr(backend.ptr(&y, dtype, "dropout output")?)
        .i32(int(n, "elements")?)
        .f32(key.p)
        .f32(scale)
        .u32(key.seed as u32)
        .u32((key.seed >> 32) as u32)
        .u32(key.step as u32)
        .u32((key.step >> 32) as u32)
        .u32(key.site);
    let kernel = if residual.is_some() {
        "dropout_add"
    } else {
        "dropout"
    };
    backend.runtime().launch(
        &kernel_name(kernel, dtype),
        &LaunchConfig::linear(blocks as u32, THREADS, 0),
        &mut args,
    )?;
    Ok(y)
}
