/*
 * test_model_device.c - the device model (model_device.c) against the host model (model.c).
 *
 *   test_model_device BACKEND [ARCH [simple|unshared|unfolded|thin]]  (BACKEND: emulate or cuda;
 *                        under mpirun -np P the model is tensor-parallel over the P ranks; simple:
 *                        CUDA's unfused attention kernels instead of the fused ones; unshared:
 *                        one LoRA product per projection, PAFT_LORA_SHARED_INPUT=0; unfolded:
 *                        PAFT_LORA_FOLDED=0; thin: the adapters' weight gradients on
 *                        thin_gemm_cuda.cu, PAFT_THIN_WGRAD=1)
 *
 * Two models load the same tiny checkpoint with the same LoRA factors (B made non-zero, so every
 * LoRA path does work): one computes on the host, one on BACKEND. They must agree on
 *   - logp of a forward with adapters, and without (DPO's reference);
 *   - the LoRA gradients of a backward, and after a second, accumulated micro-batch;
 *   - logp after the host changes the LoRA values (the optimizer's step): the device must use them;
 * and a third model on BACKEND with activation recomputation and the logits in chunks of 7 rows
 * (of 18: two whole chunks and a partial one) must agree with the second.
 * Tolerances: the emulation runs the same CPU ops in the same order, so 1e-5; CUDA computes in
 * bf16, so the comparison is scale-aware at a few 1e-2 (logp) and 0.12 (gradients, see grad_tol).
 * With no device (CUDA without a GPU, or a build without CUDA) the test reports itself skipped
 * (exit 77). tests/cuda/emulator runs the "cuda" backend on the CPU emulator everywhere.
 */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/tiny_model.h"
#include "test_util.h"
#include "util/rng.h"

enum { B = 2, T = 9 };

static void fill_tokens(int32_t *tokens, int32_t *targets, int vocab, uint64_t seed) {
    Rng rng;
    rng_seed(&rng, seed);
    for (int i = 0; i < B * T; i++) tokens[i] = (int32_t)(rng_u64(&rng) % (uint64_t)vocab);
    for (int i = 0; i < B * T; i++) /* the prompt's targets masked, as SFT data has them */
        targets[i] = (i % T) < 2 || (i + 1) % T == 0 ? -1 : tokens[i + 1];
}

static void randomize_lora(Model *m, uint64_t seed) {
    Rng rng;
    rng_seed(&rng, seed);
    /* 0.1: large enough that every LoRA term of the backward shows above the bf16 tolerance
     * (leaving out dx += dlora_h A moves the gradients' error from 0.07 to 0.26; at 0.05 it
     * stayed under the tolerance) */
    for (size_t i = 0; i < m->n_lora; i++) m->lora_memory[i] = (real)(0.1 * rng_normal(&rng));
}

