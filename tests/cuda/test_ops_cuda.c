/*
 * test_ops_cuda.c - every CUDA op against the CPU op (src/ops/ops.h, fp32) on random inputs
 * rounded to bf16 first, so both see the same numbers; tolerances are bf16's (outputs are stored
 * in bf16: about 3 significant digits). Without a GPU the test says so and reports itself skipped
 * (exit 77); it runs on the GPU machine. Backward ops are checked adding onto non-zero
 * gradients (their += semantics).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loss/lora_delta.h"
#include "ops/ops.h"
#include "ops_cuda.h"
#include "l1_fused.h"
#include "thin_gemm.h"
#include "optim/adamw.h"
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

/* n copies of value (malloc'ed) */
static float *filled(size_t n, float value) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = value;
    return x;
}

static void compare(const char *what, const float *gpu, const float *cpu, size_t n, double tol) {
    double err = max_rel_error(gpu, cpu, n);
    CHECK(err <= tol, "%s: max relative error %.3g > %.3g", what, err, tol);
    printf("  %-28s max rel err %.2e\n", what, err);
}

/* One shape of the fused attention: forward out against the CPU op, lse against a double
 * logsumexp from q and k, the backward (onto non-zero dq, dk, dv) against the CPU backward, both
 * against the unfused CUDA op, and the backward run twice for bitwise determinism. q_scale > 1
 * makes the softmax peaky (large scores: the online max matters). */
static void test_attention_fused_shape(int B, int T, int Hq, int Hkv, int D, double q_scale,
                                       Rng *rng) {
    printf("  fused attention B %d T %d Hq %d Hkv %d D %d\n", B, T, Hq, Hkv, D);
    const size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D;
    const size_t np = (size_t)B * Hq * T * T, nrows = (size_t)B * Hq * T;
    float *q = random_bf16(nq, q_scale, 0.0, rng), *k = random_bf16(nkv, 1.0, 0.0, rng);
    float *v = random_bf16(nkv, 1.0, 0.0, rng), *g_out = random_bf16(nq, 1.0, 0.0, rng);
    float *dq = random_bf16(nq, 0.1, 0.0, rng), *dk = random_bf16(nkv, 0.1, 0.0, rng);
    float *dv = random_bf16(nkv, 0.1, 0.0, rng);

    /* the CPU reference, and lse in double straight from the definition */
    float *out = malloc(nq * sizeof(float)), *probs = malloc(np * sizeof(float));
    attention_forward(out, probs, q, k, v, B, T, Hq, Hkv, D);
    float *lse = malloc(nrows * sizeof(float));
    const int group = Hq / Hkv;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++)
            for (int t = 0; t < T; t++) {
                double *s = malloc((size_t)(t + 1) * sizeof(double)), m = -INFINITY, sum = 0;
                for (int j = 0; j <= t; j++) {
                    double dot = 0;
                    for (int d = 0; d < D; d++)
                        dot += (double)q[(((size_t)b * T + t) * Hq + h) * D + d] *
                               k[(((size_t)b * T + j) * Hkv + h / group) * D + d];
                    s[j] = dot / sqrt((double)D);
                    if (s[j] > m) m = s[j];
                }
                for (int j = 0; j <= t; j++) sum += exp(s[j] - m);
                lse[((size_t)b * Hq + h) * T + t] = (float)(m + log(sum));
                free(s);
            }

    /* the fused forward; out and lse start as garbage that must be overwritten */
    floatX *d_q = cuda_upload_bf16(q, nq), *d_k = cuda_upload_bf16(k, nkv);
    floatX *d_v = cuda_upload_bf16(v, nkv), *d_gout = cuda_upload_bf16(g_out, nq);
    float *got = malloc(nq * sizeof(float)), *got_lse = malloc(nrows * sizeof(float));
    for (size_t i = 0; i < nq; i++) got[i] = 7.0f;
    for (size_t i = 0; i < nrows; i++) got_lse[i] = 7.0f;
    floatX *d_out = cuda_upload_bf16(got, nq);
    float *d_lse = cuda_upload_f32(got_lse, nrows);
    attention_forward_fused_cuda(d_out, d_lse, d_q, d_k, d_v, B, T, Hq, Hkv, D);
    cuda_download_bf16(got, d_out, nq);
    cuda_download_f32(got_lse, d_lse, nrows);
    compare("fused forward out", got, out, nq, 1e-2);
    compare("fused forward lse", got_lse, lse, nrows, 1e-5);

    /* the fused backward from the fused forward's out and lse, onto non-zero gradients: at D = 64
     * and 128 both ways of computing dq (from dS stored by the dk, dv kernel, the default, and
     * with PAFT_ATTENTION_STORED_DS=0 by recomputing S and dP), then by default in scratch with
     * no room for dS (it must recompute: the emulator stops a kernel that writes past an
     * allocation) and in scratch sized for a longer sequence (it stores dS); the last run's
     * results kept */
    float *ref_q = malloc(nq * sizeof(float)), *ref_k = malloc(nkv * sizeof(float));
    float *ref_v = malloc(nkv * sizeof(float));
    memcpy(ref_q, dq, nq * sizeof(float));
    memcpy(ref_k, dk, nkv * sizeof(float));
    memcpy(ref_v, dv, nkv * sizeof(float));
    attention_backward(ref_q, ref_k, ref_v, g_out, probs, q, k, v, B, T, Hq, Hkv, D);
    float *got_q = malloc(nq * sizeof(float)), *got_k = malloc(nkv * sizeof(float));
    float *got_v = malloc(nkv * sizeof(float));
    floatX *d_dq = cuda_upload_bf16(dq, nq), *d_dk = cuda_upload_bf16(dk, nkv);
    floatX *d_dv = cuda_upload_bf16(dv, nkv);
    /* the MMA kernels take D = 64 and 128 unless the older kernels are forced */
    const int mma = (D == 64 || D == 128) && getenv("PAFT_ATTENTION_WMMA") == NULL &&
                    getenv("PAFT_ATTENTION_FP32") == NULL;
    const int env_off = getenv("PAFT_ATTENTION_STORED_DS") && getenv("PAFT_ATTENTION_STORED_DS")[0] == '0';
    /* the ways past the first run only where the environment leaves dS stored: way 1 switches
     * it off and back */
    const char *value = getenv("PAFT_ATTENTION_STORED_DS");
    char *saved = value ? strdup(value) : NULL;
    setenv("PAFT_ATTENTION_STORED_DS", "0", 1);
    const size_t linear_bytes = attention_backward_fused_scratch_bytes(B, T, Hq, Hkv, D);
    if (saved) setenv("PAFT_ATTENTION_STORED_DS", saved, 1);
    else unsetenv("PAFT_ATTENTION_STORED_DS");
    for (int way = 0; way < (mma && !env_off ? 4 : 1); way++) {
        if (way == 1) setenv("PAFT_ATTENTION_STORED_DS", "0", 1);
        const int stored = mma && !env_off && way != 1 && way != 2;
        printf("  backward, dq %s%s\n", stored ? "from the stored dS" : "recomputing S and dP",
               way == 2 ? " (no room for dS)" : way == 3 ? " (scratch for T + 64)" : "");
        const size_t scratch_bytes = way == 2 ? linear_bytes
                                     : way == 3 ? attention_backward_fused_scratch_bytes(B, T + 64, Hq, Hkv, D)
                                                : attention_backward_fused_scratch_bytes(B, T, Hq, Hkv, D);
        /* Delta [B][Hq][T], under grouped-query attention on the MMA kernels each query head's
         * fp32 share of dk and dv (linear in T), and dS as 64 x 64 bf16 tiles where stored */
        const size_t tiles = (size_t)(T + 63) / 64;
        const size_t scratch_most = nrows * sizeof(float) + 512 + (Hq > Hkv ? 2 * nq * sizeof(float) : 0) +
                                    (stored ? (size_t)B * Hq * tiles * (tiles + 1) / 2 * 64 * 64 * 2 : 0);
        const size_t scratch_least = stored ? scratch_most - 512 : nrows * sizeof(float);
        if (way < 2)
            CHECK(scratch_bytes >= scratch_least && scratch_bytes <= scratch_most,
                  "scratch %zu bytes, expected %zu to %zu", scratch_bytes, scratch_least, scratch_most);
        /* garbage in the scratch: nothing may be read from it before it is written */
        float *garbage = filled(scratch_bytes / sizeof(float), NAN);
        void *d_scratch = cuda_upload_f32(garbage, scratch_bytes / sizeof(float));
        free(garbage);
        cuda_free(d_dq); cuda_free(d_dk); cuda_free(d_dv);
        d_dq = cuda_upload_bf16(dq, nq);
        d_dk = cuda_upload_bf16(dk, nkv);
        d_dv = cuda_upload_bf16(dv, nkv);
        attention_backward_fused_cuda(d_dq, d_dk, d_dv, d_gout, d_out, d_lse, d_q, d_k, d_v, B, T,
                                      Hq, Hkv, D, d_scratch, scratch_bytes);
        cuda_download_bf16(got_q, d_dq, nq);
        cuda_download_bf16(got_k, d_dk, nkv);
        cuda_download_bf16(got_v, d_dv, nkv);
        /* the same backward again from the same starting gradients: bitwise the same (no
         * atomics; each way of computing dq once) */
        if (way < 2) {
            float *again = malloc(nq * sizeof(float));
            floatX *d_dq2 = cuda_upload_bf16(dq, nq), *d_dk2 = cuda_upload_bf16(dk, nkv);
            floatX *d_dv2 = cuda_upload_bf16(dv, nkv);
            attention_backward_fused_cuda(d_dq2, d_dk2, d_dv2, d_gout, d_out, d_lse, d_q, d_k, d_v,
                                          B, T, Hq, Hkv, D, d_scratch, scratch_bytes);
            cuda_download_bf16(again, d_dq2, nq);
            CHECK(memcmp(again, got_q, nq * sizeof(float)) == 0, "fused backward dq not deterministic");
            cuda_download_bf16(again, d_dk2, nkv);
            CHECK(memcmp(again, got_k, nkv * sizeof(float)) == 0, "fused backward dk not deterministic");
            cuda_download_bf16(again, d_dv2, nkv);
            CHECK(memcmp(again, got_v, nkv * sizeof(float)) == 0, "fused backward dv not deterministic");
            cuda_free(d_dq2); cuda_free(d_dk2); cuda_free(d_dv2);
            free(again);
        }
        compare("fused backward dq", got_q, ref_q, nq, 1e-2);
        compare("fused backward dk", got_k, ref_k, nkv, 1e-2);
        compare("fused backward dv", got_v, ref_v, nkv, 1e-2);
        cuda_free(d_scratch);
        if (way == 1) {
            if (saved) setenv("PAFT_ATTENTION_STORED_DS", saved, 1);
            else unsetenv("PAFT_ATTENTION_STORED_DS");
        }
    }
    free(saved);

    /* under grouped-query attention, the dk, dv blocks per KV head over the group's heads
     * (PAFT_ATTENTION_KV_PER_GROUP=1) instead of per query head with fp32 shares: dk and dv
     * summed in another order, so against the CPU */
    if (mma && Hq > Hkv) {
        printf("  backward, dk and dv per KV head over its group\n");
        setenv("PAFT_ATTENTION_KV_PER_GROUP", "1", 1);
        const size_t scratch_bytes = attention_backward_fused_scratch_bytes(B, T, Hq, Hkv, D);
        void *d_scratch = cuda_calloc(scratch_bytes);
        floatX *r_dq = cuda_upload_bf16(dq, nq), *r_dk = cuda_upload_bf16(dk, nkv);
        floatX *r_dv = cuda_upload_bf16(dv, nkv);
        attention_backward_fused_cuda(r_dq, r_dk, r_dv, d_gout, d_out, d_lse, d_q, d_k, d_v, B, T,
                                      Hq, Hkv, D, d_scratch, scratch_bytes);
        unsetenv("PAFT_ATTENTION_KV_PER_GROUP");
        float *again = malloc(nq * sizeof(float));
        cuda_download_bf16(again, r_dq, nq);
        compare("per-group backward dq", again, ref_q, nq, 1e-2);
        cuda_download_bf16(again, r_dk, nkv);
        compare("per-group backward dk", again, ref_k, nkv, 1e-2);
        cuda_download_bf16(again, r_dv, nkv);
        compare("per-group backward dv", again, ref_v, nkv, 1e-2);
        cuda_free(r_dq); cuda_free(r_dk); cuda_free(r_dv); cuda_free(d_scratch);
        free(again);
    }

    /* the unfused CUDA op on the same inputs: forward, and its backward from its own probs. Each
     * gradient is within 1e-2 of the CPU op's, so the two differ by at most 2e-2 (the fused one
     * takes Delta from the bf16 out, the unfused one from its fp32 probs). */
    {
        float *unf = malloc(nq * sizeof(float));
        float *d_probs = cuda_calloc(np * sizeof(float));
        floatX *d_out2 = cuda_upload_bf16(out, nq);
        attention_forward_cuda(d_out2, d_probs, d_q, d_k, d_v, B, T, Hq, Hkv, D);
        cuda_download_bf16(unf, d_out2, nq);
        compare("fused vs unfused out", got, unf, nq, 1e-2);
        floatX *u_dq = cuda_upload_bf16(dq, nq), *u_dk = cuda_upload_bf16(dk, nkv);
        floatX *u_dv = cuda_upload_bf16(dv, nkv);
        attention_backward_cuda(u_dq, u_dk, u_dv, d_gout, d_probs, d_q, d_k, d_v, B, T, Hq, Hkv, D);
        cuda_download_bf16(unf, u_dq, nq);
        compare("fused vs unfused dq", got_q, unf, nq, 2e-2);
        cuda_download_bf16(unf, u_dk, nkv);
        compare("fused vs unfused dk", got_k, unf, nkv, 2e-2);
        cuda_download_bf16(unf, u_dv, nkv);
        compare("fused vs unfused dv", got_v, unf, nkv, 2e-2);
        cuda_free(d_probs); cuda_free(d_out2); cuda_free(u_dq); cuda_free(u_dk); cuda_free(u_dv);
        free(unf);
    }

    cuda_free(d_q); cuda_free(d_k); cuda_free(d_v); cuda_free(d_gout); cuda_free(d_out);
    cuda_free(d_lse); cuda_free(d_dq); cuda_free(d_dk); cuda_free(d_dv);
    free(q); free(k); free(v); free(g_out); free(dq); free(dk); free(dv); free(out); free(probs);
    free(lse); free(got); free(got_lse); free(got_q); free(got_k); free(got_v); free(ref_q);
    free(ref_k); free(ref_v);
}

