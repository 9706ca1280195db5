//! The GPU runtime itself, below the ops: GEMMs with the bias epilogue (through cached cuBLASLt
//! plans on a GPU), asynchronous downloads and the host-traffic counts, on the emulator and on a
//! real GPU when there is one (the GPU part says it skipped otherwise). Everything runs in one test
//! function, in order, because a GPU runtime is shared by the whole process and its traffic counts
//! must not see another test's copies.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::backend::HostTraffic;
use undertale_maskedlm::backend::cuda::cuda_runtime::CudaRuntime;
use undertale_maskedlm::backend::cuda::emulated::EmulatedRuntime;
use undertale_maskedlm::backend::cuda::emulator::ScheduleOrder;
use undertale_maskedlm::backend::cuda::launch::DevicePtr;
use undertale_maskedlm::backend::cuda::runtime::{Allocation, GemmSpec, GpuRuntime};
use undertale_maskedlm::{DType, Device};

fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn to_bytes(values: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        _ => bytemuck::cast_slice(values).to_vec(),
    }
}

fn from_bytes(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|h| half::bf16::from_le_bytes([h[0], h[1]]).to_f32())
            .collect(),
        _ => bytemuck::cast_slice(bytes).to_vec(),
    }
}

/// `values` as the device sees them in `dtype`.
fn rounded(values: &[f32], dtype: DType) -> Vec<f32> {
    from_bytes(&to_bytes(values, dtype), dtype)
}

fn upload(runtime: &dyn GpuRuntime, bytes: &[u8]) -> Allocation {
    let memory = runtime.alloc(bytes.len()).expect("alloc");
    runtime.upload(memory.ptr(), bytes).expect("upload");
    memory
}

/// `C = alpha A B^T + beta C + bias` for a batch of two, A `[m, k]`, B stored `[n, k]`, with the
/// bias at `bias_offset` floats into its buffer (an offset of 1 is below cuBLASLt's alignment),
/// run twice (the second run reuses the cached plan) and compared with an f64 computation.
fn check_bias_gemm(
    runtime: &dyn GpuRuntime,
    name: &str,
    dtype: DType,
    beta: f32,
    bias_offset: usize,
) {
    let (m, n, k, batch) = (37, 45, 29, 2);
    let alpha = 0.5f32;
    let mut rng = ChaCha8Rng::seed_from_u64(bias_offset as u64 * 2 + u64::from(beta != 0.0));
    let a = rounded(&random(&mut rng, batch * m * k), dtype);
    let b = rounded(&random(&mut rng, batch * n * k), dtype);
    let c0 = rounded(&random(&mut rng, batch * m * n), dtype);
    let bias_buffer = random(&mut rng, bias_offset + n);
    let bias = &bias_buffer[bias_offset..];
    let a_gpu = upload(runtime, &to_bytes(&a, dtype));
    let b_gpu = upload(runtime, &to_bytes(&b, dtype));
    let bias_gpu = upload(runtime, bytemuck::cast_slice(&bias_buffer));
    let bias_ptr = DevicePtr(bias_gpu.ptr().0 + 4 * bias_offset as u64);
    for run in 0..2 {
        let c_gpu = upload(runtime, &to_bytes(&c0, dtype));
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
        .with_types(dtype, dtype, dtype)
        .with_bias(bias_ptr);
        (spec.batch, spec.stride_a, spec.stride_b, spec.stride_c) = (batch, m * k, n * k, m * n);
        runtime.gemm(&spec).expect("gemm");
        let bytes = runtime
            .download_async(
                c_gpu.ptr(),
                c0.len() * if dtype == DType::BF16 { 2 } else { 4 },
            )
            .expect("download_async")
            .wait()
            .expect("wait");
        let got = from_bytes(&bytes, dtype);
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
                        + f64::from(beta) * f64::from(c0[at])
                        + f64::from(bias[col]);
                    let tolerance = match dtype {
                        DType::BF16 => want.abs() / 128.0 + 1e-3,
                        _ => 1e-4,
                    };
                    assert!(
                        (f64::from(got[at]) - want).abs() <= tolerance,
                        "{name}, {dtype:?}, beta {beta}, bias offset {bias_offset}, run {run}: \
                         batch {i} row {r} col {col}: got {}, want {want}",
                        got[at]
                    );
                }
            }
        }
    }
}

/// Each kind of copy and wait counts as documented on `GpuRuntime::traffic`.
fn check_traffic(runtime: &dyn GpuRuntime, name: &str) {
    let data: Vec<u8> = (0..100u8).collect();
    let memory = runtime.alloc(data.len()).expect("alloc");
    let scratch = runtime.alloc(data.len()).expect("alloc");
    let before = runtime.traffic().snapshot();
    runtime.upload(memory.ptr(), &data).expect("upload");
    // Device-side work counts nothing.
    runtime
        .copy(scratch.ptr(), memory.ptr(), data.len())
        .expect("copy");
    runtime
        .memset_zero(scratch.ptr(), data.len())
        .expect("memset");
    let pending = runtime.download_async(memory.ptr(), 60).expect("async");
    let mut back = vec![0u8; 40];
    runtime.download(memory.ptr(), &mut back).expect("download");
    assert_eq!(back, data[..40], "{name}");
    // The blocking download drained the stream, so the earlier copy has landed.
    assert!(pending.is_ready(), "{name}");
    assert_eq!(pending.wait().expect("wait"), data[..60], "{name}");
    let dropped = runtime.download_async(memory.ptr(), 8).expect("async");
    drop(dropped);
    runtime.synchronize().expect("synchronize");
    assert_eq!(
        runtime.traffic().snapshot().since(&before),
        HostTraffic {
            uploads: 1,
            upload_bytes: 100,
            downloads: 3,
            download_bytes: 108,
            synchronizations: 2,
        },
        "{name}"
    );
}

fn check(runtime: &dyn GpuRuntime, name: &str) {
    check_traffic(runtime, name);
    for dtype in [DType::F32, DType::BF16] {
        for beta in [0.0, 1.0] {
            for bias_offset in [0, 1] {
                check_bias_gemm(runtime, name, dtype, beta, bias_offset);
            }
        }
    }
}

#[test]
fn bias_gemms_async_downloads_and_traffic() {
    check(&EmulatedRuntime::new(ScheduleOrder::Forward), "emulated");
    // A failure instead of a skip under MASKEDLM_REQUIRE_GPU=1.
    if Device::gpu_for_checks()
        .unwrap_or_else(|e| panic!("{e}"))
        .is_some()
    {
        let gpu = CudaRuntime::shared(0).expect("cuda:0 runtime");
        check(gpu.as_ref(), "cuda:0");
    }
}
