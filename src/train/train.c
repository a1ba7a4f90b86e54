/*
 * train.c - one training stage on a group of ranks (see train.h).
 *
 * Read top to bottom: the Trainer (everything one stage owns), setup (model, data, optimizer,
 * resume), the two step functions (SFT with L1; preference losses), the optimizer step shared by
 * both, logging and checkpoints, and the loop.
 */
#include "train/train.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/token_data.h"
#include "io/adapter.h"
#include "io/h5file.h"
#include "loss/lora_delta.h"
#include "loss/pref_loss.h"
#include "loss/sft_loss.h"
#include "model/model.h"
#include "model/model_device.h"
#include "model/peft.h"
#include "optim/adamw.h"
#include "optim/lr_schedule.h"
#include "parallel/collectives.h"
#include "parallel/layout.h"
#include "train/step.h"

/* The one piece of process-wide state: a signal handler can only talk to the program through a
 * variable of type volatile sig_atomic_t. Training polls it after every optimizer step. */
static volatile sig_atomic_t stop_requested = 0;

static void on_stop_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

void train_install_signal_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL); /* Slurm: #SBATCH --signal=USR1@120 warns before the limit */
}

typedef struct {
    const Config *cfg;
    StageKind kind;
    const StageConfig *sc;
    const char *name; /* "sft", "dpo", "ipo", "hinge", "orpo" */
    MPI_Comm comm; /* the training group */
    int rank, size;
    Layout layout; /* its TP x DP grid */

    Model model;
    AdamW opt;
    TokenData *data;
    StepContext step_ctx; /* the loss and gradients of a global batch */

    uint64_t *order; /* record order of the current epoch */
    TrainPosition pos;
    int64_t step, total_steps, warmup_steps;
    LrScheduleKind schedule;
    char *dir;
    FILE *metrics; /* group rank 0 only */
    double t_start;
    double peak_tflops; /* per GPU, for the metrics' MFU (PAFT_PEAK_TFLOPS); 0 off a GPU */
    int64_t skipped_in_a_row, skipped_this_job; /* steps skipped as non-finite */
} Trainer;

/* The configuration section of this stage's settings, for messages. */
static const char *stage_section(const Trainer *tr) { return tr->kind == STAGE_SFT ? "sft" : "pref"; }

/* A step whose loss or gradient norm is not finite is skipped (optimizer_step). One now and then
 * is survivable; this many in a row means the run cannot recover (diverged, or NaN/inf in the base
 * weights, the adapter or the data), and training on would only write an adapter that never
 * moved. */
static const int64_t max_skipped_in_a_row = 10;

static void check_skipped(const Trainer *tr) {
    if (tr->skipped_in_a_row >= max_skipped_in_a_row)
        PAFT_FATAL("[%s] %lld steps in a row up to step %lld had a non-finite loss or gradient norm: "
                   "the run has diverged, or the base model (%s), the adapter it starts from or the "
                   "data (%s) hold NaN or inf; lower %s.lr, or check those inputs",
                   tr->name, (long long)tr->skipped_in_a_row, (long long)tr->step,
                   tr->cfg->model.path, tr->sc->data, stage_section(tr));
}


/* ---- setup -----------------------------------------------------------------------------------*/

/* parallel.collectives as DeviceOptions.collectives (kernels/device_comm.h's DeviceCommKind) */
static int collectives_kind(const Config *cfg) {
    const char *c = cfg->parallel.collectives;
    return strcmp(c, "nccl") == 0 ? 1 : strcmp(c, "mpi") == 0 ? 2 : 0;
}

static void check_device_dtype(const Config *cfg) {
    if (strcmp(cfg->model.device, "cuda") == 0 && strcmp(cfg->model.dtype, "bf16") != 0)
        PAFT_FATAL("configuration: model.dtype = %s: the CUDA backend computes in bf16 (fp32 "
                   "activations are not implemented; the CPU backend computes in fp32)",
                   cfg->model.dtype);
}

