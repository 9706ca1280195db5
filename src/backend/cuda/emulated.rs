//! The emulated GPU runtime: device memory is host memory, kernels run in the emulator, GEMMs run
//! on the CPU (the GEMM is a library call on the GPU too, not one of our kernels).

use std::alloc::{Layout, alloc, dealloc};
use std::sync::{Arc, Mutex};

use super::emulator::{EmulatedDevice, ScheduleOrder};
use super::launch::{DevicePtr, KernelArgs, KernelLauncher, LaunchConfig};
use super::runtime::{Allocation, GemmSpec, GpuRuntime, MemoryMeter, PendingDownload};
use super::storage::dtype_bytes;
use crate::backend::cpu::gemm::{MatLayout, matmul};
use crate::backend::traffic::TrafficMeter;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Device memory alignment, as `cudaMalloc` guarantees (at least 256 bytes).
const ALIGN: usize = 256;
/// New memory is filled with this byte: 0xffffffff is a NaN as f32 and -1 as i32.
const POISON: u8 = 0xff;

/// Host memory standing in for a device allocation.
struct HostMemory {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the memory is owned exclusively by this value and only freed on drop.
unsafe impl Send for HostMemory {}
unsafe impl Sync for HostMemory {}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `EmulatedRuntime::alloc` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// One kernel launch as the emulator ran it: the record tests check a grid against (no block
/// launched for padding, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLaunch {
    /// The kernel's name.
    pub kernel: String,
    /// Blocks in the grid.
    pub blocks: u64,
    /// Threads in each block.
    pub threads_per_block: u64,
}

/// The emulated GPU.
#[derive(Debug, Clone)]
pub struct EmulatedRuntime {
    device: EmulatedDevice,
    meter: Arc<MemoryMeter>,
    traffic: Arc<TrafficMeter>,
    /// Every launch, when asked for ([`recording_launches`](Self::recording_launches)).
    launches: Option<Arc<Mutex<Vec<KernelLaunch>>>>,
}

impl EmulatedRuntime {
    pub fn new(order: ScheduleOrder) -> Self {
        EmulatedRuntime {
            device: EmulatedDevice::new().with_order(order),
            meter: Arc::default(),
            traffic: Arc::default(),
            launches: None,
        }
    }

    /// The same runtime keeping a record of every kernel it launches (see
    /// [`launches`](Self::launches)).
    pub fn recording_launches(mut self) -> Self {
        self.launches = Some(Arc::default());
        self
    }

    pub fn order(&self) -> ScheduleOrder {
        self.device.order()
    }

    /// Every kernel launched so far, in order, by a runtime made
    /// [`recording_launches`](Self::recording_launches) (empty otherwise). GEMMs, which stand in
    /// for cuBLASLt, are not kernels here.
    pub fn launches(&self) -> Vec<KernelLaunch> {
        self.launches
            .as_ref()
            .and_then(|l| l.lock().ok().map(|l| l.clone()))
            .unwrap_or_default()
    }
}

/// `len` elements of emulated device memory as f32 (bf16 widened exactly).
///
/// # Safety
/// `ptr` must come from an `EmulatedRuntime` allocation holding at least `len` elements of `dtype`.
unsafe fn read_matrix(ptr: DevicePtr, len: usize, dtype: DType) -> Vec<f32> {
    unsafe {
        match dtype {
            DType::BF16 => std::slice::from_raw_parts(ptr.0 as *const half::bf16, len)
                .iter()
                .map(|v| v.to_f32())
                .collect(),
            _ => std::slice::from_raw_parts(ptr.0 as *const f32, len).to_vec(),
        }
    }
}

/// Writes the `rows x cols` elements of a row-major matrix (leading dimension `ld`) back, rounding
/// to bf16 (nearest even, as the GPU's epilogue does) when `dtype` is bf16.
///
/// # Safety
/// As for [`read_matrix`], for the matrix's extent.
unsafe fn write_matrix(
    ptr: DevicePtr,
    values: &[f32],
    rows: usize,
    cols: usize,
    ld: usize,
    dtype: DType,
) {
    for r in 0..rows {
        for c in 0..cols {
            let v = values[r * ld + c];
            unsafe {
                match dtype {
                    DType::BF16 => {
                        *(ptr.0 as *mut half::bf16).add(r * ld + c) = half::bf16::from_f32(v)
                    }
                    _ => *(ptr.0 as *mut f32).add(r * ld + c) = v,
                }
            }
        }
    }
}

