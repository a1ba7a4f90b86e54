/*
 * fuzz_token_data.c - a token data file (.bin, docs/DATA_FORMAT.md): `paft inspect FILE`, then
 * token_data_open as training opens it, the summary, the length check and every record.
 *
 * Both CRCs guard the file, so random bytes would almost never get past the header. The first
 * input byte is a control byte: unless its bit 0 is set, the harness stores correct header and
 * payload CRCs over the rest of the input before writing the file, so the structural checks
 * behind them are reached. Bits 1-2 pick the kind training asks for, bit 3 a model vocabulary.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "data/token_data.h"
#include "fuzz_harness.h"

static const char *dir;
static FILE *sink;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    dir = fuzz_init();
    sink = fopen("/dev/null", "w");
    if (!sink) abort();
    return 0;
}

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void run(const char *path, uint8_t control) {
    char *argv[] = {"inspect", (char *)path, NULL};
    cmd_inspect(2, argv);

    static const TokenDataKind kinds[4] = {TOKEN_DATA_ANY, TOKEN_DATA_SFT, TOKEN_DATA_PREF,
                                           TOKEN_DATA_ANY};
    TokenData *d = token_data_open(path, kinds[(control >> 1) & 3], control & 8 ? 100 : 0);
    token_data_describe(d, sink);
    token_data_check_max_length(d, d->max_length);
    uint64_t sum = 0;
    for (uint64_t r = 0; r < d->num_records; r++) {
        if (d->kind == TOKEN_DATA_SFT) {
            SftRecord s = token_data_sft(d, r);
            for (uint64_t t = 0; t < s.length; t++) sum += s.tokens[t] + s.mask[t];
        } else {
            PrefRecord p = token_data_pref(d, r);
            sum += p.prompt[0] + p.chosen[p.chosen_length - 1] + p.rejected[p.rejected_length - 1];
        }
    }
    if (d->num_records > 0 && d->num_records < 4096) {
        uint64_t *order = malloc(d->num_records * sizeof *order);
        token_data_permutation(d->num_records, sum, 1, order);
        free(order);
    }
    token_data_close(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[4096];
    if (size < 1) return 0;
    uint8_t control = data[0];
    size_t n = size - 1;
    uint8_t *bytes = malloc(n ? n : 1);
    memcpy(bytes, data + 1, n);
    if (!(control & 1) && n >= TOKEN_DATA_HEADER_BYTES) {
        put_u32(bytes + 40, paft_crc32(0, bytes + 64, n - 64));
        put_u32(bytes + 60, paft_crc32(0, bytes, 60));
    }
    fuzz_write_file(path, dir, "data.bin", bytes, n);
    free(bytes);
    fuzz_begin(path);
    if (setjmp(fuzz_on_fatal) == 0) run(path, control);
    fuzz_end();
    return 0;
}
