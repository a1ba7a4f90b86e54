/* merged_h5.c - the merged model file: per-tensor statistics and `paft inspect` (merged_h5.h). */
#include "io/merged_h5.h"

#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "util/common.h"

/* ---- /stats/<tensor> ---------------------------------------------------------------------------
 * A scalar compound whose field names are the struct's: h5py reads it as a numpy record,
 * f["stats/<name>"][()]["sparsity_sft"]. The file type is the packed copy of the native type, so
 * no padding bytes (whatever memory held) reach the file. */

static hid_t stats_memory_type(void) {
    hid_t t = H5Tcreate(H5T_COMPOUND, sizeof(MergedTensorStats));
    CHECK_H5(t);
#define FIELD(name, type) CHECK_H5(H5Tinsert(t, #name, HOFFSET(MergedTensorStats, name), type))
    FIELD(numel, H5T_NATIVE_INT64);
    FIELD(sparsity_sft, H5T_NATIVE_DOUBLE);
    FIELD(sparsity_pref, H5T_NATIVE_DOUBLE);
    FIELD(sparsity_merged, H5T_NATIVE_DOUBLE);
    FIELD(small_sft, H5T_NATIVE_INT64);
    FIELD(small_pref, H5T_NATIVE_INT64);
    FIELD(small_merged, H5T_NATIVE_INT64);
    FIELD(kept_sft, H5T_NATIVE_INT64);
    FIELD(kept_pref, H5T_NATIVE_INT64);
    FIELD(in_sft, H5T_NATIVE_INT32);
    FIELD(in_pref, H5T_NATIVE_INT32);
    FIELD(slerp_cos, H5T_NATIVE_DOUBLE);
    FIELD(dare_scale_sft, H5T_NATIVE_DOUBLE);
    FIELD(dare_scale_pref, H5T_NATIVE_DOUBLE);
#undef FIELD
    return t;
}

void merged_write_stats(H5File *f, const char *tensor, const MergedTensorStats *s, int writer) {
    char name[512];
    snprintf(name, sizeof name, "/stats/%s", tensor);
    hid_t mtype = stats_memory_type();
    hid_t ftype = H5Tcopy(mtype);
    CHECK_H5(ftype);
    CHECK_H5(H5Tpack(ftype));
    hid_t space = H5Screate(H5S_SCALAR);
    CHECK_H5(space);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    CHECK_H5(dcpl);
    CHECK_H5(H5Pset_obj_track_times(dcpl, 0));
    hid_t dset = H5Dcreate2(f->file, name, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (dset < 0) PAFT_FATAL("%s: cannot create dataset %s", f->tmp_path ? f->tmp_path : f->path, name);
    if (!writer) CHECK_H5(H5Sselect_none(space));
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    CHECK_H5(dxpl);
    CHECK_H5(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE));
    CHECK_H5(H5Dwrite(dset, mtype, space, space, dxpl, s));
    CHECK_H5(H5Pclose(dxpl));
    CHECK_H5(H5Dclose(dset));
    CHECK_H5(H5Pclose(dcpl));
    CHECK_H5(H5Sclose(space));
    CHECK_H5(H5Tclose(ftype));
    CHECK_H5(H5Tclose(mtype));
}

void merged_read_stats(H5File *f, const char *tensor, MergedTensorStats *s) {
    char name[512];
    snprintf(name, sizeof name, "/stats/%s", tensor);
    if (!h5_exists(f, name)) PAFT_FATAL("%s: missing dataset %s", f->path, name);
    hid_t dset = H5Dopen2(f->file, name, H5P_DEFAULT);
    if (dset < 0) PAFT_FATAL("%s: %s is not a dataset", f->path, name);
    hid_t space = H5Dget_space(dset);
    CHECK_H5(space);
    if (H5Sget_simple_extent_type(space) != H5S_SCALAR)
        PAFT_FATAL("%s: %s is not a scalar (expected one statistics record)", f->path, name);
    hid_t mtype = stats_memory_type();
    memset(s, 0, sizeof *s);
    herr_t rc;
    /* HDF5 matches compound fields by name: a missing field is an error, not a silent zero */
    H5E_BEGIN_TRY { rc = H5Dread(dset, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, s); }
    H5E_END_TRY;
    if (rc < 0) PAFT_FATAL("%s: %s is not a paft statistics record", f->path, name);
    CHECK_H5(H5Tclose(mtype));
    CHECK_H5(H5Sclose(space));
    CHECK_H5(H5Dclose(dset));
}

