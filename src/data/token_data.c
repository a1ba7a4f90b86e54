/*
 * token_data.c - read (mmap + full validation), write, describe and shuffle token data files.
 * The layout is documented in token_data.h and, byte by byte, in docs/DATA_FORMAT.md.
 */
#include "data/token_data.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/common.h"

/* The token and offset arrays are used in place from the mapping, so the host must store integers
 * the way the file does. Every machine paft targets (x86-64, aarch64, ppc64le) is little-endian. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "token_data.c reads little-endian files in place and needs a little-endian host"
#endif

/* Header field offsets (docs/DATA_FORMAT.md). */
enum {
    HDR_MAGIC = 0,        /* char[8] "PAFTTOK1" */
    HDR_VERSION = 8,      /* u32 */
    HDR_KIND = 12,        /* u32: 1 sft, 2 pref */
    HDR_NUM_RECORDS = 16, /* u64 */
    HDR_NUM_TOKENS = 24,  /* u64 */
    HDR_VOCAB_SIZE = 32,  /* u32 */
    HDR_FLAGS = 36,       /* u32, must be 0 */
    HDR_PAYLOAD_CRC = 40, /* u32: CRC-32 of bytes [64, end of file) */
    HDR_RESERVED = 44,    /* 16 bytes, must be 0 */
    HDR_HEADER_CRC = 60,  /* u32: CRC-32 of bytes [0, 60) */
};
#define HDR_RESERVED_BYTES 16

static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const uint8_t *p) { return get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }
static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

const char *token_data_kind_name(TokenDataKind kind) {
    switch (kind) {
    case TOKEN_DATA_SFT: return "sft";
    case TOKEN_DATA_PREF: return "pref";
    case TOKEN_DATA_ANY: return "any";
    }
    return "unknown";
}

int token_data_kind_from_name(const char *name) {
    if (strcmp(name, "sft") == 0) return TOKEN_DATA_SFT;
    if (strcmp(name, "pref") == 0) return TOKEN_DATA_PREF;
    if (strcmp(name, "any") == 0) return TOKEN_DATA_ANY;
    return -1;
}

static uint64_t segments_per_record(TokenDataKind kind) { return kind == TOKEN_DATA_PREF ? 3 : 1; }

/* ---- CRC-32 ------------------------------------------------------------------------------- */

/* Slicing-by-8: eight 256-entry tables let the loop consume 8 bytes per step, about 5x faster
 * than the byte-at-a-time loop, which matters because every open checks gigabytes. The tables are
 * rebuilt per call (16 K table steps, microseconds) rather than kept in mutable global state. */
