/*
 * model_config.c - read a Hugging Face config.json into a ModelConfig, with transformers' defaults
 * and transformers' RoPE frequency rules.
 *
 * The rule throughout: where transformers would silently compute something different from what
 * paft implements (another activation, partial rotary embeddings, YaRN, per-layer RoPE), refuse
 * the file with a message naming the key, rather than train a model that differs from the one
 * the user thinks they have.
 */
#include "model/model_config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/common.h"

#define CONFIG_MAX_BYTES (16u << 20)

/* The architectures paft implements, with transformers' per-architecture defaults for the keys
 * a config.json may leave out. */
typedef struct {
    const char *architecture;
    const char *model_type;
    int default_max_position_embeddings;
} KnownArchitecture;

static const KnownArchitecture known_architectures[] = {
    {"LlamaForCausalLM", "llama", 2048},
    {"MistralForCausalLM", "mistral", 4096 * 32},
    {"Qwen2ForCausalLM", "qwen2", 32768},
};
#define N_KNOWN ((int)(sizeof known_architectures / sizeof known_architectures[0]))

/* ---- typed access to JSON keys ------------------------------------------------------------------
 * `where` is the object's name in messages ("" for the top level, "rope_scaling." inside it).
 * An explicit JSON null counts as absent, as it does for transformers' config classes. */

typedef struct {
    const char *source; /* the file name for messages */
    const char *where;  /* key prefix for messages */
    const cJSON *object;
} JsonScope;

static const cJSON *scope_get(JsonScope s, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s.object, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static const char *json_kind(const cJSON *v) {
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    if (cJSON_IsNumber(v)) return "a number";
    return "null";
}

static PAFT_NORETURN void missing_key(JsonScope s, const char *key) {
    PAFT_FATAL("%s: missing required key \"%s%s\"", s.source, s.where, key);
}

static int scope_int(JsonScope s, const char *key, int required, int fallback) {
    const cJSON *v = scope_get(s, key);
    if (!v) {
        if (required) missing_key(s, key);
        return fallback;
    }
    if (!cJSON_IsNumber(v))
        PAFT_FATAL("%s: \"%s%s\" must be an integer, got %s", s.source, s.where, key,
                   json_kind(v));
    double x = v->valuedouble;
    if (x != floor(x) || x < -2147483648.0 || x > 2147483647.0)
        PAFT_FATAL("%s: \"%s%s\" must be an integer, got %g", s.source, s.where, key, x);
    return (int)x;
}

static double scope_number(JsonScope s, const char *key, int required, double fallback) {
    const cJSON *v = scope_get(s, key);
    if (!v) {
        if (required) missing_key(s, key);
        return fallback;
    }
    if (!cJSON_IsNumber(v))
        PAFT_FATAL("%s: \"%s%s\" must be a number, got %s", s.source, s.where, key, json_kind(v));
    /* cJSON reads 1e999 as inf: a rope_theta or rms_norm_eps of inf passed the range checks
     * below (inf > 0) and would only show up as NaN losses */
    if (!isfinite(v->valuedouble))
        PAFT_FATAL("%s: \"%s%s\" must be a finite number, got %g", s.source, s.where, key,
                   v->valuedouble);
    return v->valuedouble;
}

static int scope_bool(JsonScope s, const char *key, int fallback) {
    const cJSON *v = scope_get(s, key);
    if (!v) return fallback;
    if (!cJSON_IsBool(v))
        PAFT_FATAL("%s: \"%s%s\" must be true or false, got %s", s.source, s.where, key,
                   json_kind(v));
    return cJSON_IsTrue(v);
}

static const char *scope_string(JsonScope s, const char *key) {
    const cJSON *v = scope_get(s, key);
    if (!v) return NULL;
    if (!cJSON_IsString(v))
        PAFT_FATAL("%s: \"%s%s\" must be a string, got %s", s.source, s.where, key, json_kind(v));
    return v->valuestring;
}

static void require_positive_int(const char *source, const char *key, int value) {
    if (value <= 0) PAFT_FATAL("%s: \"%s\" must be positive, got %d", source, key, value);
}

/* ---- the parts of a config ------------------------------------------------------------------- */

static const KnownArchitecture *parse_architecture(JsonScope top) {
    const char *name = NULL;
    const cJSON *list = scope_get(top, "architectures");
    if (list) {
        if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) < 1 ||
            !cJSON_IsString(cJSON_GetArrayItem(list, 0)))
            PAFT_FATAL("%s: \"architectures\" must be a list of names, e.g. "
                       "[\"LlamaForCausalLM\"]",
                       top.source);
        name = cJSON_GetArrayItem(list, 0)->valuestring;
        for (int i = 0; i < N_KNOWN; i++)
            if (strcmp(known_architectures[i].architecture, name) == 0)
                return &known_architectures[i];
        PAFT_FATAL("%s: architecture \"%s\" is not supported (supported: LlamaForCausalLM, "
                   "MistralForCausalLM, Qwen2ForCausalLM)",
                   top.source, name);
    }
    /* Some hand-written configs name only the model_type: accept the ones we know. */
    const char *model_type = scope_string(top, "model_type");
    if (model_type)
        for (int i = 0; i < N_KNOWN; i++)
            if (strcmp(known_architectures[i].model_type, model_type) == 0)
                return &known_architectures[i];
    missing_key(top, "architectures");
}

