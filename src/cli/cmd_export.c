/*
 * cmd_export.c - `paft export MERGED.h5 OUTDIR [max_shard_size=5GB]`: a merged model as a Hugging
 * Face directory that transformers (and lm-eval-harness) load:
 *
 *   config.json                            the base's config.json text, as recorded in MERGED.h5
 *   model.safetensors                      every tensor in BF16, when it fits in one shard, else
 *   model-0000i-of-0000N.safetensors       shards of at most max_shard_size bytes of tensor data
 *   model.safetensors.index.json           (a tensor larger than the limit gets a shard alone)
 *   tokenizer files, generation_config.json  copied from the base directory recorded in the file
 *
 * Rank 0 validates the merged file and the output directory before anything is written; then the
 * shards are written by the ranks in turn (shard i by rank i mod N), each to PATH.tmp.<pid> and
 * renamed when complete. fp32 weights are rounded to bf16 (nearest even).
 */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/commands.h"
#include "io/h5file.h"
#include "io/merged_h5.h"
#include "io/safetensors.h"
#include "merge/merge_stage.h"
#include "model/model_config.h"
#include "parallel/collectives.h"
#include "util/common.h"

#define DEFAULT_MAX_SHARD_BYTES 5000000000ULL /* transformers' "5GB" (decimal) */
#define EXPORT_PIECE_ELEMENTS ((int64_t)1 << 22)

typedef struct {
    char *name; /* HF tensor name = /weights/<name> */
    int ndim;
    int64_t rows, cols; /* cols 1 for a 1-D tensor */
    H5FloatType stored;
    uint64_t nbytes; /* in the export (bf16) */
    int shard;
    uint64_t offset; /* of its data in the shard's data section */
} ExportTensor;

/* "5GB", "200MB", "64KB" (decimal units, as transformers' max_shard_size) or a byte count. */
static uint64_t parse_size(const char *text) {
    char *end = NULL;
    errno = 0;
    double value = strtod(text, &end);
    double unit = 1;
    if (end && strcmp(end, "GB") == 0) unit = 1e9;
    else if (end && strcmp(end, "MB") == 0) unit = 1e6;
    else if (end && strcmp(end, "KB") == 0) unit = 1e3;
    else if (!end || *end != '\0') unit = 0;
    if (errno || end == text || unit == 0 || !(value * unit >= 1) || value * unit > 1e18)
        PAFT_FATAL("command line: max_shard_size=%s (expected a size such as 5GB, 500MB, 64KB or "
                   "a byte count, at least 1)", text);
    return (uint64_t)(value * unit);
}

/* ---- reading and validating the merged file ----------------------------------------------------- */

/* Every rank: the tensor list (sorted names) of an already validated merged file. */
static ExportTensor *list_tensors(H5File *f, int *n_out) {
    int n = 0;
    char **names = h5_list_group(f, "/weights", &n);
    ExportTensor *tensors = paft_calloc((size_t)PAFT_MAX(n, 1), sizeof(ExportTensor));
    char dataset[512];
    for (int i = 0; i < n; i++) {
        ExportTensor *t = &tensors[i];
        t->name = names[i];
        snprintf(dataset, sizeof dataset, "/weights/%s", t->name);
        int64_t dims[2];
        t->ndim = h5_shape(f, dataset, dims);
        t->rows = dims[0];
        t->cols = t->ndim == 2 ? dims[1] : 1;
        t->stored = h5_dataset_float_type(f, dataset);
        t->nbytes = (uint64_t)(t->rows * t->cols) * 2;
    }
    free(names);
    *n_out = n;
    return tensors;
}

/* Rank 0: the file is a paft merged model whose /weights hold exactly the tensors its config
 * describes, at their shapes, in fp32 or bf16. */
