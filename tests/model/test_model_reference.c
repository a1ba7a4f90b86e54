/*
 * test_model_reference.c - the model is the same function as Hugging Face transformers + PEFT.
 *
 * For each fixture directory written by tests/reference/make_fixtures.py (a tiny HF model, its
 * PEFT adapter with non-zero B, and reference.safetensors with PyTorch's results), load the model
 * and adapter through paft's real loaders and compare:
 *   logits (adapter on and off) and the token-mean loss     to <= 1e-5 relative,
 *   LoRA gradients and full-parameter gradients of the loss  to <= 1e-4 relative.
 */
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "model/model.h"
#include "model/peft.h"
#include "test_util.h"

typedef struct {
    Checkpoint ckpt;
} Reference;

static float *read_tensor(Reference *ref, const char *name, int64_t expect_numel) {
    const TensorInfo *t = checkpoint_require(&ref->ckpt, name, 0, NULL);
    if (expect_numel >= 0 && t->numel != expect_numel) {
        printf("FAIL %s: %lld values, expected %lld\n", name, (long long)t->numel,
               (long long)expect_numel);
        exit(1);
    }
    float *out = paft_malloc((size_t)t->numel * sizeof(float));
    checkpoint_read(&ref->ckpt, t, out);
    return out;
}

static void check_tensor(const char *what, const float *got, const float *want, size_t n,
                         double tol) {
    double err = max_rel_error(got, want, n);
    CHECK(err <= tol, "%s: max relative error %.3g > %.1g", what, err, tol);
    printf("  %-58s rel err %.2e\n", what, err);
}

static void run_fixture(const char *dir) {
    printf("fixture %s\n", dir);
    char *adapter_dir = paft_path_join(dir, "adapter");
    char *ref_path = paft_path_join(dir, "reference.safetensors");
    LoraConfig lora;
    peft_read_config(&lora, adapter_dir);
    Model m;
    model_load(&m, dir, &lora, 1234, MPI_COMM_SELF);
    peft_load_adapter(&m, adapter_dir);

    Reference ref;
    checkpoint_open(&ref.ckpt, ref_path);
    const TensorInfo *ids_info = checkpoint_require(&ref.ckpt, "input_ids", 0, NULL);
    const int B = (int)ids_info->shape[0], T = (int)ids_info->shape[1], N = B * T;
    const int V = m.config.vocab_size;
    int32_t *tokens = paft_malloc((size_t)N * sizeof(int32_t));
    int32_t *targets = paft_malloc((size_t)N * sizeof(int32_t));
    checkpoint_read_int32(&ref.ckpt, ids_info, tokens);
    checkpoint_read_int32(&ref.ckpt, checkpoint_require(&ref.ckpt, "targets", 0, NULL), targets);
    int count = 0;
    for (int i = 0; i < N; i++) count += targets[i] >= 0;
    model_alloc_activations(&m, B, T);
    model_enable_full_grads(&m);

    /* the base model alone (DPO's reference policy) */
    m.adapters_enabled = 0;
    model_forward(&m, tokens, targets, B, T);
    float *want = read_tensor(&ref, "base_logits", (int64_t)N * V);
    check_tensor("base_logits (adapter disabled)", m.acts.logits, want, (size_t)N * V, 1e-5);
    free(want);

    /* the adapted model */
    m.adapters_enabled = 1;
    model_forward(&m, tokens, targets, B, T);
    want = read_tensor(&ref, "logits", (int64_t)N * V);
    check_tensor("logits", m.acts.logits, want, (size_t)N * V, 1e-5);
    free(want);
    want = read_tensor(&ref, "token_logp", N);
    check_tensor("token_logp", m.acts.logp, want, (size_t)N, 1e-5);
    free(want);
    double loss = 0;
    for (int i = 0; i < N; i++) loss -= targets[i] >= 0 ? m.acts.logp[i] : 0;
    loss /= count;
    want = read_tensor(&ref, "loss", 1);
    CHECK_CLOSE(loss, want[0], 1e-5, 0, "token-mean loss");
    printf("  loss %.7f (PyTorch %.7f)\n", loss, want[0]);
    free(want);

    /* gradients of the token-mean loss: d loss / d logp = -1/count on counted tokens */
    real *dlogp = paft_calloc((size_t)N, sizeof(real));
    for (int i = 0; i < N; i++) dlogp[i] = targets[i] >= 0 ? (real)(-1.0 / count) : 0;
    model_zero_grads(&m);
    model_backward(&m, dlogp);
    char name[256];
    for (int i = 0; i < m.n_lora_views; i++) {
        const TensorView *v = &m.lora_views[i];
        size_t len = strlen(v->name);
        snprintf(name, sizeof name, "grad.%.*s.%c", (int)(len - 2), v->name, v->name[len - 1]);
        want = read_tensor(&ref, name, v->rows * v->cols);
        check_tensor(name, m.lora_grads_memory + v->offset, want, (size_t)(v->rows * v->cols),
                     1e-4);
        free(want);
    }
    for (int i = 0; i < m.n_weight_views; i++) {
        const TensorView *v = &m.weight_views[i];
        snprintf(name, sizeof name, "grad_base.%s", v->name);
        want = read_tensor(&ref, name, v->rows * v->cols);
        check_tensor(name, m.weight_grads_memory + v->offset, want, (size_t)(v->rows * v->cols),
                     1e-4);
        free(want);
    }
    free(dlogp);
    free(tokens);
    free(targets);
    checkpoint_close(&ref.ckpt);
    model_free(&m);
    free(adapter_dir);
    free(ref_path);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        printf("usage: test_model_reference FIXTURE_DIR...\n");
        return 2;
    }
    for (int i = 1; i < argc; i++) run_fixture(argv[i]);
    return test_finish("test_model_reference");
}
