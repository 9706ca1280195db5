// Softmax cross-entropy fused with its gradient, after llm.c's fused classifier. CPU reference:
// src/backend/cpu/cross_entropy.rs.
//
// For a row x of V logits with label y (y == -100: ignored), M = max_j x_j and S = sum_j e^(x_j - M):
//   loss     = logsumexp(x) - x_y = (M - x_y) + log S
//   dloss/dx = (softmax(x) - onehot(y)) / count,  softmax(x)_j = e^(x_j - M) / S
// where count is the number of labelled rows (the loss is their mean). Subtracting M keeps every
// exponent <= 0, so nothing overflows.
//
// One block per row. Memory traffic per labelled row: V logits read to find M and S, V read again for
// the gradient (usually from L2: the row was just read), V written; the [rows, V] softmax is never
// materialised. Without a gradient, V logits read. Logits and their gradient have the activation
// type (f32, or bf16 in mixed precision: `cross_entropy_forward_backward_f32` / `_bf16`); the max,
// the sum and the loss are f32 either way. The per-row loss is written to `losses[row]`;
// `cross_entropy_mean_f32` then sums those in row order in f64, as the CPU does, so the mean is
// deterministic, matches the CPU's arithmetic, and stays on the device. An ignored row costs one write of V zeros (its gradient) and a zero loss.
#include "common.cuh"

constexpr unsigned FULL_MASK = 0xffffffffu;
constexpr int IGNORE_INDEX = -100;

// -inf, spelled without INFINITY (which needs the host's math.h, absent under NVRTC).
__device__ __forceinline__ float negative_infinity() { return __int_as_float(static_cast<int>(0xff800000u)); }

// Block-wide max and sum: a shuffle butterfly inside each warp, the warps' results through shared
// memory (`scratch`, 32 floats), then the same butterfly over those in every warp, so every thread
// gets the result. The tree is fixed, so the result does not depend on scheduling. blockDim.x must
// be a multiple of 32. The trailing barrier lets the caller reuse `scratch` at once.
__device__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : negative_infinity();
    for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    __syncthreads();
    return v;
}

__device__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(FULL_MASK, v, offset);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(FULL_MASK, v, offset);
    __syncthreads();
    return v;
}

// logits [rows, vocab] of the activation type T, labels [rows] (validated on the host: -100 or in
// [0, vocab)). losses [rows], f32 whatever T: each row's loss, 0 for an ignored row. dlogits
// [rows, vocab] of type T, or null: the gradient, written for every row (zero on ignored rows).
// inv_count = 1 / (number of labelled rows). Everything is computed in f32 from the (widened)
// logits; a bf16 gradient is the f32 value rounded once.
template <typename T>
__device__ __forceinline__ void cross_entropy_forward_backward(const T* logits,
                                                               const int* __restrict__ labels,
                                                               float* __restrict__ losses, T* dlogits,
                                                               int vocab, float inv_count) {
    SHARED_ARRAY(float, scratch, 32);
    const int row = blockIdx.x;
    const int label = labels[row];
    const T* x = logits + static_cast<size_t>(row) * vocab;
    T* dx = dlogits == nullptr ? nullptr : dlogits + static_cast<size_t>(row) * vocab;

    // `label` is the same for the whole block, so both branches are block-uniform and every thread
    // of the block reaches the barriers inside the labelled branch.
    if (label == IGNORE_INDEX) {
        if (dx != nullptr) {
            for (int c = threadIdx.x; c < vocab; c += blockDim.x) dx[c] = from_float<T>(0.0f);
        }
        if (threadIdx.x == 0) losses[row] = 0.0f;
    } else {
        // One pass for max and sum (the "online softmax" of Milakov & Gimelshein, 2018): each thread
        // keeps the max m of the logits it has seen and s = sum of e^(x - m) over them, rescaling s
        // by e^(m_old - m_new) when the max grows. A -inf logit adds e^-inf = 0 and is skipped, so a
        // thread whose first logits are -inf does not form e^(-inf - -inf) = NaN.
        // dlogits may be the logits buffer itself (written over, as llm.c does): the label's logit is
        // read here, before the barriers of the reductions below, since after them other threads
        // overwrite the row. Each thread otherwise reads and then writes only its own elements.
        const float label_logit = threadIdx.x == 0 ? to_float(x[label]) : 0.0f;
        float m = negative_infinity();
        float s = 0.0f;
        for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
            const float v = to_float(x[c]);
            if (v > m) {
                s = s * expf(m - v) + 1.0f;
                m = v;
            } else if (v != negative_infinity()) {
                s += expf(v - m);
            }
        }
        // Combine the threads: bring every partial sum to the row's max, then add. A thread that saw
        // nothing (s == 0, m == -inf) contributes 0.
        const float row_max = block_max(m, scratch);
        const float row_sum = block_sum(s == 0.0f ? 0.0f : s * expf(m - row_max), scratch);

        if (threadIdx.x == 0) losses[row] = (row_max - label_logit) + logf(row_sum);
        if (dx != nullptr) {
            const float inv_sum = 1.0f / row_sum;
            for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
                const float p = expf(to_float(x[c]) - row_max) * inv_sum;
                dx[c] = from_float<T>((p - (c == label ? 1.0f : 0.0f)) * inv_count);
            }
        }
    }
}

// `dlogits` may equal `logits` (the gradient written over the logits), so neither is __restrict__.
extern "C" __global__ void cross_entropy_forward_backward_f32(const float* logits,
                                                              const int* __restrict__ labels,
                                                              float* __restrict__ losses,
                                                              float* dlogits, int vocab,
                                                              float inv_count) {
    cross_entropy_forward_backward<float>(logits, labels, losses, dlogits, vocab, inv_count);
}

extern "C" __global__ void cross_entropy_forward_backward_bf16(const __nv_bfloat16* logits,
                                                               const int* __restrict__ labels,
                                                               float* __restrict__ losses,
                                                               __nv_bfloat16* dlogits, int vocab,
                                                               float inv_count) {
    cross_entropy_forward_backward<__nv_bfloat16>(logits, labels, losses, dlogits, vocab, inv_count);
}

// The mean loss over the labelled rows, from the per-row losses (0 on ignored rows): one thread adds
// them in row order in double and divides by `count`, exactly as the CPU backend forms the mean, so
// the loss is the same number on every device. A few thousand rows at most (the labelled positions
// of one batch): a few microseconds, and the host never has to read the row losses.
extern "C" __global__ void cross_entropy_mean_f32(const float* __restrict__ losses, int rows, int count,
                                                  float* __restrict__ loss) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double total = 0.0;
    for (int r = 0; r < rows; ++r) total += static_cast<double>(losses[r]);
    *loss = static_cast<float>(total / static_cast<double>(count));
}
