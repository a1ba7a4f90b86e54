/*
 * test_step_reference.c - the loss and LoRA gradients of a training step, through the real path
 * (token data file -> batches -> model -> losses -> step_gradients), against PyTorch:
 *   SFT:   tests/fixtures/<model>/reference.safetensors (token-mean cross-entropy)
 *   pref:  tests/fixtures/<model>/pref_reference.safetensors (TRL semantics of DPO with label
 *          smoothing 0.1, IPO, hinge, ORPO), pairs of different lengths.
 * Each with micro_batch = the whole batch and micro_batch = 1 (gradient accumulation).
 */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "model/model.h"
#include "model/peft.h"
#include "test_util.h"
#include "train/step.h"

static float *read_f32(Checkpoint *ref, const char *name, int64_t numel) {
    const TensorInfo *t = checkpoint_require(ref, name, 0, NULL);
    if (t->numel != numel) {
        printf("FAIL %s has %lld values, expected %lld\n", name, (long long)t->numel, (long long)numel);
        exit(1);
    }
    float *out = paft_malloc((size_t)numel * sizeof(float));
    checkpoint_read(ref, t, out);
    return out;
}

static int32_t *read_i32(Checkpoint *ref, const char *name, int64_t *numel) {
    const TensorInfo *t = checkpoint_require(ref, name, 0, NULL);
    int32_t *out = paft_malloc((size_t)t->numel * sizeof(int32_t));
    checkpoint_read_int32(ref, t, out);
    if (numel) *numel = t->numel;
    return out;
}

static void compare_grads(Model *m, Checkpoint *ref, const char *prefix, const char *what) {
    char name[256];
    double worst = 0;
    for (int i = 0; i < m->n_lora_views; i++) {
        const TensorView *v = &m->lora_views[i];
        size_t len = strlen(v->name), n = (size_t)(v->rows * v->cols);
        snprintf(name, sizeof name, "%s%.*s.%c", prefix, (int)(len - 2), v->name, v->name[len - 1]);
        float *want = read_f32(ref, name, (int64_t)n);
        double err = max_rel_error(m->lora_grads_memory + v->offset, want, n);
        if (err > worst) worst = err;
        CHECK(err <= 1e-4, "%s: %s rel err %.3g", what, name, err);
        free(want);
    }
    printf("  %-34s LoRA gradients: worst rel err %.2e\n", what, worst);
}

static void load(Model *m, const char *dir, int rows, int T) {
    char *adapter = paft_path_join(dir, "adapter");
    LoraConfig lora;
    peft_read_config(&lora, adapter);
    model_load(m, dir, &lora, 1, MPI_COMM_SELF);
    peft_load_adapter(m, adapter);
    model_alloc_activations(m, rows, T);
    free(adapter);
}

static void sft_case(const char *dir, int micro_batch) {
    char *path = paft_path_join(dir, "reference.safetensors");
    Checkpoint ref;
    checkpoint_open(&ref, path);
    int64_t n;
    int32_t *ids = read_i32(&ref, "input_ids", &n);
    int32_t *targets = read_i32(&ref, "targets", NULL);
    const TensorInfo *t = checkpoint_require(&ref, "input_ids", 0, NULL);
    const int B = (int)t->shape[0], T = (int)t->shape[1];
    /* the fixture's targets as a loss mask: token t+1 is a target when targets[t] >= 0 */
    char *cfg_dir = paft_path_join(dir, "config.json");
    ModelConfig mc;
    model_config_load(&mc, cfg_dir);
    free(cfg_dir);
    TokenDataWriter *w = token_data_writer_create("step_sft.bin", TOKEN_DATA_SFT, (uint32_t)mc.vocab_size);
    model_config_free(&mc);
    for (int b = 0; b < B; b++) {
        uint32_t tok[64];
        uint8_t mask[64] = {0};
        for (int i = 0; i < T; i++) tok[i] = (uint32_t)ids[b * T + i];
        for (int i = 0; i + 1 < T; i++) mask[i + 1] = targets[b * T + i] >= 0;
        token_data_writer_add_sft(w, tok, mask, (uint64_t)T);
    }
    token_data_writer_finish(w);
    Model m;
    load(&m, dir, micro_batch, T);
    TokenData *data = token_data_open("step_sft.bin", TOKEN_DATA_SFT, (uint32_t)m.config.vocab_size);
    StageConfig sc = {.batch = B, .micro_batch = micro_batch, .seq_len = T, .l1 = 0};
    Layout layout;
    layout_create(&layout, MPI_COMM_WORLD, 1);
    StepContext ctx;
    step_context_init(&ctx, &m, data, &sc, STAGE_SFT, &layout);
    uint64_t records[64];
    for (int i = 0; i < B; i++) records[i] = (uint64_t)i;
    StepStats st;
    step_gradients(&ctx, records, &st);
    float *loss = read_f32(&ref, "loss", 1);
    char what[128];
    snprintf(what, sizeof what, "sft (micro-batch %d)", micro_batch);
    CHECK_CLOSE(st.loss, loss[0], 1e-5, 0, what);
    compare_grads(&m, &ref, "grad.", what);
    free(loss);
    step_context_free(&ctx);
    layout_free(&layout);
    token_data_close(data);
    model_free(&m);
    checkpoint_close(&ref);
    free(ids);
    free(targets);
    free(path);
}

