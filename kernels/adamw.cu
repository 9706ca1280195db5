// AdamW, as torch.optim.AdamW's single-tensor (non-fused) path, over the flat parameter, gradient
// and moment buffers in one pass. CPU reference: src/backend/cpu/adamw.rs. Per element, at step t:
//
//   p *= 1 - lr * weight_decay                         (decoupled weight decay, before the update)
//   m  = m + (1 - beta1) (g - m)                       (torch's lerp(m, g, 1 - beta1))
//   v  = v * beta2 + (1 - beta2) g^2
//   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// The step's scalars (1 - lr * wd, 1 - beta1, beta2, 1 - beta2, lr / (1 - beta1^t),
// sqrt(1 - beta2^t), eps) are computed once on the host in f64 and rounded to f32, exactly as the
// CPU backend computes them, and arrive as arguments; each element then does the CPU's f32
// operations in the CPU's order. The emulator (no fused multiply-add) reproduces the CPU bit for
// bit; on a GPU nvcc contracts some multiply-adds into FMAs, which round once instead of twice, so
// results can differ from the CPU's in the last bit.
//
// bf16 mixed precision changes nothing here but one output: parameters, gradients and moments stay
// f32, and when `shadow` is not null (the GEMMs' bf16 copy of the parameters, one bf16 per f32
// parameter) the same pass also stores each updated parameter there, rounded to nearest even.
// The shadow then matches the new parameters exactly without a second pass over them. A null
// shadow (an f32 model, or no shadow made yet) is skipped; the test is the same for every thread.
//
// The update can be guarded without the host looking: with `halted` not null, a step whose loss
// (`*guard_loss` when not null, computed on the device earlier in the same stream) is not finite,
// or that follows such a step (`*halted` set), writes nothing and sets `*halted`. The host reads the loss a step
// later and reports the error; by then no update has used a non-finite loss.
//
// Memory traffic: per element 4 floats read (p, g, m, v) and 3 written (p, m, v): 28 bytes, plus 2
// for the shadow, no reuse, so the kernel is bound by memory bandwidth. A grid-stride loop over
// float4 vectors (16-byte loads and stores; 8-byte stores of 4 bf16 into the shadow) with a scalar
// tail keeps every access coalesced and wide. The five pointers are whole allocations (256-byte
// aligned on a GPU, in the emulator too), never views at an offset, so the vector accesses are
// aligned.
#include "common.cuh"

// Internal linkage: the emulator links every kernel file into one library, where two files'
// different inline definitions of the same name would silently become one.
namespace {

// One step's scalars, and the update of one element with them.
struct AdamW {
    float decay;                  // 1 - lr * weight_decay
    float one_minus_beta1;        // 1 - beta1
    float beta2;
    float one_minus_beta2;        // 1 - beta2
    float step_size;              // lr / (1 - beta1^t)
    float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
    float eps;

    __device__ __forceinline__ void update(float& p, float g, float& m, float& v) const {
        p *= decay;
        m += one_minus_beta1 * (g - m);
        v = v * beta2 + one_minus_beta2 * g * g;
        const float denom = sqrtf(v) / bias_correction2_sqrt + eps;
        p -= step_size * m / denom;
    }
};

// Two parameters rounded to bf16 and packed into one 32-bit word: lo at the lower address.
__device__ __forceinline__ unsigned bf16_pair(float lo, float hi) {
    return static_cast<unsigned>(__bfloat16_as_ushort(from_float<__nv_bfloat16>(lo))) |
           (static_cast<unsigned>(__bfloat16_as_ushort(from_float<__nv_bfloat16>(hi))) << 16);
}

}  // namespace

extern "C" __global__ void adamw_f32(float* __restrict__ params, const float* __restrict__ grads,
                                     float* __restrict__ m, float* __restrict__ v,
                                     __nv_bfloat16* __restrict__ shadow, const float* __restrict__ guard_loss,
                                     int* halted, int n, float decay, float one_minus_beta1, float beta2,
                                     float one_minus_beta2, float step_size, float bias_correction2_sqrt,
                                     float eps) {
    // Every thread reads the same two values, so every thread takes the same branch. Thread 0 of
    // block 0 may set the flag while others read it: they skip either way.
    if (halted != nullptr && (*halted != 0 || (guard_loss != nullptr && !isfinite(*guard_loss)))) {
        if (blockIdx.x == 0 && threadIdx.x == 0) *halted = 1;
        return;
    }
    const AdamW adam{decay, one_minus_beta1, beta2, one_minus_beta2, step_size, bias_correction2_sqrt, eps};
    const int vectors = n / 4;
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < vectors; i += stride) {
        float4 p = reinterpret_cast<float4*>(params)[i];
        const float4 g = reinterpret_cast<const float4*>(grads)[i];
        float4 mi = reinterpret_cast<float4*>(m)[i];
        float4 vi = reinterpret_cast<float4*>(v)[i];
        adam.update(p.x, g.x, mi.x, vi.x);
        adam.update(p.y, g.y, mi.y, vi.y);
        adam.update(p.z, g.z, mi.z, vi.z);
        adam.update(p.w, g.w, mi.w, vi.w);
        reinterpret_cast<float4*>(params)[i] = p;
        reinterpret_cast<float4*>(m)[i] = mi;
        reinterpret_cast<float4*>(v)[i] = vi;
        if (shadow != nullptr) {
            int2 packed;
            packed.x = static_cast<int>(bf16_pair(p.x, p.y));
            packed.y = static_cast<int>(bf16_pair(p.z, p.w));
            reinterpret_cast<int2*>(shadow)[i] = packed;
        }
    }
    for (int i = vectors * 4 + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        adam.update(params[i], grads[i], m[i], v[i]);
        if (shadow != nullptr) shadow[i] = from_float<__nv_bfloat16>(params[i]);
    }
}
