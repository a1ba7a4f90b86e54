/*
 * model.h - a Llama-family causal LM with LoRA adapters on the CPU backend (fp32, OpenMP).
 *
 * Memory follows llm.c: the frozen base weights, the LoRA parameters, their gradients and the
 * activations each live in ONE flat buffer; structs of named pointers (views) give every tensor a
 * name. One flat buffer means one all-reduce for all LoRA gradients, one loop for AdamW, and one
 * table to walk when writing an adapter file.
 *
 *   tokens [B][T] --embed--> x0 --layer 0--> x1 ... --layer L-1--> xL --final norm--> --lm_head-->
 *   logits [B][T][V] --logprob--> logp [B][T]      (logp[b][t] = log p(targets[b][t] | tokens<=t))
 *
 * Every loss (SFT cross-entropy, DPO, ORPO) is a function of logp, so model_backward takes
 * d loss / d logp and fills the LoRA gradients (and, when enabled, full-parameter gradients).
 *
 * Tensor parallelism (Megatron): with tp ranks in tp_comm, each rank holds a shard.
 *   column-parallel q, k, v, gate, up: W split by output rows (heads / ffn), LoRA A replicated,
 *     B split by rows; the backward all-reduces the input gradient (once per block: q,k,v
 *     together, gate,up together).
 *   row-parallel o, down: W split by input columns, LoRA A split by columns, its N x r partial
 *     product all-reduced before the replicated B; the output all-reduced once.
 *   embedding and LM head: split by vocabulary rows; the log-probabilities reduce max, sum of
 *     exponentials and target logit across the group, so no rank ever holds full logits.
 * Norms are replicated. With tp = 1 every shard is the whole tensor and nothing is reduced.
 */
#ifndef PAFT_MODEL_H
#define PAFT_MODEL_H

#include <mpi.h>
#include <stdint.h>

#include "io/safetensors.h"
#include "model/model_config.h"
#include "model/model_device.h"
#include "util/common.h"

/* The seven linear projections of a decoder layer, in HF's order. */
typedef enum { PROJ_Q, PROJ_K, PROJ_V, PROJ_O, PROJ_GATE, PROJ_UP, PROJ_DOWN, N_PROJ } Proj;

/* "self_attn.q_proj", ... (the HF module path inside model.layers.{i}) */
const char *proj_module_name(Proj p);
/* "q_proj", ... (the name used in lora.targets) */
const char *proj_short_name(Proj p);

/* Layer indices paft accepts in a tensor or module name: 0 .. PAFT_MAX_LAYERS - 1 (model_config.h). */

/* The projection named "model.layers.<l>.<module path><suffix>" (suffix ".weight", or "" for a
 * module path; <l> decimal digits, below PAFT_MAX_LAYERS): its Proj with *layer set, or -1 for
 * any other name. */
int proj_from_name(const char *name, const char *suffix, int *layer);

/* Input and output features of a projection of this architecture (whole tensors). */
int proj_in(const ModelConfig *c, Proj p);
int proj_out(const ModelConfig *c, Proj p);
/* Column-parallel (q, k, v, gate, up: output rows split) or row-parallel (o, down). */
int proj_is_row_parallel(Proj p);

typedef struct {
    int r;
    double alpha;
    int rslora;                /* scale = alpha / sqrt(r) instead of alpha / r */
    int targets[N_PROJ];       /* 1 where the projection gets an adapter */
    double scale;              /* derived: alpha / r or alpha / sqrt(r) */
} LoraConfig;

/* Parse "q_proj,v_proj" into targets and compute the scale. `origin` names the source in errors. */
void lora_config_init(LoraConfig *lora, int r, double alpha, int rslora, const char *targets,
                      const char *origin);

