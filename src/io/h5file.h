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

/* Call before MPI_Init. Open MPI's MPI-IO (ompio) opens every file with a shared-file-pointer
 * component; its "lockedfile" one overflows a buffer and aborts the job for a file path longer
 * than about 240 characters (Open MPI 4.1.4, a deep scratch directory). paft never uses shared
 * file pointers, so that component is left out (OMPI_MCA_sharedfp=^lockedfile) unless the user set
 * OMPI_MCA_sharedfp. Other MPI libraries ignore the variable. */
void h5_prepare_mpi_io(void);

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

/* Fatal error naming the file unless dataset NAME stores all the values its shape declares (a
 * tiny file can declare a 2^40-element dataset: chunked, nothing written, HDF5 reads fill values).
 * Datasets with filters (compression) are taken at their word: their stored size says nothing. */
void h5_require_stored(H5File *f, const char *name);

/* Root attributes (collective for writing: every rank passes the same value). */
void h5_set_attr_string(H5File *f, const char *name, const char *value);
void h5_set_attr_int(H5File *f, const char *name, int64_t value);
void h5_set_attr_double(H5File *f, const char *name, double value);
/* Does the root attribute NAME exist? (Optional attributes: those newer writers add.) */
int h5_has_attr(H5File *f, const char *name);
/* Readers: fatal error naming the file when the attribute is missing or of another kind. The
 * string is malloc'ed. */
char *h5_get_attr_string(H5File *f, const char *name);
int64_t h5_get_attr_int(H5File *f, const char *name);
double h5_get_attr_double(H5File *f, const char *name);

/* ---- floating-point datasets with a chosen stored type (the merged model) ---------------------
 * bf16 is stored as an HDF5 user-defined float: 16 bits, sign bit 15, exponent bits 7-14 with
 * bias 127, mantissa bits 0-6, little-endian. Because the type is fully described, h5dump and
 * h5py (ds.astype('f4')) convert it to wider floats exactly. paft writes and reads the bit
 * patterns as they are (uint16_t in memory, no HDF5 conversion); rounding fp32 to bf16 is the
 * caller's (fp32_to_bf16: round to nearest even). */
typedef enum { H5_FLOAT32, H5_BFLOAT16 } H5FloatType;

/* A new HDF5 datatype handle for bf16 as above (close it with H5Tclose). */
hid_t h5_bf16_type(void);
/* Bytes per element and a name ("fp32", "bf16"). */
int h5_float_type_size(H5FloatType type);
const char *h5_float_type_name(H5FloatType type);

/* Collective: create group NAME (parents must exist). Objects paft creates record no
 * modification times, so a file's bytes depend on its contents alone. */
void h5_create_group(H5File *f, const char *name);
/* Collective: create a chunked dataset NAME of shape rows x cols (cols 0: 1-D of rows) stored as
 * `type`. Chunks are whole rows, about 1 MiB each; space is allocated at creation and never
 * pre-filled. Its parent group must exist. */
void h5_create_float_dataset(H5File *f, const char *name, int64_t rows, int64_t cols,
                             H5FloatType type);
/* Collective: write this rank's block of an existing dataset from data: float for H5_FLOAT32,
 * uint16_t bit patterns for H5_BFLOAT16 (must be the dataset's stored type). Every rank of the
 * file calls it (a rank with nothing to write passes an empty block). */
void h5_write_float_block(H5File *f, const char *name, const H5Block *block, H5FloatType type,
                          const void *data);
/* The stored type of an existing dataset; fatal error naming the file unless it is fp32 or bf16
 * exactly as described above. */
H5FloatType h5_dataset_float_type(H5File *f, const char *name);
/* Read this rank's block of NAME (its shape must equal the block's global shape) as `type`:
 * float for H5_FLOAT32, uint16_t bf16 bit patterns for H5_BFLOAT16. Reading a dataset as its own
 * stored type copies the bits; reading bf16 as fp32 widens exactly; fp32 as bf16 is refused
 * (HDF5's narrowing would not round to nearest even). */
void h5_read_float_block(H5File *f, const char *name, const H5Block *block, H5FloatType type,
                         void *data);

/* Names of the links in group NAME, sorted by name (byte order); *n set. Free each and the array. */
char **h5_list_group(H5File *f, const char *name, int *n);

#endif
