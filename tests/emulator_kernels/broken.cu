// Deliberately broken kernels. Each has one bug of a kind that works by luck on some runs of a real
// GPU; tests/emulator.rs checks that the emulator catches every one of them.
#include "common.cuh"

// Missing __syncthreads: each thread reads what its left neighbour wrote, with no barrier between.
// Right by accident when threads run in index order; reads poison in reverse order.
extern "C" __global__ void missing_syncthreads(const float* in, float* out) {
    SHARED_ARRAY(float, values, 256);
    values[threadIdx.x] = in[threadIdx.x];
    // __syncthreads() belongs here.
    out[threadIdx.x] = values[threadIdx.x > 0 ? threadIdx.x - 1 : 0];
}

// Divergent barrier: only the first 16 threads reach it.
extern "C" __global__ void divergent_barrier(float* out) {
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// Barrier in divergent code of another kind: half the block waits at __syncthreads while the other
// half waits at a warp barrier of its own.
extern "C" __global__ void barrier_versus_warp(float* out) {
    if (threadIdx.x < 32) {
        __syncthreads();
    } else {
        __syncwarp(0xffffffffu);
        __syncthreads();
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

// A thread leaves early while the others will wait for it at a barrier.
extern "C" __global__ void exit_before_barrier(const float* in, float* out, int n) {
    SHARED_ARRAY(float, values, 64);
    if (static_cast<int>(threadIdx.x) >= n) return;  // the bounds check belongs after the barrier
    values[threadIdx.x] = in[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = values[n - 1 - threadIdx.x];
}

// A shuffle whose mask names a lane that has already returned.
extern "C" __global__ void shuffle_missing_lane(const float* in, float* out) {
    const int lane = threadIdx.x % 32;
    if (lane == 31) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, in[threadIdx.x], 1);
}

// A shuffle whose mask leaves out the calling lane.
extern "C" __global__ void shuffle_mask_without_caller(const float* in, float* out) {
    out[threadIdx.x] = __shfl_down_sync(0x7fffffffu, in[threadIdx.x], 1);
}

// A shuffle that reads from a lane outside its mask.
extern "C" __global__ void shuffle_reads_outside_mask(const float* in, float* out) {
    const int lane = threadIdx.x % 32;
    if (lane < 16) out[threadIdx.x] = __shfl_sync(0x0000ffffu, in[threadIdx.x], 20);
}

// Reads a shared value nobody wrote: the last element is never stored.
extern "C" __global__ void unwritten_shared_read(const float* in, float* out, int n) {
    SHARED_ARRAY(float, values, 64);
    if (static_cast<int>(threadIdx.x) < n - 1) values[threadIdx.x] = in[threadIdx.x];  // should be < n
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < n) out[threadIdx.x] = values[n - 1 - threadIdx.x];
}

// Reads one element past the end of a shared array.
extern "C" __global__ void shared_out_of_bounds(const float* in, float* out) {
    SHARED_ARRAY(float, values, 64);
    values[threadIdx.x] = in[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = values[threadIdx.x + 1];  // thread 63 reads values[64]
}

// Writes before the start of a dynamic shared-memory block sized by the launch.
extern "C" __global__ void dynamic_shared_underflow(float* out, int offset) {
    DYNAMIC_SHARED(float, values);
    values[static_cast<int>(threadIdx.x) - offset] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = values[threadIdx.x];
}

// Recursion without end, in a thread's own stack.
__device__ __noinline__ float recurse(volatile float* previous, int depth) {
    volatile float frame[256];
    for (int i = 0; i < 256; ++i) frame[i] = previous[i % 4] + static_cast<float>(depth);
    return recurse(frame, depth + 1) + frame[depth % 256];
}
extern "C" __global__ void stack_overflow(float* out) {
    volatile float seed[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    out[threadIdx.x] = recurse(seed, 0);
}
