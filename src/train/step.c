/* step.c - the loss and gradients of one global batch (see step.h). */
#include "train/step.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loss/lora_delta.h"
#include "loss/sft_loss.h"
#include "model/model_flops.h"
#include "optim/adamw.h"
#include "parallel/collectives.h"

void step_context_init(StepContext *ctx, Model *model, const TokenData *data,
                       const StageConfig *sc, StageKind kind, const Layout *layout) {
    memset(ctx, 0, sizeof *ctx);
    ctx->model = model;
    ctx->data = data;
    ctx->sc = sc;
    ctx->kind = kind;
    ctx->layout = layout;
    ctx->rank = layout->dp_rank;
    ctx->size = layout->dp;
    const char *section = kind == STAGE_SFT ? "sft" : "pref";
    if (sc->batch % (sc->micro_batch * ctx->size) != 0)
        PAFT_FATAL_SHARED(layout->group_rank == 0, /* the whole group reaches it */
                          "configuration: %s.batch = %d must be a multiple of %s.micro_batch (%d) x "
                   "data-parallel ranks (%d)",
                   section, sc->batch, section, sc->micro_batch, ctx->size);
    ctx->per_rank = sc->batch / ctx->size;
    if (kind == STAGE_PREF) {
        ctx->pref.kind = pref_loss_kind_from_name(sc->loss);
        if (ctx->pref.kind == PREF_LOSS_INVALID)
            PAFT_FATAL("configuration: pref.loss = '%s' is not dpo, ipo, hinge or orpo", sc->loss);
        ctx->pref.beta = sc->beta;
        ctx->pref.label_smoothing = sc->label_smoothing;
        if (pref_loss_needs_reference(ctx->pref.kind)) {
            ctx->ref_logp = paft_calloc(2 * data->num_records, sizeof(double));
            ctx->ref_known = paft_calloc(data->num_records, 1);
        }
    }
    int rows = kind == STAGE_SFT ? sc->micro_batch : 2 * sc->micro_batch;
    batch_alloc(&ctx->batch, rows, sc->seq_len);
    ctx->dlogp = paft_malloc((size_t)rows * sc->seq_len * sizeof(real));
    int64_t most = 0;
    for (int p = 0; p < N_PROJ; p++)
        most = PAFT_MAX(most, (int64_t)proj_in(&model->config, p) * proj_out(&model->config, p));
    ctx->delta_scratch = paft_malloc((size_t)most * sizeof(real));
}

void step_context_free(StepContext *ctx) {
    batch_free(&ctx->batch);
    free(ctx->dlogp);
    free(ctx->delta_scratch);
    free(ctx->ref_logp);
    free(ctx->ref_known);
    memset(ctx, 0, sizeof *ctx);
}

/* ---- reductions -------------------------------------------------------------------------------
 * After the micro-batches: (1) sum the LoRA gradients and the metric sums over the data-parallel
 * replicas; (2) add the L1 term's gradient, once, from this rank's block of each delta; (3) sum the
 * replicated factors' gradients over the tensor-parallel group. In (3) a replicated factor's
 * gradient is either partial on each rank (A of column-parallel projections, and every L1 term)
 * or complete and identical (B of row-parallel projections from the data term): the latter is
 * kept on tensor-parallel rank 0 only, so the sum counts it once. */

/* Where the LoRA gradients live decides who sums them: the host over MPI, or the device
 * (model_train_on_device: NCCL or MPI there). The arithmetic is the same. */
static int on_device(const Model *m) { return m->lora_on_device; }

static void reduce_data_parallel(StepContext *ctx, double *sums, int n_sums) {
    Model *m = ctx->model;
    if (ctx->layout->dp > 1) {
        if (on_device(m))
            m->backend->grads_allreduce(m->device, 1, 0, m->n_lora);
        else
            allreduce_sum_real(m->lora_grads_memory, m->n_lora, ctx->layout->dp_comm);
        allreduce_sum_double(sums, (size_t)n_sums, ctx->layout->dp_comm);
    }
    if (m->tp_size > 1 && m->tp_rank != 0)
        for (int l = 0; l < m->config.num_layers; l++)
            for (int p = 0; p < N_PROJ; p++)
                if (m->lora.targets[p] && proj_is_row_parallel(p)) {
                    real *dB = m->lora_grads[l].B[p];
                    size_t n = (size_t)proj_out(&m->config, p) * m->lora.r;
                    if (on_device(m))
                        m->backend->grads_zero(m->device, (size_t)(dB - m->lora_grads_memory), n);
                    else
                        memset(dB, 0, n * sizeof(real));
                }
}

