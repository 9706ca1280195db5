//! Launch wrappers for `kernels/elementwise.cu`: residual adds and GELU.

use super::int;
use crate::backend::checks::check_same_shape;
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{KernelArgs, LaunchConfig};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// Threads per block for the elementwise kernels.
const THREADS: u32 = 256;
/// Enough blocks to fill a large GPU several times over; the kernels loop over the rest.
const MAX_BLOCKS: usize = 132 * 16;

/// One thread per float4 (plus the tail), capped: the kernels use grid-stride loops.
fn config(n: usize) -> LaunchConfig {
    let blocks = n
        .div_ceil(4)
        .div_ceil(THREADS as usize)
        .clamp(1, MAX_BLOCKS);
    LaunchConfig::linear(blocks as u32, THREADS, 0)
}

pub fn add(backend: &GpuBackend, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_same_shape(a, b, "add")?;
    let y = backend.empty(a.shape(), DType::F32)?;
    let n = a.numel();
    let mut args = KernelArgs::new()
        .ptr(backend.ptr(a, DType::F32, "add")?)
        .ptr(backend.ptr(b, DType::F32, "add")?)
        .ptr(backend.ptr(&y, DType::F32, "add output")?)
        .i32(int(n, "elements")?);
    backend.runtime().launch("add_f32", &config(n), &mut args)?;
    Ok(y)
}

pub fn add_assign(backend: &GpuBackend, acc: &mut Tensor, x: &Tensor) -> Result<()> {
    check_same_shape(acc, x, "add")?;
    let n = acc.numel();
    let x_ptr = backend.ptr(x, DType::F32, "add")?;
    let mut args = KernelArgs::new()
        .ptr(backend.ptr_mut(acc, DType::F32, "add")?)
        .ptr(x_ptr)
        .i32(int(n, "elements")?);
    backend
        .runtime()
        .launch("add_assign_f32", &config(n), &mut args)
}

pub fn gelu_forward(backend: &GpuBackend, x: &Tensor) -> Result<Tensor> {
    let y = backend.empty(x.shape(), DType::F32)?;
    let n = x.numel();
    let mut args = KernelArgs::new()
        .ptr(backend.ptr(x, DType::F32, "gelu input")?)
        .ptr(backend.ptr(&y, DType::F32, "gelu output")?)
        .i32(int(n, "elements")?);
    backend
        .runtime()
        .launch("gelu_forward_f32", &config(n), &mut args)?;
    Ok(y)
}

pub fn gelu_backward(backend: &GpuBackend, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    check_same_shape(x, dy, "gelu dy")?;
    let dx = backend.empty(x.shape(), DType::F32)?;
    let n = x.numel();
    let mut args = KernelArgs::new()
        .ptr(backend.ptr(dy, DType::F32, "gelu dy")?)
        .ptr(backend.ptr(x, DType::F32, "gelu input")?)
        .ptr(backend.ptr(&dx, DType::F32, "gelu dx")?)
        .i32(int(n, "elements")?);
    backend
        .runtime()
        .launch("gelu_backward_f32", &config(n), &mut args)?;
    Ok(dx)
}
