//! `y = x W^T + b` with `W` stored `[out, in]` like `torch.nn.Linear`.

use super::{CpuBackend, f32s, f32s_mut, gelu, param, params_mut};
use crate::backend::Param;
use crate::error::Result;
use crate::ops::Weights;
use crate::ops::linear::LinearKernels;
use crate::tensor::Tensor;
use rayon::prelude::*;

use super::gemm::{MatLayout, matmul};
use super::reduce::sum_over_row_blocks;

/// `x`: `[n, in]`, `y`: `[n, out]`.
pub fn forward(y: &mut [f32], x: &[f32], weight: &[f32], bias: &[f32], inp: usize) {
    let out = bias.len();
    let n = x.len() / inp;
    // Start from the bias, then let the GEMM accumulate the product on top.
    y.par_chunks_mut(out)
        .for_each(|row| row.copy_from_slice(bias));
    matmul(
        y,
        MatLayout::row_major(n, out),
        x,
        MatLayout::row_major(n, inp),
        weight,
        MatLayout::row_major(out, inp).t(),
        1.0,
        true,
        true,
    );
}

/// `dx = dy W`, `dW += dy^T x`, `db += sum_rows dy`.
pub fn backward(
    dx: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dy: &[f32],
    x: &[f32],
    weight: &[f32],
) {
    let out = dbias.len();
    let n = dy.len() / out;
    let inp = x.len() / n.max(1);
    matmul(
        dx,
        MatLayout::row_major(n, inp),
        dy,
        MatLayout::row_major(n, out),
        weight,
        MatLayout::row_major(out, inp),
        1.0,
        false,
        true,
    );
    matmul(
        dweight,
        MatLayout::row_major(out, inp),
        dy,
        MatLayout::row_major(n, out).t(),
        x,
        MatLayout::row_major(n, inp),
        1.0,
        true,
        true,
    );
    let db = sum_over_row_blocks(n, out, |first, count, partial| {
        for row in dy[first * out..(first + count) * out].chunks(out) {
            partial.iter_mut().zip(row).for_each(|(a, d)| *a += d);
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
        forward(
            f32s_mut(y, "linear output")?,
            f32s(x, "linear input")?,
            param(f32s(weights.gemm, "GEMM weights")?, weight),
            param(f32s(weights.values, "parameters")?, bias),
            inp,
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
        let dy = f32s(dy, "linear dy")?;
        // dz = dy GELU'(z) for the feed-forward layer's GELU, else dy itself.
        let dz = match gelu_input {
            Some(z) => {
                let mut dz = vec![0.0f32; dy.len()];
                gelu::backward(&mut dz, dy, f32s(z, "gelu input")?);
                std::borrow::Cow::Owned(dz)
            }
            None => std::borrow::Cow::Borrowed(dy),
        };
        let w = param(f32s(weights.gemm, "GEMM weights")?, weight);
        let [dw, db] = params_mut(f32s_mut(grads, "gradients")?, [weight, bias]);
        backward(
            f32s_mut(dx, "linear dx")?,
            dw,
            db,
            &dz,
            f32s(x, "linear input")?,
            w,
        );
        Ok(())
    }
}
