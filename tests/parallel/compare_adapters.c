/*
 * compare_adapters.c - compare the /lora datasets of two adapter files (or another group: the
 * /weights of two merged models):
 *   compare_adapters A.h5 B.h5 TOL [GROUP] [norm]
 * exit 0 when every tensor's max |a - b| / max |b| <= TOL (a scale-aware relative error: LoRA B
 * starts at zero, so element-wise relative errors of near-zero entries say nothing about the
 * tensor), or with `norm` its ||a - b||_2 / ||b||_2 <= TOL: for runs in bf16, where AdamW turns
 * the small gradient differences of a few near-zero-gradient entries into a sizeable part of a
 * step (its update is about lr sign(g) at first), which the maximum reports and the norm weighs.
 * GROUP (default /lora) is any argument starting with '/'.
 */
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/h5file.h"

typedef struct {
    H5File *a, *b;
    const char *group; /* "/lora" (adapters) or "/weights" (merged models) */
    double tol, worst;
    int compared, failed;
    int norm; /* ||a - b|| / ||b|| instead of max |a - b| / max |b| */
} Compare;

static herr_t visit(hid_t obj, const char *name, const H5O_info_t *info, void *data) {
    (void)obj;
    Compare *c = data;
    if (info->type != H5O_TYPE_DATASET) return 0;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", c->group, name);
    int64_t da[2], db[2];
    h5_shape(c->a, path, da);
    h5_shape(c->b, path, db);
    if (da[0] != db[0] || da[1] != db[1]) {
        printf("%s: shapes differ\n", path);
        c->failed++;
        return 0;
    }
    size_t n = (size_t)da[0] * (size_t)(da[1] ? da[1] : 1);
    real *x = malloc(n * sizeof(real)), *y = malloc(n * sizeof(real));
    H5Block block = h5_whole(da[0], da[1], 1);
    h5_read_real(c->a, path, &block, x);
    h5_read_real(c->b, path, &block, y);
    double max_diff = 0, max_ref = 0, sq_diff = 0, sq_ref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)x[i] - (double)y[i];
        sq_diff += d * d;
        sq_ref += (double)y[i] * y[i];
        if (d < 0) d = -d;
        if (d > max_diff) max_diff = d;
        double r = y[i] < 0 ? -(double)y[i] : (double)y[i];
        if (r > max_ref) max_ref = r;
    }
    double rel = max_ref > 0 ? max_diff / max_ref : max_diff;
    if (c->norm) rel = sq_ref > 0 ? sqrt(sq_diff / sq_ref) : sqrt(sq_diff);
    if (rel > c->worst) c->worst = rel;
    if (rel > c->tol) {
        printf("%s: relative difference %.3g > %.3g\n", path, rel, c->tol);
        c->failed++;
    }
    c->compared++;
    free(x);
    free(y);
    return 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    const char *group_name = "/lora";
    int norm = 0, bad = argc < 4 || argc > 6;
    for (int i = 4; i < argc && !bad; i++) {
        if (strcmp(argv[i], "norm") == 0) norm = 1;
        else if (argv[i][0] == '/') group_name = argv[i];
        else bad = 1;
    }
    if (bad) {
        fprintf(stderr, "usage: compare_adapters A.h5 B.h5 TOL [GROUP (default /lora)] [norm]\n");
        return 2;
    }
    H5File a, b;
    h5_open_read(&a, argv[1], MPI_COMM_SELF);
    h5_open_read(&b, argv[2], MPI_COMM_SELF);
    Compare c = {&a, &b, group_name, atof(argv[3]), 0, 0, 0, norm};
    hid_t group = H5Gopen2(a.file, group_name, H5P_DEFAULT);
    CHECK_H5(group);
    CHECK_H5(H5Ovisit(group, H5_INDEX_NAME, H5_ITER_INC, visit, &c));
    CHECK_H5(H5Gclose(group));
    printf("%d tensors compared, worst relative difference %.3g (%s, tolerance %.3g)\n", c.compared,
           c.worst, c.norm ? "norm" : "max", c.tol);
    h5_close(&a);
    h5_close(&b);
    MPI_Finalize();
    return c.failed == 0 && c.compared > 0 ? 0 : 1;
}