/* Shapes that cover the tiling: T not a multiple of the tiles (64 forward; 64, 32 or 16 in the
 * backward by D) and T = 1; groups Hq / Hkv of 1, 4 and 8; D = 64, 128 and 256 (the other tile
 * sizes) and 80 (padded to 128 inside); B = 2. */
static void test_attention_fused(Rng *rng) {
    test_attention_fused_shape(2, 70, 4, 4, 64, 1.0, rng);
    test_attention_fused_shape(2, 1, 8, 1, 128, 1.0, rng);
    test_attention_fused_shape(2, 100, 8, 2, 128, 1.0, rng);
    test_attention_fused_shape(2, 130, 4, 1, 64, 3.0, rng);
    test_attention_fused_shape(2, 45, 4, 2, 80, 1.0, rng);
    test_attention_fused_shape(1, 40, 2, 1, 256, 1.0, rng);
}

/* fill_normal_cuda: the moments and the one-sigma mass of 10^6 samples; the same seed twice gives
 * the same values, a shorter fill the same prefix (independent of the launch shape), another
 * seed other values. */
static void test_fill_normal(void) {
    const size_t n = 1000000, n_short = 1000;
    const float mean = 0.5f, std = 2.0f;
    floatX *d_a = cuda_calloc(n * sizeof(floatX)), *d_b = cuda_calloc(n * sizeof(floatX));
    floatX *d_c = cuda_calloc(n * sizeof(floatX)), *d_s = cuda_calloc(n_short * sizeof(floatX));
    fill_normal_cuda(d_a, n, 42, mean, std);
    fill_normal_cuda(d_b, n, 42, mean, std);
    fill_normal_cuda(d_c, n, 43, mean, std);
    fill_normal_cuda(d_s, n_short, 42, mean, std);
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    float *c = malloc(n * sizeof(float)), *s = malloc(n_short * sizeof(float));
    cuda_download_bf16(a, d_a, n);
    cuda_download_bf16(b, d_b, n);
    cuda_download_bf16(c, d_c, n);
    cuda_download_bf16(s, d_s, n_short);
    double sum = 0, sum2 = 0;
    size_t within = 0, equal_other_seed = 0;
    for (size_t i = 0; i < n; i++) {
        sum += a[i];
        sum2 += (double)a[i] * a[i];
        within += fabs(a[i] - mean) < std;
        equal_other_seed += a[i] == c[i];
    }
    const double m = sum / n, sd = sqrt(sum2 / n - m * m), frac = (double)within / n;
    printf("  fill_normal: mean %.4f std %.4f, %.4f within one std\n", m, sd, frac);
    CHECK(fabs(m - mean) < 0.01 * std, "fill_normal mean %.4f, expected %.4f", m, mean);
    CHECK(fabs(sd / std - 1.0) < 0.01, "fill_normal std %.4f, expected %.4f", sd, std);
    CHECK(fabs(frac - 0.6827) < 0.01, "fill_normal: %.4f within one std, expected 0.6827", frac);
    CHECK(memcmp(a, b, n * sizeof(float)) == 0, "fill_normal: same seed, different values");
    CHECK(memcmp(a, s, n_short * sizeof(float)) == 0, "fill_normal: a shorter fill differs");
    CHECK(equal_other_seed < n / 100, "fill_normal: seeds 42 and 43 agree on %zu of %zu values",
          equal_other_seed, n);
    cuda_free(d_a); cuda_free(d_b); cuda_free(d_c); cuda_free(d_s);
    free(a); free(b); free(c); free(s);
}

/* The device model's support kernels and reductions against the CPU: the fp32 -> bf16 cast
 * (ties to even, exactly), the bias add (exactly: the same fp32 sum, rounded once), the
 * deterministic sum of squares (grid-stride over more elements than the grid has threads), and
 * PAFT's L1 term with its gradients. The L1 factors are rounded to bf16 first: such values are
 * exact in TF32, so the GPU's TF32 products equal the CPU's fp32 ones and every sign(delta)
 * agrees; the products' transposes and leading dimensions are what this checks. */
/* n fp32 values of scale N(0, 1), not rounded to bf16 (the fused L1 term splits fp32 factors) */
static float *random_f32(size_t n, double scale, Rng *rng) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * rng_normal(rng));
    return x;
}

/* One module's L1 term against the CPU's l1_penalty, onto non-zero gradients, with a NaN-filled
 * scratch. fused: the default path must be the fused kernel (l1_fused_cuda.cu), checked with
 * fp32 factors that bf16 does not hold (it splits each into two bf16); and PAFT_L1_FUSED=0 runs
 * too. Not fused (or PAFT_L1_FUSED=0): delta in the scratch by cuBLASLt on TF32 tensor cores,
 * checked with factors TF32 holds exactly (bf16 values), as TF32's 10-bit mantissa flips the
 * sign of near-zero deltas. */
static void l1_check(CudaContext *ctx, int out_f, int in_f, int rank, int fused_env, int fp32, Rng *rng) {
    const float scale = 2.0f, lambda = 0.01f;
    const size_t na = (size_t)rank * in_f, nb = (size_t)out_f * rank;
    float *A = fp32 ? random_f32(na, 1.0, rng) : random_bf16(na, 1.0, 0.0, rng);
    float *B = fp32 ? random_f32(nb, 1.0, rng) : random_bf16(nb, 1.0, 0.0, rng);
    float *dA = random_f32(na, 0.1, rng), *dB = random_f32(nb, 0.1, rng);
    float *d_dA = cuda_upload_f32(dA, na), *d_dB = cuda_upload_f32(dB, nb);
    float *delta = malloc((size_t)out_f * in_f * sizeof(float));
    const double want = l1_penalty(dA, dB, A, B, out_f, in_f, rank, scale, lambda, delta);
    float *d_A = cuda_upload_f32(A, na), *d_B = cuda_upload_f32(B, nb);
    float *nans = filled((size_t)out_f * in_f, NAN);
    float *d_delta = cuda_upload_f32(nans, (size_t)out_f * in_f);
    const int takes = fused_env && l1_penalty_fused_supported(out_f, in_f, rank, (size_t)out_f * in_f * sizeof(float));
    CHECK(takes || !fp32, "L1 term %d x %d r %d: the fused kernel must take fp32 factors", out_f, in_f, rank);
    printf("  L1 term %d x %d, r %d, %s factors, %s\n", out_f, in_f, rank, fp32 ? "fp32" : "bf16",
           takes ? "fused" : "delta in memory (TF32)");
    if (!fused_env) setenv("PAFT_L1_FUSED", "0", 1);
    const double have = l1_penalty_cuda(ctx, d_dA, d_dB, d_A, d_B, out_f, in_f, rank, scale, lambda, d_delta);
    unsetenv("PAFT_L1_FUSED");
    CHECK(fabs(have - want) <= 1e-6 * want, "l1_penalty_cuda %.9g, expected %.9g", have, want);
    printf("  %-28s rel err %.2e\n", "l1_penalty value", fabs(have - want) / want);
    float *got_dA = malloc(na * sizeof(float)), *got_dB = malloc(nb * sizeof(float));
    cuda_download_f32(got_dA, d_dA, na);
    cuda_download_f32(got_dB, d_dB, nb);
    compare("l1_penalty dA", got_dA, dA, na, 1e-5);
    compare("l1_penalty dB", got_dB, dB, nb, 1e-5);
    cuda_free(d_A); cuda_free(d_B); cuda_free(d_dA); cuda_free(d_dB); cuda_free(d_delta);
    free(A); free(B); free(dA); free(dB); free(delta); free(nans); free(got_dA); free(got_dB);
}

