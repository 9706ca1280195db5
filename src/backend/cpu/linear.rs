//! `y = x W^T + b` with `W` stored `[out, in]` like `torch.nn.Linear`.

use std::borrow::Cow;

use super::{
    CpuBackend, activation, bf16s, bf16s_mut, cast, f32s, f32s_mut, gelu, param, param16,
    params_mut,
};
use crate::backend::Param;
use crate::error::Result;
use crate::ops::Weights;
use crate::ops::linear::LinearKernels;
use crate::tensor::{DType, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::gemm_bf16::Bf16Gemm;
use super::operand::GemmOperand;

use super::gemm::MatLayout;
use super::gemm_bf16::{MC, MR};
use super::reduce::sum_over_row_blocks;
use super::scratch::with_scratch;
use super::simd::Level;

/// `y = x W^T + b`, `x` `[n, in]` and `y` `[n, out]`: f32 operands, or bf16 ones in mixed
/// precision (`kernel` picks the bf16 GEMM); products and `y` in f32 either way. `parallel` lets
/// the GEMM split across the pool (callers already running one block per thread pass `false`).
pub fn forward<T: GemmOperand>(
    kernel: Bf16Gemm,
    y: &mut [f32],
    x: &[T],
    weight: &[T],
    bias: &[f32],
    inp: usize,
    parallel: bool,
) {
    let out = bias.len();
    let n = x.len() / inp;
    // Start from the bias, then let the GEMM accumulate the product on top.
    if parallel {
        y.par_chunks_mut(out)
            .for_each(|row| row.copy_from_slice(bias));
    } else {
        y.chunks_mut(out).for_each(|row| row.copy_from_slice(bias));
    }
    T::matmul(
        kernel,
        y,
        MatLayout::row_major(n, out),
        x,
        MatLayout::row_major(n, inp),
        weight,
        MatLayout::row_major(out, inp).t(),
        1.0,
        true,
        parallel,
    );
}

/// Rows per task when a bf16 product is computed a block of rows at a time: at most the GEMM's
/// own row block `MC` (whose packed A stays in L2), a multiple of the microkernel's `MR` rows, and
/// a task count that divides evenly among the threads.
fn row_block(n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let tasks = n.div_ceil(MC).div_ceil(threads) * threads;
    n.div_ceil(tasks.max(1)).div_ceil(MR).max(1) * MR
}

/// The bf16 `y = round(x W^T + b)` (and with `gelu`, also `gelu = round(GELU(y))` of `y` as
/// stored, as the GPU's pass after its GEMM computes it), a block of rows per task. Each task's
/// f32 product lives in its worker's scratch (L2-sized) and is rounded straight into `y`: no
/// `[n, out]` f32 tensor is allocated or streamed through memory. Every task packs the weight
/// again, which costs `1 / rows` of its products.
#[allow(clippy::too_many_arguments)]
fn forward_bf16_blocks(
    kernel: Bf16Gemm,
    y: &mut [bf16],
    gelu: Option<&mut [bf16]>,
    x: &[bf16],
    weight: &[bf16],
    bias: &[f32],
    inp: usize,
) {
    let out = bias.len();
    let rows = row_block(y.len() / out);
    let level = Level::best();
    // One block: the f32 product in this thread's scratch, rounded into `y`; then, for the
    // feed-forward layer, GELU of `y` as stored.
    let block = |y: &mut [bf16], g: Option<&mut [bf16]>, x: &[bf16]| {
        with_scratch([y.len(), y.len()], |[acc, activated]| {
            forward(kernel, acc, x, weight, bias, inp, false);
            cast::narrow_slice(level, y, acc);
            if let Some(g) = g {
                cast::widen_slice(level, acc, y);
                gelu::forward_chunk(level, activated, acc);
                cast::narrow_slice(level, g, activated);
            }
        })
    };
    match gelu {
        None => y
            .par_chunks_mut(rows * out)
            .zip(x.par_chunks(rows * inp))
            .for_each(|(y, x)| block(y, None, x)),
        Some(g) => y
            .par_chunks_mut(rows * out)
            .zip(g.par_chunks_mut(rows * out))
            .zip(x.par_chunks(rows * inp))
            .for_each(|((y, g), x)| block(y, Some(g), x)),
    }
}

/// The bf16 `dx = round(dz W)`, a block of rows per task as in [`forward_bf16_blocks`].
fn input_gradient_bf16_blocks(
    kernel: Bf16Gemm,
    dx: &mut [bf16],
    dz: &[bf16],
    weight: &[bf16],
    inp: usize,
) {
    let out = weight.len() / inp;
    let rows = row_block(dx.len() / inp);
    let level = Level::best();
    dx.par_chunks_mut(rows * inp)
        .zip(dz.par_chunks(rows * out))
        .for_each(|(dx, dz)| {
            with_scratch([dx.len()], |[acc]| {
                input_gradient(kernel, acc, dz, weight, inp, false);
                cast::narrow_slice(level, dx, acc);
            })
        });
}

/// `dx = dz W`, `dW += dz^T x`, `db += sum_rows dz`, with `dz` the layer's output gradient (in
/// mixed precision rounded to bf16, the GEMM operand it is on the GPU); `db` sums in f32.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: GemmOperand>(
    kernel: Bf16Gemm,
    dx: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dz: &[T],
    x: &[T],
    weight: &[T],
) {
    let n = dz.len() / dbias.len();
    let inp = x.len() / n.max(1);
    input_gradient(kernel, dx, dz, weight, inp, true);
    parameter_gradients(kernel, dweight, dbias, dz, x);
}

