/*
 * test_model_config.c - config.json parsing (defaults, per-architecture rules, RoPE scaling
 * variants) and the RoPE inverse frequencies, checked two ways: against the formulas evaluated
 * here in double precision, and bit for bit against the inv_freq buffers transformers 5.x
 * computes for the same configs (values printed once with float.hex() from
 * transformers.modeling_rope_utils / LlamaRotaryEmbedding and pasted below).
 */
#include <math.h>
#include <string.h>

#include "model/model_config.h"
#include "test_util.h"

static void test_llama_defaults(void) {
    const char *json = "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 101,"
                       " \"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": 2,"
                       " \"num_attention_heads\": 4, \"rms_norm_eps\": 1e-5}";
    ModelConfig cfg;
    model_config_parse(&cfg, json, "defaults.json");
    CHECK(strcmp(cfg.architecture, "LlamaForCausalLM") == 0 && strcmp(cfg.model_type, "llama") == 0,
          "architecture %s / %s", cfg.architecture, cfg.model_type);
    CHECK(cfg.num_kv_heads == 4, "kv heads default to heads: %d", cfg.num_kv_heads);
    CHECK(cfg.head_dim == 16, "head_dim = hidden / heads: %d", cfg.head_dim);
    CHECK(cfg.rope_theta == 10000.0 && cfg.rope_type == ROPE_DEFAULT, "rope defaults");
    CHECK(cfg.max_position_embeddings == 2048, "max positions default %d",
          cfg.max_position_embeddings);
    CHECK(cfg.tie_word_embeddings == 0 && cfg.qkv_bias == 0 && cfg.o_bias == 0 &&
              cfg.mlp_bias == 0 && cfg.sliding_window == 0,
          "no ties, biases or window");
    CHECK(cfg.rms_norm_eps == 1e-5, "eps");
    CHECK(strcmp(cfg.json_text, json) == 0, "json_text kept verbatim");
    char text[256];
    model_config_describe(&cfg, text, sizeof text);
    CHECK(strcmp(text, "llama: 2 layers, hidden 64, heads 4/4 x 16, ffn 96, vocab 101, rope "
                       "theta 10000") == 0,
          "describe: '%s'", text);

    /* default RoPE: 1 / theta^(2i/d), from the formula in double */
    double inv[8];
    model_config_rope_inv_freq(&cfg, inv);
    for (int i = 0; i < 8; i++)
        CHECK_CLOSE(inv[i], 1.0 / pow(10000.0, 2.0 * i / 16.0), 3e-7, 0, "default inv_freq");
    /* transformers' LlamaRotaryEmbedding(hidden 64, heads 4, theta 1e4).inv_freq, fp32 */
    static const double hf_default[8] = {0x1.0p+0,       0x1.43d136p-2, 0x1.99999ap-4,
                                         0x1.030dc6p-5,  0x1.47ae14p-7, 0x1.9e7c7p-9,
                                         0x1.0624dep-10, 0x1.4b96cp-12};
    int exact = 0;
    for (int i = 0; i < 8; i++) exact += inv[i] == hf_default[i];
    CHECK(exact == 8, "default inv_freq equals transformers' fp32 values (%d of 8)", exact);
    model_config_free(&cfg);
}

/* Llama 3.1 8B's RoPE: theta 500000, head_dim 128, llama3 scaling factor 8, low 1, high 4,
 * original context 8192. */
static const char *llama31_json =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 128256,"
    " \"hidden_size\": 4096, \"intermediate_size\": 14336, \"num_hidden_layers\": 32,"
    " \"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"rms_norm_eps\": 1e-05,"
    " \"rope_theta\": 500000.0, \"max_position_embeddings\": 131072, \"hidden_act\": \"silu\","
    " \"tie_word_embeddings\": false, \"attention_bias\": false, \"mlp_bias\": false,"
    " \"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
    " \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}}";

