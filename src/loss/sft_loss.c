/*
 * sft_loss.c - token-mean NLL over loss-mask tokens and its gradient (see sft_loss.h).
 */
#include "loss/sft_loss.h"

double sft_token_nll_sum(const real *logp, const int32_t *targets, int n, int64_t *count) {
    double sum = 0;
    int64_t counted = 0;
    for (int i = 0; i < n; i++) {
        if (targets[i] < 0) continue;
        sum -= (double)logp[i];
        counted++;
    }
    if (count) *count = counted;
    return sum;
}

double sft_token_mean_nll(const real *logp, const int32_t *targets, int n, int64_t *count) {
    int64_t counted = 0;
    double sum = sft_token_nll_sum(logp, targets, n, &counted);
    if (count) *count = counted;
    return counted > 0 ? sum / (double)counted : 0.0;
}

void sft_dlogp(real *dlogp, const int32_t *targets, int n, double global_count) {
    int any_counted = 0;
    for (int i = 0; i < n && !any_counted; i++) any_counted = targets[i] >= 0;
    if (!any_counted) return;
    if (!(global_count > 0))
        PAFT_FATAL("sft_dlogp: global token count %g (expected > 0: this rank has counted tokens, "
                   "so the all-reduced count cannot be 0)",
                   global_count);
    const real g = (real)(-1.0 / global_count);
    for (int i = 0; i < n; i++)
        if (targets[i] >= 0) dlogp[i] += g;
}
