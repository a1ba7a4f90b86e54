/*
 * test_merge_vectors.c - the merge methods on hand-derived vectors (DESIGN section 5's test vectors
 * and a few more worked out by hand), the mergekit defaults, the row split, DARE's generator and
 * the sparsity statistics. One rank; rank-count invariance is tests/merge/test_merge_ranks.c.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "merge/merge.h"
#include "test_util.h"

/* DARE generator known answers (tests/merge/merge_reference.py --known-answers). */
#define MERGE_KAT_0 0x1.0983a45556400p-3         /* (seed 0, tensor 0, sft, index 0) */
#define MERGE_KAT_1 0x1.f432c0c89e140p-6         /* (1234, 56, pref, 7890123) */

/* Merge a whole rows x cols tensor on this rank alone. */
static void merge_all(const MergeParams *p, int64_t rows, int64_t cols, const float *base,
                      const float *d0, const float *d1, float *out, MergeStats *stats) {
    merge_tensor_rows(p, MPI_COMM_SELF, 7, rows, cols, 0, rows, base, d0, d1, out, stats);
}

static MergeParams params(MergeMethod m, double w0, double w1) {
    MergeParams p = merge_params_default(m);
    p.weight[0] = w0;
    p.weight[1] = w1;
    return p;
}

static void check_vec(const float *got, const float *want, int n, double tol, const char *what) {
    for (int i = 0; i < n; i++) {
        char label[160];
        snprintf(label, sizeof label, "%s [%d]", what, i);
        CHECK_CLOSE(got[i], want[i], 0, tol, label);
    }
}

static void test_ties_design_vectors(void) {
    const float zero[4] = {0, 0, 0, 0};
    const float d1[4] = {0.5f, -0.2f, 0.1f, 0}, d2[4] = {-0.3f, -0.4f, 0.2f, 0};
    float out[4];

    MergeParams p = params(MERGE_TIES, 1, 1);
    merge_params_resolve(&p);
    CHECK(p.normalize == 1, "ties normalizes by default");
    merge_all(&p, 1, 4, zero, d1, d2, out, NULL);
    check_vec(out, (const float[]){0.5f, -0.3f, 0.15f, 0}, 4, 1e-7, "ties w=1,1");

    p = params(MERGE_TIES, 0.7, 0.3);
    merge_params_resolve(&p);
    merge_all(&p, 2, 2, zero, d1, d2, out, NULL); /* the shape does not matter */
    check_vec(out, (const float[]){0.5f, -0.26f, 0.13f, 0}, 4, 1e-7, "ties w=.7,.3 normalize");

    p = params(MERGE_TIES, 0.7, 0.3);
    p.normalize = 0;
    merge_params_resolve(&p);
    merge_all(&p, 4, 1, zero, d1, d2, out, NULL);
    check_vec(out, (const float[]){0.35f, -0.26f, 0.13f, 0}, 4, 1e-7, "ties w=.7,.3 raw");

    /* theta = base + mixed delta. */
    const float base[4] = {1, 2, 3, 4};
    p = params(MERGE_TIES, 1, 1);
    merge_params_resolve(&p);
    merge_all(&p, 1, 4, base, d1, d2, out, NULL);
    check_vec(out, (const float[]){1.5f, 1.7f, 3.15f, 4}, 4, 1e-6, "ties on a base");
}

