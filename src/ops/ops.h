/*
 * ops.h - the operations the model is made of, each a forward/backward pair (CPU backend, `real`).
 *
 * Conventions, shared with the CUDA backend in kernels/ (same names with _cuda, same parameter
 * lists, bf16 activations):
 *   - Row-major. N = number of token rows (batch * seq), C = input features, OC = output features.
 *   - A weight of a linear layer is stored as HF/PyTorch do: W[OC][C], so y = x W^T (+ b).
 *   - Every backward ADDS into its gradient outputs (d... += ...): the caller zeroes gradient
 *     buffers once per step. This is what makes residual connections and shared inputs (the LoRA
 *     branch reads the same x as the base matmul) need no special cases. A NULL gradient pointer
 *     means "not wanted" and skips that work (frozen base weights).
 *   - Sizes that can exceed 2^31 elements are computed in size_t inside.
 */
#ifndef PAFT_OPS_H
#define PAFT_OPS_H

#include <stdint.h>

#include "util/common.h"

/* ---- embedding ----------------------------------------------------------------------------
 * out[n][:] = table[tokens[n] - vocab_start][:] when vocab_start <= tokens[n] < vocab_start +
 * vocab_rows, otherwise zeros (a vocab-parallel shard holds rows [vocab_start, +vocab_rows)). */
void embedding_forward(real *out, const int32_t *tokens, const real *table, int N, int C,
                       int vocab_start, int vocab_rows);
void embedding_backward(real *dtable, const real *dout, const int32_t *tokens, int N, int C,
                        int vocab_start, int vocab_rows);

/* ---- RMSNorm (Llama): out = inp / sqrt(mean(inp^2) + eps) * weight; rstd[n] saved. ---------- */
void rmsnorm_forward(real *out, real *rstd, const real *inp, const real *weight, int N, int C,
                     float eps);
void rmsnorm_backward(real *dinp, real *dweight, const real *dout, const real *inp,
                      const real *weight, const real *rstd, int N, int C);

/* ---- the linear layers' GEMMs: CBLAS when built with a BLAS (-DPAFT_BLAS, CMakeLists.txt) and
 * PAFT_CPU_BLAS is not 0 in the environment, else paft's own loops. cpu_blas_describe writes which
 * (and, for OpenBLAS, its configuration and kernels) into text. */
int cpu_blas_enabled(void);
void cpu_blas_describe(char *text, size_t size);

/* ---- linear: out (=|+=) alpha * inp W^T + bias; inp [N][C], W [OC][C], out [N][OC] -----------
 * accumulate = 0 overwrites out, 1 adds to it (the LoRA branch adds s*(xA^T)B^T onto the base
 * output). bias may be NULL. */
void matmul_forward(real *out, const real *inp, const real *weight, const real *bias, int N, int C,
                    int OC, real alpha, int accumulate);
/* dinp += alpha * dout W;  dweight += alpha * dout^T inp;  dbias += sum_n dout (no alpha). */
void matmul_backward(real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                     const real *weight, int N, int C, int OC, real alpha);

/* ---- rotary position embedding, HF's rotate-half convention ---------------------------------
 * x is [N][H][D] (one row per token, H heads of D features), rotated in place. For pair index
 * i < D/2 with angle a = positions[n] * inv_freq[i]:
 *   x[i]       <- x[i] cos a - x[i+D/2] sin a
 *   x[i+D/2]   <- x[i+D/2] cos a + x[i] sin a
 * cos_table/sin_table are [max_pos][D/2] (see rope_tables in model/). The backward applies the
 * transposed rotation to dx in place (dx holds d/d(rotated x) on entry, d/d(x) on exit): the one
 * backward that overwrites instead of adding. D must be even. */
void rope_forward(real *x, const real *cos_table, const real *sin_table, const int32_t *positions,
                  int N, int H, int D);
void rope_backward(real *dx, const real *cos_table, const real *sin_table,
                   const int32_t *positions, int N, int H, int D);

