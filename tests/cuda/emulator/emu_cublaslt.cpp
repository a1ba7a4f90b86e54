/*
 * emu_cublaslt.cpp - cuBLASLt's matmul on the CPU, written from the library's documented
 * semantics and NOT from paft's calls (so that a wrong transpose, leading dimension or type in
 * kernels/ops_cuda.cu gives a wrong result or a refused call here, as on a GPU):
 *
 *   D = alpha op(A) op(B) + beta C, every matrix column-major (CUBLASLT_ORDER_COL): element (i, j)
 *   of a layout (type, rows, cols, ld) is at index i + j ld. op(X) is X (CUBLAS_OP_N) or its
 *   transpose (CUBLAS_OP_T): A's layout is m x k for N and k x m for T, B's k x n or n x k, C's and
 *   D's m x n, where m and n are D's rows and columns. ld >= rows. With beta = 0, C is not read.
 *   In place (C == D) needs the same layout for both.
 *
 * Types: CUBLAS_COMPUTE_32F with fp32 scale, A and B bf16 with C and D bf16 or fp32, or all fp32;
 * CUBLAS_COMPUTE_32F_FAST_TF32 with all fp32 (inputs rounded to TF32 first: truncated to 10
 * mantissa bits, the larger error of the tensor cores' possible conversions). Products and sums
 * in fp32; a bf16 D is rounded to nearest even once. Anything else is CUBLAS_STATUS_NOT_SUPPORTED.
 *
 * The heuristic returns one algorithm that remembers the problem and the preference's minimum
 * alignments (256 bytes unless set); cublasLtMatmul refuses it for another problem or for pointers
 * aligned less than it was chosen for. Every pointer must lie in device memory with the extent its
 * layout describes; alpha and beta are host pointers (the default pointer mode).
 */
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "cublasLt.h"
#include "emu_internal.h"
#include "cuda_bf16.h"

struct EmuLtHandle {
    int valid;
};
struct EmuLtMatmulDesc {
    cublasComputeType_t compute;
    cudaDataType_t scale;
    int32_t trans_a, trans_b;
};
struct EmuLtLayout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
};
struct EmuLtPreference {
    uint64_t max_workspace;
    uint32_t min_align[4]; /* A, B, C, D */
};