static void test_sign_election_count(void) {
    /* W = 0.1, -0.5: the sum elects -, the count ties (+1 - 1 = 0) and elects +. */
    const float zero[1] = {0}, d1[1] = {0.1f}, d2[1] = {-0.5f};
    float out[1];
    MergeParams p = params(MERGE_TIES, 1, 1);
    merge_params_resolve(&p);
    merge_all(&p, 1, 1, zero, d1, d2, out, NULL);
    CHECK_CLOSE(out[0], -0.5, 0, 1e-7, "sum election");
    p.sign_by_count = 1;
    merge_all(&p, 1, 1, zero, d1, d2, out, NULL);
    CHECK_CLOSE(out[0], 0.1, 0, 1e-7, "count election");
    /* Only one non-zero: its weight alone is the divisor; all zero: divisor 0 -> 1. */
    const float a[2] = {0.4f, 0}, b[2] = {0, 0};
    float o2[2];
    p = params(MERGE_TIES, 0.5, 2.0);
    merge_params_resolve(&p);
    merge_all(&p, 1, 2, (const float[]){0, 0}, a, b, o2, NULL);
    CHECK_CLOSE(o2[0], 0.4, 0, 1e-7, "ties lone delta divided by its own weight");
    CHECK_CLOSE(o2[1], 0.0, 0, 0, "ties all-zero element");
}

static void test_magnitude(void) {
    const float zero[4] = {0, 0, 0, 0};
    const float d[4] = {0.1f, -0.4f, 0.3f, -0.2f};
    float out[4];
    MergeParams p = params(MERGE_MAGNITUDE, 1, 1);
    p.density[0] = 0.5;
    merge_params_resolve(&p);
    CHECK(p.normalize == 0, "magnitude does not normalize by default");
    MergeStats st;
    merge_all(&p, 2, 2, zero, d, zero, out, &st);
    check_vec(out, (const float[]){0, -0.4f, 0.3f, 0}, 4, 0, "magnitude density 0.5");
    CHECK(st.kept[0] == 2 && st.kept[1] == 4, "kept counts %lld %lld", (long long)st.kept[0],
          (long long)st.kept[1]);

    /* Ties at the threshold are broken by the global element index: the lowest ones are kept. */
    const float t[6] = {0.3f, 0.1f, -0.3f, 0.3f, -0.05f, 0.3f};
    float o6[6];
    p.density[0] = 0.5; /* k = 3 of 6: 0.3, -0.3, 0.3 at indices 0, 2, 3 */
    merge_all(&p, 3, 2, (const float[6]){0}, t, (const float[6]){0}, o6, NULL);
    check_vec(o6, (const float[]){0.3f, 0, -0.3f, 0.3f, 0, 0}, 6, 0, "magnitude ties by index");

    /* k = int(density * numel) truncates: density 0.6 of 4 keeps 2. */
    p.density[0] = 0.6;
    merge_all(&p, 1, 4, zero, d, zero, out, &st);
    CHECK(st.kept[0] == 2, "int() truncation: kept %lld", (long long)st.kept[0]);

    /* TIES = magnitude top-k then sign election. */
    p = params(MERGE_TIES, 1, 1);
    p.density[0] = p.density[1] = 0.5;
    merge_params_resolve(&p);
    const float e1[4] = {0.5f, -0.2f, 0.1f, 0.3f}, e2[4] = {-0.3f, -0.4f, 0.2f, 0.01f};
    /* kept: e1 -> {0.5, 0, 0, 0.3}, e2 -> {-0.3, -0.4, 0, 0}; elect +, -, +(0), + */
    merge_all(&p, 1, 4, zero, e1, e2, out, NULL);
    check_vec(out, (const float[]){0.5f, -0.4f, 0, 0.3f}, 4, 1e-7, "ties density 0.5");
}