/// `dx = dz W`: `dx` `[n, in]`, `dz` `[n, out]`, `W` `[out, in]`.
fn input_gradient<T: GemmOperand>(
    kernel: Bf16Gemm,
    dx: &mut [f32],
    dz: &[T],
    weight: &[T],
    inp: usize,
    parallel: bool,
) {
    let (n, out) = (dx.len() / inp.max(1), weight.len() / inp.max(1));
    T::matmul(
        kernel,
        dx,
        MatLayout::row_major(n, inp),
        dz,
        MatLayout::row_major(n, out),
        weight,
        MatLayout::row_major(out, inp),
        1.0,
        false,
        parallel,
    );
}

/// `dW += dz^T x` and `db += sum_rows dz`.
fn parameter_gradients<T: GemmOperand>(
    kernel: Bf16Gemm,
    dweight: &mut [f32],
    dbias: &mut [f32],
    dz: &[T],
    x: &[T],
) {
    let out = dbias.len();
    let n = dz.len() / out;
    let inp = x.len() / n.max(1);
    T::matmul(
        kernel,
        dweight,
        MatLayout::row_major(out, inp),
        dz,
        MatLayout::row_major(n, out).t(),
        x,
        MatLayout::row_major(n, inp),
        1.0,
        true,
        true,
    );
    add_column_sums(dbias, dz, n);
}

/// `db += sum_rows dz`, in f32 and fixed row blocks (see `reduce`).
fn add_column_sums<T: GemmOperand>(dbias: &mut [f32], dz: &[T], n: usize) {
    let out = dbias.len();
    let db = sum_over_row_blocks(n, out, |first, count, partial| {
        for row in dz[first * out..(first + count) * out].chunks(out) {
            partial
                .iter_mut()
                .zip(row)
                .for_each(|(a, d)| *a += d.to_f32());
        }
    });
    dbias.iter_mut().zip(&db).for_each(|(g, d)| *g += d);
}

