/* resume_fixture.c - crafts the inputs of the resume and stage-complete error tests
 * (tests/train/resume_errors_setup.sh): edits a checkpoint's or adapter's attributes, values and
 * names in place, as a corrupt or hand-edited file would have them, and writes small SFT data
 * files.
 *
 *   resume_fixture attr-int FILE NAME VALUE     set root attribute NAME to the int64 VALUE
 *   resume_fixture attr-str FILE NAME VALUE     set root attribute NAME to the string VALUE
 *   resume_fixture attr-delete FILE NAME        delete root attribute NAME
 *   resume_fixture poke FILE DATASET VALUE      set the first element of a fp32 dataset
 *   resume_fixture rename FILE OLD NEW          rename (move) a group or dataset
 *   resume_fixture int-dataset FILE DATASET     rewrite a 2-D fp32 dataset as int32 (same values
 *                                               truncated, same shape)
 *   resume_fixture sft-data PATH RECORDS        a generated SFT data file of RECORDS records
 */
#include <hdf5.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/synthetic.h"
#include "util/common.h"

static hid_t open_rw(const char *path) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) PAFT_FATAL("%s: cannot open for writing", path);
    return f;
}

static void delete_attr(hid_t f, const char *name) {
    if (H5Aexists(f, name) > 0 && H5Adelete(f, name) < 0) PAFT_FATAL("cannot delete %s", name);
}

static void set_attr(hid_t f, const char *name, hid_t type, const void *value) {
    delete_attr(f, name);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0 || H5Awrite(a, type, value) < 0) PAFT_FATAL("cannot write attribute %s", name);
    H5Aclose(a);
    H5Sclose(space);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "attr-int") == 0 && argc == 5) {
        hid_t f = open_rw(argv[2]);
        long long v = strtoll(argv[4], NULL, 10);
        int64_t value = (int64_t)v;
        set_attr(f, argv[3], H5T_NATIVE_INT64, &value);
        H5Fclose(f);
    } else if (strcmp(mode, "attr-str") == 0 && argc == 5) {
        hid_t f = open_rw(argv[2]);
        hid_t type = H5Tcopy(H5T_C_S1);
        H5Tset_size(type, strlen(argv[4]) + 1);
        set_attr(f, argv[3], type, argv[4]);
        H5Tclose(type);
        H5Fclose(f);
    } else if (strcmp(mode, "attr-delete") == 0 && argc == 4) {
        hid_t f = open_rw(argv[2]);
        delete_attr(f, argv[3]);
        H5Fclose(f);
    } else if (strcmp(mode, "poke") == 0 && argc == 5) {
        hid_t f = open_rw(argv[2]);
        hid_t d = H5Dopen2(f, argv[3], H5P_DEFAULT);
        if (d < 0) PAFT_FATAL("%s: no dataset %s", argv[2], argv[3]);
        hid_t space = H5Dget_space(d);
        hsize_t start[2] = {0, 0}, count[2] = {1, 1};
        int ndim = H5Sget_simple_extent_ndims(space);
        H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
        hid_t mem = H5Screate_simple(ndim, count, NULL);
        float value = strtof(argv[4], NULL);
        if (H5Dwrite(d, H5T_NATIVE_FLOAT, mem, space, H5P_DEFAULT, &value) < 0)
            PAFT_FATAL("%s: cannot write %s", argv[2], argv[3]);
        H5Sclose(mem);
        H5Sclose(space);
        H5Dclose(d);
        H5Fclose(f);
    } else if (strcmp(mode, "int-dataset") == 0 && argc == 4) {
        hid_t f = open_rw(argv[2]);
        hid_t d = H5Dopen2(f, argv[3], H5P_DEFAULT);
        if (d < 0) PAFT_FATAL("%s: no dataset %s", argv[2], argv[3]);
        hid_t space = H5Dget_space(d);
        hsize_t dims[2] = {0, 0};
        if (H5Sget_simple_extent_ndims(space) != 2) PAFT_FATAL("%s: %s is not 2-D", argv[2], argv[3]);
        H5Sget_simple_extent_dims(space, dims, NULL);
        int *values = calloc(dims[0] * dims[1], sizeof(int));
        if (H5Dread(d, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values) < 0)
            PAFT_FATAL("%s: cannot read %s", argv[2], argv[3]);
        H5Dclose(d);
        if (H5Ldelete(f, argv[3], H5P_DEFAULT) < 0) PAFT_FATAL("%s: cannot delete %s", argv[2], argv[3]);
        d = H5Dcreate2(f, argv[3], H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (d < 0 || H5Dwrite(d, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values) < 0)
            PAFT_FATAL("%s: cannot write %s", argv[2], argv[3]);
        free(values);
        H5Dclose(d);
        H5Sclose(space);
        H5Fclose(f);
    } else if (strcmp(mode, "rename") == 0 && argc == 5) {
        hid_t f = open_rw(argv[2]);
        if (H5Lmove(f, argv[3], f, argv[4], H5P_DEFAULT, H5P_DEFAULT) < 0)
            PAFT_FATAL("%s: cannot rename %s", argv[2], argv[3]);
        H5Fclose(f);
    } else if (strcmp(mode, "sft-data") == 0 && argc == 4) {
        synthetic_write_sft(argv[2], atoi(argv[3]), 1, 77, 0, SYNTH_ALL);
    } else {
        fprintf(stderr, "usage: see the comment at the top of tests/train/resume_fixture.c\n");
        return 2;
    }
    MPI_Finalize();
    return 0;
}