void train_use_device(const Config *cfg, Model *model) {
    model->simple_attention = strcmp(cfg->model.attention, "simple") == 0;
    if (strcmp(cfg->model.device, "cpu") == 0) return;
    check_device_dtype(cfg);
    DeviceOptions opt = {.recompute = cfg->model.recompute,
                         .logits_chunk = cfg->model.logits_chunk,
                         .collectives = collectives_kind(cfg),
                         .simple_attention = strcmp(cfg->model.attention, "simple") == 0};
    model_use_device(model, cfg->model.device, &opt, "configuration: model.device");
}

char *train_stage_dir(const Config *cfg, StageKind kind) {
    return paft_path_join(cfg->output.dir, kind == STAGE_SFT ? "sft" : "pref");
}

/* The dense bf16 peak of one GPU in TFLOP/s, for MFU: PAFT_PEAK_TFLOPS, by default 989.4 (an H100
 * SXM, the figure ../shared/gpu/README.md and paft bench use; an A100 is 312). */
static double peak_tflops_per_gpu(void) {
    const char *text = getenv("PAFT_PEAK_TFLOPS");
    double peak = 989.4;
    if (text && (!paft_parse_number(text, &peak) || !(peak > 0)))
        PAFT_FATAL("PAFT_PEAK_TFLOPS = '%s': expected a positive number (TFLOP/s of one GPU)", text);
    return peak;
}

/* The stage's data, opened and checked against the model's vocabulary, the sequence length and
 * the batch. */
static TokenData *open_stage_data(const StageConfig *sc, StageKind kind, int vocab_size) {
    const char *section = kind == STAGE_SFT ? "sft" : "pref";
    if (!sc->data[0]) PAFT_FATAL("configuration: %s.data is not set", section);
    TokenData *data = token_data_open(sc->data, kind == STAGE_SFT ? TOKEN_DATA_SFT : TOKEN_DATA_PREF,
                                      (uint32_t)vocab_size);
    token_data_check_max_length(data, (uint64_t)sc->seq_len);
    if (data->num_records < (uint64_t)sc->batch)
        PAFT_FATAL("%s: %llu records, fewer than one batch (%s.batch = %d)", sc->data,
                   (unsigned long long)data->num_records, section, sc->batch);
    return data;
}

/* The stage's optimizer steps: [stage].steps, or one epoch (whole batches) when it is 0. */
static int64_t total_steps(const StageConfig *sc, uint64_t records) {
    return sc->steps > 0 ? sc->steps : (int64_t)(records / (uint64_t)sc->batch);
}

/* DIR exists as a directory, or can be made: its nearest existing ancestor is a writable
 * directory. Nothing is created (a job that fails its checks leaves nothing behind). */
static void require_creatable(const char *dir, const char *key) {
    char *path = paft_strdup(dir);
    while (!paft_path_exists(path)) {
        char *slash = strrchr(path, '/');
        if (!slash) {
            snprintf(path, 2, ".");
            break;
        }
        if (slash == path) slash[1] = '\0'; /* "/" */
        else *slash = '\0';
    }
    if (!paft_is_directory(path))
        PAFT_FATAL("%s: %s cannot be created: %s is not a directory", dir, key, path);
    if (access(path, W_OK | X_OK) != 0)
        PAFT_FATAL("%s: %s cannot be created: %s is not writable", dir, key, path);
    free(path);
}

/* The model indexes a micro-batch's tokens (rows x seq_len; a pair is two rows) with an int. */
static void check_micro_batch_tokens(const StageConfig *sc, StageKind kind) {
    const char *section = kind == STAGE_SFT ? "sft" : "pref";
    const int64_t rows = kind == STAGE_SFT ? sc->micro_batch : 2 * (int64_t)sc->micro_batch;
    if (rows * sc->seq_len > INT32_MAX / 2)
        PAFT_FATAL("configuration: %s.micro_batch x %s.seq_len = %lld tokens%s in one micro-batch, "
                   "more than the %d the model indexes; lower either", section, section,
                   (long long)(rows * sc->seq_len), kind == STAGE_SFT ? "" : " (x2: a pair)",
                   INT32_MAX / 2);
}

void train_check_stage(const Config *cfg, StageKind kind, int group_size) {
    StagePlan plan;
    train_plan_stage(cfg, kind, group_size, 1, &plan);
}

