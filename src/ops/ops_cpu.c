/*
 * ops_cpu.c - the CPU backend of ops.h: plain C11 + OpenMP, computing in `real` (float in the
 * program, double in the gradient-check build). This is the readable reference every other backend
 * is tested against, so each op is written the obvious way first and made fast only where that
 * costs little clarity: loops run over rows in parallel, inner loops walk contiguous memory, and no
 * two threads ever write the same gradient element (results do not depend on the thread count,
 * with one exception: the fused attention's backward picks how to split its work by the thread
 * count, and its two ways add in different orders; PAFT_CPU_ATTENTION_PASSES fixes it).
 *
 * Numerics follow PyTorch/transformers in fp32 (the model tests compare logits to 1e-5):
 *   - dot products (matmul, attention scores) accumulate in `real`, like BLAS does;
 *   - the long reductions whose rounding error grows with the row length -- RMSNorm's sum of
 *     squares over C, the softmax denominators, logsumexp over the vocabulary, and the column
 *     sums over all N token rows in the weight-vector gradients (dweight of RMSNorm, dbias) --
 *     accumulate in double. They are O(N*C) next to the O(N*C*OC) matmuls, so the cost is noise,
 *     and they are then at least as accurate as PyTorch's (pairwise/vectorised) float reductions.
 */
#include "ops/ops.h"
#include "ops/vector_exp.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* With -DPAFT_BLAS (CMake finds OpenBLAS or the BLAS that BLA_VENDOR names) the linear layers and
 * the fused attention's block products go through cblas_?gemm: the same sums, computed by a tuned
 * kernel in a different order (5-12x shorter steps on AVX-512, docs/BENCHMARKS.md).
 * PAFT_CPU_BLAS=0 in the environment runs the loops below instead; the ops tests run both
 * (tests/ops/CMakeLists.txt, the *_loops tests). */
#ifdef PAFT_WITH_BLAS
#include <cblas.h>
#ifdef PAFT_REAL_DOUBLE
#define cblas_gemm_real cblas_dgemm
#else
#define cblas_gemm_real cblas_sgemm
#endif
#endif

#ifdef PAFT_REAL_DOUBLE
#define real_exp exp
#else
#define real_exp expf
#endif

/* Column-block width for the reductions over token rows (the gradients of weight vectors): one
 * thread owns a block of columns and walks the rows, so each row segment it reads is contiguous
 * and no two threads add into the same element. 64 reals = a few cache lines. */
#define COLUMN_BLOCK 64

/* Token rows that share one pass over a weight row in the matmuls: the weight row stays in L1
 * while the rows of the tile read it, so the whole weight matrix streams from memory N/16 times
 * instead of N times. */
#define MATMUL_ROW_TILE 16

/* ---- embedding ----------------------------------------------------------------------------- */

void embedding_forward(real *out, const int32_t *tokens, const real *table, int N, int C,
                       int vocab_start, int vocab_rows) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        real *out_row = out + (size_t)n * C;
        int64_t row = (int64_t)tokens[n] - vocab_start;
        if (row >= 0 && row < vocab_rows) {
            memcpy(out_row, table + (size_t)row * C, (size_t)C * sizeof(real));
        } else {
            /* Another vocab shard owns this token; the TP all-reduce of the outputs adds its row. */
            memset(out_row, 0, (size_t)C * sizeof(real));
        }
    }
}

void embedding_backward(real *dtable, const real *dout, const int32_t *tokens, int N, int C,
                        int vocab_start, int vocab_rows) {
    if (!dtable) return;
    /* The same token can appear in many rows, so parallelising over rows would race on its table
     * row. Parallelise over column blocks instead: every thread sees every token, but only adds
     * into its own columns. */
#pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += COLUMN_BLOCK) {
        int c1 = PAFT_MIN(C, c0 + COLUMN_BLOCK);
        for (int n = 0; n < N; n++) {
            int64_t row = (int64_t)tokens[n] - vocab_start;
            if (row < 0 || row >= vocab_rows) continue;
            real *dst = dtable + (size_t)row * C;
            const real *src = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++) dst[c] += src[c];
        }
    }
}

/* ---- RMSNorm ------------------------------------------------------------------------------- */

void rmsnorm_forward(real *out, real *rstd, const real *inp, const real *weight, int N, int C,
                     float eps) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const real *x = inp + (size_t)n * C;
        real *y = out + (size_t)n * C;
        double sum_squares = 0;  /* long reduction: double, see the top of the file */
        for (int c = 0; c < C; c++) sum_squares += (double)x[c] * x[c];
        real r = (real)(1.0 / sqrt(sum_squares / C + (double)eps));
        rstd[n] = r;
        /* HF LlamaRMSNorm: weight * (x * rsqrt(var + eps)), normalise first, then scale. */
        for (int c = 0; c < C; c++) y[c] = (x[c] * r) * weight[c];
    }
}

