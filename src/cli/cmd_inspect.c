/*
 * cmd_inspect.c - `paft inspect PATH`: what a model directory or file holds.
 *
 * The kind of PATH is recognised from what it is (a directory), its extension or its first bytes,
 * through the table `inspect_kinds` below: supporting another kind of file is one more entry with
 * its recogniser and its printer. Every printer validates the whole file first (the readers do),
 * so a corrupt file is an error and never a partial listing. Rank 0 does the work and prints;
 * the other ranks of an mpirun only wait for it.
 */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "data/token_data.h"
#include "io/adapter.h"
#include "io/merged_h5.h"
#include "io/safetensors.h"
#include "model/model_config.h"
#include "model/peft.h"
#include "util/common.h"

/* What the recognisers look at: the path, whether it is a directory, and a file's first bytes. */
typedef struct {
    const char *path;
    int is_directory;
    const char *extension; /* after the last '.' of the file name, "" if none */
    unsigned char magic[16];
    size_t magic_len; /* how many of magic[] the file had (0 for a directory) */
} InspectTarget;

typedef struct {
    const char *name;
    int (*matches)(const InspectTarget *target);
    void (*print)(const char *path);
} InspectKind;

/* ---- safetensors checkpoints ----------------------------------------------------------------- */

/* "1.24 B", "137 M", "4.10 K": a reading aid next to the exact count. */
static void human_count(int64_t n, char *buf, size_t len) {
    if (n >= 1000000000) snprintf(buf, len, "%.2f B", (double)n / 1e9);
    else if (n >= 1000000) snprintf(buf, len, "%.2f M", (double)n / 1e6);
    else if (n >= 1000) snprintf(buf, len, "%.2f K", (double)n / 1e3);
    else snprintf(buf, len, "%lld", (long long)n);
}

