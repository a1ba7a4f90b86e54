/*
 * model.c - the Llama-family model with LoRA: memory layout, loading, forward and backward.
 *
 * Read top to bottom: names and LoRA configuration, the three layouts (base weights, LoRA,
 * activations), loading from a Hugging Face checkpoint, then forward and backward. The math of
 * each step lives in ops/ (one forward/backward pair per op); this file only sequences them.
 */
#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data/token_data.h"
#include "io/adapter.h"
#include "io/h5file.h"
#include "io/merged_h5.h"
#include "io/safetensors.h"
#include "model/peft.h"
#include "ops/ops.h"
#include "parallel/collectives.h"
#include "util/rng.h"

/* ---- names ---------------------------------------------------------------------------------- */

static const char *const proj_modules[N_PROJ] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",
};
static const char *const proj_short[N_PROJ] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                               "gate_proj", "up_proj", "down_proj"};

const char *proj_module_name(Proj p) { return proj_modules[p]; }
const char *proj_short_name(Proj p) { return proj_short[p]; }

void lora_config_init(LoraConfig *lora, int r, double alpha, int rslora, const char *targets,
                      const char *origin) {
    memset(lora, 0, sizeof *lora);
    if (r < 1) PAFT_FATAL("%s: lora.r = %d must be at least 1", origin, r);
    if (!(alpha > 0)) PAFT_FATAL("%s: lora.alpha = %g must be positive", origin, alpha);
    lora->r = r;
    lora->alpha = alpha;
    lora->rslora = rslora;
    lora->scale = rslora ? alpha / sqrt((double)r) : alpha / (double)r;
    /* targets: comma-separated short names, spaces allowed */
    const char *p = targets;
    int any = 0;
    while (*p) {
        while (*p == ' ' || *p == ',') p++;
        if (!*p) break;
        size_t len = strcspn(p, ", ");
        int found = 0;
        for (int j = 0; j < N_PROJ; j++)
            if (strlen(proj_short[j]) == len && strncmp(p, proj_short[j], len) == 0) {
                lora->targets[j] = 1;
                found = any = 1;
            }
        if (!found)
            PAFT_FATAL("%s: lora.targets: unknown module '%.*s' (expected some of q_proj, k_proj, "
                       "v_proj, o_proj, gate_proj, up_proj, down_proj)",
                       origin, (int)len, p);
        p += len;
    }
    if (!any) PAFT_FATAL("%s: lora.targets is empty", origin);
}

/* ---- sizes of a projection ------------------------------------------------------------------ */

int proj_in(const ModelConfig *c, Proj p) {
    if (p == PROJ_O) return c->num_heads * c->head_dim;
    if (p == PROJ_DOWN) return c->intermediate_size;
    return c->hidden_size;
}

int proj_out(const ModelConfig *c, Proj p) {
    switch (p) {
    case PROJ_Q: return c->num_heads * c->head_dim;
    case PROJ_K:
    case PROJ_V: return c->num_kv_heads * c->head_dim;
    case PROJ_GATE:
    case PROJ_UP: return c->intermediate_size;
    default: return c->hidden_size; /* o, down */
    }
}

int proj_from_name(const char *name, const char *suffix, int *layer) {
    /* the layer index by hand, not sscanf's %d: digits only (no sign, no blanks) and bounded, so
     * a crafted name cannot overflow an int or index below 0 in the callers' tables */
    static const char prefix[] = "model.layers.";
    if (strncmp(name, prefix, sizeof prefix - 1) != 0) return -1;
    const char *c = name + sizeof prefix - 1;
    int value = 0, digits = 0;
    for (; *c >= '0' && *c <= '9'; c++, digits++) {
        value = value * 10 + (*c - '0');
        if (value >= PAFT_MAX_LAYERS) return -1;
    }
    if (digits == 0 || *c != '.') return -1;
    *layer = value;
    int consumed = (int)(c + 1 - name);
    for (int p = 0; p < N_PROJ; p++) {
        size_t len = strlen(proj_modules[p]);
        if (strncmp(name + consumed, proj_modules[p], len) == 0 &&
            strcmp(name + consumed + len, suffix) == 0)
            return p;
    }
    return -1;
}

int proj_is_row_parallel(Proj p) { return p == PROJ_O || p == PROJ_DOWN; }

int view_is_whole(const TensorView *v) {
    return v->rows == v->global_rows && v->cols == v->global_cols;
}

static int proj_has_bias(const ModelConfig *c, Proj p) {
    if (p <= PROJ_V) return c->qkv_bias;
    if (p == PROJ_O) return c->o_bias;
    return c->mlp_bias;
}

/* ---- layouts ---------------------------------------------------------------------------------
 * Each layout function walks the tensors in a fixed order and hands out consecutive ranges of a
 * flat buffer. Called with memory == NULL it only counts; with views != NULL it records names.
 * The same function binds the weights and, over another buffer, their gradients. */

typedef struct {
    real *memory;
    size_t cursor;
    TensorView *views;
    int n_views;
    int tp_rank, tp; /* which shard to lay out */
} Carver;

/* A block of a global tensor: rows [row0, row0 + rows) x columns [col0, col0 + cols). */
static real *carve_block(Carver *cv, const char *name, int64_t rows, int64_t cols,
                         int64_t global_rows, int64_t global_cols, int64_t row0, int64_t col0) {
    real *ptr = cv->memory ? cv->memory + cv->cursor : NULL;
    if (cv->views) {
        TensorView *v = &cv->views[cv->n_views];
        snprintf(v->name, sizeof v->name, "%s", name);
        v->offset = cv->cursor;
        v->rows = rows;
        v->cols = cols;
        v->global_rows = global_rows;
        v->global_cols = global_cols;
        v->row0 = row0;
        v->col0 = col0;
    }
    cv->n_views++;
    cv->cursor += (size_t)rows * (size_t)cols;
    return ptr;
}

/* A whole (replicated) tensor. */
static real *carve(Carver *cv, const char *name, int64_t rows, int64_t cols) {
    return carve_block(cv, name, rows, cols, rows, cols, 0, 0);
}

/* This rank's rows of a tensor split by rows over the tensor-parallel group. */
static real *carve_rows(Carver *cv, const char *name, int64_t rows, int64_t cols) {
    int64_t local = rows / cv->tp;
    return carve_block(cv, name, local, cols, rows, cols, cv->tp_rank * local, 0);
}

/* This rank's columns of a tensor split by columns. */
static real *carve_cols(Carver *cv, const char *name, int64_t rows, int64_t cols) {
    int64_t local = cols / cv->tp;
    return carve_block(cv, name, rows, local, rows, cols, 0, cv->tp_rank * local);
}

