/*
 * pref_loss.c - DPO / IPO / hinge / ORPO on one pair (formulas and semantics in pref_loss.h).
 * Everything is computed in double: a pair's loss is a handful of scalars, and summed log-probs
 * of long completions are large numbers whose difference is what matters.
 */
#include "loss/pref_loss.h"

#include <math.h>
#include <string.h>

double log_sigmoid(double x) {
    // log sigma(x) = -log(1 + e^-x) = min(x, 0) - log1p(e^-|x|): the exponent is never positive
    return fmin(x, 0.0) - log1p(exp(-fabs(x)));
}

/* sigma(x) without overflow: e^-|x| is always in (0, 1]. */
static double sigmoid(double x) {
    double z = exp(-fabs(x));
    return x >= 0 ? 1.0 / (1.0 + z) : z / (1.0 + z);
}

double log1mexp(double x) {
    // Maechler's rule: near 0, 1 - e^x cancels, so use -expm1(x); far below, e^x is tiny and
    // log1p(-e^x) keeps its digits. The crossover -ln 2 is where both are equally accurate.
    return x > -M_LN2 ? log(-expm1(x)) : log1p(-exp(x));
}

PrefLossKind pref_loss_kind_from_name(const char *name) {
    if (!name) return PREF_LOSS_INVALID;
    if (strcmp(name, "dpo") == 0 || strcmp(name, "sigmoid") == 0) return PREF_LOSS_DPO;
    if (strcmp(name, "ipo") == 0) return PREF_LOSS_IPO;
    if (strcmp(name, "hinge") == 0) return PREF_LOSS_HINGE;
    if (strcmp(name, "orpo") == 0) return PREF_LOSS_ORPO;
    return PREF_LOSS_INVALID;
}

const char *pref_loss_kind_name(PrefLossKind kind) {
    switch (kind) {
    case PREF_LOSS_DPO: return "dpo";
    case PREF_LOSS_IPO: return "ipo";
    case PREF_LOSS_HINGE: return "hinge";
    case PREF_LOSS_ORPO: return "orpo";
    default: return "invalid";
    }
}

int pref_loss_needs_reference(PrefLossKind kind) {
    return kind == PREF_LOSS_DPO || kind == PREF_LOSS_IPO || kind == PREF_LOSS_HINGE;
}

/* ORPO needs log(1 - e^l) of a mean log-prob l, which is -inf at l = 0 (every completion token
 * predicted with probability 1, possible in fp32 on a memorised example). Mean log-probs are
 * clamped to at most this value so the loss stays finite; the gradient is taken at the clamped
 * point (the continuous extension), so the update still points the right way. */
#define ORPO_MAX_MEAN_LOGP (-1e-12)

static void require_tokens(const PrefLossParams *params, const PrefPair *pair) {
    if (pair->n_chosen <= 0 || pair->n_rejected <= 0)
        PAFT_FATAL("%s loss: a pair has %lld chosen and %lld rejected completion tokens "
                   "(expected at least 1 each: this loss averages over them)",
                   pref_loss_kind_name(params->kind), (long long)pair->n_chosen,
                   (long long)pair->n_rejected);
}

/* The DPO family: h from (possibly per-token mean) log-probs, loss and d loss / d h. */
static void dpo_family(PrefLossResult *out, const PrefLossParams *params, double pi_c, double pi_r,
                       double ref_c, double ref_r, double *dloss_dh) {
    const double beta = params->beta;
    const double h = (pi_c - pi_r) - (ref_c - ref_r);
    switch (params->kind) {
    case PREF_LOSS_DPO: {
        const double eps = params->label_smoothing;
        const double bh = beta * h;
        out->loss = -(1.0 - eps) * log_sigmoid(bh) - eps * log_sigmoid(-bh);
        // d/dx log sigma(x) = sigma(-x)
        *dloss_dh = beta * (-(1.0 - eps) * sigmoid(-bh) + eps * sigmoid(bh));
        break;
    }
    case PREF_LOSS_IPO: {
        const double d = h - 1.0 / (2.0 * beta);
        out->loss = d * d;
        *dloss_dh = 2.0 * d;
        break;
    }
    case PREF_LOSS_HINGE: {
        const double margin = 1.0 - beta * h;
        out->loss = margin > 0 ? margin : 0.0;
        *dloss_dh = margin > 0 ? -beta : 0.0;
        break;
    }
    default: PAFT_FATAL("dpo_family: kind %d is not a reference-based loss", (int)params->kind);
    }
    out->reward_chosen = beta * (pi_c - ref_c);
    out->reward_rejected = beta * (pi_r - ref_r);
}

