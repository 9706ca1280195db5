//! One launch wrapper file per kernel file (`kernels/<name>.cu` <-> `ops/<name>.rs`). A wrapper
//! validates shapes (with the checks every backend shares), allocates outputs, computes the launch
//! configuration and builds the argument list; the same code runs on a GPU and in the emulator.

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

use super::GpuBackend;
use super::launch::DevicePtr;
use crate::backend::Param;
use crate::backend::checks::check_param;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{DType, Storage, Tensor};

/// The device address of a tensor this backend can read, checking its device and element type.
pub(crate) fn ptr(t: &Tensor, device: Device, dtype: DType, what: &str) -> Result<DevicePtr> {
    match t.storage() {
        Storage::Gpu(g) if g.device() == device => {
            if g.dtype() != dtype {
                return Err(t.dtype_error(what, dtype));
            }
            Ok(g.ptr())
        }
        _ => Err(Error::Device {
            what: what.to_string(),
            expected: device,
            got: t.device(),
        }),
    }
}

/// Like [`ptr`], for a tensor the kernel writes: a buffer shared with clones is copied first.
pub(crate) fn ptr_mut(
    t: &mut Tensor,
    device: Device,
    dtype: DType,
    what: &str,
) -> Result<DevicePtr> {
    ptr(t, device, dtype, what)?;
    match t.storage_mut() {
        Storage::Gpu(g) => {
            g.make_unique()?;
            Ok(g.ptr())
        }
        _ => unreachable!("checked to be GPU storage above"),
    }
}

/// The element type of an op whose first activation input is `t`: f32, or bf16 in mixed precision
/// (its other activation inputs must then have the same type, checked when their addresses are
/// taken). Any other type is an error that asks for f32.
pub(crate) fn activation_dtype(t: &Tensor, what: &str) -> Result<DType> {
    match t.dtype() {
        dtype @ (DType::F32 | DType::BF16) => Ok(dtype),
        DType::I32 => Err(t.dtype_error(what, DType::F32)),
    }
}

/// The element type an activation op runs in for `t`: bf16 in mixed precision, else f32 (a tensor of
/// any other type then gets the f32 path's error when its address is taken).
fn float_type(t: &Tensor) -> DType {
    if t.dtype() == DType::BF16 {
        DType::BF16
    } else {
        DType::F32
    }
}

/// The address and element type of activation input `t`: f32, or bf16 in mixed precision. Any
/// other tensor gets the f32 path's error (its device first, then its element type).
pub(crate) fn activation(
    backend: &GpuBackend,
    t: &Tensor,
    what: &str,
) -> Result<(DevicePtr, DType)> {
    let dtype = float_type(t);
    Ok((backend.ptr(t, dtype, what)?, dtype))
}

/// Like [`activation`], for a tensor the kernel writes (copied first if a clone shares it).
pub(crate) fn activation_mut(
    backend: &GpuBackend,
    t: &mut Tensor,
    what: &str,
) -> Result<(DevicePtr, DType)> {
    let dtype = float_type(t);
    Ok((backend.ptr_mut(t, dtype, what)?, dtype))
}

/// The kernel of `op` for this element type: `<op>_f32` or `<op>_bf16`.
pub(crate) fn kernel_name(op: &str, dtype: DType) -> String {
    match dtype {
        DType::BF16 => format!("{op}_bf16"),
        _ => format!("{op}_f32"),
    }
}

/// The address of parameter `p` inside the flat f32 buffer `buffer` (at `base`), checking that it
/// has `expected` elements and lies inside the buffer.
pub(crate) fn param_ptr(
    base: DevicePtr,
    buffer: &Tensor,
    p: Param,
    expected: usize,
    what: &str,
) -> Result<DevicePtr> {
    check_param(p, expected, buffer.numel(), what)?;
    Ok(DevicePtr(base.0 + (p.offset * 4) as u64))
}

/// A size as the `int` kernels take, or an error naming it.
pub(crate) fn int(value: usize, what: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| {
        Error::Config(format!(
            "{what} = {value} exceeds the kernels' 32-bit sizes"
        ))
    })
}