static void layout_weights(const ModelConfig *c, Weights *w, Carver *cv) {
    char name[160];
    const int d = c->hidden_size;
    w->embed = carve_rows(cv, "model.embed_tokens.weight", c->vocab_size, d);
    for (int l = 0; l < c->num_layers; l++) {
        LayerWeights *lw = &w->layers[l];
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        lw->attn_norm = carve(cv, name, d, 1);
        for (int p = 0; p < N_PROJ; p++) {
            if (p == PROJ_GATE) {
                snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
                lw->mlp_norm = carve(cv, name, d, 1);
            }
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, proj_modules[p]);
            const int row_parallel = proj_is_row_parallel(p);
            lw->w[p] = row_parallel ? carve_cols(cv, name, proj_out(c, p), proj_in(c, p))
                                    : carve_rows(cv, name, proj_out(c, p), proj_in(c, p));
            lw->b[p] = NULL;
            if (proj_has_bias(c, p)) { /* follows the output: split for column-parallel */
                snprintf(name, sizeof name, "model.layers.%d.%s.bias", l, proj_modules[p]);
                lw->b[p] = row_parallel ? carve(cv, name, proj_out(c, p), 1)
                                        : carve_rows(cv, name, proj_out(c, p), 1);
            }
        }
    }
    w->final_norm = carve(cv, "model.norm.weight", d, 1);
    w->lm_head = c->tie_word_embeddings ? w->embed
                                        : carve_rows(cv, "lm_head.weight", c->vocab_size, d);
}

/* Two regions: first the factors every tensor-parallel rank holds whole (A of column-parallel,
 * B of row-parallel projections), then the shards (B of column-parallel split by rows, A of
 * row-parallel split by columns). Returns the size of the first region. */
static size_t layout_lora(const ModelConfig *c, const LoraConfig *lora, LayerLora *layers,
                          Carver *cv) {
    char name[160];
    size_t replicated = 0;
    for (int region = 0; region < 2; region++) {
        for (int l = 0; l < c->num_layers; l++)
            for (int p = 0; p < N_PROJ; p++) {
                if (!lora->targets[p]) {
                    layers[l].A[p] = layers[l].B[p] = NULL;
                    continue;
                }
                const int row_parallel = proj_is_row_parallel(p);
                /* region 0: the whole factor; region 1: the split one */
                if ((region == 0) != row_parallel) {
                    snprintf(name, sizeof name, "model.layers.%d.%s/A", l, proj_modules[p]);
                    layers[l].A[p] = row_parallel ? carve_cols(cv, name, lora->r, proj_in(c, p))
                                                  : carve(cv, name, lora->r, proj_in(c, p));
                }
                if ((region == 0) == row_parallel) {
                    snprintf(name, sizeof name, "model.layers.%d.%s/B", l, proj_modules[p]);
                    layers[l].B[p] = row_parallel ? carve(cv, name, proj_out(c, p), lora->r)
                                                  : carve_rows(cv, name, proj_out(c, p), lora->r);
                }
            }
        if (region == 0) replicated = cv->cursor;
    }
    return replicated;
}

/* What attention keeps per query row for its backward: the log-sum-exp (fused), or the row's T
 * probabilities (simple_attention). */
static int64_t attention_state_per_row(const Model *m, int T) {
    return m->simple_attention ? T : 1;
}

static void layout_activations(const Model *m, int B, int T, Activations *a, Carver *cv) {
    const ModelConfig *c = &m->config;
    const LoraConfig *lora = &m->lora;
    const int64_t N = (int64_t)B * T, L = c->num_layers, d = c->hidden_size;
    const int64_t qd = (int64_t)m->local_heads * c->head_dim;
    const int64_t kvd = (int64_t)m->local_kv_heads * c->head_dim;
    const int64_t ff = m->local_ffn;
    a->x = carve(cv, "x", (L + 1) * N, d);
    a->ln1 = carve(cv, "ln1", L * N, d);
    a->ln1_rstd = carve(cv, "ln1_rstd", L, N);
    a->q = carve(cv, "q", L * N, qd);
    a->k = carve(cv, "k", L * N, kvd);
    a->v = carve(cv, "v", L * N, kvd);
    a->att_state = carve(cv, "att_state", L * B * m->local_heads,
                         T * attention_state_per_row(m, T));
    a->att = carve(cv, "att", L * N, qd);
    a->x_mid = carve(cv, "x_mid", L * N, d);
    a->ln2 = carve(cv, "ln2", L * N, d);
    a->ln2_rstd = carve(cv, "ln2_rstd", L, N);
    a->gate = carve(cv, "gate", L * N, ff);
    a->up = carve(cv, "up", L * N, ff);
    a->act = carve(cv, "act", L * N, ff);
    a->lora_h = carve(cv, "lora_h", L * N_PROJ * N, lora->r);
    a->lnf = carve(cv, "lnf", N, d);
    a->lnf_rstd = carve(cv, "lnf_rstd", N, 1);
    a->logits = carve(cv, "logits", N, m->local_vocab);
    a->lse = carve(cv, "lse", N, 1);
    a->logp = carve(cv, "logp", N, 1);
}

static void layout_scratch(const Model *m, int B, int T, GradScratch *s, Carver *cv) {
    const ModelConfig *c = &m->config;
    const LoraConfig *lora = &m->lora;
    const int64_t N = (int64_t)B * T, d = c->hidden_size;
    const int64_t qd = (int64_t)m->local_heads * c->head_dim;
    const int64_t kvd = (int64_t)m->local_kv_heads * c->head_dim;
    const int64_t ff = m->local_ffn;
    s->dx = carve(cv, "dx", N, d);
    s->dln = carve(cv, "dln", N, d);
    s->dq = carve(cv, "dq", N, qd);
    s->dk = carve(cv, "dk", N, kvd);
    s->dv = carve(cv, "dv", N, kvd);
    s->datt = carve(cv, "datt", N, qd);
    s->dgate = carve(cv, "dgate", N, ff);
    s->dup = carve(cv, "dup", N, ff);
    s->dact = carve(cv, "dact", N, ff);
    s->dlora_h = carve(cv, "dlora_h", N, lora->r);
    s->dlogits = carve(cv, "dlogits", N, m->local_vocab);
}

/* ---- loading ---------------------------------------------------------------------------------*/

/* Where a model's config.json is. What else users give as model.path has none to look for, and
 * would fail as "<dir>/config.json: cannot open" or as a nonsense safetensors header length: an
 * HDF5 file that is not a merged model (an adapter or a checkpoint), a PEFT adapter directory, a
 * token data file or a JSON file (the model's config.json itself) are named as what they are. */
