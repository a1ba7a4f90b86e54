/*
 * pref_loss.h - preference losses on one (chosen, rejected) pair, with TRL's semantics.
 *
 * The model produces per-token log-probs logp[n] = log softmax(logits[n])[target[n]] (see
 * logprob_forward in ops/ops.h). A pair's loss is a function of a few sums of them over the
 * completion tokens (prompt tokens excluded):
 *     pi_c, pi_r    summed policy log-probs of the chosen / rejected completion
 *     ref_c, ref_r  the same under the reference (base model, adapters disabled; DPO family only)
 *     n_c, n_r      completion token counts
 * pref_loss_pair returns the loss and d loss / d pi_c, d loss / d pi_r. Because each pi is a sum
 * of token log-probs, the gradient of a token's logp is just the pair's d loss / d pi (spread it
 * with pref_spread_dlogp); losses defined on per-token means (IPO, ORPO) already include their
 * 1/n factor in the returned gradient.
 *
 * The kinds (h = (pi_c - pi_r) - (ref_c - ref_r), sigma = logistic, beta > 0):
 *   dpo    -(1-eps) log sigma(beta h) - eps log sigma(-beta h)   eps = label smoothing (TRL "sigmoid")
 *   ipo    (h - 1/(2 beta))^2, with h formed from per-token MEAN log-probs (pi/n, ref/n)
 *   hinge  relu(1 - beta h)            (gradient 0 at the kink, like torch's relu)
 *   orpo   l_c = pi_c/n_c, l_r = pi_r/n_r (mean log-probs; no reference model)
 *          log_odds = (l_c - l_r) - [log(1 - e^l_c) - log(1 - e^l_r)]
 *          loss = nll - beta log sigma(log_odds),   nll = -l_c
 * Metrics as TRL logs them: rewards/chosen = beta (pi_c - ref_c) (with the mean log-probs for
 * ipo), rewards/rejected likewise, accuracy = chosen > rejected (strict), margin = their
 * difference; ORPO's rewards are beta l_c and beta l_r, and it also logs nll_loss,
 * log_odds_ratio (= log sigma(log_odds), TRL's name) and log_odds_chosen (= log_odds).
 *
 * Batching: TRL averages pair losses over the batch, so the caller scales the gradients by
 * 1 / (pairs in the global batch). ORPO's NLL in TRL is one token-mean cross-entropy over all
 * chosen completion tokens of the batch, not a mean of per-pair means: the two agree when chosen
 * completions have equal lengths. To reproduce TRL exactly, subtract the pair's NLL part
 * (result.dpolicy_chosen_nll) from the chosen gradient and add sft_dlogp-style -1/(global chosen
 * token count) per chosen token instead (see sft_loss.h).
 */
#ifndef PAFT_PREF_LOSS_H
#define PAFT_PREF_LOSS_H

#include <stdint.h>

#include "util/common.h"

typedef enum {
    PREF_LOSS_INVALID = -1,  // what pref_loss_kind_from_name returns for an unknown name
    PREF_LOSS_DPO = 0,
    PREF_LOSS_IPO,
    PREF_LOSS_HINGE,
    PREF_LOSS_ORPO,
} PrefLossKind;

/* "dpo" | "ipo" | "hinge" | "orpo" (the [pref] loss key); PREF_LOSS_INVALID for anything else
 * (the caller reports the bad value with the key it came from). "sigmoid" (TRL's name for dpo) is
 * accepted too. */
PrefLossKind pref_loss_kind_from_name(const char *name);
/* The canonical name of a kind ("dpo", ...); "invalid" for an out-of-range value. */
const char *pref_loss_kind_name(PrefLossKind kind);
/* Does the kind compare against a reference model (dpo, ipo, hinge)? ORPO does not. */
int pref_loss_needs_reference(PrefLossKind kind);

typedef struct {
    PrefLossKind kind;
    double beta;             // > 0 (0.1 in the zephyr recipe and in ORPO)
    double label_smoothing;  // eps of the dpo kind in [0, 0.5); ignored by the others
} PrefLossParams;

/* One pair's inputs: sums of completion-token log-probs and the completion token counts. */
typedef struct {
    double policy_chosen, policy_rejected;        // pi_c, pi_r (summed)
    double reference_chosen, reference_rejected;  // ref_c, ref_r (summed); unused by orpo
    int64_t n_chosen, n_rejected;                 // completion tokens (> 0 for ipo and orpo)
} PrefPair;

typedef struct {
    double loss;
    double dpolicy_chosen;    // d loss / d pi_c (pi_c the SUMMED chosen log-prob)
    double dpolicy_rejected;  // d loss / d pi_r
    // TRL's metrics
    double reward_chosen, reward_rejected, reward_margin;
    double reward_accuracy;  // 1 when reward_chosen > reward_rejected, else 0
    // ORPO only (0 for the other kinds)
    double nll_loss;            // -l_c, included in loss
    double dpolicy_chosen_nll;  // the NLL's share of dpolicy_chosen: -1 / n_c
    double log_odds_ratio;      // log sigma(log_odds)
    double log_odds_chosen;     // log_odds
} PrefLossResult;

/* The loss of one pair, its gradients with respect to the summed policy log-probs, and metrics.
 * Fatal error on invalid input: beta <= 0, an unknown kind, or a token count of 0 where the kind
 * averages over tokens (ipo, orpo). ORPO clamps mean log-probs to at most -1e-12, where
 * log(1 - e^l) would be -inf (see pref_loss.c). */
void pref_loss_pair(PrefLossResult *out, const PrefLossParams *params, const PrefPair *pair);

/* dlogp[i] += dsum for every token i with targets[i] >= 0: the gradient of a summed log-prob,
 * spread back over the tokens it summed (targets < 0 mark prompt / padding tokens). */
void pref_spread_dlogp(real *dlogp, const int32_t *targets, int n, double dsum);

/* Numerically careful building blocks, exposed for the tests and the evaluation code. */
double log_sigmoid(double x);  // log(1 / (1 + e^-x)) without overflow for any x
double log1mexp(double x);     // log(1 - e^x) for x < 0, accurate near 0 and for very negative x

#endif /* PAFT_PREF_LOSS_H */
