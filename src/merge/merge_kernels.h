/*
 * merge_kernels.h - the passes of the merge over one rank's rows of a tensor, as a table with two
 * implementations: the CPU (merge_kernels_cpu.c, OpenMP) and CUDA (kernels/merge_cuda.cu).
 *
 * merge.c holds the method: which passes run, in which order, and every collective between them
 * (histograms, counts and per-row partial sums cross ranks through MPI on the host). The passes
 * only touch this rank's elements, which live in the memory of the table (`host_memory`: plain
 * host pointers; otherwise device pointers from `alloc`). Whatever comes back to the host (counts,
 * histograms, per-row partials) is returned in host memory.
 *
 * Both implementations compute the same bits (merge_elementwise.h: one copy of the per-element
 * formulas, no fused multiply-add; counts are integers; the per-row partial sums add the row's
 * columns in order, in double): tests/cuda/test_merge_cuda.c checks every pass bit for bit, and the
 * merged file of a CUDA merge is compared with `cmp` against the CPU merge's.
 */
#ifndef PAFT_MERGE_KERNELS_H
#define PAFT_MERGE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "merge/merge_elementwise.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct MergeKernelState MergeKernelState; /* the implementation's own (device scratch) */

typedef struct {
    const char *name; /* "cpu", "cuda" */
    int available;    /* 0: not compiled in (create then ends the job saying how to build it) */
    int host_memory;  /* 1: the buffers are host memory (alloc is malloc, the copies memcpy) */

    /* Devices this process can use: the CPU 1; CUDA the visible GPUs (0 without, or not built). */
    int (*device_count)(void);
    /* Bind to a device (CUDA: the GPU of this rank's node-local rank) and make the scratch. */
    MergeKernelState *(*create)(void);
    void (*destroy)(MergeKernelState *s);
    void *(*alloc)(MergeKernelState *s, size_t bytes);
    void (*release)(MergeKernelState *s, void *p);
    void (*to_device)(MergeKernelState *s, void *dst, const void *src, size_t bytes);
    void (*to_host)(MergeKernelState *s, void *dst, const void *src, size_t bytes);
    void (*copy)(MergeKernelState *s, void *dst, const void *src, size_t bytes); /* on the device */
    void (*zero)(MergeKernelState *s, float *x, size_t n); /* x[i] = +0 */

    /* delta [rows][cols] = scale * B A of a LoRA adapter: B [rows][r], A [r][cols]; per element
     * the r products are added in k order from 0, then scaled (loss/lora_delta.c's order). */
    void (*lora_delta)(MergeKernelState *s, float *delta, const float *A, const float *B,
                       int64_t rows, int64_t cols, int r, float scale);
    /* How many of the n values have |x| < MERGE_SPARSITY_EPS, and how many are Inf or NaN. */
    void (*count_small)(MergeKernelState *s, const float *x, size_t n, int64_t *small,
                        int64_t *nonfinite);
    /* hist[d] (host, `bins` values, overwritten) = how many x have
     * (magnitude_bits & prefix_mask) == prefix and digit (magnitude_bits >> shift) & (bins - 1) == d:
     * one digit of the radix select of the magnitude top-k. */
    void (*magnitude_histogram)(MergeKernelState *s, const float *x, size_t n, uint32_t prefix,
                                uint32_t prefix_mask, int shift, int bins, int64_t *hist);
    /* kept[i] = magnitude_bits(delta[i]) >= threshold ? delta[i] : 0; *kept_count = how many were
     * kept, *equal_count = how many of them are equal to the threshold. */
    void (*magnitude_keep)(MergeKernelState *s, const float *delta, size_t n, uint32_t threshold,
                           float *kept, int64_t *kept_count, int64_t *equal_count);
    /* Of the elements whose magnitude equals threshold, in index order, keep the first
     * `keep_equal` and zero the others in kept; returns how many were zeroed. */
    int64_t (*magnitude_drop_equal)(MergeKernelState *s, const float *delta, size_t n,
                                    uint32_t threshold, int64_t keep_equal, float *kept);
    /* DARE: kept[i] = merge_dare_bits(key, first_index + i) < keep_below ? delta[i] / divisor : 0
     * (divisor 1 or the density); returns how many were kept. */
    int64_t (*dare_keep)(MergeKernelState *s, const float *delta, size_t n, uint64_t key,
                         uint64_t first_index, uint64_t keep_below, float divisor, float *kept);
    /* partials[2 r] = sum_c |a[r][c]|, partials[2 r + 1] = sum_c |b[r][c]| (double, c in order;
     * host memory, 2 rows values). */
    void (*row_abs_sums)(MergeKernelState *s, const float *a, const float *b, int64_t rows,
                         int64_t cols, double *partials);
    /* x[i] *= factor */
    void (*scale)(MergeKernelState *s, float *x, size_t n, float factor);
    /* Per row, in double with c in order, of theta_i = base + d_i (the float sum):
     * partials[3 r] = sum theta_0 theta_1, [3 r + 1] = sum theta_0^2, [3 r + 2] = sum theta_1^2. */
    void (*slerp_row_sums)(MergeKernelState *s, const float *base, const float *d0,
                           const float *d1, int64_t rows, int64_t cols, double *partials);
    /* out[i] = the mix of (base[i], k0[i], k1[i]) (merge_elementwise.h); out may be base. Returns
     * how many merged deltas out - base are small (|.| < MERGE_SPARSITY_EPS). */
    int64_t (*mix)(MergeKernelState *s, const MergeMix *mix, const float *base, const float *k0,
                   const float *k1, float *out, size_t n);
} MergeKernels;

extern const MergeKernels merge_kernels_cpu;
/* Defined in kernels/merge_cuda.cu; a stand-in with available = 0 in builds without CUDA. */
extern const MergeKernels merge_kernels_cuda;
/* Ends the job (naming `origin`) when merge.device NAME cannot run in this process: "cuda" not
 * compiled in, or no GPU visible; cpu and auto always can (model_device_select.c). */
void merge_kernels_check_usable(const char *name, const char *origin);
/* The same without the device (paft check): "cuda" is compiled in (else the job ends, saying how
 * to build it). Returns the GPUs visible here. */
int merge_kernels_check_built(const char *name);

/* A table bound to its state: what merge_tensor_rows_on takes. */
typedef struct {
    const MergeKernels *k;
    MergeKernelState *s;
} MergeBackend;

#ifdef __cplusplus
}
#endif

#endif /* PAFT_MERGE_KERNELS_H */
