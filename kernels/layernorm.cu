// LayerNorm over the last axis, forward and backward, in f32. CPU reference:
// src/backend/cpu/layernorm.rs. For one row x of C features:
//
//   mean = sum(x) / C
//   var  = sum((x - mean)^2) / C                 (the biased variance, as torch.nn.LayerNorm)
//   rstd = 1 / sqrt(var + eps)
//   y    = (x - mean) * rstd * weight + bias
//
// Backward, with xhat = (x - mean) * rstd and g = dy * weight (mean() is over the row's features):
//
//   dx       = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   dweight += sum over rows of dy * xhat
//   dbias   += sum over rows of dy
//
// Layout: x, y, dy and dx are [rows, C] row-major; mean and rstd are [rows]; weight, bias and their
// gradients are [C] views into the flat parameter and gradient buffers.
//
// Work split. Forward and dx reduce along a row: one warp per row, lane l owning features
// l, l + 32, l + 64, ..., so every load instruction of a warp reads 32 consecutive floats
// (coalesced 128-byte lines) and the row sums finish in registers with five shuffles. dweight and
// dbias reduce down the columns, across rows: a warp per row cannot produce them without atomics
// (whose order, and so whose rounding, changes from run to run), so they get their own two kernels:
// per-chunk column partial sums, then a fixed-order sum of the partials into the gradient slices,
// in the CPU backend's order. The result is bit-identical on every run.
#include "common.cuh"

