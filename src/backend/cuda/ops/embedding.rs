//! Launch wrappers for `kernels/embedding.cu`.

use crate::backend::Param;
use crate::backend::cuda::GpuBackend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn pending(op: &str) -> Error {
    Error::Kernel {
        kernel: op.to_string(),
        reason: "not written yet".into(),
    }
}

pub fn forward(
    _backend: &GpuBackend,
    _tokens: &Tensor,
    _next_token_id: i32,
    _params: &Tensor,
    _tables: [Param; 3],
    _hidden: usize,
) -> Result<Tensor> {
    Err(pending("embedding_forward"))
}

pub fn backward(
    _backend: &GpuBackend,
    _dout: &Tensor,
    _tokens: &Tensor,
    _next_token_id: i32,
    _grads: &mut Tensor,
    _tables: [Param; 3],
) -> Result<()> {
    Err(pending("embedding_backward"))
}
