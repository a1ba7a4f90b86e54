/* adapter.c - LoRA adapters and checkpoints in parallel HDF5 (see adapter.h). */
#include "io/adapter.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/h5file.h"
#include "loss/lora_delta.h"
#include "model/peft.h"

#define ADAPTER_FORMAT "paft-adapter-1"

static void targets_string(const LoraConfig *lora, char *out, size_t n) {
    out[0] = '\0';
    for (int p = 0; p < N_PROJ; p++)
        if (lora->targets[p]) {
            if (out[0]) strncat(out, ",", n - strlen(out) - 1);
            strncat(out, proj_short_name(p), n - strlen(out) - 1);
        }
}

/* The block of the global dataset a view holds (empty when this rank does not write it). */
static H5Block view_block(const TensorView *v, int writes) {
    H5Block b = {v->global_rows, v->global_cols, v->row0, v->col0, writes ? v->rows : 0, v->cols};
    return b;
}

static void write_views(H5File *f, const char *prefix, const Model *m, const real *memory,
                        int writer_replica) {
    char name[256];
    for (int i = 0; i < m->n_lora_views; i++) {
        const TensorView *v = &m->lora_views[i];
        snprintf(name, sizeof name, "%s/%s", prefix, v->name);
        /* a replicated factor is written once, by tensor-parallel rank 0 */
        int writes = writer_replica && (!view_is_whole(v) || m->tp_rank == 0);
        H5Block block = view_block(v, writes);
        h5_write_real(f, name, &block, memory + v->offset);
    }
}

/* check_finite: the LoRA factors (a checkpoint's AdamW moments have their own checks, train.c) */
static void read_views(H5File *f, const char *prefix, const Model *m, real *memory,
                       int check_finite) {
    char name[256];
    for (int i = 0; i < m->n_lora_views; i++) {
        const TensorView *v = &m->lora_views[i];
        snprintf(name, sizeof name, "%s/%s", prefix, v->name);
        H5Block block = view_block(v, 1);
        h5_read_real(f, name, &block, memory + v->offset);
        if (check_finite)
            paft_require_finite(memory + v->offset, v->rows * v->cols, f->path, name, "");
    }
}

/* Every module under /lora is one this model adapts: the merge refuses the others, and so must
 * every reader, or an adapter of a deeper model would load with its extra layers ignored. */
static void check_modules(H5File *f, const Model *m, const LoraConfig *lora) {
    int n = 0;
    char **modules = h5_list_group(f, "/lora", &n);
    for (int i = 0; i < n; i++) {
        char weight[256];
        snprintf(weight, sizeof weight, "%s.weight", modules[i]);
        int layer, p = proj_from_name(weight, ".weight", &layer);
        if (p < 0 || layer >= m->config.num_layers || !lora->targets[p])
            PAFT_FATAL("%s: /lora/%s is not an adapted module of this model (%d layers)", f->path,
                       modules[i], m->config.num_layers);
        free(modules[i]);
    }
    free(modules);
}

void adapter_write(const char *path, MPI_Comm comm, const Model *m, const AdapterInfo *info,
                   const real *moment_m, const real *moment_v, const TrainPosition *pos,
                   int writer_replica) {
    H5File f;
    h5_create(&f, path, comm);
    char targets[256];
    targets_string(&m->lora, targets, sizeof targets);
    h5_set_attr_string(&f, "format", ADAPTER_FORMAT);
    h5_set_attr_string(&f, "paft_version", PAFT_VERSION);
    h5_set_attr_string(&f, "stage", info->stage);
    h5_set_attr_int(&f, "step", info->step);
    h5_set_attr_int(&f, "r", m->lora.r);
    h5_set_attr_double(&f, "alpha", m->lora.alpha);
    h5_set_attr_int(&f, "rslora", m->lora.rslora);
    h5_set_attr_string(&f, "targets", targets);
    h5_set_attr_string(&f, "base_fingerprint", m->fingerprint);
    h5_set_attr_string(&f, "base_model", m->path);
    h5_set_attr_string(&f, "folded_adapter", info->folded_adapter);
    if (info->data_records > 0) {
        h5_set_attr_int(&f, "data_records", info->data_records);
        h5_set_attr_int(&f, "data_crc32", (int64_t)info->data_crc32);
    }
    write_views(&f, "/lora", m, m->lora_memory, writer_replica);
    if (moment_m && moment_v && pos) {
        write_views(&f, "/optim/m", m, moment_m, writer_replica);
        write_views(&f, "/optim/v", m, moment_v, writer_replica);
        h5_set_attr_int(&f, "optim_step", pos->optim_step);
        h5_set_attr_int(&f, "epoch", pos->epoch);
        h5_set_attr_int(&f, "cursor", pos->cursor);
        h5_set_attr_int(&f, "seed", pos->seed);
    }
    h5_finish(&f);
}

