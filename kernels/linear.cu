// The bias half of a linear layer, y = x W^T + b (W stored [out, in] like torch.nn.Linear). CPU
// reference: src/backend/cpu/linear.rs. The matrix products are GEMMs (cuBLASLt on a GPU, see
// src/backend/cuda/ops/linear.rs), whose bias epilogue adds the forward's bias; what is left for
// kernels is the bias gradient:
//
//   backward:  db[j] += sum over rows r of dy[r, j]
//
// and the bias and GELU fused around the feed-forward GEMM (cuBLASLt's GELU epilogue is the tanh
// approximation; the model's GELU is the exact erf form): forward z = x W^T + b, y = GELU(z) in one
// pass after the GEMM; backward dz = dy GELU'(z) in the same pass as db's partial sums.
//
// Layout: y and dy are [rows, out] row-major; b and db are [out] views into the flat parameter and
// gradient buffers.
//
// Element types: y and dy have the activation type T, f32 or bf16 (kernels `<name>_f32` and
// `<name>_bf16`); b, db and the partial sums are f32 whatever T is. In bf16 the backward sums the
// widened bf16 dy in f32.
#include "common.cuh"
#include "gelu.cuh"

// Kernel bodies have internal linkage: the emulator links every kernel file into one library,
// where two files' different inline functions of the same name would silently become one.
namespace {

// ---------------------------------------------------------------------------------------------
// Forward with GELU, the feed-forward block's first layer: after a GEMM that wrote z = x W^T with
// no bias, one pass adds the bias and applies GELU: z += b (kept: GELU's backward reads it), y =
// GELU(z). Each element of z is read once and written once, y written once; the unfused path writes
// the bias into z, has the GEMM read it back, then reads z again for GELU: two passes more. In bf16
// z is rounded once before GELU reads it, as the unfused path stores it.
// ---------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void bias_gelu(const float* __restrict__ bias, T* __restrict__ z, T* __restrict__ y, int rows,
                                          int out) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        T* zr = z + static_cast<size_t>(r) * out;
        T* yr = y + static_cast<size_t>(r) * out;
        for (int j = threadIdx.x; j < out; j += blockDim.x) {
            const T v = from_float<T>(to_float(zr[j]) + bias[j]);
            zr[j] = v;
            yr[j] = from_float<T>(gelu(to_float(v)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward, db, step 1 of 2: column sums of dy over one chunk of rows.
//
// A float atomicAdd per row into db would be simple, but its order, and so its rounding, would
// change from run to run. Instead the sum follows the CPU's order exactly
// (src/backend/cpu/reduce.rs): rows are cut into chunks of rows_per_chunk (64, the CPU's
// ROWS_PER_BLOCK) rows, each chunk's rows are added one after another from zero into
// partials[chunk], and step 2 adds the chunks in order. Only additions, in the CPU's order: the
// result is the CPU's bit for bit, in the emulator and on a GPU (in bf16, the CPU's given the same
// bf16-valued dy).
//
// Grid: x = chunk, y = block of blockDim.x columns; one thread per (chunk, column). For each row a
// warp reads 32 consecutive elements (coalesced); the rows' loads do not depend on one another, so
// many are in flight at once. Traffic: dy read once; out floats written per chunk.
// ---------------------------------------------------------------------------------------------
//
// `element(i)` gives the value to add for flat index i = r * out + col (and may store it, as the
// GELU backward below does); both db kernels share this loop, so they sum in the same order.
template <typename Element>
__device__ __forceinline__ void column_chunk_sums(float* __restrict__ partials, int rows, int out, int rows_per_chunk,
                                                  Element element) {
    const int col = blockIdx.y * blockDim.x + threadIdx.x;
    if (col >= out) return;  // no barrier in this kernel
    const int first = blockIdx.x * rows_per_chunk;
    const int end = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
    float sum = 0.0f;
    for (int r = first; r < end; ++r) sum += element(static_cast<size_t>(r) * out + col);
    partials[static_cast<size_t>(blockIdx.x) * out + col] = sum;
}

template <typename T>
__device__ __forceinline__ void bias_backward_partials(const T* __restrict__ dy, float* __restrict__ partials,
                                                       int rows, int out, int rows_per_chunk) {
    column_chunk_sums(partials, rows, out, rows_per_chunk, [&](size_t i) { return to_float(dy[i]); });
}

// ---------------------------------------------------------------------------------------------
// Backward of the feed-forward block's first layer, y = GELU(z), z = x W^T + b: GELU's backward
// fused with step 1 of db. Given dy and the saved z, each thread computes dz = dy GELU'(z) for its
// (chunk, column), stores it (the GEMMs for dx and dW read it next), and adds it into the chunk's
// partial sum of column `col`, the same order as bias_backward_partials. Traffic: dy and z read
// once, dz written once; the unfused path (GELU backward, then the bias partials) reads dz back
// once more. The partial sum adds dz as stored (rounded, in bf16), so db is exactly what the
// unfused path computes from the same dz.
// ---------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void gelu_bias_backward_partials(const T* __restrict__ dy, const T* __restrict__ z,
                                                            T* __restrict__ dz, float* __restrict__ partials,
                                                            int rows, int out, int rows_per_chunk) {
    column_chunk_sums(partials, rows, out, rows_per_chunk, [&](size_t i) {
        const T d = from_float<T>(to_float(dy[i]) * gelu_grad(to_float(z[i])));
        dz[i] = d;
        return to_float(d);
    });
}

}  // namespace

extern "C" __global__ void linear_bias_gelu_f32(const float* __restrict__ bias, float* __restrict__ z,
                                                float* __restrict__ y, int rows, int out) {
    bias_gelu(bias, z, y, rows, out);
}
extern "C" __global__ void linear_bias_gelu_bf16(const float* __restrict__ bias, __nv_bfloat16* __restrict__ z,
                                                 __nv_bfloat16* __restrict__ y, int rows, int out) {
    bias_gelu(bias, z, y, rows, out);
}

extern "C" __global__ void linear_bias_backward_partials_f32(const float* __restrict__ dy,
                                                             float* __restrict__ partials, int rows, int out,
                                                             int rows_per_chunk) {
    bias_backward_partials(dy, partials, rows, out, rows_per_chunk);
}
extern "C" __global__ void linear_bias_backward_partials_bf16(const __nv_bfloat16* __restrict__ dy,
                                                              float* __restrict__ partials, int rows, int out,
                                                              int rows_per_chunk) {
    bias_backward_partials(dy, partials, rows, out, rows_per_chunk);
}

extern "C" __global__ void linear_gelu_backward_partials_f32(const float* __restrict__ dy, const float* __restrict__ z,
                                                             float* __restrict__ dz, float* __restrict__ partials,
                                                             int rows, int out, int rows_per_chunk) {
    gelu_bias_backward_partials(dy, z, dz, partials, rows, out, rows_per_chunk);
}
extern "C" __global__ void linear_gelu_backward_partials_bf16(const __nv_bfloat16* __restrict__ dy,
                                                              const __nv_bfloat16* __restrict__ z,
                                                              __nv_bfloat16* __restrict__ dz,
                                                              float* __restrict__ partials, int rows, int out,
                                                              int rows_per_chunk) {
    gelu_bias_backward_partials(dy, z, dz, partials, rows, out, rows_per_chunk);
}

// ---------------------------------------------------------------------------------------------
// Backward, db, step 2 of 2: db[j] += sum over chunks k of partials[k][j], the chunks added in
// order 0, 1, 2, ... from zero, as the CPU adds them. f32 whatever the activation type: one kernel
// serves both. One thread per column; for each chunk a warp reads 32 consecutive floats.
// Traffic: chunks * out floats read, db read and written once.
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void linear_bias_backward_sum_f32(const float* __restrict__ partials,
                                                        float* __restrict__ dbias, int chunks, int out) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= out) return;
    float sum = 0.0f;
    for (int k = 0; k < chunks; ++k) sum += partials[static_cast<size_t>(k) * out + j];
    dbias[j] += sum;
}
