/*
 * safetensors.c - reading and writing Hugging Face safetensors files and sharded checkpoints.
 *
 * Reading trusts nothing: every header is validated in full (see safetensors.h) before any
 * tensor is handed out, and tensor data is read with pread at the validated offsets, so a shard
 * of tens of GB is never loaded whole and several ranks can share the file descriptors' files.
 * The checks follow the reference implementation (the Rust `safetensors` crate that transformers
 * uses): a file we accept is a file transformers accepts, and a file we write loads there.
 */
#include "io/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (safetensors data is little-endian)"
#endif

/* The reference implementation refuses headers above 100 MB; a real 405B model's is ~1 MB. */
#define SAFETENSORS_MAX_HEADER_BYTES 100000000ULL
#define INDEX_MAX_BYTES (100u << 20)
/* Tensors larger than this would overflow the offset arithmetic below; no real file comes near. */
#define MAX_TENSOR_BYTES (1ULL << 62)

/* ---- dtypes ---------------------------------------------------------------------------------- */

static const struct {
    Dtype dtype;
    const char *name;
    int size;
} dtype_table[] = {
    {DTYPE_F32, "F32", 4}, {DTYPE_F16, "F16", 2}, {DTYPE_BF16, "BF16", 2}, {DTYPE_F64, "F64", 8},
    {DTYPE_I64, "I64", 8}, {DTYPE_I32, "I32", 4}, {DTYPE_I16, "I16", 2},  {DTYPE_I8, "I8", 1},
    {DTYPE_U8, "U8", 1},   {DTYPE_BOOL, "BOOL", 1},
};
#define N_DTYPES ((int)(sizeof dtype_table / sizeof dtype_table[0]))

const char *dtype_name(Dtype dtype) {
    for (int i = 0; i < N_DTYPES; i++)
        if (dtype_table[i].dtype == dtype) return dtype_table[i].name;
    return "?";
}

int dtype_size(Dtype dtype) {
    for (int i = 0; i < N_DTYPES; i++)
        if (dtype_table[i].dtype == dtype) return dtype_table[i].size;
    return 0;
}

int dtype_from_name(const char *name, Dtype *dtype) {
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(dtype_table[i].name, name) == 0) {
            *dtype = dtype_table[i].dtype;
            return 1;
        }
    return 0;
}

static int dtype_is_float(Dtype dtype) {
    return dtype == DTYPE_F32 || dtype == DTYPE_F16 || dtype == DTYPE_BF16 || dtype == DTYPE_F64;
}

/* ---- 16-bit floats --------------------------------------------------------------------------- */

static uint32_t float_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static float bits_float(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

uint16_t fp32_to_bf16(float x) {
    uint32_t u = float_bits(x);
    /* NaN: keep the sign and the top mantissa bits, and force a mantissa bit so that truncation
     * cannot turn a NaN whose payload sits in the low bits into an infinity. */
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    /* Round to nearest even: add 0x7fff plus the lowest kept bit; a carry out of the mantissa
     * correctly bumps the exponent (up to infinity for the largest finite floats). */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float bf16_to_fp32(uint16_t x) { return bits_float((uint32_t)x << 16); }

uint16_t fp32_to_fp16(float x) {
    uint32_t u = float_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    int exponent = (int)((u >> 23) & 0xffu);
    uint32_t mantissa = u & 0x7fffffu;

    if (exponent == 0xff) /* inf stays inf, NaN stays a (quiet) NaN */
        return (uint16_t)(sign | 0x7c00u | (mantissa ? 0x0200u | (mantissa >> 13) : 0u));

    int e = exponent - 127 + 15; /* the fp16 biased exponent */
    if (e >= 31) return (uint16_t)(sign | 0x7c00u); /* too large: infinity */
    if (e <= 0) {
        /* Subnormal (or zero) in fp16: value = m * 2^-24 with m = significand >> (14 - e). Below
         * 2^-25 everything rounds to zero (e < -10 means |x| < 2^-25). */
        if (e < -10) return sign;
        uint32_t significand = mantissa | 0x800000u;
        int shift = 14 - e;
        uint32_t h = significand >> shift;
        uint32_t rest = significand & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1);
        if (rest > half || (rest == half && (h & 1u))) h++; /* may become the smallest normal */
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)e << 10) | (mantissa >> 13);
    uint32_t rest = mantissa & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++; /* a carry may reach infinity */
    return (uint16_t)(sign | h);
}

float fp16_to_fp32(uint16_t x) {
    uint32_t sign = ((uint32_t)x & 0x8000u) << 16;
    uint32_t exponent = ((uint32_t)x >> 10) & 0x1fu;
    uint32_t mantissa = (uint32_t)x & 0x3ffu;
    if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));
    if (exponent == 0) {
        /* zero or subnormal: mantissa * 2^-24, exact in fp32 */
        float magnitude = ldexpf((float)mantissa, -24);
        return sign ? -magnitude : magnitude;
    }
    return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

/* ---- low-level file access ------------------------------------------------------------------- */

