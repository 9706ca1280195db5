//! Launch wrappers for `kernels/elementwise.cu`: residual adds and GELU, in f32 or bf16. As for
//! every activation op, the element type follows the activation inputs.

use super::{activation_dtype, int, kernel_name};
use crate::backend::checks::check_same_shape;
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{KernelArgs, LaunchConfig};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// Threads per block for the elementwise kernels.
const THREADS: u32 = 256;
/// Enough blocks to fill a large GPU several times over; the kernels loop over the rest.
const MAX_BLOCKS: usize = 132 * 16;

/// One thread per 16-byte vector (4 floats or 8 bf16, plus the tail), capped: the kernels use
/// grid-stride loops.
fn config(n: usize, dtype: DType) -> LaunchConfig {
    let per_vector = match dtype {
        DType::BF16 => 8,
        _ => 4,
    };
    let blocks = n
        .div_ceil(per_vector)
        .div_ceil(THREADS as usize)
        .clamp(1, MAX_BLOCKS);
    LaunchConfig::linear(blocks as u32, THREADS, 0)
}

pub fn add(backend: &GpuBackend, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_same_shape(a, b, "add")?;
    let dtype = activation_dtype(a, "add")?;
    let (a_ptr, b_ptr) = (backend.ptr(a, dtype, "add")?, backend.ptr(b, dtype, "add")?);
    let y = backend.empty(a.shape(), dtype)?;
    let n = a.numel();
    let mut args = KernelArgs::new()
        .ptr(a_ptr)
        .ptr(b_ptr)
        .ptr(backend.ptr(&y, dtype, "add output")?)
        .i32(int(n, "elements")?);
    backend
        .runtime()
        .launch(&kernel_name("add", dtype), &config(n, dtype), &mut args)?;
    Ok(y)
}

pub fn add_assign(backend: &GpuBackend, acc: &mut Tensor, x: &Tensor) -> Result<()> {
    check_same_shape(acc, x, "add")?;
    let dtype = activation_dtype(acc, "add")?;
    let n = acc.numel();
    let x_ptr = backend.ptr(x, dtype, "add")?;
    let mut args = KernelArgs::new()
        .ptr(backend.ptr_mut(acc, dtype, "add")?)
        .ptr(x_ptr)
        .i32(int(n, "elements")?);
    backend.runtime().launch(
        &kernel_name("add_assign", dtype),
        &config(n, dtype),
        &mut args,
    )
}

pub fn gelu_forward(backend: &GpuBackend, x: &Tensor) -> Result<Tensor> {
    let dtype = activation_dtype(x, "gelu input")?;
    let x_ptr = backend.ptr(x, dtype, "gelu input")?;
    let y = backend.empty(x.shape(), dtype)?;
    let n = x.numel();
    let mut args = KernelArgs::new()
        .ptr(x_ptr)
        .ptr(backend.ptr(&y, dtype, "gelu output")?)
        .i32(int(n, "elements")?);
    backend.runtime().launch(
        &kernel_name("gelu_forward", dtype),
        &config(n, dtype),
        &mut args,
    )?;
    Ok(y)
}

pub fn gelu_backward(backend: &GpuBackend, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    check_same_shape(x, dy, "gelu dy")?;
    // The activation x sets the type; its gradient dy has the same.
    let dtype = activation_dtype(x, "gelu input")?;
    let dy_ptr = backend.ptr(dy, dtype, "gelu dy")?;
    let x_ptr = backend.ptr(x, dtype, "gelu input")?;
    let dx = backend.empty(x.shape(), dtype)?;
    let n = x.numel();
    let mut args = KernelArgs::new()
        .ptr(dy_ptr)
        .ptr(x_ptr)
        .ptr(backend.ptr(&dx, dtype, "gelu dx")?)
        .i32(int(n, "elements")?);
    backend.runtime().launch(
        &kernel_name("gelu_backward", dtype),
        &config(n, dtype),
        &mut args,
    )?;
    Ok(dx)
}
