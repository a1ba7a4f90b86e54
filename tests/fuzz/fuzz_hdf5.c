/*
 * fuzz_hdf5.c - paft's HDF5 files (adapter, training checkpoint, merged model), structure-aware.
 *
 * Mutating an HDF5 file byte by byte mostly exercises the HDF5 library's own parser (its crashes
 * on garbage are HDF5's business). What paft owns is what it does with a file HDF5 reads without
 * complaint: attributes of the wrong type, shape or value, datasets of the wrong shape or type or
 * of a huge declared shape that a tiny file can hold (chunked, nothing allocated), missing and
 * extra objects. So the input is a recipe: the harness writes a well-formed file of a tiny model
 * (2 layers, LoRA r = 2 on q_proj and v_proj) through the HDF5 API, and every attribute and
 * dataset consumes a byte that keeps it as paft writes it or bends it (tests/fuzz/README.md).
 * Then every reader runs on it: `paft inspect`, adapter_delta_sparsity, and, as training and
 * `paft eval` use them, adapter_read (with moments for a checkpoint), adapter_fold_into_base,
 * and model_load of a merged model.
 */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "fuzz_harness.h"
#include "io/adapter.h"
#include "io/h5file.h"
#include "io/merged_h5.h"
#include "model/model.h"
#include "model/model_config.h"

static const char *TINY_CONFIG =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 16, \"hidden_size\": 8, "
    "\"intermediate_size\": 12, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, "
    "\"num_key_value_heads\": 1, \"rms_norm_eps\": 1e-05, \"max_position_embeddings\": 32}";
#define LORA_R 2
#define LORA_ALPHA 4.0
#define LORA_TARGETS "q_proj,v_proj"

static const char *dir;
static FILE *sink;
static Model model; /* the tiny model every adapter is read into */

typedef struct {
    hid_t file;
    FuzzBytes in;
} Gen;

/* ---- attributes ------------------------------------------------------------------------------ */

static hid_t string_type(size_t len, int variable) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, variable ? H5T_VARIABLE : (len ? len : 1));
    return t;
}

/* An attribute with `n` values (n 0: a null dataspace, 1: scalar) of `type` from `value`. */
static void put_attr(Gen *g, const char *name, hid_t type, int n, const void *value) {
    hsize_t dims[1] = {(hsize_t)n};
    hid_t space = n == 0 ? H5Screate(H5S_NULL)
                         : n == 1 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, dims, NULL);
    hid_t attr = H5Acreate2(g->file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr >= 0) {
        if (n > 0) H5Awrite(attr, type, value);
        H5Aclose(attr);
    }
    H5Sclose(space);
}

/* A string attribute: as paft writes it, or fuzzed text, an integer, an array, a null space,
 * a variable-length string, or absent. */
static void gen_attr_string(Gen *g, const char *name, const char *value) {
    uint8_t mode = fuzz_u8(&g->in) % 12;
    char text[64];
    if (mode <= 5) {
        hid_t t = string_type(strlen(value) + 1, 0);
        put_attr(g, name, t, 1, value);
        H5Tclose(t);
    } else if (mode == 6) { /* other text, possibly without a terminator */
        size_t len = fuzz_u8(&g->in) % sizeof text;
        for (size_t i = 0; i < len; i++) text[i] = (char)fuzz_u8(&g->in);
        hid_t t = string_type(len, 0);
        if (fuzz_u8(&g->in) & 1) H5Tset_strpad(t, H5T_STR_NULLPAD);
        put_attr(g, name, t, 1, text);
        H5Tclose(t);
    } else if (mode == 7) {
        int64_t v = (int64_t)fuzz_u64(&g->in);
        put_attr(g, name, H5T_NATIVE_INT64, 1, &v);
    } else if (mode == 8) { /* an array of strings */
        char values[3][16] = {"a", "b", "c"};
        hid_t t = string_type(16, 0);
        put_attr(g, name, t, 3, values);
        H5Tclose(t);
    } else if (mode == 9) {
        hid_t t = string_type(4, 0);
        put_attr(g, name, t, 0, NULL);
        H5Tclose(t);
    } else if (mode == 10) {
        const char *p = value;
        hid_t t = string_type(0, 1);
        put_attr(g, name, t, 1, &p);
        H5Tclose(t);
    } /* 11: absent */
}

