/*
 * ops_cuda.h - the CUDA backend's ops: the same operations and parameter lists as src/ops/ops.h,
 * on device pointers, with bf16 activations and weights (`floatX`) and fp32 statistics, LoRA master
 * weights and optimizer state: the embedding, the elementwise and normalisation ops, the causal GQA
 * attention (a simple unfused version and the fused one), the vocab-parallel log-probability
 * pieces, AdamW, the L1 term, the deterministic reductions and the cuBLASLt GEMMs. The device model
 * (src/model/model_device.c) sequences them. Every op is tested against the CPU op (tests/cuda),
 * which needs a GPU: without one the test reports itself skipped.
 *
 * Conventions as ops.h: row-major, W[OC][C], backward ops ADD into their gradient outputs.
 */
#ifndef PAFT_OPS_CUDA_H
#define PAFT_OPS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#include <cuda_bf16.h>
typedef __nv_bfloat16 floatX;
extern "C" {
#else
typedef uint16_t floatX; /* the bf16 bit pattern, seen from C */
#endif

/* Is a CUDA device usable by this process? 0 when there is none (tests then skip). */
int cuda_device_count(void);

/* out[n][:] = table[tokens[n] - vocab_start][:] for tokens inside the shard [vocab_start,
 * vocab_start + vocab_rows), zeros otherwise (another shard owns the token). */
void embedding_forward_cuda(floatX *out, const int32_t *tokens, const floatX *table, int N, int C,
                            int vocab_start, int vocab_rows);

/* out = inp / sqrt(mean(inp^2) + eps) * weight; rstd[n] saved (fp32). */
void rmsnorm_forward_cuda(floatX *out, float *rstd, const floatX *inp, const floatX *weight, int N,
                          int C, float eps);
/* dinp += ..., dweight += ... (dweight fp32, may be NULL for a frozen weight) */
void rmsnorm_backward_cuda(floatX *dinp, float *dweight, const floatX *dout, const floatX *inp,
                           const floatX *weight, const float *rstd, int N, int C);
/* The same with out's (forward) or dout's (backward) rows ld apart: the normalised input of the
 * projections with folded LoRA has G r more columns per row (model_device.c). */
void rmsnorm_forward_ld_cuda(floatX *out, int ld_out, float *rstd, const floatX *inp,
                             const floatX *weight, int N, int C, float eps);
void rmsnorm_backward_ld_cuda(floatX *dinp, float *dweight, const floatX *dout, int ld_dout,
                              const floatX *inp, const floatX *weight, const float *rstd, int N,
                              int C);

/* out = silu(gate) * up, and its backward (dgate += ..., dup += ...). */
void swiglu_forward_cuda(floatX *out, const floatX *gate, const floatX *up, size_t n);
/* swiglu_backward_cuda's store form: dgate = ..., dup = ... (not read: no zeroing first). */
void swiglu_backward_store_cuda(floatX *dgate, floatX *dup, const floatX *dout,
                                const floatX *gate, const floatX *up, size_t n);
void swiglu_backward_cuda(floatX *dgate, floatX *dup, const floatX *dout, const floatX *gate,
                          const floatX *up, size_t n);

/* out = a + b */
void residual_forward_cuda(floatX *out, const floatX *a, const floatX *b, size_t n);

/* RoPE, rotate-half, in place on x [N][H][D] with cos/sin tables [max_pos][D/2] (fp32); the
 * backward applies the transposed rotation (in place, like the CPU op). */
void rope_forward_cuda(floatX *x, const float *cos_table, const float *sin_table,
                       const int32_t *positions, int N, int H, int D);
void rope_backward_cuda(floatX *dx, const float *cos_table, const float *sin_table,
                        const int32_t *positions, int N, int H, int D);

/* Causal grouped-query attention, the semantics of attention_forward/backward in ops.h:
 * q, out [B][T][Hq][D]; k, v [B][T][Hkv][D]; probs [B][Hq][T][T] fp32 (zeros above the diagonal),
 * saved by the forward for the backward; scale 1/sqrt(D). A first, simple version, not fused:
 * the forward is one block per (batch, query head, query row); the backward is two kernels, one
 * per query row (dS into an fp32 scratch of probs' size, allocated inside, and dq) and one per
 * (batch, KV head, key row) (dk, dv summed over the group's query heads and the later query rows),
 * so nothing is written by two blocks: no atomics, deterministic. dq, dk, dv += (NULL skips). */
void attention_forward_cuda(floatX *out, float *probs, const floatX *q, const floatX *k,
                            const floatX *v, int B, int T, int Hq, int Hkv, int D);
void attention_backward_cuda(floatX *dq, floatX *dk, floatX *dv, const floatX *dout,
                             const float *probs, const floatX *q, const floatX *k, const floatX *v,
                             int B, int T, int Hq, int Hkv, int D);

/* ---- fused attention and device-side initialisation (kernels/attention_cuda.cu, init_cuda.cu) */

/* Fused causal GQA attention (FlashAttention-style): same layouts and semantics as
 * attention_forward_cuda (q, out [B][T][Hq][D]; k, v [B][T][Hkv][D]; query head h reads KV head
 * h / (Hq/Hkv); scale 1/sqrt(D); causal), but it never stores the T x T probabilities: the forward
 * saves lse [B][Hq][T] (fp32, natural-log logsumexp of the scaled scores of each query row); the
 * backward recomputes the probabilities tile by tile from q, k and lse. D even, 2 <= D <= 256
 * (anything else is a fatal error). */
void attention_forward_fused_cuda(floatX *out, float *lse, const floatX *q, const floatX *k,
                                  const floatX *v, int B, int T, int Hq, int Hkv, int D);
/* Bytes of device scratch attention_backward_fused_cuda needs for this shape: the fp32 row terms
 * D_i = sum_d dout*out, [B][Hq][T]; at D = 64 and 128 (the MMA kernels) each query head's fp32
 * share of dk, dv under grouped-query attention, and while it stays under 1 GiB the bf16 dS of
 * the causal tiles (quadratic in T; PAFT_ATTENTION_STORED_DS=0 leaves it out, kernels/README.md). */
size_t attention_backward_fused_scratch_bytes(int B, int T, int Hq, int Hkv, int D);
/* dq, dk, dv += (they ADD, like every backward; NULL not allowed here); deterministic: no atomics
 * on outputs, every output element written by exactly one thread. scratch: scratch_bytes of
 * device memory owned by the caller (no cudaMalloc inside: it runs once per layer per step), at
 * least attention_backward_fused_scratch_bytes(...) of this shape or of a larger one; dS is
 * stored only where it fits (less than that of this shape is a fatal error where it leaves too
 * little for the rest). out and lse are the forward's. */
void attention_backward_fused_cuda(floatX *dq, floatX *dk, floatX *dv, const floatX *dout,
                                   const floatX *out, const float *lse, const floatX *q,
                                   const floatX *k, const floatX *v, int B, int T, int Hq, int Hkv,
                                   int D, void *scratch, size_t scratch_bytes);

/* p[i] = mean + std * N(0,1) from a counter-based generator (a hash of (seed, i) + Box-Muller),
 * bf16 on device: random weights for `paft bench` without a host copy. Deterministic for
 * (seed, i), independent of the launch shape (and of n: a longer fill extends a shorter one). */
void fill_normal_cuda(floatX *p, size_t n, unsigned long long seed, float mean, float std);

/* ---- end of fused attention and device-side initialisation -------------------------------- */

/* Vocab-parallel log-probabilities, the pieces of ops.h (this rank holds vocabulary columns
 * [vocab_start, vocab_start + V) of logits [N][V], bf16; the statistics are fp32 or double):
 * row_max (fp32, exact: a max of bf16 values); sumexp = sum_j exp(logits - row_max), exp in fp32,
 * accumulated in double (as the CPU op: up to ~10^5 terms); target_logit in double, 0 where the
 * target is < 0 or in another shard; the backward dlogits[n][j] += dlogp[n] * (1[vocab_start + j
 * == target] - exp(logits[n][j] - lse[n])), rows with target < 0 untouched. */
void logits_row_max_cuda(float *row_max, const floatX *logits, int N, int V);
void logits_row_sumexp_cuda(double *sumexp, const floatX *logits, const float *row_max, int N,
                            int V);
void logits_target_cuda(double *target_logit, const floatX *logits, const int32_t *targets,
                        int vocab_start, int N, int V);
void logprob_backward_shard_cuda(floatX *dlogits, const float *dlogp, const floatX *logits,
                                 const float *lse, const int32_t *targets, int vocab_start, int N,
                                 int V);

/* AdamW on fp32 master weights, the arithmetic of src/optim/adamw.c (torch's), gradients scaled
 * by grad_scale (clipping) on the fly. */
void adamw_update_cuda(float *params, const float *grads, float *m, float *v, size_t n,
                       long long step, double lr, double beta1, double beta2, double eps,
                       double weight_decay, float grad_scale);

/* The library handles the GEMMs need (cuBLASLt handle and workspace): part of the run's context,
 * created once per process and passed to the ops that use them. */
typedef struct CudaContext CudaContext;
CudaContext *cuda_context_create(void);
void cuda_context_destroy(CudaContext *ctx);

/* out (=|+=) alpha * inp W^T: bf16 inputs, fp32 accumulation (cuBLASLt), bf16 output. */
void matmul_forward_cuda(CudaContext *ctx, floatX *out, const floatX *inp, const floatX *weight,
                         int N, int C, int OC, float alpha, int accumulate);

/* dinp += alpha * dout W (bf16);  dweight += alpha * dout^T inp (fp32: LoRA gradients are fp32).
 * Either may be NULL (not wanted). Both through cuBLASLt, fp32 accumulation. */
void matmul_backward_cuda(CudaContext *ctx, floatX *dinp, float *dweight, const floatX *dout,
                          const floatX *inp, const floatX *weight, int N, int C, int OC,
                          float alpha);

/* The same two with the rows of inp (and of dinp) ld_inp (ld_dinp >= C) elements apart: C columns
 * of a wider matrix, as when the LoRA projections of q, k and v share one product
 * h = inp [A_q; A_k; A_v]^T and each reads its r columns of h (model_device.c). */
void matmul_forward_strided_cuda(CudaContext *ctx, floatX *out, const floatX *inp, int ld_inp,
                                 const floatX *weight, int N, int C, int OC, float alpha,
                                 int accumulate);
void matmul_backward_strided_cuda(CudaContext *ctx, floatX *dinp, int ld_dinp, float *dweight,
                                  const floatX *dout, const floatX *inp, int ld_inp,
                                  const floatX *weight, int N, int C, int OC, float alpha);
/* The input gradient alone: dinp (=|+=) alpha * dout W, rows ld_dinp apart. With accumulate = 0
 * dinp is written without being read (no zeroing needed first; the same bits as adding onto
 * zeros). */
void matmul_input_grad_cuda(CudaContext *ctx, floatX *dinp, int ld_dinp, const floatX *dout,
                            const floatX *weight, int N, int C, int OC, float alpha, int accumulate);

/* The general forms, every matrix with its own row stride (in elements): the device model's LoRA
 * folded into the frozen projections (model_device.c) reads and writes columns of wider rows.
 *   forward      out[N][OC] (=|+=) alpha inp[N][C] W[OC][C]^T
 *   input grad   dinp[N][C] (=|+=) alpha dout[N][OC] W[OC][C]   (not read with accumulate 0)
 *   weight grad  dweight[OC][C] (fp32, rows C apart) += alpha dout^T inp */
void matmul_forward_ld_cuda(CudaContext *ctx, floatX *out, int ld_out, const floatX *inp,
                            int ld_inp, const floatX *weight, int ld_weight, int N, int C, int OC,
                            float alpha, int accumulate);
void matmul_input_grad_ld_cuda(CudaContext *ctx, floatX *dinp, int ld_dinp, const floatX *dout,
                               int ld_dout, const floatX *weight, int ld_weight, int N, int C,
                               int OC, float alpha, int accumulate);
void matmul_weight_grad_ld_cuda(CudaContext *ctx, float *dweight, const floatX *dout, int ld_dout,
                                const floatX *inp, int ld_inp, int N, int C, int OC, float alpha);

/* ---- support for the device model (model_support.cu) ---- */
/* Row o of wide [OC][ld]: columns [C, C + pad) = s B[o][:] (B fp32 [OC][r]) in slot `slot` (columns
 * C + slot r ..), zeros in the other slots of r (model_device.c, "folded LoRA"). */
void lora_fold_cuda(floatX *wide, int ld, int C, int pad, int slot, const float *B, int r,
                    float scale, int OC);
/* dst = src rounded to bf16 (nearest even), both on the device. */
void cast_f32_to_bf16_cuda(floatX *dst, const float *src, size_t n);
/* out[n][o] += bias[o] for out [N][OC] (the projections with a bias). */
void add_bias_cuda(floatX *out, const floatX *bias, int N, int OC);

/* sum x[i]^2 in double, deterministic (fixed grid, partial sums added in order): the gradient
 * norm of clipping. Returns to the host (synchronises). */
double sum_squares_cuda(CudaContext *ctx, const float *x, size_t n);

/* PAFT's L1 term on one adapted module, l1_penalty of src/loss/lora_delta.h on the device: delta
 * = scale B A, returns lambda * sum |delta| (double), and adds dB += lambda scale sign(delta) A^T
 * and dA += lambda scale B^T sign(delta) (either may be NULL). A [r][in], B [out][r] and the
 * gradients are the fp32 master factors; sign(0) = 0 as on the CPU. delta_scratch: out x in
 * floats of device memory. Ranks up to about 50 (l1_fused.h): delta tile by tile on tensor cores
 * with the factors split into three bf16 each (fp32's 24 bits), only partial sums in the
 * scratch. Above (or with PAFT_L1_FUSED=0): delta into the scratch by cuBLASLt on TF32 (10-bit
 * products: near-zero deltas may take the other sign), then the sums and two more products.
 * Synchronises (the value comes back to the host). */
double l1_penalty_cuda(CudaContext *ctx, float *dA, float *dB, const float *A, const float *B,
                       int out, int in, int r, float scale, float lambda, float *delta_scratch);
/* The same without waiting where the fused kernel runs: the value is added to *device_total (one
 * double of device memory, on the default stream) and 0 returned; on the cuBLASLt path the value
 * is returned (after a wait) and *device_total left alone. A step's modules then cost one wait,
 * not one each. */
double l1_penalty_add_cuda(CudaContext *ctx, float *dA, float *dB, const float *A, const float *B,
                           int out, int in, int r, float scale, float lambda, float *delta_scratch,
                           double *device_total);

/* Host <-> device helpers for tests and loading: fp32 host arrays to bf16 device and back;
 * int32 and double copies; cuda_calloc returns zeroed device memory. */
floatX *cuda_upload_bf16(const float *host, size_t n);
float *cuda_upload_f32(const float *host, size_t n);
void cuda_download_bf16(float *host, const floatX *device, size_t n);
void cuda_download_f32(float *host, const float *device, size_t n);
int32_t *cuda_upload_i32(const int32_t *host, size_t n);
void cuda_download_f64(double *host, const double *device, size_t n);
void *cuda_calloc(size_t bytes);
void cuda_free(void *device);
void cuda_synchronize(void);

#ifdef __cplusplus
}
#endif
#endif