/* lambda * sum |s B A| over this rank's blocks; adds its gradient; returns the whole sum. */
double step_l1_penalty(Model *m, double lambda, real *delta_scratch) {
    if (on_device(m)) return m->backend->l1_penalty(m->device, lambda);
    double l1 = 0;
    for (int l = 0; l < m->config.num_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            if (!m->lora.targets[p]) continue;
            /* this rank's block: delta's rows (column-parallel) or columns (row-parallel) */
            l1 += l1_penalty(m->lora_grads[l].A[p], m->lora_grads[l].B[p], m->lora_params[l].A[p],
                             m->lora_params[l].B[p], model_local_out(m, p), model_local_in(m, p),
                             m->lora.r, (real)m->lora.scale, (real)lambda, delta_scratch);
        }
    return l1;
}

/* lambda * sum |s B A| over the whole deltas (summed over the tensor-parallel group) */
static double add_l1_penalty(StepContext *ctx, double lambda) {
    Model *m = ctx->model;
    double l1 = step_l1_penalty(m, lambda, ctx->delta_scratch);
    if (m->tp_size > 1) allreduce_sum_double(&l1, 1, m->tp_comm);
    return l1;
}

void step_apply_adamw(Model *m, AdamW *opt, double lr, real grad_scale) {
    if (on_device(m)) {
        opt->step++;
        m->backend->adamw_step(m->device, opt->step, lr, &opt->hyper, (float)grad_scale);
    } else {
        adamw_step(opt, m->lora_memory, m->lora_grads_memory, lr, grad_scale);
    }
}

static void reduce_tensor_parallel(StepContext *ctx) {
    Model *m = ctx->model;
    if (m->tp_size == 1) return;
    if (on_device(m))
        m->backend->grads_allreduce(m->device, 0, 0, m->n_lora_replicated);
    else
        allreduce_sum_real(m->lora_grads_memory, m->n_lora_replicated, m->tp_comm);
}

double step_grad_norm(const StepContext *ctx) {
    const Model *m = ctx->model;
    const size_t n_rep = m->n_lora_replicated, n_shard = m->n_lora - m->n_lora_replicated;
    double replicated, shards;
    if (on_device(m)) {
        replicated = m->backend->grads_sum_squares(m->device, 0, n_rep);
        shards = m->backend->grads_sum_squares(m->device, n_rep, n_shard);
    } else {
        replicated = grad_sum_squares(m->lora_grads_memory, n_rep);
        shards = grad_sum_squares(m->lora_grads_memory + n_rep, n_shard);
    }
    if (m->tp_size > 1) allreduce_sum_double(&shards, 1, m->tp_comm);
    return sqrt(replicated + shards);
}

/* ---- SFT step: token-mean cross-entropy over the global batch ---------------------------------*/

