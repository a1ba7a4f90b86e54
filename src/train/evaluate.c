/* evaluate.c - held-out SFT NLL and preference accuracy (see evaluate.h). */
#include "train/evaluate.h"

#include <stdlib.h>
#include <string.h>

#include "io/adapter.h"
#include "io/h5file.h"
#include "io/merged_h5.h"
#include "loss/sft_loss.h"
#include "model/peft.h"
#include "parallel/collectives.h"
#include "train/batch.h"
#include "train/train.h"

/* Records [first, last) of n for this rank: contiguous, as even as possible. */
static void my_range(uint64_t n, MPI_Comm comm, uint64_t *first, uint64_t *last) {
    int rank, size;
    CHECK_MPI(MPI_Comm_rank(comm, &rank));
    CHECK_MPI(MPI_Comm_size(comm, &size));
    *first = n * (uint64_t)rank / (uint64_t)size;
    *last = n * (uint64_t)(rank + 1) / (uint64_t)size;
}

void evaluate_sft(Model *m, const TokenData *data, int micro_batch, MPI_Comm comm,
                  EvalResult *out) {
    memset(out, 0, sizeof *out);
    Batch batch;
    batch_alloc(&batch, micro_batch, m->max_T);
    uint64_t first, last, *ids = paft_malloc((size_t)micro_batch * sizeof(uint64_t));
    my_range(data->num_records, comm, &first, &last);
    double sums[2] = {0, 0};
    for (uint64_t r = first; r < last; r += (uint64_t)micro_batch) {
        int n = (int)PAFT_MIN((uint64_t)micro_batch, last - r);
        for (int i = 0; i < n; i++) ids[i] = r + (uint64_t)i;
        batch_fill_sft(&batch, data, ids, n);
        model_forward(m, batch.tokens, batch.targets, n, batch.T);
        int64_t count = 0;
        sums[0] += sft_token_nll_sum(m->acts.logp, batch.targets, n * batch.T, &count);
        sums[1] += (double)count;
    }
    allreduce_sum_double(sums, 2, comm);
    /* a mean over nothing is no score: 0 would rank as the best model there is */
    int rank;
    CHECK_MPI(MPI_Comm_rank(comm, &rank));
    if (sums[1] == 0)
        PAFT_FATAL_SHARED(rank == 0,
                          "%s: %llu records and not one loss-mask (answer) token: no SFT NLL to "
                          "report", data->path, (unsigned long long)data->num_records);
    out->nll = sums[0] / sums[1];
    out->tokens = (int64_t)sums[1];
    free(ids);
    batch_free(&batch);
}

/* Summed completion log-probs of the batch's rows. */
static void completion_logps(Model *m, const Batch *b, double *out) {
    model_forward(m, b->tokens, b->targets, b->n_seqs, b->T);
    for (int r = 0; r < b->n_seqs; r++) {
        double s = 0;
        for (int t = 0; t < b->T; t++)
            if (b->targets[(size_t)r * b->T + t] >= 0) s += m->acts.logp[(size_t)r * b->T + t];
        out[r] = s;
    }
}

void evaluate_pref(Model *policy, Model *reference, const TokenData *data, int micro_batch,
                   double beta, MPI_Comm comm, EvalResult *out) {
    memset(out, 0, sizeof *out);
    Batch batch;
    batch_alloc(&batch, 2 * micro_batch, policy->max_T);
    uint64_t first, last, *ids = paft_malloc((size_t)micro_batch * sizeof(uint64_t));
    my_range(data->num_records, comm, &first, &last);
    double *pol = paft_malloc((size_t)2 * micro_batch * sizeof(double));
    double *ref = paft_malloc((size_t)2 * micro_batch * sizeof(double));
    double sums[5] = {0}; /* correct, margin, reward chosen, reward rejected, pairs */
    for (uint64_t r = first; r < last; r += (uint64_t)micro_batch) {
        int n = (int)PAFT_MIN((uint64_t)micro_batch, last - r);
        for (int i = 0; i < n; i++) ids[i] = r + (uint64_t)i;
        batch_fill_pref(&batch, data, ids, n);
        completion_logps(policy, &batch, pol);
        int saved = reference->adapters_enabled;
        if (reference == policy) reference->adapters_enabled = 0;
        completion_logps(reference, &batch, ref);
        reference->adapters_enabled = saved;
        for (int i = 0; i < n; i++) {
            double rc = beta * (pol[i] - ref[i]), rr = beta * (pol[n + i] - ref[n + i]);
            sums[0] += rc > rr;
            sums[1] += rc - rr;
            sums[2] += rc;
            sums[3] += rr;
            sums[4] += 1;
        }
    }
    allreduce_sum_double(sums, 5, comm);
    int rank;
    CHECK_MPI(MPI_Comm_rank(comm, &rank));
    if (sums[4] == 0)
        PAFT_FATAL_SHARED(rank == 0, "%s: holds no preference pair: no accuracy to report",
                          data->path);
    out->pairs = (int64_t)sums[4];
    out->accuracy = sums[0] / sums[4];
    out->margin = sums[1] / sums[4];
    out->reward_chosen = sums[2] / sums[4];
    out->reward_rejected = sums[3] / sums[4];
    free(ids);
    free(pol);
    free(ref);
    batch_free(&batch);
}

