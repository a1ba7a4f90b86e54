/*
 * layout.h - where a rank sits: its training group (SFT or preference), and inside the group a
 * tensor-parallel x data-parallel grid with TP fastest-varying (TP peers are neighbours in rank
 * order, so with a block rank placement they share a node and its fast links).
 *
 *   world = SFT group (world ranks 0..S-1) + preference group (S..N-1)          (paft run)
 *   group rank g = dp_rank * tp + tp_rank
 *   tp_comm: the tp ranks of one model replica;  dp_comm: the ranks holding the same shard
 */
#ifndef PAFT_LAYOUT_H
#define PAFT_LAYOUT_H

#include <mpi.h>

typedef struct {
    MPI_Comm group; /* the ranks that train one stage together */
    int group_rank, group_size;
    int tp, dp;     /* grid sizes: tp * dp = group_size */
    int tp_rank, dp_rank;
    MPI_Comm tp_comm; /* MPI_COMM_SELF when tp == 1 */
    MPI_Comm dp_comm;
} Layout;

/* Build the TP x DP grid of `group` (collective over group). Fatal error naming the key when tp
 * does not divide the group size. */
void layout_create(Layout *layout, MPI_Comm group, int tp);
void layout_free(Layout *layout);

/* paft run: split the world into the SFT group (the first sft_ranks world ranks; 0 = half) and
 * the preference group. Returns this rank's group communicator; *is_sft says which. Every rank
 * checks that tp divides both groups first, so that a layout one group cannot use ends the job
 * before the other group starts training. */
MPI_Comm layout_split_world(int sft_ranks, int tp, int *is_sft, int *n_sft);
/* The size of the SFT group of a world of `world` ranks (the rest is the preference group), or a
 * fatal error, printed where `report` is true, when the layout cannot be: fewer than 2 ranks, a
 * group left empty, tp not dividing a group. What layout_split_world checks, without MPI (paft
 * check computes it for a job that has not started). */
int layout_sft_group_size(int world, int sft_ranks, int tp, int report);

#endif
