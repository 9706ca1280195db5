//! Inverted dropout with Philox masks: element i is kept when its uniform is >= p, and kept
//! elements are scaled by 1 / (1 - p). Backward applies the same mask, regenerated from the key.

use super::{CpuBackend, f32s, f32s_mut};
use crate::error::Result;
use crate::ops::dropout::DropoutKernels;
use crate::tensor::Tensor;
use rayon::prelude::*;

use crate::backend::DropoutKey;
use crate::philox::dropout_uniform;

const CHUNK: usize = 4096;

/// `y = x * mask / (1 - p)`; the same function serves forward and backward.
pub fn apply(y: &mut [f32], x: &[f32], key: DropoutKey) {
    let scale = 1.0 / (1.0 - key.p);
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(chunk, (y, x))| {
            let base = (chunk * CHUNK) as u64;
            for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                let keep = dropout_uniform(key.seed, key.step, key.site, base + i as u64) >= key.p;
                *y = if keep { x * scale } else { 0.0 };
            }
        });
}

impl DropoutKernels for CpuBackend {
    fn dropout_into(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        key: DropoutKey,
        y: &mut Tensor,
    ) -> Result<()> {
        let y = f32s_mut(y, "dropout output")?;
        apply(y, f32s(x, "dropout input")?, key);
        if let Some(r) = residual {
            // residual + dropped, element by element (addition commutes exactly).
            y.par_chunks_mut(CHUNK)
                .zip(f32s(r, "add")?.par_chunks(CHUNK))
                .for_each(|(y, r)| y.iter_mut().zip(r).for_each(|(y, r)| *y += r));
        }
        Ok(())
    }
}
