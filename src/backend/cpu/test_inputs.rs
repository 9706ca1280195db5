//! Random inputs for the CPU kernels' unit tests.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` values drawn uniformly from `[lo, hi)`, reproducible from `seed`.
pub fn uniform(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}
