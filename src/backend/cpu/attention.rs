//! Multi-head attention over variable-length sequences with a key-padding mask, one (sequence,
//! head) pair per rayon task, longest first.
//!
//! For head h of sequence b, with `q, k, v` the `[S, d]` slices of the fused QKV activation:
//! `P = softmax(q k^T / sqrt(d) + mask)`, `out = P v`, where masked keys get -inf. Forward saves
//! only the log-sum-exp of each score row; backward rebuilds `P = exp(s - lse)` from it, the same
//! recomputation FlashAttention does, so the `[S, S]` probabilities are never stored.
//!
//! In bf16 mixed precision the GEMMs take bf16 operands, as the GPU's tensor-core kernels do: q, k,
//! v, dO as stored, and P and dS rounded to bf16 before they are multiplied; the softmax, its
//! statistics and `D` stay f32.

use super::{CpuBackend, activation_like, bf16s, f32s, i32s};
use crate::backend::AttentionOut;
use crate::error::Result;
use crate::ops::attention::AttentionKernels;
use crate::ops::sequences::Sequences;
use crate::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::gemm_bf16::Bf16Gemm;
use super::operand::GemmOperand;

use super::exp::exp_in_place;
use super::gemm::MatLayout;

/// Shapes of one attention call.
pub use crate::ops::checks::AttentionDims as Dims;

/// Where one (sequence, head) pair's rows lie: `len` rows from row `start` of the token axis.
#[derive(Debug, Clone, Copy)]
struct Slice {
    start: usize,
    len: usize,
    head: usize,
}

impl Dims {
    fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Offset of the slice's q (part 0), k (1) or v (2) in the fused QKV tensor.
    fn qkv_offset(&self, at: Slice, part: usize) -> usize {
        at.start * 3 * self.hidden() + part * self.hidden() + at.head * self.head_dim
    }

    /// A head's `[len, d]` slice inside rows of width `3H` (qkv) or `H` (out).
    fn head_view(&self, len: usize, row_width: usize) -> MatLayout {
        MatLayout::strided(len, self.head_dim, row_width)
    }
}

/// Every (sequence, head) pair, longest sequences first so the big tasks start early.
fn slices(dims: &Dims, offsets: &[i32]) -> Vec<Slice> {
    let mut sequences: Vec<(usize, usize)> = offsets
        .windows(2)
        .map(|w| (w[0] as usize, (w[1] - w[0]) as usize))
        .filter(|&(_, len)| len > 0)
        .collect();
    sequences.sort_by_key(|&(_, len)| std::cmp::Reverse(len));
    sequences
        .into_iter()
        .flat_map(|(start, len)| (0..dims.heads).map(move |head| Slice { start, len, head }))
        .collect()
}

/// The key mask of a slice's rows: the given one, or all real.
fn keys_of<'m>(mask: Option<&'m [i32]>, at: Slice, ones: &'m [i32]) -> &'m [i32] {
    match mask {
        Some(m) => &m[at.start..][..at.len],
        None => &ones[..at.len],
    }
}

