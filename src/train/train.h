/*
 * train.h - one training stage (SFT with L1, or a preference loss) on a group of ranks.
 *
 * The group trains data-parallel: every optimizer step takes the next `batch` records of the
 * shuffled data (seed, epoch), each rank runs its contiguous share in micro-batches of
 * `micro_batch`, gradients are summed over the group (every loss is already normalised by the
 * GLOBAL batch, so the sum is the gradient of the global loss and results do not depend on the
 * split), then every rank applies the same AdamW step to its replica of the LoRA parameters.
 *
 * Outputs in the stage directory (<output.dir>/sft or <output.dir>/pref):
 *   adapter.h5            the trained adapter (io/adapter.h)
 *   peft/                 the same adapter in PEFT's format
 *   checkpoint.h5         written every output.checkpoint_every steps and on SIGTERM/SIGUSR1
 *   metrics.jsonl         one JSON object per logged step
 * A stage whose adapter.h5 already holds the final step is not retrained; one with a
 * checkpoint.h5 resumes from it, exactly (same losses, same adapter, bitwise on the CPU).
 */
#ifndef PAFT_TRAIN_H
#define PAFT_TRAIN_H

#include <mpi.h>

#include "config/config.h"
#include "train/step.h"

typedef enum {
    TRAIN_COMPLETED = 0,   /* trained to the last step (or found already complete) */
    TRAIN_INTERRUPTED = 1, /* stopped by SIGTERM/SIGUSR1 after writing a checkpoint */
} TrainOutcome;

/* Train one stage on the ranks of comm. `stage_name` is "sft", or the preference loss name. */
TrainOutcome train_stage(const Config *cfg, StageKind kind, MPI_Comm comm);

/* What can be checked in a second before any rank loads a model, on ONE rank while the others
 * wait (fatal on the first problem: one message for the whole job): model.path is a model (its
 * config.json), model.adapter exists, the stage's data (kind, vocabulary, longest record against
 * seq_len, at least one batch), the batch split over the group's data-parallel ranks
 * (group_size / parallel.tp), the loss, device and dtype; it creates the stage directory. paft run
 * calls it for both groups before either trains, so a bad preference data file is not found
 * after the SFT group has trained for hours. */
void train_check_stage(const Config *cfg, StageKind kind, int group_size);

/* What a stage will do, from its configuration and data file. */
typedef struct {
    uint64_t records;     /* in the data file */
    int64_t steps;        /* optimizer steps: [stage].steps, or one epoch when 0 */
    int64_t warmup_steps; /* of them, the linear warm-up (the first has learning rate 0) */
    int tp, dp;           /* tensor-parallel ranks per replica, data-parallel replicas */
    int accumulation;     /* micro-batches per rank per step: batch / (micro_batch x dp) */
    double epochs;        /* passes over the data: steps / (records / batch), whole batches */
} StagePlan;

/* train_check_stage for a job that is not running yet (paft check): the same checks, plus that
 * parallel.tp can split the model, with model.device checked by name and build only (device_here
 * = 0: a login node has no GPU), and the stage's plan. */
void train_plan_stage(const Config *cfg, StageKind kind, int group_size, int device_here,
                      StagePlan *plan);

/* The stage directory: <output.dir>/sft or <output.dir>/pref (malloc'ed). */
char *train_stage_dir(const Config *cfg, StageKind kind);
/* Put a loaded model on the configured device (model.device, model.recompute, model.dtype,
 * parallel.collectives); "cpu" leaves it on the host. */
void train_use_device(const Config *cfg, Model *model);

/* Install the SIGTERM/SIGUSR1 handlers that ask training to checkpoint and stop. */
void train_install_signal_handlers(void);

#endif