/* Views into the flat base-weight buffer (or, with the same layout, into its gradients). */
typedef struct {
    real *attn_norm; /* [d] */
    real *w[N_PROJ]; /* q [Hq*D][d], k/v [Hkv*D][d], o [d][Hq*D], gate/up [ff][d], down [d][ff] */
    real *b[N_PROJ]; /* biases [out] where the architecture has them, else NULL */
    real *mlp_norm;  /* [d] */
} LayerWeights;

typedef struct {
    real *embed;      /* [V][d] */
    LayerWeights *layers;
    real *final_norm; /* [d] */
    real *lm_head;    /* [V][d]; == embed when tie_word_embeddings */
} Weights;

/* Views into the flat LoRA buffer: A [r][in], B [out][r], NULL where a projection is not adapted. */
typedef struct {
    real *A[N_PROJ];
    real *B[N_PROJ];
} LayerLora;

/* A named tensor in a flat buffer: what an HDF5/safetensors writer or a collective walks. Under
 * tensor parallelism the buffer holds this rank's block of the global tensor. */
typedef struct {
    char name[160];  /* base: the HF tensor name, "model.layers.0.self_attn.q_proj.weight";
                        LoRA: "<HF module path>/A" or "/B", the path under /lora in an adapter */
    size_t offset;   /* in elements, from the start of the flat buffer */
    int64_t rows, cols;               /* this rank's block (cols = 1 for a vector) */
    int64_t global_rows, global_cols; /* the whole tensor */
    int64_t row0, col0;               /* where the block starts in the whole tensor */
} TensorView;

/* Is the view the whole tensor (replicated across the tensor-parallel group)? */
int view_is_whole(const TensorView *v);

/* Activations of one forward pass, kept for the backward (per layer where it matters). */
typedef struct {
    real *x;        /* [L+1][N][d] residual stream: x[0] = embeddings, x[l+1] = output of layer l */
    real *ln1;      /* [L][N][d] input norm output */
    real *ln1_rstd; /* [L][N] */
    real *q;        /* [L][N][Hq*D] after RoPE */
    real *k;        /* [L][N][Hkv*D] after RoPE */
    real *v;        /* [L][N][Hkv*D] */
    real *att_state; /* [L][B][Hq][T] each query row's log-sum-exp (fused attention), or
                        [L][B][Hq][T][T] its probabilities (simple_attention) */
    real *att;      /* [L][N][Hq*D] attention output (input of o_proj) */
    real *x_mid;    /* [L][N][d] residual after attention */
    real *ln2;      /* [L][N][d] */
    real *ln2_rstd; /* [L][N] */
    real *gate;     /* [L][N][ff] */
    real *up;       /* [L][N][ff] */
    real *act;      /* [L][N][ff] silu(gate) * up (input of down_proj) */
    real *lora_h;   /* [L][N_PROJ][N][r] x A^T of each adapted projection */
    real *lnf;      /* [N][d] final norm output */
    real *lnf_rstd; /* [N] */
    real *logits;   /* [N][V] */
    real *lse;      /* [N] */
    real *logp;     /* [N] */
} Activations;

/* Scratch gradients of activations for the backward pass, reused layer after layer. */
typedef struct {
    real *dx;      /* [N][d] gradient of the residual stream */
    real *dln;     /* [N][d] */
    real *dq, *dk, *dv, *datt; /* [N][Hq*D] / [N][Hkv*D] */
    real *dgate, *dup, *dact;  /* [N][ff] */
    real *dlora_h; /* [N][r] */
    real *dlogits; /* [N][V] */
} GradScratch;

