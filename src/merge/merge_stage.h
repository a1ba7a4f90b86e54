/*
 * merge_stage.h - the collective merge stage: every rank of the world merges delta_sft and
 * delta_pref (two LoRA adapter files) into the base model theta_pre and writes its rows of every
 * tensor into one parallel-HDF5 file (docs/MERGE.md, "The merge stage"; the file:
 * docs/FILE_FORMATS.md, "Merged model").
 *
 *   1. Validate, on rank 0, before anything is written: the base model (config.json, every tensor
 *      at its shape), both adapters (paft adapter files for this base: fingerprint, no folded
 *      adapter, r/alpha/targets consistent with the datasets' shapes, finite values), the merge
 *      parameters (merge_params_resolve) and the output path. Any problem is a fatal error that
 *      names the file and the problem; no output or temporary file is created.
 *   2. For every tensor of the base, in sorted order of the HF names (tensor_id = that index, the
 *      key of DARE's random stream): a projection adapted by either adapter is merged with
 *      merge_tensor_rows, its rows split over the ranks (each rank reads its rows of W, the whole
 *      A and its rows of B of each adapter, and forms its rows of delta = s B A in fp32; a module
 *      one adapter does not adapt has delta 0 there); every other tensor (embeddings, norms,
 *      biases) is copied. Rows are written with collective hyperslab writes, bf16 rounded to
 *      nearest even or fp32.
 *   3. /stats/<HF name> for every merged tensor; the file is renamed into place when complete.
 *
 * The file is bitwise identical for any number of ranks.
 */
#ifndef PAFT_MERGE_STAGE_H
#define PAFT_MERGE_STAGE_H

#include <mpi.h>

#include "config/config.h"
#include "model/model.h"

/* Run the whole merge stage described by cfg's [model] path and [merge] section, collectively
 * over `world` (every rank calls it). Defaults: merge.sft_adapter = <output.dir>/sft/adapter.h5,
 * merge.pref_adapter = <output.dir>/pref/adapter.h5, merge.out = <output.dir>/merged.h5. */
void merge_stage_run(const Config *cfg, MPI_Comm world);

/* What paft run checks before either group trains, on one rank (fatal on the first problem):
 * everything the merge stage's validation covers that does not need the adapters (model.adapter
 * unset, the base model, the [merge] parameters, merge.out), with both adapters' targets taken
 * from [lora]. A mistake in [merge] then costs seconds, not a whole training run. device_here = 0
 * (paft check, on a login node): merge.device = cuda needs CUDA built in, not a GPU here. */
void merge_stage_check_settings(const Config *cfg, int device_here);

/* paft check stage=merge: everything the merge stage validates before it writes (the base, both
 * adapters, the parameters, merge.out), on this one process; then `verdict` and what it would
 * merge are printed.
 * device_here = 0: merge.device = cuda needs CUDA built in, not a GPU here. */
void merge_stage_check(const Config *cfg, int device_here, const char *verdict);

/* The paths a configuration merges (the defaults above filled in); each buffer CONFIG_PATH_MAX. */
void merge_stage_paths(const Config *cfg, char *sft_adapter, char *pref_adapter, char *out);


#endif /* PAFT_MERGE_STAGE_H */
