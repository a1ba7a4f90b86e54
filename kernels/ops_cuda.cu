/*
 * ops_cuda.cu - the CUDA ops of ops_cuda.h. One kernel per op, written for clarity first: one
 * block per row for the row-wise ops (reductions in fp32 through shared memory), one thread per
 * element or per rotation pair for the elementwise ones. bf16 in memory, fp32 in registers.
 */
#include <math.h>
#include <stdlib.h>

#include "cuda_check.h"
#include "ops_cuda.h"

static const int block_size = 256;

static unsigned blocks_for(size_t n) { return (unsigned)((n + block_size - 1) / block_size); }

/* Sum of v over the block (blockDim.x a multiple of 32, at most 1024). */
__device__ static float block_sum(float v) {
    __shared__ float partial[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int warps = blockDim.x / 32;
    v = threadIdx.x < warps ? partial[threadIdx.x] : 0.0f;
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __shared__ float total;
    if (threadIdx.x == 0) total = v;
    __syncthreads();
    float result = total;
    __syncthreads(); /* partial[] and total may be reused by the next call */
    return result;
}

extern "C" int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
    return n;
}

/* ---- RMSNorm -------------------------------------------------------------------------------- */

__global__ static void rmsnorm_forward_kernel(floatX *out, float *rstd, const floatX *inp,
                                              const floatX *weight, int C, float eps) {
    const size_t row = blockIdx.x;
    const floatX *x = inp + row * C;
    float ss = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float xi = __bfloat162float(x[i]);
        ss += xi * xi;
    }
    ss = block_sum(ss);
    const float r = rsqrtf(ss / C + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        out[row * C + i] = __float2bfloat16(__bfloat162float(x[i]) * r * __bfloat162float(weight[i]));
}

extern "C" void rmsnorm_forward_cuda(floatX *out, float *rstd, const floatX *inp,
                                     const floatX *weight, int N, int C, float eps) {
    rmsnorm_forward_kernel<<<N, block_size>>>(out, rstd, inp, weight, C, eps);
    CHECK_LAUNCH();
}

/* y = x r w with r = (mean x^2 + eps)^-1/2:
 *   dx = r g - (r^3 / C) x sum_j(g_j x_j),  g = dy * w;   dw_j += sum_rows dy_j x_j r */
__global__ static void rmsnorm_backward_kernel(floatX *dinp, float *dweight, const floatX *dout,
                                               const floatX *inp, const floatX *weight,
                                               const float *rstd, int C) {
    const size_t row = blockIdx.x;
    const floatX *x = inp + row * C, *dy = dout + row * C;
    const float r = rstd[row];
    float gx = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        gx += __bfloat162float(dy[i]) * __bfloat162float(weight[i]) * __bfloat162float(x[i]);
    gx = block_sum(gx);
    const float coef = r * r * r / C * gx;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        const float xi = __bfloat162float(x[i]), dyi = __bfloat162float(dy[i]);
        const float g = dyi * __bfloat162float(weight[i]);
        floatX *d = dinp + row * C + i;
        *d = __float2bfloat16(__bfloat162float(*d) + r * g - coef * xi);
        if (dweight) atomicAdd(&dweight[i], dyi * xi * r);
    }
}

extern "C" void rmsnorm_backward_cuda(floatX *dinp, float *dweight, const floatX *dout,
                                      const floatX *inp, const floatX *weight, const float *rstd,
                                      int N, int C) {
    rmsnorm_backward_kernel<<<N, block_size>>>(dinp, dweight, dout, inp, weight, rstd, C);
    CHECK_LAUNCH();
}

/* ---- SwiGLU and residual -------------------------------------------------------------------- */

__global__ static void swiglu_forward_kernel(floatX *out, const floatX *gate, const floatX *up,
                                             size_t n) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = __bfloat162float(gate[i]);
    out[i] = __float2bfloat16(g / (1.0f + expf(-g)) * __bfloat162float(up[i]));
}

__global__ static void swiglu_backward_kernel(floatX *dgate, floatX *dup, const floatX *dout,
                                              const floatX *gate, const floatX *up, size_t n) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = __bfloat162float(gate[i]), u = __bfloat162float(up[i]);
    const float d = __bfloat162float(dout[i]);
    const float s = 1.0f / (1.0f + expf(-g));
    dgate[i] = __float2bfloat16(__bfloat162float(dgate[i]) + d * u * s * (1.0f + g * (1.0f - s)));
    dup[i] = __float2bfloat16(__bfloat162float(dup[i]) + d * g * s);
}