/* rope_scaling (transformers 4.x) or rope_parameters (transformers 5), either with "rope_type"
 * or the legacy "type". */
static void parse_rope(ModelConfig *cfg, JsonScope top) {
    const char *source = top.source;
    const cJSON *scaling = scope_get(top, "rope_scaling");
    const char *scaling_key = "rope_scaling";
    if (!scaling) {
        scaling = scope_get(top, "rope_parameters");
        scaling_key = "rope_parameters";
    }
    if (scaling && !cJSON_IsObject(scaling))
        PAFT_FATAL("%s: \"%s\" must be an object or null, got %s", source, scaling_key,
                   json_kind(scaling));
    char where[32];
    snprintf(where, sizeof where, "%s.", scaling_key);
    JsonScope rope = {source, where, scaling};

    cfg->rope_theta = scope_number(top, "rope_theta", 0, 10000.0);
    if (scaling) cfg->rope_theta = scope_number(rope, "rope_theta", 0, cfg->rope_theta);
    if (!(cfg->rope_theta > 0))
        PAFT_FATAL("%s: \"rope_theta\" must be positive, got %g", source, cfg->rope_theta);

    double partial = scope_number(top, "partial_rotary_factor", 0, 1.0);
    if (scaling) partial = scope_number(rope, "partial_rotary_factor", 0, partial);
    if (partial != 1.0)
        PAFT_FATAL("%s: partial_rotary_factor %g is not supported (RoPE over the whole head only)",
                   source, partial);

    cfg->rope_type = ROPE_DEFAULT;
    cfg->rope_factor = 1.0;
    cfg->rope_low_freq_factor = 0;
    cfg->rope_high_freq_factor = 0;
    cfg->rope_original_max_position_embeddings = 0;
    if (!scaling) return;

    for (const cJSON *child = scaling->child; child; child = child->next)
        if (cJSON_IsObject(child))
            PAFT_FATAL("%s: \"%s\" holds per-layer-type parameters (\"%s\"), which paft does not "
                       "support",
                       source, scaling_key, child->string);
    const char *type = scope_string(rope, "rope_type");
    if (!type) type = scope_string(rope, "type");
    if (!type || strcmp(type, "default") == 0) return;

    if (strcmp(type, "linear") == 0) {
        cfg->rope_type = ROPE_LINEAR;
        cfg->rope_factor = scope_number(rope, "factor", 1, 0);
        if (!(cfg->rope_factor > 0))
            PAFT_FATAL("%s: \"%s.factor\" must be positive, got %g", source, scaling_key,
                       cfg->rope_factor);
    } else if (strcmp(type, "llama3") == 0) {
        cfg->rope_type = ROPE_LLAMA3;
        cfg->rope_factor = scope_number(rope, "factor", 1, 0);
        cfg->rope_low_freq_factor = scope_number(rope, "low_freq_factor", 1, 0);
        cfg->rope_high_freq_factor = scope_number(rope, "high_freq_factor", 1, 0);
        /* transformers falls back to the top-level key, then to max_position_embeddings */
        int fallback = scope_int(top, "original_max_position_embeddings", 0,
                                 cfg->max_position_embeddings);
        cfg->rope_original_max_position_embeddings =
            scope_int(rope, "original_max_position_embeddings", 0, fallback);
        if (!(cfg->rope_factor > 0) || !(cfg->rope_low_freq_factor > 0) ||
            !(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor))
            PAFT_FATAL("%s: \"%s\" llama3 needs factor > 0 and 0 < low_freq_factor < "
                       "high_freq_factor (got factor %g, low %g, high %g)",
                       source, scaling_key, cfg->rope_factor, cfg->rope_low_freq_factor,
                       cfg->rope_high_freq_factor);
        if (cfg->rope_original_max_position_embeddings <= 0)
            PAFT_FATAL("%s: \"%s.original_max_position_embeddings\" must be positive, got %d",
                       source, scaling_key, cfg->rope_original_max_position_embeddings);
    } else {
        PAFT_FATAL("%s: \"%s\" type \"%s\" is not supported (supported: default, linear, llama3)",
                   source, scaling_key, type);
    }
}