static char *config_json_path(const char *path) {
    if (paft_is_directory(path)) {
        if (peft_is_adapter_dir(path))
            PAFT_FATAL("%s: a PEFT adapter directory (adapter_config.json), not a model; "
                       "model.path takes the base model, and model.adapter the adapter to fold "
                       "into it before training", path);
        return paft_path_join(path, "config.json");
    }
    /* the first bytes say what else a file given as a model may be */
    unsigned char magic[16] = {0};
    size_t n = 0;
    FILE *f = fopen(path, "rb");
    if (f) {
        n = fread(magic, 1, sizeof magic, f);
        fclose(f);
    }
    if (n >= 8 && memcmp(magic, TOKEN_DATA_MAGIC, 8) == 0)
        PAFT_FATAL("%s: a paft token data file (" TOKEN_DATA_MAGIC "), not a model; model.path "
                   "takes a Hugging Face model directory, a .safetensors file or a merged .h5, "
                   "and data files go to sft.data, pref.data, eval.sft_data or eval.pref_data",
                   path);
    if (paft_starts_like_json(magic, n))
        PAFT_FATAL("%s: a JSON file, not a model; model.path takes the model's directory (the one "
                   "holding config.json and the safetensors), or a .safetensors file beside its "
                   "config.json", path);
    if (adapter_path_is_hdf5(path))
        PAFT_FATAL("%s: an HDF5 file that is not a paft merged model (an adapter or checkpoint?); "
                   "model.path takes a Hugging Face model directory, a .safetensors file or a "
                   "merged .h5; an adapter is given as model.adapter (training) or model=adapter.h5 "
                   "(paft eval)", path);
    /* a single .safetensors file: its config.json sits beside it */
    char *dir = paft_strdup(path);
    char *slash = strrchr(dir, '/');
    char *out;
    if (slash) {
        *slash = '\0';
        out = paft_path_join(dir, "config.json");
    } else {
        out = paft_strdup("config.json");
    }
    free(dir);
    return out;
}

static void init_lora(Model *m, uint64_t seed) {
    /* PEFT's init: A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); B = 0, so the
     * adapted model starts exactly at the base model. Every rank draws every module's WHOLE A in
     * the same order and keeps its block, so the values do not depend on the TP layout. */
    Rng rng;
    rng_seed(&rng, seed);
    memset(m->lora_memory, 0, m->n_lora * sizeof(real));
    const int r = m->lora.r;
    for (int l = 0; l < m->config.num_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            if (!m->lora.targets[p]) continue;
            const int in = proj_in(&m->config, p);
            const double bound = 1.0 / sqrt((double)in);
            const int split = proj_is_row_parallel(p) && m->tp_size > 1;
            const int local_in = split ? in / m->tp_size : in, col0 = split ? m->tp_rank * local_in : 0;
            real *A = m->lora_params[l].A[p];
            for (int i = 0; i < r; i++)
                for (int j = 0; j < in; j++) {
                    real value = (real)((2.0 * rng_uniform(&rng) - 1.0) * bound);
                    if (j >= col0 && j < col0 + local_in) A[(size_t)i * local_in + (j - col0)] = value;
                }
        }
}

/* FNV-1a, 64 bits: enough to tell two base models apart, not a cryptographic digest. */
static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001B3ULL;
    return h;
}

/* ---- where the base weights come from -------------------------------------------------------
 * A Hugging Face safetensors checkpoint, or a paft merged file (/weights/<HF name> in bf16 or
 * fp32, config.json text in its "config" attribute), so a merged model can be evaluated or trained
 * further like any base. */
typedef struct {
    int merged; /* 1: a paft merged HDF5 file */
    Checkpoint ckpt;
    H5File h5;
    const char *path;
} WeightSource;

static void source_open(WeightSource *src, const char *path, ModelConfig *config) {
    memset(src, 0, sizeof *src);
    src->path = path;
    if (!paft_is_directory(path) && merged_is_merged_file(path)) {
        src->merged = 1;
        h5_open_read(&src->h5, path, MPI_COMM_SELF);
        char *text = h5_get_attr_string(&src->h5, "config");
        char source_name[1100];
        snprintf(source_name, sizeof source_name, "%s (attribute config)", path);
        model_config_parse(config, text, source_name);
        free(text);
        return;
    }
    char *config_path = config_json_path(path);
    model_config_load(config, config_path);
    free(config_path);
    checkpoint_open(&src->ckpt, path);
}

/* Read rows [row0, +rows) x columns [col0, +cols) of tensor `name` (global shape checked). */
static void source_read(WeightSource *src, const char *name, int64_t global_rows,
                        int64_t global_cols, int64_t row0, int64_t rows, int64_t col0,
                        int64_t cols, real *out) {
    if (!src->merged) {
        int64_t shape[2] = {global_rows, global_cols};
        const TensorInfo *t = checkpoint_require(&src->ckpt, name, global_cols == 1 ? 1 : 2, shape);
        checkpoint_read_block(&src->ckpt, t, row0, rows, col0, cols, out);
        return;
    }
    char dataset[256];
    snprintf(dataset, sizeof dataset, "/weights/%s", name);
    if (!h5_exists(&src->h5, dataset)) PAFT_FATAL("%s: missing dataset %s", src->path, dataset);
    /* the merged file stores vectors as 1-D datasets (cols 0 in an H5Block) */
    H5Block block = {global_rows, global_cols == 1 ? 0 : global_cols, row0, col0, rows,
                     global_cols == 1 ? 0 : cols};
    float *tmp = paft_malloc((size_t)(rows * cols) * sizeof(float));
    h5_read_float_block(&src->h5, dataset, &block, H5_FLOAT32, tmp);
    for (int64_t i = 0; i < rows * cols; i++) out[i] = (real)tmp[i];
    free(tmp);
}

static void source_close(WeightSource *src) {
    if (src->merged)
        h5_close(&src->h5);
    else
        checkpoint_close(&src->ckpt);
}

void model_config_of_path(const char *path, ModelConfig *config) {
    if (!paft_path_exists(path)) PAFT_FATAL("%s: model path does not exist", path);
    if (!paft_is_directory(path) && merged_is_merged_file(path)) {
        H5File f;
        h5_open_read(&f, path, MPI_COMM_SELF);
        char *text = h5_get_attr_string(&f, "config");
        model_config_parse(config, text, path);
        free(text);
        h5_close(&f);
        return;
    }
    char *config_path = config_json_path(path);
    model_config_load(config, config_path);
    free(config_path);
}

/* FNV-1a over names, global shapes and the first values (as fp32 bits) of every tensor. Read
 * from the source itself, so every rank gets the same digest whatever shard it holds, and the
 * same digest whether the model is stored in one file or in shards. */
