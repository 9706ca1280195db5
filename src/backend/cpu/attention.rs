//! Multi-head attention over variable-length sequences with a key-padding mask.
//!
//! For head h of sequence b, with `q, k, v` the `[S, d]` slices of the fused QKV activation:
//! `P = softmax(q k^T / sqrt(d) + mask)`, `out = P v`, where masked keys get -inf. Forward saves
//! only the log-sum-exp of each score row; backward rebuilds `P = exp(s - lse)` from it, the same
//! recomputation FlashAttention does, so the `[S, S]` probabilities are never stored.
//!
//! The work is cut as FlashAttention-2 cuts it, for a CPU's caches instead of shared memory:
//! - Forward runs one task per block of `QUERY_BLOCK` query rows of a sequence, over every head:
//!   scores `[96, S]` (192 KiB in f32 at S = 512) stay in L2 from the `q k^T` GEMM through the
//!   softmax to the `P v` GEMM, and the task writes its rows of `out` in place. A sequence of 512
//!   gives six tasks, so even a batch of one keeps every core busy.
//! - Backward runs one task per (sequence, head), walking its query blocks: `dV` and `dK` sum over
//!   every query, so they stay in one task's hands (no atomics), and the `[96, S]` P and dP blocks
//!   again stay in L2 instead of being `[S, S]` matrices in memory.
//! - Score, P and dP blocks live in each thread's kept scratch ([`super::scratch`]), so the hot
//!   loop allocates nothing.
//! - The softmax, the rebuilt P and dS are vector loops compiled per instruction set
//!   ([`super::simd`]); the GEMMs run at full vector width on either operand type.
//!
//! In bf16 mixed precision the GEMMs take bf16 operands, as the GPU's tensor-core kernels do: q, k,
//! v, dO as stored, and P and dS rounded to bf16 before they are multiplied; the softmax, its
//! statistics and `D` stay f32.

use super::{CpuBackend, bf16s, bf16s_mut, f32s, f32s_mut, i32s};
use crate::backend::AttentionOut;
use crate::error::Result;
use crate::ops::attention::AttentionKernels;
use crate::ops::sequences::Sequences;
use crate::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::exp::exp;
use super::gemm::MatLayout;
use super::gemm_bf16::Bf16Gemm;
use super::operand::GemmOperand;
use super::row_exp::row_max;
use super::scratch::with_scratch;
use super::simd::{Level, fold_lanes, multiversion};

/// Shapes of one attention call.
pub use crate::ops::checks::AttentionDims as Dims;

/// Query rows per block: a multiple of the bf16 GEMM's 12-row register tile, and small enough
/// that a `[QUERY_BLOCK, 512]` f32 score block (192 KiB) and its bf16 copy sit in L2 together.
const QUERY_BLOCK: usize = 96;

/// Lanes of the softmax's partial sums (one AVX-512 register of f32).
const LANES: usize = 16;

/// One (sequence, head) pair of the backward pass: `len` rows from row `start` of the token axis.
#[derive(Debug, Clone, Copy)]
struct Slice {
    start: usize,
    len: usize,
    head: usize,
}

/// One forward task: query rows `first..first + rows` of the sequence of `len` rows at `start`.
#[derive(Debug, Clone, Copy)]
struct QueryBlock {
    start: usize,
    len: usize,
    first: usize,
    rows: usize,
}

impl QueryBlock {
    /// The block's first row on the token axis.
    fn row(&self) -> usize {
        self.start + self.first
    }
}

impl Dims {
    fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Offset of row `row`'s q (part 0), k (1) or v (2) for `head` in the fused QKV tensor.
    fn qkv_at(&self, row: usize, head: usize, part: usize) -> usize {
        row * 3 * self.hidden() + part * self.hidden() + head * self.head_dim
    }

    /// `rows` rows of one head's q, k or v: `[rows, d]` inside rows of width `3H`.
    fn qkv_rows(&self, rows: usize) -> MatLayout {
        MatLayout::strided(rows, self.head_dim, 3 * self.hidden())
    }

    /// `rows` rows of one head's slice of `out` or `dout`: `[rows, d]` inside rows of width `H`.
    fn out_rows(&self, rows: usize) -> MatLayout {
        MatLayout::strided(rows, self.head_dim, self.hidden())
    }
}

