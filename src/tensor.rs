//! Tensors: a shape, an element type and storage on a device.
//!
//! Tensors here are plain values: ops take them by reference and return new ones. Parameters are
//! not tensors of their own but [`Param`](crate::backend::Param) views into one flat buffer, so the
//! optimiser can update every parameter in one pass.

use crate::backend::cuda::storage::GpuStorage;
use crate::device::Device;
use crate::error::{Error, Result};

/// Element types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// 32-bit floats: parameters, gradients, activations, logits.
    F32,
    /// bfloat16 activations of mixed precision (read back as f32).
    BF16,
    /// Token ids, labels, masks and row indices.
    I32,
}

/// The memory behind a tensor. Each backend owns its variants.
///
/// Cloning GPU storage shares the device buffer; a backend op that writes through `&mut Tensor`
/// first gives the tensor a buffer of its own (copy on write), so clones never see each other's
/// writes, exactly as with CPU storage.
#[derive(Debug, Clone)]
pub enum Storage {
    /// F32 elements in host memory.
    CpuF32(Vec<f32>),
    /// I32 elements in host memory.
    CpuI32(Vec<i32>),
    /// bf16 elements in host memory: the CPU backend's mixed-precision activations.
    CpuBF16(Vec<half::bf16>),
    /// Device memory of a GPU (or the emulated GPU), with its element type.
    Gpu(GpuStorage),
}

/// A dense, row-major tensor.
#[derive(Debug, Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl Tensor {
    /// Wraps storage that already lives on a device. The element count must match the shape.
    pub fn from_storage(shape: &[usize], storage: Storage) -> Result<Self> {
        let len = match &storage {
            Storage::CpuF32(v) => v.len(),
            Storage::CpuI32(v) => v.len(),
            Storage::CpuBF16(v) => v.len(),
            Storage::Gpu(g) => g.len(),
        };
        let numel: usize = shape.iter().product();
        if len != numel {
            return Err(Error::shape(
                "tensor data",
                format!("{numel} elements for shape {shape:?}"),
                &[len],
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage,
        })
    }

    /// A CPU f32 tensor.
    pub fn from_f32(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        Self::from_storage(shape, Storage::CpuF32(data))
    }

    /// A CPU bf16 tensor.
    pub fn from_bf16(shape: &[usize], data: Vec<half::bf16>) -> Result<Self> {
        Self::from_storage(shape, Storage::CpuBF16(data))
    }

    /// A CPU i32 tensor (token ids, masks, labels).
    pub fn from_i32(shape: &[usize], data: Vec<i32>) -> Result<Self> {
        Self::from_storage(shape, Storage::CpuI32(data))
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::CpuF32(_) => DType::F32,
            Storage::CpuI32(_) => DType::I32,
            Storage::CpuBF16(_) => DType::BF16,
            Storage::Gpu(g) => g.dtype(),
        }
    }

    /// The device holding the elements.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::CpuF32(_) | Storage::CpuI32(_) | Storage::CpuBF16(_) => Device::Cpu,
            Storage::Gpu(g) => g.device(),
        }
    }

    /// The elements, where they are.
    #[doc(hidden)]
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The elements, where they are, to write.
    #[doc(hidden)]
    pub fn storage_mut(&mut self) -> &mut Storage {
        &mut self.storage
    }

    /// The same data under another shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        let numel: usize = shape.iter().product();
        if numel != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("{} elements", self.numel()),
                shape,
            ));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// The values of an I32 tensor as the host has them, without reading a device: a CPU tensor's
    /// own, or the data a device tensor was uploaded from (until it is written). `None` for other
    /// tensors.
    pub fn host_i32(&self) -> Option<&[i32]> {
        match &self.storage {
            Storage::CpuI32(v) => Some(v),
            Storage::Gpu(g) => g.host_i32(),
            Storage::CpuF32(_) | Storage::CpuBF16(_) => None,
        }
    }

    /// Copies an f32 tensor (or a bf16 one, widened exactly) to host memory, from any device.
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::CpuF32(v) => Ok(v.clone()),
            Storage::CpuBF16(v) => Ok(v.iter().map(|b| b.to_f32()).collect()),
            Storage::Gpu(g) if g.dtype() == DType::F32 => g.download_f32(),
            Storage::Gpu(g) if g.dtype() == DType::BF16 => g.download_bf16_as_f32(),
            _ => Err(self.dtype_error("to_vec_f32", DType::F32)),
        }
    }

    /// Copies an i32 tensor to host memory (from any device).
    pub fn to_vec_i32(&self) -> Result<Vec<i32>> {
        match &self.storage {
            Storage::CpuI32(v) => Ok(v.clone()),
            Storage::Gpu(g) if g.dtype() == DType::I32 => g.download_i32(),
            _ => Err(self.dtype_error("to_vec_i32", DType::I32)),
        }
    }

    pub(crate) fn dtype_error(&self, what: &str, expected: DType) -> Error {
        Error::DType {
            what: what.to_string(),
            expected,
            got: self.dtype(),
        }
    }
}
