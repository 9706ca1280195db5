//! Shape checks shared by every backend: each op validates its inputs the same way on every device,
//! with the same typed errors.

use super::Param;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionDims {
    pub batch: usize,
    pub seq: usize,
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

pub(crate) fn attention_dims(qkv: &Tensor, mask: &Tensor, heads: usize) -> Result<AttentionDims> {
    let [batch, seq] = *mask.shape() else {
        return Err(Error::shape("attention mask", "[batch, seq]", mask.shape()));
    };
    let (rows, width) = rows_cols(qkv, "qkv")?;
    if rows != batch * seq || width % 3 != 0 || heads == 0 || (width / 3) % heads != 0 {
        return Err(Error::shape(
            "qkv",
            format!(
                "[{}, 3 * hidden] with hidden divisible by {heads} heads",
                batch * seq
            ),
            qkv.shape(),
        ));
    }
    Ok(AttentionDims {
        batch,
        seq,
        heads,
        head_dim: width / 3 / heads,
    })
}