static const char *file_name_of(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Prints an opened (so already validated) checkpoint, then closes it. */
static void print_checkpoint(Checkpoint *ckpt) {
    int64_t parameters = checkpoint_parameter_count(ckpt);
    char human[32];
    human_count(parameters, human, sizeof human);
    paft_log("files: %d safetensors file%s\n", ckpt->n_shards, ckpt->n_shards == 1 ? "" : "s");
    paft_log("parameters: %lld (%s)\n", (long long)parameters, human);
    paft_log("tensors: %d\n", ckpt->n_tensors);

    int name_width = 4;
    for (int i = 0; i < ckpt->n_tensors; i++)
        name_width = PAFT_MAX(name_width, (int)strlen(ckpt->tensors[i].name));
    paft_log("  %-*s  %-5s  %s%s\n", name_width, "name", "dtype", "shape",
             ckpt->n_shards > 1 ? "  (file)" : "");
    for (int i = 0; i < ckpt->n_tensors; i++) {
        const TensorInfo *t = &ckpt->tensors[i];
        char shape[256];
        tensor_shape_string(t, shape, sizeof shape);
        if (ckpt->n_shards > 1)
            paft_log("  %-*s  %-5s  %-20s  %s\n", name_width, t->name, dtype_name(t->dtype), shape,
                     file_name_of(ckpt->shard_paths[t->shard]));
        else
            paft_log("  %-*s  %-5s  %s\n", name_width, t->name, dtype_name(t->dtype), shape);
    }

    /* Summary by dtype, in the order the dtypes first appear. */
    paft_log("by dtype:\n");
    int done[64] = {0};
    for (int i = 0; i < ckpt->n_tensors; i++) {
        Dtype dtype = ckpt->tensors[i].dtype;
        if ((int)dtype < 0 || (int)dtype >= 64 || done[dtype]) continue;
        done[dtype] = 1;
        int count = 0;
        int64_t numel = 0;
        uint64_t bytes = 0;
        for (int j = i; j < ckpt->n_tensors; j++)
            if (ckpt->tensors[j].dtype == dtype) {
                count++;
                numel += ckpt->tensors[j].numel;
                bytes += ckpt->tensors[j].nbytes;
            }
        paft_log("  %-5s %6d tensors  %14lld parameters  %16llu bytes\n", dtype_name(dtype),
                 count, (long long)numel, (unsigned long long)bytes);
    }
    checkpoint_close(ckpt);
}

/* A PEFT adapter directory (<stage>/peft/, or one from another tool); every other directory is
 * taken for a model (and would report a PEFT one as a model without model.safetensors) */
static int is_peft_directory(const InspectTarget *target) {
    return target->is_directory && peft_is_adapter_dir(target->path);
}

static void print_peft_directory(const char *path) { peft_describe(path, stdout); }

static int is_hf_directory(const InspectTarget *target) {
    return target->is_directory && !is_peft_directory(target);
}

static void print_hf_directory(const char *path) {
    /* Read and validate everything before the first line is printed. */
    char architecture[640] = "architecture: unknown (no config.json)";
    char *config_path = paft_path_join(path, "config.json");
    Checkpoint ckpt;
    checkpoint_open(&ckpt, path);
    if (paft_path_exists(config_path)) {
        ModelConfig cfg;
        model_config_load(&cfg, config_path);
        model_check_checkpoint(&ckpt, &cfg); /* what paft would refuse to load, refused here too */
        char summary[512];
        model_config_describe(&cfg, summary, sizeof summary);
        snprintf(architecture, sizeof architecture, "architecture: %s (%s)", cfg.architecture,
                 summary);
        model_config_free(&cfg);
    }
    free(config_path);

    paft_log("%s: Hugging Face model directory\n%s\n", path, architecture);
    print_checkpoint(&ckpt);
}

/* By extension, or by content: an 8-byte little-endian header length below the reference's
 * 100 MB limit followed by the '{' that opens the JSON header. */
static int is_safetensors_file(const InspectTarget *target) {
    if (target->is_directory) return 0;
    if (strcmp(target->extension, "safetensors") == 0) return 1;
    if (target->magic_len < 9) return 0;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | target->magic[i];
    return header_len >= 2 && header_len <= 100000000ULL && target->magic[8] == '{';
}

static void print_safetensors_file(const char *path) {
    Checkpoint ckpt;
    checkpoint_open(&ckpt, path);
    paft_log("%s: safetensors file\n", path);
    print_checkpoint(&ckpt);
}

/* ---- the kinds, in the order they are tried -----------------------------------------------------
 * Later kinds (paft token data .bin, adapter and merged .h5 files) go here. */
static int is_token_data(const InspectTarget *t) {
    return !t->is_directory && t->magic_len >= 8 && memcmp(t->magic, TOKEN_DATA_MAGIC, 8) == 0;
}

static void print_token_data(const char *path) {
    TokenData *data = token_data_open(path, TOKEN_DATA_ANY, 0);
    token_data_describe(data, stdout);
    token_data_close(data);
}

static int is_hdf5(const InspectTarget *t) {
    return !t->is_directory && adapter_is_hdf5(t->magic, t->magic_len);
}

/* paft's HDF5 files say what they are in the root attribute "format". */
static void print_hdf5(const char *path) {
    if (merged_is_merged_file(path)) merged_describe(path, stdout);
    else adapter_describe(path, stdout);
}

static const InspectKind inspect_kinds[] = {
    {"Hugging Face model directory", is_hf_directory, print_hf_directory},
    {"safetensors file", is_safetensors_file, print_safetensors_file},
    {"token data file", is_token_data, print_token_data},
    {"paft HDF5 file (adapter, checkpoint, merged model)", is_hdf5, print_hdf5},
    {"PEFT adapter directory", is_peft_directory, print_peft_directory},
};

static void read_target(InspectTarget *target, const char *path) {
    memset(target, 0, sizeof *target);
    target->path = path;
    if (!paft_path_exists(path)) PAFT_FATAL("%s: no such file or directory", path);
    target->is_directory = paft_is_directory(path);
    const char *name = file_name_of(path);
    const char *dot = strrchr(name, '.');
    target->extension = dot ? dot + 1 : "";
    if (target->is_directory) return;
    FILE *f = fopen(path, "rb");
    if (!f) PAFT_FATAL("%s: cannot open", path);
    target->magic_len = fread(target->magic, 1, sizeof target->magic, f);
    fclose(f);
}

static void inspect_path(const char *path) {
    InspectTarget target;
    read_target(&target, path);
    int n_kinds = (int)(sizeof inspect_kinds / sizeof inspect_kinds[0]);
    for (int i = 0; i < n_kinds; i++)
        if (inspect_kinds[i].matches(&target)) {
            inspect_kinds[i].print(path);
            return;
        }
    if (!target.is_directory && target.magic_len == 0)
        PAFT_FATAL("%s: the file is empty (nothing to inspect)", path);
    char known[512] = "";
    for (int i = 0; i < n_kinds; i++)
        snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "",
                 inspect_kinds[i].name);
    PAFT_FATAL("%s: unknown kind of file (paft inspect reads: %s)", path, known);
}

int cmd_inspect(int argc, char **argv) {
    if (argc != 2) PAFT_FATAL("usage: paft inspect PATH (one model directory or file)");
    if (paft_world_rank() == 0) inspect_path(argv[1]);
    /* An error on rank 0 aborts the whole job; otherwise everyone leaves together. */
    CHECK_MPI(MPI_Barrier(MPI_COMM_WORLD));
    return 0;
}
