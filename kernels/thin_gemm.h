/*
 * thin_gemm.h - out += alpha X^T Y for X [N][F] wide and Y [N][J] thin, the inner dimension the
 * N tokens (the adapters' weight gradients; thin_gemm_cuda.cu says why a kernel of its own). fp32
 * out, bf16 X and Y, fp32 accumulation; deterministic (no atomics).
 */
#ifndef PAFT_THIN_GEMM_H
#define PAFT_THIN_GEMM_H

#include <stddef.h>

#include "ops_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when thin_weight_grad_cuda takes this shape: 0 < J <= 256; F, J, ld_x and ld_y multiples of
 * 8 and X, Y 16-byte aligned (whole 16-byte loads); one chunk's fp32 partial sums (F J) within
 * the workspace. */
int thin_weight_grad_supported(const floatX *X, int ld_x, const floatX *Y, int ld_y, int N, int F,
                               int J, size_t workspace_bytes);

/* out[f][j] += alpha sum_t X[t][f] Y[t][j] (out [F][J]), or with transposed out[j][f] += the same
 * (out [J][F]). Rows of X and Y are ld_x and ld_y elements apart. The tokens are split in chunks
 * (about four blocks per SM of sm_count) whose fp32 partial sums go to the workspace (device
 * memory the caller owns; nothing else may use it until the call's kernels are done: the same
 * stream) and are then added in chunk order. An unsupported shape is a fatal error. */
void thin_weight_grad_cuda(float *out, int transposed, const floatX *X, int ld_x, const floatX *Y,
                           int ld_y, int N, int F, int J, float alpha, void *workspace,
                           size_t workspace_bytes, int sm_count);

#ifdef __cplusplus
}
#endif

#endif /* PAFT_THIN_GEMM_H */
