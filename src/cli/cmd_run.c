/*
 * cmd_run.c - `paft run CONFIG [section.key=value ...]`: the whole PAFT job.
 *
 * The world splits into an SFT group (the first parallel.sft_ranks ranks; default half) and a
 * preference group. Both train at the same time from the same base model, each with its own
 * TP x DP grid, and may finish at different times. When both are done, every rank of the world
 * joins the merge stage, which writes <output.dir>/merged.h5 (merge.* keys). Before either group
 * loads the model, world rank 0 checks both stages' inputs and the merge's settings.
 */
#include <mpi.h>

#include "cli/commands.h"
#include "config/config.h"
#include "merge/merge_stage.h"
#include "parallel/collectives.h"
#include "parallel/layout.h"
#include "train/train.h"
#include "util/common.h"

int cmd_run(int argc, char **argv) {
    Config cfg;
    char *extra[1];
    int n_extra = config_from_args(&cfg, argc, argv, extra, 1);
    if (n_extra > 0)
        ARGUMENT_FATAL("command line: unknown argument '%s' for 'paft run' (section.key=value)",
                       extra[0]);
    int world;
    CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &world));
    int is_sft = 0, n_sft = 0;
    MPI_Comm group = layout_split_world(cfg.parallel.sft_ranks, cfg.parallel.tp, &is_sft, &n_sft);
    paft_log("paft run: %d ranks = %d SFT (world ranks 0-%d) + %d preference (%s), tp = %d\n",
             world, n_sft, n_sft - 1, world - n_sft, cfg.pref.loss, cfg.parallel.tp);
    /* Before anyone loads a model: both stages' inputs and the merge's settings, checked on world
     * rank 0 while the others wait (one message; its MPI_Abort ends them). Found now, a bad
     * preference data file or merge.density costs seconds, not the other group's whole run. */
    int rank;
    CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    if (rank == 0) {
        train_check_stage(&cfg, STAGE_SFT, n_sft);
        train_check_stage(&cfg, STAGE_PREF, world - n_sft);
        merge_stage_check_settings(&cfg, 1);
    }
    CHECK_MPI(MPI_Barrier(MPI_COMM_WORLD));
    train_install_signal_handlers();
    TrainOutcome outcome = train_stage(&cfg, is_sft ? STAGE_SFT : STAGE_PREF, group);
    CHECK_MPI(MPI_Comm_free(&group));

    /* Both groups meet here. If either was stopped by a signal there is nothing to merge yet:
     * rerunning the same command resumes the unfinished stage and skips the finished one. */
    int interrupted = outcome == TRAIN_INTERRUPTED;
    allreduce_max_int(&interrupted, MPI_COMM_WORLD);
    if (interrupted) {
        paft_log("paft run: training was interrupted; run the same command again to resume\n");
        return 0;
    }
    merge_stage_run(&cfg, MPI_COMM_WORLD);
    return 0;
}
