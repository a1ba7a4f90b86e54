/*
 * mpi_count.c - an MPI profiling-interface (PMPI) library that MEASURES paft's communication:
 * loaded with LD_PRELOAD, it counts the bytes each rank hands to MPI_Allreduce on the
 * tensor-parallel ("paft-tp") and data-parallel ("paft-dp") communicators, and at MPI_Finalize
 * writes "tp_bytes dp_bytes tp_calls dp_calls" to $PAFT_MPI_COUNT_DIR/rank<N>.txt. A test tool:
 * the global counters below live in this library, not in paft.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long long tp_bytes, dp_bytes, tp_calls, dp_calls;

int MPI_Allreduce(const void *send, void *recv, int count, MPI_Datatype type, MPI_Op op,
                  MPI_Comm comm) {
    char name[MPI_MAX_OBJECT_NAME] = "";
    int len = 0, size = 0;
    PMPI_Comm_get_name(comm, name, &len);
    PMPI_Type_size(type, &size);
    if (strcmp(name, "paft-tp") == 0) {
        tp_bytes += (long long)count * size;
        tp_calls++;
    } else if (strcmp(name, "paft-dp") == 0) {
        int members = 0;
        PMPI_Comm_size(comm, &members);
        if (members > 1) { /* dp = 1 reduces nothing */
            dp_bytes += (long long)count * size;
            dp_calls++;
        }
    }
    return PMPI_Allreduce(send, recv, count, type, op, comm);
}

int MPI_Finalize(void) {
    const char *dir = getenv("PAFT_MPI_COUNT_DIR");
    if (dir) {
        int rank = 0;
        PMPI_Comm_rank(MPI_COMM_WORLD, &rank);
        char path[4096];
        snprintf(path, sizeof path, "%s/rank%d.txt", dir, rank);
        FILE *f = fopen(path, "w");
        if (f) {
            fprintf(f, "%lld %lld %lld %lld\n", tp_bytes, dp_bytes, tp_calls, dp_calls);
            fclose(f);
        }
    }
    return PMPI_Finalize();
}
