/*
 * make_merge_inputs.c - the inputs of the merge-stage tests, written through paft's own writers
 * (tiny_model_write, adapter_write) so they are exactly what training produces.
 *
 * usage: make_merge_inputs OUTDIR
 *
 * Two model sets, each a base and two adapters with DIFFERENT r, alpha and targets (a module one
 * adapter does not adapt has delta 0 there), random LoRA factors (B != 0), and a sparse SFT delta
 * (half of the rows of every SFT B are zero, like an L1-trained delta):
 *   llama/   LlamaForCausalLM, GQA, bf16 weights, untied head
 *            sft: r=4 alpha=8 on all seven projections; pref: r=2 alpha=4 rslora on q,v,o,down
 *   qwen/    Qwen2ForCausalLM, q/k/v biases, tied embeddings, fp32 weights, a 66000-token
 *            vocabulary (the embedding is copied in two pieces on one rank)
 *            sft: r=3 alpha=3 on q,k,v; pref: r=5 alpha=10 on all seven
 * with OUTDIR/<set>/merge.ini pointing at them, and bad inputs next to llama/ (each differs from a
 * good file in one way): bad_truncated.h5, bad_other_base.h5 (trained on another base),
 * bad_rank_attr.h5 (attribute r disagrees with the datasets), bad_shape.h5 (one B of the wrong
 * shape), bad_folded.h5 (folded_adapter set), bad_nan.h5 (a NaN in an A), bad_format.h5 (an HDF5
 * file that is not an adapter), bad_format_array.h5, bad_step_array.h5, bad_alpha_array.h5 (the
 * attribute holds several values), bad_r_null.h5 (attribute r holds none), not_hdf5.h5 (text);
 * and PEFT adapter directories written from four of them: sft_peft/, pref_peft/, bad_nan_peft/,
 * bad_other_base_peft/.
 */
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/adapter.h"
#include "model/model.h"
#include "model/peft.h"
#include "model/tiny_model.h"
#include "util/common.h"
#include "util/rng.h"

static char *join(const char *a, const char *b) { return paft_path_join(a, b); }

static void make_dir(const char *path) {
    if (mkdir(path, 0777) != 0 && !paft_is_directory(path)) PAFT_FATAL("%s: cannot create", path);
}

/* An adapter with random factors: A ~ U(+-1/sqrt(in)), B ~ N(0, 0.1^2); with sparse_rows, every
 * other row of B is zero (so are those rows of delta). */
static void write_adapter(const char *model_dir, const char *path, int r, double alpha, int rslora,
                          const char *targets, const char *stage, int sparse_rows, uint64_t seed) {
    LoraConfig lora;
    lora_config_init(&lora, r, alpha, rslora, targets, "make_merge_inputs");
    Model m;
    model_load(&m, model_dir, &lora, seed, MPI_COMM_SELF);
    Rng rng;
    rng_seed(&rng, seed * 7 + 1);
    for (int l = 0; l < m.config.num_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            if (!lora.targets[p]) continue;
            const int in = proj_in(&m.config, p), out = proj_out(&m.config, p);
            for (int64_t i = 0; i < (int64_t)r * in; i++)
                m.lora_params[l].A[p][i] = (real)((2 * rng_uniform(&rng) - 1) / sqrt((double)in));
            for (int o = 0; o < out; o++)
                for (int k = 0; k < r; k++)
                    m.lora_params[l].B[p][(int64_t)o * r + k] =
                        (sparse_rows && o % 2 == 1) ? 0 : (real)(0.1 * rng_normal(&rng));
        }
    AdapterInfo info;
    memset(&info, 0, sizeof info);
    snprintf(info.stage, sizeof info.stage, "%s", stage);
    info.step = 10;
    adapter_write(path, MPI_COMM_SELF, &m, &info, NULL, NULL, NULL, 1);
    model_free(&m);
}

static void copy_file(const char *from, const char *to, long keep_bytes) {
    size_t len = 0;
    char *data = paft_read_file(from, (size_t)1 << 30, &len);
    FILE *f = fopen(to, "wb");
    size_t n = keep_bytes >= 0 ? (size_t)keep_bytes : len;
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) PAFT_FATAL("%s: cannot write", to);
    free(data);
}

/* Open an HDF5 file for editing on this process alone (the default, serial driver). */
static hid_t edit(const char *path) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    CHECK_H5(f);
    return f;
}

static void set_int_attr(hid_t file, const char *name, int64_t value) {
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    CHECK_H5(attr);
    CHECK_H5(H5Awrite(attr, H5T_NATIVE_INT64, &value));
    CHECK_H5(H5Aclose(attr));
}

static void set_string_attr(hid_t file, const char *name, const char *value) {
    CHECK_H5(H5Adelete(file, name));
    hid_t type = H5Tcopy(H5T_C_S1);
    CHECK_H5(H5Tset_size(type, strlen(value) + 1));
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = H5Acreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    CHECK_H5(attr);
    CHECK_H5(H5Awrite(attr, type, value));
    CHECK_H5(H5Aclose(attr));
    CHECK_H5(H5Sclose(space));
    CHECK_H5(H5Tclose(type));
}

