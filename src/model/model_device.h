/*
 * model_device.h - the model's forward and backward on an accelerator.
 *
 * The orchestration is model.c's, layer for layer, with the frozen base weights and the
 * activations in device memory in the backend's activation type (bf16 on CUDA) and the LoRA
 * gradients accumulated in fp32 (`float`) there.
 *
 * Division of labour (first version: the host is authoritative for everything LoRA):
 *   host   the Model's flat LoRA buffers (master weights, gradients), AdamW, the data-parallel and
 *          tensor-parallel gradient reductions, the L1 term, clipping, checkpoints, adapter files:
 *          all the tested CPU code, unchanged.
 *   device the base weights (the host copy is freed when the device takes them), a copy of the
 *          LoRA factors in the activation type (refreshed from the host before every forward:
 *          they are 0.1-1% of the model), every activation, and an fp32 accumulator of the LoRA
 *          gradients that is copied into the host's buffer after each backward.
 *   Between them per micro-batch: tokens and targets up, logp [N] down (every loss is a function
 *   of logp), d loss / d logp up; the vocab-parallel log-softmax statistics ([N] each) go down
 *   for their tensor-parallel reduction and lse goes back up.
 *
 * One source (model_device.c, through the op shim device_ops.h) gives two backends:
 *   "cuda"     bf16 activations, cuBLASLt GEMMs, the kernels in kernels/, tensor-parallel sums
 *              through NCCL (each rank its own GPU) or MPI (ranks sharing a GPU);
 *   "emulate"  the same orchestration, memory plan and host/device traffic over the CPU ops in
 *              host memory (`real`): it runs everywhere, so CI checks the GPU path's logic
 *              (recomputation, tensor parallelism, the copies) against model.c.
 *
 * The options apply to both: activation recomputation keeps only each layer's input and recomputes
 * the layer inside the backward (memory of one layer instead of L, one more forward of compute).
 */
#ifndef PAFT_MODEL_DEVICE_H
#define PAFT_MODEL_DEVICE_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "optim/adamw.h"
#include "util/common.h"

struct Model;
typedef struct ModelDevice ModelDevice;

typedef struct {
    int recompute;   /* 1: keep only each layer's input, recompute the layer in the backward */
    int collectives; /* kernels/device_comm.h DeviceCommKind: 0 auto, 1 nccl, 2 mpi (cuda only) */
    int simple_attention; /* cuda: the first, unfused attention kernels (T x T probabilities kept)
                             instead of the fused ones; for cross-checking */
    int logits_chunk; /* rows of logits computed at a time: 0 = the whole micro-batch unless its
                         logits exceed 1 GiB on this rank (model_device.c, logits_chunk_rows) */
    int profile; /* 1: time the device's work by phase (GEMMs, attention, ...) with stamps in its
                    stream, and print where the time went when the model is freed */
    double random_init_std; /* > 0: make the base weights N(0, std^2) (norms 1 + that) on the
                               device instead of copying the host's (`paft bench`: the host
                               weights of model_init_shape were never filled) */
} DeviceOptions;

/* A backend: a table of the device model's operations. The Model calls them (model.c); nothing
 * else needs to. `available` is 0 where the backend was not compiled in: create then ends the job
 * with a message saying how to build it. */
typedef struct {
    const char *name;
    int available;
    /* Devices this process can use (the emulation: 1; CUDA without a GPU: 0). Tests skip on 0. */
    int (*device_count)(void);
    /* Take the model's base weights onto the device (the host copy is freed) and allocate the
     * LoRA copies; the Model must already be loaded (and any adapter folded in). */
    ModelDevice *(*create)(struct Model *m, const DeviceOptions *opt);
    void (*destroy)(ModelDevice *d);
    void (*alloc_activations)(ModelDevice *d, int B, int T);
    /* model_forward / model_backward / model_zero_grads of model.h, with the same contracts:
     * forward fills m->acts.logp (and lse) on the host; backward ADDS into the device
     * accumulator and leaves its value in m->lora_grads_memory. */
    void (*forward)(ModelDevice *d, const int32_t *tokens, const int32_t *targets, int B, int T);
    void (*backward)(ModelDevice *d, const real *dlogp);
    void (*zero_grads)(ModelDevice *d);
    /* Device memory in use, in bytes (what `paft bench` reports for the device). */
    size_t (*memory_bytes)(const ModelDevice *d);
    /* Wait until the device has finished the work submitted so far (timing; no-op on emulate). */
    void (*synchronize)(ModelDevice *d);

    /* ---- device-resident training --------------------------------------------------------
     * After train_begin the LoRA values (fp32 master), their gradients and the AdamW moments
     * live on the device; nothing LoRA-sized crosses to the host per step (forward no longer
     * copies the values up, backward no longer copies the gradients down). The training step
     * then calls these instead of its host loops (step.c, train.c); offsets and counts are in
     * elements of the flat LoRA layout, as on the host. */
    /* Copy the host's LoRA values up and switch to resident mode; dp_comm is the data-parallel
     * group the gradients are summed over (collective over it: NCCL set-up). */
    void (*train_begin)(ModelDevice *d, MPI_Comm dp_comm, int collectives);
    /* The values into the Model's lora_memory and the moments into m_host / v_host (NULL: not
     * wanted): before a checkpoint or adapter is written. */
    void (*lora_to_host)(ModelDevice *d, real *m_host, real *v_host);
    /* The reverse, after a checkpoint is read (NULL moments: zero). */
    void (*lora_from_host)(ModelDevice *d, const real *m_host, const real *v_host);
    /* Sum gradients [offset, offset + n) over the data-parallel (dp = 1) or tensor-parallel
     * (dp = 0) group; zero them; their sum of squares (double, this rank). */
    void (*grads_allreduce)(ModelDevice *d, int dp, size_t offset, size_t n);
    void (*grads_zero)(ModelDevice *d, size_t offset, size_t n);
    double (*grads_sum_squares)(ModelDevice *d, size_t offset, size_t n);
    /* PAFT's L1 term on this rank's block of every delta: adds its gradient, returns this rank's
     * lambda * sum |delta| (step.c sums it over the tensor-parallel group). */
    double (*l1_penalty)(ModelDevice *d, double lambda);
    /* AdamW over all LoRA values with step t (already counted), then the bf16 copy refreshed. */
    void (*adamw_step)(ModelDevice *d, int64_t step, double lr, const AdamWHyper *hyper,
                       float grad_scale);
} DeviceBackend;

extern const DeviceBackend device_backend_emulate;
extern const DeviceBackend device_backend_cuda;

/* The backend called NAME ("cuda", "emulate"), or NULL for "cpu" (the host model, model.c);
 * anything else is a fatal error naming `origin` and the choices. */
const DeviceBackend *device_backend_by_name(const char *name, const char *origin);
/* Ends the job (naming `origin`) unless this process can run backend NAME: compiled in, and a
 * device visible. "cpu" always can. For the checks made on one rank before a job starts. */
void device_backend_check_usable(const char *name, const char *origin);
/* The same without the device: NAME is a backend this build has (else the job ends, naming
 * `origin`). Returns how many devices this process sees (0 for cpu), which paft check on a login
 * node without GPUs only notes. */
int device_backend_check_built(const char *name, const char *origin);

#endif /* PAFT_MODEL_DEVICE_H */
