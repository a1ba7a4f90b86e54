/*
 * cmd_demo.c - `paft demo [OUTDIR]`: the embedded demo, needing no download and no Python.
 *
 * Current stage of the pipeline: rank 0 generates a tiny Llama-family model as a Hugging Face
 * directory; every rank loads it through the real loader, attaches LoRA adapters, and runs a
 * forward and backward pass on its own generated batch; the ranks' losses are averaged with MPI.
 * Training, merging and the evaluation table join as those stages land (docs/ARCHITECTURE.md).
 */
#include <errno.h>
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/commands.h"
#include "model/model.h"
#include "model/tiny_model.h"
#include "util/common.h"
#include "util/rng.h"

int cmd_demo(int argc, char **argv) {
    const char *outdir = argc > 1 ? argv[1] : "paft-demo";
    int rank = 0, world = 1;
    CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &world));
    char *model_dir = paft_path_join(outdir, "base-model");
    double t0 = paft_seconds();

    /* 1. a tiny model, written once as a Hugging Face directory */
    TinyModelSpec spec = tiny_model_default();
    if (rank == 0) {
        if (mkdir(outdir, 0777) != 0 && errno != EEXIST)
            PAFT_FATAL("%s: cannot create directory: %s", outdir, strerror(errno));
        tiny_model_write(model_dir, &spec, 2024);
    }
    CHECK_MPI(MPI_Barrier(MPI_COMM_WORLD));

    /* 2. every rank loads it with LoRA r=4 on all seven projections */
    LoraConfig lora;
    lora_config_init(&lora, 4, 8.0, 0, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                     "demo");
    Model model;
    model_load(&model, model_dir, &lora, 42, MPI_COMM_SELF);
    char summary[256];
    model_config_describe(&model.config, summary, sizeof summary);
    paft_log("paft demo on %d rank%s: %s\n", world, world > 1 ? "s" : "", summary);
    paft_log("  base model: %s (%lld parameters); LoRA r=%d on 7 projections: %zu parameters\n",
             model_dir, (long long)model_parameter_count(&model), lora.r, model.n_lora);

    /* 3. a forward and backward pass on this rank's own generated batch */
    const int B = 4, T = 32, N = B * T;
    model_alloc_activations(&model, B, T);
    int32_t *tokens = paft_malloc((size_t)N * sizeof(int32_t));
    int32_t *targets = paft_malloc((size_t)N * sizeof(int32_t));
    Rng rng;
    rng_seed(&rng, 1000 + (uint64_t)rank);
    for (int i = 0; i < N; i++) tokens[i] = (int32_t)(rng_u64(&rng) % spec.vocab_size);
    for (int i = 0; i < N; i++) targets[i] = (i + 1) % T ? tokens[i + 1] : -1;
    model_forward(&model, tokens, targets, B, T);
    double local[2] = {0, 0}; /* sum of -logp, count */
    for (int i = 0; i < N; i++)
        if (targets[i] >= 0) {
            local[0] -= model.acts.logp[i];
            local[1] += 1;
        }
    double global[2];
    CHECK_MPI(MPI_Allreduce(local, global, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
    real *dlogp = paft_calloc((size_t)N, sizeof(real));
    for (int i = 0; i < N; i++) dlogp[i] = targets[i] >= 0 ? (real)(-1.0 / global[1]) : 0;
    model_zero_grads(&model);
    model_backward(&model, dlogp);
    /* data parallel: the gradient of the global mean loss is the sum of the ranks' gradients */
    CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, model.lora_grads_memory, (int)model.n_lora,
                            sizeof(real) == 4 ? MPI_FLOAT : MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
    double global_sq = 0;
    for (size_t i = 0; i < model.n_lora; i++)
        global_sq += (double)model.lora_grads_memory[i] * model.lora_grads_memory[i];
    paft_log("  forward: mean token loss %.4f over %d tokens (uniform guess: %.4f)\n",
             global[0] / global[1], (int)global[1], log((double)spec.vocab_size));
    paft_log("  backward: LoRA gradient norm %.4e (d/dA is 0 at init since B = 0; d/dB is not)\n",
             sqrt(global_sq));
    paft_log("  done in %.2f s\n", paft_seconds() - t0);

    free(dlogp);
    free(tokens);
    free(targets);
    model_free(&model);
    free(model_dir);
    return 0;
}