/* pread exactly n bytes (pread may return less, e.g. above 2 GB per call on Linux). */
static void pread_full(int fd, void *buf, size_t n, uint64_t offset, const char *path) {
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = pread(fd, p, n, (off_t)offset);
        if (got < 0) {
            if (errno == EINTR) continue;
            PAFT_FATAL("%s: read of %zu bytes at offset %llu failed: %s", path, n,
                       (unsigned long long)offset, strerror(errno));
        }
        if (got == 0)
            PAFT_FATAL("%s: unexpected end of file at offset %llu (was the file truncated after "
                       "it was opened?)",
                       path, (unsigned long long)offset);
        p += got;
        n -= (size_t)got;
        offset += (uint64_t)got;
    }
}

static void write_full(int fd, const void *buf, size_t n, const char *path) {
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t put = write(fd, p, n);
        if (put < 0) {
            if (errno == EINTR) continue;
            PAFT_FATAL("%s: write failed: %s", path, strerror(errno));
        }
        p += put;
        n -= (size_t)put;
    }
}

static uint64_t read_le64(const unsigned char *b) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | b[i];
    return v;
}

/* ---- a growable list of tensors -------------------------------------------------------------- */

typedef struct {
    TensorInfo *items;
    int n, cap;
} TensorList;

static TensorInfo *tensor_list_push(TensorList *list) {
    if (list->n == list->cap) {
        list->cap = list->cap ? 2 * list->cap : 64;
        list->items = paft_realloc(list->items, (size_t)list->cap * sizeof(TensorInfo));
    }
    TensorInfo *t = &list->items[list->n++];
    memset(t, 0, sizeof *t);
    return t;
}

/* ---- header validation ----------------------------------------------------------------------- */

/* A JSON number that is an exact non-negative integer below 2^53 (where doubles stop being exact;
 * no offset or dimension of a real file comes near). */
static int json_uint(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return 0;
    double v = item->valuedouble;
    if (!(v >= 0) || v > 9007199254740992.0 || v != floor(v)) return 0;
    *out = (uint64_t)v;
    return 1;
}

