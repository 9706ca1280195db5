//! The real GPU: CUDA driver calls, kernels loaded from the embedded fatbins (or compiled by NVRTC
//! when this build had no nvcc), and f32 GEMMs through cuBLASLt. Everything runs on one stream, in
//! order; `download` synchronises it.
//!
//! Libraries are loaded at run time (cudarc's dynamic loading): on a machine without the CUDA
//! driver, NVRTC or cuBLASLt, asking for `Device::Cuda` is an error naming what is missing.

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream, result as driver,
    sys as driver_sys,
};
use cudarc::nvrtc::{CompileOptions, Ptx};

use super::launch::{DevicePtr, KernelArgs, LaunchConfig};
use super::ptx::{KERNEL_FILES, KERNEL_SOURCES, kernel_fatbin};
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
    /// `"sm_80"` or `"sm_90"`: the architecture NVRTC compiles for when there are no fatbins.
    arch: &'static str,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    blas: lt_sys::cublasLtHandle_t,
    /// cuBLASLt plans by everything that determines them, so a GEMM of a shape seen before only
    /// enqueues its matmul.
    plans: Mutex<HashMap<PlanKey, Arc<GemmPlan>>>,
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

/// The embedded kernel sources and headers written to a directory, once per process: NVRTC
/// resolves `#include "common.cuh"` from an include path.
fn kernel_source_dir() -> std::result::Result<&'static Path, String> {
    static DIR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("undertale-maskedlm-kernels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for (name, text) in KERNEL_SOURCES {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        Ok(dir)
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(Clone::clone)
}

/// The include paths NVRTC is given: the kernel sources, then each CUDA toolkit's `include` (for
/// `cuda_bf16.h`) and `include/cccl` (the CCCL headers, `nv/target`, that `cuda_bf16.h` includes,
/// which CUDA 13 keeps apart and nvcc adds by itself): from `CUDA_HOME`, `CUDA_PATH`, and
/// `/usr/local/cuda`.
pub fn nvrtc_include_paths(source_dir: &Path) -> Vec<String> {
    let mut paths = vec![source_dir.to_string_lossy().into_owned()];
    let homes = ["CUDA_HOME", "CUDA_PATH"]
        .into_iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .chain([PathBuf::from("/usr/local/cuda")]);
    for home in homes {
        let include = home.join("include");
        paths.push(include.to_string_lossy().into_owned());
        paths.push(include.join("cccl").to_string_lossy().into_owned());
    }
    paths
}

/// The options the runtime compiles kernel file `file` (its stem) with, for `arch` (`"sm_80"`,
/// `"sm_90"`), when this build has no fatbin.
pub fn nvrtc_options(file: &str, arch: &'static str, source_dir: &Path) -> CompileOptions {
    CompileOptions {
        arch: Some(arch),
        include_paths: nvrtc_include_paths(source_dir),
        options: vec!["-std=c++17".into()],
        name: Some(format!("{file}.cu")),
        ..Default::default()
    }
}

/// Compiles kernel file `file` (its stem, e.g. `"attention"`) from the embedded sources to PTX with
/// NVRTC for `arch`, exactly as the runtime does when this build had no nvcc. The error is NVRTC's
/// log.
pub fn compile_kernel_with_nvrtc(
    file: &str,
    arch: &'static str,
) -> std::result::Result<Ptx, String> {
    // SAFETY: probing for the shared library only tries to open it.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(
            "this build has no compiled kernels (nvcc was not found at build time) and NVRTC \
             (libnvrtc.so) is not installed to compile them at run time"
                .into(),
        );
    }
    let source = KERNEL_SOURCES
        .iter()
        .find(|(name, _)| name.strip_suffix(".cu") == Some(file))
        .map(|(_, text)| *text)
        .ok_or_else(|| format!("no embedded source for {file}.cu"))?;
    let options = nvrtc_options(file, arch, kernel_source_dir()?);
    cudarc::nvrtc::compile_ptx_with_opts(source, options)
        .map_err(|e| format!("NVRTC on {file}.cu for {arch}: {e}"))
}