/* With r = (mean(x^2) + eps)^(-1/2) and y_c = w_c x_c r, dr/dx_j = -r^3 x_j / C, so
 *   dx_j = r w_j dy_j - (r^3 / C) x_j sum_c(w_c dy_c x_c),   dw_c = sum_n dy_c x_c r. */
void rmsnorm_backward(real *dinp, real *dweight, const real *dout, const real *inp,
                      const real *weight, const real *rstd, int N, int C) {
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const real *x = inp + (size_t)n * C;
            const real *dy = dout + (size_t)n * C;
            real *dx = dinp + (size_t)n * C;
            double r = rstd[n];
            double dot = 0;
            for (int c = 0; c < C; c++) dot += (double)weight[c] * dy[c] * x[c];
            real k = (real)(r * r * r * dot / C);
            real rr = (real)r;
            for (int c = 0; c < C; c++) dx[c] += rr * weight[c] * dy[c] - k * x[c];
        }
    }
    if (dweight) {
        /* A sum over all rows into one vector: threads own column blocks (no race, no atomics). */
#pragma omp parallel for schedule(static)
        for (int c0 = 0; c0 < C; c0 += COLUMN_BLOCK) {
            int c1 = PAFT_MIN(C, c0 + COLUMN_BLOCK);
            double acc[COLUMN_BLOCK] = {0};
            for (int n = 0; n < N; n++) {
                const real *x = inp + (size_t)n * C;
                const real *dy = dout + (size_t)n * C;
                double r = rstd[n];
                for (int c = c0; c < c1; c++) acc[c - c0] += (double)dy[c] * x[c] * r;
            }
            for (int c = c0; c < c1; c++) dweight[c] += (real)acc[c - c0];
        }
    }
}

/* ---- linear layer -------------------------------------------------------------------------- */

int cpu_blas_enabled(void) {
#ifdef PAFT_WITH_BLAS
    const char *setting = getenv("PAFT_CPU_BLAS");
    return !(setting && strcmp(setting, "0") == 0);
#else
    return 0;
#endif
}

#ifdef PAFT_BLAS_OPENBLAS
char *openblas_get_config(void);  /* OpenBLAS's own API, not CBLAS's */
#endif

void cpu_blas_describe(char *text, size_t size) {
#ifdef PAFT_WITH_BLAS
    if (!cpu_blas_enabled()) {
        snprintf(text, size, "loops (PAFT_CPU_BLAS=0)");
        return;
    }
#ifdef PAFT_BLAS_OPENBLAS
    /* OpenBLAS picks its kernels by the CPU it detects; a virtual machine's generic CPU model can
     * leave it on old SSE3 ones ("Prescott"), which OPENBLAS_CORETYPE overrides (INSTALL). */
    snprintf(text, size, "%s", openblas_get_config());  /* names the kernels: "... Haswell ..." */
#else
    snprintf(text, size, "CBLAS");
#endif
#else
    snprintf(text, size, "loops (built without BLAS)");
#endif
}

/* C[M][N] = alpha op(A) op(B) + beta C, row-major, leading dimensions as BLAS's: cblas_?gemm when
 * use_blas (cpu_blas_enabled(), read once per op, not per product), else loops, which cover the
 * three forms the fused attention uses, each with its inner loop over contiguous memory (the
 * linear layers have tuned loops of their own below). */
static void gemm(int use_blas, int trans_a, int trans_b, int M, int N, int K, real alpha,
                 const real *A, size_t lda, const real *B, size_t ldb, real beta, real *C,
                 size_t ldc) {
#ifdef PAFT_WITH_BLAS
    if (use_blas) {
        cblas_gemm_real(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                        trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, (int)lda, B,
                        (int)ldb, beta, C, (int)ldc);
        return;
    }
#endif
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) C[i * ldc + j] = beta == 0 ? 0 : beta * C[i * ldc + j];
    if (!trans_a && trans_b) { /* C[i][j] += alpha A[i][:] . B[j][:] */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                real dot = 0;
#pragma omp simd reduction(+ : dot)
                for (int k = 0; k < K; k++) dot += A[i * lda + k] * B[j * ldb + k];
                C[i * ldc + j] += alpha * dot;
            }
    } else if (!trans_b) { /* C[i][:] += alpha a_ik B[k][:], a_ik = A[i][k] or A[k][i] */
        for (int i = 0; i < M; i++)
            for (int k = 0; k < K; k++) {
                real a = alpha * (trans_a ? A[k * lda + i] : A[i * lda + k]);
#pragma omp simd
                for (int j = 0; j < N; j++) C[i * ldc + j] += a * B[k * ldb + j];
            }
    } else {
        PAFT_FATAL("gemm: the loops have no A^T B^T form");
    }
}

