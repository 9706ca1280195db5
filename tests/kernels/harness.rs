//! What every kernel test uses: the backends to compare and the comparison.
#![allow(dead_code)]

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::backend::Backend;
use undertale_maskedlm::backend::cpu::CpuBackend;
use undertale_maskedlm::backend::cuda::GpuBackend;
use undertale_maskedlm::backend::cuda::emulated::EmulatedRuntime;
use undertale_maskedlm::backend::cuda::emulator::ScheduleOrder;
use undertale_maskedlm::device::Precision;
use undertale_maskedlm::{DType, Device, Tensor};

/// The reference.
pub fn cpu() -> CpuBackend {
    CpuBackend::new()
}

/// GPU 0 when it is usable; a failure instead of a skip under `MASKEDLM_REQUIRE_GPU=1`.
pub fn real_gpu() -> Option<Device> {
    Device::gpu_for_checks().unwrap_or_else(|e| panic!("{e}"))
}

/// The GPU backends to check: the emulated GPU in every test order, and a real GPU when there is
/// one (run with `MASKEDLM_POISON=1` so its fresh outputs are poisoned like the emulator's).
pub fn gpus() -> Vec<(String, Arc<dyn Backend>)> {
    let mut backends: Vec<(String, Arc<dyn Backend>)> = ScheduleOrder::TEST_ORDERS
        .iter()
        .map(|&order| {
            let backend = Device::Emulated(order).backend().expect("emulated backend");
            (format!("emulated, {order:?} order"), backend)
        })
        .collect();
    if let Some(gpu) = real_gpu() {
        backends.push(("cuda:0".to_string(), gpu.backend().expect("cuda:0 backend")));
    }
    backends
}

/// The same GPUs in bf16 mixed precision, as the concrete backend (for `cast`).
pub fn gpus_bf16() -> Vec<(String, GpuBackend)> {
    let mut backends: Vec<(String, GpuBackend)> = ScheduleOrder::TEST_ORDERS
        .iter()
        .map(|&order| {
            let backend = GpuBackend::new(Arc::new(EmulatedRuntime::new(order)))
                .with_precision(Precision::Bf16);
            (format!("emulated bf16, {order:?} order"), backend)
        })
        .collect();
    if real_gpu().is_some() {
        let gpu = GpuBackend::cuda(0).expect("cuda:0 backend");
        backends.push((
            "cuda:0 bf16".to_string(),
            gpu.with_precision(Precision::Bf16),
        ));
    }
    backends
}

/// `values` rounded to bf16 (nearest even) and back: the inputs a bf16 kernel really sees, for
/// the CPU reference.
pub fn round_bf16(values: &[f32]) -> Vec<f32> {
    values
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect()
}

/// Uploads `values` to the GPU as a bf16 tensor.
pub fn upload_bf16(gpu: &GpuBackend, shape: &[usize], values: &[f32]) -> Tensor {
    let t = gpu.upload_f32(shape, values).expect("upload");
    let t = gpu.cast(&t, DType::BF16).expect("cast to bf16");
    assert_eq!(t.dtype(), DType::BF16);
    t
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform values in [-scale, scale).
pub fn random(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// `got` equals `want` within `rel` relative (to the largest magnitude of `want`) plus `abs`;
/// NaN never passes.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * scale + abs,
            "{what}[{i}]: got {g}, want {w} (scale {scale})"
        );
    }
}
