//! Launch wrapper for `kernels/adamw.cu`: one fused AdamW pass over the flat parameter, gradient
//! and moment buffers, which also keeps the parameters' bf16 shadow current when there is one.

use super::int;
use crate::backend::AdamWStep;
use crate::backend::checks::check_same_shape;
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{DevicePtr, KernelArgs, LaunchConfig};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// Threads per block.
const THREADS: u32 = 256;
/// Enough blocks to fill a large GPU several times over; the kernel loops over the rest.
const MAX_BLOCKS: usize = 132 * 16;

pub fn step(
    backend: &GpuBackend,
    params: &mut Tensor,
    grads: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    s: AdamWStep,
) -> Result<()> {
    check_same_shape(params, grads, "adamw gradients")?;
    check_same_shape(params, m, "adamw first moment")?;
    check_same_shape(params, v, "adamw second moment")?;
    // Device and dtype of all four before any is written (or copied on write).
    backend.ptr(params, DType::F32, "adamw parameters")?;
    let g = backend.ptr(grads, DType::F32, "adamw gradients")?;
    backend.ptr(m, DType::F32, "adamw first moment")?;
    backend.ptr(v, DType::F32, "adamw second moment")?;
    let n = params.numel();
    let n_i = int(n, "adamw parameters")?;
    if n == 0 {
        return Ok(());
    }

    // The step's scalars, the same for every backend.
    let c = s.coefficients();

    let p = backend.ptr_mut(params, DType::F32, "adamw parameters")?;
    // The bf16 shadow of the parameters (bf16 mixed precision), asked for after `ptr_mut`: if that
    // had to copy a buffer shared with a clone, the shadow belongs to the clone's buffer, is not
    // offered, and is left alone. Null when there is none: the kernel then skips it.
    let shadow = backend.shadow_for_update(params);
    let mut args = KernelArgs::new()
        .ptr(p)
        .ptr(g)
        .ptr(backend.ptr_mut(m, DType::F32, "adamw first moment")?)
        .ptr(backend.ptr_mut(v, DType::F32, "adamw second moment")?)
        .ptr(shadow.unwrap_or(DevicePtr(0)))
        .i32(n_i)
        .f32(c.decay)
        .f32(c.one_minus_beta1)
        .f32(c.beta2)
        .f32(c.one_minus_beta2)
        .f32(c.step_size)
        .f32(c.bias_correction2_sqrt)
        .f32(c.eps);
    // One thread per float4 (plus the tail), capped: the kernel uses a grid-stride loop.
    let blocks = n
        .div_ceil(4)
        .div_ceil(THREADS as usize)
        .clamp(1, MAX_BLOCKS);
    backend.runtime().launch(
        "adamw_f32",
        &LaunchConfig::linear(blocks as u32, THREADS, 0),
        &mut args,
    )?;
    if shadow.is_some() {
        // The same pass rewrote the shadow: it matches this write of the parameters.
        backend.shadow_updated(params);
    }
    Ok(())
}
