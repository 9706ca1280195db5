//! Launch wrappers for `kernels/linear.cu`: `y = x W^T + b` with `W` stored `[out, in]` like
//! `torch.nn.Linear`. The products are GEMMs on the runtime (cuBLASLt on a GPU); the kernels write
//! the bias into `y` before the forward GEMM and sum `dy` down its columns for `db`. The
//! feed-forward block's first layer fuses the bias and GELU: after the GEMM in the forward
//! (`linear_bias_gelu`), and with db's column sums in the backward (`linear_gelu_backward_partials`).
//!
//! f32 or bf16 activations: x (and dy) set the type of y (and dx). With bf16 activations the GEMMs
//! read `W` from the parameters' bf16 shadow ([`GpuBackend::bf16_parameters`]) and accumulate in
//! f32; `dW` and `db` go into the f32 gradient buffer, `dW` straight from a GEMM with bf16 operands
//! and an f32 C.
//!
//! Also the two helpers the other parameter-gradient wrappers share: the fixed row chunks of the
//! deterministic column sums, and the gradient-slot check the CPU backend makes.

use super::{activation_dtype, int, kernel_name, param_ptr};
use crate::backend::Param;
use crate::backend::checks::{
    check_disjoint_slots, check_param, check_same_shape, linear_backward_dims, rows_cols,
};
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{DevicePtr, KernelArgs, LaunchConfig};
use crate::backend::cuda::runtime::GemmSpec;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Most blocks the bias broadcast launches; its blocks loop over the remaining rows.
const MAX_BLOCKS: usize = 132 * 16;
/// Threads per block of the kernels with one thread per column.
const THREADS: u32 = 256;

/// How a column sum over `rows` rows is cut into chunks: each chunk's rows are added in order by
/// one thread per column, then the chunks are added in order. This is the CPU backend's
/// `sum_over_row_blocks` (src/backend/cpu/reduce.rs), chunk size included, so the GPU adds the same
/// numbers in the same order: the same rounding on every run, every GPU, and the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RowChunks {
    pub rows_per_chunk: usize,
    pub count: usize,
}

impl RowChunks {
    /// The CPU's block of rows, so that both sum in the same order.
    const ROWS: usize = crate::backend::cpu::reduce::ROWS_PER_BLOCK;

    pub(super) fn new(rows: usize) -> Self {
        RowChunks {
            rows_per_chunk: Self::ROWS,
            count: rows.div_ceil(Self::ROWS),
        }
    }

    /// The partial-sum kernels' launch: x = chunk, y = block of up to 256 columns.
    pub(super) fn launch_config(&self, columns: usize, what: &str) -> Result<LaunchConfig> {
        let threads = columns.next_multiple_of(32).clamp(32, THREADS as usize);
        let column_blocks = columns.div_ceil(threads);
        // A grid's y dimension is at most 65535 blocks.
        if column_blocks > 65535 {
            return Err(Error::Config(format!(
                "{what}: {columns} columns exceed the column-sum kernels' {}",
                65535 * threads
            )));
        }
        let chunks = u32::try_from(self.count).map_err(|_| {
            Error::Config(format!("{what}: {} row chunks exceed one grid", self.count))
        })?;
        Ok(LaunchConfig {
            grid: [chunks, column_blocks as u32, 1],
            block: [threads as u32, 1, 1],
            shared_bytes: 0,
        })
    }
}

/// One thread per column for the sums over chunks.
fn per_column(columns: usize) -> LaunchConfig {
    LaunchConfig::for_elements(columns, THREADS)
}

