/*
 * tiny_model.h - generate a small Llama-family model with random weights as a real Hugging Face
 * directory (config.json + model.safetensors). The demo and the tests use it so that everything
 * downstream goes through the same loader as a downloaded model.
 */
#ifndef PAFT_TINY_MODEL_H
#define PAFT_TINY_MODEL_H

#include <stdint.h>

typedef struct {
    const char *architecture; /* "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM" */
    int vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads;
    int head_dim; /* 0 = hidden_size / num_heads (then not written to config.json) */
    double rope_theta;
    double rms_norm_eps;
    int tie_word_embeddings;
    double init_std; /* weights ~ N(0, init_std^2); norms ~ 1 + N(0, init_std^2) */
    int bf16;        /* store weights as BF16 (else F32) */
} TinyModelSpec;

/* A sensible default: a 2-layer GQA Llama with vocab 64. */
TinyModelSpec tiny_model_default(void);
/* Write DIR/config.json and DIR/model.safetensors (DIR is created). */
void tiny_model_write(const char *dir, const TinyModelSpec *spec, uint64_t seed);

#endif