/// Keeps memory freed by `cuMemFreeAsync` in the device's default pool instead of handing it back
/// to the driver. The pool's release threshold is 0 by default, so at every synchronisation (each
/// blocking download, e.g. a step's loss) the pool trims itself to nothing, and the next step's
/// allocations map fresh memory again: slow, and it serialises with the GPU. With no threshold the
/// freed blocks are reused, as a caching allocator would (PyTorch's keeps freed blocks the same
/// way). The cost is that memory once used stays held by this process until it exits (or
/// `cuMemPoolTrimTo`); [`MemoryMeter`] still counts only live allocations.
///
/// A failure is ignored: the setting changes only speed, never results, and a driver or device
/// that refuses it still allocates correctly, so it is no reason to refuse the device.
fn keep_freed_memory_pooled(context: &CudaContext) {
    let mut pool: driver_sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: `pool` receives the device's default pool; the attribute's value is a cuuint64_t.
    unsafe {
        if driver_sys::cuDeviceGetDefaultMemPool(&mut pool, context.cu_device())
            != driver_sys::CUresult::CUDA_SUCCESS
        {
            return;
        }
        let _ = driver_sys::cuMemPoolSetAttribute(
            pool,
            driver_sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold) as *mut u64 as *mut c_void,
        );
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
        keep_freed_memory_pooled(&context);
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
            plans: Mutex::default(),
            workspace,
            meter,
            traffic: TrafficMeter::default(),
            staging: Arc::default(),
            poison: flag("MASKEDLM_POISON"),
            sync_launches: flag("MASKEDLM_SYNC_LAUNCHES"),
        })
    }

    /// The architecture family of this GPU's kernels: `"sm_80"` or `"sm_90"`.
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

    /// The module of one kernel file: its embedded fatbin (the driver picks this GPU's machine
    /// code, or compiles the PTX for a GPU newer than any of it), or NVRTC's compilation of the
    /// embedded source when this build had no nvcc.
    fn module(&self, file: &'static str, kernel: &str) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(module) = modules.get(file) {
            return Ok(module.clone());
        }
        let image = match kernel_fatbin(file) {
            // Copied into a `Vec`: the driver reads the fatbin's 8-byte header fields in place, and
            // embedded bytes carry no alignment.
            Some(fatbin) => Ptx::from_binary(fatbin.to_vec()),
            None => compile_kernel_with_nvrtc(file, self.arch)
                .map_err(|e| Self::kernel_error(kernel, e))?,
        };
        let module = self
            .context
            .load_module(image)
            .map_err(|e| Self::kernel_error(kernel, format!("loading {file}: {e}")))?;
        modules.insert(file, module.clone());
        Ok(module)
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
            None => {
                let capacity = bytes.checked_next_power_of_two().unwrap_or(bytes).max(256);
                Staging::new(&self.context, capacity).map_err(|e| self.error(e))?
            }
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
        let cublas = |e: lt::CublasError| Error::Kernel {
            kernel: "cublasLt matmul".into(),
            reason: format!("{e} for {spec:?}"),
        };
        let plan = self.gemm_plan(spec).map_err(cublas)?;
        // cuBLASLt reads a bias with fewer than 16 bytes of alignment wrongly or not at all (and
        // has no preference attribute to say so); a bias slice of the parameter buffer may sit at
        // any 4-byte offset, so such a bias is first copied to fresh (256-byte aligned) memory on
        // the stream. The copy is freed on the stream too, after the GEMM has read it.
        let mut aligned_bias = None;
        let bias = match spec.bias {
            Some(bias) if bias.0 % 16 != 0 => {
                let bytes = spec.n * 4;
                let copy = self.alloc(bytes)?;
                self.copy(copy.ptr(), bias, bytes)?;
                let ptr = copy.ptr();
                aligned_bias = Some(copy);
                Some(ptr)
            }
            other => other,
        };
        let result = plan.run(
            self.blas,
            spec,
            bias,
            &self.workspace,
            self.stream.cu_stream(),
        );
        drop(aligned_bias);
        result.map_err(cublas)
    }
}

