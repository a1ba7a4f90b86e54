/*
 * device_ops.h - the ops and memory functions model_device.c is written against, mapped onto one
 * backend at compile time:
 *
 *   PAFT_DEVICE_CUDA defined   act_t = bf16 (floatX), stat_t = float; kernels/ops_cuda.h,
 *                              cudaMalloc/cudaMemcpy, tensor-parallel sums by kernels/device_comm.h
 *   otherwise ("emulate")      act_t = stat_t = real; the CPU ops of ops/ops.h, malloc/memcpy,
 *                              tensor-parallel sums by parallel/collectives.h (MPI)
 *
 * Every function keeps its op's contract from ops.h (row-major, W[OC][C], backward ops ADD).
 * Only what differs between the backends lives here; model_device.c holds the sequencing.
 */
#ifndef PAFT_DEVICE_OPS_H
#define PAFT_DEVICE_OPS_H

#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "optim/adamw.h"
#include "util/common.h"

#ifdef PAFT_DEVICE_CUDA
/* ================================ CUDA ========================================================*/
#include "cuda_check.h"
#include "device_comm.h"
#include "ops_cuda.h"

#define DEVICE_BACKEND_NAME "cuda"
typedef floatX act_t;
typedef float stat_t;
_Static_assert(sizeof(real) == sizeof(float), "the CUDA backend is built with real = float");

typedef struct {
    CudaContext *cuda; /* cuBLASLt handle and workspace */
    DeviceComm *tp;    /* sums over the tensor-parallel group (NCCL, MPI or none) */
    DeviceComm *dp;    /* sums over the data-parallel group (device-resident training only) */
    MPI_Comm tp_comm, dp_comm;
    int tp_size, dp_size;
    int simple_attention; /* the unfused reference kernels instead of the fused ones */
} DevCtx;

static inline void dev_ctx_init(DevCtx *ctx, MPI_Comm tp_comm, int tp_size, int collectives,
                                int simple_attention) {
    ctx->tp_comm = tp_comm;
    ctx->tp_size = tp_size;
    ctx->simple_attention = simple_attention;
    cuda_select_local_device();
    ctx->cuda = cuda_context_create();
    ctx->tp = device_comm_create(tp_comm, (DeviceCommKind)collectives);
}
/* The data-parallel group, for device-resident training (collective over dp_comm). */
static inline void dev_ctx_set_dp(DevCtx *ctx, MPI_Comm dp_comm, int collectives) {
    ctx->dp_comm = dp_comm;
    ctx->dp_size = 1;
    if (dp_comm != MPI_COMM_SELF) CHECK_MPI(MPI_Comm_size(dp_comm, &ctx->dp_size));
    ctx->dp = device_comm_create(dp_comm, (DeviceCommKind)collectives);
}
static inline void dev_ctx_free(DevCtx *ctx) {
    device_comm_free(ctx->dp);
    device_comm_free(ctx->tp);
    cuda_context_destroy(ctx->cuda);
}
static inline const char *dev_ctx_describe(const DevCtx *ctx) { return device_comm_name(ctx->tp); }