/* Largest |a - b| relative to the largest |b|, over this rank's values and then all ranks. */
static double compare(const real *a, const real *b, size_t n) {
    double e = max_rel_error(a, b, n);
    MPI_Allreduce(MPI_IN_PLACE, &e, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return e;
}

static int simple_attention; /* argv[3] == "simple": the unfused CUDA attention kernels */

static void load(Model *m, const char *dir, const char *device, int recompute, MPI_Comm tp) {
    LoraConfig lora;
    /* r = 8: on CUDA the adapters of q, k, v (and gate, up) then share one product with their
     * input (model_device.c, "shared LoRA input"), which wants 16-byte aligned columns */
    lora_config_init(&lora, 8, 16, 0, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                     "test");
    model_load(m, dir, &lora, 11, tp);
    m->simple_attention = simple_attention; /* the host model too, when it is the one ("cpu") */
    randomize_lora(m, 5);
    /* the recomputing model also takes the logits 7 rows at a time */
    DeviceOptions opt = {.recompute = recompute, .simple_attention = simple_attention,
                         .logits_chunk = recompute ? 7 : 0};
    model_use_device(m, device, &opt, "test");
    model_alloc_activations(m, B, T);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    const char *backend_name = argc > 1 ? argv[1] : "emulate";
    const char *arch = argc > 2 ? argv[2] : "LlamaForCausalLM";
    simple_attention = argc > 3 && strcmp(argv[3], "simple") == 0;
    /* unshared: one LoRA product per projection; unfolded: shared, but apart from the frozen
     * GEMMs (the CUDA backend's default folds them in: model_device.c) */
    const int unshared = argc > 3 && strcmp(argv[3], "unshared") == 0;
    const int unfolded = argc > 3 && strcmp(argv[3], "unfolded") == 0;
    const int thin = argc > 3 && strcmp(argv[3], "thin") == 0;
    if (thin) setenv("PAFT_THIN_WGRAD", "1", 1);
    if (unshared) setenv("PAFT_LORA_SHARED_INPUT", "0", 1);
    if (unfolded) setenv("PAFT_LORA_FOLDED", "0", 1);
    /* The host's GEMMs on paft's loops, not a BLAS: the checks below that recomputation changes
     * nothing are exact, and they can be because the loops give each output element the same bits
     * whatever the number of rows in the call (the emulated device computes the LM head in
     * chunks of rows, more of them with recomputation). OpenBLAS does not promise that. */
    setenv("PAFT_CPU_BLAS", "0", 1);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const DeviceBackend *backend = device_backend_by_name(backend_name, "command line");
    if (!backend || !backend->available || backend->device_count() == 0) {
        if (rank == 0)
            printf("test_model_device: skipped: the %s backend has no device here (%s)\n",
                   backend_name, backend && backend->available ? "no GPU" : "not built");
        MPI_Finalize();
        return 77;
    }
    const int cuda = strcmp(backend_name, "cuda") == 0;
    const double tol = cuda ? 3e-2 : 1e-5;
    /* The LoRA gradients in bf16 are off by up to 0.055 (1 rank) and 0.074 (tensor parallel over
     * 2 ranks) on the CPU emulator of the CUDA backend, uniformly over all 42 tensors, the same
     * with fp64 GEMM accumulation, and doubling with each mantissa bit taken from bf16: rounding
     * of the bf16 activations, not logic (which gives errors of order 1). */
    const double grad_tol = cuda ? 0.12 : 2e-5;
    printf("[rank %d] %s backend, %s, tensor parallel over %d rank(s), tolerance %g\n", rank,
           backend_name, arch, size, tol);

    /* a tiny model with every feature that changes the sequencing: GQA, (Qwen2: q/k/v biases) */
    char dir[256];
    snprintf(dir, sizeof dir, "device_model_%s_%s_%d%s", backend_name, arch, size,
             simple_attention ? "_simple" : unshared ? "_unshared" : unfolded ? "_unfolded"
             : thin ? "_thin" : "");
    TinyModelSpec spec = tiny_model_default();
    spec.architecture = arch;
    spec.vocab_size = 96;
    spec.hidden_size = 32;
    spec.intermediate_size = 48;
    spec.num_heads = 4;
    spec.num_kv_heads = 2;
    spec.num_layers = 3;
    spec.init_std = 0.2;
    if (rank == 0) tiny_model_write(dir, &spec, 3);
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Comm tp = size > 1 ? MPI_COMM_WORLD : MPI_COMM_SELF;

    Model host, dev, dev_rc;
    load(&host, dir, "cpu", 0, tp);
    load(&dev, dir, backend_name, 0, tp);
    load(&dev_rc, dir, backend_name, 1, tp);
    CHECK(dev.weights_memory == NULL, "the host copy of the base weights is freed");

    int32_t tokens[B * T], targets[B * T], tokens2[B * T], targets2[B * T];
    fill_tokens(tokens, targets, spec.vocab_size, 1);
    fill_tokens(tokens2, targets2, spec.vocab_size, 2);
    real dlogp[B * T], dlogp2[B * T];
    Rng rng;
    rng_seed(&rng, 9);
    for (int i = 0; i < B * T; i++) dlogp[i] = targets[i] >= 0 ? (real)(rng_normal(&rng) / 8) : 0;
    for (int i = 0; i < B * T; i++) dlogp2[i] = targets2[i] >= 0 ? (real)(rng_normal(&rng) / 8) : 0;

    /* forward with and without adapters */
    Model *models[3] = {&host, &dev, &dev_rc};
    for (int i = 0; i < 3; i++) {
        models[i]->adapters_enabled = 0;
        model_forward(models[i], tokens, targets, B, T);
    }
    double e = compare(dev.acts.logp, host.acts.logp, B * T);
    CHECK(e <= tol, "logp without adapters: rel err %.3g", e);
    if (rank == 0) printf("  logp, adapters off        rel err %.3g\n", e);
    for (int i = 0; i < 3; i++) models[i]->adapters_enabled = 1;

    /* forward + backward, then a second micro-batch accumulated onto the gradients */
    for (int i = 0; i < 3; i++) {
        model_zero_grads(models[i]);
        model_forward(models[i], tokens, targets, B, T);
    }
    e = compare(dev.acts.logp, host.acts.logp, B * T);
    CHECK(e <= tol, "logp with adapters: rel err %.3g", e);
    if (rank == 0) printf("  logp, adapters on         rel err %.3g\n", e);
    CHECK(compare(dev_rc.acts.logp, dev.acts.logp, B * T) == 0,
          "recomputation does not change the forward");
    for (int i = 0; i < 3; i++) model_backward(models[i], dlogp);
    e = compare(dev.lora_grads_memory, host.lora_grads_memory, host.n_lora);
    CHECK(e <= grad_tol, "LoRA gradients: rel err %.3g", e);
    if (rank == 0) printf("  LoRA gradients            rel err %.3g\n", e);
    double g_rc = compare(dev_rc.lora_grads_memory, dev.lora_grads_memory, host.n_lora);
    CHECK(g_rc <= (cuda ? 1e-3 : 0), "recomputed LoRA gradients: rel err %.3g", g_rc);
    double norm = 0;
    for (size_t i = 0; i < host.n_lora; i++) norm += (double)host.lora_grads_memory[i] * host.lora_grads_memory[i];
    CHECK(norm > 0, "the gradients are not all zero");

    for (int i = 0; i < 3; i++) {
        model_forward(models[i], tokens2, targets2, B, T);
        model_backward(models[i], dlogp2);
    }
    e = compare(dev.lora_grads_memory, host.lora_grads_memory, host.n_lora);
    CHECK(e <= grad_tol, "accumulated LoRA gradients: rel err %.3g", e);
    if (rank == 0) printf("  accumulated gradients     rel err %.3g\n", e);
    g_rc = compare(dev_rc.lora_grads_memory, dev.lora_grads_memory, host.n_lora);
    CHECK(g_rc <= (cuda ? 1e-3 : 0), "recomputed accumulated gradients: rel err %.3g", g_rc);

    /* the host changes the LoRA values (an optimizer step): the next forward must see them */
    real before[B * T];
    memcpy(before, dev.acts.logp, sizeof before);
    for (int i = 0; i < 3; i++) {
        randomize_lora(models[i], 77);
        model_zero_grads(models[i]);
        model_forward(models[i], tokens2, targets2, B, T);
    }
    e = compare(dev.acts.logp, host.acts.logp, B * T);
    CHECK(e <= tol, "logp after new LoRA values: rel err %.3g", e);
    /* ...which the check above tells from the old ones: the old logp is further than tol from
     * the host's new one (about 0.05-0.1 relative; comparing the change with 10 * tol, as this
     * did, could never hold for CUDA's tol: found on the CPU emulator) */
    CHECK(compare(before, host.acts.logp, B * T) > tol, "new LoRA values changed logp");
    double zero = 0;
    for (size_t i = 0; i < dev.n_lora; i++) zero += fabs((double)dev.lora_grads_memory[i]);
    CHECK(zero == 0, "model_zero_grads zeroes the host copy");
    model_backward(&dev, dlogp2);
    model_backward(&host, dlogp2);
    e = compare(dev.lora_grads_memory, host.lora_grads_memory, host.n_lora);
    CHECK(e <= grad_tol, "gradients after zeroing: rel err %.3g", e);

    if (rank == 0)
        printf("  device memory: %.1f KiB (recompute: %.1f KiB)\n",
               dev.backend->memory_bytes(dev.device) / 1024.0,
               dev_rc.backend->memory_bytes(dev_rc.device) / 1024.0);
    CHECK(dev_rc.backend->memory_bytes(dev_rc.device) < dev.backend->memory_bytes(dev.device),
          "recomputation uses less device memory");
    model_free(&host);
    model_free(&dev);
    model_free(&dev_rc);
    int failed = test_counts_.failed;
    MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    test_counts_.failed = failed;
    int status = test_finish("test_model_device");
    MPI_Finalize();
    return status;
}
