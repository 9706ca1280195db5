//! Philox4x32-10, the counter-based generator behind dropout masks.
//!
//! A counter-based generator turns `(key, counter)` into random bits with no state, so element i
//! of a dropout mask can be drawn independently by whichever thread (CPU or GPU) handles element
//! i, and backward regenerates the mask instead of storing it. The algorithm and constants are
//! those of Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (Random123), the same
//! generator cuRAND and PyTorch's CUDA dropout use.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// Ten Philox rounds over a 128-bit counter with a 64-bit key.
#[inline]
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        if round > 0 {
            key = [key[0].wrapping_add(W0), key[1].wrapping_add(W1)];
        }
        let (hi0, lo0) = mulhilo(M0, ctr[0]);
        let (hi1, lo1) = mulhilo(M1, ctr[2]);
        ctr = [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0];
    }
    ctr
}

/// The uniform in `[0, 1)` for element `index` of dropout site `site` at `step` under `seed`.
///
/// One Philox call yields four words, used by four consecutive elements: the counter is
/// `(index / 4, site, step_lo, step_hi)`, the key is the seed, and the word is `index % 4`. The top
/// 24 bits of the word become the float, so the value is exact in f32 on every device.
#[inline]
pub fn dropout_uniform(seed: u64, step: u64, site: u32, index: u64) -> f32 {
    dropout_uniforms(seed, step, site, index / 4)[(index % 4) as usize]
}

/// The uniforms of elements `4 group .. 4 group + 4` (see [`dropout_uniform`]): one Philox call
/// for four elements.
#[inline]
pub fn dropout_uniforms(seed: u64, step: u64, site: u32, group: u64) -> [f32; 4] {
    let ctr = [group as u32, site, step as u32, (step >> 32) as u32];
    let words = philox4x32_10(ctr, [seed as u32, (seed >> 32) as u32]);
    words.map(|w| (w >> 8) as f32 * (1.0 / 16_777_216.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vectors from Random123's `kat_vectors` for philox4x32 with 10 rounds.
    #[test]
    fn matches_random123_known_answers() {
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn uniforms_are_in_range_and_balanced() {
        let n = 100_000u64;
        let mut below_half = 0;
        for i in 0..n {
            let u = dropout_uniform(7, 3, 1, i);
            assert!((0.0..1.0).contains(&u));
            if u < 0.5 {
                below_half += 1;
            }
        }
        let frac = below_half as f64 / n as f64;
        assert!((frac - 0.5).abs() < 0.01, "fraction below 0.5: {frac}");
    }
}