/// The non-empty sequences, `(start, len)`, in row order.
fn sequences(offsets: &[i32]) -> impl Iterator<Item = (usize, usize)> + '_ {
    offsets
        .windows(2)
        .map(|w| (w[0] as usize, (w[1] - w[0]) as usize))
        .filter(|&(_, len)| len > 0)
}

/// Every sequence's query blocks, in row order.
fn query_blocks(offsets: &[i32]) -> Vec<QueryBlock> {
    sequences(offsets)
        .flat_map(|(start, len)| {
            (0..len).step_by(QUERY_BLOCK).map(move |first| QueryBlock {
                start,
                len,
                first,
                rows: QUERY_BLOCK.min(len - first),
            })
        })
        .collect()
}

/// Every (sequence, head) pair, longest sequences first so the big tasks start early.
fn slices(dims: &Dims, offsets: &[i32]) -> Vec<Slice> {
    let mut sequences: Vec<(usize, usize)> = sequences(offsets).collect();
    sequences.sort_by_key(|&(_, len)| std::cmp::Reverse(len));
    sequences
        .into_iter()
        .flat_map(|(start, len)| (0..dims.heads).map(move |head| Slice { start, len, head }))
        .collect()
}

/// The key mask of a sequence's rows (1 = real key), or empty when every key is real.
fn keys_of(mask: Option<&[i32]>, start: usize, len: usize) -> &[i32] {
    mask.map_or(&[], |m| &m[start..][..len])
}

/// `x[i] = e^(x[i] - max)` (0 for -inf), returning their sum: f32 terms added in f64 lanes
/// (folded pairwise), so the sum is as accurate as its terms whatever the row's length. Two plain
/// passes over a row that sits in L1, because each vectorises on its own where one fused loop over
/// 16-lane chunks does not.
#[inline(always)]
fn exp_shifted_in_place(row: &mut [f32], max: f32) -> f32 {
    row.iter_mut().for_each(|x| *x = exp(*x - max));
    let mut acc = [0.0f64; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] += c[l] as f64;
        }
    }
    for (l, &x) in chunks.remainder().iter().enumerate() {
        acc[l] += x as f64;
    }
    fold_lanes(acc) as f32
}

multiversion! {
    /// Each `width`-long row of `scores` becomes its softmax over the real keys (`keys[j] != 0`,
    /// or every key when `keys` is empty), and `lse[r]` the row's log-sum-exp. Masked keys get
    /// probability exactly 0; a row with no real key becomes zeros with `lse = -inf`.
    fn softmax_rows(scores: &mut [f32], width: usize, keys: &[i32], lse: &mut [f32]) {
        for (row, lse) in scores.chunks_exact_mut(width).zip(lse.iter_mut()) {
            if !keys.is_empty() {
                for (x, &k) in row.iter_mut().zip(keys) {
                    *x = if k != 0 { *x } else { f32::NEG_INFINITY };
                }
            }
            let max = row_max(row);
            if max == f32::NEG_INFINITY {
                row.fill(0.0);
                *lse = f32::NEG_INFINITY;
                continue;
            }
            let sum = exp_shifted_in_place(row, max);
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|x| *x *= inv);
            *lse = max + sum.ln();
        }
    }
}

multiversion! {
    /// Rebuilds probabilities from scores in place: `P[r, j] = e^(s[r, j] - lse[r])`, 0 at masked
    /// keys and in rows with no real key (`lse = -inf`).
    fn probabilities_from_lse(scores: &mut [f32], width: usize, keys: &[i32], lse: &[f32]) {
        for (row, &l) in scores.chunks_exact_mut(width).zip(lse) {
            if l == f32::NEG_INFINITY {
                row.fill(0.0);
                continue;
            }
            row.iter_mut().for_each(|x| *x = exp(*x - l));
            if !keys.is_empty() {
                for (x, &k) in row.iter_mut().zip(keys) {
                    *x = if k != 0 { *x } else { 0.0 };
                }
            }
        }
    }
}

multiversion! {
    /// The softmax's backward in place: `dP[r, j]` becomes `dS[r, j] = P[r, j] (dP[r, j] - D[r])`.
    fn softmax_backward_rows(dp: &mut [f32], p: &[f32], width: usize, d: &[f32]) {
        for ((dp_row, p_row), &dr) in dp.chunks_exact_mut(width).zip(p.chunks_exact(width)).zip(d) {
            for (x, &p) in dp_row.iter_mut().zip(p_row) {
                *x = p * (*x - dr);
            }
        }
    }
}

