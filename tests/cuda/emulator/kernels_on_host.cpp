/*
 * kernels_on_host.cpp - the fused attention and fill_normal kernels on the CPU emulator, with
 * host-memory stand-ins for the ops_cuda.h helpers that tests/cuda/test_ops_cuda.c uses (upload,
 * download, calloc, free) and for the unfused attention op (played by the CPU op on the
 * bf16-rounded values). Linked with test_ops_cuda_fused.c by run.sh --tests. "Device" memory is
 * host memory here, so AddressSanitizer checks every global index the kernels compute.
 */
#include "cuda_runtime.h"
#include "emulator.h"
#include "gen_attention.cu"
#include "gen_init.cu"
#include <cstdlib>
extern "C" {
#include "ops/ops.h"
int cuda_device_count(void) { return 1; }
floatX *cuda_upload_bf16(const float *host, size_t n) {
    floatX *d = (floatX *)malloc(n * sizeof(floatX) + 1);
    for (size_t i = 0; i < n; i++) d[i] = __float2bfloat16(host[i]);
    return d;
}
float *cuda_upload_f32(const float *host, size_t n) {
    float *d = (float *)malloc(n * sizeof(float) + 1);
    memcpy(d, host, n * sizeof(float));
    return d;
}
void cuda_download_bf16(float *host, const floatX *device, size_t n) {
    for (size_t i = 0; i < n; i++) host[i] = __bfloat162float(device[i]);
}
void cuda_download_f32(float *host, const float *device, size_t n) { memcpy(host, device, n * 4); }
void *cuda_calloc(size_t bytes) { return calloc(1, bytes + 1); }
void cuda_free(void *p) { free(p); }
void cuda_synchronize(void) {}
static float *to_f(const floatX *x, size_t n) {
    float *y = (float *)malloc(n * 4 + 1);
    cuda_download_bf16(y, x, n);
    return y;
}
static void back_bf(floatX *dst, float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = __float2bfloat16(src[i]);
    free(src);
}
/* the unfused op, played by the CPU op on bf16-rounded values */
void attention_forward_cuda(floatX *out, float *probs, const floatX *q, const floatX *k, const floatX *v, int B, int T, int Hq, int Hkv, int D) {
    size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D;
    float *fq = to_f(q, nq), *fk = to_f(k, nkv), *fv = to_f(v, nkv), *fo = (float *)malloc(nq * 4);
    attention_forward(fo, probs, fq, fk, fv, B, T, Hq, Hkv, D);
    back_bf(out, fo, nq);
    free(fq); free(fk); free(fv);
}
void attention_backward_cuda(floatX *dq, floatX *dk, floatX *dv, const floatX *dout, const float *probs, const floatX *q, const floatX *k, const floatX *v, int B, int T, int Hq, int Hkv, int D) {
    size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D;
    float *fq = to_f(q, nq), *fk = to_f(k, nkv), *fv = to_f(v, nkv), *fdo = to_f(dout, nq);
    float *fdq = to_f(dq, nq), *fdk = to_f(dk, nkv), *fdv = to_f(dv, nkv);
    attention_backward(fdq, fdk, fdv, fdo, probs, fq, fk, fv, B, T, Hq, Hkv, D);
    back_bf(dq, fdq, nq); back_bf(dk, fdk, nkv); back_bf(dv, fdv, nkv);
    free(fq); free(fk); free(fv); free(fdo);
}
}
