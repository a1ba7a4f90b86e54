/*
 * cmd_eval.c - `paft eval CONFIG model=PATH [eval.sft_data=... eval.pref_data=...]`: held-out
 * metrics of a model, over all ranks (records split between them).
 *
 * PATH is a Hugging Face model, a paft merged file (merged.h5), or an adapter applied to
 * model.path: paft's adapter.h5, or a PEFT adapter directory (<stage>/peft/ or one trained with
 * PEFT, folded into the base). The SFT metric is the mean NLL over the loss-mask tokens of eval.sft_data; the
 * preference metrics are the implicit-reward accuracy and margin on eval.pref_data against the
 * base model (model.path) as the reference, beta = pref.beta. Prints a line for people and one
 * JSON object ("eval: {...}") for scripts.
 */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "config/config.h"
#include "data/token_data.h"
#include "model/model.h"
#include "train/evaluate.h"
#include "util/common.h"

int cmd_eval(int argc, char **argv) {
    Config cfg;
    char *extra[4];
    int n_extra = config_from_args(&cfg, argc, argv, extra, 4);
    const char *path = NULL;
    for (int i = 0; i < n_extra; i++) {
        if (strncmp(extra[i], "model=", 6) == 0)
            path = extra[i] + 6;
        else
            ARGUMENT_FATAL("command line: unknown argument '%s' for 'paft eval' (model=PATH)",
                           extra[i]);
    }
    if (!path) ARGUMENT_FATAL("command line: 'paft eval' needs model=PATH (model, merged.h5, "
                              "adapter.h5 or a PEFT adapter directory)");
    if (!cfg.eval.sft_data[0] && !cfg.eval.pref_data[0])
        ARGUMENT_FATAL("configuration: set eval.sft_data and/or eval.pref_data");
    if (!cfg.model.path[0]) ARGUMENT_FATAL("configuration: model.path (the base model) is not set");
    /* rank 0 opens the inputs first while the others wait: a bad file gets one message (its
     * MPI_Abort ends the others), not one per rank */
    int rank;
    CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    if (rank != 0) CHECK_MPI(MPI_Barrier(MPI_COMM_WORLD));
    TokenData *sft = NULL, *pref = NULL;
    {
        /* the vocabulary to check the data against: the base model's */
        ModelConfig base;
        model_config_of_path(cfg.model.path, &base);
        uint32_t vocab = (uint32_t)base.vocab_size;
        model_config_free(&base);
        if (cfg.eval.sft_data[0]) sft = token_data_open(cfg.eval.sft_data, TOKEN_DATA_SFT, vocab);
        if (cfg.eval.pref_data[0]) pref = token_data_open(cfg.eval.pref_data, TOKEN_DATA_PREF, vocab);
    }
    if (rank == 0) CHECK_MPI(MPI_Barrier(MPI_COMM_WORLD));
    EvalResult es, ep;
    evaluate_model_path(&cfg, path, sft, pref, MPI_COMM_WORLD, &es, &ep);
    paft_log("%s:", path);
    if (sft) paft_log("  SFT NLL %.4f over %lld tokens;", es.nll, (long long)es.tokens);
    if (pref)
        paft_log("  preference accuracy %.4f, margin %.4f (beta %g, %lld pairs, reference %s)",
                 ep.accuracy, ep.margin, cfg.pref.beta, (long long)ep.pairs, cfg.model.path);
    paft_log("\neval: {\"model\": \"%s\"", path);
    if (sft) paft_log(", \"sft_nll\": %s, \"sft_tokens\": %lld", json_number(es.nll).text, (long long)es.tokens);
    if (pref)
        paft_log(", \"pref_accuracy\": %s, \"pref_margin\": %s, \"reward_chosen\": %s, "
                 "\"reward_rejected\": %s, \"pairs\": %lld",
                 json_number(ep.accuracy).text, json_number(ep.margin).text,
                 json_number(ep.reward_chosen).text, json_number(ep.reward_rejected).text,
                 (long long)ep.pairs);
    paft_log("}\n");
    if (sft) token_data_close(sft);
    if (pref) token_data_close(pref);
    return 0;
}
