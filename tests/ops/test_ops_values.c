/*
 * test_ops_values.c - the ops' forward values against hand-derived vectors and naive reference
 * implementations written independently here (in double). Built twice: fp32 (the program's
 * precision) and fp64; the tolerance follows `real`.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ops.h"
#include "ops/vector_exp.h"
#include "test_util.h"

#ifdef PAFT_REAL_DOUBLE
#define TOL 1e-12
#else
#define TOL 2e-6
#endif

typedef struct {
    uint64_t state;
} Rng;

static double rng_uniform(Rng *rng) {
    rng->state ^= rng->state >> 12;
    rng->state ^= rng->state << 25;
    rng->state ^= rng->state >> 27;
    return (double)((rng->state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}

static real *random_array(Rng *rng, size_t n) {
    real *a = malloc(n * sizeof(real));
    for (size_t i = 0; i < n; i++) a[i] = (real)(2 * rng_uniform(rng) - 1);
    return a;
}

/* ---- embedding: rows of the shard, zeros for other shards' tokens -------------------------- */
static void test_embedding_values(void) {
    enum { ROWS = 5, C = 3, N = 6 };
    const int vocab_start = 10;
    real table[ROWS * C];
    for (int i = 0; i < ROWS * C; i++) table[i] = (real)(i + 1);
    const int32_t tokens[N] = {10, 14, 9, 15, 12, -1};
    const int expected_row[N] = {0, 4, -1, -1, 2, -1};
    real out[N * C];
    embedding_forward(out, tokens, table, N, C, vocab_start, ROWS);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            CHECK(out[n * C + c] == (expected_row[n] < 0 ? 0 : table[expected_row[n] * C + c]),
                  "embedding row %d col %d", n, c);

    real dout[N * C], dtable[ROWS * C];
    for (int i = 0; i < N * C; i++) dout[i] = (real)(100 + i);
    for (int i = 0; i < ROWS * C; i++) dtable[i] = 1;
    embedding_backward(dtable, dout, tokens, N, C, vocab_start, ROWS);
    for (int r = 0; r < ROWS; r++) {
        for (int c = 0; c < C; c++) {
            real expected = 1;
            for (int n = 0; n < N; n++)
                if (expected_row[n] == r) expected += dout[n * C + c];
            CHECK(dtable[r * C + c] == expected, "embedding dtable row %d col %d", r, c);
        }
    }
}

/* ---- RMSNorm of [1,2,3,4]: mean of squares 30/4 = 7.5 ------------------------------------- */
static void test_rmsnorm_values(void) {
    const real x[4] = {1, 2, 3, 4};
    const real ones[4] = {1, 1, 1, 1};
    const real w[4] = {0.5, 1, 2, -1};
    real out[4], rstd[1];
    rmsnorm_forward(out, rstd, x, ones, 1, 4, 0.0f);
    CHECK_CLOSE(rstd[0], 1 / sqrt(7.5), TOL, 0, "rmsnorm rstd");
    for (int c = 0; c < 4; c++) CHECK_CLOSE(out[c], x[c] / sqrt(7.5), TOL, 0, "rmsnorm out");
    /* with eps and a weight: x / sqrt(7.5 + eps) * w */
    const float eps = 0.5f;
    rmsnorm_forward(out, rstd, x, w, 1, 4, eps);
    for (int c = 0; c < 4; c++)
        CHECK_CLOSE(out[c], x[c] / sqrt(7.5 + eps) * w[c], TOL, 0, "rmsnorm out (eps, weight)");
}