/// The weight matrix as the GEMMs read it for activations of `dtype`: the f32 slot `w` of the
/// parameters, or for bf16 the same slot of their bf16 shadow, which is aligned element for element
/// with the f32 buffer. The shadow tensor comes back too, to keep it alive while the GEMMs run.
fn gemm_weight(
    backend: &GpuBackend,
    params: &Tensor,
    weight: Param,
    w: DevicePtr,
    dtype: DType,
) -> Result<(DevicePtr, Option<Tensor>)> {
    match dtype {
        DType::BF16 => {
            let shadow = backend.bf16_parameters(params)?;
            let base = backend.ptr(&shadow, DType::BF16, "parameter shadow")?;
            Ok((DevicePtr(base.0 + (weight.offset * 2) as u64), Some(shadow)))
        }
        _ => Ok((w, None)),
    }
}

/// `x`: `[.., in]`; returns `[.., out_features]`, of `x`'s element type.
pub fn forward(
    backend: &GpuBackend,
    x: &Tensor,
    params: &Tensor,
    weight: Param,
    bias: Param,
    out_features: usize,
) -> Result<Tensor> {
    let g = Gemm::new(backend, x, params, weight, bias, out_features)?;
    let y = backend.empty(&g.shape, g.dtype)?;
    // A row count of zero also covers in = 0 (rows_cols counts no rows in an empty tensor).
    if g.rows == 0 || out_features == 0 {
        return Ok(y);
    }
    let y_ptr = backend.ptr(&y, g.dtype, "linear output")?;
    // y = b in every row (rounded to bf16 for bf16 activations) ...
    let mut args = KernelArgs::new()
        .ptr(g.b)
        .ptr(y_ptr)
        .i32(int(g.rows, "linear rows")?)
        .i32(int(out_features, "linear out features")?);
    backend.runtime().launch(
        &kernel_name("linear_bias_broadcast", g.dtype),
        &per_row(g.rows, out_features),
        &mut args,
    )?;
    // ... then y += x W^T.
    g.run(backend, y_ptr, 1.0)?;
    Ok(y)
}

/// `z = x W^T + b` and `GELU(z)`: the GEMM without the bias, then one pass that adds the bias and
/// applies GELU (`linear_bias_gelu`). Returns `(z, GELU(z))`, both of `x`'s element type.
pub fn gelu_forward(
    backend: &GpuBackend,
    x: &Tensor,
    params: &Tensor,
    weight: Param,
    bias: Param,
    out_features: usize,
) -> Result<(Tensor, Tensor)> {
    let g = Gemm::new(backend, x, params, weight, bias, out_features)?;
    let z = backend.empty(&g.shape, g.dtype)?;
    let y = backend.empty(&g.shape, g.dtype)?;
    if g.rows == 0 || out_features == 0 {
        return Ok((z, y));
    }
    let z_ptr = backend.ptr(&z, g.dtype, "linear output")?;
    g.run(backend, z_ptr, 0.0)?;
    let mut args = KernelArgs::new()
        .ptr(g.b)
        .ptr(z_ptr)
        .ptr(backend.ptr(&y, g.dtype, "gelu output")?)
        .i32(int(g.rows, "linear rows")?)
        .i32(int(out_features, "linear out features")?);
    backend.runtime().launch(
        &kernel_name("linear_bias_gelu", g.dtype),
        &per_row(g.rows, out_features),
        &mut args,
    )?;
    Ok((z, y))
}

/// Blocks over rows (capped; the kernels loop over the rest), threads over a row's columns.
fn per_row(rows: usize, columns: usize) -> LaunchConfig {
    let threads = columns.next_multiple_of(32).min(THREADS as usize) as u32;
    LaunchConfig::linear(rows.min(MAX_BLOCKS) as u32, threads, 0)
}

/// A forward GEMM `x W^T`, checked and ready to run into an output of `shape`.
struct Gemm {
    rows: usize,
    inp: usize,
    out_features: usize,
    dtype: DType,
    x: DevicePtr,
    w: DevicePtr,
    b: DevicePtr,
    shape: Vec<usize>,
    /// Keeps the bf16 weights alive while the GEMM runs.
    _shadow: Option<Tensor>,
}

