/*
 * merge_elementwise.h - the per-element formulas of the merge, written once and compiled twice:
 * into the CPU passes (merge_kernels_cpu.c, C) and into the CUDA kernels (kernels/merge_cuda.cu,
 * nvcc). Both are built without contracting a * b + c into a fused multiply-add (-ffp-contract=off,
 * nvcc -fmad=false), and every operation here is a single IEEE-754 operation rounded to nearest,
 * so the two backends give the same bits: a model merged on GPUs is the file merged on CPUs.
 *
 * Everything is fp32 (mergekit merges in fp32 whatever the stored dtype) except the DARE draws,
 * which are integer arithmetic on 64-bit counters.
 */
#ifndef PAFT_MERGE_ELEMENTWISE_H
#define PAFT_MERGE_ELEMENTWISE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* kernels/merge_cuda.cu defines this as __host__ __device__ before including the header */
#ifndef MERGE_HD
#define MERGE_HD
#endif

/* |x| below this counts as zero in the sparsity statistics (the paper's Figure 2 measure). */
#define MERGE_SPARSITY_EPS 1e-5f

/* ---- bit patterns --------------------------------------------------------------------------
 * Branch-free tests on IEEE-754 bit patterns (+-0 is neither positive nor negative). Integer
 * logic cannot raise floating-point exceptions, so GCC if-converts and vectorizes the loops that
 * use these, which it refuses to do for float compares feeding selects (-ftrapping-math). */
MERGE_HD static inline uint32_t merge_float_bits(float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    return b;
}
MERGE_HD static inline float merge_bits_float(uint32_t b) {
    float x;
    memcpy(&x, &b, sizeof x);
    return x;
}
/* For a finite float x, the bit pattern of |x| read as uint32 orders exactly like |x|. */
MERGE_HD static inline uint32_t merge_magnitude_bits(float x) {
    return merge_float_bits(x) & 0x7FFFFFFFu;
}
MERGE_HD static inline uint32_t merge_is_zero(float x) { return (merge_float_bits(x) << 1) == 0; }
MERGE_HD static inline uint32_t merge_is_negative(float x) {
    return (merge_float_bits(x) >> 31) & !merge_is_zero(x);
}
MERGE_HD static inline uint32_t merge_is_positive(float x) {
    return ((merge_float_bits(x) >> 31) ^ 1u) & !merge_is_zero(x);
}
/* cond (0 or 1) ? a : b */
MERGE_HD static inline float merge_select(uint32_t cond, float a, float b) {
    uint32_t all = 0u - cond;
    return merge_bits_float((all & merge_float_bits(a)) | (~all & merge_float_bits(b)));
}
/* 1 when |theta - base| < MERGE_SPARSITY_EPS: the merged delta of this element counts as zero */
MERGE_HD static inline int64_t merge_small_delta(float theta, float base) {
    return fabsf(theta - base) < MERGE_SPARSITY_EPS;
}

/* ---- DARE's counter-based generator --------------------------------------------------------
 * SplitMix64 (Steele, Lea, Flood 2014): a Weyl sequence state_i = key + i * GOLDEN put through a
 * 64-bit finalizer. Element `index` takes draw number index + 1 of the stream seeded with `key`,
 * so any element's draw is computed directly, whichever rank (and device) holds it. */
#define MERGE_SPLITMIX_GOLDEN 0x9E3779B97F4A7C15ULL

MERGE_HD static inline uint64_t merge_splitmix64_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* The 53 random bits of element `index`'s draw: uniform on [0, 2^53). Kept iff < keep_below. */
MERGE_HD static inline uint64_t merge_dare_bits(uint64_t key, uint64_t index) {
    return merge_splitmix64_mix(key + (index + 1) * MERGE_SPLITMIX_GOLDEN) >> 11;
}

/* ---- per-row sums: one row's columns added in order, in double -------------------------------
 * Each backend calls these once per row (a CPU thread, a GPU thread), so the order of the sums,
 * and with it every bit, is the same on both. */

/* sums[0] = sum_c |a[c]|, sums[1] = sum_c |b[c]| (DARE's L1 norms before and after the drop) */
MERGE_HD static inline void merge_row_abs_sums(const float *a, const float *b, int64_t cols,
                                               double *sums) {
    double sum_a = 0, sum_b = 0;
    for (int64_t c = 0; c < cols; c++) {
        sum_a += fabs((double)a[c]);
        sum_b += fabs((double)b[c]);
    }
    sums[0] = sum_a;
    sums[1] = sum_b;
}

/* SLERP's sums of theta_i = base + d_i (the float sums): sums[0] = theta_0 . theta_1,
 * sums[1] = |theta_0|^2, sums[2] = |theta_1|^2 */
