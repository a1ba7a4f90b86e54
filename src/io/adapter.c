/* adapter.c - LoRA adapters and checkpoints in parallel HDF5 (see adapter.h). */
#include "io/adapter.h"

#include <stdlib.h>
#include <string.h>

#include "io/h5file.h"
#include "loss/lora_delta.h"

#define ADAPTER_FORMAT "paft-adapter-1"

static void targets_string(const LoraConfig *lora, char *out, size_t n) {
    out[0] = '\0';
    for (int p = 0; p < N_PROJ; p++)
        if (lora->targets[p]) {
            if (out[0]) strncat(out, ",", n - strlen(out) - 1);
            strncat(out, proj_short_name(p), n - strlen(out) - 1);
        }
}

static void write_views(H5File *f, const char *prefix, const Model *m, const real *memory,
                        int writer) {
    char name[256];
    for (int i = 0; i < m->n_lora_views; i++) {
        const TensorView *v = &m->lora_views[i];
        snprintf(name, sizeof name, "%s/%s", prefix, v->name);
        H5Block block = h5_whole(v->rows, v->cols, writer);
        h5_write_real(f, name, &block, memory + v->offset);
    }
}

static void read_views(H5File *f, const char *prefix, const Model *m, real *memory) {
    char name[256];
    for (int i = 0; i < m->n_lora_views; i++) {
        const TensorView *v = &m->lora_views[i];
        snprintf(name, sizeof name, "%s/%s", prefix, v->name);
        H5Block block = h5_whole(v->rows, v->cols, 1);
        h5_read_real(f, name, &block, memory + v->offset);
    }
}

void adapter_write(const char *path, MPI_Comm comm, const Model *m, const AdapterInfo *info,
                   const real *moment_m, const real *moment_v, const TrainPosition *pos) {
    int rank;
    CHECK_MPI(MPI_Comm_rank(comm, &rank));
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
    write_views(&f, "/lora", m, m->lora_memory, rank == 0);
    if (moment_m && moment_v && pos) {
        write_views(&f, "/optim/m", m, moment_m, rank == 0);
        write_views(&f, "/optim/v", m, moment_v, rank == 0);
        h5_set_attr_int(&f, "optim_step", pos->optim_step);
        h5_set_attr_int(&f, "epoch", pos->epoch);
        h5_set_attr_int(&f, "cursor", pos->cursor);
        h5_set_attr_int(&f, "seed", pos->seed);
    }
    h5_finish(&f);
}

/* Check the file describes an adapter of this model's LoRA configuration and base. */
static void check_compatible(H5File *f, const Model *m) {
    char *format = h5_get_attr_string(f, "format");
    if (strcmp(format, ADAPTER_FORMAT) != 0)
        PAFT_FATAL("%s: format '%s', expected '%s'", f->path, format, ADAPTER_FORMAT);
    free(format);
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
    }
    read_views(&f, "/lora", m, m->lora_memory);
    if (moment_m || moment_v || pos) {
        if (!h5_exists(&f, "/optim")) PAFT_FATAL("%s: an adapter, not a checkpoint (no /optim)", path);
        read_views(&f, "/optim/m", m, moment_m);
        read_views(&f, "/optim/v", m, moment_v);
        pos->optim_step = h5_get_attr_int(&f, "optim_step");
        pos->epoch = h5_get_attr_int(&f, "epoch");
        pos->cursor = h5_get_attr_int(&f, "cursor");
        pos->seed = h5_get_attr_int(&f, "seed");
    }
    h5_close(&f);
}

void adapter_fold_into_base(const char *path, MPI_Comm comm, Model *m) {
    H5File f;
    h5_open_read(&f, path, comm);
    char *format = h5_get_attr_string(&f, "format");
    if (strcmp(format, ADAPTER_FORMAT) != 0)
        PAFT_FATAL("%s: format '%s', expected '%s'", path, format, ADAPTER_FORMAT);
    free(format);
    char *fp = h5_get_attr_string(&f, "base_fingerprint");
    if (strcmp(fp, m->fingerprint) != 0)
        PAFT_FATAL("%s: adapter was trained on another base model (fingerprint %s, base %s has %s)",
                   path, fp, m->path, m->fingerprint);
    free(fp);
    LoraConfig lora;
    char *targets = h5_get_attr_string(&f, "targets");
    lora_config_init(&lora, (int)h5_get_attr_int(&f, "r"), h5_get_attr_double(&f, "alpha"),
                     (int)h5_get_attr_int(&f, "rslora"), targets, path);
    free(targets);
    const ModelConfig *c = &m->config;
    char name[256];
    for (int l = 0; l < c->num_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            if (!lora.targets[p]) continue;
            /* the base view tells the projection's shape */
            const TensorView *w = NULL;
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, proj_module_name(p));
            for (int i = 0; i < m->n_weight_views && !w; i++)
                if (strcmp(m->weight_views[i].name, name) == 0) w = &m->weight_views[i];
            const int64_t out = w->rows, in = w->cols;
            real *A = paft_malloc((size_t)(lora.r * in) * sizeof(real));
            real *B = paft_malloc((size_t)(out * lora.r) * sizeof(real));
            real *delta = paft_malloc((size_t)(out * in) * sizeof(real));
            H5Block ba = h5_whole(lora.r, in, 1), bb = h5_whole(out, lora.r, 1);
            snprintf(name, sizeof name, "/lora/model.layers.%d.%s/A", l, proj_module_name(p));
            h5_read_real(&f, name, &ba, A);
            snprintf(name, sizeof name, "/lora/model.layers.%d.%s/B", l, proj_module_name(p));
            h5_read_real(&f, name, &bb, B);
            lora_delta(delta, A, B, (int)out, (int)in, lora.r, (real)lora.scale);
            real *W = m->weights_memory + w->offset;
            for (int64_t i = 0; i < out * in; i++) W[i] += delta[i];
            free(A);
            free(B);
            free(delta);
        }
    h5_close(&f);
}
