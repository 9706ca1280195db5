// Elementwise kernels: residual adds and exact (erf) GELU, forward and backward.
//
// Each is one pass over memory: n floats read per input, n written; no reuse, so they are bound by
// memory bandwidth. A grid-stride loop over float4 vectors (16-byte loads and stores) with a scalar
// tail keeps every load coalesced and wide. CPU references: src/backend/cpu/{gelu.rs, mod.rs (add)}.
#include "common.cuh"

// y = a + b
extern "C" __global__ void add_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y,
                                   int n) {
    const int vectors = n / 4;
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < vectors; i += stride) {
        const float4 x = reinterpret_cast<const float4*>(a)[i];
        const float4 z = reinterpret_cast<const float4*>(b)[i];
        reinterpret_cast<float4*>(y)[i] = make_float4(x.x + z.x, x.y + z.y, x.z + z.z, x.w + z.w);
    }
    for (int i = vectors * 4 + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) y[i] = a[i] + b[i];
}

// acc += x
extern "C" __global__ void add_assign_f32(float* __restrict__ acc, const float* __restrict__ x, int n) {
    const int vectors = n / 4;
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < vectors; i += stride) {
        float4 s = reinterpret_cast<float4*>(acc)[i];
        const float4 z = reinterpret_cast<const float4*>(x)[i];
        s.x += z.x;
        s.y += z.y;
        s.z += z.z;
        s.w += z.w;
        reinterpret_cast<float4*>(acc)[i] = s;
    }
    for (int i = vectors * 4 + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) acc[i] += x[i];
}

// GELU(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), as torch.nn.GELU() (not the tanh approximation).
__device__ __forceinline__ float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// d/dx [x Phi(x)] = Phi(x) + x phi(x), phi the standard normal density.
__device__ __forceinline__ float gelu_grad(float x) {
    return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) + x * 0.3989422804014327f * expf(-0.5f * x * x);
}

extern "C" __global__ void gelu_forward_f32(const float* __restrict__ x, float* __restrict__ y, int n) {
    const int vectors = n / 4;
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < vectors; i += stride) {
        const float4 v = reinterpret_cast<const float4*>(x)[i];
        reinterpret_cast<float4*>(y)[i] = make_float4(gelu(v.x), gelu(v.y), gelu(v.z), gelu(v.w));
    }
    for (int i = vectors * 4 + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) y[i] = gelu(x[i]);
}

extern "C" __global__ void gelu_backward_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                             float* __restrict__ dx, int n) {
    const int vectors = n / 4;
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < vectors; i += stride) {
        const float4 d = reinterpret_cast<const float4*>(dy)[i];
        const float4 v = reinterpret_cast<const float4*>(x)[i];
        reinterpret_cast<float4*>(dx)[i] =
            make_float4(d.x * gelu_grad(v.x), d.y * gelu_grad(v.y), d.z * gelu_grad(v.z), d.w * gelu_grad(v.w));
    }
    for (int i = vectors * 4 + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        dx[i] = dy[i] * gelu_grad(x[i]);
    }
}
