/* peft.c - PEFT LoRA adapter directories: read, folded, described and written (see peft.h). */
#include "model/peft.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>

#include "io/adapter.h"
#include "io/h5file.h"
#include "io/safetensors.h"
#include "loss/lora_delta.h"

int peft_is_adapter_dir(const char *path) {
    if (!paft_is_directory(path)) return 0;
    char *config = paft_path_join(path, "adapter_config.json");
    char *single = paft_path_join(path, "model.safetensors");
    char *index = paft_path_join(path, "model.safetensors.index.json");
    /* a model directory may carry an adapter_config.json too (transformers saves one beside a
     * model with an adapter attached): it is a model when it has a model's weights */
    const int peft =
        paft_path_exists(config) && !paft_path_exists(single) && !paft_path_exists(index);
    free(config);
    free(single);
    free(index);
    return peft;
}

static const cJSON *member(const cJSON *root, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(root, key);
}

/* A key PEFT sets to an empty object or null when the feature is off. */
static int is_set(const cJSON *x) {
    return x && !cJSON_IsNull(x) && !(cJSON_IsObject(x) && x->child == NULL) && !cJSON_IsFalse(x);
}

/* adapter_config.json, refusing the LoRA variants whose delta is not s B A with one r and alpha
 * (paft would fold or describe something else than PEFT applies). */
static void read_settings(const char *adapter_dir, PeftSettings *ps) {
    memset(ps, 0, sizeof *ps);
    char *path = paft_path_join(adapter_dir, "adapter_config.json");
    char *text = paft_read_text_file(path, 1 << 20, NULL);
    cJSON *root = cJSON_Parse(text);
    if (!cJSON_IsObject(root)) PAFT_FATAL("%s: not a JSON object", path);
    const cJSON *type = member(root, "peft_type");
    if (type && !(cJSON_IsString(type) && strcmp(type->valuestring, "LORA") == 0))
        PAFT_FATAL("%s: peft_type is %s, not \"LORA\": paft reads LoRA adapters only", path,
                   cJSON_IsString(type) ? type->valuestring : "not a string");
    if (is_set(member(root, "use_dora")))
        PAFT_FATAL("%s: use_dora is set: a DoRA adapter (LoRA with magnitude vectors) is not a "
                   "plain LoRA delta s B A, which is what paft reads", path);
    if (is_set(member(root, "rank_pattern")) || is_set(member(root, "alpha_pattern")))
        PAFT_FATAL("%s: rank_pattern or alpha_pattern is set: per-module ranks or alphas are not "
                   "supported (paft reads one r and one lora_alpha for every module)", path);
    /* variants that apply the delta to some tokens or layers only: folding would apply it to all */
    if (is_set(member(root, "alora_invocation_tokens")))
        PAFT_FATAL("%s: alora_invocation_tokens is set: an activated LoRA acts only after its "
                   "invocation tokens, which a delta folded into the weights cannot do", path);
    if (is_set(member(root, "layer_replication")))
        PAFT_FATAL("%s: layer_replication is set: its layer indices are those of a model with "
                   "replicated layers, not of the base", path);
    if (is_set(member(root, "use_bdlora")))
        PAFT_FATAL("%s: use_bdlora is set: not a plain LoRA delta s B A", path);
    if (is_set(member(root, "fan_in_fan_out")))
        PAFT_FATAL("%s: fan_in_fan_out is set (GPT-2 style Conv1D weights): not a layout of the "
                   "Llama-family models paft reads", path);
    const cJSON *r = member(root, "r");
    const cJSON *alpha = member(root, "lora_alpha");
    const cJSON *rslora = member(root, "use_rslora");
    const cJSON *targets = member(root, "target_modules");
    const cJSON *base = member(root, "base_model_name_or_path");
    /* the range before the integer test: converting 1e10 or 1e999 (cJSON's inf) to int is
     * undefined behaviour */
    if (!cJSON_IsNumber(r)) PAFT_FATAL("%s: 'r' missing or not a number", path);
    if (!(r->valuedouble >= 1 && r->valuedouble <= 65536))
        PAFT_FATAL("%s: 'r' = %g is not a LoRA rank (1 to 65536)", path, r->valuedouble);
    if (r->valuedouble != (int)r->valuedouble)
        PAFT_FATAL("%s: 'r' = %g is not an integer", path, r->valuedouble);
    if (!cJSON_IsNumber(alpha)) PAFT_FATAL("%s: 'lora_alpha' missing or not a number", path);
    /* 1e999 reads as inf: a scale of inf would fold NaN and inf into every adapted weight */
    if (!(alpha->valuedouble > 0) || !isfinite(alpha->valuedouble))
        PAFT_FATAL("%s: 'lora_alpha' = %g must be a positive finite number", path,
                   alpha->valuedouble);
    /* target_modules is a list of names, or one string (a regex in PEFT; only plain names here) */
    if (cJSON_IsString(targets)) {
        snprintf(ps->targets, sizeof ps->targets, "%s", targets->valuestring);
    } else if (cJSON_IsArray(targets)) {
        ps->targets_listed = 1;
        const cJSON *t;
        cJSON_ArrayForEach(t, targets) {
            if (!cJSON_IsString(t)) PAFT_FATAL("%s: target_modules holds a non-string", path);
            if (strlen(ps->targets) + strlen(t->valuestring) + 2 > sizeof ps->targets)
                PAFT_FATAL("%s: target_modules is too long", path);
            if (ps->targets[0]) strcat(ps->targets, ",");
            strcat(ps->targets, t->valuestring);
        }
    } else {
        PAFT_FATAL("%s: 'target_modules' missing", path);
    }
    ps->r = (int)r->valuedouble;
    ps->alpha = alpha->valuedouble;
    ps->rslora = cJSON_IsTrue(rslora);
    ps->scale = ps->rslora ? ps->alpha / sqrt((double)ps->r) : ps->alpha / (double)ps->r;
    if (cJSON_IsString(base)) snprintf(ps->base, sizeof ps->base, "%s", base->valuestring);
    cJSON_Delete(root);
    free(text);
    free(path);
}

