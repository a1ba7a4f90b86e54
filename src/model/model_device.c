/*
 * model_device.c - the model on a device (model_device.h): model.c's forward and backward over
 * the ops of device_ops.h. Compiled twice from this one file: into the core library as the
 * "emulate" backend (CPU ops, host memory) and, with PAFT_DEVICE_CUDA, into the CUDA library as
 * the "cuda" backend. Read model.c first: the sequencing here is the same, step for step; what is
 * new is the memory plan (one arena of device memory, per-layer activation slots, recomputation)
 * and the copies between host and device.
 */
#include "model/model_device.h"

#include <string.h>

#include "model/device_ops.h"
#include "model/model.h"
#include "parallel/collectives.h"

#ifdef PAFT_DEVICE_CUDA
#define THIS_BACKEND device_backend_cuda
#else
#define THIS_BACKEND device_backend_emulate
#endif

/* ---- views into device memory ---------------------------------------------------------------*/

typedef struct {
    act_t *attn_norm, *w[N_PROJ], *b[N_PROJ], *mlp_norm; /* w[p]: rows ln_ld apart when folded */
} DevLayerWeights;

typedef struct {
    act_t *A[N_PROJ], *B[N_PROJ]; /* the LoRA factors in the activation type (GEMM inputs) */
    stat_t *mA[N_PROJ], *mB[N_PROJ]; /* the fp32 values (master when training is resident) */
    stat_t *dA[N_PROJ], *dB[N_PROJ]; /* their fp32 gradient accumulators */
} DevLayerLora;

/* What the backward of one layer needs from its forward. Without recomputation there is one slot
 * per layer; with it, a single slot that the backward refills layer by layer. */
typedef struct {
    act_t *ln1, *q, *k, *v, *att, *x_mid, *ln2, *gate, *up, *act;
    act_t *lora_h;      /* [N_PROJ][N][r]: inp A^T of each adapted projection */
    stat_t *ln1_rstd, *ln2_rstd; /* [N] */
    stat_t *attn_state; /* what the attention backward needs (device_ops.h) */
} LayerActs;

/* ---- the step profile (DeviceOptions.profile) ---------------------------------------------------
 * A stamp goes into the device's stream where each phase of work begins; the time between one
 * stamp and the next is the phase's. Device work is in one stream, so the phases add up to the
 * elapsed time, including any time the device waited for the host (IDLE: between steps, and the
 * host's own work in the middle of one). Stamps are read back in batches of PROFILE_STAMPS. */
typedef enum {
    PHASE_GEMM,          /* the frozen projections and the LM head */
    PHASE_LORA,          /* the adapters' thin GEMMs: forward, and the input gradient */
    PHASE_LORA_GRAD,     /* the adapters' weight gradients (inner dimension: the tokens) */
    PHASE_ATTENTION_FWD, /* the attention kernel, forward */
    PHASE_ATTENTION_BWD, /* and backward */
    PHASE_NORM,          /* RMSNorm forward and backward */
    PHASE_POINTWISE,     /* RoPE, SwiGLU, residual adds, bias, embedding, casts */
    PHASE_ZERO,          /* clearing the "+=" accumulators */
    PHASE_LOGPROB,       /* log-softmax statistics and their gradient, host copies */
    PHASE_COMM,          /* tensor- and data-parallel sums */
    PHASE_OPTIMIZER,     /* the L1 term, the gradient norm, AdamW */
    PHASE_IDLE,          /* nothing submitted: the host's turn */
    N_PHASES
} Phase;

static const char *const phase_names[N_PHASES] = {
    "frozen GEMMs", "LoRA GEMMs", "LoRA grads", "attention fwd", "attention bwd", "RMSNorm", "pointwise",
    "zeroing", "log-probs", "collectives", "optimizer", "idle (host)"};

enum { PROFILE_STAMPS = 4096 };

typedef struct {
    int n; /* stamps recorded and not yet read */
    dev_stamp_t stamps[PROFILE_STAMPS];
    unsigned char phase[PROFILE_STAMPS]; /* what begins at stamps[i] */
    double ms[N_PHASES];
    long count[N_PHASES];
} Profile;

struct ModelDevice {
    Model *m; /* the host model: configuration, shard sizes, LoRA buffers, tensor parallelism */
    DeviceOptions opt;
    DevCtx ctx;

    /* parameters: the base weights (tensor i of the model's weight views at view_dev[i], rows
     * view_ld[i] apart), the LoRA copies and gradients */
    void *param_memory;
    act_t **view_dev;
    int64_t *view_ld;
    DevLayerWeights *layers; /* [L] */
    act_t *embed, *final_norm, *lm_head;
    stat_t *lora_master; /* the host's LoRA values, copied before each forward */
    act_t *lora_act;     /* the same in the activation type */
    stat_t *lora_grads;  /* fp32 accumulator, same layout as the host's */
    DevLayerLora *lora;  /* [L] */
    size_t param_bytes;

    /* device-resident training (train_begin): AdamW moments and the L1 term's delta scratch */
    int resident;
    void *train_memory;
    stat_t *adam_m, *adam_v, *delta_scratch;
    double *l1_total; /* one double: the step's L1 term, summed on the device */
    size_t train_bytes;

    /* activations and backward scratch for up to max_B x max_T tokens, one arena */
    void *act_memory;
    size_t act_bytes;
    int max_B, max_T, n_slots;
    act_t *x; /* [L+1][N][d] the residual stream: every layer's input is kept */
    LayerActs *slots;
    act_t *lnf, *logits; /* logits: logit_rows rows at a time (logits_chunk_rows) */
    int logit_rows;
    stat_t *lnf_rstd, *lse, *dlogp, *row_max, *rope_cos, *rope_sin;
    double *row_sumexp, *row_target;
    int32_t *tokens, *targets, *positions;
    act_t *dx, *dln, *dq, *dk, *dv, *datt, *dgate, *dup, *dact, *dlora_h, *dlogits;
    act_t *x_sink; /* where a recomputed layer writes its (unneeded) output */
    void *attn_scratch; /* the attention backward's own scratch, of attn_scratch_bytes */
    size_t attn_scratch_bytes;
    int B, T;      /* shape of the last forward */
    Profile *profile; /* NULL unless opt.profile */
    int share_lora_input; /* DEV_SHARES_LORA_INPUT, unless PAFT_LORA_SHARED_INPUT=0 (at creation) */
    /* folded LoRA (DEV_FOLDS_LORA, unless PAFT_LORA_FOLDED=0): per group (0: q, k, v on ln1;
     * 1: gate, up on ln2), whether its adapters are folded into the frozen GEMMs, and the row
     * stride of its normalised input (ln1, ln2) and of that input's gradient (dln) */
    int fold[2];
    int ln_ld[2];
};

/* The projections that read one input: q, k, v read ln1, gate and up read ln2. */
static const Proj group_first[2] = {PROJ_Q, PROJ_GATE};
static const int group_count[2] = {3, 2};
#if DEV_FOLDS_LORA
static int group_of(Proj first) { return first == PROJ_Q ? 0 : 1; }
#endif

/* A bump allocator run twice, as model.c's Carver: once with base == NULL to count the bytes,
 * once to hand out pointers into the one allocation. 256-byte alignment suits every kernel. */
typedef struct {
    char *base;
    size_t cursor;
} Arena;