impl CudaRuntime {
    /// The cached plan for this GEMM's shapes, types, alignment and epilogue, built on first use.
    fn gemm_plan(&self, spec: &GemmSpec) -> std::result::Result<Arc<GemmPlan>, lt::CublasError> {
        let key = PlanKey::of(spec);
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(plan) = plans.get(&key) {
            return Ok(plan.clone());
        }
        // Built under the lock: a plan costs a heuristic query once, and two threads asking for
        // the same new plan should not both pay for it.
        let plan = Arc::new(GemmPlan::new(self.blas, &key, self.workspace.bytes)?);
        plans.insert(key, plan.clone());
        Ok(plan)
    }
}

/// The alignment cuBLASLt may assume of one operand: of its address and of its rows, at most 256
/// bytes (what it assumes when not told).
fn operand_alignment(ptr: DevicePtr, ld: usize, dtype: DType) -> u32 {
    let row_bytes = (ld * storage::dtype_bytes(dtype)) as u64;
    let combined = ptr.0 | row_bytes | 256;
    1u32 << combined.trailing_zeros().min(8)
}

fn dtype_code(dtype: DType) -> u8 {
    match dtype {
        DType::F32 => 0,
        DType::BF16 => 1,
        DType::I32 => 2,
    }
}

fn lt_type(code: u8) -> lt_sys::cudaDataType_t {
    if code == dtype_code(DType::BF16) {
        lt_sys::cudaDataType_t::CUDA_R_16BF
    } else {
        lt_sys::cudaDataType_t::CUDA_R_32F
    }
}

/// Everything that determines a cuBLASLt plan (descriptors and the algorithm the heuristic picks):
/// all of a [`GemmSpec`] but its pointers and scalars, plus what those imply for the kernel choice
/// (the operands' alignment, whether beta is zero, whether there is a bias).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    transpose_a: bool,
    transpose_b: bool,
    batch: usize,
    /// Zero when `batch` is 1: strides of a single product mean nothing.
    strides: [usize; 3],
    /// A, B, C.
    types: [u8; 3],
    /// Of A, B, C as stored.
    alignments: [u32; 3],
    /// The heuristic may pick another kernel when C is not read.
    beta_zero: bool,
    bias: bool,
}

impl PlanKey {
    fn of(spec: &GemmSpec) -> Self {
        PlanKey {
            m: spec.m,
            n: spec.n,
            k: spec.k,
            lda: spec.lda,
            ldb: spec.ldb,
            ldc: spec.ldc,
            transpose_a: spec.transpose_a,
            transpose_b: spec.transpose_b,
            batch: spec.batch,
            strides: if spec.batch > 1 {
                [spec.stride_a, spec.stride_b, spec.stride_c]
            } else {
                [0; 3]
            },
            types: [
                dtype_code(spec.a_type),
                dtype_code(spec.b_type),
                dtype_code(spec.c_type),
            ],
            alignments: [
                operand_alignment(spec.a, spec.lda, spec.a_type),
                operand_alignment(spec.b, spec.ldb, spec.b_type),
                operand_alignment(spec.c, spec.ldc, spec.c_type),
            ],
            beta_zero: spec.beta == 0.0,
            bias: spec.bias.is_some(),
        }
    }
}

/// A cuBLASLt matrix layout, destroyed when dropped.
struct Layout(lt_sys::cublasLtMatrixLayout_t);

