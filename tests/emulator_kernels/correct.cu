// Correct kernels that exercise the emulator's execution model: they must give the reference result
// in every scheduling order (tests/emulator.rs).
#include "common.cuh"

// Sum of `n` values: a grid-stride loop, then a tree reduction over the block in shared memory with a
// barrier between levels. One partial sum per block. Launch with 256 threads.
extern "C" __global__ void block_reduce_sum(const float* in, float* partial_sums, int n) {
    SHARED_ARRAY(float, partial, 256);
    float sum = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) sum += in[i];
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial_sums[blockIdx.x] = partial[0];
}

// Per warp of 32 values: the sum by xor butterfly (every lane ends with it) and by shifting down
// (lane 0 ends with it), the ballot of positive values, whether any / all are positive, the value of
// lane 7 broadcast, and an inclusive prefix sum by shifting up.
extern "C" __global__ void warp_primitives(const float* in, float* xor_sum, float* down_sum, unsigned* ballot,
                                           int* any_all, float* broadcast, float* prefix, int warps) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (warp >= warps) return;  // whole warps only: the launch covers `warps` in full warps
    const float value = in[warp * 32 + lane];
    float a = value, b = value, c = value;
    for (int offset = 16; offset > 0; offset /= 2) a += __shfl_xor_sync(0xffffffffu, a, offset);
    for (int offset = 16; offset > 0; offset /= 2) b += __shfl_down_sync(0xffffffffu, b, offset);
    for (int offset = 1; offset < 32; offset *= 2) {
        const float up = __shfl_up_sync(0xffffffffu, c, offset);
        if (lane >= offset) c += up;
    }
    const unsigned votes = __ballot_sync(0xffffffffu, value > 0.0f);
    const int any = __any_sync(0xffffffffu, value > 0.0f);
    const int all = __all_sync(0xffffffffu, value > -10.0f);
    const float seventh = __shfl_sync(0xffffffffu, value, 7);
    __syncwarp();
    xor_sum[warp * 32 + lane] = a;
    prefix[warp * 32 + lane] = c;
    broadcast[warp * 32 + lane] = seventh;
    if (lane == 0) {
        down_sum[warp] = b;
        ballot[warp] = votes;
        any_all[2 * warp] = any;
        any_all[2 * warp + 1] = all;
    }
}

// A half-warp reduction with width 16: each half sums its own 16 lanes, masks naming one half only.
extern "C" __global__ void half_warp_sum(const float* in, float* out) {
    const int lane = threadIdx.x % 32;
    const unsigned half_mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    float v = in[threadIdx.x];
    for (int offset = 8; offset > 0; offset /= 2) v += __shfl_xor_sync(half_mask, v, offset, 16);
    out[threadIdx.x] = v;
}

// out = in^T for a rows x cols matrix, through a 32 x 33 shared tile (the padding column avoids bank
// conflicts on the GPU). Blocks of 32 x 8 threads, each moving four elements in and four out.
extern "C" __global__ void transpose(const float* in, float* out, int rows, int cols) {
    SHARED_ARRAY(float, tile, 32 * 33);
    const int x = blockIdx.x * 32 + threadIdx.x;
    for (int j = threadIdx.y; j < 32; j += 8) {
        const int y = blockIdx.y * 32 + j;
        if (x < cols && y < rows) tile[j * 33 + threadIdx.x] = in[y * cols + x];
    }
    __syncthreads();
    const int tx = blockIdx.y * 32 + threadIdx.x;
    for (int j = threadIdx.y; j < 32; j += 8) {
        const int ty = blockIdx.x * 32 + j;
        if (tx < rows && ty < cols) out[ty * rows + tx] = tile[threadIdx.x * 33 + j];
    }
}

// Ten rounds of: publish a value, barrier, add the right neighbour's. Double-buffered, so one
// barrier per round is enough. The emulator's speed test: 64 blocks x 256 threads x 10 barriers.
extern "C" __global__ void barrier_rounds(const float* in, float* out, int rounds) {
    SHARED_ARRAY(float, buffers, 2 * 256);
    const int n = blockDim.x;
    float v = in[blockIdx.x * n + threadIdx.x];
    for (int r = 0; r < rounds; ++r) {
        float* buffer = buffers + (r % 2) * 256;
        buffer[threadIdx.x] = v;
        __syncthreads();
        v = 0.5f * v + 0.25f * buffer[(threadIdx.x + 1) % n];
    }
    out[blockIdx.x * n + threadIdx.x] = v;
}

// A histogram with atomics from every block: blocks may run on several OS threads at once.
extern "C" __global__ void histogram(const int* values, int* bins, float* total, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        atomicAdd(&bins[values[i]], 1);
        atomicAdd(total, 0.5f);
    }
}

// Float to bf16 and f16 bits and back, through the types' conversions.
extern "C" __global__ void convert_16bit(const float* in, uint16_t* bf16_bits, uint16_t* f16_bits, float* bf16_back,
                                         float* f16_back, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const __nv_bfloat16 b = __float2bfloat16(in[i]);
    const __half h = __float2half(in[i]);
    bf16_bits[i] = __bfloat16_as_ushort(b);
    f16_bits[i] = __half_as_ushort(h);
    bf16_back[i] = __bfloat162float(b);
    f16_back[i] = __half2float(h);
}
