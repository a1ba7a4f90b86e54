/* h5file.c - collective parallel-HDF5 files (see h5file.h). */
#include "io/h5file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define H5T_REAL (sizeof(real) == 4 ? H5T_NATIVE_FLOAT : H5T_NATIVE_DOUBLE)

H5Block h5_whole(int64_t rows, int64_t cols, int this_rank_writes) {
    H5Block b = {rows, cols, 0, 0, this_rank_writes ? rows : 0, cols};
    return b;
}

static hid_t parallel_fapl(MPI_Comm comm) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    CHECK_H5(fapl);
    CHECK_H5(H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL));
    return fapl;
}

void h5_prepare_mpi_io(void) {
    if (setenv("OMPI_MCA_sharedfp", "^lockedfile", 0) != 0)
        PAFT_FATAL("setenv OMPI_MCA_sharedfp: %s", strerror(errno));
}

void h5_create(H5File *f, const char *path, MPI_Comm comm) {
    memset(f, 0, sizeof *f);
    f->comm = comm;
    f->path = paft_strdup(path);
    /* one temporary name for the whole group: rank 0's pid */
    int rank;
    CHECK_MPI(MPI_Comm_rank(comm, &rank));
    long pid = (long)getpid();
    CHECK_MPI(MPI_Bcast(&pid, 1, MPI_LONG, 0, comm));
    size_t n = strlen(path) + 32;
    f->tmp_path = paft_malloc(n);
    snprintf(f->tmp_path, n, "%s.tmp.%ld", path, pid);
    hid_t fapl = parallel_fapl(comm);
    H5E_BEGIN_TRY { f->file = H5Fcreate(f->tmp_path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl); }
    H5E_END_TRY;
    if (f->file < 0) {
        /* say which: the directory was checked before the job started, so it went away or
         * changed since (a scratch purge, another job) */
        char *dir = paft_strdup(path);
        char *slash = strrchr(dir, '/');
        if (slash == dir) dir[1] = '\0';
        else if (slash) *slash = '\0';
        else snprintf(dir, 2, ".");
        const char *why = !paft_is_directory(dir)     ? "its directory does not exist (any more)"
                          : access(dir, W_OK | X_OK) != 0 ? "its directory is not writable"
                                                          : "the file system refused (quota? full?)";
        PAFT_FATAL("%s: cannot create the HDF5 file: %s", f->tmp_path, why);
    }
    CHECK_H5(H5Pclose(fapl));
}

void h5_finish(H5File *f) {
    /* closing flushes the metadata (and cached raw data): where a full disk shows up */
    herr_t rc = H5Fclose(f->file);
    if (rc < 0) PAFT_FATAL("%s: cannot finish writing the HDF5 file (disk full?)", f->tmp_path);
    f->file = -1;
    CHECK_MPI(MPI_Barrier(f->comm)); /* every rank's data is on disk before the rename */
    int rank;
    CHECK_MPI(MPI_Comm_rank(f->comm, &rank));
    int ok = 1;
    if (rank == 0 && rename(f->tmp_path, f->path) != 0) ok = 0;
    CHECK_MPI(MPI_Bcast(&ok, 1, MPI_INT, 0, f->comm));
    if (!ok) PAFT_FATAL("%s: cannot rename %s into place: %s", f->path, f->tmp_path, strerror(errno));
    free(f->path);
    free(f->tmp_path);
    memset(f, 0, sizeof *f);
}

void h5_open_read(H5File *f, const char *path, MPI_Comm comm) {
    memset(f, 0, sizeof *f);
    f->comm = comm;
    f->path = paft_strdup(path);
    if (!paft_path_exists(path)) PAFT_FATAL("%s: no such file", path);
    /* H5Fis_hdf5 answers without printing HDF5's error stack for a non-HDF5 file */
    htri_t is_h5 = 0;
    H5E_BEGIN_TRY { is_h5 = H5Fis_hdf5(path); }
    H5E_END_TRY;
    if (is_h5 <= 0) PAFT_FATAL("%s: not an HDF5 file (or truncated)", path);
    hid_t fapl = parallel_fapl(comm);
    H5E_BEGIN_TRY { f->file = H5Fopen(path, H5F_ACC_RDONLY, fapl); }
    H5E_END_TRY;
    if (f->file < 0) PAFT_FATAL("%s: cannot open as HDF5 (corrupt or truncated?)", path);
    CHECK_H5(H5Pclose(fapl));
}

