/*
 * step.h - the loss of one global batch and its gradients: what every optimizer step computes.
 *
 * Every loss is normalised by the GLOBAL batch (SFT: its loss-token count; preference: its pair
 * count; ORPO's NLL: its chosen-token count), each rank computes its contiguous share of the
 * records, and the LoRA gradients are summed over the communicator: the result is the gradient
 * of the global loss, the same for any number of data-parallel ranks.
 */
#ifndef PAFT_STEP_H
#define PAFT_STEP_H

#include <mpi.h>

#include "config/config.h"
#include "data/token_data.h"
#include "loss/pref_loss.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "parallel/layout.h"
#include "train/batch.h"

typedef enum { STAGE_SFT, STAGE_PREF } StageKind;

/* What one step measured, reduced over the group. */
typedef struct {
    double loss, nll, l1, grad_norm, lr, tokens, seconds;
    double flops; /* model FLOPs of the global batch (model_flops.h; a pair: both sequences) */
    double reward_chosen, reward_rejected, reward_accuracy, reward_margin;
    double logp_chosen, logp_rejected, log_odds_ratio, log_odds_chosen;
    int skipped;
} StepStats;

typedef struct {
    Model *model;
    const TokenData *data;
    const StageConfig *sc; /* batch, micro_batch, l1, loss, beta, label_smoothing */
    StageKind kind;
    PrefLossParams pref;
    const Layout *layout; /* data parallel over dp_comm, tensor parallel over tp_comm */
    int rank, size;       /* this rank's data-parallel index and the number of replicas */
    int per_rank;         /* records of a global batch handled by this replica */
    Batch batch;
    real *dlogp;
    real *delta_scratch; /* the largest projection's out x in (L1 term) */
    double *ref_logp;    /* [2 * records] cached reference log-probs (DPO family) */
    uint8_t *ref_known;  /* [records] */
} StepContext;

/* The model's activations must already hold the micro-batch (x2 for pairs) at sc->seq_len. */
void step_context_init(StepContext *ctx, Model *model, const TokenData *data,
                       const StageConfig *sc, StageKind kind, const Layout *layout);
void step_context_free(StepContext *ctx);
/* Zero the LoRA gradients and fill them with the gradient of the loss of records[0..sc->batch)
 * (identical on every rank afterwards). Fills the loss and metrics of st. */
void step_gradients(StepContext *ctx, const uint64_t *records, StepStats *st);
/* The global norm of the LoRA gradients (replicated factors counted once, shards summed over
 * the tensor-parallel group): what clipping and the logs use. */
double step_grad_norm(const StepContext *ctx);
/* PAFT's L1 term lambda * sum |s B A| on this rank's block of every delta, its gradient added to
 * the LoRA gradients, wherever they live (host loop or the device backend); the caller sums the
 * value over the tensor-parallel group. delta_scratch: the largest block (host only). */
double step_l1_penalty(Model *model, double lambda, real *delta_scratch);
/* One AdamW update of the LoRA values, with the gradients scaled by grad_scale (clipping), on
 * the host or, when the LoRA state lives there, on the device. */
void step_apply_adamw(Model *model, AdamW *opt, double lr, real grad_scale);

#endif
