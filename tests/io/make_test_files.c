/*
 * make_test_files OUTDIR - writes the inputs of the `paft inspect` tests into OUTDIR:
 *
 *   good_model/          a tiny Llama (config.json, two shards + index) of exactly 680 parameters
 *   good_single.safetensors
 *   bad_<check>.safetensors   one corrupt file per check of the reader (bytes written by hand here,
 *                        not by safetensors_write, so the writer cannot hide a reader bug)
 *   bad_<check>_dir/     sharded directories whose index and shards disagree
 *   cfg_<check>/         model directories whose config.json is wrong
 *   extra_layer_model/   the tiny Llama plus a tensor of a layer its config does not have
 *   inv_freq_model/      the tiny Llama plus a RoPE inv_freq buffer (ignored, as transformers does)
 *   unknown.txt          a file of no known kind
 *
 * The expected messages live with the tests in tests/io/CMakeLists.txt and tests/cli/.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/safetensors.h"

static const char *outdir;

static char *path_of(const char *name) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", outdir, name);
    return buf;
}

static void make_dir(const char *name) {
    if (mkdir(path_of(name), 0755) != 0 && errno != EEXIST) {
        perror(path_of(name));
        exit(1);
    }
}

static void write_bytes(const char *name, const void *data, size_t n) {
    FILE *f = fopen(path_of(name), "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        perror(path_of(name));
        exit(1);
    }
}

static void write_text(const char *name, const char *text) {
    write_bytes(name, text, strlen(text));
}

/* A safetensors file from its parts: the 8-byte length (declared_len, or the header's real
 * length when declared_len is UINT64_MAX), the header text, then data_bytes bytes of data. */
static void write_raw(const char *name, uint64_t declared_len, const char *header,
                      size_t data_bytes) {
    size_t header_len = strlen(header);
    uint64_t len = declared_len == UINT64_MAX ? header_len : declared_len;
    size_t total = 8 + header_len + data_bytes;
    unsigned char *bytes = calloc(total, 1);
    for (int i = 0; i < 8; i++) bytes[i] = (unsigned char)(len >> (8 * i));
    memcpy(bytes + 8, header, header_len);
    for (size_t i = 0; i < data_bytes; i++) bytes[8 + header_len + i] = (unsigned char)i;
    write_bytes(name, bytes, total);
    free(bytes);
}

#define REAL_LEN UINT64_MAX