static void validate_merged(H5File *f, const char *path, ExportTensor *tensors, int n) {
    char *config_text = h5_get_attr_string(f, "config");
    ModelConfig config;
    char source[1100];
    snprintf(source, sizeof source, "%s (attribute config)", path);
    model_config_parse(&config, config_text, source);
    free(config_text);
    TensorView *views;
    int n_views = model_weight_views(&config, &views);
    for (int v = 0; v < n_views; v++) {
        const ExportTensor *t = NULL;
        for (int i = 0; i < n && !t; i++)
            if (strcmp(tensors[i].name, views[v].name) == 0) t = &tensors[i];
        if (!t) PAFT_FATAL("%s: missing dataset /weights/%s", path, views[v].name);
        const int want_ndim = views[v].cols == 1 ? 1 : 2;
        if (t->ndim != want_ndim || t->rows != views[v].rows || t->cols != views[v].cols)
            PAFT_FATAL("%s: /weights/%s is %lld x %lld, but its config describes %lld x %lld", path,
                       t->name, (long long)t->rows, (long long)t->cols, (long long)views[v].rows,
                       (long long)views[v].cols);
    }
    if (n != n_views)
        for (int i = 0; i < n; i++) {
            int known = 0;
            for (int v = 0; v < n_views && !known; v++) known = strcmp(tensors[i].name, views[v].name) == 0;
            if (!known)
                PAFT_FATAL("%s: /weights/%s is not a tensor of the %s its config describes", path,
                           tensors[i].name, config.architecture);
        }
    free(views);
    model_config_free(&config);
}

/* Rank 0: OUTDIR is new (created here) or an empty directory, so no stale shard can mix in. */
/* Rank 0: OUTDIR is new or an empty directory. The files are written into a staging directory
 * beside it (OUTDIR.tmp.PID) that takes OUTDIR's name only when every file is in place, so a failed
 * export never leaves a half-written model under OUTDIR (the staging directory stays, to delete).
 * Returns the staging directory's path, created. */
static char *prepare_outdir(const char *outdir) {
    if (paft_path_exists(outdir)) {
        if (!paft_is_directory(outdir)) PAFT_FATAL("%s: OUTDIR exists and is not a directory", outdir);
        DIR *d = opendir(outdir);
        if (!d) PAFT_FATAL("%s: cannot read the directory: %s", outdir, strerror(errno));
        struct dirent *e;
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                PAFT_FATAL("%s: OUTDIR is not empty (it holds %s); export writes into a new or "
                           "empty directory", outdir, e->d_name);
        closedir(d);
    }
    char *staging = paft_malloc(strlen(outdir) + 32);
    sprintf(staging, "%s.tmp.%ld", outdir, (long)getpid());
    if (mkdir(staging, 0777) != 0)
        PAFT_FATAL("%s: cannot create the staging directory for OUTDIR %s: %s", staging, outdir,
                   strerror(errno));
    return staging;
}

/* ---- writing ------------------------------------------------------------------------------------ */

/* Pack the tensors, in order, into shards of at most max_bytes of data. */
static int plan_shards(ExportTensor *tensors, int n, uint64_t max_bytes) {
    int shard = 0;
    uint64_t used = 0;
    for (int i = 0; i < n; i++) {
        if (used > 0 && used + tensors[i].nbytes > max_bytes) {
            shard++;
            used = 0;
        }
        tensors[i].shard = shard;
        tensors[i].offset = used;
        used += tensors[i].nbytes;
    }
    return n > 0 ? shard + 1 : 0;
}

static char *shard_name(int shard, int n_shards) {
    char buf[64];
    if (n_shards == 1) snprintf(buf, sizeof buf, "model.safetensors");
    else snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", shard + 1, n_shards);
    return paft_strdup(buf);
}

static void write_all(FILE *fp, const void *data, size_t n, const char *path) {
    if (n && fwrite(data, 1, n, fp) != n) PAFT_FATAL("%s: write failed (disk full?): %s", path, strerror(errno));
}

/* Flush, sync and rename a finished temporary file into place. */
static void finish_file(FILE *fp, const char *tmp, const char *path) {
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0 || fclose(fp) != 0)
        PAFT_FATAL("%s: write failed: %s", tmp, strerror(errno));
    if (rename(tmp, path) != 0) PAFT_FATAL("%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
}

static char *tmp_name(const char *path) {
    size_t n = strlen(path) + 32;
    char *tmp = paft_malloc(n);
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    return tmp;
}

/* One safetensors file: the JSON header (padded with spaces to a multiple of 8 bytes, as the
 * reference writer does), then each tensor's bf16 data, read from the merged file in pieces. */
