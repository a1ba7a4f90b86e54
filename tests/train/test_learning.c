/*
 * test_learning.c - training learns: on the generated tasks (data/synthetic.h) with a tiny random
 * Llama, through the real `paft train` code path (train_stage on MPI_COMM_WORLD):
 *   - SFT: held-out NLL falls well below its start (to less than half);
 *   - SFT with lambda > 0: the fraction of |delta_sft| < 1e-5 is far higher than with lambda = 0;
 *   - DPO: implicit-reward accuracy on held-out pairs rises above 0.9 (from ~0.5 at the base).
 * Prints every figure so the numbers can be reported.
 */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "data/synthetic.h"
#include "io/adapter.h"
#include "loss/lora_delta.h"
#include "model/model.h"
#include "model/tiny_model.h"
#include "test_util.h"
#include "train/evaluate.h"
#include "train/train.h"

static void base_config(Config *cfg, const char *outdir) {
    config_defaults(cfg);
    config_set(cfg, "model", "path", "learn/model", "test");
    config_set(cfg, "lora", "r", "8", "test");
    config_set(cfg, "lora", "alpha", "16", "test");
    config_set(cfg, "output", "dir", outdir, "test");
    config_set(cfg, "output", "checkpoint_every", "0", "test");
    config_set(cfg, "output", "log_every", "50", "test");
    config_set(cfg, "sft", "data", "learn/sft_train.bin", "test");
    config_set(cfg, "sft", "batch", "16", "test");
    config_set(cfg, "sft", "micro_batch", "8", "test");
    config_set(cfg, "sft", "seq_len", "24", "test");
    config_set(cfg, "sft", "steps", "300", "test");
    config_set(cfg, "sft", "lr", "1e-2", "test");
    config_set(cfg, "pref", "data", "learn/pref_train.bin", "test");
    config_set(cfg, "pref", "batch", "16", "test");
    config_set(cfg, "pref", "micro_batch", "8", "test");
    config_set(cfg, "pref", "seq_len", "24", "test");
    config_set(cfg, "pref", "steps", "60", "test");
    config_set(cfg, "pref", "lr", "5e-3", "test");
}

/* Load the base with the stage's adapter (or none) and evaluate on held-out data. */
static void evaluate(const Config *cfg, const char *adapter, EvalResult *sft, EvalResult *pref,
                     double *sparsity) {
    LoraConfig lora;
    lora_config_init(&lora, cfg->lora.r, cfg->lora.alpha, 0, cfg->lora.targets, "test");
    Model m;
    model_load(&m, cfg->model.path, &lora, 1, MPI_COMM_SELF);
    if (adapter) adapter_read(adapter, MPI_COMM_WORLD, &m, NULL, NULL, NULL, NULL);
    model_alloc_activations(&m, 16, 24);
    TokenData *sd = token_data_open("learn/sft_val.bin", TOKEN_DATA_SFT, 64);
    TokenData *pd = token_data_open("learn/pref_val.bin", TOKEN_DATA_PREF, 64);
    evaluate_sft(&m, sd, 8, MPI_COMM_WORLD, sft);
    evaluate_pref(&m, &m, pd, 8, 0.1, MPI_COMM_WORLD, pref);
    /* sparsity of delta = s B A over every adapted module */
    size_t below = 0, total = 0;
    real *delta = paft_malloc((size_t)m.config.intermediate_size * m.config.hidden_size * sizeof(real));
    for (int l = 0; l < m.config.num_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            int out = proj_out(&m.config, p), in = proj_in(&m.config, p);
            lora_delta(delta, m.lora_params[l].A[p], m.lora_params[l].B[p], out, in, m.lora.r,
                       (real)m.lora.scale);
            below += delta_count_below(delta, (size_t)out * in, 1e-5);
            total += (size_t)out * in;
        }
    *sparsity = (double)below / (double)total;
    free(delta);
    token_data_close(sd);
    token_data_close(pd);
    model_free(&m);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) {
        TinyModelSpec spec = tiny_model_default();
        if (system("rm -rf learn && mkdir -p learn") != 0) return 1;
        tiny_model_write("learn/model", &spec, 5);
        synthetic_write_sft("learn/sft_train.bin", 512, 1, 77, 0, SYNTH_ALL);
        synthetic_write_sft("learn/sft_val.bin", 64, 2, 77, 0, SYNTH_ALL);
        synthetic_write_pref("learn/pref_train.bin", 512, 3, 77, 0, SYNTH_ALL);
        synthetic_write_pref("learn/pref_val.bin", 64, 4, 77, 0, SYNTH_ALL);
    }
    MPI_Barrier(MPI_COMM_WORLD);

    Config cfg;
    EvalResult base_sft, base_pref, sft, pref;
    double base_sparsity, sparsity_plain, sparsity_l1, s;
    base_config(&cfg, "learn/run_plain");
    evaluate(&cfg, NULL, &base_sft, &base_pref, &base_sparsity);

    /* SFT without L1 */
    config_set(&cfg, "sft", "l1", "0", "test");
    train_stage(&cfg, STAGE_SFT, MPI_COMM_WORLD);
    evaluate(&cfg, "learn/run_plain/sft/adapter.h5", &sft, &pref, &sparsity_plain);
    printf("SFT (lambda 0): held-out NLL %.4f -> %.4f; sparsity of delta %.4f\n", base_sft.nll,
           sft.nll, sparsity_plain);
    CHECK(sft.nll < 0.5 * base_sft.nll, "SFT NLL %.4f not below half of %.4f", sft.nll, base_sft.nll);

    /* SFT with PAFT's L1 */
    base_config(&cfg, "learn/run_l1");
    config_set(&cfg, "sft", "l1", "3e-3", "test");
    train_stage(&cfg, STAGE_SFT, MPI_COMM_WORLD);
    EvalResult sft_l1;
    evaluate(&cfg, "learn/run_l1/sft/adapter.h5", &sft_l1, &pref, &sparsity_l1);
    printf("SFT (lambda 3e-3): held-out NLL %.4f; sparsity of delta %.4f (lambda 0: %.4f)\n",
           sft_l1.nll, sparsity_l1, sparsity_plain);
    CHECK(sparsity_plain < 0.01, "without L1 the delta is dense: sparsity %.4f", sparsity_plain);
    CHECK(sparsity_l1 > 0.2 && sparsity_l1 > 20 * sparsity_plain, "L1 sparsity %.4f vs %.4f",
          sparsity_l1, sparsity_plain);
    CHECK(sft_l1.nll < base_sft.nll, "SFT with L1 still learns: %.4f vs base %.4f", sft_l1.nll,
          base_sft.nll);

    /* DPO from the base */
    base_config(&cfg, "learn/run_dpo");
    train_stage(&cfg, STAGE_PREF, MPI_COMM_WORLD);
    evaluate(&cfg, "learn/run_dpo/pref/adapter.h5", &sft, &pref, &s);
    printf("DPO: held-out reward accuracy %.3f (base %.3f), margin %.4f\n", pref.accuracy,
           base_pref.accuracy, pref.margin);
    CHECK(pref.accuracy > 0.9, "DPO accuracy %.3f", pref.accuracy);

    int status = test_finish("test_learning");
    MPI_Finalize();
    return status;
}