/* ---- recognising the file --------------------------------------------------------------------- */

int merged_is_merged_file(const char *path) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    CHECK_H5(fapl);
    CHECK_H5(H5Pset_fapl_mpio(fapl, MPI_COMM_SELF, MPI_INFO_NULL));
    hid_t file;
    H5E_BEGIN_TRY { file = H5Fopen(path, H5F_ACC_RDONLY, fapl); }
    H5E_END_TRY;
    CHECK_H5(H5Pclose(fapl));
    if (file < 0) return 0; /* the adapter reader will say what is wrong with it */
    int is_merged = 0;
    htri_t has = H5Aexists(file, "format");
    if (has > 0) {
        hid_t attr = H5Aopen(file, "format", H5P_DEFAULT);
        CHECK_H5(attr);
        hid_t type = H5Aget_type(attr);
        CHECK_H5(type);
        /* only a single fixed-length string can be read into one buffer; anything else is not a
         * merged file, and the adapter reader says what is wrong with it */
        hid_t space = H5Aget_space(attr);
        CHECK_H5(space);
        hssize_t points = H5Sget_simple_extent_npoints(space);
        CHECK_H5(points);
        CHECK_H5(H5Sclose(space));
        if (points == 1 && H5Tget_class(type) == H5T_STRING && H5Tis_variable_str(type) == 0) {
            size_t size = H5Tget_size(type);
            char *value = paft_calloc(size + 1, 1);
            CHECK_H5(H5Aread(attr, type, value));
            is_merged = strcmp(value, MERGED_FORMAT) == 0;
            free(value);
        }
        CHECK_H5(H5Tclose(type));
        CHECK_H5(H5Aclose(attr));
    }
    CHECK_H5(H5Fclose(file));
    return is_merged;
}

/* ---- paft inspect ------------------------------------------------------------------------------ */


static void print_table(FILE *out, const char *title, const double *values, int n_layers) {
    fprintf(out, "\n  %s\n", title);
    fprintf(out, "  %5s", "layer");
    for (int p = 0; p < N_PROJ; p++) fprintf(out, " %9s", proj_short_name((Proj)p));
    fprintf(out, "\n");
    for (int l = 0; l < n_layers; l++) {
        fprintf(out, "  %5d", l);
        for (int p = 0; p < N_PROJ; p++) {
            double v = values[l * N_PROJ + p];
            if (v < 0) fprintf(out, " %9s", "-");
            else fprintf(out, " %9.4f", v);
        }
        fprintf(out, "\n");
    }
}

