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

#[inline(always)]
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
    words.map(word_uniform)
}

/// Philox4x32-10 on `N` counters at once, lane by lane: `ctr[w][l]` is word `w` of counter `l`.
/// Laid out this way, each round is the same few operations over `N` lanes, so the 32x32->64-bit
/// multiplies vectorise; lane `l` of the result equals [`philox4x32_10`] on counter `l`.
#[inline(always)]
pub fn philox4x32_10_lanes<const N: usize>(
    mut ctr: [[u32; N]; 4],
    mut key: [u32; 2],
) -> [[u32; N]; 4] {
    for round in 0..10 {
        if round > 0 {
            key = [key[0].wrapping_add(W0), key[1].wrapping_add(W1)];
        }
        let mut next = [[0u32; N]; 4];
        for l in 0..N {
            // The low halves as 32-bit products (one vector multiply each); only the high
            // halves need the widening multiply.
            let hi0 = ((M0 as u64 * ctr[0][l] as u64) >> 32) as u32;
            let hi1 = ((M1 as u64 * ctr[2][l] as u64) >> 32) as u32;
            next[0][l] = hi1 ^ ctr[1][l] ^ key[0];
            next[1][l] = M1.wrapping_mul(ctr[2][l]);
            next[2][l] = hi0 ^ ctr[3][l] ^ key[1];
            next[3][l] = M0.wrapping_mul(ctr[0][l]);
        }
        ctr = next;
    }
    ctr
}

/// The dropout words of `N` groups at once: `words[w][l]` is word `w` of group `groups[l]` (the
/// group's low 32 bits, as in [`dropout_uniforms`]), whose uniform is `word_uniform(words[w][l])`.
#[inline(always)]
pub fn dropout_words_lanes<const N: usize>(
    seed: u64,
    step: u64,
    site: u32,
    groups: [u32; N],
) -> [[u32; N]; 4] {
    let ctr = [
        groups,
        [site; N],
        [step as u32; N],
        [(step >> 32) as u32; N],
    ];
    philox4x32_10_lanes(ctr, [seed as u32, (seed >> 32) as u32])
}

/// A Philox word's uniform in `[0, 1)`: its top 24 bits, exact in f32.
#[inline(always)]
pub fn word_uniform(w: u32) -> f32 {
    (w >> 8) as f32 * (1.0 / 16_777_216.0)
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

    /// Lane-batched Philox gives the scalar generator's words, lane for lane, over many keys,
    /// steps, sites and groups (the groups' low 32 bits wrapping included).
    #[test]
    fn lane_batched_words_match_the_scalar_generator() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let (seed, step, site) = (next(), next() >> (next() % 64), next() as u32);
            let first = next();
            let groups: [u64; 16] = std::array::from_fn(|l| first.wrapping_add(l as u64 * 3));
            let words = dropout_words_lanes(seed, step, site, groups.map(|g| g as u32));
            for (l, &g) in groups.iter().enumerate() {
                let want = dropout_uniforms(seed, step, site, g);
                for (w, want) in want.iter().enumerate() {
                    assert_eq!(word_uniform(words[w][l]), *want, "lane {l} word {w}");
                }
            }
        }
    }
}
