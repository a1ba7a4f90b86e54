/*
 * make_bad_data.c - write small token data files, good and broken, into OUTDIR for the
 * bad-input tests (tests/data/CMakeLists.txt runs check_data on each and expects a clean error).
 *
 * The good files are written with the C writer; each broken one is a good file with a few bytes
 * changed at the positions docs/DATA_FORMAT.md gives (header offsets are spelled out here rather
 * than taken from token_data.c, so this also checks the documented layout). Where a case is meant
 * to reach a check behind the checksums, the checksums are recomputed after the change.
 *
 * good_sft.bin: vocab 50, 3 records: [1 2 3] mask [0 1 1]; [4..12] (9 tokens) mask 0000 11111;
 *               [49 0 7 8] mask [0 1 0 1].  16 tokens.
 * good_pref.bin: vocab 50, 2 records: prompt [1 2] chosen [3 4 5] rejected [6];
 *               prompt [7 8 9] chosen [10] rejected [11 12 13 14].
 * no_answer_sft.bin (2 records, every mask 0) and no_pairs.bin (0 records): valid, nothing to
 * score (tests/cli: paft eval refuses them).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/token_data.h"

/* Documented header layout. */
#define OFF_VERSION 8
#define OFF_KIND 12
#define OFF_RECORDS 16
#define OFF_PAYLOAD_CRC 40
#define OFF_RESERVED 44
#define OFF_HEADER_CRC 60
#define HEADER 64

typedef struct {
    unsigned char *bytes;
    size_t size;
} Blob;

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static Blob load(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    Blob b = {malloc(4096), 0};
    b.size = fread(b.bytes, 1, 4096, f);
    fclose(f);
    return b;
}

