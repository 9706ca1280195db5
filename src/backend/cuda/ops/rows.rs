//! Launch wrappers for `kernels/rows.cu`: gather, scatter-add, argmax and the softmax's top k over
//! rows, one warp per row.
//!
//! Row indices are validated on the host, exactly as the CPU backend does it: the index tensor is
//! small (one `int` per selected row) and the call must return a typed error, which needs the answer
//! on the host anyway. Scatter uses the downloaded indices a second time, to plan a deterministic,
//! atomic-free summation of repeated rows (see `scatter_rows` in the kernel file).
//!
//! The element type follows the input: f32 in, f32 out; bf16 in (mixed precision), bf16 out, with
//! scatter's sums formed in f32 and rounded once. Argmax reads f32 or bf16 rows.

use super::{activation, int, kernel_name};
use crate::backend::checks::{check_rows, check_top_k, rows_cols};
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{DevicePtr, KernelArgs, LaunchConfig};
use crate::backend::cuda::storage::dtype_bytes;
use crate::backend::{Backend, TopK};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Warps (rows) per block.
const WARPS_PER_BLOCK: usize = 8;

/// One warp per row.
fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig::for_elements(rows * 32, (WARPS_PER_BLOCK * 32) as u32)
}

/// The row indices on the host, checking the tensor's device and type under `what`.
fn host_rows(backend: &GpuBackend, rows: &Tensor, what: &str) -> Result<Vec<i32>> {
    backend.ptr(rows, DType::I32, what)?;
    rows.to_vec_i32()
}

/// `out[i] = x[rows[i]]`: `[rows.numel(), width]`, of `x`'s element type.
pub fn gather(backend: &GpuBackend, x: &Tensor, rows: &Tensor) -> Result<Tensor> {
    let (n, width) = rows_cols(x, "gather input")?;
    let idx = host_rows(backend, rows, "gather rows")?;
    check_rows(&idx, n)?;
    let (x_ptr, dtype) = activation(backend, x, "gather input")?;
    let m = idx.len();
    let out = backend.empty(&[m, width], dtype)?;
    if m * width == 0 {
        return Ok(out);
    }
    let mut args = KernelArgs::new()
        .ptr(x_ptr)
        .ptr(backend.ptr(rows, DType::I32, "gather rows")?)
        .ptr(backend.ptr(&out, dtype, "gather output")?)
        .i32(int(m, "gathered rows")?)
        .i32(int(width, "row width")?);
    backend.runtime().launch(
        &kernel_name("gather_rows", dtype),
        &rows_config(m),
        &mut args,
    )?;
    Ok(out)
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

/// `[n, width]` of `dy`'s element type, zero except `out[rows[i]] += dy[i]`, repeats added in index
/// order in f32 (bit-identical to the CPU for f32; for bf16, the CPU's sum rounded once).
pub fn scatter(backend: &GpuBackend, dy: &Tensor, rows: &Tensor, n: usize) -> Result<Tensor> {
    let (m, width) = rows_cols(dy, "scatter dy")?;
    let idx = host_rows(backend, rows, "scatter rows")?;
    if idx.len() != m {
        return Err(Error::shape("scatter rows", format!("[{m}]"), rows.shape()));
    }
    check_rows(&idx, n)?;
    let (dy_ptr, dtype) = activation(backend, dy, "scatter dy")?;
    let mut out = backend.empty(&[n, width], dtype)?;
    // Zero bits are zero in f32 and bf16 alike.
    let out_ptr = backend.ptr_mut(&mut out, dtype, "scatter output")?;
    backend
        .runtime()
        .memset_zero(out_ptr, n * width * dtype_bytes(dtype))?;
    if m * width == 0 {
        return Ok(out);
    }
    let (heads, next) = chains(&idx, n);
    let plan = backend.upload_i32(&[heads.len() + m], &[heads.as_slice(), &next].concat())?;
    let heads_ptr = backend.ptr(&plan, DType::I32, "scatter plan")?;
    let next_ptr = DevicePtr(heads_ptr.0 + (heads.len() * 4) as u64);
    let mut args = KernelArgs::new()
        .ptr(dy_ptr)
        .ptr(backend.ptr(rows, DType::I32, "scatter rows")?)
        .ptr(heads_ptr)
        .ptr(next_ptr)
        .ptr(out_ptr)
        .i32(int(heads.len(), "distinct rows")?)
        .i32(int(width, "row width")?);
    backend.runtime().launch(
        &kernel_name("scatter_rows", dtype),
        &rows_config(heads.len()),
        &mut args,
    )?;
    Ok(out)
}

/// The first index of the largest element of each row (NaN handled as the CPU does), `[rows]` i32;
/// the rows are f32 or bf16.
pub fn argmax(backend: &GpuBackend, x: &Tensor) -> Result<Tensor> {
    let (n, width) = rows_cols(x, "argmax input")?;
    let (x_ptr, dtype) = activation(backend, x, "argmax input")?;
    let out = backend.empty(&[n], DType::I32)?;
    if n == 0 {
        return Ok(out);
    }
    let mut args = KernelArgs::new()
        .ptr(x_ptr)
        .ptr(backend.ptr(&out, DType::I32, "argmax output")?)
        .i32(int(n, "rows")?)
        .i32(int(width, "row width")?);
    backend.runtime().launch(
        &kernel_name("argmax_rows", dtype),
        &rows_config(n),
        &mut args,
    )?;
    Ok(out)
}

/// The `k` most probable entries of each row's softmax, best first (the order of
/// [`Backend::softmax_top_k`]): ids `[rows, k]` i32 and probabilities `[rows, k]` f32, from f32 or
/// bf16 logits.
pub fn softmax_top_k(backend: &GpuBackend, logits: &Tensor, k: usize) -> Result<TopK> {
    let (n, width) = rows_cols(logits, "top-k logits")?;
    check_top_k(k, width)?;
    let (x_ptr, dtype) = activation(backend, logits, "top-k logits")?;
    let ids = backend.empty(&[n, k], DType::I32)?;
    let probabilities = backend.empty(&[n, k], DType::F32)?;
    if n > 0 {
        let mut args = KernelArgs::new()
            .ptr(x_ptr)
            .ptr(backend.ptr(&ids, DType::I32, "top-k ids")?)
            .ptr(backend.ptr(&probabilities, DType::F32, "top-k probabilities")?)
            .i32(int(n, "rows")?)
            .i32(int(width, "row width")?)
            .i32(int(k, "k")?);
        backend.runtime().launch(
            &kernel_name("softmax_top_k_rows", dtype),
            &rows_config(n),
            &mut args,
        )?;
    }
    Ok(TopK { ids, probabilities })
}