static void bad_files(void) {
    write_bytes("bad_truncated.safetensors", "\x10\x00\x00\x00\x00", 5);
    write_raw("bad_header_past_end.safetensors", 1000, "{\"w\":{}}", 0);
    write_raw("bad_header_huge.safetensors", 1ULL << 40, "{}", 0);
    write_raw("bad_invalid_json.safetensors", REAL_LEN, "{\"w\": {\"dtype\": \"F32\", ", 0);
    write_raw("bad_trailing_garbage.safetensors", REAL_LEN, "{} x", 0);
    write_raw("bad_not_object.safetensors", REAL_LEN, "[1, 2, 3]", 0);
    write_raw("bad_entry_not_object.safetensors", REAL_LEN, "{\"w\": 5}", 0);
    write_raw("bad_missing_dtype.safetensors", REAL_LEN,
              "{\"w\": {\"shape\": [2], \"data_offsets\": [0, 8]}}", 8);
    write_raw("bad_missing_shape.safetensors", REAL_LEN,
              "{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 8]}}", 8);
    write_raw("bad_missing_offsets.safetensors", REAL_LEN,
              "{\"w\": {\"dtype\": \"F32\", \"shape\": [2]}}", 8);
    write_raw("bad_unknown_dtype.safetensors", REAL_LEN,
              "{\"w\": {\"dtype\": \"Q4_K\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 8);
    write_raw("bad_negative_shape.safetensors", REAL_LEN,
              "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, -1], \"data_offsets\": [0, 8]}}", 8);
    write_raw("bad_fractional_shape.safetensors", REAL_LEN,
              "{\"w\": {\"dtype\": \"F32\", \"shape\": [2.5], \"data_offsets\": [0, 8]}}", 8);
    write_raw("bad_offsets_count.safetensors", REAL_LEN,
              "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0]}}", 8);
    write_raw("bad_offsets_negative.safetensors", REAL_LEN,
              "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [-8, 0]}}", 8);
    write_raw("bad_offsets_reversed.safetensors", REAL_LEN,
              "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 0]}}", 8);
    write_raw("bad_offsets_out_of_range.safetensors", REAL_LEN,
              "{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", 8);
    write_raw("bad_size_mismatch.safetensors", REAL_LEN,
              "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 20]}}", 20);
    write_raw("bad_overlap.safetensors", REAL_LEN,
              "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
              " \"b\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [8, 24]}}",
              24);
    write_raw("bad_gap.safetensors", REAL_LEN,
              "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
              " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [16, 24]}}",
              24);
    write_raw("bad_trailing_data.safetensors", REAL_LEN,
              "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 16);
    write_raw("bad_duplicate_name.safetensors", REAL_LEN,
              "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
              " \"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}",
              16);
    write_raw("bad_metadata.safetensors", REAL_LEN,
              "{\"__metadata__\": {\"step\": 3},"
              " \"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}",
              8);
}

/* ---- sharded directories --------------------------------------------------------------------- */

static const real ones[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};

static void write_shard(const char *dir, const char *file, const char *const *names, int n) {
    TensorToWrite t[8];
    for (int i = 0; i < n; i++) t[i] = (TensorToWrite){names[i], DTYPE_F32, 1, {4}, ones};
    char name[512];
    snprintf(name, sizeof name, "%s/%s", dir, file);
    safetensors_write(path_of(name), t, n, "{\"format\":\"pt\"}");
}

static void write_index(const char *dir, const char *weight_map) {
    char name[512], text[4096];
    snprintf(name, sizeof name, "%s/model.safetensors.index.json", dir);
    snprintf(text, sizeof text, "{\"metadata\": {\"total_size\": 32}, \"weight_map\": {%s}}",
             weight_map);
    write_text(name, text);
}

#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"

static void bad_directories(void) {
    const char *ab[] = {"a", "b"}, *c[] = {"c"}, *bc[] = {"b", "c"};

    make_dir("bad_missing_shard_dir");
    write_shard("bad_missing_shard_dir", SHARD1, ab, 2);
    write_index("bad_missing_shard_dir",
                "\"a\": \"" SHARD1 "\", \"b\": \"" SHARD1 "\", \"c\": \"" SHARD2 "\"");

    make_dir("bad_index_missing_tensor_dir");
    write_shard("bad_index_missing_tensor_dir", SHARD1, ab, 2);
    write_shard("bad_index_missing_tensor_dir", SHARD2, c, 1);
    write_index("bad_index_missing_tensor_dir", "\"a\": \"" SHARD1 "\", \"b\": \"" SHARD1
                                                "\", \"c\": \"" SHARD2 "\", \"d\": \"" SHARD2 "\"");

    make_dir("bad_two_shards_dir");
    write_shard("bad_two_shards_dir", SHARD1, ab, 2);
    write_shard("bad_two_shards_dir", SHARD2, bc, 2);
    write_index("bad_two_shards_dir",
                "\"a\": \"" SHARD1 "\", \"b\": \"" SHARD1 "\", \"c\": \"" SHARD2 "\"");

    make_dir("bad_unlisted_tensor_dir");
    write_shard("bad_unlisted_tensor_dir", SHARD1, ab, 2);
    write_shard("bad_unlisted_tensor_dir", SHARD2, c, 1);
    write_index("bad_unlisted_tensor_dir", "\"a\": \"" SHARD1 "\", \"c\": \"" SHARD2 "\"");

    make_dir("bad_index_outside_dir");
    write_shard("bad_index_outside_dir", SHARD1, ab, 2);
    write_index("bad_index_outside_dir", "\"a\": \"" SHARD1 "\", \"b\": \"../" SHARD1 "\"");

    make_dir("bad_index_json_dir");
    write_shard("bad_index_json_dir", SHARD1, ab, 2);
    write_text("bad_index_json_dir/model.safetensors.index.json", "{\"weight_map\": {\"a\": ");

    make_dir("bad_index_no_map_dir");
    write_shard("bad_index_no_map_dir", SHARD1, ab, 2);
    write_text("bad_index_no_map_dir/model.safetensors.index.json", "{\"metadata\": {}}");

    make_dir("bad_empty_dir");
}

/* ---- model directories ----------------------------------------------------------------------- */

/* The tiny Llama: vocab 11, hidden 8, ffn 12, 1 layer, 2 heads of 4, 1 KV head, untied.
 * Parameters: embed 88 + q 64 + k 32 + v 32 + o 64 + gate 96 + up 96 + down 96 + 2 norms 16
 * + final norm 8 + lm_head 88 = 680. */
static const char *tiny_config =
    "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n"
    "  \"vocab_size\": 11,\n  \"hidden_size\": 8,\n  \"intermediate_size\": 12,\n"
    "  \"num_hidden_layers\": 1,\n  \"num_attention_heads\": 2,\n  \"num_key_value_heads\": 1,\n"
    "  \"rms_norm_eps\": 1e-05,\n  \"rope_theta\": 10000.0,\n  \"max_position_embeddings\": 64,\n"
    "  \"tie_word_embeddings\": false,\n  \"hidden_act\": \"silu\"\n}\n";

static void good_model(void) {
    static real values[128];
    for (int i = 0; i < 128; i++) values[i] = (real)((i % 17) - 8) / 16;
    TensorToWrite first[] = {
        {"model.embed_tokens.weight", DTYPE_BF16, 2, {11, 8}, values},
        {"model.layers.0.self_attn.q_proj.weight", DTYPE_BF16, 2, {8, 8}, values},
        {"model.layers.0.self_attn.k_proj.weight", DTYPE_BF16, 2, {4, 8}, values},
        {"model.layers.0.self_attn.v_proj.weight", DTYPE_BF16, 2, {4, 8}, values},
        {"model.layers.0.self_attn.o_proj.weight", DTYPE_BF16, 2, {8, 8}, values},
        {"model.layers.0.input_layernorm.weight", DTYPE_F32, 1, {8}, values},
    };
    TensorToWrite second[] = {
        {"model.layers.0.mlp.gate_proj.weight", DTYPE_BF16, 2, {12, 8}, values},
        {"model.layers.0.mlp.up_proj.weight", DTYPE_BF16, 2, {12, 8}, values},
        {"model.layers.0.mlp.down_proj.weight", DTYPE_BF16, 2, {8, 12}, values},
        {"model.layers.0.post_attention_layernorm.weight", DTYPE_F32, 1, {8}, values},
        {"model.norm.weight", DTYPE_F32, 1, {8}, values},
        {"lm_head.weight", DTYPE_BF16, 2, {11, 8}, values},
    };
    make_dir("good_model");
    write_text("good_model/config.json", tiny_config);
    safetensors_write(path_of("good_model/" SHARD1), first, 6, "{\"format\":\"pt\"}");
    safetensors_write(path_of("good_model/" SHARD2), second, 6, "{\"format\":\"pt\"}");
    char map[4096] = "";
    for (int i = 0; i < 6; i++)
        snprintf(map + strlen(map), sizeof map - strlen(map), "%s\"%s\": \"" SHARD1 "\"",
                 i ? ", " : "", first[i].name);
    for (int i = 0; i < 6; i++)
        snprintf(map + strlen(map), sizeof map - strlen(map), ", \"%s\": \"" SHARD2 "\"",
                 second[i].name);
    write_index("good_model", map);

    /* the same weights in one file with one tensor more: a second layer's norm the config's one
     * layer does not have (refused), or RoPE's inv_freq buffer older exports keep (ignored) */
    TensorToWrite all[13];
    memcpy(all, first, sizeof first);
    memcpy(all + 6, second, sizeof second);
    all[12] = (TensorToWrite){"model.layers.1.input_layernorm.weight", DTYPE_F32, 1, {8}, values};
    make_dir("extra_layer_model");
    write_text("extra_layer_model/config.json", tiny_config);
    safetensors_write(path_of("extra_layer_model/model.safetensors"), all, 13, NULL);
    all[12] = (TensorToWrite){"model.layers.0.self_attn.rotary_emb.inv_freq", DTYPE_F32, 1, {2}, values};
    make_dir("inv_freq_model");
    write_text("inv_freq_model/config.json", tiny_config);
    safetensors_write(path_of("inv_freq_model/model.safetensors"), all, 13, NULL);

    /* 3 + 4*5 + 2 = 25 parameters in three dtypes */
    TensorToWrite single[] = {
        {"bias", DTYPE_F16, 1, {3}, values},
        {"weight", DTYPE_F32, 2, {4, 5}, values},
        {"scale", DTYPE_BF16, 1, {2}, values},
    };
    safetensors_write(path_of("good_single.safetensors"), single, 3, NULL);
    /* the same bytes without the extension: recognised by content */
    safetensors_write(path_of("good_single.weights"), single, 3, NULL);
}

/* A model directory whose config.json is `config` (weights from the tiny model). */
static void config_case(const char *dir, const char *config) {
    make_dir(dir);
    char name[512];
    snprintf(name, sizeof name, "%s/config.json", dir);
    write_text(name, config);
    TensorToWrite t = {"model.norm.weight", DTYPE_F32, 1, {8}, ones};
    snprintf(name, sizeof name, "%s/model.safetensors", dir);
    safetensors_write(path_of(name), &t, 1, NULL);
}

#define CFG_BEGIN "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 11, "
#define CFG_SIZES "\"intermediate_size\": 12, \"num_hidden_layers\": 1, \"rms_norm_eps\": 1e-5, "

static void bad_configs(void) {
    config_case("cfg_missing_key", CFG_BEGIN CFG_SIZES "\"num_attention_heads\": 2}");
    config_case("cfg_kv_heads", CFG_BEGIN CFG_SIZES
                "\"hidden_size\": 12, \"num_attention_heads\": 4, \"num_key_value_heads\": 3}");
    config_case("cfg_hidden_heads",
                CFG_BEGIN CFG_SIZES "\"hidden_size\": 10, \"num_attention_heads\": 4}");
    config_case("cfg_odd_head_dim",
                CFG_BEGIN CFG_SIZES "\"hidden_size\": 6, \"num_attention_heads\": 2}");
    config_case("cfg_negative", "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": -11, "
                                CFG_SIZES "\"hidden_size\": 8, \"num_attention_heads\": 2}");
    config_case("cfg_not_integer",
                CFG_BEGIN CFG_SIZES "\"hidden_size\": \"8\", \"num_attention_heads\": 2}");
    config_case("cfg_unknown_arch",
                "{\"architectures\": [\"GPT2LMHeadModel\"], \"vocab_size\": 11, " CFG_SIZES
                "\"hidden_size\": 8, \"num_attention_heads\": 2}");
    config_case("cfg_rope_yarn", CFG_BEGIN CFG_SIZES
                "\"hidden_size\": 8, \"num_attention_heads\": 2,"
                " \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}}");
    config_case("cfg_rope_llama3_incomplete", CFG_BEGIN CFG_SIZES
                "\"hidden_size\": 8, \"num_attention_heads\": 2,"
                " \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0,"
                " \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}");
    config_case("cfg_rope_not_object", CFG_BEGIN CFG_SIZES
                "\"hidden_size\": 8, \"num_attention_heads\": 2, \"rope_scaling\": \"linear\"}");
    config_case("cfg_activation", CFG_BEGIN CFG_SIZES
                "\"hidden_size\": 8, \"num_attention_heads\": 2, \"hidden_act\": \"gelu\"}");
    config_case("cfg_too_many_layers", CFG_BEGIN "\"intermediate_size\": 12, \"num_hidden_layers\": "
                "2000000000, \"rms_norm_eps\": 1e-5, \"hidden_size\": 8, \"num_attention_heads\": 2}");
    config_case("cfg_not_json", "{\"architectures\": [\"LlamaForCausalLM\"], ");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: make_test_files OUTDIR\n");
        return 2;
    }
    outdir = argv[1];
    if (mkdir(outdir, 0755) != 0 && errno != EEXIST) {
        perror(outdir);
        return 1;
    }
    bad_files();
    bad_directories();
    good_model();
    bad_configs();
    write_text("unknown.txt", "not a model\n");
    return 0;
}
