// Philox4x32-10 on the device: a line-for-line port of src/philox.rs, so that a kernel draws the same
// bits as the CPU for the same (key, counter). Salmon et al., "Parallel random numbers: as easy as
// 1, 2, 3" (Random123); the generator of cuRAND and PyTorch's CUDA dropout.
//
// A counter-based generator has no state: ten rounds of multiply-xor-permute turn a 128-bit counter
// and a 64-bit key into 128 random bits, so each thread draws its own elements independently and a
// backward pass regenerates a mask instead of storing it. Pure 32-bit integer arithmetic: the result
// is the same on every device and in the emulator.
#pragma once

#include "common.cuh"

constexpr unsigned PHILOX_M0 = 0xD2511F53u;  // round multipliers
constexpr unsigned PHILOX_M1 = 0xCD9E8D57u;
constexpr unsigned PHILOX_W0 = 0x9E3779B9u;  // key schedule (Weyl sequence) increments
constexpr unsigned PHILOX_W1 = 0xBB67AE85u;

// Ten Philox rounds: `ctr` (4 words) is replaced by the output, the key is (key0, key1).
// Each round: (hi0, lo0) = M0 * ctr[0], (hi1, lo1) = M1 * ctr[2] as 64-bit products, then
//   ctr = (hi1 ^ ctr[1] ^ key0, lo1, hi0 ^ ctr[3] ^ key1, lo0)
// and the key advances by (W0, W1) before every round but the first.
__device__ __forceinline__ void philox4x32_10(unsigned ctr[4], unsigned key0, unsigned key1) {
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            key0 += PHILOX_W0;
            key1 += PHILOX_W1;
        }
        const unsigned hi0 = __umulhi(PHILOX_M0, ctr[0]);
        const unsigned lo0 = PHILOX_M0 * ctr[0];
        const unsigned hi1 = __umulhi(PHILOX_M1, ctr[2]);
        const unsigned lo1 = PHILOX_M1 * ctr[2];
        const unsigned c1 = ctr[1];
        const unsigned c3 = ctr[3];
        ctr[0] = hi1 ^ c1 ^ key0;
        ctr[1] = lo1;
        ctr[2] = hi0 ^ c3 ^ key1;
        ctr[3] = lo0;
    }
}

// A Philox output word as a uniform in [0, 1): its top 24 bits times 2^-24. Both steps are exact in
// f32 (a 24-bit integer, a power-of-two scale), so the value is bit-identical to the CPU's.
__device__ __forceinline__ float philox_uniform(unsigned word) {
    return static_cast<float>(word >> 8) * (1.0f / 16777216.0f);
}
