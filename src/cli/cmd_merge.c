/*
 * cmd_merge.c - `paft merge CONFIG [section.key=value ...]`: the merge stage alone, on saved
 * adapters, on every rank of the world (a sweep over merge methods needs no retraining).
 */
#include <mpi.h>

#include "cli/commands.h"
#include "config/config.h"
#include "merge/merge_stage.h"
#include "util/common.h"

int cmd_merge(int argc, char **argv) {
    Config cfg;
    char *extra[4];
    int n_extra = config_from_args(&cfg, argc, argv, extra, 4);
    if (n_extra > 0)
        ARGUMENT_FATAL("command line: unknown argument '%s' for 'paft merge' (settings are "
                       "section.key=value, e.g. merge.method=ties)",
                       extra[0]);
    merge_stage_run(&cfg, MPI_COMM_WORLD);
    return 0;
}
