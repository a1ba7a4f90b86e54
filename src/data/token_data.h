/*
 * token_data.h - tokenized training data: the .bin files written by inputs/prepare.py (Python,
 * inputs/paft_data.py) and by paft demo / the tests (C, TokenDataWriter below).
 *
 * The exact byte layout is in docs/DATA_FORMAT.md. In short (all integers little-endian):
 *
 *   header      64 bytes: magic "PAFTTOK1", version 1, kind (1 = sft, 2 = pref), record count,
 *               token count, vocab size, payload CRC-32, header CRC-32
 *   offsets     u64[S + 1]  segment boundaries in tokens; S = records (sft) or 3 * records (pref)
 *   tokens      u32[T]      token ids, every one < vocab size
 *   mask        u8[T]       sft only: 1 = the token is a loss target (assistant turns), else 0
 *
 * An SFT record is one segment (a whole dialogue) with its mask; a preference record is three
 * segments in a row: prompt, chosen completion, rejected completion.
 *
 * Opening maps the file (mmap: shards can be gigabytes, nothing is read whole into memory) and
 * validates all of it before anything is trusted: the magic, version and kind, the header
 * checksum, that the section sizes add up to the file size exactly, that the offsets start at 0,
 * never decrease, leave no segment empty and end at the token count, that every token id is below
 * the header's vocab size (and the header's vocab size not above the model's), that mask bytes are
 * 0 or 1, and the payload checksum. Any problem is a fatal error naming the file and what is wrong.
 */
#ifndef PAFT_TOKEN_DATA_H
#define PAFT_TOKEN_DATA_H

#include <stdint.h>
#include <stdio.h>

#define TOKEN_DATA_MAGIC "PAFTTOK1" /* 8 bytes, no terminating NUL in the file */
#define TOKEN_DATA_VERSION 1u
#define TOKEN_DATA_HEADER_BYTES 64u

typedef enum {
    TOKEN_DATA_ANY = 0, /* only as the expected kind of token_data_open: accept either */
    TOKEN_DATA_SFT = 1,
    TOKEN_DATA_PREF = 2,
} TokenDataKind;

/* "sft" / "pref" / "any"; token_data_kind_from_name returns -1 for anything else. */
const char *token_data_kind_name(TokenDataKind kind);
int token_data_kind_from_name(const char *name);

/* One opened, validated file. Every field is read-only for the caller; the arrays point into the
 * read-only mapping and live until token_data_close. */
typedef struct {
    char *path;
    TokenDataKind kind;
    uint32_t vocab_size; /* from the header: every token id is below it */
    uint64_t num_records;
    uint64_t num_tokens;      /* all segments together */
    uint64_t num_loss_tokens; /* sft: tokens with mask 1; pref: chosen + rejected tokens */
    uint64_t max_length;      /* longest sequence fed to the model: sft length, or for pref
                               * max(prompt + chosen, prompt + rejected) over all records */
    uint32_t payload_crc32;
    uint64_t file_bytes;

    const uint64_t *offsets; /* num_segments + 1 entries */
    uint64_t num_segments;   /* num_records (sft) or 3 * num_records (pref) */
    const uint32_t *tokens;  /* num_tokens ids */
    const uint8_t *mask;     /* sft: num_tokens bytes, 0 or 1; pref: NULL */

    void *mapping;
    uint64_t mapping_bytes;
} TokenData;

/* One SFT record: a rendered dialogue. mask[t] == 1 marks token t as a loss target, i.e. the
 * logits at position t-1 are trained to predict it (mask[0] can therefore never take part). */
typedef struct {
    const uint32_t *tokens;
    const uint8_t *mask;
    uint64_t length;
} SftRecord;

/* One preference record. The model sees prompt ++ chosen and prompt ++ rejected; log-probabilities
 * are summed over the completion tokens. Every segment holds at least one token. */
typedef struct {
    const uint32_t *prompt;
    const uint32_t *chosen;
    const uint32_t *rejected;
    uint64_t prompt_length;
    uint64_t chosen_length;
    uint64_t rejected_length;
} PrefRecord;

/* Open and validate PATH. expected_kind: TOKEN_DATA_SFT / TOKEN_DATA_PREF, or TOKEN_DATA_ANY to
 * accept either (paft inspect). model_vocab: the model's vocabulary size, or 0 to skip that check
 * (a file tokenized for a larger vocabulary than the model's is refused). Fatal error on any
 * problem; never returns NULL. */