void h5_close(H5File *f) {
    if (f->file >= 0) CHECK_H5(H5Fclose(f->file));
    free(f->path);
    free(f->tmp_path);
    memset(f, 0, sizeof *f);
}

int h5_exists(H5File *f, const char *name) {
    /* check each prefix: H5Lexists fails on a path whose parent is missing */
    char buf[512];
    snprintf(buf, sizeof buf, "%s", name);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            htri_t e = 0;
            H5E_BEGIN_TRY { e = H5Lexists(f->file, buf, H5P_DEFAULT); }
            H5E_END_TRY;
            if (e <= 0) return 0;
            *p = saved;
            if (saved == '\0') return 1;
        }
    }
}

/* file and memory dataspaces of a block */
static void block_spaces(const H5Block *b, hid_t *file_space, hid_t *mem_space) {
    int ndim = b->global_cols > 0 ? 2 : 1;
    hsize_t dims[2] = {(hsize_t)b->global_rows, (hsize_t)b->global_cols};
    *file_space = H5Screate_simple(ndim, dims, NULL);
    CHECK_H5(*file_space);
    if (b->rows == 0 || (ndim == 2 && b->cols == 0)) {
        CHECK_H5(H5Sselect_none(*file_space));
        hsize_t one = 1;
        *mem_space = H5Screate_simple(1, &one, NULL);
        CHECK_H5(*mem_space);
        CHECK_H5(H5Sselect_none(*mem_space));
        return;
    }
    if (b->row0 < 0 || b->row0 + b->rows > b->global_rows ||
        (ndim == 2 && (b->col0 < 0 || b->col0 + b->cols > b->global_cols)))
        PAFT_FATAL("block [%lld+%lld, %lld+%lld] outside a %lld x %lld dataset", (long long)b->row0,
                   (long long)b->rows, (long long)b->col0, (long long)b->cols,
                   (long long)b->global_rows, (long long)b->global_cols);
    hsize_t start[2] = {(hsize_t)b->row0, (hsize_t)b->col0};
    hsize_t count[2] = {(hsize_t)b->rows, (hsize_t)b->cols};
    CHECK_H5(H5Sselect_hyperslab(*file_space, H5S_SELECT_SET, start, NULL, count, NULL));
    *mem_space = H5Screate_simple(ndim, count, NULL);
    CHECK_H5(*mem_space);
}

static hid_t collective_dxpl(void) {
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    CHECK_H5(dxpl);
    CHECK_H5(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE));
    return dxpl;
}

