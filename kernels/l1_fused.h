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

/* 1 when l1_penalty_fused_add_cuda takes a module of out x in with rank r: r <= 64 and the
 * partial sums (out x in x 5 r / 256 floats and a little) fit in scratch_bytes; with scratch of
 * out x in floats that is r up to 51 where out and in are multiples of 64. */
int l1_penalty_fused_supported(int out, int in, int r, size_t scratch_bytes);
/* The bytes of scratch those partial sums take. */
size_t l1_penalty_fused_scratch_bytes(int out, int in, int r);

/* l1_penalty_cuda's contract (ops_cuda.h) without the wait: lambda * sum |s B A| is added to
 * *device_total (one double of device memory), and dB += lambda s sign(s B A) A^T, dA += lambda s
 * B^T sign(s B A) (either may be NULL), the factors fp32 and device-resident. scratch
 * (scratch_bytes, device): the partial sums. All on the default stream; nothing synchronises. */
void l1_penalty_fused_add_cuda(float *dA, float *dB, const float *A, const float *B, int out,
                               int in, int r, float scale, float lambda, void *scratch,
                               size_t scratch_bytes, double *device_total);

#ifdef __cplusplus
}
#endif

#endif /* PAFT_L1_FUSED_H */