static void *arena_take(Arena *a, size_t count, size_t size) {
    size_t offset = (a->cursor + 255) & ~(size_t)255;
    a->cursor = offset + count * size;
    return a->base ? a->base + offset : NULL;
}

/* Which of the model's weight views starts at this host tensor (-1: none). */
static int view_of(const Model *m, const real *host) {
    for (int i = 0; i < m->n_weight_views; i++)
        if (m->weights_memory + m->weight_views[i].offset == host) return i;
    return -1;
}

/* The device copy of a host tensor (NULL for NULL). */
static act_t *weight_on_device(const ModelDevice *d, const real *host) {
    if (!host) return NULL;
    const int i = view_of(d->m, host);
    if (i < 0) PAFT_FATAL("device model: a weight that is not one of the model's tensors");
    return d->view_dev[i];
}

/* Fold the stamps read so far into the phase totals; the last stamp stays as the next start. */
static void profile_collect(Profile *pr) {
    for (int i = 1; i < pr->n; i++) {
        pr->ms[pr->phase[i - 1]] += dev_stamp_ms(pr->stamps[i - 1], pr->stamps[i]);
        pr->count[pr->phase[i - 1]]++;
    }
    if (pr->n > 1) {
        dev_stamp_t last = pr->stamps[pr->n - 1];
        pr->stamps[pr->n - 1] = pr->stamps[0];
        pr->stamps[0] = last;
        pr->phase[0] = pr->phase[pr->n - 1];
        pr->n = 1;
    }
}

/* Phase p begins here (in stream order). */
static void phase(ModelDevice *d, Phase p) {
    Profile *pr = d->profile;
    if (!pr) return;
    if (pr->n == PROFILE_STAMPS) profile_collect(pr);
    dev_stamp_record(&pr->stamps[pr->n]);
    pr->phase[pr->n++] = (unsigned char)p;
}

static void profile_report(ModelDevice *d) {
    Profile *pr = d->profile;
    phase(d, PHASE_IDLE); /* closes the last phase */
    profile_collect(pr);
    double total = 0;
    for (int p = 0; p < N_PHASES; p++) total += pr->ms[p];
    paft_log("device profile (%s backend, every step since the model was made, warm-up included):\n",
             DEVICE_BACKEND_NAME);
    for (int p = 0; p < N_PHASES; p++)
        if (pr->count[p])
            paft_log("  %-14s %10.1f ms  %5.1f%%  (%ld spans)\n", phase_names[p], pr->ms[p],
                     total > 0 ? 100 * pr->ms[p] / total : 0, pr->count[p]);
    paft_log("  %-14s %10.1f ms\n", "total", total);
}

static void profile_create(ModelDevice *d) {
    d->profile = paft_calloc(1, sizeof *d->profile);
    for (int i = 0; i < PROFILE_STAMPS; i++) dev_stamp_create(&d->profile->stamps[i]);
    phase(d, PHASE_IDLE);
}

static void profile_destroy(ModelDevice *d) {
    if (!d->profile) return;
    profile_report(d);
    for (int i = 0; i < PROFILE_STAMPS; i++) dev_stamp_destroy(d->profile->stamps[i]);
    free(d->profile);
    d->profile = NULL;
}

/* ---- shared LoRA input (DEV_SHARES_LORA_INPUT, the CUDA backend) ------------------------------
 * q, k and v read the same normalised input, and so do gate and up. When every projection of
 * such a group is adapted and their A factors lie one after the other in the LoRA buffer
 * (model.c's layout puts them so), the group's adapters take one product h = inp [A_1; A_2; ..]^T
 * (N x count r: one pass over the N x d input instead of count), stored in the group's lora_h
 * slots as [N][count r]; each projection's B product reads its r columns. The backward likewise
 * makes one dA product and one input-gradient product for the group. The arithmetic per element
 * is the same; the input gradient's sums run in another order (bf16 rounding, tested against the
 * CPU backend as everything on CUDA is).
 *
 * Whether the group's adapters can share one product in layer l: all adapted, column-parallel,
 * the same input width, the A factors (and their gradients) one after the other in the LoRA
 * buffers (model.c's layout; the device mirrors it), and each projection's columns of h 16-byte
 * aligned (r a multiple of 8 in bf16), as cuBLASLt's tensor-core kernels want. */
static int lora_group_shareable(const ModelDevice *d, int l, Proj first, int count) {
    const Model *m = d->m;
    const LayerLora *lo = &m->lora_params[l], *lg = &m->lora_grads[l];
    const size_t block = (size_t)m->lora.r * model_local_in(m, first);
    if (!d->share_lora_input || (m->lora.r * sizeof(act_t)) % 16 != 0) return 0;
    for (int i = 0; i < count; i++) {
        const Proj p = (Proj)(first + i);
        if (!m->lora.targets[p] || proj_is_row_parallel(p) ||
            model_local_in(m, p) != model_local_in(m, first))
            return 0;
        if (i > 0 && (lo->A[p] != lo->A[p - 1] + block || lg->A[p] != lg->A[p - 1] + block))
            return 0;
    }
    return count > 1;
}

#if DEV_SHARES_LORA_INPUT
/* ... and shares it now (not with the adapters switched off) */
static int lora_group_shared(const ModelDevice *d, int l, Proj first, int count) {
    return d->m->adapters_enabled && lora_group_shareable(d, l, first, count);
}
#endif

/* ---- folded LoRA (DEV_FOLDS_LORA, the CUDA backend) -------------------------------------------
 * A group's adapters go one step further than sharing their input: they are folded into the
 * frozen GEMMs along K. The group's normalised input is stored with G r more columns per row,
 * [x | h] with h = x [A_1; ..; A_G]^T written into them, and each projection's frozen weight with
 * as many more, W' = [W | 0 .. s B .. 0] (its s B in its slot of r columns, refreshed whenever the
 * LoRA values change). Then
 *     out = [x | h] W'^T = x W^T + s h_slot B^T
 * is one GEMM, K = C + G r instead of C (about 1 % longer), and the B products' separate pass
 * over the output (read and write of N x OC) is gone. In the backward, dout W' is
 * [dout W | s dout B in the slot]: the input gradient's dlora_h comes out of the frozen product
 * too, into the padding columns of dln. What stays apart: h (one thin product), dB, dA and
 * dinp += dlora_h A. Adapters off (a reference forward): the same GEMMs with K = C. */
static int group_foldable(const ModelDevice *d, int g) {
    for (int l = 0; l < d->m->config.num_layers; l++)
        if (!lora_group_shareable(d, l, group_first[g], group_count[g])) return 0;
    return 1;
}

#if DEV_FOLDS_LORA
/* s B of every folded projection into its slot of its wide weight (when the LoRA values change) */
static void fold_lora_weights(ModelDevice *d) {
    const Model *m = d->m;
    for (int g = 0; g < 2; g++) {
        if (!d->fold[g]) continue;
        const int C = model_local_in(m, group_first[g]), pad = d->ln_ld[g] - C;
        for (int l = 0; l < m->config.num_layers; l++)
            for (int i = 0; i < group_count[g]; i++) {
                const Proj p = (Proj)(group_first[g] + i);
                dev_lora_fold(d->layers[l].w[p], d->ln_ld[g], C, pad, i, d->lora[l].mB[p],
                              m->lora.r, (float)m->lora.scale, model_local_out(m, p));
            }
    }
}
#else
static void fold_lora_weights(ModelDevice *d) { (void)d; }
#endif

/* ---- create / destroy -----------------------------------------------------------------------*/