__global__ static void residual_forward_kernel(floatX *out, const floatX *a, const floatX *b,
                                               size_t n) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(__bfloat162float(a[i]) + __bfloat162float(b[i]));
}

extern "C" void swiglu_forward_cuda(floatX *out, const floatX *gate, const floatX *up, size_t n) {
    swiglu_forward_kernel<<<blocks_for(n), block_size>>>(out, gate, up, n);
    CHECK_LAUNCH();
}

extern "C" void swiglu_backward_cuda(floatX *dgate, floatX *dup, const floatX *dout,
                                     const floatX *gate, const floatX *up, size_t n) {
    swiglu_backward_kernel<<<blocks_for(n), block_size>>>(dgate, dup, dout, gate, up, n);
    CHECK_LAUNCH();
}

extern "C" void residual_forward_cuda(floatX *out, const floatX *a, const floatX *b, size_t n) {
    residual_forward_kernel<<<blocks_for(n), block_size>>>(out, a, b, n);
    CHECK_LAUNCH();
}

/* ---- RoPE (rotate-half), one thread per rotation pair ---------------------------------------- */

__global__ static void rope_kernel(floatX *x, const float *cos_table, const float *sin_table,
                                   const int32_t *positions, int N, int H, int D, float direction) {
    const int half = D / 2;
    size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * H * half) return;
    const int i = (int)(idx % half);
    const size_t nh = idx / half; /* row * H + head */
    const int n = (int)(nh / H);
    const size_t t = (size_t)positions[n] * half + i;
    const float c = cos_table[t], s = direction * sin_table[t];
    floatX *v = x + nh * D;
    const float x1 = __bfloat162float(v[i]), x2 = __bfloat162float(v[i + half]);
    v[i] = __float2bfloat16(x1 * c - x2 * s);
    v[i + half] = __float2bfloat16(x2 * c + x1 * s);
}

extern "C" void rope_forward_cuda(floatX *x, const float *cos_table, const float *sin_table,
                                  const int32_t *positions, int N, int H, int D) {
    rope_kernel<<<blocks_for((size_t)N * H * (D / 2)), block_size>>>(x, cos_table, sin_table,
                                                                     positions, N, H, D, 1.0f);
    CHECK_LAUNCH();
}

/* the transpose of a rotation by a is the rotation by -a */
extern "C" void rope_backward_cuda(floatX *dx, const float *cos_table, const float *sin_table,
                                   const int32_t *positions, int N, int H, int D) {
    rope_kernel<<<blocks_for((size_t)N * H * (D / 2)), block_size>>>(dx, cos_table, sin_table,
                                                                     positions, N, H, D, -1.0f);
    CHECK_LAUNCH();
}

/* ---- AdamW ------------------------------------------------------------------------------------ */

__global__ static void adamw_kernel(float *p, const float *grads, float *m, float *v, size_t n,
                                    float lr, float beta1, float beta2, float eps, float decay,
                                    float step_size, float bias2_sqrt, float grad_scale) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = grads[i] * grad_scale;
    float w = p[i] * (1.0f - lr * decay);
    const float mi = m[i] + (1.0f - beta1) * (g - m[i]);
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    p[i] = w - step_size * mi / (sqrtf(vi) / bias2_sqrt + eps);
}

extern "C" void adamw_update_cuda(float *params, const float *grads, float *m, float *v, size_t n,
                                  long long step, double lr, double beta1, double beta2, double eps,
                                  double weight_decay, float grad_scale) {
    /* the bias corrections in double on the host, as the CPU optimizer computes them */
    const double step_size = lr / (1.0 - pow(beta1, (double)step));
    const double bias2_sqrt = sqrt(1.0 - pow(beta2, (double)step));
    adamw_kernel<<<blocks_for(n), block_size>>>(params, grads, m, v, n, (float)lr, (float)beta1,
                                                (float)beta2, (float)eps, (float)weight_decay,
                                                (float)step_size, (float)bias2_sqrt, grad_scale);
    CHECK_LAUNCH();
}

/* ---- GEMM through cuBLASLt ---------------------------------------------------------------------
 * Row-major out[N][OC] = inp[N][C] W[OC][C]^T is, in cuBLAS's column-major terms,
 * out^T (OC x N) = W (OC x C) inp^T (C x N): W's memory is W^T column-major (C x OC), so A = W
 * with transa = T and lda = C; inp's memory is inp^T column-major (C x N), B with transb = N. */

