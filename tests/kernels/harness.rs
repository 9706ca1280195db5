//! What every kernel test uses: the backends to compare and the comparison.
#![allow(dead_code)]

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::Device;
use undertale_maskedlm::backend::Backend;
use undertale_maskedlm::backend::cpu::CpuBackend;
use undertale_maskedlm::backend::cuda::emulator::ScheduleOrder;

/// The reference.
pub fn cpu() -> CpuBackend {
    CpuBackend::new()
}

/// The emulated GPU in every test order.
pub fn gpus() -> Vec<(ScheduleOrder, Arc<dyn Backend>)> {
    ScheduleOrder::TEST_ORDERS
        .iter()
        .map(|&order| {
            (
                order,
                Device::Emulated(order).backend().expect("emulated backend"),
            )
        })
        .collect()
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
