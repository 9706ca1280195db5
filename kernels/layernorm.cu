// LayerNorm over the last axis, forward and backward, over f32 or bf16 activations. CPU reference:
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
// Element types: x, y, dy and dx have the activation type T, f32 or bf16 (kernels `<name>_f32` and
// `<name>_bf16`, one template each); everything else is f32 whatever T is: the statistics, the
// parameters and their gradients, the partial sums, and all arithmetic. Elements are widened to
// float as they are loaded, and y and dx rounded to T once as they are stored: in bf16 the op adds
// one rounding to each output element, none to the statistics or the parameter gradients.
//
// Work split. Forward and dx reduce along a row: one warp per row, lane l owning features
// l, l + 32, l + 64, ..., so every load instruction of a warp reads 32 consecutive elements
// (128 bytes in f32, 64 in bf16: whole 32-byte sectors either way) and the row sums finish in
// registers with five shuffles. dweight and dbias reduce down the columns, across rows: a warp per
// row cannot produce them without atomics (whose order, and so whose rounding, changes from run to
// run), so they get their own two kernels: per-chunk column partial sums, then a fixed-order sum of
// the partials into the gradient slices, in the CPU backend's order. The result is bit-identical on
// every run.
#include "common.cuh"

// Helpers and kernel bodies have internal linkage: the emulator links every kernel file into one
// library, where two files' different inline functions of the same name would silently become one.
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

// ---------------------------------------------------------------------------------------------
// Forward: one warp per row, blockDim.x a multiple of 32 (the wrapper launches 8 warps per block).
//
// Memory traffic: x is read three times (mean, variance, output), but a row is C * sizeof(T) bytes
// (4 KiB at C = 1024 in f32, 2 KiB in bf16), so the second and third reads hit L1; DRAM sees one
// read of x, one write of y and 8 bytes of statistics per row. weight and bias are read by every
// row and stay in L1/L2.
// ---------------------------------------------------------------------------------------------
// Passes 2 and 3 of the forward over one row whose sum (pass 1) is known: the variance, then the
// output and the statistics. Each lane reads only its own features l, l + 32, ... of `xr`.
template <typename T>
__device__ __forceinline__ void normalize_row(const T* __restrict__ xr, float sum, const float* __restrict__ weight,
                                              const float* __restrict__ bias, T* __restrict__ yr,
                                              float* __restrict__ mean, float* __restrict__ rstd, int row, int C,
                                              float eps, int lane) {
    const float m = warp_sum(sum) / C;

    // Pass 2: the variance, as the mean squared deviation from m. One pass computing
    // E[x^2] - E[x]^2 would cancel catastrophically in f32 when |mean| >> std.
    float squares = 0.0f;
    for (int i = lane; i < C; i += WARP) {
        const float d = to_float(xr[i]) - m;
        squares += d * d;
    }
    // 1 / sqrtf as the CPU computes it: nvcc's sqrtf and division are correctly rounded (its
    // defaults -prec-sqrt=true, -prec-div=true), while rsqrtf is an approximation.
    const float s = 1.0f / sqrtf(warp_sum(squares) / C + eps);

    // Pass 3: normalise, scale and shift, in the CPU's order of operations; round once to T.
    for (int i = lane; i < C; i += WARP) yr[i] = from_float<T>((to_float(xr[i]) - m) * s * weight[i] + bias[i]);
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

template <typename T>
__device__ __forceinline__ void forward(const T* __restrict__ x, const float* __restrict__ weight,
                                        const float* __restrict__ bias, T* __restrict__ y, float* __restrict__ mean,
                                        float* __restrict__ rstd, int rows, int C, float eps) {
    const int lane = threadIdx.x % WARP;
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    // A warp past the last row leaves as a whole: this kernel has no __syncthreads() and the
    // shuffles below involve only this warp's own lanes.
    if (row >= rows) return;
    const T* xr = x + static_cast<size_t>(row) * C;

    // Pass 1: the sum, for the mean.
    float sum = 0.0f;
    for (int i = lane; i < C; i += WARP) sum += to_float(xr[i]);
    normalize_row(xr, sum, weight, bias, y + static_cast<size_t>(row) * C, mean, rstd, row, C, eps, lane);
}

// ---------------------------------------------------------------------------------------------
// The residual add fused into the forward: s = a + b (rounded once to T, as the add kernel stores
// it), y = LayerNorm(s). The pre-LN encoder layer does exactly this after its attention block, and
// its backward is that of the two ops apart (s is what LayerNorm's backward reads).
//
// Memory traffic: a and b read once, s and y written once, 8 bytes of statistics per row; the
// unfused pair reads a, b, then s again, and writes s and y: one full read of the activations
// fewer. Pass 1 writes each lane's own elements of s and passes 2 and 3 read only those back (from
// L1), so no lane waits for another.
// ---------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void add_forward(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ s,
                                            const float* __restrict__ weight, const float* __restrict__ bias,
                                            T* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd,
                                            int rows, int C, float eps) {
    const int lane = threadIdx.x % WARP;
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;  // whole warps only, as in the forward
    const size_t offset = static_cast<size_t>(row) * C;
    T* sr = s + offset;
    float sum = 0.0f;
    for (int i = lane; i < C; i += WARP) {
        const T v = from_float<T>(to_float(a[offset + i]) + to_float(b[offset + i]));
        sr[i] = v;
        sum += to_float(v);
    }
    normalize_row(sr, sum, weight, bias, y + offset, mean, rstd, row, C, eps, lane);
}

