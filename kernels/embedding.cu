// Embedding: the sum of three table rows per token, with the instruction and argument positions of
// every token derived from the `[NEXT]` tokens of its sequence. CPU reference:
// src/backend/cpu/embedding.rs (`trace_positions`, `forward`, `backward`).
//
//   out[o_b + j] = token[tokens[o_b + j]] + instruction[ins(b, j)] + argument[arg(b, j)]
//
// where sequence b is the rows offsets[b] .. offsets[b + 1] (o_b = offsets[b]) of the token axis: a
// padded batch (every sequence `seq` long) or a packed one (sequences of their real lengths, back to
// back); positions restart at each sequence's first row either way.
//
// A new instruction starts at the token *after* each `[NEXT]`. With
//   g[j] = (j >= 1 && tokens[j - 1] == NEXT)      "an instruction starts at j"
// the CPU's sequential loop is two inclusive scans over g:
//   ins[j] = g[0] + g[1] + ... + g[j]                       (prefix sum)
//   arg[j] = j - max{k <= j : g[k]}   (j - 0 if there is none)  (prefix max of k * g[k])
// Both scans are associative, so a block computes them in parallel (embedding_positions). Then the
// gather (embedding_forward) and its adjoint (embedding_backward) are one warp per token row.
//
// Three launches per call:
//   1. embedding_positions: one block per sequence (from the offsets). Reads its token ids once,
//      writes two ints per token. The ids were validated on the host before they were uploaded (the
//      front, src/ops/embedding.rs), so nothing here reads back or waits.
//   2. embedding_forward_{f32,bf16}: reads 3 * H floats per token (table rows, mostly L2 hits: the
//      position tables are small and every sequence uses their first rows) and writes H elements of
//      the activation type (f32, or bf16 in mixed precision). Bandwidth-bound on the write of the
//      [tokens, H] output and the token-table reads.
//   3. embedding_backward_{f32,bf16}: reads H elements of dout (f32 or bf16) per token and issues
//      3 * H f32 atomic adds into the gradient tables (gradients stay f32 in mixed precision). Float
//      atomics make the summation order depend on scheduling, so the last bits of the gradient vary
//      between runs on a GPU (the CPU adds in row order). The position tables are hot spots (every
//      sequence adds into argument row 0), which a deterministic bucketed reduction (llm.c's
//      encoder_backward) would avoid at the cost of a sort.
#include "common.cuh"

constexpr unsigned FULL_MASK = 0xffffffffu;

__device__ __forceinline__ int max_int(int a, int b) { return a > b ? a : b; }

// One block per sequence, blockDim.x a multiple of 32 (at most 1024). The sequence is processed in
// chunks of blockDim.x positions; each chunk is a block-wide inclusive scan of (count, start):
//   - within a warp, a Hillis-Steele scan with __shfl_up_sync (5 steps of log2(32));
//   - the warps' totals go through shared memory, and each thread adds those of the warps before it;
//   - `carry` holds the totals of the chunks before this one.
// Block b scans sequence b, rows offsets[b] .. offsets[b + 1].
// Outputs: instruction[o_b + j] = ins[j], argument[o_b + j] = arg[j].
extern "C" __global__ void embedding_positions(const int* __restrict__ tokens, const int* __restrict__ offsets,
                                               int next_id, int* __restrict__ instruction,
                                               int* __restrict__ argument) {
    SHARED_ARRAY(int, warp_count, 32);  // per warp of the chunk: instruction starts in it
    SHARED_ARRAY(int, warp_start, 32);  // per warp of the chunk: the latest start in it (0 if none)
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int warps = blockDim.x / 32;
    const size_t row_base = static_cast<size_t>(offsets[blockIdx.x]);
    const int seq = offsets[blockIdx.x + 1] - offsets[blockIdx.x];
    const int* row = tokens + row_base;

    int carry_count = 0;  // instruction starts before this chunk
    int carry_start = 0;  // the latest instruction start before this chunk
    // The trip count depends only on the block's seq and blockDim, so every thread reaches every
    // barrier.
    for (int chunk = 0; chunk < seq; chunk += blockDim.x) {
        const int j = chunk + threadIdx.x;
        const bool inside = j < seq;
        const bool starts = inside && j >= 1 && row[j - 1] == next_id;
        int count = starts ? 1 : 0;
        int start = starts ? j : 0;

        // Inclusive scan within the warp: after the step with offset d, lane l holds the combination
        // of lanes max(0, l - 2d + 1) .. l.
        for (int d = 1; d < 32; d *= 2) {
            const int count_before = __shfl_up_sync(FULL_MASK, count, d);
            const int start_before = __shfl_up_sync(FULL_MASK, start, d);
            if (lane >= d) {
                count += count_before;
                start = max_int(start, start_before);
            }
        }
        if (lane == 31) {
            warp_count[warp] = count;
            warp_start[warp] = start;
        }
        __syncthreads();

        // Add the warps before this one (at most 31 shared reads: cheaper than a second scan level
        // for the block sizes used here), and total the chunk for the next one.
        int chunk_count = 0;
        int chunk_start = 0;
        for (int w = 0; w < warps; ++w) {
            if (w < warp) {
                count += warp_count[w];
                start = max_int(start, warp_start[w]);
            }
            chunk_count += warp_count[w];
            chunk_start = max_int(chunk_start, warp_start[w]);
        }
        count += carry_count;
        start = max_int(start, carry_start);
        if (inside) {
            instruction[row_base + j] = count;
            argument[row_base + j] = j - start;
        }
        carry_count += chunk_count;
        carry_start = max_int(carry_start, chunk_start);
        __syncthreads();  // the next chunk overwrites warp_count and warp_start
    }
}

