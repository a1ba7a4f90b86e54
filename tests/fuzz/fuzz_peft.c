/*
 * fuzz_peft.c - a PEFT adapter directory (adapter_config.json + adapter_model.safetensors):
 * `paft inspect DIR`, peft_read_config, and the fold into a tiny model as `paft train
 * model.adapter=DIR` and `paft eval model=DIR` do it (adapter_fold_into_base), then
 * peft_load_adapter.
 *
 * The input is adapter_config.json's text up to the first NUL byte; the rest starts with a
 * control byte:
 *   bit 0 set:   the bytes after it are adapter_model.safetensors as they are (the safetensors
 *                parser has a harness of its own; this reaches what a mutated header does here);
 *   bit 0 clear: they are a recipe, and the harness writes a well-formed safetensors file whose
 *                every tensor consumes bytes that keep it as paft writes it or bend it: the
 *                modules present (both factors, one, none), near-miss names (layer 2, 99999,
 *                100000, -1, 00, alone or with both factors; lm_head, embeddings, DoRA
 *                magnitudes, PEFT's ".default" names, no prefix; or none of the expected ones), dtypes (F32 .. BOOL), shapes (right, r + 1, another module's,
 *                1-D, 3-D, fuzzed up to 2^15 per dimension, an empty one), NaN or inf, and the
 *                metadata (the base fingerprint, another one, none). All zeros is the adapter
 *                paft writes for the tiny model, so the fold's checks are reached.
 *   bit 1 set:   there is no adapter_model.safetensors;
 *   bit 2 set:   the fold is given DIR/adapter_model.safetensors instead of DIR.
 * The tiny model: 2 layers, hidden 8, 2 heads of 4, 1 KV head, ffn 12, vocab 16; its LoRA (for
 * peft_load_adapter) r = 2, alpha 4 on every projection.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "fuzz_harness.h"
#include "io/adapter.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/model_config.h"
#include "model/peft.h"

static const char *TINY_CONFIG =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 16, \"hidden_size\": 8, "
    "\"intermediate_size\": 12, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, "
    "\"num_key_value_heads\": 1, \"rms_norm_eps\": 1e-05, \"max_position_embeddings\": 32}";
#define LORA_R 2
#define LORA_ALPHA 4.0
#define LORA_TARGETS "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
#define N_LAYERS 2

static char adapter_dir[4096];
static Model model;          /* the tiny model every adapter is folded into */
static real *base_weights;   /* its weights before any fold, restored before each */
static real *base_lora;

/* ---- the recipe: a well-formed adapter_model.safetensors, bent where the input says ----------- */

typedef struct {
    char *header; /* the JSON header being built */
    size_t header_len, header_cap;
    uint8_t *data; /* the data section */
    size_t data_len, data_cap;
    int n_tensors;
    FuzzBytes in;
} Gen;

static void append(char **buf, size_t *len, size_t *cap, const void *bytes, size_t n) {
    if (*len + n + 1 > *cap) {
        *cap = (*len + n + 1) * 2;
        *buf = realloc(*buf, *cap);
        if (!*buf) abort();
    }
    memcpy(*buf + *len, bytes, n);
    *len += n;
    (*buf)[*len] = '\0';
}