// ---------------------------------------------------------------------------------------------
// Backward, dx: one warp per row, as the forward.
//
// Two passes over the row: the first sums g and g * xhat (recomputing xhat from the saved mean and
// rstd instead of storing it), the second writes dx. Traffic per row: dy and x read (the second
// pass from L1), dx written; weight from cache.
// ---------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void backward_dx(const T* __restrict__ dy, const T* __restrict__ x,
                                            const float* __restrict__ mean, const float* __restrict__ rstd,
                                            const float* __restrict__ weight, T* __restrict__ dx, int rows, int C) {
    const int lane = threadIdx.x % WARP;
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;  // whole warps only, as in the forward
    const T* dyr = dy + static_cast<size_t>(row) * C;
    const T* xr = x + static_cast<size_t>(row) * C;
    T* dxr = dx + static_cast<size_t>(row) * C;
    const float m = mean[row];
    const float s = rstd[row];

    float sum_g = 0.0f;
    float sum_gx = 0.0f;
    for (int i = lane; i < C; i += WARP) {
        const float xhat = (to_float(xr[i]) - m) * s;
        const float g = to_float(dyr[i]) * weight[i];
        sum_g += g;
        sum_gx += g * xhat;
    }
    const float mean_g = warp_sum(sum_g) / C;
    const float mean_gx = warp_sum(sum_gx) / C;

    for (int i = lane; i < C; i += WARP) {
        const float xhat = (to_float(xr[i]) - m) * s;
        dxr[i] = from_float<T>(s * (to_float(dyr[i]) * weight[i] - mean_g - xhat * mean_gx));
    }
}

