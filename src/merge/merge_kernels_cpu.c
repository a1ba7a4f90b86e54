/*
 * merge_kernels_cpu.c - the merge's passes on the CPU (merge_kernels.h): OpenMP loops over this
 * rank's elements in host memory. Built with -ffp-contract=off (CMakeLists.txt), so that no
 * a * b + c becomes a fused multiply-add and the bits are those of kernels/merge_cuda.cu.
 */
#include "merge/merge_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loss/lora_delta.h"
#include "util/common.h"

static int cpu_device_count(void) { return 1; }
static MergeKernelState *cpu_create(void) { return NULL; }
static void cpu_destroy(MergeKernelState *s) { (void)s; }
static void *cpu_alloc(MergeKernelState *s, size_t bytes) {
    (void)s;
    return paft_malloc(bytes ? bytes : 1);
}
static void cpu_release(MergeKernelState *s, void *p) {
    (void)s;
    free(p);
}
static void cpu_copy(MergeKernelState *s, void *dst, const void *src, size_t bytes) {
    (void)s;
    if (bytes && dst != src) memcpy(dst, src, bytes);
}

static void cpu_zero(MergeKernelState *s, float *x, size_t n) {
    (void)s;
    memset(x, 0, n * sizeof *x);
}

static void cpu_lora_delta(MergeKernelState *s, float *delta, const float *A, const float *B,
                           int64_t rows, int64_t cols, int r, float scale) {
    (void)s;
#ifdef PAFT_REAL_DOUBLE
    /* the fp64 test build: the merge computes in float, lora_delta in double */
    (void)delta, (void)A, (void)B, (void)rows, (void)cols, (void)r, (void)scale;
    PAFT_FATAL("merge_kernels_cpu.lora_delta: not in the fp64 build (the merge stage forms its "
               "deltas with loss/lora_delta.c there)");
#else
    lora_delta(delta, A, B, (int)rows, (int)cols, r, scale);
#endif
}

static void cpu_count_small(MergeKernelState *s, const float *x, size_t n, int64_t *small_out,
                            int64_t *nonfinite_out) {
    (void)s;
    int64_t small = 0, nonfinite = 0;
#pragma omp parallel for schedule(static) reduction(+ : small, nonfinite)
    for (size_t i = 0; i < n; i++) {
        nonfinite += merge_magnitude_bits(x[i]) >= 0x7F800000u; /* exponent all ones: Inf, NaN */
        small += fabsf(x[i]) < MERGE_SPARSITY_EPS;
    }
    *small_out = small;
    *nonfinite_out = nonfinite;
}

static void cpu_magnitude_histogram(MergeKernelState *s, const float *x, size_t n,
                                    uint32_t prefix, uint32_t prefix_mask, int shift, int bins,
                                    int64_t *hist) {
    (void)s;
    const uint32_t digit_mask = (uint32_t)bins - 1;
    memset(hist, 0, (size_t)bins * sizeof *hist);
#pragma omp parallel
    {
        int64_t *local = paft_calloc((size_t)bins, sizeof *local);
#pragma omp for schedule(static)
        for (size_t i = 0; i < n; i++) {
            uint32_t b = merge_magnitude_bits(x[i]);
            if ((b & prefix_mask) == prefix) local[(b >> shift) & digit_mask]++;
        }
#pragma omp critical
        for (int d = 0; d < bins; d++) hist[d] += local[d];
        free(local);
    }
}

static void cpu_magnitude_keep(MergeKernelState *s, const float *delta, size_t n,
                               uint32_t threshold, float *kept, int64_t *kept_count,
                               int64_t *equal_count) {
    (void)s;
    int64_t count = 0, equal = 0;
#pragma omp parallel for schedule(static) reduction(+ : count, equal)
    for (size_t i = 0; i < n; i++) {
        uint32_t b = merge_magnitude_bits(delta[i]);
        kept[i] = b >= threshold ? delta[i] : 0.0f;
        count += b >= threshold;
        equal += b == threshold;
    }
    *kept_count = count;
    *equal_count = equal;
}

