/* test_collectives.c - the collectives interface on 1..4 ranks, against values each rank can
 * compute by itself (rank r contributes r + 1 + i/10 at position i). */
#include <mpi.h>

#include "parallel/collectives.h"
#include "test_util.h"

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    enum { N = 5 };
    real mine[N], sum[N], all[4 * N], scattered[N], block_in[4 * N];
    for (int i = 0; i < N; i++) mine[i] = sum[i] = (real)(rank + 1 + i / 10.0);
    allreduce_sum_real(sum, N, MPI_COMM_WORLD);
    for (int i = 0; i < N; i++) /* sum over r of (r + 1 + i/10) */
        CHECK_CLOSE(sum[i], size * (size + 1) / 2.0 + size * i / 10.0, 1e-6, 0, "allreduce");
    real mx[N];
    for (int i = 0; i < N; i++) mx[i] = mine[i];
    allreduce_max_real(mx, N, MPI_COMM_WORLD);
    CHECK_CLOSE(mx[0], size, 1e-6, 0, "allreduce max");
    allgather_real(mine, all, N, MPI_COMM_WORLD);
    for (int r = 0; r < size; r++) CHECK_CLOSE(all[r * N + 2], r + 1.2, 1e-6, 0, "allgather");
    for (int i = 0; i < size * N; i++) block_in[i] = (real)(i / N + rank); /* block b: b + rank */
    reduce_scatter_real(block_in, scattered, N, MPI_COMM_WORLD);
    CHECK_CLOSE(scattered[0], size * rank + size * (size - 1) / 2.0, 1e-6, 0, "reduce-scatter");
    real b[N] = {0};
    if (rank == size - 1)
        for (int i = 0; i < N; i++) b[i] = (real)(7 + i);
    broadcast_real(b, N, size - 1, MPI_COMM_WORLD);
    CHECK_CLOSE(b[4], 11, 0, 0, "broadcast");
    int flag = rank == 0;
    allreduce_max_int(&flag, MPI_COMM_WORLD);
    CHECK(flag == 1, "allreduce max int %d", flag);
    int status = test_finish("test_collectives");
    MPI_Finalize();
    return status;
}