static void fingerprint_of(WeightSource *src, const TensorView *views, int n_views, char out[17]) {
    uint64_t h = 0xCBF29CE484222325ULL;
    real first[16];
    for (int i = 0; i < n_views; i++) {
        const TensorView *v = &views[i];
        h = fnv1a(h, v->name, strlen(v->name));
        h = fnv1a(h, &v->global_rows, sizeof v->global_rows);
        h = fnv1a(h, &v->global_cols, sizeof v->global_cols);
        int64_t n = v->global_cols == 1 ? PAFT_MIN(16, v->global_rows) : PAFT_MIN(16, v->global_cols);
        if (v->global_cols == 1)
            source_read(src, v->name, v->global_rows, 1, 0, n, 0, 1, first);
        else
            source_read(src, v->name, v->global_rows, v->global_cols, 0, 1, 0, n, first);
        for (int64_t j = 0; j < n; j++) {
            float f = (float)first[j];
            h = fnv1a(h, &f, sizeof f);
        }
    }
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

void model_fingerprint(const Checkpoint *ckpt, const TensorView *views, int n_views, char out[17]) {
    WeightSource src = {.merged = 0, .ckpt = *ckpt, .path = ckpt->path};
    fingerprint_of(&src, views, n_views, out);
}

void model_config_check_tp(const ModelConfig *c, int tp, const char *path, int report) {
    const struct { const char *what; int n; } sizes[] = {
        {"num_attention_heads", c->num_heads},
        {"num_key_value_heads", c->num_kv_heads},
        {"intermediate_size", c->intermediate_size},
        {"vocab_size", c->vocab_size},
    };
    for (int i = 0; i < 4; i++)
        if (sizes[i].n % tp != 0)
            PAFT_FATAL_SHARED(report,
                              "%s: %s = %d does not divide by parallel.tp = %d (replicating KV heads is "
                       "not supported: choose tp dividing every one of heads %d, KV heads %d, "
                       "ffn %d and vocab %d)",
                       path, sizes[i].what, sizes[i].n, tp, c->num_heads, c->num_kv_heads,
                       c->intermediate_size, c->vocab_size);
}

/* Shard sizes for a tensor-parallel group of tp ranks, or a fatal error naming what does not
 * divide. */
static void set_shard_sizes(Model *m, const char *path) {
    const ModelConfig *c = &m->config;
    const int tp = m->tp_size;
    model_config_check_tp(c, tp, path, paft_world_rank() == 0); /* every rank loads with this tp */
    m->local_heads = c->num_heads / tp;
    m->local_kv_heads = c->num_kv_heads / tp;
    m->local_ffn = c->intermediate_size / tp;
    m->local_vocab = c->vocab_size / tp;
    m->vocab_start = m->tp_rank * m->local_vocab;
}

/* Everything but the base weights' values: the shard sizes, the layouts and buffers of the base
 * weights and of LoRA (initialised), from m->config, m->lora and tp_comm. `origin` names the
 * model in error messages. */
static void model_create(Model *m, uint64_t seed, MPI_Comm tp_comm, const char *origin) {
    m->adapters_enabled = 1;
    m->tp_comm = tp_comm;
    m->tp_rank = 0;
    m->tp_size = 1;
    if (tp_comm != MPI_COMM_SELF) { /* MPI_COMM_SELF: no tensor parallelism, no MPI needed */
        CHECK_MPI(MPI_Comm_rank(tp_comm, &m->tp_rank));
        CHECK_MPI(MPI_Comm_size(tp_comm, &m->tp_size));
    }
    set_shard_sizes(m, origin);
    const ModelConfig *c = &m->config;

    /* base weights: count, allocate, bind with names */
    m->weights.layers = paft_calloc((size_t)c->num_layers, sizeof(LayerWeights));
    Carver count = {.tp_rank = m->tp_rank, .tp = m->tp_size};
    layout_weights(c, &m->weights, &count);
    m->n_weights = count.cursor;
    m->n_weight_views = count.n_views;
    m->weights_memory = paft_malloc(m->n_weights * sizeof(real));
    m->weight_views = paft_calloc((size_t)count.n_views, sizeof(TensorView));
    Carver bind = {m->weights_memory, 0, m->weight_views, 0, m->tp_rank, m->tp_size};
    layout_weights(c, &m->weights, &bind);

    /* LoRA parameters and gradients */
    m->lora_params = paft_calloc((size_t)c->num_layers, sizeof(LayerLora));
    m->lora_grads = paft_calloc((size_t)c->num_layers, sizeof(LayerLora));
    Carver lcount = {.tp_rank = m->tp_rank, .tp = m->tp_size};
    m->n_lora_replicated = layout_lora(c, &m->lora, m->lora_params, &lcount);
    m->n_lora = lcount.cursor;
    m->n_lora_views = lcount.n_views;
    m->lora_memory = paft_malloc(m->n_lora * sizeof(real));
    m->lora_grads_memory = paft_calloc(m->n_lora, sizeof(real));
    m->lora_views = paft_calloc((size_t)lcount.n_views, sizeof(TensorView));
    Carver lbind = {m->lora_memory, 0, m->lora_views, 0, m->tp_rank, m->tp_size};
    layout_lora(c, &m->lora, m->lora_params, &lbind);
    Carver gbind = {m->lora_grads_memory, 0, NULL, 0, m->tp_rank, m->tp_size};
    layout_lora(c, &m->lora, m->lora_grads, &gbind);
    init_lora(m, seed);
}

/* Tensors a checkpoint may hold that no configuration uses: older Llama exports keep RoPE's
 * inv_freq buffers, and some tied models store lm_head.weight anyway (transformers ignores both). */
static int unused_tensor_allowed(const ModelConfig *c, const char *name) {
    if (strstr(name, "rotary_emb.inv_freq")) return 1;
    return c->tie_word_embeddings && strcmp(name, "lm_head.weight") == 0;
}

/* The last layer's input norm: looked for before the whole table of views is built, because that
 * table grows with num_hidden_layers alone (a 400-byte config.json claiming 99,999 layers cost
 * 1.7 M views, about 350 MB and seconds, before the first missing tensor was reported). */
static void last_layer_norm(const ModelConfig *c, char *name, size_t size) {
    snprintf(name, size, "model.layers.%d.input_layernorm.weight", c->num_layers - 1);
}

void model_check_checkpoint(const Checkpoint *ckpt, const ModelConfig *c) {
    char last[160];
    last_layer_norm(c, last, sizeof last);
    const int64_t hidden = c->hidden_size;
    checkpoint_require(ckpt, last, 1, &hidden);
    TensorView *views = NULL;
    const int n = model_weight_views(c, &views);
    for (int i = 0; i < n; i++) { /* every tensor the configuration needs, at its shape */
        int64_t shape[2] = {views[i].global_rows, views[i].global_cols};
        checkpoint_require(ckpt, views[i].name, shape[1] == 1 ? 1 : 2, shape);
    }
    /* and nothing it does not: the n (distinct) names are all there, so any tensor beyond them and
     * the ignored ones is extra; only then is it looked for, to name it */
    int ignored = 0;
    for (int t = 0; t < ckpt->n_tensors; t++) ignored += unused_tensor_allowed(c, ckpt->tensors[t].name);
    for (int t = 0; t < ckpt->n_tensors && ckpt->n_tensors - ignored > n; t++) {
        const char *name = ckpt->tensors[t].name;
        int used = unused_tensor_allowed(c, name);
        for (int i = 0; i < n && !used; i++) used = strcmp(views[i].name, name) == 0;
        if (!used)
            PAFT_FATAL("%s: tensor %s is not part of the model config.json describes (%s, "
                       "num_hidden_layers = %d%s): the configuration and the weights disagree",
                       ckpt->path, name, c->architecture, c->num_layers,
                       c->tie_word_embeddings ? ", tied embeddings" : "");
    }
    free(views);
}

/* model_check_checkpoint for a merged file: every tensor the "config" attribute needs is under
 * /weights at its shape, and nothing else is. Without it the attribute alone sized the model:
 * a config claiming a 2^31-token vocabulary was allocated before any dataset was looked at. */
static void check_merged_weights(WeightSource *src, const ModelConfig *c) {
    char last[160], dataset[256];
    last_layer_norm(c, last, sizeof last); /* first, as in model_check_checkpoint */
    snprintf(dataset, sizeof dataset, "/weights/%s", last);
    if (!h5_exists(&src->h5, dataset))
        PAFT_FATAL("%s: missing dataset %s (does the config attribute match the weights?)",
                   src->path, dataset);
    TensorView *views = NULL;
    const int n = model_weight_views(c, &views);
    for (int i = 0; i < n; i++) {
        snprintf(dataset, sizeof dataset, "/weights/%s", views[i].name);
        if (!h5_exists(&src->h5, dataset))
            PAFT_FATAL("%s: missing dataset %s (does the config attribute match the weights?)",
                       src->path, dataset);
        int64_t dims[2];
        const int ndim = h5_shape(&src->h5, dataset, dims);
        const int64_t rows = views[i].global_rows, cols = views[i].global_cols;
        if (cols == 1 ? ndim != 1 || dims[0] != rows : dims[0] != rows || dims[1] != cols)
            PAFT_FATAL("%s: dataset %s is %lld x %lld, but the config attribute describes %lld x "
                       "%lld",
                       src->path, dataset, (long long)dims[0], (long long)dims[1], (long long)rows,
                       (long long)(cols == 1 ? 0 : cols));
    }
    int n_stored = 0;
    char **stored = h5_list_group(&src->h5, "/weights", &n_stored);
    for (int k = 0; k < n_stored; k++) {
        int used = 0;
        for (int i = 0; i < n && !used; i++) used = strcmp(views[i].name, stored[k]) == 0;
        if (!used)
            PAFT_FATAL("%s: dataset /weights/%s is not part of the model its config attribute "
                       "describes (%s, num_hidden_layers = %d)",
                       src->path, stored[k], c->architecture, c->num_layers);
        free(stored[k]);
    }
    free(stored);
    free(views);
}

void model_load(Model *m, const char *path, const LoraConfig *lora, uint64_t seed,
                MPI_Comm tp_comm) {
    memset(m, 0, sizeof *m);
    if (!paft_path_exists(path)) PAFT_FATAL("%s: model path does not exist", path);
    WeightSource src;
    source_open(&src, path, &m->config);
    /* before anything is allocated: a config.json with a huge or wrong shape must fail here by
     * name, not as an allocation of its size */
    if (src.merged) check_merged_weights(&src, &m->config);
    else model_check_checkpoint(&src.ckpt, &m->config);
    m->lora = *lora;
    model_create(m, seed, tp_comm, path);
    /* read this rank's block of every tensor, checking the whole shape against the config */
    for (int i = 0; i < m->n_weight_views; i++) {
        const TensorView *v = &m->weight_views[i];
        source_read(&src, v->name, v->global_rows, v->global_cols, v->row0, v->rows, v->col0,
                    v->cols, m->weights_memory + v->offset);
    }
    snprintf(m->path, sizeof m->path, "%s", path);
    fingerprint_of(&src, m->weight_views, m->n_weight_views, m->fingerprint);
    source_close(&src);
}

void model_fingerprint_of_path(const char *path, char out[17]) {
    if (!paft_path_exists(path)) PAFT_FATAL("%s: model path does not exist", path);
    WeightSource src;
    ModelConfig config;
    source_open(&src, path, &config);
    /* the tensors must be the ones config describes (what model_load checks first), or the
     * fingerprint would be read from tensors of other shapes */
    if (src.merged) check_merged_weights(&src, &config);
    else model_check_checkpoint(&src.ckpt, &config);
    TensorView *views;
    const int n_views = model_weight_views(&config, &views);
    fingerprint_of(&src, views, n_views, out);
    free(views);
    source_close(&src);
    model_config_free(&config);
}

void model_init_shape(Model *m, const ModelConfig *config, const LoraConfig *lora,
                      uint64_t seed) {
    memset(m, 0, sizeof *m);
    m->config = *config;
    m->config.json_text = NULL; /* not owned */
    m->lora = *lora;
    model_create(m, seed, MPI_COMM_SELF, config->architecture);
    snprintf(m->path, sizeof m->path, "random:%s", config->model_type);
    snprintf(m->fingerprint, sizeof m->fingerprint, "%016llx", (unsigned long long)seed);
}

void model_init_random(Model *m, const ModelConfig *config, const LoraConfig *lora,
                       uint64_t seed, double std) {
    model_init_shape(m, config, lora, seed);
    Rng rng;
    rng_seed(&rng, seed ^ 0x5EEDULL);
    /* one stream, two draws per weight (rng_normal), filled in pieces by the threads: the same
     * values as a single thread's (a 1B model's 1.2 G normals took most of a minute on one) */
    const size_t piece = (size_t)1 << 16, pieces = (m->n_weights + piece - 1) / piece;
#pragma omp parallel for schedule(static)
    for (size_t p = 0; p < pieces; p++) {
        Rng mine = rng_skipped(rng, 2 * p * piece);
        const size_t end = PAFT_MIN(m->n_weights, (p + 1) * piece);
        for (size_t i = p * piece; i < end; i++)
            m->weights_memory[i] = (real)(std * rng_normal(&mine));
    }
    /* norm weights around 1, as trained models have them */
    for (int i = 0; i < m->n_weight_views; i++) {
        const TensorView *v = &m->weight_views[i];
        if (strstr(v->name, "norm"))
            for (int64_t j = 0; j < v->rows; j++) m->weights_memory[v->offset + j] += 1;
    }
}

void model_use_device(Model *m, const char *name, const DeviceOptions *options,
                      const char *origin) {
    const DeviceBackend *backend = device_backend_by_name(name, origin);
    if (!backend) return; /* "cpu" */
    if (m->device) PAFT_FATAL("%s: the model is already on the %s backend", origin, m->backend->name);
    if (m->weight_grads_memory)
        PAFT_FATAL("%s: full-parameter gradients are computed on the CPU backend only", origin);
    m->device = backend->create(m, options);
    m->backend = backend;
    /* the device holds the base weights now; the host views would dangle, so clear them */
    free(m->weights_memory);
    m->weights_memory = NULL;
    LayerWeights *layers = m->weights.layers;
    memset(layers, 0, (size_t)m->config.num_layers * sizeof *layers);
    memset(&m->weights, 0, sizeof m->weights);
    m->weights.layers = layers;
}

const TensorView *model_projection_view(const Model *m, int layer, Proj p) {
    char name[256];
    snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, proj_module_name(p));
    for (int i = 0; i < m->n_weight_views; i++)
        if (strcmp(m->weight_views[i].name, name) == 0) return &m->weight_views[i];
    return NULL;
}

