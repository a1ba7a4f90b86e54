/*
 * test_ops_cuda.c - every CUDA op against the CPU op (src/ops/ops.h, fp32) on random inputs
 * rounded to bf16 first, so both see the same numbers; tolerances are bf16's (outputs are stored
 * in bf16: about 3 significant digits). Without a GPU the test says so and reports itself skipped
 * (exit 77); it runs on the GPU machine.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ops.h"
#include "ops_cuda.h"
#include "test_util.h"
#include "util/rng.h"

static float bf16_round(float x) {
    uint32_t bits;
    memcpy(&bits, &x, 4);
    bits += 0x7FFF + ((bits >> 16) & 1); /* round to nearest even (finite values) */
    bits &= 0xFFFF0000u;
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

static float *random_bf16(size_t n, double scale, double offset, Rng *rng) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = bf16_round((float)(offset + scale * rng_normal(rng)));
    return x;
}

static void compare(const char *what, const float *gpu, const float *cpu, size_t n, double tol) {
    double err = max_rel_error(gpu, cpu, n);
    CHECK(err <= tol, "%s: max relative error %.3g > %.3g", what, err, tol);
    printf("  %-28s max rel err %.2e\n", what, err);
}

int main(void) {
    if (cuda_device_count() == 0) {
        printf("test_ops_cuda: SKIPPED: no CUDA device on this machine (run it on the GPU machine)\n");
        return 77;
    }
    Rng rng;
    rng_seed(&rng, 7);
    const int N = 37, C = 96, OC = 80, H = 4, D = 24;

    /* RMSNorm forward */
    float *x = random_bf16((size_t)N * C, 1.0, 0.0, &rng), *w = random_bf16(C, 0.2, 1.0, &rng);
    float *out = calloc((size_t)N * C, sizeof(float)), *rstd = calloc(N, sizeof(float));
    float *got = calloc((size_t)N * C, sizeof(float));
    rmsnorm_forward(out, rstd, x, w, N, C, 1e-5f);
    floatX *dx = cuda_upload_bf16(x, (size_t)N * C), *dw = cuda_upload_bf16(w, C);
    floatX *dout = cuda_upload_bf16(got, (size_t)N * C);
    float *drstd = cuda_upload_f32(rstd, N);
    rmsnorm_forward_cuda(dout, drstd, dx, dw, N, C, 1e-5f);
    cuda_download_bf16(got, dout, (size_t)N * C);
    compare("rmsnorm_forward", got, out, (size_t)N * C, 1e-2);

    /* SwiGLU forward */
    float *gate = random_bf16((size_t)N * C, 1.5, 0.0, &rng), *up = random_bf16((size_t)N * C, 1.0, 0.0, &rng);
    swiglu_forward(out, gate, up, (size_t)N * C);
    floatX *dgate = cuda_upload_bf16(gate, (size_t)N * C), *dup = cuda_upload_bf16(up, (size_t)N * C);
    swiglu_forward_cuda(dout, dgate, dup, (size_t)N * C);
    cuda_download_bf16(got, dout, (size_t)N * C);
    compare("swiglu_forward", got, out, (size_t)N * C, 1e-2);

    /* RoPE forward on [N][H][D] */
    float *q = random_bf16((size_t)N * H * D, 1.0, 0.0, &rng);
    const int max_pos = 64;
    float *cos_t = malloc(sizeof(float) * max_pos * D / 2), *sin_t = malloc(sizeof(float) * max_pos * D / 2);
    for (int p = 0; p < max_pos; p++)
        for (int i = 0; i < D / 2; i++) {
            double a = p * pow(10000.0, -2.0 * i / D);
            cos_t[p * D / 2 + i] = (float)cos(a);
            sin_t[p * D / 2 + i] = (float)sin(a);
        }
    int32_t *pos = malloc(N * sizeof(int32_t));
    for (int n = 0; n < N; n++) pos[n] = (n * 7) % max_pos;
    float *q_cpu = malloc(sizeof(float) * N * H * D);
    memcpy(q_cpu, q, sizeof(float) * N * H * D);
    rope_forward(q_cpu, cos_t, sin_t, pos, N, H, D);
    floatX *dq = cuda_upload_bf16(q, (size_t)N * H * D);
    float *dcos = cuda_upload_f32(cos_t, (size_t)max_pos * D / 2), *dsin = cuda_upload_f32(sin_t, (size_t)max_pos * D / 2);
    int32_t *dpos = (int32_t *)cuda_upload_f32((const float *)pos, N); /* 32-bit copy */
    rope_forward_cuda(dq, dcos, dsin, dpos, N, H, D);
    float *q_gpu = malloc(sizeof(float) * N * H * D);
    cuda_download_bf16(q_gpu, dq, (size_t)N * H * D);
    compare("rope_forward", q_gpu, q_cpu, (size_t)N * H * D, 1e-2);

    /* GEMM: out = x W^T (fp32 accumulation) */
    float *W = random_bf16((size_t)OC * C, 0.1, 0.0, &rng);
    float *mm = calloc((size_t)N * OC, sizeof(float)), *mm_gpu = calloc((size_t)N * OC, sizeof(float));
    matmul_forward(mm, x, W, NULL, N, C, OC, 1, 0);
    CudaContext *ctx = cuda_context_create();
    floatX *dW = cuda_upload_bf16(W, (size_t)OC * C), *dmm = cuda_upload_bf16(mm_gpu, (size_t)N * OC);
    matmul_forward_cuda(ctx, dmm, dx, dW, N, C, OC, 1.0f, 0);
    cuda_download_bf16(mm_gpu, dmm, (size_t)N * OC);
    compare("matmul_forward (cuBLASLt)", mm_gpu, mm, (size_t)N * OC, 1e-2);

    /* AdamW: fp32 master weights, same arithmetic as the CPU optimizer */
    const size_t P = 1000;
    float *p = random_bf16(P, 1.0, 0.0, &rng), *g = random_bf16(P, 0.1, 0.0, &rng);
    float *m = calloc(P, sizeof(float)), *v = calloc(P, sizeof(float));
    float *dp = cuda_upload_f32(p, P), *dg = cuda_upload_f32(g, P), *dm = cuda_upload_f32(m, P),
          *dv = cuda_upload_f32(v, P);
    for (int step = 1; step <= 3; step++) {
        for (size_t i = 0; i < P; i++) {
            double lr = 1e-3, wd = 0.01;
            float gi = g[i] * 0.5f;
            p[i] = (float)(p[i] * (1 - lr * wd));
            m[i] = m[i] + (1 - 0.9f) * (gi - m[i]);
            v[i] = 0.999f * v[i] + (1 - 0.999f) * gi * gi;
            p[i] -= (float)(lr / (1 - pow(0.9, step))) * m[i] /
                    (sqrtf(v[i]) / (float)sqrt(1 - pow(0.999, step)) + 1e-8f);
        }
        adamw_update_cuda(dp, dg, dm, dv, P, step, 1e-3, 0.9, 0.999, 1e-8, 0.01, 0.5f);
    }
    float *p_gpu = malloc(P * sizeof(float));
    cuda_download_f32(p_gpu, dp, P);
    compare("adamw_update", p_gpu, p, P, 1e-5);

    cuda_context_destroy(ctx);
    cuda_synchronize();
    return test_finish("test_ops_cuda");
}
