/*
 * bench_merge.c - how long merge_tensor_rows takes per method on a 2048 x 8192 tensor (the size of
 * a 7B model's attention projection rows x an MLP's columns: 16.8 M elements, 64 MB per fp32
 * buffer). Not a test: built with the tests, run by hand, under mpirun too:
 *   build/tests/merge/bench_merge [ROWS COLS REPEATS [cpu|cuda]]
 *   mpirun -np 2 build/tests/merge/bench_merge
 * Prints the best of REPEATS wall-clock times per method (rank 0) and the element rate. With
 * `cuda` the buffers are put on the GPU once and the merge's passes run there (kernels/
 * merge_cuda.cu; the merge stage adds the copies of W's rows up and theta's down).
 */
#include <stdlib.h>
#include <string.h>

#include "merge/merge.h"
#include "util/common.h"

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int64_t rows = argc > 1 ? atoll(argv[1]) : 2048, cols = argc > 2 ? atoll(argv[2]) : 8192;
    int repeats = argc > 3 ? atoi(argv[3]) : 3;
    const char *device = argc > 4 ? argv[4] : "cpu";
    MergeBackend be = {&merge_kernels_cpu, NULL};
    if (strcmp(device, "cuda") == 0) be.k = &merge_kernels_cuda;
    else if (strcmp(device, "cpu") != 0) PAFT_FATAL("bench_merge: device '%s' (expected cpu or cuda)", device);
    be.s = be.k->create();
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
    /* the buffers where the backend computes (the same ones on the CPU) */
    float *host[4] = {base, d0, d1, out}, *on[4];
    for (int b = 0; b < 4; b++) {
        on[b] = be.k->host_memory ? host[b] : be.k->alloc(be.s, (n ? n : 1) * sizeof(float));
        be.k->to_device(be.s, on[b], host[b], n * sizeof(float));
    }
    paft_log("bench_merge: %lld x %lld tensor (%.1f M elements) over %d rank(s) on %s, best of %d\n",
             (long long)rows, (long long)cols, rows * cols / 1e6, size, be.k->name, repeats);
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
            merge_tensor_rows_on(be, &p, MPI_COMM_WORLD, 1, rows, cols, start, count, on[0], on[1],
                                 on[2], on[3], NULL);
            MPI_Barrier(MPI_COMM_WORLD);
            double t = paft_seconds() - t0;
            if (t < best) best = t;
        }
        paft_log("  %-16s density %.1f  %8.1f ms  %6.1f M elements/s\n",
                 merge_method_name((MergeMethod)m), p.density[0], best * 1e3,
                 rows * cols / best / 1e6);
    }
    for (int b = 0; b < 4; b++)
        if (!be.k->host_memory) be.k->release(be.s, on[b]);
    be.k->destroy(be.s);
    free(base);
    free(d0);
    free(d1);
    free(out);
    MPI_Finalize();
    return 0;
}