int model_weight_views(const ModelConfig *c, TensorView **views) {
    Weights w = {0};
    w.layers = paft_calloc((size_t)c->num_layers, sizeof(LayerWeights));
    Carver count = {.tp_rank = 0, .tp = 1};
    layout_weights(c, &w, &count);
    *views = paft_calloc((size_t)count.n_views, sizeof(TensorView));
    Carver bind = {NULL, 0, *views, 0, 0, 1};
    layout_weights(c, &w, &bind);
    free(w.layers);
    return bind.n_views;
}

void model_train_on_device(Model *m, MPI_Comm dp_comm, int collectives) {
    if (!m->device) return;
    m->backend->train_begin(m->device, dp_comm, collectives);
    m->lora_on_device = 1;
}

void model_lora_to_host(Model *m, real *m_host, real *v_host) {
    if (m->lora_on_device) m->backend->lora_to_host(m->device, m_host, v_host);
}

void model_lora_from_host(Model *m, const real *m_host, const real *v_host) {
    if (m->lora_on_device) m->backend->lora_from_host(m->device, m_host, v_host);
}

void model_enable_full_grads(Model *m) {
    if (m->weight_grads_memory) return;
    if (m->device)
        PAFT_FATAL("full-parameter gradients are computed on the CPU backend only (the model is on "
                   "the %s backend)", m->backend->name);
    m->weight_grads_memory = paft_calloc(m->n_weights, sizeof(real));
    m->weight_grads.layers = paft_calloc((size_t)m->config.num_layers, sizeof(LayerWeights));
    Carver bind = {m->weight_grads_memory, 0, NULL, 0, m->tp_rank, m->tp_size};
    layout_weights(&m->config, &m->weight_grads, &bind);
}

