/*
 * bench_attention.c - how long the CPU's fused attention takes on one layer's shape, and its
 * backward in each of its two ways of splitting the work (ops_cpu.c, attention_backward_passes).
 * Not a test: built with the tests, run by hand:
 *   OMP_NUM_THREADS=N build/tests/ops/bench_attention [B T HQ HKV D REPEATS]
 * (default 1 1024 9 3 64 5: SmolLM2-135M's heads at 1,024 tokens). Prints the best of REPEATS
 * wall-clock times: the forward; the backward as the thread count picks it, in one pass, and in
 * two passes (PAFT_CPU_ATTENTION_PASSES set around each call).
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "ops/ops.h"
#include "util/common.h"
#include "util/rng.h"

static real *random_values(Rng *rng, size_t n) {
    real *x = paft_malloc(n * sizeof(real));
    for (size_t i = 0; i < n; i++) x[i] = (real)(rng_uniform(rng) - 0.5);
    return x;
}

int main(int argc, char **argv) {
    const int B = argc > 1 ? atoi(argv[1]) : 1, T = argc > 2 ? atoi(argv[2]) : 1024;
    const int Hq = argc > 3 ? atoi(argv[3]) : 9, Hkv = argc > 4 ? atoi(argv[4]) : 3;
    const int D = argc > 5 ? atoi(argv[5]) : 64, repeats = argc > 6 ? atoi(argv[6]) : 5;
    if (B < 1 || T < 1 || Hq < 1 || Hkv < 1 || D < 1 || repeats < 1)
        PAFT_FATAL("bench_attention: expected positive B T HQ HKV D REPEATS");
    const size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D;
    Rng rng = {0x9E3779B97F4A7C15ull};
    real *q = random_values(&rng, nq), *k = random_values(&rng, nkv), *v = random_values(&rng, nkv);
    real *dout = random_values(&rng, nq), *out = paft_malloc(nq * sizeof(real));
    real *lse = paft_malloc((size_t)B * Hq * T * sizeof(real));
    real *dq = paft_calloc(nq, sizeof(real)), *dk = paft_calloc(nkv, sizeof(real));
    real *dv = paft_calloc(nkv, sizeof(real));
    printf("fused attention B=%d T=%d Hq=%d Hkv=%d D=%d, %d threads, best of %d:\n", B, T, Hq,
           Hkv, D, omp_get_max_threads(), repeats);

    double best = 1e30;
    for (int r = 0; r < repeats; r++) {
        const double t0 = omp_get_wtime();
        attention_forward_fused(out, lse, q, k, v, B, T, Hq, Hkv, D);
        best = PAFT_MIN(best, omp_get_wtime() - t0);
    }
    printf("  forward                    %9.2f ms\n", best * 1e3);
    const char *modes[3] = {"", "1", "2"};
    const char *labels[3] = {"backward (thread count's)", "backward, one pass", "backward, two passes"};
    for (int m = 0; m < 3; m++) {
        if (m) setenv("PAFT_CPU_ATTENTION_PASSES", modes[m], 1);
        best = 1e30;
        for (int r = 0; r < repeats; r++) {
            const double t0 = omp_get_wtime();
            attention_backward_fused(dq, dk, dv, dout, out, lse, q, k, v, B, T, Hq, Hkv, D);
            best = PAFT_MIN(best, omp_get_wtime() - t0);
        }
        unsetenv("PAFT_CPU_ATTENTION_PASSES");
        printf("  %-26s %9.2f ms\n", labels[m], best * 1e3);
    }
    free(q);
    free(k);
    free(v);
    free(dout);
    free(out);
    free(lse);
    free(dq);
    free(dk);
    free(dv);
    return 0;
}
