// Multi-head attention over variable-length sequences, with an optional key-padding mask, forward and
// backward: the algorithm of FlashAttention-2 (Dao, 2023), with no score matrix ever written to
// memory.
// CPU reference: src/backend/cpu/attention.rs; launch wrappers: src/backend/cuda/ops/attention.rs.
//
// Element types. The CUDA-core kernels are templates over the activation type E (float or
// __nv_bfloat16: qkv, out, dout, dqkv) and compute in f32 either way; lse and the backward's delta
// scratch are always f32. bf16 has a second forward and a second backward on tensor cores
// (mma.sync m16n8k16, at the end of the file), which the wrapper uses by default; the CUDA-core bf16
// kernels stay as the reference the tests hold them to. f32 runs on CUDA cores only.
//
// ---- Layout ----------------------------------------------------------------------------------------
// The token axis holds the batch's sequences back to back (FlashAttention's varlen layout): sequence b
// is rows o_b .. o_b + S_b of every [tokens, *] operand, o_b = offsets[b], S_b = offsets[b + 1] - o_b.
// A padded batch is the case S_b = seq for every b, with a key mask for its padding; a packed batch
// has no mask (null) unless a row has a hole (a padding key before its last real one), which stays a
// row of its sequence and is masked as a key. lse and the backward's D are [heads, tokens] f32: row o_b + i
// of head h at h * tokens + o_b + i.
//
// ---- The math --------------------------------------------------------------------------------------
// For one (sequence b, head h), with q, k, v the [S_b, d] slices of the fused QKV activation (row i
// of q is qkv[o_b + i, h*d .. h*d + d]; k and v sit `hidden` and `2 hidden` floats further on), a
// query attends to the keys of its own sequence only:
//
//     s_ij = (q_i . k_j) / sqrt(d),  j < S_b    (s_ij = -inf for a padding key: mask[o_b + j] == 0)
//     m_i  = max_j s_ij,   l_i = sum_j exp(s_ij - m_i),   lse_i = m_i + log l_i
//     P_ij = exp(s_ij - lse_i),                 out_i = sum_j P_ij v_j
//
// A row with no real key (a sequence that is all padding) has no defined softmax; like the CPU we
// define P_i = 0, so out_i = 0, lse_i = -inf, and every gradient through the row is 0.
//
// Forward (online softmax). Keys are visited in chunks; the running max m, sum l and unnormalised
// accumulator o = sum_j exp(s_ij - m) v_j are rescaled whenever the max grows:
//
//     m' = max(m, max_chunk s),   alpha = exp(m - m'),   l' = alpha l + sum_chunk exp(s - m'),
//     o' = alpha o + sum_chunk exp(s - m') v_j,     and at the end   out = o / l,   lse = m + log l.
//
// Only lse is saved for the backward, which rebuilds P = exp(s - lse) tile by tile (one exp per
// score, no second max/sum pass). With dO the incoming gradient and D_i = sum_c dO_ic out_ic
// (= sum_j P_ij dP_ij: the softmax Jacobian diag(P_i) - P_i P_i^T applied to dP_i is
// P_i * (dP_i - D_i), and D_i is the rank-one part, read off the saved output in O(d)):
//
//     dV_j = sum_i P_ij dO_i,    dP_ij = dO_i . v_j,    dS_ij = P_ij (dP_ij - D_i),
//     dQ_i = sum_j dS_ij k_j / sqrt(d),                 dK_j = sum_i dS_ij q_i / sqrt(d).
//
// ---- Work decomposition ----------------------------------------------------------------------------
// Every kernel gives each row of its block's tile (a query row in the forward and dQ kernels, a key
// row in the dK/dV kernel) to a group of LANES = D / 16 adjacent lanes of one warp; each lane holds
// 16 of the row's D features in registers. A dot product is 16 fused multiply-adds per lane and
// log2(LANES) butterfly shuffles, after which every lane of the group holds the same sum, so the
// lanes take identical decisions (running max, exp) without talking again. The other operand
// streams through shared memory in tiles of STREAM rows; every group of a warp reads the same
// streamed row at the same time, so each shared load is a broadcast of LANES consecutive 16-byte
// chunks: no bank conflicts. Lane `g` of a group owns the float4 chunks g, g + LANES, g + 2 LANES,
// ... of a row, so that the LANES lanes' loads are consecutive.
//
//     D (head-dim capacity)      16    32    64   128       rows per block   ROWS = 64
//     LANES per row               1     2     4     8       threads          ROWS * LANES = 4 D
//     STREAM rows per tile       64    64    64    32       shared memory    2 STREAM D floats
//     shared memory per block    8K   16K   32K   32K                        (+ STREAM-long vectors)
//
// Sixteen features per lane keeps the largest register set, dK/dV's four rows (k, v, dK, dV), at 64
// floats: every kernel fits a budget of 128 registers without spilling (32 features per lane needed
// all 255 and spilled), so an SM runs 16 warps of any variant: 8, 4, 2 or 1 blocks. Registers, not
// shared memory, set that: the blocks' static shared memory (at most 33 KiB each, under the 48 KiB
// limit) adds up to 68 KiB of the SM's 228 at most.
//
// One template per capacity; a call uses the smallest D >= head_dim and zero-fills features
// head_dim..D in registers and in shared memory, so the arithmetic needs no feature guard and a
// ragged head_dim (12, 27, 100) costs only the padding. Rows past the end of the sequence are
// zero-filled too (they contribute nothing) and their threads still take part in every barrier and
// shuffle; only their stores are skipped.
//
// The grid. A block owns one 64-row tile of one (sequence, head); which one comes from a schedule the
// host builds once per batch from the offsets: one (sequence, tile) entry per tile of every sequence,
// ceil(S_b / 64) of them, so no block exists for rows past a sequence's end, and `entries * heads`
// blocks with the heads of an entry adjacent. Every tile of sequence b costs about S_b (a query tile
// visits all S_b keys, a key tile all S_b queries), so the schedule lists the longest sequences
// first (longest-processing-time first): the GPU starts the longest blocks at once and fills in with
// shorter ones, and a batch of one long and many short sequences does not end on the long one's
// blocks running alone. (A padded batch has equal lengths: its order is the sequences'.)
//
// Forward, `attention_forward_f32_d*`: one block per (sequence, head, tile of ROWS query rows); q_i and
// the accumulator o_i stay in registers for the whole key loop; K and V tiles stream through shared
// memory. Scores are taken CHUNK = 16 keys at a time (16 independent dot products in flight), then
// the chunk's max updates the online softmax and its probabilities accumulate P V.
//
// Backward, deterministic and free of atomics. FlashAttention-2 runs one kernel over key tiles and
// adds each block's share of dQ with float atomics, whose order (and so rounding) changes from run to
// run; here, as in deterministic variants of it, the work is split so that every block owns its
// outputs:
//   1. `attention_backward_dq_f32_d*`: one block per (sequence, head, query tile), launched first. Each
//      group computes D_i for its row (and saves it for step 2), then streams K and V tiles and
//      accumulates dQ_i in registers.
//   2. `attention_backward_dkv_f32_d*`: one block per (sequence, head, key tile). Each group keeps
//      k_j, v_j, dK_j, dV_j in registers and streams Q, dO, lse and D over all the sequence's query
//      tiles.
// Each output element is owned by exactly one thread and summed in a fixed order, so the results are
// bitwise reproducible from run to run.
//
// ---- Memory traffic and work (per (sequence, head), S = S_b keys, head_dim d, T = ceil(S / ROWS)) -
// A batch costs the sum over its sequences: sum_b S_b^2 d flops per unit below, not batch * seq^2 d,
// so a packed batch pays for its real tokens only (a padded one pays for its padding queries too).
//   forward:  reads Q once and K, V once per query tile (S d + 2 T S d floats), writes out and lse
//             (S d + S), 4 S^2 d flops. The blocks of one sequence are adjacent in the grid, so the
//             T re-reads of K and V mostly hit L2. Unfused attention writes and re-reads
//             S^2 scores and S^2 probabilities instead (S = 512: 1 MiB each, per head).
//   dQ:       reads Q, dO, out once and K, V once per query tile; 6 S^2 d flops (recomputes s, dP).
//   dK/dV:    reads K, V once and Q, dO, lse, D once per key tile;  8 S^2 d flops.
// Backward is 14 S^2 d flops: 8 for a backward that stored P, 2 to recompute s from lse (O(S) memory
// instead of O(S^2)), and 4 because each of the two kernels computes s and dP (the price of
// determinism without atomics; a single kernel with atomics does 10). With a key mask, keys after the
// sequence's last real key are padding: every kernel finds that end first (real_key_end) and stops its
// key loop there, and a dK/dV block whose keys are all padding skips its query loop. (Padded query
// rows still get their gradients: the reference computes them.) Without a mask the end is S_b.
//
// On CUDA cores each broadcast float4 from shared memory feeds four FMAs, so shared-memory
// bandwidth and FMA issue, not DRAM, should bound these kernels (not yet measured on a GPU). The
// bf16 tensor-core forward and backward (end of the file) keep the decomposition (grid, the dQ then
// dK/dV split, the saved D), the online softmax and the padding handling, with warps owning 16-row
// fragments instead of lane groups owning rows; their traffic is the same in bf16 bytes, and all
// their flops run on tensor cores (the exponentials, S^2 per kernel, stay on the SFU).
#include "common.cuh"

