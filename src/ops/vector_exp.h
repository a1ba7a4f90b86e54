/*
 * vector_exp.h - exp for the CPU ops' long elementwise loops: the softmaxes (attention's
 * probabilities, the vocabulary's log-sum-exp and its gradient) and SwiGLU's sigmoid. glibc's expf
 * is a call per element (about 6 ns on the 2-core VM of docs/BENCHMARKS.md), and the
 * exponentials were a third of the fused attention's time; this one is a dozen arithmetic
 * instructions that the compiler vectorises across a row.
 *
 *   exp(x) = 2^n exp(r),  n = round(x / ln 2),  r = x - n ln 2 in [-ln2/2, ln2/2],
 *
 * exp(r) by its Taylor series to r^6 (truncation below 2^-23 there: r^7/7! <= 1.2e-7), 2^n put
 * straight into the exponent bits. Within a few units in the last place of expf (the tests check
 * it against exp in double over the range); exp(-inf) = 0, exp(inf) = inf, NaN stays NaN; below
 * -87 it returns 0 where expf would give a denormal (under 2^-125 of the row's largest term).
 * In the double build (the gradient checks) it is exp itself.
 */
#ifndef PAFT_VECTOR_EXP_H
#define PAFT_VECTOR_EXP_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "util/common.h"

#ifdef PAFT_REAL_DOUBLE
static inline real vector_exp(real x) { return exp(x); }
#else
static inline float vector_exp(float x) {
    /* keep 2^n a normal float: n in [-126, 127] */
    const float xc = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    /* adding 1.5 * 2^23 rounds x / ln 2 to an integer, which lands in the low mantissa bits */
    const float shifter = 12582912.0f;
    const float t = xc * 1.44269504088896341f + shifter;
    const float n = t - shifter;
    /* ln 2 in two parts, the first with few enough bits that n times it is exact */
    const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
    const float p =
        1 + r * (1 + r * (1.0f / 2 + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 +
                                                                           r * (1.0f / 720))))));
    uint32_t t_bits;
    memcpy(&t_bits, &t, sizeof t_bits);
    const uint32_t scale_bits = (t_bits - 0x4B400000u + 127u) << 23; /* (n + 127) << 23 */
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    const float y = p * scale;
    return x < -87.0f ? 0.0f : x > 88.0f ? INFINITY : y;
}
#endif

#endif /* PAFT_VECTOR_EXP_H */
