/*
 * l1_fused.h - PAFT's L1 term on one adapted module without its fp32 delta in memory
 * (l1_fused_cuda.cu says how); l1_penalty_cuda (ops_cuda.h) takes it where it is supported.
 */
#ifndef PAFT_L1_FUSED_H
#define PAFT_L1_FUSED_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when l1_penalty_fused_cuda takes a module of out x in with rank r (r <= 64) and its partial
 * sums fit in scratch_bytes. */
int l1_penalty_fused_supported(int out, int in, int r, size_t scratch_bytes);

/* l1_penalty_cuda's contract (ops_cuda.h): returns lambda * sum |s B A| and adds
 * dB += lambda s sign(s B A) A^T, dA += lambda s B^T sign(s B A) (either may be NULL), the
 * factors fp32 and device-resident. scratch (scratch_bytes, device): the tiles' partial sums;
 * device_double: one double of device memory for the result. Synchronises (the value returns to
 * the host). */
double l1_penalty_fused_cuda(float *dA, float *dB, const float *A, const float *B, int out, int in,
                             int r, float scale, float lambda, void *scratch, size_t scratch_bytes,
                             double *device_double);

#ifdef __cplusplus
}
#endif

#endif /* PAFT_L1_FUSED_H */