static void bind_parameters(ModelDevice *d, Arena *a) {
    Model *m = d->m;
    for (int i = 0; i < m->n_weight_views; i++) {
        const TensorView *v = &m->weight_views[i];
        d->view_dev[i] = arena_take(a, (size_t)(v->rows * d->view_ld[i]), sizeof(act_t));
    }
    d->lora_master = arena_take(a, m->n_lora, sizeof(stat_t));
    d->lora_act = arena_take(a, m->n_lora, sizeof(act_t));
    d->lora_grads = arena_take(a, m->n_lora, sizeof(stat_t));
    if (!a->base) return;
    d->embed = weight_on_device(d, m->weights.embed);
    d->final_norm = weight_on_device(d, m->weights.final_norm);
    d->lm_head = weight_on_device(d, m->weights.lm_head);
    for (int l = 0; l < m->config.num_layers; l++) {
        const LayerWeights *hw = &m->weights.layers[l];
        DevLayerWeights *dw = &d->layers[l];
        dw->attn_norm = weight_on_device(d, hw->attn_norm);
        dw->mlp_norm = weight_on_device(d, hw->mlp_norm);
        for (int p = 0; p < N_PROJ; p++) {
            dw->w[p] = weight_on_device(d, hw->w[p]);
            dw->b[p] = weight_on_device(d, hw->b[p]);
            const real *A = m->lora_params[l].A[p], *B = m->lora_params[l].B[p];
            if (!A) continue;
            DevLayerLora *dl = &d->lora[l];
            dl->A[p] = d->lora_act + (A - m->lora_memory);
            dl->B[p] = d->lora_act + (B - m->lora_memory);
            dl->mA[p] = d->lora_master + (A - m->lora_memory);
            dl->mB[p] = d->lora_master + (B - m->lora_memory);
            dl->dA[p] = d->lora_grads + (m->lora_grads[l].A[p] - m->lora_grads_memory);
            dl->dB[p] = d->lora_grads + (m->lora_grads[l].B[p] - m->lora_grads_memory);
        }
    }
}

/* Random base weights made on the device (`paft bench`): each tensor N(0, std^2), norms 1 + that,
 * as model_init_random does on the host. */
static void fill_random_weights(ModelDevice *d, double std) {
    const Model *m = d->m;
    for (int i = 0; i < m->n_weight_views; i++) {
        const TensorView *v = &m->weight_views[i];
        float mean = strstr(v->name, "norm") ? 1.0f : 0.0f;
        dev_put_rows(d->view_dev[i], d->view_ld[i], NULL, v->rows, v->cols, 0x5EEDULL + (uint64_t)i,
                     mean, (float)std);
    }
}

/* The host's base weights onto the device, tensor by tensor (rows view_ld apart there). */
static void upload_weights(ModelDevice *d) {
    const Model *m = d->m;
    for (int i = 0; i < m->n_weight_views; i++) {
        const TensorView *v = &m->weight_views[i];
        dev_put_rows(d->view_dev[i], d->view_ld[i], m->weights_memory + v->offset, v->rows,
                     v->cols, 0, 0.0f, 0.0f);
    }
}

static ModelDevice *device_create(Model *m, const DeviceOptions *opt) {
    if (!m->weights_memory)
        PAFT_FATAL("the model's weights are already on a device (model_use_device twice)");
    ModelDevice *d = paft_calloc(1, sizeof *d);
    d->m = m;
    d->opt = *opt;
    dev_ctx_init(&d->ctx, m->tp_comm, m->tp_size, opt->collectives, opt->simple_attention);
    d->layers = paft_calloc((size_t)m->config.num_layers, sizeof *d->layers);
    d->lora = paft_calloc((size_t)m->config.num_layers, sizeof *d->lora);
    /* PAFT_LORA_SHARED_INPUT=0: one LoRA product per projection; PAFT_LORA_FOLDED=0: the LoRA
     * products apart from the frozen GEMMs (to compare the choices on a GPU) */
    const char *share = getenv("PAFT_LORA_SHARED_INPUT"), *folded = getenv("PAFT_LORA_FOLDED");
    d->share_lora_input = DEV_SHARES_LORA_INPUT && !(share && share[0] == '0');
    const int fold_lora = DEV_FOLDS_LORA && d->share_lora_input && !(folded && folded[0] == '0');
    d->view_dev = paft_calloc((size_t)m->n_weight_views, sizeof *d->view_dev);
    d->view_ld = paft_calloc((size_t)m->n_weight_views, sizeof *d->view_ld);
    for (int i = 0; i < m->n_weight_views; i++) d->view_ld[i] = m->weight_views[i].cols;
    for (int g = 0; g < 2; g++) {
        const int C = model_local_in(m, group_first[g]);
        d->fold[g] = fold_lora && group_foldable(d, g);
        /* the tensor-parallel ranks must agree (their dln sums have the folded width): the
         * setting comes from each rank's environment */
        int agree[2] = {d->fold[g], -d->fold[g]};
        if (m->tp_size > 1)
            CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, agree, 2, MPI_INT, MPI_MAX, m->tp_comm));
        if (agree[0] != -agree[1])
            PAFT_FATAL("PAFT_LORA_FOLDED differs between the tensor-parallel ranks of a group "
                       "(set it the same for the whole job)");
        d->ln_ld[g] = C + (d->fold[g] ? group_count[g] * m->lora.r : 0);
        for (int l = 0; d->fold[g] && l < m->config.num_layers; l++)
            for (int i = 0; i < group_count[g]; i++)
                d->view_ld[view_of(m, m->weights.layers[l].w[group_first[g] + i])] = d->ln_ld[g];
    }
    Arena count = {0};
    bind_parameters(d, &count);
    d->param_bytes = count.cursor;
    d->param_memory = dev_alloc(d->param_bytes);
    Arena bind = {d->param_memory, 0};
    bind_parameters(d, &bind);
    if (opt->random_init_std > 0)
        fill_random_weights(d, opt->random_init_std);
    else
        upload_weights(d);
    dev_synchronize();
    dev_pin_host(m->lora_memory, m->n_lora * sizeof(real));
    dev_pin_host(m->lora_grads_memory, m->n_lora * sizeof(real));
    if (opt->profile) profile_create(d);
    if (d->fold[0] || d->fold[1])
        paft_log("model: LoRA folded into the frozen GEMMs of %s (PAFT_LORA_FOLDED=0: apart)\n",
                 d->fold[0] && d->fold[1] ? "q, k, v and gate, up" : d->fold[0] ? "q, k, v"
                                                                              : "gate, up");
    return d;
}

static void device_free_activations(ModelDevice *d) {
    dev_free(d->act_memory);
    free(d->slots);
    d->act_memory = NULL;
    d->slots = NULL;
    d->act_bytes = 0;
}

static void device_destroy(ModelDevice *d) {
    if (!d) return;
    profile_destroy(d);
    device_free_activations(d);
    dev_unpin_host(d->m->lora_memory);
    dev_unpin_host(d->m->lora_grads_memory);
    dev_free(d->train_memory);
    dev_free(d->param_memory);
    free(d->view_dev);
    free(d->view_ld);
    free(d->layers);
    free(d->lora);
    dev_ctx_free(&d->ctx);
    free(d);
}

/* ---- activations ----------------------------------------------------------------------------*/

