//! Launch wrappers for `kernels/linear.cu`: `y = x W^T + b` with `W` stored `[out, in]` like
//! `torch.nn.Linear`. The products are GEMMs on the runtime (cuBLASLt on a GPU), the forward's bias
//! added by the GEMM's bias epilogue; the kernels sum `dy` down its columns for `db`. The
//! feed-forward block's first layer fuses the bias and GELU: after the GEMM in the forward
//! (`linear_bias_gelu`), and with db's column sums in the backward (`linear_gelu_backward_partials`).
//!
//! f32 or bf16 activations: x (and dy) set the type of y (and dx). With bf16 activations the GEMMs
//! read `W` from the bf16 copy of the weights ([`Weights::gemm`]) and accumulate in f32; `dW` and
//! `db` go into the f32 gradient buffer, `dW` straight from a GEMM with bf16 operands and an f32 C.
//!
//! Also what the other parameter-gradient wrappers share: the fixed row chunks of the deterministic
//! column sums.

use super::layernorm::rows_features;
use super::{int, kernel_name, slot};
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{DevicePtr, KernelArgs, LaunchConfig};
use crate::backend::cuda::runtime::GemmSpec;
use crate::backend::{Backend, Param};
use crate::error::{Error, Result};
use crate::ops::Weights;
use crate::ops::linear::LinearKernels;
use crate::tensor::{DType, Tensor};

/// Most blocks the row kernels launch; their blocks loop over the remaining rows.
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

/// Blocks over rows (capped; the kernels loop over the rest), threads over a row's columns.
fn per_row(rows: usize, columns: usize) -> LaunchConfig {
    let threads = columns.next_multiple_of(32).min(THREADS as usize) as u32;
    LaunchConfig::linear(rows.min(MAX_BLOCKS) as u32, threads, 0)
}

/// A forward GEMM `x W^T` of checked operands, ready to run into an output.
struct Gemm {
    rows: usize,
    inp: usize,
    out_features: usize,
    dtype: DType,
    x: DevicePtr,
    /// `W`'s slot of the GEMM copy of the weights (f32, or bf16 in mixed precision).
    w: DevicePtr,
    /// `b`'s slot of the f32 parameters.
    b: DevicePtr,
}

impl Gemm {
    fn new(
        backend: &GpuBackend,
        x: &Tensor,
        weights: Weights<'_>,
        weight: Param,
        bias: Param,
        out_features: usize,
    ) -> Result<Self> {
        let (rows, inp) = rows_features(x);
        let dtype = x.dtype();
        Ok(Gemm {
            rows,
            inp,
            out_features,
            dtype,
            x: backend.ptr(x)?,
            w: slot(backend.ptr(weights.gemm)?, weight, dtype),
            b: slot(backend.ptr(weights.values)?, bias, DType::F32),
        })
    }

    /// `y = x W^T (+ bias)`: W is [out, in], so op(B) = W^T is W read transposed. Every operand
    /// has the activation type; the bias is f32.
    fn run(&self, backend: &GpuBackend, y: DevicePtr, bias: Option<DevicePtr>) -> Result<()> {
        let spec = GemmSpec::dense(
            self.rows,
            self.out_features,
            self.inp,
            self.x,
            false,
            self.w,
            true,
            y,
            1.0,
            0.0,
        )
        .with_types(self.dtype, self.dtype, self.dtype);
        backend.runtime().gemm(&match bias {
            Some(b) => spec.with_bias(b),
            None => spec,
        })
    }
}

impl LinearKernels for GpuBackend {
    fn linear_forward_into(
        &self,
        x: &Tensor,
        weights: Weights<'_>,
        weight: Param,
        bias: Param,
        y: &mut Tensor,
    ) -> Result<()> {
        let out_features = y.shape().last().copied().unwrap_or(0);
        let g = Gemm::new(self, x, weights, weight, bias, out_features)?;
        // y = x W^T + b in one GEMM: the bias is added by cuBLASLt's bias epilogue (in f32, before
        // a bf16 y is rounded), so y is written once and never read back as C.
        g.run(self, self.ptr_mut(y)?, Some(g.b))
    }

