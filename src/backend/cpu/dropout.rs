//! Inverted dropout with Philox masks: element i is kept when its uniform is >= p, and kept
//! elements are scaled by 1 / (1 - p). Backward applies the same mask, regenerated from the key.

use super::{CpuBackend, activation, i32s, write_activation};
use crate::error::Result;
use crate::ops::dropout::DropoutKernels;
use crate::tensor::Tensor;
use rayon::prelude::*;

use crate::backend::DropoutKey;
use crate::philox::{dropout_uniform, dropout_uniforms};

const CHUNK: usize = 4096;

/// `y = x * mask / (1 - p)`; the same function serves forward and backward. Element i draws
/// uniform number i, or with `rows` (`x` being `[rows.len(), width]`), `rows[i / width] * width +
/// i % width`. Four consecutive elements share one Philox call when their numbers are four
/// consecutive ones (always without `rows`; with them when the width is a multiple of 4), so a
/// call is never made for one word of its four.
pub fn apply(y: &mut [f32], x: &[f32], key: DropoutKey, rows: Option<&[i32]>) {
    let scale = 1.0 / (1.0 - key.p);
    let width = rows.map_or(1, |r| x.len() / r.len().max(1));
    let element = |i: usize| match rows {
        Some(rows) => rows[i / width] as u64 * width as u64 + (i % width) as u64,
        None => i as u64,
    };
    let grouped = rows.is_none() || width.is_multiple_of(4);
    let keep = |x: f32, uniform: f32| if uniform >= key.p { x * scale } else { 0.0 };
    // CHUNK is a multiple of 4, so every chunk starts a group.
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(chunk, (y, x))| {
            let base = chunk * CHUNK;
            for (g, (y, x)) in y.chunks_mut(4).zip(x.chunks(4)).enumerate() {
                let first = base + 4 * g;
                if grouped {
                    let u = dropout_uniforms(key.seed, key.step, key.site, element(first) / 4);
                    for k in 0..y.len() {
                        y[k] = keep(x[k], u[k]);
                    }
                } else {
                    for k in 0..y.len() {
                        let u = dropout_uniform(key.seed, key.step, key.site, element(first + k));
                        y[k] = keep(x[k], u);
                    }
                }
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
        let x = activation(x, "dropout input")?;
        let residual = residual.map(|r| activation(r, "add")).transpose()?;
        write_activation(y, "dropout output", false, |y| {
            apply(y, &x, key, rows);
            if let Some(r) = residual {
                // residual + dropped, element by element (addition commutes exactly).
                y.par_chunks_mut(CHUNK)
                    .zip(r.par_chunks(CHUNK))
                    .for_each(|(y, r)| y.iter_mut().zip(r).for_each(|(y, r)| *y += r));
            }
        })
    }
}