/* ---- rope: positions index table rows; angles pi/2 and pi on a known vector ----------------- */
static void test_rope_values(void) {
    enum { D = 4, HALF = D / 2 };
    /* row 0: angle 0 (identity); row 1: unused; row 2: angles (pi/2, pi) */
    const real cos_table[3 * HALF] = {1, 1, 0.25, 0.5, 0, -1};
    const real sin_table[3 * HALF] = {0, 0, 0.75, 0.5, 1, 0};
    const int32_t positions[2] = {2, 0};
    real x[2 * D] = {1, 2, 3, 4, 5, 6, 7, 8};
    rope_forward(x, cos_table, sin_table, positions, 2, 1, D);
    /* pair (0,2) at pi/2: x0' = 1*0 - 3*1 = -3, x2' = 3*0 + 1*1 = 1;
     * pair (1,3) at pi:   x1' = -2,              x3' = -4; row 2 at position 0 unchanged */
    const real expected[2 * D] = {-3, -2, 1, -4, 5, 6, 7, 8};
    for (int i = 0; i < 2 * D; i++) CHECK_CLOSE(x[i], expected[i], 0, 1e-7, "rope value");
    /* the backward is the inverse rotation here (cos^2 + sin^2 = 1 in these rows) */
    rope_backward(x, cos_table, sin_table, positions, 2, 1, D);
    for (int i = 0; i < 2 * D; i++) CHECK_CLOSE(x[i], i + 1, 0, 1e-6, "rope backward undoes");
}

/* ---- SwiGLU at 0 and 1 --------------------------------------------------------------------- */
static void test_swiglu_values(void) {
    const real gate[2] = {0, 1}, up[2] = {3, 2};
    real out[2];
    swiglu_forward(out, gate, up, 2);
    double s1 = 1 / (1 + exp(-1.0));  /* sigmoid(1) = 0.7310585786 */
    CHECK(out[0] == 0, "silu(0) * 3 = 0, got %g", (double)out[0]);
    CHECK_CLOSE(out[1], s1 * 2, TOL, 0, "silu(1) * 2");
    /* d silu/dg: at 0 it is sigmoid(0) = 1/2; at 1 it is s (1 + (1 - s)) */
    real dgate[2] = {10, 10}, dup[2] = {20, 20};
    const real dout[2] = {1, 1};
    swiglu_backward(dgate, dup, dout, gate, up, 2);
    CHECK_CLOSE(dgate[0], 10 + 3 * 0.5, TOL, 0, "swiglu dgate at 0");
    CHECK_CLOSE(dgate[1], 10 + 2 * s1 * (2 - s1), TOL, 0, "swiglu dgate at 1");
    CHECK_CLOSE(dup[0], 20, TOL, 0, "swiglu dup at 0");
    CHECK_CLOSE(dup[1], 20 + s1, TOL, 0, "swiglu dup at 1");
    /* far negative gates: 0, not NaN */
    const real far[1] = {-1000}, one[1] = {1};
    swiglu_forward(out, far, one, 1);
    CHECK(out[0] == 0, "silu(-1000) = 0, got %g", (double)out[0]);
}

static void test_residual_values(void) {
    const real a[3] = {1, -2, 0.5}, b[3] = {0.25, 2, 4};
    real out[3];
    residual_forward(out, a, b, 3);
    for (int i = 0; i < 3; i++) CHECK(out[i] == a[i] + b[i], "residual %d", i);
}