namespace attention {

// -inf (its bit pattern) as a constant expression: INFINITY comes from the host's math.h, which
// NVRTC does not have, and NVRTC has no __builtin_huge_valf; nvcc, NVRTC and the host compilers of
// the emulator all have __builtin_bit_cast.
constexpr float NEG_INF = __builtin_bit_cast(float, 0xff800000u);

// The tiling for head-dim capacity D (see the table above). The Rust launch wrapper mirrors ROWS and
// THREADS; keep src/backend/cuda/ops/attention.rs in step with any change here.
template <int D>
struct Tiles {
    static_assert(D == 16 || D == 32 || D == 64 || D == 128, "head-dim capacity");
    static constexpr int LANES = D / 16;                // lanes sharing one row
    static constexpr int FEATURES = D / LANES;          // features of the row in each lane's registers
    static constexpr int CHUNKS = FEATURES / 4;         // ... as float4 chunks
    static constexpr int ROWS = 64;                     // rows a block owns
    static constexpr int THREADS = ROWS * LANES;
    static constexpr int STREAM = D <= 64 ? 64 : 32;    // rows per shared-memory tile
    static constexpr int CHUNK = 16;                    // keys per online-softmax step (forward)
    // A register budget of 128 per thread (MIN_BLOCKS blocks per SM: 16 warps). ptxas places every
    // variant within it without spills; unbounded, it spends up to 137 on hoisting shared loads.
    static constexpr int REGISTERS = 128;
    static constexpr int MIN_BLOCKS = 65536 / (THREADS * REGISTERS);
    static_assert(THREADS <= 512 && (LANES == 1 || THREADS % 32 == 0), "groups never straddle warps");
    static_assert(THREADS % D == 0 && STREAM % (THREADS / D) == 0 && STREAM % CHUNK == 0, "tiles split evenly");
    static_assert(2 * STREAM * D * 4 + 2 * STREAM * 4 + 16 <= 48 * 1024, "static shared memory");
};

// Sum over the LANES lanes of a group (adjacent, aligned lanes): a butterfly, so every lane of the
// group ends with the same value. The whole warp takes part (every caller is in uniform control flow).
template <int LANES>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
    for (int offset = LANES / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// Feature index of element e of the lane's float4 chunk t (lane = its position in its group).
template <int D>
__device__ __forceinline__ int feature(int lane, int t, int e) {
    return 4 * (t * Tiles<D>::LANES + lane) + e;
}

// Loads this lane's features of a global row into registers; features >= d, and every feature of a
// row that does not exist (`valid` false), read as 0. Scalar loads: d need not be a multiple of 4.
template <int D, typename E>
__device__ __forceinline__ void load_row(float (&r)[Tiles<D>::FEATURES], const E* __restrict__ row, bool valid, int d,
                                         int lane) {
#pragma unroll
    for (int t = 0; t < Tiles<D>::CHUNKS; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int c = feature<D>(lane, t, e);
            r[4 * t + e] = valid && c < d ? to_float(row[c]) : 0.0f;
        }
    }
}

// Stores this lane's features c < d of a row, each multiplied by `scale`.
template <int D, typename E>
__device__ __forceinline__ void store_row(E* __restrict__ row, const float (&r)[Tiles<D>::FEATURES], float scale, int d,
                                          int lane) {
#pragma unroll
    for (int t = 0; t < Tiles<D>::CHUNKS; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int c = feature<D>(lane, t, e);
            if (c < d) row[c] = from_float<E>(r[4 * t + e] * scale);
        }
    }
}

// The group's dot product of a register row with a row of a shared tile (D floats, 16-byte aligned).
template <int D>
__device__ __forceinline__ float dot(const float (&r)[Tiles<D>::FEATURES], const float* tile_row, int lane) {
    const float4* chunks = reinterpret_cast<const float4*>(tile_row);
    float acc = 0.0f;
#pragma unroll
    for (int t = 0; t < Tiles<D>::CHUNKS; ++t) {
        const float4 x = chunks[t * Tiles<D>::LANES + lane];
        acc = fmaf(r[4 * t + 0], x.x, acc);
        acc = fmaf(r[4 * t + 1], x.y, acc);
        acc = fmaf(r[4 * t + 2], x.z, acc);
        acc = fmaf(r[4 * t + 3], x.w, acc);
    }
    return group_sum<Tiles<D>::LANES>(acc);
}

// acc += a * (a row of a shared tile), on this lane's features.
template <int D>
__device__ __forceinline__ void axpy(float (&acc)[Tiles<D>::FEATURES], float a, const float* tile_row, int lane) {
    const float4* chunks = reinterpret_cast<const float4*>(tile_row);
#pragma unroll
    for (int t = 0; t < Tiles<D>::CHUNKS; ++t) {
        const float4 x = chunks[t * Tiles<D>::LANES + lane];
        acc[4 * t + 0] = fmaf(a, x.x, acc[4 * t + 0]);
        acc[4 * t + 1] = fmaf(a, x.y, acc[4 * t + 1]);
        acc[4 * t + 2] = fmaf(a, x.z, acc[4 * t + 2]);
        acc[4 * t + 3] = fmaf(a, x.w, acc[4 * t + 3]);
    }
}

// Copies rows [first, first + STREAM) of a [rows, d] matrix (row i at src + i * stride) into a
// [STREAM][D] shared tile, zero-filling features d..D and rows from `end` on. A block has 4 D threads,
// so each thread copies one fixed feature of every fourth row; consecutive threads take consecutive
// features, so a warp reads runs of up to d contiguous floats (coalesced whenever d >= 32). A partial
// unroll keeps a few loads in flight per thread without tying up registers the compute loops need.
template <int D, typename E>
__device__ __forceinline__ void load_tile(float* __restrict__ tile, const E* __restrict__ src, size_t stride,
                                          int first, int end, int d) {
    using T = Tiles<D>;
    constexpr int ROWS_PER_PASS = T::THREADS / D;
    const int c = threadIdx.x % D;
    const bool feature_real = c < d;
#pragma unroll 4
    for (int r = threadIdx.x / D; r < T::STREAM; r += ROWS_PER_PASS) {
        const int row = first + r;
        tile[r * D + c] = row < end && feature_real ? to_float(src[row * stride + c]) : 0.0f;
    }
}

// One past the sequence's last real key (0 for a sequence that is all padding). Keys from there on
// are padding, so the key loops stop there. An integer max through shared memory: the result does
// not depend on the order of the atomics. Ends with a barrier, so `end` may be read at once. Without
// a mask (null, the same for the whole block) every key is real: the end is `seq`, with no barrier.
template <int THREADS>
__device__ __forceinline__ int real_key_end(const int* __restrict__ key_mask, int seq, int* end) {
    if (key_mask == nullptr) return seq;  // no mask: every key of the sequence is real
    if (threadIdx.x == 0) *end = 0;
    __syncthreads();
    int last = 0;
    for (int j = threadIdx.x; j < seq; j += THREADS) {
        if (key_mask[j] != 0) last = j + 1;
    }
    if (last > 0) atomicMax(end, last);
    __syncthreads();
    return *end;
}

// Key j of a sequence (its mask, null when every key is real, starting at the sequence's first row)
// is real.
__device__ __forceinline__ bool key_is_real(const int* __restrict__ key_mask, int j) {
    return key_mask == nullptr || key_mask[j] != 0;
}

// The block's work: 64-row tile `tile` of sequence `sequence` (rows first_row .. first_row + seq of
// the token axis), head `head`. The grid is one block per (schedule entry, head), heads fastest:
// entry e = blockIdx.x / heads is the pair (schedule[2 e], schedule[2 e + 1]) = (sequence, tile),
// listed by the host longest sequence first, so the blocks with the most work start first.
struct BlockCoords {
    int tile, head, seq;
    size_t first_row;
};
__device__ __forceinline__ BlockCoords block_coords(const int* __restrict__ offsets, const int* __restrict__ schedule,
                                                    int heads) {
    const int entry = static_cast<int>(blockIdx.x) / heads;
    const int sequence = schedule[2 * entry];
    const int first = offsets[sequence];
    return {schedule[2 * entry + 1], static_cast<int>(blockIdx.x) % heads, offsets[sequence + 1] - first,
            static_cast<size_t>(first)};
}

// ---- forward --------------------------------------------------------------------------------------

