/*
 * merge.h - the numerical core of the collective merge stage: one tensor at a time, its rows split
 * over the ranks of a communicator, mergekit's semantics (see docs/MERGE.md for every formula and
 * where paft follows or deliberately departs from mergekit).
 *
 * Two models are merged into a base: the SFT model theta_sft = base + delta_sft and the preference
 * model theta_pref = base + delta_pref (index 0 = sft, 1 = pref in every two-element array below).
 * The merge works in fp32 always (like mergekit, whatever the stored dtype), so this module uses
 * float explicitly, not `real`.
 *
 * The result is BITWISE IDENTICAL for any number of ranks and any split of the rows: every
 * whole-tensor quantity is either an integer count (exact in any order) or a floating-point sum
 * formed as one double partial per ROW, gathered to every rank and added in row order.
 */
#ifndef PAFT_MERGE_H
#define PAFT_MERGE_H

#include <mpi.h>
#include <stdint.h>

#include "merge/merge_kernels.h" /* MergeBackend; MERGE_SPARSITY_EPS */

typedef enum {
    MERGE_LINEAR,          /* sum_i w_i theta_i / sum_i w_i                                   */
    MERGE_TASK_ARITHMETIC, /* base + lambda * sum_i w_i delta_i                               */
    MERGE_TIES,            /* magnitude top-k, sign election, disjoint mean                   */
    MERGE_DARE_TIES,       /* random drop (DARE) + rescale, sign election                     */
    MERGE_DARE_LINEAR,     /* random drop (DARE) + rescale, weighted sum                      */
    MERGE_MAGNITUDE,       /* magnitude top-k, weighted sum (no sign election)                */
    MERGE_SLERP,           /* spherical interpolation of the two whole tensors theta_sft/pref */
    MERGE_METHOD_COUNT
} MergeMethod;

/* normalize = MERGE_NORMALIZE_AUTO resolves to the method's mergekit default. */
#define MERGE_NORMALIZE_AUTO (-1)

typedef struct {
    MergeMethod method;
    double weight[2];  /* sft, pref. Any finite values; see merge_params_resolve for the rules. */
    double density[2]; /* fraction kept by ties / dare_* / magnitude, in (0, 1]; 1 = keep all  */
    int normalize;     /* 1/0, or MERGE_NORMALIZE_AUTO before merge_params_resolve            */
    double lambda;     /* scales the mixed delta of the task-arithmetic family (default 1)     */
    int sign_by_count; /* TIES/DARE-TIES sign election: 0 = "sum" (default), 1 = "count"      */
    uint64_t seed;     /* DARE's random stream                                                */
    int dare_rescale_l1; /* DARE kept values: 0 = divide by density (the PAFT-era mergekit),
                            1 = scale by ||delta||_1 / ||kept||_1 (mergekit since 2025)       */
} MergeParams;

/* The defaults of [merge] (weights 1,1, density 1,1, normalize auto, lambda 1, sum election,
 * seed 0, rescale 1/density) for the given method. */
MergeParams merge_params_default(MergeMethod method);

/* "ties" -> MERGE_TIES, ... (the names of DESIGN's [merge] method key). Unknown name: fatal error
 * listing the valid names. */
MergeMethod merge_method_from_name(const char *name);
/* The config name of a method ("dare_ties"). */
const char *merge_method_name(MergeMethod method);

/* Validate and complete the parameters, once, before the first tensor: resolves normalize AUTO to
 * mergekit's default for the method (on for linear and ties, off otherwise), and ends the job
 * with a clear message on: an unknown method, a non-finite weight/lambda, a density outside
 * (0, 1], a weight sum <= 0 where the method divides by it (linear with normalize, slerp, any
 * method with normalize on), a negative slerp weight (t must lie in [0, 1]). Parameters a method
 * does not use (density of linear, ...) are ignored, as mergekit does, with a note on rank 0. */
void merge_params_resolve(MergeParams *params);

/* Rows [*start, *start + *count) of a `rows`-row tensor for `rank` of `size`: contiguous blocks
 * in rank order, the first rows % size ranks one row longer. */
void merge_row_range(int64_t rows, int rank, int size, int64_t *start, int64_t *count);

/* Whole-tensor statistics, filled when merge_tensor_rows gets a non-NULL stats (the same on
 * every rank, bit for bit). "small" means |x| < MERGE_SPARSITY_EPS; the merged delta is
 * out - base in fp32. */
typedef struct {
    int64_t numel;
    int64_t small_sft;    /* of delta_sft, before sparsification */
    int64_t small_pref;   /* of delta_pref, before sparsification */
    int64_t small_merged; /* of the merged delta */
    int64_t kept[2];      /* elements kept by sparsification (numel when the method keeps all) */
    double slerp_cos;     /* slerp: the cosine of the angle between theta_sft and theta_pref */
    int slerp_lerped;     /* slerp: 1 when |cos| > 0.9995 made it a linear interpolation */
    double dare_scale[2]; /* DARE: the factor applied to the kept values (1/density or the L1
                             ratio); 1 for other methods or density 1 */
} MergeStats;

/*
 * Merge one rows x cols tensor (row-major), collectively over `comm` (every rank calls it for
 * every tensor, in the same order, with the same params, tensor_id, rows and cols). This rank
 * holds rows [row_start, row_start + n_rows); the blocks of the ranks must be contiguous in rank
 * order and cover all rows (n_rows = 0 is allowed: such a rank still takes part in the
 * collectives). base, delta_sft, delta_pref and out hold n_rows * cols values; out receives
 * theta = base + mixed delta (task-arithmetic family) or the linear / slerp result. out may be the
 * same buffer as base (merged in place), never a delta. tensor_id keys DARE's random stream: give
 * every tensor of a model its own (e.g. its index in the model's tensor list). stats may be NULL.
 * Errors (inconsistent layout across ranks, a non-finite delta, magnitude top-k keeping no
 * element) are fatal with a message naming the tensor id.
 */
void merge_tensor_rows(const MergeParams *params, MPI_Comm comm, uint64_t tensor_id, int64_t rows,
                       int64_t cols, int64_t row_start, int64_t n_rows, const float *base,
                       const float *delta_sft, const float *delta_pref, float *out,
                       MergeStats *stats);

/* The same with the buffers (base, the deltas, out) in the memory of a merge backend
 * (merge_kernels.h: device memory for CUDA) and the element passes run there; the result is the
 * same bits on every backend. merge_tensor_rows is this with the CPU backend. */
void merge_tensor_rows_on(MergeBackend be, const MergeParams *params, MPI_Comm comm,
                          uint64_t tensor_id, int64_t rows, int64_t cols, int64_t row_start,
                          int64_t n_rows, const float *base, const float *delta_sft,
                          const float *delta_pref, float *out, MergeStats *stats);

/* DARE's counter-based generator (exposed for tests and docs/MERGE.md): the uniform draw in
 * [0, 1) of element `index` (global, row-major) of model `which` (0 sft, 1 pref). The element is
 * kept iff the draw is < density. */
double merge_dare_uniform(uint64_t seed, uint64_t tensor_id, int which, uint64_t index);

#endif /* PAFT_MERGE_H */