static void header_printf(Gen *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void header_printf(Gen *g, const char *fmt, ...) {
    char text[1024];
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    if (n < 0) abort();
    append(&g->header, &g->header_len, &g->header_cap, text,
           (size_t)n < sizeof text ? (size_t)n : sizeof text - 1);
}

/* The r the config asks for, as the fold will read it (2 when there is none to be had). */
static int config_r(const char *config) {
    const char *k = strstr(config, "\"r\"");
    if (!k) return LORA_R;
    k += 3;
    while (*k == ' ' || *k == ':' || *k == '\n' || *k == '\t') k++;
    long r = strtol(k, NULL, 10);
    return r >= 1 && r <= 64 ? (int)r : LORA_R;
}

static const Dtype dtypes[16] = {DTYPE_F32,  DTYPE_F32,  DTYPE_F32, DTYPE_F32, DTYPE_F32,
                                 DTYPE_F32,  DTYPE_F32,  DTYPE_F32, DTYPE_F32, DTYPE_F32,
                                 DTYPE_F16,  DTYPE_BF16, DTYPE_F64, DTYPE_I32, DTYPE_I8,
                                 DTYPE_BOOL};

/* One tensor named `name`, meant to be [rows, cols]; its dtype, shape and values from the input.
 * The data section stays within what a 64 KB input could hold per tensor. */
static void gen_tensor(Gen *g, const char *name, int64_t rows, int64_t cols, int r) {
    Dtype dtype = dtypes[fuzz_u8(&g->in) % 16];
    const int64_t size = dtype_size(dtype);
    int ndim = 2;
    int64_t shape[4] = {rows, cols, 1, 1};
    uint8_t mode = fuzz_u8(&g->in) % 16;
    if (mode == 10) { /* a rank one off */
        if (shape[0] == r) shape[0] = r + 1;
        else shape[1] = r + 1;
    } else if (mode == 11) { /* transposed */
        shape[0] = cols;
        shape[1] = rows;
    } else if (mode == 12) { /* flattened */
        ndim = 1;
        shape[0] = rows * cols;
    } else if (mode == 13) { /* one more dimension */
        ndim = 3;
    } else if (mode == 14) { /* fuzzed: 0-3 dimensions, small or up to 2^15 */
        ndim = fuzz_u8(&g->in) % 4;
        for (int d = 0; d < ndim; d++) {
            uint8_t k = fuzz_u8(&g->in);
            shape[d] = k < 192 ? k % 24 : (int64_t)1 << (k % 16);
        }
    } else if (mode == 15) { /* empty */
        shape[fuzz_u8(&g->in) & 1] = 0;
    }
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= shape[d];
    if (numel * size > 65536) { /* more than an input could hold: the right shape instead */
        ndim = 2;
        shape[0] = rows;
        shape[1] = cols;
        numel = rows * cols;
    }
    int bad = fuzz_u8(&g->in) % 16 == 15 && numel > 0; /* NaN or inf somewhere */
    int64_t bad_at = bad ? fuzz_u8(&g->in) % numel : -1;
    float bad_value = fuzz_u8(&g->in) & 1 ? NAN : -INFINITY;

    const size_t begin = g->data_len, nbytes = (size_t)(numel * size);
    if (begin + nbytes + 1 > g->data_cap) {
        g->data_cap = (begin + nbytes + 1) * 2;
        g->data = realloc(g->data, g->data_cap);
        if (!g->data) abort();
    }
    uint8_t *out = g->data + begin;
    for (int64_t i = 0; i < numel; i++) {
        float v = i == bad_at ? bad_value : 0.01f * (float)(i % 7) - 0.02f;
        switch (dtype) {
        case DTYPE_F32: memcpy(out + 4 * i, &v, 4); break;
        case DTYPE_F64: {
            double d = v;
            memcpy(out + 8 * i, &d, 8);
            break;
        }
        case DTYPE_F16:
        case DTYPE_BF16: {
            uint16_t h = dtype == DTYPE_F16 ? fp32_to_fp16(v) : fp32_to_bf16(v);
            memcpy(out + 2 * i, &h, 2);
            break;
        }
        default: memset(out + size * i, (int)(i % 3), (size_t)size); break;
        }
    }
    g->data_len += nbytes;

    header_printf(g, "%s\"%s\": {\"dtype\": \"%s\", \"shape\": [", g->n_tensors ? ", " : "",
                  name, dtype_name(dtype));
    for (int d = 0; d < ndim; d++) header_printf(g, "%s%lld", d ? ", " : "", (long long)shape[d]);
    header_printf(g, "], \"data_offsets\": [%zu, %zu]}", begin, begin + nbytes);
    g->n_tensors++;
}

/* Names near the ones the fold expects. */
static void gen_extra(Gen *g, int r) {
    static const char *layers[] = {"2", "99999", "100000", "-1", "00", "01", "2147483648", ""};
    static const char *other[] = {
        "base_model.model.lm_head.lora_A.weight",
        "base_model.model.model.embed_tokens.lora_embedding_A",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
        "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias",
        "model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.0.mlp.q_proj.lora_A.weight",
        "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight",
    };
    const ModelConfig *c = &model.config;
    char name[256];
    uint8_t pick = fuzz_u8(&g->in);
    Proj p = (Proj)(fuzz_u8(&g->in) % N_PROJ);
    int part = fuzz_u8(&g->in) & 1;
    if (pick & 1) {
        const char *layer = layers[(pick >> 1) % 8];
        if (pick & 0x80) { /* both factors: the module is complete, and the fold judges it */
            snprintf(name, sizeof name, "base_model.model.model.layers.%s.%s.lora_A.weight",
                     layer, proj_module_name(p));
            gen_tensor(g, name, r, proj_in(c, p), r);
            part = 1;
        }
        snprintf(name, sizeof name, "base_model.model.model.layers.%s.%s.lora_%c.weight", layer,
                 proj_module_name(p), part ? 'B' : 'A');
    } else {
        snprintf(name, sizeof name, "%s", other[(pick >> 1) % 10]);
        p = PROJ_Q;
        part = strstr(name, "lora_B") != NULL;
    }
    if (part) gen_tensor(g, name, proj_out(c, p), r, r);
    else gen_tensor(g, name, r, proj_in(c, p), r);
}

/* The whole file into `out` (malloc'd), its size returned. */
static size_t gen_safetensors(FuzzBytes in, const char *config, uint8_t **out) {
    Gen g = {.in = in};
    const ModelConfig *c = &model.config;
    int r = config_r(config);
    uint8_t r_mode = fuzz_u8(&g.in) % 16; /* 15: none of the tiny model's factors */
    if (r_mode == 6) r = r + 1;
    if (r_mode == 7) r = 1 + fuzz_u8(&g.in) % 5;
    header_printf(&g, "{");
    uint8_t metadata = fuzz_u8(&g.in) % 8;
    if (metadata <= 3) header_printf(&g, "\"__metadata__\": {\"format\": \"pt\", \"%s\": \"%s\"}",
                                     PEFT_FINGERPRINT_KEY, model.fingerprint);
    else if (metadata == 4) header_printf(&g, "\"__metadata__\": {\"format\": \"pt\", \"%s\": "
                                              "\"0123456789abcdef\"}", PEFT_FINGERPRINT_KEY);
    else if (metadata == 5) header_printf(&g, "\"__metadata__\": {\"%s\": \"\"}",
                                          PEFT_FINGERPRINT_KEY);
    else if (metadata == 6) header_printf(&g, "\"__metadata__\": {\"format\": \"pt\"}");
    if (metadata <= 6) g.n_tensors = 1; /* a comma before the first tensor */
    for (int l = 0; l < (r_mode == 15 ? 0 : N_LAYERS); l++)
        for (int p = 0; p < N_PROJ; p++) {
            uint8_t which = fuzz_u8(&g.in) % 10; /* 0-6 both factors, 7 A only, 8 B only */
            char name[256];
            if (which <= 7) {
                snprintf(name, sizeof name, "base_model.model.model.layers.%d.%s.lora_A.weight",
                         l, proj_module_name((Proj)p));
                gen_tensor(&g, name, r, proj_in(c, (Proj)p), r);
            }
            if (which <= 6 || which == 8) {
                snprintf(name, sizeof name, "base_model.model.model.layers.%d.%s.lora_B.weight",
                         l, proj_module_name((Proj)p));
                gen_tensor(&g, name, proj_out(c, (Proj)p), r, r);
            }
        }
    int extras = fuzz_u8(&g.in) % 8;
    for (int i = 0; i < extras && i < 3; i++) gen_extra(&g, r);
    header_printf(&g, "}");
    while (g.header_len % 8) header_printf(&g, " ");
    const size_t total = 8 + g.header_len + g.data_len;
    uint8_t *file = malloc(total);
    if (!file) abort();
    for (int i = 0; i < 8; i++) file[i] = (uint8_t)((uint64_t)g.header_len >> (8 * i));
    memcpy(file + 8, g.header, g.header_len);
    if (g.data_len) memcpy(file + 8 + g.header_len, g.data, g.data_len);
    free(g.header);
    free(g.data);
    *out = file;
    return total;
}

/* ---- running the readers ----------------------------------------------------------------------*/

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *dir = fuzz_init();
    snprintf(adapter_dir, sizeof adapter_dir, "%s/peft", dir);
    paft_make_dirs(adapter_dir);
    ModelConfig cfg;
    model_config_parse(&cfg, TINY_CONFIG, "tiny");
    LoraConfig lora;
    lora_config_init(&lora, LORA_R, LORA_ALPHA, 0, LORA_TARGETS, "tiny");
    model_init_random(&model, &cfg, &lora, 7, 0.02);
    model_config_free(&cfg);
    base_weights = malloc(model.n_weights * sizeof(real));
    base_lora = malloc(model.n_lora * sizeof(real));
    if (!base_weights || !base_lora) abort();
    memcpy(base_weights, model.weights_memory, model.n_weights * sizeof(real));
    memcpy(base_lora, model.lora_memory, model.n_lora * sizeof(real));
    return 0;
}

