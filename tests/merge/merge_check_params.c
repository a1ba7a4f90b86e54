/*
 * merge_check_params.c - a tiny driver for the validation tests (paft_expect_error): resolves the
 * merge parameters given on the command line, then merges a 4 x 3 tensor on one rank.
 *
 * usage: merge_check_params METHOD W_SFT W_PREF DENSITY_SFT DENSITY_PREF NORMALIZE [FAULT]
 *   NORMALIZE: auto | 0 | 1
 *   FAULT: nan-delta (a NaN in delta_pref) | bad-layout (rows start at 1) | unresolved (skip
 *          merge_params_resolve)
 * Prints "ok" and exits 0 when nothing is wrong.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "merge/merge.h"
#include "util/common.h"

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (argc < 7)
        PAFT_FATAL("usage: merge_check_params METHOD W_SFT W_PREF DENSITY_SFT DENSITY_PREF "
                   "NORMALIZE [nan-delta|bad-layout|unresolved]");
    MergeParams p = merge_params_default(merge_method_from_name(argv[1]));
    p.weight[0] = atof(argv[2]);
    p.weight[1] = atof(argv[3]);
    p.density[0] = atof(argv[4]);
    p.density[1] = atof(argv[5]);
    p.normalize = strcmp(argv[6], "auto") == 0 ? MERGE_NORMALIZE_AUTO : atoi(argv[6]);
    const char *fault = argc > 7 ? argv[7] : "";
    if (strcmp(fault, "unresolved") != 0) merge_params_resolve(&p);

    float base[12] = {0}, d0[12], d1[12], out[12];
    for (int i = 0; i < 12; i++) {
        d0[i] = 0.01f * (float)(i - 6);
        d1[i] = -0.02f * (float)(i % 5);
    }
    if (strcmp(fault, "nan-delta") == 0) d1[7] = NAN;
    int64_t start = strcmp(fault, "bad-layout") == 0 ? 1 : 0;
    merge_tensor_rows(&p, MPI_COMM_WORLD, 3, 4, 3, start, 4 - start, base, d0, d1, out, NULL);
    printf("ok\n");
    MPI_Finalize();
    return 0;
}