/* ---- logprob -------------------------------------------------------------------------------- */
static void test_logprob_values(void) {
    enum { V = 7 };
    /* uniform logits (also huge ones: max subtraction keeps exp finite): logp = -log V */
    const real levels[2] = {0.3f, 1000};
    for (int k = 0; k < 2; k++) {
        real logits[2 * V], logp[2], lse[2];
        for (int j = 0; j < 2 * V; j++) logits[j] = levels[k];
        const int32_t targets[2] = {4, -1};
        logprob_forward(logp, lse, logits, targets, 2, V);
        CHECK_CLOSE(logp[0], -log((double)V), TOL, 0, "uniform logp");
        CHECK_CLOSE(lse[0], levels[k] + log((double)V), TOL, 0, "uniform lse");
        CHECK(logp[1] == 0, "row without target: logp = 0, got %g", (double)logp[1]);
        /* d logp / d logits = onehot - 1/V; the row without a target is untouched */
        real dlogits[2 * V];
        for (int j = 0; j < 2 * V; j++) dlogits[j] = 1;
        const real dlogp[2] = {1, 5};
        logprob_backward(dlogits, dlogp, logits, lse, targets, 2, V);
        for (int j = 0; j < V; j++)
            CHECK_CLOSE(dlogits[j], 1 + (j == 4) - 1.0 / V, TOL, 1e-6, "uniform dlogits");
        for (int j = V; j < 2 * V; j++) CHECK(dlogits[j] == 1, "row without target changed");
    }
    /* logits log(1), log(2), log(3): probabilities 1/6, 2/6, 3/6 */
    const real logits[3] = {0, (real)log(2.0), (real)log(3.0)};
    const int32_t target[1] = {2};
    real logp[1], lse[1], dlogits[3] = {0, 0, 0};
    const real dlogp[1] = {1};
    logprob_forward(logp, lse, logits, target, 1, 3);
    CHECK_CLOSE(logp[0], -log(2.0), TOL, 0, "logp = log(3/6)");
    CHECK_CLOSE(lse[0], log(6.0), TOL, 0, "lse = log 6");
    logprob_backward(dlogits, dlogp, logits, lse, target, 1, 3);
    const double expected[3] = {-1.0 / 6, -2.0 / 6, 0.5};
    for (int j = 0; j < 3; j++) CHECK_CLOSE(dlogits[j], expected[j], TOL, 1e-7, "dlogits");
}

/* ---- attention ------------------------------------------------------------------------------ */

/* Naive reference in double: repeat the KV heads (HF repeat_kv), full score matrix, mask with
 * -inf above the diagonal, softmax over each row. */
static void attention_reference(double *out, double *probs, double *lse, const real *q,
                                const real *k, const real *v, int B, int T, int Hq, int Hkv,
                                int D) {
    int group = Hq / Hkv;
    double *scores = malloc((size_t)T * T * sizeof(double));
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < Hq; h++) {
            int g = h / group;
            for (int t = 0; t < T; t++) {
                for (int j = 0; j < T; j++) {
                    double dot = 0;
                    for (int d = 0; d < D; d++)
                        dot += (double)q[((b * T + t) * Hq + h) * D + d] *
                               k[((b * T + j) * Hkv + g) * D + d];
                    scores[t * T + j] = j <= t ? dot / sqrt((double)D) : -INFINITY;
                }
                double max = -INFINITY, sum = 0;
                for (int j = 0; j < T; j++) max = fmax(max, scores[t * T + j]);
                for (int j = 0; j < T; j++) sum += exp(scores[t * T + j] - max);
                lse[(b * Hq + h) * T + t] = max + log(sum);
                for (int j = 0; j < T; j++) {
                    double p = exp(scores[t * T + j] - max) / sum;
                    probs[((b * Hq + h) * T + t) * T + j] = p;
                }
                for (int d = 0; d < D; d++) {
                    double acc = 0;
                    for (int j = 0; j < T; j++)
                        acc += probs[((b * Hq + h) * T + t) * T + j] *
                               v[((b * T + j) * Hkv + g) * D + d];
                    out[((b * T + t) * Hq + h) * D + d] = acc;
                }
            }
        }
    }
    free(scores);
}

/* The backward in double from the reference probabilities, element by element: dv_j = sum_t
 * p_tj dout_t; dp_tj = dout_t . v_j; ds_tj = p_tj (dp_tj - sum_i p_ti dp_ti) / sqrt(D);
 * dq_t = sum_j ds_tj k_j; dk_j = sum_t ds_tj q_t (each KV head summing over its group). */