static void bind_activations(ModelDevice *d, int B, int T, Arena *a) {
    const Model *m = d->m;
    const ModelConfig *c = &m->config;
    const size_t N = (size_t)B * T, d_model = (size_t)c->hidden_size;
    const size_t nq = N * m->local_heads * c->head_dim, nkv = N * m->local_kv_heads * c->head_dim;
    const size_t nff = N * m->local_ffn, V = (size_t)m->local_vocab, r = (size_t)m->lora.r;
    d->x = arena_take(a, (size_t)(c->num_layers + 1) * N * d_model, sizeof(act_t));
    for (int s = 0; s < d->n_slots; s++) {
        LayerActs la;
        la.ln1 = arena_take(a, N * (size_t)d->ln_ld[0], sizeof(act_t));
        la.ln1_rstd = arena_take(a, N, sizeof(stat_t));
        la.q = arena_take(a, nq, sizeof(act_t));
        la.k = arena_take(a, nkv, sizeof(act_t));
        la.v = arena_take(a, nkv, sizeof(act_t));
        la.attn_state = arena_take(
            a, dev_attention_state_count(&d->ctx, B, T, m->local_heads), sizeof(stat_t));
        la.att = arena_take(a, nq, sizeof(act_t));
        la.x_mid = arena_take(a, N * d_model, sizeof(act_t));
        la.ln2 = arena_take(a, N * (size_t)d->ln_ld[1], sizeof(act_t));
        la.ln2_rstd = arena_take(a, N, sizeof(stat_t));
        la.gate = arena_take(a, nff, sizeof(act_t));
        la.up = arena_take(a, nff, sizeof(act_t));
        la.act = arena_take(a, nff, sizeof(act_t));
        la.lora_h = arena_take(a, (size_t)N_PROJ * N * r, sizeof(act_t));
        if (a->base) d->slots[s] = la;
    }
    d->lnf = arena_take(a, N * d_model, sizeof(act_t));
    d->lnf_rstd = arena_take(a, N, sizeof(stat_t));
    d->logits = arena_take(a, (size_t)d->logit_rows * V, sizeof(act_t));
    d->lse = arena_take(a, N, sizeof(stat_t));
    d->dlogp = arena_take(a, N, sizeof(stat_t));
    d->row_max = arena_take(a, N, sizeof(stat_t));
    d->row_sumexp = arena_take(a, N, sizeof(double));
    d->row_target = arena_take(a, N, sizeof(double));
    d->tokens = arena_take(a, N, sizeof(int32_t));
    d->targets = arena_take(a, N, sizeof(int32_t));
    d->positions = arena_take(a, N, sizeof(int32_t));
    d->rope_cos = arena_take(a, (size_t)T * (c->head_dim / 2), sizeof(stat_t));
    d->rope_sin = arena_take(a, (size_t)T * (c->head_dim / 2), sizeof(stat_t));
    /* backward scratch, reused layer after layer */
    d->dx = arena_take(a, N * d_model, sizeof(act_t));
    d->dln = arena_take(a, N * (size_t)PAFT_MAX(d->ln_ld[0], d->ln_ld[1]), sizeof(act_t));
    d->x_sink = arena_take(a, N * d_model, sizeof(act_t));
    d->dq = arena_take(a, nq, sizeof(act_t));
    d->datt = arena_take(a, nq, sizeof(act_t));
    d->dk = arena_take(a, nkv, sizeof(act_t));
    d->dv = arena_take(a, nkv, sizeof(act_t));
    d->dgate = arena_take(a, nff, sizeof(act_t));
    d->dup = arena_take(a, nff, sizeof(act_t));
    d->dact = arena_take(a, nff, sizeof(act_t));
    d->dlora_h = arena_take(a, N * r * 3, sizeof(act_t)); /* up to 3 projections share it */
    d->dlogits = arena_take(a, (size_t)d->logit_rows * V, sizeof(act_t));
    d->attn_scratch_bytes = dev_attention_scratch_bytes(&d->ctx, B, T, m->local_heads,
                                                        m->local_kv_heads, c->head_dim);
    d->attn_scratch = arena_take(a, d->attn_scratch_bytes, 1);
}

/* Rows of logits held at once: DeviceOptions.logits_chunk, or by default the whole micro-batch
 * unless its logits (and their gradient, the same size again) would take more than 1 GiB each on
 * this rank, then as many rows as fit in that. A 128k vocabulary at 8 x 4096 tokens is 8.4 GB of
 * bf16 logits; in chunks the backward computes each chunk's logits again (one more LM-head
 * product), which the whole micro-batch avoids. */
static int logits_chunk_rows(const ModelDevice *d, int N) {
    if (d->opt.logits_chunk > 0) return PAFT_MIN(d->opt.logits_chunk, N);
    const size_t row_bytes = (size_t)d->m->local_vocab * sizeof(act_t), budget = (size_t)1 << 30;
    return (int)PAFT_MAX((size_t)1, PAFT_MIN((size_t)N, budget / row_bytes));
}

static void device_alloc_activations(ModelDevice *d, int B, int T) {
    device_free_activations(d);
    d->logit_rows = logits_chunk_rows(d, B * T);
    d->n_slots = d->opt.recompute ? 1 : d->m->config.num_layers;
    d->slots = paft_calloc((size_t)d->n_slots, sizeof *d->slots);
    Arena count = {0};
    bind_activations(d, B, T, &count);
    d->act_bytes = count.cursor;
    d->act_memory = dev_alloc(d->act_bytes);
    Arena bind = {d->act_memory, 0};
    bind_activations(d, B, T, &bind);
    d->max_B = B;
    d->max_T = T;
    /* the host built the RoPE tables for T positions (model_alloc_activations) */
    const size_t half = (size_t)d->m->config.head_dim / 2;
    dev_upload(d->rope_cos, d->m->rope_cos, (size_t)T * half * sizeof(stat_t));
    dev_upload(d->rope_sin, d->m->rope_sin, (size_t)T * half * sizeof(stat_t));
}

static size_t device_memory_bytes(const ModelDevice *d) {
    return d->param_bytes + d->act_bytes + d->train_bytes;
}

static void device_synchronize(ModelDevice *d) { dev_synchronize(); }

static int device_count(void) { return dev_device_count(); }

/* ---- forward ---------------------------------------------------------------------------------*/

static LayerActs *slot_of(ModelDevice *d, int l) { return &d->slots[d->opt.recompute ? 0 : l]; }

static act_t *lora_h_of(const ModelDevice *d, const LayerActs *la, Proj p, int N) {
    return la->lora_h + (size_t)p * N * d->m->lora.r;
}

/* out = inp W^T + b + s (inp A^T) B^T: model.c's proj_forward, with the same tensor-parallel
 * reductions (row-parallel: the N x r product and the output summed over the group). */
static void proj_forward(ModelDevice *d, int l, Proj p, act_t *out, const act_t *inp, act_t *h,
                         int N) {
    const Model *m = d->m;
    const int in = model_local_in(m, p), out_f = model_local_out(m, p), r = m->lora.r;
    const DevLayerWeights *w = &d->layers[l];
    const DevLayerLora *lo = &d->lora[l];
    const float s = (float)m->lora.scale;
    const int lora = model_adapted(m, p);
    phase(d, PHASE_GEMM);
    dev_matmul_forward(&d->ctx, out, inp, w->w[p], N, in, out_f, 1.0f, 0);
    phase(d, PHASE_LORA);
    if (lora) dev_matmul_forward(&d->ctx, h, inp, lo->A[p], N, in, r, 1.0f, 0);
    if (proj_is_row_parallel(p)) {
        phase(d, PHASE_COMM);
        if (lora) dev_allreduce_sum_act(&d->ctx, h, (size_t)N * r);
        dev_allreduce_sum_act(&d->ctx, out, (size_t)N * out_f);
    }
    if (w->b[p]) {
        phase(d, PHASE_POINTWISE);
        dev_add_bias(out, w->b[p], N, out_f);
    }
    phase(d, PHASE_LORA);
    if (lora) dev_matmul_forward(&d->ctx, out, h, lo->B[p], N, r, out_f, s, 1);
}

