//! Multi-head attention with a key-padding mask, one (sequence, head) pair per rayon task.
//!
//! For head h of sequence b, with `q, k, v` the `[S, d]` slices of the fused QKV activation:
//! `P = softmax(q k^T / sqrt(d) + mask)`, `out = P v`, where masked keys get -inf. Forward saves
//! only the log-sum-exp of each score row; backward rebuilds `P = exp(s - lse)` from it, the same
//! recomputation FlashAttention does, so the `[S, S]` probabilities are never stored.

use super::{CpuBackend, f32s, i32s};
use crate::backend::AttentionOut;
use crate::error::Result;
use crate::ops::attention::AttentionKernels;
use crate::tensor::Tensor;
use rayon::prelude::*;

use super::exp::exp_in_place;
use super::gemm::{MatLayout, matmul};

/// Shapes of one attention call.
pub use crate::ops::checks::AttentionDims as Dims;

impl Dims {
    fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Offset of head `h`'s q (part 0), k (1) or v (2) in sequence `b` of the fused QKV tensor.
    fn qkv_offset(&self, b: usize, h: usize, part: usize) -> usize {
        b * self.seq * 3 * self.hidden() + part * self.hidden() + h * self.head_dim
    }

    /// Head h's `[S, d]` slice inside rows of width `3H` (qkv) or `H` (out).
    fn head_view(&self, row_width: usize) -> MatLayout {
        MatLayout::strided(self.seq, self.head_dim, row_width)
    }
}

/// `scores = q k^T / sqrt(d)` for one (sequence, head).
fn scores(dims: &Dims, qkv: &[f32], b: usize, h: usize) -> Vec<f32> {
    let s = dims.seq;
    let view = dims.head_view(3 * dims.hidden());
    let mut scores = vec![0.0f32; s * s];
    matmul(
        &mut scores,
        MatLayout::row_major(s, s),
        &qkv[dims.qkv_offset(b, h, 0)..],
        view,
        &qkv[dims.qkv_offset(b, h, 1)..],
        view.t(),
        1.0 / (dims.head_dim as f32).sqrt(),
        false,
        false,
    );
    scores
}

/// Turns score rows into probabilities in place and returns each row's log-sum-exp. Masked keys
/// get probability 0; a row with no valid key gets all zeros and `lse = -inf`.
fn softmax_rows(scores: &mut [f32], key_mask: &[i32]) -> Vec<f32> {
    let s = key_mask.len();
    scores
        .chunks_mut(s)
        .map(|row| {
            // Plain comparisons rather than f32::max keep these loops simple for the compiler.
            let mut max = f32::NEG_INFINITY;
            for (&x, &m) in row.iter().zip(key_mask) {
                if m != 0 && x > max {
                    max = x;
                }
            }
            if max == f32::NEG_INFINITY {
                row.fill(0.0);
                return f32::NEG_INFINITY;
            }
            // Padding keys get e^-inf = 0; the exponentials run as one vectorised pass.
            for (x, &m) in row.iter_mut().zip(key_mask) {
                *x = if m != 0 { *x - max } else { f32::NEG_INFINITY };
            }
            exp_in_place(row);
            let sum: f32 = row.iter().sum();
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|x| *x *= inv);
            max + sum.ln()
        })
        .collect()
}

/// Returns `(out, lse)`: out `[B*S, H]`, lse `[B, heads, S]`.
pub fn forward(dims: &Dims, qkv: &[f32], mask: &[i32]) -> (Vec<f32>, Vec<f32>) {
    if dims.seq == 0 || dims.batch == 0 {
        return (Vec::new(), Vec::new()); // nothing to attend to (the slices below need a row)
    }
    let (s, d, hidden) = (dims.seq, dims.head_dim, dims.hidden());
    let per_head: Vec<(Vec<f32>, Vec<f32>)> = (0..dims.batch * dims.heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / dims.heads, bh % dims.heads);
            let mut p = scores(dims, qkv, b, h);
            let lse = softmax_rows(&mut p, &mask[b * s..][..s]);
            let mut out = vec![0.0f32; s * d];
            matmul(
                &mut out,
                MatLayout::row_major(s, d),
                &p,
                MatLayout::row_major(s, s),
                &qkv[dims.qkv_offset(b, h, 2)..],
                dims.head_view(3 * hidden),
                1.0,
                false,
                false,
            );
            (out, lse)
        })
        .collect();

    let mut out = vec![0.0f32; dims.batch * s * hidden];
    let mut lse = Vec::with_capacity(dims.batch * dims.heads * s);
    for (bh, (head_out, head_lse)) in per_head.into_iter().enumerate() {
        let (b, h) = (bh / dims.heads, bh % dims.heads);
        for i in 0..s {
            out[(b * s + i) * hidden + h * d..][..d].copy_from_slice(&head_out[i * d..][..d]);
        }
        lse.extend_from_slice(&head_lse);
    }
    (out, lse)
}

