/*
 * cmd_demo.c - `paft demo [OUTDIR]`: the whole PAFT pipeline on this machine, with no download
 * and no Python, in about a minute on 2 cores (run it under mpirun -np 4).
 *
 *   1. rank 0 generates a tiny Llama-family model (an HF directory) and the generated tasks
 *      (data/synthetic.h): SFT demonstrations and preference pairs over two prompt domains that
 *      share one answer rule, plus held-out sets, and writes OUTDIR/demo.ini;
 *   2. trains the baselines on all ranks: SFT, SFT with L1, DPO, sequential SFT -> DPO;
 *   3. runs PAFT itself: the world splits into an SFT (with L1) group and a DPO group that train
 *      at the same time (the code path of `paft run`);
 *   4. merges PAFT's two deltas, and plain SFT's with DPO's, with every method (the merge stage);
 *   5. evaluates every model (held-out SFT NLL, preference accuracy and margin against the base)
 *      and prints a table shaped like the paper's Table 1, with the sparsity of each delta;
 *      OUTDIR/results.md and OUTDIR/results.json keep it.
 * Every step is also a command (paft train / run / merge / eval with OUTDIR/demo.ini), printed as
 * it goes, so each can be rerun by hand. Stages already complete in OUTDIR are not retrained (their
 * adapters are checked against the configuration); the merges are always redone. OUTDIR must be
 * new, empty, or an earlier demo's (its .paft-demo marker): a directory of the user's is refused
 * rather than written over.
 */
#include <dirent.h>
#include <errno.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/commands.h"
#include "config/config.h"
#include "data/synthetic.h"
#include "data/token_data.h"
#include "io/adapter.h"
#include "io/h5file.h"
#include "io/merged_h5.h"
#include "merge/merge_stage.h"
#include "model/tiny_model.h"
#include "parallel/layout.h"
#include "train/evaluate.h"
#include "train/train.h"
#include "util/common.h"

static const char *const demo_methods[] = {"ties",      "task_arithmetic", "linear", "slerp",
                                           "dare_ties", "dare_linear",     "magnitude"};
enum { N_METHODS = 7, MAX_ROWS = 32 };

typedef struct {
    char label[96];
    char path[1024];
    double sparsity_sft, sparsity_pref; /* of the deltas it was made from; < 0: not applicable */
    EvalResult sft, pref;
} DemoRow;

/* OUTDIR/.paft-demo marks a directory the demo made its own: the demo (re)writes demo.ini,
 * results.md, results.json, base-model/, the data files, runs/ and merged/ in it. */
#define DEMO_MARKER ".paft-demo"
#define DEMO_INI_FIRST_LINE "; written by paft demo:"

static int directory_is_empty(const char *path) {
    DIR *d = opendir(path);
    if (!d) PAFT_FATAL("%s: cannot read directory: %s", path, strerror(errno));
    int empty = 1;
    for (struct dirent *e; empty && (e = readdir(d));)
        empty = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
    closedir(d);
    return empty;
}

