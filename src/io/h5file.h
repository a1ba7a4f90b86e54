/*
 * h5file.h - parallel HDF5 files written collectively by a group of ranks.
 *
 * Every paft HDF5 file (adapters, checkpoints, the merged model) is written the same way: all ranks
 * of a communicator open PATH.tmp.<pid of rank 0> with the MPI-IO driver, create every dataset at
 * its GLOBAL shape together (HDF5 metadata operations are collective), each rank writes its own
 * block with a collective hyperslab write (a rank with nothing to write selects nothing), and at
 * the end rank 0 renames the file into place. A crash leaves only the .tmp file, never a
 * half-written PATH.
 */
#ifndef PAFT_H5FILE_H
#define PAFT_H5FILE_H

#include <hdf5.h>
#include <mpi.h>
#include <stdint.h>

#include "util/common.h"

typedef struct {
    hid_t file;
    MPI_Comm comm;
    char *path;     /* final name */
    char *tmp_path; /* name while being written (NULL when opened for reading) */
} H5File;

/* The block of a 2-D dataset (rows x cols; a 1-D dataset is cols == 0) held by this rank. */
typedef struct {
    int64_t global_rows, global_cols; /* the dataset's shape (cols 0: 1-D of global_rows) */
    int64_t row0, col0;               /* where this rank's block starts */
    int64_t rows, cols;               /* this rank's block; rows == 0 means nothing to write */
} H5Block;

/* A block that is the whole dataset (written by one rank; the others pass an empty block). */
H5Block h5_whole(int64_t rows, int64_t cols, int this_rank_writes);

/* Collective: create PATH's temporary file on all ranks of comm. */
void h5_create(H5File *f, const char *path, MPI_Comm comm);
/* Collective: close and rename into place. */
void h5_finish(H5File *f);
/* Collective: open an existing file for reading (validates that it is HDF5: a clear error). */
void h5_open_read(H5File *f, const char *path, MPI_Comm comm);
void h5_close(H5File *f);

/* Collective: create dataset NAME (intermediate groups created) holding `real` values as fp32
 * (or fp64 in the fp64 build), and write this rank's block from data (rows x cols, row-major). */
void h5_write_real(H5File *f, const char *name, const H5Block *block, const real *data);
/* Read this rank's block of NAME into data, converting to `real`. The dataset's shape must equal
 * the block's global shape: a mismatch is a fatal error naming the file and the dataset. */
void h5_read_real(H5File *f, const char *name, const H5Block *block, real *data);
/* Does the dataset or group exist? */
int h5_exists(H5File *f, const char *name);
/* The shape of dataset NAME (ndim returned; dims filled up to 2). Fatal if missing. */
int h5_shape(H5File *f, const char *name, int64_t dims[2]);

/* Root attributes (collective for writing: every rank passes the same value). */
void h5_set_attr_string(H5File *f, const char *name, const char *value);
void h5_set_attr_int(H5File *f, const char *name, int64_t value);
void h5_set_attr_double(H5File *f, const char *name, double value);
/* Readers: fatal error naming the file when the attribute is missing or of another kind. The
 * string is malloc'ed. */
char *h5_get_attr_string(H5File *f, const char *name);
int64_t h5_get_attr_int(H5File *f, const char *name);
double h5_get_attr_double(H5File *f, const char *name);

#endif
