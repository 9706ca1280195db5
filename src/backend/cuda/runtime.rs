//! What the GPU backend needs from a device: memory, kernel launches and GEMMs. Two runtimes
//! implement it: a real GPU through cudarc ([`super::cuda_runtime`]) and the emulator
//! ([`super::emulated`]), where device memory is host memory and GEMMs run on the CPU.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::launch::{DevicePtr, KernelArgs, LaunchConfig};
use crate::backend::traffic::TrafficMeter;
use crate::device::Device;
use crate::error::Result;
use crate::tensor::DType;

/// `C = alpha * op(A) op(B) + beta * C (+ bias)` on row-major matrices, `batch` times with the given
/// element strides between consecutive matrices. `op(A)` is `[m, k]`: A is stored `[m, k]` with
/// leading dimension `lda`, or `[k, m]` when `transpose_a`. Likewise `op(B)` is `[k, n]`. Each matrix
/// is f32 or bf16 (`a_type`, `b_type`, `c_type`); products are always accumulated in f32. The
/// optional bias is an f32 vector of `n` elements added to every row of C (and of every matrix of
/// a batch) in f32, before C is rounded to its type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmSpec {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: DevicePtr,
    pub lda: usize,
    pub transpose_a: bool,
    pub stride_a: usize,
    pub b: DevicePtr,
    pub ldb: usize,
    pub transpose_b: bool,
    pub stride_b: usize,
    pub c: DevicePtr,
    pub ldc: usize,
    pub stride_c: usize,
    pub batch: usize,
    pub alpha: f32,
    pub beta: f32,
    pub a_type: DType,
    pub b_type: DType,
    pub c_type: DType,
    /// An f32 vector of length `n`, added to every row of C by the GEMM's epilogue.
    pub bias: Option<DevicePtr>,
}

impl GemmSpec {
    /// One product of dense row-major matrices: `C[m, n] = alpha op(A) op(B) + beta C`.
    #[allow(clippy::too_many_arguments)]
    pub fn dense(
        m: usize,
        n: usize,
        k: usize,
        a: DevicePtr,
        transpose_a: bool,
        b: DevicePtr,
        transpose_b: bool,
        c: DevicePtr,
        alpha: f32,
        beta: f32,
    ) -> Self {
        GemmSpec {
            m,
            n,
            k,
            a,
            lda: if transpose_a { m } else { k },
            transpose_a,
            stride_a: 0,
            b,
            ldb: if transpose_b { k } else { n },
            transpose_b,
            stride_b: 0,
            c,
            ldc: n,
            stride_c: 0,
            batch: 1,
            alpha,
            beta,
            a_type: DType::F32,
            b_type: DType::F32,
            c_type: DType::F32,
            bias: None,
        }
    }

    /// The same product with these element types.
    pub fn with_types(mut self, a: DType, b: DType, c: DType) -> Self {
        (self.a_type, self.b_type, self.c_type) = (a, b, c);
        self
    }

    /// The same product with `bias` (f32, `n` elements) added to every row of C:
    /// `C = alpha op(A) op(B) + beta C + bias`.
    pub fn with_bias(mut self, bias: DevicePtr) -> Self {
        self.bias = Some(bias);
        self
    }
}

/// A device's memory, launches and GEMMs. Every call is ordered after the previous ones (one
/// stream); `download` waits for all of them, `download_async` only queues its copy.
pub trait GpuRuntime: Send + Sync + Debug {
    /// The device this runtime drives.
    fn device(&self) -> Device;

    /// `bytes` of device memory. The emulator (and a GPU when `MASKEDLM_POISON=1`) fills new memory
    /// with `0xff` bytes, a NaN in every float type, so a kernel output left unwritten shows.
    fn alloc(&self, bytes: usize) -> Result<Allocation>;

    /// Host to device.
    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()>;

    /// Device to host, after every earlier operation has finished. This synchronises the stream.
    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()>;

    /// Queues a device-to-host copy of `bytes` at `src` behind every earlier operation and returns
    /// without waiting; [`PendingDownload::wait`] later hands back the bytes. Work queued after
    /// this call keeps the device busy while the host has not yet waited, so a value needed only
    /// later (the loss of a step) costs no stall of the stream.
    fn download_async(&self, src: DevicePtr, bytes: usize) -> Result<PendingDownload>;

    /// Device to device.
    fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()>;

    /// Sets `bytes` bytes to zero.
    fn memset_zero(&self, dst: DevicePtr, bytes: usize) -> Result<()>;