/* Parse one tensor entry of a header into t (name already set). */
static void parse_tensor_entry(const char *path, const cJSON *entry, uint64_t data_size,
                               TensorInfo *t) {
    const char *name = t->name;
    if (!cJSON_IsObject(entry))
        PAFT_FATAL("%s: tensor '%s': entry is not a JSON object (expected {\"dtype\", \"shape\", "
                   "\"data_offsets\"})",
                   path, name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!dtype) PAFT_FATAL("%s: tensor '%s': missing \"dtype\"", path, name);
    if (!shape) PAFT_FATAL("%s: tensor '%s': missing \"shape\"", path, name);
    if (!offsets) PAFT_FATAL("%s: tensor '%s': missing \"data_offsets\"", path, name);

    if (!cJSON_IsString(dtype))
        PAFT_FATAL("%s: tensor '%s': \"dtype\" is not a string", path, name);
    if (!dtype_from_name(dtype->valuestring, &t->dtype))
        PAFT_FATAL("%s: tensor '%s': unknown dtype \"%s\" (expected F32, F16, BF16, F64, I64, I32, "
                   "I16, I8, U8 or BOOL)",
                   path, name, dtype->valuestring);

    if (!cJSON_IsArray(shape))
        PAFT_FATAL("%s: tensor '%s': \"shape\" is not an array", path, name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > TENSOR_MAX_DIMS)
        PAFT_FATAL("%s: tensor '%s': shape has %d dimensions (at most %d supported)", path, name,
                   ndim, TENSOR_MAX_DIMS);
    t->ndim = ndim;
    uint64_t numel = 1;
    int d = 0;
    for (const cJSON *dim = shape->child; dim; dim = dim->next, d++) {
        uint64_t extent;
        if (!json_uint(dim, &extent))
            PAFT_FATAL("%s: tensor '%s': shape[%d] is not a non-negative integer", path, name, d);
        t->shape[d] = (int64_t)extent;
        if (extent != 0 && numel > MAX_TENSOR_BYTES / (uint64_t)dtype_size(t->dtype) / extent)
            PAFT_FATAL("%s: tensor '%s': shape is absurdly large (overflows)", path, name);
        numel *= extent;
    }
    t->numel = (int64_t)numel;

    uint64_t begin, end;
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
        !json_uint(cJSON_GetArrayItem(offsets, 0), &begin) ||
        !json_uint(cJSON_GetArrayItem(offsets, 1), &end))
        PAFT_FATAL("%s: tensor '%s': \"data_offsets\" must be two non-negative integers "
                   "[begin, end]",
                   path, name);
    if (begin > end)
        PAFT_FATAL("%s: tensor '%s': data_offsets [%llu, %llu] begins after it ends", path, name,
                   (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        PAFT_FATAL("%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the data "
                   "(%llu bytes after the header)",
                   path, name, (unsigned long long)begin, (unsigned long long)end,
                   (unsigned long long)data_size);
    uint64_t expected = numel * (uint64_t)dtype_size(t->dtype);
    if (end - begin != expected) {
        char shape_text[256];
        tensor_shape_string(t, shape_text, sizeof shape_text);
        PAFT_FATAL("%s: tensor '%s': data_offsets hold %llu bytes but shape %s of %s needs %llu",
                   path, name, (unsigned long long)(end - begin), shape_text,
                   dtype_name(t->dtype), (unsigned long long)expected);
    }
    t->file_offset = begin; /* made absolute by the caller once the header length is known */
    t->nbytes = end - begin;
}

static int compare_by_offset(const void *a, const void *b) {
    const TensorInfo *x = *(TensorInfo *const *)a, *y = *(TensorInfo *const *)b;
    if (x->file_offset != y->file_offset) return x->file_offset < y->file_offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

/* The tensors must tile the data section exactly: no overlap (two tensors sharing bytes would
 * alias), no gap and nothing after the last one, as the reference implementation requires. */
static void check_layout(const char *path, TensorInfo *tensors, int n, uint64_t data_start,
                         uint64_t data_size) {
    TensorInfo **order = paft_malloc((size_t)n * sizeof *order);
    for (int i = 0; i < n; i++) order[i] = &tensors[i];
    qsort(order, (size_t)n, sizeof *order, compare_by_offset);
    uint64_t expected = data_start;
    const TensorInfo *previous = NULL;
    for (int i = 0; i < n; i++) {
        const TensorInfo *t = order[i];
        if (t->file_offset < expected)
            PAFT_FATAL("%s: tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) overlap", path,
                       previous->name, (unsigned long long)(previous->file_offset - data_start),
                       (unsigned long long)(previous->file_offset - data_start + previous->nbytes),
                       t->name, (unsigned long long)(t->file_offset - data_start),
                       (unsigned long long)(t->file_offset - data_start + t->nbytes));
        if (t->file_offset > expected)
            PAFT_FATAL("%s: tensor '%s': a gap of %llu unused bytes before it (safetensors packs "
                       "tensors back to back)",
                       path, t->name, (unsigned long long)(t->file_offset - expected));
        expected = t->file_offset + t->nbytes;
        previous = t;
    }
    if (expected != data_start + data_size)
        PAFT_FATAL("%s: %llu bytes after the last tensor are not described by the header "
                   "(truncated header or trailing garbage)",
                   path, (unsigned long long)(data_start + data_size - expected));
    free(order);
}

/* Keep the entries of a "__metadata__" object (already checked: strings only). */
static void keep_metadata(Checkpoint *ckpt, const cJSON *object) {
    const size_t n = (size_t)ckpt->n_metadata + (size_t)cJSON_GetArraySize(object);
    const size_t bytes = PAFT_MAX(n, (size_t)1) * sizeof(char *);
    ckpt->metadata_keys = paft_realloc(ckpt->metadata_keys, bytes);
    ckpt->metadata_values = paft_realloc(ckpt->metadata_values, bytes);
    for (const cJSON *m = object->child; m; m = m->next) {
        ckpt->metadata_keys[ckpt->n_metadata] = paft_strdup(m->string);
        ckpt->metadata_values[ckpt->n_metadata] = paft_strdup(m->valuestring);
        ckpt->n_metadata++;
    }
}

/* Read and validate the header of one .safetensors file, appending its tensors to list (and its
 * metadata to ckpt). */
static void parse_safetensors_header(const char *path, int fd, int shard, TensorList *list,
                                     Checkpoint *ckpt) {
    struct stat st;
    if (fstat(fd, &st) != 0) PAFT_FATAL("%s: cannot stat: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) PAFT_FATAL("%s: not a regular file", path);
    uint64_t file_size = (uint64_t)st.st_size;
    if (file_size < 8)
        PAFT_FATAL("%s: file is %llu bytes, shorter than the 8-byte header length that starts a "
                   "safetensors file (truncated?)",
                   path, (unsigned long long)file_size);
    unsigned char length_bytes[8];
    pread_full(fd, length_bytes, 8, 0, path);
    uint64_t header_len = read_le64(length_bytes);
    /* a JSON file handed over as a safetensors file (a model's config.json, an index, an
     * adapter_config.json) reads as a nonsense header length: its first 8 bytes are text */
    if (header_len > SAFETENSORS_MAX_HEADER_BYTES && paft_starts_like_json(length_bytes, 8))
        PAFT_FATAL("%s: a JSON file, not a safetensors file (which starts with an 8-byte header "
                   "length, not with text)", path);
    if (header_len > SAFETENSORS_MAX_HEADER_BYTES)
        PAFT_FATAL("%s: header length %llu exceeds the 100 MB limit (not a safetensors file?)",
                   path, (unsigned long long)header_len);
    if (header_len > file_size - 8)
        PAFT_FATAL("%s: header length %llu runs past the end of the file (%llu bytes; "
                   "truncated?)",
                   path, (unsigned long long)header_len, (unsigned long long)file_size);

    char *header = paft_malloc((size_t)header_len + 1);
    pread_full(fd, header, (size_t)header_len, 8, path);
    header[header_len] = '\0';
    if (memchr(header, '\0', (size_t)header_len))
        PAFT_FATAL("%s: header contains a NUL byte (not valid JSON)", path);
    const char *parse_end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(header, (size_t)header_len, &parse_end, 0);
    if (!root) {
        long at = parse_end ? (long)(parse_end - header) : -1;
        PAFT_FATAL("%s: header is not valid JSON (error near byte %ld of %llu)", path, at,
                   (unsigned long long)header_len);
    }
    /* Only the space padding writers add may follow the JSON. */
    for (const char *p = parse_end; p < header + header_len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            PAFT_FATAL("%s: header is not valid JSON (garbage after the object at byte %ld)", path,
                       (long)(p - header));
    if (!cJSON_IsObject(root)) PAFT_FATAL("%s: header is not a JSON object", path);

    uint64_t data_start = 8 + header_len;
    uint64_t data_size = file_size - data_start;
    int first = list->n;
    for (const cJSON *entry = root->child; entry; entry = entry->next) {
        if (strcmp(entry->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(entry))
                PAFT_FATAL("%s: \"__metadata__\" is not a JSON object of strings", path);
            for (const cJSON *m = entry->child; m; m = m->next)
                if (!cJSON_IsString(m))
                    PAFT_FATAL("%s: \"__metadata__\" entry \"%s\" is not a string", path,
                               m->string);
            keep_metadata(ckpt, entry);
            continue;
        }
        TensorInfo *t = tensor_list_push(list);
        t->name = paft_strdup(entry->string);
        t->shard = shard;
        parse_tensor_entry(path, entry, data_size, t);
        t->file_offset += data_start;
    }
    cJSON_Delete(root);
    free(header);
    /* A header of no tensors ("{}", or only __metadata__) is a valid, empty file; then the list
     * may still be unallocated, and list->items + 0 on NULL is undefined behaviour, so it gets
     * its own check (and message) instead of going through check_layout. */
    if (list->n == first) {
        if (data_size != 0)
            PAFT_FATAL("%s: the header lists no tensors, but %llu bytes of data follow it "
                       "(truncated header or trailing garbage)",
                       path, (unsigned long long)data_size);
        return;
    }
    check_layout(path, list->items + first, list->n - first, data_start, data_size);
}

/* ---- opening checkpoints --------------------------------------------------------------------- */

static int compare_by_name(const void *a, const void *b) {
    return strcmp(((const TensorInfo *)a)->name, ((const TensorInfo *)b)->name);
}

/* A file may hold no tensors at all ("{}" is a valid header): then the table is NULL, which qsort
 * and bsearch must not be handed, even with a count of 0 (their pointers are declared nonnull). */
static void sort_by_name(Checkpoint *ckpt) {
    if (ckpt->n_tensors > 0)
        qsort(ckpt->tensors, (size_t)ckpt->n_tensors, sizeof(TensorInfo), compare_by_name);
}

static int add_shard(Checkpoint *ckpt, const char *shard_path) {
    int k = ckpt->n_shards++;
    ckpt->shard_paths = paft_realloc(ckpt->shard_paths, (size_t)ckpt->n_shards * sizeof(char *));
    ckpt->shard_fds = paft_realloc(ckpt->shard_fds, (size_t)ckpt->n_shards * sizeof(int));
    ckpt->shard_paths[k] = paft_strdup(shard_path);
    int fd = open(shard_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) PAFT_FATAL("%s: cannot open: %s", shard_path, strerror(errno));
    ckpt->shard_fds[k] = fd;
    return k;
}

/* After sorting by name: the same tensor stored twice (two shards, or one header naming it twice
 * with a duplicated JSON key) is an error, not a silent choice of one copy. */
static void check_unique_names(const Checkpoint *ckpt) {
    for (int i = 1; i < ckpt->n_tensors; i++) {
        const TensorInfo *a = &ckpt->tensors[i - 1], *b = &ckpt->tensors[i];
        if (strcmp(a->name, b->name) != 0) continue;
        if (a->shard == b->shard)
            PAFT_FATAL("%s: tensor '%s' appears twice in the header", ckpt->shard_paths[a->shard],
                       a->name);
        PAFT_FATAL("%s: tensor '%s' appears in both %s and %s", ckpt->path, a->name,
                   ckpt->shard_paths[a->shard], ckpt->shard_paths[b->shard]);
    }
}

/* A shard name from the index must stay inside the model directory. */
static void check_shard_name(const char *index_path, const char *tensor, const char *file) {
    if (file[0] == '\0' || strchr(file, '/') || strchr(file, '\\') || strstr(file, ".."))
        PAFT_FATAL("%s: tensor '%s' is mapped to \"%s\", a file outside the model directory "
                   "(shard names may not contain '/' or '..')",
                   index_path, tensor, file);
}

typedef struct {
    const char *tensor;
    const char *file;
    int shard;
} IndexEntry;

static int compare_index_by_tensor(const void *a, const void *b) {
    return strcmp(((const IndexEntry *)a)->tensor, ((const IndexEntry *)b)->tensor);
}

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void open_sharded(Checkpoint *ckpt, const char *dir, const char *index_path,
                         TensorList *list) {
    char *text = paft_read_text_file(index_path, INDEX_MAX_BYTES, NULL);
    cJSON *root = cJSON_Parse(text);
    if (!root) PAFT_FATAL("%s: not valid JSON", index_path);
    if (!cJSON_IsObject(root)) PAFT_FATAL("%s: not a JSON object", index_path);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!map) PAFT_FATAL("%s: missing \"weight_map\"", index_path);
    if (!cJSON_IsObject(map))
        PAFT_FATAL("%s: \"weight_map\" is not an object {tensor: file}", index_path);
    int n = cJSON_GetArraySize(map);
    if (n == 0) PAFT_FATAL("%s: \"weight_map\" is empty", index_path);

    IndexEntry *entries = paft_malloc((size_t)n * sizeof *entries);
    const char **files = paft_malloc((size_t)n * sizeof *files);
    int k = 0;
    for (const cJSON *e = map->child; e; e = e->next, k++) {
        if (!cJSON_IsString(e))
            PAFT_FATAL("%s: weight_map entry '%s' is not a file name", index_path, e->string);
        check_shard_name(index_path, e->string, e->valuestring);
        entries[k] = (IndexEntry){e->string, e->valuestring, -1};
        files[k] = e->valuestring;
    }
    qsort(entries, (size_t)n, sizeof *entries, compare_index_by_tensor);
    for (int i = 1; i < n; i++)
        if (strcmp(entries[i - 1].tensor, entries[i].tensor) == 0)
            PAFT_FATAL("%s: tensor '%s' is listed twice in weight_map", index_path,
                       entries[i].tensor);

    /* The distinct shard files, in name order (model-00001-of-0000N first). */
    qsort(files, (size_t)n, sizeof *files, compare_strings);
    for (int i = 0; i < n; i++) {
        if (i > 0 && strcmp(files[i - 1], files[i]) == 0) continue;
        char *shard_path = paft_path_join(dir, files[i]);
        if (!paft_path_exists(shard_path))
            PAFT_FATAL("%s: shard %s named by the index %s is missing", shard_path, files[i],
                       index_path);
        int shard = add_shard(ckpt, shard_path);
        parse_safetensors_header(shard_path, ckpt->shard_fds[shard], shard, list, ckpt);
        free(shard_path);
        for (int j = 0; j < n; j++)
            if (strcmp(entries[j].file, files[i]) == 0) entries[j].shard = shard;
    }

    ckpt->tensors = list->items;
    ckpt->n_tensors = list->n;
    sort_by_name(ckpt);
    check_unique_names(ckpt);

    /* The index and the shards must agree tensor by tensor, in both directions. */
    for (int i = 0; i < n; i++) {
        const TensorInfo *t = checkpoint_find(ckpt, entries[i].tensor);
        if (!t)
            PAFT_FATAL("%s: the index maps tensor '%s' to %s, but %s does not contain it",
                       index_path, entries[i].tensor, entries[i].file,
                       ckpt->shard_paths[entries[i].shard]);
        if (t->shard != entries[i].shard)
            PAFT_FATAL("%s: the index maps tensor '%s' to %s, but it is stored in %s", index_path,
                       entries[i].tensor, entries[i].file, ckpt->shard_paths[t->shard]);
    }
    if (ckpt->n_tensors != n)
        for (int i = 0; i < ckpt->n_tensors; i++) {
            const TensorInfo *t = &ckpt->tensors[i];
            IndexEntry key = {t->name, NULL, 0};
            if (!bsearch(&key, entries, (size_t)n, sizeof *entries, compare_index_by_tensor))
                PAFT_FATAL("%s: tensor '%s' is not listed in the index %s",
                           ckpt->shard_paths[t->shard], t->name, index_path);
        }

    free(files);
    free(entries);
    cJSON_Delete(root);
    free(text);
}

void checkpoint_open(Checkpoint *ckpt, const char *path) {
    memset(ckpt, 0, sizeof *ckpt);
    ckpt->path = paft_strdup(path);
    TensorList list = {0};
    if (paft_is_directory(path)) {
        char *index_path = paft_path_join(path, "model.safetensors.index.json");
        char *single_path = paft_path_join(path, "model.safetensors");
        if (paft_path_exists(index_path)) {
            open_sharded(ckpt, path, index_path, &list);
        } else if (paft_path_exists(single_path)) {
            add_shard(ckpt, single_path);
            parse_safetensors_header(single_path, ckpt->shard_fds[0], 0, &list, ckpt);
        } else {
            /* a PEFT adapter directory (<stage>/peft/) is the likely mistake: name it */
            char *adapter_path = paft_path_join(path, "adapter_model.safetensors");
            if (paft_path_exists(adapter_path))
                PAFT_FATAL("%s: a PEFT adapter directory (adapter_model.safetensors), not a model: "
                           "neither model.safetensors nor model.safetensors.index.json is in it",
                           path);
            PAFT_FATAL("%s: neither model.safetensors nor model.safetensors.index.json is in this "
                       "directory",
                       path);
        }
        free(index_path);
        free(single_path);
    } else {
        if (!paft_path_exists(path)) PAFT_FATAL("%s: no such file or directory", path);
        add_shard(ckpt, path);
        parse_safetensors_header(path, ckpt->shard_fds[0], 0, &list, ckpt);
    }
    ckpt->tensors = list.items;
    ckpt->n_tensors = list.n;
    sort_by_name(ckpt);
    check_unique_names(ckpt);
}

void checkpoint_close(Checkpoint *ckpt) {
    for (int i = 0; i < ckpt->n_shards; i++) {
        close(ckpt->shard_fds[i]);
        free(ckpt->shard_paths[i]);
    }
    for (int i = 0; i < ckpt->n_tensors; i++) free(ckpt->tensors[i].name);
    for (int i = 0; i < ckpt->n_metadata; i++) {
        free(ckpt->metadata_keys[i]);
        free(ckpt->metadata_values[i]);
    }
    free(ckpt->metadata_keys);
    free(ckpt->metadata_values);
    free(ckpt->shard_fds);
    free(ckpt->shard_paths);
    free(ckpt->tensors);
    free(ckpt->path);
    memset(ckpt, 0, sizeof *ckpt);
}

const char *checkpoint_metadata(const Checkpoint *ckpt, const char *key) {
    for (int i = 0; i < ckpt->n_metadata; i++)
        if (strcmp(ckpt->metadata_keys[i], key) == 0) return ckpt->metadata_values[i];
    return NULL;
}

const TensorInfo *checkpoint_find(const Checkpoint *ckpt, const char *name) {
    if (ckpt->n_tensors == 0) return NULL; /* see sort_by_name */
    TensorInfo key;
    memset(&key, 0, sizeof key);
    key.name = (char *)name;
    return bsearch(&key, ckpt->tensors, (size_t)ckpt->n_tensors, sizeof(TensorInfo),
                   compare_by_name);
}

void tensor_shape_string(const TensorInfo *t, char *buf, int buflen) {
    int len = snprintf(buf, (size_t)buflen, "[");
    for (int d = 0; d < t->ndim && len < buflen; d++)
        len += snprintf(buf + len, (size_t)(buflen - len), "%s%lld", d ? ", " : "",
                        (long long)t->shape[d]);
    if (len < buflen) snprintf(buf + len, (size_t)(buflen - len), "]");
}

const TensorInfo *checkpoint_require(const Checkpoint *ckpt, const char *name, int ndim,
                                     const int64_t *shape) {
    const TensorInfo *t = checkpoint_find(ckpt, name);
    if (!t) PAFT_FATAL("%s: missing tensor %s", ckpt->path, name);
    if (ndim > 0) {
        int same = t->ndim == ndim;
        for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
        if (!same) {
            char got[256], want[256];
            TensorInfo expected;
            memset(&expected, 0, sizeof expected);
            expected.ndim = PAFT_MIN(ndim, TENSOR_MAX_DIMS);
            for (int d = 0; d < expected.ndim; d++) expected.shape[d] = shape[d];
            tensor_shape_string(t, got, sizeof got);
            tensor_shape_string(&expected, want, sizeof want);
            PAFT_FATAL("%s: tensor %s has shape %s, expected %s (does config.json match the "
                       "weights?)",
                       ckpt->shard_paths[t->shard], name, got, want);
        }
    }
    return t;
}

int64_t checkpoint_parameter_count(const Checkpoint *ckpt) {
    int64_t total = 0;
    for (int i = 0; i < ckpt->n_tensors; i++) total += ckpt->tensors[i].numel;
    return total;
}

void tensor_as_2d(const TensorInfo *t, int64_t *rows, int64_t *cols) {
    if (t->ndim == 0) { /* a scalar: one row of one column */
        *rows = 1;
        *cols = 1;
        return;
    }
    *rows = t->shape[0];
    *cols = 1;
    for (int d = 1; d < t->ndim; d++) *cols *= t->shape[d];
}

/* ---- reading tensor data --------------------------------------------------------------------- */

/* Convert n elements stored at src (dtype, little-endian) to real at dst. dst may overlap src as
 * long as dst <= src: element i is loaded before out[i] is stored, and a store never reaches an
 * element not yet loaded when src starts at dst + n*(sizeof(real) - element size). */
static void convert_to_real(Dtype dtype, const unsigned char *src, real *dst, size_t n) {
    switch (dtype) {
    case DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, src + 2 * i, 2);
            dst[i] = (real)bf16_to_fp32(v);
        }
        break;
    case DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, src + 2 * i, 2);
            dst[i] = (real)fp16_to_fp32(v);
        }
        break;
    case DTYPE_F32:
        for (size_t i = 0; i < n; i++) {
            float v;
            memcpy(&v, src + 4 * i, 4);
            dst[i] = (real)v;
        }
        break;
    case DTYPE_F64:
        for (size_t i = 0; i < n; i++) {
            double v;
            memcpy(&v, src + 8 * i, 8);
            dst[i] = (real)v;
        }
        break;
    default:
        PAFT_FATAL("internal: convert_to_real called for dtype %s", dtype_name(dtype));
    }
}