template <int D, typename E>
__device__ __forceinline__ void forward(const E* __restrict__ qkv, const int* __restrict__ offsets,
                                        const int* __restrict__ schedule, const int* __restrict__ mask, E* __restrict__ out,
                                        float* __restrict__ lse, int tokens, int heads, int d, float scale) {
    using T = Tiles<D>;
    SHARED_ARRAY(float, k_tile, T::STREAM * D);
    SHARED_ARRAY(float, v_tile, T::STREAM * D);
    SHARED_ARRAY(int, key_real, T::STREAM);
    SHARED_ARRAY(int, key_end_shared, 1);

    const BlockCoords at = block_coords(offsets, schedule, heads);
    const int seq = at.seq;  // the sequence's length
    const int hidden = heads * d;
    const size_t stride = 3 * static_cast<size_t>(hidden);
    const int lane = threadIdx.x % T::LANES;
    const int i = at.tile * T::ROWS + threadIdx.x / T::LANES;  // this group's query row
    const bool row_exists = i < seq;
    const E* q = qkv + at.first_row * stride + at.head * d;  // row 0 of q
    const E* k = q + hidden;
    const E* v = q + 2 * hidden;
    const int* key_mask = mask ? mask + at.first_row : nullptr;

    const int key_end = real_key_end<T::THREADS>(key_mask, seq, key_end_shared);

    float qi[T::FEATURES];
    load_row<D, E>(qi, q + i * stride, row_exists, d, lane);
    float o[T::FEATURES];
#pragma unroll
    for (int f = 0; f < T::FEATURES; ++f) o[f] = 0.0f;
    float m = NEG_INF;  // running max of the scores seen
    float l = 0.0f;     // running sum of exp(s - m)

    for (int first = 0; first < key_end; first += T::STREAM) {
        __syncthreads();  // every group is done with the previous tile
        load_tile<D, E>(k_tile, k, stride, first, key_end, d);
        load_tile<D, E>(v_tile, v, stride, first, key_end, d);
        for (int j = threadIdx.x; j < T::STREAM; j += T::THREADS) {
            key_real[j] = first + j < key_end && key_is_real(key_mask, first + j);
        }
        __syncthreads();

        for (int c0 = 0; c0 < T::STREAM && first + c0 < key_end; c0 += T::CHUNK) {
            // Scores of CHUNK keys; a padding key (or a row past key_end, zero-filled) gets -inf.
            float s[T::CHUNK];
            float chunk_max = NEG_INF;
#pragma unroll
            for (int jj = 0; jj < T::CHUNK; ++jj) {
                const float dot_qk = dot<D>(qi, k_tile + (c0 + jj) * D, lane);
                s[jj] = key_real[c0 + jj] ? dot_qk * scale : NEG_INF;
                chunk_max = fmaxf(chunk_max, s[jj]);
            }
            // Online softmax. While every key so far is padding the max is -inf; exponents are then
            // taken against 0 instead, which gives exp(-inf) = 0 for every term and never -inf - -inf.
            const float m_new = fmaxf(m, chunk_max);
            const float m_ref = m_new == NEG_INF ? 0.0f : m_new;
            const float alpha = expf(m - m_ref);  // 1 when the max did not move; 0 on the first real key
            l *= alpha;
#pragma unroll
            for (int f = 0; f < T::FEATURES; ++f) o[f] *= alpha;
#pragma unroll
            for (int jj = 0; jj < T::CHUNK; ++jj) {
                const float p = expf(s[jj] - m_ref);
                l += p;
                axpy<D>(o, p, v_tile + (c0 + jj) * D, lane);
            }
            m = m_new;
        }
    }

    // l >= 1 once any key was real (the max key contributes exp(0)); l == 0 means no real key.
    const bool any_key = l > 0.0f;
    if (row_exists) {
        const size_t bh = static_cast<size_t>(at.head) * tokens + at.first_row;  // row 0 in lse, D
        store_row<D, E>(out + (at.first_row + i) * hidden + at.head * d, o,
                     any_key ? 1.0f / l : 0.0f, d, lane);
        if (lane == 0) lse[bh + i] = any_key ? m + logf(l) : NEG_INF;
    }
}

// ---- backward: dQ (and D) -------------------------------------------------------------------------

template <int D, typename E>
__device__ __forceinline__ void backward_dq(const E* __restrict__ dout, const E* __restrict__ qkv,
                                            const int* __restrict__ offsets, const int* __restrict__ schedule,
                                            const int* __restrict__ mask, const E* __restrict__ out,
                                            const float* __restrict__ lse, float* __restrict__ delta,
                                            E* __restrict__ dqkv, int tokens, int heads, int d, float scale) {
    using T = Tiles<D>;
    SHARED_ARRAY(float, k_tile, T::STREAM * D);
    SHARED_ARRAY(float, v_tile, T::STREAM * D);
    SHARED_ARRAY(int, key_real, T::STREAM);
    SHARED_ARRAY(int, key_end_shared, 1);

    const BlockCoords at = block_coords(offsets, schedule, heads);
    const int seq = at.seq;  // the sequence's length
    const int hidden = heads * d;
    const size_t stride = 3 * static_cast<size_t>(hidden);
    const int lane = threadIdx.x % T::LANES;
    const int i = at.tile * T::ROWS + threadIdx.x / T::LANES;
    const bool row_exists = i < seq;
    const size_t first_row = at.first_row;  // this sequence's first token row
    const E* q = qkv + first_row * stride + at.head * d;
    const E* k = q + hidden;
    const E* v = q + 2 * hidden;
    const size_t out_at = (first_row + i) * hidden + at.head * d;  // row i in out and dout
    const size_t bh = static_cast<size_t>(at.head) * tokens + at.first_row;  // row 0 in lse, D
    const int* key_mask = mask ? mask + first_row : nullptr;

    const int key_end = real_key_end<T::THREADS>(key_mask, seq, key_end_shared);

    float qi[T::FEATURES], doi[T::FEATURES], dqi[T::FEATURES];
    load_row<D, E>(qi, q + i * stride, row_exists, d, lane);
    load_row<D, E>(dqi, out + out_at, row_exists, d, lane);  // out_i, in dqi until D_i is taken
    load_row<D, E>(doi, dout + out_at, row_exists, d, lane);
    float partial = 0.0f;
#pragma unroll
    for (int f = 0; f < T::FEATURES; ++f) {
        partial = fmaf(doi[f], dqi[f], partial);
        dqi[f] = 0.0f;
    }
    const float delta_i = group_sum<T::LANES>(partial);  // D_i = dO_i . out_i
    const float lse_i = row_exists ? lse[bh + i] : NEG_INF;
    const bool row_has_keys = lse_i != NEG_INF;
    if (row_exists && lane == 0) delta[bh + i] = delta_i;  // for the dK/dV kernel

    for (int first = 0; first < key_end; first += T::STREAM) {
        __syncthreads();
        load_tile<D, E>(k_tile, k, stride, first, key_end, d);
        load_tile<D, E>(v_tile, v, stride, first, key_end, d);
        for (int j = threadIdx.x; j < T::STREAM; j += T::THREADS) {
            key_real[j] = first + j < key_end && key_is_real(key_mask, first + j);
        }
        __syncthreads();

        const int keys = key_end - first < T::STREAM ? key_end - first : T::STREAM;
        for (int j = 0; j < keys; ++j) {
            const float* kj = k_tile + j * D;
            const float s = dot<D>(qi, kj, lane) * scale;
            const float dp = dot<D>(doi, v_tile + j * D, lane);
            // A select, not a product: exp(s - lse) is +inf when lse = -inf.
            const float p = key_real[j] && row_has_keys ? expf(s - lse_i) : 0.0f;
            axpy<D>(dqi, p * (dp - delta_i), kj, lane);  // dQ_i += dS_ij k_j
        }
    }
    if (row_exists) store_row<D, E>(dqkv + (first_row + i) * stride + at.head * d, dqi, scale, d, lane);
}

// ---- backward: dK, dV -----------------------------------------------------------------------------

template <int D, typename E>
__device__ __forceinline__ void backward_dkv(const E* __restrict__ dout, const E* __restrict__ qkv,
                                             const int* __restrict__ offsets, const int* __restrict__ schedule,
                                             const int* __restrict__ mask, const float* __restrict__ lse,
                                             const float* __restrict__ delta, E* __restrict__ dqkv, int tokens,
                                             int heads, int d, float scale) {
    using T = Tiles<D>;
    SHARED_ARRAY(float, q_tile, T::STREAM * D);
    SHARED_ARRAY(float, do_tile, T::STREAM * D);
    SHARED_ARRAY(float, lse_tile, T::STREAM);
    SHARED_ARRAY(float, delta_tile, T::STREAM);
    SHARED_ARRAY(int, key_end_shared, 1);

    const BlockCoords at = block_coords(offsets, schedule, heads);
    const int seq = at.seq;  // the sequence's length
    const int hidden = heads * d;
    const size_t stride = 3 * static_cast<size_t>(hidden);
    const int lane = threadIdx.x % T::LANES;
    const int j = at.tile * T::ROWS + threadIdx.x / T::LANES;  // this group's key row
    const bool key_exists = j < seq;
    const size_t first_row = at.first_row;
    const E* q = qkv + first_row * stride + at.head * d;
    const E* do_rows = dout + first_row * hidden + at.head * d;  // row 0 of this head's dO
    const size_t bh = static_cast<size_t>(at.head) * tokens + at.first_row;  // row 0 in lse, D
    const int* key_mask = mask ? mask + first_row : nullptr;

    const int key_end = real_key_end<T::THREADS>(key_mask, seq, key_end_shared);
    const bool key_real = key_exists && key_is_real(key_mask, j);

    float kj[T::FEATURES], vj[T::FEATURES], dk[T::FEATURES], dv[T::FEATURES];
    load_row<D, E>(kj, q + hidden + j * stride, key_exists, d, lane);
    load_row<D, E>(vj, q + 2 * hidden + j * stride, key_exists, d, lane);
#pragma unroll
    for (int f = 0; f < T::FEATURES; ++f) dk[f] = dv[f] = 0.0f;

    // A tile of padding keys has P = 0 in every row: its gradients are 0 without the loop. (The
    // condition is the same for the whole block, so every thread meets the same barriers.)
    if (at.tile * T::ROWS < key_end) {
        for (int first = 0; first < seq; first += T::STREAM) {
            __syncthreads();
            load_tile<D, E>(q_tile, q, stride, first, seq, d);
            load_tile<D, E>(do_tile, do_rows, hidden, first, seq, d);
            for (int r = threadIdx.x; r < T::STREAM; r += T::THREADS) {
                const bool exists = first + r < seq;
                lse_tile[r] = exists ? lse[bh + first + r] : NEG_INF;
                delta_tile[r] = exists ? delta[bh + first + r] : 0.0f;
            }
            __syncthreads();

            const int rows = seq - first < T::STREAM ? seq - first : T::STREAM;
            for (int r = 0; r < rows; ++r) {
                const float* qi = q_tile + r * D;
                const float* doi = do_tile + r * D;
                const float lse_i = lse_tile[r];
                const float s = dot<D>(kj, qi, lane) * scale;
                const float dp = dot<D>(vj, doi, lane);
                const float p = key_real && lse_i != NEG_INF ? expf(s - lse_i) : 0.0f;
                axpy<D>(dv, p, doi, lane);                         // dV_j += P_ij dO_i
                axpy<D>(dk, p * (dp - delta_tile[r]), qi, lane);  // dK_j += dS_ij q_i
            }
        }
    }
    if (key_exists) {
        E* row = dqkv + (first_row + j) * stride + at.head * d;
        store_row<D, E>(row + hidden, dk, scale, d, lane);
        store_row<D, E>(row + 2 * hidden, dv, 1.0f, d, lane);
    }
}