void merged_describe(const char *path, FILE *out) {
    H5File f;
    h5_open_read(&f, path, MPI_COMM_SELF);
    char *format = h5_get_attr_string(&f, "format");
    if (strcmp(format, MERGED_FORMAT) != 0)
        PAFT_FATAL("%s: HDF5 file of format '%s', not a paft merged model (%s)", path, format,
                   MERGED_FORMAT);
    char *method = h5_get_attr_string(&f, "method");
    char *parameters = h5_get_attr_string(&f, "parameters");
    char *sources = h5_get_attr_string(&f, "sources");
    char *fingerprint = h5_get_attr_string(&f, "base_fingerprint");
    char *dtype = h5_get_attr_string(&f, "dtype");

    /* every weight: count parameters, check the stored type */
    int n_weights = 0;
    char **weights = h5_list_group(&f, "/weights", &n_weights);
    double parameters_total = 0;
    char name[512];
    for (int i = 0; i < n_weights; i++) {
        snprintf(name, sizeof name, "/weights/%s", weights[i]);
        int64_t dims[2];
        int ndim = h5_shape(&f, name, dims);
        h5_dataset_float_type(&f, name);
        parameters_total += (double)dims[0] * (ndim == 2 ? (double)dims[1] : 1.0);
    }

    /* the statistics of every merged tensor, by layer and projection */
    int n_stats = 0;
    char **stats = h5_list_group(&f, "/stats", &n_stats);
    int n_layers = 0;
    for (int i = 0; i < n_stats; i++) {
        int layer, p = proj_from_name(stats[i], ".weight", &layer);
        if (p < 0) PAFT_FATAL("%s: /stats/%s is not a decoder-layer projection", path, stats[i]);
        snprintf(name, sizeof name, "/weights/%s", stats[i]);
        if (!h5_exists(&f, name)) PAFT_FATAL("%s: /stats/%s has no tensor %s", path, stats[i], name);
        n_layers = PAFT_MAX(n_layers, layer + 1);
    }
    size_t cells = (size_t)PAFT_MAX(n_layers, 1) * N_PROJ;
    double *table[3];
    for (int k = 0; k < 3; k++) {
        table[k] = paft_malloc(cells * sizeof(double));
        for (size_t c = 0; c < cells; c++) table[k][c] = -1;
    }
    double numel_total = 0, small_total[3] = {0, 0, 0};
    int in_sft = 0, in_pref = 0;
    for (int i = 0; i < n_stats; i++) {
        int layer, p = proj_from_name(stats[i], ".weight", &layer);
        MergedTensorStats s;
        merged_read_stats(&f, stats[i], &s);
        if (s.numel <= 0 || s.small_sft < 0 || s.small_sft > s.numel || s.small_pref < 0 ||
            s.small_pref > s.numel || s.small_merged < 0 || s.small_merged > s.numel)
            PAFT_FATAL("%s: /stats/%s holds inconsistent counts (numel %lld)", path, stats[i],
                       (long long)s.numel);
        table[0][layer * N_PROJ + p] = s.sparsity_sft;
        table[1][layer * N_PROJ + p] = s.sparsity_pref;
        table[2][layer * N_PROJ + p] = s.sparsity_merged;
        numel_total += (double)s.numel;
        small_total[0] += (double)s.small_sft;
        small_total[1] += (double)s.small_pref;
        small_total[2] += (double)s.small_merged;
        in_sft += s.in_sft != 0;
        in_pref += s.in_pref != 0;
    }

    fprintf(out, "%s: paft merged model (%s)\n", path, MERGED_FORMAT);
    fprintf(out, "  method %s, stored as %s; parameters %s\n", method, dtype, parameters);
    fprintf(out, "  sources %s\n", sources);
    fprintf(out, "  base fingerprint %s; %d tensors, %.0f parameters\n", fingerprint, n_weights,
            parameters_total);
    fprintf(out, "\n  sparsity (fraction of |delta| < 1e-5) per layer and module; '-' = not merged");
    print_table(out, "delta_sft (before sparsification):", table[0], n_layers);
    print_table(out, "delta_pref (before sparsification):", table[1], n_layers);
    print_table(out, "merged delta (theta_merged - theta_pre, fp32 before rounding):", table[2],
                n_layers);
    fprintf(out, "\n  summary: %d merged tensors (%d adapted by sft, %d by pref), %.0f elements\n",
            n_stats, in_sft, in_pref, numel_total);
    const char *labels[3] = {"delta_sft", "delta_pref", "merged delta"};
    for (int k = 0; k < 3; k++)
        fprintf(out, "  %-13s sparsity %.4f\n", labels[k],
                numel_total > 0 ? small_total[k] / numel_total : 0.0);

    for (int k = 0; k < 3; k++) free(table[k]);
    for (int i = 0; i < n_stats; i++) free(stats[i]);
    free(stats);
    for (int i = 0; i < n_weights; i++) free(weights[i]);
    free(weights);
    free(format);
    free(method);
    free(parameters);
    free(sources);
    free(fingerprint);
    free(dtype);
    h5_close(&f);
}
