/*
 * fuzz_model_config.c - a Hugging Face config.json: `paft inspect DIR` over a directory holding the
 * fuzzed config.json and the weights of a fixed tiny Llama (so a config that matches them gets
 * through the shape checks to the listing), then the parts of the loader that follow from the
 * configuration alone: the tensor layout and the RoPE frequencies.
 */
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "fuzz_harness.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/model_config.h"
#include "model/tiny_model.h"

static char model_dir[4096];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *dir = fuzz_init();
    snprintf(model_dir, sizeof model_dir, "%s/model", dir);
    TinyModelSpec spec = tiny_model_default();
    spec.vocab_size = 11; /* the shapes of make_test_files' good_model, a seed */
    spec.hidden_size = 8;
    spec.intermediate_size = 12;
    spec.num_layers = 1;
    spec.num_heads = 2;
    spec.num_kv_heads = 1;
    tiny_model_write(model_dir, &spec, 1);
    return 0;
}

static void run(const char *path) {
    char *argv[] = {"inspect", model_dir, NULL};
    cmd_inspect(2, argv);

    /* the same configuration through the loader's first steps (what model_load does before it
     * reads a tensor); only for configurations the weights matched, as model_load would */
    ModelConfig cfg;
    model_config_load(&cfg, path);
    Checkpoint ckpt;
    checkpoint_open(&ckpt, model_dir);
    model_check_checkpoint(&ckpt, &cfg);
    checkpoint_close(&ckpt);
    double *inv_freq = malloc((size_t)(cfg.head_dim / 2 + 1) * sizeof *inv_freq);
    model_config_rope_inv_freq(&cfg, inv_freq);
    free(inv_freq);
    model_config_free(&cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[4096];
    fuzz_write_file(path, model_dir, "config.json", data, size);
    fuzz_begin(model_dir);
    if (setjmp(fuzz_on_fatal) == 0) run(path);
    fuzz_end();
    return 0;
}
