//! Launch wrappers for `kernels/rows.cu`: gather, scatter-add, argmax and the softmax's top k over
//! rows, one warp per row.
//!
//! Row indices were validated on the host by the front, from the host copy they were uploaded
//! from. Scatter uses those host indices to plan a deterministic, atomic-free summation of repeated
//! rows (see `scatter_rows` in the kernel file), uploaded beside them: nothing is read back.
//!
//! The element type follows the input: f32 in, f32 out; bf16 in (mixed precision), bf16 out, with
//! scatter's sums formed in f32 and rounded once. Argmax reads f32 or bf16 rows.

use super::{int, kernel_name};
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{DevicePtr, KernelArgs, LaunchConfig};
use crate::backend::{Backend, TopK};
use crate::error::Result;
use crate::ops::rows::RowKernels;
use crate::tensor::Tensor;

/// Warps (rows) per block.
const WARPS_PER_BLOCK: usize = 8;

/// One warp per row.
fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig::for_elements(rows * 32, (WARPS_PER_BLOCK * 32) as u32)
}

/// The summation plan for scatter: `heads` lists, in order, the first index of every distinct row;
/// `next[i]` is the next index with the same row as `i`, or -1. Walking a chain from its head visits
/// the repeats of one row in index order, the order in which the CPU adds them.
fn chains(idx: &[i32], n: usize) -> (Vec<i32>, Vec<i32>) {
    let mut heads = Vec::new();
    let mut next = vec![-1i32; idx.len()];
    let mut tail = vec![-1i32; n];
    for (i, &r) in idx.iter().enumerate() {
        let last = &mut tail[r as usize];
        if *last < 0 {
            heads.push(i as i32);
        } else {
            next[*last as usize] = i as i32;
        }
        *last = i as i32;
    }
    (heads, next)
}

fn width(t: &Tensor) -> usize {
    t.shape().last().copied().unwrap_or(0)
}

impl RowKernels for GpuBackend {
    /// `out[i] = x[rows[i]]`, of `x`'s element type.
    fn gather_rows_into(&self, x: &Tensor, rows: &Tensor, out: &mut Tensor) -> Result<()> {
        let m = rows.numel();
        let mut args = KernelArgs::new()
            .ptr(self.ptr(x)?)
            .ptr(self.ptr(rows)?)
            .ptr(self.ptr_mut(out)?)
            .i32(int(m, "gathered rows")?)
            .i32(int(width(x), "row width")?);
        self.runtime().launch(
            &kernel_name("gather_rows", x.dtype()),
            &rows_config(m),
            &mut args,
        )
    }

    /// `out[rows[i]] += dy[i]` into the zeroed `out`, repeats added in index order in f32
    /// (bit-identical to the CPU for f32; for bf16, the CPU's sum rounded once).
    fn scatter_rows_into(
        &self,
        dy: &Tensor,
        rows: &Tensor,
        host_rows: &[i32],
        out: &mut Tensor,
    ) -> Result<()> {
        let n = out.shape().first().copied().unwrap_or(0);
        let (heads, next) = chains(host_rows, n);
        let plan = self.upload_plan(&[heads.as_slice(), &next].concat())?;
        let heads_ptr = self.ptr(&plan)?;
        let next_ptr = DevicePtr(heads_ptr.0 + (heads.len() * 4) as u64);
        let mut args = KernelArgs::new()
            .ptr(self.ptr(dy)?)
            .ptr(self.ptr(rows)?)
            .ptr(heads_ptr)
            .ptr(next_ptr)
            .ptr(self.ptr_mut(out)?)
            .i32(int(heads.len(), "distinct rows")?)
            .i32(int(width(dy), "row width")?);
        self.runtime().launch(
            &kernel_name("scatter_rows", dy.dtype()),
            &rows_config(heads.len()),
            &mut args,
        )
    }

    /// The first index of the largest element of each row (NaN handled as the CPU does); the rows
    /// are f32 or bf16.
    fn argmax_rows_into(&self, x: &Tensor, out: &mut Tensor) -> Result<()> {
        let n = out.numel();
        let mut args = KernelArgs::new()
            .ptr(self.ptr(x)?)
            .ptr(self.ptr_mut(out)?)
            .i32(int(n, "rows")?)
            .i32(int(width(x), "row width")?);
        self.runtime().launch(
            &kernel_name("argmax_rows", x.dtype()),
            &rows_config(n),
            &mut args,
        )
    }

    /// Ids `[rows, k]` i32 and probabilities `[rows, k]` f32, from f32 or bf16 logits.
    fn softmax_top_k_into(&self, logits: &Tensor, k: usize, out: &mut TopK) -> Result<()> {
        let n = out.ids.shape().first().copied().unwrap_or(0);
        let mut args = KernelArgs::new()
            .ptr(self.ptr(logits)?)
            .ptr(self.ptr_mut(&mut out.ids)?)
            .ptr(self.ptr_mut(&mut out.probabilities)?)
            .i32(int(n, "rows")?)
            .i32(int(width(logits), "row width")?)
            .i32(int(k, "k")?);
        self.runtime().launch(
            &kernel_name("softmax_top_k_rows", logits.dtype()),
            &rows_config(n),
            &mut args,
        )
    }
}

impl GpuBackend {
    /// The scatter plan on the device (an ordinary upload: host to device, no waiting).
    fn upload_plan(&self, plan: &[i32]) -> Result<Tensor> {
        self.upload(&[plan.len()], crate::ops::memory::HostData::I32(plan))
    }
}
