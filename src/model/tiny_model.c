/* tiny_model.c - random Llama-family models written as Hugging Face directories. */
#include "model/tiny_model.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/safetensors.h"
#include "model/model.h"
#include "util/common.h"
#include "util/rng.h"

TinyModelSpec tiny_model_default(void) {
    TinyModelSpec s = {
        .architecture = "LlamaForCausalLM",
        .vocab_size = 64,
        .hidden_size = 32,
        .intermediate_size = 64,
        .num_layers = 2,
        .num_heads = 4,
        .num_kv_heads = 2,
        .head_dim = 0,
        .rope_theta = 10000.0,
        .rms_norm_eps = 1e-5,
        .tie_word_embeddings = 0,
        .init_std = 0.1,
        .bf16 = 0,
    };
    return s;
}

static void write_config_json(const char *dir, const TinyModelSpec *s) {
    cJSON *root = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(root, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString(s->architecture));
    const char *type = strcmp(s->architecture, "MistralForCausalLM") == 0 ? "mistral"
                       : strcmp(s->architecture, "Qwen2ForCausalLM") == 0 ? "qwen2"
                                                                           : "llama";
    cJSON_AddStringToObject(root, "model_type", type);
    cJSON_AddNumberToObject(root, "vocab_size", s->vocab_size);
    cJSON_AddNumberToObject(root, "hidden_size", s->hidden_size);
    cJSON_AddNumberToObject(root, "intermediate_size", s->intermediate_size);
    cJSON_AddNumberToObject(root, "num_hidden_layers", s->num_layers);
    cJSON_AddNumberToObject(root, "num_attention_heads", s->num_heads);
    cJSON_AddNumberToObject(root, "num_key_value_heads", s->num_kv_heads);
    if (s->head_dim) cJSON_AddNumberToObject(root, "head_dim", s->head_dim);
    cJSON_AddNumberToObject(root, "max_position_embeddings", 4096);
    cJSON_AddNumberToObject(root, "rms_norm_eps", s->rms_norm_eps);
    cJSON_AddNumberToObject(root, "rope_theta", s->rope_theta);
    cJSON_AddBoolToObject(root, "tie_word_embeddings", s->tie_word_embeddings);
    cJSON_AddStringToObject(root, "hidden_act", "silu");
    cJSON_AddStringToObject(root, "torch_dtype", s->bf16 ? "bfloat16" : "float32");
    char *text = cJSON_Print(root);
    char *path = paft_path_join(dir, "config.json");
    char *tmp = paft_path_join(dir, ".config.json.tmp");
    FILE *f = fopen(tmp, "w");
    if (!f) PAFT_FATAL("%s: cannot create: %s", tmp, strerror(errno));
    if (fprintf(f, "%s\n", text) < 0 || fclose(f) != 0) PAFT_FATAL("%s: write failed", tmp);
    if (rename(tmp, path) != 0) PAFT_FATAL("%s: cannot rename into place: %s", path, strerror(errno));
    free(tmp);
    free(path);
    free(text);
    cJSON_Delete(root);
}

void tiny_model_write(const char *dir, const TinyModelSpec *s, uint64_t seed) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        PAFT_FATAL("%s: cannot create directory: %s", dir, strerror(errno));
    write_config_json(dir, s);

    /* Load the architecture back through the real parser, then fill every tensor the model
     * layout names, so the generated file has exactly the tensors a loader requires. */
    char *config_path = paft_path_join(dir, "config.json");
    ModelConfig cfg;
    model_config_load(&cfg, config_path);
    free(config_path);
    const int H = cfg.num_heads * cfg.head_dim, KV = cfg.num_kv_heads * cfg.head_dim;
    const int d = cfg.hidden_size, ff = cfg.intermediate_size;

    enum { MAX_TENSORS = 4096 };
    TensorToWrite *tensors = paft_calloc(MAX_TENSORS, sizeof(TensorToWrite));
    char **names = paft_calloc(MAX_TENSORS, sizeof(char *));
    real **data = paft_calloc(MAX_TENSORS, sizeof(real *));
    int n = 0;
    Rng rng;
    rng_seed(&rng, seed);
#define ADD(name_fmt, layer, rows, cols, is_norm)                                                  \
    do {                                                                                           \
        char name_[160];                                                                           \
        snprintf(name_, sizeof name_, name_fmt, layer);                                            \
        if (n >= MAX_TENSORS) PAFT_FATAL("tiny model: too many tensors");                          \
        int64_t numel_ = (int64_t)(rows) * (cols);                                                 \
        names[n] = paft_strdup(name_);                                                             \
        data[n] = paft_malloc((size_t)numel_ * sizeof(real));                                      \
        for (int64_t i_ = 0; i_ < numel_; i_++)                                                    \
            data[n][i_] = (real)((is_norm ? 1.0 : 0.0) + s->init_std * rng_normal(&rng));           \
        tensors[n] = (TensorToWrite){names[n], s->bf16 ? DTYPE_BF16 : DTYPE_F32,                   \
                                     (cols) == 1 ? 1 : 2, {(rows), (cols)}, data[n]};              \
        n++;                                                                                       \
    } while (0)

    /* "%.0d" prints nothing for 0: the names without a layer index go through the same macro */
    ADD("model.embed_tokens.weight%.0d", 0, cfg.vocab_size, d, 0);
    for (int l = 0; l < cfg.num_layers; l++) {
        ADD("model.layers.%d.input_layernorm.weight", l, d, 1, 1);
        ADD("model.layers.%d.self_attn.q_proj.weight", l, H, d, 0);
        ADD("model.layers.%d.self_attn.k_proj.weight", l, KV, d, 0);
        ADD("model.layers.%d.self_attn.v_proj.weight", l, KV, d, 0);
        if (cfg.qkv_bias) {
            ADD("model.layers.%d.self_attn.q_proj.bias", l, H, 1, 0);
            ADD("model.layers.%d.self_attn.k_proj.bias", l, KV, 1, 0);
            ADD("model.layers.%d.self_attn.v_proj.bias", l, KV, 1, 0);
        }
        ADD("model.layers.%d.self_attn.o_proj.weight", l, d, H, 0);
        ADD("model.layers.%d.post_attention_layernorm.weight", l, d, 1, 1);
        ADD("model.layers.%d.mlp.gate_proj.weight", l, ff, d, 0);
        ADD("model.layers.%d.mlp.up_proj.weight", l, ff, d, 0);
        ADD("model.layers.%d.mlp.down_proj.weight", l, d, ff, 0);
    }
    ADD("model.norm.weight%.0d", 0, d, 1, 1);
    if (!cfg.tie_word_embeddings) ADD("lm_head.weight%.0d", 0, cfg.vocab_size, d, 0);
#undef ADD

    char *path = paft_path_join(dir, "model.safetensors");
    safetensors_write(path, tensors, n, "{\"format\": \"pt\"}");
    free(path);
    for (int i = 0; i < n; i++) {
        free(names[i]);
        free(data[i]);
    }
    free(tensors);
    free(names);
    free(data);
    model_config_free(&cfg);
}