void matmul_forward(real *out, const real *inp, const real *weight, const real *bias, int N, int C,
                    int OC, real alpha, int accumulate) {
    if (cpu_blas_enabled()) {
        /* The bias first, then out = alpha inp W^T + out (beta = 1), or + 0 on a fresh output. */
        if (bias) {
#pragma omp parallel for schedule(static)
            for (int n = 0; n < N; n++) {
                real *y = out + (size_t)n * OC;
                for (int o = 0; o < OC; o++) y[o] = accumulate ? y[o] + bias[o] : bias[o];
            }
        }
        real beta = (bias || accumulate) ? 1 : 0;
        gemm(1, 0, 1, N, OC, C, alpha, inp, (size_t)C, weight, (size_t)C, beta, out, (size_t)OC);
        return;
    }
    /* Every (row tile, output feature) pair writes its own outputs, so both loops parallelise;
     * collapsing them keeps all threads busy even when N is a single tile. */
#pragma omp parallel for collapse(2) schedule(static)
    for (int n0 = 0; n0 < N; n0 += MATMUL_ROW_TILE) {
        for (int o = 0; o < OC; o++) {
            const real *w = weight + (size_t)o * C;
            real b = bias ? bias[o] : 0;
            int n1 = PAFT_MIN(N, n0 + MATMUL_ROW_TILE);
            for (int n = n0; n < n1; n++) {
                const real *x = inp + (size_t)n * C;
                real sum = 0;
#pragma omp simd reduction(+ : sum)
                for (int c = 0; c < C; c++) sum += x[c] * w[c];
                real value = alpha * sum + b;
                real *y = out + (size_t)n * OC + o;
                *y = accumulate ? *y + value : value;
            }
        }
    }
}

void matmul_backward(real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                     const real *weight, int N, int C, int OC, real alpha) {
    if (cpu_blas_enabled()) {
        /* dinp[N][C] += alpha dout[N][OC] W[OC][C];  dweight[OC][C] += alpha dout^T inp[N][C].
         * Then fall through to the loops for dbias alone. */
        if (dinp)
            gemm(1, 0, 0, N, C, OC, alpha, dout, (size_t)OC, weight, (size_t)C, 1, dinp, (size_t)C);
        if (dweight)
            gemm(1, 1, 0, OC, C, N, alpha, dout, (size_t)OC, inp, (size_t)C, 1, dweight, (size_t)C);
        dinp = NULL;
        dweight = NULL;
    }
    /* dinp[n][:] += alpha * sum_o dout[n][o] W[o][:]: a thread owns a tile of dinp rows, and for
     * each weight row adds a multiple of it (contiguous over C) into each row of its tile. */
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (int n0 = 0; n0 < N; n0 += MATMUL_ROW_TILE) {
            int n1 = PAFT_MIN(N, n0 + MATMUL_ROW_TILE);
            for (int o = 0; o < OC; o++) {
                const real *w = weight + (size_t)o * C;
                for (int n = n0; n < n1; n++) {
                    real g = alpha * dout[(size_t)n * OC + o];
                    real *dx = dinp + (size_t)n * C;
#pragma omp simd
                    for (int c = 0; c < C; c++) dx[c] += g * w[c];
                }
            }
        }
    }
    /* dweight[o][:] += alpha * sum_n dout[n][o] inp[n][:]: a thread owns a tile of dweight rows
     * (so no two threads add into the same row) and streams the input rows past it. */
    if (dweight) {
#pragma omp parallel for schedule(static)
        for (int o0 = 0; o0 < OC; o0 += MATMUL_ROW_TILE) {
            int o1 = PAFT_MIN(OC, o0 + MATMUL_ROW_TILE);
            for (int n = 0; n < N; n++) {
                const real *x = inp + (size_t)n * C;
                for (int o = o0; o < o1; o++) {
                    real g = alpha * dout[(size_t)n * OC + o];
                    real *dw = dweight + (size_t)o * C;
#pragma omp simd
                    for (int c = 0; c < C; c++) dw[c] += g * x[c];
                }
            }
        }
    }
    if (dbias) {
#pragma omp parallel for schedule(static)
        for (int o0 = 0; o0 < OC; o0 += COLUMN_BLOCK) {
            int o1 = PAFT_MIN(OC, o0 + COLUMN_BLOCK);
            double acc[COLUMN_BLOCK] = {0};
            for (int n = 0; n < N; n++) {
                const real *dy = dout + (size_t)n * OC;
                for (int o = o0; o < o1; o++) acc[o - o0] += dy[o];
            }
            for (int o = o0; o < o1; o++) dbias[o] += (real)acc[o - o0];
        }
    }
}

/* ---- rotary position embedding ------------------------------------------------------------- */

/* One routine for both directions: the backward applies the transposed rotation, which is the
 * rotation by -a, i.e. the same formulas with sin negated. */
static void rope_rotate(real *x, const real *cos_table, const real *sin_table,
                        const int32_t *positions, int N, int H, int D, real sin_sign) {
    if (D % 2 != 0) PAFT_FATAL("rope: head dimension %d is odd (expected an even D)", D);
    int half = D / 2;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const real *cos_row = cos_table + (size_t)positions[n] * half;
        const real *sin_row = sin_table + (size_t)positions[n] * half;
        for (int h = 0; h < H; h++) {
            real *head = x + ((size_t)n * H + h) * D;
            for (int i = 0; i < half; i++) {
                real cos_a = cos_row[i], sin_a = sin_sign * sin_row[i];
                real x1 = head[i], x2 = head[i + half];
                head[i] = x1 * cos_a - x2 * sin_a;
                head[i + half] = x2 * cos_a + x1 * sin_a;
            }
        }
    }
}