static void attention_backward_reference(double *dq, double *dk, double *dv, const real *dout,
                                         const double *probs, const real *q, const real *k,
                                         const real *v, int B, int T, int Hq, int Hkv, int D) {
    const int group = Hq / Hkv;
    memset(dq, 0, (size_t)B * T * Hq * D * sizeof(double));
    memset(dk, 0, (size_t)B * T * Hkv * D * sizeof(double));
    memset(dv, 0, (size_t)B * T * Hkv * D * sizeof(double));
    double *dp = malloc((size_t)T * sizeof(double));
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < Hq; h++) {
            const int g = h / group;
            for (int t = 0; t < T; t++) {
                const double *p = probs + ((size_t)(b * Hq + h) * T + t) * T;
                const size_t qt = ((size_t)(b * T + t) * Hq + h) * D;
                double row = 0;
                for (int j = 0; j < T; j++) {
                    const size_t kj = ((size_t)(b * T + j) * Hkv + g) * D;
                    dp[j] = 0;
                    for (int d = 0; d < D; d++) dp[j] += (double)dout[qt + d] * v[kj + d];
                    row += p[j] * dp[j];
                }
                for (int j = 0; j < T; j++) {
                    const size_t kj = ((size_t)(b * T + j) * Hkv + g) * D;
                    const double ds = p[j] * (dp[j] - row) / sqrt((double)D);
                    for (int d = 0; d < D; d++) {
                        dv[kj + d] += p[j] * dout[qt + d];
                        dq[qt + d] += ds * k[kj + d];
                        dk[kj + d] += ds * q[qt + d];
                    }
                }
            }
        }
    }
    free(dp);
}

static void test_attention_reference(Rng *rng, int B, int T, int Hq, int Hkv, int D) {
    size_t n_q = (size_t)B * T * Hq * D, n_kv = (size_t)B * T * Hkv * D;
    size_t n_p = (size_t)B * Hq * T * T;
    real *q = random_array(rng, n_q), *k = random_array(rng, n_kv), *v = random_array(rng, n_kv);
    real *out = malloc(n_q * sizeof(real)), *probs = malloc(n_p * sizeof(real));
    double *ref_out = malloc(n_q * sizeof(double)), *ref_probs = malloc(n_p * sizeof(double));
    for (size_t i = 0; i < n_q; i++) q[i] *= 3;
    double *ref_lse = malloc((size_t)B * Hq * T * sizeof(double));
    attention_forward(out, probs, q, k, v, B, T, Hq, Hkv, D);
    attention_reference(ref_out, ref_probs, ref_lse, q, k, v, B, T, Hq, Hkv, D);
    for (size_t i = 0; i < n_q; i++) CHECK_CLOSE(out[i], ref_out[i], TOL, TOL, "attention out");
    for (size_t i = 0; i < n_p; i++)
        CHECK_CLOSE(probs[i], ref_probs[i], TOL, TOL, "attention probs");
    /* the fused form: the same output, and each row's log-sum-exp in place of its probabilities */
    real *lse = malloc((size_t)B * Hq * T * sizeof(real));
    memset(out, 0, n_q * sizeof(real));
    attention_forward_fused(out, lse, q, k, v, B, T, Hq, Hkv, D);
    for (size_t i = 0; i < n_q; i++)
        CHECK_CLOSE(out[i], ref_out[i], TOL, TOL, "fused attention out");
    for (size_t i = 0; i < (size_t)B * Hq * T; i++)
        CHECK_CLOSE(lse[i], ref_lse[i], TOL, TOL, "fused attention lse");

    /* both backwards against the double reference; they add into what the buffers hold */
    real *dout = random_array(rng, n_q);
    double *ref_dq = malloc(n_q * sizeof(double)), *ref_dk = malloc(n_kv * sizeof(double));
    double *ref_dv = malloc(n_kv * sizeof(double));
    attention_backward_reference(ref_dq, ref_dk, ref_dv, dout, ref_probs, q, k, v, B, T, Hq, Hkv,
                                 D);
    real *start_q = random_array(rng, n_q), *start_kv = random_array(rng, n_kv);
    real *dq = malloc(n_q * sizeof(real)), *dk = malloc(n_kv * sizeof(real));
    real *dv = malloc(n_kv * sizeof(real));
    /* fused = 1: the split the thread count picks (ops_cpu.c, attention_backward_passes);
     * 2 and 3: one pass and two passes, forced */
    for (int fused = 0; fused <= 3; fused++) {
        if (fused >= 2) setenv("PAFT_CPU_ATTENTION_PASSES", fused == 2 ? "1" : "2", 1);
        memcpy(dq, start_q, n_q * sizeof(real));
        memcpy(dk, start_kv, n_kv * sizeof(real));
        memcpy(dv, start_kv, n_kv * sizeof(real));
        if (fused)
            attention_backward_fused(dq, dk, dv, dout, out, lse, q, k, v, B, T, Hq, Hkv, D);
        else
            attention_backward(dq, dk, dv, dout, probs, q, k, v, B, T, Hq, Hkv, D);
        for (size_t i = 0; i < n_q; i++)
            CHECK_CLOSE(dq[i] - start_q[i], ref_dq[i], TOL, TOL,
                        fused ? "fused attention dq" : "attention dq");
        for (size_t i = 0; i < n_kv; i++) {
            CHECK_CLOSE(dk[i] - start_kv[i], ref_dk[i], TOL, TOL,
                        fused ? "fused attention dk" : "attention dk");
            CHECK_CLOSE(dv[i] - start_kv[i], ref_dv[i], TOL, TOL,
                        fused ? "fused attention dv" : "attention dv");
        }
    }
    unsetenv("PAFT_CPU_ATTENTION_PASSES");
    free(dq);
    free(dk);
    free(dv);
    free(start_q);
    free(start_kv);
    free(ref_dq);
    free(ref_dk);
    free(ref_dv);
    free(dout);
    free(lse);
    free(ref_lse);
    free(q);
    free(k);
    free(v);
    free(out);
    free(probs);
    free(ref_out);
    free(ref_probs);
}

