// The launch interface between the Rust side and the emulator: the C equivalent of cuLaunchKernel's
// arguments, plus the scheduling order. `src/backend/cuda/emulator.rs` mirrors these structs.
#pragma once

#include <cstddef>
#include <cstdint>

#include "emulator.h"

namespace emu {

// The order in which a block's runnable fibers run between two barriers or warp rendezvous.
constexpr int32_t ORDER_FORWARD = 0;  // thread 0, 1, 2, ...
constexpr int32_t ORDER_REVERSE = 1;  // the last thread first
constexpr int32_t ORDER_RANDOM = 2;   // a fresh seeded shuffle every round

struct LaunchParams {
    const KernelEntry* kernel;
    uint32_t grid[3];
    uint32_t block[3];
    uint32_t dynamic_shared_bytes;
    int32_t order;
    uint64_t seed;
    uint32_t workers;  // OS threads running blocks in parallel (1: the calling thread only)
    void** args;       // one pointer per kernel parameter, as for cuLaunchKernel
};

// The tensor-core twins' arithmetic, on all 32 lanes' registers at once (tensor_core.cpp).
void mma_tile(int variant, const uint32_t a[32][4], const uint32_t b[32][2], const float c[32][4], float d[32][4]);
void ldmatrix_gather(int count, bool transpose, const void* const rows[32], uint32_t registers[32][4]);

}  // namespace emu

extern "C" int emu_launch(const emu::LaunchParams* params, char* error, size_t error_capacity);
extern "C" const emu::KernelEntry* emu_find_kernel(const emu::KernelEntry* const* tables, const char* name);