static void run_inspect(void) {
    char *argv[] = {"inspect", adapter_dir, NULL};
    cmd_inspect(2, argv);
}

static void run_config(void) {
    LoraConfig lora;
    peft_read_config(&lora, adapter_dir);
}

static void run_fold(const char *what) { adapter_fold_into_base(what, MPI_COMM_SELF, &model); }

static void run_load(void) { peft_load_adapter(&model, adapter_dir); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char config_path[4096], weights_path[4096];
    const uint8_t *nul = memchr(data, 0, size);
    const size_t config_len = nul ? (size_t)(nul - data) : size;
    fuzz_write_file(config_path, adapter_dir, "adapter_config.json", data, config_len);
    const uint8_t *rest = nul ? nul + 1 : data + size;
    size_t rest_len = (size_t)(data + size - rest);
    uint8_t control = rest_len ? rest[0] : 0;
    if (rest_len) {
        rest++;
        rest_len--;
    }
    snprintf(weights_path, sizeof weights_path, "%s/adapter_model.safetensors", adapter_dir);
    if (control & 2) {
        remove(weights_path);
    } else if (control & 1) {
        fuzz_write_file(weights_path, adapter_dir, "adapter_model.safetensors", rest, rest_len);
    } else {
        char *config = malloc(config_len + 1);
        if (!config) abort();
        memcpy(config, data, config_len);
        config[config_len] = '\0';
        uint8_t *file;
        size_t file_size = gen_safetensors((FuzzBytes){rest, rest_len, 0}, config, &file);
        fuzz_write_file(weights_path, adapter_dir, "adapter_model.safetensors", file, file_size);
        free(file);
        free(config);
    }

    fuzz_begin(adapter_dir);
    if (setjmp(fuzz_on_fatal) == 0) run_inspect();
    fuzz_end();
    fuzz_begin(adapter_dir);
    if (setjmp(fuzz_on_fatal) == 0) run_config();
    fuzz_end();
    memcpy(model.weights_memory, base_weights, model.n_weights * sizeof(real));
    fuzz_begin(adapter_dir);
    if (setjmp(fuzz_on_fatal) == 0) run_fold(control & 4 ? weights_path : adapter_dir);
    fuzz_end();
    memcpy(model.lora_memory, base_lora, model.n_lora * sizeof(real));
    fuzz_begin(adapter_dir);
    if (setjmp(fuzz_on_fatal) == 0) run_load();
    fuzz_end();
    return 0;
}