static void write_shard(H5File *f, const ExportTensor *tensors, int n, int shard, const char *path) {
    cJSON *header = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(header, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt"); /* transformers refuses files without it */
    for (int i = 0; i < n; i++) {
        const ExportTensor *t = &tensors[i];
        if (t->shard != shard) continue;
        cJSON *entry = cJSON_AddObjectToObject(header, t->name);
        cJSON_AddStringToObject(entry, "dtype", "BF16");
        cJSON *shape = cJSON_AddArrayToObject(entry, "shape");
        cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->rows));
        if (t->ndim == 2) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->cols));
        cJSON *offsets = cJSON_AddArrayToObject(entry, "data_offsets");
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)t->offset));
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)(t->offset + t->nbytes)));
    }
    char *json = cJSON_PrintUnformatted(header);
    cJSON_Delete(header);
    size_t len = strlen(json), padded = (len + 7) / 8 * 8;
    char *tmp = tmp_name(path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) PAFT_FATAL("%s: cannot create: %s", tmp, strerror(errno));
    unsigned char len_bytes[8];
    for (int b = 0; b < 8; b++) len_bytes[b] = (unsigned char)((uint64_t)padded >> (8 * b));
    write_all(fp, len_bytes, 8, tmp);
    write_all(fp, json, len, tmp);
    for (size_t i = len; i < padded; i++) write_all(fp, " ", 1, tmp);
    free(json);

    uint16_t *bits = paft_malloc((size_t)EXPORT_PIECE_ELEMENTS * sizeof(uint16_t));
    float *values = paft_malloc((size_t)EXPORT_PIECE_ELEMENTS * sizeof(float));
    char dataset[512];
    for (int i = 0; i < n; i++) {
        const ExportTensor *t = &tensors[i];
        if (t->shard != shard) continue;
        snprintf(dataset, sizeof dataset, "/weights/%s", t->name);
        const int64_t piece = PAFT_MAX((int64_t)1, EXPORT_PIECE_ELEMENTS / t->cols);
        if (piece * t->cols > EXPORT_PIECE_ELEMENTS) {
            bits = paft_realloc(bits, (size_t)(piece * t->cols) * sizeof(uint16_t));
            values = paft_realloc(values, (size_t)(piece * t->cols) * sizeof(float));
        }
        for (int64_t row = 0; row < t->rows; row += piece) {
            int64_t count = PAFT_MIN(piece, t->rows - row);
            int64_t gcols = t->ndim == 2 ? t->cols : 0;
            H5Block block = {t->rows, gcols, row, 0, count, gcols};
            size_t numel = (size_t)(count * t->cols);
            if (t->stored == H5_BFLOAT16) {
                h5_read_float_block(f, dataset, &block, H5_BFLOAT16, bits);
            } else {
                h5_read_float_block(f, dataset, &block, H5_FLOAT32, values);
                for (size_t k = 0; k < numel; k++) bits[k] = fp32_to_bf16(values[k]);
            }
            /* safetensors is little-endian, as is every machine paft runs on */
            write_all(fp, bits, numel * sizeof(uint16_t), tmp);
        }
    }
    free(bits);
    free(values);
    finish_file(fp, tmp, path);
    free(tmp);
}

static void write_text_file(const char *path, const char *text) {
    char *tmp = tmp_name(path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) PAFT_FATAL("%s: cannot create: %s", tmp, strerror(errno));
    write_all(fp, text, strlen(text), tmp);
    finish_file(fp, tmp, path);
    free(tmp);
}

static void write_index(const char *outdir, const ExportTensor *tensors, int n, int n_shards) {
    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += tensors[i].nbytes;
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", (double)total);
    cJSON *map = cJSON_AddObjectToObject(root, "weight_map");
    for (int i = 0; i < n; i++) {
        char *file = shard_name(tensors[i].shard, n_shards);
        cJSON_AddStringToObject(map, tensors[i].name, file);
        free(file);
    }
    char *json = cJSON_Print(root);
    cJSON_Delete(root);
    char *path = paft_path_join(outdir, "model.safetensors.index.json");
    size_t len = strlen(json);
    json = paft_realloc(json, len + 2);
    memcpy(json + len, "\n", 2);
    write_text_file(path, json);
    free(path);
    free(json);
}

/* Copy the tokenizer's files (those present) from the base model's directory. */
static int copy_tokenizer_files(const char *base_model, const char *outdir) {
    static const char *const files[] = {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
        "generation_config.json", "vocab.json", "merges.txt", "added_tokens.json",
        "chat_template.jinja",
    };
    char *dir = paft_strdup(base_model);
    if (!paft_is_directory(dir)) { /* a single .safetensors file: its directory */
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        else snprintf(dir, 2, ".");
    }
    if (!paft_is_directory(dir)) {
        paft_log("paft: note: the base model's directory %s is gone: no tokenizer files copied\n", dir);
        free(dir);
        return 0;
    }
    int copied = 0;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char *src = paft_path_join(dir, files[i]);
        if (paft_path_exists(src)) {
            size_t len = 0;
            char *data = paft_read_file(src, (size_t)1 << 30, &len); /* tokenizer.model is binary */
            char *dst = paft_path_join(outdir, files[i]);
            char *tmp = tmp_name(dst);
            FILE *fp = fopen(tmp, "wb");
            if (!fp) PAFT_FATAL("%s: cannot create: %s", tmp, strerror(errno));
            write_all(fp, data, len, tmp);
            finish_file(fp, tmp, dst);
            free(tmp);
            free(dst);
            free(data);
            copied++;
        }
        free(src);
    }
    free(dir);
    return copied;
}

