/*
 * adamw.h - AdamW over flat parameter buffers, and global gradient-norm clipping, with exactly
 * the arithmetic of torch.optim.AdamW (amsgrad off) and torch.nn.utils.clip_grad_norm_.
 *
 * One update of step t (1-based, counted before the update like torch's state["step"]):
 *     p  = p * (1 - lr * weight_decay)                  decoupled weight decay, first
 *     m  = m + (1 - beta1) * (g - m)                    (torch's lerp)
 *     v  = beta2 * v + (1 - beta2) * g * g
 *     p -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * eps is added AFTER the bias-corrected square root, as torch does. Scalar coefficients are
 * computed in double, the per-element arithmetic in `real`.
 *
 * Gradient clipping, as torch: norm = ||all gradients||_2 over every parameter of the model
 * (across tensor shards and ranks: sum grad_sum_squares per rank, all-reduce, sqrt), then every
 * gradient is multiplied by clip_coefficient(norm, max_norm) = min(1, max_norm / (norm + 1e-6)).
 * adamw_update takes that factor as grad_scale so no extra pass over the gradients is needed.
 * A non-finite norm means a broken step: the caller should skip it rather than apply it.
 */
#ifndef PAFT_ADAMW_H
#define PAFT_ADAMW_H

#include <stddef.h>
#include <stdint.h>

#include "util/common.h"

typedef struct {
    double beta1;         // 0.9
    double beta2;         // 0.999
    double eps;           // 1e-8
    double weight_decay;  // 0 for LoRA by default (decoupled: p *= 1 - lr * weight_decay)
} AdamWHyper;

/* torch.optim.AdamW's defaults except weight_decay (torch: 0.01; the LoRA recipes use 0). */
AdamWHyper adamw_default_hyper(void);

/* The update kernel on n elements of one flat buffer (shared with the CUDA backend's kernel):
 * g = grads[i] * grad_scale, then the update above with step = t (>= 1, already incremented)
 * and learning rate lr. m and v are the moment buffers (zero before the first step). */
void adamw_update(real *params, const real *grads, real *m, real *v, size_t n, int64_t step,
                  double lr, const AdamWHyper *hyper, real grad_scale);

/* An optimizer over one flat parameter buffer: its moments and step count (what a checkpoint
 * saves to resume exactly). */
typedef struct {
    size_t n;      // parameters covered
    real *m;       // first moments [n]
    real *v;       // second moments [n]
    int64_t step;  // updates done so far (torch's state["step"])
    AdamWHyper hyper;
} AdamW;

/* Allocate zeroed moments for n parameters, step 0. */
void adamw_init(AdamW *opt, size_t n, AdamWHyper hyper);
void adamw_free(AdamW *opt);
/* One optimizer step: step += 1, then adamw_update over all n parameters. */
void adamw_step(AdamW *opt, real *params, const real *grads, double lr, real grad_scale);

/* sum g[i]^2 in double (OpenMP); the per-rank partial of the global norm. */
double grad_sum_squares(const real *g, size_t n);
/* sqrt(grad_sum_squares(g, n)): the norm when one buffer holds every gradient. */
double grad_global_norm(const real *g, size_t n);
/* min(1, max_norm / (norm + 1e-6)), torch's clamped clip coefficient; 1 (no clipping) when
 * max_norm <= 0, the "clipping off" setting (transformers' max_grad_norm = 0). */
double clip_coefficient(double norm, double max_norm);
/* g[i] *= scale (an explicit clip when the gradients are needed after clipping). */
void grad_scale_inplace(real *g, size_t n, real scale);

#endif /* PAFT_ADAMW_H */