void peft_read_config(LoraConfig *lora, const char *adapter_dir) {
    PeftSettings ps;
    read_settings(adapter_dir, &ps);
    char *path = paft_path_join(adapter_dir, "adapter_config.json");
    lora_config_init(lora, ps.r, ps.alpha, ps.rslora, ps.targets, path);
    free(path);
}

/* ---- the factors of a PEFT adapter ------------------------------------------------------------
 * adapter_model.safetensors holds base_model.model.model.layers.<l>.<module>.lora_A.weight [r, in]
 * and .lora_B.weight [out, r] for every adapted projection; anything else (an embedding's or
 * lm_head's factors, biases, DoRA magnitudes, modules_to_save copies) is refused by name: folding
 * only some of what PEFT would apply gives another model without a word. */
#define PEFT_PREFIX "base_model.model."

static const TensorInfo **factor_slot(const PeftAdapter *a, int layer, int p, int part) {
    return &a->factors[((size_t)layer * N_PROJ + (size_t)p) * 2 + (size_t)part];
}

const TensorInfo *peft_adapter_factor(const PeftAdapter *a, int layer, Proj p, int part) {
    if (layer < 0 || layer >= a->n_layers) return NULL;
    return *factor_slot(a, layer, p, part);
}

/* PEFT's rule for a list of target_modules: a module is adapted when its full name
 * (model.layers.<l>.self_attn.q_proj) is one of the names or ends with "." + one of them. */
static int module_is_targeted(const char *listed, int layer, int p) {
    char full[160];
    snprintf(full, sizeof full, "model.layers.%d.%s", layer, proj_module_name(p));
    const size_t full_len = strlen(full);
    for (const char *t = listed; *t;) {
        const char *end = strchr(t, ',');
        const size_t len = end ? (size_t)(end - t) : strlen(t);
        if (len == full_len && strncmp(full, t, len) == 0) return 1;
        if (len < full_len && full[full_len - len - 1] == '.' &&
            strncmp(full + full_len - len, t, len) == 0)
            return 1;
        t += len + (end ? 1 : 0);
    }
    return 0;
}