/* Check the file describes an adapter of this model's LoRA configuration and base. */
/* The file is a paft adapter (or checkpoint): its "format" attribute says so. */
static void require_adapter_format(H5File *f) {
    char *format = h5_get_attr_string(f, "format");
    if (strcmp(format, ADAPTER_FORMAT) != 0)
        PAFT_FATAL("%s: format '%s', expected '%s'", f->path, format, ADAPTER_FORMAT);
    free(format);
}

static void check_compatible(H5File *f, const Model *m) {
    require_adapter_format(f);
    char *fp = h5_get_attr_string(f, "base_fingerprint");
    if (strcmp(fp, m->fingerprint) != 0)
        PAFT_FATAL("%s: adapter was trained on another base model (fingerprint %s, this base %s "
                   "from %s has %s)",
                   f->path, fp, m->fingerprint, m->path, m->fingerprint);
    free(fp);
    int64_t r = h5_get_attr_int(f, "r");
    double alpha = h5_get_attr_double(f, "alpha");
    int64_t rslora = h5_get_attr_int(f, "rslora");
    char *targets = h5_get_attr_string(f, "targets");
    char mine[256];
    targets_string(&m->lora, mine, sizeof mine);
    if (r != m->lora.r || alpha != m->lora.alpha || rslora != m->lora.rslora ||
        strcmp(targets, mine) != 0)
        PAFT_FATAL("%s: adapter has r=%lld alpha=%g rslora=%lld targets=%s, but the run is "
                   "configured with r=%d alpha=%g rslora=%d targets=%s",
                   f->path, (long long)r, alpha, (long long)rslora, targets, m->lora.r,
                   m->lora.alpha, m->lora.rslora, mine);
    free(targets);
}

void adapter_lora_config_of(H5File *f, LoraConfig *lora) {
    const int64_t r = h5_get_attr_int(f, "r");
    if (r < 1 || r > 1 << 20)
        PAFT_FATAL("%s: attribute r = %lld is not a valid LoRA rank", f->path, (long long)r);
    char *targets = h5_get_attr_string(f, "targets");
    lora_config_init(lora, (int)r, h5_get_attr_double(f, "alpha"),
                     h5_get_attr_int(f, "rslora") != 0, targets, f->path);
    free(targets);
}

void adapter_read_lora_config(const char *path, LoraConfig *lora) {
    H5File f;
    h5_open_read(&f, path, MPI_COMM_SELF);
    require_adapter_format(&f);
    adapter_lora_config_of(&f, lora);
    h5_close(&f);
}

static void origin_mismatch(const char *path, const char *key, const char *file_value,
                            const char *run_value, const char *advice) {
    PAFT_FATAL("%s: written with %s = %s, but this run has %s = %s; %s", path, key, file_value, key,
               run_value, advice);
}

static void compare_string(const char *path, const char *key, H5File *f, const char *run_value,
                           const char *advice) {
    char *v = h5_get_attr_string(f, key);
    if (strcmp(v, run_value) != 0) {
        char quoted_file[1100], quoted_run[1100];
        snprintf(quoted_file, sizeof quoted_file, "'%s'", v);
        snprintf(quoted_run, sizeof quoted_run, "'%s'", run_value);
        free(v);
        origin_mismatch(path, key, quoted_file, quoted_run, advice);
    }
    free(v);
}

static void compare_int(const char *path, const char *key, int64_t file_value, int64_t run_value,
                        const char *advice) {
    if (file_value == run_value) return;
    char a[32], b[32];
    snprintf(a, sizeof a, "%lld", (long long)file_value);
    snprintf(b, sizeof b, "%lld", (long long)run_value);
    origin_mismatch(path, key, a, b, advice);
}