/* T = 1: the only visible position is itself, so out = v of the head's KV head, probs = 1. */
static void test_attention_single_position(Rng *rng) {
    enum { B = 2, Hq = 4, Hkv = 2, D = 5 };
    real *q = random_array(rng, B * Hq * D), *k = random_array(rng, B * Hkv * D);
    real *v = random_array(rng, B * Hkv * D);
    real out[B * Hq * D], probs[B * Hq];
    attention_forward(out, probs, q, k, v, B, 1, Hq, Hkv, D);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++)
            for (int d = 0; d < D; d++)
                CHECK_CLOSE(out[(b * Hq + h) * D + d], v[(b * Hkv + h / 2) * D + d], TOL, 0,
                            "attention T=1 out = v");
    for (int i = 0; i < B * Hq; i++) CHECK(probs[i] == 1, "attention T=1 prob %g", probs[i]);
    free(q);
    free(k);
    free(v);
}

/* Causal: perturbing positions > t leaves every output at positions <= t bit-identical. */
static void test_attention_causal(Rng *rng) {
    enum { T = 4, Hq = 2, Hkv = 1, D = 3 };
    real *q = random_array(rng, T * Hq * D), *k = random_array(rng, T * Hkv * D);
    real *v = random_array(rng, T * Hkv * D);
    real out[T * Hq * D], out2[T * Hq * D], probs[Hq * T * T];
    attention_forward(out, probs, q, k, v, 1, T, Hq, Hkv, D);
    for (int h = 0; h < Hq; h++)
        for (int t = 0; t < T; t++)
            for (int j = t + 1; j < T; j++)
                CHECK(probs[(h * T + t) * T + j] == 0, "prob above the diagonal (%d,%d)", t, j);
    for (int from = 1; from < T; from++) {
        for (int pos = from; pos < T; pos++) {
            for (int d = 0; d < Hq * D; d++) q[pos * Hq * D + d] += 0.5f;
            for (int d = 0; d < Hkv * D; d++) k[pos * Hkv * D + d] -= 0.25f;
            for (int d = 0; d < Hkv * D; d++) v[pos * Hkv * D + d] *= 3;
        }
        attention_forward(out2, probs, q, k, v, 1, T, Hq, Hkv, D);
        int same = memcmp(out, out2, (size_t)from * Hq * D * sizeof(real)) == 0;
        CHECK(same, "outputs before position %d changed when later positions did", from);
        int changed = memcmp(out + from * Hq * D, out2 + from * Hq * D,
                             (size_t)Hq * D * sizeof(real)) != 0;
        CHECK(changed, "output at position %d did not react to its own input", from);
        memcpy(out, out2, sizeof out);
    }
    free(q);
    free(k);
    free(v);
}