static void pref_case(const char *dir, const char *kind, int micro_batch) {
    char *path = paft_path_join(dir, "pref_reference.safetensors");
    Checkpoint ref;
    checkpoint_open(&ref, path);
    int64_t P, wp, wc, wr;
    int32_t *plen = read_i32(&ref, "prompt_len", &P), *clen = read_i32(&ref, "chosen_len", NULL);
    int32_t *rlen = read_i32(&ref, "rejected_len", NULL);
    int32_t *prompt = read_i32(&ref, "prompt", &wp), *chosen = read_i32(&ref, "chosen", &wc);
    int32_t *rejected = read_i32(&ref, "rejected", &wr);
    wp /= P, wc /= P, wr /= P; /* padded widths */
    char *cfg_dir = paft_path_join(dir, "config.json");
    ModelConfig mc;
    model_config_load(&mc, cfg_dir);
    free(cfg_dir);
    TokenDataWriter *w = token_data_writer_create("step_pref.bin", TOKEN_DATA_PREF, (uint32_t)mc.vocab_size);
    model_config_free(&mc);
    int longest = 0;
    for (int i = 0; i < P; i++) {
        uint32_t pp[64], cc[64], rr[64];
        for (int j = 0; j < plen[i]; j++) pp[j] = (uint32_t)prompt[i * wp + j];
        for (int j = 0; j < clen[i]; j++) cc[j] = (uint32_t)chosen[i * wc + j];
        for (int j = 0; j < rlen[i]; j++) rr[j] = (uint32_t)rejected[i * wr + j];
        token_data_writer_add_pref(w, pp, (uint64_t)plen[i], cc, (uint64_t)clen[i], rr, (uint64_t)rlen[i]);
        longest = PAFT_MAX(longest, plen[i] + PAFT_MAX(clen[i], rlen[i]));
    }
    token_data_writer_finish(w);
    Model m;
    load(&m, dir, 2 * micro_batch, longest);
    TokenData *data = token_data_open("step_pref.bin", TOKEN_DATA_PREF, (uint32_t)m.config.vocab_size);
    StageConfig sc = {.batch = (int)P, .micro_batch = micro_batch, .seq_len = longest,
                      .beta = 0.1, .label_smoothing = strcmp(kind, "dpo") == 0 ? 0.1 : 0};
    snprintf(sc.loss, sizeof sc.loss, "%s", kind);
    Layout layout;
    layout_create(&layout, MPI_COMM_WORLD, 1);
    StepContext ctx;
    step_context_init(&ctx, &m, data, &sc, STAGE_PREF, &layout);
    uint64_t records[64];
    for (int i = 0; i < P; i++) records[i] = (uint64_t)i;
    StepStats st;
    step_gradients(&ctx, records, &st);
    char name[128], what[128];
    snprintf(what, sizeof what, "%s (micro-batch %d)", kind, micro_batch);
    snprintf(name, sizeof name, "%s.loss", kind);
    float *loss = read_f32(&ref, name, 1);
    CHECK_CLOSE(st.loss, loss[0], 1e-5, 1e-7, what);
    snprintf(name, sizeof name, "%s.rewards_chosen", kind);
    float *rc = read_f32(&ref, name, P);
    snprintf(name, sizeof name, "%s.rewards_rejected", kind);
    float *rr = read_f32(&ref, name, P);
    double mean_rc = 0, mean_rr = 0;
    for (int i = 0; i < P; i++) mean_rc += rc[i] / (double)P, mean_rr += rr[i] / (double)P;
    CHECK_CLOSE(st.reward_chosen, mean_rc, 1e-5, 1e-7, "rewards/chosen");
    CHECK_CLOSE(st.reward_rejected, mean_rr, 1e-5, 1e-7, "rewards/rejected");
    printf("  %-34s loss %.7f (PyTorch %.7f)\n", what, st.loss, loss[0]);
    snprintf(name, sizeof name, "%s.grad.", kind);
    compare_grads(&m, &ref, name, what);
    free(loss);
    free(rc);
    free(rr);
    step_context_free(&ctx);
    layout_free(&layout);
    token_data_close(data);
    model_free(&m);
    checkpoint_close(&ref);
    free(plen), free(clen), free(rlen), free(prompt), free(chosen), free(rejected);
    free(path);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    static const char *kinds[] = {"dpo", "ipo", "hinge", "orpo"};
    for (int a = 1; a < argc; a++) {
        printf("fixture %s\n", argv[a]);
        sft_case(argv[a], 2);
        sft_case(argv[a], 1);
        for (int k = 0; k < 4; k++) {
            pref_case(argv[a], kinds[k], 3);
            pref_case(argv[a], kinds[k], 1);
        }
    }
    int status = test_finish("test_step_reference");
    MPI_Finalize();
    return status;
}