static void build_rope_tables(Model *m, int max_pos) {
    const ModelConfig *c = &m->config;
    const int half = c->head_dim / 2;
    double *inv_freq = paft_malloc((size_t)half * sizeof(double));
    model_config_rope_inv_freq(c, inv_freq);
    free(m->rope_cos);
    free(m->rope_sin);
    m->rope_cos = paft_malloc((size_t)max_pos * half * sizeof(real));
    m->rope_sin = paft_malloc((size_t)max_pos * half * sizeof(real));
    for (int pos = 0; pos < max_pos; pos++)
        for (int i = 0; i < half; i++) {
            /* transformers forms the angle as an fp32 product of fp32 inv_freq and position;
             * doing the same keeps long-context angles identical to the reference. */
            float angle = (float)inv_freq[i] * (float)pos;
            m->rope_cos[(size_t)pos * half + i] = (real)cos((double)angle);
            m->rope_sin[(size_t)pos * half + i] = (real)sin((double)angle);
        }
    m->rope_max_pos = max_pos;
    free(inv_freq);
}

void model_alloc_activations(Model *m, int B, int T) {
    const ModelConfig *c = &m->config;
    if (c->sliding_window > 0 && T > c->sliding_window)
        PAFT_FATAL("sequence length %d exceeds the model's sliding_window %d: sliding-window "
                   "attention is not implemented (use seq_len <= %d)",
                   T, c->sliding_window, c->sliding_window);
    free(m->acts_memory);
    free(m->scratch_memory);
    free(m->positions);
    free(m->row_max);
    free(m->row_sumexp);
    free(m->row_target);
    if (m->device) {
        /* the device keeps the activations; the host only what the losses read */
        memset(&m->acts, 0, sizeof m->acts);
        memset(&m->scratch, 0, sizeof m->scratch);
        m->acts_memory = paft_calloc((size_t)2 * B * T, sizeof(real));
        m->acts.logp = m->acts_memory;
        m->acts.lse = m->acts_memory + (size_t)B * T;
        m->scratch_memory = NULL;
    } else {
        Carver count = {0};
        layout_activations(m, B, T, &m->acts, &count);
        m->acts_memory = paft_calloc(count.cursor, sizeof(real));
        Carver bind = {m->acts_memory, 0, NULL, 0, 0, 1};
        layout_activations(m, B, T, &m->acts, &bind);
        Carver scount = {0};
        layout_scratch(m, B, T, &m->scratch, &scount);
        m->scratch_memory = paft_calloc(scount.cursor, sizeof(real));
        Carver sbind = {m->scratch_memory, 0, NULL, 0, 0, 1};
        layout_scratch(m, B, T, &m->scratch, &sbind);
    }
    m->positions = paft_malloc((size_t)B * T * sizeof(int32_t));
    m->row_max = paft_malloc((size_t)B * T * sizeof(real));
    m->row_sumexp = paft_malloc((size_t)B * T * sizeof(double));
    m->row_target = paft_malloc((size_t)B * T * sizeof(double));
    build_rope_tables(m, T);
    m->max_B = B;
    m->max_T = T;
    if (m->device) m->backend->alloc_activations(m->device, B, T);
}

void model_free(Model *m) {
    if (m->device) m->backend->destroy(m->device);
    free(m->weights_memory);
    free(m->weights.layers);
    free(m->weight_views);
    free(m->weight_grads_memory);
    free(m->weight_grads.layers);
    free(m->lora_memory);
    free(m->lora_grads_memory);
    free(m->lora_params);
    free(m->lora_grads);
    free(m->lora_views);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m->acts_memory);
    free(m->scratch_memory);
    free(m->positions);
    free(m->row_max);
    free(m->row_sumexp);
    free(m->row_target);
    model_config_free(&m->config);
    memset(m, 0, sizeof *m);
}

int64_t model_parameter_count(const Model *m) { return (int64_t)m->n_weights; }

void model_zero_grads(Model *m) {
    memset(m->lora_grads_memory, 0, m->n_lora * sizeof(real));
    if (m->weight_grads_memory) memset(m->weight_grads_memory, 0, m->n_weights * sizeof(real));
    if (m->device) m->backend->zero_grads(m->device);
}

/* ---- forward ---------------------------------------------------------------------------------*/

int model_adapted(const Model *m, Proj p) { return m->adapters_enabled && m->lora.targets[p]; }

/* Sum a buffer over the tensor-parallel group (nothing to do without tensor parallelism). */
static void tp_sum(Model *m, real *buf, size_t n) {
    if (m->tp_size > 1) allreduce_sum_real(buf, n, m->tp_comm);
}

/* This rank's input and output features of a projection. */
int model_local_in(const Model *m, Proj p) {
    int in = proj_in(&m->config, p);
    return proj_is_row_parallel(p) ? in / m->tp_size : in;
}
int model_local_out(const Model *m, Proj p) {
    int out = proj_out(&m->config, p);
    return proj_is_row_parallel(p) ? out : out / m->tp_size;
}

static real *lora_h_of(const Model *m, int l, Proj p, int N) {
    return m->acts.lora_h + ((size_t)l * N_PROJ + p) * (size_t)N * m->lora.r;
}