int cmd_export(int argc, char **argv) {
    if (argc < 3 || argc > 4)
        PAFT_FATAL("usage: paft export MERGED.h5 OUTDIR [max_shard_size=5GB]");
    const char *merged = argv[1];
    char *outdir = paft_strdup(argv[2]); /* without trailing slashes: OUTDIR.tmp.PID is its sibling */
    for (size_t len = strlen(outdir); len > 1 && outdir[len - 1] == '/'; len--) outdir[len - 1] = '\0';
    uint64_t max_shard = DEFAULT_MAX_SHARD_BYTES;
    if (argc == 4) {
        if (strncmp(argv[3], "max_shard_size=", 15) != 0)
            PAFT_FATAL("command line: unknown argument '%s' for 'paft export' (max_shard_size=...)", argv[3]);
        max_shard = parse_size(argv[3] + 15);
    }
    int rank, size;
    CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    const double t_start = MPI_Wtime();

    /* every rank reads the merged file on its own (MPI_COMM_SELF): the shards are independent */
    H5File f;
    char *staging = NULL;
    if (rank == 0) {
        h5_open_read(&f, merged, MPI_COMM_SELF);
        if (H5Aexists(f.file, "format") <= 0)
            PAFT_FATAL("%s: HDF5 file without a 'format' attribute: not a paft merged model (%s)",
                       merged, MERGED_FORMAT);
        char *format = h5_get_attr_string(&f, "format");
        if (strcmp(format, MERGED_FORMAT) != 0)
            PAFT_FATAL("%s: format '%s', expected a paft merged model (%s)", merged, format,
                       MERGED_FORMAT);
        free(format);
        int n = 0;
        ExportTensor *tensors = list_tensors(&f, &n);
        validate_merged(&f, merged, tensors, n);
        for (int i = 0; i < n; i++) free(tensors[i].name);
        free(tensors);
        staging = prepare_outdir(outdir);
    }
    staging = broadcast_string(staging, MPI_COMM_WORLD); /* also: validated, the staging directory exists */
    if (rank != 0) h5_open_read(&f, merged, MPI_COMM_SELF);
    int n = 0;
    ExportTensor *tensors = list_tensors(&f, &n);
    int n_shards = plan_shards(tensors, n, max_shard);
    for (int shard = rank; shard < n_shards; shard += size) {
        char *name = shard_name(shard, n_shards);
        char *path = paft_path_join(staging, name);
        write_shard(&f, tensors, n, shard, path);
        free(path);
        free(name);
    }
    int copied = 0;
    if (rank == 0) {
        if (n_shards > 1) write_index(staging, tensors, n, n_shards);
        char *config_text = h5_get_attr_string(&f, "config");
        char *config_path = paft_path_join(staging, "config.json");
        write_text_file(config_path, config_text);
        free(config_path);
        free(config_text);
        char *base_model = h5_get_attr_string(&f, "base_model");
        copied = copy_tokenizer_files(base_model, staging);
        free(base_model);
    }
    h5_close(&f);
    CHECK_MPI(MPI_Barrier(MPI_COMM_WORLD)); /* every shard renamed into place */
    if (rank == 0 && rename(staging, outdir) != 0) /* OUTDIR absent or empty: rename replaces it */
        PAFT_FATAL("%s: cannot rename the finished export %s to it: %s", outdir, staging,
                   strerror(errno));
    free(staging);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += tensors[i].nbytes;
    paft_log("export: %s -> %s: %d tensors, %llu bytes of bf16 in %d shard%s%s, %d tokenizer "
             "file%s copied (%.2f s)\n", merged, outdir, n, (unsigned long long)total, n_shards,
             n_shards == 1 ? "" : "s", n_shards > 1 ? " + index" : "", copied,
             copied == 1 ? "" : "s", MPI_Wtime() - t_start);
    for (int i = 0; i < n; i++) free(tensors[i].name);
    free(tensors);
    free(outdir);
    return 0;
}