/* A number attribute: right, another value, the other numeric class, a string, an array, absent. */
static void gen_attr_number(Gen *g, const char *name, double value, int is_int) {
    uint8_t mode = fuzz_u8(&g->in) % 10;
    int64_t iv = (int64_t)value;
    double dv = value;
    if (mode == 6) {
        iv = (int64_t)fuzz_u64(&g->in);
        memcpy(&dv, &iv, sizeof dv);
        if (fuzz_u8(&g->in) & 1) dv = (double)(int8_t)iv; /* small values, signs */
        if (fuzz_u8(&g->in) & 1) iv = (int8_t)iv;
    }
    if (mode <= 6) {
        if (is_int) put_attr(g, name, H5T_NATIVE_INT64, 1, &iv);
        else put_attr(g, name, H5T_NATIVE_DOUBLE, 1, &dv);
    } else if (mode == 7) {
        if (is_int) put_attr(g, name, H5T_NATIVE_DOUBLE, 1, &dv);
        else put_attr(g, name, H5T_NATIVE_INT64, 1, &iv);
    } else if (mode == 8) {
        int64_t values[64] = {0};
        put_attr(g, name, H5T_NATIVE_INT64, 1 + fuzz_u8(&g->in) % 64, values);
    } /* 9: absent */
}

/* ---- datasets -------------------------------------------------------------------------------- */

/* A dataset that should be rows x cols of floats (cols 0: 1-D). Mostly right, with values that
 * may be NaN or inf; or of a fuzzed shape (1-3 dimensions up to 2^40, chunked so that nothing is
 * stored), of integers, of doubles, of paft's bf16, or absent. */