int64_t adapter_check_origin(const char *path, MPI_Comm comm, const Model *m,
                             const AdapterInfo *expect, const char *advice) {
    H5File f;
    h5_open_read(&f, path, comm);
    require_adapter_format(&f);
    compare_string(path, "stage", &f, expect->stage, advice);
    compare_string(path, "base_fingerprint", &f, m->fingerprint, advice);
    compare_int(path, "r", h5_get_attr_int(&f, "r"), m->lora.r, advice);
    double alpha = h5_get_attr_double(&f, "alpha");
    if (alpha != m->lora.alpha) {
        char a[32], b[32];
        snprintf(a, sizeof a, "%.17g", alpha);
        snprintf(b, sizeof b, "%.17g", m->lora.alpha);
        origin_mismatch(path, "alpha", a, b, advice);
    }
    compare_int(path, "rslora", h5_get_attr_int(&f, "rslora"), m->lora.rslora, advice);
    char mine[256];
    targets_string(&m->lora, mine, sizeof mine);
    compare_string(path, "targets", &f, mine, advice);
    /* the same adapter under another spelling is no mismatch (paft before 2026-11-23 recorded
     * model.adapter as given, perhaps relative; now its absolute path) */
    char *folded = h5_get_attr_string(&f, "folded_adapter");
    if (!(folded[0] && expect->folded_adapter[0] && paft_same_file(folded, expect->folded_adapter)))
        compare_string(path, "folded_adapter", &f, expect->folded_adapter, advice);
    free(folded);
    if (expect->data_records > 0 && h5_has_attr(&f, "data_records")) {
        compare_int(path, "data_records", h5_get_attr_int(&f, "data_records"),
                    expect->data_records, advice);
        if (h5_has_attr(&f, "data_crc32")) {
            int64_t crc = h5_get_attr_int(&f, "data_crc32");
            if (crc != (int64_t)expect->data_crc32) {
                char a[32], b[32];
                snprintf(a, sizeof a, "0x%08llx", (unsigned long long)crc);
                snprintf(b, sizeof b, "0x%08x", (unsigned)expect->data_crc32);
                origin_mismatch(path, "data_crc32 (the training data's payload checksum)", a, b,
                                advice);
            }
        }
    }
    int64_t step = h5_get_attr_int(&f, "step");
    h5_close(&f);
    return step;
}

void adapter_read(const char *path, MPI_Comm comm, Model *m, AdapterInfo *info, real *moment_m,
                  real *moment_v, TrainPosition *pos) {
    H5File f;
    h5_open_read(&f, path, comm);
    check_compatible(&f, m);
    if (info) {
        char *stage = h5_get_attr_string(&f, "stage");
        snprintf(info->stage, sizeof info->stage, "%s", stage);
        free(stage);
        info->step = h5_get_attr_int(&f, "step");
        char *folded = h5_get_attr_string(&f, "folded_adapter");
        snprintf(info->folded_adapter, sizeof info->folded_adapter, "%s", folded);
        free(folded);
        info->data_records = h5_has_attr(&f, "data_records") ? h5_get_attr_int(&f, "data_records") : 0;
        info->data_crc32 = h5_has_attr(&f, "data_crc32") ? (uint32_t)h5_get_attr_int(&f, "data_crc32") : 0;
    }
    check_modules(&f, m, &m->lora);
    read_views(&f, "/lora", m, m->lora_memory, 1);
    if (moment_m || moment_v || pos) {
        if (!h5_exists(&f, "/optim")) PAFT_FATAL("%s: an adapter, not a checkpoint (no /optim)", path);
        read_views(&f, "/optim/m", m, moment_m, 0);
        read_views(&f, "/optim/v", m, moment_v, 0);
        pos->optim_step = h5_get_attr_int(&f, "optim_step");
        pos->epoch = h5_get_attr_int(&f, "epoch");
        pos->cursor = h5_get_attr_int(&f, "cursor");
        pos->seed = h5_get_attr_int(&f, "seed");
    }
    h5_close(&f);
}

