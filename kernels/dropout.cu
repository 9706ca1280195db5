// Inverted dropout with Philox masks, forward and backward alike. CPU reference:
// src/backend/cpu/dropout.rs and src/philox.rs (`dropout_uniform`).
//
//   y_i = x_i / (1 - p)   if u_i >= p   (kept)
//   y_i = 0               otherwise     (dropped)
// where u_i is the uniform of element i: Philox4x32-10 with counter (i / 4, site, step_lo, step_hi)
// and key (seed_lo, seed_hi), output word i % 4, top 24 bits. One Philox call thus serves four
// consecutive elements, and each thread takes exactly such a group: one call, one vector load and one
// vector store (16 bytes of f32 or 8 of bf16; tensors start at 256-byte aligned allocations), with a
// scalar tail for the last n % 4 elements. Backward regenerates the same mask from the key instead of
// storing it.
//
// Packed batches (`rows` not null): x is [rows, width], and element (r, c) draws uniform number
// rows[r] * width + c, its place in the padded batch the row came from, so a packed and a padded
// step drop the same elements. When width % 4 == 0 (every preset) a group of four never straddles
// two rows, so the group starting at (r, c) uses Philox counter (rows[r] * width + c) / 4, one call
// as without rows, plus one int read per group (the same row index for a whole row's groups: L1
// hits); for other widths each element makes its own call (`padded_element`).
//
// The element type follows the input: `dropout_f32` and `dropout_bf16` are the one template over T.
// Bit-identical to the CPU: the uniform is exact (see philox.cuh), `u >= p` compares the same floats,
// and `x * scale` is one correctly rounded f32 multiply by the same f32 scale, computed on the host as
// the CPU computes it; a bf16 element is widened exactly and the product rounded once to bf16, so the
// mask is the same for both types and a kept bf16 element is round_bf16(x * scale). Memory traffic:
// n elements read, n written; ~10 integer multiply rounds per four elements keep it bandwidth-bound.
#include "common.cuh"
#include "philox.cuh"

__device__ __forceinline__ float dropout_one(float x, unsigned word, float p, float scale) {
    return philox_uniform(word) >= p ? x * scale : 0.0f;
}

