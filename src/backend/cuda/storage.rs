//! Tensors in device memory: a shared, reference-counted buffer and its element type.

use std::sync::Arc;

use super::launch::DevicePtr;
use super::runtime::{Allocation, GpuRuntime};
use crate::device::Device;
use crate::error::Result;
use crate::tensor::{DType, Storage, Tensor};

/// A device buffer and the runtime that owns it (kept alive as long as the buffer is).
#[derive(Debug)]
pub struct GpuBuffer {
    allocation: Allocation,
    runtime: Arc<dyn GpuRuntime>,
}

/// A tensor's device memory: `len` elements of `dtype`.
#[derive(Debug, Clone)]
pub struct GpuStorage {
    buffer: Arc<GpuBuffer>,
    dtype: DType,
    len: usize,
    /// The host data an I32 tensor was uploaded from, kept so that the front checks token ids,
    /// labels and row indices without reading the device. Dropped at the first write, so it is
    /// never stale.
    host_copy: Option<Arc<[i32]>>,
}

pub(crate) fn dtype_bytes(dtype: DType) -> usize {
    match dtype {
        DType::F32 | DType::I32 => 4,
        DType::BF16 => 2,
    }
}

impl GpuStorage {
    /// Fresh (uninitialised; poisoned in the emulator) device memory for `len` elements.
    pub fn alloc(runtime: &Arc<dyn GpuRuntime>, dtype: DType, len: usize) -> Result<Self> {
        let allocation = runtime.alloc(len * dtype_bytes(dtype))?;
        Ok(GpuStorage {
            buffer: Arc::new(GpuBuffer {
                allocation,
                runtime: runtime.clone(),
            }),
            dtype,
            len,
            host_copy: None,
        })
    }

    /// Records the host data this storage was just uploaded from.
    pub(crate) fn with_host_copy(mut self, data: &[i32]) -> Self {
        self.host_copy = Some(Arc::from(data));
        self
    }

    /// The host data an I32 tensor was uploaded from, if it has not been written since.
    pub fn host_i32(&self) -> Option<&[i32]> {
        self.host_copy.as_deref()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn bytes(&self) -> usize {
        self.len * dtype_bytes(self.dtype)
    }

    pub fn device(&self) -> Device {
        self.buffer.runtime.device()
    }

    pub fn runtime(&self) -> &Arc<dyn GpuRuntime> {
        &self.buffer.runtime
    }

    /// The address kernels receive.
    pub fn ptr(&self) -> DevicePtr {
        self.buffer.allocation.ptr
    }

    /// Gives this storage a buffer no clone shares, copying if it was shared (copy on write), before
    /// a kernel writes it.
    pub fn make_unique(&mut self) -> Result<()> {
        self.host_copy = None;
        if Arc::strong_count(&self.buffer) > 1 {
            let fresh = GpuStorage::alloc(&self.buffer.runtime, self.dtype, self.len)?;
            self.buffer
                .runtime
                .copy(fresh.ptr(), self.ptr(), self.bytes())?;
            *self = fresh;
        }
        Ok(())
    }

    pub fn download_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; self.len];
        self.buffer
            .runtime
            .download(self.ptr(), bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }

    /// A bf16 tensor widened to f32 (exact).
    pub fn download_bf16_as_f32(&self) -> Result<Vec<f32>> {
        let mut bits = vec![half::bf16::ZERO; self.len];
        self.buffer
            .runtime
            .download(self.ptr(), bytemuck::cast_slice_mut(&mut bits))?;
        Ok(bits.into_iter().map(half::bf16::to_f32).collect())
    }

    pub fn download_i32(&self) -> Result<Vec<i32>> {
        let mut out = vec![0i32; self.len];
        self.buffer
            .runtime
            .download(self.ptr(), bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }
}

impl Tensor {
    /// A new device tensor (uninitialised; poisoned in the emulator).
    pub(crate) fn gpu_empty(
        runtime: &Arc<dyn GpuRuntime>,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        let storage = GpuStorage::alloc(runtime, dtype, shape.iter().product())?;
        Tensor::from_storage(shape, Storage::Gpu(storage))
    }
}
