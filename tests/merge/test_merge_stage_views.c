/*
 * test_merge_stage_views.c - merge_stage_base_views (the base model's tensor list, computed from
 * the configuration alone) must equal the Model's weight_views from model_load (names, shapes,
 * offsets, order) on every architecture variant, and so give the same fingerprint: the merge
 * stage identifies the base with it, and an adapter records the one model_load computed.
 *
 * For each config.json below, a model directory is written with exactly the tensors the merge
 * stage lists (random values, safetensors_write), then loaded with model_load, which requires its
 * own list of tensors at its own shapes: a name the merge stage gets wrong fails the load, a
 * wrong order or offset fails the comparison.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/safetensors.h"
#include "merge/merge_stage.h"
#include "model/model.h"
#include "test_util.h"
#include "util/rng.h"

static const char *const configs[][2] = {
    {"llama-gqa", "{\"rms_norm_eps\":1e-5,\"rope_theta\":10000,\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\","
                  "\"vocab_size\":40,\"hidden_size\":16,\"intermediate_size\":24,"
                  "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2}"},
    {"llama-tied", "{\"rms_norm_eps\":1e-5,\"rope_theta\":10000,\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\","
                   "\"vocab_size\":40,\"hidden_size\":16,\"intermediate_size\":24,"
                   "\"num_hidden_layers\":1,\"num_attention_heads\":2,"
                   "\"tie_word_embeddings\":true}"},
    {"llama-biases", "{\"rms_norm_eps\":1e-5,\"rope_theta\":10000,\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\","
                     "\"vocab_size\":40,\"hidden_size\":16,\"intermediate_size\":24,"
                     "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":1,"
                     "\"attention_bias\":true,\"mlp_bias\":true}"},
    {"qwen2", "{\"rms_norm_eps\":1e-5,\"rope_theta\":10000,\"architectures\":[\"Qwen2ForCausalLM\"],\"model_type\":\"qwen2\","
              "\"vocab_size\":40,\"hidden_size\":16,\"intermediate_size\":24,"
              "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
              "\"tie_word_embeddings\":true}"},
    {"mistral-head-dim", "{\"rms_norm_eps\":1e-5,\"rope_theta\":10000,\"architectures\":[\"MistralForCausalLM\"],\"model_type\":\"mistral\","
                         "\"vocab_size\":40,\"hidden_size\":16,\"intermediate_size\":24,"
                         "\"num_hidden_layers\":3,\"num_attention_heads\":4,"
                         "\"num_key_value_heads\":2,\"head_dim\":6}"},
};

static void check_config(const char *workdir, const char *label, const char *json) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", workdir, label);
    mkdir(workdir, 0777);
    mkdir(dir, 0777);
    char *config_path = paft_path_join(dir, "config.json");
    FILE *f = fopen(config_path, "w");
    if (!f || fputs(json, f) < 0 || fclose(f) != 0) PAFT_FATAL("%s: cannot write", config_path);

    ModelConfig config;
    model_config_load(&config, config_path);
    TensorView *views;
    int n = model_weight_views(&config, &views);

    /* a checkpoint holding exactly the listed tensors */
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (size_t)(views[i].rows * views[i].cols);
    real *data = paft_malloc(total * sizeof(real));
    Rng rng;
    rng_seed(&rng, 5);
    for (size_t i = 0; i < total; i++) data[i] = (real)rng_normal(&rng);
    TensorToWrite *tensors = paft_calloc((size_t)n, sizeof(TensorToWrite));
    for (int i = 0; i < n; i++) {
        tensors[i].name = views[i].name;
        tensors[i].dtype = DTYPE_F32;
        tensors[i].ndim = views[i].cols == 1 ? 1 : 2;
        tensors[i].shape[0] = views[i].rows;
        tensors[i].shape[1] = views[i].cols;
        tensors[i].data = data + views[i].offset;
    }
    char *st_path = paft_path_join(dir, "model.safetensors");
    safetensors_write(st_path, tensors, n, NULL);

    LoraConfig lora;
    lora_config_init(&lora, 2, 2, 0, "q_proj", "test");
    Model m;
    model_load(&m, dir, &lora, 1, MPI_COMM_SELF);
    CHECK(m.n_weight_views == n, "%s: %d views, model_load has %d", label, n, m.n_weight_views);
    for (int i = 0; i < n && i < m.n_weight_views; i++) {
        const TensorView *a = &views[i], *b = &m.weight_views[i];
        CHECK(strcmp(a->name, b->name) == 0 && a->offset == b->offset && a->rows == b->rows &&
                  a->cols == b->cols,
              "%s: view %d is %s @%zu %lldx%lld, model_load's %s @%zu %lldx%lld", label, i,
              a->name, a->offset, (long long)a->rows, (long long)a->cols, b->name, b->offset,
              (long long)b->rows, (long long)b->cols);
    }
    Checkpoint ckpt;
    checkpoint_open(&ckpt, dir);
    char fingerprint[17];
    model_fingerprint(&ckpt, views, n, fingerprint);
    CHECK(strcmp(fingerprint, m.fingerprint) == 0, "%s: fingerprint %s, model_load's %s", label,
          fingerprint, m.fingerprint);
    printf("%-18s %3d tensors, fingerprint %s\n", label, n, fingerprint);
    checkpoint_close(&ckpt);
    model_free(&m);
    free(st_path);
    free(tensors);
    free(data);
    free(views);
    model_config_free(&config);
    free(config_path);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    const char *workdir = argc > 1 ? argv[1] : "merge_stage_views";
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++)
        check_config(workdir, configs[i][0], configs[i][1]);
    int status = test_finish("test_merge_stage_views");
    MPI_Finalize();
    return status;
}