/// Writes `out` `[tokens, H]` and `lse` `[heads, tokens]`. `offsets` delimit the sequences (from
/// 0 to `tokens`, so they cover every row); `mask` (`[tokens]`, 1 = real key) is `None` when every
/// row is real.
pub fn forward<T: GemmOperand>(
    kernel: Bf16Gemm,
    dims: &Dims,
    qkv: &[T],
    offsets: &[i32],
    mask: Option<&[i32]>,
    out: &mut [T],
    lse: &mut [f32],
) {
    let (d, hidden, tokens, heads) = (dims.head_dim, dims.hidden(), dims.tokens, dims.heads);
    let scale = 1.0 / (d as f32).sqrt();
    let level = Level::best();
    let blocks = query_blocks(offsets);

    // The blocks tile the rows in order, so each owns the next `rows` rows of `out`: split them
    // off, and each task writes its own in place.
    let mut rest = out;
    let owned: Vec<_> = blocks
        .iter()
        .map(|&block| {
            let (rows, tail) = std::mem::take(&mut rest).split_at_mut(block.rows * hidden);
            rest = tail;
            (block, rows)
        })
        .collect();

    let block_lse: Vec<Vec<f32>> = owned
        .into_par_iter()
        .map(|(b, out_rows)| {
            let keys = keys_of(mask, b.start, b.len);
            let mut lse = vec![0.0f32; heads * b.rows];
            // The block's output rows in f32 (every head's columns, stored rounded at the end)
            // and one head's scores, in this thread's scratch.
            with_scratch([b.rows * hidden, b.rows * b.len], |[acc, scores]| {
                for head in 0..heads {
                    // Scores [rows, len] = q k^T / sqrt(d), then their softmax in place.
                    T::matmul(
                        kernel,
                        scores,
                        MatLayout::row_major(b.rows, b.len),
                        &qkv[dims.qkv_at(b.row(), head, 0)..],
                        dims.qkv_rows(b.rows),
                        &qkv[dims.qkv_at(b.start, head, 1)..],
                        dims.qkv_rows(b.len).t(),
                        scale,
                        false,
                        false,
                    );
                    let head_lse = &mut lse[head * b.rows..][..b.rows];
                    softmax_rows(level, scores, b.len, keys, head_lse);
                    // This head's columns of the block's output rows = P v.
                    T::with_operands(scores, |p| {
                        T::matmul(
                            kernel,
                            &mut acc[head * d..],
                            dims.out_rows(b.rows),
                            p,
                            MatLayout::row_major(b.rows, b.len),
                            &qkv[dims.qkv_at(b.start, head, 2)..],
                            dims.qkv_rows(b.len),
                            1.0,
                            false,
                            false,
                        )
                    });
                }
                T::store_f32s(out_rows, acc);
            });
            lse
        })
        .collect();

    for (b, values) in blocks.iter().zip(&block_lse) {
        for head in 0..heads {
            lse[head * tokens + b.row()..][..b.rows]
                .copy_from_slice(&values[head * b.rows..][..b.rows]);
        }
    }
}