void rope_forward(real *x, const real *cos_table, const real *sin_table, const int32_t *positions,
                  int N, int H, int D) {
    rope_rotate(x, cos_table, sin_table, positions, N, H, D, 1);
}

void rope_backward(real *dx, const real *cos_table, const real *sin_table,
                   const int32_t *positions, int N, int H, int D) {
    rope_rotate(dx, cos_table, sin_table, positions, N, H, D, -1);
}

/* ---- causal grouped-query attention -------------------------------------------------------- */

static void check_heads(const char *op, int Hq, int Hkv) {
    if (Hkv <= 0 || Hq % Hkv != 0)
        PAFT_FATAL("%s: %d query heads are not a multiple of %d KV heads", op, Hq, Hkv);
}

/* The simple form, a row at a time.
 * One query row t of one head: p[j] = softmax_j(q_t . k_j * scale) over the visible positions
 * j <= t, and out_t = sum_j p_j v_j. k and v point at position 0 of the row's KV head, positions
 * `stride` reals apart. */
static void attention_row_forward(real *out_t, real *p, const real *q_t, const real *k,
                                  const real *v, size_t stride, int t, int D, real scale) {
    real max_score = -INFINITY;
    for (int j = 0; j <= t; j++) {
        const real *k_j = k + (size_t)j * stride;
        real dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < D; d++) dot += q_t[d] * k_j[d];
        p[j] = dot * scale;
        if (p[j] > max_score) max_score = p[j];
    }
    double sum = 0; /* softmax, max subtracted so exp cannot overflow */
    for (int j = 0; j <= t; j++) {
        p[j] = real_exp(p[j] - max_score);
        sum += p[j];
    }
    real norm = (real)sum;
    for (int j = 0; j <= t; j++) p[j] /= norm;
    for (int d = 0; d < D; d++) out_t[d] = 0;
    for (int j = 0; j <= t; j++) {
        const real *v_j = v + (size_t)j * stride;
#pragma omp simd
        for (int d = 0; d < D; d++) out_t[d] += p[j] * v_j[d];
    }
}

void attention_forward(real *out, real *probs, const real *q, const real *k, const real *v, int B,
                       int T, int Hq, int Hkv, int D) {
    check_heads("attention_forward", Hq, Hkv);
    int group = Hq / Hkv;  /* query heads per KV head (HF repeat_kv: h -> h / group) */
    real scale = (real)(1.0 / sqrt((double)D));
    size_t stride = (size_t)Hkv * D; /* from one position of a KV head to the next */
#pragma omp parallel for collapse(3) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < Hq; h++) {
            for (int t = 0; t < T; t++) {
                size_t kv0 = (size_t)b * T * stride + (size_t)(h / group) * D;
                size_t row_qt = (((size_t)b * T + t) * Hq + h) * D;
                real *p = probs + (((size_t)b * Hq + h) * T + t) * T;
                attention_row_forward(out + row_qt, p, q + row_qt, k + kv0, v + kv0, stride, t, D,
                                      scale);
                for (int j = t + 1; j < T; j++) p[j] = 0; /* the causal mask */
            }
        }
    }
}

/* With s = q k^T * scale, p = softmax(s) per row, out = p v:
 *   dv_j += sum_t p_tj dout_t,   dp_tj = dout_t . v_j,   ds_tj = p_tj (dp_tj - sum_i p_ti dp_ti),
 *   dq_t += scale sum_j ds_tj k_j,   dk_j += scale sum_t ds_tj q_t.
 * This is one query row t of that, given its probabilities p[0..t]; dp is scratch for T reals. */
static void attention_row_backward(real *dq_t, real *dk, real *dv, const real *dout_t,
                                   const real *q_t, const real *k, const real *v, const real *p,
                                   real *dp, size_t stride, int t, int D, real scale) {
    double p_dot_dp = 0;
    for (int j = 0; j <= t; j++) {
        const real *v_j = v + (size_t)j * stride;
        real dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < D; d++) dot += dout_t[d] * v_j[d];
        dp[j] = dot;
        p_dot_dp += (double)p[j] * dot;
        if (dv) {
            real *dv_j = dv + (size_t)j * stride;
#pragma omp simd
            for (int d = 0; d < D; d++) dv_j[d] += p[j] * dout_t[d];
        }
    }
    for (int j = 0; j <= t; j++) {
        real ds = p[j] * (dp[j] - (real)p_dot_dp) * scale;
        if (dq_t) {
            const real *k_j = k + (size_t)j * stride;
#pragma omp simd
            for (int d = 0; d < D; d++) dq_t[d] += ds * k_j[d];
        }
        if (dk) {
            real *dk_j = dk + (size_t)j * stride;
#pragma omp simd
            for (int d = 0; d < D; d++) dk_j[d] += ds * q_t[d];
        }
    }
}

