//! One launch wrapper file per kernel file (`kernels/<name>.cu` <-> `ops/<name>.rs`), each
//! implementing its op family's device trait for [`GpuBackend`](super::GpuBackend). The front ([`crate::ops`]) has
//! checked every operand and allocated every output: a wrapper only computes the launch
//! configuration and the argument list, the same code on a GPU and in the emulator.

pub mod adamw;
pub mod attention;
pub mod convert;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod layernorm;
pub mod linear;
pub mod rows;

use super::launch::DevicePtr;
use crate::backend::Param;
use crate::error::{Error, Result};
use crate::tensor::{DType, Storage, Tensor};

/// The device address of a GPU tensor. The front checked its device; a tensor of another device
/// here is a bug in the front, reported as an error rather than a wild pointer.
pub(crate) fn device_ptr(t: &Tensor) -> Result<DevicePtr> {
    match t.storage() {
        Storage::Gpu(g) => Ok(g.ptr()),
        _ => Err(not_on_gpu(t)),
    }
}

/// Like [`device_ptr`], for a tensor the kernel writes: a buffer shared with clones is copied
/// first (copy on write).
pub(crate) fn device_ptr_mut(t: &mut Tensor) -> Result<DevicePtr> {
    let error = not_on_gpu(t);
    match t.storage_mut() {
        Storage::Gpu(g) => {
            g.make_unique()?;
            Ok(g.ptr())
        }
        _ => Err(error),
    }
}

fn not_on_gpu(t: &Tensor) -> Error {
    Error::Config(format!(
        "a {:?} tensor on {} reached a GPU kernel",
        t.dtype(),
        t.device()
    ))
}

/// The kernel of `op` for this element type: `<op>_f32` or `<op>_bf16`.
pub(crate) fn kernel_name(op: &str, dtype: DType) -> String {
    match dtype {
        DType::BF16 => format!("{op}_bf16"),
        _ => format!("{op}_f32"),
    }
}

/// The address of parameter `p` inside a flat buffer of `dtype` elements at `base`.
pub(crate) fn slot(base: DevicePtr, p: Param, dtype: DType) -> DevicePtr {
    DevicePtr(base.0 + (p.offset * super::storage::dtype_bytes(dtype)) as u64)
}

/// A size as the `int` kernels take, or an error naming it.
pub(crate) fn int(value: usize, what: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| {
        Error::Config(format!(
            "{what} = {value} exceeds the kernels' 32-bit sizes"
        ))
    })
}