void peft_adapter_open(PeftAdapter *a, const char *dir) {
    memset(a, 0, sizeof *a);
    read_settings(dir, &a->settings);
    a->weights_path = paft_path_join(dir, "adapter_model.safetensors");
    if (!paft_path_exists(a->weights_path))
        PAFT_FATAL("%s: no such file (a PEFT adapter directory holds adapter_config.json and "
                   "adapter_model.safetensors; adapter_model.bin, PyTorch's pickle, is not read)",
                   a->weights_path);
    checkpoint_open(&a->ckpt, a->weights_path);
    const char *path = a->weights_path;
    int *layer_of = paft_malloc((size_t)PAFT_MAX(a->ckpt.n_tensors, 1) * sizeof(int));
    int *proj_of = paft_malloc((size_t)PAFT_MAX(a->ckpt.n_tensors, 1) * sizeof(int));
    int *part_of = paft_malloc((size_t)PAFT_MAX(a->ckpt.n_tensors, 1) * sizeof(int));
    for (int i = 0; i < a->ckpt.n_tensors; i++) {
        const char *name = a->ckpt.tensors[i].name;
        int layer = -1, p = -1, part = -1;
        if (strncmp(name, PEFT_PREFIX, strlen(PEFT_PREFIX)) == 0)
            for (part = 0; part < 2; part++) {
                p = proj_from_name(name + strlen(PEFT_PREFIX),
                                   part ? ".lora_B.weight" : ".lora_A.weight", &layer);
                if (p >= 0) break;
            }
        if (p < 0)
            PAFT_FATAL("%s: tensor '%s' is not a LoRA factor of a decoder-layer projection "
                       "(" PEFT_PREFIX "model.layers.<layer>.<module>.lora_A.weight or "
                       ".lora_B.weight): paft folds only those, not embedding, lm_head, bias or "
                       "DoRA tensors",
                       path, name);
        if (a->settings.targets_listed && !module_is_targeted(a->settings.targets, layer, p))
            PAFT_FATAL("%s: tensor '%s' adapts a module that target_modules (%s) does not name: "
                       "PEFT would not apply it, so folding it would give another model",
                       path, name, a->settings.targets);
        layer_of[i] = layer;
        proj_of[i] = p;
        part_of[i] = part;
        a->n_layers = PAFT_MAX(a->n_layers, layer + 1);
    }
    if (a->ckpt.n_tensors == 0) PAFT_FATAL("%s: holds no tensors (an empty adapter)", path);
    a->factors = paft_calloc((size_t)a->n_layers * N_PROJ * 2, sizeof(TensorInfo *));
    for (int i = 0; i < a->ckpt.n_tensors; i++)
        *factor_slot(a, layer_of[i], proj_of[i], part_of[i]) = &a->ckpt.tensors[i];
    free(layer_of);
    free(proj_of);
    free(part_of);
    /* both factors of every module, at rank r */
    const int64_t r = a->settings.r;
    for (int l = 0; l < a->n_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            const TensorInfo *A = *factor_slot(a, l, p, 0), *B = *factor_slot(a, l, p, 1);
            if (!A && !B) continue;
            if (!A || !B)
                PAFT_FATAL("%s: model.layers.%d.%s has lora_%c but no lora_%c", path, l,
                           proj_module_name(p), A ? 'A' : 'B', A ? 'B' : 'A');
            if (A->ndim != 2 || B->ndim != 2 || A->shape[0] != r || B->shape[1] != r ||
                A->shape[1] < 1 || B->shape[0] < 1) {
                char sa[64], sb[64];
                tensor_shape_string(A, sa, sizeof sa);
                tensor_shape_string(B, sb, sizeof sb);
                PAFT_FATAL("%s: model.layers.%d.%s: lora_A is %s and lora_B %s, expected [r, in] "
                           "and [out, r] with r = %lld (adapter_config.json)",
                           path, l, proj_module_name(p), sa, sb, (long long)r);
            }
            a->n_modules++;
        }
}

void peft_adapter_close(PeftAdapter *a) {
    checkpoint_close(&a->ckpt);
    free(a->factors);
    free(a->weights_path);
}

/* A factor with NaN or inf would only give NaN losses later, far from the cause. */
static void require_finite(const char *path, const char *name, const real *x, int64_t n) {
    char what[320];
    snprintf(what, sizeof what, "tensor '%s'", name);
    paft_require_finite(x, n, path, what, "");
}