/* The query heads of one group all add into the same dk/dv head, and every query position adds
 * into the dk/dv of all earlier positions; so a thread owns one (batch, KV head) pair with all its
 * query heads and positions, and no two threads ever write the same element. This parallelises
 * over B*Hkv only, which is enough for the reference backend. */
void attention_backward(real *dq, real *dk, real *dv, const real *dout, const real *probs,
                        const real *q, const real *k, const real *v, int B, int T, int Hq, int Hkv,
                        int D) {
    check_heads("attention_backward", Hq, Hkv);
    if (!dq && !dk && !dv) return;
    int group = Hq / Hkv;
    real scale = (real)(1.0 / sqrt((double)D));
    size_t stride = (size_t)Hkv * D;
#pragma omp parallel
    {
        real *dp = paft_malloc((size_t)T * sizeof(real)); /* one row of dL/dp, per thread */
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++) {
            for (int kv_head = 0; kv_head < Hkv; kv_head++) {
                size_t kv0 = (size_t)b * T * stride + (size_t)kv_head * D;
                for (int h = kv_head * group; h < (kv_head + 1) * group; h++) {
                    for (int t = 0; t < T; t++) {
                        size_t row_qt = (((size_t)b * T + t) * Hq + h) * D;
                        const real *p = probs + (((size_t)b * Hq + h) * T + t) * T;
                        attention_row_backward(dq ? dq + row_qt : NULL, dk ? dk + kv0 : NULL,
                                               dv ? dv + kv0 : NULL, dout + row_qt, q + row_qt,
                                               k + kv0, v + kv0, p, dp, stride, t, D, scale);
                    }
                }
            }
        }
        free(dp);
    }
}

/* The fused form, tiles of query rows by key positions, their products as GEMMs (gemm above: BLAS
 * or loops): for one head with Q_t the query rows t0..t0+rows-1 and K, V the key positions
 * s0..s0+cols-1, S = scale Q_t K^T and P = exp(S - lse) under the causal mask. The forward takes
 * each block of query rows against every position it can see (cols = t0 + rows, s0 = 0), finds
 * the rows' lse, and writes out_blk = P V. The probabilities live in a per-thread
 * [QUERY_BLOCK][T] scratch only while their tile is computed; lse keeps what the backward needs to
 * form them again. */
#define QUERY_BLOCK 64
#define KEY_BLOCK 64 /* the backward's dk, dv pass: (T - s0) x KEY_BLOCK tiles in the same scratch */
_Static_assert(KEY_BLOCK <= QUERY_BLOCK, "a key block's tile must fit the [QUERY_BLOCK][T] scratch");

/* P = exp(scale Q_t K^T - lse) on the tile (rows x cols, row stride cols): p_ic for query row
 * t0 + i and key position s0 + c, 0 where the key lies in the row's future (s0 + c > t0 + i).
 * With lse NULL the rows' log-sum-exp is found here (the forward, s0 = 0 and cols = t0 + rows: the
 * whole visible row) and written to row_lse. */
static void attention_tile_probs(int use_blas, real *P, const real *q_rows, size_t q_stride,
                                 const real *k_cols, size_t kv_stride, int t0, int rows, int s0,
                                 int cols, int D, real scale, const real *lse, real *row_lse) {
    gemm(use_blas, 0, 1, rows, cols, D, scale, q_rows, q_stride, k_cols, kv_stride, 0, P,
         (size_t)cols);
    for (int i = 0; i < rows; i++) {
        real *p = P + (size_t)i * cols;
        const int visible = PAFT_MAX(0, PAFT_MIN(cols, t0 + i + 1 - s0));
        real row_l;
        if (lse) {
            row_l = lse[i];
        } else {
            real max_score = -INFINITY;
            for (int c = 0; c < visible; c++) max_score = p[c] > max_score ? p[c] : max_score;
            double sum = 0;
#pragma omp simd reduction(+ : sum)
            for (int c = 0; c < visible; c++) sum += vector_exp(p[c] - max_score);
            row_l = max_score + (real)log(sum);
            row_lse[i] = row_l;
        }
#pragma omp simd
        for (int c = 0; c < visible; c++) p[c] = vector_exp(p[c] - row_l);
        for (int c = visible; c < cols; c++) p[c] = 0;
    }
}