/* ---- matmul against the textbook triple loop, odd sizes ------------------------------------- */
static void test_matmul_naive(Rng *rng, int N, int C, int OC, int with_bias, real alpha,
                              int accumulate) {
    real *inp = random_array(rng, (size_t)N * C), *w = random_array(rng, (size_t)OC * C);
    real *bias = with_bias ? random_array(rng, OC) : NULL;
    real *out = random_array(rng, (size_t)N * OC);
    real *start = malloc((size_t)N * OC * sizeof(real));
    memcpy(start, out, (size_t)N * OC * sizeof(real));
    matmul_forward(out, inp, w, bias, N, C, OC, alpha, accumulate);
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < OC; o++) {
            double sum = 0;
            for (int c = 0; c < C; c++) sum += (double)inp[n * C + c] * w[o * C + c];
            double expected = alpha * sum + (bias ? bias[o] : 0) + (accumulate ? start[n * OC + o] : 0);
            CHECK_CLOSE(out[n * OC + o], expected, TOL, TOL, "matmul vs triple loop");
        }
    }
    /* backward: dinp = alpha dout W, dweight = alpha dout^T inp, dbias = column sums of dout */
    real *dout = random_array(rng, (size_t)N * OC);
    real *dinp = calloc((size_t)N * C, sizeof(real)), *dw = calloc((size_t)OC * C, sizeof(real));
    real *dbias = calloc(OC, sizeof(real));
    matmul_backward(dinp, dw, dbias, dout, inp, w, N, C, OC, alpha);
    for (int n = 0; n < N; n++) {
        for (int c = 0; c < C; c++) {
            double sum = 0;
            for (int o = 0; o < OC; o++) sum += (double)dout[n * OC + o] * w[o * C + c];
            CHECK_CLOSE(dinp[n * C + c], alpha * sum, TOL, TOL, "matmul dinp vs triple loop");
        }
    }
    for (int o = 0; o < OC; o++) {
        double bsum = 0;
        for (int n = 0; n < N; n++) bsum += dout[n * OC + o];
        CHECK_CLOSE(dbias[o], bsum, TOL, TOL, "matmul dbias vs loop");
        for (int c = 0; c < C; c++) {
            double sum = 0;
            for (int n = 0; n < N; n++) sum += (double)dout[n * OC + o] * inp[n * C + c];
            CHECK_CLOSE(dw[o * C + c], alpha * sum, TOL, TOL, "matmul dweight vs triple loop");
        }
    }
    free(inp);
    free(w);
    free(bias);
    free(out);
    free(start);
    free(dout);
    free(dinp);
    free(dw);
    free(dbias);
}

/* ---- thread-count independence --------------------------------------------------------------
 * No two threads ever write the same element and every element is computed the same way whatever
 * thread computes it, so 1 thread and 3 threads give bit-identical results (a race would not). */
typedef struct {
    real *mm_out, *mm_dinp, *mm_dw, *mm_db, *rms_dinp, *rms_dw, *att_dq, *att_dk, *att_dv;
} ThreadRun;

enum { TN = 40, TC = 70, TOC = 35, TB = 2, TT = 9, THQ = 4, THKV = 2, TD = 6 };