/* Replace attribute NAME by one of N values of TYPE (N == 0: a null dataspace, no value at all):
 * paft's readers must refuse it instead of reading N values into room for one. */
static void set_array_attr(hid_t file, const char *name, hid_t type, hsize_t n, const void *values) {
    CHECK_H5(H5Adelete(file, name));
    hid_t space = n > 0 ? H5Screate_simple(1, &n, NULL) : H5Screate(H5S_NULL);
    CHECK_H5(space);
    hid_t attr = H5Acreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    CHECK_H5(attr);
    if (n > 0) CHECK_H5(H5Awrite(attr, type, values));
    CHECK_H5(H5Aclose(attr));
    CHECK_H5(H5Sclose(space));
}

/* Replace dataset NAME by a float dataset of rows x cols filled with `value`. */
static void replace_dataset(hid_t file, const char *name, int64_t rows, int64_t cols, float value) {
    CHECK_H5(H5Ldelete(file, name, H5P_DEFAULT));
    hsize_t dims[2] = {(hsize_t)rows, (hsize_t)cols};
    hid_t space = H5Screate_simple(2, dims, NULL);
    hid_t d = H5Dcreate2(file, name, H5T_NATIVE_FLOAT, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    CHECK_H5(d);
    float *x = paft_malloc((size_t)(rows * cols) * sizeof(float));
    for (int64_t i = 0; i < rows * cols; i++) x[i] = value;
    CHECK_H5(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x));
    free(x);
    CHECK_H5(H5Dclose(d));
    CHECK_H5(H5Sclose(space));
}

static void write_ini(const char *dir, const char *model, const char *sft, const char *pref) {
    char *path = join(dir, "merge.ini");
    FILE *f = fopen(path, "w");
    if (!f) PAFT_FATAL("%s: cannot create", path);
    fprintf(f, "[model]\npath = %s\n\n[merge]\nsft_adapter = %s\npref_adapter = %s\nout = %s/merged.h5\n",
            model, sft, pref, dir);
    fclose(f);
    free(path);
}