static void gen_dataset(Gen *g, const char *name, int64_t rows, int64_t cols, hid_t good_type) {
    uint8_t mode = fuzz_u8(&g->in) % 14;
    if (mode == 13) return;
    int ndim = cols > 0 ? 2 : 1;
    hsize_t dims[3] = {(hsize_t)rows, (hsize_t)cols, 1};
    hid_t type = H5Tcopy(good_type);
    if (mode == 8) {
        ndim = 1 + fuzz_u8(&g->in) % 3;
        for (int d = 0; d < ndim; d++) {
            uint8_t k = fuzz_u8(&g->in);
            dims[d] = k < 128 ? k % 20 : (hsize_t)1 << (k % 41);
        }
    }
    if (mode == 9) type = H5Tcopy(H5T_NATIVE_INT32);
    if (mode == 10) type = H5Tcopy(H5T_NATIVE_DOUBLE);
    if (mode == 11) type = h5_bf16_type();
    if (mode == 12) type = H5Tcopy(H5T_NATIVE_FLOAT);
    hid_t space = H5Screate_simple(ndim, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hsize_t elements = 1;
    for (int d = 0; d < ndim; d++) elements *= dims[d];
    if (elements > 4096 || elements == 0) { /* chunked, nothing stored: a tiny file */
        hsize_t chunk[3];
        for (int d = 0; d < ndim; d++) chunk[d] = dims[d] > 16 ? 16 : dims[d] ? dims[d] : 1;
        H5Pset_chunk(dcpl, ndim, chunk);
    }
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t dset = H5Dcreate2(g->file, name, type, space, lcpl, dcpl, H5P_DEFAULT);
    if (dset >= 0 && elements > 0 && elements <= 4096) {
        float values[4096];
        for (hsize_t i = 0; i < elements; i++) values[i] = 0.01f * (float)(i % 7) - 0.02f;
        if (mode == 7) values[fuzz_u8(&g->in) % elements] = fuzz_u8(&g->in) & 1 ? NAN : INFINITY;
        H5Dwrite(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values);
    }
    if (dset >= 0) H5Dclose(dset);
    H5Pclose(lcpl);
    H5Pclose(dcpl);
    H5Sclose(space);
    H5Tclose(type);
}

/* A name under a group that paft may not expect: from the input, or a near miss. */
static void gen_extra(Gen *g, const char *group, const char *suffix, hid_t type) {
    if (fuzz_u8(&g->in) % 4 != 0) return;
    static const char *near[] = {"model.layers.2.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                                 "model.layers.99999.mlp.up_proj", "model.layers.-1.self_attn.q_proj",
                                 "model.layers.00.self_attn.q_proj", "lm_head"};
    char name[160], raw[24];
    uint8_t pick = fuzz_u8(&g->in);
    if (pick < 6 * 32) {
        snprintf(name, sizeof name, "%s/%s%s", group, near[pick % 6], suffix);
    } else {
        size_t len = 1 + fuzz_u8(&g->in) % 20;
        for (size_t i = 0; i < len; i++) {
            char c = (char)fuzz_u8(&g->in);
            raw[i] = c == '/' || c == '\0' || c == '.' ? '_' : c;
        }
        raw[len] = '\0';
        snprintf(name, sizeof name, "%s/%s%s", group, raw, suffix);
    }
    gen_dataset(g, name, 2, 8, type);
}

/* ---- the files --------------------------------------------------------------------------------*/

static void gen_lora(Gen *g, const char *prefix) {
    char name[256];
    for (int i = 0; i < model.n_lora_views; i++) {
        const TensorView *v = &model.lora_views[i];
        snprintf(name, sizeof name, "%s/%s", prefix, v->name);
        gen_dataset(g, name, v->global_rows, v->global_cols, H5T_NATIVE_FLOAT);
    }
    gen_extra(g, prefix, "/A", H5T_NATIVE_FLOAT);
}

static void gen_adapter(Gen *g, int checkpoint) {
    gen_attr_string(g, "format", "paft-adapter-1");
    gen_attr_string(g, "paft_version", PAFT_VERSION);
    gen_attr_string(g, "stage", "sft");
    gen_attr_number(g, "step", 3, 1);
    gen_attr_number(g, "r", LORA_R, 1);
    gen_attr_number(g, "alpha", LORA_ALPHA, 0);
    gen_attr_number(g, "rslora", 0, 1);
    gen_attr_string(g, "targets", LORA_TARGETS);
    gen_attr_string(g, "base_fingerprint", model.fingerprint);
    gen_attr_string(g, "base_model", "random:llama");
    gen_attr_string(g, "folded_adapter", "");
    gen_attr_number(g, "data_records", 5, 1);
    gen_attr_number(g, "data_crc32", 1234, 1);
    gen_lora(g, "/lora");
    if (checkpoint) {
        gen_lora(g, "/optim/m");
        gen_lora(g, "/optim/v");
        gen_attr_number(g, "optim_step", 3, 1);
        gen_attr_number(g, "epoch", 0, 1);
        gen_attr_number(g, "cursor", 2, 1);
        gen_attr_number(g, "seed", 42, 1);
    }
}

static void gen_stats(Gen *g, const char *tensor) {
    uint8_t mode = fuzz_u8(&g->in) % 8;
    if (mode == 7) return;
    char name[256];
    snprintf(name, sizeof name, "/stats/%s", tensor);
    if (mode == 6) { /* not a compound at all */
        gen_dataset(g, name, 1, 0, H5T_NATIVE_FLOAT);
        return;
    }
    MergedTensorStats s = {64, 0.5, 0.5, 0.25, 32, 32, 16, 64, 64, 1, 1, 0, 1, 1};
    if (mode >= 4) { /* fuzzed counts */
        s.numel = (int64_t)fuzz_u64(&g->in);
        s.small_sft = (int8_t)fuzz_u8(&g->in);
        s.small_pref = (int64_t)fuzz_u64(&g->in);
        s.small_merged = (int8_t)fuzz_u8(&g->in);
        uint64_t bits = fuzz_u64(&g->in);
        memcpy(&s.sparsity_sft, &bits, sizeof bits);
    }
    /* paft's own writer, called here outside fuzz_begin's protection: a PAFT_FATAL inside it
     * would end the whole campaign. It fails only where H5Dcreate2 does, on a missing /stats
     * group or a name already taken (a fuzzed extra tensor), so those cases skip the dataset. */
    if (H5Lexists(g->file, "/stats", H5P_DEFAULT) <= 0 ||
        H5Lexists(g->file, name, H5P_DEFAULT) != 0)
        return;
    H5File f = {.file = g->file, .comm = MPI_COMM_SELF, .path = name, .tmp_path = name};
    merged_write_stats(&f, tensor, &s, 1);
}

static void gen_merged(Gen *g) {
    gen_attr_string(g, "format", MERGED_FORMAT);
    gen_attr_string(g, "paft_version", PAFT_VERSION);
    char config[512];
    if (fuzz_u8(&g->in) % 4 == 0) /* the tiny model with other sizes: what model_load allocates */
        snprintf(config, sizeof config,
                 "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": %u, "
                 "\"hidden_size\": %u, \"intermediate_size\": %u, \"num_hidden_layers\": %u, "
                 "\"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"rms_norm_eps\": 1e-05}",
                 1 + fuzz_u32(&g->in) % 0x7fffffff, 2 * (1 + fuzz_u32(&g->in) % 0x3fffffff),
                 1 + fuzz_u32(&g->in) % 0x7fffffff, 1 + fuzz_u32(&g->in) % 99999);
    else
        snprintf(config, sizeof config, "%s", TINY_CONFIG);
    gen_attr_string(g, "config", config);
    gen_attr_string(g, "method", "ties");
    gen_attr_string(g, "parameters", "{\"method\": \"ties\"}");
    gen_attr_string(g, "sources", "{}");
    gen_attr_string(g, "base_model", "/nonexistent");
    gen_attr_string(g, "base_fingerprint", model.fingerprint);
    int bf16 = fuzz_u8(&g->in) & 1;
    gen_attr_string(g, "dtype", bf16 ? "bf16" : "fp32");
    hid_t type = bf16 ? h5_bf16_type() : H5Tcopy(H5T_IEEE_F32LE);
    char name[256];
    for (int i = 0; i < model.n_weight_views; i++) {
        const TensorView *v = &model.weight_views[i];
        snprintf(name, sizeof name, "/weights/%s", v->name);
        gen_dataset(g, name, v->global_rows, v->global_cols == 1 ? 0 : v->global_cols, type);
    }
    gen_extra(g, "/weights", ".weight", type);
    H5Tclose(type);
    if (fuzz_u8(&g->in) % 8 == 0) return; /* no /stats group */
    hid_t group = H5Gcreate2(g->file, "/stats", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (group >= 0) H5Gclose(group);
    for (int i = 0; i < model.n_lora_views; i += 2) { /* one per adapted module: its A view */
        char tensor[160];
        snprintf(tensor, sizeof tensor, "%s", model.lora_views[i].name);
        char *slash = strrchr(tensor, '/');
        if (slash) snprintf(slash, sizeof tensor - (size_t)(slash - tensor), ".weight");
        gen_stats(g, tensor);
    }
    if (fuzz_u8(&g->in) % 4 == 0) gen_stats(g, "model.layers.7.self_attn.q_proj.weight");
}

/* ---- running the readers ----------------------------------------------------------------------*/

static void close_open_objects(void) {
    ssize_t n = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (n <= 0) return;
    hid_t *ids = malloc((size_t)n * sizeof *ids);
    n = H5Fget_obj_ids(H5F_OBJ_ALL, H5F_OBJ_ALL, (size_t)n, ids);
    for (ssize_t i = 0; i < n; i++) /* objects first; the files close with their last object */
        if (H5Iget_type(ids[i]) != H5I_FILE) H5Oclose(ids[i]);
    for (ssize_t i = 0; i < n; i++)
        if (H5Iget_type(ids[i]) == H5I_FILE) H5Fclose(ids[i]);
    free(ids);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    dir = fuzz_init();
    sink = fopen("/dev/null", "w");
    if (!sink) abort();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* the generator bends files on purpose */
    fuzz_set_cleanup(close_open_objects);
    ModelConfig cfg;
    model_config_parse(&cfg, TINY_CONFIG, "tiny");
    LoraConfig lora;
    lora_config_init(&lora, LORA_R, LORA_ALPHA, 0, LORA_TARGETS, "tiny");
    model_init_random(&model, &cfg, &lora, 7, 0.02);
    model_config_free(&cfg);
    return 0;
}

static void run_inspect(const char *path) {
    char *argv[] = {"inspect", (char *)path, NULL};
    cmd_inspect(2, argv);
}

static void run_adapter(const char *path, int checkpoint) {
    (void)adapter_delta_sparsity(path);
    AdapterInfo info;
    real *m = checkpoint ? malloc(model.n_lora * sizeof(real)) : NULL;
    real *v = checkpoint ? malloc(model.n_lora * sizeof(real)) : NULL;
    TrainPosition pos;
    adapter_read(path, MPI_COMM_SELF, &model, &info, m, v, checkpoint ? &pos : NULL);
    free(m);
    free(v);
    adapter_fold_into_base(path, MPI_COMM_SELF, &model);
}

static void run_merged(const char *path) {
    Model loaded;
    LoraConfig lora;
    lora_config_init(&lora, LORA_R, LORA_ALPHA, 0, LORA_TARGETS, "tiny");
    model_load(&loaded, path, &lora, 1, MPI_COMM_SELF);
    model_free(&loaded);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/file.h5", dir);
    Gen g = {.in = {data, size, 0}};
    int kind = fuzz_u8(&g.in) % 3; /* adapter, checkpoint, merged model */
    g.file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (g.file < 0) abort();
    if (kind == 2) gen_merged(&g);
    else gen_adapter(&g, kind == 1);
    if (H5Fclose(g.file) < 0) abort();

    fuzz_begin(path);
    if (setjmp(fuzz_on_fatal) == 0) run_inspect(path);
    fuzz_end();
    fuzz_begin(path);
    if (setjmp(fuzz_on_fatal) == 0) {
        if (kind == 2) run_merged(path);
        else run_adapter(path, kind == 1);
    }
    fuzz_end();
    return 0;
}
