//! Inverted dropout with Philox masks: element i is kept when its uniform is >= p, and kept
//! elements are scaled by 1 / (1 - p). Backward applies the same mask, regenerated from the key.
//!
//! Philox runs on `LANES` counters at once (see [`philox4x32_10_lanes`]), so the mask is drawn in
//! vector registers; the bits are those of the scalar generator.

use super::{CpuBackend, activation, i32s, write_activation};
use crate::error::Result;
use crate::ops::dropout::DropoutKernels;
use crate::tensor::Tensor;
use rayon::prelude::*;

use super::simd::{Level, multiversion};
use crate::backend::DropoutKey;
use crate::philox::{dropout_words_lanes, word_uniform};

const CHUNK: usize = 4096;
/// Philox counters drawn together.
const LANES: usize = 16;
/// Elements per batch when four consecutive elements share a counter.
const BATCH: usize = 4 * LANES;

/// `x * scale` if the word's uniform is at least `p`, else 0.
#[inline(always)]
fn keep(x: f32, word: u32, p: f32, scale: f32) -> f32 {
    if word_uniform(word) >= p {
        x * scale
    } else {
        0.0
    }
}

multiversion! {
    /// Up to `BATCH` elements, element `4 l + w` taking word `w` of group `groups[l]`.
    fn apply_grouped(y: &mut [f32], x: &[f32], key: DropoutKey, groups: [u32; LANES], scale: f32) {
        let words = dropout_words_lanes(key.seed, key.step, key.site, groups);
        if let (Ok(y), Ok(x)) = (<&mut [f32; BATCH]>::try_from(&mut *y), <&[f32; BATCH]>::try_from(x)) {
            for l in 0..LANES {
                for w in 0..4 {
                    y[4 * l + w] = keep(x[4 * l + w], words[w][l], key.p, scale);
                }
            }
        } else {
            for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                *y = keep(x, words[i % 4][i / 4], key.p, scale);
            }
        }
    }
}

multiversion! {
    /// Up to `LANES` elements, element `l` being uniform number `elements[l]`, each with its own
    /// counter.
    fn apply_single(y: &mut [f32], x: &[f32], key: DropoutKey, elements: [u64; LANES], scale: f32) {
        let words = dropout_words_lanes(key.seed, key.step, key.site, elements.map(|e| (e / 4) as u32));
        for (l, (y, &x)) in y.iter_mut().zip(x).enumerate() {
            *y = keep(x, words[(elements[l] % 4) as usize][l], key.p, scale);
        }
    }
}

