//! The emulated GPU runtime: device memory is host memory, kernels run in the emulator, GEMMs run
//! on the CPU (the GEMM is a library call on the GPU too, not one of our kernels).

use std::alloc::{Layout, alloc, dealloc};
use std::sync::Arc;

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

/// The emulated GPU.
#[derive(Debug, Clone)]
pub struct EmulatedRuntime {
    device: EmulatedDevice,
    meter: Arc<MemoryMeter>,
    traffic: Arc<TrafficMeter>,
}

impl EmulatedRuntime {
    pub fn new(order: ScheduleOrder) -> Self {
        EmulatedRuntime {
            device: EmulatedDevice::new().with_order(order),
            meter: Arc::default(),
            traffic: Arc::default(),
        }
    }

    pub fn order(&self) -> ScheduleOrder {
        self.device.order()
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
    use crate::backend::HostTraffic;

    /// Random values in [-1, 1), from a small fixed generator (no dependency for a unit test).
    fn random(seed: u64, len: usize) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn upload(runtime: &EmulatedRuntime, bytes: &[u8]) -> Allocation {
        let memory = runtime.alloc(bytes.len()).unwrap();
        runtime.upload(memory.ptr(), bytes).unwrap();
        memory
    }

    /// The bias epilogue against a plain computation: a transposed B, beta 1 (so C's old values
    /// count), and a batch of two sharing one bias; C in f32 and in bf16, where the bias must be
    /// added before C is rounded.
    #[test]
    fn gemm_adds_the_bias_to_every_row() {
        let runtime = EmulatedRuntime::new(ScheduleOrder::Forward);
        let (m, n, k, batch) = (5, 7, 3, 2);
        let (alpha, beta) = (0.75f32, 1.0f32);
        let a = random(1, batch * m * k);
        // B stored [n, k] and used transposed.
        let b = random(2, batch * n * k);
        let c0 = random(3, batch * m * n);
        let bias = random(4, n);
        for c_type in [DType::F32, DType::BF16] {
            let round = |v: f32| match c_type {
                DType::BF16 => half::bf16::from_f32(v).to_f32(),
                _ => v,
            };
            let c_start: Vec<f32> = c0.iter().map(|&v| round(v)).collect();
            let c_bytes: Vec<u8> = match c_type {
                DType::BF16 => c_start
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
                _ => bytemuck::cast_slice(&c_start).to_vec(),
            };
            let a_gpu = upload(&runtime, bytemuck::cast_slice(&a));
            let b_gpu = upload(&runtime, bytemuck::cast_slice(&b));
            let c_gpu = upload(&runtime, &c_bytes);
            let bias_gpu = upload(&runtime, bytemuck::cast_slice(&bias));
            let mut spec = GemmSpec::dense(
                m,
                n,
                k,
                a_gpu.ptr(),
                false,
                b_gpu.ptr(),
                true,
                c_gpu.ptr(),
                alpha,
                beta,
            )
            .with_types(DType::F32, DType::F32, c_type)
            .with_bias(bias_gpu.ptr());
            (spec.batch, spec.stride_a, spec.stride_b, spec.stride_c) =
                (batch, m * k, n * k, m * n);
            runtime.gemm(&spec).unwrap();

            let mut got = vec![0u8; c_bytes.len()];
            runtime.download(c_gpu.ptr(), &mut got).unwrap();
            let got: Vec<f32> = match c_type {
                DType::BF16 => got
                    .chunks_exact(2)
                    .map(|h| half::bf16::from_le_bytes([h[0], h[1]]).to_f32())
                    .collect(),
                _ => bytemuck::cast_slice(&got).to_vec(),
            };
            for i in 0..batch {
                for r in 0..m {
                    for col in 0..n {
                        let dot: f64 = (0..k)
                            .map(|j| {
                                f64::from(a[i * m * k + r * k + j])
                                    * f64::from(b[i * n * k + col * k + j])
                            })
                            .sum();
                        let at = i * m * n + r * n + col;
                        let want = f64::from(alpha) * dot
                            + f64::from(beta) * f64::from(c_start[at])
                            + f64::from(bias[col]);
                        // One bf16 rounding of the f32 sum, or f32 rounding error only.
                        let tolerance = match c_type {
                            DType::BF16 => want.abs() / 128.0 + 1e-6,
                            _ => 1e-5,
                        };
                        assert!(
                            (f64::from(got[at]) - want).abs() <= tolerance,
                            "{c_type:?} batch {i} row {r} col {col}: got {}, want {want}",
                            got[at]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn traffic_counts_copies_and_synchronisations() {
        let runtime = EmulatedRuntime::new(ScheduleOrder::Forward);
        let before = runtime.traffic().snapshot();
        let memory = runtime.alloc(16).unwrap();
        let data: Vec<u8> = (1..=16).collect();
        runtime.upload(memory.ptr(), &data).unwrap();
        // Device-side work counts nothing.
        runtime.memset_zero(memory.ptr(), 4).unwrap();
        let mut back = vec![0u8; 8];
        runtime.download(memory.ptr(), &mut back).unwrap();
        assert_eq!(back, [0, 0, 0, 0, 5, 6, 7, 8]);
        let pending = runtime.download_async(memory.ptr(), 12).unwrap();
        assert!(pending.is_ready());
        assert_eq!(
            pending.wait().unwrap(),
            [0, 0, 0, 0, 5, 6, 7, 8, 9, 10, 11, 12]
        );
        runtime.synchronize().unwrap();
        assert_eq!(
            runtime.traffic().snapshot().since(&before),
            HostTraffic {
                uploads: 1,
                upload_bytes: 16,
                downloads: 2,
                download_bytes: 20,
                synchronizations: 2,
            }
        );
    }

    /// The bias is added in f32 and C rounded once: 1 + (2^-8 + 2^-20) rounds up to the next bf16
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