void h5_write_real(H5File *f, const char *name, const H5Block *b, const real *data) {
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    CHECK_H5(lcpl);
    CHECK_H5(H5Pset_create_intermediate_group(lcpl, 1));
    hid_t file_space, mem_space;
    block_spaces(b, &file_space, &mem_space);
    hid_t dset = H5Dcreate2(f->file, name, H5T_REAL, file_space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    if (dset < 0) PAFT_FATAL("%s: cannot create dataset %s", f->tmp_path, name);
    hid_t dxpl = collective_dxpl();
    herr_t rc = H5Dwrite(dset, H5T_REAL, mem_space, file_space, dxpl, data);
    if (rc < 0) PAFT_FATAL("%s: cannot write dataset %s (disk full?)", f->tmp_path ? f->tmp_path : f->path, name);
    CHECK_H5(H5Pclose(dxpl));
    CHECK_H5(H5Dclose(dset));
    CHECK_H5(H5Sclose(mem_space));
    CHECK_H5(H5Sclose(file_space));
    CHECK_H5(H5Pclose(lcpl));
}

int h5_shape(H5File *f, const char *name, int64_t dims[2]) {
    if (!h5_exists(f, name)) PAFT_FATAL("%s: missing dataset %s", f->path, name);
    hid_t dset = H5Dopen2(f->file, name, H5P_DEFAULT);
    if (dset < 0) PAFT_FATAL("%s: %s is not a dataset", f->path, name);
    hid_t space = H5Dget_space(dset);
    CHECK_H5(space);
    int ndim = H5Sget_simple_extent_ndims(space);
    if (ndim < 1 || ndim > 2) PAFT_FATAL("%s: %s has %d dimensions, expected 1 or 2", f->path, name, ndim);
    hsize_t d[2] = {0, 0};
    CHECK_H5(H5Sget_simple_extent_dims(space, d, NULL));
    dims[0] = (int64_t)d[0];
    dims[1] = ndim == 2 ? (int64_t)d[1] : 0;
    CHECK_H5(H5Sclose(space));
    CHECK_H5(H5Dclose(dset));
    return ndim;
}

void h5_require_stored(H5File *f, const char *name) {
    if (!h5_exists(f, name)) PAFT_FATAL("%s: missing dataset %s", f->path, name);
    hid_t dset = H5Dopen2(f->file, name, H5P_DEFAULT);
    if (dset < 0) PAFT_FATAL("%s: %s is not a dataset", f->path, name);
    hid_t dcpl = H5Dget_create_plist(dset);
    CHECK_H5(dcpl);
    const int filters = H5Pget_nfilters(dcpl);
    CHECK_H5(filters);
    CHECK_H5(H5Pclose(dcpl));
    hid_t space = H5Dget_space(dset);
    CHECK_H5(space);
    const hssize_t n = H5Sget_simple_extent_npoints(space);
    CHECK_H5(n);
    CHECK_H5(H5Sclose(space));
    hid_t type = H5Dget_type(dset);
    CHECK_H5(type);
    const size_t size = H5Tget_size(type);
    CHECK_H5(H5Tclose(type));
    const hsize_t stored = H5Dget_storage_size(dset);
    CHECK_H5(H5Dclose(dset));
    /* in double: n * size may exceed 64 bits for a declared shape */
    if (filters == 0 && (double)stored < (double)n * (double)size)
        PAFT_FATAL("%s: dataset %s declares %lld values of %zu bytes but the file stores only %llu "
                   "bytes of them (truncated or corrupt)",
                   f->path, name, (long long)n, size, (unsigned long long)stored);
}

/* Check the dataset has the block's global shape, then read the block collectively, HDF5
 * converting the stored type to mem_type. */
static void read_block(H5File *f, const char *name, const H5Block *b, hid_t mem_type, void *data) {
    int64_t dims[2];
    h5_shape(f, name, dims);
    if (dims[0] != b->global_rows || dims[1] != b->global_cols)
        PAFT_FATAL("%s: dataset %s is %lld x %lld, expected %lld x %lld", f->path, name,
                   (long long)dims[0], (long long)dims[1], (long long)b->global_rows,
                   (long long)b->global_cols);
    hid_t dset = H5Dopen2(f->file, name, H5P_DEFAULT);
    CHECK_H5(dset);
    /* HDF5 would convert integers to floats without a word: weights are never integers */
    hid_t stored = H5Dget_type(dset);
    CHECK_H5(stored);
    const H5T_class_t cls = H5Tget_class(stored);
    CHECK_H5(H5Tclose(stored));
    if (cls != H5T_FLOAT)
        PAFT_FATAL("%s: dataset %s does not hold floating-point values (HDF5 type class %d)",
                   f->path, name, (int)cls);
    hid_t file_space, mem_space;
    block_spaces(b, &file_space, &mem_space);
    hid_t dxpl = collective_dxpl();
    herr_t rc;
    H5E_BEGIN_TRY { rc = H5Dread(dset, mem_type, mem_space, file_space, dxpl, data); }
    H5E_END_TRY;
    if (rc < 0) PAFT_FATAL("%s: cannot read dataset %s (corrupt or truncated file?)", f->path, name);
    CHECK_H5(H5Pclose(dxpl));
    CHECK_H5(H5Sclose(mem_space));
    CHECK_H5(H5Sclose(file_space));
    CHECK_H5(H5Dclose(dset));
}

void h5_read_real(H5File *f, const char *name, const H5Block *b, real *data) {
    read_block(f, name, b, H5T_REAL, data);
}

/* ---- attributes ------------------------------------------------------------------------------*/

static void set_attr(H5File *f, const char *name, hid_t type, const void *value) {
    hid_t space = H5Screate(H5S_SCALAR);
    CHECK_H5(space);
    hid_t attr = H5Acreate2(f->file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    CHECK_H5(attr);
    CHECK_H5(H5Awrite(attr, type, value));
    CHECK_H5(H5Aclose(attr));
    CHECK_H5(H5Sclose(space));
}

void h5_set_attr_string(H5File *f, const char *name, const char *value) {
    hid_t type = H5Tcopy(H5T_C_S1);
    CHECK_H5(type);
    CHECK_H5(H5Tset_size(type, strlen(value) + 1));
    CHECK_H5(H5Tset_cset(type, H5T_CSET_UTF8));
    set_attr(f, name, type, value);
    CHECK_H5(H5Tclose(type));
}

void h5_set_attr_int(H5File *f, const char *name, int64_t value) {
    set_attr(f, name, H5T_NATIVE_INT64, &value);
}

void h5_set_attr_double(H5File *f, const char *name, double value) {
    set_attr(f, name, H5T_NATIVE_DOUBLE, &value);
}

int h5_has_attr(H5File *f, const char *name) {
    htri_t exists = H5Aexists(f->file, name);
    if (exists < 0) PAFT_FATAL("%s: cannot look up attribute '%s'", f->path, name);
    return exists > 0;
}

static hid_t open_attr(H5File *f, const char *name, H5T_class_t expect) {
    htri_t exists = H5Aexists(f->file, name);
    if (exists <= 0) PAFT_FATAL("%s: missing attribute '%s'", f->path, name);
    hid_t attr = H5Aopen(f->file, name, H5P_DEFAULT);
    CHECK_H5(attr);
    hid_t type = H5Aget_type(attr);
    CHECK_H5(type);
    H5T_class_t cls = H5Tget_class(type);
    CHECK_H5(H5Tclose(type));
    if (cls != expect) PAFT_FATAL("%s: attribute '%s' has the wrong type", f->path, name);
    /* Every paft attribute holds one value: the readers below read into room for one, so an
     * array (or null) attribute must be refused before H5Aread writes past it. */
    hid_t space = H5Aget_space(attr);
    CHECK_H5(space);
    H5S_class_t space_class = H5Sget_simple_extent_type(space);
    CHECK_H5(space_class);
    hssize_t points = H5Sget_simple_extent_npoints(space);
    CHECK_H5(points);
    CHECK_H5(H5Sclose(space));
    if (space_class != H5S_SCALAR && !(space_class == H5S_SIMPLE && points == 1))
        PAFT_FATAL("%s: attribute '%s' is not a single value (it holds %lld)", f->path, name,
                   (long long)points);
    return attr;
}

char *h5_get_attr_string(H5File *f, const char *name) {
    hid_t attr = open_attr(f, name, H5T_STRING);
    hid_t type = H5Aget_type(attr);
    CHECK_H5(type);
    if (H5Tis_variable_str(type) > 0) PAFT_FATAL("%s: attribute '%s' is a variable-length string", f->path, name);
    size_t size = H5Tget_size(type);
    char *out = paft_calloc(size + 1, 1);
    hid_t mem = H5Tcopy(type); /* same size, padding and character set as stored */
    CHECK_H5(mem);
    CHECK_H5(H5Aread(attr, mem, out));
    CHECK_H5(H5Tclose(mem));
    CHECK_H5(H5Tclose(type));
    CHECK_H5(H5Aclose(attr));
    return out;
}

/* A scalar attribute of class `expect`, converted by HDF5 to the memory type. */
static void read_scalar_attr(H5File *f, const char *name, H5T_class_t expect, hid_t mem_type,
                             void *value) {
    hid_t attr = open_attr(f, name, expect);
    CHECK_H5(H5Aread(attr, mem_type, value));
    CHECK_H5(H5Aclose(attr));
}

int64_t h5_get_attr_int(H5File *f, const char *name) {
    int64_t v = 0;
    read_scalar_attr(f, name, H5T_INTEGER, H5T_NATIVE_INT64, &v);
    return v;
}

double h5_get_attr_double(H5File *f, const char *name) {
    double v = 0;
    read_scalar_attr(f, name, H5T_FLOAT, H5T_NATIVE_DOUBLE, &v);
    return v;
}

/* ---- floating-point datasets with a chosen stored type -------------------------------------- */

hid_t h5_bf16_type(void) {
    /* Start from IEEE fp32 little-endian and shrink it: the fields are set before the precision
     * and size, because HDF5 checks that the fields fit the current precision at every step. */
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    CHECK_H5(t);
    CHECK_H5(H5Tset_fields(t, 15, 7, 8, 0, 7)); /* sign bit, exponent pos/size, mantissa pos/size */
    CHECK_H5(H5Tset_offset(t, 0));
    CHECK_H5(H5Tset_precision(t, 16));
    CHECK_H5(H5Tset_size(t, 2));
    CHECK_H5(H5Tset_ebias(t, 127));
    return t;
}

int h5_float_type_size(H5FloatType type) { return type == H5_BFLOAT16 ? 2 : 4; }
const char *h5_float_type_name(H5FloatType type) { return type == H5_BFLOAT16 ? "bf16" : "fp32"; }

/* The memory/file type of a H5FloatType (a new handle, closed by the caller). */
static hid_t float_type_handle(H5FloatType type) {
    if (type == H5_BFLOAT16) return h5_bf16_type();
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    CHECK_H5(t);
    return t;
}

void h5_create_group(H5File *f, const char *name) {
    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
    CHECK_H5(gcpl);
    CHECK_H5(H5Pset_obj_track_times(gcpl, 0));
    hid_t g = H5Gcreate2(f->file, name, H5P_DEFAULT, gcpl, H5P_DEFAULT);
    if (g < 0) PAFT_FATAL("%s: cannot create group %s", f->tmp_path ? f->tmp_path : f->path, name);
    CHECK_H5(H5Gclose(g));
    CHECK_H5(H5Pclose(gcpl));
}

void h5_create_float_dataset(H5File *f, const char *name, int64_t rows, int64_t cols,
                             H5FloatType type) {
    const int ndim = cols > 0 ? 2 : 1;
    hsize_t dims[2] = {(hsize_t)rows, (hsize_t)(cols > 0 ? cols : 1)};
    /* whole rows per chunk, ~1 MiB: a rank's contiguous rows map to few chunks, and a reader of a
     * row block touches no more than it needs */
    const int64_t row_bytes = (cols > 0 ? cols : 1) * h5_float_type_size(type);
    int64_t chunk_rows = PAFT_MAX((int64_t)1, ((int64_t)1 << 20) / row_bytes);
    chunk_rows = PAFT_MIN(chunk_rows, PAFT_MAX(rows, (int64_t)1));
    hsize_t chunk[2] = {(hsize_t)chunk_rows, dims[1]};
    hid_t space = H5Screate_simple(ndim, dims, NULL);
    CHECK_H5(space);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    CHECK_H5(dcpl);
    if (rows > 0) CHECK_H5(H5Pset_chunk(dcpl, ndim, chunk));
    CHECK_H5(H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY)); /* parallel HDF5 needs it anyway */
    CHECK_H5(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER));   /* every element is written */
    CHECK_H5(H5Pset_obj_track_times(dcpl, 0));
    hid_t ftype = float_type_handle(type);
    hid_t dset = H5Dcreate2(f->file, name, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (dset < 0) PAFT_FATAL("%s: cannot create dataset %s", f->tmp_path ? f->tmp_path : f->path, name);
    CHECK_H5(H5Dclose(dset));
    CHECK_H5(H5Tclose(ftype));
    CHECK_H5(H5Pclose(dcpl));
    CHECK_H5(H5Sclose(space));
}

void h5_write_float_block(H5File *f, const char *name, const H5Block *b, H5FloatType type,
                          const void *data) {
    hid_t dset = H5Dopen2(f->file, name, H5P_DEFAULT);
    if (dset < 0) PAFT_FATAL("%s: no dataset %s to write", f->tmp_path ? f->tmp_path : f->path, name);
    hid_t file_space, mem_space;
    block_spaces(b, &file_space, &mem_space);
    hid_t mtype = float_type_handle(type);
    hid_t dxpl = collective_dxpl();
    herr_t rc = H5Dwrite(dset, mtype, mem_space, file_space, dxpl, data);
    if (rc < 0) PAFT_FATAL("%s: cannot write dataset %s (disk full?)", f->tmp_path ? f->tmp_path : f->path, name);
    CHECK_H5(H5Pclose(dxpl));
    CHECK_H5(H5Tclose(mtype));
    CHECK_H5(H5Sclose(mem_space));
    CHECK_H5(H5Sclose(file_space));
    CHECK_H5(H5Dclose(dset));
}

H5FloatType h5_dataset_float_type(H5File *f, const char *name) {
    if (!h5_exists(f, name)) PAFT_FATAL("%s: missing dataset %s", f->path, name);
    hid_t dset = H5Dopen2(f->file, name, H5P_DEFAULT);
    if (dset < 0) PAFT_FATAL("%s: %s is not a dataset", f->path, name);
    hid_t t = H5Dget_type(dset);
    CHECK_H5(t);
    int found = -1;
    for (int candidate = H5_FLOAT32; candidate <= H5_BFLOAT16 && found < 0; candidate++) {
        hid_t want = float_type_handle((H5FloatType)candidate);
        if (H5Tequal(t, want) > 0) found = candidate;
        CHECK_H5(H5Tclose(want));
    }
    CHECK_H5(H5Tclose(t));
    CHECK_H5(H5Dclose(dset));
    if (found < 0)
        PAFT_FATAL("%s: dataset %s is neither fp32 nor paft's bf16 (16-bit float, sign bit 15, "
                   "exponent bits 7-14, bias 127, mantissa bits 0-6)", f->path, name);
    return (H5FloatType)found;
}

void h5_read_float_block(H5File *f, const char *name, const H5Block *b, H5FloatType type,
                         void *data) {
    H5FloatType stored = h5_dataset_float_type(f, name);
    if (stored == H5_FLOAT32 && type == H5_BFLOAT16)
        PAFT_FATAL("%s: dataset %s is fp32; reading it as bf16 would round by HDF5's rules "
                   "(read fp32 and round with fp32_to_bf16)", f->path, name);
    hid_t mtype = float_type_handle(type);
    read_block(f, name, b, mtype, data);
    CHECK_H5(H5Tclose(mtype));
}

typedef struct {
    char **names;
    int n, cap;
} LinkNames;

static herr_t add_link_name(hid_t group, const char *name, const H5L_info_t *info, void *data) {
    (void)group;
    (void)info;
    LinkNames *list = data;
    if (list->n == list->cap) {
        list->cap = list->cap ? 2 * list->cap : 64;
        list->names = paft_realloc(list->names, (size_t)list->cap * sizeof(char *));
    }
    list->names[list->n++] = paft_strdup(name);
    return 0;
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char **h5_list_group(H5File *f, const char *name, int *n) {
    if (!h5_exists(f, name)) PAFT_FATAL("%s: missing group %s", f->path, name);
    hid_t group = H5Gopen2(f->file, name, H5P_DEFAULT);
    if (group < 0) PAFT_FATAL("%s: %s is not a group", f->path, name);
    LinkNames list = {0};
    hsize_t idx = 0;
    CHECK_H5(H5Literate(group, H5_INDEX_NAME, H5_ITER_NATIVE, &idx, add_link_name, &list));
    CHECK_H5(H5Gclose(group));
    if (list.n > 1) qsort(list.names, (size_t)list.n, sizeof(char *), compare_names);
    *n = list.n;
    return list.names;
}
