/*
 * adapter.h - LoRA adapters and training checkpoints in parallel HDF5 (docs/FILE_FORMATS.md).
 *
 *   /lora/<HF module path>/A   fp32 [r][in]     at GLOBAL shapes whatever the TP layout
 *   /lora/<HF module path>/B   fp32 [out][r]
 *   root attributes: format = "paft-adapter-1", stage, step, r, alpha, rslora, targets,
 *                    base_fingerprint, base_model, folded_adapter, paft_version,
 *                    data_records, data_crc32 (written by training; optional when reading)
 * A checkpoint is an adapter plus what resuming needs:
 *   /optim/m/<module>/A|B, /optim/v/<module>/A|B   AdamW moments (same shapes)
 *   attributes: optim_step, epoch, cursor (records consumed in this epoch), seed
 *
 * Written collectively by the ranks of `comm` (h5file.h): to a temporary name, renamed at the end.
 */
#ifndef PAFT_ADAPTER_H
#define PAFT_ADAPTER_H

#include <mpi.h>
#include <stdint.h>
#include <stdio.h>

#include "io/h5file.h"
#include "model/model.h"

typedef struct {
    char stage[16];           /* sft | dpo | ipo | hinge | orpo */
    int64_t step;             /* optimizer steps done */
    char folded_adapter[1024]; /* adapter folded into the base before training ("" = none) */
    /* identity of the training data file: its record count and the payload CRC-32 of its header
     * (attributes data_records, data_crc32); data_records 0 = not recorded (files of older paft
     * versions, adapters not written by training) */
    int64_t data_records;
    uint32_t data_crc32;
} AdapterInfo;

/* Where a training run stands: what a checkpoint adds to an adapter. */
typedef struct {
    int64_t optim_step; /* AdamW's step count */
    int64_t epoch;      /* current epoch of the data order */
    int64_t cursor;     /* records of this epoch already consumed */
    int64_t seed;
} TrainPosition;

/* Write the model's LoRA parameters at their global shapes. With moments != NULL (m then v, each
 * n_lora values) and pos != NULL, a checkpoint. Collective over comm (the training group); the
 * ranks of one model replica (writer_replica = 1, e.g. data-parallel rank 0) write: each its own
 * shards, tensor-parallel rank 0 the replicated factors. */
void adapter_write(const char *path, MPI_Comm comm, const Model *model, const AdapterInfo *info,
                   const real *moment_m, const real *moment_v, const TrainPosition *pos,
                   int writer_replica);
/* Read an adapter or checkpoint into the model's LoRA parameters (each rank its own blocks, so a
 * checkpoint written under one tensor-parallel layout resumes under another). Checks format, r, alpha,
 * targets, shapes and the base fingerprint (fatal error naming the file on any mismatch). With
 * moments/pos != NULL the file must be a checkpoint and they are filled too. */
void adapter_read(const char *path, MPI_Comm comm, Model *model, AdapterInfo *info,
                  real *moment_m, real *moment_v, TrainPosition *pos);
/* The LoRA settings (r, alpha, rslora, targets) an adapter or checkpoint file records: what it is
 * applied with when evaluated, whatever the configuration's [lora] says. Reads on the calling
 * rank; fatal error naming the file when it is not a paft adapter. */
void adapter_read_lora_config(const char *path, LoraConfig *lora);
/* The same from an adapter file open for reading (its r, alpha, rslora and targets attributes). */
void adapter_lora_config_of(H5File *file, LoraConfig *lora);
/* Check that the adapter or checkpoint PATH comes from the run described by `expect` (stage,
 * folded_adapter, and data_records/data_crc32 where both the file and `expect` have them) and
 * `model` (base fingerprint, r, alpha, rslora, targets). A mismatch is a fatal error naming PATH
 * and the first key that differs, both values, then `advice`. Returns the file's step.
 * Collective over comm (every rank opens the file). */
int64_t adapter_check_origin(const char *path, MPI_Comm comm, const Model *model,
                             const AdapterInfo *expect, const char *advice);
/* Fold an adapter (any r/alpha/targets) into the base weights: W += s B A. PATH is a paft adapter
 * file, whose base fingerprint must match the model's, or a PEFT adapter directory
 * (peft_fold_into_base, model/peft.h): what model.adapter takes. */
void adapter_fold_into_base(const char *path, MPI_Comm comm, Model *model);

/* Print what `paft inspect adapter.h5` shows: the attributes, then for every adapted module the
 * sparsity of its delta s B A (fraction |delta| < 1e-5, the paper's Figure 2 measure) as a table
 * of layers x modules, and the totals. Reads on the calling rank only. */
void adapter_describe(const char *path, FILE *out);
/* The table adapter_describe prints: sparsity[layer * N_PROJ + proj], < 0 where not adapted. */
void adapter_print_sparsity_table(FILE *out, const double *sparsity, int n_layers);
/* The overall sparsity of an adapter file's delta s B A (fraction |delta| < 1e-5, all modules). */
double adapter_delta_sparsity(const char *path);
/* Does the file look like an HDF5 file (signature at offset 0)? */
int adapter_is_hdf5(const unsigned char *magic, size_t len);
/* Is PATH a file (not a directory) that starts with the HDF5 signature? 0 when unreadable. */
int adapter_path_is_hdf5(const char *path);

#endif
