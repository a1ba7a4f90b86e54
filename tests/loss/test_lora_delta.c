/*
 * test_lora_delta.c - LoRA delta, PAFT's L1 penalty and its gradient, delta sparsity.
 * Built against the fp64 core (F64) so the finite-difference checks can be tight.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loss/lora_delta.h"
#include "test_util.h"

/* A small deterministic generator (xorshift) for test data: values uniform in [-1, 1). */
static double next_uniform(uint64_t *state) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return (double)(*state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static void fill_uniform(real *x, size_t n, uint64_t *state, double amplitude) {
    for (size_t i = 0; i < n; i++) x[i] = (real)(amplitude * next_uniform(state));
}

/* DESIGN.md's vector: r=2, alpha=4 (scale 2), A=[[1,0,1],[0,1,0]], B=[[1,0],[0,2]]. */
static void test_design_vector(void) {
    const real A[] = {1, 0, 1, 0, 1, 0};
    const real B[] = {1, 0, 0, 2};
    const real expected[] = {2, 0, 2, 0, 4, 0};
    real delta[6];
    lora_delta(delta, A, B, 2, 3, 2, (real)(4.0 / 2));
    for (int i = 0; i < 6; i++) CHECK_CLOSE(delta[i], expected[i], 0, 0, "design delta");
    CHECK_CLOSE(delta_sparsity(delta, 6, PAFT_SPARSITY_THRESHOLD), 0.5, 0, 0, "design sparsity");
    CHECK(delta_count_below(delta, 6, PAFT_SPARSITY_THRESHOLD) == 3, "3 zeros");

    // L1: lambda * (2+2+4) = 8 lambda. Gradient by hand, s = 2, lambda = 0.5, coef = 1:
    // G = sign(delta) = [[1,0,1],[0,1,0]] = A, so dB = G A^T = [[2,0],[0,1]], dA = B^T G
    // = [[1,0,1],[0,2,0]].
    real dA[6] = {0}, dB[4] = {0}, scratch[6];
    double l1 = l1_penalty(dA, dB, A, B, 2, 3, 2, 2, (real)0.5, scratch);
    CHECK_CLOSE(l1, 4.0, 1e-15, 0, "design l1");
    const real dB_expected[] = {2, 0, 0, 1}, dA_expected[] = {1, 0, 1, 0, 2, 0};
    for (int i = 0; i < 4; i++) CHECK_CLOSE(dB[i], dB_expected[i], 1e-15, 0, "design dB");
    for (int i = 0; i < 6; i++) CHECK_CLOSE(dA[i], dA_expected[i], 1e-15, 0, "design dA");
    for (int i = 0; i < 6; i++) CHECK_CLOSE(scratch[i], expected[i], 0, 0, "scratch holds delta");
}

static void test_sparsity_edges(void) {
    const real x[] = {0, (real)9.9e-6, (real)-9.9e-6, (real)1e-5, (real)-1e-5, 1, (real)NAN};
    CHECK(delta_count_below(x, 7, 1e-5) == 3, "0 and |x|<1e-5 count, 1e-5 itself and NaN not");
    CHECK_CLOSE(delta_sparsity(x, 7, 1e-5), 3.0 / 7.0, 1e-15, 0, "fraction");
    CHECK(delta_sparsity(x, 0, 1e-5) == 0, "empty tensor");
}

/* Straight triple loops: the independent reference for the tiled gradient code. */
static void naive_l1_grads(double *dA, double *dB, const real *A, const real *B, int out, int in,
                           int r, double coef) {
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            double d = 0;
            for (int k = 0; k < r; k++) d += (double)B[o * r + k] * A[k * in + i];
            double s = (d > 0) - (d < 0);
            for (int k = 0; k < r; k++) {
                dB[o * r + k] += coef * s * A[k * in + i];
                dA[k * in + i] += coef * s * B[o * r + k];
            }
        }
}

/* Sizes that cross the tiles of the dA loop (128 columns, 32 ranks) and hit their remainders. */
static void test_against_naive(int out, int in, int r) {
    uint64_t rng = 0x9E3779B97F4A7C15ull ^ (uint64_t)(out * 1000003 + in * 1009 + r);
    size_t na = (size_t)r * in, nb = (size_t)out * r;
    real *A = paft_malloc(na * sizeof(real)), *B = paft_malloc(nb * sizeof(real));
    real *dA = paft_malloc(na * sizeof(real)), *dB = paft_malloc(nb * sizeof(real));
    real *scratch = paft_malloc((size_t)out * in * sizeof(real));
    double *rA = paft_calloc(na, sizeof(double)), *rB = paft_calloc(nb, sizeof(double));
    fill_uniform(A, na, &rng, 1.0);
    fill_uniform(B, nb, &rng, 1.0);
    // gradients accumulate: start from non-zero values and expect them kept
    for (size_t i = 0; i < na; i++) dA[i] = rA[i] = 0.25;
    for (size_t i = 0; i < nb; i++) dB[i] = rB[i] = -0.5;
    const double scale = 0.5, lambda = 1e-3;
    l1_penalty(dA, dB, A, B, out, in, r, (real)scale, (real)lambda, scratch);
    naive_l1_grads(rA, rB, A, B, out, in, r, lambda * scale);
    double err = 0;
    for (size_t i = 0; i < na; i++) err = fmax(err, fabs(dA[i] - rA[i]));
    for (size_t i = 0; i < nb; i++) err = fmax(err, fabs(dB[i] - rB[i]));
    CHECK(err < 1e-12, "out=%d in=%d r=%d: max |tiled - naive| = %g", out, in, r, err);
    free(A), free(B), free(dA), free(dB), free(scratch), free(rA), free(rB);
}

