/*
 * bench_merge.c - how long merge_tensor_rows takes per method on a 2048 x 8192 tensor (the size of
 * a 7B model's attention projection rows x an MLP's columns: 16.8 M elements, 64 MB per fp32
 * buffer). Not a test: built with the tests, run by hand, under mpirun too:
 *   build/tests/merge/bench_merge [ROWS COLS REPEATS]
 *   mpirun -np 2 build/tests/merge/bench_merge
 * Prints the best of REPEATS wall-clock times per method (rank 0) and the element rate.
 */
#include <stdlib.h>

#include "merge/merge.h"
#include "util/common.h"

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int64_t rows = argc > 1 ? atoll(argv[1]) : 2048, cols = argc > 2 ? atoll(argv[2]) : 8192;
    int repeats = argc > 3 ? atoi(argv[3]) : 3;
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int64_t start, count;
    merge_row_range(rows, rank, size, &start, &count);
    size_t n = (size_t)(count * cols);
    float *base = paft_malloc((n ? n : 1) * sizeof(float));
    float *d0 = paft_malloc((n ? n : 1) * sizeof(float));
    float *d1 = paft_malloc((n ? n : 1) * sizeof(float));
    float *out = paft_malloc((n ? n : 1) * sizeof(float));
    uint64_t s = 1 + (uint64_t)start;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        base[i] = (float)((double)(s >> 40) * 0x1.0p-24 - 0.5);
        d0[i] = base[i] * 0.01f * (float)((s >> 20) & 7);
        d1[i] = base[i] * -0.003f * (float)((s >> 24) & 15);
    }
    paft_log("bench_merge: %lld x %lld tensor (%.1f M elements) over %d rank(s), best of %d\n",
             (long long)rows, (long long)cols, rows * cols / 1e6, size, repeats);
    for (int m = 0; m < MERGE_METHOD_COUNT; m++) {
        MergeParams p = merge_params_default((MergeMethod)m);
        p.density[0] = p.density[1] = 0.5;
        if (m == MERGE_SLERP || m == MERGE_LINEAR || m == MERGE_TASK_ARITHMETIC)
            p.density[0] = p.density[1] = 1.0;
        merge_params_resolve(&p);
        double best = 1e30;
        for (int r = 0; r < repeats; r++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = paft_seconds();
            merge_tensor_rows(&p, MPI_COMM_WORLD, 1, rows, cols, start, count, base, d0, d1, out,
                              NULL);
            MPI_Barrier(MPI_COMM_WORLD);
            double t = paft_seconds() - t0;
            if (t < best) best = t;
        }
        paft_log("  %-16s density %.1f  %8.1f ms  %6.1f M elements/s\n",
                 merge_method_name((MergeMethod)m), p.density[0], best * 1e3,
                 rows * cols / best / 1e6);
    }
    free(base);
    free(d0);
    free(d1);
    free(out);
    MPI_Finalize();
    return 0;
}
