/*
 * bench_merge_stage.c - inputs and the I/O floor for tests/merge/bench_merge_stage.sh (not a test).
 *
 *   bench_merge_stage make DIR     writes DIR/model (a Llama-3.2-1B-shaped model: hidden 2048,
 *                                  16 layers, ffn 8192, vocab 128256, heads 32/8, tied
 *                                  embeddings, random bf16 weights, 2.5 GB) and DIR/sft.h5,
 *                                  DIR/pref.h5 (r=16 adapters on all seven projections, random
 *                                  A and B), streaming: no tensor is held whole in memory
 *   mpirun -np N bench_merge_stage floor DIR OUT
 *                                  the I/O floor of a merge: every rank reads its rows of every
 *                                  base tensor and the adapters' factors a merge reads, rounds to
 *                                  bf16 and writes its rows into a chunked parallel-HDF5 file
 *                                  exactly as the merge stage does, without merging anything
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/h5file.h"
#include "io/safetensors.h"
#include "merge/merge.h"
#include "merge/merge_stage.h"
#include "model/model.h"
#include "util/common.h"
#include "util/rng.h"

static const char *const LLAMA_1B_CONFIG =
    "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n"
    "  \"vocab_size\": 128256,\n  \"hidden_size\": 2048,\n  \"intermediate_size\": 8192,\n"
    "  \"num_hidden_layers\": 16,\n  \"num_attention_heads\": 32,\n"
    "  \"num_key_value_heads\": 8,\n  \"head_dim\": 64,\n  \"max_position_embeddings\": 131072,\n"
    "  \"rms_norm_eps\": 1e-05,\n  \"rope_theta\": 500000.0,\n  \"tie_word_embeddings\": true,\n"
    "  \"hidden_act\": \"silu\",\n  \"torch_dtype\": \"bfloat16\"\n}\n";

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) PAFT_FATAL("%s: cannot write", path);
}

/* model.safetensors, one tensor at a time: header from the tensor list, then bf16 data. */
static void write_model(const char *dir) {
    char *config_path = paft_path_join(dir, "config.json");
    write_text(config_path, LLAMA_1B_CONFIG);
    ModelConfig c;
    model_config_load(&c, config_path);
    TensorView *views;
    int n = model_weight_views(&c, &views);
    /* header: tensors back to back in list order */
    size_t cap = 1 << 20, len = 0;
    char *header = paft_malloc(cap);
    len += (size_t)snprintf(header + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        uint64_t bytes = (uint64_t)(views[i].rows * views[i].cols) * 2;
        if (views[i].cols == 1)
            len += (size_t)snprintf(header + len, cap - len,
                                    ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%lld],\"data_offsets\":[%llu,%llu]}",
                                    views[i].name, (long long)views[i].rows,
                                    (unsigned long long)offset, (unsigned long long)(offset + bytes));
        else
            len += (size_t)snprintf(header + len, cap - len,
                                    ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%lld,%lld],\"data_offsets\":[%llu,%llu]}",
                                    views[i].name, (long long)views[i].rows, (long long)views[i].cols,
                                    (unsigned long long)offset, (unsigned long long)(offset + bytes));
        offset += bytes;
    }
    len += (size_t)snprintf(header + len, cap - len, "}");
    while (len % 8) header[len++] = ' ';
    char *path = paft_path_join(dir, "model.safetensors");
    FILE *f = fopen(path, "wb");
    if (!f) PAFT_FATAL("%s: cannot create", path);
    uint64_t hlen = len;
    if (fwrite(&hlen, 8, 1, f) != 1 || fwrite(header, 1, len, f) != len) PAFT_FATAL("%s: write", path);
    Rng rng;
    rng_seed(&rng, 1);
    enum { PIECE = 1 << 20 };
    uint16_t *buf = paft_malloc(PIECE * sizeof(uint16_t));
    for (int i = 0; i < n; i++) {
        int64_t numel = views[i].rows * views[i].cols;
        const int is_norm = views[i].cols == 1;
        for (int64_t done = 0; done < numel; done += PIECE) {
            int64_t m = PAFT_MIN((int64_t)PIECE, numel - done);
            for (int64_t k = 0; k < m; k++) {
                double u = 2 * rng_uniform(&rng) - 1; /* U(-1,1) * 0.03: a weight's scale */
                buf[k] = fp32_to_bf16((float)((is_norm ? 1.0 : 0.0) + 0.03 * u));
            }
            if (fwrite(buf, 2, (size_t)m, f) != (size_t)m) PAFT_FATAL("%s: write failed", path);
        }
    }
    if (fclose(f) != 0) PAFT_FATAL("%s: write failed", path);
    printf("wrote %s (%d tensors, %.2f GB)\n", path, n, (double)offset / 1e9);
    free(buf);
    free(path);
    free(header);
    free(views);
    free(config_path);
    model_config_free(&c);
}