namespace {

const uint64_t algo_magic = 0x454D55414C474FULL; /* "EMUALGO" */

cublasStatus_t refuse(cublasStatus_t status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cublasStatus_t refuse(cublasStatus_t status, const char *fmt, ...) {
    char text[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    emu_message("cuBLASLt: %s (status %d)", text, (int)status);
    return status;
}

size_t type_bytes(cudaDataType_t t) {
    switch (t) {
    case CUDA_R_32F: return 4;
    case CUDA_R_16BF: return 2;
    case CUDA_R_64F: return 8;
    case CUDA_R_16F: return 2;
    }
    return 0;
}

const char *type_name(cudaDataType_t t) {
    switch (t) {
    case CUDA_R_32F: return "CUDA_R_32F";
    case CUDA_R_16BF: return "CUDA_R_16BF";
    case CUDA_R_64F: return "CUDA_R_64F";
    case CUDA_R_16F: return "CUDA_R_16F";
    }
    return "?";
}

struct Problem {
    uint64_t m, n, k;
};

/* The documented consistency rules and the supported type combinations. */
cublasStatus_t check_problem(const EmuLtMatmulDesc *op, const EmuLtLayout *a, const EmuLtLayout *b,
                             const EmuLtLayout *c, const EmuLtLayout *d, Problem *p) {
    if (!op || !a || !b || !c || !d)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "a NULL descriptor");
    const bool ta = op->trans_a != CUBLAS_OP_N, tb = op->trans_b != CUBLAS_OP_N;
    p->m = d->rows;
    p->n = d->cols;
    const uint64_t a_rows = ta ? a->cols : a->rows, a_cols = ta ? a->rows : a->cols;
    const uint64_t b_rows = tb ? b->cols : b->rows, b_cols = tb ? b->rows : b->cols;
    p->k = a_cols;
    if (a_rows != p->m || b_rows != p->k || b_cols != p->n || c->rows != d->rows ||
        c->cols != d->cols)
        return refuse(CUBLAS_STATUS_INVALID_VALUE,
                      "dimensions do not fit: op(A) is %llux%llu (A %llux%llu, %s), op(B) %llux%llu "
                      "(B %llux%llu, %s), C %llux%llu, D %llux%llu",
                      (unsigned long long)a_rows, (unsigned long long)a_cols,
                      (unsigned long long)a->rows, (unsigned long long)a->cols, ta ? "T" : "N",
                      (unsigned long long)b_rows, (unsigned long long)b_cols,
                      (unsigned long long)b->rows, (unsigned long long)b->cols, tb ? "T" : "N",
                      (unsigned long long)c->rows, (unsigned long long)c->cols,
                      (unsigned long long)d->rows, (unsigned long long)d->cols);
    const EmuLtLayout *all[4] = {a, b, c, d};
    for (int i = 0; i < 4; i++)
        if (all[i]->ld < 1 || (uint64_t)all[i]->ld < all[i]->rows)
            return refuse(CUBLAS_STATUS_INVALID_VALUE,
                          "matrix %c: leading dimension %lld < %llu rows (column-major)", "ABCD"[i],
                          (long long)all[i]->ld, (unsigned long long)all[i]->rows);
    if (op->scale != CUDA_R_32F || c->type != d->type || a->type != b->type)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "types A %s, B %s, C %s, D %s, scale %s",
                      type_name(a->type), type_name(b->type), type_name(c->type),
                      type_name(d->type), type_name(op->scale));
    const bool bf16_in = a->type == CUDA_R_16BF && (d->type == CUDA_R_16BF || d->type == CUDA_R_32F);
    const bool f32_all = a->type == CUDA_R_32F && d->type == CUDA_R_32F;
    const bool ok = (op->compute == CUBLAS_COMPUTE_32F && (bf16_in || f32_all)) ||
                    (op->compute == CUBLAS_COMPUTE_32F_FAST_TF32 && f32_all);
    if (!ok)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "compute type %d with A/B %s and C/D %s",
                      (int)op->compute, type_name(a->type), type_name(d->type));
    return CUBLAS_STATUS_SUCCESS;
}

uint64_t problem_key(const EmuLtMatmulDesc *op, const EmuLtLayout *const l[4]) {
    uint64_t h = 1469598103934665603ULL;
    auto mix = [&](uint64_t v) { h = (h ^ v) * 1099511628211ULL; };
    mix((uint64_t)op->compute);
    mix((uint64_t)op->trans_a);
    mix((uint64_t)op->trans_b);
    for (int i = 0; i < 4; i++) {
        mix((uint64_t)l[i]->type);
        mix(l[i]->rows);
        mix(l[i]->cols);
        mix((uint64_t)l[i]->ld);
    }
    return h;
}

unsigned alignment_of(const void *p) {
    const uintptr_t a = (uintptr_t)p;
    unsigned align = 256;
    while (align > 1 && a % align != 0) align /= 2;
    return align;
}

float tf32(float x) {
    uint32_t bits;
    std::memcpy(&bits, &x, 4);
    if ((bits & 0x7F800000u) != 0x7F800000u) bits &= 0xFFFFE000u; /* keep 10 mantissa bits */
    std::memcpy(&x, &bits, 4);
    return x;
}

float load(const void *base, cudaDataType_t t, size_t index, bool to_tf32) {
    if (t == CUDA_R_16BF) return __bfloat162float(((const __nv_bfloat16 *)base)[index]);
    const float v = ((const float *)base)[index];
    return to_tf32 ? tf32(v) : v;
}

void store(void *base, cudaDataType_t t, size_t index, float v) {
    if (t == CUDA_R_16BF) ((__nv_bfloat16 *)base)[index] = __float2bfloat16_rn(v);
    else ((float *)base)[index] = v;
}

