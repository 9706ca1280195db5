//! The real GPU: CUDA driver calls, kernels loaded from the embedded PTX (or compiled by NVRTC when
//! this build had no nvcc), and f32 GEMMs through cuBLASLt. Everything runs on one stream, in
//! order; `download` synchronises it.
//!
//! Libraries are loaded at run time (cudarc's dynamic loading): on a machine without the CUDA
//! driver, NVRTC or cuBLASLt, asking for `Device::Cuda` is an error naming what is missing.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream, result as driver,
    sys as driver_sys,
};
use cudarc::nvrtc::{CompileOptions, Ptx};

use super::launch::{DevicePtr, KernelArgs, LaunchConfig};
use super::ptx::{KERNEL_FILES, KERNEL_SOURCES, kernel_ptx};
use super::runtime::{
    Allocation, GemmSpec, GpuRuntime, MemoryMeter, PendingDownload, QueuedDownload,
};
use super::storage;
use crate::backend::traffic::TrafficMeter;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::DType;

/// cuBLASLt's recommended workspace: 32 MiB on Hopper, 4 MiB before.
fn workspace_bytes(major: i32) -> usize {
    if major >= 9 { 32 << 20 } else { 4 << 20 }
}

fn config_error(ordinal: usize, reason: impl std::fmt::Display) -> Error {
    Error::Config(format!("device cuda:{ordinal}: {reason}"))
}

/// One GPU.
pub struct CudaRuntime {
    ordinal: usize,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// `"sm_80"` or `"sm_90"`: which embedded PTX to load.
    arch: &'static str,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    blas: lt_sys::cublasLtHandle_t,
    workspace: Allocation,
    /// Bytes held by this runtime's allocations.
    meter: Arc<MemoryMeter>,
    /// Copies and synchronisations between host and device.
    traffic: TrafficMeter,
    /// Page-locked buffers that asynchronous downloads have finished with, kept for the next ones.
    staging: Arc<Mutex<Vec<Staging>>>,
    /// Fill new allocations with NaN bytes (`MASKEDLM_POISON=1`), as the emulator always does.
    poison: bool,
    /// Synchronise after every launch (`MASKEDLM_SYNC_LAUNCHES=1`), so that a fault names its kernel.
    sync_launches: bool,
}

// SAFETY: the cuBLASLt handle is only used through `&self` on this runtime's one stream, and the
// CUDA driver is thread safe for calls on one context.
unsafe impl Send for CudaRuntime {}
unsafe impl Sync for CudaRuntime {}

impl std::fmt::Debug for CudaRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaRuntime(cuda:{}, {})", self.ordinal, self.arch)
    }
}

/// Device memory freed on the runtime's stream when dropped.
struct DeviceMemory {
    ptr: driver_sys::CUdeviceptr,
    stream: Arc<CudaStream>,
}

impl Drop for DeviceMemory {
    fn drop(&mut self) {
        // SAFETY: allocated by `malloc_async` on this stream; every use is ordered before this free.
        unsafe {
            let _ = self.stream.context().bind_to_thread();
            let _ = driver::free_async(self.ptr, self.stream.cu_stream());
        }
    }
}

// SAFETY: a device address and a stream handle; the driver allows freeing from any thread.
unsafe impl Send for DeviceMemory {}
unsafe impl Sync for DeviceMemory {}

/// A page-locked host buffer and the event that marks the end of the copy into it. An
/// asynchronous device-to-host copy must land in page-locked memory: into pageable memory the
/// driver copies through its own staging buffer and returns only when done, so the copy would not
/// be asynchronous at all.
struct Staging {
    host: *mut u8,
    capacity: usize,
    event: CudaEvent,
}

// SAFETY: the buffer is owned by this value alone; the driver allows freeing it from any thread.
unsafe impl Send for Staging {}