static ThreadRun run_with_threads(int threads, const real *inp, const real *w, const real *dout,
                                  const real *q, const real *k, const real *v) {
    ThreadRun r;
    size_t nq = (size_t)TB * TT * THQ * TD, nkv = (size_t)TB * TT * THKV * TD;
    omp_set_num_threads(threads);
    r.mm_out = calloc(TN * TOC, sizeof(real));
    r.mm_dinp = calloc(TN * TC, sizeof(real));
    r.mm_dw = calloc(TOC * TC, sizeof(real));
    r.mm_db = calloc(TOC, sizeof(real));
    matmul_forward(r.mm_out, inp, w, w, TN, TC, TOC, 0.5f, 0);
    matmul_backward(r.mm_dinp, r.mm_dw, r.mm_db, dout, inp, w, TN, TC, TOC, 0.5f);
    /* rmsnorm over the [TN][TC] input with the first TC weights */
    real *norm_out = malloc(TN * TC * sizeof(real)), rstd[TN];
    r.rms_dinp = calloc(TN * TC, sizeof(real));
    r.rms_dw = calloc(TC, sizeof(real));
    rmsnorm_forward(norm_out, rstd, inp, w, TN, TC, 1e-5f);
    rmsnorm_backward(r.rms_dinp, r.rms_dw, inp, inp, w, rstd, TN, TC);
    free(norm_out);
    real *att_out = malloc(nq * sizeof(real));
    real *probs = malloc((size_t)TB * THQ * TT * TT * sizeof(real));
    r.att_dq = calloc(nq, sizeof(real));
    r.att_dk = calloc(nkv, sizeof(real));
    r.att_dv = calloc(nkv, sizeof(real));
    attention_forward(att_out, probs, q, k, v, TB, TT, THQ, THKV, TD);
    attention_backward(r.att_dq, r.att_dk, r.att_dv, q, probs, q, k, v, TB, TT, THQ, THKV, TD);
    free(att_out);
    free(probs);
    return r;
}

static void test_thread_count_independence(Rng *rng) {
    size_t nq = (size_t)TB * TT * THQ * TD, nkv = (size_t)TB * TT * THKV * TD;
    real *inp = random_array(rng, TN * TC), *w = random_array(rng, TOC * TC);
    real *dout = random_array(rng, TN * TOC);
    real *q = random_array(rng, nq), *k = random_array(rng, nkv), *v = random_array(rng, nkv);
    ThreadRun one = run_with_threads(1, inp, w, dout, q, k, v);
    ThreadRun three = run_with_threads(3, inp, w, dout, q, k, v);
    const struct {
        const char *what;
        real *a, *b;
        size_t n;
    } pairs[] = {
        {"matmul out", one.mm_out, three.mm_out, TN * TOC},
        {"matmul dinp", one.mm_dinp, three.mm_dinp, TN * TC},
        {"matmul dweight", one.mm_dw, three.mm_dw, TOC * TC},
        {"matmul dbias", one.mm_db, three.mm_db, TOC},
        {"rmsnorm dinp", one.rms_dinp, three.rms_dinp, TN * TC},
        {"rmsnorm dweight", one.rms_dw, three.rms_dw, TC},
        {"attention dq", one.att_dq, three.att_dq, nq},
        {"attention dk", one.att_dk, three.att_dk, nkv},
        {"attention dv", one.att_dv, three.att_dv, nkv},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        CHECK(memcmp(pairs[i].a, pairs[i].b, pairs[i].n * sizeof(real)) == 0,
              "%s differs between 1 and 3 threads", pairs[i].what);
        free(pairs[i].a);
        free(pairs[i].b);
    }
    free(inp);
    free(w);
    free(dout);
    free(q);
    free(k);
    free(v);
}

/* The fused attention likewise, each way of splitting its backward forced in turn (the automatic
 * choice follows the thread count, and the two ways add in different orders), over three query
 * and key blocks. */
static void fused_attention_with_threads(int threads, const char *passes, const real *q,
                                         const real *k, const real *v, const real *dout,
                                         real *out_lse_dq_dk_dv[5]) {
    enum { B = 2, T = 139, Hq = 4, Hkv = 2, D = 8 };
    const size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D;
    omp_set_num_threads(threads);
    setenv("PAFT_CPU_ATTENTION_PASSES", passes, 1);
    real *out = malloc(nq * sizeof(real)), *lse = malloc((size_t)B * Hq * T * sizeof(real));
    real *dq = calloc(nq, sizeof(real)), *dk = calloc(nkv, sizeof(real));
    real *dv = calloc(nkv, sizeof(real));
    attention_forward_fused(out, lse, q, k, v, B, T, Hq, Hkv, D);
    attention_backward_fused(dq, dk, dv, dout, out, lse, q, k, v, B, T, Hq, Hkv, D);
    unsetenv("PAFT_CPU_ATTENTION_PASSES");
    real *all[5] = {out, lse, dq, dk, dv};
    memcpy(out_lse_dq_dk_dv, all, sizeof all);
}