// ---- forward in bf16 on tensor cores ----------------------------------------------------------------
// `attention_forward_bf16_mma_d*`, for head-dim capacities D = 16, 32, 64, 128: the same grid as the
// CUDA-core kernels (one block per (sequence, head, tile of 64 query rows), from the schedule), but
// the block is 4 warps and each warp owns 16 query rows as tensor-core fragments (mma.sync m16n8k16,
// bf16 in, f32 accumulate).
//
//   Q    the block's 64 rows are staged once through shared memory (in the K tile's space) and each
//        warp keeps its 16 x D slice as D / 16 A fragments (ldmatrix.x4) for the whole key loop.
//   K, V tiles of KEYS = 64 keys in shared memory as bf16, rows padded to D + 8 elements (16-byte
//        aligned rows whose 8-row ldmatrix phases fall on distinct banks).
//   S    = Q K^T per warp: 16 x 64 f32 in 8 accumulator tiles of 16 x 8. K^T is the col-major B
//        operand, so K's rows are loaded as they are (ldmatrix.x4, two key tiles per load).
//   softmax  each lane holds two rows' scores (rows g and g + 8 of its warp's 16, keys 2t, 2t + 1 of
//        every 8); the row max is the lane's max and two butterfly shuffles over the quad of lanes that
//        share the row. The running max m, the per-lane partial sums l (added up over the quad only at
//        the end) and the rescaling of O are those of the CUDA-core kernel; padding keys get -inf.
//   P V  the accumulator layout of S is the A-fragment layout of P, so P is rounded to bf16 and packed
//        in registers, with no trip through shared memory; V (k-major) is loaded with ldmatrix.x4.trans.
//   O    16 x D f32 per warp in D / 8 accumulator tiles, normalised by 1 / l and rounded to bf16.
//
// Registers per lane: Q fragments D / 4, S 32, P fragments 16, O D / 2. Shared memory per block:
// 2 * 64 * (D + 8) bf16 + 64 ints: 18.3 KiB for D = 64, 34.3 KiB for D = 128. ptxas: 120, 128, 128
// and 168 registers for D = 16, 32, 64, 128 on sm_90 (122, 125, 168, 239 on sm_80), no spills.
// Exponentials use __expf: bf16 outputs do not need the accurate expf.

template <int D>
struct MmaTiles {
    static_assert(D == 16 || D == 32 || D == 64 || D == 128, "head-dim capacity");
    static constexpr int WARPS = 4;
    static constexpr int ROWS = 16 * WARPS;  // query rows per block: Tiles<D>::ROWS, so the grid is the same
    static constexpr int THREADS = 32 * WARPS;
    static constexpr int KEYS = 64;           // keys per shared-memory tile
    static constexpr int STRIDE = D + 8;      // bf16 elements per shared row
    static constexpr int K_STEPS = D / 16;    // mma k-steps of Q K^T
    static constexpr int S_TILES = KEYS / 8;  // 8-key accumulator tiles of S
    static constexpr int O_TILES = D / 8;     // 8-feature accumulator tiles of O
    // Blocks per SM the registers must allow (4: at most 128 registers, 3: 168, 2: 255): as many as
    // ptxas meets without spilling. Left free it spends registers on loading fragments early and
    // reaches 178 (D = 64) and 220 (D = 128): 2 blocks. sm_80's ptxas spills a few words at 128
    // registers for D = 64 and at 168 for D = 128, so it gets one block less there. (The host pass,
    // which never reads the value, takes the sm_90 branch.)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    static constexpr int MIN_BLOCKS = D <= 32 ? 4 : D == 64 ? 3 : 2;
#else
    static constexpr int MIN_BLOCKS = D <= 64 ? 4 : 3;
#endif
    // The backward kernels' (see their comment): what ptxas reaches without a bound, on both
    // architectures.
    static constexpr int MIN_BLOCKS_DQ = D <= 32 ? 4 : D == 64 ? 3 : 2;
    static constexpr int MIN_BLOCKS_DKV = D == 16 ? 4 : D == 32 ? 3 : 2;
    static_assert(ROWS == Tiles<D>::ROWS, "the launch wrapper uses one grid for both forwards");
    static_assert((STRIDE * 2) % 16 == 0, "ldmatrix rows are 16-byte aligned");
    static_assert(2 * KEYS * STRIDE * 2 + KEYS * 4 + 16 <= 48 * 1024, "static shared memory");
};

// Two floats as one register of two bf16 (round to nearest even), `lo` in the low half.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    return static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16(lo))) |
           (static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16(hi))) << 16);
}

// Copies rows [first, first + ROWS) of a [rows, d] bf16 matrix (row i at src + i * stride) into a
// [ROWS][STRIDE] shared tile, zero-filling features d..D and rows from `end` on (the pad columns
// D..STRIDE are never read). With `chunks` (d == D and qkv 16-byte aligned) every row is whole
// 16-byte chunks at 16-byte aligned addresses (hidden = heads * D is a multiple of 8), copied as
// such; otherwise element by element.
template <int D, int ROWS = MmaTiles<D>::KEYS>
__device__ __forceinline__ void load_tile_bf16(__nv_bfloat16* __restrict__ tile, const __nv_bfloat16* __restrict__ src,
                                               size_t stride, int first, int end, int d, bool chunks) {
    using M = MmaTiles<D>;
    if (chunks) {
        constexpr int CHUNKS = D / 8;
#pragma unroll 4
        for (int x = threadIdx.x; x < ROWS * CHUNKS; x += M::THREADS) {
            const int r = x / CHUNKS, c = 8 * (x % CHUNKS);
            uint4 chunk = {0u, 0u, 0u, 0u};
            if (first + r < end) chunk = *reinterpret_cast<const uint4*>(src + (first + r) * stride + c);
            *reinterpret_cast<uint4*>(tile + r * M::STRIDE + c) = chunk;
        }
    } else {
        const __nv_bfloat16 zero = __float2bfloat16(0.0f);
#pragma unroll 4
        for (int x = threadIdx.x; x < ROWS * D; x += M::THREADS) {
            const int r = x / D, c = x % D;
            tile[r * M::STRIDE + c] = first + r < end && c < d ? src[(first + r) * stride + c] : zero;
        }
    }
}