#if DEV_SHARES_LORA_INPUT || DEV_FOLDS_LORA
/* outs[i] = inp W^T + b over K columns of inp and W (rows ld apart) for the group's projections:
 * the frozen GEMMs of the shared and the folded paths */
static void frozen_group_forward(ModelDevice *d, int l, Proj first, int count, act_t *const *outs,
                                 const act_t *inp, int ld, int K, int N) {
    const DevLayerWeights *w = &d->layers[l];
    for (int i = 0; i < count; i++) {
        const Proj p = (Proj)(first + i);
        const int out_f = model_local_out(d->m, p);
        phase(d, PHASE_GEMM);
        dev_matmul_forward_lds(&d->ctx, outs[i], out_f, inp, ld, w->w[p], ld, N, K, out_f, 1.0f,
                               0);
        if (w->b[p]) {
            phase(d, PHASE_POINTWISE);
            dev_add_bias(outs[i], w->b[p], N, out_f);
        }
    }
}
#endif

/* outs[i] = inp W^T + b + s (inp A^T) B^T for the projections first .. first + count - 1, which
 * share inp (column-parallel: no tensor-parallel sums). */
static void projs_forward(ModelDevice *d, int l, LayerActs *la, Proj first, int count,
                          act_t *const *outs, act_t *inp, int N) {
#if DEV_FOLDS_LORA
    const int g = group_of(first);
    if (d->fold[g]) {
        /* inp is [x | h], rows ld apart; each weight is [W | its s B in its slot] */
        const Model *m = d->m;
        const int C = model_local_in(m, first), ld = d->ln_ld[g], r = m->lora.r;
        const int K = m->adapters_enabled ? ld : C; /* adapters off: x W^T alone */
        if (m->adapters_enabled) {
            /* h into the group's lora_h slots, then into the padding: one GEMM writing columns
             * of the rows it reads would alias its input with its output */
            act_t *h = lora_h_of(d, la, first, N);
            phase(d, PHASE_LORA);
            dev_matmul_forward_lds(&d->ctx, h, count * r, inp, ld, d->lora[l].A[first], C, N, C,
                                   count * r, 1.0f, 0);
            dev_copy_rows(inp + C, ld, h, count * r, count * r, N);
        }
        frozen_group_forward(d, l, first, count, outs, inp, ld, K, N);
        return;
    }
#endif
#if DEV_SHARES_LORA_INPUT
    if (lora_group_shared(d, l, first, count)) {
        const Model *m = d->m;
        const int in = model_local_in(m, first), r = m->lora.r, ld = count * r;
        const DevLayerLora *lo = &d->lora[l];
        act_t *h = lora_h_of(d, la, first, N); /* [N][count r] over the group's slots */
        frozen_group_forward(d, l, first, count, outs, inp, in, in, N);
        phase(d, PHASE_LORA);
        dev_matmul_forward(&d->ctx, h, inp, lo->A[first], N, in, ld, 1.0f, 0);
        for (int i = 0; i < count; i++) {
            const Proj p = (Proj)(first + i);
            dev_matmul_forward_ld(&d->ctx, outs[i], h + i * r, ld, lo->B[p], N, r,
                                  model_local_out(m, p), (float)m->lora.scale, 1);
        }
        return;
    }
#endif
    for (int i = 0; i < count; i++)
        proj_forward(d, l, (Proj)(first + i), outs[i], inp, lora_h_of(d, la, (Proj)(first + i), N), N);
}

/* One decoder layer, x_in -> x_out, saving what its backward needs in la. */
static void layer_forward(ModelDevice *d, int l, LayerActs *la, const act_t *x_in, act_t *x_out) {
    const Model *m = d->m;
    const ModelConfig *c = &m->config;
    const int B = d->B, T = d->T, N = B * T, dm = c->hidden_size, D = c->head_dim;
    const int Hq = m->local_heads, Hkv = m->local_kv_heads;
    const size_t nd = (size_t)N * dm, nff = (size_t)N * m->local_ffn;
    const float eps = (float)c->rms_norm_eps;
    const DevLayerWeights *w = &d->layers[l];

    /* attention block: x_mid = x + o_proj(attention(rope(q), rope(k), v)) on this rank's heads */
    phase(d, PHASE_NORM);
    dev_rmsnorm_forward(la->ln1, d->ln_ld[0], la->ln1_rstd, x_in, w->attn_norm, N, dm, eps);
    act_t *const qkv[3] = {la->q, la->k, la->v};
    projs_forward(d, l, la, PROJ_Q, 3, qkv, la->ln1, N);
    phase(d, PHASE_POINTWISE);
    dev_rope_forward(la->q, d->rope_cos, d->rope_sin, d->positions, N, Hq, D);
    dev_rope_forward(la->k, d->rope_cos, d->rope_sin, d->positions, N, Hkv, D);
    phase(d, PHASE_ATTENTION_FWD);
    dev_attention_forward(&d->ctx, la->att, la->attn_state, la->q, la->k, la->v, B, T, Hq, Hkv, D);
    proj_forward(d, l, PROJ_O, la->x_mid, la->att, lora_h_of(d, la, PROJ_O, N), N);
    phase(d, PHASE_POINTWISE);
    dev_residual_forward(la->x_mid, la->x_mid, x_in, nd);

    /* MLP block: x_out = x_mid + down_proj(silu(gate_proj(h)) * up_proj(h)) on this rank's ffn */
    phase(d, PHASE_NORM);
    dev_rmsnorm_forward(la->ln2, d->ln_ld[1], la->ln2_rstd, la->x_mid, w->mlp_norm, N, dm, eps);
    act_t *const gate_up[2] = {la->gate, la->up};
    projs_forward(d, l, la, PROJ_GATE, 2, gate_up, la->ln2, N);
    phase(d, PHASE_POINTWISE);
    dev_swiglu_forward(la->act, la->gate, la->up, nff);
    proj_forward(d, l, PROJ_DOWN, x_out, la->act, lora_h_of(d, la, PROJ_DOWN, N), N);
    phase(d, PHASE_POINTWISE);
    dev_residual_forward(x_out, x_out, la->x_mid, nd);
}

/* logp = target logit - logsumexp over the whole vocabulary from this rank's shard: the three
 * [N] statistics of rows n0 .. n0 + n - 1 from the logits buffer (which holds those rows), the
 * row max reduced over the tensor-parallel group on the host (as model.c does) before the sums
 * use it. */