impl Gemm {
    fn new(
        backend: &GpuBackend,
        x: &Tensor,
        params: &Tensor,
        weight: Param,
        bias: Param,
        out_features: usize,
    ) -> Result<Self> {
        let (rows, inp) = rows_cols(x, "linear input")?;
        let p = backend.ptr(params, DType::F32, "parameters")?;
        let w = param_ptr(p, params, weight, out_features * inp, "linear weight")?;
        let b = param_ptr(p, params, bias, out_features, "linear bias")?;
        let dtype = activation_dtype(x, "linear input")?;
        let x_ptr = backend.ptr(x, dtype, "linear input")?;
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("rank checked by rows_cols") = out_features;
        let (w, shadow) = if rows == 0 || out_features == 0 {
            (w, None)
        } else {
            gemm_weight(backend, params, weight, w, dtype)?
        };
        Ok(Gemm {
            rows,
            inp,
            out_features,
            dtype,
            x: x_ptr,
            w,
            b,
            shape,
            _shadow: shadow,
        })
    }

    /// `y = x W^T + beta y`: W is [out, in], so op(B) = W^T is W read transposed. Every operand has
    /// the activation type.
    fn run(&self, backend: &GpuBackend, y: DevicePtr, beta: f32) -> Result<()> {
        backend.runtime().gemm(
            &GemmSpec::dense(
                self.rows,
                self.out_features,
                self.inp,
                self.x,
                false,
                self.w,
                true,
                y,
                1.0,
                beta,
            )
            .with_types(self.dtype, self.dtype, self.dtype),
        )
    }
}

/// `dx = dy W` (returned, of the activations' element type), `dW += dy^T x`, `db += sum_rows dy`
/// (added into the f32 `grads`).
pub fn backward(
    backend: &GpuBackend,
    dy: &Tensor,
    x: &Tensor,
    params: &Tensor,
    grads: &mut Tensor,
    weight: Param,
    bias: Param,
) -> Result<Tensor> {
    backward_through(backend, dy, None, x, params, grads, weight, bias)
}

/// The backward of [`gelu_forward`]: `dz = dy GELU'(z)` in the same pass as db's partial sums
/// (`linear_gelu_backward_partials`), then the backward of the linear layer from `dz`.
#[allow(clippy::too_many_arguments)]
pub fn gelu_backward(
    backend: &GpuBackend,
    dy: &Tensor,
    x: &Tensor,
    z: &Tensor,
    params: &Tensor,
    grads: &mut Tensor,
    weight: Param,
    bias: Param,
) -> Result<Tensor> {
    // The unfused path's first check: GELU's backward takes dy of z's shape.
    check_same_shape(z, dy, "gelu dy")?;
    backward_through(backend, dy, Some(z), x, params, grads, weight, bias)
}

