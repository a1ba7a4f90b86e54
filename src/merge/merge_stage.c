/*
 * merge_stage.c - the collective merge stage (merge_stage.h): validate everything on rank 0, then
 * every rank merges and writes its rows of every tensor into one parallel-HDF5 file.
 *
 * Read top to bottom: the base model's tensor list, the inputs and their validation, the
 * attributes of the output file, the per-tensor work (copy or merge), and merge_stage_run.
 */
#include "merge/merge_stage.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/adapter.h"
#include "io/h5file.h"
#include "io/merged_h5.h"
#include "io/safetensors.h"
#include "loss/lora_delta.h"
#include "merge/merge.h"
#include "merge/merge_kernels.h"
#include "model/model_device.h"
#include "model/peft.h"
#include "parallel/collectives.h"

#define ADAPTER_FORMAT "paft-adapter-1"

/* A rank handles at most this many elements at once when it copies a tensor (the 128k x 8k
 * embedding of a 70B model would otherwise need GBs on a single rank). */
#define COPY_PIECE_ELEMENTS ((int64_t)1 << 22)

/* `given` when set, else <dir>/<name>; too long a path is an error, never a truncated name. */
static void path_or_default(char *dst, const char *given, const char *dir, const char *name,
                            const char *key) {
    int n = given[0] ? snprintf(dst, CONFIG_PATH_MAX, "%s", given)
                     : snprintf(dst, CONFIG_PATH_MAX, "%s/%s", dir, name);
    if (n < 0 || n >= CONFIG_PATH_MAX)
        PAFT_FATAL("%s: the path is longer than %d characters", key, CONFIG_PATH_MAX - 1);
}

void merge_stage_paths(const Config *cfg, char *sft_adapter, char *pref_adapter, char *out) {
    const char *dir = cfg->output.dir;
    path_or_default(sft_adapter, cfg->merge.sft_adapter, dir, "sft/adapter.h5", "merge.sft_adapter");
    path_or_default(pref_adapter, cfg->merge.pref_adapter, dir, "pref/adapter.h5", "merge.pref_adapter");
    path_or_default(out, cfg->merge.out, dir, "merged.h5", "merge.out");
}


/* A tensor of the merge, in the order of the output file (sorted HF names). */
typedef struct {
    const TensorView *view;
    const TensorInfo *info; /* in the base checkpoint */
    int layer, proj;        /* the decoder projection it is the weight of; proj -1 otherwise */
} StageTensor;

static int compare_tensors(const void *a, const void *b) {
    return strcmp(((const StageTensor *)a)->view->name, ((const StageTensor *)b)->view->name);
}


/* ---- the inputs --------------------------------------------------------------------------------- */

/* One of the merge's two adapters: a paft adapter.h5, or a PEFT adapter directory (one trained
 * with Hugging Face PEFT, or paft's <stage>/peft/ copy). */
typedef struct {
    const char *role; /* "sft" or "pref" */
    const char *key;  /* the configuration key naming it */
    char path[CONFIG_PATH_MAX];
    int is_peft;      /* a PEFT adapter directory */
    LoraConfig lora;  /* targets: the projections it adapts (a PEFT adapter may skip layers) */
    char stage[16];   /* the stage that trained it; "" when unknown (a PEFT adapter from PEFT) */
    int64_t step;     /* optimizer steps; -1 when unknown */
    H5File file;      /* adapter.h5: open on every rank during the merge */
    PeftAdapter peft; /* PEFT directory: likewise */
} StageAdapter;

typedef struct {
    char base[CONFIG_PATH_MAX];
    char out[CONFIG_PATH_MAX];
    StageAdapter adapter[2]; /* sft, pref */
    MergeParams params;
    H5FloatType dtype;
    ModelConfig config;
    Checkpoint ckpt;
    TensorView *views;
    int n_views;
    StageTensor *tensors; /* n_views, sorted by name */
    char fingerprint[17];
    const char *made_by_training; /* paft run's check: output.dir, which training will create */
} Stage;

/* ---- an adapter's factors, either kind ---------------------------------------------------------- */

/* Open an adapter for reading on the ranks of comm: an adapter.h5 collectively, a PEFT directory
 * by each rank alone (its safetensors header). */
static void adapter_open(StageAdapter *a, MPI_Comm comm) {
    if (a->is_peft) peft_adapter_open(&a->peft, a->path);
    else h5_open_read(&a->file, a->path, comm);
}

static void adapter_close(StageAdapter *a) {
    if (a->is_peft) peft_adapter_close(&a->peft);
    else h5_close(&a->file);
}

/* Does the adapter adapt projection p of this layer? An adapter.h5 adapts its targets in every
 * layer (read_h5_settings checks that); a PEFT adapter the modules it has factors for, which may
 * skip layers (PEFT's layers_to_transform). */
static int adapter_adapts(const StageAdapter *a, int layer, int p) {
    if (p < 0 || !a->lora.targets[p]) return 0;
    return !a->is_peft || peft_adapter_factor(&a->peft, layer, (Proj)p, 0) != NULL;
}

/* The name of factor `part` (0: A, 1: B) of a module in the adapter's file, for messages. */
static void factor_name(const StageAdapter *a, int layer, int p, int part, char *name, size_t n) {
    if (a->is_peft)
        snprintf(name, n, "tensor '%s'", peft_adapter_factor(&a->peft, layer, (Proj)p, part)->name);
    else
        snprintf(name, n, "/lora/model.layers.%d.%s/%c", layer, proj_module_name((Proj)p),
                 part ? 'B' : 'A');
}

/* Rows [row0, row0 + n) of B [out][r] and all of A [r][in] of one module (host memory); 0, and
 * nothing read, when the adapter does not adapt it (its delta is zero). Collective over the
 * adapter.h5's communicator: every rank calls it for the same modules. */
static int read_factors(StageAdapter *a, int layer, int p, int64_t out, int64_t in, int64_t row0,
                        int64_t n, real *A, real *B) {
    const int r = a->lora.r;
    if (!adapter_adapts(a, layer, p)) return 0;
    if (a->is_peft) {
        checkpoint_read_block(&a->peft.ckpt, peft_adapter_factor(&a->peft, layer, (Proj)p, 0), 0,
                              r, 0, in, A);
        checkpoint_read_block(&a->peft.ckpt, peft_adapter_factor(&a->peft, layer, (Proj)p, 1),
                              row0, n, 0, r, B);
        return 1;
    }
    char name[256];
    factor_name(a, layer, p, 0, name, sizeof name);
    H5Block whole_A = h5_whole(r, in, 1); /* every rank needs all of A */
    h5_read_real(&a->file, name, &whole_A, A);
    factor_name(a, layer, p, 1, name, sizeof name);
    H5Block rows_B = {out, r, row0, 0, n, r};
    h5_read_real(&a->file, name, &rows_B, B);
    return 1;
}