impl Staging {
    fn new(context: &Arc<CudaContext>, capacity: usize) -> std::result::Result<Self, String> {
        // Plain page-locked memory: the write-combined kind (cudarc's `alloc_pinned` default) is
        // fast for the device to read but very slow for the host to read, and the host reads this.
        // SAFETY: an allocation of `capacity` (non-zero) bytes; freed in `drop`.
        let host = unsafe { driver::malloc_host(capacity, 0) }
            .map_err(|e| format!("allocating {capacity} bytes of page-locked memory: {e}"))?
            as *mut u8;
        let event = match context.new_event(None) {
            Ok(event) => event,
            Err(e) => {
                // SAFETY: allocated just above and not shared.
                let _ = unsafe { driver::free_host(host as *mut c_void) };
                return Err(format!("creating an event: {e}"));
            }
        };
        Ok(Staging {
            host,
            capacity,
            event,
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // The copy into the buffer may still be in flight (a download dropped unread): let it land
        // before the memory goes back.
        let _ = self.event.synchronize();
        // SAFETY: allocated by `malloc_host` in `new`; nothing reads it after this.
        let _ = unsafe { driver::free_host(self.host as *mut c_void) };
    }
}

/// The pool keeps a few buffers only: downloads are small (a loss, a count) and rarely in flight
/// more than a couple at a time.
const STAGING_POOL: usize = 4;

/// An asynchronous download in flight: the copy into `staging` and the event recorded after it.
struct CudaDownload {
    ordinal: usize,
    bytes: usize,
    staging: Option<Staging>,
    pool: Arc<Mutex<Vec<Staging>>>,
}

impl CudaDownload {
    fn staging(&self) -> &Staging {
        self.staging
            .as_ref()
            .expect("a download holds its buffer until it is dropped")
    }
}

impl QueuedDownload for CudaDownload {
    fn wait(self: Box<Self>) -> Result<Vec<u8>> {
        let staging = self.staging();
        staging.event.synchronize().map_err(|e| {
            config_error(
                self.ordinal,
                format!("an operation queued before this copy failed: {e}"),
            )
        })?;
        // SAFETY: the copy of `bytes` into the buffer has landed (the event follows it) and
        // nothing else writes the buffer while this download owns it.
        Ok(unsafe { std::slice::from_raw_parts(staging.host, self.bytes) }.to_vec())
    }

    fn is_ready(&self) -> bool {
        self.staging().event.try_is_complete().unwrap_or(true)
    }
}

impl Drop for CudaDownload {
    fn drop(&mut self) {
        let Some(staging) = self.staging.take() else {
            return;
        };
        // Only a buffer whose copy has landed may be reused; otherwise dropping it waits for it.
        if staging.event.try_is_complete() == Ok(true) {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < STAGING_POOL {
                pool.push(staging);
            }
        }
    }
}

impl CudaRuntime {
    /// The runtime of GPU `ordinal`, shared by every backend of that device in this process.
    pub fn shared(ordinal: usize) -> Result<Arc<CudaRuntime>> {
        static RUNTIMES: OnceLock<Mutex<HashMap<usize, Arc<CudaRuntime>>>> = OnceLock::new();
        let mut runtimes = RUNTIMES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(runtime) = runtimes.get(&ordinal) {
            return Ok(runtime.clone());
        }
        let runtime = Arc::new(CudaRuntime::new(ordinal)?);
        runtimes.insert(ordinal, runtime.clone());
        Ok(runtime)
    }

    fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: probing for the shared libraries only tries to open them.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(config_error(
                ordinal,
                "the CUDA driver library (libcuda.so) was not found: no NVIDIA driver",
            ));
        }
        if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
            return Err(config_error(
                ordinal,
                "cuBLASLt (libcublasLt.so) was not found: install the CUDA toolkit's cuBLAS",
            ));
        }
        let count = CudaContext::device_count().map_err(|e| config_error(ordinal, e))?;
        if ordinal >= count.max(0) as usize {
            return Err(config_error(
                ordinal,
                format!("this machine has {count} CUDA device(s)"),
            ));
        }
        let context = CudaContext::new(ordinal).map_err(|e| config_error(ordinal, e))?;
        let (major, minor) = context
            .compute_capability()
            .map_err(|e| config_error(ordinal, e))?;
        if major < 8 {
            return Err(config_error(
                ordinal,
                format!(
                    "compute capability {major}.{minor}: the kernels need sm_80 (Ampere) or newer"
                ),
            ));
        }
        let arch = if major >= 9 { "sm_90" } else { "sm_80" };
        let stream = context.default_stream();
        let blas =
            lt::create_handle().map_err(|e| config_error(ordinal, format!("cuBLASLt: {e}")))?;
        let workspace_len = workspace_bytes(major);
        // SAFETY: a plain device allocation on this stream.
        let workspace_ptr = unsafe { driver::malloc_async(stream.cu_stream(), workspace_len) }
            .map_err(|e| config_error(ordinal, e))?;
        let meter = Arc::new(MemoryMeter::default());
        let workspace = Allocation::new(
            DevicePtr(workspace_ptr),
            workspace_len,
            Box::new(DeviceMemory {
                ptr: workspace_ptr,
                stream: stream.clone(),
            }),
            &meter,
        );
        let flag = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
        Ok(CudaRuntime {
            ordinal,
            context,
            stream,
            arch,
            modules: Mutex::default(),
            functions: Mutex::default(),
            blas,
            workspace,
            meter,
            traffic: TrafficMeter::default(),
            staging: Arc::default(),
            poison: flag("MASKEDLM_POISON"),
            sync_launches: flag("MASKEDLM_SYNC_LAUNCHES"),
        })
    }

    /// The PTX architecture this GPU loads: `"sm_80"` or `"sm_90"`.
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// The GPU's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> Result<String> {
        self.context.name().map_err(|e| self.error(e))
    }

    fn error(&self, reason: impl std::fmt::Display) -> Error {
        config_error(self.ordinal, reason)
    }

    fn kernel_error(kernel: &str, reason: impl std::fmt::Display) -> Error {
        Error::Kernel {
            kernel: kernel.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The module of one kernel file: embedded PTX for this architecture, or NVRTC's compilation of
    /// the embedded source.
    fn module(&self, file: &'static str, kernel: &str) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(module) = modules.get(file) {
            return Ok(module.clone());
        }
        let ptx = match kernel_ptx(file, self.arch) {
            Some(text) => Ptx::from_src(text),
            None => self
                .compile_with_nvrtc(file)
                .map_err(|e| Self::kernel_error(kernel, e))?,
        };
        let module = self
            .context
            .load_module(ptx)
            .map_err(|e| Self::kernel_error(kernel, format!("loading {file}: {e}")))?;
        modules.insert(file, module.clone());
        Ok(module)
    }

    fn compile_with_nvrtc(&self, file: &str) -> std::result::Result<Ptx, String> {
        // SAFETY: probing for the shared library only tries to open it.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(
                "this build has no PTX (nvcc was not found at build time) and NVRTC (libnvrtc.so) \
                        is not installed to compile the kernels at run time"
                    .into(),
            );
        }
        // NVRTC resolves `#include "common.cuh"` from a directory: write the embedded headers there.
        let dir =
            std::env::temp_dir().join(format!("undertale-maskedlm-kernels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for (name, text) in KERNEL_SOURCES {
            std::fs::write(dir.join(name), text).map_err(|e| e.to_string())?;
        }
        let source = KERNEL_SOURCES
            .iter()
            .find(|(name, _)| name.strip_suffix(".cu") == Some(file))
            .map(|(_, text)| *text)
            .ok_or_else(|| format!("no embedded source for {file}.cu"))?;
        let mut include_paths = vec![dir.to_string_lossy().into_owned()];
        for var in ["CUDA_HOME", "CUDA_PATH"] {
            if let Some(home) = std::env::var_os(var) {
                include_paths.push(
                    std::path::Path::new(&home)
                        .join("include")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        include_paths.push("/usr/local/cuda/include".into());
        let options = CompileOptions {
            arch: Some(self.arch),
            include_paths,
            options: vec!["-std=c++17".into()],
            name: Some(format!("{file}.cu")),
            ..Default::default()
        };
        cudarc::nvrtc::compile_ptx_with_opts(source, options).map_err(|e| format!("NVRTC: {e}"))
    }

    fn function(&self, kernel: &str) -> Result<CudaFunction> {
        if let Some(f) = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(kernel)
        {
            return Ok(f.clone());
        }
        let file = KERNEL_FILES
            .iter()
            .find(|(name, _)| *name == kernel)
            .map(|(_, file)| *file)
            .ok_or_else(|| Self::kernel_error(kernel, "no kernel of this name in kernels/*.cu"))?;
        let function = self
            .module(file, kernel)?
            .load_function(kernel)
            .map_err(|e| Self::kernel_error(kernel, e))?;
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kernel.to_string(), function.clone());
        Ok(function)
    }

    /// Launches a kernel from PTX other than the embedded kernels (the emulator's self-test kernels,
    /// to check the emulator's tensor-core twins against the real instructions).
    pub fn launch_from_ptx(
        &self,
        module_name: &'static str,
        ptx: &'static str,
        kernel: &str,
        config: &LaunchConfig,
        args: &mut KernelArgs,
    ) -> Result<()> {
        self.bind()?;
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            match modules.get(module_name) {
                Some(module) => module.clone(),
                None => {
                    let module = self.context.load_module(Ptx::from_src(ptx)).map_err(|e| {
                        Self::kernel_error(kernel, format!("loading {module_name}: {e}"))
                    })?;
                    modules.insert(module_name, module.clone());
                    module
                }
            }
        };
        let function = module
            .load_function(kernel)
            .map_err(|e| Self::kernel_error(kernel, e))?;
        self.launch_function(kernel, &function, config, args)
    }

    fn bind(&self) -> Result<()> {
        self.context.bind_to_thread().map_err(|e| self.error(e))
    }
}