/* Fold one adapter (not its chain) and say which adapter it was trained on top of ("" none). */
static void fold_one(const char *path, MPI_Comm comm, Model *m, char *folded, size_t folded_size);

/* An adapter trained with model.adapter = X is a delta relative to base + X (its folded_adapter):
 * folding it alone into the base gives a model nobody trained. So the chain is folded, X first
 * (W += delta_X + delta: the order does not matter), as deep as it goes. */
void adapter_fold_into_base(const char *path, MPI_Comm comm, Model *m) {
    enum { MAX_CHAIN = 16 };
    char current[sizeof ((AdapterInfo *)0)->folded_adapter], next[sizeof current];
    snprintf(current, sizeof current, "%s", path);
    for (int depth = 0; current[0]; depth++) {
        if (depth == MAX_CHAIN)
            PAFT_FATAL("%s: more than %d adapters each trained on top of the next (folded_adapter "
                       "attributes): a cycle?", path, MAX_CHAIN);
        fold_one(current, comm, m, next, sizeof next);
        if (next[0] && !paft_path_exists(next))
            PAFT_FATAL("%s: trained on top of %s (the model.adapter of its run), which is not there: "
                       "its delta is relative to that adapter, and folding it alone would give "
                       "another model", current, next);
        if (next[0] && depth == 0)
            paft_log("paft: %s was trained on top of %s: folding that too\n", path, next);
        snprintf(current, sizeof current, "%s", next);
    }
}

static void fold_one(const char *path, MPI_Comm comm, Model *m, char *folded, size_t folded_size) {
    folded[0] = '\0';
    /* a PEFT adapter directory (paft's <stage>/peft/, or one trained by another tool) folds the
     * same way; any other directory would fail below as "not an HDF5 file" */
    if (paft_is_directory(path)) {
        if (!peft_is_adapter_dir(path))
            PAFT_FATAL("%s: a directory without adapter_config.json: model.adapter takes a paft "
                       "adapter file (adapter.h5) or a PEFT adapter directory (adapter_config.json "
                       "+ adapter_model.safetensors)", path);
        peft_fold_into_base(path, m, folded, folded_size);
        return;
    }
    if (paft_path_exists(path) && !adapter_path_is_hdf5(path)) {
        /* a file of a PEFT directory (adapter_model.safetensors): the directory is the adapter */
        char *dir = paft_strdup(path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        if (peft_is_adapter_dir(slash ? dir : "."))
            PAFT_FATAL("%s: a file of the PEFT adapter directory %s; model.adapter takes the "
                       "directory itself", path, slash ? dir : ".");
        free(dir);
    }
    H5File f;
    h5_open_read(&f, path, comm);
    require_adapter_format(&f);
    char *fp = h5_get_attr_string(&f, "base_fingerprint");
    if (strcmp(fp, m->fingerprint) != 0)
        PAFT_FATAL("%s: adapter was trained on another base model (fingerprint %s, base %s has %s)",
                   path, fp, m->path, m->fingerprint);
    free(fp);
    char *under = h5_get_attr_string(&f, "folded_adapter");
    snprintf(folded, folded_size, "%s", under);
    free(under);
    LoraConfig lora;
    adapter_lora_config_of(&f, &lora);
    check_modules(&f, m, &lora);
    /* W += s B A on this rank's block of W: rows [row0, +rows) x columns [col0, +cols) needs
     * B's rows and A's columns of that block */
    const ModelConfig *c = &m->config;
    char name[256];
    for (int l = 0; l < c->num_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            if (!lora.targets[p]) continue;
            const TensorView *w = model_projection_view(m, l, (Proj)p); /* check_modules: there */
            real *A = paft_malloc((size_t)(lora.r * w->cols) * sizeof(real));
            real *B = paft_malloc((size_t)(w->rows * lora.r) * sizeof(real));
            H5Block ba = {lora.r, w->global_cols, 0, w->col0, lora.r, w->cols};
            H5Block bb = {w->global_rows, lora.r, w->row0, 0, w->rows, lora.r};
            snprintf(name, sizeof name, "/lora/model.layers.%d.%s/A", l, proj_module_name(p));
            h5_read_real(&f, name, &ba, A);
            paft_require_finite(A, lora.r * w->cols, path, name, "");
            snprintf(name, sizeof name, "/lora/model.layers.%d.%s/B", l, proj_module_name(p));
            h5_read_real(&f, name, &bb, B);
            paft_require_finite(B, w->rows * lora.r, path, name, "");
            lora_delta_add(m->weights_memory + w->offset, A, B, (int)w->rows, (int)w->cols, lora.r,
                           (real)lora.scale);
            free(A);
            free(B);
        }
    h5_close(&f);
}

int adapter_is_hdf5(const unsigned char *magic, size_t len) {
    static const unsigned char signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    return len >= 8 && memcmp(magic, signature, 8) == 0;
}

int adapter_path_is_hdf5(const char *path) {
    if (paft_is_directory(path)) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) return 0; /* the reader that opens it says why */
    unsigned char magic[8];
    const size_t n = fread(magic, 1, sizeof magic, f);
    fclose(f);
    return adapter_is_hdf5(magic, n);
}