template <int D>
__device__ __forceinline__ void forward_mma(const __nv_bfloat16* __restrict__ qkv, const int* __restrict__ offsets,
                                            const int* __restrict__ schedule,
                                            const int* __restrict__ mask,
                                            __nv_bfloat16* __restrict__ out, float* __restrict__ lse, int tokens,
                                            int heads, int d, float scale) {
    using M = MmaTiles<D>;
    SHARED_ARRAY(__nv_bfloat16, k_tile, M::KEYS * M::STRIDE);  // the block's Q rows first
    SHARED_ARRAY(__nv_bfloat16, v_tile, M::KEYS * M::STRIDE);
    SHARED_ARRAY(int, key_real, M::KEYS);
    SHARED_ARRAY(int, key_end_shared, 1);

    const BlockCoords at = block_coords(offsets, schedule, heads);
    const int seq = at.seq;  // the sequence's length
    const int hidden = heads * d;
    const size_t stride = 3 * static_cast<size_t>(hidden);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;  // this lane's rows g, g + 8 and column pair 2t, 2t + 1 of a tile
    const __nv_bfloat16* q = qkv + at.first_row * stride + at.head * d;  // row 0 of q
    const __nv_bfloat16* k = q + hidden;
    const __nv_bfloat16* v = q + 2 * hidden;
    const int* key_mask = mask ? mask + at.first_row : nullptr;

    const int key_end = real_key_end<M::THREADS>(key_mask, seq, key_end_shared);
    const bool chunks = d == D && reinterpret_cast<size_t>(qkv) % 16 == 0;  // 16-byte loads (and 4-byte stores)

    // The warp's 16 query rows as A fragments: ldmatrix.x4 matrices are rows 0-7 / 8-15 of features
    // 0-7, then of features 8-15 of each k-step; lane l addresses row l % 16, feature half l / 16.
    load_tile_bf16<D>(k_tile, q, stride, at.tile * M::ROWS, seq, d, chunks);
    __syncthreads();
    uint32_t qf[M::K_STEPS][4];
#pragma unroll
    for (int ks = 0; ks < M::K_STEPS; ++ks) {
        ldmatrix_x4(qf[ks], k_tile + (16 * warp + lane % 16) * M::STRIDE + 16 * ks + (lane / 16) * 8);
    }

    float o[M::O_TILES][4];
#pragma unroll
    for (int n = 0; n < M::O_TILES; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {NEG_INF, NEG_INF};  // running max of rows g and g + 8
    float l[2] = {0.0f, 0.0f};        // this lane's share of their running sums

    for (int first = 0; first < key_end; first += M::KEYS) {
        __syncthreads();  // every warp is done with the previous tile (or with the Q rows)
        load_tile_bf16<D>(k_tile, k, stride, first, key_end, d, chunks);
        load_tile_bf16<D>(v_tile, v, stride, first, key_end, d, chunks);
        for (int j = threadIdx.x; j < M::KEYS; j += M::THREADS) {
            key_real[j] = first + j < key_end && key_is_real(key_mask, first + j);
        }
        __syncthreads();

        // S = Q K^T. One ldmatrix.x4 gives the B fragments of two 8-key tiles for one k-step:
        // matrices (keys 0-7, features 0-7), (keys 0-7, features 8-15), then keys 8-15.
        float s[M::S_TILES][4];
#pragma unroll
        for (int n = 0; n < M::S_TILES; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < M::K_STEPS; ++ks) {
#pragma unroll
            for (int n = 0; n < M::S_TILES; n += 2) {
                uint32_t b[4];
                ldmatrix_x4(b, k_tile + (8 * n + (lane / 16) * 8 + lane % 8) * M::STRIDE + 16 * ks +
                                   ((lane / 8) % 2) * 8);
                mma_m16n8k16_bf16(s[n], qf[ks], b, s[n]);
                mma_m16n8k16_bf16(s[n + 1], qf[ks], b + 2, s[n + 1]);
            }
        }

        // Online softmax on the accumulators: s[n][h * 2 + e] is row g + 8 h, key 8 n + 2 t + e.
        float tile_max[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int n = 0; n < M::S_TILES; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[n][e] = key_real[8 * n + 2 * t + e % 2] ? s[n][e] * scale : NEG_INF;
                tile_max[e / 2] = fmaxf(tile_max[e / 2], s[n][e]);
            }
        }
        float m_ref[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
            tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
            // As in the CUDA-core kernel: against 0 while every key so far is padding.
            const float m_new = fmaxf(m[h], tile_max[h]);
            m_ref[h] = m_new == NEG_INF ? 0.0f : m_new;
            const float alpha = __expf(m[h] - m_ref[h]);
            l[h] *= alpha;
#pragma unroll
            for (int n = 0; n < M::O_TILES; ++n) {
                o[n][2 * h] *= alpha;
                o[n][2 * h + 1] *= alpha;
            }
            m[h] = m_new;
        }
        // P in bf16 A fragments: k-step c covers keys 16 c .. 16 c + 15, that is S tiles 2 c (a0, a1)
        // and 2 c + 1 (a2, a3).
        uint32_t pf[M::S_TILES / 2][4];
#pragma unroll
        for (int n = 0; n < M::S_TILES; ++n) {
            float p[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                p[e] = __expf(s[n][e] - m_ref[e / 2]);
                l[e / 2] += p[e];
            }
            pf[n / 2][2 * (n % 2)] = pack_bf16(p[0], p[1]);
            pf[n / 2][2 * (n % 2) + 1] = pack_bf16(p[2], p[3]);
        }

        // O += P V. ldmatrix.x4.trans gives the B fragments of two 8-feature tiles for one k-step of
        // 16 keys: matrices (keys 0-7, features 0-7), (keys 8-15, features 0-7), then features 8-15.
#pragma unroll
        for (int c = 0; c < M::S_TILES / 2; ++c) {
#pragma unroll
            for (int n = 0; n < M::O_TILES; n += 2) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, v_tile + (16 * c + ((lane / 8) % 2) * 8 + lane % 8) * M::STRIDE + 8 * n +
                                         (lane / 16) * 8);
                mma_m16n8k16_bf16(o[n], pf[c], b, o[n]);
                mma_m16n8k16_bf16(o[n + 1], pf[c], b + 2, o[n + 1]);
            }
        }
    }

    const size_t bh = static_cast<size_t>(at.head) * tokens + at.first_row;  // row 0 in lse, D
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
        const int i = at.tile * M::ROWS + 16 * warp + g + 8 * h;
        if (i >= seq) continue;
        // l >= 1 once any key was real; l == 0 means no real key: out = 0, lse = -inf.
        const bool any_key = l[h] > 0.0f;
        const float inv = any_key ? 1.0f / l[h] : 0.0f;
        __nv_bfloat16* row = out + (at.first_row + i) * hidden + at.head * d;
#pragma unroll
        for (int n = 0; n < M::O_TILES; ++n) {
            const int c = 8 * n + 2 * t;
            const float lo = o[n][2 * h] * inv, hi = o[n][2 * h + 1] * inv;
            if (chunks && reinterpret_cast<size_t>(out) % 4 == 0) {
                *reinterpret_cast<uint32_t*>(row + c) = pack_bf16(lo, hi);  // c even, row 4-byte aligned
            } else {
                if (c < d) row[c] = __float2bfloat16(lo);
                if (c + 1 < d) row[c + 1] = __float2bfloat16(hi);
            }
        }
        if (t == 0) lse[bh + i] = any_key ? m[h] + logf(l[h]) : NEG_INF;
    }
}

// ---- backward in bf16 on tensor cores ---------------------------------------------------------------
// `attention_backward_dq_bf16_mma_d*` and `attention_backward_dkv_bf16_mma_d*`, for D = 16, 32, 64,
// 128 (every capacity: no fallback): the CUDA-core backward's split (a dQ kernel that also saves D,
// then a dK/dV kernel that reads it; no atomics), the forward's grid and block (4 warps, each owning
// 16 of the block's 64 rows as tensor-core fragments) and its shared tiles ([rows][D + 8] bf16).
// Every product is an mma.sync m16n8k16 with bf16 operands and f32 accumulators; P and dS are rounded
// to bf16 where they become operands (as FlashAttention does), like P in the forward.
//
//   dQ   the block's dO and out rows are staged in shared memory; lane t of each quad sums the
//        feature pairs 8 x + 2 t of its two rows (a quad reads 4 consecutive words, and rows of
//        D + 8 elements put a warp's 8 quads on 8 different groups of 4 banks: no conflicts) and two
//        shuffles finish D_i = dO_i . out_i, which is saved for dK/dV. The warp keeps its 16 rows of Q and of dO as A fragments
//        (D / 4 registers each) and streams K, V tiles of 64 keys. Per 16 keys: S = Q K^T and
//        dP = dO V^T (K, V rows as the col-major B operand: plain ldmatrix.x4), P = exp(s / sqrt(d) -
//        lse), dS = P (dP - D) packed to bf16 as one A fragment, dQ += dS K (K as the k-major B
//        operand: ldmatrix.x4.trans). dQ is D / 2 accumulators per lane.
//   dK/dV the warp keeps its 16 keys' rows of K and V as A fragments and streams Q, dO (and lse, D)
//        tiles over every query row of the sequence. Per 16 queries: S^T = K Q^T and dP^T = V dO^T
//        (the keys are the M dimension, so the products need no transposed fragment), P^T and
//        dS^T = P^T (dP^T - D) packed in registers, dV += P^T dO and dK += dS^T Q (ldmatrix.trans
//        of the dO and Q tiles). dK and dV are D / 2 accumulators each.
//        D = 128 is the exception: K, V, dK, dV would hold 192 registers per lane and ptxas spills at
//        255, so the block's 64 rows of K and V stay in shared memory and each k-step reloads its two
//        A fragments (one ldmatrix.x4 each, next to the two B loads it feeds); the query tiles are 16
//        rows so that the four tiles fit the 48 KiB of static shared memory.
//
// Steps of 16 keys (queries) rather than the forward's whole 64-key S: the backward has two
// score-shaped products (S and dP) and two sets of operand fragments; a 16-wide step keeps S and dP
// at 8 registers each, and their accumulators are exactly one k-step of the A fragment that follows.
// Steps past the last real key (dQ) or the sequence's end (dK/dV) are skipped; padding keys and rows
// with lse = -inf get P = 0 by a select, as in the CUDA-core kernels, so gradients through them are 0.
// Each output element lives in one lane's accumulator and sums its terms in a fixed order (mma over
// the k-steps, tiles in order), so results are bitwise reproducible and independent of scheduling.
//
// Per (sequence, head) with T = ceil(S / 64): dQ reads Q, dO, out once and K, V once per query tile
// (3 S d + 2 T S d bf16), writes dQ and D, and runs 6 S^2 d flops (S, dP, dQ) on tensor cores;
// dK/dV reads K, V once and Q, dO, lse, D once per key tile (2 S d + 2 T S d bf16, 2 T S f32) and
// runs 8 S^2 d (S^T, dP^T, dV, dK). Exponentials: S^2 per kernel.
//
//     D                                  16     32     64    128
//     shared memory, dQ (KiB)           6.3   10.3   18.3   34.3
//     shared memory, dK/dV (KiB)        6.5   10.5   18.5   42.6
//     registers sm_90, dQ / dK/dV   106/122 122/153 156/213 237/247   (sm_80: 104/123, 118/153,
//     blocks per SM (16-warp max)     4 / 4   4 / 3   3 / 2   2 / 2    156/214, 238/244), no spills
//
// MIN_BLOCKS_DQ / MIN_BLOCKS_DKV are what ptxas reaches without a bound, on both architectures:
// bounding tighter would trade registers for spills in the inner loop. The K/V tile loads are not
// double-buffered (no cp.async), as in the forward. Exponentials use __expf.

