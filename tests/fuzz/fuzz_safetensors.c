/*
 * fuzz_safetensors.c - a single .safetensors file: `paft inspect FILE` (the dispatch by content
 * and the listing), then the reader the model loader uses: open, every float tensor read whole and
 * as a block, integer tensors through checkpoint_read_int32.
 */
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "fuzz_harness.h"
#include "io/safetensors.h"

static const char *dir;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    dir = fuzz_init();
    return 0;
}

/* Reading more than this per tensor is the loader's job on real models, not the fuzzer's. */
#define READ_LIMIT ((int64_t)1 << 20)

static void run(const char *path) {
    char *argv[] = {"inspect", (char *)path, NULL};
    cmd_inspect(2, argv);

    Checkpoint ckpt;
    checkpoint_open(&ckpt, path);
    for (int i = 0; i < ckpt.n_tensors; i++) {
        const TensorInfo *t = &ckpt.tensors[i];
        if (checkpoint_find(&ckpt, t->name) != t) abort(); /* sorted and unique */
        if (t->numel > READ_LIMIT) continue;
        if (t->dtype == DTYPE_I32 || t->dtype == DTYPE_I64) {
            int32_t *ids = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *ids);
            checkpoint_read_int32(&ckpt, t, ids);
            free(ids);
            continue;
        }
        if (t->dtype != DTYPE_F32 && t->dtype != DTYPE_F16 && t->dtype != DTYPE_BF16 &&
            t->dtype != DTYPE_F64)
            continue;
        real *values = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *values);
        checkpoint_read(&ckpt, t, values);
        int64_t rows, cols;
        tensor_as_2d(t, &rows, &cols);
        if (rows > 1 && cols > 1) /* the tensor-parallel reader: a block in the middle */
            checkpoint_read_block(&ckpt, t, rows / 2, rows - rows / 2, cols / 2, cols - cols / 2,
                                  values);
        free(values);
    }
    (void)checkpoint_parameter_count(&ckpt);
    checkpoint_close(&ckpt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[4096];
    fuzz_write_file(path, dir, "model.safetensors", data, size);
    fuzz_begin(path);
    if (setjmp(fuzz_on_fatal) == 0) run(path);
    fuzz_end();
    return 0;
}
