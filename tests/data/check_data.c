/*
 * check_data.c - open a token data file the way training does and print what paft inspect
 * prints. The bad-input tests run it on broken files and expect a clean error; the Python tests
 * run it on what inputs/prepare.py wrote, so the C reader checks the Python writer.
 *
 *   check_data FILE KIND VOCAB SEQ_LEN [--dump] [--order SEED EPOCH]
 *
 * KIND: sft | pref | any. VOCAB: the model's vocab size (0 = no check). SEQ_LEN: fail when a
 * record is longer (0 = no check). --dump prints every record, one line each:
 *   sft R: t0 t1 ... | m0 m1 ...        pref R: p0 p1 ... | c0 ... | r0 ...
 * --order prints "order: i0 i1 ..." = token_data_permutation(records, SEED, EPOCH).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "data/token_data.h"

static void print_ids(const uint32_t *ids, uint64_t n) {
    for (uint64_t i = 0; i < n; i++)
        printf(" %u", ids[i]);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: check_data FILE sft|pref|any VOCAB SEQ_LEN [--dump] "
                        "[--order SEED EPOCH]\n");
        return 2;
    }
    int kind = token_data_kind_from_name(argv[2]);
    if (kind < 0) {
        fprintf(stderr, "check_data: kind must be sft, pref or any, not '%s'\n", argv[2]);
        return 2;
    }
    uint32_t vocab = (uint32_t)strtoul(argv[3], NULL, 10);
    uint64_t seq_len = strtoull(argv[4], NULL, 10);

    TokenData *data = token_data_open(argv[1], (TokenDataKind)kind, vocab);
    if (seq_len > 0) token_data_check_max_length(data, seq_len);
    token_data_describe(data, stdout);

    for (int a = 5; a < argc; a++) {
        if (strcmp(argv[a], "--dump") == 0) {
            for (uint64_t r = 0; r < data->num_records; r++) {
                if (data->kind == TOKEN_DATA_SFT) {
                    SftRecord s = token_data_sft(data, r);
                    printf("sft %" PRIu64 ":", r);
                    print_ids(s.tokens, s.length);
                    printf(" |");
                    for (uint64_t i = 0; i < s.length; i++)
                        printf(" %u", s.mask[i]);
                } else {
                    PrefRecord p = token_data_pref(data, r);
                    printf("pref %" PRIu64 ":", r);
                    print_ids(p.prompt, p.prompt_length);
                    printf(" |");
                    print_ids(p.chosen, p.chosen_length);
                    printf(" |");
                    print_ids(p.rejected, p.rejected_length);
                }
                printf("\n");
            }
        } else if (strcmp(argv[a], "--order") == 0 && a + 2 < argc) {
            uint64_t seed = strtoull(argv[a + 1], NULL, 10),
                     epoch = strtoull(argv[a + 2], NULL, 10);
            uint64_t n = data->num_records;
            uint64_t *order = malloc((n ? n : 1) * sizeof *order);
            token_data_permutation(n, seed, epoch, order);
            printf("order:");
            for (uint64_t i = 0; i < n; i++)
                printf(" %" PRIu64, order[i]);
            printf("\n");
            free(order);
            a += 2;
        } else {
            fprintf(stderr, "check_data: unknown option '%s'\n", argv[a]);
            token_data_close(data);
            return 2;
        }
    }
    token_data_close(data);
    return 0;
}