static void test_slerp(void) {
    float out[2];
    MergeParams p = params(MERGE_SLERP, 1, 1);
    merge_params_resolve(&p);
    merge_all(&p, 1, 2, (const float[]){0, 0}, (const float[]){1, 0}, (const float[]){0, 1}, out,
              NULL);
    check_vec(out, (const float[]){0.70710678f, 0.70710678f}, 2, 1e-6, "slerp orthogonal");
    merge_all(&p, 2, 1, (const float[]){0, 0}, (const float[]){1, 0}, (const float[]){2, 0}, out,
              NULL);
    check_vec(out, (const float[]){1.5f, 0}, 2, 1e-7, "slerp colinear -> lerp");
    /* t = 1/4 of a right angle: sin(3pi/8), sin(pi/8). */
    p = params(MERGE_SLERP, 3, 1);
    merge_params_resolve(&p);
    merge_all(&p, 1, 2, (const float[]){0, 0}, (const float[]){1, 0}, (const float[]){0, 1}, out,
              NULL);
    check_vec(out, (const float[]){0.92387953f, 0.38268343f}, 2, 1e-6, "slerp t=0.25");
    /* The angle is that of theta = base + delta, and magnitudes are not renormalised:
     * theta_sft = (2, 0), theta_pref = (0, 4), t = 1/2 -> sin(pi/4) * (2, 4). */
    p = params(MERGE_SLERP, 1, 1);
    merge_params_resolve(&p);
    merge_all(&p, 1, 2, (const float[]){1, 1}, (const float[]){1, -1}, (const float[]){-1, 3}, out,
              NULL);
    check_vec(out, (const float[]){1.41421356f, 2.82842712f}, 2, 1e-6, "slerp unnormalised");

    /* The lerp threshold |cos| > 0.9995: (1, 0.02) is at cos 0.99980 (lerp), (1, 0.04) at
     * 0.99920 (slerp: s0 = s1 = sin(a/2) / sin(a) = 0.50009991). */
    MergeStats st;
    merge_all(&p, 1, 2, (const float[]){0, 0}, (const float[]){1, 0}, (const float[]){1, 0.02f},
              out, &st);
    check_vec(out, (const float[]){1.0f, 0.01f}, 2, 1e-7, "slerp just above the threshold");
    CHECK(st.slerp_lerped == 1, "lerped");
    CHECK_CLOSE(st.slerp_cos, 0.99980006, 1e-7, 0, "slerp cos");
    merge_all(&p, 1, 2, (const float[]){0, 0}, (const float[]){1, 0}, (const float[]){1, 0.04f},
              out, &st);
    check_vec(out, (const float[]){1.00019982f, 0.020003996f}, 2, 1e-7,
              "slerp just below the threshold");
    CHECK(st.slerp_lerped == 0, "not lerped");
}

static void test_linear_and_task_arithmetic(void) {
    const float base[2] = {1, 1}, d0[2] = {1, 0}, d1[2] = {0, 2};
    float out[2];
    MergeParams p = params(MERGE_LINEAR, 1, 3); /* theta0 = (2, 1), theta1 = (1, 3) */
    merge_params_resolve(&p);
    CHECK(p.normalize == 1, "linear normalizes by default");
    merge_all(&p, 1, 2, base, d0, d1, out, NULL);
    check_vec(out, (const float[]){1.25f, 2.5f}, 2, 1e-7, "linear normalize");
    p = params(MERGE_LINEAR, 1, 3);
    p.normalize = 0;
    merge_params_resolve(&p);
    merge_all(&p, 1, 2, base, d0, d1, out, NULL);
    check_vec(out, (const float[]){5, 10}, 2, 1e-6, "linear raw");

    const float b2[2] = {1, -1}, e0[2] = {0.5f, 0.5f}, e1[2] = {-0.25f, 1};
    p = params(MERGE_TASK_ARITHMETIC, 1, 2);
    p.lambda = 0.5;
    merge_params_resolve(&p);
    CHECK(p.normalize == 0, "task arithmetic does not normalize by default");
    merge_all(&p, 1, 2, b2, e0, e1, out, NULL); /* mixed (0, 2.5) * 0.5 */
    check_vec(out, (const float[]){1, 0.25f}, 2, 1e-7, "task arithmetic lambda");
    p.normalize = 1; /* mixed (0, 2.5) / 3 * 0.5 */
    merge_all(&p, 1, 2, b2, e0, e1, out, NULL);
    check_vec(out, (const float[]){1, -1 + 2.5f / 3 * 0.5f}, 2, 1e-6, "task arithmetic normalize");
    /* A negative weight subtracts a delta (weights sum to 0: fine without normalize). */
    p = params(MERGE_TASK_ARITHMETIC, 1, -1);
    merge_params_resolve(&p);
    merge_all(&p, 1, 2, b2, e0, e1, out, NULL);
    check_vec(out, (const float[]){1.75f, -1.5f}, 2, 1e-7, "task arithmetic negation");
}