/* out = inp W^T + b + s (inp A^T) B^T, with inp A^T saved in lora_h for the backward.
 * Column-parallel: inp is whole, out is this rank's slice of the outputs: no communication.
 * Row-parallel: inp is this rank's slice of the inputs, so inp W^T and inp A^T are partial sums:
 * inp A^T (N x r) is all-reduced before the replicated B, inp W^T (N x out) once; the bias and
 * the LoRA term are added after the reduction, on every rank alike. */
static void proj_forward(Model *m, int l, Proj p, real *out, const real *inp, int N) {
    const int in = model_local_in(m, p), out_f = model_local_out(m, p), r = m->lora.r;
    const LayerWeights *lw = &m->weights.layers[l];
    real *h = lora_h_of(m, l, p, N);
    if (!proj_is_row_parallel(p)) {
        matmul_forward(out, inp, lw->w[p], lw->b[p], N, in, out_f, 1, 0);
        if (model_adapted(m, p)) {
            matmul_forward(h, inp, m->lora_params[l].A[p], NULL, N, in, r, 1, 0);
            matmul_forward(out, h, m->lora_params[l].B[p], NULL, N, r, out_f, (real)m->lora.scale, 1);
        }
        return;
    }
    matmul_forward(out, inp, lw->w[p], NULL, N, in, out_f, 1, 0);
    if (model_adapted(m, p)) {
        matmul_forward(h, inp, m->lora_params[l].A[p], NULL, N, in, r, 1, 0);
        tp_sum(m, h, (size_t)N * r);
    }
    tp_sum(m, out, (size_t)N * out_f);
    if (lw->b[p])
        for (int n = 0; n < N; n++)
            for (int o = 0; o < out_f; o++) out[(size_t)n * out_f + o] += lw->b[p][o];
    if (model_adapted(m, p))
        matmul_forward(out, h, m->lora_params[l].B[p], NULL, N, r, out_f, (real)m->lora.scale, 1);
}

/* logp[n] = logits[n][target] - logsumexp(logits[n]) over the whole vocabulary, from this rank's
 * vocabulary shard: three all-reduces of N values (max, sum of exponentials, target logit). */
static void vocab_parallel_logprob(Model *m, const int32_t *targets, int N) {
    Activations *a = &m->acts;
    logits_row_max(m->row_max, a->logits, N, m->local_vocab);
    if (m->tp_size > 1) allreduce_max_real(m->row_max, (size_t)N, m->tp_comm);
    logits_row_sumexp(m->row_sumexp, a->logits, m->row_max, N, m->local_vocab);
    logits_target(m->row_target, a->logits, targets, m->vocab_start, N, m->local_vocab);
    model_logprob_from_statistics(m, targets, N);
}

void model_logprob_from_statistics(Model *m, const int32_t *targets, int N) {
    if (m->tp_size > 1) {
        allreduce_sum_double(m->row_sumexp, (size_t)N, m->tp_comm);
        allreduce_sum_double(m->row_target, (size_t)N, m->tp_comm);
    }
    Activations *a = &m->acts;
    for (int n = 0; n < N; n++) {
        double lse = (double)m->row_max[n] + log(m->row_sumexp[n]);
        a->lse[n] = (real)lse;
        a->logp[n] = targets[n] >= 0 ? (real)(m->row_target[n] - lse) : 0;
    }
}

void model_forward(Model *m, const int32_t *tokens, const int32_t *targets, int B, int T) {
    const ModelConfig *c = &m->config;
    if (B > m->max_B || T > m->max_T)
        PAFT_FATAL("batch %d x %d exceeds the activations allocated for %d x %d", B, T, m->max_B,
                   m->max_T);
    const int N = B * T, d = c->hidden_size, Hq = m->local_heads, Hkv = m->local_kv_heads;
    const int D = c->head_dim, ff = m->local_ffn;
    const size_t nd = (size_t)N * d, nq = (size_t)N * Hq * D, nkv = (size_t)N * Hkv * D;
    const size_t nff = (size_t)N * ff;
    for (int n = 0; n < N; n++)
        if (tokens[n] < 0 || tokens[n] >= c->vocab_size || targets[n] >= c->vocab_size)
            PAFT_FATAL("token or target id %d at position %d is outside the vocabulary of %d",
                       tokens[n] < 0 || tokens[n] >= c->vocab_size ? tokens[n] : targets[n], n,
                       c->vocab_size);
    Activations *a = &m->acts;
    m->B = B;
    m->T = T;
    m->tokens = tokens;
    m->targets = targets;
    if (m->device) {
        m->backend->forward(m->device, tokens, targets, B, T);
        return;
    }
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) m->positions[b * T + t] = t;

    /* vocab-parallel embedding: each rank fills the rows of its tokens, the sum completes x0 */
    embedding_forward(a->x, tokens, m->weights.embed, N, d, m->vocab_start, m->local_vocab);
    tp_sum(m, a->x, nd);
    for (int l = 0; l < c->num_layers; l++) {
        const LayerWeights *lw = &m->weights.layers[l];
        real *x = a->x + l * nd, *x_next = a->x + (l + 1) * nd;
        real *ln1 = a->ln1 + l * nd, *q = a->q + l * nq, *k = a->k + l * nkv, *v = a->v + l * nkv;
        real *att = a->att + l * nq, *x_mid = a->x_mid + l * nd, *ln2 = a->ln2 + l * nd;
        real *gate = a->gate + l * nff, *up = a->up + l * nff, *act = a->act + l * nff;
        real *att_state = a->att_state + (size_t)l * B * Hq * T * attention_state_per_row(m, T);

        /* attention block: x_mid = x + o_proj(attention(rope(q), rope(k), v)); this rank's heads */
        rmsnorm_forward(ln1, a->ln1_rstd + (size_t)l * N, x, lw->attn_norm, N, d,
                        (float)c->rms_norm_eps);
        proj_forward(m, l, PROJ_Q, q, ln1, N);
        proj_forward(m, l, PROJ_K, k, ln1, N);
        proj_forward(m, l, PROJ_V, v, ln1, N);
        rope_forward(q, m->rope_cos, m->rope_sin, m->positions, N, Hq, D);
        rope_forward(k, m->rope_cos, m->rope_sin, m->positions, N, Hkv, D);
        if (m->simple_attention)
            attention_forward(att, att_state, q, k, v, B, T, Hq, Hkv, D);
        else
            attention_forward_fused(att, att_state, q, k, v, B, T, Hq, Hkv, D);
        proj_forward(m, l, PROJ_O, x_mid, att, N);
        residual_forward(x_mid, x_mid, x, nd);

        /* MLP block: x_next = x_mid + down_proj(silu(gate_proj(h)) * up_proj(h)); this rank's ffn */
        rmsnorm_forward(ln2, a->ln2_rstd + (size_t)l * N, x_mid, lw->mlp_norm, N, d,
                        (float)c->rms_norm_eps);
        proj_forward(m, l, PROJ_GATE, gate, ln2, N);
        proj_forward(m, l, PROJ_UP, up, ln2, N);
        swiglu_forward(act, gate, up, nff);
        proj_forward(m, l, PROJ_DOWN, x_next, act, N);
        residual_forward(x_next, x_next, x_mid, nd);
    }
    const real *x_last = a->x + (size_t)c->num_layers * nd;
    rmsnorm_forward(a->lnf, a->lnf_rstd, x_last, m->weights.final_norm, N, d,
                    (float)c->rms_norm_eps);
    matmul_forward(a->logits, a->lnf, m->weights.lm_head, NULL, N, d, m->local_vocab, 1, 0);
    vocab_parallel_logprob(m, targets, N);
}

