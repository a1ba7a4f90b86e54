/*
 * check_configs.c - loads shipped configuration files through the real configuration code, so a
 * key that paft does not know (a typo, a renamed key), a value out of range or a bad choice in
 * inputs/ fails the test suite rather than a job hours into its queue wait.
 *
 *   usage: check_configs [--ranks N] FILE...
 *
 * With --ranks N it also checks that the batch sizes divide for the layout the file is meant for
 * on N ranks, the rule training enforces at its first step: `paft run` splits the N ranks into
 * an SFT group (parallel.sft_ranks, 0 = half) and a preference group, each a tp x dp grid, and
 * `paft train` (the baselines) runs one stage on all N; every stage needs batch to be a multiple
 * of micro_batch x dp.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

/* Prints what is wrong and returns 1 when `stage` cannot run on `ranks` ranks with tensor
 * parallelism tp; 0 when it can. */
static int check_stage(const char *path, const char *layout, const char *section,
                       const StageConfig *stage, int ranks, int tp) {
    if (ranks < 1 || ranks % tp != 0) {
        printf("FAIL %s: %s: %d rank(s) for [%s] is not a multiple of parallel.tp = %d\n", path,
               layout, ranks, section, tp);
        return 1;
    }
    int dp = ranks / tp;
    if (stage->batch % (stage->micro_batch * dp) != 0) {
        printf("FAIL %s: %s: %s.batch = %d is not a multiple of %s.micro_batch (%d) x %d "
               "data-parallel rank(s)\n",
               path, layout, section, stage->batch, section, stage->micro_batch, dp);
        return 1;
    }
    printf("  %s: [%s] %d rank(s) = tp %d x dp %d, %d micro-steps of %d per optimizer step\n",
           layout, section, ranks, tp, dp, stage->batch / (stage->micro_batch * dp),
           stage->micro_batch);
    return 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int ranks = 0, first = 1, failures = 0, files = 0;
    if (argc > 2 && strcmp(argv[1], "--ranks") == 0) {
        ranks = atoi(argv[2]);
        first = 3;
        if (ranks < 2) {
            fprintf(stderr, "check_configs: --ranks needs at least 2 (one per group)\n");
            return 2;
        }
    }
    if (first >= argc) {
        fprintf(stderr, "usage: check_configs [--ranks N] FILE...\n");
        return 2;
    }
    for (int i = first; i < argc; i++) {
        Config cfg;
        config_defaults(&cfg);
        config_load_file(&cfg, argv[i]); /* a fatal error, naming the file and the key */
        files++;
        printf("ok %s\n", argv[i]);
        if (ranks == 0) continue;
        int tp = cfg.parallel.tp;
        int sft = cfg.parallel.sft_ranks ? cfg.parallel.sft_ranks : ranks / 2;
        if (sft >= ranks) {
            printf("FAIL %s: parallel.sft_ranks = %d leaves no preference rank out of %d\n",
                   argv[i], sft, ranks);
            failures++;
            continue;
        }
        char layout[64];
        snprintf(layout, sizeof layout, "paft run on %d", ranks);
        failures += check_stage(argv[i], layout, "sft", &cfg.sft, sft, tp);
        failures += check_stage(argv[i], layout, "pref", &cfg.pref, ranks - sft, tp);
        snprintf(layout, sizeof layout, "paft train on %d", ranks);
        failures += check_stage(argv[i], layout, "sft", &cfg.sft, ranks, tp);
        failures += check_stage(argv[i], layout, "pref", &cfg.pref, ranks, tp);
    }
    printf("%d file(s) checked, %d problem(s)\n", files, failures);
    MPI_Finalize();
    return failures ? 1 : 0;
}
