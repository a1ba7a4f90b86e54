/*
 * lora_delta.h - the LoRA weight delta and PAFT's L1 sparsity penalty on it.
 *
 * A LoRA adapter on a linear layer W [out][in] adds delta = scale * B A to the weight, with
 * B [out][r], A [r][in] and scale = alpha / r (alpha / sqrt(r) for rslora). PAFT trains SFT with
 *     L = CE + lambda * sum_ij |delta_ij|        (the paper's Eq. 1, a sum, not a mean)
 * so that the SFT delta comes out sparse and interferes less with the preference delta when the
 * two are merged. Sparsity is measured as the fraction of |delta| below 1e-5 (the paper's Fig. 2).
 *
 * Tensor parallelism: the functions work on whatever slice of delta the caller's factors span.
 * A column-parallel layer passes its rows of B (delta rows), a row-parallel one its columns of A
 * (delta columns); the L1 value is then a partial sum to all-reduce over the TP group, and the
 * gradient of the replicated factor is a partial gradient, summed over the TP group like every
 * other gradient of a replicated LoRA factor.
 */
#ifndef PAFT_LORA_DELTA_H
#define PAFT_LORA_DELTA_H

#include <stddef.h>
#include <stdint.h>

#include "util/common.h"

/* The sparsity threshold of the paper: an element counts as zero when |delta| < 1e-5. */
#define PAFT_SPARSITY_THRESHOLD 1e-5

/* delta[o][i] = scale * sum_k B[o][k] A[k][i];  delta [out][in], B [out][r], A [r][in]. */
void lora_delta(real *delta, const real *A, const real *B, int out_features, int in_features,
                int r, real scale);

/* The L1 penalty lambda * sum |delta| of one adapted module, with its gradient ADDED into the
 * factors' gradients (dA [r][in], dB [out][r]; either may be NULL to skip it):
 *     G = sign(delta)  (sign(0) = 0)
 *     dB += lambda * scale * G A^T        dA += lambda * scale * B^T G
 * sign(0) = 0 is the subgradient that makes the gradient exactly zero at initialisation (B = 0),
 * so step 0 of SFT is plain cross-entropy. delta_scratch must hold out*in values; on return it
 * holds delta (so the caller can take delta_sparsity of it without recomputing). The sum is
 * accumulated in double; the return value is the penalty (lambda times the sum). */
double l1_penalty(real *dA, real *dB, const real *A, const real *B, int out_features,
                  int in_features, int r, real scale, real lambda, real *delta_scratch);

/* W += scale * B A for W [out][in] (a weight, or a rank's block of one): folding an adapter. */
void lora_delta_add(real *W, const real *A, const real *B, int out_features, int in_features, int r,
                    real scale);

/* How many elements of delta = scale * B A (B [out][r], A [r][in]) have |delta| < threshold,
 * formed a block of rows at a time: out x in is quadratic in a file's size, and only the count is
 * needed (`paft inspect` of an adapter). */
size_t lora_delta_count_below(const real *A, const real *B, int64_t out_features,
                              int64_t in_features, int r, real scale, double threshold);

/* How many of the n values have |delta| < threshold: the distributed form of delta_sparsity
 * (all-reduce the counts and the sizes, then divide). */
size_t delta_count_below(const real *delta, size_t n, double threshold);

/* Fraction of the n values with |delta| < threshold (PAFT_SPARSITY_THRESHOLD in the paper);
 * 0 for n == 0. Exact zeros count as sparse, NaN does not. */
double delta_sparsity(const real *delta, size_t n, double threshold);

#endif /* PAFT_LORA_DELTA_H */