/* Tokenizer files beside the model, so that export has something to copy. */
static void write_tokenizer_files(const char *model_dir) {
    const char *files[2][2] = {
        {"tokenizer_config.json", "{\"model_max_length\": 4096}\n"},
        {"generation_config.json", "{\"bos_token_id\": 1, \"eos_token_id\": 2}\n"},
    };
    for (int i = 0; i < 2; i++) {
        char *path = join(model_dir, files[i][0]);
        FILE *f = fopen(path, "w");
        if (!f || fputs(files[i][1], f) < 0 || fclose(f) != 0) PAFT_FATAL("%s: cannot write", path);
        free(path);
    }
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (argc != 2) PAFT_FATAL("usage: make_merge_inputs OUTDIR");
    const char *out = argv[1];
    make_dir(out);
    char *bad_out = join(out, "bad_out"); /* where the bad-input tests point merge.out */
    make_dir(bad_out);
    free(bad_out);

    /* ---- llama: bf16, GQA, untied ---- */
    char *llama = join(out, "llama");
    make_dir(llama);
    char *llama_model = join(llama, "model");
    TinyModelSpec spec = tiny_model_default(); /* 2 layers, hidden 32, heads 4/2, ffn 64 */
    spec.vocab_size = 96;
    spec.bf16 = 1;
    tiny_model_write(llama_model, &spec, 11);
    write_tokenizer_files(llama_model);
    char *sft = join(llama, "sft.h5"), *pref = join(llama, "pref.h5");
    write_adapter(llama_model, sft, 4, 8, 0, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                  "sft", 1, 101);
    write_adapter(llama_model, pref, 2, 4, 1, "q_proj,v_proj,o_proj,down_proj", "dpo", 0, 202);
    write_ini(llama, llama_model, sft, pref);

    /* ---- qwen: biases, tied embeddings, fp32, a large vocabulary ---- */
    char *qwen = join(out, "qwen");
    make_dir(qwen);
    char *qwen_model = join(qwen, "model");
    TinyModelSpec q = tiny_model_default();
    q.architecture = "Qwen2ForCausalLM";
    q.vocab_size = 66000;
    q.hidden_size = 64;
    q.num_heads = 4;
    q.num_kv_heads = 2;
    q.intermediate_size = 96;
    q.tie_word_embeddings = 1;
    tiny_model_write(qwen_model, &q, 12);
    char *qsft = join(qwen, "sft.h5"), *qpref = join(qwen, "pref.h5");
    write_adapter(qwen_model, qsft, 3, 3, 0, "q_proj,k_proj,v_proj", "sft", 1, 303);
    write_adapter(qwen_model, qpref, 5, 10, 0, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                  "dpo", 0, 404);
    write_ini(qwen, qwen_model, qsft, qpref);

    /* ---- bad inputs, each one change away from a good llama adapter ---- */
    char *path;
    path = join(llama, "bad_truncated.h5");
    {
        struct stat st;
        if (stat(pref, &st) != 0) PAFT_FATAL("%s: cannot stat", pref);
        copy_file(pref, path, (long)(st.st_size / 2));
    }
    free(path);

    char *other_model = join(out, "other_model");
    tiny_model_write(other_model, &spec, 99); /* same architecture, other weights */
    path = join(llama, "bad_other_base.h5");
    write_adapter(other_model, path, 2, 4, 1, "q_proj,v_proj,o_proj,down_proj", "dpo", 0, 505);
    free(path);

    path = join(llama, "bad_rank_attr.h5");
    copy_file(pref, path, -1);
    hid_t f = edit(path);
    set_int_attr(f, "r", 3);
    CHECK_H5(H5Fclose(f));
    free(path);

    path = join(llama, "bad_shape.h5");
    copy_file(pref, path, -1);
    f = edit(path);
    replace_dataset(f, "/lora/model.layers.1.mlp.down_proj/B", 31, 2, 0.01f);
    CHECK_H5(H5Fclose(f));
    free(path);

    path = join(llama, "bad_folded.h5");
    copy_file(pref, path, -1);
    f = edit(path);
    set_string_attr(f, "folded_adapter", "runs/x/sft/adapter.h5");
    CHECK_H5(H5Fclose(f));
    free(path);

    path = join(llama, "bad_nan.h5");
    copy_file(pref, path, -1);
    f = edit(path);
    replace_dataset(f, "/lora/model.layers.0.self_attn.v_proj/A", 2, 32, NAN);
    CHECK_H5(H5Fclose(f));
    free(path);

    path = join(llama, "bad_format.h5");
    copy_file(pref, path, -1);
    f = edit(path);
    set_string_attr(f, "format", "something-else-1");
    CHECK_H5(H5Fclose(f));
    free(path);

    /* attributes holding several values (or none) where paft writes one */
    path = join(llama, "bad_format_array.h5");
    copy_file(pref, path, -1);
    f = edit(path);
    {
        const char formats[2][16] = {"paft-adapter-1", "paft-adapter-1"};
        hid_t type = H5Tcopy(H5T_C_S1);
        CHECK_H5(type);
        CHECK_H5(H5Tset_size(type, sizeof formats[0]));
        set_array_attr(f, "format", type, 2, formats);
        CHECK_H5(H5Tclose(type));
    }
    CHECK_H5(H5Fclose(f));
    free(path);

    path = join(llama, "bad_step_array.h5");
    copy_file(pref, path, -1);
    f = edit(path);
    {
        int64_t steps[64];
        for (int i = 0; i < 64; i++) steps[i] = 10 + i;
        set_array_attr(f, "step", H5T_NATIVE_INT64, 64, steps);
    }
    CHECK_H5(H5Fclose(f));
    free(path);

    path = join(llama, "bad_alpha_array.h5");
    copy_file(pref, path, -1);
    f = edit(path);
    {
        const double alphas[3] = {4, 4, 4};
        set_array_attr(f, "alpha", H5T_NATIVE_DOUBLE, 3, alphas);
    }
    CHECK_H5(H5Fclose(f));
    free(path);

    path = join(llama, "bad_r_null.h5");
    copy_file(pref, path, -1);
    f = edit(path);
    set_array_attr(f, "r", H5T_NATIVE_INT64, 0, NULL);
    CHECK_H5(H5Fclose(f));
    free(path);

    path = join(llama, "not_hdf5.h5");
    FILE *txt = fopen(path, "w");
    if (!txt || fputs("not an HDF5 file\n", txt) < 0 || fclose(txt) != 0) PAFT_FATAL("%s: cannot write", path);
    free(path);

    /* PEFT adapter directories (merge.*_adapter takes them too): paft's copies of the two good
     * llama adapters, and of two bad ones (a NaN; another base's fingerprint in the metadata) */
    const char *peft_copies[4][2] = {{"sft.h5", "sft_peft"},
                                     {"pref.h5", "pref_peft"},
                                     {"bad_nan.h5", "bad_nan_peft"},
                                     {"bad_other_base.h5", "bad_other_base_peft"}};
    for (int i = 0; i < 4; i++) {
        char *from = join(llama, peft_copies[i][0]), *to = join(llama, peft_copies[i][1]);
        peft_write_adapter(from, to);
        free(from);
        free(to);
    }

    free(other_model);
    free(llama);
    free(llama_model);
    free(sft);
    free(pref);
    free(qwen);
    free(qwen_model);
    free(qsft);
    free(qpref);
    printf("make_merge_inputs: wrote %s\n", out);
    MPI_Finalize();
    return 0;
}