/* Read n consecutive elements at byte offset `offset` of shard fd into out as real. When the
 * stored element is no wider than real (BF16/F16/F32, and F64 into double) the bytes are read
 * straight into the tail of `out` and widened in place: one pread and no extra memory whatever
 * the size. Otherwise (F64 into float) they pass through a bounded staging buffer. */
static void read_elements(int fd, const char *path, Dtype dtype, uint64_t offset, size_t n,
                          real *out) {
    size_t element = (size_t)dtype_size(dtype);
    if (element <= sizeof(real)) {
        unsigned char *tail = (unsigned char *)out + n * (sizeof(real) - element);
        pread_full(fd, tail, n * element, offset, path);
        convert_to_real(dtype, tail, out, n);
        return;
    }
    size_t chunk = PAFT_MIN(n, (size_t)1 << 20);
    unsigned char *staging = paft_malloc(chunk * element);
    for (size_t done = 0; done < n; done += chunk) {
        size_t count = PAFT_MIN(chunk, n - done);
        pread_full(fd, staging, count * element, offset + done * element, path);
        convert_to_real(dtype, staging, out + done, count);
    }
    free(staging);
}

void checkpoint_read_block(const Checkpoint *ckpt, const TensorInfo *t, int64_t row0,
                           int64_t nrows, int64_t col0, int64_t ncols, real *out) {
    const char *path = ckpt->shard_paths[t->shard];
    if (!dtype_is_float(t->dtype))
        PAFT_FATAL("%s: tensor '%s' has dtype %s; only F32, F16, BF16 and F64 tensors can be read "
                   "as weights",
                   path, t->name, dtype_name(t->dtype));
    int64_t rows, cols;
    tensor_as_2d(t, &rows, &cols);
    if (row0 < 0 || nrows < 0 || row0 > rows - nrows || col0 < 0 || ncols < 0 ||
        col0 > cols - ncols)
        PAFT_FATAL("%s: tensor '%s': block rows [%lld, %lld) x columns [%lld, %lld) is outside its "
                   "%lld x %lld extent",
                   path, t->name, (long long)row0, (long long)(row0 + nrows), (long long)col0,
                   (long long)(col0 + ncols), (long long)rows, (long long)cols);
    if (nrows == 0 || ncols == 0) return;
    int fd = ckpt->shard_fds[t->shard];
    uint64_t element = (uint64_t)dtype_size(t->dtype);
    if (col0 == 0 && ncols == cols) { /* whole rows: one contiguous range */
        uint64_t first = (uint64_t)row0 * (uint64_t)cols;
        read_elements(fd, path, t->dtype, t->file_offset + first * element,
                      (size_t)(nrows * ncols), out);
        return;
    }
    for (int64_t r = 0; r < nrows; r++) {
        uint64_t first = (uint64_t)(row0 + r) * (uint64_t)cols + (uint64_t)col0;
        read_elements(fd, path, t->dtype, t->file_offset + first * element, (size_t)ncols,
                      out + r * ncols);
    }
}