// Helpers have internal linkage: the emulator links every kernel file into one library, where two
// files' different inline functions of the same name would silently become one.
namespace {

constexpr int WARP = 32;
constexpr unsigned FULL_WARP = 0xffffffffu;

// The sum of v over the 32 lanes of a warp, returned to every lane. A butterfly: at each step
// lane l adds lane l ^ offset's value; both lanes of a pair add the same two numbers, so all 32
// lanes end with the same bits, and the summation order is fixed.
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(FULL_WARP, v, offset);
    return v;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Forward: one warp per row, blockDim.x a multiple of 32 (the wrapper launches 8 warps per block).
//
// Memory traffic: x is read three times (mean, variance, output), but a row is C * 4 bytes (4 KiB
// at C = 1024), so the second and third reads hit L1; DRAM sees one read of x, one write of y and
// 8 bytes of statistics per row. weight and bias are read by every row and stay in L1/L2.
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void layernorm_forward_f32(const float* __restrict__ x, const float* __restrict__ weight,
                                                 const float* __restrict__ bias, float* __restrict__ y,
                                                 float* __restrict__ mean, float* __restrict__ rstd, int rows,
                                                 int C, float eps) {
    const int lane = threadIdx.x % WARP;
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    // A warp past the last row leaves as a whole: this kernel has no __syncthreads() and the
    // shuffles below involve only this warp's own lanes.
    if (row >= rows) return;
    const float* xr = x + static_cast<size_t>(row) * C;
    float* yr = y + static_cast<size_t>(row) * C;

    // Pass 1: the mean.
    float sum = 0.0f;
    for (int i = lane; i < C; i += WARP) sum += xr[i];
    const float m = warp_sum(sum) / C;

    // Pass 2: the variance, as the mean squared deviation from m. One pass computing
    // E[x^2] - E[x]^2 would cancel catastrophically in f32 when |mean| >> std.
    float squares = 0.0f;
    for (int i = lane; i < C; i += WARP) {
        const float d = xr[i] - m;
        squares += d * d;
    }
    // 1 / sqrtf as the CPU computes it: nvcc's sqrtf and division are correctly rounded (its
    // defaults -prec-sqrt=true, -prec-div=true), while rsqrtf is an approximation.
    const float s = 1.0f / sqrtf(warp_sum(squares) / C + eps);

    // Pass 3: normalise, scale and shift, in the CPU's order of operations.
    for (int i = lane; i < C; i += WARP) yr[i] = (xr[i] - m) * s * weight[i] + bias[i];
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

// ---------------------------------------------------------------------------------------------
// Backward, dx: one warp per row, as the forward.
//
// Two passes over the row: the first sums g and g * xhat (recomputing xhat from the saved mean and
// rstd instead of storing it), the second writes dx. Traffic per row: dy and x read (the second
// pass from L1), dx written; weight from cache.
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void layernorm_backward_dx_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                                     const float* __restrict__ mean,
                                                     const float* __restrict__ rstd,
                                                     const float* __restrict__ weight, float* __restrict__ dx,
                                                     int rows, int C) {
    const int lane = threadIdx.x % WARP;
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;  // whole warps only, as in the forward
    const float* dyr = dy + static_cast<size_t>(row) * C;
    const float* xr = x + static_cast<size_t>(row) * C;
    float* dxr = dx + static_cast<size_t>(row) * C;
    const float m = mean[row];
    const float s = rstd[row];

    float sum_g = 0.0f;
    float sum_gx = 0.0f;
    for (int i = lane; i < C; i += WARP) {
        const float xhat = (xr[i] - m) * s;
        const float g = dyr[i] * weight[i];
        sum_g += g;
        sum_gx += g * xhat;
    }
    const float mean_g = warp_sum(sum_g) / C;
    const float mean_gx = warp_sum(sum_gx) / C;

    for (int i = lane; i < C; i += WARP) {
        const float xhat = (xr[i] - m) * s;
        dxr[i] = s * (dyr[i] * weight[i] - mean_g - xhat * mean_gx);
    }
}

// ---------------------------------------------------------------------------------------------
// Backward, dweight and dbias, step 1 of 2: column partial sums over one chunk of rows.
//
// The reduction follows the CPU's order exactly (src/backend/cpu/reduce.rs): rows are cut into
// chunks of rows_per_chunk (64, the CPU's ROWS_PER_BLOCK) rows, each chunk's rows are added one
// after another from zero, and step 2 adds the chunks in order. The same operations in the same
// order: the emulator reproduces the CPU bit for bit (dbias on a GPU too; dweight there up to nvcc
// contracting `dw + a * s` into one fused multiply-add).
//
// Grid: x = chunk, y = block of blockDim.x features; one thread per (chunk, feature), writing
// partials[chunk] = [dweight partial (C) | dbias partial (C)]. For each row a warp reads 32
// consecutive floats of dy and of x (coalesced); the rows' loads do not depend on one another, so
// many are in flight at once. Traffic: dy and x read once more (the dx kernel read them too; fusing
// the two would need a C-wide accumulator per warp in shared memory, or atomics), mean and rstd
// broadcast, 2C floats written per chunk.
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void layernorm_backward_partials_f32(const float* __restrict__ dy,
                                                           const float* __restrict__ x,
                                                           const float* __restrict__ mean,
                                                           const float* __restrict__ rstd,
                                                           float* __restrict__ partials, int rows, int C,
                                                           int rows_per_chunk) {
    const int col = blockIdx.y * blockDim.x + threadIdx.x;
    if (col >= C) return;  // no barrier in this kernel
    const int first = blockIdx.x * rows_per_chunk;
    const int end = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
    float dw = 0.0f;
    float db = 0.0f;
    for (int r = first; r < end; ++r) {
        const size_t at = static_cast<size_t>(r) * C + col;
        const float d = dy[at];
        dw += d * (x[at] - mean[r]) * rstd[r];
        db += d;
    }
    float* out = partials + static_cast<size_t>(blockIdx.x) * 2 * C;
    out[col] = dw;
    out[C + col] = db;
}

// ---------------------------------------------------------------------------------------------
// Backward, dweight and dbias, step 2 of 2: dweight += the sum of the chunks' dweight partials,
// dbias likewise, the chunks added in order 0, 1, 2, ... from zero, as the CPU adds them.
//
// One thread per entry of [dweight | dbias] (2 * C threads): for each chunk the threads of a warp
// read consecutive floats of partials. Traffic: chunks * 2C floats read, 2C read and written.
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void layernorm_backward_params_f32(const float* __restrict__ partials,
                                                         float* __restrict__ dweight, float* __restrict__ dbias,
                                                         int chunks, int C) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= 2 * C) return;
    float sum = 0.0f;
    for (int k = 0; k < chunks; ++k) sum += partials[static_cast<size_t>(k) * 2 * C + j];
    if (j < C) {
        dweight[j] += sum;
    } else {
        dbias[j - C] += sum;
    }
}