/* ---- causal grouped-query attention ---------------------------------------------------------
 * q, out: [B][T][Hq][D];  k, v: [B][T][Hkv][D], Hq a multiple of Hkv (query head h reads KV head
 * h / (Hq/Hkv)). probs [B][Hq][T][T] holds softmax(q k^T / sqrt(D)) with the causal mask (zeros
 * above the diagonal), saved for the backward. */
void attention_forward(real *out, real *probs, const real *q, const real *k, const real *v, int B,
                       int T, int Hq, int Hkv, int D);
void attention_backward(real *dq, real *dk, real *dv, const real *dout, const real *probs,
                        const real *q, const real *k, const real *v, int B, int T, int Hq, int Hkv,
                        int D);
/* The fused form (the model's default; FlashAttention's bookkeeping, as in the CUDA backend):
 * keeps lse [B][Hq][T], each query row's log-sum-exp of the scaled scores, instead of the
 * probabilities, and the backward recomputes them, p_tj = exp(q_t . k_j / sqrt(D) - lse_t): O(T)
 * memory per row instead of O(T^2), for a third product per (t, j) pair in the backward. */
void attention_forward_fused(real *out, real *lse, const real *q, const real *k, const real *v,
                             int B, int T, int Hq, int Hkv, int D);
/* The backward also takes the forward's out (the CUDA kernel's signature): each row's softmax term
 * sum_j p_tj dp_tj is dout_t . out_t, found once instead of once per pass over the row. */
void attention_backward_fused(real *dq, real *dk, real *dv, const real *dout, const real *out,
                              const real *lse, const real *q, const real *k, const real *v, int B,
                              int T, int Hq, int Hkv, int D);

/* ---- SwiGLU: out = silu(gate) * up, elementwise over n values --------------------------------*/
void swiglu_forward(real *out, const real *gate, const real *up, size_t n);
void swiglu_backward(real *dgate, real *dup, const real *dout, const real *gate, const real *up,
                     size_t n);

/* ---- out = a + b, elementwise (residual connections) ----------------------------------------*/
void residual_forward(real *out, const real *a, const real *b, size_t n);

/* ---- token log-probabilities from logits ----------------------------------------------------
 * logits [N][V]; lse[n] = logsumexp(logits[n]); logp[n] = logits[n][targets[n]] - lse[n].
 * A target < 0 marks a row without a target: logp = 0 and no gradient (lse is still computed);
 * a target >= V is a fatal error. Every loss (SFT cross-entropy, DPO, ORPO) is a function of
 * logp, so this is the one softmax op.
 * Backward: dlogits[n][j] += dlogp[n] * (1[j == target] - exp(logits[n][j] - lse[n])). */
void logprob_forward(real *logp, real *lse, const real *logits, const int32_t *targets, int N,
                     int V);
void logprob_backward(real *dlogits, const real *dlogp, const real *logits, const real *lse,
                      const int32_t *targets, int N, int V);

/* ---- vocab-parallel log-probabilities (tensor parallelism) ----------------------------------
 * This rank's logits hold vocabulary columns [vocab_start, vocab_start + V) of each row. The
 * caller combines the local pieces with all-reduces across the tensor-parallel group:
 *   row_max  = MAX over ranks of logits_row_max
 *   sumexp   = SUM over ranks of logits_row_sumexp(..., row_max)      (with the global max)
 *   target   = SUM over ranks of logits_target (only the owning rank is non-zero)
 *   lse = row_max + log(sumexp),  logp = target - lse   (0 where target < 0)
 * logprob_forward/backward are exactly these with vocab_start = 0 and nothing to reduce. */
void logits_row_max(real *row_max, const real *logits, int N, int V);
void logits_row_sumexp(double *sumexp, const real *logits, const real *row_max, int N, int V);
void logits_target(double *target_logit, const real *logits, const int32_t *targets,
                   int vocab_start, int N, int V);
/* dlogits[n][j] += dlogp[n] * (1[vocab_start + j == target] - exp(logits[n][j] - lse[n])); no
 * communication: the gradient of each shard's logits is local. */
void logprob_backward_shard(real *dlogits, const real *dlogp, const real *logits, const real *lse,
                            const int32_t *targets, int vocab_start, int N, int V);

#endif /* PAFT_OPS_H */
