// Row selection: gather, its adjoint scatter-add, argmax, and the softmax's top k for infer. CPU
// reference: src/backend/cpu/rows.rs.
//
// All four are one warp per row with the lanes striding over the row's `width` elements, so every
// warp-wide access is a contiguous segment (128 bytes of f32, 64 of bf16); there is no shared memory
// and no barrier (a warp past the last row leaves at once). Each is a single pass over memory:
// gather reads and writes m * width elements, scatter reads m * width and writes the distinct rows
// once (the rest of the output is zeroed by a memset beforehand), argmax reads n * width elements
// and writes n ints. Each kernel is a template over the activation type T (float or __nv_bfloat16)
// with one entry point per type, `<name>_f32` and `<name>_bf16`; arithmetic is in f32 (scatter sums
// in f32 and rounds once). Row indices are validated on the host before launch (the same check and
// error as the CPU).
#include "common.cuh"

constexpr unsigned FULL_MASK = 0xffffffffu;

// out[i] = x[rows[i]], i < m. A copy: bit-identical to the CPU (for bf16, to the rounded input).
template <typename T>
__device__ __forceinline__ void gather_rows(const T* __restrict__ x, const int* __restrict__ rows,
                                            T* __restrict__ out, int m, int width) {
    const int i = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (i >= m) return;
    const T* src = x + static_cast<size_t>(rows[i]) * width;
    T* dst = out + static_cast<size_t>(i) * width;
    for (int c = lane; c < width; c += 32) dst[c] = src[c];
}

extern "C" __global__ void gather_rows_f32(const float* __restrict__ x, const int* __restrict__ rows,
                                           float* __restrict__ out, int m, int width) {
    gather_rows<float>(x, rows, out, m, width);
}

extern "C" __global__ void gather_rows_bf16(const __nv_bfloat16* __restrict__ x, const int* __restrict__ rows,
                                            __nv_bfloat16* __restrict__ out, int m, int width) {
    gather_rows<__nv_bfloat16>(x, rows, out, m, width);
}

// out[rows[i]] += dy[i] for every i, into an output that is zero elsewhere. Rows may repeat; the CPU
// adds the repeats in index order starting from zero, and so does this kernel, deterministically and
// without atomics: the host links the indices of each distinct row into a chain (`next[i]` is the
// next index with the same row, -1 at the end) and lists the first index of every chain in `heads`.
// One warp per chain sums 0 + dy[i0] + dy[i1] + ... in that order in f32 and writes the row once:
// an f32 result is bit-identical to the CPU's, a bf16 one is the CPU's sum of the rounded dy rounded
// once. (Atomic adds would make the last bits depend on scheduling.)
template <typename T>
__device__ __forceinline__ void scatter_rows(const T* __restrict__ dy, const int* __restrict__ rows,
                                             const int* __restrict__ heads, const int* __restrict__ next,
                                             T* __restrict__ out, int chains, int width) {
    const int k = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (k >= chains) return;
    const int head = heads[k];
    T* dst = out + static_cast<size_t>(rows[head]) * width;
    for (int c = lane; c < width; c += 32) {
        float sum = 0.0f;
        for (int i = head; i >= 0; i = next[i]) sum += to_float(dy[static_cast<size_t>(i) * width + c]);
        dst[c] = from_float<T>(sum);
    }
}

extern "C" __global__ void scatter_rows_f32(const float* __restrict__ dy, const int* __restrict__ rows,
                                            const int* __restrict__ heads, const int* __restrict__ next,
                                            float* __restrict__ out, int chains, int width) {
    scatter_rows<float>(dy, rows, heads, next, out, chains, width);
}

extern "C" __global__ void scatter_rows_bf16(const __nv_bfloat16* __restrict__ dy, const int* __restrict__ rows,
                                             const int* __restrict__ heads, const int* __restrict__ next,
                                             __nv_bfloat16* __restrict__ out, int chains, int width) {
    scatter_rows<__nv_bfloat16>(dy, rows, heads, next, out, chains, width);
}

// Whether candidate (value a, index ia) ranks before (value b, index ib): a larger value, then a
// smaller index; NaN values after every number (among themselves, by index). An index < 0 means "no
// candidate". The order is total on candidates, so the choice does not depend on which lane holds
// which candidate.
__device__ __forceinline__ bool ranks_before(float a, int ia, float b, int ib) {
    if (ia < 0) return false;
    if (ib < 0) return true;
    const bool a_nan = a != a, b_nan = b != b;
    if (a_nan != b_nan) return b_nan;
    if (a_nan) return ia < ib;
    return a > b || (a == b && ia < ib);
}

// The best candidate of the warp, left in every lane: a butterfly of 5 shuffle steps.
__device__ __forceinline__ void warp_best(float& value, int& index) {
    for (int offset = 16; offset > 0; offset /= 2) {
        const float other = __shfl_xor_sync(FULL_MASK, value, offset);
        const int other_index = __shfl_xor_sync(FULL_MASK, index, offset);
        if (ranks_before(other, other_index, value, index)) {
            value = other;
            index = other_index;
        }
    }
}