void attention_forward_fused(real *out, real *lse, const real *q, const real *k, const real *v,
                             int B, int T, int Hq, int Hkv, int D) {
    check_heads("attention_forward_fused", Hq, Hkv);
    const int blas = cpu_blas_enabled();
    const int group = Hq / Hkv, blocks = (T + QUERY_BLOCK - 1) / QUERY_BLOCK;
    const real scale = (real)(1.0 / sqrt((double)D));
    const size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
#pragma omp parallel
    {
        real *P = paft_malloc((size_t)QUERY_BLOCK * T * sizeof(real));
        /* later blocks see more positions: dynamic scheduling evens the threads out */
#pragma omp for collapse(3) schedule(dynamic)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < Hq; h++) {
                for (int blk = 0; blk < blocks; blk++) {
                    const int t0 = blk * QUERY_BLOCK, rows = PAFT_MIN(QUERY_BLOCK, T - t0);
                    const int width = t0 + rows; /* the block's last row sees 0..t0+rows-1 */
                    const size_t kv0 = (size_t)b * T * kv_stride + (size_t)(h / group) * D;
                    const size_t q0 = ((size_t)b * T + t0) * q_stride + (size_t)h * D;
                    attention_tile_probs(blas, P, q + q0, q_stride, k + kv0, kv_stride, t0, rows,
                                         0, width, D, scale, NULL,
                                         lse + ((size_t)b * Hq + h) * T + t0);
                    gemm(blas, 0, 0, rows, D, width, 1, P, (size_t)width, v + kv0, kv_stride, 0,
                         out + q0, q_stride);
                }
            }
        }
        free(P);
    }
}

/* dP = dout V^T and dS = P o (dP - delta) scale on a tile (rows x cols), written over dS, where
 * delta_t = sum_j p_tj dp_tj = dout_t . out_t is the softmax backward's row term. */
static void attention_tile_dscores(int use_blas, real *dS, const real *P, const real *dout_rows,
                                   size_t q_stride, const real *v_cols, size_t kv_stride,
                                   const real *row_delta, int rows, int cols, int D, real scale) {
    gemm(use_blas, 0, 1, rows, cols, D, 1, dout_rows, q_stride, v_cols, kv_stride, 0, dS,
         (size_t)cols);
    for (int i = 0; i < rows; i++) {
        const real *p = P + (size_t)i * cols;
        real *ds = dS + (size_t)i * cols;
        for (int c = 0; c < cols; c++) ds[c] = p[c] * (ds[c] - row_delta[i]) * scale;
    }
}

/* The backward adds into dq, dk, dv (any may be NULL). Per tile, with delta_t = dout_t . out_t:
 * dv += P^T dout, dq += dS K, dk += dS^T Q. Two ways to share that among threads without two of
 * them adding into the same rows:
 *   one pass: a thread owns a (batch, KV head) pair and walks its group's heads and their query
 *     blocks, adding into its dk, dv: five products per (query, key) pair, but only B x KV heads
 *     tasks (one, with tensor parallelism on a rank holding one KV head and B = 1);
 *   two passes: dq over (batch, query head, query block), then dk, dv over (batch, KV head, key
 *     block), each pass forming its tiles' P and dS again: seven products and two exponentials
 *     per pair, and tasks enough for any number of threads.
 * attention_backward_passes picks the one the thread count should finish sooner. Each output element
 * is summed in a fixed order within either way, whichever thread computes it. */
static int attention_backward_passes(int B, int Hkv) {
    /* PAFT_CPU_ATTENTION_PASSES = 1 or 2 overrides (tests/ops/bench_attention.c compares them) */
    const char *forced = getenv("PAFT_CPU_ATTENTION_PASSES");
    if (forced && forced[0]) {
        if (strcmp(forced, "1") != 0 && strcmp(forced, "2") != 0)
            PAFT_FATAL("PAFT_CPU_ATTENTION_PASSES=%s: expected 1 or 2 (or unset: by thread count)",
                       forced);
        return forced[0] - '0';
    }
    const long tasks = (long)B * Hkv, threads = omp_get_max_threads();
    const long rounds = (tasks + threads - 1) / threads; /* of equal one-pass tasks */
    /* With W the one pass's work, it takes W rounds / tasks, two passes about 1.75 W / threads:
     * more than the 7/5 of the products, as each pass also forms P's exponentials again
     * (bench_attention on a 2-core AVX-512 VM: 1.7-1.8 at D = 64 and 128; docs/BENCHMARKS.md). */
    return 4 * rounds * threads <= 7 * tasks ? 1 : 2;
}

/* The one-pass way: the whole block of query rows t0..t0+rows-1 against the positions it sees. */
static void attention_backward_block(int use_blas, real *P, real *dS, real *dq, real *dk, real *dv,
                                     const real *dout, const real *lse, const real *delta,
                                     const real *q, const real *k, const real *v, size_t q0,
                                     size_t kv0, size_t row0, int t0, int rows, int D,
                                     size_t q_stride, size_t kv_stride, real scale) {
    const int width = t0 + rows;
    attention_tile_probs(use_blas, P, q + q0, q_stride, k + kv0, kv_stride, t0, rows, 0, width, D,
                         scale, lse + row0, NULL);
    if (dv)
        gemm(use_blas, 1, 0, width, D, rows, 1, P, (size_t)width, dout + q0, q_stride, 1, dv + kv0,
             kv_stride);
    if (!dq && !dk) return;
    attention_tile_dscores(use_blas, dS, P, dout + q0, q_stride, v + kv0, kv_stride, delta + row0,
                           rows, width, D, scale);
    if (dq)
        gemm(use_blas, 0, 0, rows, D, width, 1, dS, (size_t)width, k + kv0, kv_stride, 1, dq + q0,
             q_stride);
    if (dk)
        gemm(use_blas, 1, 0, width, D, rows, 1, dS, (size_t)width, q + q0, q_stride, 1, dk + kv0,
             kv_stride);
}