    /// Launches a kernel by its `extern "C"` name.
    fn launch(&self, kernel: &str, config: &LaunchConfig, args: &mut KernelArgs) -> Result<()>;

    /// A GEMM with f32 accumulation (cuBLASLt on a GPU).
    fn gemm(&self, spec: &GemmSpec) -> Result<()>;

    /// Waits until every queued operation has finished.
    fn synchronize(&self) -> Result<()>;

    /// The bytes this runtime's allocations hold.
    fn memory(&self) -> &MemoryMeter;

    /// Copies and synchronisations between host and device so far. An upload counts one upload;
    /// a download one download and one synchronisation; an asynchronous download one download
    /// only; a synchronize one synchronisation. Device-side copies, memsets, launches and GEMMs
    /// count nothing.
    fn traffic(&self) -> &TrafficMeter;
}

/// A device-to-host copy that has been queued and may not have landed yet
/// ([`GpuRuntime::download_async`]).
pub struct PendingDownload {
    state: PendingState,
}

enum PendingState {
    /// The bytes are already on the host (the emulator copies at once).
    Done(Vec<u8>),
    /// A copy in flight on a device's stream.
    Queued(Box<dyn QueuedDownload>),
}

/// A runtime's copy in flight: how to wait for it and whether it has landed.
pub(crate) trait QueuedDownload: Send {
    /// Blocks until this copy (and so everything queued before it) has finished; the bytes.
    fn wait(self: Box<Self>) -> Result<Vec<u8>>;

    /// Whether the copy has finished, without blocking. An error in the stream reads as ready, so
    /// that the caller's `wait` reports it.
    fn is_ready(&self) -> bool;
}

impl PendingDownload {
    /// A download whose bytes are already here.
    pub(crate) fn done(bytes: Vec<u8>) -> Self {
        PendingDownload {
            state: PendingState::Done(bytes),
        }
    }

    /// A download still in flight.
    pub(crate) fn queued(copy: Box<dyn QueuedDownload>) -> Self {
        PendingDownload {
            state: PendingState::Queued(copy),
        }
    }

    /// Blocks until this copy, and only what was queued before it, has finished; then the bytes.
    /// An error of any operation queued before the copy (a faulting kernel) is returned here.
    pub fn wait(self) -> Result<Vec<u8>> {
        match self.state {
            PendingState::Done(bytes) => Ok(bytes),
            PendingState::Queued(copy) => copy.wait(),
        }
    }

    /// Whether [`wait`](Self::wait) would return without blocking.
    pub fn is_ready(&self) -> bool {
        match &self.state {
            PendingState::Done(_) => true,
            PendingState::Queued(copy) => copy.is_ready(),
        }
    }
}

impl Debug for PendingDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.state {
            PendingState::Done(bytes) => write!(f, "PendingDownload(done, {} bytes)", bytes.len()),
            PendingState::Queued(_) => write!(f, "PendingDownload(queued)"),
        }
    }
}

/// The bytes of device memory a runtime's live allocations hold, now and at most since the last
/// [`reset_peak`](Self::reset_peak): the figures `torch.cuda.memory_allocated` and
/// `max_memory_allocated` give for PyTorch, so peak memory compares like for like.
#[derive(Debug, Default)]
pub struct MemoryMeter {
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl MemoryMeter {
    fn allocated(&self, bytes: usize) {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }

    fn freed(&self, bytes: usize) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes held now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// The most bytes held at once since the last reset.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Starts a new peak from what is held now.
    pub fn reset_peak(&self) {
        self.peak.store(self.live(), Ordering::Relaxed);
    }
}

/// One device allocation. Dropping it frees the memory.
pub struct Allocation {
    pub(crate) ptr: DevicePtr,
    pub(crate) bytes: usize,
    /// Frees the memory when dropped (host memory in the emulator, device memory on a GPU).
    _owner: Box<dyn Send + Sync>,
    /// The runtime's count of bytes held, told when this allocation goes.
    meter: Arc<MemoryMeter>,
}

impl Allocation {
    /// `bytes` at `ptr`, freed when `owner` is dropped, counted by `meter` while alive.
    pub(crate) fn new(
        ptr: DevicePtr,
        bytes: usize,
        owner: Box<dyn Send + Sync>,
        meter: &Arc<MemoryMeter>,
    ) -> Self {
        meter.allocated(bytes);
        Allocation {
            ptr,
            bytes,
            _owner: owner,
            meter: meter.clone(),
        }
    }

    /// The device address of the first byte.
    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.meter.freed(self.bytes);
    }
}

impl Debug for Allocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Allocation({:#x}, {} bytes)", self.ptr.0, self.bytes)
    }
}