typedef struct Model {
    ModelConfig config;
    LoraConfig lora;
    char path[1024];        /* where the base model was loaded from */
    char fingerprint[17];   /* hex digest of the base model (see model_load): adapters record it
                               so that merging one onto another base is refused */

    /* frozen base weights */
    real *weights_memory;
    size_t n_weights;
    Weights weights;
    int n_weight_views;
    TensorView *weight_views;

    /* full-parameter gradients: allocated by model_enable_full_grads (same layout) */
    real *weight_grads_memory;
    Weights weight_grads;

    /* LoRA parameters and gradients (same layout). The first n_lora_replicated values are the
     * factors every tensor-parallel rank holds whole (A of column-parallel and B of row-parallel
     * projections), the rest are this rank's shards: one all-reduce over tp_comm covers the
     * replicated region. */
    real *lora_memory;
    real *lora_grads_memory;
    size_t n_lora;
    size_t n_lora_replicated;
    LayerLora *lora_params; /* [L] */
    LayerLora *lora_grads;  /* [L] */
    int n_lora_views;       /* two per adapted module: A then B */
    TensorView *lora_views;
    int adapters_enabled; /* 0: the base model alone (DPO's reference) */
    int simple_attention; /* 1: the unfused attention ops, which keep the T x T probabilities
                             (model.attention = simple, for cross-checking); set before
                             model_alloc_activations */

    /* tensor parallelism: this rank's shard sizes */
    MPI_Comm tp_comm;
    int tp_rank, tp_size;
    int local_heads, local_kv_heads, local_ffn, local_vocab, vocab_start;

    /* RoPE tables [max_pos][D/2] */
    real *rope_cos, *rope_sin;
    int rope_max_pos;

    /* activations for up to max_B x max_T tokens */
    int max_B, max_T;
    real *acts_memory;
    Activations acts;
    real *scratch_memory;
    GradScratch scratch;
    int32_t *positions; /* [max_B*max_T] position of each token in its sequence */
    real *row_max;      /* [max_B*max_T] vocab-parallel log-prob pieces */
    double *row_sumexp, *row_target;
    int B, T;           /* shape of the last forward */
    const int32_t *tokens, *targets; /* of the last forward (borrowed) */

    /* a device backend (model_device.h), NULL: the host computes (this file's ops, CPU) */
    const DeviceBackend *backend;
    ModelDevice *device;
    int lora_on_device; /* model_train_on_device: LoRA values, gradients, moments live there */
} Model;

/* Load a Hugging Face model (directory or .safetensors file next to its config.json) and create
 * LoRA adapters (A ~ U(+-1/sqrt(in)) from `seed` as PEFT's kaiming-uniform init, B = 0; the same
 * values whatever the tensor-parallel layout). Each rank of tp_comm (MPI_COMM_SELF: no tensor
 * parallelism) reads only its shard of every tensor. Heads, KV heads, ffn and vocabulary must
 * divide by the group size (fatal error naming the size otherwise). */
void model_load(Model *model, const char *path, const LoraConfig *lora, uint64_t seed,
                MPI_Comm tp_comm);
void model_free(Model *model);
/* The architecture of the model at PATH (config.json, or a merged file's config) without its
 * weights. */
void model_config_of_path(const char *path, ModelConfig *config);
/* Can a tensor-parallel group of tp ranks split this architecture (heads, KV heads, ffn, vocab)?
 * Fatal error naming PATH and what does not divide, printed where `report` is true. */
void model_config_check_tp(const ModelConfig *config, int tp, const char *path, int report);
/* A model of this architecture with random weights ~ N(0, std^2) (norm weights 1 + that), without
 * tensor parallelism: what `paft bench` measures. The config's json_text is not kept. */
void model_init_random(Model *model, const ModelConfig *config, const LoraConfig *lora,
                       uint64_t seed, double std);
/* Hand the model to a device backend: "cpu" (nothing changes), "cuda" or "emulate" (see
 * model_device.h; `origin` names the setting in errors). From then on model_forward, model_backward
 * and model_zero_grads run there; the host keeps the LoRA buffers, and its copy of the base
 * weights is freed. Call after loading (and folding any adapter), before model_alloc_activations.
 * Full-parameter gradients are a host-only feature: refused with a device. */
void model_use_device(Model *model, const char *name, const DeviceOptions *options,
                      const char *origin);