    /// The GEMM without the bias, then one pass that adds the bias and applies GELU
    /// (`linear_bias_gelu`).
    fn linear_gelu_forward_into(
        &self,
        x: &Tensor,
        weights: Weights<'_>,
        weight: Param,
        bias: Param,
        z: &mut Tensor,
        y: &mut Tensor,
    ) -> Result<()> {
        let out_features = z.shape().last().copied().unwrap_or(0);
        let g = Gemm::new(self, x, weights, weight, bias, out_features)?;
        // The GEMM without the bias, which the GELU pass adds: cuBLASLt's GELU epilogue is the
        // tanh approximation, and the model's GELU is the exact erf form, so the bias and GELU stay
        // in one kernel of ours (`linear_bias_gelu`), reading z once.
        let z_ptr = self.ptr_mut(z)?;
        g.run(self, z_ptr, None)?;
        let mut args = KernelArgs::new()
            .ptr(g.b)
            .ptr(z_ptr)
            .ptr(self.ptr_mut(y)?)
            .i32(int(g.rows, "linear rows")?)
            .i32(int(out_features, "linear out features")?);
        self.runtime().launch(
            &kernel_name("linear_bias_gelu", g.dtype),
            &per_row(g.rows, out_features),
            &mut args,
        )
    }

    /// The linear backward from `dy`, or with `gelu_input = Some(z)` from `dz = dy GELU'(z)`, which
    /// the bias-gradient kernel computes and stores on its way.
    fn linear_backward_into(
        &self,
        dy: &Tensor,
        gelu_input: Option<&Tensor>,
        x: &Tensor,
        weights: Weights<'_>,
        grads: &mut Tensor,
        weight: Param,
        bias: Param,
        dx: &mut Tensor,
    ) -> Result<()> {
        let (rows, inp) = rows_features(x);
        let out = dy.shape().last().copied().unwrap_or(0);
        let dtype = x.dtype();
        let (dy_ptr, x_ptr) = (self.ptr(dy)?, self.ptr(x)?);
        let w = slot(self.ptr(weights.gemm)?, weight, dtype);
        let g = self.ptr_mut(grads)?;
        let (dw, db) = (slot(g, weight, DType::F32), slot(g, bias, DType::F32));
        let dx_ptr = self.ptr_mut(dx)?;

        // db += column sums of dz: f32 chunk partials, then the chunks in order. dz is dy itself, or
        // dy GELU'(z), written by the partials kernel for the GEMMs below.
        let chunks = RowChunks::new(rows);
        let partials = self.alloc(&[chunks.count, out], DType::F32)?;
        let partials_ptr = self.ptr(&partials)?;
        let (rows_i, out_i) = (int(rows, "linear rows")?, int(out, "linear out features")?);
        let per_chunk = int(chunks.rows_per_chunk, "rows per chunk")?;
        let launch = chunks.launch_config(out, "linear bias gradient")?;
        let (dz, dz_ptr) = match gelu_input {
            Some(z) => {
                let dz = self.alloc(dy.shape(), dtype)?;
                let dz_ptr = self.ptr(&dz)?;
                let mut args = KernelArgs::new()
                    .ptr(dy_ptr)
                    .ptr(self.ptr(z)?)
                    .ptr(dz_ptr)
                    .ptr(partials_ptr)
                    .i32(rows_i)
                    .i32(out_i)
                    .i32(per_chunk);
                self.runtime().launch(
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
                self.runtime().launch(
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
        self.runtime()
            .launch("linear_bias_backward_sum_f32", &per_column(out), &mut args)?;

        // dx[rows, in] = dz[rows, out] W[out, in]; beta = 0, dx starts uninitialised. Every operand
        // has the activation type.
        self.runtime().gemm(
            &GemmSpec::dense(rows, inp, out, dz_ptr, false, w, false, dx_ptr, 1.0, 0.0)
                .with_types(dtype, dtype, dtype),
        )?;
        // dW[out, in] += dz^T x: dz is stored [rows, out] = [k, m], read transposed; beta = 1 adds
        // into the f32 gradient slice in place (from bf16 operands too: products accumulate in f32).
        self.runtime().gemm(
            &GemmSpec::dense(out, inp, rows, dz_ptr, true, x_ptr, false, dw, 1.0, 1.0).with_types(
                dtype,
                dtype,
                DType::F32,
            ),
        )?;
        // dz and the partials live until here: the work above is queued on the stream before they
        // are freed, and a freed buffer is reused only by work queued after it.
        drop((dz, partials));
        Ok(())
    }
}
