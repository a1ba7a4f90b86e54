/*
 * evaluate.h - held-out metrics of a model, split over the ranks of a communicator.
 *
 *   SFT:  mean NLL over the loss-mask tokens of every record (lower is better)
 *   pref: implicit reward r = beta (log pi(y|x) - log pi_ref(y|x)) of chosen and rejected
 *         completions (summed log-probs); accuracy = fraction of pairs with r_chosen > r_rejected,
 *         margin = mean(r_chosen - r_rejected). The reference is the base model: pass the same
 *         Model as policy and reference to use it with its adapters disabled.
 */
#ifndef PAFT_EVALUATE_H
#define PAFT_EVALUATE_H

#include <mpi.h>

#include "config/config.h"
#include "data/token_data.h"
#include "model/model.h"

typedef struct {
    double nll;     /* SFT */
    int64_t tokens;
    double accuracy, margin, reward_chosen, reward_rejected; /* pref */
    int64_t pairs;
} EvalResult;

/* The model's activations must hold micro_batch (SFT) or 2 * micro_batch (pref) sequences of the
 * data's longest record. */
void evaluate_sft(Model *model, const TokenData *data, int micro_batch, MPI_Comm comm,
                  EvalResult *out);
void evaluate_pref(Model *policy, Model *reference, const TokenData *data, int micro_batch,
                   double beta, MPI_Comm comm, EvalResult *out);

/* Evaluate the model at PATH as `paft eval` does: a Hugging Face model, a paft merged file, or an
 * adapter file applied to cfg->model.path (an adapter trained on base + another adapter, as the
 * sequential baseline's, gets that one folded in first). sft_data / pref_data may be NULL (that
 * result is then zeroed); the preference reference is the base cfg->model.path; beta =
 * cfg->pref.beta; micro-batches of cfg->sft.micro_batch / cfg->pref.micro_batch. Collective over
 * comm (records split between the ranks). */
void evaluate_model_path(const Config *cfg, const char *path, const TokenData *sft_data,
                         const TokenData *pref_data, MPI_Comm comm, EvalResult *sft,
                         EvalResult *pref);

#endif
