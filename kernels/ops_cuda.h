/*
 * ops_cuda.h - the CUDA backend's ops: the same operations and parameter lists as src/ops/ops.h,
 * on device pointers, with bf16 activations and weights (`floatX`) and fp32 statistics, LoRA
 * master weights and optimizer state. Work in progress (issue 7): the elementwise and
 * normalisation ops, AdamW and the cuBLASLt GEMM are here; attention, the vocab-parallel
 * log-probabilities and the model orchestration on the GPU are not yet. Every op is tested
 * against the CPU op (tests/cuda), which needs a GPU: without one the test reports itself skipped.
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

/* out = inp / sqrt(mean(inp^2) + eps) * weight; rstd[n] saved (fp32). */
void rmsnorm_forward_cuda(floatX *out, float *rstd, const floatX *inp, const floatX *weight, int N,
                          int C, float eps);
/* dinp += ..., dweight += ... (dweight fp32, may be NULL for a frozen weight) */
void rmsnorm_backward_cuda(floatX *dinp, float *dweight, const floatX *dout, const floatX *inp,
                           const floatX *weight, const float *rstd, int N, int C);

/* out = silu(gate) * up, and its backward (dgate += ..., dup += ...). */
void swiglu_forward_cuda(floatX *out, const floatX *gate, const floatX *up, size_t n);
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

/* Host <-> device helpers for tests and loading: fp32 host arrays to bf16 device and back. */
floatX *cuda_upload_bf16(const float *host, size_t n);
float *cuda_upload_f32(const float *host, size_t n);
void cuda_download_bf16(float *host, const floatX *device, size_t n);
void cuda_download_f32(float *host, const float *device, size_t n);
void cuda_free(void *device);
void cuda_synchronize(void);

#ifdef __cplusplus
}
#endif
#endif