/* Keep the LoRA training state (values, gradients, AdamW moments) on the model's device, with the
 * gradients summed over dp_comm there (NCCL or MPI by `collectives`, DeviceOptions'); the
 * training step then calls the backend's train functions (model_device.h). No-op on the host. */
void model_train_on_device(Model *model, MPI_Comm dp_comm, int collectives);
/* The LoRA values on the host again (and the moments into m_host / v_host when not NULL), for a
 * checkpoint or adapter write; no-op when they live on the host. */
void model_lora_to_host(Model *model, real *m_host, real *v_host);
/* The reverse after the host's values changed (a checkpoint read); no-op on the host. */
void model_lora_from_host(Model *model, const real *m_host, const real *v_host);
/* model_init_random without filling the weights: the layout only, for a device backend that makes
 * its own random weights (DeviceOptions.random_init_std). The host pages are never touched. */
void model_init_shape(Model *model, const ModelConfig *config, const LoraConfig *lora,
                      uint64_t seed);
/* Allocate activations for batches of up to B sequences of up to T tokens (on the device when
 * the model has one; the host then keeps only logp, lse and the log-softmax statistics). */
void model_alloc_activations(Model *model, int B, int T);
/* Allocate full-parameter gradients (base weights), zeroed; model_backward then fills them. */
void model_enable_full_grads(Model *model);

/* Forward pass: tokens and targets are [B][T]; a target < 0 marks a position without a loss.
 * Fills model->acts.logp[B*T]. The arrays are borrowed until the backward. */
void model_forward(Model *model, const int32_t *tokens, const int32_t *targets, int B, int T);
/* Backward pass of the last forward: dlogp[B*T] = d loss / d logp. ADDS into the LoRA gradients
 * (and full-parameter gradients when enabled). */
void model_backward(Model *model, const real *dlogp);
void model_zero_grads(Model *model);

/* The base model's fingerprint from an open checkpoint (names, shapes, first values). */
void model_fingerprint(const Checkpoint *ckpt, const TensorView *views, int n_views,
                       char out[17]);

/* The fingerprint model_load gives the model at PATH (a Hugging Face model or a merged file),
 * reading only the first values of each tensor: what an adapter's or merged file's
 * base_fingerprint is compared with when the model itself is not loaded. */
void model_fingerprint_of_path(const char *path, char out[17]);

/* The base model's tensors as model_load lays them out (names, whole shapes, order), computed
 * from the configuration alone without reading a weight (the merge stage and the fingerprint of a
 * base use it). Returns the count; *views is malloc'ed. */
int model_weight_views(const ModelConfig *config, TensorView **views);

/* This rank's view of the weight of projection p of layer `layer` (model.layers.L.MODULE.weight),
 * or NULL when the model has no such tensor: where folding an adapter adds its delta. */
const TensorView *model_projection_view(const Model *m, int layer, Proj p);

/* A Hugging Face checkpoint holds exactly the tensors config says, at their shapes (besides
 * RoPE's inv_freq buffers and a tied model's lm_head.weight, which are ignored): a fatal error
 * naming the file and the tensor otherwise. model_load calls it before allocating anything. */
void model_check_checkpoint(const Checkpoint *ckpt, const ModelConfig *config);

/* The last step of the vocab-parallel log-probabilities (ops.h), shared by both backends: with
 * this rank's m->row_max (already the group's max), row_sumexp and row_target for N rows, sum the
 * latter two over the tensor-parallel group and fill m->acts.lse and m->acts.logp. */
void model_logprob_from_statistics(Model *model, const int32_t *targets, int N);

/* This rank's input / output features of a projection (its shard under tensor parallelism), and
 * whether the projection currently runs with its adapter (targeted and adapters enabled). */
int model_local_in(const Model *model, Proj p);
int model_local_out(const Model *model, Proj p);
int model_adapted(const Model *model, Proj p);

/* Number of base-model parameters (the exact count, tied head counted once). */
int64_t model_parameter_count(const Model *model);

#endif /* PAFT_MODEL_H */