// out[r] = the first index of the largest element of row r, as the CPU's sequential loop
//   best = 0; for j: if x[j] > x[best] then best = j
// computes it, NaN included: a NaN never compares greater, so NaNs are skipped, and a NaN at index 0
// is never replaced (every comparison against it is false): the answer is then 0. A row with no
// non-NaN element also gives 0.
// Each lane keeps its best (value, index) over columns lane, lane + 32, ...; in increasing index
// order with a strict `>`, so ties keep the first. A butterfly of __shfl_xor_sync then combines
// the 32 candidates (5 steps), leaving the winner in every lane. bf16 values are compared as the
// floats they widen to exactly, so the answer is the CPU's on the rounded row.
template <typename T>
__device__ __forceinline__ void argmax_rows(const T* __restrict__ x, int* __restrict__ out, int n, int width) {
    const int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= n) return;
    const T* row = x + static_cast<size_t>(r) * width;
    float best = 0.0f;
    int best_index = -1;
    for (int c = lane; c < width; c += 32) {
        const float v = to_float(row[c]);
        if (v == v && (best_index < 0 || v > best)) {
            best = v;
            best_index = c;
        }
    }
    warp_best(best, best_index);
    if (lane == 0) {
        const float first = to_float(row[0]);
        out[r] = (best_index < 0 || first != first) ? 0 : best_index;
    }
}

extern "C" __global__ void argmax_rows_f32(const float* __restrict__ x, int* __restrict__ out, int n, int width) {
    argmax_rows<float>(x, out, n, width);
}

extern "C" __global__ void argmax_rows_bf16(const __nv_bfloat16* __restrict__ x, int* __restrict__ out, int n,
                                            int width) {
    argmax_rows<__nv_bfloat16>(x, out, n, width);
}

// ---- The softmax's top k, for infer ------------------------------------------------------------
// For each row x of `width` logits: the k entries with the largest probability softmax(x)_j =
// exp(x_j - lse), lse = log sum_j exp(x_j), best first, with their probabilities. Only k ids and k
// probabilities leave the GPU, instead of the row (20 KB per masked position at a 5000-token
// vocabulary).
//
// The order is that of the logits (exp is increasing): a larger logit first, the lower index first
// on ties, and NaN logits after every number (among themselves, by index). It is total, so "the
// next best after (v, i)" is well defined: round t takes, over the elements ranked after the pick of
// round t - 1, the best one. Each round is one pass over the row, each lane keeping the best of its
// columns lane, lane + 32, ..., then the argmax's butterfly; k rounds read the row k + 1 times (the
// first pass forms lse), from L1 after the first: k * width compares per row, for the handful of k a
// user asks for. A sort or a heap would pay off only for large k.
//
// lse: each lane keeps a running max m and s = sum exp(x - m) of its columns (the cross-entropy
// kernel's online form), the butterfly merges two lanes' (m, s) by rescaling to the larger max. A
// NaN logit makes s, and so every probability of the row, NaN, as the CPU's sum does.

template <typename T>
__device__ __forceinline__ void softmax_top_k_rows(const T* __restrict__ x, int* __restrict__ ids,
                                                   float* __restrict__ probabilities, int n, int width, int k) {
    const int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= n) return;
    const T* row = x + static_cast<size_t>(r) * width;

    const float neg_inf = __int_as_float(static_cast<int>(0xff800000u));
    float m = neg_inf;
    float s = 0.0f;
    for (int c = lane; c < width; c += 32) {
        const float v = to_float(row[c]);
        if (v > m) {
            s = s * expf(m - v) + 1.0f;
            m = v;
        } else if (v != neg_inf) {
            s += expf(v - m);  // NaN propagates into s
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        const float other_m = __shfl_xor_sync(FULL_MASK, m, offset);
        const float other_s = __shfl_xor_sync(FULL_MASK, s, offset);
        const float top = fmaxf(m, other_m);
        // A lane that saw only -inf (s == 0) adds nothing; avoid 0 * exp(-inf - -inf) = NaN.
        s = (s == 0.0f ? 0.0f : s * expf(m - top)) + (other_s == 0.0f ? 0.0f : other_s * expf(other_m - top));
        m = top;
    }
    const float lse = m + logf(s);

    float previous = 0.0f;
    int previous_index = -1;
    for (int t = 0; t < k; ++t) {
        float best = 0.0f;
        int best_index = -1;
        for (int c = lane; c < width; c += 32) {
            const float v = to_float(row[c]);
            if ((previous_index < 0 || ranks_before(previous, previous_index, v, c)) &&
                ranks_before(v, c, best, best_index)) {
                best = v;
                best_index = c;
            }
        }
        warp_best(best, best_index);
        // k <= width (checked on the host), so every round finds a candidate.
        if (lane == 0) {
            ids[static_cast<size_t>(r) * k + t] = best_index;
            probabilities[static_cast<size_t>(r) * k + t] = expf(best - lse);
        }
        previous = best;
        previous_index = best_index;
    }
}

extern "C" __global__ void softmax_top_k_rows_f32(const float* __restrict__ x, int* __restrict__ ids,
                                                  float* __restrict__ probabilities, int n, int width, int k) {
    softmax_top_k_rows<float>(x, ids, probabilities, n, width, k);
}

extern "C" __global__ void softmax_top_k_rows_bf16(const __nv_bfloat16* __restrict__ x, int* __restrict__ ids,
                                                   float* __restrict__ probabilities, int n, int width, int k) {
    softmax_top_k_rows<__nv_bfloat16>(x, ids, probabilities, n, width, k);
}