// ---------------------------------------------------------------------------------------------
// Backward, dweight and dbias, step 1 of 2: column partial sums over one chunk of rows.
//
// The reduction follows the CPU's order exactly (src/backend/cpu/reduce.rs): rows are cut into
// chunks of rows_per_chunk (64, the CPU's ROWS_PER_BLOCK) rows, each chunk's rows are added one
// after another from zero, and step 2 adds the chunks in order. The same operations in the same
// order: the emulator reproduces the CPU bit for bit (dbias on a GPU too; dweight there up to nvcc
// contracting `dw + a * s` into one fused multiply-add). In bf16 the partials are f32 sums of the
// widened bf16 elements: the CPU given the same (bf16-valued) dy and x gets the same bits.
//
// Grid: x = chunk, y = block of blockDim.x features; one thread per (chunk, feature), writing
// partials[chunk] = [dweight partial (C) | dbias partial (C)]. For each row a warp reads 32
// consecutive elements of dy and of x (coalesced); the rows' loads do not depend on one another, so
// many are in flight at once. Traffic: dy and x read once more (the dx kernel read them too; fusing
// the two would need a C-wide accumulator per warp in shared memory, or atomics), mean and rstd
// broadcast, 2C floats written per chunk.
// ---------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void backward_partials(const T* __restrict__ dy, const T* __restrict__ x,
                                                  const float* __restrict__ mean, const float* __restrict__ rstd,
                                                  float* __restrict__ partials, int rows, int C, int rows_per_chunk) {
    const int col = blockIdx.y * blockDim.x + threadIdx.x;
    if (col >= C) return;  // no barrier in this kernel
    const int first = blockIdx.x * rows_per_chunk;
    const int end = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
    float dw = 0.0f;
    float db = 0.0f;
    for (int r = first; r < end; ++r) {
        const size_t at = static_cast<size_t>(r) * C + col;
        const float d = to_float(dy[at]);
        dw += d * (to_float(x[at]) - mean[r]) * rstd[r];
        db += d;
    }
    float* out = partials + static_cast<size_t>(blockIdx.x) * 2 * C;
    out[col] = dw;
    out[C + col] = db;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The kernels: each template above for f32 and for bf16 activations.
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void layernorm_forward_f32(const float* __restrict__ x, const float* __restrict__ weight,
                                                 const float* __restrict__ bias, float* __restrict__ y,
                                                 float* __restrict__ mean, float* __restrict__ rstd, int rows,
                                                 int C, float eps) {
    forward(x, weight, bias, y, mean, rstd, rows, C, eps);
}
extern "C" __global__ void layernorm_forward_bf16(const __nv_bfloat16* __restrict__ x,
                                                  const float* __restrict__ weight, const float* __restrict__ bias,
                                                  __nv_bfloat16* __restrict__ y, float* __restrict__ mean,
                                                  float* __restrict__ rstd, int rows, int C, float eps) {
    forward(x, weight, bias, y, mean, rstd, rows, C, eps);
}

extern "C" __global__ void add_layernorm_forward_f32(const float* __restrict__ a, const float* __restrict__ b,
                                                     float* __restrict__ s, const float* __restrict__ weight,
                                                     const float* __restrict__ bias, float* __restrict__ y,
                                                     float* __restrict__ mean, float* __restrict__ rstd, int rows,
                                                     int C, float eps) {
    add_forward(a, b, s, weight, bias, y, mean, rstd, rows, C, eps);
}
extern "C" __global__ void add_layernorm_forward_bf16(const __nv_bfloat16* __restrict__ a,
                                                      const __nv_bfloat16* __restrict__ b,
                                                      __nv_bfloat16* __restrict__ s, const float* __restrict__ weight,
                                                      const float* __restrict__ bias, __nv_bfloat16* __restrict__ y,
                                                      float* __restrict__ mean, float* __restrict__ rstd, int rows,
                                                      int C, float eps) {
    add_forward(a, b, s, weight, bias, y, mean, rstd, rows, C, eps);
}

extern "C" __global__ void layernorm_backward_dx_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                                     const float* __restrict__ mean, const float* __restrict__ rstd,
                                                     const float* __restrict__ weight, float* __restrict__ dx,
                                                     int rows, int C) {
    backward_dx(dy, x, mean, rstd, weight, dx, rows, C);
}
extern "C" __global__ void layernorm_backward_dx_bf16(const __nv_bfloat16* __restrict__ dy,
                                                      const __nv_bfloat16* __restrict__ x,
                                                      const float* __restrict__ mean, const float* __restrict__ rstd,
                                                      const float* __restrict__ weight,
                                                      __nv_bfloat16* __restrict__ dx, int rows, int C) {
    backward_dx(dy, x, mean, rstd, weight, dx, rows, C);
}

extern "C" __global__ void layernorm_backward_partials_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                                           const float* __restrict__ mean,
                                                           const float* __restrict__ rstd,
                                                           float* __restrict__ partials, int rows, int C,
                                                           int rows_per_chunk) {
    backward_partials(dy, x, mean, rstd, partials, rows, C, rows_per_chunk);
}
extern "C" __global__ void layernorm_backward_partials_bf16(const __nv_bfloat16* __restrict__ dy,
                                                            const __nv_bfloat16* __restrict__ x,
                                                            const float* __restrict__ mean,
                                                            const float* __restrict__ rstd,
                                                            float* __restrict__ partials, int rows, int C,
                                                            int rows_per_chunk) {
    backward_partials(dy, x, mean, rstd, partials, rows, C, rows_per_chunk);
}

// ---------------------------------------------------------------------------------------------
// Backward, dweight and dbias, step 2 of 2: dweight += the sum of the chunks' dweight partials,
// dbias likewise, the chunks added in order 0, 1, 2, ... from zero, as the CPU adds them. All f32,
// whatever the activation type: one kernel serves both.
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
