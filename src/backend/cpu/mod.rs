//! The CPU backend: every op in plain Rust f32, parallel over rows with rayon, GEMMs through the
//! `gemm` crate. It is the reference every other backend is tested against, so each op lives in
//! its own file as a function over slices, readable on its own; this file only checks shapes and
//! unpacks tensors.
//!
//! In bf16 mixed precision (where the CPU has AVX512_BF16) activations and activation gradients
//! are stored as bf16 and the GEMMs multiply bf16 operands with f32 accumulation
//! ([`gemm_bf16`]); every other op reads its bf16 inputs widened to f32, computes in f32 exactly
//! as in f32 mode, and rounds what it stores, which is the GPU's contract too. Statistics, the
//! loss, parameters, gradients and optimiser state stay f32.

mod adamw;
mod attention;
pub mod cast;
mod cross_entropy;
mod dropout;
mod elementwise;
pub mod embedding;
mod erf;
mod exp;
mod gelu;
pub mod gemm;
pub mod gemm_bf16;
mod layernorm;
mod linear;
mod operand;
pub(crate) mod reduce;
mod row_exp;
mod rows;
mod scratch;
mod simd;
#[cfg(test)]
mod test_inputs;

pub use cross_entropy::IGNORE_INDEX;

use std::borrow::Cow;

use crate::backend::{Backend, Param, PendingScalar};
use crate::device::{Device, Precision};
use crate::error::{Error, Result};
use crate::ops::memory::HostData;
use crate::tensor::{DType, Storage, Tensor};
use gemm_bf16::Bf16Gemm;

/// The CPU backend. Threads come from the global rayon pool.
#[derive(Debug, Clone)]
pub struct CpuBackend {
    precision: Precision,
    /// The bf16 GEMM kernel (used only in bf16 precision).
    bf16_gemm: Bf16Gemm,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// The f32 backend, which runs on every CPU.
    pub fn new() -> Self {
        CpuBackend {
            precision: Precision::F32,
            bf16_gemm: Bf16Gemm::Portable,
        }
    }

    /// The backend in `precision`. bf16 needs a CPU with AVX512_BF16 (Intel Cooper Lake and
    /// Sapphire Rapids on, AMD Zen 4 on): elsewhere bf16 GEMMs would be emulated in f32, slower
    /// than f32 mode itself, so this is an error that says so.
    pub fn with_precision(precision: Precision) -> Result<Self> {
        Self::with_bf16_gemm(precision, Bf16Gemm::detect())
    }

    /// The backend in `precision` with the bf16 GEMM kernel `kernel`, as if the CPU's best were
    /// `kernel`: [`Bf16Gemm::Portable`] stands for a CPU without AVX512_BF16. For tests and
    /// benchmarks of both paths on one machine; see [`CpuBackend::bf16_portable`] to run bf16 on
    /// the portable kernel anyway.
    pub fn with_bf16_gemm(precision: Precision, kernel: Bf16Gemm) -> Result<Self> {
        match precision {
            Precision::F32 => Ok(Self::new()),
            Precision::Bf16 if kernel == Bf16Gemm::Avx512Bf16 && kernel.available() => {
                Ok(CpuBackend {
                    precision,
                    bf16_gemm: kernel,
                })
            }
            Precision::Bf16 => Err(Error::Config(
                "bf16 mixed precision on the CPU needs AVX512_BF16 (the vdpbf16ps instruction), \
                 which this CPU does not have: use --precision f32 on this CPU (its f32 path is the \
                 faster one here), or a GPU (--device cuda)"
                    .into(),
            )),
        }
    }

    /// bf16 mixed precision on the portable GEMM (bf16 operands widened to f32): the same
    /// numbers as the AVX512_BF16 kernel up to the order of the sums, on any CPU, but slower than
    /// f32 mode. A reference for tests, not offered on the command line.
    #[doc(hidden)]
    pub fn bf16_portable() -> Self {
        CpuBackend {
            precision: Precision::Bf16,
            bf16_gemm: Bf16Gemm::Portable,
        }
    }

    /// The bf16 GEMM kernel this backend runs in bf16 precision.
    pub fn bf16_gemm(&self) -> Bf16Gemm {
        self.bf16_gemm
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

fn bf16s<'a>(t: &'a Tensor, what: &str) -> Result<&'a [half::bf16]> {
    match t.storage() {
        Storage::CpuBF16(v) => Ok(v),
        _ => Err(cpu_storage_error(t, what, DType::BF16)),
    }
}

fn bf16s_mut<'a>(t: &'a mut Tensor, what: &str) -> Result<&'a mut [half::bf16]> {
    let error = cpu_storage_error(t, what, DType::BF16);
    match t.storage_mut() {
        Storage::CpuBF16(v) => Ok(v),
        _ => Err(error),
    }
}

/// An activation's elements as f32: f32 storage as it is, bf16 widened (exactly).
fn activation<'a>(t: &'a Tensor, what: &str) -> Result<Cow<'a, [f32]>> {
    match t.storage() {
        Storage::CpuF32(v) => Ok(Cow::Borrowed(v)),
        Storage::CpuBF16(v) => Ok(Cow::Owned(cast::widened(v))),
        _ => Err(cpu_storage_error(t, what, DType::F32)),
    }
}

/// Writes an activation through an f32 view: `f` writes f32 storage in place; for a bf16 tensor
/// it writes an f32 buffer (zeroed first, unless `keep` asks for the tensor's current values, for
/// ops that add into their output) which is then rounded into the tensor.
fn write_activation<R>(
    t: &mut Tensor,
    what: &str,
    keep: bool,
    f: impl FnOnce(&mut [f32]) -> R,
) -> Result<R> {
    let error = cpu_storage_error(t, what, DType::F32);
    match t.storage_mut() {
        Storage::CpuF32(v) => Ok(f(v)),
        Storage::CpuBF16(v) => {
            let mut buffer = if keep {
                cast::widened(v)
            } else {
                vec![0.0; v.len()]
            };
            let result = f(&mut buffer);
            cast::narrow(v, &buffer);
            Ok(result)
        }
        _ => Err(error),
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

/// A parameter's values in the bf16 GEMM copy of the weights.
fn param16(params: &[half::bf16], p: Param) -> &[half::bf16] {
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

    fn precision(&self) -> Precision {
        self.precision
    }

    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n = shape.iter().product();
        match dtype {
            DType::F32 => Tensor::from_f32(shape, vec![0.0; n]),
            DType::I32 => Tensor::from_i32(shape, vec![0; n]),
            DType::BF16 => Tensor::from_bf16(shape, vec![half::bf16::ZERO; n]),
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
            Storage::CpuBF16(v) => v.fill(half::bf16::ZERO),
            _ => return Err(cpu_storage_error(t, "fill_zero", DType::F32)),
        }
        Ok(())
    }
}

impl crate::ops::convert::ConvertKernels for CpuBackend {
    fn convert_into(&self, x: &Tensor, out: &mut Tensor) -> Result<()> {
        match (x.storage(), out.storage_mut()) {
            (Storage::CpuF32(x), Storage::CpuBF16(out)) => cast::narrow(out, x),
            (Storage::CpuBF16(x), Storage::CpuF32(out)) => cast::widen(out, x),
            _ => return Err(cpu_storage_error(x, "cast", DType::F32)),
        }
        Ok(())
    }
}