/// The linear backward from `dy`, or with `gelu_input = Some(z)` from `dz = dy GELU'(z)`, which the
/// bias-gradient kernel computes and stores on its way.
#[allow(clippy::too_many_arguments)]
fn backward_through(
    backend: &GpuBackend,
    dy: &Tensor,
    gelu_input: Option<&Tensor>,
    x: &Tensor,
    params: &Tensor,
    grads: &mut Tensor,
    weight: Param,
    bias: Param,
) -> Result<Tensor> {
    // Every check before anything runs, in the CPU backend's order, so errors match; the bias
    // slot's length is checked too (the CPU backend only checks that it lies in the buffer).
    let (rows, inp, out) = linear_backward_dims(dy, x)?;
    let p = backend.ptr(params, DType::F32, "parameters")?;
    let w = param_ptr(p, params, weight, out * inp, "linear weight")?;
    backend.ptr(grads, DType::F32, "gradients")?;
    check_disjoint_slots(&[weight, bias], grads.numel(), "linear")?;
    check_param(bias, out, grads.numel(), "linear bias")?;
    // x sets the activation type; dy, its gradient, must have the same, and so must z.
    let dtype = activation_dtype(x, "linear input")?;
    let dy_ptr = backend.ptr(dy, dtype, "linear dy")?;
    let x_ptr = backend.ptr(x, dtype, "linear input")?;
    let z_ptr = gelu_input
        .map(|z| backend.ptr(z, dtype, "gelu input"))
        .transpose()?;

    let dx = backend.empty(x.shape(), dtype)?;
    // Zero rows: nothing to add (rows_cols counts no rows when in or out is 0, too).
    if rows == 0 {
        return Ok(dx);
    }
    let g = backend.ptr_mut(grads, DType::F32, "gradients")?;
    let dw = param_ptr(g, grads, weight, out * inp, "linear weight")?;
    let db = param_ptr(g, grads, bias, out, "linear bias")?;
    let dx_ptr = backend.ptr(&dx, dtype, "linear dx")?;
    let (w, _shadow) = gemm_weight(backend, params, weight, w, dtype)?;

    // db += column sums of dz: f32 chunk partials, then the chunks in order. dz is dy itself, or
    // dy GELU'(z), written by the partials kernel for the GEMMs below.
    let chunks = RowChunks::new(rows);
    let partials = backend.empty(&[chunks.count, out], DType::F32)?;
    let partials_ptr = backend.ptr(&partials, DType::F32, "linear bias partials")?;
    let (rows_i, out_i) = (int(rows, "linear rows")?, int(out, "linear out features")?);
    let per_chunk = int(chunks.rows_per_chunk, "rows per chunk")?;
    let launch = chunks.launch_config(out, "linear bias gradient")?;
    let (dz, dz_ptr) = match z_ptr {
        Some(z_ptr) => {
            let dz = backend.empty(dy.shape(), dtype)?;
            let dz_ptr = backend.ptr(&dz, dtype, "gelu dx")?;
            let mut args = KernelArgs::new()
                .ptr(dy_ptr)
                .ptr(z_ptr)
                .ptr(dz_ptr)
                .ptr(partials_ptr)
                .i32(rows_i)
                .i32(out_i)
                .i32(per_chunk);
            backend.runtime().launch(
                &kernel_name("linear_gelu_backward_partials", dtype),
                &launch,
                &mut args,
            )?;
            (Some(dz), dz_ptr)
        }
        None => {
            let mut args = KernelArgs::new()
                .ptr(dy_ptr)
                .ptr(partials_ptr)
                .i32(rows_i)
                .i32(out_i)
                .i32(per_chunk);
            backend.runtime().launch(
                &kernel_name("linear_bias_backward_partials", dtype),
                &launch,
                &mut args,
            )?;
            (None, dy_ptr)
        }
    };
    let mut args = KernelArgs::new()
        .ptr(partials_ptr)
        .ptr(db)
        .i32(int(chunks.count, "chunks")?)
        .i32(out_i);
    backend
        .runtime()
        .launch("linear_bias_backward_sum_f32", &per_column(out), &mut args)?;

    // dx[rows, in] = dz[rows, out] W[out, in]; beta = 0, dx starts uninitialised. Every operand
    // has the activation type.
    backend.runtime().gemm(
        &GemmSpec::dense(rows, inp, out, dz_ptr, false, w, false, dx_ptr, 1.0, 0.0)
            .with_types(dtype, dtype, dtype),
    )?;
    // dW[out, in] += dz^T x: dz is stored [rows, out] = [k, m], read transposed; beta = 1 adds
    // into the f32 gradient slice in place (from bf16 operands too: products accumulate in f32).
    backend.runtime().gemm(
        &GemmSpec::dense(out, inp, rows, dz_ptr, true, x_ptr, false, dw, 1.0, 1.0).with_types(
            dtype,
            dtype,
            DType::F32,
        ),
    )?;
    // dz lives until here: the GEMMs above are queued on the stream before it is freed.
    drop(dz);
    Ok(dx)
}