/* ---- backward --------------------------------------------------------------------------------*/

static LayerWeights *full_grads(Model *m, int l) {
    return m->weight_grads_memory ? &m->weight_grads.layers[l] : NULL;
}

/* Backward of proj_forward: dinp += d/d inp; LoRA gradients (and W, b gradients if enabled).
 * Column-parallel: dinp gets this rank's PARTIAL sum (the caller all-reduces it once per block),
 * and so does the replicated A's gradient (summed over the group by the training step).
 * Row-parallel: dout is whole, so dinp (this rank's input slice) and A's shard gradient are
 * complete; the replicated B's gradient is complete and the same on every rank. */
static void proj_backward(Model *m, int l, Proj p, real *dinp, const real *dout, const real *inp,
                          int N) {
    const int in = model_local_in(m, p), out_f = model_local_out(m, p), r = m->lora.r;
    const LayerWeights *lw = &m->weights.layers[l];
    LayerWeights *g = full_grads(m, l);
    matmul_backward(dinp, g ? g->w[p] : NULL, g ? g->b[p] : NULL, dout, inp, lw->w[p], N, in,
                    out_f, 1);
    if (model_adapted(m, p)) {
        real *dh = m->scratch.dlora_h;
        memset(dh, 0, (size_t)N * r * sizeof(real));
        /* out += s h B^T with h = inp A^T */
        matmul_backward(dh, m->lora_grads[l].B[p], NULL, dout, lora_h_of(m, l, p, N),
                        m->lora_params[l].B[p], N, r, out_f, (real)m->lora.scale);
        matmul_backward(dinp, m->lora_grads[l].A[p], NULL, dh, inp, m->lora_params[l].A[p], N,
                        in, r, 1);
    }
}

static void zero(real *p, size_t n) { memset(p, 0, n * sizeof(real)); }

void model_backward(Model *m, const real *dlogp) {
    if (m->device) {
        m->backend->backward(m->device, dlogp);
        return;
    }
    const ModelConfig *c = &m->config;
    const int B = m->B, T = m->T, N = B * T, d = c->hidden_size, V = m->local_vocab;
    const int Hq = m->local_heads, Hkv = m->local_kv_heads, D = c->head_dim, ff = m->local_ffn;
    const size_t nd = (size_t)N * d, nq = (size_t)N * Hq * D, nkv = (size_t)N * Hkv * D;
    const size_t nff = (size_t)N * ff;
    const Activations *a = &m->acts;
    GradScratch *s = &m->scratch;
    Weights *gw = m->weight_grads_memory ? &m->weight_grads : NULL;

    /* head: logp -> this rank's logits -> final norm (the input gradient is partial: one sum) */
    zero(s->dlogits, (size_t)N * V);
    logprob_backward_shard(s->dlogits, dlogp, a->logits, a->lse, m->targets, m->vocab_start, N, V);
    zero(s->dln, nd);
    matmul_backward(s->dln, gw ? gw->lm_head : NULL, NULL, s->dlogits, a->lnf, m->weights.lm_head,
                    N, d, V, 1);
    tp_sum(m, s->dln, nd);
    zero(s->dx, nd);
    rmsnorm_backward(s->dx, gw ? gw->final_norm : NULL, s->dln, a->x + (size_t)c->num_layers * nd,
                     m->weights.final_norm, a->lnf_rstd, N, d);

    /* layers in reverse; s->dx holds d loss / d x_{l+1} on entry, d loss / d x_l on exit (whole
     * and identical on every rank of the tensor-parallel group) */
    for (int l = c->num_layers - 1; l >= 0; l--) {
        const LayerWeights *lw = &m->weights.layers[l];
        LayerWeights *g = full_grads(m, l);
        const real *x = a->x + l * nd, *ln1 = a->ln1 + l * nd, *q = a->q + l * nq;
        const real *k = a->k + l * nkv, *v = a->v + l * nkv, *att = a->att + l * nq;
        const real *x_mid = a->x_mid + l * nd, *ln2 = a->ln2 + l * nd;
        const real *gate = a->gate + l * nff, *up = a->up + l * nff, *act = a->act + l * nff;
        const real *att_state =
            a->att_state + (size_t)l * B * Hq * T * attention_state_per_row(m, T);

        /* MLP block; the residual passes dx through unchanged to x_mid */
        zero(s->dact, nff);
        proj_backward(m, l, PROJ_DOWN, s->dact, s->dx, act, N);
        zero(s->dgate, nff);
        zero(s->dup, nff);
        swiglu_backward(s->dgate, s->dup, s->dact, gate, up, nff);
        zero(s->dln, nd);
        proj_backward(m, l, PROJ_GATE, s->dln, s->dgate, ln2, N);
        proj_backward(m, l, PROJ_UP, s->dln, s->dup, ln2, N);
        tp_sum(m, s->dln, nd); /* the MLP block's one backward all-reduce */
        rmsnorm_backward(s->dx, g ? g->mlp_norm : NULL, s->dln, x_mid, lw->mlp_norm,
                         a->ln2_rstd + (size_t)l * N, N, d);

        /* attention block; the residual passes dx through to x */
        zero(s->datt, nq);
        proj_backward(m, l, PROJ_O, s->datt, s->dx, att, N);
        zero(s->dq, nq);
        zero(s->dk, nkv);
        zero(s->dv, nkv);
        if (m->simple_attention)
            attention_backward(s->dq, s->dk, s->dv, s->datt, att_state, q, k, v, B, T, Hq, Hkv, D);
        else
            attention_backward_fused(s->dq, s->dk, s->dv, s->datt, att, att_state, q, k, v, B, T,
                                     Hq, Hkv, D);
        rope_backward(s->dq, m->rope_cos, m->rope_sin, m->positions, N, Hq, D);
        rope_backward(s->dk, m->rope_cos, m->rope_sin, m->positions, N, Hkv, D);
        zero(s->dln, nd);
        proj_backward(m, l, PROJ_Q, s->dln, s->dq, ln1, N);
        proj_backward(m, l, PROJ_K, s->dln, s->dk, ln1, N);
        proj_backward(m, l, PROJ_V, s->dln, s->dv, ln1, N);
        tp_sum(m, s->dln, nd); /* the attention block's one backward all-reduce */
        rmsnorm_backward(s->dx, g ? g->attn_norm : NULL, s->dln, x, lw->attn_norm,
                         a->ln1_rstd + (size_t)l * N, N, d);
    }
    if (gw) embedding_backward(gw->embed, s->dx, m->tokens, N, d, m->vocab_start, m->local_vocab);
}