void checkpoint_read(const Checkpoint *ckpt, const TensorInfo *t, real *out) {
    int64_t rows, cols;
    tensor_as_2d(t, &rows, &cols);
    checkpoint_read_block(ckpt, t, 0, rows, 0, cols, out);
}

void checkpoint_read_int32(const Checkpoint *ckpt, const TensorInfo *t, int32_t *out) {
    const char *path = ckpt->shard_paths[t->shard];
    if (t->dtype != DTYPE_I32 && t->dtype != DTYPE_I64)
        PAFT_FATAL("%s: tensor '%s' has dtype %s, expected I32 or I64", path, t->name,
                   dtype_name(t->dtype));
    size_t element = (size_t)dtype_size(t->dtype), n = (size_t)t->numel;
    unsigned char *raw = paft_malloc(n * element);
    pread_full(ckpt->shard_fds[t->shard], raw, n * element, t->file_offset, path);
    for (size_t i = 0; i < n; i++) {
        int64_t v;
        if (element == 4) {
            int32_t v32;
            memcpy(&v32, raw + 4 * i, 4);
            v = v32;
        } else {
            memcpy(&v, raw + 8 * i, 8);
        }
        if (v < INT32_MIN || v > INT32_MAX)
            PAFT_FATAL("%s: tensor '%s': value %lld does not fit 32 bits", path, t->name, (long long)v);
        out[i] = (int32_t)v;
    }
    free(raw);
}