/* A demo directory of a paft from before the marker: its demo.ini begins with the demo's line. */
static int has_demo_ini(const char *outdir) {
    char path[1024], line[64] = "";
    snprintf(path, sizeof path, "%s/demo.ini", outdir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    const int ok = fgets(line, sizeof line, f) &&
                   strncmp(line, DEMO_INI_FIRST_LINE, strlen(DEMO_INI_FIRST_LINE)) == 0;
    fclose(f);
    return ok;
}

/* The demo writes files of fixed names into OUTDIR: only into a new or empty directory, or one an
 * earlier demo wrote (its marker), so that a directory of the user's (their own demo.ini or
 * results.md, say) is never written over. */
static void claim_outdir(const char *outdir) {
    char marker[1024];
    snprintf(marker, sizeof marker, "%s/" DEMO_MARKER, outdir);
    if (paft_path_exists(outdir)) {
        if (!paft_is_directory(outdir))
            PAFT_FATAL("%s: exists and is not a directory; paft demo OUTDIR takes a new or empty "
                       "directory, or one an earlier paft demo wrote", outdir);
        if (!paft_path_exists(marker) && !directory_is_empty(outdir) && !has_demo_ini(outdir))
            PAFT_FATAL("%s: not empty and not a paft demo directory (no %s in it); the demo writes "
                       "demo.ini, results.md, results.json, runs/ and merged/ there and would "
                       "overwrite yours: give a new or empty directory", outdir, DEMO_MARKER);
    } else if (mkdir(outdir, 0777) != 0 && errno != EEXIST) {
        PAFT_FATAL("%s: cannot create directory: %s", outdir, strerror(errno));
    }
    FILE *f = fopen(marker, "w");
    if (!f) PAFT_FATAL("%s: cannot create: %s", marker, strerror(errno));
    fprintf(f, "a directory written by `paft demo` (which reruns into it, and only into such a "
               "directory or an empty one)\n");
    if (fclose(f) != 0) PAFT_FATAL("%s: write failed", marker);
}

static void write_demo_files(const char *outdir) {
    claim_outdir(outdir);
    char path[1024];
    TinyModelSpec spec = tiny_model_default();
    snprintf(path, sizeof path, "%s/base-model", outdir);
    tiny_model_write(path, &spec, 2024);
    const struct { const char *name; int sft, n; uint64_t seed; SynthDomain domain; } files[] = {
        {"sft_train.bin", 1, 1024, 11, SYNTH_SFT_DOMAIN},
        {"sft_val.bin", 1, 128, 12, SYNTH_SFT_DOMAIN},
        {"pref_train.bin", 0, 1024, 13, SYNTH_PREF_DOMAIN},
        {"pref_val.bin", 0, 128, 14, SYNTH_PREF_DOMAIN},
    };
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", outdir, files[i].name);
        if (files[i].sft)
            synthetic_write_sft(path, files[i].n, files[i].seed, 2024, 0, files[i].domain);
        else
            synthetic_write_pref(path, files[i].n, files[i].seed, 2024, 0, files[i].domain);
    }
    snprintf(path, sizeof path, "%s/demo.ini", outdir);
    FILE *f = fopen(path, "w");
    if (!f) PAFT_FATAL("%s: cannot create: %s", path, strerror(errno));
    fprintf(f,
            DEMO_INI_FIRST_LINE " the tiny model, generated data and settings of the demo\n"
            "[model]\npath = %s/base-model\n"
            "[lora]\nr = 8\nalpha = 16\n"
            "[sft]\ndata = %s/sft_train.bin\nsteps = 300\nbatch = 16\nmicro_batch = 4\n"
            "seq_len = 24\nlr = 1e-2\nl1 = 3e-3\n"
            "[pref]\ndata = %s/pref_train.bin\nsteps = 150\nbatch = 16\nmicro_batch = 4\n"
            "seq_len = 24\nlr = 5e-3\nbeta = 0.1\n"
            "[merge]\ndensity = 0.5,0.5\n"
            "[eval]\nsft_data = %s/sft_val.bin\npref_data = %s/pref_val.bin\n"
            "[output]\ndir = %s/runs/paft\ncheckpoint_every = 0\nlog_every = 100\n",
            outdir, outdir, outdir, outdir, outdir, outdir);
    fclose(f);
}

/* One stage on all ranks, into OUTDIR/runs/<name>. */
static void train_all(const Config *base, const char *outdir, const char *name, StageKind kind,
                      double l1, const char *fold) {
    Config cfg = *base;
    char dir[1024], value[64];
    snprintf(dir, sizeof dir, "%s/runs/%s", outdir, name);
    config_set(&cfg, "output", "dir", dir, "demo");
    snprintf(value, sizeof value, "%g", l1);
    config_set(&cfg, "sft", "l1", value, "demo");
    if (fold) config_set(&cfg, "model", "adapter", fold, "demo");
    paft_log("\n== %s: paft train %s/demo.ini stage=%s output.dir=%s%s%s%s\n", name, outdir,
             kind == STAGE_SFT ? "sft" : "dpo", dir, kind == STAGE_SFT ? " sft.l1=" : "",
             kind == STAGE_SFT ? value : "", fold ? " model.adapter=<sft adapter>" : "");
    train_stage(&cfg, kind, MPI_COMM_WORLD);
}

static double merged_sparsity(const char *path) {
    H5File f;
    h5_open_read(&f, path, MPI_COMM_SELF);
    int n = 0;
    char **names = h5_list_group(&f, "/stats", &n);
    double small = 0, total = 0;
    for (int i = 0; i < n; i++) {
        char name[512];
        snprintf(name, sizeof name, "%s", names[i]);
        MergedTensorStats st;
        merged_read_stats(&f, name, &st);
        small += (double)st.small_merged;
        total += (double)st.numel;
        free(names[i]);
    }
    free(names);
    h5_close(&f);
    return total > 0 ? small / total : 0;
}

