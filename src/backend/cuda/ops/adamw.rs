//! Launch wrapper for `kernels/adamw.cu`: one fused AdamW pass over the flat parameter, gradient
//! and moment buffers.

use super::int;
use crate::backend::AdamWStep;
use crate::backend::checks::check_same_shape;
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{KernelArgs, LaunchConfig};
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

    // The step's scalars, in f64 then rounded to f32, exactly as src/backend/cpu/adamw.rs.
    let decay = (1.0 - s.lr * s.weight_decay) as f32;
    let one_minus_b1 = (1.0 - s.beta1) as f32;
    let b2 = s.beta2 as f32;
    let one_minus_b2 = (1.0 - s.beta2) as f32;
    let step_size = (s.lr / (1.0 - s.beta1.powi(s.t as i32))) as f32;
    let bc2_sqrt = (1.0 - s.beta2.powi(s.t as i32)).sqrt() as f32;
    let eps = s.eps as f32;

    let mut args = KernelArgs::new()
        .ptr(backend.ptr_mut(params, DType::F32, "adamw parameters")?)
        .ptr(g)
        .ptr(backend.ptr_mut(m, DType::F32, "adamw first moment")?)
        .ptr(backend.ptr_mut(v, DType::F32, "adamw second moment")?)
        .i32(n_i)
        .f32(decay)
        .f32(one_minus_b1)
        .f32(b2)
        .f32(one_minus_b2)
        .f32(step_size)
        .f32(bc2_sqrt)
        .f32(eps);
    // One thread per float4 (plus the tail), capped: the kernel uses a grid-stride loop.
    let blocks = n
        .div_ceil(4)
        .div_ceil(THREADS as usize)
        .clamp(1, MAX_BLOCKS);
    backend.runtime().launch(
        "adamw_f32",
        &LaunchConfig::linear(blocks as u32, THREADS, 0),
        &mut args,
    )
}