/* ---- writing --------------------------------------------------------------------------------- */

typedef struct {
    char *data;
    size_t len, cap;
} TextBuffer;

static void text_append(TextBuffer *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = PAFT_MAX(2 * b->cap, b->len + n + 1024);
        b->data = paft_realloc(b->data, b->cap);
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void text_printf(TextBuffer *b, const char *fmt, ...) PAFT_PRINTF(2, 3);
static void text_printf(TextBuffer *b, const char *fmt, ...) {
    char small[256];
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(small, sizeof small, fmt, args);
    va_end(args);
    if (n < 0) PAFT_FATAL("internal: formatting failed");
    if ((size_t)n < sizeof small) {
        text_append(b, small, (size_t)n);
        return;
    }
    char *big = paft_malloc((size_t)n + 1);
    va_start(args, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, args);
    va_end(args);
    text_append(b, big, (size_t)n);
    free(big);
}

static void text_append_json_string(TextBuffer *b, const char *s) {
    text_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char escaped[2] = {'\\', (char)*p};
            text_append(b, escaped, 2);
        } else if (*p < 0x20) {
            text_printf(b, "\\u%04x", *p);
        } else {
            text_append(b, (const char *)p, 1);
        }
    }
    text_append(b, "\"", 1);
}

static void convert_from_real(Dtype dtype, const real *src, unsigned char *dst, size_t n) {
    for (size_t i = 0; i < n; i++) {
        switch (dtype) {
        case DTYPE_F32: {
            float v = (float)src[i];
            memcpy(dst + 4 * i, &v, 4);
            break;
        }
        case DTYPE_BF16: {
            uint16_t v = fp32_to_bf16((float)src[i]);
            memcpy(dst + 2 * i, &v, 2);
            break;
        }
        case DTYPE_F16: {
            uint16_t v = fp32_to_fp16((float)src[i]);
            memcpy(dst + 2 * i, &v, 2);
            break;
        }
        case DTYPE_F64: {
            double v = (double)src[i];
            memcpy(dst + 8 * i, &v, 8);
            break;
        }
        default:
            PAFT_FATAL("internal: convert_from_real called for dtype %s", dtype_name(dtype));
        }
    }
}