/* l1_penalty_fused_add_cuda itself: scratch of exactly the bytes it asks for (the emulator stops
 * a kernel that writes past an allocation), NaN-filled; dA or dB NULL; constant factors, where
 * every element of delta is the same product and no error averages out (the two-part split of a
 * first version was 2.6e-5 off there); and the value added onto the device total. */
static void test_l1_fused_direct(Rng *rng) {
    const int out_f = 130, in_f = 200, rank = 16;
    const float scale = 0.5f, lambda = 0.1f;
    const size_t na = (size_t)rank * in_f, nb = (size_t)out_f * rank;
    for (int variant = 0; variant < 3; variant++) { /* 0: constant factors; 1: no dA; 2: no dB */
        float *A = variant == 0 ? filled(na, 1.0037293f) : random_f32(na, 1.0, rng);
        float *B = variant == 0 ? filled(nb, 1.0271221f) : random_f32(nb, 1.0, rng);
        float *dA = random_f32(na, 0.1, rng), *dB = random_f32(nb, 0.1, rng);
        float *dA0 = malloc(na * sizeof(float)), *dB0 = malloc(nb * sizeof(float));
        memcpy(dA0, dA, na * sizeof(float));
        memcpy(dB0, dB, nb * sizeof(float));
        float *delta = malloc((size_t)out_f * in_f * sizeof(float));
        const double want = l1_penalty(variant == 1 ? NULL : dA, variant == 2 ? NULL : dB, A, B,
                                       out_f, in_f, rank, scale, lambda, delta);
        const size_t bytes = l1_penalty_fused_scratch_bytes(out_f, in_f, rank);
        float *nans = filled((bytes + 3) / 4, NAN);
        void *d_scratch = cuda_upload_f32(nans, bytes / 4); /* bytes is a multiple of 8 */
        float *d_A = cuda_upload_f32(A, na), *d_B = cuda_upload_f32(B, nb);
        float *d_dA = cuda_upload_f32(dA0, na), *d_dB = cuda_upload_f32(dB0, nb);
        double *d_total = cuda_calloc(sizeof(double));
        l1_penalty_fused_add_cuda(variant == 1 ? NULL : d_dA, variant == 2 ? NULL : d_dB, d_A, d_B,
                                  out_f, in_f, rank, scale, lambda, d_scratch, bytes, d_total);
        double total = 0;
        cuda_download_f64(&total, d_total, 1);
        CHECK(fabs(total - want) <= 1e-6 * want, "fused L1 (variant %d): %.9g, expected %.9g",
              variant, total, want);
        /* a second module's worth adds onto the total (no gradients asked for) */
        l1_penalty_fused_add_cuda(NULL, NULL, d_A, d_B, out_f, in_f, rank, scale, lambda, d_scratch,
                                  bytes, d_total);
        cuda_download_f64(&total, d_total, 1);
        CHECK(fabs(total - 2 * want) <= 2e-6 * want, "fused L1 added twice: %.9g, expected %.9g",
              total, 2 * want);
        float *got = malloc((na > nb ? na : nb) * sizeof(float));
        cuda_download_f32(got, d_dA, na);
        compare(variant == 1 ? "fused L1 dA (not asked for)" : "fused L1 dA", got, variant == 1 ? dA0 : dA, na, 1e-5);
        cuda_download_f32(got, d_dB, nb);
        compare(variant == 2 ? "fused L1 dB (not asked for)" : "fused L1 dB", got, variant == 2 ? dB0 : dB, nb, 1e-5);
        cuda_free(d_scratch); cuda_free(d_A); cuda_free(d_B); cuda_free(d_dA); cuda_free(d_dB);
        cuda_free(d_total);
        free(A); free(B); free(dA); free(dB); free(dA0); free(dB0); free(delta); free(nans); free(got);
    }
}

/* The fused kernel at ranks padded to 16, 32, 48 and 64, sizes not multiples of its 64 x 64
 * tiles, several tiles and strips of four tiles each way; the cuBLASLt path where the partials do
 * not fit (r 64 on 64 x 72) or PAFT_L1_FUSED=0. */
static void test_l1_penalty(CudaContext *ctx, Rng *rng) {
    const struct { int out, in, r; } fused[] = {
        {40, 24, 4}, {200, 300, 16}, {128, 300, 33}, {192, 256, 48}, {128, 256, 50}};
    for (size_t i = 0; i < sizeof fused / sizeof fused[0]; i++) {
        l1_check(ctx, fused[i].out, fused[i].in, fused[i].r, 1, 1, rng);
        l1_check(ctx, fused[i].out, fused[i].in, fused[i].r, 0, 0, rng);
    }
    l1_check(ctx, 64, 72, 64, 1, 0, rng);
    test_l1_fused_direct(rng);
}

static void test_model_support(CudaContext *ctx, Rng *rng) {
    /* cast: random values, and ties between two bf16 values (1 + k/256 + 1/512) */
    const size_t n = 1000;
    float *x = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        x[i] = i % 2 ? (float)(3.0 * rng_normal(rng)) : 1.0f + (float)(i % 256) / 256 + 1.0f / 512;
    float *d_x = cuda_upload_f32(x, n);
    floatX *d_cast = cuda_calloc(n * sizeof(floatX));
    cast_f32_to_bf16_cuda(d_cast, d_x, n);
    cuda_download_bf16(got, d_cast, n);
    for (size_t i = 0; i < n; i++) x[i] = bf16_round(x[i]);
    compare("cast_f32_to_bf16", got, x, n, 0.0);

    /* bias: out [N][OC] += bias [OC] */
    const int N = 7, OC = 45;
    float *out = random_bf16((size_t)N * OC, 1.0, 0.0, rng), *bias = random_bf16(OC, 1.0, 0.0, rng);
    floatX *d_out = cuda_upload_bf16(out, (size_t)N * OC), *d_bias = cuda_upload_bf16(bias, OC);
    add_bias_cuda(d_out, d_bias, N, OC);
    float *out_gpu = malloc((size_t)N * OC * sizeof(float));
    cuda_download_bf16(out_gpu, d_out, (size_t)N * OC);
    for (int r = 0; r < N; r++)
        for (int o = 0; o < OC; o++) out[r * OC + o] = bf16_round(out[r * OC + o] + bias[o]);
    compare("add_bias", out_gpu, out, (size_t)N * OC, 0.0);

    /* sum of squares in double: 300001 values (more than the 512 x 256 threads), and 5 */
    const size_t big = 300001;
    float *g = random_bf16(big, 1.0, 0.0, rng);
    float *d_g = cuda_upload_f32(g, big);
    const size_t sizes[2] = {big, 5};
    for (int i = 0; i < 2; i++) {
        const double want = grad_sum_squares(g, sizes[i]), have = sum_squares_cuda(ctx, d_g, sizes[i]);
        CHECK(fabs(have - want) <= 1e-12 * want, "sum_squares_cuda of %zu values: %.17g, expected %.17g",
              sizes[i], have, want);
        CHECK(sum_squares_cuda(ctx, d_g, sizes[i]) == have, "sum_squares_cuda is deterministic");
        char label[64];
        snprintf(label, sizeof label, "sum_squares (%zu values)", sizes[i]);
        printf("  %-28s rel err %.2e\n", label, fabs(have - want) / want);
    }

    /* L1 term on an out x in block with rank r, onto non-zero gradients */
    const int out_f = 40, in_f = 24, rank = 4;
    const float scale = 2.0f, lambda = 0.01f;
    float *A = random_bf16((size_t)rank * in_f, 1.0, 0.0, rng), *B = random_bf16((size_t)out_f * rank, 1.0, 0.0, rng);
    float *dA = random_bf16((size_t)rank * in_f, 0.1, 0.0, rng), *dB = random_bf16((size_t)out_f * rank, 0.1, 0.0, rng);
    float *d_A = cuda_upload_f32(A, (size_t)rank * in_f), *d_B = cuda_upload_f32(B, (size_t)out_f * rank);
    float *d_dA = cuda_upload_f32(dA, (size_t)rank * in_f), *d_dB = cuda_upload_f32(dB, (size_t)out_f * rank);
    float *d_delta = cuda_calloc((size_t)out_f * in_f * sizeof(float));
    float *delta = malloc((size_t)out_f * in_f * sizeof(float));
    const double want = l1_penalty(dA, dB, A, B, out_f, in_f, rank, scale, lambda, delta);
    const double have = l1_penalty_cuda(ctx, d_dA, d_dB, d_A, d_B, out_f, in_f, rank, scale, lambda, d_delta);
    CHECK(fabs(have - want) <= 1e-6 * want, "l1_penalty_cuda %.9g, expected %.9g", have, want);
    printf("  %-28s rel err %.2e\n", "l1_penalty value", fabs(have - want) / want);
    float *dA_gpu = malloc((size_t)rank * in_f * sizeof(float)), *dB_gpu = malloc((size_t)out_f * rank * sizeof(float));
    cuda_download_f32(dA_gpu, d_dA, (size_t)rank * in_f);
    cuda_download_f32(dB_gpu, d_dB, (size_t)out_f * rank);
    compare("l1_penalty dA", dA_gpu, dA, (size_t)rank * in_f, 1e-5);
    compare("l1_penalty dB", dB_gpu, dB, (size_t)out_f * rank, 1e-5);
    /* at initialisation (B = 0) delta is 0, whose sign is 0: no penalty and no gradient */
    float *zeros = calloc((size_t)out_f * rank, sizeof(float));
    float *d_zero_B = cuda_upload_f32(zeros, (size_t)out_f * rank);
    const double at_init = l1_penalty_cuda(ctx, d_dA, d_dB, d_A, d_zero_B, out_f, in_f, rank, scale,
                                           lambda, d_delta);
    float *after = malloc((size_t)out_f * rank * sizeof(float));
    cuda_download_f32(after, d_dB, (size_t)out_f * rank);
    CHECK(at_init == 0.0, "l1_penalty_cuda with B = 0: %g, expected 0", at_init);
    compare("l1_penalty dB at B = 0", after, dB_gpu, (size_t)out_f * rank, 0.0);
    cuda_free(d_zero_B);
    free(zeros);
    free(after);

    cuda_free(d_x); cuda_free(d_cast); cuda_free(d_out); cuda_free(d_bias); cuda_free(d_g);
    cuda_free(d_A); cuda_free(d_B); cuda_free(d_dA); cuda_free(d_dB); cuda_free(d_delta);
    free(x); free(got); free(out); free(bias); free(out_gpu); free(g); free(A); free(B); free(dA);
    free(dB); free(delta); free(dA_gpu); free(dB_gpu);
}

