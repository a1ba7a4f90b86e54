/* emulator shim: bf16 as its bit pattern, round to nearest even like __float2bfloat16 */
#pragma once
#include <cstdint>
#include <cstring>
#include <cmath>
struct __nv_bfloat16 { uint16_t x; };
inline float __bfloat162float(__nv_bfloat16 h) { uint32_t b = (uint32_t)h.x << 16; float f; std::memcpy(&f, &b, 4); return f; }
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t b; std::memcpy(&b, &f, 4);
    __nv_bfloat16 h;
    if (std::isnan(f)) { h.x = 0x7FC0; return h; }
    b += 0x7FFF + ((b >> 16) & 1);
    h.x = (uint16_t)(b >> 16);
    return h;
}