static void save(const char *dir, const char *name, const unsigned char *bytes, size_t size) {
    char *path = join(dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(bytes, 1, size, f) != size)) {
        perror(path);
        exit(1);
    }
    fclose(f);
    free(path);
}

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static void fix_header_crc(Blob *b) {
    put32(b->bytes + OFF_HEADER_CRC, paft_crc32(0, b->bytes, 60));
}
static void fix_crcs(Blob *b) {
    put32(b->bytes + OFF_PAYLOAD_CRC, paft_crc32(0, b->bytes + HEADER, b->size - HEADER));
    fix_header_crc(b);
}
static Blob copy(Blob b) {
    Blob c = {malloc(b.size ? b.size : 1), b.size};
    memcpy(c.bytes, b.bytes, b.size);
    return c;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: make_bad_data OUTDIR\n");
        return 2;
    }
    const char *dir = argv[1];
    mkdir(dir, 0777); /* may exist already; a real problem shows when the first file is written */

    /* ---- the good files ---- */
    char *sft_path = join(dir, "good_sft.bin");
    TokenDataWriter *w = token_data_writer_create(sft_path, TOKEN_DATA_SFT, 50);
    const uint32_t t0[] = {1, 2, 3}, t1[] = {4, 5, 6, 7, 8, 9, 10, 11, 12}, t2[] = {49, 0, 7, 8};
    const uint8_t m0[] = {0, 1, 1}, m1[] = {0, 0, 0, 0, 1, 1, 1, 1, 1}, m2[] = {0, 1, 0, 1};
    token_data_writer_add_sft(w, t0, m0, 3);
    token_data_writer_add_sft(w, t1, m1, 9);
    token_data_writer_add_sft(w, t2, m2, 4);
    token_data_writer_finish(w);

    char *pref_path = join(dir, "good_pref.bin");
    w = token_data_writer_create(pref_path, TOKEN_DATA_PREF, 50);
    const uint32_t p0[] = {1, 2}, c0[] = {3, 4, 5}, r0[] = {6};
    const uint32_t p1[] = {7, 8, 9}, c1[] = {10}, r1[] = {11, 12, 13, 14};
    token_data_writer_add_pref(w, p0, 2, c0, 3, r0, 1);
    token_data_writer_add_pref(w, p1, 3, c1, 1, r1, 4);
    token_data_writer_finish(w);

    /* valid files with nothing to score: SFT records without a loss-mask token, no pairs (paft
     * eval refuses them rather than report a mean over nothing) */
    char *path = join(dir, "no_answer_sft.bin");
    w = token_data_writer_create(path, TOKEN_DATA_SFT, 50);
    const uint8_t none[] = {0, 0, 0};
    token_data_writer_add_sft(w, t0, none, 3);
    token_data_writer_add_sft(w, t0, none, 3);
    token_data_writer_finish(w);
    free(path);
    path = join(dir, "no_pairs.bin");
    w = token_data_writer_create(path, TOKEN_DATA_PREF, 50);
    token_data_writer_finish(w);
    free(path);

    Blob sft = load(sft_path), pref = load(pref_path);
    /* good_sft: offsets u64[4] at 64, tokens u32[16] at 96, mask u8[16] at 160, size 176. */
    const size_t sft_tokens = HEADER + 8 * 4, sft_mask = sft_tokens + 4 * 16;
    if (sft.size != sft_mask + 16) {
        fprintf(stderr, "make_bad_data: good_sft.bin is %zu bytes, the layout says %zu\n", sft.size,
                sft_mask + 16);
        return 1;
    }

    /* ---- broken files ---- */
    save(dir, "empty.bin", sft.bytes, 0);
    save(dir, "short_header.bin", sft.bytes, 20);
    save(dir, "truncated.bin", sft.bytes, sft.size - 7);

    Blob b = copy(sft);
    b.bytes = realloc(b.bytes, b.size + 3);
    memset(b.bytes + b.size, 0, 3);
    save(dir, "trailing.bin", b.bytes, b.size + 3);
    free(b.bytes);

    b = copy(sft);
    memcpy(b.bytes, "GGUF\3\0\0\0", 8);
    save(dir, "bad_magic.bin", b.bytes, b.size);
    free(b.bytes);

    b = copy(sft);
    put32(b.bytes + OFF_VERSION, 2);
    fix_header_crc(&b);
    save(dir, "bad_version.bin", b.bytes, b.size);
    free(b.bytes);

    b = copy(sft);
    b.bytes[OFF_RESERVED + 3] = 1; /* checksum left stale */
    save(dir, "bad_header_crc.bin", b.bytes, b.size);
    free(b.bytes);

    b = copy(sft);
    put32(b.bytes + OFF_KIND, 3);
    fix_header_crc(&b);
    save(dir, "bad_kind.bin", b.bytes, b.size);
    free(b.bytes);

    b = copy(sft);
    put64(b.bytes + OFF_RECORDS, (uint64_t)1 << 62); /* would overflow a naive size formula */
    fix_header_crc(&b);
    save(dir, "huge_count.bin", b.bytes, b.size);
    free(b.bytes);

    b = copy(sft);
    put32(b.bytes + sft_tokens + 4 * (3 + 2), 50); /* record 1, position 2: id 50, vocab 50 */
    fix_crcs(&b);
    save(dir, "token_oob.bin", b.bytes, b.size);
    free(b.bytes);

    b = copy(sft);
    put64(b.bytes + HEADER + 8 * 1, 13); /* offsets 0 13 12 16: decreasing at record 1 */
    fix_crcs(&b);
    save(dir, "offsets_decreasing.bin", b.bytes, b.size);
    free(b.bytes);

    b = copy(sft);
    b.bytes[sft_mask + 5] = 2; /* record 1, position 2 */
    fix_crcs(&b);
    save(dir, "bad_mask.bin", b.bytes, b.size);
    free(b.bytes);

    b = copy(sft);
    put32(b.bytes + sft_tokens + 4 * 7, 31); /* a valid id, but the checksum no longer fits */
    save(dir, "bad_payload_crc.bin", b.bytes, b.size);
    free(b.bytes);

    /* good_pref: offsets u64[7] at 64 = 0 2 5 6 9 10 14. Make record 0's chosen empty. */
    b = copy(pref);
    put64(b.bytes + HEADER + 8 * 2, 2); /* 0 2 2 6 ...: chosen = [2, 2) */
    fix_crcs(&b);
    save(dir, "pref_empty_chosen.bin", b.bytes, b.size);
    free(b.bytes);

    free(sft.bytes);
    free(pref.bytes);
    free(sft_path);
    free(pref_path);
    printf("make_bad_data: wrote the test files to %s\n", dir);
    return 0;
}
