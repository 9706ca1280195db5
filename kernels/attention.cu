// Multi-head attention with a key-padding mask, forward and backward, in f32 on CUDA cores: the
// algorithm of FlashAttention-2 (Dao, 2023), with the [seq, seq] score matrix never written to memory.
// CPU reference: src/backend/cpu/attention.rs; launch wrappers: src/backend/cuda/ops/attention.rs.
//
// ---- The math --------------------------------------------------------------------------------------
// For one (sequence b, head h), with q, k, v the [S, d] slices of the fused QKV activation (row i of
// q is qkv[b*S + i, h*d .. h*d + d]; k and v sit `hidden` and `2 hidden` floats further on):
//
//     s_ij = (q_i . k_j) / sqrt(d)              (s_ij = -inf for a padding key: mask[b, j] == 0)
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
// Forward, `attention_forward_f32_d*`: one block per (batch, head, tile of ROWS query rows); q_i and
// the accumulator o_i stay in registers for the whole key loop; K and V tiles stream through shared
// memory. Scores are taken CHUNK = 16 keys at a time (16 independent dot products in flight), then
// the chunk's max updates the online softmax and its probabilities accumulate P V.
//
// Backward, deterministic and free of atomics. FlashAttention-2 runs one kernel over key tiles and
// adds each block's share of dQ with float atomics, whose order (and so rounding) changes from run to
// run; here, as in deterministic variants of it, the work is split so that every block owns its
// outputs:
//   1. `attention_backward_dq_f32_d*`: one block per (batch, head, query tile), launched first. Each
//      group computes D_i for its row (and saves it for step 2), then streams K and V tiles and
//      accumulates dQ_i in registers.
//   2. `attention_backward_dkv_f32_d*`: one block per (batch, head, key tile). Each group keeps k_j,
//      v_j, dK_j, dV_j in registers and streams Q, dO, lse and D over all query tiles.
// Each output element is owned by exactly one thread and summed in a fixed order, so the results are
// bitwise reproducible from run to run.
//
// ---- Memory traffic and work (per (batch, head), S keys, head_dim d, T = ceil(S / ROWS) tiles) -----
//   forward:  reads Q once and K, V once per query tile (S d + 2 T S d floats), writes out and lse
//             (S d + S), 4 S^2 d flops. The blocks of one (batch, head) are adjacent in the grid,
//             so the T re-reads of K and V mostly hit L2. Unfused attention writes and re-reads
//             S^2 scores and S^2 probabilities instead (S = 512: 1 MiB each, per head).
//   dQ:       reads Q, dO, out once and K, V once per query tile; 6 S^2 d flops (recomputes s, dP).
//   dK/dV:    reads K, V once and Q, dO, lse, D once per key tile;  8 S^2 d flops.
// Backward is 14 S^2 d flops: 8 for a backward that stored P, 2 to recompute s from lse (O(S) memory
// instead of O(S^2)), and 4 because each of the two kernels computes s and dP (the price of
// determinism without atomics; a single kernel with atomics does 10). Keys after the sequence's last
// real key are padding: every kernel finds that end first and stops its key loop there, and a dK/dV
// block whose keys are all padding skips its query loop, so padded batches cost what their real
// lengths cost. (Padded query rows still get their gradients: the reference computes them.)
//
// On CUDA cores each broadcast float4 from shared memory feeds four FMAs, so shared-memory
// bandwidth and FMA issue, not DRAM, should bound these kernels (not yet measured on a GPU). A bf16
// tensor-core variant (mma.sync m16n8k16 with ldmatrix, common.cuh) would sit beside these as
// `attention_*_bf16_*`, with warps owning 16-row fragments instead of lane groups owning rows; the
// decomposition, the online softmax and the padding handling stay the same.
#include "common.cuh"

namespace attention {

constexpr float NEG_INF = -INFINITY;

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
template <int D>
__device__ __forceinline__ void load_row(float (&r)[Tiles<D>::FEATURES], const float* __restrict__ row, bool valid,
                                         int d, int lane) {
#pragma unroll
    for (int t = 0; t < Tiles<D>::CHUNKS; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int c = feature<D>(lane, t, e);
            r[4 * t + e] = valid && c < d ? row[c] : 0.0f;
        }
    }
}

