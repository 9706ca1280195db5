//! `y = x W^T + b` with `W` stored `[out, in]` like `torch.nn.Linear`.

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