/* ---- checking the adapters (rank 0) --------------------------------------------------------------
 * Everything that could stop the merge is checked before the output file exists. */

/* An adapter.h5: its attributes, and every module under /lora an adapted projection of this model
 * with A [r][in] and B [out][r]. */
static void read_h5_settings(StageAdapter *a, const Stage *s, char *folded, size_t folded_size) {
    const char *path = a->path;
    H5File f;
    h5_open_read(&f, path, MPI_COMM_SELF); /* fatal when not HDF5 or truncated */
    if (H5Aexists(f.file, "format") <= 0)
        PAFT_FATAL("%s: HDF5 file without a 'format' attribute: not a paft adapter (%s)", path,
                   ADAPTER_FORMAT);
    char *format = h5_get_attr_string(&f, "format");
    if (strcmp(format, ADAPTER_FORMAT) != 0)
        PAFT_FATAL("%s: format '%s', expected a paft adapter (%s) for %s", path, format,
                   ADAPTER_FORMAT, a->key);
    free(format);
    char *fingerprint = h5_get_attr_string(&f, "base_fingerprint");
    if (strcmp(fingerprint, s->fingerprint) != 0)
        PAFT_FATAL("%s: adapter was trained on another base model (fingerprint %s; the base %s "
                   "has %s)", path, fingerprint, s->base, s->fingerprint);
    free(fingerprint);
    char *under = h5_get_attr_string(&f, "folded_adapter");
    snprintf(folded, folded_size, "%s", under);
    free(under);
    adapter_lora_config_of(&f, &a->lora);
    const int64_t r = a->lora.r;
    char *targets = h5_get_attr_string(&f, "targets"); /* as written, for the messages below */
    char *stage = h5_get_attr_string(&f, "stage");
    snprintf(a->stage, sizeof a->stage, "%s", stage);
    free(stage);
    a->step = h5_get_attr_int(&f, "step");

    /* every module under /lora is an adapted projection of this model ... */
    int n_modules = 0;
    char **modules = h5_list_group(&f, "/lora", &n_modules);
    for (int i = 0; i < n_modules; i++) {
        char weight[256];
        snprintf(weight, sizeof weight, "%s.weight", modules[i]);
        int layer, p = proj_from_name(weight, ".weight", &layer);
        if (p < 0 || layer >= s->config.num_layers || !a->lora.targets[p])
            PAFT_FATAL("%s: /lora/%s is not an adapted module of this model (%d layers, targets "
                       "%s)", path, modules[i], s->config.num_layers, targets);
        free(modules[i]);
    }
    free(modules);
    /* ... and every adapted projection has A [r][in] and B [out][r] */
    char name[256];
    for (int l = 0; l < s->config.num_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            if (!a->lora.targets[p]) continue;
            const int64_t in = proj_in(&s->config, (Proj)p), out = proj_out(&s->config, (Proj)p);
            const int64_t want[2][2] = {{r, in}, {out, r}};
            for (int k = 0; k < 2; k++) {
                factor_name(a, l, p, k, name, sizeof name);
                if (!h5_exists(&f, name))
                    PAFT_FATAL("%s: missing dataset %s (targets %s)", path, name, targets);
                int64_t dims[2];
                int ndim = h5_shape(&f, name, dims);
                if (ndim != 2 || dims[0] != want[k][0] || dims[1] != want[k][1])
                    PAFT_FATAL("%s: dataset %s is %lld x %lld, expected %lld x %lld (r = %lld from "
                               "the attributes)", path, name, (long long)dims[0],
                               (long long)dims[1], (long long)want[k][0], (long long)want[k][1],
                               (long long)r);
            }
        }
    free(targets);
    h5_close(&f);
}

/* A PEFT adapter directory: adapter_config.json, its tensors (peft_adapter_open), and that it is
 * an adapter of this base (the fingerprint paft's copies record; the shapes for all). */
static void read_peft_settings(StageAdapter *a, const Stage *s, char *folded, size_t folded_size) {
    a->is_peft = 1;
    peft_adapter_open(&a->peft, a->path);
    peft_adapter_check_base(&a->peft, &s->config, s->fingerprint, s->base);
    const PeftSettings *ps = &a->peft.settings;
    memset(&a->lora, 0, sizeof a->lora);
    a->lora.r = ps->r;
    a->lora.alpha = ps->alpha;
    a->lora.rslora = ps->rslora;
    a->lora.scale = ps->scale;
    for (int l = 0; l < a->peft.n_layers; l++)
        for (int p = 0; p < N_PROJ; p++)
            if (peft_adapter_factor(&a->peft, l, (Proj)p, 0)) a->lora.targets[p] = 1;
    const char *stage = checkpoint_metadata(&a->peft.ckpt, PEFT_STAGE_KEY);
    snprintf(a->stage, sizeof a->stage, "%s", stage ? stage : "");
    a->step = -1;
    const char *under = checkpoint_metadata(&a->peft.ckpt, PEFT_FOLDED_KEY);
    snprintf(folded, folded_size, "%s", under ? under : "");
    if (!checkpoint_metadata(&a->peft.ckpt, PEFT_FINGERPRINT_KEY))
        paft_log("merge: note: %s records no base model fingerprint (not written by paft): its "
                 "shapes match %s, which is all that can be checked\n", a->path, s->base);
    peft_adapter_close(&a->peft);
}

/* Rank 0: what kind of adapter a->path is, and its settings (above). */
static void read_adapter_settings(StageAdapter *a, const Stage *s, char *folded,
                                  size_t folded_size) {
    const char *path = a->path;
    if (!paft_path_exists(path))
        PAFT_FATAL("%s: no such file (%s; train the %s stage first, or set %s)", path, a->key,
                   a->role, a->key);
    a->is_peft = 0;
    if (!paft_is_directory(path)) {
        read_h5_settings(a, s, folded, folded_size);
        return;
    }
    if (!peft_is_adapter_dir(path))
        PAFT_FATAL("%s: is a directory but not a PEFT adapter (adapter_config.json and "
                   "adapter_model.safetensors, no model weights); %s takes a paft adapter file or "
                   "a PEFT adapter directory",
                   path, a->key);
    read_peft_settings(a, s, folded, folded_size);
}

/* Rank 0: every factor finite (a diverged adapter is not merged), and every value readable (a
 * PEFT adapter's tensors could be integers). */