impl Drop for CudaRuntime {
    fn drop(&mut self) {
        // SAFETY: the handle was created in `new` and is not used after this.
        unsafe {
            let _ = self.stream.synchronize();
            let _ = lt::destroy_handle(self.blas);
        }
    }
}

impl GpuRuntime for CudaRuntime {
    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    fn alloc(&self, bytes: usize) -> Result<Allocation> {
        self.bind()?;
        let size = bytes.max(1);
        // SAFETY: a plain allocation on this runtime's stream; freed on the same stream.
        let ptr = unsafe { driver::malloc_async(self.stream.cu_stream(), size) }
            .map_err(|e| self.error(format!("allocating {bytes} bytes: {e}")))?;
        if self.poison {
            // SAFETY: `ptr` holds `size` bytes.
            unsafe { driver::memset_d8_async(ptr, 0xff, size, self.stream.cu_stream()) }
                .map_err(|e| self.error(e))?;
        }
        Ok(Allocation::new(
            DevicePtr(ptr),
            bytes,
            Box::new(DeviceMemory {
                ptr,
                stream: self.stream.clone(),
            }),
            &self.meter,
        ))
    }

    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` is an allocation of at least `src.len()` bytes; a copy from pageable host
        // memory returns only once the source has been read.
        unsafe { driver::memcpy_htod_async(dst.0, src, self.stream.cu_stream()) }
            .map_err(|e| self.error(e))?;
        self.traffic.upload(src.len());
        Ok(())
    }

    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: `src` holds at least `dst.len()` bytes; the synchronise keeps `dst` borrowed until
        // the copy has landed.
        unsafe { driver::memcpy_dtoh_async(dst, src.0, self.stream.cu_stream()) }
            .map_err(|e| self.error(e))?;
        self.traffic.download(dst.len());
        self.traffic.synchronization();
        self.stream
            .synchronize()
            .map_err(|e| self.error(format!("a kernel before this copy failed: {e}")))
    }

    fn download_async(&self, src: DevicePtr, bytes: usize) -> Result<PendingDownload> {
        self.bind()?;
        self.traffic.download(bytes);
        if bytes == 0 {
            return Ok(PendingDownload::done(Vec::new()));
        }
        let reused = {
            let mut pool = self.staging.lock().unwrap_or_else(|e| e.into_inner());
            pool.iter()
                .position(|staging| staging.capacity >= bytes)
                .map(|i| pool.swap_remove(i))
        };
        let staging = match reused {
            Some(staging) => staging,
            // Rounded up so that a buffer serves downloads of nearby sizes too.
            None => Staging::new(&self.context, bytes.next_power_of_two().max(256))
                .map_err(|e| self.error(e))?,
        };
        // From here the download owns the buffer: on any error below, dropping it waits for
        // whatever was queued into the buffer before freeing or pooling it.
        let download = CudaDownload {
            ordinal: self.ordinal,
            bytes,
            staging: Some(staging),
            pool: self.staging.clone(),
        };
        let staging = download.staging();
        // SAFETY: the buffer holds at least `bytes` bytes and stays allocated until the event
        // recorded after the copy has completed (see `Staging::drop`); `src` holds `bytes` bytes.
        unsafe {
            let host = std::slice::from_raw_parts_mut(staging.host, bytes);
            driver::memcpy_dtoh_async(host, src.0, self.stream.cu_stream())
        }
        .map_err(|e| self.error(e))?;
        staging
            .event
            .record(&self.stream)
            .map_err(|e| self.error(e))?;
        Ok(PendingDownload::queued(Box::new(download)))
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.traffic.synchronization();
        self.stream
            .synchronize()
            .map_err(|e| self.error(format!("a queued kernel failed: {e}")))
    }

    fn memory(&self) -> &MemoryMeter {
        &self.meter
    }

    fn traffic(&self) -> &TrafficMeter {
        &self.traffic
    }

    fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both allocations hold at least `bytes` bytes.
        unsafe { driver::memcpy_dtod_async(dst.0, src.0, bytes, self.stream.cu_stream()) }
            .map_err(|e| self.error(e))
    }

    fn memset_zero(&self, dst: DevicePtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: the allocation holds at least `bytes` bytes.
        unsafe { driver::memset_d8_async(dst.0, 0, bytes, self.stream.cu_stream()) }
            .map_err(|e| self.error(e))
    }

    fn launch(&self, kernel: &str, config: &LaunchConfig, args: &mut KernelArgs) -> Result<()> {
        self.bind()?;
        let function = self.function(kernel)?;
        self.launch_function(kernel, &function, config, args)
    }

    fn gemm(&self, spec: &GemmSpec) -> Result<()> {
        self.bind()?;
        // cuBLASLt is column-major. A row-major matrix with leading dimension ld is the column-major
        // view of its transpose, so the row-major C = op(A) op(B) is computed as the column-major
        // C^T = op(B)^T op(A)^T: swap the operands and the m/n sizes, keep each operand's flag.
        let cublas = |e: cudarc::cublaslt::result::CublasError| Error::Kernel {
            kernel: "cublasLt matmul".into(),
            reason: format!("{e} for {spec:?}"),
        };
        let (m, n, k) = (spec.n as u64, spec.m as u64, spec.k as u64);
        // Column-major shapes of the stored operands: first is B's memory, second A's.
        let (first_rows, first_cols) = if spec.transpose_b { (k, m) } else { (m, k) };
        let (second_rows, second_cols) = if spec.transpose_a { (n, k) } else { (k, n) };
        let f32_type = lt_sys::cudaDataType_t::CUDA_R_32F;
        let data_type = |dtype: DType| match dtype {
            DType::BF16 => lt_sys::cudaDataType_t::CUDA_R_16BF,
            _ => lt_sys::cudaDataType_t::CUDA_R_32F,
        };
        // SAFETY: descriptors are created, used on this runtime's stream, and destroyed below; the
        // spec's pointers and leading dimensions describe live device matrices.
        unsafe {
            let layouts = [
                lt::create_matrix_layout(
                    data_type(spec.b_type),
                    first_rows,
                    first_cols,
                    spec.ldb as i64,
                )
                .map_err(cublas)?,
                lt::create_matrix_layout(
                    data_type(spec.a_type),
                    second_rows,
                    second_cols,
                    spec.lda as i64,
                )
                .map_err(cublas)?,
                lt::create_matrix_layout(data_type(spec.c_type), m, n, spec.ldc as i64)
                    .map_err(cublas)?,
            ];
            if spec.batch > 1 {
                let strides = [
                    spec.stride_b as i64,
                    spec.stride_a as i64,
                    spec.stride_c as i64,
                ];
                for (layout, stride) in layouts.iter().zip(strides) {
                    let batch = spec.batch as i32;
                    lt::set_matrix_layout_attribute(
                        *layout,
                        lt_sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                        (&batch) as *const i32 as *const _,
                        4,
                    )
                    .map_err(cublas)?;
                    lt::set_matrix_layout_attribute(
                        *layout,
                        lt_sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                        (&stride) as *const i64 as *const _,
                        8,
                    )
                    .map_err(cublas)?;
                }
            }
            // f32 accumulation, and full f32 (not TF32) products for f32 operands: the f32 mode is the
            // one checked tightly against the CPU.
            let desc =
                lt::create_matmul_desc(lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, f32_type)
                    .map_err(cublas)?;
            for (attribute, transposed) in [
                (
                    lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                    spec.transpose_b,
                ),
                (
                    lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                    spec.transpose_a,
                ),
            ] {
                // cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
                let op = i32::from(transposed);
                lt::set_matmul_desc_attribute(
                    desc,
                    attribute,
                    (&op) as *const _ as *const _,
                    std::mem::size_of_val(&op),
                )
                .map_err(cublas)?;
            }
            let preference = lt::create_matmul_pref().map_err(cublas)?;
            let workspace_size = self.workspace.bytes;
            lt::set_matmul_pref_attribute(
                preference,
                lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&workspace_size) as *const usize as *const _,
                std::mem::size_of::<usize>(),
            )
            .map_err(cublas)?;
            // cuBLASLt assumes 256-byte-aligned operands unless told otherwise; weight slices sit at
            // any element offset of the parameter buffer, so state each operand's real alignment
            // (of its address and of its rows) and let the heuristic pick a kernel that allows it.
            let alignment = |ptr: DevicePtr, ld: usize, dtype: DType| -> u32 {
                let row_bytes = (ld * storage::dtype_bytes(dtype)) as u64;
                let combined = ptr.0 | row_bytes | 256;
                1u32 << combined.trailing_zeros().min(8)
            };
            for (attribute, align) in [
                (
                    lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    alignment(spec.b, spec.ldb, spec.b_type),
                ),
                (
                    lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    alignment(spec.a, spec.lda, spec.a_type),
                ),
                (
                    lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    alignment(spec.c, spec.ldc, spec.c_type),
                ),
                (
                    lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                    alignment(spec.c, spec.ldc, spec.c_type),
                ),
            ] {
                lt::set_matmul_pref_attribute(preference, attribute, (&align) as *const u32 as *const _, 4)
                    .map_err(cublas)?;
            }
            let heuristic = lt::get_matmul_algo_heuristic(
                self.blas, desc, layouts[0], layouts[1], layouts[2], layouts[2], preference,
            )
            .map_err(cublas)?;
            let result = lt::matmul(
                self.blas,
                desc,
                (&spec.alpha) as *const f32 as *const _,
                (&spec.beta) as *const f32 as *const _,
                spec.b.0 as *const _,
                layouts[0],
                spec.a.0 as *const _,
                layouts[1],
                spec.c.0 as *const _,
                layouts[2],
                spec.c.0 as *mut _,
                layouts[2],
                (&heuristic.algo) as *const _,
                self.workspace.ptr.0 as *mut _,
                workspace_size,
                self.stream.cu_stream() as *mut _,
            );
            let _ = lt::destroy_matmul_pref(preference);
            let _ = lt::destroy_matmul_desc(desc);
            for layout in layouts {
                let _ = lt::destroy_matrix_layout(layout);
            }
            result.map_err(cublas)
        }
    }
}

impl CudaRuntime {
    fn launch_function(
        &self,
        kernel: &str,
        function: &CudaFunction,
        config: &LaunchConfig,
        args: &mut KernelArgs,
    ) -> Result<()> {
        if config.shared_bytes > 48 * 1024 {
            function
                .set_attribute(
                    driver_sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    config.shared_bytes as i32,
                )
                .map_err(|e| Self::kernel_error(kernel, e))?;
        }
        let mut params: Vec<*mut c_void> = args.pointers();
        let [gx, gy, gz] = config.grid;
        let [bx, by, bz] = config.block;
        // SAFETY: one pointer per kernel parameter, each to a live 8-byte slot of `args`; the
        // argument values (device addresses, sizes) are the launch wrapper's responsibility.
        unsafe {
            driver::launch_kernel(
                function.cu_function(),
                (gx, gy, gz),
                (bx, by, bz),
                config.shared_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| {
            Self::kernel_error(
                kernel,
                format!(
                    "launch (grid {:?}, block {:?}): {e}",
                    config.grid, config.block
                ),
            )
        })?;
        if self.sync_launches {
            self.stream
                .synchronize()
                .map_err(|e| Self::kernel_error(kernel, e))?;
        }
        Ok(())
    }
}