/* Is PATH a paft adapter (an HDF5 file that is not a merged model)? */
static int is_adapter_file(const char *path) {
    return adapter_path_is_hdf5(path) && !merged_is_merged_file(path);
}

/* The adapter an adapter file was trained on top of ("" when none). */
static void folded_adapter_of(const char *path, char *out, size_t n) {
    H5File f;
    h5_open_read(&f, path, MPI_COMM_SELF);
    char *folded = h5_get_attr_string(&f, "folded_adapter");
    snprintf(out, n, "%s", folded);
    free(folded);
    h5_close(&f);
}

/* A merged file is base + merged delta: its preference metrics take model.path as the reference
 * (and its SFT data is checked against model.path's vocabulary), so model.path must be the base
 * it was merged from, which its base_fingerprint attribute records. Another base (say another
 * architecture) would give metrics against the wrong reference without a word. */
static void require_merged_base(const char *path, const char *base_path, MPI_Comm comm) {
    H5File f;
    h5_open_read(&f, path, MPI_COMM_SELF);
    char *recorded = h5_get_attr_string(&f, "base_fingerprint");
    char *recorded_base = h5_get_attr_string(&f, "base_model");
    h5_close(&f);
    char fingerprint[17];
    model_fingerprint_of_path(base_path, fingerprint);
    int rank;
    CHECK_MPI(MPI_Comm_rank(comm, &rank));
    if (strcmp(recorded, fingerprint) != 0) /* every rank of comm reads the same files */
        PAFT_FATAL_SHARED(rank == 0,
                          "%s: merged model was made from another base model (base_fingerprint "
                          "%s, base %s), but model.path %s has fingerprint %s; set model.path to "
                          "the base it was merged from",
                          path, recorded, recorded_base, base_path, fingerprint);
    free(recorded);
    free(recorded_base);
}

static int longest(const TokenData *sft, const TokenData *pref) {
    uint64_t n = 1;
    if (sft) n = PAFT_MAX(n, sft->max_length);
    if (pref) n = PAFT_MAX(n, pref->max_length);
    return (int)n;
}

void evaluate_model_path(const Config *cfg, const char *path, const TokenData *sft_data,
                         const TokenData *pref_data, MPI_Comm comm, EvalResult *sft,
                         EvalResult *pref) {
    memset(sft, 0, sizeof *sft);
    memset(pref, 0, sizeof *pref);
    const int adapter = is_adapter_file(path);
    /* an adapter is applied with the r, alpha and targets it was trained with, not [lora]'s
     * (evaluating a stage trained with other LoRA settings needs no overrides) */
    LoraConfig lora;
    if (adapter)
        adapter_read_lora_config(path, &lora);
    else
        lora_config_init(&lora, cfg->lora.r, cfg->lora.alpha, cfg->lora.rslora,
                         cfg->lora.targets, "configuration [lora]");
    /* a PEFT adapter directory (paft's <stage>/peft/ or one trained with PEFT) is folded into the
     * base, which is then the reference as for a merged model */
    const int peft = peft_is_adapter_dir(path);
    Model policy;
    model_load(&policy, adapter || peft ? cfg->model.path : path, &lora, 0, MPI_COMM_SELF);
    if (peft) adapter_fold_into_base(path, comm, &policy);
    /* after the load, which validates the merged file first (a broken one gets its own error) */
    if (!adapter && !peft && !paft_is_directory(path) && merged_is_merged_file(path))
        require_merged_base(path, cfg->model.path, comm);
    if (adapter) {
        char folded[CONFIG_PATH_MAX];
        folded_adapter_of(path, folded, sizeof folded);
        if (folded[0]) adapter_fold_into_base(folded, comm, &policy);
        adapter_read(path, comm, &policy, NULL, NULL, NULL, NULL);
    }
    train_use_device(cfg, &policy);
    const int mb_sft = cfg->sft.micro_batch, mb_pref = cfg->pref.micro_batch;
    const int T = longest(sft_data, pref_data);
    model_alloc_activations(&policy, PAFT_MAX(mb_sft, 2 * mb_pref), T);
    if (sft_data) evaluate_sft(&policy, sft_data, mb_sft, comm, sft);
    if (pref_data) {
        /* the reference is the base model: for an adapter on the plain base that is the policy
         * with its adapters off; otherwise a second model */
        Model reference, *ref = &policy;
        char folded[CONFIG_PATH_MAX] = "";
        if (adapter) folded_adapter_of(path, folded, sizeof folded);
        const int separate = !adapter || folded[0];
        if (separate) {
            model_load(&reference, cfg->model.path, &lora, 0, MPI_COMM_SELF);
            train_use_device(cfg, &reference);
            model_alloc_activations(&reference, 2 * mb_pref, T);
            ref = &reference;
        }
        evaluate_pref(&policy, ref, pref_data, mb_pref, cfg->pref.beta, comm, pref);
        if (separate) model_free(&reference);
    }
    model_free(&policy);
}
