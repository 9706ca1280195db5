// Element-type conversions between f32 and bf16: the parameters' bf16 shadow for GEMMs, and casts
// at the edges of mixed precision. One read and one write per element, memory bound; f32 -> bf16
// rounds to nearest even (`__float2bfloat16`), bf16 -> f32 is exact.
#include "common.cuh"

extern "C" __global__ void convert_f32_to_bf16(const float* __restrict__ in, __nv_bfloat16* __restrict__ out, int n) {
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = __float2bfloat16(in[i]);
}

extern "C" __global__ void convert_bf16_to_f32(const __nv_bfloat16* __restrict__ in, float* __restrict__ out, int n) {
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = __bfloat162float(in[i]);
}