/* transformers 5.x _compute_llama3_parameters for the config above (fp32, as float.hex()). */
static const double hf_llama3[64] = {
    0x1.0p+0,       0x1.a11582p-1,  0x1.53c38cp-1,  0x1.14c708p-1,  0x1.c2ef78p-2,  0x1.6f56fap-2,
    0x1.2b3dc6p-2,  0x1.e788c2p-3,  0x1.8d276p-3,   0x1.43874p-3,   0x1.078d4p-3,   0x1.ad6338p-4,
    0x1.5dc95ap-4,  0x1.1cf13p-4,   0x1.d03ccep-5,  0x1.7a2d08p-5,  0x1.34119p-5,   0x1.f5ea7ep-6,
    0x1.98de92p-6,  0x1.4d1272p-6,  0x1.0f5386p-6,  0x1.ba0dd8p-7,  0x1.681adap-7,  0x1.2558fep-7,
    0x1.ddee9ep-8,  0x1.8554ecp-8,  0x1.3d2804p-8,  0x1.025c6ap-8,  0x1.a4ee4p-9,   0x1.1bfa0cp-9,
    0x1.67a23ap-10, 0x1.c12f3cp-11, 0x1.132ba4p-11, 0x1.47e21p-12,  0x1.765ba4p-13, 0x1.90d10cp-14,
    0x1.46831ap-14, 0x1.09fb7ep-14, 0x1.b15902p-15, 0x1.610332p-15, 0x1.1f91fp-15,  0x1.d484dep-16,
    0x1.7da9e8p-16, 0x1.36e8eap-16, 0x1.fa8b86p-17, 0x1.9ca3eap-17, 0x1.5024d6p-17, 0x1.11d41ep-17,
    0x1.be2188p-18, 0x1.6b6d0ep-18, 0x1.280d96p-18, 0x1.e257p-19,   0x1.88ec2p-19,  0x1.4014d2p-19,
    0x1.04be68p-19, 0x1.a8d01p-20,  0x1.5a0f4ep-20, 0x1.19e8p-20,   0x1.cb4a9ap-21, 0x1.76258ep-21,
    0x1.30c94ep-21, 0x1.f09184p-22, 0x1.94836p-22,  0x1.4985fep-22,
};

static void test_llama3_rope(void) {
    ModelConfig cfg;
    model_config_parse(&cfg, llama31_json, "llama31.json");
    CHECK(cfg.rope_type == ROPE_LLAMA3 && cfg.rope_factor == 8.0 &&
              cfg.rope_low_freq_factor == 1.0 && cfg.rope_high_freq_factor == 4.0 &&
              cfg.rope_original_max_position_embeddings == 8192,
          "llama3 parameters");
    CHECK(cfg.head_dim == 128 && cfg.num_kv_heads == 8 && cfg.max_position_embeddings == 131072,
          "sizes");
    double inv[64];
    model_config_rope_inv_freq(&cfg, inv);

    /* The formula by hand, in double: wavelengths above 8192/1 are divided by 8, those below
     * 8192/4 kept, and the band between interpolated with smooth = (8192/wavelen - 1) / 3. */
    int n_low = 0, n_high = 0, n_mid = 0, exact = 0;
    for (int i = 0; i < 64; i++) {
        double base = 1.0 / pow(500000.0, 2.0 * i / 128.0);
        double wavelen = 2 * M_PI / base, expected;
        if (wavelen > 8192.0) {
            expected = base / 8.0;
            n_low++;
        } else if (wavelen < 2048.0) {
            expected = base;
            n_high++;
        } else {
            double smooth = (8192.0 / wavelen - 1.0) / 3.0;
            expected = (1 - smooth) * base / 8.0 + smooth * base;
            n_mid++;
        }
        CHECK_CLOSE(inv[i], expected, 1e-6, 0, "llama3 inv_freq vs formula");
        exact += inv[i] == hf_llama3[i];
    }
    CHECK(n_low > 0 && n_high > 0 && n_mid > 0, "all three bands exercised: %d/%d/%d", n_low,
          n_mid, n_high);
    CHECK(exact == 64, "llama3 inv_freq equals transformers' fp32 values (%d of 64)", exact);
    char text[256];
    model_config_describe(&cfg, text, sizeof text);
    CHECK(strstr(text, "llama3 x8") != NULL, "describe mentions llama3: %s", text);
    model_config_free(&cfg);
}

static void test_linear_rope_and_legacy_type(void) {
    /* "type" is the pre-4.45 spelling of "rope_type". */
    const char *json = "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 10,"
                       " \"hidden_size\": 32, \"intermediate_size\": 8, \"num_hidden_layers\": 1,"
                       " \"num_attention_heads\": 2, \"rms_norm_eps\": 1e-6,"
                       " \"rope_scaling\": {\"type\": \"linear\", \"factor\": 4.0}}";
    ModelConfig cfg;
    model_config_parse(&cfg, json, "linear.json");
    CHECK(cfg.rope_type == ROPE_LINEAR && cfg.rope_factor == 4.0, "linear parsed");
    double inv[8];
    model_config_rope_inv_freq(&cfg, inv);
    for (int i = 0; i < 8; i++)
        CHECK_CLOSE(inv[i], 1.0 / pow(10000.0, 2.0 * i / 16.0) / 4.0, 3e-7, 0, "linear inv_freq");
    model_config_free(&cfg);

    /* rope_scaling {"rope_type": "default"} and the transformers-5 rope_parameters layout */
    const char *v5 = "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 10,"
                     " \"hidden_size\": 32, \"intermediate_size\": 8, \"num_hidden_layers\": 1,"
                     " \"num_attention_heads\": 2, \"rms_norm_eps\": 1e-6,"
                     " \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 5e5}}";
    model_config_parse(&cfg, v5, "v5.json");
    CHECK(cfg.rope_type == ROPE_DEFAULT && cfg.rope_theta == 500000.0, "rope_parameters theta %g",
          cfg.rope_theta);
    model_config_free(&cfg);
}