/* ---- the memory-bound kernels' two paths -------------------------------------------------------
 * RMSNorm, SwiGLU, the residual and RoPE move 8 bf16 per 16-byte access when C (or n, or D/2) and
 * every pointer allow it, one element per access otherwise, and the elementwise ops finish a
 * tail of n % 8 elements one by one. The cases below take each path: an operand is placed
 * `offset` elements into its allocation (offset 1: 2 bytes, not 16-byte aligned), with GUARD
 * sentinel elements before and after it that no kernel may write. */

enum { GUARD = 8 };
static const float sentinel = 7.0f;

static floatX *upload_placed(const float *x, size_t n, int offset) {
    const size_t total = (size_t)offset + n + GUARD;
    float *tmp = malloc(total * sizeof(float));
    for (size_t i = 0; i < total; i++) tmp[i] = sentinel;
    memcpy(tmp + offset, x, n * sizeof(float));
    floatX *d = cuda_upload_bf16(tmp, total);
    free(tmp);
    return d;
}

/* the n values at base + offset into x; the sentinels around them must be untouched */
static void download_placed(float *x, const floatX *base, size_t n, int offset, const char *what) {
    const size_t total = (size_t)offset + n + GUARD;
    float *tmp = malloc(total * sizeof(float));
    cuda_download_bf16(tmp, base, total);
    size_t written = 0;
    for (size_t i = 0; i < total; i++)
        written += (i < (size_t)offset || i >= offset + n) && tmp[i] != sentinel;
    CHECK(written == 0, "%s: %zu elements outside the operand were written", what, written);
    memcpy(x, tmp + offset, n * sizeof(float));
    free(tmp);
}

/* SwiGLU forward and backward (onto non-zero gradients) and the residual on n elements. Operand
 * `misaligned` (0 gate / a, 1 up / b, 2 out / dgate, 3 dout, 4 dup; -1 none) is 2 bytes off
 * 16-byte alignment. */
static void test_elementwise_case(size_t n, int misaligned, Rng *rng) {
    int off[5] = {0, 0, 0, 0, 0};
    if (misaligned >= 0) off[misaligned] = 1;
    char what[96];
    float *gate = random_bf16(n, 1.5, 0.0, rng), *up = random_bf16(n, 1.0, 0.0, rng);
    float *dout = random_bf16(n, 1.0, 0.0, rng), *dgate = random_bf16(n, 1.0, 0.0, rng);
    float *dup = random_bf16(n, 1.0, 0.0, rng);
    float *ref = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) ref[i] = 50.0f; /* far from any output: one left unwritten fails */
    floatX *d_gate = upload_placed(gate, n, off[0]), *d_up = upload_placed(up, n, off[1]);
    floatX *d_out = upload_placed(ref, n, off[2]);
    floatX *d_dgate = upload_placed(dgate, n, off[2]), *d_dout = upload_placed(dout, n, off[3]);
    floatX *d_dup = upload_placed(dup, n, off[4]);

    swiglu_forward(ref, gate, up, n);
    swiglu_forward_cuda(d_out + off[2], d_gate + off[0], d_up + off[1], n);
    snprintf(what, sizeof what, "swiglu_forward n %zu misaligned %d", n, misaligned);
    download_placed(got, d_out, n, off[2], what);
    compare(what, got, ref, n, 1e-2);

    swiglu_backward(dgate, dup, dout, gate, up, n);
    swiglu_backward_cuda(d_dgate + off[2], d_dup + off[4], d_dout + off[3], d_gate + off[0],
                         d_up + off[1], n);
    snprintf(what, sizeof what, "swiglu_backward dgate n %zu misaligned %d", n, misaligned);
    download_placed(got, d_dgate, n, off[2], what);
    compare(what, got, dgate, n, 1e-2);
    snprintf(what, sizeof what, "swiglu_backward dup n %zu misaligned %d", n, misaligned);
    download_placed(got, d_dup, n, off[4], what);
    compare(what, got, dup, n, 1e-2);

    residual_forward(ref, gate, up, n);
    residual_forward_cuda(d_out + off[2], d_gate + off[0], d_up + off[1], n);
    snprintf(what, sizeof what, "residual_forward n %zu misaligned %d", n, misaligned);
    download_placed(got, d_out, n, off[2], what);
    compare(what, got, ref, n, 1e-2);

    cuda_free(d_gate); cuda_free(d_up); cuda_free(d_out); cuda_free(d_dgate); cuda_free(d_dout);
    cuda_free(d_dup);
    free(gate); free(up); free(dout); free(dgate); free(dup); free(ref); free(got);
}

/* RMSNorm forward and backward on [N][C] (backward onto non-zero dinp; dweight += when
 * with_dweight, NULL otherwise: a frozen norm). Operand `misaligned` (0 inp, 1 weight, 2 out /
 * dinp, 3 dout; -1 none) is 2 bytes off 16-byte alignment. */
static void test_rmsnorm_case(int N, int C, int misaligned, int with_dweight, Rng *rng) {
    int off[4] = {0, 0, 0, 0};
    if (misaligned >= 0) off[misaligned] = 1;
    const size_t n = (size_t)N * C;
    char what[96];
    float *x = random_bf16(n, 1.0, 0.0, rng), *w = random_bf16(C, 0.2, 1.0, rng);
    float *dout = random_bf16(n, 1.0, 0.0, rng), *dinp = random_bf16(n, 1.0, 0.0, rng);
    float *dweight = random_bf16(C, 1.0, 0.0, rng);
    float *out = malloc(n * sizeof(float)), *rstd = malloc(N * sizeof(float));
    float *got = malloc(n * sizeof(float)), *got_rstd = malloc(N * sizeof(float));
    floatX *d_x = upload_placed(x, n, off[0]), *d_w = upload_placed(w, C, off[1]);
    for (size_t i = 0; i < n; i++) got[i] = 50.0f; /* far from any output: one left unwritten fails */
    floatX *d_out = upload_placed(got, n, off[2]);
    floatX *d_dinp = upload_placed(dinp, n, off[2]), *d_dout = upload_placed(dout, n, off[3]);
    float *d_rstd = cuda_calloc(N * sizeof(float)), *d_dweight = cuda_upload_f32(dweight, C);

    rmsnorm_forward(out, rstd, x, w, N, C, 1e-5f);
    rmsnorm_forward_cuda(d_out + off[2], d_rstd, d_x + off[0], d_w + off[1], N, C, 1e-5f);
    snprintf(what, sizeof what, "rmsnorm_forward N %d C %d misaligned %d", N, C, misaligned);
    download_placed(got, d_out, n, off[2], what);
    compare(what, got, out, n, 1e-2);
    cuda_download_f32(got_rstd, d_rstd, N);
    compare("rmsnorm_forward rstd (same case)", got_rstd, rstd, N, 1e-5);

    rmsnorm_backward(dinp, with_dweight ? dweight : NULL, dout, x, w, rstd, N, C);
    rmsnorm_backward_cuda(d_dinp + off[2], with_dweight ? d_dweight : NULL, d_dout + off[3],
                          d_x + off[0], d_w + off[1], d_rstd, N, C);
    snprintf(what, sizeof what, "rmsnorm_backward N %d C %d misaligned %d%s", N, C, misaligned,
             with_dweight ? "" : " (dweight NULL)");
    download_placed(got, d_dinp, n, off[2], what);
    compare(what, got, dinp, n, 1e-2);
    if (with_dweight) {
        cuda_download_f32(got, d_dweight, C);
        compare("rmsnorm_backward dweight (same case)", got, dweight, C, 1e-3);
    }

    cuda_free(d_x); cuda_free(d_w); cuda_free(d_out); cuda_free(d_dinp); cuda_free(d_dout);
    cuda_free(d_rstd); cuda_free(d_dweight);
    free(x); free(w); free(dout); free(dinp); free(dweight); free(out); free(rstd); free(got);
    free(got_rstd);
}

/* RoPE forward then backward, in place on [N][H][D]. misaligned: 0 none, 1 x 2 bytes off
 * 16-byte alignment, 2 the cos table 4 bytes off. */
static void test_rope_case(int N, int H, int D, int misaligned, Rng *rng) {
    const int max_pos = 16, half = D / 2, x_off = misaligned == 1, cos_off = misaligned == 2;
    const size_t n = (size_t)N * H * D, table = (size_t)max_pos * half;
    char what[96];
    float *x = random_bf16(n, 1.0, 0.0, rng), *got = malloc(n * sizeof(float));
    float *cos_t = malloc((cos_off + table) * sizeof(float)), *sin_t = malloc(table * sizeof(float));
    cos_t[0] = sentinel;
    for (int p = 0; p < max_pos; p++)
        for (int i = 0; i < half; i++) {
            const double a = p * pow(10000.0, -2.0 * i / D);
            cos_t[cos_off + (size_t)p * half + i] = (float)cos(a);
            sin_t[(size_t)p * half + i] = (float)sin(a);
        }
    int32_t *pos = malloc(N * sizeof(int32_t));
    for (int r = 0; r < N; r++) pos[r] = (r * 5 + 3) % max_pos;
    floatX *d_x = upload_placed(x, n, x_off);
    float *d_cos = cuda_upload_f32(cos_t, cos_off + table), *d_sin = cuda_upload_f32(sin_t, table);
    int32_t *d_pos = cuda_upload_i32(pos, N);

    rope_forward(x, cos_t + cos_off, sin_t, pos, N, H, D);
    rope_forward_cuda(d_x + x_off, d_cos + cos_off, d_sin, d_pos, N, H, D);
    snprintf(what, sizeof what, "rope_forward N %d H %d D %d misaligned %d", N, H, D, misaligned);
    download_placed(got, d_x, n, x_off, what);
    compare(what, got, x, n, 1e-2);
    rope_backward(x, cos_t + cos_off, sin_t, pos, N, H, D);
    rope_backward_cuda(d_x + x_off, d_cos + cos_off, d_sin, d_pos, N, H, D);
    snprintf(what, sizeof what, "rope_backward N %d H %d D %d misaligned %d", N, H, D, misaligned);
    download_placed(got, d_x, n, x_off, what);
    compare(what, got, x, n, 1e-2);

    cuda_free(d_x); cuda_free(d_cos); cuda_free(d_sin); cuda_free(d_pos);
    free(x); free(got); free(cos_t); free(sin_t); free(pos);
}