static void test_dare(void) {
    enum { ROWS = 64, COLS = 100, N = ROWS * COLS };
    float *base = calloc(N, sizeof(float)), *d0 = malloc(N * sizeof(float));
    float *d1 = calloc(N, sizeof(float)), *out = malloc(N * sizeof(float));
    double l1 = 0;
    for (int i = 0; i < N; i++) {
        d0[i] = (float)((i % 17) - 8) * 0.01f + 0.001f;
        l1 += fabs(d0[i]);
    }
    MergeParams p = params(MERGE_DARE_LINEAR, 1, 1);
    p.density[0] = 0.3;
    p.seed = 42;
    merge_params_resolve(&p);
    CHECK(p.normalize == 0, "dare_linear does not normalize by default");
    MergeStats st;
    merge_tensor_rows(&p, MPI_COMM_SELF, 5, ROWS, COLS, 0, ROWS, base, d0, d1, out, &st);
    int mismatches = 0, kept = 0;
    for (int i = 0; i < N; i++) {
        int keep = merge_dare_uniform(42, 5, 0, (uint64_t)i) < 0.3;
        float want = keep ? d0[i] / 0.3f : 0.0f;
        mismatches += out[i] != want;
        kept += keep;
    }
    CHECK(mismatches == 0, "%d elements differ from the generator's mask / 0.3", mismatches);
    CHECK(st.kept[0] == kept && st.kept[1] == N, "kept %lld (generator %d)", (long long)st.kept[0],
          kept);
    CHECK(st.dare_scale[0] == 1 / 0.3 && st.dare_scale[1] == 1, "dare scale %g %g",
          st.dare_scale[0], st.dare_scale[1]);
    /* A fair coin: 0.3 * 6400 = 1920, sd 37. */
    CHECK(fabs(kept - 0.3 * N) < 5 * sqrt(N * 0.3 * 0.7), "kept %d of %d at density 0.3", kept, N);

    /* Other seed / tensor / model -> other stream. */
    int same_seed = 0, same_tensor = 0, same_model = 0;
    for (int i = 0; i < 1000; i++) {
        double u = merge_dare_uniform(42, 5, 0, (uint64_t)i);
        same_seed += u == merge_dare_uniform(43, 5, 0, (uint64_t)i);
        same_tensor += u == merge_dare_uniform(42, 6, 0, (uint64_t)i);
        same_model += u == merge_dare_uniform(42, 5, 1, (uint64_t)i);
    }
    CHECK(same_seed + same_tensor + same_model == 0, "streams collide %d %d %d", same_seed,
          same_tensor, same_model);
    /* Known answers, computed independently by tests/merge/merge_reference.py (--known-answers):
     * they pin the documented generator (docs/MERGE.md). */
    CHECK(merge_dare_uniform(0, 0, 0, 0) == MERGE_KAT_0, "KAT (0,0,0,0): %.17g",
          merge_dare_uniform(0, 0, 0, 0));
    CHECK(merge_dare_uniform(1234, 56, 1, 7890123) == MERGE_KAT_1, "KAT (1234,56,1,7890123): %.17g",
          merge_dare_uniform(1234, 56, 1, 7890123));

    /* L1 rescale: the kept values carry the L1 norm of the whole delta. */
    p.dare_rescale_l1 = 1;
    merge_tensor_rows(&p, MPI_COMM_SELF, 5, ROWS, COLS, 0, ROWS, base, d0, d1, out, &st);
    double l1_out = 0, l1_kept = 0;
    for (int i = 0; i < N; i++) {
        l1_out += fabs(out[i]);
        if (merge_dare_uniform(42, 5, 0, (uint64_t)i) < 0.3) l1_kept += fabs(d0[i]);
    }
    CHECK_CLOSE(l1_out, l1, 1e-5, 0, "L1 norm preserved");
    CHECK_CLOSE(st.dare_scale[0], l1 / l1_kept, 1e-12, 0, "L1 ratio");

    /* Density 1 keeps everything unscaled: dare_ties = ties = sign election only. */
    MergeParams a = params(MERGE_DARE_TIES, 1, 1), b = params(MERGE_TIES, 1, 1);
    a.normalize = b.normalize = 0;
    merge_params_resolve(&a);
    merge_params_resolve(&b);
    float *out2 = malloc(N * sizeof(float));
    for (int i = 0; i < N; i++) d1[i] = (float)((i * 7 % 13) - 6) * 0.02f;
    merge_tensor_rows(&a, MPI_COMM_SELF, 5, ROWS, COLS, 0, ROWS, base, d0, d1, out, NULL);
    merge_tensor_rows(&b, MPI_COMM_SELF, 5, ROWS, COLS, 0, ROWS, base, d0, d1, out2, NULL);
    CHECK(memcmp(out, out2, N * sizeof(float)) == 0, "dare_ties density 1 == ties density 1");
    free(out2);
    free(base);
    free(d0);
    free(d1);
    free(out);
}