/* An adapter file as adapter_write lays it out (without loading the model). */
static void write_adapter(const char *dir, const char *name, const char *stage, uint64_t seed) {
    char *model_dir = paft_path_join(dir, "model");
    char *config_path = paft_path_join(model_dir, "config.json");
    ModelConfig c;
    model_config_load(&c, config_path);
    TensorView *views;
    int n = model_weight_views(&c, &views);
    Checkpoint ckpt;
    checkpoint_open(&ckpt, model_dir);
    char fingerprint[17];
    model_fingerprint(&ckpt, views, n, fingerprint);
    checkpoint_close(&ckpt);
    char *path = paft_path_join(dir, name);
    const int r = 16;
    H5File f;
    h5_create(&f, path, MPI_COMM_SELF);
    h5_set_attr_string(&f, "format", "paft-adapter-1");
    h5_set_attr_string(&f, "paft_version", PAFT_VERSION);
    h5_set_attr_string(&f, "stage", stage);
    h5_set_attr_int(&f, "step", 1000);
    h5_set_attr_int(&f, "r", r);
    h5_set_attr_double(&f, "alpha", 16);
    h5_set_attr_int(&f, "rslora", 0);
    h5_set_attr_string(&f, "targets", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj");
    h5_set_attr_string(&f, "base_fingerprint", fingerprint);
    h5_set_attr_string(&f, "base_model", model_dir);
    h5_set_attr_string(&f, "folded_adapter", "");
    Rng rng;
    rng_seed(&rng, seed);
    char ds[256];
    for (int l = 0; l < c.num_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            const int in = proj_in(&c, (Proj)p), out = proj_out(&c, (Proj)p);
            real *A = paft_malloc((size_t)r * (size_t)in * sizeof(real));
            real *B = paft_malloc((size_t)out * (size_t)r * sizeof(real));
            for (int64_t i = 0; i < (int64_t)r * in; i++) A[i] = (real)((2 * rng_uniform(&rng) - 1) / sqrt(in));
            for (int64_t i = 0; i < (int64_t)out * r; i++) B[i] = (real)(0.002 * (2 * rng_uniform(&rng) - 1));
            snprintf(ds, sizeof ds, "/lora/model.layers.%d.%s/A", l, proj_module_name((Proj)p));
            H5Block ba = h5_whole(r, in, 1), bb = h5_whole(out, r, 1);
            h5_write_real(&f, ds, &ba, A);
            snprintf(ds, sizeof ds, "/lora/model.layers.%d.%s/B", l, proj_module_name((Proj)p));
            h5_write_real(&f, ds, &bb, B);
            free(A);
            free(B);
        }
    h5_finish(&f);
    printf("wrote %s\n", path);
    free(path);
    free(views);
    free(config_path);
    free(model_dir);
    model_config_free(&c);
}

/* The merge stage's I/O without the merge: read rows (+ the factors a merge reads), write rows. */
static void floor_run(const char *dir, const char *out_path) {
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    double t0 = MPI_Wtime();
    char *model_dir = paft_path_join(dir, "model");
    char *config_path = paft_path_join(model_dir, "config.json");
    ModelConfig c;
    model_config_load(&c, config_path);
    TensorView *views;
    int n = model_weight_views(&c, &views);
    Checkpoint ckpt;
    checkpoint_open(&ckpt, model_dir);
    H5File adapters[2];
    const char *names[2] = {"sft.h5", "pref.h5"};
    for (int a = 0; a < 2; a++) {
        char *p = paft_path_join(dir, names[a]);
        h5_open_read(&adapters[a], p, MPI_COMM_WORLD);
        free(p);
    }
    H5File out;
    h5_create(&out, out_path, MPI_COMM_WORLD);
    h5_create_group(&out, "/weights");
    double read_s = 0, write_s = 0;
    const int64_t piece_elems = (int64_t)1 << 22;
    char ds[256];
    for (int i = 0; i < n; i++) {
        const TensorView *v = &views[i];
        const TensorInfo *t = checkpoint_find(&ckpt, v->name);
        snprintf(ds, sizeof ds, "/weights/%s", v->name);
        h5_create_float_dataset(&out, ds, v->rows, v->cols == 1 ? 0 : v->cols, H5_BFLOAT16);
        int64_t row0, rows;
        merge_row_range(v->rows, rank, size, &row0, &rows);
        int layer = -1, consumed = 0;
        int adapted = sscanf(v->name, "model.layers.%d.%n", &layer, &consumed) == 1 &&
                      strstr(v->name, "_proj.weight") != NULL;
        /* adapted tensors are handled whole per rank, the others in pieces, as the stage does */
        int64_t piece = adapted ? PAFT_MAX(rows, (int64_t)1) : PAFT_MAX((int64_t)1, piece_elems / v->cols);
        int64_t most = adapted ? 1 : ((v->rows + size - 1) / size + piece - 1) / piece;
        real *buf = paft_malloc((size_t)PAFT_MAX(PAFT_MIN(piece, rows) * v->cols, 1) * sizeof(real));
        uint16_t *bits = paft_malloc((size_t)PAFT_MAX(PAFT_MIN(piece, rows) * v->cols, 1) * 2);
        if (adapted) {
            char module[200];
            snprintf(module, sizeof module, "%.*s", (int)(strlen(v->name) - strlen(".weight")), v->name);
            double a0 = MPI_Wtime();
            for (int a = 0; a < 2; a++) {
                int64_t da[2], db[2];
                char name[256];
                snprintf(name, sizeof name, "/lora/%s/A", module);
                h5_shape(&adapters[a], name, da);
                real *A = paft_malloc((size_t)(da[0] * da[1]) * sizeof(real));
                H5Block wa = h5_whole(da[0], da[1], 1);
                h5_read_real(&adapters[a], name, &wa, A);
                snprintf(name, sizeof name, "/lora/%s/B", module);
                h5_shape(&adapters[a], name, db);
                real *B = paft_malloc((size_t)PAFT_MAX(rows * db[1], 1) * sizeof(real));
                H5Block wb = {db[0], db[1], row0, 0, rows, db[1]};
                h5_read_real(&adapters[a], name, &wb, B);
                free(A);
                free(B);
            }
            read_s += MPI_Wtime() - a0;
        }
        for (int64_t k = 0; k < most; k++) {
            int64_t start = PAFT_MIN(k * piece, rows), count = PAFT_MIN(piece, rows - start);
            double a = MPI_Wtime();
            if (count > 0) checkpoint_read_block(&ckpt, t, row0 + start, count, 0, v->cols, buf);
            double b = MPI_Wtime();
            for (int64_t e = 0; e < count * v->cols; e++) bits[e] = fp32_to_bf16((float)buf[e]);
            int64_t gcols = v->cols == 1 ? 0 : v->cols;
            H5Block blk = {v->rows, gcols, row0 + start, 0, count, gcols};
            h5_write_float_block(&out, ds, &blk, H5_BFLOAT16, bits);
            read_s += b - a;
            write_s += MPI_Wtime() - b;
        }
        free(buf);
        free(bits);
    }
    double c0 = MPI_Wtime();
    h5_finish(&out);
    write_s += MPI_Wtime() - c0;
    for (int a = 0; a < 2; a++) h5_close(&adapters[a]);
    checkpoint_close(&ckpt);
    if (rank == 0)
        printf("floor: %d ranks: %.2f s (rank 0: read %.2f s, write %.2f s)\n", size,
               MPI_Wtime() - t0, read_s, write_s);
    free(views);
    free(config_path);
    free(model_dir);
    model_config_free(&c);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (argc >= 3 && strcmp(argv[1], "make") == 0) {
        char *model = paft_path_join(argv[2], "model");
        if (mkdir(argv[2], 0777) != 0 && errno != EEXIST) PAFT_FATAL("%s: cannot create", argv[2]);
        if (mkdir(model, 0777) != 0 && errno != EEXIST) PAFT_FATAL("%s: cannot create", model);
        write_model(model);
        write_adapter(argv[2], "sft.h5", "sft", 7);
        write_adapter(argv[2], "pref.h5", "dpo", 8);
        free(model);
    } else if (argc >= 4 && strcmp(argv[1], "floor") == 0) {
        floor_run(argv[2], argv[3]);
    } else {
        PAFT_FATAL("usage: bench_merge_stage make DIR | bench_merge_stage floor DIR OUT");
    }
    MPI_Finalize();
    return 0;
}
