//! Token + instruction + argument embedding, with positions derived from `[NEXT]`.
//!
//! A row `foo bar baz [NEXT] blah` has instruction indices `0 0 0 0 1` and argument indices
//! `0 1 2 3 0`: a new instruction starts at the token *after* each `[NEXT]`, so the `[NEXT]`
//! belongs to the instruction before it. Padding continues the count like any other token. The
//! count restarts at each sequence's first row, so a packed batch gives every token the positions
//! it has in its padded row.

use super::{CpuBackend, activation, f32s, f32s_mut, i32s, param, params_mut, write_activation};
use crate::backend::Param;
use crate::error::Result;
use crate::ops::embedding::{EmbeddingDims, EmbeddingKernels};
use crate::ops::sequences::Sequences;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Instruction and argument index of every position of one row.
pub fn trace_positions(row: &[i32], next_token_id: i32) -> (Vec<usize>, Vec<usize>) {
    let mut instruction = Vec::with_capacity(row.len());
    let mut argument = Vec::with_capacity(row.len());
    let (mut current, mut start) = (0usize, 0usize);
    for j in 0..row.len() {
        if j >= 1 && row[j - 1] == next_token_id {
            current += 1;
            start = j;
        }
        instruction.push(current);
        argument.push(j - start);
    }
    (instruction, argument)
}

/// Each sequence's rows, `offsets[s] .. offsets[s + 1]`.
fn ranges(offsets: &[i32]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    offsets.windows(2).map(|w| w[0] as usize..w[1] as usize)
}

/// `out[t] = token[tokens[t]] + instruction[i(t)] + argument[a(t)]`, positions counted within each
/// of the sequences `offsets` delimits.
pub fn forward(
    out: &mut [f32],
    tokens: &[i32],
    offsets: &[i32],
    next_token_id: i32,
    tables: [&[f32]; 3],
    hidden: usize,
) {
    let [token, instruction, argument] = tables;
    // Split the output at the sequence boundaries so that every sequence is one parallel task.
    let mut rest = out;
    let mut pieces = Vec::with_capacity(offsets.len());
    for range in ranges(offsets) {
        let (piece, tail) = rest.split_at_mut(range.len() * hidden);
        pieces.push((piece, range));
        rest = tail;
    }
    pieces.into_par_iter().for_each(|(out_row, range)| {
        let row = &tokens[range];
        let (ins, arg) = trace_positions(row, next_token_id);
        for j in 0..row.len() {
            let t = &token[row[j] as usize * hidden..][..hidden];
            let i = &instruction[ins[j] * hidden..][..hidden];
            let a = &argument[arg[j] * hidden..][..hidden];
            let o = &mut out_row[j * hidden..][..hidden];
            for c in 0..hidden {
                o[c] = t[c] + i[c] + a[c];
            }
        }
    });
}

/// Adds each output row's gradient into the three table rows it was gathered from. Sequential,
/// so the summation order (and the result) is the same on every run.
pub fn backward(
    dout: &[f32],
    tokens: &[i32],
    offsets: &[i32],
    next_token_id: i32,
    dtables: [&mut [f32]; 3],
    hidden: usize,
) {
    let [dtoken, dinstruction, dargument] = dtables;
    for range in ranges(offsets) {
        let drow = &dout[range.start * hidden..range.end * hidden];
        let row = &tokens[range];
        let (ins, arg) = trace_positions(row, next_token_id);
        for j in 0..row.len() {
            let d = &drow[j * hidden..][..hidden];
            for (dst, index) in [
                (&mut *dtoken, row[j] as usize),
                (&mut *dinstruction, ins[j]),
                (&mut *dargument, arg[j]),
            ] {
                for (g, x) in dst[index * hidden..][..hidden].iter_mut().zip(d) {
                    *g += x;
                }
            }
        }
    }
}

impl EmbeddingKernels for CpuBackend {
    fn embedding_forward_into(
        &self,
        tokens: &Tensor,
        sequences: &Sequences,
        dims: EmbeddingDims,
        params: &Tensor,
        tables: [Param; 3],
        out: &mut Tensor,
    ) -> Result<()> {
        let p = f32s(params, "parameters")?;
        let tokens = i32s(tokens, "embedding tokens")?;
        write_activation(out, "embedding output", false, |out| {
            forward(
                out,
                tokens,
                sequences.offsets(),
                dims.next_token_id,
                tables.map(|t| param(p, t)),
                dims.hidden,
            )
        })
    }

    fn embedding_backward_into(
        &self,
        dout: &Tensor,
        tokens: &Tensor,
        sequences: &Sequences,
        dims: EmbeddingDims,
        grads: &mut Tensor,
        tables: [Param; 3],
    ) -> Result<()> {
        backward(
            &activation(dout, "embedding dout")?,
            i32s(tokens, "embedding tokens")?,
            sequences.offsets(),
            dims.next_token_id,
            params_mut(f32s_mut(grads, "gradients")?, tables),
            dims.hidden,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_belongs_to_the_previous_instruction() {
        // foo bar baz [NEXT] blah, with [NEXT] = 5
        let (ins, arg) = trace_positions(&[10, 11, 12, 5, 13], 5);
        assert_eq!(ins, vec![0, 0, 0, 0, 1]);
        assert_eq!(arg, vec![0, 1, 2, 3, 0]);
    }

    #[test]
    fn leading_next_and_padding_continue_the_count() {
        let (ins, arg) = trace_positions(&[5, 5, 9, 5, 0, 0], 5);
        assert_eq!(ins, vec![0, 1, 2, 2, 3, 3]);
        assert_eq!(arg, vec![0, 0, 0, 1, 0, 1]);
    }
}