void train_plan_stage(const Config *cfg, StageKind kind, int group_size, int device_here,
                      StagePlan *plan) {
    const StageConfig *sc = kind == STAGE_SFT ? &cfg->sft : &cfg->pref;
    const char *section = kind == STAGE_SFT ? "sft" : "pref";
    memset(plan, 0, sizeof *plan);
    if (!cfg->model.path[0]) PAFT_FATAL("configuration: model.path is not set");
    if (cfg->model.adapter[0] && !paft_path_exists(cfg->model.adapter))
        PAFT_FATAL("%s: model.adapter does not exist", cfg->model.adapter);
    check_device_dtype(cfg);
    if (device_here) device_backend_check_usable(cfg->model.device, "model.device");
    else (void)device_backend_check_built(cfg->model.device, "model.device");
    check_micro_batch_tokens(sc, kind);
    if (strcmp(cfg->model.device, "cuda") == 0) (void)peak_tflops_per_gpu(); /* a valid value */
    if (cfg->parallel.tp < 1 || group_size % cfg->parallel.tp != 0)
        PAFT_FATAL("configuration: parallel.tp = %d does not divide the %d ranks of the group",
                   cfg->parallel.tp, group_size);
    if (kind == STAGE_PREF && pref_loss_kind_from_name(sc->loss) == PREF_LOSS_INVALID)
        PAFT_FATAL("configuration: pref.loss = '%s' is not dpo, ipo, hinge or orpo", sc->loss);
    ModelConfig model_config;
    model_config_of_path(cfg->model.path, &model_config); /* its kind, its config.json */
    model_config_check_tp(&model_config, cfg->parallel.tp, cfg->model.path, 1);
    TokenData *data = open_stage_data(sc, kind, model_config.vocab_size);
    plan->records = data->num_records;
    token_data_close(data);
    model_config_free(&model_config);
    const int dp = group_size / cfg->parallel.tp;
    if (sc->batch % (sc->micro_batch * dp) != 0)
        PAFT_FATAL("configuration: %s.batch = %d must be a multiple of %s.micro_batch (%d) x "
                   "data-parallel ranks (%d)", section, sc->batch, section, sc->micro_batch, dp);
    plan->steps = total_steps(sc, plan->records);
    plan->warmup_steps = warmup_steps_from_fraction(sc->warmup, (int)plan->steps);
    plan->tp = cfg->parallel.tp;
    plan->dp = dp;
    plan->accumulation = sc->batch / (sc->micro_batch * dp);
    /* an epoch is whole batches, its last records < batch left out (next_batch_position): 20
     * steps of 24 over 256 records are 2 epochs, not 20 x 24 / 256 = 1.88 */
    plan->epochs = (double)plan->steps / (double)(plan->records / (uint64_t)sc->batch);
    char *dir = train_stage_dir(cfg, kind);
    require_creatable(dir, "output.dir");
    free(dir);
}

