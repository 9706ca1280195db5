//! Launch wrappers for `kernels/rows.cu`.

use crate::backend::cuda::GpuBackend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn pending(op: &str) -> Error {
    Error::Kernel {
        kernel: op.to_string(),
        reason: "not written yet".into(),
    }
}

pub fn gather(_backend: &GpuBackend, _x: &Tensor, _rows: &Tensor) -> Result<Tensor> {
    Err(pending("gather_rows"))
}

pub fn scatter(_backend: &GpuBackend, _dy: &Tensor, _rows: &Tensor, _n: usize) -> Result<Tensor> {
    Err(pending("scatter_rows"))
}

pub fn argmax(_backend: &GpuBackend, _x: &Tensor) -> Result<Tensor> {
    Err(pending("argmax_rows"))
}
