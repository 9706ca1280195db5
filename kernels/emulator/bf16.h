// `__nv_bfloat16` and `__half` for host builds of the kernels, with the GPU's conversions: float to
// 16 bits rounds to nearest, ties to even (`cvt.rn.bf16.f32`, `cvt.rn.f16.f32`), keeps subnormals,
// and turns every NaN into the canonical 0x7FFF; 16 bits to float is exact. The results are
// bit-identical to the GPU's for every input (tests/emulator.rs checks them against the `half` crate
// over a sweep of special and random values).
//
// Arithmetic on the 16-bit types goes through float and rounds once to 16 bits. A product of two
// 16-bit values is exact in float, so `*` matches the GPU bit for bit; `+` and `-` can differ in the
// last bit (double rounding) in rare cases. Kernels accumulate in float anyway.
#pragma once

#include <cstdint>
#include <cstring>

namespace emu {

inline uint32_t float_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float bits_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline uint16_t float_to_bf16_bits(float f) {
    uint32_t u = float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return 0x7fff;  // NaN
    }
    // Round to nearest even on the 16 bits that are dropped; a carry into the exponent is the
    // correct rounding up to the next binade (or to infinity).
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

inline uint16_t float_to_half_bits(float f) {
    const uint32_t u = float_bits(f);
    const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
    const uint32_t magnitude = u & 0x7fffffffu;
    if (magnitude > 0x7f800000u) {
        return 0x7fff;  // NaN
    }
    if (magnitude >= 0x477ff000u) {
        return sign | 0x7c00;  // >= 65520 (65504 + half an ulp) rounds to infinity
    }
    auto round_shift = [](uint32_t value, int shift) {
        const uint32_t quotient = value >> shift;
        const uint32_t remainder = value & ((1u << shift) - 1u);
        const uint32_t halfway = 1u << (shift - 1);
        return quotient + ((remainder > halfway || (remainder == halfway && (quotient & 1u))) ? 1u : 0u);
    };
    if (magnitude < 0x38800000u) {  // below 2^-14, the smallest normal half: a subnormal or zero
        if (magnitude < 0x33000000u) {
            return sign;  // below 2^-25: rounds to zero (2^-25 itself ties to even, also zero)
        }
        // value = mantissa * 2^(exponent - 150); in units of 2^-24 that is mantissa >> (126 - exponent).
        const uint32_t exponent = magnitude >> 23;
        const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
        return sign | static_cast<uint16_t>(round_shift(mantissa, static_cast<int>(126 - exponent)));
    }
    // Normal: rebias the exponent (127 -> 15) and round off 13 mantissa bits; a carry moves into the
    // exponent correctly.
    return sign | static_cast<uint16_t>(round_shift(magnitude - 0x38000000u, 13));
}

inline float half_bits_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu;
    const uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1f) {
        return bits_float(sign | 0x7f800000u | (mantissa << 13));
    }
    if (exponent == 0) {
        // Subnormal or zero: mantissa * 2^-24, exact in float.
        const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
        return sign ? -magnitude : magnitude;
    }
    return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

}  // namespace emu

struct __nv_bfloat16 {
    uint16_t __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(::emu::float_to_bf16_bits(f)) {}
    operator float() const { return ::emu::bf16_bits_to_float(__x); }
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
struct __half {
    uint16_t __x;
    __half() = default;
    __half(float f) : __x(::emu::float_to_half_bits(f)) {}
    operator float() const { return ::emu::half_bits_to_float(__x); }
};
struct __half2 {
    __half x, y;
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
inline __nv_bfloat16 __ushort_as_bfloat16(uint16_t bits) {
    __nv_bfloat16 h;
    h.__x = bits;
    return h;
}
inline uint16_t __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __half __ushort_as_half(uint16_t bits) {
    __half h;
    h.__x = bits;
    return h;
}
inline uint16_t __half_as_ushort(__half h) { return h.__x; }

inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat16(float(a) * float(b)); }
inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat16(float(a) + float(b)); }
inline __half __hmul(__half a, __half b) { return __half(float(a) * float(b)); }
inline __half __hadd(__half a, __half b) { return __half(float(a) + float(b)); }