/* A sequential pass, since it counts (rare: only when the cut falls in a run of equal values). */
static int64_t cpu_magnitude_drop_equal(MergeKernelState *s, const float *delta, size_t n,
                                        uint32_t threshold, int64_t keep_equal, float *kept) {
    (void)s;
    int64_t seen = 0, dropped = 0;
    for (size_t i = 0; i < n; i++) {
        if (merge_magnitude_bits(delta[i]) != threshold) continue;
        if (seen++ >= keep_equal) {
            kept[i] = 0.0f;
            dropped++;
        }
    }
    return dropped;
}

static int64_t cpu_dare_keep(MergeKernelState *s, const float *delta, size_t n, uint64_t key,
                             uint64_t first_index, uint64_t keep_below, float divisor,
                             float *kept) {
    (void)s;
    int64_t count = 0;
#pragma omp parallel for schedule(static) reduction(+ : count)
    for (size_t i = 0; i < n; i++) {
        int keep = merge_dare_bits(key, first_index + i) < keep_below;
        kept[i] = keep ? delta[i] / divisor : 0.0f; /* x / 1 is exact */
        count += keep;
    }
    return count;
}

static void cpu_row_abs_sums(MergeKernelState *s, const float *a, const float *b, int64_t rows,
                             int64_t cols, double *partials) {
    (void)s;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++)
        merge_row_abs_sums(a + r * cols, b + r * cols, cols, partials + 2 * r);
}

static void cpu_scale(MergeKernelState *s, float *x, size_t n, float factor) {
    (void)s;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= factor;
}

static void cpu_slerp_row_sums(MergeKernelState *s, const float *base, const float *d0,
                               const float *d1, int64_t rows, int64_t cols, double *partials) {
    (void)s;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++)
        merge_row_slerp_sums(base + r * cols, d0 + r * cols, d1 + r * cols, cols, partials + 3 * r);
}

/* One loop per kind, so that each vectorizes without a branch inside. */
#define MIX_LOOP(element_fn)                                                                       \
    _Pragma("omp parallel for schedule(static) reduction(+ : small)")                              \
    for (size_t i = 0; i < n; i++) {                                                               \
        float theta = element_fn(m, base[i], k0[i], k1[i]);                                        \
        small += merge_small_delta(theta, base[i]);                                                \
        out[i] = theta;                                                                            \
    }

static int64_t cpu_mix(MergeKernelState *s, const MergeMix *mix, const float *base,
                       const float *k0, const float *k1, float *out, size_t n) {
    (void)s;
    const MergeMix copy = *mix, *m = &copy; /* loop-invariant for the compiler */
    int64_t small = 0;
    switch (m->kind) {
    case MERGE_MIX_WEIGHTED: MIX_LOOP(merge_mix_weighted) break;
    case MERGE_MIX_CONSENSUS: MIX_LOOP(merge_mix_consensus) break;
    case MERGE_MIX_LINEAR: MIX_LOOP(merge_mix_linear) break;
    case MERGE_MIX_SLERP: MIX_LOOP(merge_mix_slerp) break;
    }
    return small;
}

const MergeKernels merge_kernels_cpu = {
    .name = "cpu",
    .available = 1,
    .host_memory = 1,
    .device_count = cpu_device_count,
    .create = cpu_create,
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .to_device = cpu_copy,
    .to_host = cpu_copy,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .lora_delta = cpu_lora_delta,
    .count_small = cpu_count_small,
    .magnitude_histogram = cpu_magnitude_histogram,
    .magnitude_keep = cpu_magnitude_keep,
    .magnitude_drop_equal = cpu_magnitude_drop_equal,
    .dare_keep = cpu_dare_keep,
    .row_abs_sums = cpu_row_abs_sums,
    .scale = cpu_scale,
    .slerp_row_sums = cpu_slerp_row_sums,
    .mix = cpu_mix,
};