static void setup(Trainer *tr, const Config *cfg, StageKind kind, MPI_Comm comm) {
    memset(tr, 0, sizeof *tr);
    tr->cfg = cfg;
    tr->kind = kind;
    tr->sc = kind == STAGE_SFT ? &cfg->sft : &cfg->pref;
    tr->comm = comm;
    CHECK_MPI(MPI_Comm_rank(comm, &tr->rank));
    CHECK_MPI(MPI_Comm_size(comm, &tr->size));
    const StageConfig *sc = tr->sc;
    tr->name = kind == STAGE_SFT ? "sft" : sc->loss;
    if (!cfg->model.path[0]) PAFT_FATAL("configuration: model.path is not set");
    check_micro_batch_tokens(sc, kind);

    /* model: base (+ folded adapter) with fresh LoRA */
    LoraConfig lora;
    lora_config_init(&lora, cfg->lora.r, cfg->lora.alpha, cfg->lora.rslora, cfg->lora.targets,
                     "configuration [lora]");
    layout_create(&tr->layout, comm, cfg->parallel.tp);
    model_load(&tr->model, cfg->model.path, &lora, (uint64_t)sc->seed, tr->layout.tp_comm);
    if (cfg->model.adapter[0]) adapter_fold_into_base(cfg->model.adapter, comm, &tr->model);
    train_use_device(cfg, &tr->model);
    tr->peak_tflops = strcmp(cfg->model.device, "cuda") == 0 ? peak_tflops_per_gpu() : 0;
    int rows = kind == STAGE_SFT ? sc->micro_batch : 2 * sc->micro_batch;
    model_alloc_activations(&tr->model, rows, sc->seq_len);

    /* data */
    tr->data = open_stage_data(sc, kind, tr->model.config.vocab_size);
    tr->total_steps = total_steps(sc, tr->data->num_records);
    tr->warmup_steps = warmup_steps_from_fraction(sc->warmup, (int)tr->total_steps);
    tr->schedule = lr_schedule_from_name(sc->schedule);
    tr->order = paft_malloc(tr->data->num_records * sizeof(uint64_t));
    step_context_init(&tr->step_ctx, &tr->model, tr->data, sc, kind, &tr->layout);

    AdamWHyper hyper = adamw_default_hyper();
    hyper.weight_decay = sc->weight_decay;
    adamw_init(&tr->opt, tr->model.n_lora, hyper);
    /* on a device, the LoRA values, gradients and moments stay there between steps (the host
     * arrays above then serve checkpoints only) */
    model_train_on_device(&tr->model, tr->layout.dp_comm, collectives_kind(cfg));
    tr->pos.seed = sc->seed;

    tr->dir = train_stage_dir(cfg, kind);
    if (tr->rank == 0) {
        paft_make_dirs(tr->dir);
        char path[4096], what[64];
        snprintf(path, sizeof path, "%s/config.ini", tr->dir);
        snprintf(what, sizeof what, "the %s stage", tr->name);
        config_save(cfg, path, what);
    }
    CHECK_MPI(MPI_Barrier(comm));
}

static void teardown(Trainer *tr) {
    if (tr->metrics) fclose(tr->metrics);
    step_context_free(&tr->step_ctx);
    token_data_close(tr->data);
    adamw_free(&tr->opt);
    model_free(&tr->model);
    layout_free(&tr->layout);
    free(tr->order);
    free(tr->dir);
}

/* ---- optimizer step, shared ------------------------------------------------------------------*/

static void optimizer_step(Trainer *tr, StepStats *st) {
    Model *m = &tr->model;
    st->grad_norm = step_grad_norm(&tr->step_ctx);
    st->lr = tr->sc->lr * lr_multiplier(tr->schedule, (long)tr->step, (long)tr->warmup_steps,
                                        (long)tr->total_steps);
    if (!isfinite(st->grad_norm) || !isfinite(st->loss)) {
        st->skipped = 1; /* a broken step is skipped, not applied */
        return;
    }
    real coef = (real)clip_coefficient(st->grad_norm, tr->sc->max_grad_norm);
    step_apply_adamw(m, &tr->opt, st->lr, coef);
}

/* ---- logging ---------------------------------------------------------------------------------*/