uint32_t paft_crc32(uint32_t crc, const void *data, size_t n) {
    uint32_t table[8][256];
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xFF];

    const uint8_t *p = data;
    crc = ~crc;
    while (n >= 8) {
        uint32_t lo = crc ^ get_u32(p), hi = get_u32(p + 4);
        crc = table[7][lo & 0xFF] ^ table[6][(lo >> 8) & 0xFF] ^ table[5][(lo >> 16) & 0xFF] ^
              table[4][lo >> 24] ^ table[3][hi & 0xFF] ^ table[2][(hi >> 8) & 0xFF] ^
              table[1][(hi >> 16) & 0xFF] ^ table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

/* ---- deterministic shuffling -------------------------------------------------------------- */

uint64_t splitmix64_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t splitmix64_next(uint64_t *state) {
    *state += 0x9E3779B97F4A7C15ull;
    return splitmix64_mix(*state);
}

/* Uniform in [0, m), m >= 1: reject the top sliver of 2^64 that would favour small values. */
static uint64_t uniform_below(uint64_t *state, uint64_t m) {
    uint64_t limit = UINT64_MAX - UINT64_MAX % m; /* draws in [limit, 2^64) are rejected */
    uint64_t r;
    do {
        r = splitmix64_next(state);
    } while (r >= limit);
    return r % m;
}

void token_data_permutation(uint64_t n, uint64_t seed, uint64_t epoch, uint64_t *order) {
    for (uint64_t i = 0; i < n; i++)
        order[i] = i;
    uint64_t state = seed ^ splitmix64_mix(epoch + 0x9E3779B97F4A7C15ull);
    for (uint64_t i = n; i-- > 1;) {
        uint64_t j = uniform_below(&state, i + 1);
        uint64_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

/* ---- opening and validation --------------------------------------------------------------- */

/* The record a segment belongs to, and which part of it, for error messages. */
static void describe_segment(const TokenData *d, uint64_t segment, char *buf, size_t size) {
    static const char *const parts[3] = {"prompt", "chosen", "rejected"};
    if (d->kind == TOKEN_DATA_PREF)
        snprintf(buf, size, "record %" PRIu64 " (%s)", segment / 3, parts[segment % 3]);
    else
        snprintf(buf, size, "record %" PRIu64, segment);
}

/* The segment holding token position t (binary search; only used to word an error). */
static uint64_t segment_of_token(const TokenData *d, uint64_t t) {
    uint64_t lo = 0, hi = d->num_segments; /* offsets[lo] <= t < offsets[hi] */
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (d->offsets[mid] <= t)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

static void validate_header(const char *path, const uint8_t *h) {
    if (memcmp(h + HDR_MAGIC, TOKEN_DATA_MAGIC, 8) != 0) {
        if (memcmp(h + HDR_MAGIC, TOKEN_DATA_MAGIC, 7) == 0)
            PAFT_FATAL("%s: magic is \"%.8s\", expected \"%s\": written by another format "
                       "generation of paft",
                       path, (const char *)h, TOKEN_DATA_MAGIC);
        PAFT_FATAL("%s: not a paft token data file (bad magic: the first 8 bytes should be \"%s\"; "
                   "make one with inputs/prepare.py)",
                   path, TOKEN_DATA_MAGIC);
    }
    uint32_t version = get_u32(h + HDR_VERSION);
    if (version != TOKEN_DATA_VERSION)
        PAFT_FATAL("%s: token data version %u is not supported (this paft reads version %u); "
                   "re-run inputs/prepare.py",
                   path, version, TOKEN_DATA_VERSION);
    uint32_t header_crc = get_u32(h + HDR_HEADER_CRC), actual = paft_crc32(0, h, HDR_HEADER_CRC);
    if (header_crc != actual)
        PAFT_FATAL("%s: header checksum mismatch (stored 0x%08x, computed 0x%08x): the header is "
                   "corrupt",
                   path, header_crc, actual);
    uint32_t kind = get_u32(h + HDR_KIND);
    if (kind != TOKEN_DATA_SFT && kind != TOKEN_DATA_PREF)
        PAFT_FATAL("%s: unknown kind %u in the header (expected 1 = sft or 2 = pref)", path, kind);
    if (get_u32(h + HDR_FLAGS) != 0)
        PAFT_FATAL("%s: header flags are 0x%x, expected 0 (no flags are defined in version %u)",
                   path, get_u32(h + HDR_FLAGS), TOKEN_DATA_VERSION);
    for (int i = 0; i < HDR_RESERVED_BYTES; i++)
        if (h[HDR_RESERVED + i] != 0)
            PAFT_FATAL("%s: reserved header byte %d is not zero", path, HDR_RESERVED + i);
    if (get_u32(h + HDR_VOCAB_SIZE) == 0) PAFT_FATAL("%s: vocab size in the header is 0", path);
}

/* Expected file size from the header counts, with every product checked against the actual size
 * first so that absurd counts in a corrupt header cannot overflow. */
static void validate_sizes(const char *path, TokenDataKind kind, uint64_t num_records,
                           uint64_t num_tokens, uint64_t file_bytes) {
    uint64_t payload = file_bytes - TOKEN_DATA_HEADER_BYTES;
    uint64_t per_token = kind == TOKEN_DATA_SFT ? 5 : 4; /* u32 id (+ u8 mask) */
    if (num_records > payload / 8 / segments_per_record(kind) || num_tokens > payload / per_token)
        PAFT_FATAL("%s: truncated or corrupt: the header claims %" PRIu64 " records and %" PRIu64
                   " tokens, more than a %" PRIu64 "-byte file can hold",
                   path, num_records, num_tokens, file_bytes);
    uint64_t num_segments = num_records * segments_per_record(kind);
    uint64_t expected = TOKEN_DATA_HEADER_BYTES + 8 * (num_segments + 1) + per_token * num_tokens;
    if (expected != file_bytes)
        PAFT_FATAL("%s: file is %" PRIu64 " bytes but its header (%s, %" PRIu64 " records, %" PRIu64
                   " tokens) needs exactly %" PRIu64 ": %s",
                   path, file_bytes, token_data_kind_name(kind), num_records, num_tokens, expected,
                   file_bytes < expected ? "truncated" : "trailing bytes after the data");
}

static void validate_offsets(const TokenData *d) {
    char where[96];
    if (d->offsets[0] != 0)
        PAFT_FATAL("%s: offset table must start at 0, found %" PRIu64, d->path, d->offsets[0]);
    for (uint64_t s = 0; s < d->num_segments; s++) {
        uint64_t begin = d->offsets[s], end = d->offsets[s + 1];
        if (end < begin || end > d->num_tokens) {
            describe_segment(d, s, where, sizeof where);
            PAFT_FATAL("%s: corrupt offset table at %s: offsets %" PRIu64 " -> %" PRIu64
                       " (they must increase and stay within the %" PRIu64 " tokens)",
                       d->path, where, begin, end, d->num_tokens);
        }
        if (end == begin) {
            describe_segment(d, s, where, sizeof where);
            PAFT_FATAL("%s: %s is empty (offset %" PRIu64
                       " repeated); every segment needs at least "
                       "one token",
                       d->path, where, begin);
        }
    }
    if (d->offsets[d->num_segments] != d->num_tokens)
        PAFT_FATAL("%s: offset table ends at %" PRIu64 " but the header counts %" PRIu64 " tokens",
                   d->path, d->offsets[d->num_segments], d->num_tokens);
}

static void validate_tokens(const TokenData *d) {
    char where[96];
    uint32_t vocab = d->vocab_size, worst = 0;
    /* A branch-free max over all ids first (fast); locate the culprit only if there is one. */
    for (uint64_t t = 0; t < d->num_tokens; t++)
        worst = d->tokens[t] > worst ? d->tokens[t] : worst;
    if (d->num_tokens == 0 || worst < vocab) return;
    for (uint64_t t = 0; t < d->num_tokens; t++) {
        if (d->tokens[t] < vocab) continue;
        uint64_t s = segment_of_token(d, t);
        describe_segment(d, s, where, sizeof where);
        PAFT_FATAL("%s: %s: token id %u at position %" PRIu64 " is out of range: the vocab size in "
                   "the header is %u",
                   d->path, where, d->tokens[t], t - d->offsets[s], vocab);
    }
}

static uint64_t validate_mask(const TokenData *d) {
    char where[96];
    uint64_t ones = 0;
    uint8_t seen = 0;
    for (uint64_t t = 0; t < d->num_tokens; t++) {
        ones += d->mask[t];
        seen |= d->mask[t];
    }
    if (seen > 1) {
        for (uint64_t t = 0; t < d->num_tokens; t++) {
            if (d->mask[t] <= 1) continue;
            uint64_t s = segment_of_token(d, t);
            describe_segment(d, s, where, sizeof where);
            PAFT_FATAL("%s: %s: loss mask byte at position %" PRIu64 " is %u (must be 0 or 1)",
                       d->path, where, t - d->offsets[s], d->mask[t]);
        }
    }
    return ones;
}

TokenData *token_data_open(const char *path, TokenDataKind expected_kind, uint32_t model_vocab) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) PAFT_FATAL("%s: cannot open token data: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) PAFT_FATAL("%s: cannot stat: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) PAFT_FATAL("%s: not a regular file", path);
    uint64_t file_bytes = (uint64_t)st.st_size;
    if (file_bytes == 0) PAFT_FATAL("%s: file is empty (expected paft token data)", path);
    if (file_bytes < TOKEN_DATA_HEADER_BYTES)
        PAFT_FATAL("%s: truncated: %" PRIu64 " bytes, shorter than the %u-byte token data header",
                   path, file_bytes, TOKEN_DATA_HEADER_BYTES);
    if (file_bytes > SIZE_MAX) PAFT_FATAL("%s: too large to map on this machine", path);

    void *map = mmap(NULL, (size_t)file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED)
        PAFT_FATAL("%s: cannot mmap %" PRIu64 " bytes: %s", path, file_bytes, strerror(errno));
    close(fd); /* the mapping keeps the file alive */
    /* Validation reads everything front to back once; tell the kernel to read ahead. */
    madvise(map, (size_t)file_bytes, MADV_SEQUENTIAL);

    const uint8_t *bytes = map;
    validate_header(path, bytes);

    TokenData *d = paft_calloc(1, sizeof *d);
    d->path = paft_strdup(path);
    d->kind = (TokenDataKind)get_u32(bytes + HDR_KIND);
    d->vocab_size = get_u32(bytes + HDR_VOCAB_SIZE);
    d->num_records = get_u64(bytes + HDR_NUM_RECORDS);
    d->num_tokens = get_u64(bytes + HDR_NUM_TOKENS);
    d->payload_crc32 = get_u32(bytes + HDR_PAYLOAD_CRC);
    d->file_bytes = file_bytes;
    d->mapping = map;
    d->mapping_bytes = file_bytes;

    if (expected_kind != TOKEN_DATA_ANY && d->kind != expected_kind)
        PAFT_FATAL("%s: holds %s data but %s data is needed here (wrong file for this stage?)",
                   path, token_data_kind_name(d->kind), token_data_kind_name(expected_kind));
    if (model_vocab != 0 && d->vocab_size > model_vocab)
        PAFT_FATAL("%s: tokenized for a vocabulary of %u ids but the model has only %u: made with "
                   "another model's tokenizer?",
                   path, d->vocab_size, model_vocab);

    validate_sizes(path, d->kind, d->num_records, d->num_tokens, file_bytes);
    d->num_segments = d->num_records * segments_per_record(d->kind);
    d->offsets = (const uint64_t *)(bytes + TOKEN_DATA_HEADER_BYTES);
    d->tokens = (const uint32_t *)(d->offsets + d->num_segments + 1);
    d->mask = d->kind == TOKEN_DATA_SFT ? (const uint8_t *)(d->tokens + d->num_tokens) : NULL;

    validate_offsets(d);
    validate_tokens(d);
    if (d->kind == TOKEN_DATA_SFT) {
        d->num_loss_tokens = validate_mask(d);
    } else {
        for (uint64_t r = 0; r < d->num_records; r++) {
            PrefRecord p = token_data_pref(d, r);
            d->num_loss_tokens += p.chosen_length + p.rejected_length;
        }
    }
    uint32_t crc = paft_crc32(0, bytes + TOKEN_DATA_HEADER_BYTES,
                              (size_t)(file_bytes - TOKEN_DATA_HEADER_BYTES));
    if (crc != d->payload_crc32)
        PAFT_FATAL("%s: data checksum mismatch (stored 0x%08x, computed 0x%08x): the file is "
                   "corrupt (damaged copy?)",
                   path, d->payload_crc32, crc);

    for (uint64_t r = 0; r < d->num_records; r++)
        d->max_length = PAFT_MAX(d->max_length, token_data_record_length(d, r));
    /* Training visits records in shuffled order from here on. */
    madvise(map, (size_t)file_bytes, MADV_NORMAL);
    return d;
}

void token_data_close(TokenData *data) {
    if (!data) return;
    munmap(data->mapping, (size_t)data->mapping_bytes);
    free(data->path);
    free(data);
}

int token_data_is_token_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char magic[8];
    int ok = fread(magic, 1, 8, f) == 8 && memcmp(magic, TOKEN_DATA_MAGIC, 8) == 0;
    fclose(f);
    return ok;
}

/* ---- records ------------------------------------------------------------------------------ */

SftRecord token_data_sft(const TokenData *data, uint64_t index) {
    if (data->kind != TOKEN_DATA_SFT)
        PAFT_FATAL("%s: SFT record requested from %s data", data->path,
                   token_data_kind_name(data->kind));
    if (index >= data->num_records)
        PAFT_FATAL("%s: record %" PRIu64 " requested, the file has %" PRIu64, data->path, index,
                   data->num_records);
    uint64_t begin = data->offsets[index];
    SftRecord r = {data->tokens + begin, data->mask + begin, data->offsets[index + 1] - begin};
    return r;
}

PrefRecord token_data_pref(const TokenData *data, uint64_t index) {
    if (data->kind != TOKEN_DATA_PREF)
        PAFT_FATAL("%s: preference record requested from %s data", data->path,
                   token_data_kind_name(data->kind));
    if (index >= data->num_records)
        PAFT_FATAL("%s: record %" PRIu64 " requested, the file has %" PRIu64, data->path, index,
                   data->num_records);
    const uint64_t *o = data->offsets + 3 * index;
    PrefRecord r;
    r.prompt = data->tokens + o[0];
    r.chosen = data->tokens + o[1];
    r.rejected = data->tokens + o[2];
    r.prompt_length = o[1] - o[0];
    r.chosen_length = o[2] - o[1];
    r.rejected_length = o[3] - o[2];
    return r;
}

uint64_t token_data_record_length(const TokenData *data, uint64_t index) {
    if (data->kind == TOKEN_DATA_SFT) return token_data_sft(data, index).length;
    PrefRecord p = token_data_pref(data, index);
    return p.prompt_length + PAFT_MAX(p.chosen_length, p.rejected_length);
}

void token_data_check_max_length(const TokenData *data, uint64_t seq_len) {
    if (data->max_length <= seq_len) return;
    for (uint64_t r = 0; r < data->num_records; r++) {
        if (token_data_record_length(data, r) <= seq_len) continue;
        if (data->kind == TOKEN_DATA_SFT)
            PAFT_FATAL("%s: record %" PRIu64 " has %" PRIu64 " tokens, longer than seq_len %" PRIu64
                       " (longest record: %" PRIu64 "); re-run inputs/prepare.py with "
                       "--max-len %" PRIu64 " or raise seq_len",
                       data->path, r, token_data_sft(data, r).length, seq_len, data->max_length,
                       seq_len);
        PrefRecord p = token_data_pref(data, r);
        PAFT_FATAL("%s: record %" PRIu64 " is longer than seq_len %" PRIu64 ": prompt %" PRIu64
                   " + chosen %" PRIu64 " = %" PRIu64 " tokens, prompt + rejected %" PRIu64
                   " = %" PRIu64 " (longest record: %" PRIu64 "); re-run inputs/prepare.py with "
                   "--max-len %" PRIu64 " or raise seq_len",
                   data->path, r, seq_len, p.prompt_length, p.chosen_length,
                   p.prompt_length + p.chosen_length, p.rejected_length,
                   p.prompt_length + p.rejected_length, data->max_length, seq_len);
    }
}

/* ---- describe ----------------------------------------------------------------------------- */

typedef struct {
    uint64_t min, max, sum, count;
} LengthStats;

static void stats_add(LengthStats *s, uint64_t v) {
    if (s->count == 0 || v < s->min) s->min = v;
    if (v > s->max) s->max = v;
    s->sum += v;
    s->count++;
}

static void stats_print(FILE *out, const char *label, const LengthStats *s) {
    if (s->count == 0) {
        fprintf(out, "  %-18s (no records)\n", label);
        return;
    }
    fprintf(out, "  %-18s min %" PRIu64 "  mean %.1f  max %" PRIu64 "\n", label, s->min,
            (double)s->sum / (double)s->count, s->max);
}

void token_data_describe(const TokenData *data, FILE *out) {
    fprintf(out, "%s: paft token data, version %u\n", data->path, TOKEN_DATA_VERSION);
    fprintf(out, "  kind               %s\n", token_data_kind_name(data->kind));
    fprintf(out, "  records            %" PRIu64 "\n", data->num_records);
    fprintf(out, "  tokens             %" PRIu64 "\n", data->num_tokens);
    fprintf(out, "  vocab size         %u\n", data->vocab_size);
    fprintf(out, "  file bytes         %" PRIu64 "\n", data->file_bytes);
    fprintf(out, "  checksum           0x%08x (verified)\n", data->payload_crc32);
    if (data->kind == TOKEN_DATA_SFT) {
        LengthStats len = {0};
        for (uint64_t r = 0; r < data->num_records; r++)
            stats_add(&len, token_data_sft(data, r).length);
        stats_print(out, "length (tokens)", &len);
        fprintf(out, "  loss tokens        %" PRIu64 " (%.1f%% of tokens have mask 1)\n",
                data->num_loss_tokens,
                data->num_tokens ? 100.0 * (double)data->num_loss_tokens / (double)data->num_tokens
                                 : 0.0);
    } else {
        LengthStats prompt = {0}, chosen = {0}, rejected = {0}, longest = {0};
        for (uint64_t r = 0; r < data->num_records; r++) {
            PrefRecord p = token_data_pref(data, r);
            stats_add(&prompt, p.prompt_length);
            stats_add(&chosen, p.chosen_length);
            stats_add(&rejected, p.rejected_length);
            stats_add(&longest, token_data_record_length(data, r));
        }
        stats_print(out, "length (tokens)", &longest);
        stats_print(out, "prompt", &prompt);
        stats_print(out, "chosen", &chosen);
        stats_print(out, "rejected", &rejected);
        fprintf(out, "  loss tokens        %" PRIu64 " (chosen + rejected)\n",
                data->num_loss_tokens);
    }
    fprintf(out, "  max sequence       %" PRIu64 " tokens (seq_len must be at least this)\n",
            data->max_length);
}

/* ---- writing ------------------------------------------------------------------------------ */

TokenDataWriter *token_data_writer_create(const char *path, TokenDataKind kind, uint32_t vocab) {
    if (kind != TOKEN_DATA_SFT && kind != TOKEN_DATA_PREF)
        PAFT_FATAL("%s: token data writer needs kind sft or pref, got %d", path, (int)kind);
    if (vocab == 0) PAFT_FATAL("%s: token data writer needs a vocab size > 0", path);
    TokenDataWriter *w = paft_calloc(1, sizeof *w);
    w->path = paft_strdup(path);
    w->kind = kind;
    w->vocab_size = vocab;
    w->offsets_capacity = 64;
    w->offsets = paft_malloc(w->offsets_capacity * sizeof *w->offsets);
    w->offsets[0] = 0;
    return w;
}

static void writer_add_segment(TokenDataWriter *w, const uint32_t *tokens, const uint8_t *mask,
                               uint64_t n, const char *part) {
    if (n == 0)
        PAFT_FATAL("%s: record %" PRIu64 "%s%s is empty (every segment needs a token)", w->path,
                   w->num_records, part[0] ? " " : "", part);
    for (uint64_t i = 0; i < n; i++) {
        if (tokens[i] >= w->vocab_size)
            PAFT_FATAL("%s: record %" PRIu64 "%s%s: token id %u at position %" PRIu64
                       " is not below the vocab size %u",
                       w->path, w->num_records, part[0] ? " " : "", part, tokens[i], i,
                       w->vocab_size);
        if (mask && mask[i] > 1)
            PAFT_FATAL("%s: record %" PRIu64 ": mask value %u at position %" PRIu64
                       " (must be 0 or 1)",
                       w->path, w->num_records, mask[i], i);
    }
    if (w->num_segments + 2 > w->offsets_capacity) {
        w->offsets_capacity *= 2;
        w->offsets = paft_realloc(w->offsets, w->offsets_capacity * sizeof *w->offsets);
    }
    if (w->num_tokens + n > w->tokens_capacity) {
        w->tokens_capacity = PAFT_MAX(2 * w->tokens_capacity, w->num_tokens + n);
        w->tokens = paft_realloc(w->tokens, w->tokens_capacity * sizeof *w->tokens);
        if (w->kind == TOKEN_DATA_SFT) w->mask = paft_realloc(w->mask, w->tokens_capacity);
    }
    memcpy(w->tokens + w->num_tokens, tokens, n * sizeof *tokens);
    if (mask) memcpy(w->mask + w->num_tokens, mask, n);
    w->num_tokens += n;
    w->offsets[++w->num_segments] = w->num_tokens;
}

void token_data_writer_add_sft(TokenDataWriter *writer, const uint32_t *tokens, const uint8_t *mask,
                               uint64_t length) {
    if (writer->kind != TOKEN_DATA_SFT)
        PAFT_FATAL("%s: adding an SFT record to a %s file", writer->path,
                   token_data_kind_name(writer->kind));
    if (!mask && length > 0) PAFT_FATAL("%s: SFT record without a loss mask", writer->path);
    writer_add_segment(writer, tokens, mask, length, "");
    writer->num_records++;
}

void token_data_writer_add_pref(TokenDataWriter *writer, const uint32_t *prompt,
                                uint64_t prompt_length, const uint32_t *chosen,
                                uint64_t chosen_length, const uint32_t *rejected,
                                uint64_t rejected_length) {
    if (writer->kind != TOKEN_DATA_PREF)
        PAFT_FATAL("%s: adding a preference record to a %s file", writer->path,
                   token_data_kind_name(writer->kind));
    writer_add_segment(writer, prompt, NULL, prompt_length, "prompt");
    writer_add_segment(writer, chosen, NULL, chosen_length, "chosen");
    writer_add_segment(writer, rejected, NULL, rejected_length, "rejected");
    writer->num_records++;
}

static void write_all(FILE *f, const char *tmp, const void *data, size_t n) {
    if (n > 0 && fwrite(data, 1, n, f) != n) {
        int err = errno;
        fclose(f);
        remove(tmp);
        PAFT_FATAL("%s: write failed: %s", tmp, strerror(err));
    }
}

void token_data_writer_finish(TokenDataWriter *w) {
    size_t offsets_bytes = (size_t)(w->num_segments + 1) * sizeof(uint64_t);
    size_t tokens_bytes = (size_t)w->num_tokens * sizeof(uint32_t);
    size_t mask_bytes = w->kind == TOKEN_DATA_SFT ? (size_t)w->num_tokens : 0;
    uint32_t crc = paft_crc32(0, w->offsets, offsets_bytes);
    crc = paft_crc32(crc, w->tokens, tokens_bytes);
    crc = paft_crc32(crc, w->mask, mask_bytes);

    uint8_t header[TOKEN_DATA_HEADER_BYTES] = {0};
    memcpy(header + HDR_MAGIC, TOKEN_DATA_MAGIC, 8);
    put_u32(header + HDR_VERSION, TOKEN_DATA_VERSION);
    put_u32(header + HDR_KIND, (uint32_t)w->kind);
    put_u64(header + HDR_NUM_RECORDS, w->num_records);
    put_u64(header + HDR_NUM_TOKENS, w->num_tokens);
    put_u32(header + HDR_VOCAB_SIZE, w->vocab_size);
    put_u32(header + HDR_PAYLOAD_CRC, crc);
    put_u32(header + HDR_HEADER_CRC, paft_crc32(0, header, HDR_HEADER_CRC));

    size_t tmp_size = strlen(w->path) + 32;
    char *tmp = paft_malloc(tmp_size);
    snprintf(tmp, tmp_size, "%s.tmp.%ld", w->path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) PAFT_FATAL("%s: cannot create: %s", tmp, strerror(errno));
    write_all(f, tmp, header, sizeof header);
    write_all(f, tmp, w->offsets, offsets_bytes);
    write_all(f, tmp, w->tokens, tokens_bytes);
    write_all(f, tmp, w->mask, mask_bytes);
    /* Flush to disk before the rename, so a crash leaves the old file or the whole new one. */
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
        int err = errno;
        fclose(f);
        remove(tmp);
        PAFT_FATAL("%s: cannot flush: %s", tmp, strerror(err));
    }
    if (fclose(f) != 0) {
        remove(tmp);
        PAFT_FATAL("%s: cannot close: %s", tmp, strerror(errno));
    }
    if (rename(tmp, w->path) != 0) {
        int err = errno;
        remove(tmp);
        PAFT_FATAL("%s: cannot rename %s into place: %s", w->path, tmp, strerror(err));
    }
    free(tmp);
    free(w->path);
    free(w->offsets);
    free(w->tokens);
    free(w->mask);
    free(w);
}