/* The sparsity of delta = s B A of every module of an open adapter file. */
typedef struct {
    int n_layers, n_modules;
    double *per_module; /* [n_layers][N_PROJ], -1 where not adapted (malloc'ed) */
    double elements, overall;
} DeltaSparsity;

static void delta_sparsity_of(H5File *f, const char *path, int64_t r, double scale,
                              DeltaSparsity *out) {
    if (!h5_exists(f, "/lora")) PAFT_FATAL("%s: no /lora group", path);
    struct {
        char **names;
        int n;
    } modules;
    modules.names = h5_list_group(f, "/lora", &modules.n);

    /* sparsity per (layer, projection) */
    int max_layer = -1;
    for (int i = 0; i < modules.n; i++) {
        int layer, p = proj_from_name(modules.names[i], "", &layer);
        if (p < 0)
            PAFT_FATAL("%s: /lora/%s is not a decoder-layer projection "
                       "(model.layers.<layer>.<module>, layer 0..%d)",
                       path, modules.names[i], PAFT_MAX_LAYERS - 1);
        max_layer = PAFT_MAX(max_layer, layer);
    }
    /* what the sizes below are computed from must be a LoRA rank (config.c's range) */
    if (r < 1 || r > 65536)
        PAFT_FATAL("%s: attribute 'r' = %lld is not a LoRA rank (1 to 65536)", path, (long long)r);
    int n_layers = max_layer + 1;
    double *sparsity = paft_malloc((size_t)(n_layers > 0 ? n_layers : 1) * N_PROJ * sizeof(double));
    for (int i = 0; i < n_layers * N_PROJ; i++) sparsity[i] = -1;
    double below_total = 0, count_total = 0;
    for (int i = 0; i < modules.n; i++) {
        int layer, p = proj_from_name(modules.names[i], "", &layer);
        int64_t da[2], db[2];
        char name_a[512], name_b[512];
        snprintf(name_a, sizeof name_a, "/lora/%s/A", modules.names[i]);
        snprintf(name_b, sizeof name_b, "/lora/%s/B", modules.names[i]);
        const int ndim_a = h5_shape(f, name_a, da), ndim_b = h5_shape(f, name_b, db);
        if (ndim_a != 2 || ndim_b != 2 || da[0] != r || db[1] != r || da[1] < 1 ||
            da[1] > INT32_MAX || db[0] < 1 || db[0] > INT32_MAX)
            PAFT_FATAL("%s: /lora/%s: A is %lld x %lld and B %lld x %lld, expected r x in and "
                       "out x r with rank %lld",
                       path, modules.names[i], (long long)da[0], (long long)da[1],
                       (long long)db[0], (long long)db[1], (long long)r);
        /* the factors are allocated at their declared shapes: the file must hold them (fuzz_hdf5:
         * a few-KB file declared A of 2 x 2^40, nothing stored, and got it allocated) */
        h5_require_stored(f, name_a);
        h5_require_stored(f, name_b);
        real *A = paft_malloc((size_t)(da[0] * da[1]) * sizeof(real));
        real *B = paft_malloc((size_t)(db[0] * db[1]) * sizeof(real));
        H5Block ba = h5_whole(da[0], da[1], 1), bb = h5_whole(db[0], db[1], 1);
        h5_read_real(f, name_a, &ba, A);
        h5_read_real(f, name_b, &bb, B);
        const int64_t out_rows = db[0], in = da[1];
        const size_t below = lora_delta_count_below(A, B, out_rows, in, (int)r, (real)scale,
                                                    PAFT_SPARSITY_THRESHOLD);
        const double n = (double)out_rows * (double)in;
        sparsity[layer * N_PROJ + p] = (double)below / n;
        below_total += (double)below;
        count_total += n;
        free(A);
        free(B);
        free(modules.names[i]);
    }
    free(modules.names);
    out->n_layers = n_layers;
    out->n_modules = modules.n;
    out->per_module = sparsity;
    out->elements = count_total;
    out->overall = count_total > 0 ? below_total / count_total : 0.0;
}

