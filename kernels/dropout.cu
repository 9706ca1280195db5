// Inverted dropout with Philox masks, forward and backward alike. CPU reference:
// src/backend/cpu/dropout.rs and src/philox.rs (`dropout_uniform`).
//
//   y_i = x_i / (1 - p)   if u_i >= p   (kept)
//   y_i = 0               otherwise     (dropped)
// where u_i is the uniform of element i: Philox4x32-10 with counter (i / 4, site, step_lo, step_hi)
// and key (seed_lo, seed_hi), output word i % 4, top 24 bits. One Philox call thus serves four
// consecutive elements, and each thread takes exactly such a group: one call, one float4 load and one
// float4 store (16-byte accesses; tensors start at 256-byte aligned allocations), with a scalar tail
// for the last n % 4 elements. Backward regenerates the same mask from the key instead of storing it.
//
// Bit-identical to the CPU: the uniform is exact (see philox.cuh), `u >= p` compares the same floats,
// and `x * scale` is one correctly rounded multiply by the same f32 scale, computed on the host as
// the CPU computes it. Memory traffic: n floats read, n written; ~10 integer multiply rounds per four
// elements keep it bandwidth-bound.
#include "common.cuh"
#include "philox.cuh"

__device__ __forceinline__ float dropout_one(float x, unsigned word, float p, float scale) {
    return philox_uniform(word) >= p ? x * scale : 0.0f;
}

// A grid-stride loop over groups of four elements.
extern "C" __global__ void dropout_f32(const float* __restrict__ x, float* __restrict__ y, int n, float p,
                                       float scale, unsigned seed_lo, unsigned seed_hi, unsigned step_lo,
                                       unsigned step_hi, unsigned site) {
    const int full = n / 4;                       // groups of four elements
    const int groups = full + (n % 4 != 0 ? 1 : 0);  // and a partial one (no overflow near INT_MAX)
    const int stride = gridDim.x * blockDim.x;
    for (int g = blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        unsigned word[4] = {static_cast<unsigned>(g), site, step_lo, step_hi};
        philox4x32_10(word, seed_lo, seed_hi);
        const int i = 4 * g;
        if (g < full) {
            const float4 v = reinterpret_cast<const float4*>(x)[g];
            reinterpret_cast<float4*>(y)[g] =
                make_float4(dropout_one(v.x, word[0], p, scale), dropout_one(v.y, word[1], p, scale),
                            dropout_one(v.z, word[2], p, scale), dropout_one(v.w, word[3], p, scale));
        } else {
            for (int k = 0; k < n - i; ++k) y[i + k] = dropout_one(x[i + k], word[k], p, scale);
        }
    }
}
