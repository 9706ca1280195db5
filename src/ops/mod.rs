//! The front of the op set: every computation the model performs, checked once, here, on the host.
//!
//! Each module owns one op family, end to end:
//! - its front functions, inherent methods of `dyn Backend` (`backend.layernorm_forward(..)`):
//!   they validate shapes, element types, devices, parameter slots and, for integer inputs (token
//!   ids, labels, row indices), the values themselves from the host copy the caller uploaded them
//!   from; then they allocate the outputs;
//! - the narrow device trait the backends implement (`LayerNormKernels`, ...), whose methods receive
//!   only checked operands and preallocated outputs, and compute: no checks, no allocation, nothing
//!   read back to the host;
//! - its tape rule: the `Tape` method that records the op, and the backward it replays.
//!
//! So the same bad input gives the same error on every device by construction, and adding an op
//! touches its front module, its kernel file, its CPU implementation and its tests. The CPU backend
//! implements each family's trait in `backend/cpu/<family>.rs`, the GPU backend in
//! `backend/cuda/ops/<family>.rs`; [`Backend`] is the sum of the families.

pub(crate) mod checks;

pub mod adamw;
pub mod attention;
pub mod convert;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod layernorm;
pub mod linear;
pub mod memory;
pub mod rows;
pub mod sequences;

use std::borrow::Cow;

use crate::backend::{Backend, Param};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// The parameter buffers an op reads: the f32 master values (biases, LayerNorm and embedding
/// tables, always f32), and the copy the GEMMs multiply by. In f32 the two are the same buffer; in
/// bf16 mixed precision the GEMM copy is a bf16 buffer aligned element for element with the master
/// values, written by the optimiser in the same pass as the master values (see
/// [`adamw`]), so it is current by construction.
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a> {
    pub values: &'a Tensor,
    pub gemm: &'a Tensor,
}

impl<'a> Weights<'a> {
    /// f32 arithmetic: the GEMMs read the master values themselves.
    pub fn f32(values: &'a Tensor) -> Self {
        Weights {
            values,
            gemm: values,
        }
    }

    /// Mixed precision: the GEMMs read `gemm`, a bf16 copy of `values`.
    pub fn mixed(values: &'a Tensor, gemm: &'a Tensor) -> Self {
        Weights { values, gemm }
    }
}

impl<'a> From<&'a Tensor> for Weights<'a> {
    fn from(values: &'a Tensor) -> Self {
        Weights::f32(values)
    }
}

/// `t` lives on `backend`'s device and has element type `dtype`; else the error names it as
/// `what` (its device first, then its element type).
pub(crate) fn expect(backend: &dyn Backend, t: &Tensor, dtype: DType, what: &str) -> Result<()> {
    expect_device(backend, t, what)?;
    if t.dtype() != dtype {
        return Err(t.dtype_error(what, dtype));
    }
    Ok(())
}

fn expect_device(backend: &dyn Backend, t: &Tensor, what: &str) -> Result<()> {
    if t.device() != backend.device() {
        return Err(Error::Device {
            what: what.to_string(),
            expected: backend.device(),
            got: t.device(),
        });
    }
    Ok(())
}

/// The element type of an op whose first activation input is `t`: f32, or bf16 in mixed precision.
/// The op's other activation inputs must have the same (checked with [`expect`]). Anything else is
/// an error that asks for f32.
pub(crate) fn activation(backend: &dyn Backend, t: &Tensor, what: &str) -> Result<DType> {
    expect_device(backend, t, what)?;
    match t.dtype() {
        dtype @ (DType::F32 | DType::BF16) => Ok(dtype),
        DType::I32 => Err(t.dtype_error(what, DType::F32)),
    }
}

/// The values of an integer input, from the host copy it was uploaded from (no device traffic).
/// A device tensor without one (an op's own output) is read back, which counts as host traffic:
/// the model and the collator always hand host-built integers to the ops.
pub(crate) fn host_ints<'t>(
    backend: &dyn Backend,
    t: &'t Tensor,
    what: &str,
) -> Result<Cow<'t, [i32]>> {
    expect(backend, t, DType::I32, what)?;
    match t.host_i32() {
        Some(values) => Ok(Cow::Borrowed(values)),
        None => Ok(Cow::Owned(backend.download_i32(t)?)),
    }
}

/// The flat f32 parameter (or gradient) buffer of an op, on the backend's device.
pub(crate) fn expect_buffer(backend: &dyn Backend, t: &Tensor, what: &str) -> Result<()> {
    expect(backend, t, DType::F32, what)
}

/// The same shape as `x` with the last axis replaced by `features`.
pub(crate) fn with_last(x: &Tensor, features: usize) -> Vec<usize> {
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = features;
    }
    shape
}

/// A parameter's slot in both the values and the GEMM copy: lengths are checked against the values.
pub(crate) fn check_weights(backend: &dyn Backend, w: Weights<'_>, dtype: DType) -> Result<()> {
    expect_buffer(backend, w.values, "parameters")?;
    if w.gemm.numel() != w.values.numel() {
        return Err(Error::shape(
            "GEMM weights",
            format!("[{}] like the parameters", w.values.numel()),
            w.gemm.shape(),
        ));
    }
    expect(backend, w.gemm, dtype, "GEMM weights")
}
