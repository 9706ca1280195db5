//! Launch wrappers for `kernels/elementwise.cu`: residual adds and GELU, in f32 or bf16. As for
//! every activation op, the element type follows the activation inputs.

use super::{int, kernel_name};
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{KernelArgs, LaunchConfig};
use crate::error::Result;
use crate::ops::elementwise::ElementwiseKernels;
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

impl ElementwiseKernels for GpuBackend {
    fn add_into(&self, a: &Tensor, b: &Tensor, y: &mut Tensor) -> Result<()> {
        let (n, dtype) = (a.numel(), a.dtype());
        let mut args = KernelArgs::new()
            .ptr(self.ptr(a)?)
            .ptr(self.ptr(b)?)
            .ptr(self.ptr_mut(y)?)
            .i32(int(n, "elements")?);
        self.runtime()
            .launch(&kernel_name("add", dtype), &config(n, dtype), &mut args)
    }

    fn add_assign_into(&self, acc: &mut Tensor, x: &Tensor) -> Result<()> {
        let (n, dtype) = (acc.numel(), acc.dtype());
        let x_ptr = self.ptr(x)?;
        let mut args = KernelArgs::new()
            .ptr(self.ptr_mut(acc)?)
            .ptr(x_ptr)
            .i32(int(n, "elements")?);
        self.runtime().launch(
            &kernel_name("add_assign", dtype),
            &config(n, dtype),
            &mut args,
        )
    }

    fn gelu_forward_into(&self, x: &Tensor, y: &mut Tensor) -> Result<()> {
        let (n, dtype) = (x.numel(), x.dtype());
        let mut args = KernelArgs::new()
            .ptr(self.ptr(x)?)
            .ptr(self.ptr_mut(y)?)
            .i32(int(n, "elements")?);
        self.runtime().launch(
            &kernel_name("gelu_forward", dtype),
            &config(n, dtype),
            &mut args,
        )
    }

    fn gelu_backward_into(&self, dy: &Tensor, x: &Tensor, dx: &mut Tensor) -> Result<()> {
        let (n, dtype) = (x.numel(), x.dtype());
        let mut args = KernelArgs::new()
            .ptr(self.ptr(dy)?)
            .ptr(self.ptr(x)?)
            .ptr(self.ptr_mut(dx)?)
            .i32(int(n, "elements")?);
        self.runtime().launch(
            &kernel_name("gelu_backward", dtype),
            &config(n, dtype),
            &mut args,
        )
    }
}
