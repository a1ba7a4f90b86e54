/*
 * config.h - the run configuration: one INI file plus `section.key=value` overrides.
 *
 * Every key has a typed slot in Config, a default and a validity rule in the key table of
 * config.c (docs/CONFIG.md lists them all). Unknown sections or keys, values that do not parse
 * completely, and values out of range are fatal errors naming the file (or "command line") and
 * the key: a typo must never pass silently.
 */
#ifndef PAFT_CONFIG_H
#define PAFT_CONFIG_H

#include <stdio.h>

#define CONFIG_PATH_MAX 1024
#define CONFIG_WORD_MAX 64

/* The keys shared by both training stages ([sft] and [pref]). */
typedef struct {
    char data[CONFIG_PATH_MAX]; /* token data file (docs/DATA_FORMAT.md) */
    double lr;
    int steps;          /* optimizer steps; 0 = one epoch */
    int batch;          /* sequences per optimizer step across the group */
    int micro_batch;    /* sequences per rank per forward/backward */
    int seq_len;        /* longest record accepted (tokens) */
    double warmup;      /* fraction of steps with linear warmup */
    char schedule[CONFIG_WORD_MAX]; /* cosine | linear | constant */
    double weight_decay;
    double max_grad_norm; /* global gradient-norm clip; 0 = off */
    int seed;
    /* [sft] only */
    double l1; /* lambda of PAFT's L1 penalty on delta_sft; 0 = plain SFT */
    /* [pref] only */
    char loss[CONFIG_WORD_MAX]; /* dpo | ipo | hinge | orpo */
    double beta;
    double label_smoothing;
} StageConfig;

typedef struct {
    struct {
        char path[CONFIG_PATH_MAX];    /* HF directory or .safetensors file */
        char adapter[CONFIG_PATH_MAX]; /* adapter folded into the base first ("" = none) */
        char dtype[CONFIG_WORD_MAX];   /* bf16 | fp32 (GPU compute dtype) */
        char device[CONFIG_WORD_MAX];  /* cpu | cuda | emulate (model_device.h) */
        int recompute;                 /* activation recomputation on a device */
        int logits_chunk;              /* rows of logits at a time on a device (0: automatic) */
        char attention[CONFIG_WORD_MAX]; /* fused | simple (cuda attention kernels) */
    } model;
    struct {
        int r;
        double alpha;
        int rslora;                       /* scale alpha/sqrt(r) instead of alpha/r */
        char targets[CONFIG_PATH_MAX];    /* comma list of q_proj,k_proj,...,down_proj */
    } lora;
    StageConfig sft;
    StageConfig pref;
    struct {
        int sft_ranks; /* 0 = half of the world */
        int tp;
        char collectives[CONFIG_WORD_MAX]; /* auto | nccl | mpi: device tensor-parallel sums */
    } parallel;
    struct {
        char sft_adapter[CONFIG_PATH_MAX];
        char pref_adapter[CONFIG_PATH_MAX];
        char out[CONFIG_PATH_MAX];
        char method[CONFIG_WORD_MAX];
        double weights[2];
        double density[2];
        char normalize[CONFIG_WORD_MAX]; /* auto | true | false */
        double lambda;
        char sign[CONFIG_WORD_MAX];      /* sum | count (TIES sign election) */
        char rescale[CONFIG_WORD_MAX];   /* density | l1 (DARE) */
        int seed;
        char dtype[CONFIG_WORD_MAX];     /* bf16 | fp32 */
        char device[CONFIG_WORD_MAX];    /* auto | cpu | cuda: where the merge computes */
    } merge;
    struct {
        char sft_data[CONFIG_PATH_MAX];
        char pref_data[CONFIG_PATH_MAX];
    } eval;
    struct {
        char dir[CONFIG_PATH_MAX];
        int checkpoint_every;
        int log_every;
        int stop_after; /* checkpoint and stop after this many steps of one invocation (0: never) */
    } output;
} Config;

/* Fill every key with its default. */
void config_defaults(Config *cfg);
/* Read an INI file over the current values. Fatal error naming the file on any problem. */
void config_load_file(Config *cfg, const char *path);
/* Set one key from text; `origin` names where the value came from in error messages. */
void config_set(Config *cfg, const char *section, const char *key, const char *value,
                const char *origin);
/* Apply one "section.key=value" argument. Returns 0 if the argument has no '.' before its '='
 * (a command's own argument such as stage=sft), 1 when applied; fatal error when malformed. */
int config_apply_override(Config *cfg, const char *arg);
/* The common command-line shape "CONFIG [section.key=value | name=value ...]": loads defaults,
 * the file (when argv[1] is not an override), then the overrides. Bare name=value arguments are
 * returned in `extra` (at most max_extra) for the command to interpret; returns their count. */
int config_from_args(Config *cfg, int argc, char **argv, char **extra, int max_extra);
/* Write the effective configuration as INI text, every key (config_load_file reads it back to the
 * same values; the ranks compare it to check they agree). */
void config_write(const Config *cfg, FILE *out);
/* config_write to PATH (via PATH.tmp, renamed when complete) under a comment naming `what` ran
 * with it: each training stage leaves one beside its adapter, so a run can be repeated. */
void config_save(const Config *cfg, const char *path, const char *what);

#endif /* PAFT_CONFIG_H */