/// Returns dqkv `[B*S, 3H]`. With `P` rebuilt from the lse and `D_i = sum_c dO[i,c] O[i,c]`:
/// `dV = P^T dO`, `dP = dO V^T`, `dS = P * (dP - D)`, `dQ = dS K / sqrt(d)`, `dK = dS^T Q / sqrt(d)`.
pub fn backward(
    dims: &Dims,
    dout: &[f32],
    qkv: &[f32],
    mask: &[i32],
    out: &[f32],
    lse: &[f32],
) -> Vec<f32> {
    if dims.seq == 0 || dims.batch == 0 {
        return Vec::new();
    }
    let (s, d, hidden) = (dims.seq, dims.head_dim, dims.hidden());
    let scale = 1.0 / (d as f32).sqrt();
    let qkv_view = dims.head_view(3 * hidden);
    let out_view = dims.head_view(hidden);
    let per_head: Vec<[Vec<f32>; 3]> = (0..dims.batch * dims.heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / dims.heads, bh % dims.heads);
            let key_mask = &mask[b * s..][..s];
            let row_lse = &lse[bh * s..][..s];
            let mut p = scores(dims, qkv, b, h);
            for (row, &l) in p.chunks_mut(s).zip(row_lse) {
                for (x, &m) in row.iter_mut().zip(key_mask) {
                    *x = if m != 0 && l != f32::NEG_INFINITY {
                        *x - l
                    } else {
                        f32::NEG_INFINITY
                    };
                }
                exp_in_place(row);
            }
            let dout_h = &dout[b * s * hidden + h * d..];
            let out_h = &out[b * s * hidden + h * d..];
            let q = &qkv[dims.qkv_offset(b, h, 0)..];
            let k = &qkv[dims.qkv_offset(b, h, 1)..];
            let v = &qkv[dims.qkv_offset(b, h, 2)..];

            let mut dv = vec![0.0f32; s * d];
            let sd = MatLayout::row_major(s, d);
            let ss = MatLayout::row_major(s, s);
            matmul(&mut dv, sd, &p, ss.t(), dout_h, out_view, 1.0, false, false);
            let mut dp = vec![0.0f32; s * s];
            matmul(
                &mut dp,
                ss,
                dout_h,
                out_view,
                v,
                qkv_view.t(),
                1.0,
                false,
                false,
            );
            for i in 0..s {
                let di: f32 = (0..d)
                    .map(|c| dout_h[i * hidden + c] * out_h[i * hidden + c])
                    .sum();
                for j in 0..s {
                    // dS overwrites dP in place.
                    dp[i * s + j] = p[i * s + j] * (dp[i * s + j] - di);
                }
            }
            let mut dq = vec![0.0f32; s * d];
            matmul(&mut dq, sd, &dp, ss, k, qkv_view, scale, false, false);
            let mut dk = vec![0.0f32; s * d];
            matmul(&mut dk, sd, &dp, ss.t(), q, qkv_view, scale, false, false);
            [dq, dk, dv]
        })
        .collect();

    let mut dqkv = vec![0.0f32; dims.batch * s * 3 * hidden];
    for (bh, parts) in per_head.into_iter().enumerate() {
        let (b, h) = (bh / dims.heads, bh % dims.heads);
        for (part, grad) in parts.iter().enumerate() {
            let base = dims.qkv_offset(b, h, part);
            for i in 0..s {
                dqkv[base + i * 3 * hidden..][..d].copy_from_slice(&grad[i * d..][..d]);
            }
        }
    }
    dqkv
}

impl AttentionKernels for CpuBackend {
    fn attention_forward_into(
        &self,
        qkv: &Tensor,
        mask: &Tensor,
        dims: Dims,
        out: &mut AttentionOut,
    ) -> Result<()> {
        let (o, lse) = forward(&dims, f32s(qkv, "qkv")?, i32s(mask, "attention mask")?);
        // The results replace the front's buffers (same shapes) instead of being copied in.
        out.out = Tensor::from_f32(out.out.shape(), o)?;
        out.lse = Tensor::from_f32(out.lse.shape(), lse)?;
        Ok(())
    }

    fn attention_backward_into(
        &self,
        dout: &Tensor,
        qkv: &Tensor,
        mask: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        dims: Dims,
        dqkv: &mut Tensor,
    ) -> Result<()> {
        let d = backward(
            &dims,
            f32s(dout, "attention dout")?,
            f32s(qkv, "qkv")?,
            i32s(mask, "attention mask")?,
            f32s(out, "attention output")?,
            f32s(lse, "attention lse")?,
        );
        *dqkv = Tensor::from_f32(dqkv.shape(), d)?;
        Ok(())
    }
}