static void test_memory_bound_paths(Rng *rng) {
    /* elementwise: 16-byte groups and a tail of 3; groups only; the tail alone (n < 8); each
     * operand misaligned in turn (one element per thread) */
    test_elementwise_case(1003, -1, rng);
    test_elementwise_case(1024, -1, rng);
    test_elementwise_case(5, -1, rng);
    for (int operand = 0; operand < 5; operand++) test_elementwise_case(1003, operand, rng);
    /* RMSNorm: C = 264 is 33 groups of 8 (a lane takes two), C = 256 one per lane, N = 9 spans
     * two blocks of 8 rows; C = 100 and 98 (not multiples of 8) and each operand misaligned in
     * turn take the one-element path; dweight NULL on some */
    test_rmsnorm_case(3, 264, -1, 1, rng);
    test_rmsnorm_case(9, 256, -1, 0, rng);
    test_rmsnorm_case(9, 100, -1, 1, rng);
    test_rmsnorm_case(3, 98, -1, 0, rng);
    for (int operand = 0; operand < 4; operand++) test_rmsnorm_case(3, 96, operand, operand % 2, rng);
    /* RoPE: D = 16, 32 and 64 (D/2 a multiple of 8: 16-byte groups), D = 20 and 2 (one pair per
     * thread), and D = 32 with x or the cos table misaligned */
    test_rope_case(5, 3, 16, 0, rng);
    test_rope_case(5, 3, 32, 0, rng);
    test_rope_case(4, 2, 64, 0, rng);
    test_rope_case(5, 3, 20, 0, rng);
    test_rope_case(5, 3, 2, 0, rng);
    test_rope_case(5, 3, 32, 1, rng);
    test_rope_case(5, 3, 32, 2, rng);
}

/* The ops of the folded LoRA (model_device.c): a projection's input [x | h] with G r = 16 padding
 * columns per row and its weight [W | s B in slot 1 | 0]. RMSNorm into and from rows ld apart
 * must give the contiguous op's bits and leave the padding alone; the fold writes exactly its
 * slot; the GEMMs with every leading dimension against the CPU op on packed copies. */
static void test_folded_lora_ops(CudaContext *ctx, Rng *rng) {
    const int N = 21, C = 32, r = 8, G = 2, ld = C + G * r, OC = 24, slot = 1;
    const float scale = 0.5f;
    /* RMSNorm forward into wide rows */
    float *x = random_bf16((size_t)N * C, 1.0, 0.0, rng), *w = random_bf16(C, 0.2, 1.0, rng);
    float *wide = filled((size_t)N * ld, sentinel), *flat = malloc(sizeof(float) * N * C);
    floatX *d_x = cuda_upload_bf16(x, (size_t)N * C), *d_w = cuda_upload_bf16(w, C);
    floatX *d_wide = cuda_upload_bf16(wide, (size_t)N * ld), *d_flat = cuda_upload_bf16(flat, (size_t)N * C);
    float *d_rstd = cuda_upload_f32(flat, N);
    rmsnorm_forward_ld_cuda(d_wide, ld, d_rstd, d_x, d_w, N, C, 1e-5f);
    rmsnorm_forward_cuda(d_flat, d_rstd, d_x, d_w, N, C, 1e-5f);
    cuda_download_bf16(wide, d_wide, (size_t)N * ld);
    cuda_download_bf16(flat, d_flat, (size_t)N * C);
    int same = 1, pad_kept = 1;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < ld; c++) {
            if (c < C) same &= wide[n * ld + c] == flat[n * C + c];
            else pad_kept &= wide[n * ld + c] == sentinel;
        }
    CHECK(same && pad_kept, "rmsnorm_forward_ld: the contiguous op's values, padding untouched");

    /* the fold: W' [OC][ld] = [W | 0 | s B] */
    float *Wp = random_bf16((size_t)OC * ld, 0.3, 0.0, rng), *B = random_bf16((size_t)OC * r, 0.5, 0.0, rng);
    floatX *d_Wp = cuda_upload_bf16(Wp, (size_t)OC * ld);
    float *d_B = cuda_upload_f32(B, (size_t)OC * r);
    lora_fold_cuda(d_Wp, ld, C, G * r, slot, d_B, r, scale, OC);
    float *got_Wp = malloc(sizeof(float) * OC * ld);
    cuda_download_bf16(got_Wp, d_Wp, (size_t)OC * ld);
    int folded = 1;
    for (int o = 0; o < OC; o++)
        for (int c = 0; c < ld; c++) {
            const int j = c - C;
            const float want = c < C ? Wp[o * ld + c]
                               : j / r == slot ? bf16_round(scale * B[o * r + j % r]) : 0.0f;
            folded &= got_Wp[o * ld + c] == want;
        }
    CHECK(folded, "lora_fold: W kept, s B in its slot, zeros in the others");

    /* [x | h] W'^T with K = ld, against the CPU op on the same (now contiguous) values */
    float *xh = random_bf16((size_t)N * ld, 1.0, 0.0, rng), *out = malloc(sizeof(float) * N * OC);
    float *got = malloc(sizeof(float) * N * OC);
    floatX *d_xh = cuda_upload_bf16(xh, (size_t)N * ld), *d_out = cuda_upload_bf16(out, (size_t)N * OC);
    matmul_forward(out, xh, got_Wp, NULL, N, ld, OC, 1.0f, 0);
    matmul_forward_ld_cuda(ctx, d_out, OC, d_xh, ld, d_Wp, ld, N, ld, OC, 1.0f, 0);
    cuda_download_bf16(got, d_out, (size_t)N * OC);
    compare("matmul_forward_ld (K = C + G r)", got, out, (size_t)N * OC, 1e-2);
    /* ... and K = C of the same rows (adapters off) */
    float *xp = malloc(sizeof(float) * N * C), *Wn = malloc(sizeof(float) * OC * C);
    for (int n = 0; n < N; n++) memcpy(xp + n * C, xh + n * ld, sizeof(float) * C);
    for (int o = 0; o < OC; o++) memcpy(Wn + o * C, got_Wp + o * ld, sizeof(float) * C);
    matmul_forward(out, xp, Wn, NULL, N, C, OC, 1.0f, 0);
    matmul_forward_ld_cuda(ctx, d_out, OC, d_xh, ld, d_Wp, ld, N, C, OC, 1.0f, 0);
    cuda_download_bf16(got, d_out, (size_t)N * OC);
    compare("matmul_forward_ld (K = C)", got, out, (size_t)N * OC, 1e-2);

    /* dinp [N][ld] = dout W' (written), then the weight gradient of the slot's columns:
     * dB [OC][r] += s dout^T h_slot with h_slot the slot's columns of xh */
    float *gout = random_bf16((size_t)N * OC, 1.0, 0.0, rng);
    floatX *d_gout = cuda_upload_bf16(gout, (size_t)N * OC);
    float *dinp = calloc((size_t)N * ld, sizeof(float)), *got_dinp = malloc(sizeof(float) * N * ld);
    matmul_backward(dinp, NULL, NULL, gout, NULL, got_Wp, N, ld, OC, 1.0f);
    floatX *d_dinp = cuda_upload_bf16(wide, (size_t)N * ld); /* not read */
    matmul_input_grad_ld_cuda(ctx, d_dinp, ld, d_gout, OC, d_Wp, ld, N, ld, OC, 1.0f, 0);
    cuda_download_bf16(got_dinp, d_dinp, (size_t)N * ld);
    compare("matmul_input_grad_ld [dx | dlora_h]", got_dinp, dinp, (size_t)N * ld, 1e-2);
    float *h = malloc(sizeof(float) * N * r), *dB = random_bf16((size_t)OC * r, 1.0, 0.0, rng);
    for (int n = 0; n < N; n++) memcpy(h + n * r, xh + n * ld + C + slot * r, sizeof(float) * r);
    float *d_dB = cuda_upload_f32(dB, (size_t)OC * r), *got_dB = malloc(sizeof(float) * OC * r);
    matmul_backward(NULL, dB, NULL, gout, h, NULL, N, r, OC, scale);
    matmul_weight_grad_ld_cuda(ctx, d_dB, d_gout, OC, d_xh + C + slot * r, ld, N, r, OC, scale);
    cuda_download_f32(got_dB, d_dB, (size_t)OC * r);
    compare("matmul_weight_grad_ld (strided inp)", got_dB, dB, (size_t)OC * r, 1e-3);
    /* dA [G r][C] += dlora_h^T x: dout is dinp's padding columns (rows ld apart) */
    float *dh = malloc(sizeof(float) * N * G * r), *dA = random_bf16((size_t)G * r * C, 1.0, 0.0, rng);
    for (int n = 0; n < N; n++) memcpy(dh + n * G * r, got_dinp + n * ld + C, sizeof(float) * G * r);
    float *d_dA = cuda_upload_f32(dA, (size_t)G * r * C), *got_dA = malloc(sizeof(float) * G * r * C);
    matmul_backward(NULL, dA, NULL, dh, xp, NULL, N, C, G * r, 1.0f);
    matmul_weight_grad_ld_cuda(ctx, d_dA, d_dinp + C, ld, d_xh, ld, N, C, G * r, 1.0f);
    cuda_download_f32(got_dA, d_dA, (size_t)G * r * C);
    compare("matmul_weight_grad_ld (strided dout)", got_dA, dA, (size_t)G * r * C, 1e-3);

    /* RMSNorm backward from dout rows ld apart: the contiguous op's bits */
    float *dx0 = random_bf16((size_t)N * C, 1.0, 0.0, rng), *a = malloc(sizeof(float) * N * C);
    float *b = malloc(sizeof(float) * N * C);
    floatX *d_dx1 = cuda_upload_bf16(dx0, (size_t)N * C), *d_dx2 = cuda_upload_bf16(dx0, (size_t)N * C);
    floatX *d_dflat = cuda_upload_bf16(xp, (size_t)N * C);
    rmsnorm_backward_ld_cuda(d_dx1, NULL, d_xh, ld, d_x, d_w, d_rstd, N, C);
    rmsnorm_backward_cuda(d_dx2, NULL, d_dflat, d_x, d_w, d_rstd, N, C);
    cuda_download_bf16(a, d_dx1, (size_t)N * C);
    cuda_download_bf16(b, d_dx2, (size_t)N * C);
    CHECK(memcmp(a, b, sizeof(float) * N * C) == 0, "rmsnorm_backward_ld: the contiguous op's bits");

    void *dev[] = {d_x, d_w, d_wide, d_flat, d_rstd, d_Wp, d_B, d_xh, d_out, d_gout, d_dinp,
                   d_dB, d_dA, d_dx1, d_dx2, d_dflat};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cuda_free(dev[i]);
    float *host[] = {x, w, wide, flat, Wp, B, got_Wp, xh, out, got, xp, Wn, gout, dinp, got_dinp,
                     h, dB, got_dB, dh, dA, got_dA, dx0, a, b};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
}

/* One shape of the adapters' weight gradient, dweight [OC][C] += alpha dout^T inp (rows of dout and
 * inp ld_dout and ld_inp apart), through matmul_weight_grad_ld_cuda with PAFT_THIN_WGRAD=1: against
 * a double loop over the same bf16 values, onto a non-zero dweight, twice for bitwise
 * determinism. thin: whether thin_gemm_cuda.cu must take it (else cuBLASLt does). */
