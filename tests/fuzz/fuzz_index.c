/*
 * fuzz_index.c - a sharded checkpoint's model.safetensors.index.json: `paft inspect DIR` and
 * checkpoint_open over a directory holding the fuzzed index and two fixed shards
 * (model-00001-of-00002.safetensors: a, b; model-00002-of-00002.safetensors: c, d).
 */
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "fuzz_harness.h"
#include "io/safetensors.h"

static char model_dir[4096];

static void write_shard(const char *name, const char *t1, const char *t2) {
    static const real values[6] = {1, 2, 3, 4, 5, 6};
    TensorToWrite tensors[2] = {
        {t1, DTYPE_F32, 2, {2, 3}, values},
        {t2, DTYPE_BF16, 1, {4}, values},
    };
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", model_dir, name);
    safetensors_write(path, tensors, 2, "{\"format\": \"pt\"}");
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *dir = fuzz_init();
    snprintf(model_dir, sizeof model_dir, "%s/sharded", dir);
    paft_make_dirs(model_dir);
    write_shard("model-00001-of-00002.safetensors", "a", "b");
    write_shard("model-00002-of-00002.safetensors", "c", "d");
    return 0;
}

static void run(void) {
    char *argv[] = {"inspect", model_dir, NULL};
    cmd_inspect(2, argv);
    Checkpoint ckpt;
    checkpoint_open(&ckpt, model_dir);
    real values[6];
    for (int i = 0; i < ckpt.n_tensors; i++) checkpoint_read(&ckpt, &ckpt.tensors[i], values);
    checkpoint_close(&ckpt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[4096];
    fuzz_write_file(path, model_dir, "model.safetensors.index.json", data, size);
    fuzz_begin(model_dir);
    if (setjmp(fuzz_on_fatal) == 0) run();
    fuzz_end();
    return 0;
}
