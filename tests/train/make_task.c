/* make_task.c - writes DIR/model (a tiny HF model), DIR/{sft,pref}_{train,val}.bin (the generated
 * tasks) and DIR/task.ini (a configuration using them), for the shell-driven training tests. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "data/synthetic.h"
#include "model/tiny_model.h"
#include "util/common.h"

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: make_task DIR [MODEL_SEED [PROMPT_LEN]]\n");
        return 2;
    }
    uint64_t model_seed = argc >= 3 ? strtoull(argv[2], NULL, 10) : 5;
    int prompt_len = argc >= 4 ? atoi(argv[3]) : 0; /* 0: random lengths */
    const char *dir = argv[1];
    mkdir(dir, 0777);
    char path[1024];
    TinyModelSpec spec = tiny_model_default();
    snprintf(path, sizeof path, "%s/model", dir);
    tiny_model_write(path, &spec, model_seed);
    snprintf(path, sizeof path, "%s/sft_train.bin", dir);
    synthetic_write_sft(path, 256, 1, 77, prompt_len, SYNTH_ALL);
    snprintf(path, sizeof path, "%s/pref_train.bin", dir);
    synthetic_write_pref(path, 256, 3, 77, prompt_len, SYNTH_ALL);
    snprintf(path, sizeof path, "%s/task.ini", dir);
    FILE *f = fopen(path, "w");
    fprintf(f,
            "[model]\npath = %s/model\n[lora]\nr = 4\nalpha = 8\n"
            "[sft]\ndata = %s/sft_train.bin\nbatch = 8\nmicro_batch = 4\nseq_len = 24\n"
            "lr = 1e-2\nl1 = 1e-4\n"
            "[pref]\ndata = %s/pref_train.bin\nbatch = 8\nmicro_batch = 4\nseq_len = 24\n"
            "lr = 5e-3\n"
            "[output]\ndir = %s/run\ncheckpoint_every = 0\n",
            dir, dir, dir, dir);
    fclose(f);
    MPI_Finalize();
    return 0;
}
