/* peft.c - reading PEFT LoRA adapters (see peft.h). */
#include "model/peft.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>

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

void peft_write_adapter(const Model *m, const char *adapter_dir) {
    if (mkdir(adapter_dir, 0777) != 0 && errno != EEXIST)
        PAFT_FATAL("%s: cannot create directory: %s", adapter_dir, strerror(errno));
    /* adapter_config.json: the keys peft.LoraConfig needs to rebuild the same adapter */
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "peft_type", "LORA");
    cJSON_AddStringToObject(root, "task_type", "CAUSAL_LM");
    cJSON_AddStringToObject(root, "base_model_name_or_path", m->path);
    cJSON_AddNumberToObject(root, "r", m->lora.r);
    cJSON_AddNumberToObject(root, "lora_alpha", m->lora.alpha);
    cJSON_AddNumberToObject(root, "lora_dropout", 0.0);
    cJSON_AddBoolToObject(root, "use_rslora", m->lora.rslora);
    cJSON_AddStringToObject(root, "bias", "none");
    cJSON_AddBoolToObject(root, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(root, "inference_mode", 1);
    cJSON *targets = cJSON_AddArrayToObject(root, "target_modules");
    for (int p = 0; p < N_PROJ; p++)
        if (m->lora.targets[p]) cJSON_AddItemToArray(targets, cJSON_CreateString(proj_short_name(p)));
    char *text = cJSON_Print(root);
    char *path = paft_path_join(adapter_dir, "adapter_config.json");
    char *tmp = paft_path_join(adapter_dir, ".adapter_config.json.tmp");
    FILE *f = fopen(tmp, "w");
    if (!f) PAFT_FATAL("%s: cannot create: %s", tmp, strerror(errno));
    if (fprintf(f, "%s\n", text) < 0 || fclose(f) != 0) PAFT_FATAL("%s: write failed", tmp);
    if (rename(tmp, path) != 0) PAFT_FATAL("%s: cannot rename into place: %s", path, strerror(errno));
    free(tmp);
    free(path);
    free(text);
    cJSON_Delete(root);

    /* adapter_model.safetensors with PEFT's tensor names */
    TensorToWrite *tensors = paft_calloc((size_t)m->n_lora_views, sizeof(TensorToWrite));
    char **names = paft_calloc((size_t)m->n_lora_views, sizeof(char *));
    for (int i = 0; i < m->n_lora_views; i++) {
        const TensorView *v = &m->lora_views[i];
        size_t len = strlen(v->name), n = len + 64;
        names[i] = paft_malloc(n);
        snprintf(names[i], n, "base_model.model.%.*s.lora_%c.weight", (int)(len - 2), v->name,
                 v->name[len - 1]);
        tensors[i] = (TensorToWrite){names[i], DTYPE_F32, 2, {v->rows, v->cols}, m->lora_memory + v->offset};
    }
    path = paft_path_join(adapter_dir, "adapter_model.safetensors");
    safetensors_write(path, tensors, m->n_lora_views, "{\"format\": \"pt\"}");
    free(path);
    for (int i = 0; i < m->n_lora_views; i++) free(names[i]);
    free(names);
    free(tensors);
}
