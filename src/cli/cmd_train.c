/*
 * cmd_train.c - `paft train CONFIG stage=sft|dpo|ipo|hinge|orpo|pref [section.key=value ...]`: one
 * stage on every rank of the world (the individual and sequential baselines); stage=pref trains
 * the preference loss pref.loss names.
 */
#include <mpi.h>
#include <string.h>

#include "cli/commands.h"
#include "config/config.h"
#include "train/train.h"
#include "util/common.h"

int cmd_train(int argc, char **argv) {
    Config cfg;
    char *extra[4];
    int n_extra = config_from_args(&cfg, argc, argv, extra, 4);
    const char *stage = NULL;
    for (int i = 0; i < n_extra; i++) {
        if (strncmp(extra[i], "stage=", 6) == 0)
            stage = extra[i] + 6;
        else
            ARGUMENT_FATAL("command line: unknown argument '%s' for 'paft train' (stage=...)",
                           extra[i]);
    }
    if (!stage) ARGUMENT_FATAL("command line: 'paft train' needs "
                               "stage=sft|dpo|ipo|hinge|orpo|pref");
    const StageKind kind = cli_stage_kind(&cfg, stage);
    /* the inputs, on rank 0 while the others wait: one message for a bad file, not one per rank */
    int rank, size;
    CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    if (rank == 0) train_check_stage(&cfg, kind, size);
    CHECK_MPI(MPI_Barrier(MPI_COMM_WORLD));
    train_install_signal_handlers();
    train_stage(&cfg, kind, MPI_COMM_WORLD);
    return 0;
}