static void test_other_architectures(void) {
    ModelConfig cfg;
    /* Qwen2: q/k/v biases always; sliding window only with use_sliding_window. */
    const char *qwen = "{\"architectures\": [\"Qwen2ForCausalLM\"], \"vocab_size\": 151936,"
                       " \"hidden_size\": 896, \"intermediate_size\": 4864,"
                       " \"num_hidden_layers\": 24, \"num_attention_heads\": 14,"
                       " \"num_key_value_heads\": 2, \"rms_norm_eps\": 1e-6,"
                       " \"rope_theta\": 1000000.0, \"sliding_window\": 32768,"
                       " \"use_sliding_window\": false, \"tie_word_embeddings\": true,"
                       " \"rope_scaling\": null}";
    model_config_parse(&cfg, qwen, "qwen.json");
    CHECK(strcmp(cfg.model_type, "qwen2") == 0 && cfg.qkv_bias == 1 && cfg.o_bias == 0 &&
              cfg.mlp_bias == 0,
          "qwen2 biases");
    CHECK(cfg.head_dim == 64 && cfg.tie_word_embeddings == 1 && cfg.sliding_window == 0,
          "qwen2 head_dim %d tie %d window %d", cfg.head_dim, cfg.tie_word_embeddings,
          cfg.sliding_window);
    CHECK(cfg.max_position_embeddings == 32768, "qwen2 default max positions %d",
          cfg.max_position_embeddings);
    model_config_free(&cfg);

    /* Mistral with an explicit head_dim that is not hidden / heads (Mistral-Nemo), window null */
    const char *nemo = "{\"architectures\": [\"MistralForCausalLM\"], \"vocab_size\": 131072,"
                       " \"hidden_size\": 5120, \"intermediate_size\": 14336,"
                       " \"num_hidden_layers\": 40, \"num_attention_heads\": 32,"
                       " \"num_key_value_heads\": 8, \"head_dim\": 128, \"rms_norm_eps\": 1e-5,"
                       " \"rope_theta\": 1000000.0, \"sliding_window\": null,"
                       " \"max_position_embeddings\": 1024000}";
    model_config_parse(&cfg, nemo, "nemo.json");
    CHECK(cfg.head_dim == 128 && cfg.sliding_window == 0 && cfg.qkv_bias == 0,
          "mistral nemo head_dim %d window %d", cfg.head_dim, cfg.sliding_window);
    model_config_free(&cfg);

    /* Mistral 7B v0.1: window 4096; absent -> transformers' default 4096 as well */
    const char *mistral = "{\"architectures\": [\"MistralForCausalLM\"], \"vocab_size\": 32000,"
                          " \"hidden_size\": 4096, \"intermediate_size\": 14336,"
                          " \"num_hidden_layers\": 32, \"num_attention_heads\": 32,"
                          " \"num_key_value_heads\": 8, \"rms_norm_eps\": 1e-5}";
    model_config_parse(&cfg, mistral, "mistral.json");
    CHECK(cfg.sliding_window == 4096 && cfg.max_position_embeddings == 131072,
          "mistral defaults window %d positions %d", cfg.sliding_window,
          cfg.max_position_embeddings);
    model_config_free(&cfg);

    /* Llama with attention_bias and mlp_bias */
    const char *biased = "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 10,"
                         " \"hidden_size\": 32, \"intermediate_size\": 8, \"num_hidden_layers\": 1,"
                         " \"num_attention_heads\": 2, \"rms_norm_eps\": 1e-6,"
                         " \"attention_bias\": true, \"mlp_bias\": true, \"head_dim\": null}";
    model_config_parse(&cfg, biased, "biased.json");
    CHECK(cfg.qkv_bias == 1 && cfg.o_bias == 1 && cfg.mlp_bias == 1 && cfg.head_dim == 16,
          "llama biases");
    model_config_free(&cfg);

    /* no "architectures", only a known model_type */
    const char *typed = "{\"model_type\": \"mistral\", \"vocab_size\": 10, \"hidden_size\": 32,"
                        " \"intermediate_size\": 8, \"num_hidden_layers\": 1,"
                        " \"num_attention_heads\": 2, \"rms_norm_eps\": 1e-6}";
    model_config_parse(&cfg, typed, "typed.json");
    CHECK(strcmp(cfg.architecture, "MistralForCausalLM") == 0, "architecture from model_type");
    model_config_free(&cfg);
}

int main(void) {
    test_llama_defaults();
    test_llama3_rope();
    test_linear_rope_and_legacy_type();
    test_other_architectures();
    return test_finish("test_model_config");
}