// B fragments of two 8-row tiles of a [rows][STRIDE] shared tile for one k-step of 16 features, for
// a product with the tile transposed: rows 8 n0 .. 8 n0 + 15 are B's columns, features 16 ks .. 16 ks + 15
// its k (b[0..1] for rows 8 n0 .. + 7, b[2..3] for the next 8).
template <int D>
__device__ __forceinline__ void b_rows(uint32_t (&b)[4], const __nv_bfloat16* tile, int n0, int ks, int lane) {
    ldmatrix_x4(b, tile + (8 * n0 + (lane / 16) * 8 + lane % 8) * MmaTiles<D>::STRIDE + 16 * ks + ((lane / 8) % 2) * 8);
}

// B fragments of two 8-feature tiles (features 8 n0 .. 8 n0 + 15) for one k-step over rows
// 16 c .. 16 c + 15 of a shared tile, for a product with the tile as it is (rows are B's k).
template <int D>
__device__ __forceinline__ void b_columns(uint32_t (&b)[4], const __nv_bfloat16* tile, int c, int n0, int lane) {
    ldmatrix_x4_trans(b, tile + (16 * c + ((lane / 8) % 2) * 8 + lane % 8) * MmaTiles<D>::STRIDE + 8 * n0 +
                             (lane / 16) * 8);
}

// A fragments of the warp's 16 rows (16 warp .. 16 warp + 15 of a shared tile), one per k-step.
template <int D>
__device__ __forceinline__ void a_rows(uint32_t (&a)[MmaTiles<D>::K_STEPS][4], const __nv_bfloat16* tile, int warp,
                                       int lane) {
#pragma unroll
    for (int ks = 0; ks < MmaTiles<D>::K_STEPS; ++ks) {
        ldmatrix_x4(a[ks], tile + (16 * warp + lane % 16) * MmaTiles<D>::STRIDE + 16 * ks + (lane / 16) * 8);
    }
}

// Stores rows g, g + 8 (of the warp's 16, from `row0`) of a 16 x D accumulator times `scale`, as bf16,
// into a matrix whose row r starts at base + r * stride; rows from `seq` on and features from d on
// are not stored. `pairs`: every (row, 2t) element is 4-byte aligned (d == D and base aligned).
template <int D>
__device__ __forceinline__ void store_rows_bf16(__nv_bfloat16* __restrict__ base, size_t stride,
                                                const float (&acc)[MmaTiles<D>::O_TILES][4], float scale, int row0,
                                                int seq, int d, bool pairs, int lane) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = row0 + g + 8 * h;
        if (r >= seq) continue;
        __nv_bfloat16* row = base + r * stride;
#pragma unroll
        for (int n = 0; n < MmaTiles<D>::O_TILES; ++n) {
            const int c = 8 * n + 2 * t;
            const float lo = acc[n][2 * h] * scale, hi = acc[n][2 * h + 1] * scale;
            if (pairs) {
                *reinterpret_cast<uint32_t*>(row + c) = pack_bf16(lo, hi);
            } else {
                if (c < d) row[c] = __float2bfloat16(lo);
                if (c + 1 < d) row[c + 1] = __float2bfloat16(hi);
            }
        }
    }
}

