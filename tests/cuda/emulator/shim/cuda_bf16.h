/*
 * cuda_bf16.h - the emulator's bf16: the 16-bit pattern (the top half of an fp32), converted to
 * fp32 exactly and from fp32 with round to nearest, ties to even (as __float2bfloat16 and
 * __float2bfloat16_rn do on the GPU); NaN stays a (quiet) NaN.
 */
#ifndef EMU_CUDA_BF16_H
#define EMU_CUDA_BF16_H

#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
    uint16_t x;
};

inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t bits = (uint32_t)h.x << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    __nv_bfloat16 h;
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) { /* NaN: keep the sign, make it quiet */
        h.x = (uint16_t)((bits >> 16) | 0x0040u);
        return h;
    }
    bits += 0x7FFFu + ((bits >> 16) & 1u); /* a carry into the exponent is right (up to inf) */
    h.x = (uint16_t)(bits >> 16);
    return h;
}

inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

#endif