impl Layout {
    fn new(
        dtype: u8,
        rows: u64,
        cols: u64,
        ld: usize,
        batch: usize,
        stride: usize,
    ) -> std::result::Result<Self, lt::CublasError> {
        let layout = Layout(lt::create_matrix_layout(
            lt_type(dtype),
            rows,
            cols,
            ld as i64,
        )?);
        if batch > 1 {
            let (count, offset) = (batch as i32, stride as i64);
            // SAFETY: a live layout; each value is of the attribute's type and size.
            unsafe {
                lt::set_matrix_layout_attribute(
                    layout.0,
                    lt_sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    (&count) as *const i32 as *const _,
                    std::mem::size_of_val(&count),
                )?;
                lt::set_matrix_layout_attribute(
                    layout.0,
                    lt_sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                    (&offset) as *const i64 as *const _,
                    std::mem::size_of_val(&offset),
                )?;
            }
        }
        Ok(layout)
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

/// A cuBLASLt matmul descriptor, destroyed when dropped.
struct MatmulDesc(lt_sys::cublasLtMatmulDesc_t);

impl MatmulDesc {
    /// Sets one attribute to `value`.
    ///
    /// # Safety
    /// `T` must be the attribute's type.
    unsafe fn set<T>(
        &self,
        attribute: lt_sys::cublasLtMatmulDescAttributes_t,
        value: &T,
    ) -> std::result::Result<(), lt::CublasError> {
        // SAFETY: a live descriptor; the caller vouches for the value's type.
        unsafe {
            lt::set_matmul_desc_attribute(
                self.0,
                attribute,
                value as *const T as *const _,
                std::mem::size_of::<T>(),
            )
        }
    }
}

impl Drop for MatmulDesc {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_desc`, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

/// A cuBLASLt matmul preference, destroyed when dropped (needed only to choose the algorithm).
struct Preference(lt_sys::cublasLtMatmulPreference_t);

impl Drop for Preference {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_pref`, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

/// Everything a GEMM of one [`PlanKey`] needs but its pointers and scalars: the descriptor, the
/// three layouts (cuBLASLt's A, B and C = D) and the algorithm the heuristic chose. Building one
/// costs a heuristic query, so plans are made once per key and kept. Every handle is owned by a
/// value that destroys it when dropped, so a plan that fails half-way frees what it made.
struct GemmPlan {
    desc: MatmulDesc,
    /// cuBLASLt's A (our B's memory), B (our A's memory), C = D.
    layouts: [Layout; 3],
    algo: lt_sys::cublasLtMatmulAlgo_t,
    /// The bias pointer is an attribute of the shared descriptor: setting it and enqueueing the
    /// matmul that reads it must not interleave with another thread doing the same. (cuBLASLt
    /// reads the descriptor when the matmul is enqueued, so the lock need not outlive that call.)
    enqueue: Mutex<()>,
}

// SAFETY: the descriptors are host-side objects; after construction only `enqueue`'s holder
// changes the descriptor (its bias pointer), and cuBLASLt allows using them from any thread.
unsafe impl Send for GemmPlan {}
unsafe impl Sync for GemmPlan {}

impl GemmPlan {
    fn new(
        blas: lt_sys::cublasLtHandle_t,
        key: &PlanKey,
        workspace_bytes: usize,
    ) -> std::result::Result<Self, lt::CublasError> {
        // cuBLASLt is column-major. A row-major matrix with leading dimension ld is the
        // column-major view of its transpose, so the row-major C = op(A) op(B) is computed as the
        // column-major C^T = op(B)^T op(A)^T: swap the operands and the m/n sizes, keep each
        // operand's flag.
        let (m, n, k) = (key.n as u64, key.m as u64, key.k as u64);
        // Column-major shapes of the stored operands: first is B's memory, second A's.
        let (first_rows, first_cols) = if key.transpose_b { (k, m) } else { (m, k) };
        let (second_rows, second_cols) = if key.transpose_a { (n, k) } else { (k, n) };
        let [stride_a, stride_b, stride_c] = key.strides;
        let layouts = [
            Layout::new(
                key.types[1],
                first_rows,
                first_cols,
                key.ldb,
                key.batch,
                stride_b,
            )?,
            Layout::new(
                key.types[0],
                second_rows,
                second_cols,
                key.lda,
                key.batch,
                stride_a,
            )?,
            Layout::new(key.types[2], m, n, key.ldc, key.batch, stride_c)?,
        ];
        // f32 accumulation, and full f32 (not TF32) products for f32 operands: the f32 mode is
        // the one checked tightly against the CPU.
        let desc = MatmulDesc(lt::create_matmul_desc(
            lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            lt_sys::cudaDataType_t::CUDA_R_32F,
        )?);
        // SAFETY: each value has its attribute's type: cublasOperation_t (CUBLAS_OP_N = 0,
        // CUBLAS_OP_T = 1) as i32, cublasLtEpilogue_t, cudaDataType_t, int64_t.
        unsafe {
            desc.set(
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &i32::from(key.transpose_b),
            )?;
            desc.set(
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                &i32::from(key.transpose_a),
            )?;
            if key.bias {
                // The bias epilogue adds a vector with one element per row of the column-major
                // D, broadcast along D's columns. D is the column-major view of our row-major C
                // transposed: D's rows are C's columns. So cuBLASLt's bias runs along C's `n`
                // columns and is added to every row of C, which is the bias of a linear layer
                // (y = x W^T + b, one b per output feature). It is added in f32 before D is
                // rounded to its type, and read as f32 even when C is bf16.
                desc.set(
                    lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                    &lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
                )?;
                desc.set(
                    lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                    &lt_sys::cudaDataType_t::CUDA_R_32F,
                )?;
                // Every matrix of a batch gets the same bias.
                desc.set(
                    lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE,
                    &0i64,
                )?;
            }
        }
        let preference = Preference(lt::create_matmul_pref()?);
        // cuBLASLt assumes 256-byte-aligned operands unless told otherwise; weight slices sit at
        // any element offset of the parameter buffer, so state each operand's real alignment
        // (of its address and of its rows) and let the heuristic pick a kernel that allows it.
        let [align_a, align_b, align_c] = key.alignments;
        // SAFETY: a live preference; each value has its attribute's type (size_t, uint32_t).
        unsafe {
            lt::set_matmul_pref_attribute(
                preference.0,
                lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&workspace_bytes) as *const usize as *const _,
                std::mem::size_of::<usize>(),
            )?;
            for (attribute, align) in [
                (
                    lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    align_b,
                ),
                (
                    lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    align_a,
                ),
                (
                    lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    align_c,
                ),
                (
                    lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                    align_c,
                ),
            ] {
                lt::set_matmul_pref_attribute(
                    preference.0,
                    attribute,
                    (&align) as *const u32 as *const _,
                    std::mem::size_of::<u32>(),
                )?;
            }
        }
        // SAFETY: live descriptor, layouts and preference; the handle outlives this call.
        let heuristic = unsafe {
            lt::get_matmul_algo_heuristic(
                blas,
                desc.0,
                layouts[0].0,
                layouts[1].0,
                layouts[2].0,
                layouts[2].0,
                preference.0,
            )?
        };
        Ok(GemmPlan {
            desc,
            layouts,
            algo: heuristic.algo,
            enqueue: Mutex::new(()),
        })
    }

    /// Enqueues `spec`'s product (whose key made this plan) with `bias` as its bias pointer.
    fn run(
        &self,
        blas: lt_sys::cublasLtHandle_t,
        spec: &GemmSpec,
        bias: Option<DevicePtr>,
        workspace: &Allocation,
        stream: driver_sys::CUstream,
    ) -> std::result::Result<(), lt::CublasError> {
        let _enqueue = self.enqueue.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the plan's descriptors are live; the spec's pointers describe live device
        // matrices of the shapes the plan was built for (its key), the bias (if any) `n` f32
        // values at 16-byte alignment; the workspace holds `workspace.bytes` bytes.
        unsafe {
            if let Some(bias) = bias {
                let pointer = bias.0 as *const c_void;
                self.desc.set(
                    lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &pointer,
                )?;
            }
            lt::matmul(
                blas,
                self.desc.0,
                (&spec.alpha) as *const f32 as *const _,
                (&spec.beta) as *const f32 as *const _,
                spec.b.0 as *const _,
                self.layouts[0].0,
                spec.a.0 as *const _,
                self.layouts[1].0,
                spec.c.0 as *const _,
                self.layouts[2].0,
                spec.c.0 as *mut _,
                self.layouts[2].0,
                (&self.algo) as *const _,
                workspace.ptr.0 as *mut _,
                workspace.bytes,
                stream as *mut _,
            )
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