// Group g of four consecutive elements, widened to f32, and back: one 16-byte access for f32, one
// 8-byte access for bf16 (element k in bits 16k.. of the little-endian 64-bit word).
__device__ __forceinline__ void load4(const float* __restrict__ x, int g, float v[4]) {
    const float4 q = reinterpret_cast<const float4*>(x)[g];
    v[0] = q.x;
    v[1] = q.y;
    v[2] = q.z;
    v[3] = q.w;
}
__device__ __forceinline__ void store4(float* __restrict__ y, int g, const float v[4]) {
    reinterpret_cast<float4*>(y)[g] = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ float bf16_half(unsigned word, int k) {
    return to_float(__ushort_as_bfloat16(static_cast<unsigned short>(k == 0 ? word & 0xffffu : word >> 16)));
}
__device__ __forceinline__ unsigned bf16_pair(float lo, float hi) {
    return static_cast<unsigned>(__bfloat16_as_ushort(from_float<__nv_bfloat16>(lo))) |
           (static_cast<unsigned>(__bfloat16_as_ushort(from_float<__nv_bfloat16>(hi))) << 16);
}
__device__ __forceinline__ void load4(const __nv_bfloat16* __restrict__ x, int g, float v[4]) {
    const int2 q = reinterpret_cast<const int2*>(x)[g];
    v[0] = bf16_half(static_cast<unsigned>(q.x), 0);
    v[1] = bf16_half(static_cast<unsigned>(q.x), 1);
    v[2] = bf16_half(static_cast<unsigned>(q.y), 0);
    v[3] = bf16_half(static_cast<unsigned>(q.y), 1);
}
__device__ __forceinline__ void store4(__nv_bfloat16* __restrict__ y, int g, const float v[4]) {
    int2 q;
    q.x = static_cast<int>(bf16_pair(v[0], v[1]));
    q.y = static_cast<int>(bf16_pair(v[2], v[3]));
    reinterpret_cast<int2*>(y)[g] = q;
}

// A grid-stride loop over groups of four elements.
// With `residual` (not null) the add that follows dropout in the encoder layer is fused in:
// y = residual + dropout(x), the dropped value rounded to T first as the unfused dropout stores it,
// then the sum rounded once. One read of x and of residual and one write of y, where the unfused
// pair writes dropout(x) and reads it back.
// `rows` (may be null): the packed rows' places in the padded batch, whose rows are `width` wide.
// Element (r, c) then draws the uniform of padded element E = rows[r] * width + c: word E % 4 of the
// Philox call with counter E / 4 cut to 32 bits, as on the CPU (E itself is 64 bits: the padded batch
// may hold more elements than the packed one's int count). When width is a multiple of 4, a group
// of four packed elements is one group of four padded ones (one call, as without rows); otherwise a
// group may straddle two rows, and each element makes its own call (four times the integer work,
// for widths no model preset has).
__device__ __forceinline__ unsigned long long padded_element(const int* __restrict__ rows, int width, int i) {
    return static_cast<unsigned long long>(rows[i / width]) * static_cast<unsigned long long>(width) +
           static_cast<unsigned long long>(i % width);
}

template <typename T>
__device__ __forceinline__ void dropout(const T* __restrict__ x, const T* __restrict__ residual, T* __restrict__ y,
                                        const int* __restrict__ rows, int width, int n, float p, float scale,
                                        unsigned seed_lo, unsigned seed_hi, unsigned step_lo, unsigned step_hi,
                                        unsigned site) {
    const int full = n / 4;                          // groups of four elements
    const int groups = full + (n % 4 != 0 ? 1 : 0);  // and a partial one (no overflow near INT_MAX)
    const int stride = gridDim.x * blockDim.x;
    const bool per_element = rows && width % 4 != 0;
    for (int g = blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        const int i = 4 * g;
        unsigned word[4];
        if (per_element) {
            for (int k = 0; k < 4 && i + k < n; ++k) {
                const unsigned long long e = padded_element(rows, width, i + k);
                unsigned w[4] = {static_cast<unsigned>(e / 4), site, step_lo, step_hi};
                philox4x32_10(w, seed_lo, seed_hi);
                word[k] = w[e % 4];
            }
        } else {
            word[0] = rows ? static_cast<unsigned>(padded_element(rows, width, i) / 4) : static_cast<unsigned>(g);
            word[1] = site;
            word[2] = step_lo;
            word[3] = step_hi;
            philox4x32_10(word, seed_lo, seed_hi);
        }
        if (g < full) {
            float v[4];
            load4(x, g, v);
            for (int k = 0; k < 4; ++k) v[k] = dropout_one(v[k], word[k], p, scale);
            if (residual) {
                float r[4];
                load4(residual, g, r);
                for (int k = 0; k < 4; ++k) v[k] = r[k] + to_float(from_float<T>(v[k]));
            }
            store4(y, g, v);
        } else {
            for (int k = 0; k < n - i; ++k) {
                float v = dropout_one(to_float(x[i + k]), word[k], p, scale);
                if (residual) v = to_float(residual[i + k]) + to_float(from_float<T>(v));
                y[i + k] = from_float<T>(v);
            }
        }
    }
}

extern "C" __global__ void dropout_f32(const float* __restrict__ x, float* __restrict__ y, const int* __restrict__ rows,
                                       int width, int n, float p, float scale, unsigned seed_lo, unsigned seed_hi,
                                       unsigned step_lo, unsigned step_hi, unsigned site) {
    dropout<float>(x, nullptr, y, rows, width, n, p, scale, seed_lo, seed_hi, step_lo, step_hi, site);
}

extern "C" __global__ void dropout_bf16(const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ y,
                                        const int* __restrict__ rows, int width, int n, float p, float scale,
                                        unsigned seed_lo, unsigned seed_hi, unsigned step_lo, unsigned step_hi,
                                        unsigned site) {
    dropout<__nv_bfloat16>(x, nullptr, y, rows, width, n, p, scale, seed_lo, seed_hi, step_lo, step_hi, site);
}

// y = residual + dropout(x).
extern "C" __global__ void dropout_add_f32(const float* __restrict__ x, const float* __restrict__ residual,
                                           float* __restrict__ y, const int* __restrict__ rows, int width, int n,
                                           float p, float scale, unsigned seed_lo, unsigned seed_hi, unsigned step_lo,
                                           unsigned step_hi, unsigned site) {
    dropout<float>(x, residual, y, rows, width, n, p, scale, seed_lo, seed_hi, step_lo, step_hi, site);
}

extern "C" __global__ void dropout_add_bf16(const __nv_bfloat16* __restrict__ x,
                                            const __nv_bfloat16* __restrict__ residual, __nv_bfloat16* __restrict__ y,
                                            const int* __restrict__ rows, int width, int n, float p, float scale,
                                            unsigned seed_lo, unsigned seed_hi, unsigned step_lo, unsigned step_hi,
                                            unsigned site) {
    dropout<__nv_bfloat16>(x, residual, y, rows, width, n, p, scale, seed_lo, seed_hi, step_lo, step_hi, site);
}