MERGE_HD static inline void merge_row_slerp_sums(const float *base, const float *d0,
                                                 const float *d1, int64_t cols, double *sums) {
    double dot = 0, norm0 = 0, norm1 = 0;
    for (int64_t c = 0; c < cols; c++) {
        double theta0 = (double)(base[c] + d0[c]), theta1 = (double)(base[c] + d1[c]);
        dot += theta0 * theta1;
        norm0 += theta0 * theta0;
        norm1 += theta1 * theta1;
    }
    sums[0] = dot;
    sums[1] = norm0;
    sums[2] = norm1;
}

/* ---- the mixing of the two (sparsified) deltas into theta ----------------------------------
 * One struct describes the whole element-wise step of every method; merge.c fills it from the
 * merge parameters (and, for slerp, the whole-tensor angle). */
typedef enum {
    MERGE_MIX_WEIGHTED, /* task_arithmetic, dare_linear, magnitude: base + lambda sum w_i k_i / d */
    MERGE_MIX_CONSENSUS, /* ties, dare_ties: the same over the deltas agreeing with the sign    */
    MERGE_MIX_LINEAR,   /* linear: (w0 theta_sft + w1 theta_pref) [/ (w0 + w1)]                  */
    MERGE_MIX_SLERP     /* slerp (or its lerp): s0 theta_sft + s1 theta_pref                     */
} MergeMixKind;

typedef struct {
    MergeMixKind kind;
    float w0, w1;        /* the weights (sft, pref), in fp32 as mergekit has them */
    float lambda;        /* the task-arithmetic family's scale of the mixed delta */
    float divisor;       /* WEIGHTED, LINEAR: normalize ? w0 + w1 : 1 (WEIGHTED: also 1 when
                            |w0 + w1| < 1e-8, mergekit's guard) */
    uint32_t normalize;  /* CONSENSUS: divide by the weights of the agreeing deltas */
    uint32_t by_count;   /* CONSENSUS: elect the sign by count (1) or by sum (0) */
    float s0, s1;        /* SLERP: the coefficients of theta_sft and theta_pref */
} MergeMix;

/* mergekit's GeneralizedTaskArithmetic without a sign election, in fp32 with its operation order.
 * mergekit skips the division without normalize and the product when lambda is 1; x / 1 and
 * x * 1 are exact, so both are done always (no branches: the CPU loop vectorizes). */
MERGE_HD static inline float merge_mix_weighted(const MergeMix *m, float base, float k0, float k1) {
    float mixed = (k0 * m->w0 + k1 * m->w1) / m->divisor * m->lambda;
    return base + mixed;
}

/* ... with TIES' sign election: elect a sign per element (+ on a tie), keep the weighted deltas
 * that carry it (a zero carries no sign) through a 0/1 mask as mergekit does, divide by the
 * weights of those kept (0 -> 1) when normalizing. */
MERGE_HD static inline float merge_mix_consensus(const MergeMix *m, float base, float k0, float k1) {
    const float w0 = m->w0, w1 = m->w1;
    float W0 = k0 * w0, W1 = k1 * w1;
    uint32_t pos0 = merge_is_positive(W0), neg0 = merge_is_negative(W0);
    uint32_t pos1 = merge_is_positive(W1), neg1 = merge_is_negative(W1);
    uint32_t by_count = m->by_count, by_sum = by_count ^ 1u;
    uint32_t positive = (by_count & (pos0 + pos1 >= neg0 + neg1)) |
                        (by_sum & !merge_is_negative(W0 + W1)); /* -0 counts as >= 0 */
    float mask0 = (float)((positive & pos0) | ((positive ^ 1u) & neg0));
    float mask1 = (float)((positive & pos1) | ((positive ^ 1u) & neg1));
    float mixed = W0 * mask0 + W1 * mask1;
    float divisor = w0 * mask0 + w1 * mask1;
    divisor = merge_select(merge_is_zero(divisor) | (m->normalize ^ 1u), 1.0f, divisor);
    mixed = mixed / divisor * m->lambda; /* x / 1 and x * 1 are exact */
    return base + mixed;
}

/* mergekit's LinearMerge over the two full models: sum_i w_i theta_i (/ sum_i w_i). */
MERGE_HD static inline float merge_mix_linear(const MergeMix *m, float base, float d0, float d1) {
    float theta0 = base + d0, theta1 = base + d1;
    return (m->w0 * theta0 + m->w1 * theta1) / m->divisor; /* x / 1 is exact */
}

/* slerp (or lerp) of theta_sft and theta_pref with the coefficients of the whole tensor. */
MERGE_HD static inline float merge_mix_slerp(const MergeMix *m, float base, float d0, float d1) {
    float theta0 = base + d0, theta1 = base + d1;
    return m->s0 * theta0 + m->s1 * theta1;
}

#endif /* PAFT_MERGE_ELEMENTWISE_H */