template <int D>
__device__ __forceinline__ void backward_dq_mma(const __nv_bfloat16* __restrict__ dout,
                                                const __nv_bfloat16* __restrict__ qkv, const int* __restrict__ offsets,
                                                const int* __restrict__ schedule,
                                                const int* __restrict__ mask,
                                                const __nv_bfloat16* __restrict__ out, const float* __restrict__ lse,
                                                float* __restrict__ delta, __nv_bfloat16* __restrict__ dqkv, int tokens,
                                                int heads, int d, float scale) {
    using M = MmaTiles<D>;
    SHARED_ARRAY(__nv_bfloat16, k_tile, M::KEYS * M::STRIDE);  // the block's out rows, then its Q rows first
    SHARED_ARRAY(__nv_bfloat16, v_tile, M::KEYS * M::STRIDE);  // the block's dO rows first
    SHARED_ARRAY(int, key_real, M::KEYS);
    SHARED_ARRAY(int, key_end_shared, 1);

    const BlockCoords at = block_coords(offsets, schedule, heads);
    const int seq = at.seq;  // the sequence's length
    const int hidden = heads * d;
    const size_t stride = 3 * static_cast<size_t>(hidden);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const size_t first_row = at.first_row;
    const __nv_bfloat16* q = qkv + first_row * stride + at.head * d;
    const __nv_bfloat16* k = q + hidden;
    const __nv_bfloat16* v = q + 2 * hidden;
    const __nv_bfloat16* do_rows = dout + first_row * hidden + at.head * d;  // row 0 of this head's dO
    const __nv_bfloat16* out_rows = out + first_row * hidden + at.head * d;
    const size_t bh = static_cast<size_t>(at.head) * tokens + at.first_row;  // row 0 in lse, D
    const int* key_mask = mask ? mask + first_row : nullptr;
    const int row0 = at.tile * M::ROWS;           // the block's first query row
    const int warp_row0 = row0 + 16 * warp;       // the warp's

    const int key_end = real_key_end<M::THREADS>(key_mask, seq, key_end_shared);
    const bool chunks = d == D && reinterpret_cast<size_t>(qkv) % 16 == 0;
    const bool chunks_out =
        d == D && reinterpret_cast<size_t>(dout) % 16 == 0 && reinterpret_cast<size_t>(out) % 16 == 0;

    // D_i = dO_i . out_i from the block's dO and out rows in shared memory: lane t of a quad takes
    // feature pairs 8 x + 2 t (a quad reads 4 consecutive words; rows of D + 8 elements put the
    // warp's 8 quads on different banks), then two shuffles add the quad's partial sums.
    load_tile_bf16<D>(v_tile, do_rows, hidden, row0, seq, d, chunks_out);
    load_tile_bf16<D>(k_tile, out_rows, hidden, row0, seq, d, chunks_out);
    __syncthreads();
    float delta_i[2], lse_i[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = 16 * warp + g + 8 * h;
        float partial = 0.0f;
#pragma unroll
        for (int x = 0; x < D / 8; ++x) {
            const int c = 8 * x + 2 * t;
            partial = fmaf(__bfloat162float(v_tile[r * M::STRIDE + c]), __bfloat162float(k_tile[r * M::STRIDE + c]),
                           partial);
            partial = fmaf(__bfloat162float(v_tile[r * M::STRIDE + c + 1]),
                           __bfloat162float(k_tile[r * M::STRIDE + c + 1]), partial);
        }
        partial += __shfl_xor_sync(0xffffffffu, partial, 1);
        partial += __shfl_xor_sync(0xffffffffu, partial, 2);
        delta_i[h] = partial;
        const int i = row0 + r;
        lse_i[h] = i < seq ? lse[bh + i] : NEG_INF;
        if (i < seq && t == 0) delta[bh + i] = partial;  // for the dK/dV kernel
    }
    uint32_t dof[M::K_STEPS][4];  // the warp's 16 dO rows as A fragments
    a_rows<D>(dof, v_tile, warp, lane);
    __syncthreads();  // every warp is done with the out rows
    load_tile_bf16<D>(k_tile, q, stride, row0, seq, d, chunks);
    __syncthreads();
    uint32_t qf[M::K_STEPS][4];  // ... and its 16 query rows
    a_rows<D>(qf, k_tile, warp, lane);

    float dq[M::O_TILES][4];
#pragma unroll
    for (int n = 0; n < M::O_TILES; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

    for (int first = 0; first < key_end; first += M::KEYS) {
        __syncthreads();  // every warp is done with the previous tile (or with the Q and dO rows)
        load_tile_bf16<D>(k_tile, k, stride, first, key_end, d, chunks);
        load_tile_bf16<D>(v_tile, v, stride, first, key_end, d, chunks);
        for (int j = threadIdx.x; j < M::KEYS; j += M::THREADS) {
            key_real[j] = first + j < key_end && key_is_real(key_mask, first + j);
        }
        __syncthreads();

        // Steps of 16 keys, up to the last real key (the bound is the same for the whole block).
        const int keys = key_end - first;
#pragma unroll 1
        for (int c = 0; c < M::KEYS / 16 && 16 * c < keys; ++c) {
            // S and dP for the warp's 16 rows and keys 16 c .. 16 c + 15: two 8-key tiles each.
            float s[2][4], dp[2][4];
#pragma unroll
            for (int n = 0; n < 2; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.0f;
            }
#pragma unroll
            for (int ks = 0; ks < M::K_STEPS; ++ks) {
                uint32_t b[4];
                b_rows<D>(b, k_tile, 2 * c, ks, lane);
                mma_m16n8k16_bf16(s[0], qf[ks], b, s[0]);
                mma_m16n8k16_bf16(s[1], qf[ks], b + 2, s[1]);
                b_rows<D>(b, v_tile, 2 * c, ks, lane);
                mma_m16n8k16_bf16(dp[0], dof[ks], b, dp[0]);
                mma_m16n8k16_bf16(dp[1], dof[ks], b + 2, dp[1]);
            }
            // dS = P (dP - D) in bf16, as the A fragment of one k-step: s[n][2 h + e] is row g + 8 h,
            // key 16 c + 8 n + 2 t + e. P = 0 for a padding key and for a row with no real key
            // (lse = -inf): a select, since exp(s - lse) is +inf there.
            uint32_t dsf[4];
#pragma unroll
            for (int n = 0; n < 2; ++n) {
                float ds[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int h = e / 2;
                    const bool live = key_real[16 * c + 8 * n + 2 * t + e % 2] && lse_i[h] != NEG_INF;
                    const float p = live ? __expf(fmaf(s[n][e], scale, -lse_i[h])) : 0.0f;
                    ds[e] = p * (dp[n][e] - delta_i[h]);
                }
                dsf[2 * n] = pack_bf16(ds[0], ds[1]);
                dsf[2 * n + 1] = pack_bf16(ds[2], ds[3]);
            }
            // dQ += dS K (scaled by 1 / sqrt(d) at the store).
#pragma unroll
            for (int n = 0; n < M::O_TILES; n += 2) {
                uint32_t b[4];
                b_columns<D>(b, k_tile, c, n, lane);
                mma_m16n8k16_bf16(dq[n], dsf, b, dq[n]);
                mma_m16n8k16_bf16(dq[n + 1], dsf, b + 2, dq[n + 1]);
            }
        }
    }
    const bool pairs = chunks && reinterpret_cast<size_t>(dqkv) % 4 == 0;
    store_rows_bf16<D>(dqkv + first_row * stride + at.head * d, stride, dq, scale, warp_row0, seq, d, pairs, lane);
}

template <int D>
__device__ __forceinline__ void backward_dkv_mma(const __nv_bfloat16* __restrict__ dout,
                                                 const __nv_bfloat16* __restrict__ qkv, const int* __restrict__ offsets,
                                                 const int* __restrict__ schedule,
                                                 const int* __restrict__ mask,
                                                 const float* __restrict__ lse, const float* __restrict__ delta,
                                                 __nv_bfloat16* __restrict__ dqkv, int tokens, int heads, int d,
                                                 float scale) {
    using M = MmaTiles<D>;
    // D = 128: K, V, dK and dV of a warp's 16 keys would take 192 registers, and ptxas spills at 255
    // even with K alone in registers; so the block's K and V rows stay in shared memory and their A
    // fragments are reloaded at every use, and the query tiles shrink to 16 rows to keep the static
    // shared memory under 48 KiB (2 * 64 + 2 * 16 rows of 136 bf16: 42.5 KiB).
    constexpr bool KV_SHARED = D == 128;
    constexpr int QUERIES = KV_SHARED ? 16 : 64;  // query rows per streamed tile
    // Fragments held in registers are indexed by the k-step, so that loop is unrolled; with K and V in
    // shared memory it is not, which keeps ptxas from hoisting every step's shared addresses.
    constexpr int KS_UNROLL = KV_SHARED ? 1 : M::K_STEPS;
    SHARED_ARRAY(__nv_bfloat16, q_tile, (KV_SHARED ? QUERIES : M::KEYS) * M::STRIDE);  // K rows first
    SHARED_ARRAY(__nv_bfloat16, do_tile, (KV_SHARED ? QUERIES : M::KEYS) * M::STRIDE);  // V rows first
    SHARED_ARRAY(__nv_bfloat16, k_rows, KV_SHARED ? M::KEYS * M::STRIDE : 8);  // K rows (KV_SHARED)
    SHARED_ARRAY(__nv_bfloat16, v_rows, KV_SHARED ? M::KEYS * M::STRIDE : 8);  // V rows (KV_SHARED)
    SHARED_ARRAY(float, lse_tile, QUERIES);
    SHARED_ARRAY(float, delta_tile, QUERIES);
    SHARED_ARRAY(int, key_end_shared, 1);

    const BlockCoords at = block_coords(offsets, schedule, heads);
    const int seq = at.seq;  // the sequence's length
    const int hidden = heads * d;
    const size_t stride = 3 * static_cast<size_t>(hidden);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const size_t first_row = at.first_row;
    const __nv_bfloat16* q = qkv + first_row * stride + at.head * d;
    const __nv_bfloat16* do_rows = dout + first_row * hidden + at.head * d;
    const size_t bh = static_cast<size_t>(at.head) * tokens + at.first_row;  // row 0 in lse, D
    const int* key_mask = mask ? mask + first_row : nullptr;
    const int row0 = at.tile * M::ROWS;      // the block's first key row
    const int warp_row0 = row0 + 16 * warp;  // the warp's

    const int key_end = real_key_end<M::THREADS>(key_mask, seq, key_end_shared);
    const bool chunks = d == D && reinterpret_cast<size_t>(qkv) % 16 == 0;
    const bool chunks_do = d == D && reinterpret_cast<size_t>(dout) % 16 == 0;
    bool key_real[2];  // the lane's key rows g and g + 8
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int j = warp_row0 + g + 8 * h;
        key_real[h] = j < seq && key_is_real(key_mask, j);
    }

    float dk[M::O_TILES][4], dv[M::O_TILES][4];
#pragma unroll
    for (int n = 0; n < M::O_TILES; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.0f;
    }

    // A tile of padding keys has P = 0 in every row: its gradients are 0 without the loop. (The
    // condition is the same for the whole block, so every thread meets the same barriers.)
    if (row0 < key_end) {
        // The warp's 16 key rows of K and V as A fragments (in shared memory when KV_SHARED, read
        // after the loop's first barrier).
        constexpr int HELD = KV_SHARED ? 1 : M::K_STEPS;
        uint32_t kf[HELD][4], vf[HELD][4];
        if constexpr (KV_SHARED) {
            load_tile_bf16<D>(k_rows, q + hidden, stride, row0, seq, d, chunks);
            load_tile_bf16<D>(v_rows, q + 2 * hidden, stride, row0, seq, d, chunks);
        } else {
            load_tile_bf16<D>(q_tile, q + hidden, stride, row0, seq, d, chunks);
            load_tile_bf16<D>(do_tile, q + 2 * hidden, stride, row0, seq, d, chunks);
            __syncthreads();
            a_rows<D>(kf, q_tile, warp, lane);
            a_rows<D>(vf, do_tile, warp, lane);
        }

        for (int first = 0; first < seq; first += QUERIES) {
            __syncthreads();  // every warp is done with the previous tile (or with the K and V rows)
            load_tile_bf16<D, QUERIES>(q_tile, q, stride, first, seq, d, chunks);
            load_tile_bf16<D, QUERIES>(do_tile, do_rows, hidden, first, seq, d, chunks_do);
            for (int r = threadIdx.x; r < QUERIES; r += M::THREADS) {
                const bool exists = first + r < seq;
                lse_tile[r] = exists ? lse[bh + first + r] : NEG_INF;
                delta_tile[r] = exists ? delta[bh + first + r] : 0.0f;
            }
            __syncthreads();

            const int rows = seq - first;
#pragma unroll 1
            for (int c = 0; c < QUERIES / 16 && 16 * c < rows; ++c) {
                // S^T = K Q^T and dP^T = V dO^T for the warp's 16 keys and queries 16 c .. 16 c + 15.
                float s[2][4], dp[2][4];
#pragma unroll
                for (int n = 0; n < 2; ++n) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.0f;
                }
#pragma unroll KS_UNROLL
                for (int ks = 0; ks < M::K_STEPS; ++ks) {
                    const int held = KV_SHARED ? 0 : ks;
                    if constexpr (KV_SHARED) {
                        const int at_row = (16 * warp + lane % 16) * M::STRIDE + 16 * ks + (lane / 16) * 8;
                        ldmatrix_x4(kf[0], k_rows + at_row);
                        ldmatrix_x4(vf[0], v_rows + at_row);
                    }
                    uint32_t b[4];
                    b_rows<D>(b, q_tile, 2 * c, ks, lane);
                    mma_m16n8k16_bf16(s[0], kf[held], b, s[0]);
                    mma_m16n8k16_bf16(s[1], kf[held], b + 2, s[1]);
                    b_rows<D>(b, do_tile, 2 * c, ks, lane);
                    mma_m16n8k16_bf16(dp[0], vf[held], b, dp[0]);
                    mma_m16n8k16_bf16(dp[1], vf[held], b + 2, dp[1]);
                }
                // P^T and dS^T in bf16 A fragments: s[n][2 h + e] is key g + 8 h, query
                // 16 c + 8 n + 2 t + e, whose lse and D come from shared memory.
                uint32_t pf[4], dsf[4];
#pragma unroll
                for (int n = 0; n < 2; ++n) {
                    float p[4], ds[4];
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int i = 16 * c + 8 * n + 2 * t + e % 2;
                        const float lse_q = lse_tile[i];
                        const bool live = key_real[e / 2] && lse_q != NEG_INF;
                        p[e] = live ? __expf(fmaf(s[n][e], scale, -lse_q)) : 0.0f;
                        ds[e] = p[e] * (dp[n][e] - delta_tile[i]);
                    }
                    pf[2 * n] = pack_bf16(p[0], p[1]);
                    pf[2 * n + 1] = pack_bf16(p[2], p[3]);
                    dsf[2 * n] = pack_bf16(ds[0], ds[1]);
                    dsf[2 * n + 1] = pack_bf16(ds[2], ds[3]);
                }
                // dV += P^T dO, dK += dS^T Q (scaled by 1 / sqrt(d) at the store).
#pragma unroll
                for (int n = 0; n < M::O_TILES; n += 2) {
                    uint32_t b[4];
                    b_columns<D>(b, do_tile, c, n, lane);
                    mma_m16n8k16_bf16(dv[n], pf, b, dv[n]);
                    mma_m16n8k16_bf16(dv[n + 1], pf, b + 2, dv[n + 1]);
                    b_columns<D>(b, q_tile, c, n, lane);
                    mma_m16n8k16_bf16(dk[n], dsf, b, dk[n]);
                    mma_m16n8k16_bf16(dk[n + 1], dsf, b + 2, dk[n + 1]);
                }
            }
        }
    }
    const bool pairs = chunks && reinterpret_cast<size_t>(dqkv) % 4 == 0;
    __nv_bfloat16* rows = dqkv + first_row * stride + at.head * d;
    store_rows_bf16<D>(rows + hidden, stride, dk, scale, warp_row0, seq, d, pairs, lane);
    store_rows_bf16<D>(rows + 2 * hidden, stride, dv, 1.0f, warp_row0, seq, d, pairs, lane);
}

}  // namespace attention

