/*
 * sft_loss.h - the SFT cross-entropy as a function of per-token log-probs.
 *
 * SFT minimises the token-mean negative log-likelihood over the loss-mask tokens (assistant
 * turns) of the GLOBAL batch: every rank and every micro-batch of one optimizer step shares one
 * denominator, count_global = number of counted tokens over all of them (sum it with an
 * all-reduce before the backward). Then
 *     loss = -(1 / count_global) * sum_{counted n} logp[n]
 *     d loss / d logp[n] = -1 / count_global   for counted tokens, 0 for the others,
 * and the per-rank gradients simply add up (all-reduce SUM over data-parallel ranks, not mean).
 * A token is counted when targets[n] >= 0; targets < 0 mark prompt, user turns and padding (the
 * convention of logprob_forward in ops/ops.h, which also sets their logp to 0).
 */
#ifndef PAFT_SFT_LOSS_H
#define PAFT_SFT_LOSS_H

#include <stdint.h>

#include "util/common.h"

/* -sum of logp over counted tokens (double accumulation); *count (if not NULL) = their number.
 * Sum this and the counts across micro-batches and ranks for the exact global token mean. */
double sft_token_nll_sum(const real *logp, const int32_t *targets, int n, int64_t *count);

/* The token-mean NLL of these n tokens: sft_token_nll_sum / count (0 when nothing is counted),
 * with *count (if not NULL) = the number of counted tokens. */
double sft_token_mean_nll(const real *logp, const int32_t *targets, int n, int64_t *count);

/* dlogp[n] += -1 / global_count for counted tokens (targets[n] >= 0); others unchanged. ADDS,
 * like every backward in ops.h, so an ORPO NLL term can be added onto the odds-ratio gradient.
 * global_count is the number of counted tokens of the whole optimizer step (all micro-batches,
 * all data-parallel ranks); fatal if it is not positive while there are counted tokens. */
void sft_dlogp(real *dlogp, const int32_t *targets, int n, double global_count);

#endif /* PAFT_SFT_LOSS_H */
