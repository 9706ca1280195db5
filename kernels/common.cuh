// Included first by every kernel file. The one place where the GPU build (nvcc or NVRTC) and the
// emulator build (the host C++ compiler, for tests) differ: shared-memory declarations and the
// inline-PTX wrappers. Kernel bodies use only what is defined here and the CUDA built-ins the
// emulator also provides (kernels/emulator/emulator.h).
#pragma once

#if defined(__CUDACC__)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#if defined(__CUDACC_RTC__)
// NVRTC has no C library headers; the fixed-width type the kernels use.
typedef unsigned int uint32_t;
#else
#include <stdint.h>
#endif

// Shared memory. `SHARED_ARRAY(float, tile, 32 * 33)` declares a block-wide array of that many
// elements; `DYNAMIC_SHARED(float, smem)` names the launch's dynamic shared memory. Both are 16-byte
// aligned. In the emulator each array is poisoned before every block and bounds-guarded.
#define SHARED_ARRAY(type, name, count) __shared__ __align__(16) type name[count]
#define DYNAMIC_SHARED(type, name)                                   \
    extern __shared__ __align__(16) unsigned char name##_dynamic_[]; \
    type* name = reinterpret_cast<type*>(name##_dynamic_)

// D = A * B + C on one warp's tensor cores: A 16x16 (row-major), B 16x8 (column-major), C and D 16x8
// in f32. Fragment layouts: kernels/emulator/tensor_core.cpp spells them out.
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                  const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}
__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                 const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}

// ldmatrix: one, two or four 8x8 matrices of 16-bit elements from shared memory into the warp's
// registers; lane 8m + r passes the address of row r of matrix m (16 bytes, 16-byte aligned).
__device__ __forceinline__ unsigned shared_address(const void* pointer) {
    return static_cast<unsigned>(__cvta_generic_to_shared(pointer));
}
__device__ __forceinline__ void ldmatrix_x1(uint32_t r[1], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t r[1], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
}

#else  // the emulator

#include "emulator/emulator.h"

#define SHARED_ARRAY(type, name, count)                                                            \
    static thread_local ::emu::SharedSlot name##_slot_;                                           \
    type* name = static_cast<type*>(::emu::shared_array(name##_slot_, sizeof(type) * (count), 16, #name))
#define DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::emu::dynamic_shared())

inline void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    ::emu::mma_m16n8k16(0, a, b, c, d);
}
inline void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    ::emu::mma_m16n8k16(1, a, b, c, d);
}
inline void ldmatrix_x1(uint32_t r[1], const void* row) { ::emu::ldmatrix(1, false, row, r); }
inline void ldmatrix_x2(uint32_t r[2], const void* row) { ::emu::ldmatrix(2, false, row, r); }
inline void ldmatrix_x4(uint32_t r[4], const void* row) { ::emu::ldmatrix(4, false, row, r); }
inline void ldmatrix_x1_trans(uint32_t r[1], const void* row) { ::emu::ldmatrix(1, true, row, r); }
inline void ldmatrix_x2_trans(uint32_t r[2], const void* row) { ::emu::ldmatrix(2, true, row, r); }
inline void ldmatrix_x4_trans(uint32_t r[4], const void* row) { ::emu::ldmatrix(4, true, row, r); }

#endif

// ---------------------------------------------------------------------------------------------
// Both builds: element types of mixed precision. Kernels are templates over the activation type T
// (float or __nv_bfloat16) and compute in float: load with to_float, store with from_float<T>.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
    return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16(x);
}
