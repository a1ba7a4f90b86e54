/*
 * collectives.h - the collectives paft uses, on a group communicator. This is the MPI
 * implementation (CPU backend, or ranks sharing a GPU); the NCCL one joins with the CUDA backend.
 * Counts are size_t: buffers above 2^31 elements are reduced in chunks.
 */
#ifndef PAFT_COLLECTIVES_H
#define PAFT_COLLECTIVES_H

#include <mpi.h>
#include <stddef.h>

#include "util/common.h"

/* The MPI datatype of `real`. */
MPI_Datatype mpi_real_type(void);
/* In-place sum over comm. */
void allreduce_sum_real(real *buf, size_t n, MPI_Comm comm);
void allreduce_sum_double(double *buf, size_t n, MPI_Comm comm);
/* In-place max over comm. */
void allreduce_max_int(int *value, MPI_Comm comm);
void allreduce_max_real(real *buf, size_t n, MPI_Comm comm);
/* Broadcast from root. */
void broadcast_real(real *buf, size_t n, int root, MPI_Comm comm);
/* Rank 0's string to every rank of comm: rank 0's own pointer is returned as is, the others get a
 * malloc'ed copy (text is ignored there). */
char *broadcast_string(char *text, MPI_Comm comm);
/* Every rank contributes n values; out receives size * n values in rank order. */
void allgather_real(const real *in, real *out, size_t n, MPI_Comm comm);
/* in holds size * n values; rank i receives in out the sum over ranks of block i (n values). */
void reduce_scatter_real(const real *in, real *out, size_t n, MPI_Comm comm);

#endif
