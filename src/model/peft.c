/* peft.c - reading PEFT LoRA adapters (see peft.h). */
#include "model/peft.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>

#include "io/h5file.h"
#include "io/safetensors.h"

void peft_read_config(LoraConfig *lora, const char *adapter_dir) {
    char *path = paft_path_join(adapter_dir, "adapter_config.json");
    char *text = paft_read_text_file(path, 1 << 20, NULL);
    cJSON *root = cJSON_Parse(text);
    if (!cJSON_IsObject(root)) PAFT_FATAL("%s: not a JSON object", path);
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "r");
    const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
    const cJSON *rslora = cJSON_GetObjectItemCaseSensitive(root, "use_rslora");
    const cJSON *targets = cJSON_GetObjectItemCaseSensitive(root, "target_modules");
    if (!cJSON_IsNumber(r) || r->valuedouble != (int)r->valuedouble)
        PAFT_FATAL("%s: 'r' missing or not an integer", path);
    if (!cJSON_IsNumber(alpha)) PAFT_FATAL("%s: 'lora_alpha' missing or not a number", path);
    /* target_modules is a list of names, or one string (a regex in PEFT; only plain names here) */
    char list[512] = "";
    if (cJSON_IsString(targets)) {
        snprintf(list, sizeof list, "%s", targets->valuestring);
    } else if (cJSON_IsArray(targets)) {
        const cJSON *t;
        cJSON_ArrayForEach(t, targets) {
            if (!cJSON_IsString(t)) PAFT_FATAL("%s: target_modules holds a non-string", path);
            if (strlen(list) + strlen(t->valuestring) + 2 > sizeof list)
                PAFT_FATAL("%s: target_modules is too long", path);
            if (list[0]) strcat(list, ",");
            strcat(list, t->valuestring);
        }
    } else {
        PAFT_FATAL("%s: 'target_modules' missing", path);
    }
    lora_config_init(lora, (int)r->valuedouble, alpha->valuedouble, cJSON_IsTrue(rslora), list,
                     path);
    cJSON_Delete(root);
    free(text);
    free(path);
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
    char *targets_text = h5_get_attr_string(&f, "targets");
    LoraConfig lora;
    lora_config_init(&lora, (int)h5_get_attr_int(&f, "r"), h5_get_attr_double(&f, "alpha"),
                     (int)h5_get_attr_int(&f, "rslora"), targets_text, adapter_h5);

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
    safetensors_write(path, tensors, n, "{\"format\": \"pt\"}");
    free(path);
    for (int i = 0; i < n; i++) {
        free(names[i]);
        free(data[i]);
    }
    free(names);
    free(data);
    free(tensors);
    free(base);
    free(targets_text);
    h5_close(&f);
}
