//! Shape checks shared by every backend: each op validates its inputs the same way on every device,
//! with the same typed errors.

use super::Param;
use super::sequences::Sequences;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The sizes of one attention call: `tokens` rows in `sequences` sequences, the longest `max_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionDims {
    pub tokens: usize,
    pub sequences: usize,
    pub max_len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

pub(crate) fn rows_cols(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    match t.shape() {
        [] => Err(Error::shape(what, "[rows, features]", t.shape())),
        [.., c] => Ok((t.numel() / (*c).max(1), *c)),
    }
}

pub(crate) fn check_same_shape(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(what, format!("{:?}", a.shape()), b.shape()));
    }
    Ok(())
}

/// A parameter view of the expected length, inside a flat buffer of `buffer_len` elements.
pub(crate) fn check_param(p: Param, expected: usize, buffer_len: usize, what: &str) -> Result<()> {
    if p.len != expected {
        return Err(Error::shape(what, format!("[{expected}]"), &[p.len]));
    }
    if p.offset + p.len > buffer_len {
        return Err(Error::shape(
            what,
            format!("inside [{buffer_len}]"),
            &[p.offset + p.len],
        ));
    }
    Ok(())
}

pub(crate) fn check_dropout_probability(p: f32) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::Config(format!(
            "dropout probability {p} is not in [0, 1)"
        )));
    }
    Ok(())
}

pub(crate) fn attention_dims(
    qkv: &Tensor,
    sequences: &Sequences,
    heads: usize,
) -> Result<AttentionDims> {
    let tokens = sequences.tokens();
    let (rows, width) = rows_cols(qkv, "qkv")?;
    if rows != tokens || width % 3 != 0 || heads == 0 || (width / 3) % heads != 0 {
        return Err(Error::shape(
            "qkv",
            format!("[{tokens}, 3 * hidden] with hidden divisible by {heads} heads"),
            qkv.shape(),
        ));
    }
    Ok(AttentionDims {
        tokens,
        sequences: sequences.count(),
        max_len: sequences.max_len(),
        heads,
        head_dim: width / 3 / heads,
    })
}

/// A row index for every entry, each below `n`.
pub(crate) fn check_rows(idx: &[i32], n: usize) -> Result<()> {
    match idx.iter().find(|&&r| r < 0 || r as usize >= n) {
        Some(&r) => Err(Error::IndexOutOfRange {
            what: "row index".into(),
            index: i64::from(r),
            len: n,
        }),
        None => Ok(()),
    }
}

/// The `[tokens]` ids of an embedding call over `sequences`, none longer than the position tables
/// (instruction and argument, each `[positions, hidden]`). Returns the token count.
pub(crate) fn embedding_dims(
    tokens: &Tensor,
    sequences: &Sequences,
    instruction: Param,
    argument: Param,
    hidden: usize,
) -> Result<usize> {
    if *tokens.shape() != [sequences.tokens()] {
        return Err(Error::shape(
            "embedding tokens",
            format!("[{}], one per row of the sequences", sequences.tokens()),
            tokens.shape(),
        ));
    }
    let positions = instruction.len.min(argument.len) / hidden.max(1);
    if sequences.max_len() > positions {
        return Err(Error::SequenceTooLong {
            length: sequences.max_len(),
            max: positions,
        });
    }
    Ok(sequences.tokens())
}

/// The gradient views an op adds into: pairwise disjoint and inside the flat buffer.
pub(crate) fn check_disjoint_slots(slots: &[Param], buffer_len: usize, what: &str) -> Result<()> {
    let mut sorted = slots.to_vec();
    sorted.sort_by_key(|p| p.offset);
    let mut consumed = 0;
    for p in sorted {
        if p.offset < consumed || p.offset + p.len > buffer_len {
            return Err(Error::shape(
                format!("{what}: overlapping or out-of-range gradient slot"),
                format!("disjoint slots inside [{buffer_len}]"),
                &[p.offset, p.len],
            ));
        }
        consumed = p.offset + p.len;
    }
    Ok(())
}

/// Every token id below `vocab`, or the first that is not, by sequence and position.
pub(crate) fn check_token_ids(ids: &[i32], sequences: &Sequences, vocab: usize) -> Result<()> {
    let Some(i) = ids.iter().position(|&id| id < 0 || id as usize >= vocab) else {
        return Ok(());
    };
    let row = sequences.offsets().partition_point(|&o| o as usize <= i) - 1;
    Err(Error::TokenOutOfRange {
        id: i64::from(ids[i]),
        row,
        position: i - sequences.range(row).0,
        vocab_size: vocab,
    })
}

/// LayerNorm backward's inputs: `dy` like `x`, one mean and one rstd per row. Returns (rows, features).
pub(crate) fn layernorm_backward_dims(
    dy: &Tensor,
    x: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
) -> Result<(usize, usize)> {
    check_same_shape(x, dy, "layernorm dy")?;
    let (rows, c) = rows_cols(x, "layernorm input")?;
    if mean.numel() != rows || rstd.numel() != rows {
        return Err(Error::shape(
            "layernorm statistics",
            format!("[{rows}]"),
            mean.shape(),
        ));
    }
    Ok((rows, c))
}

/// Linear backward's inputs: `dy` has a row per row of `x`. Returns (rows, in, out).
pub(crate) fn linear_backward_dims(dy: &Tensor, x: &Tensor) -> Result<(usize, usize, usize)> {
    let (rows, inp) = rows_cols(x, "linear input")?;
    let (dy_rows, out) = rows_cols(dy, "linear dy")?;
    if dy_rows != rows {
        return Err(Error::shape(
            "linear dy",
            format!("[{rows}, {out}]"),
            dy.shape(),
        ));
    }
    Ok((rows, inp, out))
}

/// What attention's forward saved, and `dout`, fit the call's sizes.
pub(crate) fn check_attention_saved(
    dims: &AttentionDims,
    dout: &Tensor,
    out: &Tensor,
    lse: &Tensor,
) -> Result<()> {
    check_same_shape(out, dout, "attention dout")?;
    let (rows, hidden) = (dims.tokens, dims.heads * dims.head_dim);
    if out.numel() != rows * hidden {
        return Err(Error::shape(
            "attention saved output",
            format!("[{rows}, {hidden}]"),
            out.shape(),
        ));
    }
    if *lse.shape() != [dims.heads, rows] {
        return Err(Error::shape(
            "attention lse",
            format!("[{}, {rows}]", dims.heads),
            lse.shape(),
        ));
    }
    Ok(())
}

/// Cross-entropy's labels: one per row of logits. Returns (rows, vocab).
pub(crate) fn cross_entropy_dims(logits: &Tensor, labels: &Tensor) -> Result<(usize, usize)> {
    let (rows, vocab) = rows_cols(logits, "cross-entropy logits")?;
    if labels.numel() != rows {
        return Err(Error::shape(
            "cross-entropy labels",
            format!("[{rows}]"),
            labels.shape(),
        ));
    }
    Ok((rows, vocab))
}

/// Every label is ignored (-100) or a token id below `vocab`.
pub(crate) fn check_labels(labels: &[i32], vocab: usize) -> Result<()> {
    match labels.iter().enumerate().find(|(_, l)| {
        **l != crate::backend::cpu::IGNORE_INDEX && (**l < 0 || **l as usize >= vocab)
    }) {
        Some((i, &l)) => Err(Error::LabelOutOfRange {
            label: i64::from(l),
            row: i,
            position: 0,
            vocab_size: vocab,
        }),
        None => Ok(()),
    }
}

/// A top-k size of at least one and at most the row's width.
pub(crate) fn check_top_k(k: usize, width: usize) -> Result<()> {
    if k == 0 || k > width {
        return Err(Error::Config(format!(
            "top-k: k = {k} must be between 1 and the row width {width}"
        )));
    }
    Ok(())
}