static void logprob_statistics(ModelDevice *d, int n0, int n) {
    Model *m = d->m;
    const int V = m->local_vocab;
    phase(d, PHASE_LOGPROB);
    dev_logits_row_max(d->row_max + n0, d->logits, n, V);
    if (m->tp_size > 1) {
        dev_download(m->row_max + n0, d->row_max + n0, (size_t)n * sizeof(stat_t));
        allreduce_max_real(m->row_max + n0, (size_t)n, m->tp_comm);
        dev_upload(d->row_max + n0, m->row_max + n0, (size_t)n * sizeof(stat_t));
    }
    dev_logits_row_sumexp(d->row_sumexp + n0, d->logits, d->row_max + n0, n, V);
    dev_logits_target(d->row_target + n0, d->logits, d->targets + n0, m->vocab_start, n, V);
}

/* The statistics come to the host, which forms logp and lse (model.c's arithmetic); lse goes
 * back for the backward. */
static void logprob_finish(ModelDevice *d, const int32_t *host_targets, int N) {
    Model *m = d->m;
    phase(d, PHASE_LOGPROB);
    if (m->tp_size == 1) dev_download(m->row_max, d->row_max, (size_t)N * sizeof(stat_t));
    dev_download(m->row_sumexp, d->row_sumexp, (size_t)N * sizeof(double));
    dev_download(m->row_target, d->row_target, (size_t)N * sizeof(double));
    model_logprob_from_statistics(m, host_targets, N);
    dev_upload(d->lse, m->acts.lse, (size_t)N * sizeof(stat_t));
}

static void device_forward(ModelDevice *d, const int32_t *tokens, const int32_t *targets, int B,
                           int T) {
    Model *m = d->m;
    const ModelConfig *c = &m->config;
    if (B > d->max_B || T > d->max_T)
        PAFT_FATAL("batch %d x %d exceeds the device activations allocated for %d x %d", B, T,
                   d->max_B, d->max_T);
    const int N = B * T;
    const size_t nd = (size_t)N * c->hidden_size;
    d->B = B;
    d->T = T;
    phase(d, PHASE_POINTWISE);
    dev_upload(d->tokens, tokens, (size_t)N * sizeof(int32_t));
    dev_upload(d->targets, targets, (size_t)N * sizeof(int32_t));
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) m->positions[b * T + t] = t;
    dev_upload(d->positions, m->positions, (size_t)N * sizeof(int32_t));
    if (m->adapters_enabled && !d->resident) { /* the host's current values (AdamW runs there) */
        dev_upload(d->lora_master, m->lora_memory, m->n_lora * sizeof(stat_t));
        dev_cast_to_act(d->lora_act, d->lora_master, m->n_lora);
        fold_lora_weights(d);
    }

    dev_embedding_forward(d->x, d->tokens, d->embed, N, c->hidden_size, m->vocab_start,
                          m->local_vocab);
    phase(d, PHASE_COMM);
    dev_allreduce_sum_act(&d->ctx, d->x, nd);
    for (int l = 0; l < c->num_layers; l++)
        layer_forward(d, l, slot_of(d, l), d->x + l * nd, d->x + (l + 1) * nd);
    phase(d, PHASE_NORM);
    dev_rmsnorm_forward(d->lnf, c->hidden_size, d->lnf_rstd, d->x + (size_t)c->num_layers * nd,
                        d->final_norm, N,
                        c->hidden_size, (float)c->rms_norm_eps);
    /* the LM head and the log-softmax statistics, logit_rows rows at a time */
    const int dm = c->hidden_size;
    for (int n0 = 0; n0 < N; n0 += d->logit_rows) {
        const int n = PAFT_MIN(d->logit_rows, N - n0);
        phase(d, PHASE_GEMM);
        dev_matmul_forward(&d->ctx, d->logits, d->lnf + (size_t)n0 * dm, d->lm_head, n, dm,
                           m->local_vocab, 1.0f, 0);
        logprob_statistics(d, n0, n);
    }
    logprob_finish(d, targets, N);
    phase(d, PHASE_IDLE);
}

/* ---- backward --------------------------------------------------------------------------------*/

/* model.c's proj_backward: dinp += d/d inp (partial under column parallelism: the caller sums it
 * once per block), and the LoRA gradients into the fp32 accumulator. dinp_fresh: dinp holds
 * nothing yet, so the first product writes it instead of adding (the same bits as adding onto
 * zeros, without a pass that zeroes the buffer first). */
static void proj_backward(ModelDevice *d, int l, Proj p, act_t *dinp, int dinp_fresh,
                          const act_t *dout, const act_t *inp, const act_t *h, int N) {
    const Model *m = d->m;
    const int in = model_local_in(m, p), out_f = model_local_out(m, p), r = m->lora.r;
    const DevLayerLora *lo = &d->lora[l];
    phase(d, PHASE_GEMM);
    dev_matmul_input_grad(&d->ctx, dinp, in, dout, d->layers[l].w[p], N, in, out_f, 1.0f,
                          !dinp_fresh);
    if (!model_adapted(m, p)) return;
    const float s = (float)m->lora.scale;
    /* dlora_h = s dout B, then the factors' gradients dB += s dout^T h, dA += dlora_h^T inp (the
     * thin GEMMs whose inner dimension is the N tokens), then dinp += dlora_h A */
    phase(d, PHASE_LORA);
    dev_matmul_input_grad(&d->ctx, d->dlora_h, r, dout, lo->B[p], N, r, out_f, s, 0);
    phase(d, PHASE_LORA_GRAD);
    dev_matmul_backward(&d->ctx, NULL, lo->dB[p], dout, h, lo->B[p], N, r, out_f, s);
    dev_matmul_backward(&d->ctx, NULL, lo->dA[p], d->dlora_h, inp, lo->A[p], N, in, r, 1.0f);
    phase(d, PHASE_LORA);
    dev_matmul_backward(&d->ctx, dinp, NULL, d->dlora_h, inp, lo->A[p], N, in, r, 1.0f);
}

/* proj_backward for the projections first .. first + count - 1, which share inp: dinp += the
 * input gradients (partial under column parallelism), the LoRA gradients into the accumulator. */