struct CudaContext {
    cublasLtHandle_t lt;
    void *workspace;
    size_t workspace_size;
};

extern "C" CudaContext *cuda_context_create(void) {
    CudaContext *ctx = (CudaContext *)paft_calloc(1, sizeof(CudaContext));
    CHECK_CUBLAS(cublasLtCreate(&ctx->lt));
    ctx->workspace_size = (size_t)32 << 20; /* what cuBLASLt asks for Hopper's best kernels */
    CHECK_CUDA(cudaMalloc(&ctx->workspace, ctx->workspace_size));
    return ctx;
}

extern "C" void cuda_context_destroy(CudaContext *ctx) {
    if (!ctx) return;
    CHECK_CUDA(cudaFree(ctx->workspace));
    CHECK_CUBLAS(cublasLtDestroy(ctx->lt));
    free(ctx);
}

extern "C" void matmul_forward_cuda(CudaContext *ctx, floatX *out, const floatX *inp,
                                    const floatX *weight, int N, int C, int OC, float alpha,
                                    int accumulate) {
    cublasLtMatmulDesc_t op;
    CHECK_CUBLAS(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
    CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof trans_a));
    CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof trans_b));
    cublasLtMatrixLayout_t a, b, d;
    CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&a, CUDA_R_16BF, C, OC, C)); /* W^T as stored */
    CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&b, CUDA_R_16BF, C, N, C));  /* inp^T as stored */
    CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&d, CUDA_R_16BF, OC, N, OC)); /* out^T */
    cublasLtMatmulPreference_t pref;
    CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
    CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &ctx->workspace_size, sizeof ctx->workspace_size));
    cublasLtMatmulHeuristicResult_t heuristic;
    int found = 0;
    CHECK_CUBLAS(cublasLtMatmulAlgoGetHeuristic(ctx->lt, op, a, b, d, d, pref, 1, &heuristic, &found));
    if (found == 0) paft_fatal(__FILE__, __LINE__, "cuBLASLt has no algorithm for %d x %d x %d", N, C, OC);
    const float beta = accumulate ? 1.0f : 0.0f;
    CHECK_CUBLAS(cublasLtMatmul(ctx->lt, op, &alpha, weight, a, inp, b, &beta, out, d, out, d,
                                &heuristic.algo, ctx->workspace, ctx->workspace_size, 0));
    CHECK_CUBLAS(cublasLtMatmulPreferenceDestroy(pref));
    CHECK_CUBLAS(cublasLtMatrixLayoutDestroy(a));
    CHECK_CUBLAS(cublasLtMatrixLayoutDestroy(b));
    CHECK_CUBLAS(cublasLtMatrixLayoutDestroy(d));
    CHECK_CUBLAS(cublasLtMatmulDescDestroy(op));
}

/* ---- host <-> device ------------------------------------------------------------------------- */

extern "C" floatX *cuda_upload_bf16(const float *host, size_t n) {
    floatX *tmp = (floatX *)paft_malloc(n * sizeof(floatX));
    for (size_t i = 0; i < n; i++) tmp[i] = __float2bfloat16(host[i]);
    floatX *device;
    CHECK_CUDA(cudaMalloc(&device, n * sizeof(floatX)));
    CHECK_CUDA(cudaMemcpy(device, tmp, n * sizeof(floatX), cudaMemcpyHostToDevice));
    free(tmp);
    return device;
}

extern "C" float *cuda_upload_f32(const float *host, size_t n) {
    float *device;
    CHECK_CUDA(cudaMalloc(&device, n * sizeof(float)));
    CHECK_CUDA(cudaMemcpy(device, host, n * sizeof(float), cudaMemcpyHostToDevice));
    return device;
}

extern "C" void cuda_download_bf16(float *host, const floatX *device, size_t n) {
    floatX *tmp = (floatX *)paft_malloc(n * sizeof(floatX));
    CHECK_CUDA(cudaMemcpy(tmp, device, n * sizeof(floatX), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) host[i] = __bfloat162float(tmp[i]);
    free(tmp);
}

extern "C" void cuda_download_f32(float *host, const float *device, size_t n) {
    CHECK_CUDA(cudaMemcpy(host, device, n * sizeof(float), cudaMemcpyDeviceToHost));
}

extern "C" void cuda_free(void *device) { CHECK_CUDA(cudaFree(device)); }

extern "C" void cuda_synchronize(void) { CHECK_CUDA(cudaDeviceSynchronize()); }