static void sft_gradients(StepContext *tr, const uint64_t *records, StepStats *st) {
    const StageConfig *sc = tr->sc;
    Model *m = tr->model;
    int64_t global_targets = 0;
    for (int i = 0; i < sc->batch; i++)
        global_targets += sft_record_targets(tr->data, records[i]);
    if (global_targets == 0)
        PAFT_FATAL("%s: a batch of %d records has no loss tokens (all masks 0)", sc->data, sc->batch);

    double sums[2] = {0, 0}; /* nll, tokens */
    uint64_t mine[1024];
    for (int first = tr->rank * tr->per_rank; first < (tr->rank + 1) * tr->per_rank;
         first += sc->micro_batch) {
        int n = sc->micro_batch;
        if (n > 1024) PAFT_FATAL("micro_batch %d exceeds 1024", n);
        for (int i = 0; i < n; i++) mine[i] = records[first + i];
        batch_fill_sft(&tr->batch, tr->data, mine, n);
        const int N = n * tr->batch.T;
        model_forward(m, tr->batch.tokens, tr->batch.targets, n, tr->batch.T);
        int64_t count = 0;
        sums[0] += sft_token_nll_sum(m->acts.logp, tr->batch.targets, N, &count);
        for (int i = 0; i < n; i++) sums[1] += token_data_record_length(tr->data, mine[i]);
        memset(tr->dlogp, 0, (size_t)N * sizeof(real));
        sft_dlogp(tr->dlogp, tr->batch.targets, N, (double)global_targets);
        model_backward(m, tr->dlogp);
    }
    reduce_data_parallel(tr, sums, 2);
    st->nll = sums[0] / (double)global_targets;
    st->tokens = sums[1];
    /* PAFT's L1 term lambda * sum |s B A|, on this rank's block of every delta */
    st->l1 = sc->l1 > 0 ? add_l1_penalty(tr, sc->l1) : 0;
    reduce_tensor_parallel(tr);
    st->loss = st->nll + st->l1;
}

/* ---- preference step -------------------------------------------------------------------------*/

/* Sum of logp over each row's targets. */
static void row_sums(const real *logp, const int32_t *targets, int rows, int T, double *out) {
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int t = 0; t < T; t++)
            if (targets[(size_t)r * T + t] >= 0) s += logp[(size_t)r * T + t];
        out[r] = s;
    }
}

/* Reference log-probs (the base model alone) are cached per record, and each record's are
 * computed alone (its chosen and rejected completions as a batch of two rows), not within the
 * micro-batch being trained: its value then does not depend on the records it happens to be
 * batched with. It would otherwise, in the last bits: the padded length T follows the batch, and
 * a GEMM's rounding can follow the shapes of its operands (OpenBLAS's kernels, cuBLASLt's choice
 * of algorithm, the CPU attention's blocks of 64 query rows). So a resumed run, whose cache starts
 * empty, computes the values the uninterrupted run used, and the losses match bit for bit; and a
 * record gets the same reference on every rank and in every epoch. The cost is the same tokens
 * (fewer: no padding to the batch's longest) in smaller products. */
static void cache_reference(StepContext *tr, uint64_t record, double *ref) {
    Model *m = tr->model;
    batch_fill_pref(&tr->batch, tr->data, &record, 1);
    const int T = tr->batch.T;
    m->adapters_enabled = 0;
    model_forward(m, tr->batch.tokens, tr->batch.targets, 2, T);
    m->adapters_enabled = 1;
    row_sums(m->acts.logp, tr->batch.targets, 2, T, ref); /* chosen, rejected */
    tr->ref_logp[2 * record] = ref[0];
    tr->ref_logp[2 * record + 1] = ref[1];
    tr->ref_known[record] = 1;
}