void attention_backward_fused(real *dq, real *dk, real *dv, const real *dout, const real *out,
                              const real *lse, const real *q, const real *k, const real *v, int B,
                              int T, int Hq, int Hkv, int D) {
    check_heads("attention_backward_fused", Hq, Hkv);
    if (!dq && !dk && !dv) return;
    const int blas = cpu_blas_enabled(), passes = attention_backward_passes(B, Hkv);
    const int group = Hq / Hkv;
    const int q_blocks = (T + QUERY_BLOCK - 1) / QUERY_BLOCK;
    const int k_blocks = (T + KEY_BLOCK - 1) / KEY_BLOCK;
    const real scale = (real)(1.0 / sqrt((double)D));
    const size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;

    /* delta [B][Hq][T], lse's layout: once per row, not once per pass or tile over it */
    real *delta = paft_malloc((size_t)B * Hq * T * sizeof(real));
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < Hq; h++) {
                const size_t at = ((size_t)b * T + t) * q_stride + (size_t)h * D;
                double dot = 0;
                for (int d = 0; d < D; d++) dot += (double)dout[at + d] * out[at + d];
                delta[((size_t)b * Hq + h) * T + t] = (real)dot;
            }
        }
    }

#pragma omp parallel
    {
        real *P = paft_malloc((size_t)QUERY_BLOCK * T * sizeof(real));
        real *dS = paft_malloc((size_t)QUERY_BLOCK * T * sizeof(real));
        if (passes == 1) {
#pragma omp for collapse(2) schedule(dynamic)
            for (int b = 0; b < B; b++) {
                for (int kv_head = 0; kv_head < Hkv; kv_head++) {
                    const size_t kv0 = (size_t)b * T * kv_stride + (size_t)kv_head * D;
                    for (int h = kv_head * group; h < (kv_head + 1) * group; h++) {
                        for (int blk = 0; blk < q_blocks; blk++) {
                            const int t0 = blk * QUERY_BLOCK, rows = PAFT_MIN(QUERY_BLOCK, T - t0);
                            attention_backward_block(
                                blas, P, dS, dq, dk, dv, dout, lse, delta, q, k, v,
                                ((size_t)b * T + t0) * q_stride + (size_t)h * D, kv0,
                                ((size_t)b * Hq + h) * T + t0, t0, rows, D, q_stride, kv_stride,
                                scale);
                        }
                    }
                }
            }
        }
        if (passes == 2 && dq) {
            /* later blocks see more positions: dynamic scheduling evens the threads out */
#pragma omp for collapse(3) schedule(dynamic)
            for (int b = 0; b < B; b++) {
                for (int h = 0; h < Hq; h++) {
                    for (int blk = 0; blk < q_blocks; blk++) {
                        const int t0 = blk * QUERY_BLOCK, rows = PAFT_MIN(QUERY_BLOCK, T - t0);
                        attention_backward_block(
                            blas, P, dS, dq, NULL, NULL, dout, lse, delta, q, k, v,
                            ((size_t)b * T + t0) * q_stride + (size_t)h * D,
                            (size_t)b * T * kv_stride + (size_t)(h / group) * D,
                            ((size_t)b * Hq + h) * T + t0, t0, rows, D, q_stride, kv_stride, scale);
                    }
                }
            }
        }
        if (passes == 2 && (dk || dv)) {
            /* the first key blocks are seen by the most query rows: dynamic scheduling */
#pragma omp for collapse(3) schedule(dynamic)
            for (int b = 0; b < B; b++) {
                for (int kv_head = 0; kv_head < Hkv; kv_head++) {
                    for (int blk = 0; blk < k_blocks; blk++) {
                        const int s0 = blk * KEY_BLOCK, cols = PAFT_MIN(KEY_BLOCK, T - s0);
                        const size_t kv0 =
                            ((size_t)b * T + s0) * kv_stride + (size_t)kv_head * D;
                        for (int h = kv_head * group; h < (kv_head + 1) * group; h++) {
                            /* the query rows that see any of these keys, t >= s0, all at once:
                             * a (T - s0) x KEY_BLOCK tile fits the [QUERY_BLOCK][T] scratch,
                             * and the products over its rows are long, as BLAS likes them */
                            const int rows = T - s0;
                            const size_t q0 = ((size_t)b * T + s0) * q_stride + (size_t)h * D;
                            const size_t row0 = ((size_t)b * Hq + h) * T + s0;
                            attention_tile_probs(blas, P, q + q0, q_stride, k + kv0, kv_stride, s0,
                                                 rows, s0, cols, D, scale, lse + row0, NULL);
                            if (dv)
                                gemm(blas, 1, 0, cols, D, rows, 1, P, (size_t)cols, dout + q0,
                                     q_stride, 1, dv + kv0, kv_stride);
                            if (!dk) continue;
                            attention_tile_dscores(blas, dS, P, dout + q0, q_stride, v + kv0,
                                                   kv_stride, delta + row0, rows, cols, D, scale);
                            gemm(blas, 1, 0, cols, D, rows, 1, dS, (size_t)cols, q + q0, q_stride,
                                 1, dk + kv0, kv_stride);
                        }
                    }
                }
            }
        }
        free(dS);
        free(P);
    }
    free(delta);
}