static void check_values(StageAdapter *a, const ModelConfig *c) {
    adapter_open(a, MPI_COMM_SELF);
    const char *file = a->is_peft ? a->peft.weights_path : a->path;
    char name[320];
    for (int l = 0; l < c->num_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            if (!adapter_adapts(a, l, p)) continue;
            const int64_t in = proj_in(c, (Proj)p), out = proj_out(c, (Proj)p);
            real *A = paft_malloc((size_t)(a->lora.r * in) * sizeof(real));
            real *B = paft_malloc((size_t)(out * a->lora.r) * sizeof(real));
            read_factors(a, l, p, out, in, 0, out, A, B);
            factor_name(a, l, p, 0, name, sizeof name);
            paft_require_finite(A, a->lora.r * in, file, name,
                                ": a diverged adapter is not merged");
            factor_name(a, l, p, 1, name, sizeof name);
            paft_require_finite(B, out * a->lora.r, file, name,
                                ": a diverged adapter is not merged");
            free(A);
            free(B);
        }
    adapter_close(a);
}

/* Do two checked adapters hold the same delta: the same scale, the same modules, the same factors
 * bit for bit? (An adapter.h5 and paft's PEFT copy of it do.) */
static int same_factors(StageAdapter *x, StageAdapter *y, const ModelConfig *c) {
    if (x->lora.scale != y->lora.scale || x->lora.r != y->lora.r) return 0;
    adapter_open(x, MPI_COMM_SELF);
    adapter_open(y, MPI_COMM_SELF);
    int same = 1;
    const int64_t r = x->lora.r;
    for (int l = 0; l < c->num_layers && same; l++)
        for (int p = 0; p < N_PROJ && same; p++) {
            const int adapted = adapter_adapts(x, l, p);
            if (adapted != adapter_adapts(y, l, p)) same = 0;
            if (!adapted || !same) continue;
            const int64_t in = proj_in(c, (Proj)p), out = proj_out(c, (Proj)p);
            const size_t n = (size_t)(r * in + out * r);
            real *fx = paft_malloc(n * sizeof(real)), *fy = paft_malloc(n * sizeof(real));
            read_factors(x, l, p, out, in, 0, out, fx, fx + r * in);
            read_factors(y, l, p, out, in, 0, out, fy, fy + r * in);
            same = memcmp(fx, fy, n * sizeof(real)) == 0;
            free(fx);
            free(fy);
        }
    adapter_close(x);
    adapter_close(y);
    return same;
}

/* An adapter trained on base + another adapter (the sequential baseline's DPO) is a delta
 * relative to that model. It composes only with the very adapter it was trained on: merging it as
 * the preference delta with that SFT adapter (task_arithmetic, weights 1,1) gives exactly the
 * sequential model. Anything else would add a delta to the wrong model. "The very adapter": the
 * same file, or the same factors in the other format (adapter.h5 and its <stage>/peft/ copy). */
static void check_sequential(const StageAdapter *a, Stage *s, const char *folded) {
    StageAdapter *sft = &s->adapter[0];
    int same = 0; /* the SFT slot itself can never be a sequential stage's lower adapter */
    if (a != sft && paft_path_exists(folded)) {
        same = paft_same_file(folded, sft->path);
        if (!same) {
            StageAdapter under = {.role = "folded", .key = "folded_adapter"};
            snprintf(under.path, sizeof under.path, "%s", folded);
            char deeper[CONFIG_PATH_MAX];
            read_adapter_settings(&under, s, deeper, sizeof deeper);
            same = !deeper[0] && same_factors(&under, sft, &s->config);
        }
    } else if (a != sft) {
        /* a run directory moved or copied elsewhere (scratch to project space): the file
         * recorded is gone and the SFT adapter given cannot be compared with it; say so, and
         * how to go on */
        PAFT_FATAL("%s: adapter was trained on the base with %s folded in (a sequential run), "
                   "and that file no longer exists (moved or deleted?), so it cannot be compared "
                   "with merge.sft_adapter %s: the delta composes only with that very adapter; if "
                   "%s is it, moved, make %s a symbolic link to it",
                   a->path, folded, sft->path, sft->path, folded);
    }
    if (!same)
        PAFT_FATAL("%s: adapter was trained on the base with %s folded in (a sequential run): "
                   "its delta is relative to that model, not to %s; it can only be merged as "
                   "the preference delta together with that SFT adapter",
                   a->path, folded, s->base);
    paft_log("merge: %s was trained on top of %s (sequential): the deltas compose\n", a->path,
             sft->path);
}

/* Rank 0: one adapter, all of the above. Fills a->is_peft, lora, stage, step. */
static void validate_adapter(StageAdapter *a, Stage *s) {
    char folded[CONFIG_PATH_MAX];
    read_adapter_settings(a, s, folded, sizeof folded);
    if (folded[0]) check_sequential(a, s, folded);
    check_values(a, &s->config);
}

/* The merge parameters of [merge], resolved (fatal on invalid values). */
static MergeParams params_from_config(const Config *cfg) {
    MergeParams p = merge_params_default(merge_method_from_name(cfg->merge.method));
    for (int i = 0; i < 2; i++) {
        p.weight[i] = cfg->merge.weights[i];
        p.density[i] = cfg->merge.density[i];
    }
    if (strcmp(cfg->merge.normalize, "true") == 0) p.normalize = 1;
    else if (strcmp(cfg->merge.normalize, "false") == 0) p.normalize = 0;
    else if (strcmp(cfg->merge.normalize, "auto") == 0) p.normalize = MERGE_NORMALIZE_AUTO;
    else PAFT_FATAL("merge.normalize: '%s' (expected auto, true or false)", cfg->merge.normalize);
    p.lambda = cfg->merge.lambda;
    if (strcmp(cfg->merge.sign, "sum") == 0) p.sign_by_count = 0;
    else if (strcmp(cfg->merge.sign, "count") == 0) p.sign_by_count = 1;
    else PAFT_FATAL("merge.sign: '%s' (expected sum or count)", cfg->merge.sign);
    if (strcmp(cfg->merge.rescale, "density") == 0) p.dare_rescale_l1 = 0;
    else if (strcmp(cfg->merge.rescale, "l1") == 0) p.dare_rescale_l1 = 1;
    else PAFT_FATAL("merge.rescale: '%s' (expected density or l1)", cfg->merge.rescale);
    if (cfg->merge.seed < 0) PAFT_FATAL("merge.seed: %d must not be negative", cfg->merge.seed);
    p.seed = (uint64_t)cfg->merge.seed;
    merge_params_resolve(&p);
    return p;
}