void safetensors_write(const char *path, const TensorToWrite *tensors, int n,
                       const char *metadata_json) {
    /* Validate the request first: a bad call must not leave a half-written file behind. */
    int64_t *numel = paft_malloc((size_t)PAFT_MAX(n, 1) * sizeof *numel);
    for (int i = 0; i < n; i++) {
        const TensorToWrite *t = &tensors[i];
        if (!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0)
            PAFT_FATAL("%s: cannot write a tensor named '%s'", path, t->name ? t->name : "(null)");
        if (!dtype_is_float(t->dtype))
            PAFT_FATAL("%s: tensor '%s': cannot write dtype %s (F32, BF16, F16 or F64)", path,
                       t->name, dtype_name(t->dtype));
        if (t->ndim < 0 || t->ndim > TENSOR_MAX_DIMS)
            PAFT_FATAL("%s: tensor '%s': %d dimensions", path, t->name, t->ndim);
        numel[i] = 1;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0)
                PAFT_FATAL("%s: tensor '%s': negative extent %lld", path, t->name,
                           (long long)t->shape[d]);
            numel[i] *= t->shape[d];
        }
        if (numel[i] > 0 && !t->data)
            PAFT_FATAL("%s: tensor '%s': no data", path, t->name);
        for (int j = 0; j < i; j++)
            if (strcmp(tensors[j].name, t->name) == 0)
                PAFT_FATAL("%s: tensor '%s' given twice", path, t->name);
    }

    /* Wider dtypes first (stable within a width): with the header padded to 8 bytes every
     * tensor then starts aligned to its element size without gaps, the layout the reference
     * implementation produces and requires. */
    int *order = paft_malloc((size_t)PAFT_MAX(n, 1) * sizeof *order);
    int k = 0;
    for (int width = 8; width >= 1; width /= 2)
        for (int i = 0; i < n; i++)
            if (dtype_size(tensors[i].dtype) == width) order[k++] = i;

    TextBuffer header = {0};
    text_append(&header, "{", 1);
    int need_comma = 0;
    if (metadata_json) {
        cJSON *meta = cJSON_Parse(metadata_json);
        if (!meta || !cJSON_IsObject(meta))
            PAFT_FATAL("%s: metadata is not a JSON object: %s", path, metadata_json);
        for (const cJSON *m = meta->child; m; m = m->next)
            if (!cJSON_IsString(m))
                PAFT_FATAL("%s: metadata value '%s' is not a string (safetensors allows only "
                           "strings)",
                           path, m->string);
        char *printed = cJSON_PrintUnformatted(meta);
        text_printf(&header, "\"__metadata__\":%s", printed);
        cJSON_free(printed);
        cJSON_Delete(meta);
        need_comma = 1;
    }
    uint64_t offset = 0;
    for (int k2 = 0; k2 < n; k2++) {
        const TensorToWrite *t = &tensors[order[k2]];
        uint64_t nbytes = (uint64_t)numel[order[k2]] * (uint64_t)dtype_size(t->dtype);
        if (need_comma) text_append(&header, ",", 1);
        need_comma = 1;
        text_append_json_string(&header, t->name);
        text_printf(&header, ":{\"dtype\":\"%s\",\"shape\":[", dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            text_printf(&header, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        text_printf(&header, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                    (unsigned long long)(offset + nbytes));
        offset += nbytes;
    }
    text_append(&header, "}", 1);
    while (header.len % 8 != 0) text_append(&header, " ", 1);

    char tmp_path[4096];
    if (snprintf(tmp_path, sizeof tmp_path, "%s.tmp.%ld", path, (long)getpid()) >=
        (int)sizeof tmp_path)
        PAFT_FATAL("%s: path too long", path);
    int fd = open(tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) PAFT_FATAL("%s: cannot create: %s", tmp_path, strerror(errno));
    unsigned char length_bytes[8];
    for (int i = 0; i < 8; i++) length_bytes[i] = (unsigned char)((uint64_t)header.len >> (8 * i));
    write_full(fd, length_bytes, 8, tmp_path);
    write_full(fd, header.data, header.len, tmp_path);

    size_t chunk = (size_t)1 << 16;
    unsigned char *buffer = paft_malloc(chunk * 8);
    for (int k2 = 0; k2 < n; k2++) {
        const TensorToWrite *t = &tensors[order[k2]];
        size_t total = (size_t)numel[order[k2]], element = (size_t)dtype_size(t->dtype);
        for (size_t done = 0; done < total; done += chunk) {
            size_t count = PAFT_MIN(chunk, total - done);
            convert_from_real(t->dtype, t->data + done, buffer, count);
            write_full(fd, buffer, count * element, tmp_path);
        }
    }
    free(buffer);
    if (fsync(fd) != 0) PAFT_FATAL("%s: fsync failed: %s", tmp_path, strerror(errno));
    if (close(fd) != 0) PAFT_FATAL("%s: close failed: %s", tmp_path, strerror(errno));
    if (rename(tmp_path, path) != 0)
        PAFT_FATAL("%s: cannot rename %s into place: %s", path, tmp_path, strerror(errno));

    /* Make the rename itself durable (best effort: not every file system lets a directory be
     * opened and synced). */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) dir[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    int dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd >= 0) {
        (void)fsync(dir_fd);
        close(dir_fd);
    }

    free(header.data);
    free(order);
    free(numel);
}
