//! Tensors in device memory: a shared, reference-counted buffer and its element type.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

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
    /// Counts the writes handed out (`GpuStorage::write_version`), so that a derived copy (the bf16
    /// shadow of the parameters) knows whether it is still current.
    writes: AtomicU64,
}

/// A tensor's device memory: `len` elements of `dtype`.
#[derive(Debug, Clone)]
pub struct GpuStorage {
    buffer: Arc<GpuBuffer>,
    dtype: DType,
    len: usize,
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
                writes: AtomicU64::new(0),
            }),
            dtype,
            len,
        })
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

    /// Identifies the buffer (not just its address, which a later buffer may reuse): for caches of
    /// values derived from it.
    pub(crate) fn buffer_id(&self) -> Weak<GpuBuffer> {
        Arc::downgrade(&self.buffer)
    }

    /// The address kernels receive.
    pub fn ptr(&self) -> DevicePtr {
        self.buffer.allocation.ptr
    }

    /// Which write this buffer has seen last: every `make_unique` (the step before any kernel
    /// writes it) counts one.
    pub fn write_version(&self) -> u64 {
        self.buffer.writes.load(Ordering::Acquire)
    }

    /// Gives this storage a buffer no clone shares, copying if it was shared (copy on write), and
    /// counts a write.
    pub fn make_unique(&mut self) -> Result<()> {
        if Arc::strong_count(&self.buffer) > 1 {
            let fresh = GpuStorage::alloc(&self.buffer.runtime, self.dtype, self.len)?;
            self.buffer
                .runtime
                .copy(fresh.ptr(), self.ptr(), self.bytes())?;
            *self = fresh;
        }
        self.buffer.writes.fetch_add(1, Ordering::AcqRel);
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