void model_config_parse(ModelConfig *cfg, const char *json_text, const char *source) {
    memset(cfg, 0, sizeof *cfg);
    cJSON *root = cJSON_Parse(json_text);
    if (!root) PAFT_FATAL("%s: not valid JSON", source);
    if (!cJSON_IsObject(root)) PAFT_FATAL("%s: not a JSON object", source);
    JsonScope top = {source, "", root};

    const KnownArchitecture *arch = parse_architecture(top);
    snprintf(cfg->architecture, sizeof cfg->architecture, "%s", arch->architecture);
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", arch->model_type);
    int is_llama = strcmp(arch->model_type, "llama") == 0;
    int is_mistral = strcmp(arch->model_type, "mistral") == 0;
    int is_qwen2 = strcmp(arch->model_type, "qwen2") == 0;

    cfg->vocab_size = scope_int(top, "vocab_size", 1, 0);
    cfg->hidden_size = scope_int(top, "hidden_size", 1, 0);
    cfg->intermediate_size = scope_int(top, "intermediate_size", 1, 0);
    cfg->num_layers = scope_int(top, "num_hidden_layers", 1, 0);
    cfg->num_heads = scope_int(top, "num_attention_heads", 1, 0);
    cfg->rms_norm_eps = scope_number(top, "rms_norm_eps", 1, 0);
    require_positive_int(source, "vocab_size", cfg->vocab_size);
    require_positive_int(source, "hidden_size", cfg->hidden_size);
    require_positive_int(source, "intermediate_size", cfg->intermediate_size);
    require_positive_int(source, "num_hidden_layers", cfg->num_layers);
    if (cfg->num_layers >= PAFT_MAX_LAYERS)
        PAFT_FATAL("%s: \"num_hidden_layers\" = %d is beyond the %d paft supports", source,
                   cfg->num_layers, PAFT_MAX_LAYERS - 1);
    require_positive_int(source, "num_attention_heads", cfg->num_heads);
    if (!(cfg->rms_norm_eps > 0))
        PAFT_FATAL("%s: \"rms_norm_eps\" must be positive, got %g", source, cfg->rms_norm_eps);

    cfg->num_kv_heads = scope_int(top, "num_key_value_heads", 0, cfg->num_heads);
    require_positive_int(source, "num_key_value_heads", cfg->num_kv_heads);
    if (cfg->num_heads % cfg->num_kv_heads != 0)
        PAFT_FATAL("%s: num_attention_heads (%d) is not divisible by num_key_value_heads (%d)",
                   source, cfg->num_heads, cfg->num_kv_heads);

    if (scope_get(top, "head_dim")) {
        cfg->head_dim = scope_int(top, "head_dim", 1, 0);
        require_positive_int(source, "head_dim", cfg->head_dim);
    } else {
        if (cfg->hidden_size % cfg->num_heads != 0)
            PAFT_FATAL("%s: hidden_size (%d) is not num_attention_heads (%d) x an integer head "
                       "size, and head_dim is not given",
                       source, cfg->hidden_size, cfg->num_heads);
        cfg->head_dim = cfg->hidden_size / cfg->num_heads;
    }
    /* the q projection's width, num_attention_heads x head_dim, is an int throughout (model.c's
     * layouts, the ops): a product beyond it overflowed there (UBSan) before any shape check */
    if ((int64_t)cfg->num_heads * cfg->head_dim > INT32_MAX)
        PAFT_FATAL("%s: num_attention_heads x head_dim = %d x %d is beyond the %d paft supports",
                   source, cfg->num_heads, cfg->head_dim, INT32_MAX);
    if (cfg->head_dim % 2 != 0)
        PAFT_FATAL("%s: head_dim %d is odd (RoPE rotates pairs of dimensions)", source,
                   cfg->head_dim);

    cfg->max_position_embeddings =
        scope_int(top, "max_position_embeddings", 0, arch->default_max_position_embeddings);
    require_positive_int(source, "max_position_embeddings", cfg->max_position_embeddings);

    const char *activation = scope_string(top, "hidden_act");
    if (activation && strcmp(activation, "silu") != 0)
        PAFT_FATAL("%s: hidden_act \"%s\" is not supported (the Llama family uses silu)", source,
                   activation);

    parse_rope(cfg, top);

    cfg->tie_word_embeddings = scope_bool(top, "tie_word_embeddings", 0);
    if (is_llama) {
        int attention_bias = scope_bool(top, "attention_bias", 0);
        cfg->qkv_bias = attention_bias;
        cfg->o_bias = attention_bias;
        cfg->mlp_bias = scope_bool(top, "mlp_bias", 0);
    } else if (is_qwen2) {
        cfg->qkv_bias = 1; /* Qwen2's q/k/v projections always carry a bias, o and MLP never */
    }

    /* transformers' defaults: Mistral 4096 when the key is absent (none when null), Qwen2 only
     * with use_sliding_window. Llama has no sliding window. */
    cfg->sliding_window = 0;
    const cJSON *window = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
    int window_active = is_mistral || (is_qwen2 && scope_bool(top, "use_sliding_window", 0));
    if (window_active && !(window && cJSON_IsNull(window))) {
        cfg->sliding_window = scope_int(top, "sliding_window", 0, 4096);
        require_positive_int(source, "sliding_window", cfg->sliding_window);
    }

    cfg->json_text = paft_strdup(json_text);
    cJSON_Delete(root);
}