static void log_step(Trainer *tr, const StepStats *st) {
    if (tr->rank != 0) return;
    if (!tr->metrics) {
        char *path = paft_path_join(tr->dir, "metrics.jsonl");
        tr->metrics = fopen(path, tr->step > 1 ? "a" : "w");
        if (!tr->metrics) PAFT_FATAL("%s: cannot open for writing: %s", path, strerror(errno));
        free(path);
    }
    FILE *f = tr->metrics;
    /* json_number: a skipped step's NaN loss is written as null, not as nan */
    fprintf(f, "{\"stage\": \"%s\", \"step\": %lld, \"loss\": %s, \"lr\": %s, "
               "\"grad_norm\": %s, \"tokens\": %.0f, \"tokens_per_s\": %s, \"skipped\": %d",
            tr->name, (long long)tr->step, json_number(st->loss).text, json_number(st->lr).text,
            json_number(st->grad_norm).text, st->tokens, json_number(st->tokens / st->seconds).text,
            st->skipped);
    /* model TFLOP/s per rank (model_flops.h; every rank of the group shares the step) and, on a
     * GPU, MFU against its peak */
    const double tflops = st->flops / st->seconds / tr->size / 1e12;
    fprintf(f, ", \"tflops_per_rank\": %s", json_number(tflops).text);
    if (tr->peak_tflops > 0) fprintf(f, ", \"mfu\": %s", json_number(tflops / tr->peak_tflops).text);
    if (tr->kind == STAGE_SFT) {
        fprintf(f, ", \"nll\": %s, \"l1\": %s", json_number(st->nll).text, json_number(st->l1).text);
    } else {
        fprintf(f, ", \"rewards/chosen\": %s, \"rewards/rejected\": %s, "
                   "\"rewards/accuracies\": %s, \"rewards/margins\": %s, "
                   "\"logps/chosen\": %s, \"logps/rejected\": %s",
                json_number(st->reward_chosen).text, json_number(st->reward_rejected).text,
                json_number(st->reward_accuracy).text, json_number(st->reward_margin).text,
                json_number(st->logp_chosen).text, json_number(st->logp_rejected).text);
        if (tr->step_ctx.pref.kind == PREF_LOSS_ORPO)
            fprintf(f, ", \"nll_loss\": %s, \"log_odds_ratio\": %s, \"log_odds_chosen\": %s",
                    json_number(st->nll).text, json_number(st->log_odds_ratio).text,
                    json_number(st->log_odds_chosen).text);
    }
    fprintf(f, "}\n");
    fflush(f);
    if (tr->step % tr->cfg->output.log_every == 0 || tr->step == tr->total_steps) {
        double elapsed = paft_seconds() - tr->t_start;
        double eta = elapsed / (double)tr->step * (double)(tr->total_steps - tr->step);
        printf("[%s] step %lld/%lld  loss %.4f", tr->name, (long long)tr->step,
               (long long)tr->total_steps, st->loss);
        if (tr->kind == STAGE_SFT && tr->sc->l1 > 0) printf(" (nll %.4f + l1 %.4f)", st->nll, st->l1);
        if (tr->kind == STAGE_PREF) printf("  acc %.2f  margin %.3f", st->reward_accuracy, st->reward_margin);
        printf("  lr %.2e  |g| %.3f  %.0f tok/s  ETA %.0fs%s\n", st->lr, st->grad_norm,
               st->tokens / st->seconds, eta, st->skipped ? "  (skipped: non-finite)" : "");
        fflush(stdout);
    }
}

/* ---- checkpoints and the loop ----------------------------------------------------------------*/

/* What an adapter or checkpoint of this run records about where it comes from (and its step). */
static void run_info(const Trainer *tr, AdapterInfo *info) {
    memset(info, 0, sizeof *info);
    info->step = tr->step;
    snprintf(info->stage, sizeof info->stage, "%s", tr->name);
    /* absolute: folding this adapter later follows the chain to model.adapter, from whatever
     * working directory paft eval or paft merge runs in */
    if (tr->cfg->model.adapter[0])
        paft_absolute_path(tr->cfg->model.adapter, info->folded_adapter,
                           sizeof info->folded_adapter);
    info->data_records = (int64_t)tr->data->num_records;
    info->data_crc32 = tr->data->payload_crc32;
}

static void write_checkpoint(Trainer *tr) {
    char *path = paft_path_join(tr->dir, "checkpoint.h5");
    AdapterInfo info;
    run_info(tr, &info);
    tr->pos.optim_step = tr->opt.step;
    model_lora_to_host(&tr->model, tr->opt.m, tr->opt.v);
    adapter_write(path, tr->comm, &tr->model, &info, tr->opt.m, tr->opt.v, &tr->pos,
                  tr->layout.dp_rank == 0);
    free(path);
}

static void next_batch_position(Trainer *tr) {
    tr->pos.cursor += tr->sc->batch;
    if ((uint64_t)(tr->pos.cursor + tr->sc->batch) > tr->data->num_records) {
        tr->pos.epoch++;
        tr->pos.cursor = 0;
        token_data_permutation(tr->data->num_records, (uint64_t)tr->pos.seed,
                               (uint64_t)tr->pos.epoch, tr->order);
    }
}

/* After a crash between a checkpoint and the next one, metrics.jsonl holds steps the resumed run
 * will redo: keep only the lines up to the checkpoint's step. */
