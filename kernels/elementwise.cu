// Elementwise kernels: residual adds and exact (erf) GELU, forward and backward, over f32 or bf16
// activations (`<op>_f32`, `<op>_bf16`; inputs and output of one type). Every element is computed
// in float from its inputs and rounded once when stored: for bf16 that is the one rounding the op
// adds. CPU references: src/backend/cpu/{gelu.rs, mod.rs (add)}.
//
// Each is one pass over memory: n elements read per input, n written; no reuse, so they are bound
// by memory bandwidth. A grid-stride loop over 16-byte vectors (4 floats or 8 bf16) with a scalar
// tail keeps every load coalesced and wide. The pointers are whole allocations (256-byte aligned on
// a GPU and in the emulator), never views at an offset, so the vector accesses are aligned.
#include "common.cuh"
#include "gelu.cuh"

// Internal linkage: the emulator links every kernel file into one library, where two files'
// different inline definitions of the same name would silently become one.
namespace {

// 16 bytes of T, loaded and stored as one vector and handed out as floats.
template <typename T>
struct Pack;

template <>
struct Pack<float> {
    static constexpr int N = 4;
    __device__ __forceinline__ static void load(const float* __restrict__ p, int i, float v[N]) {
        const float4 x = reinterpret_cast<const float4*>(p)[i];
        v[0] = x.x;
        v[1] = x.y;
        v[2] = x.z;
        v[3] = x.w;
    }
    __device__ __forceinline__ static void store(float* __restrict__ p, int i, const float v[N]) {
        reinterpret_cast<float4*>(p)[i] = make_float4(v[0], v[1], v[2], v[3]);
    }
};

// Eight bf16 as one uint4: element 2w is the low half of word w, element 2w + 1 the high half
// (little endian, as the memory holds them).
template <>
struct Pack<__nv_bfloat16> {
    static constexpr int N = 8;
    __device__ __forceinline__ static float low(unsigned w) {
        return to_float(__ushort_as_bfloat16(static_cast<unsigned short>(w & 0xffffu)));
    }
    __device__ __forceinline__ static float high(unsigned w) {
        return to_float(__ushort_as_bfloat16(static_cast<unsigned short>(w >> 16)));
    }
    __device__ __forceinline__ static unsigned pair(float lo, float hi) {
        return static_cast<unsigned>(__bfloat16_as_ushort(from_float<__nv_bfloat16>(lo))) |
               (static_cast<unsigned>(__bfloat16_as_ushort(from_float<__nv_bfloat16>(hi))) << 16);
    }
    __device__ __forceinline__ static void load(const __nv_bfloat16* __restrict__ p, int i, float v[N]) {
        const uint4 x = reinterpret_cast<const uint4*>(p)[i];
        v[0] = low(x.x);
        v[1] = high(x.x);
        v[2] = low(x.y);
        v[3] = high(x.y);
        v[4] = low(x.z);
        v[5] = high(x.z);
        v[6] = low(x.w);
        v[7] = high(x.w);
    }
    __device__ __forceinline__ static void store(__nv_bfloat16* __restrict__ p, int i, const float v[N]) {
        uint4 x;
        x.x = pair(v[0], v[1]);
        x.y = pair(v[2], v[3]);
        x.z = pair(v[4], v[5]);
        x.w = pair(v[6], v[7]);
        reinterpret_cast<uint4*>(p)[i] = x;
    }
};

// y = a + b
struct Add {
    __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

struct Gelu {
    __device__ __forceinline__ float operator()(float x) const { return gelu(x); }
};

// dx = dy GELU'(x), with (dy, x) as the arguments.
struct GeluBackward {
    __device__ __forceinline__ float operator()(float dy, float x) const { return dy * gelu_grad(x); }
};

// y[i] = f(x[i]) over n elements.
template <typename T, typename F>
__device__ __forceinline__ void unary(const T* __restrict__ x, T* __restrict__ y, int n, F f) {
    using P = Pack<T>;
    const int vectors = n / P::N;
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < vectors; i += stride) {
        float v[P::N];
        P::load(x, i, v);
#pragma unroll
        for (int k = 0; k < P::N; ++k) v[k] = f(v[k]);
        P::store(y, i, v);
    }
    for (int i = vectors * P::N + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        y[i] = from_float<T>(f(to_float(x[i])));
    }
}

// y[i] = f(a[i], b[i]) over n elements; y may not alias a or b.
template <typename T, typename F>
__device__ __forceinline__ void binary(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y, int n,
                                       F f) {
    using P = Pack<T>;
    const int vectors = n / P::N;
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < vectors; i += stride) {
        float u[P::N], v[P::N];
        P::load(a, i, u);
        P::load(b, i, v);
#pragma unroll
        for (int k = 0; k < P::N; ++k) u[k] = f(u[k], v[k]);
        P::store(y, i, u);
    }
    for (int i = vectors * P::N + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        y[i] = from_float<T>(f(to_float(a[i]), to_float(b[i])));
    }
}

// acc[i] = f(acc[i], x[i]) over n elements, in place.
template <typename T, typename F>
__device__ __forceinline__ void update(T* __restrict__ acc, const T* __restrict__ x, int n, F f) {
    using P = Pack<T>;
    const int vectors = n / P::N;
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < vectors; i += stride) {
        float s[P::N], v[P::N];
        P::load(acc, i, s);
        P::load(x, i, v);
#pragma unroll
        for (int k = 0; k < P::N; ++k) s[k] = f(s[k], v[k]);
        P::store(acc, i, s);
    }
    for (int i = vectors * P::N + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        acc[i] = from_float<T>(f(to_float(acc[i]), to_float(x[i])));
    }
}

}  // namespace

// y = a + b
extern "C" __global__ void add_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y,
                                   int n) {
    binary(a, b, y, n, Add{});
}
extern "C" __global__ void add_bf16(const __nv_bfloat16* __restrict__ a, const __nv_bfloat16* __restrict__ b,
                                    __nv_bfloat16* __restrict__ y, int n) {
    binary(a, b, y, n, Add{});
}

// acc += x
extern "C" __global__ void add_assign_f32(float* __restrict__ acc, const float* __restrict__ x, int n) {
    update(acc, x, n, Add{});
}
extern "C" __global__ void add_assign_bf16(__nv_bfloat16* __restrict__ acc, const __nv_bfloat16* __restrict__ x,
                                           int n) {
    update(acc, x, n, Add{});
}

extern "C" __global__ void gelu_forward_f32(const float* __restrict__ x, float* __restrict__ y, int n) {
    unary(x, y, n, Gelu{});
}
extern "C" __global__ void gelu_forward_bf16(const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ y,
                                             int n) {
    unary(x, y, n, Gelu{});
}

extern "C" __global__ void gelu_backward_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                             float* __restrict__ dx, int n) {
    binary(dy, x, dx, n, GeluBackward{});
}
extern "C" __global__ void gelu_backward_bf16(const __nv_bfloat16* __restrict__ dy, const __nv_bfloat16* __restrict__ x,
                                              __nv_bfloat16* __restrict__ dx, int n) {
    binary(dy, x, dx, n, GeluBackward{});
}