/* ---- SwiGLU -------------------------------------------------------------------------------- */

/* silu(g) = g * sigmoid(g), written as g / (1 + exp(-g)) like PyTorch; for very negative g,
 * exp(-g) overflows to inf and the result is a clean 0, not NaN. */
void swiglu_forward(real *out, const real *gate, const real *up, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        real g = gate[i];
        out[i] = g / (1 + vector_exp(-g)) * up[i];
    }
}

/* d silu / dg = s + g s (1 - s) = s (1 + g (1 - s)), s = sigmoid(g). */
void swiglu_backward(real *dgate, real *dup, const real *dout, const real *gate, const real *up,
                     size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        real g = gate[i];
        real s = 1 / (1 + vector_exp(-g));
        if (dgate) dgate[i] += dout[i] * up[i] * s * (1 + g * (1 - s));
        if (dup) dup[i] += dout[i] * g * s;
    }
}

/* ---- residual ------------------------------------------------------------------------------ */

void residual_forward(real *out, const real *a, const real *b, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

/* ---- token log-probabilities --------------------------------------------------------------- */

static void check_targets(const char *op, const int32_t *targets, int N, int V) {
    for (int n = 0; n < N; n++) {
        if (targets[n] >= V)
            PAFT_FATAL("%s: target %d of row %d is outside the vocabulary of %d tokens", op,
                       (int)targets[n], n, V);
    }
}

/* ---- vocab-parallel pieces ---------------------------------------------------------------
 * A tensor-parallel rank holds the logits of vocabulary columns [vocab_start, vocab_start + V).
 * logp = target logit - lse needs three whole-row reductions; each piece below is the local part
 * of one, and the model all-reduces between them (max, then sum, then sum). With the whole
 * vocabulary on one rank (vocab_start = 0) they compose into logprob_forward. */

void logits_row_max(real *row_max, const real *logits, int N, int V) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const real *x = logits + (size_t)n * V;
        real m = -INFINITY;
        for (int j = 0; j < V; j++) m = x[j] > m ? x[j] : m;
        row_max[n] = m;
    }
}

void logits_row_sumexp(double *sumexp, const real *logits, const real *row_max, int N, int V) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const real *x = logits + (size_t)n * V;
        /* a sum of up to ~10^5 terms: double, see the top of the file */
        double sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < V; j++) sum += vector_exp(x[j] - row_max[n]);
        sumexp[n] = sum;
    }
}

void logits_target(double *target_logit, const real *logits, const int32_t *targets,
                   int vocab_start, int N, int V) {
    for (int n = 0; n < N; n++) {
        int local = targets[n] - vocab_start;
        target_logit[n] = targets[n] >= 0 && local >= 0 && local < V
                              ? (double)logits[(size_t)n * V + local]
                              : 0.0;
    }
}

void logprob_backward_shard(real *dlogits, const real *dlogp, const real *logits, const real *lse,
                            const int32_t *targets, int vocab_start, int N, int V) {
    if (!dlogits) return;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) continue; /* no target: logp was the constant 0 */
        const real *x = logits + (size_t)n * V;
        real *dx = dlogits + (size_t)n * V;
        real g = dlogp[n];
#pragma omp simd
        for (int j = 0; j < V; j++) dx[j] -= g * vector_exp(x[j] - lse[n]);
        int local = targets[n] - vocab_start;
        if (local >= 0 && local < V) dx[local] += g;
    }
}

void logprob_forward(real *logp, real *lse, const real *logits, const int32_t *targets, int N,
                     int V) {
    check_targets("logprob_forward", targets, N, V);
    real *row_max = paft_malloc((size_t)N * sizeof(real));
    double *sumexp = paft_malloc((size_t)N * sizeof(double));
    double *target = paft_malloc((size_t)N * sizeof(double));
    logits_row_max(row_max, logits, N, V);
    logits_row_sumexp(sumexp, logits, row_max, N, V);
    logits_target(target, logits, targets, 0, N, V);
    for (int n = 0; n < N; n++) {
        double row_lse = (double)row_max[n] + log(sumexp[n]);
        lse[n] = (real)row_lse;
        /* subtract before rounding, so logp keeps its digits when lse is large */
        logp[n] = targets[n] >= 0 ? (real)(target[n] - row_lse) : 0;
    }
    free(row_max);
    free(sumexp);
    free(target);
}

void logprob_backward(real *dlogits, const real *dlogp, const real *logits, const real *lse,
                      const int32_t *targets, int N, int V) {
    if (!dlogits) return;
    check_targets("logprob_backward", targets, N, V);
    logprob_backward_shard(dlogits, dlogp, logits, lse, targets, 0, N, V);
}
