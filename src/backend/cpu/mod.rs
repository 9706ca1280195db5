//! The CPU backend: every op in plain Rust f32, parallel over rows with rayon, GEMMs through the
//! `gemm` crate. It is the reference every other backend is tested against, so each op lives in
//! its own file as a function over slices, readable on its own; this file only checks shapes and
//! unpacks tensors.

mod adamw;
mod attention;
mod cross_entropy;
mod dropout;
mod elementwise;
pub mod embedding;
mod erf;
mod exp;
mod gelu;
pub mod gemm;
mod layernorm;
mod linear;
pub(crate) mod reduce;
mod row_exp;
mod rows;
mod simd;

pub use cross_entropy::IGNORE_INDEX;

use crate::backend::{Backend, Param, PendingScalar};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::memory::HostData;
use crate::tensor::{DType, Storage, Tensor};

/// The CPU backend. Threads come from the global rayon pool.
#[derive(Debug, Default, Clone)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

fn f32s<'a>(t: &'a Tensor, what: &str) -> Result<&'a [f32]> {
    match t.storage() {
        Storage::CpuF32(v) => Ok(v),
        _ => Err(cpu_storage_error(t, what, DType::F32)),
    }
}

fn f32s_mut<'a>(t: &'a mut Tensor, what: &str) -> Result<&'a mut [f32]> {
    let error = cpu_storage_error(t, what, DType::F32);
    match t.storage_mut() {
        Storage::CpuF32(v) => Ok(v),
        _ => Err(error),
    }
}

/// A tensor the CPU backend cannot read directly: another device's, or another element type.
fn cpu_storage_error(t: &Tensor, what: &str, expected: DType) -> Error {
    if t.device() != Device::Cpu {
        Error::Device {
            what: what.to_string(),
            expected: Device::Cpu,
            got: t.device(),
        }
    } else {
        t.dtype_error(what, expected)
    }
}

fn i32s<'a>(t: &'a Tensor, what: &str) -> Result<&'a [i32]> {
    match t.storage() {
        Storage::CpuI32(v) => Ok(v),
        _ => Err(cpu_storage_error(t, what, DType::I32)),
    }
}

fn i32s_mut<'a>(t: &'a mut Tensor, what: &str) -> Result<&'a mut [i32]> {
    let error = cpu_storage_error(t, what, DType::I32);
    match t.storage_mut() {
        Storage::CpuI32(v) => Ok(v),
        _ => Err(error),
    }
}

/// A parameter's values (its slot was checked by the front).
fn param(params: &[f32], p: Param) -> &[f32] {
    &params[p.offset..p.offset + p.len]
}

/// Disjoint mutable slices of the flat gradient buffer, one per parameter, in the order given (the
/// front checked that the slots are disjoint and inside the buffer).
fn params_mut<'a, const N: usize>(buf: &'a mut [f32], ps: [Param; N]) -> [&'a mut [f32]; N] {
    let mut order: Vec<usize> = (0..N).collect();
    order.sort_by_key(|&i| ps[i].offset);
    let mut slots: [Option<&'a mut [f32]>; N] = std::array::from_fn(|_| None);
    let mut rest = buf;
    let mut consumed = 0;
    for &i in &order {
        let p = ps[i];
        let (_, tail) = rest.split_at_mut(p.offset - consumed);
        let (slot, tail) = tail.split_at_mut(p.len);
        slots[i] = Some(slot);
        rest = tail;
        consumed = p.offset + p.len;
    }
    slots.map(|s| s.expect("every slot is filled above"))
}

/// A concrete backend is used through the checked front, like any `dyn Backend`:
/// `CpuBackend::new().layernorm_forward(..)`.
impl std::ops::Deref for CpuBackend {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        self
    }
}

impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n = shape.iter().product();
        match dtype {
            DType::F32 => Tensor::from_f32(shape, vec![0.0; n]),
            DType::I32 => Tensor::from_i32(shape, vec![0; n]),
            DType::BF16 => Err(Error::Config(
                "bf16 tensors live on a GPU: the CPU backend computes in f32".into(),
            )),
        }
    }

    fn upload(&self, shape: &[usize], data: HostData<'_>) -> Result<Tensor> {
        match data {
            HostData::F32(v) => Tensor::from_f32(shape, v.to_vec()),
            HostData::I32(v) => Tensor::from_i32(shape, v.to_vec()),
        }
    }

    fn download_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        t.to_vec_f32()
    }

    fn download_i32(&self, t: &Tensor) -> Result<Vec<i32>> {
        t.to_vec_i32()
    }

    fn read_scalar(&self, t: &Tensor) -> Result<PendingScalar> {
        match f32s(t, "scalar")? {
            [value] => Ok(PendingScalar::ready(*value)),
            _ => Err(Error::shape("scalar", "[1] f32", t.shape())),
        }
    }

    fn fill_zero(&self, t: &mut Tensor) -> Result<()> {
        match t.storage_mut() {
            Storage::CpuF32(v) => v.fill(0.0),
            Storage::CpuI32(v) => v.fill(0),
            _ => return Err(cpu_storage_error(t, "fill_zero", DType::F32)),
        }
        Ok(())
    }
}

impl crate::ops::convert::ConvertKernels for CpuBackend {
    fn convert_into(&self, x: &Tensor, _out: &mut Tensor) -> Result<()> {
        // The front allocates the output first, and the CPU has no bf16 tensors to allocate.
        Err(cpu_storage_error(x, "cast", DType::F32))
    }
}
