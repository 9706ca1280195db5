//! Launch wrappers for `kernels/layernorm.cu`: LayerNorm over the last axis, one warp per row, and
//! its parameter gradients as deterministic column sums.
//!
//! f32 or bf16 activations: x (and dy) set the type of y (and dx); the statistics, parameters and
//! parameter gradients are f32 either way.

use super::linear::RowChunks;
use super::{int, kernel_name, slot};
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{KernelArgs, LaunchConfig};
use crate::backend::{Backend, LayerNormOut, Param};
use crate::error::{Error, Result};
use crate::ops::layernorm::LayerNormKernels;
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

impl LayerNormKernels for GpuBackend {
    /// LayerNorm of `x`, or of `x + residual` (written to the residual's sum) in one kernel
    /// (`add_layernorm_forward`): the residual add fused into the LayerNorm that follows it.
    fn layernorm_forward_into(
        &self,
        x: &Tensor,
        residual: Option<(&Tensor, &mut Tensor)>,
        params: &Tensor,
        weight: Param,
        bias: Param,
        eps: f32,
        out: &mut LayerNormOut,
    ) -> Result<()> {
        let (rows, c) = rows_features(x);
        let dtype = x.dtype();
        let p = self.ptr(params)?;
        let mut args = KernelArgs::new().ptr(self.ptr(x)?);
        let kernel = match residual {
            Some((r, sum)) => {
                args = args.ptr(self.ptr(r)?).ptr(self.ptr_mut(sum)?);
                "add_layernorm_forward"
            }
            None => "layernorm_forward",
        };
        let mut args = args
            .ptr(slot(p, weight, DType::F32))
            .ptr(slot(p, bias, DType::F32))
            .ptr(self.ptr_mut(&mut out.y)?)
            .ptr(self.ptr_mut(&mut out.mean)?)
            .ptr(self.ptr_mut(&mut out.rstd)?)
            .i32(int(rows, "layernorm rows")?)
            .i32(int(c, "layernorm features")?)
            .f32(eps);
        self.runtime()
            .launch(&kernel_name(kernel, dtype), &per_row(rows)?, &mut args)
    }

    /// Writes `dx`; adds `dweight` and `dbias` into their slots of `grads`.
    fn layernorm_backward_into(
        &self,
        dy: &Tensor,
        x: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        params: &Tensor,
        grads: &mut Tensor,
        weight: Param,
        bias: Param,
        dx: &mut Tensor,
    ) -> Result<()> {
        let (rows, c) = rows_features(x);
        let dtype = x.dtype();
        let (dy_ptr, x_ptr) = (self.ptr(dy)?, self.ptr(x)?);
        let (mean_ptr, rstd_ptr) = (self.ptr(mean)?, self.ptr(rstd)?);
        let w = slot(self.ptr(params)?, weight, DType::F32);
        let g = self.ptr_mut(grads)?;
        let (dw, db) = (slot(g, weight, DType::F32), slot(g, bias, DType::F32));
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
            .ptr(self.ptr_mut(dx)?)
            .i32(rows_i)
            .i32(c_i);
        self.runtime().launch(
            &kernel_name("layernorm_backward_dx", dtype),
            &per_row(rows)?,
            &mut args,
        )?;

        // dweight and dbias: per-chunk column sums into [chunks, 2, c] f32 partials ...
        let chunks = RowChunks::new(rows);
        let partials = self.alloc(&[chunks.count, 2, c], DType::F32)?;
        let partials_ptr = self.ptr(&partials)?;
        let mut args = KernelArgs::new()
            .ptr(dy_ptr)
            .ptr(x_ptr)
            .ptr(mean_ptr)
            .ptr(rstd_ptr)
            .ptr(partials_ptr)
            .i32(rows_i)
            .i32(c_i)
            .i32(int(chunks.rows_per_chunk, "rows per chunk")?);
        self.runtime().launch(
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
        self.runtime().launch(
            "layernorm_backward_params_f32",
            &LaunchConfig::for_elements(2 * c, THREADS),
            &mut args,
        )
    }
}

/// Rows and features of a `[.., features]` activation.
pub(super) fn rows_features(x: &Tensor) -> (usize, usize) {
    let c = x.shape().last().copied().unwrap_or(0);
    (x.numel() / c.max(1), c)
}
