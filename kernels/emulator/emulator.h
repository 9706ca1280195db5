// The CUDA execution model on the host, for tests: what a kernel sees when `kernels/*.cu` is compiled
// by the host C++ compiler instead of nvcc. `kernels/common.cuh` includes this header in host builds;
// kernel code never includes it directly.
//
// Each thread of a block is a fiber; a block's fibers run on one OS thread, one at a time, switching
// only at barriers, warp primitives and exit. So within a block nothing runs concurrently and no
// host-side locking is needed; blocks may run in parallel on several OS threads, each with its own
// block state (thread_local below). See README.md beside this file for the design and its limits.
#pragma once

#include <math.h>  // expf, erff, logf, ... in the global namespace, as kernels call them

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "bf16.h"

// ---------------------------------------------------------------------------------------------
// Function qualifiers: device functions are ordinary host functions.
// ---------------------------------------------------------------------------------------------
// A kernel entry point. `used` keeps it emitted, and marks it for build.rs, which finds the kernels
// (including those that macros instantiate) in the preprocessed source by this spelling.
#define __global__ __attribute__((used))
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// `__shared__` is deliberately not defined: shared memory is declared with SHARED_ARRAY and
// DYNAMIC_SHARED (common.cuh), which the emulator turns into bounds-guarded, poisoned per-block
// allocations. A raw `__shared__` declaration is a compile error here, on purpose.

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};
struct uint3 {
    unsigned int x, y, z;
};
// The vector types, with the GPU's alignment so that 8- and 16-byte loads keep their layout.
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) int2 {
    int x, y;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

namespace emu {

// ----- per-fiber and per-block state the kernel-side API reads -----------------------------------

// The coordinates the scheduler sets before it resumes a fiber (thread) or starts a block (the
// rest): plain thread_local values, so `threadIdx.x` costs a load, not a call.
extern thread_local uint3 current_thread_idx;
extern thread_local uint3 current_block_idx;
extern thread_local dim3 current_block_dim;
extern thread_local dim3 current_grid_dim;

// Reports a kernel error (named with kernel, block and thread) and abandons the calling fiber: the
// launch stops and returns the message to its caller. Never returns.
[[noreturn]] void fail(const char* message);

// ----- barriers and warp primitives ------------------------------------------------------------

void syncthreads();

enum class WarpOp : int {
    Shfl,
    ShflUp,
    ShflDown,
    ShflXor,
    Ballot,
    Any,
    All,
    SyncWarp,
    Mma,
    LdMatrix,
};

// What one lane brings to a warp rendezvous, and what it takes away. Lanes of the same warp meet
// when every lane named in `mask` has arrived with the same op and mask; the scheduler then computes
// every lane's result at once (runtime.cpp, resolve_warp_op).
struct WarpRequest {
    WarpOp op;
    unsigned mask;
    uint64_t value;   // shuffle payload (up to 8 bytes) or vote predicate
    int arg;          // source lane, delta or lane mask
    int width;        // shuffle segment width
    // Tensor-core twins: pointers into the lane's own registers (its fiber stack stays alive while
    // it waits, so other lanes' resolution may read and write them).
    const void* in0;  // mma: A fragment (4 x b32); ldmatrix: the row address this lane supplies
    const void* in1;  // mma: B fragment (2 x b32)
    const void* in2;  // mma: C fragment (4 x f32)
    void* out;        // mma: D fragment (4 x f32); ldmatrix: destination registers
    int variant;      // mma: 0 = bf16, 1 = f16; ldmatrix: number of matrices (1, 2, 4), +8 if .trans
    uint64_t result;
};

uint64_t warp_rendezvous(WarpRequest& request);

template <typename T>
inline uint64_t to_bits(T value) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a value wider than 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    return bits;
}
template <typename T>
inline T from_bits(uint64_t bits) {
    T value;
    std::memcpy(&value, &bits, sizeof(T));
    return value;
}

template <typename T>
inline T shuffle(WarpOp op, unsigned mask, T value, int arg, int width) {
    WarpRequest r{};
    r.op = op;
    r.mask = mask;
    r.value = to_bits(value);
    r.arg = arg;
    r.width = width;
    return from_bits<T>(warp_rendezvous(r));
}

inline unsigned vote(WarpOp op, unsigned mask, int predicate) {
    WarpRequest r{};
    r.op = op;
    r.mask = mask;
    r.value = predicate != 0;
    return static_cast<unsigned>(warp_rendezvous(r));
}

// ----- shared memory -----------------------------------------------------------------------------

// One `SHARED_ARRAY` declaration site. Every thread of a block executes the declaration; the first
// one to reach it in a block allocates (generation differs), the others get the same pointer.
struct SharedSlot {
    uint64_t generation = 0;
    void* pointer = nullptr;
    size_t bytes = 0;
};
void* shared_array(SharedSlot& slot, size_t bytes, size_t align, const char* name);
void* dynamic_shared();

// ----- atomics (blocks may run on several OS threads) ------------------------------------------
template <typename T>
inline T atomic_add(T* address, T value) {
    if constexpr (std::is_integral_v<T>) {
        return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
    } else {
        static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomicAdd on an unsupported type");
        using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
        Bits* word = reinterpret_cast<Bits*>(address);
        Bits expected = __atomic_load_n(word, __ATOMIC_RELAXED);
        for (;;) {
            T old;
            std::memcpy(&old, &expected, sizeof(T));
            T sum = old + value;
            Bits desired;
            std::memcpy(&desired, &sum, sizeof(T));
            if (__atomic_compare_exchange_n(word, &expected, desired, true, __ATOMIC_RELAXED,
                                            __ATOMIC_RELAXED)) {
                return old;
            }
        }
    }
}

template <typename T, typename F>
inline T atomic_update(T* address, F update) {
    static_assert(std::is_integral_v<T> && (sizeof(T) == 4 || sizeof(T) == 8));
    T expected = __atomic_load_n(address, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(address, &expected, update(expected), true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
    }
    return expected;
}

// ----- tensor-core twins -------------------------------------------------------------------------
void mma_m16n8k16(int variant, const uint32_t a[4], const uint32_t b[2], const float c[4], float d[4]);
void ldmatrix(int count, bool transpose, const void* row_address, uint32_t* registers);

// ----- kernel entry ------------------------------------------------------------------------------

// The variadic trampoline: unpacks cuLaunchKernel's argument-pointer array into the kernel's typed
// parameters, so a kernel needs no hand-written glue to be launched by name.
template <typename... Params>
inline void invoke(void (*kernel)(Params...), void** args) {
    [&]<size_t... I>(std::index_sequence<I...>) {
        kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<Params>>*>(args[I])...);
    }(std::index_sequence_for<Params...>{});
}

// One launchable kernel: its `extern "C"` name and its trampoline. build.rs generates a table of
// these for every `extern "C" __global__` function it finds.
struct KernelEntry {
    const char* name;
    void (*entry)(void** args);
};

}  // namespace emu