static void pref_gradients(StepContext *tr, const uint64_t *records, StepStats *st) {
    const StageConfig *sc = tr->sc;
    Model *m = tr->model;
    const int P = sc->batch, mb = sc->micro_batch;
    const int orpo = tr->pref.kind == PREF_LOSS_ORPO;
    /* ORPO's NLL is one token mean over every chosen completion token of the global batch (TRL) */
    int64_t global_chosen = 0;
    for (int i = 0; i < P; i++) global_chosen += token_data_pref(tr->data, records[i]).chosen_length;

    enum { SUMS = 11 };
    double sums[SUMS] = {0}; /* loss(or term), reward c, r, acc, margin, logp c, r, log_odds_ratio,
                                log_odds_chosen, nll, tokens */
    uint64_t mine[512];
    double *policy = paft_malloc((size_t)2 * mb * sizeof(double));
    double *ref = paft_malloc((size_t)2 * mb * sizeof(double));
    for (int first = tr->rank * tr->per_rank; first < (tr->rank + 1) * tr->per_rank; first += mb) {
        if (mb > 512) PAFT_FATAL("micro_batch %d exceeds 512", mb);
        for (int i = 0; i < mb; i++) mine[i] = records[first + i];
        /* reference log-probs: the base model alone, computed once per record and cached (the
         * chunks use the batch buffer, so before this micro-batch fills it) */
        if (tr->ref_logp)
            for (int i = 0; i < mb; i++)
                if (!tr->ref_known[mine[i]]) cache_reference(tr, mine[i], ref);
        batch_fill_pref(&tr->batch, tr->data, mine, mb);
        const int T = tr->batch.T, rows = 2 * mb, N = rows * T;
        for (int i = 0; i < mb; i++) sums[10] += token_data_record_length(tr->data, mine[i]);

        model_forward(m, tr->batch.tokens, tr->batch.targets, rows, T);
        row_sums(m->acts.logp, tr->batch.targets, rows, T, policy);
        memset(tr->dlogp, 0, (size_t)N * sizeof(real));
        for (int i = 0; i < mb; i++) {
            PrefPair pair = {policy[i], policy[mb + i], 0, 0, tr->batch.n_targets[i],
                             tr->batch.n_targets[mb + i]};
            if (tr->ref_logp) {
                pair.reference_chosen = tr->ref_logp[2 * mine[i]];
                pair.reference_rejected = tr->ref_logp[2 * mine[i] + 1];
            }
            PrefLossResult res;
            pref_loss_pair(&res, &tr->pref, &pair);
            double dc = res.dpolicy_chosen, dr = res.dpolicy_rejected;
            if (orpo) dc -= res.dpolicy_chosen_nll; /* the NLL part is the batch token mean below */
            pref_spread_dlogp(tr->dlogp + (size_t)i * T, tr->batch.targets + (size_t)i * T, T, dc / P);
            pref_spread_dlogp(tr->dlogp + (size_t)(mb + i) * T,
                              tr->batch.targets + (size_t)(mb + i) * T, T, dr / P);
            sums[0] += res.loss - res.nll_loss;
            sums[1] += res.reward_chosen;
            sums[2] += res.reward_rejected;
            sums[3] += res.reward_accuracy;
            sums[4] += res.reward_margin;
            sums[5] += policy[i];
            sums[6] += policy[mb + i];
            sums[7] += res.log_odds_ratio;
            sums[8] += res.log_odds_chosen;
        }
        if (orpo) {
            int64_t count = 0;
            sums[9] += sft_token_nll_sum(m->acts.logp, tr->batch.targets, mb * T, &count);
            sft_dlogp(tr->dlogp, tr->batch.targets, mb * T, (double)global_chosen);
        }
        model_backward(m, tr->dlogp);
    }
    free(policy);
    free(ref);
    reduce_data_parallel(tr, sums, SUMS);
    reduce_tensor_parallel(tr);
    st->nll = orpo ? sums[9] / (double)global_chosen : 0;
    st->loss = sums[0] / P + st->nll;
    st->reward_chosen = sums[1] / P;
    st->reward_rejected = sums[2] / P;
    st->reward_accuracy = sums[3] / P;
    st->reward_margin = sums[4] / P;
    st->logp_chosen = sums[5] / P;
    st->logp_rejected = sums[6] / P;
    st->log_odds_ratio = sums[7] / P;
    st->log_odds_chosen = sums[8] / P;
    st->tokens = sums[10];
}

/* The model FLOPs of the global batch, from the records' lengths (the same on every rank): what
 * the metrics' TFLOP/s and MFU count, padding excluded. */
static double batch_flops(const StepContext *ctx, const uint64_t *records) {
    const ModelConfig *c = &ctx->model->config;
    double flops = 0;
    for (int i = 0; i < ctx->sc->batch; i++) {
        if (ctx->kind == STAGE_SFT) {
            flops += model_sequence_train_flops(c, (double)token_data_sft(ctx->data, records[i]).length);
        } else {
            PrefRecord p = token_data_pref(ctx->data, records[i]);
            flops += model_sequence_train_flops(c, (double)(p.prompt_length + p.chosen_length)) +
                     model_sequence_train_flops(c, (double)(p.prompt_length + p.rejected_length));
        }
    }
    return flops;
}

void step_gradients(StepContext *ctx, const uint64_t *records, StepStats *st) {
    model_zero_grads(ctx->model);
    if (ctx->kind == STAGE_SFT)
        sft_gradients(ctx, records, st);
    else
        pref_gradients(ctx, records, st);
    st->flops = batch_flops(ctx, records);
}
