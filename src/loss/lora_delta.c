/*
 * lora_delta.c - delta = scale * B A, PAFT's L1 penalty on it and its sparsity.
 * See lora_delta.h for the formulas. Loops are parallel over disjoint output elements (OpenMP),
 * so no two threads ever write the same gradient entry.
 */
#include "loss/lora_delta.h"

#include <math.h>
#include <stdlib.h>

void lora_delta(real *delta, const real *A, const real *B, int out_features, int in_features,
                int r, real scale) {
    const size_t in = (size_t)in_features;
#pragma omp parallel for schedule(static)
    for (int o = 0; o < out_features; o++) {
        real *row = delta + (size_t)o * in;
        for (size_t i = 0; i < in; i++) row[i] = 0;
        // row o of B A is a combination of the r rows of A, weighted by B[o][k]
        for (int k = 0; k < r; k++) {
            const real b = B[(size_t)o * r + k];
            const real *a_row = A + (size_t)k * in;
            for (size_t i = 0; i < in; i++) row[i] += b * a_row[i];
        }
        for (size_t i = 0; i < in; i++) row[i] *= scale;
    }
}

/* sign with sign(0) = 0: the subgradient of |x| that vanishes where delta is exactly zero. */
static inline real sign_or_zero(real x) { return (real)((x > 0) - (x < 0)); }

double l1_penalty(real *dA, real *dB, const real *A, const real *B, int out_features,
                  int in_features, int r, real scale, real lambda, real *delta_scratch) {
    const size_t in = (size_t)in_features;
    real *delta = delta_scratch;
    lora_delta(delta, A, B, out_features, in_features, r, scale);

    double abs_sum = 0;
#pragma omp parallel for schedule(static) reduction(+ : abs_sum)
    for (int o = 0; o < out_features; o++) {
        const real *row = delta + (size_t)o * in;
        double row_sum = 0;
        for (size_t i = 0; i < in; i++) row_sum += fabs((double)row[i]);
        abs_sum += row_sum;
    }

    const double coef = (double)lambda * (double)scale;  // d(lambda*|delta|)/dG through delta=sBA
    if (dB) {
        // dB[o][k] += coef * sum_i sign(delta[o][i]) A[k][i]: one thread per row o of dB
#pragma omp parallel for schedule(static)
        for (int o = 0; o < out_features; o++) {
            const real *row = delta + (size_t)o * in;
            for (int k = 0; k < r; k++) {
                const real *a_row = A + (size_t)k * in;
                double acc = 0;
                for (size_t i = 0; i < in; i++) acc += (double)(sign_or_zero(row[i]) * a_row[i]);
                dB[(size_t)o * r + k] += (real)(coef * acc);
            }
        }
    }
    if (dA) {
        // dA[k][i] += coef * sum_o B[o][k] sign(delta[o][i]). Threads own column ranges of dA,
        // so each streams through delta row by row (cache friendly) and writes only its columns.
        enum { COLS = 128, RANKS = 32 };  // accumulator tile: COLS columns x RANKS rows of dA
        const long long n_blocks = (long long)((in + COLS - 1) / COLS);
#pragma omp parallel for schedule(static)
        for (long long blk = 0; blk < n_blocks; blk++) {
            const size_t i0 = (size_t)blk * COLS;
            const size_t width = PAFT_MIN(in - i0, (size_t)COLS);
            double acc[RANKS][COLS];
            for (int k0 = 0; k0 < r; k0 += RANKS) {
                const int nk = PAFT_MIN(r - k0, (int)RANKS);
                for (int k = 0; k < nk; k++)
                    for (size_t i = 0; i < width; i++) acc[k][i] = 0;
                for (int o = 0; o < out_features; o++) {
                    const real *row = delta + (size_t)o * in + i0;
                    for (int k = 0; k < nk; k++) {
                        const double b = (double)B[(size_t)o * r + k0 + k];
                        if (b == 0) continue;
                        for (size_t i = 0; i < width; i++) acc[k][i] += b * sign_or_zero(row[i]);
                    }
                }
                for (int k = 0; k < nk; k++)
                    for (size_t i = 0; i < width; i++)
                        dA[(size_t)(k0 + k) * in + i0 + i] += (real)(coef * acc[k][i]);
            }
        }
    }
    return (double)lambda * abs_sum;
}

size_t delta_count_below(const real *delta, size_t n, double threshold) {
    size_t count = 0;
#pragma omp parallel for schedule(static) reduction(+ : count)
    for (size_t i = 0; i < n; i++) count += fabs((double)delta[i]) < threshold;
    return count;
}

double delta_sparsity(const real *delta, size_t n, double threshold) {
    if (n == 0) return 0;
    return (double)delta_count_below(delta, n, threshold) / (double)n;
}

void lora_delta_add(real *W, const real *A, const real *B, int out_features, int in_features, int r,
                    real scale) {
    const size_t n = (size_t)out_features * (size_t)in_features;
    real *delta = paft_malloc(n * sizeof(real));
    lora_delta(delta, A, B, out_features, in_features, r, scale);
    for (size_t i = 0; i < n; i++) W[i] += delta[i];
    free(delta);
}

size_t lora_delta_count_below(const real *A, const real *B, int64_t out_features,
                              int64_t in_features, int r, real scale, double threshold) {
    const int64_t block = PAFT_MAX((int64_t)1, ((int64_t)1 << 20) / in_features);
    real *delta =
        paft_malloc((size_t)(PAFT_MIN(block, out_features) * in_features) * sizeof(real));
    size_t below = 0;
    for (int64_t row = 0; row < out_features; row += block) {
        const int64_t rows = PAFT_MIN(block, out_features - row);
        lora_delta(delta, A, B + row * r, (int)rows, (int)in_features, r, scale);
        below += delta_count_below(delta, (size_t)(rows * in_features), threshold);
    }
    free(delta);
    return below;
}