static void truncate_metrics(const char *dir, int64_t last_step) {
    char *path = paft_path_join(dir, "metrics.jsonl");
    char *tmp = paft_path_join(dir, ".metrics.jsonl.tmp");
    FILE *in = fopen(path, "r");
    if (in) {
        FILE *out = fopen(tmp, "w");
        if (!out) PAFT_FATAL("%s: cannot write: %s", tmp, strerror(errno));
        char line[8192];
        while (fgets(line, sizeof line, in)) {
            const char *at = strstr(line, "\"step\": ");
            if (at && atoll(at + 8) <= last_step) fputs(line, out);
        }
        fclose(in);
        if (fclose(out) != 0 || rename(tmp, path) != 0)
            PAFT_FATAL("%s: cannot rewrite: %s", path, strerror(errno));
    }
    free(path);
    free(tmp);
}

/* Whether PATH exists, as rank 0 of comm sees it, on every rank of comm. The ranks then all take
 * the same branch: either all open the file collectively or none does. Asking each rank on its
 * own hung the job when they saw different files (node-local directories): one rank waited in a
 * collective H5Fopen the others never entered. Now a rank that lacks the file fails to open it,
 * a fatal error that ends the job. */
static int exists_on_rank0(const char *path, MPI_Comm comm) {
    int rank, exists = 0;
    CHECK_MPI(MPI_Comm_rank(comm, &rank));
    if (rank == 0) exists = paft_path_exists(path);
    CHECK_MPI(MPI_Bcast(&exists, 1, MPI_INT, 0, comm));
    return exists;
}

static const char *const ADAPTER_ADVICE =
    "it is another configuration's result: pick another output.dir, or delete it to train this "
    "configuration";
static const char *const CHECKPOINT_ADVICE =
    "it is another configuration's checkpoint: run with that configuration to resume it, pick "
    "another output.dir, or delete it to start over";

/* An adapter.h5 that already holds the final step: the stage is done. It must come from this
 * configuration (stage, LoRA settings, base, folded adapter, data): a fatal error otherwise. */
static int already_complete(Trainer *tr, const char *adapter_path) {
    if (!exists_on_rank0(adapter_path, tr->comm)) return 0;
    AdapterInfo expect;
    run_info(tr, &expect);
    int64_t step = adapter_check_origin(adapter_path, tr->comm, &tr->model, &expect, ADAPTER_ADVICE);
    return step == tr->total_steps;
}

/* The position read from a checkpoint is used as array indices and loop bounds: check it all
 * against this run before anything trusts it. */
static void check_resume_position(const Trainer *tr, const char *path, int64_t step) {
    const TrainPosition *p = &tr->pos;
    const char *section = stage_section(tr);
    if (p->seed != tr->sc->seed)
        PAFT_FATAL("%s: written with seed %lld, the configuration has %s.seed = %d; %s", path,
                   (long long)p->seed, section, tr->sc->seed, CHECKPOINT_ADVICE);
    if (step < 0) PAFT_FATAL("%s: step %lld is negative (corrupt checkpoint)", path, (long long)step);
    if (step > tr->total_steps)
        PAFT_FATAL("%s: at step %lld, beyond this run's %lld steps (%s.steps): raise %s.steps to "
                   "at least %lld, or delete it to start over",
                   path, (long long)step, (long long)tr->total_steps, section, section,
                   (long long)step);
    if (p->optim_step < 0 || p->optim_step > step)
        PAFT_FATAL("%s: optim_step %lld outside 0..%lld (the step; corrupt checkpoint)", path,
                   (long long)p->optim_step, (long long)step);
    if (p->epoch < 0 || p->epoch > step)
        PAFT_FATAL("%s: epoch %lld outside 0..%lld (the step; corrupt checkpoint)", path,
                   (long long)p->epoch, (long long)step);
    /* the next batch is records order[cursor .. cursor + batch) of this epoch; a batch raised
     * since the checkpoint that no longer fits in the rest of the epoch starts the next one
     * (train_stage, after this check) */
    if (p->cursor < 0 || (uint64_t)p->cursor > tr->data->num_records)
        PAFT_FATAL("%s: cursor %lld outside the data order (%s.data %s has %llu records: expected "
                   "0..%llu); corrupt checkpoint, or one written for other data",
                   path, (long long)p->cursor, section, tr->sc->data,
                   (unsigned long long)tr->data->num_records,
                   (unsigned long long)tr->data->num_records);
    /* AdamW moments: finite, second moments not negative (sqrt(v) divides); the LoRA values
     * themselves were checked by adapter_read */
    for (size_t i = 0; i < tr->model.n_lora; i++) {
        if (!isfinite(tr->opt.m[i]) || !isfinite(tr->opt.v[i]) || tr->opt.v[i] < 0)
            PAFT_FATAL("%s: a non-finite first or a negative or non-finite second AdamW moment "
                       "under /optim (corrupt checkpoint)",
                       path);
    }
}

