/* layout.c - groups and the TP x DP grid (see layout.h). */
#include "parallel/layout.h"

#include <string.h>

#include "util/common.h"

void layout_create(Layout *l, MPI_Comm group, int tp) {
    memset(l, 0, sizeof *l);
    l->group = group;
    CHECK_MPI(MPI_Comm_rank(group, &l->group_rank));
    CHECK_MPI(MPI_Comm_size(group, &l->group_size));
    if (tp < 1 || l->group_size % tp != 0)
        PAFT_FATAL_SHARED(l->group_rank == 0,
                          "configuration: parallel.tp = %d does not divide the %d ranks of the group",
                          tp, l->group_size);
    l->tp = tp;
    l->dp = l->group_size / tp;
    l->tp_rank = l->group_rank % tp;
    l->dp_rank = l->group_rank / tp;
    if (tp == 1) {
        l->tp_comm = MPI_COMM_SELF;
    } else {
        CHECK_MPI(MPI_Comm_split(group, l->dp_rank, l->tp_rank, &l->tp_comm));
    }
    CHECK_MPI(MPI_Comm_split(group, l->tp_rank, l->dp_rank, &l->dp_comm));
    /* names show up in MPI tools and profilers (tests/parallel/mpi_count.c counts by them) */
    if (tp > 1) CHECK_MPI(MPI_Comm_set_name(l->tp_comm, "paft-tp"));
    CHECK_MPI(MPI_Comm_set_name(l->dp_comm, "paft-dp"));
}

void layout_free(Layout *l) {
    if (l->tp_comm != MPI_COMM_SELF && l->tp_comm != MPI_COMM_NULL) MPI_Comm_free(&l->tp_comm);
    if (l->dp_comm != MPI_COMM_NULL) MPI_Comm_free(&l->dp_comm);
    memset(l, 0, sizeof *l);
}

int layout_sft_group_size(int world, int sft_ranks, int tp, int report) {
    const int s = sft_ranks > 0 ? sft_ranks : world / 2;
    if (world < 2)
        PAFT_FATAL_SHARED(report, "paft run needs at least 2 ranks (one SFT, one preference); got "
                                  "%d. Use paft train for one stage on one rank.", world);
    if (s < 1 || s >= world)
        PAFT_FATAL_SHARED(report, "configuration: parallel.sft_ranks = %d leaves no rank for one "
                                  "of the groups (world of %d ranks)", s, world);
    const int sizes[2] = {s, world - s};
    const char *names[2] = {"SFT", "preference"};
    for (int g = 0; g < 2; g++)
        if (tp < 1 || sizes[g] % tp != 0)
            PAFT_FATAL_SHARED(report,
                              "configuration: parallel.tp = %d does not divide the %d ranks of the "
                              "%s group (world of %d ranks = %d SFT + %d preference; "
                              "parallel.sft_ranks sets the split)",
                              tp, sizes[g], names[g], world, sizes[0], sizes[1]);
    return s;
}

MPI_Comm layout_split_world(int sft_ranks, int tp, int *is_sft, int *n_sft) {
    int rank, size;
    CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    const int s = layout_sft_group_size(size, sft_ranks, tp, rank == 0);
    *is_sft = rank < s;
    *n_sft = s;
    MPI_Comm group;
    CHECK_MPI(MPI_Comm_split(MPI_COMM_WORLD, *is_sft ? 0 : 1, rank, &group));
    return group;
}