// ---------------------------------------------------------------------------------------------
// The names kernels use.
// ---------------------------------------------------------------------------------------------
#define threadIdx (::emu::current_thread_idx)
#define blockIdx (::emu::current_block_idx)
#define blockDim (::emu::current_block_dim)
#define gridDim (::emu::current_grid_dim)
static constexpr int warpSize = 32;

inline void __syncthreads() { ::emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::emu::vote(::emu::WarpOp::SyncWarp, mask, 0); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() {}

template <typename T>
inline T __shfl_sync(unsigned mask, T value, int src_lane, int width = warpSize) {
    return ::emu::shuffle(::emu::WarpOp::Shfl, mask, value, src_lane, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
    return ::emu::shuffle(::emu::WarpOp::ShflUp, mask, value, static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
    return ::emu::shuffle(::emu::WarpOp::ShflDown, mask, value, static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = warpSize) {
    return ::emu::shuffle(::emu::WarpOp::ShflXor, mask, value, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
    return ::emu::vote(::emu::WarpOp::Ballot, mask, predicate);
}
inline int __any_sync(unsigned mask, int predicate) {
    return static_cast<int>(::emu::vote(::emu::WarpOp::Any, mask, predicate));
}
inline int __all_sync(unsigned mask, int predicate) {
    return static_cast<int>(::emu::vote(::emu::WarpOp::All, mask, predicate));
}

template <typename T>
inline T atomicAdd(T* address, T value) {
    return ::emu::atomic_add(address, value);
}
template <typename T>
inline T atomicMax(T* address, T value) {
    return ::emu::atomic_update(address, [value](T old) { return old > value ? old : value; });
}
template <typename T>
inline T atomicMin(T* address, T value) {
    return ::emu::atomic_update(address, [value](T old) { return old < value ? old : value; });
}
template <typename T>
inline T atomicExch(T* address, T value) {
    return __atomic_exchange_n(address, value, __ATOMIC_RELAXED);
}
template <typename T>
inline T atomicCAS(T* address, T compare, T value) {
    __atomic_compare_exchange_n(address, &compare, value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return compare;
}

// ----- math: the fast-math intrinsics map to the accurate functions ------------------------------
// On the GPU `__expf`, `__logf` and `__fdividef` are approximate (2 ulp or so); here they are the
// accurate libm versions. A kernel test that passes here with tight tolerances may need slightly
// looser ones on the GPU for these intrinsics only; the accurate functions (`expf`, `erff`, `logf`)
// are within 1-2 ulp of the GPU's on both.
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
// Rounded adds and multiplies that nvcc never fuses into a multiply-add: what a kernel uses where it
// must match a CPU reference bit for bit. The host compiler does not contract across these calls.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __int_as_float(int x) { return ::emu::from_bits<float>(static_cast<uint32_t>(x)); }
inline int __float_as_int(float x) { return static_cast<int>(static_cast<uint32_t>(::emu::to_bits(x))); }
inline unsigned __float_as_uint(float x) { return static_cast<uint32_t>(::emu::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return ::emu::from_bits<float>(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline unsigned __umulhi(unsigned a, unsigned b) {
    return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}
