//! Inverted dropout with Philox masks: element i is kept when its uniform is >= p, and kept
//! elements are scaled by 1 / (1 - p). Backward applies the same mask, regenerated from the key.
//!
//! Philox runs on `LANES` counters at once (see [`philox4x32_10_lanes`]), so the mask is drawn in
//! vector registers; the bits are those of the scalar generator.

use super::{CpuBackend, activation, bf16s, bf16s_mut, cast, i32s, write_activation};
use crate::error::Result;
use crate::ops::dropout::DropoutKernels;
use crate::tensor::{DType, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::simd::{Level, multiversion};
use crate::backend::DropoutKey;
use crate::philox::dropout_words_lanes;

const CHUNK: usize = 4096;
/// Philox counters drawn together.
const LANES: usize = 16;
/// Elements per batch when four consecutive elements share a counter.
const BATCH: usize = 4 * LANES;

/// The integer form of the test `word_uniform(word) >= p` ([`crate::philox::word_uniform`]): the uniform is `(word >> 8) * 2^-24`
/// exactly, so it is at least `p` exactly when `word >> 8` is at least `p * 2^24` (exact: a power
/// of two), i.e. at least its ceiling. One integer compare per element instead of a conversion,
/// a multiply and a float compare.
fn threshold(p: f32) -> u32 {
    (p * 16_777_216.0).ceil() as u32
}

/// `x * scale` if the word's uniform is at least `p` (`word >> 8 >= threshold(p)`), else 0.
#[inline(always)]
fn keep(x: f32, word: u32, threshold: u32, scale: f32) -> f32 {
    if word >> 8 >= threshold {
        x * scale
    } else {
        0.0
    }
}

multiversion! {
    /// Up to `BATCH` elements, element `4 l + w` taking word `w` of group `groups[l]`.
    fn apply_grouped(y: &mut [f32], x: &[f32], key: DropoutKey, groups: [u32; LANES], scale: f32) {
        let words = dropout_words_lanes(key.seed, key.step, key.site, groups);
        let threshold = threshold(key.p);
        if let (Ok(y), Ok(x)) = (<&mut [f32; BATCH]>::try_from(&mut *y), <&[f32; BATCH]>::try_from(x)) {
            for l in 0..LANES {
                for w in 0..4 {
                    y[4 * l + w] = keep(x[4 * l + w], words[w][l], threshold, scale);
                }
            }
        } else {
            for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                *y = keep(x, words[i % 4][i / 4], threshold, scale);
            }
        }
    }
}

multiversion! {
    /// Up to `LANES` elements, element `l` being uniform number `elements[l]`, each with its own
    /// counter.
    fn apply_single(y: &mut [f32], x: &[f32], key: DropoutKey, elements: [u64; LANES], scale: f32) {
        let words = dropout_words_lanes(key.seed, key.step, key.site, elements.map(|e| (e / 4) as u32));
        let threshold = threshold(key.p);
        for (l, (y, &x)) in y.iter_mut().zip(x).enumerate() {
            *y = keep(x, words[(elements[l] % 4) as usize][l], threshold, scale);
        }
    }
}

/// One dropout call's mask: the key, and how an element's index maps to its uniform number.
#[derive(Clone, Copy)]
struct Mask<'a> {
    key: DropoutKey,
    scale: f32,
    rows: Option<&'a [i32]>,
    width: usize,
    last: usize,
    /// Whether four consecutive elements always take one Philox call's four words.
    grouped: bool,
    level: Level,
}

impl<'a> Mask<'a> {
    /// The mask of `len` elements, `[rows.len(), width]` when `rows` is given.
    fn new(key: DropoutKey, len: usize, rows: Option<&'a [i32]>) -> Self {
        let width = rows.map_or(1, |r| len / r.len().max(1));
        Mask {
            key,
            scale: 1.0 / (1.0 - key.p),
            rows,
            width,
            last: len.saturating_sub(1),
            grouped: rows.is_none() || width.is_multiple_of(4),
            level: Level::best(),
        }
    }

    /// Element i's uniform number. Lanes past the end draw for the last element; their results
    /// are not written.
    fn element(&self, i: usize) -> u64 {
        let i = i.min(self.last);
        match self.rows {
            Some(rows) => rows[i / self.width] as u64 * self.width as u64 + (i % self.width) as u64,
            None => i as u64,
        }
    }

    /// `y = x * mask / (1 - p)` for elements `first..first + x.len()`, on the calling thread.
    /// `first` is a multiple of `BATCH`, so the block starts a group.
    fn apply_block(&self, y: &mut [f32], x: &[f32], first: usize) {
        if self.grouped {
            for (b, (y, x)) in y.chunks_mut(BATCH).zip(x.chunks(BATCH)).enumerate() {
                let at = first + BATCH * b;
                let groups = std::array::from_fn(|l| (self.element(at + 4 * l) / 4) as u32);
                apply_grouped(self.level, y, x, self.key, groups, self.scale);
            }
        } else {
            for (b, (y, x)) in y.chunks_mut(LANES).zip(x.chunks(LANES)).enumerate() {
                let at = first + LANES * b;
                let elements = std::array::from_fn(|l| self.element(at + l));
                apply_single(self.level, y, x, self.key, elements, self.scale);
            }
        }
    }
}