static void projs_backward(ModelDevice *d, int l, const LayerActs *la, Proj first, int count,
                           act_t *dinp, int dinp_fresh, const act_t *const *douts,
                           const act_t *inp, int N) {
#if DEV_FOLDS_LORA
    const int g = group_of(first);
    if (d->fold[g]) {
        /* inp is [x | h] and dinp becomes [dx | dlora_h], rows ld apart */
        const Model *m = d->m;
        const int C = model_local_in(m, first), ld = d->ln_ld[g], r = m->lora.r;
        const float s = (float)m->lora.scale;
        const DevLayerLora *lo = &d->lora[l];
        /* dout W' = [dout W | s dout B in the slot], summed over the group */
        phase(d, PHASE_GEMM);
        for (int i = 0; i < count; i++) {
            const Proj p = (Proj)(first + i);
            dev_matmul_input_grad_lds(&d->ctx, dinp, ld, douts[i], model_local_out(m, p),
                                      d->layers[l].w[p], ld, N, ld, model_local_out(m, p), 1.0f,
                                      i > 0 || !dinp_fresh);
        }
        /* dB += s dout^T h from each projection's columns of h; the group's dA += dlora_h^T x */
        phase(d, PHASE_LORA_GRAD);
        for (int i = 0; i < count; i++) {
            const Proj p = (Proj)(first + i);
            dev_matmul_weight_grad_lds(&d->ctx, lo->dB[p], douts[i], model_local_out(m, p),
                                       inp + C + i * r, ld, N, r, model_local_out(m, p), s);
        }
        dev_matmul_weight_grad_lds(&d->ctx, lo->dA[first], dinp + C, ld, inp, ld, N, C, count * r,
                                   1.0f);
        /* dx += dlora_h A, from a packed copy of dlora_h (N x G r, small): a GEMM reading and
         * writing columns of the same rows would alias an input with its output */
        phase(d, PHASE_LORA);
        dev_copy_rows(d->dlora_h, count * r, dinp + C, ld, count * r, N);
        dev_matmul_input_grad_lds(&d->ctx, dinp, ld, d->dlora_h, count * r, lo->A[first], C, N, C,
                                  count * r, 1.0f, 1);
        return;
    }
#endif
#if DEV_SHARES_LORA_INPUT
    if (lora_group_shared(d, l, first, count)) {
        const Model *m = d->m;
        const int in = model_local_in(m, first), r = m->lora.r, ld = count * r;
        const float s = (float)m->lora.scale;
        const DevLayerLora *lo = &d->lora[l];
        const act_t *h = lora_h_of(d, la, first, N); /* [N][count r] */
        for (int i = 0; i < count; i++) {
            const Proj p = (Proj)(first + i);
            phase(d, PHASE_GEMM);
            dev_matmul_input_grad(&d->ctx, dinp, in, douts[i], d->layers[l].w[p], N, in,
                                  model_local_out(m, p), 1.0f, i > 0 || !dinp_fresh);
        }
        /* dlora_h [N][count r]: each projection's s dout B written into its r columns, and
         * dB += s dout^T h from its columns of h */
        phase(d, PHASE_LORA);
        for (int i = 0; i < count; i++) {
            const Proj p = (Proj)(first + i);
            dev_matmul_input_grad(&d->ctx, d->dlora_h + i * r, ld, douts[i], lo->B[p], N, r,
                                  model_local_out(m, p), s, 0);
        }
        phase(d, PHASE_LORA_GRAD);
        for (int i = 0; i < count; i++) {
            const Proj p = (Proj)(first + i);
            dev_matmul_backward_ld(&d->ctx, NULL, 0, lo->dB[p], douts[i], h + i * r, ld, lo->B[p],
                                   N, r, model_local_out(m, p), s);
        }
        /* the group's dA (count r x in, one block) and input gradient in one product each */
        dev_matmul_backward(&d->ctx, NULL, lo->dA[first], d->dlora_h, inp, lo->A[first], N, in,
                            ld, 1.0f);
        phase(d, PHASE_LORA);
        dev_matmul_backward(&d->ctx, dinp, NULL, d->dlora_h, inp, lo->A[first], N, in, ld, 1.0f);
        return;
    }
#endif
    for (int i = 0; i < count; i++)
        proj_backward(d, l, (Proj)(first + i), dinp, i == 0 && dinp_fresh, douts[i], inp,
                      lora_h_of(d, la, (Proj)(first + i), N), N);
}

/* d->dx holds d loss / d x_{l+1} on entry, d loss / d x_l on exit. */
static void layer_backward(ModelDevice *d, int l, const LayerActs *la, const act_t *x_in) {
    const Model *m = d->m;
    const ModelConfig *c = &m->config;
    const int B = d->B, T = d->T, N = B * T, dm = c->hidden_size, D = c->head_dim;
    const int Hq = m->local_heads, Hkv = m->local_kv_heads;
    const size_t nq = (size_t)N * Hq * D, nkv = (size_t)N * Hkv * D;
    const size_t nff = (size_t)N * m->local_ffn;
    const DevLayerWeights *w = &d->layers[l];

    /* MLP block; the residual passes dx through unchanged to x_mid. Each gradient buffer's first
     * writer writes it (fresh = 1) rather than adding onto zeros: no zeroing passes. */
    proj_backward(d, l, PROJ_DOWN, d->dact, 1, d->dx, la->act, lora_h_of(d, la, PROJ_DOWN, N), N);
    phase(d, PHASE_POINTWISE);
    dev_swiglu_backward(d->dgate, d->dup, d->dact, la->gate, la->up, nff, 0);
    const act_t *const d_gate_up[2] = {d->dgate, d->dup};
    projs_backward(d, l, la, PROJ_GATE, 2, d->dln, 1, d_gate_up, la->ln2, N);
    phase(d, PHASE_COMM);
    dev_allreduce_sum_act(&d->ctx, d->dln, (size_t)N * d->ln_ld[1]);
    phase(d, PHASE_NORM);
    dev_rmsnorm_backward(d->dx, d->dln, d->ln_ld[1], la->x_mid, w->mlp_norm, la->ln2_rstd, N, dm);

    /* attention block; the residual passes dx through to x */
    proj_backward(d, l, PROJ_O, d->datt, 1, d->dx, la->att, lora_h_of(d, la, PROJ_O, N), N);
    phase(d, PHASE_ZERO);
    dev_zero(d->dq, nq * sizeof(act_t));
    dev_zero(d->dk, nkv * sizeof(act_t));
    dev_zero(d->dv, nkv * sizeof(act_t));
    phase(d, PHASE_ATTENTION_BWD);
    dev_attention_backward(&d->ctx, d->dq, d->dk, d->dv, d->datt, la->att, la->attn_state, la->q,
                           la->k, la->v, B, T, Hq, Hkv, D, d->attn_scratch, d->attn_scratch_bytes);
    phase(d, PHASE_POINTWISE);
    dev_rope_backward(d->dq, d->rope_cos, d->rope_sin, d->positions, N, Hq, D);
    dev_rope_backward(d->dk, d->rope_cos, d->rope_sin, d->positions, N, Hkv, D);
    const act_t *const d_qkv[3] = {d->dq, d->dk, d->dv};
    projs_backward(d, l, la, PROJ_Q, 3, d->dln, 1, d_qkv, la->ln1, N);
    phase(d, PHASE_COMM);
    dev_allreduce_sum_act(&d->ctx, d->dln, (size_t)N * d->ln_ld[0]);
    phase(d, PHASE_NORM);
    dev_rmsnorm_backward(d->dx, d->dln, d->ln_ld[0], x_in, w->attn_norm, la->ln1_rstd, N, dm);
}