/* Central differences of the penalty value against the analytic gradient. |delta| is smooth
 * away from delta = 0, so the data is chosen with every |delta_ij| well above the step size. */
static void test_finite_differences(void) {
    const int out = 5, in = 7, r = 3;
    const real scale = (real)(8.0 / 3.0), lambda = (real)0.37;
    uint64_t rng = 12345;
    real A[3 * 7], B[5 * 3], scratch[5 * 7];
    int found = 0;
    for (int attempt = 0; attempt < 10000 && !found; attempt++) {
        fill_uniform(A, 21, &rng, 1.0);
        fill_uniform(B, 15, &rng, 1.0);
        lora_delta(scratch, A, B, out, in, r, scale);
        double min_abs = INFINITY;
        for (int i = 0; i < out * in; i++) min_abs = fmin(min_abs, fabs(scratch[i]));
        found = min_abs > 1e-2;
    }
    CHECK(found, "drew a delta without near-zero elements");
    if (!found) return;
    real dA[21] = {0}, dB[15] = {0};
    l1_penalty(dA, dB, A, B, out, in, r, scale, lambda, scratch);
    const double h = 1e-6;
    real *params[2] = {A, B};
    real *grads[2] = {dA, dB};
    int sizes[2] = {21, 15};
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < sizes[t]; i++) {
            real saved = params[t][i];
            params[t][i] = saved + h;
            double plus = l1_penalty(NULL, NULL, A, B, out, in, r, scale, lambda, scratch);
            params[t][i] = saved - h;
            double minus = l1_penalty(NULL, NULL, A, B, out, in, r, scale, lambda, scratch);
            params[t][i] = saved;
            double fd = (plus - minus) / (2 * h);
            CHECK_CLOSE(grads[t][i], fd, 1e-7, 1e-9, t == 0 ? "dA vs finite difference"
                                                            : "dB vs finite difference");
        }
}

/* At initialisation B = 0, so delta = 0 and the penalty and its gradient are exactly zero. */
static void test_zero_at_init(void) {
    const int out = 4, in = 6, r = 2;
    uint64_t rng = 777;
    real A[12], B[8] = {0}, dA[12], dB[8], scratch[24];
    fill_uniform(A, 12, &rng, 1.0);
    for (int i = 0; i < 12; i++) dA[i] = (real)i;  // pre-existing gradient, must be untouched
    for (int i = 0; i < 8; i++) dB[i] = (real)-i;
    double l1 = l1_penalty(dA, dB, A, B, out, in, r, 1, (real)1e-3, scratch);
    CHECK(l1 == 0.0, "penalty at B = 0 is %g", l1);
    int unchanged = 1;
    for (int i = 0; i < 12; i++) unchanged &= dA[i] == (real)i;
    for (int i = 0; i < 8; i++) unchanged &= dB[i] == (real)-i;
    CHECK(unchanged, "gradient at B = 0 is exactly zero");
    CHECK(delta_sparsity(scratch, 24, PAFT_SPARSITY_THRESHOLD) == 1.0, "delta all zero");
}

/* Value only (NULL gradients) equals lambda * sum |delta| computed directly; and it is linear in
 * lambda and in the scale. */
static void test_value(void) {
    const int out = 6, in = 9, r = 4;
    uint64_t rng = 4242;
    real A[36], B[24], scratch[54], delta[54];
    fill_uniform(A, 36, &rng, 1.0);
    fill_uniform(B, 24, &rng, 1.0);
    lora_delta(delta, A, B, out, in, r, 2);
    double sum = 0;
    for (int i = 0; i < 54; i++) sum += fabs(delta[i]);
    CHECK_CLOSE(l1_penalty(NULL, NULL, A, B, out, in, r, 2, (real)1e-4, scratch), 1e-4 * sum,
                1e-14, 0, "l1 value");
    CHECK_CLOSE(l1_penalty(NULL, NULL, A, B, out, in, r, 4, (real)1e-4, scratch), 2e-4 * sum,
                1e-14, 0, "l1 linear in scale");
}

int main(void) {
    test_design_vector();
    test_sparsity_edges();
    test_value();
    test_zero_at_init();
    test_finite_differences();
    test_against_naive(3, 5, 2);
    test_against_naive(7, 300, 16);  // 3 column tiles, the last one partial
    test_against_naive(4, 130, 40);  // two rank tiles (32 + 8)
    return test_finish("test_lora_delta");
}
