/*
 * cmd_eval.c - `paft eval CONFIG model=PATH [eval.sft_data=... eval.pref_data=...]`: held-out
 * metrics of a model, over all ranks (records split between them).
 *
 * PATH is a Hugging Face model, a paft merged file (merged.h5), or an adapter (adapter.h5, applied
 * to model.path). The SFT metric is the mean NLL over the loss-mask tokens of eval.sft_data; the
 * preference metrics are the implicit-reward accuracy and margin on eval.pref_data against the
 * base model (model.path) as the reference, beta = pref.beta. Prints a line for people and one
 * JSON object ("eval: {...}") for scripts.
 */
#include <mpi.h>
#include <string.h>

#include "cli/commands.h"
#include "config/config.h"
#include "data/token_data.h"
#include "io/adapter.h"
#include "io/merged_h5.h"
#include "model/model.h"
#include "train/evaluate.h"
#include "util/common.h"

/* The longest sequence the model must hold for either data file. */
static int longest(const TokenData *sft, const TokenData *pref) {
    uint64_t n = 1;
    if (sft) n = PAFT_MAX(n, sft->max_length);
    if (pref) n = PAFT_MAX(n, pref->max_length);
    return (int)n;
}

/* Is PATH a paft adapter (an HDF5 file that is not a merged model)? */
static int is_adapter_file(const char *path) {
    if (paft_is_directory(path)) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    unsigned char magic[8];
    size_t n = fread(magic, 1, 8, f);
    fclose(f);
    return adapter_is_hdf5(magic, n) && !merged_is_merged_file(path);
}

int cmd_eval(int argc, char **argv) {
    Config cfg;
    char *extra[4];
    int n_extra = config_from_args(&cfg, argc, argv, extra, 4);
    const char *path = NULL;
    for (int i = 0; i < n_extra; i++) {
        if (strncmp(extra[i], "model=", 6) == 0)
            path = extra[i] + 6;
        else
            PAFT_FATAL("command line: unknown argument '%s' for 'paft eval' (model=PATH)", extra[i]);
    }
    if (!path) PAFT_FATAL("command line: 'paft eval' needs model=PATH (model, merged.h5 or adapter.h5)");
    if (!cfg.eval.sft_data[0] && !cfg.eval.pref_data[0])
        PAFT_FATAL("configuration: set eval.sft_data and/or eval.pref_data");
    if (!cfg.model.path[0]) PAFT_FATAL("configuration: model.path (the base model) is not set");

    LoraConfig lora;
    lora_config_init(&lora, cfg.lora.r, cfg.lora.alpha, cfg.lora.rslora, cfg.lora.targets,
                     "configuration [lora]");
    int adapter = is_adapter_file(path);
    /* the policy: the base with the adapter, or the model at PATH (its LoRA stays at B = 0) */
    Model policy, reference;
    model_load(&policy, adapter ? cfg.model.path : path, &lora, 0, MPI_COMM_SELF);
    if (adapter) adapter_read(path, MPI_COMM_WORLD, &policy, NULL, NULL, NULL, NULL);
    TokenData *sft = cfg.eval.sft_data[0]
                         ? token_data_open(cfg.eval.sft_data, TOKEN_DATA_SFT, (uint32_t)policy.config.vocab_size)
                         : NULL;
    TokenData *pref = cfg.eval.pref_data[0]
                          ? token_data_open(cfg.eval.pref_data, TOKEN_DATA_PREF, (uint32_t)policy.config.vocab_size)
                          : NULL;
    const int mb_sft = cfg.sft.micro_batch, mb_pref = cfg.pref.micro_batch;
    const int T = longest(sft, pref);
    model_alloc_activations(&policy, PAFT_MAX(mb_sft, 2 * mb_pref), T);

    EvalResult es = {0}, ep = {0};
    if (sft) evaluate_sft(&policy, sft, mb_sft, MPI_COMM_WORLD, &es);
    if (pref) {
        Model *ref = &policy; /* an adapter: its base is the policy with adapters disabled */
        if (!adapter) {
            model_load(&reference, cfg.model.path, &lora, 0, MPI_COMM_SELF);
            model_alloc_activations(&reference, 2 * mb_pref, T);
            ref = &reference;
        }
        evaluate_pref(&policy, ref, pref, mb_pref, cfg.pref.beta, MPI_COMM_WORLD, &ep);
        if (!adapter) model_free(&reference);
    }
    paft_log("%s:", path);
    if (sft) paft_log("  SFT NLL %.4f over %lld tokens;", es.nll, (long long)es.tokens);
    if (pref)
        paft_log("  preference accuracy %.4f, margin %.4f (beta %g, %lld pairs, reference %s)",
                 ep.accuracy, ep.margin, cfg.pref.beta, (long long)ep.pairs, cfg.model.path);
    paft_log("\neval: {\"model\": \"%s\"", path);
    if (sft) paft_log(", \"sft_nll\": %.8g, \"sft_tokens\": %lld", es.nll, (long long)es.tokens);
    if (pref)
        paft_log(", \"pref_accuracy\": %.8g, \"pref_margin\": %.8g, \"reward_chosen\": %.8g, "
                 "\"reward_rejected\": %.8g, \"pairs\": %lld",
                 ep.accuracy, ep.margin, ep.reward_chosen, ep.reward_rejected, (long long)ep.pairs);
    paft_log("}\n");
    if (sft) token_data_close(sft);
    if (pref) token_data_close(pref);
    model_free(&policy);
    return 0;
}