static void test_fused_attention_thread_count_independence(Rng *rng) {
    enum { B = 2, T = 139, Hq = 4, Hkv = 2, D = 8 };
    const size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D;
    const size_t sizes[5] = {nq, (size_t)B * Hq * T, nq, nkv, nkv};
    const char *names[5] = {"out", "lse", "dq", "dk", "dv"};
    real *q = random_array(rng, nq), *k = random_array(rng, nkv), *v = random_array(rng, nkv);
    real *dout = random_array(rng, nq);
    const int threads = omp_get_max_threads();
    for (int p = 1; p <= 2; p++) {
        const char *passes = p == 1 ? "1" : "2";
        real *one[5], *three[5];
        fused_attention_with_threads(1, passes, q, k, v, dout, one);
        fused_attention_with_threads(3, passes, q, k, v, dout, three);
        for (int i = 0; i < 5; i++) {
            CHECK(memcmp(one[i], three[i], sizes[i] * sizeof(real)) == 0,
                  "fused attention %s (backward in %s pass(es)) differs between 1 and 3 threads",
                  names[i], passes);
            free(one[i]);
            free(three[i]);
        }
    }
    omp_set_num_threads(threads);
    free(q);
    free(k);
    free(v);
    free(dout);
}

/* vector_exp against exp in double: every float from -87 to 88 in steps of a few ulp's worth
 * of the range (2^22 points), the edges, and the special values. */
static void test_vector_exp(void) {
    double worst = 0;
    const int points = 1 << 22;
    for (int i = 0; i <= points; i++) {
        const real x = (real)(-87.0 + 175.0 * i / points);
        const double exact = exp((double)x), got = vector_exp(x);
        const double rel = fabs(got - exact) / exact;
        worst = rel > worst ? rel : worst;
    }
    /* 4 units in the last place of a float: 2^-21 */
    CHECK(worst <= 0x1p-21, "vector_exp: worst relative error %.3g over [-87, 88]", worst);
    printf(" vector_exp: worst relative error %.3g over [-87, 88]\n", worst);
    CHECK(vector_exp(0) == 1, "vector_exp(0) = %.9g", (double)vector_exp(0));
    CHECK(vector_exp((real)-INFINITY) == 0, "vector_exp(-inf) = %g", (double)vector_exp((real)-INFINITY));
    CHECK(vector_exp((real)INFINITY) == (real)INFINITY, "vector_exp(inf)");
    CHECK(isnan(vector_exp((real)NAN)), "vector_exp(NaN) is not NaN");
    /* below the float range's useful part, 0 (or, in the double build, exp's tiny value) */
    CHECK(vector_exp(-200) >= 0 && vector_exp(-200) < 1e-37, "vector_exp(-200)");
}

int main(void) {
    Rng rng = {0x13198A2E03707344ull};
    test_embedding_values();
    test_rmsnorm_values();
    test_rope_values();
    test_swiglu_values();
    test_residual_values();
    test_logprob_values();
    test_attention_reference(&rng, 2, 5, 4, 2, 6);
    test_attention_reference(&rng, 1, 7, 3, 1, 6);
    test_attention_reference(&rng, 2, 139, 2, 1, 5); /* three query (and key) blocks when fused */
    test_attention_single_position(&rng);
    test_attention_causal(&rng);
    test_matmul_naive(&rng, 7, 13, 5, 1, 0.5f, 1);
    test_matmul_naive(&rng, 37, 9, 19, 0, 1, 0);
    test_matmul_naive(&rng, 1, 33, 3, 1, -1.5f, 0);
    /* no bias, accumulating (the LoRA branch); and sizes past a BLAS's small-matrix paths */
    test_matmul_naive(&rng, 67, 150, 45, 0, 0.25f, 1);
    test_thread_count_independence(&rng);
    test_fused_attention_thread_count_independence(&rng);
    test_vector_exp();
    return test_finish("test_ops_values (" PAFT_REAL_NAME ")");
}