static void test_thin_weight_grad_shape(CudaContext *ctx, int N, int C, int OC, int ld_dout,
                                        int ld_inp, float alpha, int thin, Rng *rng) {
    printf("  thin weight grad N %d C %d OC %d (ld %d, %d)\n", N, C, OC, ld_dout, ld_inp);
    float *dout = random_bf16((size_t)N * ld_dout, 1.0, 0.0, rng);
    float *inp = random_bf16((size_t)N * ld_inp, 1.0, 0.0, rng);
    float *dw = random_bf16((size_t)OC * C, 1.0, 0.0, rng), *want = malloc(sizeof(float) * OC * C);
    for (int o = 0; o < OC; o++)
        for (int c = 0; c < C; c++) {
            double sum = 0;
            for (int n = 0; n < N; n++)
                sum += (double)dout[(size_t)n * ld_dout + o] * inp[(size_t)n * ld_inp + c];
            want[(size_t)o * C + c] = (float)(dw[(size_t)o * C + c] + alpha * sum);
        }
    floatX *d_dout = cuda_upload_bf16(dout, (size_t)N * ld_dout);
    floatX *d_inp = cuda_upload_bf16(inp, (size_t)N * ld_inp);
    const size_t workspace = (size_t)32 << 20; /* the context's */
    const int takes = C <= OC ? thin_weight_grad_supported(d_dout, ld_dout, d_inp, ld_inp, N, OC, C, workspace)
                              : thin_weight_grad_supported(d_inp, ld_inp, d_dout, ld_dout, N, C, OC, workspace);
    CHECK(takes == thin, "thin_weight_grad_supported: %d, expected %d", takes, thin);
    float *got = malloc(sizeof(float) * OC * C), *again = malloc(sizeof(float) * OC * C);
    setenv("PAFT_THIN_WGRAD", "1", 1);
    for (int run = 0; run < 2; run++) {
        float *d_dw = cuda_upload_f32(dw, (size_t)OC * C);
        matmul_weight_grad_ld_cuda(ctx, d_dw, d_dout, ld_dout, d_inp, ld_inp, N, C, OC, alpha);
        cuda_download_f32(run ? again : got, d_dw, (size_t)OC * C);
        cuda_free(d_dw);
    }
    unsetenv("PAFT_THIN_WGRAD");
    compare(thin ? "thin weight grad (thin kernel)" : "thin weight grad (cuBLASLt)", got, want,
            (size_t)OC * C, 1e-3);
    CHECK(memcmp(got, again, sizeof(float) * OC * C) == 0, "thin weight grad not deterministic");
    cuda_free(d_dout);
    cuda_free(d_inp);
    free(dout); free(inp); free(dw); free(want); free(got); free(again);
}

/* thin_weight_grad_cuda called directly: a workspace full of NaN (no partial sum may be read
 * before it is written), room in it for only one or three chunks (the memory limit on the
 * chunking), an H100's 132 SMs (the finest chunking), thin sides past one 64-column tile; and the
 * shapes it must refuse. */
static void test_thin_weight_grad_direct(Rng *rng) {
    const struct { int N, F, J, transposed, chunks_room; } cases[] = {
        {300, 136, 136, 1, 1}, {200, 256, 256, 0, 3}, {1000, 64, 24, 1, 0}, {65, 8, 8, 0, 0}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int N = cases[c].N, F = cases[c].F, J = cases[c].J, tr = cases[c].transposed;
        const size_t chunk_bytes = (size_t)F * J * sizeof(float);
        const size_t ws_bytes = cases[c].chunks_room ? cases[c].chunks_room * chunk_bytes : (size_t)4 << 20;
        printf("  thin_weight_grad_cuda N %d F %d J %d%s, workspace %zu bytes\n", N, F, J,
               tr ? " transposed" : "", ws_bytes);
        float *X = random_bf16((size_t)N * F, 1.0, 0.0, rng), *Y = random_bf16((size_t)N * J, 1.0, 0.0, rng);
        float *out = random_bf16((size_t)F * J, 1.0, 0.0, rng), *want = malloc(chunk_bytes);
        const float alpha = 0.75f;
        for (int f = 0; f < F; f++)
            for (int j = 0; j < J; j++) {
                double sum = 0;
                for (int t = 0; t < N; t++) sum += (double)X[(size_t)t * F + f] * Y[(size_t)t * J + j];
                const size_t e = tr ? (size_t)j * F + f : (size_t)f * J + j;
                want[e] = (float)(out[e] + alpha * sum);
            }
        floatX *d_X = cuda_upload_bf16(X, (size_t)N * F), *d_Y = cuda_upload_bf16(Y, (size_t)N * J);
        float *nans = filled(ws_bytes / sizeof(float), NAN);
        float *d_ws = cuda_upload_f32(nans, ws_bytes / sizeof(float)), *d_out = cuda_upload_f32(out, (size_t)F * J);
        CHECK(thin_weight_grad_supported(d_X, F, d_Y, J, N, F, J, ws_bytes), "supported");
        thin_weight_grad_cuda(d_out, tr, d_X, F, d_Y, J, N, F, J, alpha, d_ws, ws_bytes, 132);
        float *got = malloc(chunk_bytes);
        cuda_download_f32(got, d_out, (size_t)F * J);
        compare("thin_weight_grad_cuda", got, want, (size_t)F * J, 1e-3);
        /* refused: a side past 256, rows not whole 16-byte pieces, no room for one chunk */
        CHECK(!thin_weight_grad_supported(d_X, F, d_Y, J, N, F, 264, (size_t)1 << 30), "J 264 refused");
        CHECK(!thin_weight_grad_supported(d_X + 1, F, d_Y, J, N, F, J, ws_bytes), "misaligned X refused");
        CHECK(!thin_weight_grad_supported(d_X, F, d_Y, J, N, F, J, chunk_bytes - 1), "small workspace refused");
        cuda_free(d_X); cuda_free(d_Y); cuda_free(d_ws); cuda_free(d_out);
        free(X); free(Y); free(out); free(want); free(nans); free(got);
    }
}

/* dB-like (C = r thin, out as is) and dA-like (OC = G r thin, out transposed) shapes: tokens not
 * a multiple of the 32-token stage and split in several chunks, features not a multiple of the
 * 128-row block, thin sides of 8 to 80 (16-, 32- and 64-column tiles, two tiles past 64), strided
 * rows; and a rank of 4, which the kernel does not take (16-byte rows), on cuBLASLt. */
static void test_thin_weight_grad(CudaContext *ctx, Rng *rng) {
    test_thin_weight_grad_shape(ctx, 300, 16, 520, 520, 24, 0.5f, 1, rng);
    test_thin_weight_grad_shape(ctx, 1000, 264, 48, 48, 272, 1.0f, 1, rng);
    test_thin_weight_grad_shape(ctx, 97, 80, 128, 136, 80, 2.0f, 1, rng);
    test_thin_weight_grad_shape(ctx, 33, 8, 200, 200, 8, 1.0f, 1, rng);
    test_thin_weight_grad_shape(ctx, 70, 32, 96, 96, 32, 1.0f, 1, rng);
    test_thin_weight_grad_shape(ctx, 64, 4, 128, 128, 4, 1.0f, 0, rng);
}

/* --misaligned: the MMA attention given q two bytes past a 16-byte boundary must end the job
 * naming the tensor (cp.async would fault with an illegal address instead); the test expects the
 * message and a non-zero exit. */
static int attention_misaligned(void) {
    const int B = 1, T = 8, H = 1, D = 64;
    const size_t n = (size_t)B * T * H * D;
    floatX *q = cuda_calloc((n + 8) * sizeof(floatX)), *k = cuda_calloc(n * sizeof(floatX));
    floatX *v = cuda_calloc(n * sizeof(floatX)), *out = cuda_calloc(n * sizeof(floatX));
    float *lse = cuda_calloc((size_t)B * H * T * sizeof(float));
    attention_forward_fused_cuda(out, lse, q + 1, k, v, B, T, H, H, D);
    printf("test_ops_cuda: a misaligned q was accepted\n");
    return 1;
}