static void print_table(FILE *out, const DemoRow *rows, int n) {
    fprintf(out, "| model | SFT NLL (lower is better) | preference accuracy | margin | "
                 "sparsity of delta_sft | of delta_pref | of merged delta |\n");
    fprintf(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (int i = 0; i < n; i++) {
        const DemoRow *r = &rows[i];
        fprintf(out, "| %s | %.4f | %.3f | %.4f |", r->label, r->sft.nll, r->pref.accuracy,
                r->pref.margin);
        for (int k = 0; k < 3; k++) {
            double v = k == 0 ? r->sparsity_sft : k == 1 ? r->sparsity_pref : -1;
            if (k == 2 && strstr(r->path, ".h5") && strstr(r->path, "/merged/")) v = merged_sparsity(r->path);
            if (v < 0)
                fprintf(out, " – |");
            else
                fprintf(out, " %.3f |", v);
        }
        fprintf(out, "\n");
    }
}

int cmd_demo(int argc, char **argv) {
    const char *outdir = argc > 1 ? argv[1] : "paft-demo";
    if (argc > 2) PAFT_FATAL("command line: paft demo takes one optional argument, OUTDIR");
    int rank = 0, world = 1;
    CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &world));
    double t0 = paft_seconds();
    if (rank == 0) write_demo_files(outdir);
    CHECK_MPI(MPI_Barrier(MPI_COMM_WORLD));
    char path[1024];
    snprintf(path, sizeof path, "%s/demo.ini", outdir);
    Config cfg;
    config_defaults(&cfg);
    config_load_file(&cfg, path);
    ModelConfig mc;
    model_config_of_path(cfg.model.path, &mc);
    char summary[256];
    model_config_describe(&mc, summary, sizeof summary);
    model_config_free(&mc);
    paft_log("paft demo on %d rank%s, in %s\n  base model: %s\n  data: %d SFT demonstrations and "
             "%d preference pairs (generated; held-out: 128 + 128)\n",
             world, world > 1 ? "s" : "", outdir, summary, 1024, 1024);
    train_install_signal_handlers();

    /* baselines, each on all ranks */
    char sft_adapter[1100], sft_l1_adapter[1100], dpo_adapter[1100], seq_adapter[1100];
    snprintf(sft_adapter, sizeof sft_adapter, "%s/runs/sft/sft/adapter.h5", outdir);
    snprintf(sft_l1_adapter, sizeof sft_l1_adapter, "%s/runs/sft_l1/sft/adapter.h5", outdir);
    snprintf(dpo_adapter, sizeof dpo_adapter, "%s/runs/dpo/pref/adapter.h5", outdir);
    snprintf(seq_adapter, sizeof seq_adapter, "%s/runs/sequential/pref/adapter.h5", outdir);
    train_all(&cfg, outdir, "sft", STAGE_SFT, 0, NULL);
    train_all(&cfg, outdir, "sft_l1", STAGE_SFT, cfg.sft.l1, NULL);
    train_all(&cfg, outdir, "dpo", STAGE_PREF, 0, NULL);
    train_all(&cfg, outdir, "sequential", STAGE_PREF, 0, sft_adapter);

    /* PAFT: SFT with L1 in parallel with DPO, in two groups (needs two ranks) */
    char paft_dir[1024], paft_sft[1100], paft_pref[1100];
    snprintf(paft_dir, sizeof paft_dir, "%s/runs/paft", outdir);
    snprintf(paft_sft, sizeof paft_sft, "%s/sft/adapter.h5", paft_dir);
    snprintf(paft_pref, sizeof paft_pref, "%s/pref/adapter.h5", paft_dir);
    if (world >= 2) {
        paft_log("\n== PAFT: paft run %s/demo.ini (%d SFT ranks with L1 || %d DPO ranks)\n", outdir,
                 world / 2, world - world / 2);
        int is_sft, n_sft;
        MPI_Comm group = layout_split_world(0, cfg.parallel.tp, &is_sft, &n_sft);
        train_stage(&cfg, is_sft ? STAGE_SFT : STAGE_PREF, group);
        CHECK_MPI(MPI_Comm_free(&group));
        CHECK_MPI(MPI_Barrier(MPI_COMM_WORLD));
    } else {
        paft_log("\n== PAFT on 1 rank: the two stages one after the other (run the demo under "
                 "mpirun -np 4 to see them train in parallel)\n");
        train_stage(&cfg, STAGE_SFT, MPI_COMM_WORLD);
        train_stage(&cfg, STAGE_PREF, MPI_COMM_WORLD);
    }

    /* merges: PAFT's sparse SFT delta with DPO's, and plain SFT's with DPO's, every method */
    DemoRow *rows = paft_calloc(MAX_ROWS, sizeof(DemoRow));
    int n_rows = 0;
    const struct { const char *label; const char *path; const char *sft, *pref; } singles[] = {
        {"base model", cfg.model.path, NULL, NULL},
        {"SFT", sft_adapter, sft_adapter, NULL},
        {"SFT + L1 (sparse)", sft_l1_adapter, sft_l1_adapter, NULL},
        {"DPO", dpo_adapter, NULL, dpo_adapter},
        {"SFT -> DPO (sequential)", seq_adapter, NULL, seq_adapter},
    };
    for (int i = 0; i < 5; i++) {
        DemoRow *r = &rows[n_rows++];
        snprintf(r->label, sizeof r->label, "%s", singles[i].label);
        snprintf(r->path, sizeof r->path, "%s", singles[i].path);
        r->sparsity_sft = singles[i].sft ? adapter_delta_sparsity(singles[i].sft) : -1;
        r->sparsity_pref = singles[i].pref ? adapter_delta_sparsity(singles[i].pref) : -1;
    }
    char merged_dir[1100];
    snprintf(merged_dir, sizeof merged_dir, "%s/merged", outdir);
    if (rank == 0 && mkdir(merged_dir, 0777) != 0 && errno != EEXIST)
        PAFT_FATAL("%s: cannot create directory: %s", merged_dir, strerror(errno));
    for (int variant = 0; variant < 2; variant++)
        for (int m = 0; m < N_METHODS; m++) {
            Config mcfg = cfg;
            DemoRow *r = &rows[n_rows++];
            const char *s = variant == 0 ? paft_sft : sft_adapter;
            const char *p = variant == 0 ? paft_pref : dpo_adapter;
            snprintf(r->path, sizeof r->path, "%.900s/%s-%s.h5", merged_dir,
                     variant == 0 ? "paft" : "paft-no-l1", demo_methods[m]);
            snprintf(r->label, sizeof r->label, "PAFT%s, %s", variant == 0 ? "" : " without L1",
                     demo_methods[m]);
            config_set(&mcfg, "merge", "method", demo_methods[m], "demo");
            config_set(&mcfg, "merge", "sft_adapter", s, "demo");
            config_set(&mcfg, "merge", "pref_adapter", p, "demo");
            config_set(&mcfg, "merge", "out", r->path, "demo");
            if (m == 0 && variant == 0)
                paft_log("\n== merges: paft merge %s/demo.ini merge.method=M merge.sft_adapter=... "
                         "merge.pref_adapter=... merge.out=%s/...\n", outdir, merged_dir);
            /* always merged again (milliseconds at this size): a merged file left by an earlier
             * run may come from other adapters (retrained since, or from an older paft), and
             * nothing would tell its metrics from those of these adapters */
            merge_stage_run(&mcfg, MPI_COMM_WORLD);
            CHECK_MPI(MPI_Barrier(MPI_COMM_WORLD));
            r->sparsity_sft = adapter_delta_sparsity(s);
            r->sparsity_pref = adapter_delta_sparsity(p);
        }

    /* evaluate every model on the held-out sets */
    paft_log("\n== evaluation: paft eval %s/demo.ini model=PATH (held-out %s, %s)\n", outdir,
             cfg.eval.sft_data, cfg.eval.pref_data);
    TokenData *sft_val = token_data_open(cfg.eval.sft_data, TOKEN_DATA_SFT, SYNTH_VOCAB);
    TokenData *pref_val = token_data_open(cfg.eval.pref_data, TOKEN_DATA_PREF, SYNTH_VOCAB);
    for (int i = 0; i < n_rows; i++)
        evaluate_model_path(&cfg, rows[i].path, sft_val, pref_val, MPI_COMM_WORLD, &rows[i].sft,
                            &rows[i].pref);
    token_data_close(sft_val);
    token_data_close(pref_val);

    if (rank == 0) {
        printf("\nResults (held-out; SFT NLL: mean over answer tokens of the SFT domain; preference: "
               "implicit-reward accuracy and margin against the base, beta %g):\n\n", cfg.pref.beta);
        print_table(stdout, rows, n_rows);
        snprintf(path, sizeof path, "%s/results.md", outdir);
        FILE *f = fopen(path, "w");
        if (!f) PAFT_FATAL("%s: cannot create: %s", path, strerror(errno));
        print_table(f, rows, n_rows);
        fclose(f);
        snprintf(path, sizeof path, "%s/results.json", outdir);
        f = fopen(path, "w");
        if (!f) PAFT_FATAL("%s: cannot create: %s", path, strerror(errno));
        fprintf(f, "[\n");
        for (int i = 0; i < n_rows; i++)
            fprintf(f, "  {\"model\": \"%s\", \"path\": \"%s\", \"sft_nll\": %.8g, \"pref_accuracy\": "
                       "%.8g, \"pref_margin\": %.8g, \"sparsity_sft\": %.6g, \"sparsity_pref\": %.6g}%s\n",
                    rows[i].label, rows[i].path, rows[i].sft.nll, rows[i].pref.accuracy,
                    rows[i].pref.margin, rows[i].sparsity_sft, rows[i].sparsity_pref,
                    i + 1 < n_rows ? "," : "");
        fprintf(f, "]\n");
        fclose(f);
        printf("\n(%s/results.md and results.json; every run directory under %s/runs; demo done in "
               "%.1f s)\n", outdir, outdir, paft_seconds() - t0);
    }
    free(rows);
    return 0;
}