// Stores this lane's features c < d of a row, each multiplied by `scale`.
template <int D>
__device__ __forceinline__ void store_row(float* __restrict__ row, const float (&r)[Tiles<D>::FEATURES], float scale,
                                          int d, int lane) {
#pragma unroll
    for (int t = 0; t < Tiles<D>::CHUNKS; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int c = feature<D>(lane, t, e);
            if (c < d) row[c] = r[4 * t + e] * scale;
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
template <int D>
__device__ __forceinline__ void load_tile(float* __restrict__ tile, const float* __restrict__ src, size_t stride,
                                          int first, int end, int d) {
    using T = Tiles<D>;
    constexpr int ROWS_PER_PASS = T::THREADS / D;
    const int c = threadIdx.x % D;
    const bool feature_real = c < d;
#pragma unroll 4
    for (int r = threadIdx.x / D; r < T::STREAM; r += ROWS_PER_PASS) {
        const int row = first + r;
        tile[r * D + c] = row < end && feature_real ? src[row * stride + c] : 0.0f;
    }
}

// One past the sequence's last real key (0 for a sequence that is all padding). Keys from there on
// are padding, so the key loops stop there. An integer max through shared memory: the result does
// not depend on the order of the atomics. Ends with a barrier, so `end` may be read at once.
template <int D>
__device__ __forceinline__ int real_key_end(const int* __restrict__ key_mask, int seq, int* end) {
    if (threadIdx.x == 0) *end = 0;
    __syncthreads();
    int last = 0;
    for (int j = threadIdx.x; j < seq; j += Tiles<D>::THREADS) {
        if (key_mask[j] != 0) last = j + 1;
    }
    if (last > 0) atomicMax(end, last);
    __syncthreads();
    return *end;
}

// The block's (tile, head, batch): a one-dimensional grid with the tile fastest, so that the blocks
// reading the same head's K and V (forward, dQ) or Q and dO (dK/dV) run side by side and share L2.
struct BlockCoords {
    int tile, head, batch;
};
__device__ __forceinline__ BlockCoords block_coords(int seq, int heads, int rows_per_tile) {
    const int tiles = (seq + rows_per_tile - 1) / rows_per_tile;
    const int bh = blockIdx.x / tiles;
    return {static_cast<int>(blockIdx.x) % tiles, bh % heads, bh / heads};
}

// ---- forward --------------------------------------------------------------------------------------

template <int D>
__device__ __forceinline__ void forward(const float* __restrict__ qkv, const int* __restrict__ mask,
                                        float* __restrict__ out, float* __restrict__ lse, int seq, int heads, int d,
                                        float scale) {
    using T = Tiles<D>;
    SHARED_ARRAY(float, k_tile, T::STREAM * D);
    SHARED_ARRAY(float, v_tile, T::STREAM * D);
    SHARED_ARRAY(int, key_real, T::STREAM);
    SHARED_ARRAY(int, key_end_shared, 1);

    const BlockCoords at = block_coords(seq, heads, T::ROWS);
    const int hidden = heads * d;
    const size_t stride = 3 * static_cast<size_t>(hidden);
    const int lane = threadIdx.x % T::LANES;
    const int i = at.tile * T::ROWS + threadIdx.x / T::LANES;  // this group's query row
    const bool row_exists = i < seq;
    const float* q = qkv + static_cast<size_t>(at.batch) * seq * stride + at.head * d;  // row 0 of q
    const float* k = q + hidden;
    const float* v = q + 2 * hidden;
    const int* key_mask = mask + static_cast<size_t>(at.batch) * seq;

    const int key_end = real_key_end<D>(key_mask, seq, key_end_shared);

    float qi[T::FEATURES];
    load_row<D>(qi, q + i * stride, row_exists, d, lane);
    float o[T::FEATURES];
#pragma unroll
    for (int f = 0; f < T::FEATURES; ++f) o[f] = 0.0f;
    float m = NEG_INF;  // running max of the scores seen
    float l = 0.0f;     // running sum of exp(s - m)

    for (int first = 0; first < key_end; first += T::STREAM) {
        __syncthreads();  // every group is done with the previous tile
        load_tile<D>(k_tile, k, stride, first, key_end, d);
        load_tile<D>(v_tile, v, stride, first, key_end, d);
        for (int j = threadIdx.x; j < T::STREAM; j += T::THREADS) {
            key_real[j] = first + j < key_end && key_mask[first + j] != 0;
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
        const size_t bh = static_cast<size_t>(at.batch) * heads + at.head;
        store_row<D>(out + (static_cast<size_t>(at.batch) * seq + i) * hidden + at.head * d, o,
                     any_key ? 1.0f / l : 0.0f, d, lane);
        if (lane == 0) lse[bh * seq + i] = any_key ? m + logf(l) : NEG_INF;
    }
}

// ---- backward: dQ (and D) -------------------------------------------------------------------------

template <int D>
__device__ __forceinline__ void backward_dq(const float* __restrict__ dout, const float* __restrict__ qkv,
                                            const int* __restrict__ mask, const float* __restrict__ out,
                                            const float* __restrict__ lse, float* __restrict__ delta,
                                            float* __restrict__ dqkv, int seq, int heads, int d, float scale) {
    using T = Tiles<D>;
    SHARED_ARRAY(float, k_tile, T::STREAM * D);
    SHARED_ARRAY(float, v_tile, T::STREAM * D);
    SHARED_ARRAY(int, key_real, T::STREAM);
    SHARED_ARRAY(int, key_end_shared, 1);

    const BlockCoords at = block_coords(seq, heads, T::ROWS);
    const int hidden = heads * d;
    const size_t stride = 3 * static_cast<size_t>(hidden);
    const int lane = threadIdx.x % T::LANES;
    const int i = at.tile * T::ROWS + threadIdx.x / T::LANES;
    const bool row_exists = i < seq;
    const size_t first_row = static_cast<size_t>(at.batch) * seq;  // this sequence's first token row
    const float* q = qkv + first_row * stride + at.head * d;
    const float* k = q + hidden;
    const float* v = q + 2 * hidden;
    const size_t out_at = (first_row + i) * hidden + at.head * d;  // row i in out and dout
    const size_t bh = static_cast<size_t>(at.batch) * heads + at.head;
    const int* key_mask = mask + first_row;

    const int key_end = real_key_end<D>(key_mask, seq, key_end_shared);

    float qi[T::FEATURES], doi[T::FEATURES], dqi[T::FEATURES];
    load_row<D>(qi, q + i * stride, row_exists, d, lane);
    load_row<D>(dqi, out + out_at, row_exists, d, lane);  // out_i, in dqi until D_i is taken
    load_row<D>(doi, dout + out_at, row_exists, d, lane);
    float partial = 0.0f;
#pragma unroll
    for (int f = 0; f < T::FEATURES; ++f) {
        partial = fmaf(doi[f], dqi[f], partial);
        dqi[f] = 0.0f;
    }
    const float delta_i = group_sum<T::LANES>(partial);  // D_i = dO_i . out_i
    const float lse_i = row_exists ? lse[bh * seq + i] : NEG_INF;
    const bool row_has_keys = lse_i != NEG_INF;
    if (row_exists && lane == 0) delta[bh * seq + i] = delta_i;  // for the dK/dV kernel

    for (int first = 0; first < key_end; first += T::STREAM) {
        __syncthreads();
        load_tile<D>(k_tile, k, stride, first, key_end, d);
        load_tile<D>(v_tile, v, stride, first, key_end, d);
        for (int j = threadIdx.x; j < T::STREAM; j += T::THREADS) {
            key_real[j] = first + j < key_end && key_mask[first + j] != 0;
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
    if (row_exists) store_row<D>(dqkv + (first_row + i) * stride + at.head * d, dqi, scale, d, lane);
}

// ---- backward: dK, dV -----------------------------------------------------------------------------

template <int D>
__device__ __forceinline__ void backward_dkv(const float* __restrict__ dout, const float* __restrict__ qkv,
                                             const int* __restrict__ mask, const float* __restrict__ lse,
                                             const float* __restrict__ delta, float* __restrict__ dqkv, int seq,
                                             int heads, int d, float scale) {
    using T = Tiles<D>;
    SHARED_ARRAY(float, q_tile, T::STREAM * D);
    SHARED_ARRAY(float, do_tile, T::STREAM * D);
    SHARED_ARRAY(float, lse_tile, T::STREAM);
    SHARED_ARRAY(float, delta_tile, T::STREAM);
    SHARED_ARRAY(int, key_end_shared, 1);

    const BlockCoords at = block_coords(seq, heads, T::ROWS);
    const int hidden = heads * d;
    const size_t stride = 3 * static_cast<size_t>(hidden);
    const int lane = threadIdx.x % T::LANES;
    const int j = at.tile * T::ROWS + threadIdx.x / T::LANES;  // this group's key row
    const bool key_exists = j < seq;
    const size_t first_row = static_cast<size_t>(at.batch) * seq;
    const float* q = qkv + first_row * stride + at.head * d;
    const float* do_rows = dout + first_row * hidden + at.head * d;  // row 0 of this head's dO
    const size_t bh = static_cast<size_t>(at.batch) * heads + at.head;
    const int* key_mask = mask + first_row;

    const int key_end = real_key_end<D>(key_mask, seq, key_end_shared);
    const bool key_real = key_exists && key_mask[j] != 0;

    float kj[T::FEATURES], vj[T::FEATURES], dk[T::FEATURES], dv[T::FEATURES];
    load_row<D>(kj, q + hidden + j * stride, key_exists, d, lane);
    load_row<D>(vj, q + 2 * hidden + j * stride, key_exists, d, lane);
#pragma unroll
    for (int f = 0; f < T::FEATURES; ++f) dk[f] = dv[f] = 0.0f;

    // A tile of padding keys has P = 0 in every row: its gradients are 0 without the loop. (The
    // condition is the same for the whole block, so every thread meets the same barriers.)
    if (at.tile * T::ROWS < key_end) {
        for (int first = 0; first < seq; first += T::STREAM) {
            __syncthreads();
            load_tile<D>(q_tile, q, stride, first, seq, d);
            load_tile<D>(do_tile, do_rows, hidden, first, seq, d);
            for (int r = threadIdx.x; r < T::STREAM; r += T::THREADS) {
                const bool exists = first + r < seq;
                lse_tile[r] = exists ? lse[bh * seq + first + r] : NEG_INF;
                delta_tile[r] = exists ? delta[bh * seq + first + r] : 0.0f;
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
        float* row = dqkv + (first_row + j) * stride + at.head * d;
        store_row<D>(row + hidden, dk, scale, d, lane);
        store_row<D>(row + 2 * hidden, dv, 1.0f, d, lane);
    }
}

}  // namespace attention

// ---- entry points ---------------------------------------------------------------------------------
// One per kernel and head-dim capacity D in {16, 32, 64, 128}; the wrapper launches the smallest
// D >= head_dim with Tiles<D>::THREADS threads and ceil(seq / 64) * heads * batch blocks.
//
// forward:       qkv [batch*seq, 3 hidden], mask [batch, seq] -> out [batch*seq, hidden], lse [batch, heads, seq]
// backward_dq:   dout, qkv, mask, out, lse -> delta [batch, heads, seq] (scratch), dQ part of dqkv
// backward_dkv:  dout, qkv, mask, lse, delta -> dK and dV parts of dqkv (launch after backward_dq)
// `scale` is 1 / sqrt(head_dim), computed by the caller exactly as the CPU backend does.

extern "C" __global__ void __launch_bounds__(attention::Tiles<16>::THREADS, attention::Tiles<16>::MIN_BLOCKS)
    attention_forward_f32_d16(const float* __restrict__ qkv, const int* __restrict__ mask, float* __restrict__ out,
                              float* __restrict__ lse, int seq, int heads, int head_dim, float scale) {
    attention::forward<16>(qkv, mask, out, lse, seq, heads, head_dim, scale);
}
extern "C" __global__ void __launch_bounds__(attention::Tiles<32>::THREADS, attention::Tiles<32>::MIN_BLOCKS)
    attention_forward_f32_d32(const float* __restrict__ qkv, const int* __restrict__ mask, float* __restrict__ out,
                              float* __restrict__ lse, int seq, int heads, int head_dim, float scale) {
    attention::forward<32>(qkv, mask, out, lse, seq, heads, head_dim, scale);
}
extern "C" __global__ void __launch_bounds__(attention::Tiles<64>::THREADS, attention::Tiles<64>::MIN_BLOCKS)
    attention_forward_f32_d64(const float* __restrict__ qkv, const int* __restrict__ mask, float* __restrict__ out,
                              float* __restrict__ lse, int seq, int heads, int head_dim, float scale) {
    attention::forward<64>(qkv, mask, out, lse, seq, heads, head_dim, scale);
}
extern "C" __global__ void __launch_bounds__(attention::Tiles<128>::THREADS, attention::Tiles<128>::MIN_BLOCKS)
    attention_forward_f32_d128(const float* __restrict__ qkv, const int* __restrict__ mask, float* __restrict__ out,
                               float* __restrict__ lse, int seq, int heads, int head_dim, float scale) {
    attention::forward<128>(qkv, mask, out, lse, seq, heads, head_dim, scale);
}

extern "C" __global__ void __launch_bounds__(attention::Tiles<16>::THREADS, attention::Tiles<16>::MIN_BLOCKS)
    attention_backward_dq_f32_d16(const float* __restrict__ dout, const float* __restrict__ qkv,
                                  const int* __restrict__ mask, const float* __restrict__ out,
                                  const float* __restrict__ lse, float* __restrict__ delta, float* __restrict__ dqkv,
                                  int seq, int heads, int head_dim, float scale) {
    attention::backward_dq<16>(dout, qkv, mask, out, lse, delta, dqkv, seq, heads, head_dim, scale);
}
extern "C" __global__ void __launch_bounds__(attention::Tiles<32>::THREADS, attention::Tiles<32>::MIN_BLOCKS)
    attention_backward_dq_f32_d32(const float* __restrict__ dout, const float* __restrict__ qkv,
                                  const int* __restrict__ mask, const float* __restrict__ out,
                                  const float* __restrict__ lse, float* __restrict__ delta, float* __restrict__ dqkv,
                                  int seq, int heads, int head_dim, float scale) {
    attention::backward_dq<32>(dout, qkv, mask, out, lse, delta, dqkv, seq, heads, head_dim, scale);
}
extern "C" __global__ void __launch_bounds__(attention::Tiles<64>::THREADS, attention::Tiles<64>::MIN_BLOCKS)
    attention_backward_dq_f32_d64(const float* __restrict__ dout, const float* __restrict__ qkv,
                                  const int* __restrict__ mask, const float* __restrict__ out,
                                  const float* __restrict__ lse, float* __restrict__ delta, float* __restrict__ dqkv,
                                  int seq, int heads, int head_dim, float scale) {
    attention::backward_dq<64>(dout, qkv, mask, out, lse, delta, dqkv, seq, heads, head_dim, scale);
}
extern "C" __global__ void __launch_bounds__(attention::Tiles<128>::THREADS, attention::Tiles<128>::MIN_BLOCKS)
    attention_backward_dq_f32_d128(const float* __restrict__ dout, const float* __restrict__ qkv,
                                   const int* __restrict__ mask, const float* __restrict__ out,
                                   const float* __restrict__ lse, float* __restrict__ delta, float* __restrict__ dqkv,
                                   int seq, int heads, int head_dim, float scale) {
    attention::backward_dq<128>(dout, qkv, mask, out, lse, delta, dqkv, seq, heads, head_dim, scale);
}

extern "C" __global__ void __launch_bounds__(attention::Tiles<16>::THREADS, attention::Tiles<16>::MIN_BLOCKS)
    attention_backward_dkv_f32_d16(const float* __restrict__ dout, const float* __restrict__ qkv,
                                   const int* __restrict__ mask, const float* __restrict__ lse,
                                   const float* __restrict__ delta, float* __restrict__ dqkv, int seq, int heads,
                                   int head_dim, float scale) {
    attention::backward_dkv<16>(dout, qkv, mask, lse, delta, dqkv, seq, heads, head_dim, scale);
}
extern "C" __global__ void __launch_bounds__(attention::Tiles<32>::THREADS, attention::Tiles<32>::MIN_BLOCKS)
    attention_backward_dkv_f32_d32(const float* __restrict__ dout, const float* __restrict__ qkv,
                                   const int* __restrict__ mask, const float* __restrict__ lse,
                                   const float* __restrict__ delta, float* __restrict__ dqkv, int seq, int heads,
                                   int head_dim, float scale) {
    attention::backward_dkv<32>(dout, qkv, mask, lse, delta, dqkv, seq, heads, head_dim, scale);
}
extern "C" __global__ void __launch_bounds__(attention::Tiles<64>::THREADS, attention::Tiles<64>::MIN_BLOCKS)
    attention_backward_dkv_f32_d64(const float* __restrict__ dout, const float* __restrict__ qkv,
                                   const int* __restrict__ mask, const float* __restrict__ lse,
                                   const float* __restrict__ delta, float* __restrict__ dqkv, int seq, int heads,
                                   int head_dim, float scale) {
    attention::backward_dkv<64>(dout, qkv, mask, lse, delta, dqkv, seq, heads, head_dim, scale);
}
extern "C" __global__ void __launch_bounds__(attention::Tiles<128>::THREADS, attention::Tiles<128>::MIN_BLOCKS)
    attention_backward_dkv_f32_d128(const float* __restrict__ dout, const float* __restrict__ qkv,
                                    const int* __restrict__ mask, const float* __restrict__ lse,
                                    const float* __restrict__ delta, float* __restrict__ dqkv, int seq, int heads,
                                    int head_dim, float scale) {
    attention::backward_dkv<128>(dout, qkv, mask, lse, delta, dqkv, seq, heads, head_dim, scale);
}