TrainOutcome train_stage(const Config *cfg, StageKind kind, MPI_Comm comm) {
    Trainer tr;
    setup(&tr, cfg, kind, comm);
    char *adapter_path = paft_path_join(tr.dir, "adapter.h5");
    char *checkpoint_path = paft_path_join(tr.dir, "checkpoint.h5");
    if (already_complete(&tr, adapter_path)) {
        if (tr.rank == 0)
            printf("[%s] %s already holds step %lld/%lld: stage complete (delete it to retrain)\n",
                   tr.name, adapter_path, (long long)tr.total_steps, (long long)tr.total_steps);
        /* a job ended between writing adapter.h5 and its PEFT copy (or the copy was deleted):
         * write the copy now, or it would never appear (adapter_model.safetensors is written
         * last, by rename, so its presence means the copy is whole) */
        if (tr.rank == 0) {
            char *peft_dir = paft_path_join(tr.dir, "peft");
            char *peft_weights = paft_path_join(peft_dir, "adapter_model.safetensors");
            if (!paft_path_exists(peft_weights)) peft_write_adapter(adapter_path, peft_dir);
            free(peft_weights);
            free(peft_dir);
        }
        free(adapter_path);
        free(checkpoint_path);
        teardown(&tr);
        return TRAIN_COMPLETED;
    }
    if (exists_on_rank0(checkpoint_path, comm)) {
        AdapterInfo expect, info;
        run_info(&tr, &expect);
        adapter_check_origin(checkpoint_path, comm, &tr.model, &expect, CHECKPOINT_ADVICE);
        adapter_read(checkpoint_path, comm, &tr.model, &info, tr.opt.m, tr.opt.v, &tr.pos);
        check_resume_position(&tr, checkpoint_path, info.step);
        /* The batch may differ from the checkpoint's: when the rest of the epoch holds fewer
         * records than a batch, go on with the next epoch, as next_batch_position does at the
         * end of every epoch (a raised batch used to be refused as a corrupt cursor). */
        if ((uint64_t)(tr.pos.cursor + tr.sc->batch) > tr.data->num_records) {
            tr.pos.epoch++;
            tr.pos.cursor = 0;
        }
        model_lora_from_host(&tr.model, tr.opt.m, tr.opt.v);
        tr.step = info.step;
        tr.opt.step = tr.pos.optim_step;
        if (tr.rank == 0) truncate_metrics(tr.dir, tr.step);
        if (tr.rank == 0)
            printf("[%s] resuming from %s at step %lld\n", tr.name, checkpoint_path, (long long)tr.step);
    }
    token_data_permutation(tr.data->num_records, (uint64_t)tr.pos.seed, (uint64_t)tr.pos.epoch,
                           tr.order);
    if (tr.rank == 0)
        printf("[%s] %lld steps of %d %s on %d rank%s (micro-batch %d), %llu records in %s\n",
               tr.name, (long long)tr.total_steps, tr.sc->batch,
               kind == STAGE_SFT ? "sequences" : "pairs", tr.size, tr.size > 1 ? "s" : "",
               tr.sc->micro_batch, (unsigned long long)tr.data->num_records, tr.sc->data);
    /* warm-up's first step has learning rate 0 (transformers' schedule): a one-step stage with
     * warm-up writes the adapter it started from, which nobody means */
    if (tr.rank == 0 && tr.total_steps == 1 && tr.warmup_steps >= 1)
        printf("[%s] note: the only step is warm-up's first, at learning rate 0: the adapter will "
               "not change (set %s.warmup = 0 or train more steps)\n",
               tr.name, kind == STAGE_SFT ? "sft" : "pref");

    /* PAFT_FAULT_INJECT=WORLD_RANK:STEP makes that rank fail with a fatal error after that step:
     * how the tests prove that an error on one rank ends the whole job instead of hanging it. */
    int fail_rank = -1, fail_step = -1;
    const char *fault = getenv("PAFT_FAULT_INJECT");
    if (fault && sscanf(fault, "%d:%d", &fail_rank, &fail_step) != 2)
        PAFT_FATAL("PAFT_FAULT_INJECT='%s' is not WORLD_RANK:STEP", fault);

    TrainOutcome outcome = TRAIN_COMPLETED;
    tr.t_start = paft_seconds();
    const int64_t first_step = tr.step;
    while (tr.step < tr.total_steps) {
        double t0 = paft_seconds();
        StepStats st;
        memset(&st, 0, sizeof st);
        step_gradients(&tr.step_ctx, tr.order + tr.pos.cursor, &st);
        optimizer_step(&tr, &st);
        tr.step++;
        next_batch_position(&tr);
        st.seconds = paft_seconds() - t0;
        log_step(&tr, &st);
        tr.skipped_in_a_row = st.skipped ? tr.skipped_in_a_row + 1 : 0;
        tr.skipped_this_job += st.skipped;
        check_skipped(&tr); /* st.skipped is the same on every rank: all end together */
        if (paft_world_rank() == fail_rank && tr.step == fail_step)
            PAFT_FATAL("fault injected by PAFT_FAULT_INJECT after step %lld", (long long)tr.step);

        int stop = stop_requested;
        allreduce_max_int(&stop, comm); /* every rank of the group stops at the same step */
        /* output.stop_after: a fixed slice of steps per job (queues with short time limits) */
        int sliced = cfg->output.stop_after > 0 && tr.step - first_step >= cfg->output.stop_after;
        int periodic = cfg->output.checkpoint_every > 0 &&
                       tr.step % cfg->output.checkpoint_every == 0 && tr.step < tr.total_steps;
        if ((stop || sliced) && tr.step < tr.total_steps) {
            write_checkpoint(&tr);
            if (tr.rank == 0)
                printf("[%s] %s after step %lld/%lld: checkpoint written to %s; run the same "
                       "command again to resume\n",
                       tr.name, stop ? "interrupted by a signal" : "stopped (output.stop_after)",
                       (long long)tr.step, (long long)tr.total_steps, checkpoint_path);
            outcome = TRAIN_INTERRUPTED;
            break;
        }
        if (periodic) write_checkpoint(&tr);
    }

    if (tr.step > first_step && tr.skipped_this_job == tr.step - first_step)
        PAFT_FATAL("[%s] every step of this job (%lld) had a non-finite loss or gradient norm, so "
                   "nothing was learned and nothing is written: the base model (%s), the adapter it "
                   "starts from or the data (%s) hold NaN or inf, or %s.lr is far too high",
                   tr.name, (long long)(tr.step - first_step), cfg->model.path, tr.sc->data,
                   stage_section(&tr));
    if (outcome == TRAIN_COMPLETED) {
        AdapterInfo info;
        run_info(&tr, &info);
        model_lora_to_host(&tr.model, NULL, NULL);
        adapter_write(adapter_path, comm, &tr.model, &info, NULL, NULL, NULL, tr.layout.dp_rank == 0);
        if (tr.rank == 0) {
            char *peft_dir = paft_path_join(tr.dir, "peft");
            peft_write_adapter(adapter_path, peft_dir);
            free(peft_dir);
            remove(checkpoint_path); /* the adapter is the final state now */
            printf("[%s] done in %.1f s: %s (PEFT copy in %s/peft)\n", tr.name,
                   paft_seconds() - tr.t_start, adapter_path, tr.dir);
        }
    }
    free(adapter_path);
    free(checkpoint_path);
    teardown(&tr);
    return outcome;
}