// One warp per token row; lanes stride over the H features, so each warp-wide load or store is a
// contiguous segment. The tables are f32 parameters; the output is the activation type T. The sum is
// (token + instruction) + argument in f32, the CPU's order, so an f32 result is bit-identical to the
// CPU's and a bf16 one is that f32 sum rounded once. The ids were validated on the host.
template <typename T>
__device__ __forceinline__ void embedding_forward(const int* __restrict__ tokens, const int* __restrict__ instruction,
                                                  const int* __restrict__ argument,
                                                  const float* __restrict__ token_table,
                                                  const float* __restrict__ instruction_table,
                                                  const float* __restrict__ argument_table, T* __restrict__ out,
                                                  int rows, int hidden) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;  // no barrier in this kernel: a whole warp leaves together
    const float* t = token_table + static_cast<size_t>(tokens[row]) * hidden;
    const float* i = instruction_table + static_cast<size_t>(instruction[row]) * hidden;
    const float* a = argument_table + static_cast<size_t>(argument[row]) * hidden;
    T* o = out + static_cast<size_t>(row) * hidden;
    for (int c = lane; c < hidden; c += 32) o[c] = from_float<T>(t[c] + i[c] + a[c]);
}

extern "C" __global__ void embedding_forward_f32(const int* __restrict__ tokens, const int* __restrict__ instruction,
                                                 const int* __restrict__ argument,
                                                 const float* __restrict__ token_table,
                                                 const float* __restrict__ instruction_table,
                                                 const float* __restrict__ argument_table, float* __restrict__ out,
                                                 int rows, int hidden) {
    embedding_forward<float>(tokens, instruction, argument, token_table, instruction_table, argument_table, out, rows,
                             hidden);
}

extern "C" __global__ void embedding_forward_bf16(const int* __restrict__ tokens, const int* __restrict__ instruction,
                                                  const int* __restrict__ argument,
                                                  const float* __restrict__ token_table,
                                                  const float* __restrict__ instruction_table,
                                                  const float* __restrict__ argument_table,
                                                  __nv_bfloat16* __restrict__ out, int rows, int hidden) {
    embedding_forward<__nv_bfloat16>(tokens, instruction, argument, token_table, instruction_table, argument_table,
                                     out, rows, hidden);
}

// The adjoint of embedding_forward: dout's row (of the activation type T, widened to f32) is added
// into the three f32 table rows it was gathered from. Rows of one sequence share position-table rows
// and tokens repeat, so the adds collide: atomicAdd (compiled to a fire-and-forget RED, since the old
// value is unused) resolves them in L2. Summation order, and so the last bits of the gradient, vary
// between runs on a GPU.
template <typename T>
__device__ __forceinline__ void embedding_backward(const T* __restrict__ dout, const int* __restrict__ tokens,
                                                   const int* __restrict__ instruction,
                                                   const int* __restrict__ argument, float* dtoken,
                                                   float* dinstruction, float* dargument, int rows, int hidden) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;  // no barrier in this kernel
    const T* d = dout + static_cast<size_t>(row) * hidden;
    float* t = dtoken + static_cast<size_t>(tokens[row]) * hidden;
    float* i = dinstruction + static_cast<size_t>(instruction[row]) * hidden;
    float* a = dargument + static_cast<size_t>(argument[row]) * hidden;
    for (int c = lane; c < hidden; c += 32) {
        const float g = to_float(d[c]);
        atomicAdd(t + c, g);
        atomicAdd(i + c, g);
        atomicAdd(a + c, g);
    }
}

extern "C" __global__ void embedding_backward_f32(const float* __restrict__ dout, const int* __restrict__ tokens,
                                                  const int* __restrict__ instruction,
                                                  const int* __restrict__ argument, float* dtoken,
                                                  float* dinstruction, float* dargument, int rows, int hidden) {
    embedding_backward<float>(dout, tokens, instruction, argument, dtoken, dinstruction, dargument, rows, hidden);
}

extern "C" __global__ void embedding_backward_bf16(const __nv_bfloat16* __restrict__ dout,
                                                   const int* __restrict__ tokens,
                                                   const int* __restrict__ instruction,
                                                   const int* __restrict__ argument, float* dtoken,
                                                   float* dinstruction, float* dargument, int rows, int hidden) {
    embedding_backward<__nv_bfloat16>(dout, tokens, instruction, argument, dtoken, dinstruction, dargument, rows,
                                      hidden);
}