// ---- entry points ---------------------------------------------------------------------------------
// One per kernel, element type (f32, bf16) and head-dim capacity D in {16, 32, 64, 128}; the wrapper
// launches the smallest D >= head_dim with Tiles<D>::THREADS threads and `entries * heads` blocks,
// entries being the schedule's (sequence, tile) pairs. The element type is that of qkv, dout, out and
// dqkv; lse and delta are always f32.
//
// offsets   [sequences + 1] cu_seqlens: sequence s is token rows offsets[s] .. offsets[s + 1]
// schedule  [entries, 2] (sequence, 64-row tile) pairs, every tile of every sequence once, longest
//           sequences first
// mask      [tokens] 1 = a real key, or null when every key is real
// forward:       qkv [tokens, 3 hidden] -> out [tokens, hidden], lse [heads, tokens]
// backward_dq:   dout, qkv, out, lse -> delta [heads, tokens] (scratch), dQ part of dqkv
// backward_dkv:  dout, qkv, lse, delta -> dK and dV parts of dqkv (launch after backward_dq)
// forward_mma:   the forward on tensor cores, bf16 only; MmaTiles<D>::THREADS (128) threads and the
//                same blocks.
// backward_*_mma: the backward on tensor cores, bf16 only, the same arguments as backward_dq and
//                backward_dkv (and the same order: dq first); 128 threads and the same blocks.
// `scale` is 1 / sqrt(head_dim), computed by the caller exactly as the CPU backend does.
#define ATTENTION_SEQUENCES \
    const int *__restrict__ offsets, const int *__restrict__ schedule, const int *__restrict__ mask
#define ATTENTION_FORWARD(E, NAME, D)                                                                          \
    extern "C" __global__ void __launch_bounds__(attention::Tiles<D>::THREADS, attention::Tiles<D>::MIN_BLOCKS) \
        attention_forward_##NAME##_d##D(const E* __restrict__ qkv, ATTENTION_SEQUENCES, E* __restrict__ out,     \
                                        float* __restrict__ lse, int tokens, int heads, int head_dim,           \
                                        float scale) {                                                          \
        attention::forward<D>(qkv, offsets, schedule, mask, out, lse, tokens, heads, head_dim, scale);          \
    }
#define ATTENTION_BACKWARD_DQ(E, NAME, D)                                                                      \
    extern "C" __global__ void __launch_bounds__(attention::Tiles<D>::THREADS, attention::Tiles<D>::MIN_BLOCKS) \
        attention_backward_dq_##NAME##_d##D(const E* __restrict__ dout, const E* __restrict__ qkv,              \
                                            ATTENTION_SEQUENCES, const E* __restrict__ out,                     \
                                            const float* __restrict__ lse, float* __restrict__ delta,           \
                                            E* __restrict__ dqkv, int tokens, int heads, int head_dim,          \
                                            float scale) {                                                      \
        attention::backward_dq<D>(dout, qkv, offsets, schedule, mask, out, lse, delta, dqkv, tokens, heads,     \
                                  head_dim, scale);                                                             \
    }
#define ATTENTION_BACKWARD_DKV(E, NAME, D)                                                                     \
    extern "C" __global__ void __launch_bounds__(attention::Tiles<D>::THREADS, attention::Tiles<D>::MIN_BLOCKS) \
        attention_backward_dkv_##NAME##_d##D(const E* __restrict__ dout, const E* __restrict__ qkv,             \
                                             ATTENTION_SEQUENCES, const float* __restrict__ lse,                \
                                             const float* __restrict__ delta, E* __restrict__ dqkv, int tokens, \
                                             int heads, int head_dim, float scale) {                            \
        attention::backward_dkv<D>(dout, qkv, offsets, schedule, mask, lse, delta, dqkv, tokens, heads,         \
                                   head_dim, scale);                                                            \
    }
#define ATTENTION_FORWARD_MMA(D)                                                                                \
    extern "C" __global__ void __launch_bounds__(attention::MmaTiles<D>::THREADS,                              \
                                                 attention::MmaTiles<D>::MIN_BLOCKS)                            \
        attention_forward_bf16_mma_d##D(const __nv_bfloat16* __restrict__ qkv, ATTENTION_SEQUENCES,             \
                                        __nv_bfloat16* __restrict__ out, float* __restrict__ lse, int tokens,   \
                                        int heads, int head_dim, float scale) {                                 \
        attention::forward_mma<D>(qkv, offsets, schedule, mask, out, lse, tokens, heads, head_dim, scale);      \
    }
#define ATTENTION_ENTRY_POINTS(E, NAME, D) \
    ATTENTION_FORWARD(E, NAME, D)          \
    ATTENTION_BACKWARD_DQ(E, NAME, D)      \
    ATTENTION_BACKWARD_DKV(E, NAME, D)

ATTENTION_ENTRY_POINTS(float, f32, 16)
ATTENTION_ENTRY_POINTS(float, f32, 32)
ATTENTION_ENTRY_POINTS(float, f32, 64)
ATTENTION_ENTRY_POINTS(float, f32, 128)
ATTENTION_ENTRY_POINTS(__nv_bfloat16, bf16, 16)
ATTENTION_ENTRY_POINTS(__nv_bfloat16, bf16, 32)
ATTENTION_ENTRY_POINTS(__nv_bfloat16, bf16, 64)
ATTENTION_ENTRY_POINTS(__nv_bfloat16, bf16, 128)
#define ATTENTION_BACKWARD_MMA(D)                                                                               \
    extern "C" __global__ void __launch_bounds__(attention::MmaTiles<D>::THREADS,                              \
                                                 attention::MmaTiles<D>::MIN_BLOCKS_DQ)                         \
        attention_backward_dq_bf16_mma_d##D(                                                                   \
            const __nv_bfloat16* __restrict__ dout, const __nv_bfloat16* __restrict__ qkv, ATTENTION_SEQUENCES, \
            const __nv_bfloat16* __restrict__ out, const float* __restrict__ lse, float* __restrict__ delta,    \
            __nv_bfloat16* __restrict__ dqkv, int tokens, int heads, int head_dim, float scale) {               \
        attention::backward_dq_mma<D>(dout, qkv, offsets, schedule, mask, out, lse, delta, dqkv, tokens, heads, \
                                      head_dim, scale);                                                         \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(attention::MmaTiles<D>::THREADS,                              \
                                                 attention::MmaTiles<D>::MIN_BLOCKS_DKV)                        \
        attention_backward_dkv_bf16_mma_d##D(                                                                  \
            const __nv_bfloat16* __restrict__ dout, const __nv_bfloat16* __restrict__ qkv, ATTENTION_SEQUENCES, \
            const float* __restrict__ lse, const float* __restrict__ delta, __nv_bfloat16* __restrict__ dqkv,   \
            int tokens, int heads, int head_dim, float scale) {                                                 \
        attention::backward_dkv_mma<D>(dout, qkv, offsets, schedule, mask, lse, delta, dqkv, tokens, heads,     \
                                       head_dim, scale);                                                        \
    }
#define ATTENTION_MMA_ENTRY_POINTS(D) \
    ATTENTION_FORWARD_MMA(D)          \
    ATTENTION_BACKWARD_MMA(D)

ATTENTION_MMA_ENTRY_POINTS(16)
ATTENTION_MMA_ENTRY_POINTS(32)
ATTENTION_MMA_ENTRY_POINTS(64)
ATTENTION_MMA_ENTRY_POINTS(128)