TokenData *token_data_open(const char *path, TokenDataKind expected_kind, uint32_t model_vocab);
void token_data_close(TokenData *data);

/* Does PATH start with the token-data magic? (For paft inspect to pick a reader; no validation.) */
int token_data_is_token_file(const char *path);

/* Record accessors (zero-copy views into the mapping). Fatal error when the kind is wrong or the
 * index is out of range: both are programming errors. */
SftRecord token_data_sft(const TokenData *data, uint64_t index);
PrefRecord token_data_pref(const TokenData *data, uint64_t index);

/* Length of record `index` as fed to the model (sft: length; pref: max of the two sequences). */
uint64_t token_data_record_length(const TokenData *data, uint64_t index);

/* Fatal error when any record is longer than seq_len (sft: length; pref: prompt + chosen or
 * prompt + rejected). The message names the file, the first such record and its lengths. */
void token_data_check_max_length(const TokenData *data, uint64_t seq_len);

/* The order in which to visit n records in epoch `epoch` of a run seeded with `seed`: a uniform
 * random permutation of 0..n-1 written to order[0..n), the same on every machine and compiler.
 * PRNG: splitmix64 (Steele, Lea & Flood 2014) seeded with
 *     state = seed ^ splitmix64_mix(epoch + 0x9E3779B97F4A7C15)   (all arithmetic mod 2^64),
 * shuffled by Fisher-Yates from the end: for i = n-1 down to 1, j = uniform(i + 1), swap(i, j),
 * where uniform(m) draws next() until it is below the largest multiple of m that fits in 2^64 and
 * returns it mod m (no modulo bias). docs/DATA_FORMAT.md spells out splitmix64. */
void token_data_permutation(uint64_t n, uint64_t seed, uint64_t epoch, uint64_t *order);

/* The splitmix64 pieces, exposed for tests and for other deterministic draws. next() advances
 * *state by 0x9E3779B97F4A7C15 and returns mix(*state). */
uint64_t splitmix64_mix(uint64_t z);
uint64_t splitmix64_next(uint64_t *state);

/* Print what `paft inspect FILE` shows for a token data file: kind, records, tokens, vocab size,
 * record length min/mean/max, the loss-token fraction (sft) or the segment lengths (pref). */
void token_data_describe(const TokenData *data, FILE *out);

/* CRC-32 as in zlib / PNG / Python's zlib.crc32 (reflected polynomial 0xEDB88320, initial value
 * and final xor 0xFFFFFFFF). Chain calls by passing the previous result as crc (start with 0). */
uint32_t paft_crc32(uint32_t crc, const void *data, size_t n);

/* ---- writing ------------------------------------------------------------------------------ */

/* The C writer (tests, paft demo). It keeps the records in memory until finish(), which writes
 * PATH.tmp.<pid> and renames it to PATH, so a reader never sees a half-written file. The Python
 * writer (inputs/paft_data.py) streams instead, for real data sets. Records are checked as they
 * are added (token ids < vocab, mask 0/1, no empty segment): a fatal error names PATH. */
typedef struct {
    char *path;
    TokenDataKind kind;
    uint32_t vocab_size;
    uint64_t num_records;
    uint64_t *offsets; /* num_segments + 1 */
    uint64_t num_segments, offsets_capacity;
    uint32_t *tokens;
    uint8_t *mask;
    uint64_t num_tokens, tokens_capacity;
} TokenDataWriter;

TokenDataWriter *token_data_writer_create(const char *path, TokenDataKind kind, uint32_t vocab);
void token_data_writer_add_sft(TokenDataWriter *writer, const uint32_t *tokens, const uint8_t *mask,
                               uint64_t length);
void token_data_writer_add_pref(TokenDataWriter *writer, const uint32_t *prompt,
                                uint64_t prompt_length, const uint32_t *chosen,
                                uint64_t chosen_length, const uint32_t *rejected,
                                uint64_t rejected_length);
/* Write the file (atomically, see above) and free the writer. */
void token_data_writer_finish(TokenDataWriter *writer);

#endif /* PAFT_TOKEN_DATA_H */
