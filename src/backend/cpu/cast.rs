//! f32 <-> bf16 over slices, for the CPU backend's mixed precision.
//!
//! bf16 is the top half of an f32 (sign, the same 8 exponent bits, 7 mantissa bits), so widening
//! is a shift and exact. Narrowing rounds to nearest, ties to even, as the GPU's
//! `__float2bfloat16_rn` does: add `0x7fff` plus the lowest kept bit, then keep the top 16 bits
//! (a carry out of the mantissa correctly bumps the exponent, up to infinity). NaN is the one
//! input that rounding would corrupt (a payload in the low bits only could round to infinity), so
//! it keeps its top half with the quiet bit set. Both loops are branch-free, so they vectorise.

use half::bf16;
use rayon::prelude::*;

use super::scratch::with_scratch;
use super::simd::{Level, multiversion};

/// Elements per rayon task: large enough that the split costs nothing next to the work.
const CHUNK: usize = 1 << 14;

/// `x` rounded to the nearest bf16, ties to even (NaN stays a quiet NaN of the same sign).
#[inline(always)]
pub fn round(x: f32) -> bf16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((bits >> 16) as u16) | 0x0040;
    bf16::from_bits(if x.is_nan() { quiet_nan } else { rounded })
}

/// `x` widened to f32 (exact): its bits are the top half of the f32's.
#[inline(always)]
fn widen_one(x: bf16) -> f32 {
    f32::from_bits((x.to_bits() as u32) << 16)
}

multiversion! {
    /// `dst[i] = round(src[i])` on the calling thread, at the CPU's vector width.
    pub fn narrow_slice(dst: &mut [bf16], src: &[f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = round(s);
        }
    }
}

multiversion! {
    /// `dst[i] = src[i]` widened, on the calling thread, at the CPU's vector width.
    pub fn widen_slice(dst: &mut [f32], src: &[bf16]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = widen_one(s);
        }
    }
}

/// `dst[i] = round(src[i])`.
pub fn narrow(dst: &mut [bf16], src: &[f32]) {
    let level = Level::best();
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| narrow_slice(level, d, s));
}

/// `dst[i] = src[i]` widened (exact).
pub fn widen(dst: &mut [f32], src: &[bf16]) {
    let level = Level::best();
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| widen_slice(level, d, s));
}

/// Rows per task of [`map_rows`]: about `CHUNK` elements, at least one row.
fn rows_per_task(width: usize) -> usize {
    (CHUNK / width.max(1)).max(1)
}

/// An op on bf16 rows computed in f32 a cache-sized block of rows at a time: each rayon task
/// widens its rows of every input into its thread's scratch ([`with_scratch`]), runs `f` (an f32
/// slice kernel, which must not itself go parallel) on them with a zeroed f32 block for its rows
/// of `out`, and rounds that into `out`. Unlike widening whole tensors, no tensor-sized f32 buffer
/// is allocated (a fresh one costs a page fault per 4 KiB) and the blocks stay in L2. `f` gets the
/// index of the block's first row (for per-row inputs), and what it returns for each block
/// (per-row statistics, partial sums) comes back in row order. The blocks depend only on `width`,
/// never on the thread count, so sums over them round the same every run.
pub fn map_rows<const N: usize, R: Send>(
    out: &mut [bf16],
    width: usize,
    inputs: [&[bf16]; N],
    f: impl Fn(usize, &mut [f32], [&[f32]; N]) -> R + Sync,
) -> Vec<R> {
    blocks(out, width, false, inputs, f)
}

/// [`map_rows`] for an op that updates `acc` in place: `f` gets `acc`'s block widened (not
/// zeroed), and the inputs' blocks.
pub fn update_rows<const N: usize>(
    acc: &mut [bf16],
    width: usize,
    inputs: [&[bf16]; N],
    f: impl Fn(usize, &mut [f32], [&[f32]; N]) + Sync,
) {
    blocks(acc, width, true, inputs, f);
}

fn blocks<const N: usize, R: Send>(
    out: &mut [bf16],
    width: usize,
    keep: bool,
    inputs: [&[bf16]; N],
    f: impl Fn(usize, &mut [f32], [&[f32]; N]) -> R + Sync,
) -> Vec<R> {
    const { assert!(N <= 2, "map_rows: at most two inputs") };
    let rows = rows_per_task(width);
    let level = Level::best();
    out.par_chunks_mut(rows * width)
        .enumerate()
        .map(|(task, out)| {
            let range = task * rows * width..task * rows * width + out.len();
            let len = out.len();
            with_scratch([len, len, len], |[first, second, y]| {
                let mut widened = [first, second];
                for (w, x) in widened.iter_mut().zip(&inputs) {
                    widen_slice(level, w, &x[range.clone()]);
                }
                if keep {
                    widen_slice(level, y, out);
                } else {
                    y.fill(0.0);
                }
                let result = f(task * rows, y, std::array::from_fn(|i| &*widened[i]));
                narrow_slice(level, out, y);
                result
            })
        })
        .collect()
}

/// A new f32 vector holding `src` widened.
pub fn widened(src: &[bf16]) -> Vec<f32> {
    let mut out = vec![0.0; src.len()];
    widen(&mut out, src);
    out
}

/// A new bf16 vector holding `src` rounded.
pub fn narrowed(src: &[f32]) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; src.len()];
    narrow(&mut out, src);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn rounding_matches_the_half_crate_on_random_bit_patterns() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut xs: Vec<f32> = (0..200_000).map(|_| f32::from_bits(rng.random())).collect();
        // Exact ties, both parities, and the edges of the range.
        xs.extend([
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
        ]);
        let ours = narrowed(&xs);
        for (x, b) in xs.iter().zip(&ours) {
            let reference = bf16::from_f32(*x);
            if x.is_nan() {
                assert!(b.is_nan(), "{x:?} -> {b:?}");
                assert_eq!(b.is_sign_negative(), x.is_sign_negative());
            } else {
                assert_eq!(
                    b.to_bits(),
                    reference.to_bits(),
                    "{x:e} ({:#x})",
                    x.to_bits()
                );
            }
        }
        let back = widened(&ours);
        for (b, w) in ours.iter().zip(&back) {
            assert!(b.is_nan() && w.is_nan() || b.to_f32() == *w);
        }
    }

    /// Every instruction-set copy of the two conversions gives the same bits as the scalar rule.
    #[test]
    fn every_vector_level_converts_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let xs: Vec<f32> = (0..4099).map(|_| f32::from_bits(rng.random())).collect();
        let want: Vec<u16> = xs.iter().map(|&x| round(x).to_bits()).collect();
        for level in Level::supported() {
            let mut narrowed = vec![bf16::from_bits(0x7fc1); xs.len()];
            narrow_slice(level, &mut narrowed, &xs);
            let got: Vec<u16> = narrowed.iter().map(|b| b.to_bits()).collect();
            assert_eq!(got, want, "narrow at {level:?}");
            let mut widened = vec![f32::NAN; xs.len()];
            widen_slice(level, &mut widened, &narrowed);
            for (w, b) in widened.iter().zip(&narrowed) {
                assert_eq!(
                    w.to_bits(),
                    (b.to_bits() as u32) << 16,
                    "widen at {level:?}"
                );
            }
        }
    }
}
