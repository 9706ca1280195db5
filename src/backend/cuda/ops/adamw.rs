//! Launch wrapper for `kernels/adamw.cu`: one fused AdamW pass over the flat parameter, gradient
//! and moment buffers, which also writes the GEMMs' bf16 copy of the weights when given one, and
//! skips itself on the device under a loss guard.

use super::int;
use crate::backend::AdamWCoefficients;
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{DevicePtr, KernelArgs, LaunchConfig};
use crate::error::Result;
use crate::ops::adamw::{AdamWKernels, LossGuard};
use crate::tensor::Tensor;

/// Threads per block.
const THREADS: u32 = 256;
/// Enough blocks to fill a large GPU several times over; the kernel loops over the rest.
const MAX_BLOCKS: usize = 132 * 16;

impl AdamWKernels for GpuBackend {
    fn adamw_update(
        &self,
        params: &mut Tensor,
        gemm_copy: Option<&mut Tensor>,
        grads: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        c: AdamWCoefficients,
        guard: Option<LossGuard<'_>>,
    ) -> Result<()> {
        let n = params.numel();
        // Null pointers tell the kernel there is no bf16 copy, or no guard.
        let copy = gemm_copy
            .map(|t| self.ptr_mut(t))
            .transpose()?
            .unwrap_or(DevicePtr(0));
        let (guard_loss, halted) = match guard {
            Some(g) => {
                let loss = g.loss.map(|l| self.ptr(l)).transpose()?;
                (loss.unwrap_or(DevicePtr(0)), self.ptr_mut(g.halted)?)
            }
            None => (DevicePtr(0), DevicePtr(0)),
        };
        let mut args = KernelArgs::new()
            .ptr(self.ptr_mut(params)?)
            .ptr(self.ptr(grads)?)
            .ptr(self.ptr_mut(m)?)
            .ptr(self.ptr_mut(v)?)
            .ptr(copy)
            .ptr(guard_loss)
            .ptr(halted)
            .i32(int(n, "adamw parameters")?)
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
        self.runtime().launch(
            "adamw_f32",
            &LaunchConfig::linear(blocks as u32, THREADS, 0),
            &mut args,
        )
    }
}