void model_config_load(ModelConfig *cfg, const char *path) {
    char *text = paft_read_text_file(path, CONFIG_MAX_BYTES, NULL);
    model_config_parse(cfg, text, path);
    free(text);
}

void model_config_free(ModelConfig *cfg) {
    free(cfg->json_text);
    cfg->json_text = NULL;
}

void model_config_describe(const ModelConfig *cfg, char *buf, int buflen) {
    if (buflen <= 0) return;
    int len = snprintf(buf, (size_t)buflen, "%s: %d layers, hidden %d, heads %d/%d x %d, ffn %d, "
                       "vocab %d, rope theta %g",
                       cfg->model_type, cfg->num_layers, cfg->hidden_size, cfg->num_heads,
                       cfg->num_kv_heads, cfg->head_dim, cfg->intermediate_size, cfg->vocab_size,
                       cfg->rope_theta);
#define DESCRIBE_APPEND(...)                                                                       \
    do {                                                                                           \
        if (len >= 0 && len < buflen)                                                              \
            len += snprintf(buf + len, (size_t)(buflen - len), __VA_ARGS__);                      \
    } while (0)
    if (cfg->rope_type == ROPE_LINEAR) DESCRIBE_APPEND(" linear x%g", cfg->rope_factor);
    if (cfg->rope_type == ROPE_LLAMA3)
        DESCRIBE_APPEND(" llama3 x%g (low %g, high %g, original %d)", cfg->rope_factor,
                        cfg->rope_low_freq_factor, cfg->rope_high_freq_factor,
                        cfg->rope_original_max_position_embeddings);
    if (cfg->tie_word_embeddings) DESCRIBE_APPEND(", tied embeddings");
    if (cfg->qkv_bias) DESCRIBE_APPEND(", q/k/v bias");
    if (cfg->o_bias) DESCRIBE_APPEND(", o bias");
    if (cfg->mlp_bias) DESCRIBE_APPEND(", mlp bias");
    if (cfg->sliding_window) DESCRIBE_APPEND(", sliding window %d", cfg->sliding_window);
#undef DESCRIBE_APPEND
}

/* transformers computes these in fp32 tensor arithmetic, one rounding per operation, with Python
 * scalars converted to fp32 (and `scalar / tensor` evaluated as reciprocal(tensor) * scalar).
 * Every step below is one such fp32 operation, so the values equal HF's inv_freq buffer (up to
 * its powf, which we replace by a correctly rounded pow). `volatile` keeps the compiler from
 * fusing a multiply and an add into one FMA, which would round once instead of twice. */
void model_config_rope_inv_freq(const ModelConfig *cfg, double *inv_freq) {
    int half = cfg->head_dim / 2;
    float theta = (float)cfg->rope_theta;
    float dim = (float)cfg->head_dim;
    for (int i = 0; i < half; i++) {
        float exponent = (float)(2 * i) / dim;
        float power = (float)pow((double)theta, (double)exponent);
        volatile float inv = 1.0f / power;

        if (cfg->rope_type == ROPE_LINEAR) {
            inv = inv / (float)cfg->rope_factor;
        } else if (cfg->rope_type == ROPE_LLAMA3) {
            float factor = (float)cfg->rope_factor;
            float low = (float)cfg->rope_low_freq_factor;
            double old_context = (double)cfg->rope_original_max_position_embeddings;
            float low_freq_wavelen = (float)(old_context / cfg->rope_low_freq_factor);
            float high_freq_wavelen = (float)(old_context / cfg->rope_high_freq_factor);
            volatile float wavelen = (1.0f / inv) * (float)(2 * M_PI);
            if (wavelen > low_freq_wavelen) {
                inv = inv / factor;
            } else if (!(wavelen < high_freq_wavelen)) {
                volatile float smooth = (1.0f / wavelen) * (float)old_context;
                smooth = smooth - low;
                smooth = smooth / (float)(cfg->rope_high_freq_factor - cfg->rope_low_freq_factor);
                volatile float scaled_part = (1.0f - smooth) * inv;
                scaled_part = scaled_part / factor;
                volatile float kept_part = smooth * inv;
                inv = scaled_part + kept_part;
            }
        }
        inv_freq[i] = (double)inv;
    }
}