void peft_adapter_check_base(const PeftAdapter *a, const ModelConfig *c, const char *fingerprint,
                             const char *base) {
    const char *path = a->weights_path;
    /* paft's own PEFT copies record the base's fingerprint (peft_write_adapter); others cannot,
     * and only their shapes are checked against the base */
    const char *fp = checkpoint_metadata(&a->ckpt, PEFT_FINGERPRINT_KEY);
    if (fp && strcmp(fp, fingerprint) != 0)
        PAFT_FATAL("%s: adapter was trained on another base model (fingerprint %s in its "
                   "metadata, base %s has %s)",
                   path, fp, base, fingerprint);
    for (int l = 0; l < a->n_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            const TensorInfo *tA = *factor_slot(a, l, p, 0), *tB = *factor_slot(a, l, p, 1);
            if (!tA) continue;
            if (l >= c->num_layers)
                PAFT_FATAL("%s: tensor '%s' adapts layer %d, but the base %s has %d layers", path,
                           tA->name, l, base, c->num_layers);
            const int64_t in = proj_in(c, (Proj)p), out = proj_out(c, (Proj)p);
            if (tA->shape[1] != in || tB->shape[0] != out)
                PAFT_FATAL("%s: model.layers.%d.%s: lora_A is [%lld, %lld] and lora_B [%lld, "
                           "%lld], but model.layers.%d.%s.weight of the base %s is [%lld, %lld]: "
                           "an adapter of another model",
                           path, l, proj_module_name(p), (long long)tA->shape[0],
                           (long long)tA->shape[1], (long long)tB->shape[0],
                           (long long)tB->shape[1], l, proj_module_name(p), base, (long long)out,
                           (long long)in);
        }
}

void peft_fold_into_base(const char *adapter_dir, Model *m, char *folded, size_t folded_size) {
    PeftAdapter a;
    peft_adapter_open(&a, adapter_dir);
    const char *path = a.weights_path;
    const char *under = checkpoint_metadata(&a.ckpt, PEFT_FOLDED_KEY);
    snprintf(folded, folded_size, "%s", under ? under : "");
    peft_adapter_check_base(&a, &m->config, m->fingerprint, m->path);
    const int r = a.settings.r;
    for (int l = 0; l < a.n_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            const TensorInfo *tA = *factor_slot(&a, l, p, 0), *tB = *factor_slot(&a, l, p, 1);
            if (!tA) continue;
            const TensorView *w = model_projection_view(m, l, (Proj)p);
            if (!w)
                PAFT_FATAL("%s: the base %s has no model.layers.%d.%s.weight", path, m->path, l,
                           proj_module_name(p));
            /* W += s B A on this rank's block of W: rows [row0, +rows) x columns [col0, +cols)
             * needs B's rows and A's columns of that block */
            real *A = paft_malloc((size_t)((int64_t)r * w->cols) * sizeof(real));
            real *B = paft_malloc((size_t)(w->rows * r) * sizeof(real));
            checkpoint_read_block(&a.ckpt, tA, 0, r, w->col0, w->cols, A);
            require_finite(path, tA->name, A, (int64_t)r * w->cols);
            checkpoint_read_block(&a.ckpt, tB, w->row0, w->rows, 0, r, B);
            require_finite(path, tB->name, B, w->rows * r);
            lora_delta_add(m->weights_memory + w->offset, A, B, (int)w->rows, (int)w->cols, r,
                           (real)a.settings.scale);
            free(A);
            free(B);
        }
    peft_adapter_close(&a);
}

void peft_describe(const char *adapter_dir, FILE *out) {
    PeftAdapter a;
    peft_adapter_open(&a, adapter_dir);
    const PeftSettings *ps = &a.settings;
    const int64_t r = ps->r;
    /* everything is read and measured before the first line, so a broken adapter gets its error
     * alone */
    double *sparsity = paft_malloc((size_t)a.n_layers * N_PROJ * sizeof(double));
    double below_total = 0, count_total = 0;
    int dtypes_seen[16] = {0};
    for (int l = 0; l < a.n_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            const TensorInfo *tA = *factor_slot(&a, l, p, 0), *tB = *factor_slot(&a, l, p, 1);
            sparsity[l * N_PROJ + p] = -1;
            if (!tA) continue;
            if ((int)tA->dtype >= 0 && (int)tA->dtype < 16) dtypes_seen[tA->dtype] = 1;
            if ((int)tB->dtype >= 0 && (int)tB->dtype < 16) dtypes_seen[tB->dtype] = 1;
            const int64_t in = tA->shape[1], out_rows = tB->shape[0];
            real *A = paft_malloc((size_t)(r * in) * sizeof(real));
            real *B = paft_malloc((size_t)(out_rows * r) * sizeof(real));
            checkpoint_read(&a.ckpt, tA, A);
            checkpoint_read(&a.ckpt, tB, B);
            require_finite(a.weights_path, tA->name, A, r * in);
            require_finite(a.weights_path, tB->name, B, out_rows * r);
            const size_t below = lora_delta_count_below(A, B, out_rows, in, (int)r,
                                                        (real)ps->scale, PAFT_SPARSITY_THRESHOLD);
            const double n = (double)out_rows * (double)in;
            sparsity[l * N_PROJ + p] = (double)below / n;
            below_total += (double)below;
            count_total += n;
            free(A);
            free(B);
        }
    char dtypes[128] = "";
    for (int d = 0; d < 16; d++)
        if (dtypes_seen[d])
            snprintf(dtypes + strlen(dtypes), sizeof dtypes - strlen(dtypes), "%s%s",
                     dtypes[0] ? ", " : "", dtype_name((Dtype)d));
    const char *fp = checkpoint_metadata(&a.ckpt, PEFT_FINGERPRINT_KEY);
    fprintf(out,
            "%s: PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors)\n",
            adapter_dir);
    fprintf(out, "  LoRA r=%d alpha=%g%s (scale %g) on %s\n", ps->r, ps->alpha,
            ps->rslora ? " rslora" : "", ps->scale, ps->targets);
    fprintf(out, "  base model %s", ps->base[0] ? ps->base : "(not recorded)");
    if (fp)
        fprintf(out, " (fingerprint %s, written by paft)\n", fp);
    else
        fprintf(out, " (no fingerprint: folding it checks the shapes against the base)\n");
    fprintf(out, "  %d tensors (%s)\n", a.ckpt.n_tensors, dtypes);
    fprintf(out, "\n  sparsity of delta = s B A (fraction of |delta| < %g) per layer and module:\n",
            PAFT_SPARSITY_THRESHOLD);
    adapter_print_sparsity_table(out, sparsity, a.n_layers);
    fprintf(out, "\n  %d adapted modules, %.0f delta elements, overall sparsity %.4f\n",
            a.n_modules, count_total, count_total > 0 ? below_total / count_total : 0.0);
    free(sparsity);
    peft_adapter_close(&a);
}