static void orpo(PrefLossResult *out, const PrefLossParams *params, const PrefPair *pair) {
    const double beta = params->beta;
    const double n_c = (double)pair->n_chosen, n_r = (double)pair->n_rejected;
    const double l_c = fmin(pair->policy_chosen / n_c, ORPO_MAX_MEAN_LOGP);
    const double l_r = fmin(pair->policy_rejected / n_r, ORPO_MAX_MEAN_LOGP);
    const double log1mexp_c = log1mexp(l_c), log1mexp_r = log1mexp(l_r);
    const double log_odds = (l_c - l_r) - (log1mexp_c - log1mexp_r);
    const double ratio = log_sigmoid(log_odds);

    out->nll_loss = -l_c;
    out->log_odds_ratio = ratio;
    out->log_odds_chosen = log_odds;
    out->loss = out->nll_loss - beta * ratio;

    // d log_odds / d l = 1 + e^l / (1 - e^l) = 1 / (1 - e^l) for l_c (negated for l_r), and
    // d(-beta log sigma(L)) / dL = -beta sigma(-L). Their product is formed in log space,
    // exp(log sigma(-L) - log(1 - e^l)), which stays finite as l -> 0 where each factor is extreme.
    const double log_sig_neg = log_sigmoid(-log_odds);
    const double dor_dlc = -beta * exp(log_sig_neg - log1mexp_c);
    const double dor_dlr = beta * exp(log_sig_neg - log1mexp_r);
    out->dpolicy_chosen_nll = -1.0 / n_c;
    out->dpolicy_chosen = out->dpolicy_chosen_nll + dor_dlc / n_c;
    out->dpolicy_rejected = dor_dlr / n_r;

    out->reward_chosen = beta * l_c;
    out->reward_rejected = beta * l_r;
}

void pref_loss_pair(PrefLossResult *out, const PrefLossParams *params, const PrefPair *pair) {
    memset(out, 0, sizeof *out);
    if (!(params->beta > 0))
        PAFT_FATAL("%s loss: beta = %g (expected > 0)", pref_loss_kind_name(params->kind),
                   params->beta);
    switch (params->kind) {
    case PREF_LOSS_DPO:
    case PREF_LOSS_HINGE: {
        double dloss_dh;
        dpo_family(out, params, pair->policy_chosen, pair->policy_rejected,
                   pair->reference_chosen, pair->reference_rejected, &dloss_dh);
        out->dpolicy_chosen = dloss_dh;  // dh/dpi_c = 1, dh/dpi_r = -1
        out->dpolicy_rejected = -dloss_dh;
        break;
    }
    case PREF_LOSS_IPO: {
        // TRL divides every log-prob (policy and reference alike) by its completion length
        require_tokens(params, pair);
        const double n_c = (double)pair->n_chosen, n_r = (double)pair->n_rejected;
        double dloss_dh;
        dpo_family(out, params, pair->policy_chosen / n_c, pair->policy_rejected / n_r,
                   pair->reference_chosen / n_c, pair->reference_rejected / n_r, &dloss_dh);
        out->dpolicy_chosen = dloss_dh / n_c;
        out->dpolicy_rejected = -dloss_dh / n_r;
        break;
    }
    case PREF_LOSS_ORPO:
        require_tokens(params, pair);
        orpo(out, params, pair);
        break;
    default: PAFT_FATAL("preference loss: unknown kind %d", (int)params->kind);
    }
    out->reward_margin = out->reward_chosen - out->reward_rejected;
    out->reward_accuracy = out->reward_chosen > out->reward_rejected ? 1.0 : 0.0;
}

void pref_spread_dlogp(real *dlogp, const int32_t *targets, int n, double dsum) {
    const real g = (real)dsum;
    for (int i = 0; i < n; i++)
        if (targets[i] >= 0) dlogp[i] += g;
}