static inline void *dev_alloc(size_t bytes) {
    void *p = NULL;
    if (bytes == 0) bytes = 1;
    cudaError_t rc = cudaMalloc(&p, bytes);
    if (rc != cudaSuccess)
        PAFT_FATAL("out of GPU memory: cudaMalloc of %.3f GiB failed (%s); try a smaller "
                   "micro_batch, model.recompute = true, or more tensor-parallel ranks",
                   (double)bytes / (1 << 30), cudaGetErrorString(rc));
    CHECK_CUDA(cudaMemset(p, 0, bytes));
    return p;
}
static inline void dev_free(void *p) {
    if (p) CHECK_CUDA(cudaFree(p));
}
static inline void dev_zero(void *p, size_t bytes) { CHECK_CUDA(cudaMemset(p, 0, bytes)); }
static inline void dev_upload(void *dst, const void *src, size_t bytes) {
    CHECK_CUDA(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
static inline void dev_download(void *dst, const void *src, size_t bytes) {
    CHECK_CUDA(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
static inline void dev_synchronize(void) { CHECK_CUDA(cudaDeviceSynchronize()); }
/* Time stamps in the device's stream, for the step profile (model_device.c): a CUDA event each.
 * dev_stamp_ms waits for the later one. */
typedef cudaEvent_t dev_stamp_t;
static inline void dev_stamp_create(dev_stamp_t *s) { CHECK_CUDA(cudaEventCreate(s)); }
static inline void dev_stamp_destroy(dev_stamp_t s) { CHECK_CUDA(cudaEventDestroy(s)); }
static inline void dev_stamp_record(dev_stamp_t *s) { CHECK_CUDA(cudaEventRecord(*s, 0)); }
static inline double dev_stamp_ms(dev_stamp_t from, dev_stamp_t to) {
    float ms = 0;
    CHECK_CUDA(cudaEventSynchronize(to));
    CHECK_CUDA(cudaEventElapsedTime(&ms, from, to));
    return ms;
}
/* Page-lock a host buffer that is copied every step (the LoRA values and gradients): copies from
 * pinned memory run at full PCIe/NVLink-C2C speed and need no bounce buffer. */
static inline void dev_pin_host(void *p, size_t bytes) {
    if (bytes) CHECK_CUDA(cudaHostRegister(p, bytes, cudaHostRegisterDefault));
}
static inline void dev_unpin_host(void *p) {
    if (p) CHECK_CUDA(cudaHostUnregister(p));
}
static inline int dev_device_count(void) { return cuda_device_count(); }
/* dst (activation type) = src (stat_t), both on the device */
static inline void dev_cast_to_act(act_t *dst, const stat_t *src, size_t n) {
    cast_f32_to_bf16_cuda(dst, src, n);
}

/* dst (activation type, device) = src (host real), converted on the device in chunks so the
 * staging buffer stays small whatever n is. */
static inline void dev_upload_as_act(act_t *dst, const real *src, size_t n) {
    const size_t chunk = (size_t)1 << 24;
    float *staging = (float *)dev_alloc((n < chunk ? n : chunk) * sizeof(float));
    for (size_t i = 0; i < n; i += chunk) {
        size_t c = n - i < chunk ? n - i : chunk;
        dev_upload(staging, src + i, c * sizeof(float));
        cast_f32_to_bf16_cuda(dst + i, staging, c);
    }
    dev_free(staging); /* cudaFree waits for the casts */
}
/* p[i] = mean + std * N(0, 1), generated on the device (`paft bench`: no host copy) */
static inline void dev_fill_normal(act_t *p, size_t n, uint64_t seed, float mean, float std) {
    fill_normal_cuda(p, n, (unsigned long long)seed, mean, std);
}
/* A rows x cols tensor into device rows ld apart (ld >= cols), from the host (fill: NULL src) or
 * made N(mean, std^2) on the device with the values the contiguous tensor would get. */
static inline void dev_put_rows(act_t *dst, int64_t ld, const real *src, int64_t rows,
                                int64_t cols, uint64_t seed, float mean, float std) {
    const size_t n = (size_t)(rows * cols);
    act_t *staging = ld == cols ? dst : (act_t *)dev_alloc(n * sizeof(act_t));
    if (src) dev_upload_as_act(staging, src, n);
    else dev_fill_normal(staging, n, seed, mean, std);
    if (staging == dst) return;
    CHECK_CUDA(cudaMemcpy2D(dst, (size_t)ld * sizeof(act_t), staging, (size_t)cols * sizeof(act_t),
                            (size_t)cols * sizeof(act_t), (size_t)rows, cudaMemcpyDeviceToDevice));
    dev_free(staging);
}

static inline void dev_allreduce_sum_act(DevCtx *ctx, act_t *buf, size_t n) {
    if (ctx->tp_size > 1) device_allreduce_sum_bf16(ctx->tp, buf, n);
}
/* fp32 sums of gradients over the data-parallel (dp = 1) or tensor-parallel (dp = 0) group */
static inline void dev_allreduce_sum_stat(DevCtx *ctx, int dp, stat_t *buf, size_t n) {
    if (dp ? ctx->dp_size > 1 : ctx->tp_size > 1)
        device_allreduce_sum_f32(dp ? ctx->dp : ctx->tp, buf, n);
}
static inline double dev_sum_squares(DevCtx *ctx, const stat_t *x, size_t n) {
    return sum_squares_cuda(ctx->cuda, x, n);
}
/* the L1 term of one module: its value added to *device_total (one double of device memory)
 * where that needs no wait, else returned */
static inline double dev_l1_penalty_add(DevCtx *ctx, stat_t *dA, stat_t *dB, const stat_t *A,
                                        const stat_t *B, int out, int in, int r, float scale,
                                        float lambda, stat_t *delta_scratch,
                                        double *device_total) {
    return l1_penalty_add_cuda(ctx->cuda, dA, dB, A, B, out, in, r, scale, lambda, delta_scratch,
                               device_total);
}
static inline void dev_adamw(stat_t *params, const stat_t *grads, stat_t *m, stat_t *v, size_t n,
                             int64_t step, double lr, const AdamWHyper *h, float grad_scale) {
    adamw_update_cuda(params, grads, m, v, n, (long long)step, lr, h->beta1, h->beta2, h->eps,
                      h->weight_decay, grad_scale);
}

static inline void dev_embedding_forward(act_t *out, const int32_t *tokens, const act_t *table,
                                         int N, int C, int vocab_start, int vocab_rows) {
    embedding_forward_cuda(out, tokens, table, N, C, vocab_start, vocab_rows);
}
/* out's (forward) and dout's (backward) rows ld apart (ld > C: the folded LoRA's padding) */
static inline void dev_rmsnorm_forward(act_t *out, int ld, stat_t *rstd, const act_t *inp,
                                       const act_t *weight, int N, int C, float eps) {
    rmsnorm_forward_ld_cuda(out, ld, rstd, inp, weight, N, C, eps);
}
static inline void dev_rmsnorm_backward(act_t *dinp, const act_t *dout, int ld,
                                        const act_t *inp, const act_t *weight,
                                        const stat_t *rstd, int N, int C) {
    rmsnorm_backward_ld_cuda(dinp, NULL, dout, ld, inp, weight, rstd, N, C);
}
static inline void dev_matmul_forward(DevCtx *ctx, act_t *out, const act_t *inp,
                                      const act_t *weight, int N, int C, int OC, float alpha,
                                      int accumulate) {
    matmul_forward_cuda(ctx->cuda, out, inp, weight, N, C, OC, alpha, accumulate);
}
static inline void dev_matmul_backward(DevCtx *ctx, act_t *dinp, stat_t *dweight,
                                       const act_t *dout, const act_t *inp, const act_t *weight,
                                       int N, int C, int OC, float alpha) {
    matmul_backward_cuda(ctx->cuda, dinp, dweight, dout, inp, weight, N, C, OC, alpha);
}
/* The input gradient alone, dinp (=|+=) alpha dout W with dinp's rows ld apart; accumulate = 0
 * writes dinp without reading it, so the first product into a gradient buffer needs no zeroing. */
static inline void dev_matmul_input_grad(DevCtx *ctx, act_t *dinp, int ld, const act_t *dout,
                                         const act_t *weight, int N, int C, int OC, float alpha,
                                         int accumulate) {
    matmul_input_grad_cuda(ctx->cuda, dinp, ld, dout, weight, N, C, OC, alpha, accumulate);
}
/* The adapters of projections that read the same input (q, k, v; gate, up) share one product
 * h = inp [A_1; A_2; ...]^T: one pass over the activations instead of one per projection, and
 * likewise for dA and the input gradient in the backward (model_device.c, "shared LoRA input").
 * The emulation keeps model.c's per-projection order, so that it stays bitwise equal to it. */
#define DEV_SHARES_LORA_INPUT 1
/* the matmuls with inp (and dinp) rows ld elements apart: columns of a wider matrix */
static inline void dev_matmul_forward_ld(DevCtx *ctx, act_t *out, const act_t *inp, int ld_inp,
                                         const act_t *weight, int N, int C, int OC, float alpha,
                                         int accumulate) {
    matmul_forward_strided_cuda(ctx->cuda, out, inp, ld_inp, weight, N, C, OC, alpha, accumulate);
}
static inline void dev_matmul_backward_ld(DevCtx *ctx, act_t *dinp, int ld_dinp, stat_t *dweight,
                                          const act_t *dout, const act_t *inp, int ld_inp,
                                          const act_t *weight, int N, int C, int OC,
                                          float alpha) {
    matmul_backward_strided_cuda(ctx->cuda, dinp, ld_dinp, dweight, dout, inp, ld_inp, weight, N,
                                 C, OC, alpha);
}
/* The LoRA of q, k, v (and of gate, up) folded into their frozen GEMMs along K (model_device.c,
 * "folded LoRA"): the GEMMs with every row stride given, and the fold of s B into a wide weight. */
#define DEV_FOLDS_LORA 1
static inline void dev_matmul_forward_lds(DevCtx *ctx, act_t *out, int ld_out, const act_t *inp,
                                          int ld_inp, const act_t *weight, int ld_weight, int N,
                                          int C, int OC, float alpha, int accumulate) {
    matmul_forward_ld_cuda(ctx->cuda, out, ld_out, inp, ld_inp, weight, ld_weight, N, C, OC, alpha,
                           accumulate);
}
static inline void dev_matmul_input_grad_lds(DevCtx *ctx, act_t *dinp, int ld_dinp,
                                             const act_t *dout, int ld_dout, const act_t *weight,
                                             int ld_weight, int N, int C, int OC, float alpha,
                                             int accumulate) {
    matmul_input_grad_ld_cuda(ctx->cuda, dinp, ld_dinp, dout, ld_dout, weight, ld_weight, N, C, OC,
                              alpha, accumulate);
}
static inline void dev_matmul_weight_grad_lds(DevCtx *ctx, stat_t *dweight, const act_t *dout,
                                              int ld_dout, const act_t *inp, int ld_inp, int N,
                                              int C, int OC, float alpha) {
    matmul_weight_grad_ld_cuda(ctx->cuda, dweight, dout, ld_dout, inp, ld_inp, N, C, OC, alpha);
}
static inline void dev_lora_fold(act_t *wide, int ld, int C, int pad, int slot, const stat_t *B,
                                 int r, float scale, int OC) {
    lora_fold_cuda(wide, ld, C, pad, slot, B, r, scale, OC);
}
/* rows x cols of src (rows ld_src apart) to dst (rows ld_dst apart), on the device */
static inline void dev_copy_rows(act_t *dst, int ld_dst, const act_t *src, int ld_src, int cols,
                                 int rows) {
    const size_t elem = sizeof(act_t);
    CHECK_CUDA(cudaMemcpy2D(dst, (size_t)ld_dst * elem, src, (size_t)ld_src * elem,
                            (size_t)cols * elem, (size_t)rows, cudaMemcpyDeviceToDevice));
}
static inline void dev_add_bias(act_t *out, const act_t *bias, int N, int OC) {
    add_bias_cuda(out, bias, N, OC);
}
static inline void dev_rope_forward(act_t *x, const stat_t *cos_t, const stat_t *sin_t,
                                    const int32_t *positions, int N, int H, int D) {
    rope_forward_cuda(x, cos_t, sin_t, positions, N, H, D);
}
static inline void dev_rope_backward(act_t *dx, const stat_t *cos_t, const stat_t *sin_t,
                                     const int32_t *positions, int N, int H, int D) {
    rope_backward_cuda(dx, cos_t, sin_t, positions, N, H, D);
}
/* Attention keeps a per-layer state for its backward. The fused kernels (attention_cuda.cu)
 * keep lse [B][Hq][T] and recompute the probabilities; the simple ones (ctx->simple_attention,
 * model.attention = simple: the first, unfused kernels, for cross-checking) keep the probabilities
 * [B][Hq][T][T]. The fused backward also needs a scratch of its own, part of the arena. */
static inline size_t dev_attention_state_count(const DevCtx *ctx, int B, int T, int Hq) {
    return ctx->simple_attention ? (size_t)B * Hq * T * T : (size_t)B * Hq * T;
}
static inline size_t dev_attention_scratch_bytes(const DevCtx *ctx, int B, int T, int Hq, int Hkv,
                                                 int D) {
    return ctx->simple_attention ? 0 : attention_backward_fused_scratch_bytes(B, T, Hq, Hkv, D);
}
static inline void dev_attention_forward(DevCtx *ctx, act_t *out, stat_t *state, const act_t *q,
                                         const act_t *k, const act_t *v, int B, int T, int Hq,
                                         int Hkv, int D) {
    if (ctx->simple_attention)
        attention_forward_cuda(out, state, q, k, v, B, T, Hq, Hkv, D);
    else
        attention_forward_fused_cuda(out, state, q, k, v, B, T, Hq, Hkv, D);
}
static inline void dev_attention_backward(DevCtx *ctx, act_t *dq, act_t *dk, act_t *dv,
                                          const act_t *dout, const act_t *out,
                                          const stat_t *state, const act_t *q, const act_t *k,
                                          const act_t *v, int B, int T, int Hq, int Hkv, int D,
                                          void *scratch, size_t scratch_bytes) {
    if (ctx->simple_attention)
        attention_backward_cuda(dq, dk, dv, dout, state, q, k, v, B, T, Hq, Hkv, D);
    else
        attention_backward_fused_cuda(dq, dk, dv, dout, out, state, q, k, v, B, T, Hq, Hkv, D,
                                      scratch, scratch_bytes);
}
static inline void dev_swiglu_forward(act_t *out, const act_t *gate, const act_t *up, size_t n) {
    swiglu_forward_cuda(out, gate, up, n);
}
/* accumulate = 0: dgate, dup are written, not added to (no zeroing needed first) */
static inline void dev_swiglu_backward(act_t *dgate, act_t *dup, const act_t *dout,
                                       const act_t *gate, const act_t *up, size_t n,
                                       int accumulate) {
    if (accumulate) swiglu_backward_cuda(dgate, dup, dout, gate, up, n);
    else swiglu_backward_store_cuda(dgate, dup, dout, gate, up, n);
}
static inline void dev_residual_forward(act_t *out, const act_t *a, const act_t *b, size_t n) {
    residual_forward_cuda(out, a, b, n);
}
static inline void dev_logits_row_max(stat_t *row_max, const act_t *logits, int N, int V) {
    logits_row_max_cuda(row_max, logits, N, V);
}
static inline void dev_logits_row_sumexp(double *sumexp, const act_t *logits,
                                         const stat_t *row_max, int N, int V) {
    logits_row_sumexp_cuda(sumexp, logits, row_max, N, V);
}
static inline void dev_logits_target(double *target_logit, const act_t *logits,
                                     const int32_t *targets, int vocab_start, int N, int V) {
    logits_target_cuda(target_logit, logits, targets, vocab_start, N, V);
}
static inline void dev_logprob_backward_shard(act_t *dlogits, const stat_t *dlogp,
                                              const act_t *logits, const stat_t *lse,
                                              const int32_t *targets, int vocab_start, int N,
                                              int V) {
    logprob_backward_shard_cuda(dlogits, dlogp, logits, lse, targets, vocab_start, N, V);
}

#else
/* ================================ emulate (host memory, CPU ops) ==============================*/
#include "loss/lora_delta.h"
#include "ops/ops.h"
#include "parallel/collectives.h"
#include "util/rng.h"

#define DEVICE_BACKEND_NAME "emulate"
typedef real act_t;
typedef real stat_t;

typedef struct {
    MPI_Comm tp_comm, dp_comm;
    int tp_size, dp_size;
    int simple_attention; /* the unfused reference kernels instead of the fused ones */
} DevCtx;

static inline void dev_ctx_init(DevCtx *ctx, MPI_Comm tp_comm, int tp_size, int collectives,
                                int simple_attention) {
    (void)collectives; /* the emulation always sums through MPI on the host */
    ctx->simple_attention = simple_attention;
    ctx->tp_comm = tp_comm;
    ctx->tp_size = tp_size;
}
static inline void dev_ctx_set_dp(DevCtx *ctx, MPI_Comm dp_comm, int collectives) {
    ctx->dp_comm = dp_comm;
    ctx->dp_size = 1;
    if (dp_comm != MPI_COMM_SELF) CHECK_MPI(MPI_Comm_size(dp_comm, &ctx->dp_size));
}
static inline void dev_ctx_free(DevCtx *ctx) { (void)ctx; }
static inline const char *dev_ctx_describe(const DevCtx *ctx) { return "mpi"; }

static inline void *dev_alloc(size_t bytes) { return paft_calloc(bytes ? bytes : 1, 1); }
static inline void dev_free(void *p) { free(p); }
static inline void dev_zero(void *p, size_t bytes) { memset(p, 0, bytes); }
static inline void dev_upload(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
static inline void dev_download(void *dst, const void *src, size_t bytes) {
    memcpy(dst, src, bytes);
}
static inline void dev_synchronize(void) {}
/* Time stamps for the step profile: the wall clock (the emulation's ops run as they are called). */
typedef double dev_stamp_t;
static inline void dev_stamp_create(dev_stamp_t *s) { *s = 0; }
static inline void dev_stamp_destroy(dev_stamp_t s) { (void)s; }
static inline void dev_stamp_record(dev_stamp_t *s) { *s = paft_seconds(); }
static inline double dev_stamp_ms(dev_stamp_t from, dev_stamp_t to) { return 1e3 * (to - from); }
static inline void dev_pin_host(void *p, size_t bytes) {}
static inline void dev_unpin_host(void *p) {}
static inline int dev_device_count(void) { return 1; }
static inline void dev_cast_to_act(act_t *dst, const stat_t *src, size_t n) {
    memcpy(dst, src, n * sizeof(act_t));
}

static inline void dev_upload_as_act(act_t *dst, const real *src, size_t n) {
    memcpy(dst, src, n * sizeof(act_t));
}
static inline void dev_fill_normal(act_t *p, size_t n, uint64_t seed, float mean, float std) {
    Rng rng;
    rng_seed(&rng, seed);
    for (size_t i = 0; i < n; i++) p[i] = (act_t)(mean + std * rng_normal(&rng));
}
static inline void dev_put_rows(act_t *dst, int64_t ld, const real *src, int64_t rows,
                                int64_t cols, uint64_t seed, float mean, float std) {
    if (ld != cols) PAFT_FATAL("emulate: row strides are the CUDA backend's alone");
    if (src) dev_upload_as_act(dst, src, (size_t)(rows * cols));
    else dev_fill_normal(dst, (size_t)(rows * cols), seed, mean, std);
}

static inline void dev_allreduce_sum_act(DevCtx *ctx, act_t *buf, size_t n) {
    if (ctx->tp_size > 1) allreduce_sum_real(buf, n, ctx->tp_comm);
}
static inline void dev_allreduce_sum_stat(DevCtx *ctx, int dp, stat_t *buf, size_t n) {
    if (dp ? ctx->dp_size > 1 : ctx->tp_size > 1)
        allreduce_sum_real(buf, n, dp ? ctx->dp_comm : ctx->tp_comm);
}
static inline double dev_sum_squares(DevCtx *ctx, const stat_t *x, size_t n) {
    return grad_sum_squares(x, n);
}
static inline double dev_l1_penalty_add(DevCtx *ctx, stat_t *dA, stat_t *dB, const stat_t *A,
                                        const stat_t *B, int out, int in, int r, float scale,
                                        float lambda, stat_t *delta_scratch,
                                        double *device_total) {
    (void)device_total;
    return l1_penalty(dA, dB, A, B, out, in, r, (real)scale, (real)lambda, delta_scratch);
}
static inline void dev_adamw(stat_t *params, const stat_t *grads, stat_t *m, stat_t *v, size_t n,
                             int64_t step, double lr, const AdamWHyper *h, float grad_scale) {
    adamw_update(params, grads, m, v, n, step, lr, h, (real)grad_scale);
}

static inline void dev_embedding_forward(act_t *out, const int32_t *tokens, const act_t *table,
                                         int N, int C, int vocab_start, int vocab_rows) {
    embedding_forward(out, tokens, table, N, C, vocab_start, vocab_rows);
}
static inline void dev_rmsnorm_forward(act_t *out, int ld, stat_t *rstd, const act_t *inp,
                                       const act_t *weight, int N, int C, float eps) {
    if (ld != C) PAFT_FATAL("emulate: row strides are the CUDA backend's alone");
    rmsnorm_forward(out, rstd, inp, weight, N, C, eps);
}
static inline void dev_rmsnorm_backward(act_t *dinp, const act_t *dout, int ld,
                                        const act_t *inp, const act_t *weight,
                                        const stat_t *rstd, int N, int C) {
    if (ld != C) PAFT_FATAL("emulate: row strides are the CUDA backend's alone");
    rmsnorm_backward(dinp, NULL, dout, inp, weight, rstd, N, C);
}
static inline void dev_matmul_forward(DevCtx *ctx, act_t *out, const act_t *inp,
                                      const act_t *weight, int N, int C, int OC, float alpha,
                                      int accumulate) {
    matmul_forward(out, inp, weight, NULL, N, C, OC, (real)alpha, accumulate);
}
static inline void dev_matmul_backward(DevCtx *ctx, act_t *dinp, stat_t *dweight,
                                       const act_t *dout, const act_t *inp, const act_t *weight,
                                       int N, int C, int OC, float alpha) {
    matmul_backward(dinp, dweight, NULL, dout, inp, weight, N, C, OC, (real)alpha);
}
static inline void dev_matmul_input_grad(DevCtx *ctx, act_t *dinp, int ld, const act_t *dout,
                                         const act_t *weight, int N, int C, int OC, float alpha,
                                         int accumulate) {
    if (ld != C) PAFT_FATAL("emulate: strided input gradients are the CUDA backend's alone");
    if (!accumulate) memset(dinp, 0, (size_t)N * C * sizeof *dinp);
    matmul_backward(dinp, NULL, NULL, dout, NULL, weight, N, C, OC, (real)alpha);
}
#define DEV_SHARES_LORA_INPUT 0 /* model.c's order: one LoRA product per projection */
#define DEV_FOLDS_LORA 0        /* nor folded into the frozen GEMMs */
static inline void dev_add_bias(act_t *out, const act_t *bias, int N, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) out[(size_t)n * OC + o] += bias[o];
}
static inline void dev_rope_forward(act_t *x, const stat_t *cos_t, const stat_t *sin_t,
                                    const int32_t *positions, int N, int H, int D) {
    rope_forward(x, cos_t, sin_t, positions, N, H, D);
}
static inline void dev_rope_backward(act_t *dx, const stat_t *cos_t, const stat_t *sin_t,
                                     const int32_t *positions, int N, int H, int D) {
    rope_backward(dx, cos_t, sin_t, positions, N, H, D);
}
static inline size_t dev_attention_state_count(const DevCtx *ctx, int B, int T, int Hq) {
    /* the CPU ops' state: each row's log-sum-exp (fused), or its probabilities (simple) */
    return ctx->simple_attention ? (size_t)B * Hq * T * T : (size_t)B * Hq * T;
}
static inline size_t dev_attention_scratch_bytes(const DevCtx *ctx, int B, int T, int Hq, int Hkv,
                                                 int D) {
    return 0;
}
static inline void dev_attention_forward(DevCtx *ctx, act_t *out, stat_t *state, const act_t *q,
                                         const act_t *k, const act_t *v, int B, int T, int Hq,
                                         int Hkv, int D) {
    if (ctx->simple_attention)
        attention_forward(out, state, q, k, v, B, T, Hq, Hkv, D);
    else
        attention_forward_fused(out, state, q, k, v, B, T, Hq, Hkv, D);
}
static inline void dev_attention_backward(DevCtx *ctx, act_t *dq, act_t *dk, act_t *dv,
                                          const act_t *dout, const act_t *out,
                                          const stat_t *state, const act_t *q, const act_t *k,
                                          const act_t *v, int B, int T, int Hq, int Hkv, int D,
                                          void *scratch, size_t scratch_bytes) {
    if (ctx->simple_attention)
        attention_backward(dq, dk, dv, dout, state, q, k, v, B, T, Hq, Hkv, D);
    else
        attention_backward_fused(dq, dk, dv, dout, out, state, q, k, v, B, T, Hq, Hkv, D);
}
static inline void dev_swiglu_forward(act_t *out, const act_t *gate, const act_t *up, size_t n) {
    swiglu_forward(out, gate, up, n);
}
static inline void dev_swiglu_backward(act_t *dgate, act_t *dup, const act_t *dout,
                                       const act_t *gate, const act_t *up, size_t n,
                                       int accumulate) {
    if (!accumulate) {
        memset(dgate, 0, n * sizeof *dgate);
        memset(dup, 0, n * sizeof *dup);
    }
    swiglu_backward(dgate, dup, dout, gate, up, n);
}
static inline void dev_residual_forward(act_t *out, const act_t *a, const act_t *b, size_t n) {
    residual_forward(out, a, b, n);
}
static inline void dev_logits_row_max(stat_t *row_max, const act_t *logits, int N, int V) {
    logits_row_max(row_max, logits, N, V);
}
static inline void dev_logits_row_sumexp(double *sumexp, const act_t *logits,
                                         const stat_t *row_max, int N, int V) {
    logits_row_sumexp(sumexp, logits, row_max, N, V);
}
static inline void dev_logits_target(double *target_logit, const act_t *logits,
                                     const int32_t *targets, int vocab_start, int N, int V) {
    logits_target(target_logit, logits, targets, vocab_start, N, V);
}
static inline void dev_logprob_backward_shard(act_t *dlogits, const stat_t *dlogp,
                                              const act_t *logits, const stat_t *lse,
                                              const int32_t *targets, int vocab_start, int N,
                                              int V) {
    logprob_backward_shard(dlogits, dlogp, logits, lse, targets, vocab_start, N, V);
}
#endif

#endif /* PAFT_DEVICE_OPS_H */