/// `y = x * mask / (1 - p)`; the same function serves forward and backward. Element i draws
/// uniform number i, or with `rows` (`x` being `[rows.len(), width]`), `rows[i / width] * width +
/// i % width`. Four consecutive elements share one Philox call when their numbers are four
/// consecutive ones (always without `rows`; with them when the width is a multiple of 4), so a
/// call is never made for one word of its four.
pub fn apply(y: &mut [f32], x: &[f32], key: DropoutKey, rows: Option<&[i32]>) {
    let scale = 1.0 / (1.0 - key.p);
    let width = rows.map_or(1, |r| x.len() / r.len().max(1));
    let last = x.len().saturating_sub(1);
    // Lanes past the end draw for the last element; their results are not written.
    let element = |i: usize| {
        let i = i.min(last);
        match rows {
            Some(rows) => rows[i / width] as u64 * width as u64 + (i % width) as u64,
            None => i as u64,
        }
    };
    let grouped = rows.is_none() || width.is_multiple_of(4);
    let level = Level::best();
    // CHUNK is a multiple of BATCH, so every chunk starts a group.
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(chunk, (y, x))| {
            let base = chunk * CHUNK;
            if grouped {
                for (b, (y, x)) in y.chunks_mut(BATCH).zip(x.chunks(BATCH)).enumerate() {
                    let first = base + BATCH * b;
                    let groups = std::array::from_fn(|l| (element(first + 4 * l) / 4) as u32);
                    apply_grouped(level, y, x, key, groups, scale);
                }
            } else {
                for (b, (y, x)) in y.chunks_mut(LANES).zip(x.chunks(LANES)).enumerate() {
                    let first = base + LANES * b;
                    let elements = std::array::from_fn(|l| element(first + l));
                    apply_single(level, y, x, key, elements, scale);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::philox::dropout_uniform;

    /// The definition, one element and one Philox call at a time.
    fn reference(x: &[f32], key: DropoutKey, rows: Option<&[i32]>) -> Vec<f32> {
        let width = rows.map_or(1, |r| x.len() / r.len().max(1));
        let scale = 1.0 / (1.0 - key.p);
        x.iter()
            .enumerate()
            .map(|(i, &x)| {
                let n = match rows {
                    Some(rows) => rows[i / width] as u64 * width as u64 + (i % width) as u64,
                    None => i as u64,
                };
                let u = dropout_uniform(key.seed, key.step, key.site, n);
                if u >= key.p { x * scale } else { 0.0 }
            })
            .collect()
    }

    fn inputs(n: usize, seed: u64) -> Vec<f32> {
        crate::backend::cpu::test_inputs::uniform(n, seed, -0.5, 0.5)
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    #[test]
    fn batched_dropout_matches_the_one_element_definition() {
        for (len, seed) in [(0, 1), (1, 2), (63, 3), (65, 4), (CHUNK * 2 + 77, 5)] {
            let x = inputs(len, seed);
            let key = DropoutKey {
                p: 0.1 * seed as f32,
                seed: seed * 977,
                step: seed << 33,
                site: 3,
            };
            let mut y = vec![f32::NAN; len];
            apply(&mut y, &x, key, None);
            assert_eq!(bits(&y), bits(&reference(&x, key, None)), "length {len}");
        }
    }

    /// Gathered rows: widths that are multiples of 4 (grouped) and not (one counter per element).
    #[test]
    fn batched_dropout_over_rows_matches_the_one_element_definition() {
        for width in [4usize, 12, 68, 3, 5, 33] {
            let rows: Vec<i32> = (0..37).map(|r: i32| r * 7919 % 101).collect();
            let x = inputs(rows.len() * width, width as u64);
            let key = DropoutKey {
                p: 0.3,
                seed: 42,
                step: 9,
                site: width as u32,
            };
            let mut y = vec![f32::NAN; x.len()];
            apply(&mut y, &x, key, Some(&rows));
            let want = reference(&x, key, Some(&rows));
            assert_eq!(bits(&y), bits(&want), "width {width}");
        }
    }

    /// Each instruction-set copy of the batch kernels, on full and partial batches.
    #[test]
    fn every_level_draws_the_same_mask() {
        let key = DropoutKey {
            p: 0.5,
            seed: u64::MAX - 5,
            step: 1 << 40,
            site: 7,
        };
        let scale = 2.0;
        for len in [BATCH, BATCH - 5] {
            let x = inputs(len, len as u64);
            let want = reference(&x, key, None);
            let groups = std::array::from_fn(|l| l as u32);
            let elements = std::array::from_fn(|l| 3 * l as u64 + 1);
            let single: Vec<f32> = x
                .iter()
                .zip(elements)
                .map(|(&x, e)| {
                    let u = dropout_uniform(key.seed, key.step, key.site, e);
                    if u >= key.p { x * scale } else { 0.0 }
                })
                .collect();
            for level in Level::supported() {
                let mut y = vec![f32::NAN; len];
                apply_grouped(level, &mut y, &x, key, groups, scale);
                assert_eq!(bits(&y), bits(&want), "grouped at {level:?}, length {len}");
                let n = len.min(LANES) - (len < BATCH) as usize;
                let mut y = vec![f32::NAN; n];
                apply_single(level, &mut y, &x[..n], key, elements, scale);
                assert_eq!(bits(&y), bits(&single[..n]), "single at {level:?}");
            }
        }
    }
}
