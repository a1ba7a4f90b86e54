/*
 * cmd_check.c - `paft check CONFIG [ranks=N] [stage=STAGE] [section.key=value ...]`: what a job
 * would check before loading a model, made now, on one process, for a job of N ranks; then the
 * plan of each stage. Meant for a login node before sbatch: a typo in a path or a batch size that
 * does not split costs seconds here instead of a wait in the queue.
 *
 * Without stage=: the checks of `paft run` on N ranks (the SFT / preference split, both stages'
 * inputs, the merge's settings). With stage=: those of `paft train stage=STAGE` on N ranks. N is
 * ranks=, else SLURM_NTASKS (inside an allocation), else this process's MPI world. model.device
 * and merge.device are checked by name and by build only: a login node has no GPU, so that is a
 * note. Nothing is created.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "config/config.h"
#include "io/h5file.h"
#include "merge/merge_kernels.h"
#include "merge/merge_stage.h"
#include "model/model.h"
#include "model/model_device.h"
#include "parallel/layout.h"
#include "train/train.h"
#include "util/common.h"

/* N from ranks=TEXT, SLURM_NTASKS or the MPI world, in that order. */
static int job_ranks(const char *text, int need_two) {
    const char *origin = "ranks";
    if (!text && getenv("SLURM_NTASKS")) {
        text = getenv("SLURM_NTASKS");
        origin = "SLURM_NTASKS";
    }
    if (!text) {
        int world;
        CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &world));
        if (world < 2 && need_two)
            ARGUMENT_FATAL("command line: 'paft check' needs ranks=N, the number of ranks the job "
                           "will have (inside a Slurm allocation SLURM_NTASKS says it)");
        return world;
    }
    double n;
    if (!paft_parse_number(text, &n) || n != (int)n || n < 1 || n > 1 << 24)
        ARGUMENT_FATAL("command line: %s = '%s' is not a number of ranks", origin, text);
    return (int)n;
}

/* Trainable LoRA parameters of one replica: r (in + out) per adapted projection and layer. */
static double lora_parameters(const Config *cfg, const ModelConfig *c) {
    LoraConfig lora;
    lora_config_init(&lora, cfg->lora.r, cfg->lora.alpha, cfg->lora.rslora, cfg->lora.targets,
                     "configuration [lora]");
    double n = 0;
    for (int p = 0; p < N_PROJ; p++)
        if (lora.targets[p])
            n += (double)lora.r * (proj_in(c, (Proj)p) + proj_out(c, (Proj)p));
    return n * c->num_layers;
}

/* A count for people: 4096, 41.9 M, 6.98 B. */
static void format_count(double n, char *out, size_t size) {
    if (n >= 1e9) snprintf(out, size, "%.2f B", n / 1e9);
    else if (n >= 1e6) snprintf(out, size, "%.1f M", n / 1e6);
    else snprintf(out, size, "%.0f", n);
}

/* What the stage directory already holds decides what the job does there first. */
static void print_existing(const Config *cfg, StageKind kind, int64_t steps) {
    char *dir = train_stage_dir(cfg, kind);
    char *checkpoint = paft_path_join(dir, "checkpoint.h5");
    char *adapter = paft_path_join(dir, "adapter.h5");
    const char *found = paft_path_exists(checkpoint) ? checkpoint
                        : paft_path_exists(adapter) ? adapter
                                                    : NULL;
    if (found) {
        H5File f;
        h5_open_read(&f, found, MPI_COMM_SELF);
        const int64_t step = h5_get_attr_int(&f, "step");
        h5_close(&f);
        /* whether it comes from this configuration needs the model (docs/TRAINING.md, "Resume
         * rules"): the job checks that when it starts */
        if (found == checkpoint)
            printf("            found %s at step %lld: the job resumes from it if it comes from "
                   "this configuration, else it stops\n", found, (long long)step);
        else
            printf("            found %s (step %lld of %lld): %s if it comes from this "
                   "configuration, else the job stops\n", found, (long long)step,
                   (long long)steps, step == steps ? "the stage is complete" : "trained again");
    }
    free(adapter);
    free(checkpoint);
    free(dir);
}

static void print_stage(const Config *cfg, StageKind kind, int first_rank, int group_size,
                        StagePlan plan) {
    const StageConfig *sc = kind == STAGE_SFT ? &cfg->sft : &cfg->pref;
    const char *unit = kind == STAGE_SFT ? "sequences" : "pairs";
    char ranks[48];
    if (group_size == 1) snprintf(ranks, sizeof ranks, "rank %d", first_rank);
    else snprintf(ranks, sizeof ranks, "ranks %d-%d", first_rank, first_rank + group_size - 1);
    printf("  %-9s %s: tp %d x dp %d; %lld step%s of %d %s (micro-batch %d x dp %d x %d "
           "accumulated), seq_len %d\n",
           kind == STAGE_SFT ? "sft" : sc->loss, ranks, plan.tp, plan.dp, (long long)plan.steps, plan.steps == 1 ? "" : "s", sc->batch, unit,
           sc->micro_batch, plan.dp, plan.accumulation, sc->seq_len);
    printf("            %.2f epochs of %llu records in %s; lr %g (%s, %lld warm-up steps)%s\n",
           plan.epochs, (unsigned long long)plan.records, sc->data, sc->lr, sc->schedule,
           (long long)plan.warmup_steps,
           kind == STAGE_SFT && sc->l1 > 0 ? ", L1 on the delta" : "");
    /* the first warm-up step has learning rate 0 (as transformers' schedule): a one-step stage
     * would write an adapter equal to its initialisation */
    if (plan.steps == 1 && plan.warmup_steps >= 1)
        printf("  note: %s trains 1 step and it is the warm-up's first, at learning rate 0: the "
               "adapter will not change (set %s.warmup = 0 or more steps)\n",
               kind == STAGE_SFT ? "sft" : "pref", kind == STAGE_SFT ? "sft" : "pref");
    print_existing(cfg, kind, plan.steps);
}