/* the bytes a layout spans from its first element */
size_t extent_bytes(const EmuLtLayout *l) {
    if (l->rows == 0 || l->cols == 0) return 0;
    return ((l->cols - 1) * (uint64_t)l->ld + l->rows) * type_bytes(l->type);
}

} // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t *handle) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
        return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "cublasLtCreate without a device");
    *handle = new EmuLtHandle{1};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
    if (!handle) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "cublasLtDestroy(NULL)");
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *desc, cublasComputeType_t compute,
                                        cudaDataType_t scale_type) {
    *desc = new EmuLtMatmulDesc{compute, scale_type, CUBLAS_OP_N, CUBLAS_OP_N};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
    delete desc;
    return CUBLAS_STATUS_SUCCESS;
}

/* the attribute's documented type decides the size the caller must pass */
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                              cublasLtMatmulDescAttributes_t attr, const void *buf,
                                              size_t bytes) {
    if (!desc || !buf) return refuse(CUBLAS_STATUS_INVALID_VALUE, "MatmulDescSetAttribute(NULL)");
    if (attr != CUBLASLT_MATMUL_DESC_TRANSA && attr != CUBLASLT_MATMUL_DESC_TRANSB)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "matmul descriptor attribute %d is not emulated",
                      (int)attr);
    if (bytes != sizeof(int32_t))
        return refuse(CUBLAS_STATUS_INVALID_VALUE,
                      "CUBLASLT_MATMUL_DESC_TRANS%c is an int32_t, given %zu bytes",
                      attr == CUBLASLT_MATMUL_DESC_TRANSA ? 'A' : 'B', bytes);
    int32_t v;
    std::memcpy(&v, buf, 4);
    if (v != CUBLAS_OP_N && v != CUBLAS_OP_T && v != CUBLAS_OP_C)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "transpose operation %d", (int)v);
    if (v == CUBLAS_OP_C) v = CUBLAS_OP_T; /* real types: the conjugate transpose is the transpose */
    (attr == CUBLASLT_MATMUL_DESC_TRANSA ? desc->trans_a : desc->trans_b) = v;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *layout, cudaDataType_t type,
                                          uint64_t rows, uint64_t cols, int64_t ld) {
    if (type_bytes(type) == 0) return refuse(CUBLAS_STATUS_INVALID_VALUE, "layout type %d", (int)type);
    *layout = new EmuLtLayout{type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
    delete layout;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref) {
    *pref = new EmuLtPreference{0, {256, 256, 256, 256}};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    delete pref;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr,
                                                    const void *buf, size_t bytes) {
    if (!pref || !buf) return refuse(CUBLAS_STATUS_INVALID_VALUE, "PreferenceSetAttribute(NULL)");
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
        if (bytes != sizeof(uint64_t))
            return refuse(CUBLAS_STATUS_INVALID_VALUE,
                          "CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES is a uint64_t, given %zu bytes",
                          bytes);
        std::memcpy(&pref->max_workspace, buf, 8);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: {
        if (bytes != sizeof(uint32_t))
            return refuse(CUBLAS_STATUS_INVALID_VALUE,
                          "a CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT attribute is a uint32_t, given %zu "
                          "bytes",
                          bytes);
        uint32_t v;
        std::memcpy(&v, buf, 4);
        if (v == 0 || (v & (v - 1)) != 0)
            return refuse(CUBLAS_STATUS_INVALID_VALUE, "minimum alignment %u", v);
        pref->min_align[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES] = v;
        return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE:
        return CUBLAS_STATUS_SUCCESS;
    }
    return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "preference attribute %d is not emulated", (int)attr);
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[],
                                              int *returned) {
    if (!handle) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "heuristic without a handle");
    if (!pref || requested < 1 || !results || !returned)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "heuristic arguments");
    *returned = 0;
    Problem p;
    const cublasStatus_t status = check_problem(desc, a, b, c, d, &p);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    const EmuLtLayout *const l[4] = {a, b, c, d};
    memset(&results[0], 0, sizeof results[0]);
    uint64_t *algo = results[0].algo.data;
    algo[0] = algo_magic;
    algo[1] = problem_key(desc, l);
    for (int i = 0; i < 4; i++) algo[2 + i] = pref->min_align[i];
    results[0].workspaceSize = 0;
    results[0].state = CUBLAS_STATUS_SUCCESS;
    results[0].wavesCount = 1.0f;
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                              const void *alpha, const void *A, cublasLtMatrixLayout_t a,
                              const void *B, cublasLtMatrixLayout_t b, const void *beta,
                              const void *C, cublasLtMatrixLayout_t c, void *D,
                              cublasLtMatrixLayout_t d, const cublasLtMatmulAlgo_t *algo,
                              void *workspace, size_t workspace_bytes, cudaStream_t stream) {
    (void)stream;
    if (!handle) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "matmul without a handle");
    emu_stream_point();
    Problem p;
    cublasStatus_t status = check_problem(desc, a, b, c, d, &p);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    const EmuLtLayout *const l[4] = {a, b, c, d};
    if (!algo || algo->data[0] != algo_magic || algo->data[1] != problem_key(desc, l))
        return refuse(CUBLAS_STATUS_INVALID_VALUE,
                      "the algorithm was not chosen by the heuristic for this problem (m %llu, n "
                      "%llu, k %llu)",
                      (unsigned long long)p.m, (unsigned long long)p.n, (unsigned long long)p.k);
    if (!alpha || !beta || emu_memory_kind(alpha) > EMU_PINNED || emu_memory_kind(beta) > EMU_PINNED)
        return refuse(CUBLAS_STATUS_INVALID_VALUE,
                      "alpha and beta must be host pointers (the default pointer mode)");
    const float alpha_v = *(const float *)alpha, beta_v = *(const float *)beta;
    const void *const ptr[4] = {A, B, C, D};
    char why[256];
    for (int i = 0; i < 4; i++) {
        if (i == 2 && beta_v == 0.0f) continue; /* C is not read */
        if (extent_bytes(l[i]) == 0) continue;
        if (!emu_device_range(ptr[i], extent_bytes(l[i]), why))
            return refuse(CUBLAS_STATUS_INVALID_VALUE,
                          "matrix %c (%llux%llu, ld %lld, %s): %s", "ABCD"[i],
                          (unsigned long long)l[i]->rows, (unsigned long long)l[i]->cols,
                          (long long)l[i]->ld, type_name(l[i]->type), why);
        if (alignment_of(ptr[i]) < algo->data[2 + i])
            return refuse(CUBLAS_STATUS_INVALID_VALUE,
                          "matrix %c at %p is %u-byte aligned, the algorithm was chosen for %llu",
                          "ABCD"[i], ptr[i], alignment_of(ptr[i]),
                          (unsigned long long)algo->data[2 + i]);
    }
    if (C == D && (c->ld != d->ld || c->type != d->type))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "in place (C == D) with different layouts");
    if (workspace_bytes > 0 && !emu_device_range(workspace, workspace_bytes, why))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "workspace of %zu bytes: %s", workspace_bytes,
                      why);

    const bool ta = desc->trans_a != CUBLAS_OP_N, tb = desc->trans_b != CUBLAS_OP_N;
    const bool to_tf32 = desc->compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    const size_t lda = (size_t)a->ld, ldb = (size_t)b->ld, ldc = (size_t)c->ld, ldd = (size_t)d->ld;
    emu_device_open();
    for (uint64_t j = 0; j < p.n; j++)
        for (uint64_t i = 0; i < p.m; i++) {
            float acc = 0.0f;
            for (uint64_t q = 0; q < p.k; q++) {
                const float x = load(A, a->type, ta ? q + i * lda : i + q * lda, to_tf32);
                const float y = load(B, b->type, tb ? j + q * ldb : q + j * ldb, to_tf32);
                acc += x * y;
            }
            float v = alpha_v * acc;
            if (beta_v != 0.0f) v += beta_v * load(C, c->type, i + j * ldc, false);
            store(D, d->type, i + j * ldd, v);
        }
    emu_device_close();
    return CUBLAS_STATUS_SUCCESS;
}

} /* extern "C" */