static H5FloatType dtype_from_config(const Config *cfg) {
    if (strcmp(cfg->merge.dtype, "bf16") == 0) return H5_BFLOAT16;
    if (strcmp(cfg->merge.dtype, "fp32") == 0) return H5_FLOAT32;
    PAFT_FATAL("merge.dtype: '%s' (expected bf16 or fp32)", cfg->merge.dtype);
}

/* Do two spellings name the same directory, trailing slashes aside? (For directories that do not
 * exist yet, so realpath cannot say.) */
static int same_directory_name(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    while (la > 1 && a[la - 1] == '/') la--;
    while (lb > 1 && b[lb - 1] == '/') lb--;
    return la == lb && strncmp(a, b, la) == 0;
}

/* Rank 0: the output can be created, and it overwrites none of the inputs: not an adapter, not the
 * base model's file, nor a file in the base model's directory (its weights, shards, index, config),
 * nor any existing file but an earlier merged model. */
static void validate_output(const Stage *s) {
    const char *out = s->out;
    if (paft_is_directory(out)) PAFT_FATAL("%s: merge.out is a directory, expected a file name", out);
    char *dir = paft_strdup(out);
    char *slash = strrchr(dir, '/');
    if (slash == dir) dir[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(dir, 2, ".");
    if (!paft_is_directory(dir)) {
        /* before paft run's training, the default <output.dir>/merged.h5 has no directory yet */
        if (!s->made_by_training || !same_directory_name(dir, s->made_by_training))
            PAFT_FATAL("%s: the directory %s of merge.out does not exist", out, dir);
    } else if (access(dir, W_OK | X_OK) != 0) {
        PAFT_FATAL("%s: the directory %s of merge.out is not writable", out, dir);
    }
    if (paft_path_exists(out)) {
        for (int i = 0; i < 2; i++)
            if (paft_same_file(out, s->adapter[i].path))
                PAFT_FATAL("%s: merge.out is the %s adapter itself", out, s->adapter[i].role);
        if (paft_same_file(out, s->base) || (paft_is_directory(s->base) && paft_same_file(dir, s->base)))
            PAFT_FATAL("%s: merge.out would overwrite a file of the base model (model.path = %s); "
                       "write the merged model elsewhere", out, s->base);
        /* any other existing file is replaced only if an earlier merge wrote it: a training or
         * evaluation data file, a configuration or a PEFT adapter's weights given as merge.out
         * were overwritten with HDF5 */
        if (!merged_is_merged_file(out))
            PAFT_FATAL("%s: merge.out exists and is not a paft merged model (only an earlier "
                       "merge's output is overwritten; this may be one of your inputs: data, a "
                       "configuration, an adapter's weights); delete it, or write the merged model "
                       "elsewhere", out);
    }
    free(dir);
}

/* ---- the attributes of the output file ---------------------------------------------------------- */

static char *parameters_json(const Stage *s, const Config *cfg) {
    const MergeParams *p = &s->params;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "method", merge_method_name(p->method));
    cJSON_AddItemToObject(root, "weights", cJSON_CreateDoubleArray(p->weight, 2));
    cJSON_AddItemToObject(root, "density", cJSON_CreateDoubleArray(p->density, 2));
    cJSON_AddBoolToObject(root, "normalize", p->normalize);
    cJSON_AddStringToObject(root, "normalize_setting", cfg->merge.normalize);
    cJSON_AddNumberToObject(root, "lambda", p->lambda);
    cJSON_AddStringToObject(root, "sign", p->sign_by_count ? "count" : "sum");
    cJSON_AddStringToObject(root, "rescale", p->dare_rescale_l1 ? "l1" : "density");
    cJSON_AddNumberToObject(root, "seed", (double)p->seed);
    cJSON_AddStringToObject(root, "dtype", h5_float_type_name(s->dtype));
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

static char *sources_json(const Stage *s) {
    char path[PATH_MAX];
    cJSON *root = cJSON_CreateObject();
    paft_absolute_path(s->base, path, sizeof path);
    cJSON_AddStringToObject(root, "base", path);
    cJSON_AddStringToObject(root, "base_fingerprint", s->fingerprint);
    for (int i = 0; i < 2; i++) {
        const StageAdapter *a = &s->adapter[i];
        cJSON *o = cJSON_AddObjectToObject(root, i == 0 ? "sft_adapter" : "pref_adapter");
        paft_absolute_path(a->path, path, sizeof path);
        cJSON_AddStringToObject(o, "path", path);
        cJSON_AddStringToObject(o, "format", a->is_peft ? "peft" : ADAPTER_FORMAT);
        cJSON_AddStringToObject(o, "stage", a->stage);
        cJSON_AddNumberToObject(o, "step", (double)a->step);
        cJSON_AddNumberToObject(o, "r", a->lora.r);
        cJSON_AddNumberToObject(o, "alpha", a->lora.alpha);
        cJSON_AddBoolToObject(o, "rslora", a->lora.rslora);
        cJSON *targets = cJSON_AddArrayToObject(o, "targets");
        for (int p = 0; p < N_PROJ; p++)
            if (a->lora.targets[p]) cJSON_AddItemToArray(targets, cJSON_CreateString(proj_short_name((Proj)p)));
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

/* ---- per-tensor work ---------------------------------------------------------------------------- */

/* Buffers of one rank, grown as needed and reused tensor after tensor. */
typedef struct {
    real *base, *delta[2], *A, *B;
    size_t cap_base, cap_delta[2], cap_A, cap_B;
    float *base_f, *delta_f[2]; /* the fp64 test build only: merge_tensor_rows computes in float */
    uint16_t *bf16;
    size_t cap_bf16;
    /* the merge backend's buffers when it is not the host (model.device = cuda) */
    float *dev_base, *dev_delta[2], *dev_A, *dev_B;
    size_t cap_dev_base, cap_dev_delta[2], cap_dev_A, cap_dev_B;
} Scratch;

static void grow(void **buf, size_t *cap, size_t need, size_t elem) {
    need = PAFT_MAX(need, (size_t)1); /* HDF5 wants a buffer even for an empty selection */
    if (need <= *cap) return;
    free(*buf);
    *buf = paft_malloc(need * elem);
    *cap = need;
}

/* grow() for a buffer in the merge backend's memory */
static void grow_on(MergeBackend be, float **buf, size_t *cap, size_t need) {
    need = PAFT_MAX(need, (size_t)1);
    if (need <= *cap) return;
    if (*buf) be.k->release(be.s, *buf);
    *buf = be.k->alloc(be.s, need * sizeof(float));
    *cap = need;
}

/* The float form of a real buffer: the buffer itself in the program (real is float). */
static float *as_float(real *data, float **converted, size_t n) {
    if (sizeof(real) == sizeof(float)) return (float *)(void *)data;
    *converted = paft_realloc(*converted, PAFT_MAX(n, (size_t)1) * sizeof(float));
    for (size_t i = 0; i < n; i++) (*converted)[i] = (float)data[i];
    return *converted;
}

typedef struct {
    double read, compute, write;
} StageTimes;

/* This rank's block of a tensor in the output file's notation (cols 0 for a 1-D tensor). */
static H5Block out_block(const StageTensor *t, int64_t row0, int64_t n) {
    int64_t cols = t->info->ndim == 1 ? 0 : t->view->cols;
    H5Block b = {t->view->rows, cols, row0, 0, n, cols};
    return b;
}

static void write_rows(H5File *out, const char *dataset, const StageTensor *t, int64_t row0,
                       int64_t n, const float *values, H5FloatType dtype, Scratch *sc) {
    H5Block b = out_block(t, row0, n);
    size_t count = (size_t)(n * t->view->cols);
    if (dtype == H5_FLOAT32) {
        h5_write_float_block(out, dataset, &b, H5_FLOAT32, values);
        return;
    }
    grow((void **)&sc->bf16, &sc->cap_bf16, count, sizeof(uint16_t));
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) sc->bf16[i] = fp32_to_bf16(values[i]);
    h5_write_float_block(out, dataset, &b, H5_BFLOAT16, sc->bf16);
}

/* Copy an untouched tensor, each rank its rows, in pieces of bounded size. Every rank makes the
 * same number of (collective) writes, some of them empty. */
static void copy_tensor(Stage *s, H5File *out, const char *dataset, const StageTensor *t,
                        int rank, int size, Scratch *sc, StageTimes *tm) {
    const int64_t rows = t->view->rows, cols = t->view->cols;
    int64_t row0, n;
    merge_row_range(rows, rank, size, &row0, &n);
    const int64_t piece = PAFT_MAX((int64_t)1, COPY_PIECE_ELEMENTS / cols);
    const int64_t most = (rows + size - 1) / size; /* rank 0 holds the longest block */
    const int64_t pieces = (most + piece - 1) / piece;
    grow((void **)&sc->base, &sc->cap_base, (size_t)(PAFT_MIN(piece, n) * cols), sizeof(real));
    for (int64_t k = 0; k < pieces; k++) {
        int64_t start = PAFT_MIN(k * piece, n), count = PAFT_MIN(piece, n - start);
        double t0 = MPI_Wtime();
        if (count > 0) checkpoint_read_block(&s->ckpt, t->info, row0 + start, count, 0, cols, sc->base);
        double t1 = MPI_Wtime();
        float *values = as_float(sc->base, &sc->base_f, (size_t)(count * cols));
        write_rows(out, dataset, t, row0 + start, count, values, s->dtype, sc);
        tm->read += t1 - t0;
        tm->write += MPI_Wtime() - t1;
    }
}

/* This rank's rows of delta = s B A of one adapter, in host memory. */
static void form_delta(StageAdapter *a, const StageTensor *t, int64_t row0, int64_t n,
                       real *A, real *B, real *delta) {
    if (read_factors(a, t->layer, t->proj, t->view->rows, t->view->cols, row0, n, A, B))
        lora_delta(delta, A, B, (int)n, (int)t->view->cols, a->lora.r, (real)a->lora.scale);
    else
        memset(delta, 0, (size_t)(n * t->view->cols) * sizeof(real));
}

/* The same in the merge backend's memory: the factors go up, the delta is formed there. */
static void form_delta_on(MergeBackend be, StageAdapter *a, const StageTensor *t, int64_t row0,
                          int64_t n, Scratch *sc, float *delta) {
    const int64_t cols = t->view->cols;
    const int r = a->lora.r;
    if (!read_factors(a, t->layer, t->proj, t->view->rows, cols, row0, n, sc->A, sc->B)) {
        be.k->zero(be.s, delta, (size_t)(n * cols));
        return;
    }
    be.k->to_device(be.s, sc->dev_A, sc->A, (size_t)(r * cols) * sizeof(float));
    be.k->to_device(be.s, sc->dev_B, sc->B, (size_t)(n * r) * sizeof(float));
    be.k->lora_delta(be.s, delta, sc->dev_A, sc->dev_B, n, cols, r, (float)a->lora.scale);
}

/* Finite inputs merge to finite values unless merge.weights or merge.lambda push them past the
 * float range (1e300, say): refused here, before the rows are written, rather than a model of inf
 * that paft eval scores as NaN. The temporary file goes too: nothing of the merge is left. */
static void require_finite_merged(const StageTensor *t, int64_t row0, const float *values,
                                  size_t count, const MergeParams *p, const H5File *file) {
    const char *out = file->path;
    for (size_t i = 0; i < count; i++)
        if (!isfinite(values[i])) {
            remove(file->tmp_path); /* POSIX: the other ranks' open handles do not stop it */
            PAFT_FATAL("%s: merging %s gives %g at row %lld: merge.weights = %g,%g with "
                       "merge.lambda = %g scale the deltas beyond the float range; %s was not "
                       "written",
                       t->view->name, merge_method_name(p->method), (double)values[i],
                       (long long)(row0 + (int64_t)(i / (size_t)t->view->cols)), p->weight[0],
                       p->weight[1], p->lambda, out);
        }
}

static void merge_tensor(Stage *s, H5File *out, const char *dataset, const StageTensor *t,
                         uint64_t tensor_id, int rank, int size, MPI_Comm comm, MergeBackend be,
                         Scratch *sc, StageTimes *tm, MergeStats *stats) {
    const int64_t rows = t->view->rows, cols = t->view->cols;
    int64_t row0, n;
    merge_row_range(rows, rank, size, &row0, &n);
    const size_t count = (size_t)(n * cols);
    const int max_r = PAFT_MAX(s->adapter[0].lora.r, s->adapter[1].lora.r);
    grow((void **)&sc->base, &sc->cap_base, count, sizeof(real));
    grow((void **)&sc->A, &sc->cap_A, (size_t)(max_r * cols), sizeof(real));
    grow((void **)&sc->B, &sc->cap_B, (size_t)(n * max_r), sizeof(real));

    double t0 = MPI_Wtime(), t1, t2;
    if (n > 0) checkpoint_read_block(&s->ckpt, t->info, row0, n, 0, cols, sc->base);
    float *base = as_float(sc->base, &sc->base_f, count);
    if (be.k->host_memory) {
        for (int k = 0; k < 2; k++) {
            grow((void **)&sc->delta[k], &sc->cap_delta[k], count, sizeof(real));
            form_delta(&s->adapter[k], t, row0, n, sc->A, sc->B, sc->delta[k]);
        }
        t1 = MPI_Wtime();
        float *d0 = as_float(sc->delta[0], &sc->delta_f[0], count);
        float *d1 = as_float(sc->delta[1], &sc->delta_f[1], count);
        merge_tensor_rows_on(be, &s->params, comm, tensor_id, rows, cols, row0, n, base, d0, d1,
                             base, stats);
    } else {
        /* the device: W's rows and the factors go up, theta's rows come down (the CUDA
         * backend exists in the float build only: real is float here) */
        grow_on(be, &sc->dev_base, &sc->cap_dev_base, count);
        grow_on(be, &sc->dev_A, &sc->cap_dev_A, (size_t)(max_r * cols));
        grow_on(be, &sc->dev_B, &sc->cap_dev_B, (size_t)(n * max_r));
        be.k->to_device(be.s, sc->dev_base, base, count * sizeof(float));
        for (int k = 0; k < 2; k++) {
            grow_on(be, &sc->dev_delta[k], &sc->cap_dev_delta[k], count);
            form_delta_on(be, &s->adapter[k], t, row0, n, sc, sc->dev_delta[k]);
        }
        t1 = MPI_Wtime();
        merge_tensor_rows_on(be, &s->params, comm, tensor_id, rows, cols, row0, n, sc->dev_base,
                             sc->dev_delta[0], sc->dev_delta[1], sc->dev_base, stats);
        be.k->to_host(be.s, base, sc->dev_base, count * sizeof(float));
    }
    t2 = MPI_Wtime();
    require_finite_merged(t, row0, base, count, &s->params, out);
    write_rows(out, dataset, t, row0, n, base, s->dtype, sc);
    tm->read += t1 - t0; /* includes forming delta: it is a few % of reading W */
    tm->compute += t2 - t1;
    tm->write += MPI_Wtime() - t2;
}

/* A tensor is merged where either adapter adapts it, else copied (the adapters open). */
static int tensor_merged(const Stage *s, const StageTensor *t) {
    return adapter_adapts(&s->adapter[0], t->layer, t->proj) ||
           adapter_adapts(&s->adapter[1], t->layer, t->proj);
}

static int count_merged(const Stage *s) {
    int n = 0;
    for (int i = 0; i < s->n_views; i++) n += tensor_merged(s, &s->tensors[i]);
    return n;
}

/* ---- the stage -------------------------------------------------------------------------------- */

/* merge.device: where this rank merges its rows. The file is the same bits on the CPU and on a GPU
 * (kernels/merge_cuda.cu), so `auto` may choose per rank: the GPU when the model runs on CUDA and
 * this process sees one, else the CPU (a training configuration merges on a node without GPUs). */
static const MergeKernels *merge_kernels_for(const Config *cfg) {
    const char *want = cfg->merge.device;
    if (strcmp(want, "cpu") == 0) return &merge_kernels_cpu;
    if (strcmp(want, "cuda") == 0) return &merge_kernels_cuda; /* its create says what is missing */
    if (strcmp(want, "auto") != 0)
        PAFT_FATAL("merge.device: '%s' (expected auto, cpu or cuda)", want);
    if (device_backend_by_name(cfg->model.device, "model.device") != &device_backend_cuda)
        return &merge_kernels_cpu;
    if (merge_kernels_cuda.device_count() > 0) return &merge_kernels_cuda;
    paft_log("merge: note: model.device = cuda, but %s: merging on the CPU (merge.device = auto; "
             "the merged file is the same)\n",
             merge_kernels_cuda.available ? "no GPU is visible" : "paft was built without CUDA");
    return &merge_kernels_cpu;
}

static void open_base(Stage *s) {
    model_config_of_path(s->base, &s->config);
    checkpoint_open(&s->ckpt, s->base);
    s->n_views = model_weight_views(&s->config, &s->views);
    s->tensors = paft_calloc((size_t)s->n_views, sizeof(StageTensor));
    for (int i = 0; i < s->n_views; i++) {
        StageTensor *t = &s->tensors[i];
        t->view = &s->views[i];
        int64_t shape[2] = {t->view->rows, t->view->cols};
        t->info = checkpoint_require(&s->ckpt, t->view->name, t->view->cols == 1 ? 1 : 2, shape);
        t->proj = proj_from_name(t->view->name, ".weight", &t->layer);
    }
    qsort(s->tensors, (size_t)s->n_views, sizeof(StageTensor), compare_tensors);
}

/* The merge reads its base as Hugging Face safetensors (the adapters' fingerprint is of those
 * bytes). train and eval also take a merged .h5 as model.path, so users try it here too: say what
 * to do rather than let the safetensors reader report a nonsense header length. */
static void refuse_hdf5_base(const char *path) {
    if (!adapter_path_is_hdf5(path)) return; /* the base reader reports what it is */
    if (merged_is_merged_file(path))
        PAFT_FATAL("%s: model.path is a merged model (paft HDF5); the merge needs a Hugging Face "
                   "base model (config.json + safetensors): `paft export %s DIR` writes one",
                   path, path);
    PAFT_FATAL("%s: model.path is an HDF5 file (an adapter or checkpoint?); the merge needs a "
               "Hugging Face base model (config.json + safetensors)", path);
}

static void stage_init(Stage *s, const Config *cfg) {
    memset(s, 0, sizeof *s);
    snprintf(s->base, sizeof s->base, "%s", cfg->model.path);
    merge_stage_paths(cfg, s->adapter[0].path, s->adapter[1].path, s->out);
    s->adapter[0].role = "sft";
    s->adapter[0].key = "merge.sft_adapter";
    s->adapter[1].role = "pref";
    s->adapter[1].key = "merge.pref_adapter";
}

static void stage_close_base(Stage *s) {
    free(s->tensors);
    free(s->views);
    checkpoint_close(&s->ckpt);
    model_config_free(&s->config);
}

/* Magnitude top-k must keep something in every tensor it sparsifies. targets[k]: the modules
 * adapter k adapts. */
static void check_density_keeps_some(const Stage *s, const int *const targets[2]) {
    const MergeParams *p = &s->params;
    if (p->method != MERGE_TIES && p->method != MERGE_MAGNITUDE) return;
    for (int i = 0; i < s->n_views; i++) {
        const StageTensor *t = &s->tensors[i];
        if (t->proj < 0 || !(targets[0][t->proj] || targets[1][t->proj])) continue;
        int64_t numel = t->view->rows * t->view->cols;
        for (int k = 0; k < 2; k++)
            if (p->density[k] < 1 && (int64_t)(p->density[k] * (double)numel) <= 0)
                PAFT_FATAL("merge.density: density %g (%s) keeps int(density * numel) = 0 of "
                           "the %lld elements of %s (expected at least one)", p->density[k],
                           s->adapter[k].role, (long long)numel, t->view->name);
    }
}

/* The merge's two slots are not interchangeable: the weights, densities, SLERP's t and the
 * /stats labels follow them. A preference adapter in the SFT slot together with an SFT adapter in
 * the preference slot is a swap, refused. One of them alone (two SFT adapters, say) is a merge
 * someone may mean: noted. */
static void check_roles(const Stage *s) {
    const StageAdapter *sft = &s->adapter[0], *pref = &s->adapter[1];
    /* a PEFT adapter not written by paft does not say which stage trained it: no check */
    const int sft_slot_ok = !sft->stage[0] || strcmp(sft->stage, "sft") == 0;
    const int pref_slot_ok = !pref->stage[0] || strcmp(pref->stage, "sft") != 0;
    if (!sft_slot_ok && !pref_slot_ok)
        PAFT_FATAL("%s: merge.sft_adapter holds an adapter of the %s stage and merge.pref_adapter "
                   "(%s) one of the sft stage: the two are swapped (weights, densities and "
                   "SLERP's t follow the slots)", sft->path, sft->stage, pref->path);
    if (!sft_slot_ok)
        paft_log("merge: note: merge.sft_adapter %s was trained by the %s stage, not sft\n",
                 sft->path, sft->stage);
    if (!pref_slot_ok)
        paft_log("merge: note: merge.pref_adapter %s was trained by the sft stage\n", pref->path);
}

/* Rank 0: everything that does not need the adapters: model.adapter unset, the base model
 * (config.json, every tensor at its shape), the parameters, the dtype, the output path. Opens the
 * base (s->config, s->ckpt, s->views, s->tensors). */
static void validate_base_and_settings(Stage *s, const Config *cfg) {
    if (cfg->model.adapter[0])
        PAFT_FATAL("model.adapter = %s: the merge combines two adapters over the plain base "
                   "model, so model.adapter must be empty for paft merge and paft run",
                   cfg->model.adapter);
    if (!paft_path_exists(s->base)) PAFT_FATAL("%s: model.path does not exist", s->base);
    refuse_hdf5_base(s->base);
    s->params = params_from_config(cfg);
    s->dtype = dtype_from_config(cfg);
    open_base(s);
    for (int i = 0; i < s->n_views; i++) {
        const TensorView *v = &s->views[i];
        int64_t shape[2] = {v->rows, v->cols};
        checkpoint_require(&s->ckpt, v->name, v->cols == 1 ? 1 : 2, shape);
    }
    validate_output(s);
}

/* Rank 0: the base model, both adapters, the parameters, the output. Returns nothing: any problem
 * ends the job here, before a file is created. */
static void validate(Stage *s, const Config *cfg) {
    validate_base_and_settings(s, cfg);
    model_fingerprint(&s->ckpt, s->views, s->n_views, s->fingerprint);
    for (int a = 0; a < 2; a++) validate_adapter(&s->adapter[a], s);
    if (paft_same_file(s->adapter[0].path, s->adapter[1].path))
        PAFT_FATAL("%s: %s and %s name the same adapter; the merge combines two different ones",
                   s->adapter[1].path, s->adapter[0].key, s->adapter[1].key);
    check_roles(s);
    const int *const targets[2] = {s->adapter[0].lora.targets, s->adapter[1].lora.targets};
    check_density_keeps_some(s, targets);
}

void merge_stage_run(const Config *cfg, MPI_Comm world) {
    int rank, size;
    CHECK_MPI(MPI_Comm_rank(world, &rank));
    CHECK_MPI(MPI_Comm_size(world, &size));
    const double t_start = MPI_Wtime();
    Stage s;
    stage_init(&s, cfg);

    /* 1. validation on rank 0 (one message, not one per rank); the others wait for its verdict */
    char *parameters = NULL, *sources = NULL;
    if (rank == 0) {
        validate(&s, cfg);
        parameters = parameters_json(&s, cfg);
        sources = sources_json(&s);
    }
    int ok = 1;
    CHECK_MPI(MPI_Bcast(&ok, 1, MPI_INT, 0, world));
    if (rank != 0) open_base(&s);
    CHECK_MPI(MPI_Bcast(&s.params, (int)sizeof s.params, MPI_BYTE, 0, world));
    CHECK_MPI(MPI_Bcast(&s.dtype, (int)sizeof s.dtype, MPI_BYTE, 0, world));
    CHECK_MPI(MPI_Bcast(s.fingerprint, (int)sizeof s.fingerprint, MPI_CHAR, 0, world));
    for (int a = 0; a < 2; a++) {
        CHECK_MPI(MPI_Bcast(&s.adapter[a].lora, (int)sizeof(LoraConfig), MPI_BYTE, 0, world));
        CHECK_MPI(MPI_Bcast(s.adapter[a].stage, (int)sizeof s.adapter[a].stage, MPI_CHAR, 0, world));
        CHECK_MPI(MPI_Bcast(&s.adapter[a].step, 1, MPI_INT64_T, 0, world));
        CHECK_MPI(MPI_Bcast(&s.adapter[a].is_peft, 1, MPI_INT, 0, world));
    }
    parameters = broadcast_string(parameters, world);
    sources = broadcast_string(sources, world);
    for (int a = 0; a < 2; a++) adapter_open(&s.adapter[a], world);

    const int n_merged = count_merged(&s);
    paft_log("merge: %s of %s (sft) and %s (pref) into %s: %d tensors, %d merged, %s, %d rank%s\n",
             merge_method_name(s.params.method), s.adapter[0].path, s.adapter[1].path, s.base,
             s.n_views, n_merged, h5_float_type_name(s.dtype), size, size == 1 ? "" : "s");

    /* where this rank computes: before the output file exists, so that a missing GPU leaves none */
    MergeBackend be = {merge_kernels_for(cfg), NULL};
    be.s = be.k->create();

    /* 2. the output file: attributes, then every tensor in sorted order */
    H5File out;
    h5_create(&out, s.out, world);
    h5_set_attr_string(&out, "format", MERGED_FORMAT);
    h5_set_attr_string(&out, "paft_version", PAFT_VERSION);
    h5_set_attr_string(&out, "config", s.config.json_text);
    h5_set_attr_string(&out, "method", merge_method_name(s.params.method));
    h5_set_attr_string(&out, "parameters", parameters);
    h5_set_attr_string(&out, "sources", sources);
    char base_abs[PATH_MAX];
    paft_absolute_path(s.base, base_abs, sizeof base_abs);
    char *base_attr = broadcast_string(rank == 0 ? paft_strdup(base_abs) : NULL, world);
    h5_set_attr_string(&out, "base_model", base_attr);
    free(base_attr);
    h5_set_attr_string(&out, "base_fingerprint", s.fingerprint);
    h5_set_attr_string(&out, "dtype", h5_float_type_name(s.dtype));
    h5_create_group(&out, "/weights");
    h5_create_group(&out, "/stats");

    Scratch sc;
    memset(&sc, 0, sizeof sc);
    StageTimes tm = {0, 0, 0};
    double small_total[3] = {0, 0, 0}, numel_total = 0;
    char dataset[256];
    for (int i = 0; i < s.n_views; i++) {
        const StageTensor *t = &s.tensors[i];
        snprintf(dataset, sizeof dataset, "/weights/%s", t->view->name);
        h5_create_float_dataset(&out, dataset, t->view->rows, t->info->ndim == 1 ? 0 : t->view->cols,
                                s.dtype);
        if (!tensor_merged(&s, t)) {
            copy_tensor(&s, &out, dataset, t, rank, size, &sc, &tm);
            continue;
        }
        MergeStats stats;
        merge_tensor(&s, &out, dataset, t, (uint64_t)i, rank, size, world, be, &sc, &tm, &stats);
        MergedTensorStats record = {
            .numel = stats.numel,
            .sparsity_sft = (double)stats.small_sft / (double)stats.numel,
            .sparsity_pref = (double)stats.small_pref / (double)stats.numel,
            .sparsity_merged = (double)stats.small_merged / (double)stats.numel,
            .small_sft = stats.small_sft,
            .small_pref = stats.small_pref,
            .small_merged = stats.small_merged,
            .kept_sft = stats.kept[0],
            .kept_pref = stats.kept[1],
            .in_sft = adapter_adapts(&s.adapter[0], t->layer, t->proj),
            .in_pref = adapter_adapts(&s.adapter[1], t->layer, t->proj),
            .slerp_cos = s.params.method == MERGE_SLERP ? stats.slerp_cos : 0.0,
            .dare_scale_sft = stats.dare_scale[0],
            .dare_scale_pref = stats.dare_scale[1],
        };
        merged_write_stats(&out, t->view->name, &record, rank == 0);
        small_total[0] += (double)stats.small_sft;
        small_total[1] += (double)stats.small_pref;
        small_total[2] += (double)stats.small_merged;
        numel_total += (double)stats.numel;
    }
    double t_close = MPI_Wtime();
    h5_finish(&out);
    tm.write += MPI_Wtime() - t_close;
    for (int a = 0; a < 2; a++) adapter_close(&s.adapter[a]);

    paft_log("merge: wrote %s in %.2f s (rank 0: read %.2f s, merge %.2f s on %s, write %.2f s)\n",
             s.out, MPI_Wtime() - t_start, tm.read, tm.compute, be.k->name, tm.write);
    if (numel_total > 0)
        paft_log("merge: sparsity (|delta| < 1e-5) of delta_sft %.4f, delta_pref %.4f, merged %.4f\n",
                 small_total[0] / numel_total, small_total[1] / numel_total,
                 small_total[2] / numel_total);

    free(sc.base);
    free(sc.delta[0]);
    free(sc.delta[1]);
    free(sc.A);
    free(sc.B);
    free(sc.base_f);
    free(sc.delta_f[0]);
    free(sc.delta_f[1]);
    free(sc.bf16);
    float *dev[5] = {sc.dev_base, sc.dev_delta[0], sc.dev_delta[1], sc.dev_A, sc.dev_B};
    for (int i = 0; i < 5; i++)
        if (dev[i]) be.k->release(be.s, dev[i]);
    be.k->destroy(be.s);
    free(parameters);
    free(sources);
    stage_close_base(&s);
}

void merge_stage_check(const Config *cfg, int device_here, const char *verdict) {
    Stage s;
    stage_init(&s, cfg);
    validate(&s, cfg);
    if (device_here) merge_kernels_check_usable(cfg->merge.device, "merge.device");
    else (void)merge_kernels_check_built(cfg->merge.device);
    for (int a = 0; a < 2; a++) adapter_open(&s.adapter[a], MPI_COMM_SELF);
    const int n_merged = count_merged(&s);
    for (int a = 0; a < 2; a++) adapter_close(&s.adapter[a]);
    printf("%s\n", verdict);
    for (int a = 0; a < 2; a++) {
        const StageAdapter *ad = &s.adapter[a];
        char targets[128] = "";
        for (int p = 0; p < N_PROJ; p++)
            if (ad->lora.targets[p])
                snprintf(targets + strlen(targets), sizeof targets - strlen(targets), "%s%s",
                         targets[0] ? "," : "", proj_short_name((Proj)p));
        printf("  %-9s %s (%s, stage %s, r=%d alpha=%g%s on %s)\n",
               a == 0 ? "sft" : "pref", ad->path, ad->is_peft ? "PEFT" : "adapter.h5",
               ad->stage[0] ? ad->stage : "not recorded", ad->lora.r, ad->lora.alpha,
               ad->lora.rslora ? " rslora" : "", targets);
    }
    printf("  merge     %s of %d of the %d tensors -> %s (%s%s)\n",
           merge_method_name(s.params.method), n_merged, s.n_views, s.out,
           h5_float_type_name(s.dtype), paft_path_exists(s.out) ? "; it exists and is replaced" : "");
    stage_close_base(&s);
}

void merge_stage_check_settings(const Config *cfg, int device_here) {
    Stage s;
    stage_init(&s, cfg);
    s.made_by_training = cfg->output.dir;
    validate_base_and_settings(&s, cfg);
    if (device_here) merge_kernels_check_usable(cfg->merge.device, "merge.device");
    else (void)merge_kernels_check_built(cfg->merge.device);
    /* the adapters do not exist yet: training will give both the targets of [lora] */
    LoraConfig lora;
    lora_config_init(&lora, cfg->lora.r, cfg->lora.alpha, cfg->lora.rslora, cfg->lora.targets,
                     "configuration [lora]");
    const int *const targets[2] = {lora.targets, lora.targets};
    check_density_keeps_some(&s, targets);
    stage_close_base(&s);
}