impl GpuRuntime for EmulatedRuntime {
    fn device(&self) -> Device {
        Device::Emulated(self.device.order())
    }

    fn alloc(&self, bytes: usize) -> Result<Allocation> {
        let layout = Layout::from_size_align(bytes.max(1), ALIGN)
            .map_err(|e| Error::Config(format!("cannot allocate {bytes} bytes: {e}")))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc(layout) };
        if ptr.is_null() {
            return Err(Error::Config(format!(
                "out of memory allocating {bytes} bytes"
            )));
        }
        // SAFETY: `ptr` is valid for `layout.size()` bytes.
        unsafe { std::ptr::write_bytes(ptr, POISON, layout.size()) };
        Ok(Allocation::new(
            DevicePtr(ptr as u64),
            bytes,
            Box::new(HostMemory { ptr, layout }),
            &self.meter,
        ))
    }

    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        // SAFETY: `dst` is an allocation of at least `src.len()` bytes (the storage layer sizes it).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.0 as *mut u8, src.len()) };
        self.traffic.upload(src.len());
        Ok(())
    }

    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        // SAFETY: as for upload.
        unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, dst.as_mut_ptr(), dst.len()) };
        // Counted as on a GPU, where a blocking download synchronises the stream.
        self.traffic.download(dst.len());
        self.traffic.synchronization();
        Ok(())
    }

    fn download_async(&self, src: DevicePtr, bytes: usize) -> Result<PendingDownload> {
        // Every emulated operation has finished when it returns, so the copy can be made now.
        let mut host = vec![0u8; bytes];
        // SAFETY: `src` is an allocation of at least `bytes` bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, host.as_mut_ptr(), bytes) };
        self.traffic.download(bytes);
        Ok(PendingDownload::done(host))
    }

    fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        // SAFETY: distinct allocations of at least `bytes` bytes (`std::ptr::copy` also allows overlap).
        unsafe { std::ptr::copy(src.0 as *const u8, dst.0 as *mut u8, bytes) };
        Ok(())
    }

    fn memset_zero(&self, dst: DevicePtr, bytes: usize) -> Result<()> {
        // SAFETY: an allocation of at least `bytes` bytes.
        unsafe { std::ptr::write_bytes(dst.0 as *mut u8, 0, bytes) };
        Ok(())
    }

    fn launch(&self, kernel: &str, config: &LaunchConfig, args: &mut KernelArgs) -> Result<()> {
        if let Some(Ok(mut launches)) = self.launches.as_ref().map(|l| l.lock()) {
            let count = |dims: [u32; 3]| dims.iter().map(|&d| u64::from(d)).product();
            launches.push(KernelLaunch {
                kernel: kernel.to_string(),
                blocks: count(config.grid),
                threads_per_block: count(config.block),
            });
        }
        self.device.launch(kernel, config, args)
    }

    fn synchronize(&self) -> Result<()> {
        // Every emulated launch has finished when it returns; counted as a GPU would count it.
        self.traffic.synchronization();
        Ok(())
    }

    fn memory(&self) -> &MemoryMeter {
        &self.meter
    }

    fn traffic(&self) -> &TrafficMeter {
        &self.traffic
    }

    fn gemm(&self, spec: &GemmSpec) -> Result<()> {
        let a_layout = |ld: usize, transposed: bool, rows: usize, cols: usize| {
            // op(X) is [rows, cols]; X is stored [rows, cols] (or [cols, rows] when transposed)
            // with leading dimension `ld`.
            if transposed {
                MatLayout::strided(cols, rows, ld).t()
            } else {
                MatLayout::strided(rows, cols, ld)
            }
        };
        let al = a_layout(spec.lda, spec.transpose_a, spec.m, spec.k);
        let bl = a_layout(spec.ldb, spec.transpose_b, spec.k, spec.n);
        let cl = MatLayout::strided(spec.m, spec.n, spec.ldc);
        let extent = |rows: usize, ld: usize, cols: usize| {
            if rows == 0 { 0 } else { (rows - 1) * ld + cols }
        };
        let a_len = if spec.transpose_a {
            extent(spec.k, spec.lda, spec.m)
        } else {
            extent(spec.m, spec.lda, spec.k)
        };
        let b_len = if spec.transpose_b {
            extent(spec.n, spec.ldb, spec.k)
        } else {
            extent(spec.k, spec.ldb, spec.n)
        };
        let c_len = extent(spec.m, spec.ldc, spec.n);
        // SAFETY: the spec's bias, when present, is an f32 vector of `n` elements.
        let bias = spec
            .bias
            .map(|bias| unsafe { read_matrix(bias, spec.n, DType::F32) });
        for i in 0..spec.batch {
            let at = |ptr: DevicePtr, stride: usize, dtype: DType| {
                DevicePtr(ptr.0 + (i * stride * dtype_bytes(dtype)) as u64)
            };
            // SAFETY: the caller's spec describes matrices inside live allocations; C does not overlap
            // A or B (as cuBLAS also requires).
            let (a, b, mut c) = unsafe {
                (
                    read_matrix(at(spec.a, spec.stride_a, spec.a_type), a_len, spec.a_type),
                    read_matrix(at(spec.b, spec.stride_b, spec.b_type), b_len, spec.b_type),
                    read_matrix(at(spec.c, spec.stride_c, spec.c_type), c_len, spec.c_type),
                )
            };
            if spec.beta == 0.0 {
                matmul(&mut c, cl, &a, al, &b, bl, spec.alpha, false, true);
            } else {
                if spec.beta != 1.0 {
                    for r in 0..spec.m {
                        for v in &mut c[r * spec.ldc..r * spec.ldc + spec.n] {
                            *v *= spec.beta;
                        }
                    }
                }
                matmul(&mut c, cl, &a, al, &b, bl, spec.alpha, true, true);
            }
            // cuBLASLt's bias epilogue adds in f32, before C is rounded to its type.
            if let Some(bias) = &bias {
                for r in 0..spec.m {
                    for (v, b) in c[r * spec.ldc..r * spec.ldc + spec.n].iter_mut().zip(bias) {
                        *v += b;
                    }
                }
            }
            // SAFETY: as above; only the m x n elements of C are written back.
            unsafe {
                write_matrix(
                    at(spec.c, spec.stride_c, spec.c_type),
                    &c,
                    spec.m,
                    spec.n,
                    spec.ldc,
                    spec.c_type,
                )
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(runtime: &EmulatedRuntime, bytes: &[u8]) -> Allocation {
        let memory = runtime.alloc(bytes.len()).unwrap();
        runtime.upload(memory.ptr(), bytes).unwrap();
        memory
    }

    /// (The bias epilogue and the traffic counts against a plain computation, on the emulator and
    /// on a GPU: tests/runtime.rs.) The bias is added in f32 and C rounded once: 1 + (2^-8 + 2^-20) rounds up to the next bf16
    /// above 1, whereas rounding the product to bf16 first (to 2^-8) and then adding would give a
    /// tie that rounds to 1.
    #[test]
    fn gemm_rounds_bf16_after_the_bias() {
        let runtime = EmulatedRuntime::new(ScheduleOrder::Forward);
        let product = 2f32.powi(-8) + 2f32.powi(-20);
        let a = upload(&runtime, bytemuck::bytes_of(&1.0f32));
        let b = upload(&runtime, bytemuck::bytes_of(&product));
        let bias = upload(&runtime, bytemuck::bytes_of(&1.0f32));
        let c = runtime.alloc(2).unwrap();
        let spec = GemmSpec::dense(1, 1, 1, a.ptr(), false, b.ptr(), false, c.ptr(), 1.0, 0.0)
            .with_types(DType::F32, DType::F32, DType::BF16)
            .with_bias(bias.ptr());
        runtime.gemm(&spec).unwrap();
        let mut got = [0u8; 2];
        runtime.download(c.ptr(), &mut got).unwrap();
        assert_eq!(half::bf16::from_le_bytes(got).to_f32(), 1.0 + 2f32.powi(-7));
    }
}