/// `scores = q k^T / sqrt(d)` for one (sequence, head).
fn scores<T: GemmOperand>(kernel: Bf16Gemm, dims: &Dims, qkv: &[T], at: Slice) -> Vec<f32> {
    let s = at.len;
    let view = dims.head_view(s, 3 * dims.hidden());
    let mut scores = vec![0.0f32; s * s];
    T::matmul(
        kernel,
        &mut scores,
        MatLayout::row_major(s, s),
        &qkv[dims.qkv_offset(at, 0)..],
        view,
        &qkv[dims.qkv_offset(at, 1)..],
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

/// Returns `(out, lse)`: out `[tokens, H]`, lse `[heads, tokens]`. `offsets` delimit the
/// sequences; `mask` (`[tokens]`, 1 = real key) is `None` when every row is real.
pub fn forward<T: GemmOperand>(
    kernel: Bf16Gemm,
    dims: &Dims,
    qkv: &[T],
    offsets: &[i32],
    mask: Option<&[i32]>,
) -> (Vec<f32>, Vec<f32>) {
    let (d, hidden, tokens) = (dims.head_dim, dims.hidden(), dims.tokens);
    let ones = vec![1i32; dims.max_len];
    let work = slices(dims, offsets);
    let per_head: Vec<(Vec<f32>, Vec<f32>)> = work
        .par_iter()
        .map(|&at| {
            let s = at.len;
            let mut p = scores(kernel, dims, qkv, at);
            let lse = softmax_rows(&mut p, keys_of(mask, at, &ones));
            let mut out = vec![0.0f32; s * d];
            T::matmul(
                kernel,
                &mut out,
                MatLayout::row_major(s, d),
                &T::from_f32s(&p),
                MatLayout::row_major(s, s),
                &qkv[dims.qkv_offset(at, 2)..],
                dims.head_view(s, 3 * hidden),
                1.0,
                false,
                false,
            );
            (out, lse)
        })
        .collect();

    let mut out = vec![0.0f32; tokens * hidden];
    let mut lse = vec![0.0f32; dims.heads * tokens];
    for (at, (head_out, head_lse)) in work.iter().zip(per_head) {
        for i in 0..at.len {
            out[(at.start + i) * hidden + at.head * d..][..d]
                .copy_from_slice(&head_out[i * d..][..d]);
        }
        lse[at.head * tokens + at.start..][..at.len].copy_from_slice(&head_lse);
    }
    (out, lse)
}

/// Returns dqkv `[tokens, 3H]`. With `P` rebuilt from the lse and `D_i = sum_c dO[i,c] O[i,c]`:
/// `dV = P^T dO`, `dP = dO V^T`, `dS = P * (dP - D)`, `dQ = dS K / sqrt(d)`, `dK = dS^T Q / sqrt(d)`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: GemmOperand>(
    kernel: Bf16Gemm,
    dims: &Dims,
    dout: &[T],
    qkv: &[T],
    offsets: &[i32],
    mask: Option<&[i32]>,
    out: &[T],
    lse: &[f32],
) -> Vec<f32> {
    let (d, hidden, tokens) = (dims.head_dim, dims.hidden(), dims.tokens);
    let scale = 1.0 / (d as f32).sqrt();
    let ones = vec![1i32; dims.max_len];
    let work = slices(dims, offsets);
    let per_head: Vec<[Vec<f32>; 3]> = work
        .par_iter()
        .map(|&at| {
            let s = at.len;
            let qkv_view = dims.head_view(s, 3 * hidden);
            let out_view = dims.head_view(s, hidden);
            let key_mask = keys_of(mask, at, &ones);
            let row_lse = &lse[at.head * tokens + at.start..][..s];
            let mut p = scores(kernel, dims, qkv, at);
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
            let dout_h = &dout[at.start * hidden + at.head * d..];
            let out_h = &out[at.start * hidden + at.head * d..];
            let q = &qkv[dims.qkv_offset(at, 0)..];
            let k = &qkv[dims.qkv_offset(at, 1)..];
            let v = &qkv[dims.qkv_offset(at, 2)..];

            let mut dv = vec![0.0f32; s * d];
            let sd = MatLayout::row_major(s, d);
            let ss = MatLayout::row_major(s, s);
            let p_operand = T::from_f32s(&p);
            T::matmul(
                kernel,
                &mut dv,
                sd,
                &p_operand,
                ss.t(),
                dout_h,
                out_view,
                1.0,
                false,
                false,
            );
            let mut dp = vec![0.0f32; s * s];
            T::matmul(
                kernel,
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
                    .map(|c| dout_h[i * hidden + c].to_f32() * out_h[i * hidden + c].to_f32())
                    .sum();
                for j in 0..s {
                    // dS overwrites dP in place.
                    dp[i * s + j] = p[i * s + j] * (dp[i * s + j] - di);
                }
            }
            let ds = T::from_f32s(&dp);
            let mut dq = vec![0.0f32; s * d];
            T::matmul(
                kernel, &mut dq, sd, &ds, ss, k, qkv_view, scale, false, false,
            );
            let mut dk = vec![0.0f32; s * d];
            T::matmul(
                kernel,
                &mut dk,
                sd,
                &ds,
                ss.t(),
                q,
                qkv_view,
                scale,
                false,
                false,
            );
            [dq, dk, dv]
        })
        .collect();

    let mut dqkv = vec![0.0f32; tokens * 3 * hidden];
    for (&at, parts) in work.iter().zip(per_head) {
        for (part, grad) in parts.iter().enumerate() {
            let base = dims.qkv_offset(at, part);
            for i in 0..at.len {
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
        sequences: &Sequences,
        dims: Dims,
        out: &mut AttentionOut,
    ) -> Result<()> {
        let (offsets, mask) = (sequences.offsets(), key_mask(sequences)?);
        let (o, lse) = match qkv.dtype() {
            DType::BF16 => forward(self.bf16_gemm, &dims, bf16s(qkv, "qkv")?, offsets, mask),
            _ => forward(self.bf16_gemm, &dims, f32s(qkv, "qkv")?, offsets, mask),
        };
        // The results replace the front's buffers (same shapes and types) instead of being
        // copied in.
        out.out = activation_like(&out.out, o)?;
        out.lse = Tensor::from_f32(out.lse.shape(), lse)?;
        Ok(())
    }

    fn attention_backward_into(
        &self,
        dout: &Tensor,
        qkv: &Tensor,
        sequences: &Sequences,
        out: &Tensor,
        lse: &Tensor,
        dims: Dims,
        dqkv: &mut Tensor,
    ) -> Result<()> {
        let (offsets, mask) = (sequences.offsets(), key_mask(sequences)?);
        let lse = f32s(lse, "attention lse")?;
        let d = match qkv.dtype() {
            DType::BF16 => backward(
                self.bf16_gemm,
                &dims,
                bf16s(dout, "attention dout")?,
                bf16s(qkv, "qkv")?,
                offsets,
                mask,
                bf16s(out, "attention output")?,
                lse,
            ),
            _ => backward(
                self.bf16_gemm,
                &dims,
                f32s(dout, "attention dout")?,
                f32s(qkv, "qkv")?,
                offsets,
                mask,
                f32s(out, "attention output")?,
                lse,
            ),
        };
        *dqkv = activation_like(dqkv, d)?;
        Ok(())
    }
}

/// The sequences' key mask as host values, if they have one.
fn key_mask(sequences: &Sequences) -> Result<Option<&[i32]>> {
    sequences
        .key_mask()
        .map(|m| i32s(m, "attention key mask"))
        .transpose()
}