void peft_load_adapter(Model *m, const char *adapter_dir) {
    LoraConfig file_lora;
    peft_read_config(&file_lora, adapter_dir);
    if (file_lora.r != m->lora.r || file_lora.scale != m->lora.scale ||
        memcmp(file_lora.targets, m->lora.targets, sizeof file_lora.targets) != 0)
        PAFT_FATAL("%s: adapter (r=%d, scale %g) does not match the model's LoRA configuration "
                   "(r=%d, scale %g) or its target modules",
                   adapter_dir, file_lora.r, file_lora.scale, m->lora.r, m->lora.scale);
    char *path = paft_path_join(adapter_dir, "adapter_model.safetensors");
    Checkpoint ckpt;
    checkpoint_open(&ckpt, path);
    char name[256];
    for (int i = 0; i < m->n_lora_views; i++) {
        const TensorView *v = &m->lora_views[i];
        /* view name "<module>/A" -> "base_model.model.<module>.lora_A.weight" */
        size_t len = strlen(v->name);
        snprintf(name, sizeof name, "base_model.model.%.*s.lora_%c.weight", (int)(len - 2),
                 v->name, v->name[len - 1]);
        int64_t shape[2] = {v->rows, v->cols};
        const TensorInfo *t = checkpoint_require(&ckpt, name, 2, shape);
        checkpoint_read(&ckpt, t, m->lora_memory + v->offset);
    }
    checkpoint_close(&ckpt);
    free(path);
}

