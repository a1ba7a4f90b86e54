/*
 * commands.h - the paft subcommands. Each takes the arguments after its name (argv[0] is the
 * subcommand name) and returns the process exit status. MPI is initialised before any runs.
 */
#ifndef PAFT_COMMANDS_H
#define PAFT_COMMANDS_H

#include "config/config.h"
#include "train/step.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary; /* one line for `paft --help` */
    const char *usage;   /* the full text for `paft CMD --help` */
} Command;

/* The table of subcommands, terminated by an entry with name == NULL. */
const Command *paft_commands(void);

int cmd_inspect(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_check(int argc, char **argv);
/* The commands that later stages of the pipeline fill in report that plainly. */
int cmd_not_yet(int argc, char **argv);

/* stage=NAME of paft train and paft check: sft, or a preference stage (dpo, ipo, hinge and orpo
 * also set pref.loss; pref keeps the configuration's). Fatal error for anything else. */
StageKind cli_stage_kind(Config *cfg, const char *stage);

/* True when argv holds -h or --help. */
int cli_wants_help(int argc, char **argv);

/* A mistake in the command's arguments is the same on every rank: rank 0 reports it, once
 * (PAFT_FATAL_SHARED, util/common.h). */
#define ARGUMENT_FATAL(...) PAFT_FATAL_SHARED(paft_world_rank() == 0, __VA_ARGS__)

#endif