/// Writes dqkv `[tokens, 3H]`. With `P` rebuilt from the lse and `D_i = sum_c dO[i,c] O[i,c]`:
/// `dV = P^T dO`, `dP = dO V^T`, `dS = P * (dP - D)`, `dQ = dS K / sqrt(d)`, `dK = dS^T Q / sqrt(d)`,
/// each computed a query block at a time (dV and dK summed over the blocks).
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
    dqkv: &mut [T],
) {
    let (d, hidden, tokens) = (dims.head_dim, dims.hidden(), dims.tokens);
    let scale = 1.0 / (d as f32).sqrt();
    let level = Level::best();
    let work = slices(dims, offsets);
    let per_head: Vec<[Vec<f32>; 3]> = work
        .par_iter()
        .map(|&at| {
            let s = at.len;
            let keys = keys_of(mask, at.start, s);
            let row_lse = &lse[at.head * tokens + at.start..][..s];
            let q = &qkv[dims.qkv_at(at.start, at.head, 0)..];
            let k = &qkv[dims.qkv_at(at.start, at.head, 1)..];
            let v = &qkv[dims.qkv_at(at.start, at.head, 2)..];
            let dout_h = &dout[at.start * hidden + at.head * d..];
            let out_h = &out[at.start * hidden + at.head * d..];
            let d_rows: Vec<f32> = (0..s)
                .map(|i| {
                    (0..d)
                        .map(|c| dout_h[i * hidden + c].to_f32() * out_h[i * hidden + c].to_f32())
                        .sum()
                })
                .collect();

            let (mut dq, mut dk, mut dv) =
                (vec![0.0f32; s * d], vec![0.0; s * d], vec![0.0; s * d]);
            let sd = MatLayout::row_major(s, d);
            let block_len = QUERY_BLOCK.min(s) * s;
            with_scratch([block_len, block_len], |[p_block, dp_block]| {
                for first in (0..s).step_by(QUERY_BLOCK) {
                    let rows = QUERY_BLOCK.min(s - first);
                    // dV and dK start at the first block's products and add the others'.
                    let accumulate = first > 0;
                    let block = MatLayout::row_major(rows, s);
                    let q_b = &q[first * 3 * hidden..];
                    let dout_b = &dout_h[first * hidden..];
                    let (p, dp) = (&mut p_block[..rows * s], &mut dp_block[..rows * s]);

                    T::matmul(
                        kernel,
                        p,
                        block,
                        q_b,
                        dims.qkv_rows(rows),
                        k,
                        dims.qkv_rows(s).t(),
                        scale,
                        false,
                        false,
                    );
                    probabilities_from_lse(level, p, s, keys, &row_lse[first..][..rows]);
                    T::with_operands(p, |p| {
                        T::matmul(
                            kernel,
                            &mut dv,
                            sd,
                            p,
                            block.t(),
                            dout_b,
                            dims.out_rows(rows),
                            1.0,
                            accumulate,
                            false,
                        )
                    });
                    T::matmul(
                        kernel,
                        dp,
                        block,
                        dout_b,
                        dims.out_rows(rows),
                        v,
                        dims.qkv_rows(s).t(),
                        1.0,
                        false,
                        false,
                    );
                    softmax_backward_rows(level, dp, p, s, &d_rows[first..][..rows]);
                    T::with_operands(dp, |ds| {
                        T::matmul(
                            kernel,
                            &mut dq[first * d..],
                            MatLayout::row_major(rows, d),
                            ds,
                            block,
                            k,
                            dims.qkv_rows(s),
                            scale,
                            false,
                            false,
                        );
                        T::matmul(
                            kernel,
                            &mut dk,
                            sd,
                            ds,
                            block.t(),
                            q_b,
                            dims.qkv_rows(rows),
                            scale,
                            accumulate,
                            false,
                        );
                    });
                }
            });
            [dq, dk, dv]
        })
        .collect();

    // Every row lies in a sequence, and gets each head's three parts here.
    for (&at, parts) in work.iter().zip(per_head) {
        for (part, grad) in parts.iter().enumerate() {
            let base = dims.qkv_at(at.start, at.head, part);
            for i in 0..at.len {
                T::store_f32s(&mut dqkv[base + i * 3 * hidden..][..d], &grad[i * d..][..d]);
            }
        }
    }
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
        let lse = f32s_mut(&mut out.lse, "attention lse")?;
        match qkv.dtype() {
            DType::BF16 => forward(
                self.bf16_gemm,
                &dims,
                bf16s(qkv, "qkv")?,
                offsets,
                mask,
                bf16s_mut(&mut out.out, "attention output")?,
                lse,
            ),
            _ => forward(
                self.bf16_gemm,
                &dims,
                f32s(qkv, "qkv")?,
                offsets,
                mask,
                f32s_mut(&mut out.out, "attention output")?,
                lse,
            ),
        }
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
        match qkv.dtype() {
            DType::BF16 => backward(
                self.bf16_gemm,
                &dims,
                bf16s(dout, "attention dout")?,
                bf16s(qkv, "qkv")?,
                offsets,
                mask,
                bf16s(out, "attention output")?,
                lse,
                bf16s_mut(dqkv, "attention dqkv")?,
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
                f32s_mut(dqkv, "attention dqkv")?,
            ),
        }
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
