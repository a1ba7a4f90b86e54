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
    StageKind kind = STAGE_PREF;
    if (strcmp(stage, "sft") == 0) {
        kind = STAGE_SFT;
    } else if (strcmp(stage, "dpo") == 0 || strcmp(stage, "ipo") == 0 ||
               strcmp(stage, "hinge") == 0 || strcmp(stage, "orpo") == 0) {
        /* the stage names the preference loss; pref.loss=... on the command line agrees or loses */
        snprintf(cfg.pref.loss, sizeof cfg.pref.loss, "%s", stage);
    } else if (strcmp(stage, "pref") != 0) {
        ARGUMENT_FATAL("command line: stage=%s is not one of sft, dpo, ipo, hinge, orpo, pref",
                       stage);
    }
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
