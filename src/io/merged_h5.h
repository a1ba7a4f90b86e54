/*
 * merged_h5.h - the merged model file written by the merge stage (docs/FILE_FORMATS.md):
 *
 *   /weights/<HF tensor name>   every tensor of the model at its HF shape, bf16 (h5file.h's
 *                               user-defined 16-bit float) or fp32, chunked by rows
 *   /stats/<HF tensor name>     for every merged (adapted) tensor: a scalar compound
 *                               MergedTensorStats (the sparsities of delta_sft, delta_pref and the
 *                               merged delta: the paper's Figure 2 measure)
 *   root attributes: format = "paft-merged-1", config (the HF config.json text), method,
 *                    parameters (JSON), sources (JSON: base and adapter paths and what they are),
 *                    base_model (absolute path), base_fingerprint, dtype (bf16 | fp32),
 *                    paft_version
 */
#ifndef PAFT_MERGED_H5_H
#define PAFT_MERGED_H5_H

#include <stdint.h>
#include <stdio.h>

#include "io/h5file.h"

#define MERGED_FORMAT "paft-merged-1"

/* /stats/<name>: one merged tensor. "small" = |x| < 1e-5 (MERGE_SPARSITY_EPS). */
typedef struct {
    int64_t numel;
    double sparsity_sft;    /* small_sft / numel: delta_sft before sparsification */
    double sparsity_pref;   /* small_pref / numel */
    double sparsity_merged; /* small_merged / numel: the merged delta theta - theta_pre (fp32,
                               before rounding to the stored dtype) */
    int64_t small_sft, small_pref, small_merged;
    int64_t kept_sft, kept_pref; /* elements kept by sparsification (numel when all are kept) */
    int32_t in_sft, in_pref;     /* 1 when that adapter adapts the module (else its delta is 0) */
    double slerp_cos;            /* slerp: cosine between theta_sft and theta_pref; else 0 */
    double dare_scale_sft, dare_scale_pref; /* DARE's rescale factors; 1 otherwise */
} MergedTensorStats;

/* Collective over the file's ranks: create /stats/<tensor> (the group /stats must exist) and
 * write s from the rank where `writer` is non-zero (exactly one). */
void merged_write_stats(H5File *f, const char *tensor, const MergedTensorStats *s, int writer);
/* Read /stats/<tensor> (every rank that calls it gets the values). */
void merged_read_stats(H5File *f, const char *tensor, MergedTensorStats *s);

/* Does PATH (an HDF5 file) carry the root attribute format = MERGED_FORMAT? Opens it on the
 * calling rank only; 0 for any other HDF5 file. */
int merged_is_merged_file(const char *path);

/* What `paft inspect merged.h5` prints: the method, parameters and sources, the sparsity tables
 * per layer and module (delta_sft, delta_pref, merged: the paper's Figure 2 numbers) and a
 * summary. Reads on the calling rank only; validates the file first. */
void merged_describe(const char *path, FILE *out);

#endif /* PAFT_MERGED_H5_H */