impl LinearKernels for CpuBackend {
    fn linear_forward_into(
        &self,
        x: &Tensor,
        weights: Weights<'_>,
        weight: Param,
        bias: Param,
        y: &mut Tensor,
    ) -> Result<()> {
        let inp = x.shape().last().copied().unwrap_or(0);
        let b = param(f32s(weights.values, "parameters")?, bias);
        if x.dtype() == DType::BF16 {
            let w = param16(bf16s(weights.gemm, "GEMM weights")?, weight);
            let x = bf16s(x, "linear input")?;
            // The bias and the product in f32, rounded once, a block of rows at a time.
            let y = bf16s_mut(y, "linear output")?;
            forward_bf16_blocks(self.bf16_gemm, y, None, x, w, b, inp);
            return Ok(());
        }
        forward(
            self.bf16_gemm,
            f32s_mut(y, "linear output")?,
            f32s(x, "linear input")?,
            param(f32s(weights.gemm, "GEMM weights")?, weight),
            b,
            inp,
            true,
        );
        Ok(())
    }

    fn linear_gelu_forward_into(
        &self,
        x: &Tensor,
        weights: Weights<'_>,
        weight: Param,
        bias: Param,
        z: &mut Tensor,
        y: &mut Tensor,
    ) -> Result<()> {
        if x.dtype() == DType::BF16 {
            // z = x W^T + b in f32, rounded into z; y = GELU(z) from z as stored.
            let inp = x.shape().last().copied().unwrap_or(0);
            let b = param(f32s(weights.values, "parameters")?, bias);
            let w = param16(bf16s(weights.gemm, "GEMM weights")?, weight);
            let x = bf16s(x, "linear input")?;
            let (z, y) = (bf16s_mut(z, "linear output")?, bf16s_mut(y, "gelu output")?);
            forward_bf16_blocks(self.bf16_gemm, z, Some(y), x, w, b, inp);
            return Ok(());
        }
        self.linear_forward_into(x, weights, weight, bias, z)?;
        gelu::forward(f32s_mut(y, "gelu output")?, f32s(z, "linear output")?);
        Ok(())
    }

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
        if x.dtype() == DType::BF16 {
            let dy = bf16s(dy, "linear dy")?;
            // dz = dy GELU'(z) rounded to bf16, a cache-sized block at a time; else dy itself.
            let dz = match gelu_input {
                Some(z) => {
                    let mut dz = vec![bf16::ZERO; dy.len()];
                    let z = bf16s(z, "gelu input")?;
                    let level = Level::best();
                    cast::map_rows(&mut dz, 1, [dy, z], |_, dz, [dy, z]| {
                        gelu::backward_chunk(level, dz, dy, z)
                    });
                    Cow::Owned(dz)
                }
                None => Cow::Borrowed(dy),
            };
            let [dw, db] = params_mut(f32s_mut(grads, "gradients")?, [weight, bias]);
            let w = param16(bf16s(weights.gemm, "GEMM weights")?, weight);
            let inp = x.shape().last().copied().unwrap_or(0);
            let x = bf16s(x, "linear input")?;
            let dx = bf16s_mut(dx, "linear dx")?;
            input_gradient_bf16_blocks(self.bf16_gemm, dx, &dz, w, inp);
            parameter_gradients(self.bf16_gemm, dw, db, &dz, x);
            return Ok(());
        }
        let dy = activation(dy, "linear dy")?;
        // dz = dy GELU'(z) for the feed-forward layer's GELU, else dy itself.
        let dz = match gelu_input {
            Some(z) => {
                let mut dz = vec![0.0f32; dy.len()];
                gelu::backward(&mut dz, &dy, &activation(z, "gelu input")?);
                Cow::Owned(dz)
            }
            None => dy,
        };
        let [dw, db] = params_mut(f32s_mut(grads, "gradients")?, [weight, bias]);
        backward(
            self.bf16_gemm,
            f32s_mut(dx, "linear dx")?,
            dw,
            db,
            &dz,
            f32s(x, "linear input")?,
            param(f32s(weights.gemm, "GEMM weights")?, weight),
        );
        Ok(())
    }
}
