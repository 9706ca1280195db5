//! Launch wrapper for `kernels/dropout.cu`: inverted dropout with Philox masks, bit-identical to the
//! CPU backend's. Inverted dropout is its own adjoint (the same mask, the same scale), so forward and
//! backward both run the same kernel with the same key.
//!
//! The element type follows the input: f32 in, f32 out; bf16 in (mixed precision), bf16 out, with the
//! same mask and each kept element `x * scale` formed in f32 and rounded once.
//!
//! With `rows` (a packed batch), element `(r, c)` of the `[rows, width]` input draws the uniform of
//! `(rows[r], c)` in the padded batch, as on the CPU; the kernel takes `width / 4`, the Philox
//! groups per row.

use super::{int, kernel_name};
use crate::backend::DropoutKey;
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{DevicePtr, KernelArgs, LaunchConfig};
use crate::error::Result;
use crate::ops::dropout::DropoutKernels;
use crate::tensor::Tensor;

/// Threads per block; each thread handles four elements (one Philox call) per iteration.
const THREADS: u32 = 256;
/// Enough blocks to fill a large GPU several times over; the kernel loops over the rest.
const MAX_BLOCKS: usize = 132 * 16;

impl DropoutKernels for GpuBackend {
    /// `y = x * mask / (1 - p)` with the mask of `key`, or `y = residual + dropout(x)` in one pass
    /// (`dropout_add`): the dropout fused into the residual add that follows it.
    fn dropout_into(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        key: DropoutKey,
        rows: Option<&Tensor>,
        y: &mut Tensor,
    ) -> Result<()> {
        let (n, dtype) = (x.numel(), x.dtype());
        // In f32, as the CPU computes it, so that kept elements are scaled by the same number.
        let scale = 1.0f32 / (1.0 - key.p);
        let groups = n.div_ceil(4);
        let blocks = groups.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS);
        let mut args = KernelArgs::new().ptr(self.ptr(x)?);
        if let Some(r) = residual {
            args = args.ptr(self.ptr(r)?);
        }
        // The front checked that `rows` has one entry per row of x.
        let (rows_ptr, width) = match rows {
            Some(r) => (self.ptr(r)?, n / r.numel().max(1)),
            None => (DevicePtr::NULL, 0),
        };
        let mut args = args
            .ptr(self.ptr_mut(y)?)
            .ptr(rows_ptr)
            .i32(int(width, "dropout row width")?)
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
        self.runtime().launch(
            &kernel_name(kernel, dtype),
            &LaunchConfig::linear(blocks as u32, THREADS, 0),
            &mut args,
        )
    }
}