int main(int argc, char **argv) {
    if (cuda_device_count() == 0) {
        printf("test_ops_cuda: SKIPPED: no CUDA device on this machine (run it on the GPU machine)\n");
        return 77;
    }
    if (argc > 1 && strcmp(argv[1], "--misaligned") == 0) return attention_misaligned();
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
    {
        float *rstd_gpu = malloc(N * sizeof(float));
        cuda_download_f32(rstd_gpu, drstd, N);
        compare("rmsnorm_forward rstd", rstd_gpu, rstd, N, 1e-5);
        /* backward onto non-zero dinp and dweight (+=) */
        float *g_out = random_bf16((size_t)N * C, 1.0, 0.0, &rng);
        float *dinp = random_bf16((size_t)N * C, 1.0, 0.0, &rng), *dweight = random_bf16(C, 1.0, 0.0, &rng);
        floatX *d_gout = cuda_upload_bf16(g_out, (size_t)N * C), *d_dinp = cuda_upload_bf16(dinp, (size_t)N * C);
        float *d_dweight = cuda_upload_f32(dweight, C);
        rmsnorm_backward(dinp, dweight, g_out, x, w, rstd, N, C);
        rmsnorm_backward_cuda(d_dinp, d_dweight, d_gout, dx, dw, drstd, N, C);
        float *dinp_gpu = malloc(sizeof(float) * N * C), *dweight_gpu = malloc(sizeof(float) * C);
        cuda_download_bf16(dinp_gpu, d_dinp, (size_t)N * C);
        cuda_download_f32(dweight_gpu, d_dweight, C);
        compare("rmsnorm_backward dinp", dinp_gpu, dinp, (size_t)N * C, 1e-2);
        compare("rmsnorm_backward dweight", dweight_gpu, dweight, C, 1e-3);
        cuda_free(d_gout); cuda_free(d_dinp); cuda_free(d_dweight);
        free(rstd_gpu); free(g_out); free(dinp); free(dweight); free(dinp_gpu); free(dweight_gpu);
    }

    /* SwiGLU forward */
    float *gate = random_bf16((size_t)N * C, 1.5, 0.0, &rng), *up = random_bf16((size_t)N * C, 1.0, 0.0, &rng);
    swiglu_forward(out, gate, up, (size_t)N * C);
    floatX *dgate = cuda_upload_bf16(gate, (size_t)N * C), *dup = cuda_upload_bf16(up, (size_t)N * C);
    swiglu_forward_cuda(dout, dgate, dup, (size_t)N * C);
    cuda_download_bf16(got, dout, (size_t)N * C);
    compare("swiglu_forward", got, out, (size_t)N * C, 1e-2);
    {
        /* backward onto non-zero dgate, dup (+=); then the residual */
        float *g_out = random_bf16((size_t)N * C, 1.0, 0.0, &rng);
        float *dg = random_bf16((size_t)N * C, 1.0, 0.0, &rng), *du = random_bf16((size_t)N * C, 1.0, 0.0, &rng);
        floatX *d_gout = cuda_upload_bf16(g_out, (size_t)N * C);
        floatX *d_dg = cuda_upload_bf16(dg, (size_t)N * C), *d_du = cuda_upload_bf16(du, (size_t)N * C);
        swiglu_backward(dg, du, g_out, gate, up, (size_t)N * C);
        swiglu_backward_cuda(d_dg, d_du, d_gout, dgate, dup, (size_t)N * C);
        float *dg_gpu = malloc(sizeof(float) * N * C), *du_gpu = malloc(sizeof(float) * N * C);
        cuda_download_bf16(dg_gpu, d_dg, (size_t)N * C);
        cuda_download_bf16(du_gpu, d_du, (size_t)N * C);
        compare("swiglu_backward dgate", dg_gpu, dg, (size_t)N * C, 1e-2);
        compare("swiglu_backward dup", du_gpu, du, (size_t)N * C, 1e-2);
        /* the store form writes dgate, dup without reading them (NaN there must not matter):
         * the bits of adding onto zeros */
        {
            const size_t n = (size_t)N * C;
            float *nans = filled(n, NAN), *zeros = filled(n, 0.0f);
            floatX *s_dg = cuda_upload_bf16(nans, n), *s_du = cuda_upload_bf16(nans, n);
            floatX *z_dg = cuda_upload_bf16(zeros, n), *z_du = cuda_upload_bf16(zeros, n);
            swiglu_backward_store_cuda(s_dg, s_du, d_gout, dgate, dup, n);
            swiglu_backward_cuda(z_dg, z_du, d_gout, dgate, dup, n);
            float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
            cuda_download_bf16(a, s_dg, n);
            cuda_download_bf16(b, z_dg, n);
            CHECK(memcmp(a, b, sizeof(float) * n) == 0, "swiglu_backward_store dgate = += onto zeros");
            cuda_download_bf16(a, s_du, n);
            cuda_download_bf16(b, z_du, n);
            CHECK(memcmp(a, b, sizeof(float) * n) == 0, "swiglu_backward_store dup = += onto zeros");
            cuda_free(s_dg); cuda_free(s_du); cuda_free(z_dg); cuda_free(z_du);
            free(nans); free(zeros); free(a); free(b);
        }
        residual_forward(out, gate, up, (size_t)N * C);
        residual_forward_cuda(dout, dgate, dup, (size_t)N * C);
        cuda_download_bf16(got, dout, (size_t)N * C);
        compare("residual_forward", got, out, (size_t)N * C, 1e-2);
        cuda_free(d_gout); cuda_free(d_dg); cuda_free(d_du);
        free(g_out); free(dg); free(du); free(dg_gpu); free(du_gpu);
    }

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
    /* backward: the transposed rotation, in place (overwrites, like the CPU op) */
    rope_backward(q_cpu, cos_t, sin_t, pos, N, H, D);
    rope_backward_cuda(dq, dcos, dsin, dpos, N, H, D);
    cuda_download_bf16(q_gpu, dq, (size_t)N * H * D);
    compare("rope_backward", q_gpu, q_cpu, (size_t)N * H * D, 1e-2);

    test_memory_bound_paths(&rng);

    /* GEMM: out = x W^T (fp32 accumulation) */
    float *W = random_bf16((size_t)OC * C, 0.1, 0.0, &rng);
    float *mm = calloc((size_t)N * OC, sizeof(float)), *mm_gpu = calloc((size_t)N * OC, sizeof(float));
    matmul_forward(mm, x, W, NULL, N, C, OC, 1, 0);
    CudaContext *ctx = cuda_context_create();
    floatX *dW = cuda_upload_bf16(W, (size_t)OC * C), *dmm = cuda_upload_bf16(mm_gpu, (size_t)N * OC);
    matmul_forward_cuda(ctx, dmm, dx, dW, N, C, OC, 1.0f, 0);
    cuda_download_bf16(mm_gpu, dmm, (size_t)N * OC);
    compare("matmul_forward (cuBLASLt)", mm_gpu, mm, (size_t)N * OC, 1e-2);

    /* GEMM backward: dinp (bf16) += alpha dout W, dweight (fp32) += alpha dout^T x, both adding */
    {
        const float alpha = 0.5f;
        float *g_out = random_bf16((size_t)N * OC, 1.0, 0.0, &rng);
        float *dinp = random_bf16((size_t)N * C, 1.0, 0.0, &rng);
        float *dW_cpu = random_bf16((size_t)OC * C, 1.0, 0.0, &rng);
        floatX *d_gout = cuda_upload_bf16(g_out, (size_t)N * OC), *d_dinp = cuda_upload_bf16(dinp, (size_t)N * C);
        float *d_dW = cuda_upload_f32(dW_cpu, (size_t)OC * C);
        matmul_backward(dinp, dW_cpu, NULL, g_out, x, W, N, C, OC, alpha);
        matmul_backward_cuda(ctx, d_dinp, d_dW, d_gout, dx, dW, N, C, OC, alpha);
        float *dinp_gpu = malloc(sizeof(float) * N * C), *dW_gpu = malloc(sizeof(float) * OC * C);
        cuda_download_bf16(dinp_gpu, d_dinp, (size_t)N * C);
        cuda_download_f32(dW_gpu, d_dW, (size_t)OC * C);
        compare("matmul_backward dinp", dinp_gpu, dinp, (size_t)N * C, 1e-2);
        compare("matmul_backward dweight", dW_gpu, dW_cpu, (size_t)OC * C, 1e-3);
        /* the input gradient written (accumulate = 0) over NaN: the bits of += onto zeros */
        {
            const size_t n = (size_t)N * C;
            float *nans = filled(n, NAN), *zeros = filled(n, 0.0f);
            floatX *d_nan = cuda_upload_bf16(nans, n), *d_zero = cuda_upload_bf16(zeros, n);
            matmul_input_grad_cuda(ctx, d_nan, C, d_gout, dW, N, C, OC, alpha, 0);
            matmul_backward_cuda(ctx, d_zero, NULL, d_gout, dx, dW, N, C, OC, alpha);
            float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
            cuda_download_bf16(a, d_nan, n);
            cuda_download_bf16(b, d_zero, n);
            CHECK(memcmp(a, b, sizeof(float) * n) == 0,
                  "matmul_input_grad, accumulate 0 over NaN = += onto zeros");
            cuda_free(d_nan); cuda_free(d_zero);
            free(nans); free(zeros); free(a); free(b);
        }
        cuda_free(d_gout); cuda_free(d_dinp); cuda_free(d_dW);
        free(g_out); free(dinp); free(dW_cpu); free(dinp_gpu); free(dW_gpu);
    }

    /* The strided GEMMs: inp (and dinp) as r = 8 columns at offset 8 of rows 24 wide (how q, k
     * and v read their share of one LoRA product), against the CPU ops on packed copies; the
     * other columns must stay untouched */
    {
        const int Ns = 37, r = 8, ld = 24, off = 8, Os = 40;
        float *wide = random_bf16((size_t)Ns * ld, 1.0, 0.0, &rng);
        float *Bw = random_bf16((size_t)Os * r, 0.5, 0.0, &rng);
        float *g_out = random_bf16((size_t)Ns * Os, 1.0, 0.0, &rng);
        float *packed = malloc(sizeof(float) * Ns * r);
        for (int n = 0; n < Ns; n++)
            for (int c = 0; c < r; c++) packed[n * r + c] = wide[n * ld + off + c];
        floatX *d_wide = cuda_upload_bf16(wide, (size_t)Ns * ld), *d_Bw = cuda_upload_bf16(Bw, (size_t)Os * r);
        floatX *d_gout = cuda_upload_bf16(g_out, (size_t)Ns * Os);
        /* forward: s_out = 0.5 h B^T + s_out (accumulating onto non-zero values) */
        float *s_out = random_bf16((size_t)Ns * Os, 1.0, 0.0, &rng), *s_got = malloc(sizeof(float) * Ns * Os);
        floatX *d_out = cuda_upload_bf16(s_out, (size_t)Ns * Os);
        matmul_forward(s_out, packed, Bw, NULL, Ns, r, Os, 0.5f, 1);
        matmul_forward_strided_cuda(ctx, d_out, d_wide + off, ld, d_Bw, Ns, r, Os, 0.5f, 1);
        cuda_download_bf16(s_got, d_out, (size_t)Ns * Os);
        compare("strided matmul_forward", s_got, s_out, (size_t)Ns * Os, 1e-2);
        /* backward: the packed columns of wide += 0.5 dout B; dB += 0.5 dout^T h */
        float *dB = random_bf16((size_t)Os * r, 1.0, 0.0, &rng), *got_dB = malloc(sizeof(float) * Os * r);
        float *d_dB = cuda_upload_f32(dB, (size_t)Os * r);
        float *packed_grad = malloc(sizeof(float) * Ns * r);
        memcpy(packed_grad, packed, sizeof(float) * Ns * r);
        matmul_backward(packed_grad, dB, NULL, g_out, packed, Bw, Ns, r, Os, 0.5f);
        floatX *d_wide_grad = cuda_upload_bf16(wide, (size_t)Ns * ld); /* dinp: its own buffer */
        matmul_backward_strided_cuda(ctx, d_wide_grad + off, ld, d_dB, d_gout, d_wide + off, ld,
                                     d_Bw, Ns, r, Os, 0.5f);
        float *got_wide = malloc(sizeof(float) * Ns * ld);
        cuda_download_bf16(got_wide, d_wide_grad, (size_t)Ns * ld);
        cuda_download_f32(got_dB, d_dB, (size_t)Os * r);
        float *got_packed = malloc(sizeof(float) * Ns * r);
        int others_kept = 1;
        for (int n = 0; n < Ns; n++)
            for (int c = 0; c < ld; c++) {
                if (c >= off && c < off + r) got_packed[n * r + c - off] = got_wide[n * ld + c];
                else others_kept &= got_wide[n * ld + c] == wide[n * ld + c];
            }
        CHECK(others_kept, "strided matmul_backward wrote outside its columns");
        compare("strided matmul_backward dinp", got_packed, packed_grad, (size_t)Ns * r, 1e-2);
        compare("strided matmul_backward dweight", got_dB, dB, (size_t)Os * r, 1e-3);
        cuda_free(d_wide); cuda_free(d_wide_grad); cuda_free(d_Bw); cuda_free(d_gout); cuda_free(d_out); cuda_free(d_dB);
        free(wide); free(Bw); free(g_out); free(packed); free(s_out); free(s_got); free(dB);
        free(got_dB); free(packed_grad); free(got_wide); free(got_packed);
    }

    /* The weight gradients of LoRA factors: thin outputs (r rows or columns) over many tokens,
     * dA-like (OC thin) and dB-like (C thin), against the CPU op. (A chunked CUDA-core kernel for
     * these was tried and measured slower than cuBLASLt on an H100: docs/BENCHMARKS.md.) */
    {
        const int shapes[][3] = {{1000, 72, 16}, {700, 24, 130}, {300, 8, 40}};
        for (int sh = 0; sh < 3; sh++) {
            const int Nt = shapes[sh][0], Ct = shapes[sh][1], Ot = shapes[sh][2];
            const float alpha = 0.75f;
            float *xt = random_bf16((size_t)Nt * Ct, 1.0, 0.0, &rng);
            float *gt = random_bf16((size_t)Nt * Ot, 1.0, 0.0, &rng);
            float *thin_dw = random_bf16((size_t)Ot * Ct, 1.0, 0.0, &rng);
            floatX *d_x = cuda_upload_bf16(xt, (size_t)Nt * Ct), *d_g = cuda_upload_bf16(gt, (size_t)Nt * Ot);
            float *d_thin_dw = cuda_upload_f32(thin_dw, (size_t)Ot * Ct);
            matmul_backward(NULL, thin_dw, NULL, gt, xt, NULL, Nt, Ct, Ot, alpha);
            matmul_backward_cuda(ctx, NULL, d_thin_dw, d_g, d_x, NULL, Nt, Ct, Ot, alpha);
            float *got_thin_dw = malloc(sizeof(float) * Ot * Ct);
            cuda_download_f32(got_thin_dw, d_thin_dw, (size_t)Ot * Ct);
            char name[80];
            snprintf(name, sizeof name, "thin dweight N %d C %d OC %d", Nt, Ct, Ot);
            compare(name, got_thin_dw, thin_dw, (size_t)Ot * Ct, 1e-4);
            cuda_free(d_x); cuda_free(d_g); cuda_free(d_thin_dw);
            free(xt); free(gt); free(thin_dw); free(got_thin_dw);
        }
    }

    /* Embedding of a vocab shard: rows [vocab_start, vocab_start + rows); other tokens get zeros */
    {
        const int rows = 20, vocab_start = 10;
        float *table = random_bf16((size_t)rows * C, 1.0, 0.0, &rng);
        int32_t *tokens = malloc(N * sizeof(int32_t));
        for (int n = 0; n < N; n++) tokens[n] = (n * 13) % 45; /* 0..44: some in, some out */
        float *emb = malloc(sizeof(float) * N * C), *emb_gpu = malloc(sizeof(float) * N * C);
        embedding_forward(emb, tokens, table, N, C, vocab_start, rows);
        floatX *d_table = cuda_upload_bf16(table, (size_t)rows * C);
        for (size_t i = 0; i < (size_t)N * C; i++) emb_gpu[i] = 7.0f; /* stale values to overwrite */
        floatX *d_emb = cuda_upload_bf16(emb_gpu, (size_t)N * C);
        int32_t *d_tokens = cuda_upload_i32(tokens, N);
        embedding_forward_cuda(d_emb, d_tokens, d_table, N, C, vocab_start, rows);
        cuda_download_bf16(emb_gpu, d_emb, (size_t)N * C);
        compare("embedding_forward", emb_gpu, emb, (size_t)N * C, 0.0); /* copies: exact */
        cuda_free(d_table); cuda_free(d_emb); cuda_free(d_tokens);
        free(table); free(tokens); free(emb); free(emb_gpu);
    }

    /* Vocab-parallel log-prob pieces on a shard [vocab_start, vocab_start + V) */
    {
        const int V = 300, vocab_start = 50;
        float *logits = random_bf16((size_t)N * V, 3.0, 0.5, &rng);
        int32_t *targets = malloc(N * sizeof(int32_t));
        for (int n = 0; n < N; n++) /* -1 (no target), below, inside and above the shard */
            targets[n] = n % 5 == 0 ? -1 : (n * 31) % 420;
        floatX *d_logits = cuda_upload_bf16(logits, (size_t)N * V);
        int32_t *d_targets = cuda_upload_i32(targets, N);

        float *row_max = malloc(N * sizeof(float)), *row_max_gpu = malloc(N * sizeof(float));
        logits_row_max(row_max, logits, N, V);
        float *d_row_max = cuda_calloc(N * sizeof(float));
        logits_row_max_cuda(d_row_max, d_logits, N, V);
        cuda_download_f32(row_max_gpu, d_row_max, N);
        compare("logits_row_max", row_max_gpu, row_max, N, 0.0); /* a max of bf16 values: exact */

        double *sumexp = malloc(N * sizeof(double)), *sumexp_gpu = malloc(N * sizeof(double));
        logits_row_sumexp(sumexp, logits, row_max, N, V);
        double *d_sumexp = cuda_calloc(N * sizeof(double));
        logits_row_sumexp_cuda(d_sumexp, d_logits, d_row_max, N, V);
        cuda_download_f64(sumexp_gpu, d_sumexp, N);
        float *a = malloc(N * sizeof(float)), *b = malloc(N * sizeof(float));
        for (int n = 0; n < N; n++) {
            a[n] = (float)(sumexp_gpu[n] / sumexp[n]); /* relative per row */
            b[n] = 1.0f;
        }
        compare("logits_row_sumexp (per row)", a, b, N, 1e-5);

        double *target = malloc(N * sizeof(double)), *target_gpu = malloc(N * sizeof(double));
        logits_target(target, logits, targets, vocab_start, N, V);
        double *d_target = cuda_calloc(N * sizeof(double));
        logits_target_cuda(d_target, d_logits, d_targets, vocab_start, N, V);
        cuda_download_f64(target_gpu, d_target, N);
        int in_shard = 0;
        for (int n = 0; n < N; n++) {
            a[n] = (float)target_gpu[n];
            b[n] = (float)target[n];
            in_shard += target[n] != 0.0;
        }
        CHECK(in_shard > 0 && in_shard < N, "targets both inside and outside the shard (%d)", in_shard);
        compare("logits_target", a, b, N, 0.0);

        /* backward with lse from the CPU pieces, onto non-zero dlogits (+=) */
        float *lse = malloc(N * sizeof(float)), *dlogp = random_bf16(N, 1.0, 0.0, &rng);
        for (int n = 0; n < N; n++) lse[n] = row_max[n] + (float)log(sumexp[n]);
        float *dlogits = random_bf16((size_t)N * V, 0.1, 0.0, &rng);
        float *dlogits_gpu = malloc(sizeof(float) * N * V);
        floatX *d_dlogits = cuda_upload_bf16(dlogits, (size_t)N * V);
        float *d_lse = cuda_upload_f32(lse, N), *d_dlogp = cuda_upload_f32(dlogp, N);
        logprob_backward_shard(dlogits, dlogp, logits, lse, targets, vocab_start, N, V);
        logprob_backward_shard_cuda(d_dlogits, d_dlogp, d_logits, d_lse, d_targets, vocab_start, N, V);
        cuda_download_bf16(dlogits_gpu, d_dlogits, (size_t)N * V);
        compare("logprob_backward_shard", dlogits_gpu, dlogits, (size_t)N * V, 1e-2);

        cuda_free(d_logits); cuda_free(d_targets); cuda_free(d_row_max); cuda_free(d_sumexp);
        cuda_free(d_target); cuda_free(d_dlogits); cuda_free(d_lse); cuda_free(d_dlogp);
        free(logits); free(targets); free(row_max); free(row_max_gpu); free(sumexp); free(sumexp_gpu);
        free(a); free(b); free(target); free(target_gpu); free(lse); free(dlogp); free(dlogits);
        free(dlogits_gpu);
    }

    /* Causal GQA attention: forward (out, probs) and backward (dq, dk, dv added onto non-zero
     * values), T long enough that the rows span more than one pass of a block's threads */
    {
        const int B = 2, T = 150, Hq = 4, Hkv = 2, Da = 16;
        const size_t nq = (size_t)B * T * Hq * Da, nkv = (size_t)B * T * Hkv * Da;
        const size_t np = (size_t)B * Hq * T * T;
        float *aq = random_bf16(nq, 1.0, 0.0, &rng), *ak = random_bf16(nkv, 1.0, 0.0, &rng);
        float *av = random_bf16(nkv, 1.0, 0.0, &rng), *ado = random_bf16(nq, 1.0, 0.0, &rng);
        float *aout = malloc(nq * sizeof(float)), *aprobs = malloc(np * sizeof(float));
        float *aout_gpu = malloc(nq * sizeof(float)), *aprobs_gpu = malloc(np * sizeof(float));
        attention_forward(aout, aprobs, aq, ak, av, B, T, Hq, Hkv, Da);
        floatX *d_q = cuda_upload_bf16(aq, nq), *d_k = cuda_upload_bf16(ak, nkv);
        floatX *d_v = cuda_upload_bf16(av, nkv), *d_do = cuda_upload_bf16(ado, nq);
        floatX *d_out = cuda_upload_bf16(aout, nq);
        for (size_t i = 0; i < np; i++) aprobs_gpu[i] = 1.0f; /* the mask must be written */
        float *d_probs = cuda_upload_f32(aprobs_gpu, np);
        attention_forward_cuda(d_out, d_probs, d_q, d_k, d_v, B, T, Hq, Hkv, Da);
        cuda_download_bf16(aout_gpu, d_out, nq);
        cuda_download_f32(aprobs_gpu, d_probs, np);
        compare("attention_forward out", aout_gpu, aout, nq, 1e-2);
        compare("attention_forward probs", aprobs_gpu, aprobs, np, 1e-4);

        float *adq = random_bf16(nq, 0.1, 0.0, &rng), *adk = random_bf16(nkv, 0.1, 0.0, &rng);
        float *adv = random_bf16(nkv, 0.1, 0.0, &rng);
        floatX *d_dq = cuda_upload_bf16(adq, nq), *d_dk = cuda_upload_bf16(adk, nkv);
        floatX *d_dv = cuda_upload_bf16(adv, nkv);
        float *d_probs_cpu = cuda_upload_f32(aprobs, np); /* the backward alone, on the CPU's probs */
        attention_backward(adq, adk, adv, ado, aprobs, aq, ak, av, B, T, Hq, Hkv, Da);
        attention_backward_cuda(d_dq, d_dk, d_dv, d_do, d_probs_cpu, d_q, d_k, d_v, B, T, Hq, Hkv, Da);
        float *got_q = malloc(nq * sizeof(float)), *got_k = malloc(nkv * sizeof(float));
        float *got_v = malloc(nkv * sizeof(float));
        cuda_download_bf16(got_q, d_dq, nq);
        cuda_download_bf16(got_k, d_dk, nkv);
        cuda_download_bf16(got_v, d_dv, nkv);
        compare("attention_backward dq", got_q, adq, nq, 1e-2);
        compare("attention_backward dk", got_k, adk, nkv, 1e-2);
        compare("attention_backward dv", got_v, adv, nkv, 1e-2);

        cuda_free(d_q); cuda_free(d_k); cuda_free(d_v); cuda_free(d_do); cuda_free(d_out);
        cuda_free(d_probs); cuda_free(d_dq); cuda_free(d_dk); cuda_free(d_dv); cuda_free(d_probs_cpu);
        free(aq); free(ak); free(av); free(ado); free(aout); free(aprobs); free(aout_gpu);
        free(aprobs_gpu); free(adq); free(adk); free(adv); free(got_q); free(got_k); free(got_v);
    }

    test_attention_fused(&rng);
    test_fill_normal();

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

    test_model_support(ctx, &rng);
    test_folded_lora_ops(ctx, &rng);
    test_thin_weight_grad(ctx, &rng);
    test_l1_penalty(ctx, &rng);
    test_thin_weight_grad_direct(&rng);

    cuda_context_destroy(ctx);
    cuda_synchronize();
    return test_finish("test_ops_cuda");
}
