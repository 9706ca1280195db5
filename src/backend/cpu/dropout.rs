//! Inverted dropout with Philox masks: element i is kept when its uniform is >= p, and kept
//! elements are scaled by 1 / (1 - p). Backward applies the same mask, regenerated from the key.

use super::{CpuBackend, f32s, f32s_mut, i32s};
use crate::error::Result;
use crate::ops::dropout::DropoutKernels;
use crate::tensor::Tensor;
use rayon::prelude::*;

use crate::backend::DropoutKey;
use crate::philox::dropout_uniform;

const CHUNK: usize = 4096;

/// `y = x * mask / (1 - p)`; the same function serves forward and backward. Element i draws
/// uniform number i, or with `rows` (`x` being `[rows.len(), width]`), `rows[i / width] * width +
/// i % width`.
pub fn apply(y: &mut [f32], x: &[f32], key: DropoutKey, rows: Option<&[i32]>) {
    let scale = 1.0 / (1.0 - key.p);
    let width = rows.map_or(1, |r| x.len() / r.len().max(1));
    let element = |i: usize| match rows {
        Some(rows) => (rows[i / width] as usize * width + i % width) as u64,
        None => i as u64,
    };
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(chunk, (y, x))| {
            let base = chunk * CHUNK;
            for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                let uniform = dropout_uniform(key.seed, key.step, key.site, element(base + i));
                *y = if uniform >= key.p { x * scale } else { 0.0 };
            }
        });
}

impl DropoutKernels for CpuBackend {
    fn dropout_into(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        key: DropoutKey,
        rows: Option<&Tensor>,
        y: &mut Tensor,
    ) -> Result<()> {
        let rows = rows.map(|r| i32s(r, "dropout rows")).transpose()?;
        let y = f32s_mut(y, "dropout output")?;
        apply(y, f32s(x, "dropout input")?, key, rows);
        if let Some(r) = residual {
            // residual + dropped, element by element (addition commutes exactly).
            y.par_chunks_mut(CHUNK)
                .zip(f32s(r, "add")?.par_chunks(CHUNK))
                .for_each(|(y, r)| y.iter_mut().zip(r).for_each(|(y, r)| *y += r));
        }
        Ok(())
    }
}