static void test_in_place_and_stats(void) {
    float base[4] = {1, 2, 3, 4};
    const float d1[4] = {0.5f, -0.2f, 0.000001f, 0}, d2[4] = {-0.3f, -0.4f, 0.2f, 0};
    MergeParams p = params(MERGE_TIES, 1, 1);
    merge_params_resolve(&p);
    MergeStats st;
    merge_all(&p, 2, 2, base, d1, d2, base, &st); /* out == base */
    /* element 2: W = 1e-6, 0.2: both +, mean 0.1000005 */
    check_vec(base, (const float[]){1.5f, 1.7f, 3.1000005f, 4}, 4, 1e-6, "in place");
    CHECK(st.numel == 4 && st.small_sft == 2 && st.small_pref == 1 && st.small_merged == 1,
          "stats numel %lld small %lld %lld %lld", (long long)st.numel, (long long)st.small_sft,
          (long long)st.small_pref, (long long)st.small_merged);
    CHECK(st.kept[0] == 4 && st.kept[1] == 4, "density 1 keeps all");
}

static void test_defaults_names_and_rows(void) {
    const int want_normalize[MERGE_METHOD_COUNT] = {
        [MERGE_LINEAR] = 1, [MERGE_TIES] = 1, /* all others 0 (mergekit's registry) */
    };
    for (int m = 0; m < MERGE_METHOD_COUNT; m++) {
        MergeParams p = merge_params_default((MergeMethod)m);
        merge_params_resolve(&p);
        CHECK(p.normalize == want_normalize[m], "%s normalize default %d", merge_method_name(m),
              p.normalize);
        CHECK(merge_method_from_name(merge_method_name((MergeMethod)m)) == (MergeMethod)m,
              "name round trip %d", m);
    }
    CHECK(strcmp(merge_method_name(MERGE_DARE_TIES), "dare_ties") == 0, "dare_ties name");

    int64_t start, count, next = 0;
    const int64_t want10[3] = {4, 3, 3};
    for (int r = 0; r < 3; r++) {
        merge_row_range(10, r, 3, &start, &count);
        CHECK(start == next && count == want10[r], "rows 10 / 3 rank %d: %lld+%lld", r,
              (long long)start, (long long)count);
        next = start + count;
    }
    next = 0;
    for (int r = 0; r < 4; r++) {
        merge_row_range(2, r, 4, &start, &count);
        CHECK(start == next && count == (r < 2), "rows 2 / 4 rank %d: %lld+%lld", r,
              (long long)start, (long long)count);
        next = start + count;
    }
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    test_ties_design_vectors();
    test_sign_election_count();
    test_magnitude();
    test_slerp();
    test_linear_and_task_arithmetic();
    test_dare();
    test_in_place_and_stats();
    test_defaults_names_and_rows();
    int rc = test_finish("test_merge_vectors");
    MPI_Finalize();
    return rc;
}