double adapter_delta_sparsity(const char *path) {
    H5File f;
    h5_open_read(&f, path, MPI_COMM_SELF);
    int64_t r = h5_get_attr_int(&f, "r");
    double alpha = h5_get_attr_double(&f, "alpha");
    double scale = h5_get_attr_int(&f, "rslora") ? alpha / sqrt((double)r) : alpha / (double)r;
    DeltaSparsity ds;
    delta_sparsity_of(&f, path, r, scale, &ds);
    free(ds.per_module);
    h5_close(&f);
    return ds.overall;
}

void adapter_print_sparsity_table(FILE *out, const double *sparsity, int n_layers) {
    fprintf(out, "  %5s", "layer");
    for (int p = 0; p < N_PROJ; p++) fprintf(out, " %9s", proj_short_name(p));
    fprintf(out, "\n");
    for (int l = 0; l < n_layers; l++) {
        fprintf(out, "  %5d", l);
        for (int p = 0; p < N_PROJ; p++) {
            double v = sparsity[l * N_PROJ + p];
            if (v < 0)
                fprintf(out, " %9s", "-");
            else
                fprintf(out, " %9.4f", v);
        }
        fprintf(out, "\n");
    }
}

void adapter_describe(const char *path, FILE *out) {
    H5File f;
    h5_open_read(&f, path, MPI_COMM_SELF);
    char *format = h5_get_attr_string(&f, "format");
    if (strcmp(format, ADAPTER_FORMAT) != 0)
        PAFT_FATAL("%s: HDF5 file of format '%s', not a paft adapter (%s)", path, format, ADAPTER_FORMAT);
    char *stage = h5_get_attr_string(&f, "stage");
    char *targets = h5_get_attr_string(&f, "targets");
    char *fp = h5_get_attr_string(&f, "base_fingerprint");
    char *base = h5_get_attr_string(&f, "base_model");
    int64_t step = h5_get_attr_int(&f, "step"), r = h5_get_attr_int(&f, "r");
    double alpha = h5_get_attr_double(&f, "alpha");
    int64_t rslora = h5_get_attr_int(&f, "rslora");
    int checkpoint = h5_exists(&f, "/optim");
    double scale = rslora ? alpha / sqrt((double)r) : alpha / (double)r;
    /* the factors are checked (and the delta measured) before anything is printed, so a broken
     * file gets its error alone rather than after a header that looks fine */
    DeltaSparsity ds;
    delta_sparsity_of(&f, path, r, scale, &ds);
    fprintf(out, "%s: paft %s (%s)\n", path, checkpoint ? "training checkpoint" : "adapter", ADAPTER_FORMAT);
    fprintf(out, "  stage %s, step %lld; LoRA r=%lld alpha=%g%s (scale %g) on %s\n", stage,
            (long long)step, (long long)r, alpha, rslora ? " rslora" : "", scale, targets);
    fprintf(out, "  base model %s (fingerprint %s)\n", base, fp);

    fprintf(out, "\n  sparsity of delta = s B A (fraction of |delta| < %g) per layer and module:\n",
            PAFT_SPARSITY_THRESHOLD);
    adapter_print_sparsity_table(out, ds.per_module, ds.n_layers);
    fprintf(out, "\n  %d adapted modules, %.0f delta elements, overall sparsity %.4f\n", ds.n_modules,
            ds.elements, ds.overall);
    free(ds.per_module);
    free(stage);
    free(targets);
    free(fp);
    free(base);
    free(format);
    h5_close(&f);
}
