/*
 * test_model_gradcheck.c - the whole model's gradients against central finite differences, in
 * double precision (this test links the fp64 build of the core library).
 *
 * A tiny random model (written as an HF directory and loaded back) with LoRA on all seven
 * projections and NON-ZERO B, so every path is exercised: d loss / d A, d loss / d B for every
 * adapted module, and full-parameter gradients of a sample of every base tensor (embedding, norms,
 * projections, biases, LM head; tied and untied heads).
 */
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/tiny_model.h"
#include "test_util.h"
#include "util/rng.h"

enum { B = 2, T = 5 };

static double loss_of(Model *m, const int32_t *tokens, const int32_t *targets) {
    model_forward(m, tokens, targets, B, T);
    double loss = 0;
    int count = 0;
    for (int i = 0; i < B * T; i++)
        if (targets[i] >= 0) {
            loss -= m->acts.logp[i];
            count++;
        }
    return loss / count;
}

/* Compare the analytic gradient of `n_samples` entries of buffer p (gradient g) with central
 * differences. */
static void check_buffer(const char *what, Model *m, real *p, const real *g, size_t n,
                         int n_samples, const int32_t *tokens, const int32_t *targets, Rng *rng) {
    const double h = 1e-5;
    double worst = 0;
    for (int s = 0; s < n_samples; s++) {
        size_t i = n_samples >= (int)n ? (size_t)s : (size_t)(rng_u64(rng) % n);
        if (i >= n) break;
        real saved = p[i];
        p[i] = saved + h;
        double up = loss_of(m, tokens, targets);
        p[i] = saved - h;
        double down = loss_of(m, tokens, targets);
        p[i] = saved;
        double numeric = (up - down) / (2 * h);
        double err = fabs(numeric - g[i]) / (fabs(numeric) + 1e-7);
        if (err > worst) worst = err;
        CHECK(fabs(numeric - g[i]) <= 1e-7 + 1e-5 * fabs(numeric),
              "%s[%zu]: analytic %.10g numeric %.10g", what, i, (double)g[i], numeric);
    }
    printf("  %-52s worst rel err %.2e\n", what, worst);
}

/* simple: the unfused attention ops (the probabilities kept), else the fused ones (the default) */
static void run_case(const char *dir, TinyModelSpec spec, const char *targets_list, int rslora,
                     int simple) {
    printf("case %s (%s, tied=%d, kv=%d, %s attention)\n", dir, spec.architecture,
           spec.tie_word_embeddings, spec.num_kv_heads, simple ? "simple" : "fused");
    tiny_model_write(dir, &spec, 7);
    LoraConfig lora;
    lora_config_init(&lora, 3, 5.0, rslora, targets_list, "test");
    Model m;
    model_load(&m, dir, &lora, 11, MPI_COMM_SELF);
    m.simple_attention = simple;
    model_alloc_activations(&m, B, T);
    model_enable_full_grads(&m);
    Rng rng;
    rng_seed(&rng, 99);
    for (size_t i = 0; i < m.n_lora; i++) /* non-zero B (and A) so all paths carry gradient */
        m.lora_memory[i] = (real)(0.3 * rng_normal(&rng));

    int32_t tokens[B * T], targets[B * T];
    for (int i = 0; i < B * T; i++) tokens[i] = (int32_t)(rng_u64(&rng) % spec.vocab_size);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            targets[b * T + t] = t + 1 < T ? tokens[b * T + t + 1] : -1;
    targets[1] = -1; /* a masked prompt position */

    loss_of(&m, tokens, targets);
    int count = 0;
    for (int i = 0; i < B * T; i++) count += targets[i] >= 0;
    real dlogp[B * T];
    for (int i = 0; i < B * T; i++) dlogp[i] = targets[i] >= 0 ? (real)(-1.0 / count) : 0;
    model_zero_grads(&m);
    model_backward(&m, dlogp);

    for (int v = 0; v < m.n_lora_views; v++) {
        const TensorView *tv = &m.lora_views[v];
        check_buffer(tv->name, &m, m.lora_memory + tv->offset, m.lora_grads_memory + tv->offset,
                     (size_t)(tv->rows * tv->cols), 6, tokens, targets, &rng);
    }
    for (int v = 0; v < m.n_weight_views; v++) {
        const TensorView *tv = &m.weight_views[v];
        check_buffer(tv->name, &m, m.weights_memory + tv->offset,
                     m.weight_grads_memory + tv->offset, (size_t)(tv->rows * tv->cols), 4, tokens,
                     targets, &rng);
    }
    model_free(&m);
}

int main(void) {
    TinyModelSpec llama = tiny_model_default();
    llama.vocab_size = 23;
    llama.hidden_size = 12;
    llama.num_heads = 3;
    llama.num_kv_heads = 1;
    llama.intermediate_size = 20;
    llama.init_std = 0.3;
    const char *all = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
    run_case("gradcheck_llama", llama, all, 0, 0);
    run_case("gradcheck_llama_simple", llama, all, 0, 1);

    TinyModelSpec tied = llama;
    tied.tie_word_embeddings = 1;
    tied.num_kv_heads = 3;
    run_case("gradcheck_tied", tied, "q_proj,v_proj,down_proj", 1, 0);

    TinyModelSpec qwen = llama;
    qwen.architecture = "Qwen2ForCausalLM";
    qwen.num_heads = 2;
    qwen.num_kv_heads = 2;
    run_case("gradcheck_qwen2", qwen, "k_proj,o_proj,up_proj", 0, 0); /* q/k/v biases */

    TinyModelSpec mistral = llama;
    mistral.architecture = "MistralForCausalLM";
    mistral.num_heads = 4;
    mistral.num_kv_heads = 2;
    mistral.head_dim = 2; /* explicit head_dim: heads * head_dim = 8 != hidden 12 */
    mistral.rope_theta = 1e6;
    run_case("gradcheck_mistral", mistral, "q_proj,o_proj,gate_proj,down_proj", 0, 0);
    return test_finish("test_model_gradcheck");
}