void peft_write_adapter(const char *adapter_h5, const char *adapter_dir) {
    if (mkdir(adapter_dir, 0777) != 0 && errno != EEXIST)
        PAFT_FATAL("%s: cannot create directory: %s", adapter_dir, strerror(errno));
    H5File f;
    h5_open_read(&f, adapter_h5, MPI_COMM_SELF);
    char *base = h5_get_attr_string(&f, "base_model");
    LoraConfig lora;
    adapter_lora_config_of(&f, &lora);

    /* adapter_config.json: the keys peft.LoraConfig needs to rebuild the same adapter */
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "peft_type", "LORA");
    cJSON_AddStringToObject(root, "task_type", "CAUSAL_LM");
    cJSON_AddStringToObject(root, "base_model_name_or_path", base);
    cJSON_AddNumberToObject(root, "r", lora.r);
    cJSON_AddNumberToObject(root, "lora_alpha", lora.alpha);
    cJSON_AddNumberToObject(root, "lora_dropout", 0.0);
    cJSON_AddBoolToObject(root, "use_rslora", lora.rslora);
    cJSON_AddStringToObject(root, "bias", "none");
    cJSON_AddBoolToObject(root, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(root, "inference_mode", 1);
    cJSON *targets = cJSON_AddArrayToObject(root, "target_modules");
    for (int p = 0; p < N_PROJ; p++)
        if (lora.targets[p]) cJSON_AddItemToArray(targets, cJSON_CreateString(proj_short_name(p)));
    char *text = cJSON_Print(root);
    char *path = paft_path_join(adapter_dir, "adapter_config.json");
    char *tmp = paft_path_join(adapter_dir, ".adapter_config.json.tmp");
    FILE *out = fopen(tmp, "w");
    if (!out) PAFT_FATAL("%s: cannot create: %s", tmp, strerror(errno));
    if (fprintf(out, "%s\n", text) < 0 || fclose(out) != 0) PAFT_FATAL("%s: write failed", tmp);
    if (rename(tmp, path) != 0) PAFT_FATAL("%s: cannot rename into place: %s", path, strerror(errno));
    free(tmp);
    free(path);
    free(text);
    cJSON_Delete(root);

    /* adapter_model.safetensors: every /lora/<module>/A|B under PEFT's names */
    int n_layers = 0;
    while (1) {
        char probe[256];
        snprintf(probe, sizeof probe, "/lora/model.layers.%d", n_layers);
        int any = 0;
        for (int p = 0; p < N_PROJ && !any; p++) {
            snprintf(probe, sizeof probe, "/lora/model.layers.%d.%s", n_layers, proj_module_name(p));
            any = h5_exists(&f, probe);
        }
        if (!any) break;
        n_layers++;
    }
    int n = 0, cap = 2 * N_PROJ * (n_layers > 0 ? n_layers : 1);
    TensorToWrite *tensors = paft_calloc((size_t)cap, sizeof(TensorToWrite));
    char **names = paft_calloc((size_t)cap, sizeof(char *));
    real **data = paft_calloc((size_t)cap, sizeof(real *));
    for (int l = 0; l < n_layers; l++)
        for (int p = 0; p < N_PROJ; p++)
            for (int part = 0; part < 2 && lora.targets[p]; part++) {
                char dataset[256];
                snprintf(dataset, sizeof dataset, "/lora/model.layers.%d.%s/%c", l,
                         proj_module_name(p), part ? 'B' : 'A');
                int64_t dims[2];
                h5_shape(&f, dataset, dims);
                H5Block block = h5_whole(dims[0], dims[1], 1);
                data[n] = paft_malloc((size_t)(dims[0] * dims[1]) * sizeof(real));
                h5_read_real(&f, dataset, &block, data[n]);
                names[n] = paft_malloc(256);
                snprintf(names[n], 256, "base_model.model.model.layers.%d.%s.lora_%c.weight", l,
                         proj_module_name(p), part ? 'B' : 'A');
                tensors[n] = (TensorToWrite){names[n], DTYPE_F32, 2, {dims[0], dims[1]}, data[n]};
                n++;
            }
    path = paft_path_join(adapter_dir, "adapter_model.safetensors");
    /* the metadata carries the base's fingerprint, which adapter_config.json has no key for (an
     * unknown key there would break older PEFT versions): folding this copy checks it */
    char *fp = h5_get_attr_string(&f, "base_fingerprint");
    char *under = h5_get_attr_string(&f, "folded_adapter");
    cJSON *meta = cJSON_CreateObject();
    cJSON_AddStringToObject(meta, "format", "pt");
    cJSON_AddStringToObject(meta, PEFT_FINGERPRINT_KEY, fp);
    char *stage = h5_get_attr_string(&f, "stage");
    if (stage[0]) cJSON_AddStringToObject(meta, PEFT_STAGE_KEY, stage);
    free(stage);
    /* a stage trained on top of another adapter: this copy is a delta on base + that adapter,
     * which folding it here follows, and which PEFT users must load first */
    if (under[0]) {
        cJSON_AddStringToObject(meta, PEFT_FOLDED_KEY, under);
        printf("note: %s is a delta on top of %s (model.adapter): with PEFT, load it on the base "
               "with that adapter merged in\n", adapter_dir, under);
        fflush(stdout);
    }
    char *metadata = cJSON_PrintUnformatted(meta);
    if (!metadata) PAFT_FATAL("%s: out of memory", path);
    cJSON_Delete(meta);
    free(fp);
    free(under);
    safetensors_write(path, tensors, n, metadata);
    free(metadata);
    free(path);
    for (int i = 0; i < n; i++) {
        free(names[i]);
        free(data[i]);
    }
    free(names);
    free(data);
    free(tensors);
    free(base);
    h5_close(&f);
}