int cmd_check(int argc, char **argv) {
    Config cfg;
    char *extra[4];
    int n_extra = config_from_args(&cfg, argc, argv, extra, 4);
    const char *ranks_text = NULL, *stage = NULL;
    for (int i = 0; i < n_extra; i++) {
        if (strncmp(extra[i], "ranks=", 6) == 0)
            ranks_text = extra[i] + 6;
        else if (strncmp(extra[i], "stage=", 6) == 0)
            stage = extra[i] + 6;
        else
            ARGUMENT_FATAL("command line: unknown argument '%s' for 'paft check' (ranks=N, "
                           "stage=...)", extra[i]);
    }
    if (stage && strcmp(stage, "merge") == 0) {
        /* any rank count merges the same file: ranks= does not matter */
        if (paft_world_rank() != 0) return 0;
        char verdict[CONFIG_PATH_MAX + 64];
        snprintf(verdict, sizeof verdict, "paft check: %s for paft merge: no problem found",
                 argc > 1 && !strchr(argv[1], '=') ? argv[1] : "the configuration");
        merge_stage_check(&cfg, 0, verdict);
        return 0;
    }
    const StageKind kind = stage ? cli_stage_kind(&cfg, stage) : STAGE_SFT;
    const int ranks = job_ranks(ranks_text, !stage);
    if (paft_world_rank() != 0) return 0; /* one process does it all */

    /* the checks, in the job's order: fatal on the first problem */
    int n_sft = 0;
    StagePlan plan[2]; /* sft, pref; or the one stage= names */
    if (!stage) {
        n_sft = layout_sft_group_size(ranks, cfg.parallel.sft_ranks, cfg.parallel.tp, 1);
        train_plan_stage(&cfg, STAGE_SFT, n_sft, 0, &plan[0]);
        train_plan_stage(&cfg, STAGE_PREF, ranks - n_sft, 0, &plan[1]);
        merge_stage_check_settings(&cfg, 0);
    } else {
        train_plan_stage(&cfg, kind, ranks, 0, &plan[0]);
    }

    /* the plan */
    ModelConfig c;
    model_config_of_path(cfg.model.path, &c);
    printf("paft check: %s for paft %s on %d rank%s: no problem found\n",
           argc > 1 && !strchr(argv[1], '=') ? argv[1] : "the configuration",
           stage ? "train" : "run", ranks, ranks == 1 ? "" : "s");
    printf("  model     %s: %d layers, hidden %d, %d/%d heads, ffn %d, vocab %d\n",
           cfg.model.path, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads,
           c.intermediate_size, c.vocab_size);
    if (cfg.model.adapter[0]) printf("            with %s folded in\n", cfg.model.adapter);
    char trainable[32];
    format_count(lora_parameters(&cfg, &c), trainable, sizeof trainable);
    printf("  LoRA      r=%d alpha=%g%s on %s: %s trainable parameters per replica\n", cfg.lora.r,
           cfg.lora.alpha, cfg.lora.rslora ? " rslora" : "", cfg.lora.targets, trainable);
    model_config_free(&c);
    if (!stage) {
        print_stage(&cfg, STAGE_SFT, 0, n_sft, plan[0]);
        print_stage(&cfg, STAGE_PREF, n_sft, ranks - n_sft, plan[1]);
        char sft_adapter[CONFIG_PATH_MAX], pref_adapter[CONFIG_PATH_MAX], out[CONFIG_PATH_MAX];
        merge_stage_paths(&cfg, sft_adapter, pref_adapter, out);
        printf("  merge     %s, weights %g,%g, density %g,%g -> %s (%s)\n", cfg.merge.method,
               cfg.merge.weights[0], cfg.merge.weights[1], cfg.merge.density[0],
               cfg.merge.density[1], out, cfg.merge.dtype);
    } else {
        print_stage(&cfg, kind, 0, ranks, plan[0]);
    }
    /* a login node has no GPU: what the job's nodes need is a note, not an error */
    if (device_backend_by_name(cfg.model.device, "model.device") &&
        device_backend_check_built(cfg.model.device, "model.device") == 0)
        printf("  note: model.device = %s, and no device is visible here: the job's nodes need "
               "one GPU per rank\n", cfg.model.device);
    if (!stage && merge_kernels_check_built(cfg.merge.device) == 0 &&
        strcmp(cfg.merge.device, "cuda") == 0)
        printf("  note: merge.device = cuda, and no GPU is visible here: the job's nodes need "
               "one per rank\n");
    printf("  nothing was created; output.dir = %s\n", cfg.output.dir);
    return 0;
}
