//! The GPU backend: every op of [`Backend`] as a hand-written CUDA kernel (`kernels/*.cu`), GEMMs
//! through cuBLASLt.
//!
//! The backend talks to a [`runtime::GpuRuntime`]: a real GPU through cudarc, or the
//! [`emulator`], which runs the same `.cu` sources compiled for the host so that every kernel is
//! tested on machines without a GPU. Each op's launch wrapper (in [`ops`], one file per kernel
//! file) computes grid, block, shared memory and the argument list; only the final launch call
//! differs between the two. The emulator is test equipment, never offered as a user device.
//!
//! Where the model chains memory-bound steps the backend runs them as one kernel: the residual add
//! into the LayerNorm after it, the bias and GELU after the feed-forward GEMM, dropout into the
//! residual add, and the loss gradient written over the logits (the fused `Backend` methods).

pub mod cuda_runtime;
pub mod emulated;
pub mod emulator;
pub mod launch;
pub mod ops;
pub mod ptx;
pub mod runtime;
pub mod storage;

use std::sync::Arc;

use runtime::GpuRuntime;

use crate::backend::{Backend, HostTraffic, MemoryUse, PendingScalar};
use crate::device::{Device, Precision};
use crate::error::Result;
use crate::ops::memory::HostData;
use crate::tensor::{DType, Storage, Tensor};

pub use ops::attention::{BackwardKernel, ForwardKernel};

/// The GPU backend over one runtime (one device), in one precision.
///
/// In bf16 mixed precision the embedding produces bf16 activations and every op after it keeps the
/// element type of its input: activations, their gradients and GEMM operands are bf16, while
/// accumulation, LayerNorm and softmax statistics, the loss, parameters, their gradients and the
/// optimiser state stay f32. GEMMs read the weights from a bf16 copy of the flat parameter buffer
/// that the model owns and AdamW rewrites in the same pass as the f32 master weights.
#[derive(Debug, Clone)]
pub struct GpuBackend {
    runtime: Arc<dyn GpuRuntime>,
    precision: Precision,
    attention: (ForwardKernel, BackwardKernel),
}

impl GpuBackend {
    /// An f32 backend over this runtime.
    pub fn new(runtime: Arc<dyn GpuRuntime>) -> Self {
        GpuBackend {
            runtime,
            precision: Precision::F32,
            attention: (ForwardKernel::TensorCores, BackwardKernel::TensorCores),
        }
    }

    /// The same device in another precision.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The same device with bf16 attention on these kernels (tensor cores by default; the CUDA-core
    /// kernels are the reference the tests hold the tensor-core ones to). f32 attention always runs
    /// on CUDA cores.
    pub fn with_attention_kernels(
        mut self,
        forward: ForwardKernel,
        backward: BackwardKernel,
    ) -> Self {
        self.attention = (forward, backward);
        self
    }

    /// The f32 backend of CUDA device `ordinal` (see [`with_precision`](Self::with_precision)).
    pub fn cuda(ordinal: usize) -> Result<Self> {
        Ok(GpuBackend::new(cuda_runtime::CudaRuntime::shared(ordinal)?))
    }

    pub fn runtime(&self) -> &Arc<dyn GpuRuntime> {
        &self.runtime
    }

    /// The device address of a tensor the front checked to be on this device.
    pub(crate) fn ptr(&self, t: &Tensor) -> Result<launch::DevicePtr> {
        ops::device_ptr(t)
    }

    /// The device address of a tensor a kernel writes (copied first if a clone shares it).
    pub(crate) fn ptr_mut(&self, t: &mut Tensor) -> Result<launch::DevicePtr> {
        ops::device_ptr_mut(t)
    }
}

/// A concrete backend is used through the checked front, like any `dyn Backend`:
/// `gpu.layernorm_forward(..)`.
impl std::ops::Deref for GpuBackend {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        self
    }
}

impl Backend for GpuBackend {
    fn device(&self) -> Device {
        self.runtime.device()
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn synchronize(&self) -> Result<()> {
        self.runtime.synchronize()
    }

    fn memory_use(&self) -> Option<MemoryUse> {
        let meter = self.runtime.memory();
        Some(MemoryUse {
            live: meter.live(),
            peak: meter.peak(),
        })
    }

    fn reset_peak_memory(&self) {
        self.runtime.memory().reset_peak();
    }

    fn host_traffic(&self) -> HostTraffic {
        self.runtime.traffic().snapshot()
    }

    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Tensor::gpu_empty(&self.runtime, shape, dtype)
    }

    fn upload(&self, shape: &[usize], data: HostData<'_>) -> Result<Tensor> {
        let (dtype, bytes): (DType, &[u8]) = match data {
            HostData::F32(v) => (DType::F32, bytemuck::cast_slice(v)),
            HostData::I32(v) => (DType::I32, bytemuck::cast_slice(v)),
        };
        let mut t = self.alloc(shape, dtype)?;
        self.runtime.upload(self.ptr(&t)?, bytes)?;
        if let (HostData::I32(v), Storage::Gpu(g)) = (data, t.storage_mut()) {
            *g = g.clone().with_host_copy(v);
        }
        Ok(t)
    }

    fn download_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        t.to_vec_f32()
    }

    fn download_i32(&self, t: &Tensor) -> Result<Vec<i32>> {
        t.to_vec_i32()
    }

    fn read_scalar(&self, t: &Tensor) -> Result<PendingScalar> {
        if t.dtype() != DType::F32 || t.numel() != 1 {
            return Err(crate::Error::shape("scalar", "[1] f32", t.shape()));
        }
        let pending = self.runtime.download_async(self.ptr(t)?, 4)?;
        Ok(PendingScalar::copying(move || {
            let bytes = pending.wait()?;
            Ok(f32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        }))
    }

    fn fill_zero(&self, t: &mut Tensor) -> Result<()> {
        // Zero is all-zero bytes in f32, bf16 and i32 alike.
        let bytes = t.numel() * storage::dtype_bytes(t.dtype());
        let dst = self.ptr_mut(t)?;
        self.runtime.memset_zero(dst, bytes)
    }
}
