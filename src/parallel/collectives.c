/* collectives.c - MPI implementation of the collectives interface. */
#include "parallel/collectives.h"

#include <limits.h>
#include <string.h>

/* MPI counts are int: move at most 1 Gi elements per call. */
#define CHUNK ((size_t)1 << 30)

MPI_Datatype mpi_real_type(void) { return sizeof(real) == 4 ? MPI_FLOAT : MPI_DOUBLE; }

void allreduce_sum_real(real *buf, size_t n, MPI_Comm comm) {
    for (size_t i = 0; i < n; i += CHUNK)
        CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, buf + i, (int)PAFT_MIN(CHUNK, n - i),
                                mpi_real_type(), MPI_SUM, comm));
}

void allreduce_sum_double(double *buf, size_t n, MPI_Comm comm) {
    for (size_t i = 0; i < n; i += CHUNK)
        CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, buf + i, (int)PAFT_MIN(CHUNK, n - i), MPI_DOUBLE,
                                MPI_SUM, comm));
}

void allreduce_max_int(int *value, MPI_Comm comm) {
    CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, value, 1, MPI_INT, MPI_MAX, comm));
}

void allreduce_max_real(real *buf, size_t n, MPI_Comm comm) {
    for (size_t i = 0; i < n; i += CHUNK)
        CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, buf + i, (int)PAFT_MIN(CHUNK, n - i),
                                mpi_real_type(), MPI_MAX, comm));
}

void broadcast_real(real *buf, size_t n, int root, MPI_Comm comm) {
    for (size_t i = 0; i < n; i += CHUNK)
        CHECK_MPI(MPI_Bcast(buf + i, (int)PAFT_MIN(CHUNK, n - i), mpi_real_type(), root, comm));
}

char *broadcast_string(char *text, MPI_Comm comm) {
    int rank;
    CHECK_MPI(MPI_Comm_rank(comm, &rank));
    long long len = rank == 0 ? (long long)strlen(text) + 1 : 0;
    CHECK_MPI(MPI_Bcast(&len, 1, MPI_LONG_LONG, 0, comm));
    if (len > INT_MAX) PAFT_FATAL("broadcast of a string of %lld bytes: above MPI's int count", len);
    if (rank != 0) text = paft_malloc((size_t)len);
    CHECK_MPI(MPI_Bcast(text, (int)len, MPI_CHAR, 0, comm));
    return text;
}

void allgather_real(const real *in, real *out, size_t n, MPI_Comm comm) {
    if (n > (size_t)INT_MAX) PAFT_FATAL("allgather of %zu values per rank: above MPI's int count", n);
    CHECK_MPI(MPI_Allgather(in, (int)n, mpi_real_type(), out, (int)n, mpi_real_type(), comm));
}

void reduce_scatter_real(const real *in, real *out, size_t n, MPI_Comm comm) {
    if (n > (size_t)INT_MAX) PAFT_FATAL("reduce-scatter of %zu values per rank: above MPI's int count", n);
    CHECK_MPI(MPI_Reduce_scatter_block(in, out, (int)n, mpi_real_type(), MPI_SUM, comm));
}
