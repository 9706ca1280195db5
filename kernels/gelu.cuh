// Exact (erf) GELU and its derivative, shared by the kernels that apply it (elementwise.cu and the
// bias + GELU epilogue in linear.cu). CPU reference: src/backend/cpu/gelu.rs.
#pragma once

#include "common.cuh"

// GELU(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), as torch.nn.GELU() (not the tanh approximation).
__device__ __forceinline__ float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// d/dx [x Phi(x)] = Phi(x) + x phi(x), phi the standard normal density.
__device__ __forceinline__ float gelu_grad(float x) {
    return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) + x * 0.3989422804014327f * expf(-0.5f * x * x);
}
