/*
 * test_token_data.c - the token data format: C writer -> reader round trips (every token, mask
 * byte and length back exactly), the byte layout against docs/DATA_FORMAT.md read with plain
 * fread, CRC-32 and splitmix64 against published values, and the shuffle order: deterministic,
 * a true permutation, different per epoch and seed, and unbiased on small n.
 */
#include <inttypes.h>
#include <string.h>

#include "data/token_data.h"
#include "test_util.h"
#include "util/common.h"

/* A small deterministic generator for test contents (independent of the one under test). */
static uint32_t lcg(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(*s >> 33);
}

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t le64(const unsigned char *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

static unsigned char *slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    rewind(f);
    unsigned char *b = malloc(*size + 1);
    if (fread(b, 1, *size, f) != *size) *size = 0;
    fclose(f);
    return b;
}

static void test_crc32(void) {
    /* The standard check value of CRC-32/ISO-HDLC (zlib): "123456789" -> 0xCBF43926. */
    CHECK(paft_crc32(0, "123456789", 9) == 0xCBF43926u, "got 0x%08x",
          paft_crc32(0, "123456789", 9));
    CHECK(paft_crc32(0, "", 0) == 0, "empty input");
    /* Chaining over pieces (the 8-byte loop and the byte tail) equals one call on the whole. */
    unsigned char buf[1000];
    uint64_t s = 1;
    for (int i = 0; i < 1000; i++)
        buf[i] = (unsigned char)lcg(&s);
    uint32_t whole = paft_crc32(0, buf, 1000);
    uint32_t parts = paft_crc32(paft_crc32(paft_crc32(0, buf, 3), buf + 3, 500), buf + 503, 497);
    CHECK(whole == parts, "chained 0x%08x vs whole 0x%08x", parts, whole);
    /* And equals a bit-at-a-time reference straight from the definition. */
    uint32_t c = 0xFFFFFFFFu;
    for (int i = 0; i < 1000; i++) {
        c ^= buf[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    CHECK(whole == ~c, "table 0x%08x vs bitwise 0x%08x", whole, ~c);
}

static void test_splitmix64(void) {
    /* splitmix64 seeded with 0: the first outputs as published with the algorithm (Vigna's
     * reference splitmix64.c), also used to seed xoshiro. */
    uint64_t state = 0;
    uint64_t a = splitmix64_next(&state), b = splitmix64_next(&state), c = splitmix64_next(&state);
    CHECK(a == 0xE220A8397B1DCDAFull, "first 0x%016" PRIx64, a);
    CHECK(b == 0x6E789E6AA1B965F4ull, "second 0x%016" PRIx64, b);
    CHECK(c == 0x06C45D188009454Full, "third 0x%016" PRIx64, c);
}

static int is_permutation(const uint64_t *order, uint64_t n) {
    unsigned char *seen = calloc(n + 1, 1);
    int ok = 1;
    for (uint64_t i = 0; i < n; i++) {
        if (order[i] >= n || seen[order[i]])
            ok = 0;
        else
            seen[order[i]] = 1;
    }
    free(seen);
    return ok;
}

static void test_permutation(void) {
    enum { N = 1000 };
    static uint64_t a[N], b[N], c[N], d[N];
    token_data_permutation(N, 42, 0, a);
    token_data_permutation(N, 42, 0, b);
    token_data_permutation(N, 42, 1, c);
    token_data_permutation(N, 43, 0, d);
    CHECK(is_permutation(a, N), "epoch 0 is a permutation of 0..N-1");
    CHECK(is_permutation(c, N), "epoch 1 is a permutation of 0..N-1");
    CHECK(memcmp(a, b, sizeof a) == 0, "same seed and epoch give the same order");
    CHECK(memcmp(a, c, sizeof a) != 0, "another epoch gives another order");
    CHECK(memcmp(a, d, sizeof a) != 0, "another seed gives another order");
    int fixed = 0;
    for (int i = 0; i < N; i++)
        fixed += a[i] == (uint64_t)i;
    CHECK(fixed < 10, "a shuffle, not the identity: %d fixed points (expected about 1)", fixed);

    uint64_t one = 99;
    token_data_permutation(1, 5, 5, &one);
    CHECK(one == 0, "n = 1 gives [0]");
    token_data_permutation(0, 5, 5, NULL); /* n = 0 must not touch the array */

    /* n = 2, derived by hand from the documented recipe: one draw j = uniform(2), swap(1, j). */
    for (uint64_t epoch = 0; epoch < 4; epoch++) {
        uint64_t state = 7 ^ splitmix64_mix(epoch + 0x9E3779B97F4A7C15ull);
        uint64_t r = splitmix64_next(&state); /* below 2^64 - 2 except with probability 2^-63 */
        uint64_t expect0 = (r % 2 == 1) ? 0 : 1;
        uint64_t two[2];
        token_data_permutation(2, 7, epoch, two);
        CHECK(two[0] == expect0 && two[1] == 1 - expect0,
              "n=2 epoch %" PRIu64 ": [%" PRIu64 " %" PRIu64 "]", epoch, two[0], two[1]);
    }

    /* Unbiased: over 6000 epochs each of the 6 orders of 3 items appears about 1000 times. */
    int counts[6] = {0};
    for (uint64_t epoch = 0; epoch < 6000; epoch++) {
        uint64_t o[3];
        token_data_permutation(3, 1, epoch, o);
        counts[o[0] * 2 + (o[1] > o[2])]++;
    }
    for (int k = 0; k < 6; k++)
        CHECK(counts[k] > 850 && counts[k] < 1150, "order %d seen %d times of 6000", k, counts[k]);
}

static void test_sft_round_trip(void) {
    const char *path = "roundtrip_sft.bin";
    enum { R = 40 };
    static uint32_t toks[R][300];
    static uint8_t masks[R][300];
    uint64_t lens[R], total = 0, ones = 0, longest = 0;
    uint64_t s = 12345;
    TokenDataWriter *w = token_data_writer_create(path, TOKEN_DATA_SFT, 32000);
    for (int r = 0; r < R; r++) {
        lens[r] = 1 + lcg(&s) % 300;
        for (uint64_t i = 0; i < lens[r]; i++) {
            toks[r][i] = lcg(&s) % 32000;
            masks[r][i] = (uint8_t)(lcg(&s) % 3 == 0);
            ones += masks[r][i];
        }
        toks[r][0] = 31999; /* the largest legal id */
        total += lens[r];
        longest = PAFT_MAX(longest, lens[r]);
        token_data_writer_add_sft(w, toks[r], masks[r], lens[r]);
    }
    token_data_writer_finish(w);

    TokenData *d = token_data_open(path, TOKEN_DATA_SFT, 32000);
    CHECK(d->kind == TOKEN_DATA_SFT && d->num_records == R && d->num_tokens == total,
          "header: kind %d records %" PRIu64 " tokens %" PRIu64, d->kind, d->num_records,
          d->num_tokens);
    CHECK(d->vocab_size == 32000, "vocab %u", d->vocab_size);
    CHECK(d->num_loss_tokens == ones, "loss tokens %" PRIu64 " vs %" PRIu64, d->num_loss_tokens,
          ones);
    CHECK(d->max_length == longest, "max length %" PRIu64 " vs %" PRIu64, d->max_length, longest);
    int same = 1;
    for (int r = 0; r < R; r++) {
        SftRecord rec = token_data_sft(d, (uint64_t)r);
        if (rec.length != lens[r] || memcmp(rec.tokens, toks[r], lens[r] * 4) != 0 ||
            memcmp(rec.mask, masks[r], lens[r]) != 0)
            same = 0;
        if (token_data_record_length(d, (uint64_t)r) != lens[r]) same = 0;
    }
    CHECK(same, "every record reads back exactly");
    token_data_check_max_length(d, longest); /* exactly at the limit: must pass (no exit) */
    CHECK(1, "check_max_length at the limit returns");

    /* The bytes on disk, read without the reader, follow docs/DATA_FORMAT.md. */
    size_t size = 0;
    unsigned char *b = slurp(path, &size);
    CHECK(b && size == 64 + 8 * (R + 1) + 5 * total, "file size %zu", size);
    if (b && size == 64 + 8 * (R + 1) + 5 * total) {
        CHECK(memcmp(b, "PAFTTOK1", 8) == 0, "magic");
        CHECK(le32(b + 8) == 1 && le32(b + 12) == 1, "version %u kind %u", le32(b + 8),
              le32(b + 12));
        CHECK(le64(b + 16) == R && le64(b + 24) == total && le32(b + 32) == 32000, "counts");
        CHECK(le32(b + 36) == 0, "flags");
        CHECK(le32(b + 40) == paft_crc32(0, b + 64, size - 64), "payload crc");
        CHECK(le32(b + 60) == paft_crc32(0, b, 60), "header crc");
        uint64_t off = 0;
        int ok = le64(b + 64) == 0;
        for (int r = 0; r < R; r++) {
            off += lens[r];
            ok &= le64(b + 64 + 8 * (r + 1)) == off;
        }
        CHECK(ok, "offset table = running sums of the lengths");
        const unsigned char *tok = b + 64 + 8 * (R + 1), *mask = tok + 4 * total;
        CHECK(le32(tok) == toks[0][0] && le32(tok + 4 * lens[0]) == toks[1][0], "token section");
        CHECK(mask[lens[0]] == masks[1][0] && mask[total - 1] == masks[R - 1][lens[R - 1] - 1],
              "mask section after the tokens");
    }
    free(b);

    FILE *tmp = tmpfile();
    token_data_describe(d, tmp);
    rewind(tmp);
    char text[4096] = "";
    size_t n = fread(text, 1, sizeof text - 1, tmp);
    text[n] = 0;
    fclose(tmp);
    char want[128];
    snprintf(want, sizeof want, "records            %d\n", R);
    CHECK(strstr(text, want) != NULL, "describe shows the record count:\n%s", text);
    CHECK(strstr(text, "kind               sft") != NULL, "describe shows the kind");
    CHECK(strstr(text, "loss tokens") != NULL, "describe shows the loss tokens");
    token_data_close(d);

    CHECK(token_data_is_token_file(path), "is_token_file on a token file");
    CHECK(!token_data_is_token_file("no_such_file.bin"), "is_token_file on a missing file");
}

static void test_pref_round_trip(void) {
    const char *path = "roundtrip_pref.bin";
    const uint32_t p0[] = {5, 6}, c0[] = {7, 8, 9}, r0[] = {10};
    const uint32_t p1[] = {1}, c1[] = {2}, r1[] = {3, 4, 0, 99};
    TokenDataWriter *w = token_data_writer_create(path, TOKEN_DATA_PREF, 100);
    token_data_writer_add_pref(w, p0, 2, c0, 3, r0, 1);
    token_data_writer_add_pref(w, p1, 1, c1, 1, r1, 4);
    token_data_writer_finish(w);

    TokenData *d = token_data_open(path, TOKEN_DATA_ANY, 0);
    CHECK(d->kind == TOKEN_DATA_PREF && d->num_records == 2 && d->num_tokens == 12, "header");
    CHECK(d->mask == NULL && d->num_segments == 6, "no mask, three segments per record");
    CHECK(d->num_loss_tokens == 3 + 1 + 1 + 4, "loss tokens = chosen + rejected: %" PRIu64,
          d->num_loss_tokens);
    CHECK(d->max_length == 5, "max of prompt+chosen, prompt+rejected: %" PRIu64, d->max_length);
    PrefRecord a = token_data_pref(d, 0), b = token_data_pref(d, 1);
    CHECK(a.prompt_length == 2 && a.chosen_length == 3 && a.rejected_length == 1,
          "record 0 lengths");
    CHECK(memcmp(a.prompt, p0, 8) == 0 && memcmp(a.chosen, c0, 12) == 0 && a.rejected[0] == 10,
          "record 0 tokens");
    CHECK(b.prompt_length == 1 && b.chosen_length == 1 && b.rejected_length == 4,
          "record 1 lengths");
    CHECK(b.prompt[0] == 1 && b.chosen[0] == 2 && memcmp(b.rejected, r1, 16) == 0,
          "record 1 tokens");
    CHECK(token_data_record_length(d, 0) == 5 && token_data_record_length(d, 1) == 5, "lengths");
    token_data_check_max_length(d, 5);
    size_t size = 0;
    unsigned char *bytes = slurp(path, &size);
    CHECK(size == 64 + 8 * 7 + 4 * 12, "pref file size %zu (no mask section)", size);
    CHECK(bytes && le32(bytes + 12) == 2, "kind 2 on disk");
    free(bytes);
    token_data_close(d);
}

static void test_empty_file_of_records(void) {
    const char *path = "roundtrip_empty.bin";
    token_data_writer_finish(token_data_writer_create(path, TOKEN_DATA_SFT, 10));
    TokenData *d = token_data_open(path, TOKEN_DATA_SFT, 10);
    CHECK(d->num_records == 0 && d->num_tokens == 0 && d->max_length == 0, "zero records");
    FILE *tmp = tmpfile();
    token_data_describe(d, tmp);
    fclose(tmp);
    token_data_close(d);
}

int main(void) {
    test_crc32();
    test_splitmix64();
    test_permutation();
    test_sft_round_trip();
    test_pref_round_trip();
    test_empty_file_of_records();
    CHECK(token_data_kind_from_name("pref") == TOKEN_DATA_PREF &&
              token_data_kind_from_name("x") < 0,
          "kind names");
    return test_finish("test_token_data");
}
