/*
 * attention_mma.h - the fused causal attention on register-level tensor cores (mma.sync), for the
 * head dimensions of real models (64 and 128). attention_cuda.cu dispatches here; the contracts
 * are those of attention_forward_fused_cuda / attention_backward_fused_cuda (ops_cuda.h).
 */
#ifndef PAFT_ATTENTION_MMA_H
#define PAFT_ATTENTION_MMA_H

#include "ops_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when these kernels cover head dimension D. */
int attention_mma_supports(int D);

/* out [B][T][Hq][D] and lse [B][Hq][T] (natural log), as attention_forward_fused_cuda. */
void attention_forward_mma_cuda(floatX *out, float *lse, const floatX *q, const floatX *k,
                                const floatX *v, int B, int T, int Hq, int Hkv, int D);

/* Device scratch the backward needs for grouped-query attention (Hq > Hkv): each query head's
 * share of dk and dv in fp32, summed over the group afterwards; 0 when Hq == Hkv. */
size_t attention_backward_mma_partials_bytes(int B, int T, int Hq, int Hkv, int D);

/* Device scratch for dS stored between the dk, dv kernel and the dq kernel (bf16, the causal
 * 64 x 64 tiles): B Hq n (n + 1) / 2 tiles of 8 KB, n = T / 64 rounded up. Quadratic in T. */
size_t attention_backward_mma_ds_bytes(int B, int T, int Hq);

/* dq, dk, dv += the gradients, given lse from the forward and delta [B][Hq][T] = rowsum(dout *
 * out) (attention_cuda.cu computes it); partials: attention_backward_mma_partials_bytes of
 * scratch (NULL when that is 0); ds_t: attention_backward_mma_ds_bytes of scratch, to compute dq
 * from the stored dS, or NULL to recompute S and dP for it (no quadratic memory). Deterministic:
 * every gradient element is summed in a fixed order, without atomics. */
void attention_backward_mma_cuda(floatX *dq, floatX *dk, floatX *dv, const floatX *dout,
                                 const float *lse, const float *delta, float *partials,
                                 floatX *ds_t, const floatX *q, const floatX *k, const floatX *v, int B, int T,
                                 int Hq, int Hkv, int D);

#ifdef __cplusplus
}
#endif

#endif /* PAFT_ATTENTION_MMA_H */
