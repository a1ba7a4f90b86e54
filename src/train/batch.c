/* batch.c - records to [B][T] tokens and targets (see batch.h). */
#include "train/batch.h"

#include <stdlib.h>
#include <string.h>

#include "util/common.h"

void batch_alloc(Batch *b, int max_seqs, int max_len) {
    memset(b, 0, sizeof *b);
    b->capacity_seqs = max_seqs;
    b->capacity_len = max_len;
    size_t n = (size_t)max_seqs * max_len;
    b->tokens = paft_malloc(n * sizeof(int32_t));
    b->targets = paft_malloc(n * sizeof(int32_t));
    b->n_targets = paft_malloc((size_t)max_seqs * sizeof(int64_t));
}

void batch_free(Batch *b) {
    free(b->tokens);
    free(b->targets);
    free(b->n_targets);
    memset(b, 0, sizeof *b);
}

static void check_fits(const Batch *b, int n_seqs, uint64_t len, const TokenData *data,
                       uint64_t record) {
    if (n_seqs > b->capacity_seqs)
        PAFT_FATAL("internal: batch of %d sequences exceeds capacity %d", n_seqs, b->capacity_seqs);
    if (len > (uint64_t)b->capacity_len)
        PAFT_FATAL("%s: record %llu has %llu tokens, more than seq_len %d", data->path,
                   (unsigned long long)record, (unsigned long long)len, b->capacity_len);
}

int64_t sft_record_targets(const TokenData *data, uint64_t record) {
    SftRecord r = token_data_sft(data, record);
    int64_t n = 0;
    for (uint64_t t = 1; t < r.length; t++) n += r.mask[t] != 0;
    return n;
}

void batch_fill_sft(Batch *b, const TokenData *data, const uint64_t *records, int n) {
    uint64_t T = 1;
    for (int i = 0; i < n; i++) {
        SftRecord r = token_data_sft(data, records[i]);
        check_fits(b, n, r.length, data, records[i]);
        if (r.length > T) T = r.length;
    }
    b->n_seqs = n;
    b->T = (int)T;
    for (int i = 0; i < n; i++) {
        SftRecord r = token_data_sft(data, records[i]);
        int32_t *tok = b->tokens + (size_t)i * T, *tgt = b->targets + (size_t)i * T;
        b->n_targets[i] = 0;
        for (uint64_t t = 0; t < T; t++) {
            tok[t] = t < r.length ? (int32_t)r.tokens[t] : 0;
            int has_target = t + 1 < r.length && r.mask[t + 1];
            tgt[t] = has_target ? (int32_t)r.tokens[t + 1] : -1;
            b->n_targets[i] += has_target;
        }
    }
}

/* One row: prompt ++ completion, targets on the completion tokens only. */
static void fill_pair_row(int32_t *tok, int32_t *tgt, int64_t *n_targets, uint64_t T,
                          const uint32_t *prompt, uint64_t np, const uint32_t *completion,
                          uint64_t nc) {
    uint64_t len = np + nc;
    *n_targets = 0;
    for (uint64_t t = 0; t < T; t++) {
        tok[t] = t < np ? (int32_t)prompt[t] : t < len ? (int32_t)completion[t - np] : 0;
        uint64_t next = t + 1;
        int has_target = next >= np && next < len;
        tgt[t] = has_target ? (int32_t)completion[next - np] : -1;
        *n_targets += has_target;
    }
}

void batch_fill_pref(Batch *b, const TokenData *data, const uint64_t *records, int n) {
    uint64_t T = 1;
    for (int i = 0; i < n; i++) {
        PrefRecord r = token_data_pref(data, records[i]);
        uint64_t len = r.prompt_length + PAFT_MAX(r.chosen_length, r.rejected_length);
        check_fits(b, 2 * n, len, data, records[i]);
        if (len > T) T = len;
    }
    b->n_seqs = 2 * n;
    b->T = (int)T;
    for (int i = 0; i < n; i++) {
        PrefRecord r = token_data_pref(data, records[i]);
        fill_pair_row(b->tokens + (size_t)i * T, b->targets + (size_t)i * T, &b->n_targets[i], T,
                      r.prompt, r.prompt_length, r.chosen, r.chosen_length);
        fill_pair_row(b->tokens + (size_t)(n + i) * T, b->targets + (size_t)(n + i) * T,
                      &b->n_targets[n + i], T, r.prompt, r.prompt_length, r.rejected,
                      r.rejected_length);
    }
}
