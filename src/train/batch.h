/*
 * batch.h - turning token-data records into the model's [B][T] tokens and targets.
 *
 * targets[b][t] is the token the model must predict after reading tokens[b][0..t], or -1 where
 * there is no loss: SFT positions whose next token is not an assistant token (loss mask 0),
 * preference positions whose next token is still prompt, and right padding. Padding needs no
 * attention mask: attention is causal and padding comes last.
 */
#ifndef PAFT_BATCH_H
#define PAFT_BATCH_H

#include <stdint.h>

#include "data/token_data.h"

typedef struct {
    int capacity_seqs, capacity_len;
    int n_seqs; /* rows used */
    int T;      /* padded length of this batch (the longest row) */
    int32_t *tokens;  /* [capacity_seqs * capacity_len], row stride T of this batch */
    int32_t *targets;
    int64_t *n_targets; /* per row: positions with a target */
} Batch;

void batch_alloc(Batch *b, int max_seqs, int max_len);
void batch_free(Batch *b);
/* SFT: one row per record. */
void batch_fill_sft(Batch *b, const TokenData *data, const uint64_t *records, int n);
/* Preference: rows 0..n-1 are prompt++chosen, rows n..2n-1 prompt++rejected. */
void batch_fill_pref(Batch *b, const TokenData *data, const uint64_t *records, int n);
/* Loss-target count of records (SFT: masked tokens past position 0; pref: chosen tokens), from
 * the data alone: every rank can count the GLOBAL batch without communication. */
int64_t sft_record_targets(const TokenData *data, uint64_t record);

#endif