static void device_backward(ModelDevice *d, const real *dlogp) {
    Model *m = d->m;
    const ModelConfig *c = &m->config;
    const int N = d->B * d->T, dm = c->hidden_size, V = m->local_vocab;
    const size_t nd = (size_t)N * dm;
    if (!m->adapters_enabled)
        PAFT_FATAL("backward pass with the adapters disabled: nothing to train");

    /* head: logp -> this rank's logits -> final norm (the input gradient is partial: one sum) */
    phase(d, PHASE_LOGPROB);
    dev_upload(d->dlogp, dlogp, (size_t)N * sizeof(stat_t));
    /* logit_rows rows at a time, each chunk writing its rows of dln (no zeroing first); in
     * chunks, each chunk's logits are computed again (the forward kept only the last chunk's) */
    const int chunked = d->logit_rows < N;
    for (int n0 = 0; n0 < N; n0 += d->logit_rows) {
        const int n = PAFT_MIN(d->logit_rows, N - n0);
        const act_t *lnf_rows = d->lnf + (size_t)n0 * dm;
        if (chunked) {
            phase(d, PHASE_GEMM);
            dev_matmul_forward(&d->ctx, d->logits, lnf_rows, d->lm_head, n, dm, V, 1.0f, 0);
        }
        phase(d, PHASE_LOGPROB);
        dev_zero(d->dlogits, (size_t)n * V * sizeof(act_t));
        dev_logprob_backward_shard(d->dlogits, d->dlogp + n0, d->logits, d->lse + n0,
                                   d->targets + n0, m->vocab_start, n, V);
        phase(d, PHASE_GEMM);
        dev_matmul_input_grad(&d->ctx, d->dln + (size_t)n0 * dm, dm, d->dlogits, d->lm_head, n,
                              dm, V, 1.0f, 0);
    }
    phase(d, PHASE_COMM);
    dev_allreduce_sum_act(&d->ctx, d->dln, nd);
    phase(d, PHASE_ZERO);
    dev_zero(d->dx, nd * sizeof(act_t));
    phase(d, PHASE_NORM);
    dev_rmsnorm_backward(d->dx, d->dln, dm, d->x + (size_t)c->num_layers * nd, d->final_norm,
                         d->lnf_rstd, N, dm);

    for (int l = c->num_layers - 1; l >= 0; l--) {
        LayerActs *la = slot_of(d, l);
        const act_t *x_in = d->x + l * nd;
        if (d->opt.recompute) layer_forward(d, l, la, x_in, d->x_sink);
        layer_backward(d, l, la, x_in);
    }
    /* not resident: the host's buffer holds the accumulated gradients (step.c reduces and clips
     * them there) */
    if (!d->resident)
        dev_download(m->lora_grads_memory, d->lora_grads, m->n_lora * sizeof(stat_t));
    phase(d, PHASE_IDLE);
}

static void device_zero_grads(ModelDevice *d) {
    phase(d, PHASE_OPTIMIZER);
    dev_zero(d->lora_grads, d->m->n_lora * sizeof(stat_t));
    phase(d, PHASE_IDLE);
}

/* ---- device-resident training ---------------------------------------------------------------*/

static void device_lora_from_host(ModelDevice *d, const real *m_host, const real *v_host) {
    const size_t bytes = d->m->n_lora * sizeof(stat_t);
    dev_upload(d->lora_master, d->m->lora_memory, bytes);
    dev_cast_to_act(d->lora_act, d->lora_master, d->m->n_lora);
    fold_lora_weights(d);
    if (m_host) dev_upload(d->adam_m, m_host, bytes);
    else dev_zero(d->adam_m, bytes);
    if (v_host) dev_upload(d->adam_v, v_host, bytes);
    else dev_zero(d->adam_v, bytes);
}

static void device_lora_to_host(ModelDevice *d, real *m_host, real *v_host) {
    const size_t bytes = d->m->n_lora * sizeof(stat_t);
    dev_download(d->m->lora_memory, d->lora_master, bytes);
    if (m_host) dev_download(m_host, d->adam_m, bytes);
    if (v_host) dev_download(v_host, d->adam_v, bytes);
}

/* This rank's block of the largest delta (the L1 term's scratch). */
static size_t largest_local_delta(const Model *m) {
    size_t most = 0;
    for (int p = 0; p < N_PROJ; p++)
        if (m->lora.targets[p])
            most = PAFT_MAX(most, (size_t)model_local_in(m, p) * (size_t)model_local_out(m, p));
    return most;
}

static void device_train_begin(ModelDevice *d, MPI_Comm dp_comm, int collectives) {
    if (d->resident) return;
    const Model *m = d->m;
    dev_ctx_set_dp(&d->ctx, dp_comm, collectives);
    Arena count = {0};
    arena_take(&count, m->n_lora, sizeof(stat_t));
    arena_take(&count, m->n_lora, sizeof(stat_t));
    arena_take(&count, largest_local_delta(m), sizeof(stat_t));
    arena_take(&count, 1, sizeof(double));
    d->train_bytes = count.cursor;
    d->train_memory = dev_alloc(d->train_bytes);
    Arena bind = {d->train_memory, 0};
    d->adam_m = arena_take(&bind, m->n_lora, sizeof(stat_t));
    d->adam_v = arena_take(&bind, m->n_lora, sizeof(stat_t));
    d->delta_scratch = arena_take(&bind, largest_local_delta(m), sizeof(stat_t));
    d->l1_total = arena_take(&bind, 1, sizeof(double));
    device_lora_from_host(d, NULL, NULL);
    d->resident = 1;
}

static void device_grads_allreduce(ModelDevice *d, int dp, size_t offset, size_t n) {
    phase(d, PHASE_COMM);
    dev_allreduce_sum_stat(&d->ctx, dp, d->lora_grads + offset, n);
    phase(d, PHASE_IDLE);
}

static void device_grads_zero(ModelDevice *d, size_t offset, size_t n) {
    phase(d, PHASE_OPTIMIZER);
    dev_zero(d->lora_grads + offset, n * sizeof(stat_t));
    phase(d, PHASE_IDLE);
}

static double device_grads_sum_squares(ModelDevice *d, size_t offset, size_t n) {
    phase(d, PHASE_OPTIMIZER);
    const double sum = dev_sum_squares(&d->ctx, d->lora_grads + offset, n);
    phase(d, PHASE_IDLE);
    return sum;
}

/* step.c's add_l1_penalty on the device's fp32 values: this rank's rows (column-parallel) or
 * columns (row-parallel) of each delta. The modules' values add up on the device where the fused
 * kernel takes them (one wait for the step instead of one per module), the others' on the host. */
static double device_l1_penalty(ModelDevice *d, double lambda) {
    const Model *m = d->m;
    double l1 = 0, on_device = 0;
    phase(d, PHASE_OPTIMIZER);
    dev_zero(d->l1_total, sizeof(double));
    for (int l = 0; l < m->config.num_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            if (!m->lora.targets[p]) continue;
            const DevLayerLora *lo = &d->lora[l];
            l1 += dev_l1_penalty_add(&d->ctx, lo->dA[p], lo->dB[p], lo->mA[p], lo->mB[p],
                                     model_local_out(m, p), model_local_in(m, p), m->lora.r,
                                     (float)m->lora.scale, (float)lambda, d->delta_scratch,
                                     d->l1_total);
        }
    dev_download(&on_device, d->l1_total, sizeof(double));
    phase(d, PHASE_IDLE);
    return l1 + on_device;
}

static void device_adamw_step(ModelDevice *d, int64_t step, double lr, const AdamWHyper *hyper,
                              float grad_scale) {
    const size_t n = d->m->n_lora;
    phase(d, PHASE_OPTIMIZER);
    dev_adamw(d->lora_master, d->lora_grads, d->adam_m, d->adam_v, n, step, lr, hyper, grad_scale);
    dev_cast_to_act(d->lora_act, d->lora_master, n);
    fold_lora_weights(d);
    phase(d, PHASE_IDLE);
}

const DeviceBackend THIS_BACKEND = {
    .name = DEVICE_BACKEND_NAME,
    .available = 1,
    .device_count = device_count,
    .create = device_create,
    .destroy = device_destroy,
    .alloc_activations = device_alloc_activations,
    .forward = device_forward,
    .backward = device_backward,
    .zero_grads = device_zero_grads,
    .memory_bytes = device_memory_bytes,
    .synchronize = device_synchronize,
    .train_begin = device_train_begin,
    .lora_to_host = device_lora_to_host,
    .lora_from_host = device_lora_from_host,
    .grads_allreduce = device_grads_allreduce,
    .grads_zero = device_grads_zero,
    .grads_sum_squares = device_grads_sum_squares,
    .l1_penalty = device_l1_penalty,
    .adamw_step = device_adamw_step,
};