/// `y = x * mask / (1 - p)`; the same function serves forward and backward. Element i draws
/// uniform number i, or with `rows` (`x` being `[rows.len(), width]`), `rows[i / width] * width +
/// i % width`. Four consecutive elements share one Philox call when their numbers are four
/// consecutive ones (always without `rows`; with them when the width is a multiple of 4), so a
/// call is never made for one word of its four.
pub fn apply(y: &mut [f32], x: &[f32], key: DropoutKey, rows: Option<&[i32]>) {
    let mask = Mask::new(key, x.len(), rows);
    // CHUNK is a multiple of BATCH, so every chunk starts a group.
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(chunk, (y, x))| mask.apply_block(y, x, chunk * CHUNK));
}

/// [`apply`] on bf16, plus `residual` when given, a cache-sized block at a time: the kept values
/// are scaled and added in f32 and rounded once, as in f32 mode on widened inputs.
fn apply_bf16(
    y: &mut [bf16],
    x: &[bf16],
    residual: Option<&[bf16]>,
    key: DropoutKey,
    rows: Option<&[i32]>,
) {
    let mask = Mask::new(key, x.len(), rows);
    // map_rows' blocks of width-1 rows start at multiples of its block size, itself a multiple
    // of BATCH.
    match residual {
        None => {
            cast::map_rows(y, 1, [x], |first, y, [x]| mask.apply_block(y, x, first));
        }
        Some(r) => {
            cast::map_rows(y, 1, [x, r], |first, y, [x, r]| {
                mask.apply_block(y, x, first);
                y.iter_mut().zip(r).for_each(|(y, r)| *y += r);
            });
        }
    }
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
        let all_bf16 = x.dtype() == DType::BF16
            && y.dtype() == DType::BF16
            && residual.is_none_or(|r| r.dtype() == DType::BF16);
        if all_bf16 {
            let residual = residual.map(|r| bf16s(r, "add")).transpose()?;
            let x = bf16s(x, "dropout input")?;
            apply_bf16(bf16s_mut(y, "dropout output")?, x, residual, key, rows);
            return Ok(());
        }
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

    /// The integer threshold keeps exactly the words whose uniform is at least p: every p on a
    /// grid of the uniforms' own values (and their neighbours), and random ones.
    #[test]
    fn the_integer_threshold_is_the_uniform_comparison() {
        use crate::philox::word_uniform;
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut ps: Vec<f32> = vec![
            0.0,
            f32::from_bits(1),
            1e-30,
            0.1,
            0.5,
            0.9,
            1.0 - 1.0 / 16_777_216.0,
        ];
        for k in [1u32, 2, 3, 1000, 1 << 20, (1 << 24) - 1] {
            let p = k as f32 / 16_777_216.0;
            ps.extend([
                p,
                f32::from_bits(p.to_bits() - 1),
                f32::from_bits(p.to_bits() + 1),
            ]);
        }
        ps.extend((0..200).map(|_| rng.random_range(0.0f32..1.0)));
        for p in ps {
            let t = threshold(p);
            let words = (0..2000)
                .map(|_| rng.random::<u32>())
                .chain([0, 255, 256, u32::MAX]);
            for w in words.chain((0..3).map(|d| (t.saturating_sub(1) + d) << 8)) {
                assert_eq!(w >> 8 >= t, word_uniform(w) >= p, "p {p:e}, word {w:#x}");
            }
        }
    }

    /// bf16 dropout (with and without a residual, over rows and not, across several blocks) is
    /// the f32 definition on the widened inputs, plus the residual, rounded once.
    #[test]
    fn bf16_dropout_is_the_f32_definition_rounded() {
        let widen = |v: &[bf16]| v.iter().map(|b| b.to_f32()).collect::<Vec<f32>>();
        let narrow = |v: &[f32]| v.iter().map(|&x| cast::round(x)).collect::<Vec<bf16>>();
        for (len, width) in [
            (3 * (1 << 14) + 77, None),
            (37 * 68, Some(68)),
            (37 * 5, Some(5)),
        ] {
            let rows: Vec<i32> = (0..37).map(|r: i32| r * 7919 % 101).collect();
            let rows = width.map(|_| rows.as_slice());
            let x = narrow(&inputs(len, 8));
            let r = narrow(&inputs(len, 9));
            let key = DropoutKey {
                p: 0.2,
                seed: 5,
                step: 77,
                site: 2,
            };
            let dropped = reference(&widen(&x), key, rows);
            let with_residual: Vec<f32> =
                dropped.iter().zip(widen(&r)).map(|(d, r)| d + r).collect();
            for (residual, want) in [(None, &dropped), (Some(r.as_slice()), &with_residual)] {
                let mut y = vec![bf16::NAN; len];
                apply_bf16(&mut y, &x, residual, key, rows);
                let got: Vec<u16> = y.iter().map(|b| b.to_bits()).collect();
                let want: Vec<u16> = narrow(want).iter().map(|b| b.to_bits()).collect();
                assert_eq!(got, want, "length {len}, residual {}", residual.is_some());
            }
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
