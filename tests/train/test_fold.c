/*
 * test_fold.c - folding an adapter into the base (model.adapter=..., the sequential baseline)
 * gives the same function as the base with that adapter enabled: W + s B A == W, x A^T B^T s.
 * A PEFT adapter directory folds too: paft's own copy (<stage>/peft/) gives exactly the weights
 * its adapter.h5 gives, and an adapter written by PEFT itself (the llama-gqa fixture, argv[1])
 * the function PEFT's forward computes with it enabled.
 */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "io/adapter.h"
#include "model/model.h"
#include "model/peft.h"
#include "model/tiny_model.h"
#include "test_util.h"
#include "util/rng.h"

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    TinyModelSpec spec = tiny_model_default();
    tiny_model_write("fold_model", &spec, 3);
    LoraConfig lora;
    lora_config_init(&lora, 4, 8.0, 0, "q_proj,v_proj,o_proj,down_proj", "test");
    enum { B = 2, T = 9 };
    int32_t tokens[B * T], targets[B * T];
    Rng rng;
    rng_seed(&rng, 5);
    for (int i = 0; i < B * T; i++) tokens[i] = (int32_t)(rng_u64(&rng) % 64);
    for (int i = 0; i < B * T; i++) targets[i] = (i + 1) % T ? tokens[i + 1] : -1;

    /* an adapter with random A and B, written through the real writer */
    Model with;
    model_load(&with, "fold_model", &lora, 1, MPI_COMM_SELF);
    for (size_t i = 0; i < with.n_lora; i++) with.lora_memory[i] = (real)(0.2 * rng_normal(&rng));
    AdapterInfo info = {.stage = "sft", .step = 7};
    adapter_write("fold_adapter.h5", MPI_COMM_WORLD, &with, &info, NULL, NULL, NULL, 1);
    model_alloc_activations(&with, B, T);
    model_forward(&with, tokens, targets, B, T);

    /* the base with the adapter folded in, and a different LoRA configuration on top (B = 0) */
    LoraConfig other;
    lora_config_init(&other, 2, 2.0, 1, "gate_proj,up_proj", "test");
    Model folded;
    model_load(&folded, "fold_model", &other, 9, MPI_COMM_SELF);
    adapter_fold_into_base("fold_adapter.h5", MPI_COMM_WORLD, &folded);
    model_alloc_activations(&folded, B, T);
    model_forward(&folded, tokens, targets, B, T);

    double err = max_rel_error(folded.acts.logits, with.acts.logits, (size_t)B * T * 64);
    printf("folded vs adapter-enabled logits: max rel err %.2e\n", err);
    CHECK(err < 1e-5, "folded model differs: %.3g", err);
    /* and the fold really changed the model */
    Model base;
    model_load(&base, "fold_model", &other, 9, MPI_COMM_SELF);
    model_alloc_activations(&base, B, T);
    model_forward(&base, tokens, targets, B, T);
    double moved = max_rel_error(base.acts.logits, with.acts.logits, (size_t)B * T * 64);
    CHECK(moved > 1e-3, "the adapter should change the logits (%.3g)", moved);


    /* the same adapter as a PEFT directory, written by paft (train writes <stage>/peft/ so) */
    peft_write_adapter("fold_adapter.h5", "fold_peft");
    Model folded_peft;
    model_load(&folded_peft, "fold_model", &other, 9, MPI_COMM_SELF);
    adapter_fold_into_base("fold_peft", MPI_COMM_WORLD, &folded_peft);
    CHECK(folded_peft.n_weights == folded.n_weights, "weight counts differ");
    size_t differ = 0;
    for (size_t i = 0; i < folded.n_weights; i++)
        differ += folded_peft.weights_memory[i] != folded.weights_memory[i];
    printf("PEFT copy folded vs adapter.h5 folded: %zu of %zu weights differ\n", differ,
           folded.n_weights);
    CHECK(differ == 0, "folding the PEFT copy gives other weights (%zu differ)", differ);

    /* an adapter written by PEFT: folded == enabled (paft's enabled forward is PEFT's:
     * test_model_reference) */
    if (argc > 1) {
        char dir[1024], adapter[1100];
        snprintf(dir, sizeof dir, "%s", argv[1]);
        snprintf(adapter, sizeof adapter, "%s/adapter", dir);
        LoraConfig peft_lora;
        peft_read_config(&peft_lora, adapter);
        Model enabled, fused;
        model_load(&enabled, dir, &peft_lora, 1, MPI_COMM_SELF);
        peft_load_adapter(&enabled, adapter);
        model_alloc_activations(&enabled, B, T);
        model_forward(&enabled, tokens, targets, B, T);
        model_load(&fused, dir, &other, 9, MPI_COMM_SELF);
        adapter_fold_into_base(adapter, MPI_COMM_WORLD, &fused);
        model_alloc_activations(&fused, B, T);
        model_forward(&fused, tokens, targets, B, T);
        const size_t n = (size_t)B * T * (size_t)enabled.config.vocab_size;
        double e = max_rel_error(fused.acts.logits, enabled.acts.logits, n);
        printf("PEFT's adapter folded vs enabled logits: max rel err %.2e\n", e);
        CHECK(e < 1e-5, "folded PEFT adapter differs: %.3g", e);
        enabled.adapters_enabled = 0; /* the base alone: the fold must have moved it */
        model_forward(&enabled, tokens, targets, B, T);
        double from_base = max_rel_error(fused.acts.logits, enabled.acts.logits, n);
        CHECK(from_base > 1e-4, "PEFT's adapter should change the logits (%.3g)", from_base);
        model_free(&enabled);
        model_free(&fused);
    }

    model_free(&with);
    model_free(&folded);
    model_free(&folded_peft);
    model_free(&base);
    int status = test_finish("test_fold");
    MPI_Finalize();
    return status;
}
