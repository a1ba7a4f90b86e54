/*
 * model_config.h - the architecture of a Llama-family model, read from a Hugging Face config.json.
 *
 * Accepted: LlamaForCausalLM (Llama 2/3, incl. rope_scaling {"rope_type": "llama3"} and "linear"),
 * MistralForCausalLM, SmolLM-style tied embeddings (tie_word_embeddings), Qwen2ForCausalLM (q/k/v
 * biases). Every required key is checked and sizes must be consistent (hidden_size =
 * num_attention_heads * head_dim unless head_dim is given, heads divisible by KV heads, even
 * head_dim, positive sizes); a problem is a fatal error naming the file and the key.
 */
#ifndef PAFT_MODEL_CONFIG_H
#define PAFT_MODEL_CONFIG_H

typedef enum { ROPE_DEFAULT, ROPE_LINEAR, ROPE_LLAMA3 } RopeType;

/* The most decoder layers a configuration may have (and so layer indices 0 .. PAFT_MAX_LAYERS - 1
 * in tensor and module names): far above any real model, far below what would overflow. */
#define PAFT_MAX_LAYERS 100000

typedef struct {
    char architecture[64]; /* architectures[0], e.g. "LlamaForCausalLM" */
    char model_type[32];   /* "llama", "mistral", "qwen2" */
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int num_layers;   /* num_hidden_layers */
    int num_heads;    /* num_attention_heads */
    int num_kv_heads; /* num_key_value_heads (default num_attention_heads) */
    int head_dim;     /* head_dim (default hidden_size / num_attention_heads) */
    int max_position_embeddings; /* default as transformers': llama 2048, mistral 131072, qwen2
                                    32768 */
    double rms_norm_eps;
    double rope_theta;
    RopeType rope_type;
    double rope_factor;           /* linear / llama3 */
    double rope_low_freq_factor;  /* llama3 */
    double rope_high_freq_factor; /* llama3 */
    int rope_original_max_position_embeddings; /* llama3 */
    int tie_word_embeddings;
    int qkv_bias;      /* q_proj/k_proj/v_proj carry a bias (Qwen2, Llama attention_bias) */
    int o_bias;        /* o_proj carries a bias (Llama attention_bias) */
    int mlp_bias;      /* gate/up/down carry biases (Llama mlp_bias) */
    int sliding_window; /* Mistral; 0 = none. Attention is full causal: sequences longer than the
                           window are refused at load time rather than computed differently. */
    char *json_text;   /* the config.json text as read (kept for the merged file's attributes) */
} ModelConfig;

/* Read and validate PATH (a config.json). Fatal error naming PATH on any problem. */
void model_config_load(ModelConfig *cfg, const char *path);
/* Parse JSON text; `source` names it in error messages. */
void model_config_parse(ModelConfig *cfg, const char *json_text, const char *source);
void model_config_free(ModelConfig *cfg);
/* A one-line human summary ("llama: 2 layers, hidden 64, heads 4/2 x 16, ffn 96, vocab 101,
 * rope theta 10000", then the RoPE scaling, tied embeddings, biases, sliding window if any). */
void model_config_describe(const ModelConfig *cfg, char *buf, int buflen);

/* RoPE inverse frequencies for pair i < head_dim/2 (HF's default, linear and llama3 rules):
 * default 1/theta^(2i/head_dim); linear that / factor; llama3 as transformers'
 * _compute_llama3_parameters. Evaluated in fp32 one operation at a time as transformers does, so
 * the values (widened to double) equal HF's inv_freq buffer; HF then forms position * inv_freq
 * in fp32 too. */
void model_config_rope_inv_freq(const ModelConfig *cfg, double *inv_freq);

#endif /* PAFT_MODEL_CONFIG_H */
