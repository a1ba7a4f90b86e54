/*
 * adamw.c - torch.optim.AdamW's update and clip_grad_norm_'s arithmetic (see adamw.h).
 */
#include "optim/adamw.h"

#include <math.h>
#include <stdlib.h>

AdamWHyper adamw_default_hyper(void) {
    AdamWHyper h = {.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0};
    return h;
}

void adamw_update(real *params, const real *grads, real *m, real *v, size_t n, int64_t step,
                  double lr, const AdamWHyper *hyper, real grad_scale) {
    if (step < 1) PAFT_FATAL("adamw_update: step %lld (expected >= 1)", (long long)step);
    // The scalars, in double like torch's Python floats, then rounded once to `real`.
    const double bias_correction1 = 1.0 - pow(hyper->beta1, (double)step);
    const double bias_correction2 = 1.0 - pow(hyper->beta2, (double)step);
    const real decay = (real)(1.0 - lr * hyper->weight_decay);
    const real one_minus_beta1 = (real)(1.0 - hyper->beta1);
    const int lerp_from_start = 1.0 - hyper->beta1 < 0.5;  // torch's lerp picks the exact end
    const real beta2 = (real)hyper->beta2;
    const real one_minus_beta2 = (real)(1.0 - hyper->beta2);
    const real step_size = (real)(lr / bias_correction1);
    const real bias_correction2_sqrt = (real)sqrt(bias_correction2);
    const real eps = (real)hyper->eps;
    const int decays = hyper->weight_decay != 0;  // torch skips the multiply when wd == 0

#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        const real g = grads[i] * grad_scale;
        real p = params[i];
        if (decays) p *= decay;
        const real mi = lerp_from_start ? m[i] + one_minus_beta1 * (g - m[i])
                                        : g - (g - m[i]) * (1 - one_minus_beta1);
        const real vi = beta2 * v[i] + one_minus_beta2 * g * g;
        m[i] = mi;
        v[i] = vi;
        const real denom = sqrt(vi) / bias_correction2_sqrt + eps;
        params[i] = p - step_size * (mi / denom);
    }
}

void adamw_init(AdamW *opt, size_t n, AdamWHyper hyper) {
    opt->n = n;
    opt->m = paft_calloc(n ? n : 1, sizeof(real));
    opt->v = paft_calloc(n ? n : 1, sizeof(real));
    opt->step = 0;
    opt->hyper = hyper;
}

void adamw_free(AdamW *opt) {
    free(opt->m);
    free(opt->v);
    opt->m = opt->v = NULL;
    opt->n = 0;
}

void adamw_step(AdamW *opt, real *params, const real *grads, double lr, real grad_scale) {
    opt->step++;
    adamw_update(params, grads, opt->m, opt->v, opt->n, opt->step, lr, &opt->hyper, grad_scale);
}

double grad_sum_squares(const real *g, size_t n) {
    double sum = 0;
#pragma omp parallel for schedule(static) reduction(+ : sum)
    for (size_t i = 0; i < n; i++) sum += (double)g[i] * (double)g[i];
    return sum;
}

double grad_global_norm(const real *g, size_t n) { return sqrt(grad_sum_squares(g, n)); }

double clip_coefficient(double norm, double max_norm) {
    if (!(max_norm > 0)) return 1.0;
    const double coef = max_norm / (norm + 1e-6);
    return coef < 1.0 ? coef : 1.0;
}

void grad_scale_inplace(real *g, size_t n, real scale) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) g[i] *= scale;
}
