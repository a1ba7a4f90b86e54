/*
 * merge.c - merge one tensor, its rows distributed over the ranks of a communicator, with
 * mergekit's semantics (docs/MERGE.md has the formulas, the mergekit sources they follow and the
 * deliberate departures).
 *
 * The tensor is processed in up to three passes over this rank's rows:
 *   1. sparsify each delta (ties/magnitude: exact global top-k by |delta|; dare_*: a counter-based
 *      random drop) into a scratch copy;
 *   2. whole-tensor reductions where the method needs them (slerp's dot product and norms, DARE's
 *      L1 norms);
 *   3. mix the (sparsified) deltas element by element and write theta.
 *
 * Bitwise identical output for any number of ranks is a hard requirement, so every whole-tensor
 * quantity is computed in a way that does not depend on where the row blocks begin and end:
 *   - counts (top-k histograms, tie positions, statistics) are integers: exact in any order;
 *   - floating-point sums are formed as one double partial per ROW (a row is never split), the
 *     partials of all rows are gathered to every rank and added there in row order.
 * Random draws are keyed by the global element index, never by a rank's position in a stream.
 */
#include "merge/merge.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "merge/merge_kernels.h"
#include "util/common.h"

/* ---- method names and parameters ---------------------------------------------------------- */

static const char *const METHOD_NAMES[MERGE_METHOD_COUNT] = {
    [MERGE_LINEAR] = "linear",       [MERGE_TASK_ARITHMETIC] = "task_arithmetic",
    [MERGE_TIES] = "ties",           [MERGE_DARE_TIES] = "dare_ties",
    [MERGE_DARE_LINEAR] = "dare_linear", [MERGE_MAGNITUDE] = "magnitude",
    [MERGE_SLERP] = "slerp",
};

MergeMethod merge_method_from_name(const char *name) {
    for (int m = 0; m < MERGE_METHOD_COUNT; m++)
        if (name && strcmp(name, METHOD_NAMES[m]) == 0) return (MergeMethod)m;
    PAFT_FATAL("merge.method: unknown merge method '%s' (expected one of linear, task_arithmetic, "
               "ties, dare_ties, dare_linear, magnitude, slerp)",
               name ? name : "(null)");
}

const char *merge_method_name(MergeMethod method) {
    if ((int)method < 0 || method >= MERGE_METHOD_COUNT) return "unknown";
    return METHOD_NAMES[method];
}

/* Which stages a method uses: the generalized-task-arithmetic family of mergekit is everything
 * but linear and slerp. */
static int is_task_arithmetic_family(MergeMethod m) { return m != MERGE_LINEAR && m != MERGE_SLERP; }
static int uses_magnitude_topk(MergeMethod m) { return m == MERGE_TIES || m == MERGE_MAGNITUDE; }
static int uses_dare(MergeMethod m) { return m == MERGE_DARE_TIES || m == MERGE_DARE_LINEAR; }
static int uses_sign_election(MergeMethod m) { return m == MERGE_TIES || m == MERGE_DARE_TIES; }

MergeParams merge_params_default(MergeMethod method) {
    MergeParams p = {0};
    p.method = method;
    p.weight[0] = p.weight[1] = 1.0;
    p.density[0] = p.density[1] = 1.0;
    p.normalize = MERGE_NORMALIZE_AUTO;
    p.lambda = 1.0;
    p.sign_by_count = 0;
    p.seed = 0;
    p.dare_rescale_l1 = 0;
    return p;
}

void merge_params_resolve(MergeParams *p) {
    if ((int)p->method < 0 || p->method >= MERGE_METHOD_COUNT)
        PAFT_FATAL("merge.method: unknown merge method number %d", (int)p->method);
    const char *name = METHOD_NAMES[p->method];
    MergeMethod m = p->method;

    /* mergekit's defaults: LinearMerge normalize=True; of the task-arithmetic family only ties
     * (and della) default to normalize=True; slerp has no normalize at all. */
    if (m == MERGE_SLERP && p->normalize == 1)
        paft_log("paft: note: merge.normalize is not used by method slerp (ignored)\n");
    if (m == MERGE_SLERP || p->normalize == MERGE_NORMALIZE_AUTO)
        p->normalize = (m == MERGE_LINEAR || m == MERGE_TIES);
    if (p->normalize != 0 && p->normalize != 1)
        PAFT_FATAL("merge.normalize: expected true, false or auto, got %d", p->normalize);

    for (int i = 0; i < 2; i++) {
        if (!isfinite(p->weight[i]))
            PAFT_FATAL("merge.weights: weight %d (%s) is %g (expected a finite number)", i + 1,
                       i == 0 ? "sft" : "pref", p->weight[i]);
        if (!(p->density[i] > 0.0 && p->density[i] <= 1.0))
            PAFT_FATAL("merge.density: density %d (%s) is %g (expected 0 < density <= 1)", i + 1,
                       i == 0 ? "sft" : "pref", p->density[i]);
    }
    if (!isfinite(p->lambda)) PAFT_FATAL("merge.lambda: %g is not a finite number", p->lambda);
    if (p->sign_by_count != 0 && p->sign_by_count != 1)
        PAFT_FATAL("merge sign election: expected 0 (sum) or 1 (count), got %d", p->sign_by_count);

    double weight_sum = p->weight[0] + p->weight[1];
    if (m == MERGE_SLERP) {
        /* t = w_pref / (w_sft + w_pref) must be an interpolation parameter in [0, 1]. */
        if (p->weight[0] < 0 || p->weight[1] < 0 || !(weight_sum > 0))
            PAFT_FATAL("merge.weights = %g,%g: slerp needs non-negative weights with a positive "
                       "sum (t = w_pref / (w_sft + w_pref) must lie in [0, 1])",
                       p->weight[0], p->weight[1]);
    } else if (p->normalize && !(weight_sum > 0)) {
        PAFT_FATAL("merge.weights = %g,%g: their sum is %g, but method %s with normalize divides "
                   "by the sum of the weights (expected a positive sum, or normalize=false)",
                   p->weight[0], p->weight[1], weight_sum, name);
    }

    /* Parameters a method does not read are ignored, as mergekit ignores them; say so once. */
    int sparsifies = uses_magnitude_topk(m) || uses_dare(m);
    if (!sparsifies && (p->density[0] != 1.0 || p->density[1] != 1.0))
        paft_log("paft: note: merge.density is not used by method %s (ignored)\n", name);
    if (!is_task_arithmetic_family(m) && p->lambda != 1.0)
        paft_log("paft: note: merge.lambda is not used by method %s (ignored)\n", name);
    if (!uses_sign_election(m) && p->sign_by_count)
        paft_log("paft: note: sign election by count is not used by method %s (ignored)\n", name);
    if (!uses_dare(m) && p->dare_rescale_l1)
        paft_log("paft: note: the L1 rescale of DARE is not used by method %s (ignored)\n", name);
}

void merge_row_range(int64_t rows, int rank, int size, int64_t *start, int64_t *count) {
    int64_t base = rows / size, extra = rows % size;
    *count = base + (rank < extra ? 1 : 0);
    *start = (int64_t)rank * base + (rank < extra ? rank : extra);
}

/* ---- DARE's counter-based generator -------------------------------------------------------
 * SplitMix64 (merge_elementwise.h): element `index` takes draw number index + 1 of the stream
 * seeded with `key`, so any element's draw is computed directly, whichever rank holds it. The key
 * absorbs seed, tensor id and model with three SplitMix64 steps. docs/MERGE.md repeats this
 * exactly and tests/merge/merge_reference.py reimplements it in numpy. */
static uint64_t dare_stream_key(uint64_t seed, uint64_t tensor_id, int which) {
    uint64_t h = merge_splitmix64_mix(seed + MERGE_SPLITMIX_GOLDEN);
    h = merge_splitmix64_mix(h + tensor_id + MERGE_SPLITMIX_GOLDEN);
    return merge_splitmix64_mix(h + (uint64_t)which + MERGE_SPLITMIX_GOLDEN);
}

double merge_dare_uniform(uint64_t seed, uint64_t tensor_id, int which, uint64_t index) {
    /* 53 random bits: uniform on [0, 1) */
    return (double)merge_dare_bits(dare_stream_key(seed, tensor_id, which), index) * 0x1.0p-53;
}

/* ---- the row layout of one tensor over the communicator ------------------------------------ */

typedef struct {
    MergeBackend be; /* where this rank's elements live and the passes run */
    MPI_Comm comm;
    int rank, size;
    uint64_t tensor_id;
    int64_t rows, cols;
    int64_t row_start, n_rows; /* this rank's block */
    int64_t *block_start;      /* [size]: every rank's block, from an all-gather */
    int64_t *block_rows;       /* [size] */
} RowLayout;

/* Gather every rank's block and check that all ranks agree on the tensor and that the blocks
 * tile the rows in rank order: a wiring mistake would otherwise give a silently wrong (or
 * rank-count dependent) result. */
static RowLayout layout_gather(MergeBackend be, MPI_Comm comm, const MergeParams *p,
                               uint64_t tensor_id, int64_t rows, int64_t cols, int64_t row_start,
                               int64_t n_rows) {
    RowLayout L = {.be = be, .comm = comm, .tensor_id = tensor_id, .rows = rows, .cols = cols,
                   .row_start = row_start, .n_rows = n_rows};
    CHECK_MPI(MPI_Comm_rank(comm, &L.rank));
    CHECK_MPI(MPI_Comm_size(comm, &L.size));
    if (rows < 0 || cols < 0 || n_rows < 0 || row_start < 0 || row_start + n_rows > rows)
        PAFT_FATAL("merge of tensor %llu: rank %d holds rows [%lld, %lld) of a %lld x %lld tensor "
                   "(expected a block inside [0, rows))",
                   (unsigned long long)tensor_id, L.rank, (long long)row_start,
                   (long long)(row_start + n_rows), (long long)rows, (long long)cols);

    /* Fields 3 and 4 (the block) differ between ranks; everything else must be the same. The
     * doubles travel as their bit patterns. */
    enum { FIELDS = 15 };
    int64_t mine[FIELDS] = {rows, cols, (int64_t)tensor_id, row_start, n_rows, (int64_t)p->method,
                            p->normalize, (int64_t)p->seed, p->sign_by_count, p->dare_rescale_l1};
    memcpy(&mine[10], p->weight, 2 * sizeof(double));
    memcpy(&mine[12], p->density, 2 * sizeof(double));
    memcpy(&mine[14], &p->lambda, sizeof(double));
    int64_t *all = paft_malloc((size_t)L.size * FIELDS * sizeof *all);
    CHECK_MPI(MPI_Allgather(mine, FIELDS, MPI_INT64_T, all, FIELDS, MPI_INT64_T, comm));
    L.block_start = paft_malloc((size_t)L.size * sizeof(int64_t));
    L.block_rows = paft_malloc((size_t)L.size * sizeof(int64_t));
    int64_t expected_start = 0;
    for (int r = 0; r < L.size; r++) {
        const int64_t *f = all + (size_t)r * FIELDS;
        for (int i = 0; i < FIELDS; i++)
            if (i != 3 && i != 4 && f[i] != mine[i])
                PAFT_FATAL("merge of tensor %llu: ranks disagree on the tensor or the merge "
                           "parameters (rank %d: %lld x %lld tensor %llu method %lld; this rank: "
                           "%lld x %lld tensor %llu method %lld): every rank must merge the same "
                           "tensors in the same order with the same parameters",
                           (unsigned long long)tensor_id, r, (long long)f[0], (long long)f[1],
                           (unsigned long long)f[2], (long long)f[5], (long long)rows,
                           (long long)cols, (unsigned long long)tensor_id, (long long)p->method);
        if (f[3] != expected_start)
            PAFT_FATAL("merge of tensor %llu: rank %d's rows start at %lld, expected %lld (the "
                       "ranks must hold contiguous row blocks in rank order; see "
                       "merge_row_range)",
                       (unsigned long long)tensor_id, r, (long long)f[3],
                       (long long)expected_start);
        L.block_start[r] = f[3];
        L.block_rows[r] = f[4];
        expected_start += f[4];
    }
    if (expected_start != rows)
        PAFT_FATAL("merge of tensor %llu: the ranks hold %lld rows in all, the tensor has %lld",
                   (unsigned long long)tensor_id, (long long)expected_start, (long long)rows);
    free(all);
    return L;
}

static void layout_free(RowLayout *L) {
    free(L->block_start);
    free(L->block_rows);
}

/* totals[v] = sum over all rows of the tensor of row_partials[row][v], identical on every rank
 * and for every split of the rows: the per-row partials (row-major [n_rows][nvals], this rank's
 * rows) are gathered to every rank and added in row order. */
static void sum_row_partials(const RowLayout *L, int nvals, const double *row_partials,
                             double *totals) {
    if (L->rows * nvals > INT_MAX)
        PAFT_FATAL("merge of tensor %llu: %lld rows are too many for the per-row reduction",
                   (unsigned long long)L->tensor_id, (long long)L->rows);
    int *counts = paft_malloc((size_t)L->size * sizeof *counts);
    int *displs = paft_malloc((size_t)L->size * sizeof *displs);
    for (int r = 0; r < L->size; r++) {
        counts[r] = (int)(L->block_rows[r] * nvals);
        displs[r] = (int)(L->block_start[r] * nvals);
    }
    double *all = paft_malloc((size_t)(L->rows * nvals) * sizeof *all);
    CHECK_MPI(MPI_Allgatherv(row_partials, (int)(L->n_rows * nvals), MPI_DOUBLE, all, counts,
                             displs, MPI_DOUBLE, L->comm));
    for (int v = 0; v < nvals; v++) totals[v] = 0.0;
    for (int64_t row = 0; row < L->rows; row++)
        for (int v = 0; v < nvals; v++) totals[v] += all[row * nvals + v];
    free(all);
    free(displs);
    free(counts);
}

/* ---- sparsification by magnitude: the exact global top-k ----------------------------------
 * For a finite float x, the bit pattern of |x| (sign bit cleared) read as uint32 orders exactly
 * like |x|. The k-th largest pattern T is found by a most-significant-digit radix select over its
 * 31 bits in three digits (bits 30-20, 19-10, 9-0): per digit, a histogram of that digit among
 * the elements matching the digits chosen so far, all-reduced (integer counts: exact), and the
 * digit where the running count from the top reaches k. Then every element above T is kept and,
 * among the elements equal to T, the `take_equal` with the lowest global index (their position
 * across ranks comes from an MPI_Exscan of the per-rank counts). The kept set is exactly the
 * top-k with ties broken by index, whatever the number of ranks. */

typedef struct {
    uint32_t threshold;   /* T: the k-th largest |x| bit pattern */
    int64_t take_equal;   /* how many elements equal to T are kept, over the whole tensor */
    int64_t equal_before; /* elements equal to T on lower ranks */
} TopkCut;

enum { TOPK_MAX_BINS = 1 << 11 };

static TopkCut magnitude_topk_cut(const RowLayout *L, const float *x, int64_t k) {
    static const int digit_shift[3] = {20, 10, 0}, digit_bits[3] = {11, 10, 10};
    size_t n = (size_t)(L->n_rows * L->cols);
    uint32_t prefix = 0, prefix_mask = 0;
    int64_t remaining = k; /* how many of the elements matching the prefix are still to keep */
    int64_t *hist = paft_malloc(TOPK_MAX_BINS * sizeof *hist);
    int64_t *global = paft_malloc(TOPK_MAX_BINS * sizeof *global);
    int64_t equal_here = 0; /* elements equal to T on this rank: the last local histogram's bin */
    for (int round = 0; round < 3; round++) {
        const int shift = digit_shift[round], bins = 1 << digit_bits[round];
        const uint32_t digit_mask = (uint32_t)bins - 1;
        L->be.k->magnitude_histogram(L->be.s, x, n, prefix, prefix_mask, shift, bins, hist);
        CHECK_MPI(MPI_Allreduce(hist, global, bins, MPI_INT64_T, MPI_SUM, L->comm));
        /* The histogram counts at least `remaining` elements in all, so a digit is found. */
        int digit = bins - 1;
        while (digit > 0 && global[digit] < remaining) remaining -= global[digit--];
        equal_here = hist[digit];
        prefix |= (uint32_t)digit << shift;
        prefix_mask |= digit_mask << shift;
    }
    free(global);
    free(hist);
    TopkCut cut = {.threshold = prefix, .take_equal = remaining, .equal_before = 0};
    CHECK_MPI(MPI_Exscan(&equal_here, &cut.equal_before, 1, MPI_INT64_T, MPI_SUM, L->comm));
    if (L->rank == 0) cut.equal_before = 0; /* MPI_Exscan leaves rank 0's result undefined */
    return cut;
}

/* kept = delta with all but its global top-k |values| set to zero; returns this rank's count. */
static int64_t sparsify_magnitude(const RowLayout *L, double density, const float *delta,
                                  float *kept) {
    int64_t numel = L->rows * L->cols;
    size_t n = (size_t)(L->n_rows * L->cols);
    int64_t k = (int64_t)(density * (double)numel); /* mergekit: int(density * numel) */
    if (k <= 0)
        PAFT_FATAL("merge of tensor %llu (%lld x %lld): magnitude sparsification with density "
                   "%g keeps int(density * numel) = 0 elements (mergekit refuses this too): raise "
                   "merge.density",
                   (unsigned long long)L->tensor_id, (long long)L->rows, (long long)L->cols,
                   density);
    if (k >= numel) {
        L->be.k->copy(L->be.s, kept, delta, n * sizeof *kept);
        return (int64_t)n;
    }
    TopkCut cut = magnitude_topk_cut(L, delta, k);
    int64_t count = 0, equal = 0;
    L->be.k->magnitude_keep(L->be.s, delta, n, cut.threshold, kept, &count, &equal);
    /* Above, every element equal to T was kept. Where the cut falls inside a run of equal
     * magnitudes, drop those past the first take_equal in global index order (rare with real
     * deltas, common with quantized ones). */
    if (cut.equal_before + equal > cut.take_equal) {
        int64_t keep_here = PAFT_MAX(cut.take_equal - cut.equal_before, (int64_t)0);
        count -= L->be.k->magnitude_drop_equal(L->be.s, delta, n, cut.threshold, keep_here, kept);
    }
    return count;
}

/* ---- sparsification by random drop (DARE) --------------------------------------------------
 * Keep element i iff its draw is < density. The kept values are divided by the density (the
 * mergekit of the PAFT paper), or with dare_rescale_l1 multiplied by ||delta||_1 / ||kept||_1 of
 * the whole tensor (mergekit since 2025; skipped, as there, when either norm is < 1e-7). */
static int64_t sparsify_dare(const RowLayout *L, const MergeParams *p, int which,
                             const float *delta, float *kept, double *scale_applied) {
    size_t n = (size_t)(L->n_rows * L->cols);
    double density = p->density[which];
    uint64_t key = dare_stream_key(p->seed, L->tensor_id, which);
    uint64_t first_index = (uint64_t)(L->row_start * L->cols);
    /* draw < density  <=>  (r >> 11) < density * 2^53  <=>  (r >> 11) < ceil(density * 2^53):
     * the same test as merge_dare_uniform() < density, in integers. */
    const uint64_t keep_below = (uint64_t)ceil(density * 0x1.0p53);
    int rescale_by_density = !p->dare_rescale_l1;
    *scale_applied = rescale_by_density ? 1.0 / density : 1.0;
    int64_t count = L->be.k->dare_keep(L->be.s, delta, n, key, first_index, keep_below,
                                       rescale_by_density ? (float)density : 1.0f, kept);
    if (p->dare_rescale_l1) {
        double *partials = paft_malloc((size_t)(L->n_rows * 2 + 1) * sizeof *partials);
        L->be.k->row_abs_sums(L->be.s, delta, kept, L->n_rows, L->cols, partials);
        double norms[2];
        sum_row_partials(L, 2, partials, norms);
        free(partials);
        const double eps = 1e-7;
        if (norms[0] >= eps && norms[1] >= eps) {
            *scale_applied = norms[0] / norms[1];
            L->be.k->scale(L->be.s, kept, n, (float)*scale_applied);
        }
    }
    return count;
}

/* ---- the methods ---------------------------------------------------------------------------- */

/* The element-wise step of the task-arithmetic family: base + lambda * mix(w_i * kept_i),
 * mergekit's GeneralizedTaskArithmetic, in fp32 with the same operation order. */
static MergeMix task_arithmetic_mix(const MergeParams *p) {
    MergeMix m = {.w0 = (float)p->weight[0], .w1 = (float)p->weight[1],
                  .lambda = (float)p->lambda, .normalize = (uint32_t)p->normalize,
                  .by_count = p->sign_by_count != 0};
    m.kind = uses_sign_election(p->method) ? MERGE_MIX_CONSENSUS : MERGE_MIX_WEIGHTED;
    m.divisor = p->normalize ? m.w0 + m.w1 : 1.0f;
    if (fabsf(m.divisor) < 1e-8f) m.divisor = 1.0f; /* mergekit's guard without consensus */
    return m;
}

/* mergekit's LinearMerge over the two full models: sum_i w_i theta_i (/ sum_i w_i). */
static MergeMix linear_mix(const MergeParams *p) {
    MergeMix m = {.kind = MERGE_MIX_LINEAR, .w0 = (float)p->weight[0], .w1 = (float)p->weight[1]};
    m.divisor = p->normalize ? m.w0 + m.w1 : 1.0f;
    return m;
}

/* mergekit's slerp of the two whole tensors (flattened) theta_sft -> theta_pref at t. The angle
 * comes from the vectors normalised to unit length (a norm <= 1e-8 is left as it is); the result
 * is s0 * theta_sft + s1 * theta_pref of the original vectors (no renormalisation), or the lerp
 * (1 - t) theta_sft + t theta_pref when |cos| > 0.9995. */
static MergeMix slerp_mix(const RowLayout *L, const MergeParams *p, const float *base,
                          const float *d0, const float *d1, double *cos_out, int *lerped) {
    double *partials = paft_malloc((size_t)(L->n_rows * 3 + 1) * sizeof *partials);
    L->be.k->slerp_row_sums(L->be.s, base, d0, d1, L->n_rows, L->cols, partials);
    double sums[3];
    sum_row_partials(L, 3, partials, sums);
    free(partials);

    const double eps = 1e-8, dot_threshold = 0.9995;
    double t = p->weight[1] / (p->weight[0] + p->weight[1]);
    double norm0 = sqrt(sums[1]), norm1 = sqrt(sums[2]);
    double cos_angle = sums[0] / ((norm0 > eps ? norm0 : 1.0) * (norm1 > eps ? norm1 : 1.0));
    MergeMix m = {.kind = MERGE_MIX_SLERP};
    *cos_out = cos_angle;
    *lerped = fabs(cos_angle) > dot_threshold;
    if (*lerped) {
        m.s0 = (float)(1.0 - t);
        m.s1 = (float)t;
    } else {
        double angle = acos(cos_angle), sin_angle = sin(angle);
        m.s0 = (float)(sin(angle - angle * t) / sin_angle);
        m.s1 = (float)(sin(angle * t) / sin_angle);
    }
    return m;
}

/* ---- the entry point ---------------------------------------------------------------------- */

/* Fatal on a NaN or Inf in a delta (a diverged adapter must not be merged silently); returns the
 * number of |delta| < MERGE_SPARSITY_EPS. */
static int64_t check_delta(const RowLayout *L, const float *delta, const char *which) {
    size_t n = (size_t)(L->n_rows * L->cols);
    int64_t small = 0, nonfinite = 0;
    L->be.k->count_small(L->be.s, delta, n, &small, &nonfinite);
    if (nonfinite == 0) return small;
    /* the error path: find the first one on the host, to name it */
    float *host = paft_malloc(n * sizeof *host);
    L->be.k->to_host(L->be.s, host, delta, n * sizeof *host);
    size_t bad = 0;
    while (bad + 1 < n && isfinite(host[bad])) bad++;
    PAFT_FATAL("merge of tensor %llu: delta_%s has a non-finite value (%g) at row %lld column "
               "%lld: the adapter is broken (did training diverge?)",
               (unsigned long long)L->tensor_id, which, (double)host[bad],
               (long long)(L->row_start + (int64_t)bad / L->cols),
               (long long)((int64_t)bad % L->cols));
}

void merge_tensor_rows(const MergeParams *p, MPI_Comm comm, uint64_t tensor_id, int64_t rows,
                       int64_t cols, int64_t row_start, int64_t n_rows, const float *base,
                       const float *delta_sft, const float *delta_pref, float *out,
                       MergeStats *stats) {
    MergeBackend cpu = {&merge_kernels_cpu, NULL};
    merge_tensor_rows_on(cpu, p, comm, tensor_id, rows, cols, row_start, n_rows, base, delta_sft,
                         delta_pref, out, stats);
}

void merge_tensor_rows_on(MergeBackend be, const MergeParams *p, MPI_Comm comm,
                          uint64_t tensor_id, int64_t rows, int64_t cols, int64_t row_start,
                          int64_t n_rows, const float *base, const float *delta_sft,
                          const float *delta_pref, float *out, MergeStats *stats) {
    if (p->normalize == MERGE_NORMALIZE_AUTO)
        PAFT_FATAL("merge of tensor %llu: merge parameters not resolved (call "
                   "merge_params_resolve first)",
                   (unsigned long long)tensor_id);
    RowLayout L = layout_gather(be, comm, p, tensor_id, rows, cols, row_start, n_rows);
    size_t n = (size_t)(n_rows * cols);
    const float *delta[2] = {delta_sft, delta_pref};
    if (n > 0 && (!base || !delta_sft || !delta_pref || !out))
        PAFT_FATAL("merge of tensor %llu: a NULL buffer for %lld local rows",
                   (unsigned long long)tensor_id, (long long)n_rows);
    if (n > 0 && (out == delta_sft || out == delta_pref))
        PAFT_FATAL("merge of tensor %llu: out must not be a delta buffer (it may be base)",
                   (unsigned long long)tensor_id);

    /* counts[]: small_sft, small_pref, small_merged, kept_sft, kept_pref (this rank's part). */
    int64_t counts[5] = {0, 0, 0, (int64_t)n, (int64_t)n};
    double slerp_cos = 0, dare_scale[2] = {1, 1};
    int slerp_lerped = 0;
    counts[0] = check_delta(&L, delta_sft, "sft");
    counts[1] = check_delta(&L, delta_pref, "pref");

    MergeMethod m = p->method;
    const float *kept[2] = {delta_sft, delta_pref};
    float *scratch[2] = {NULL, NULL};
    MergeMix mix;
    if (m == MERGE_LINEAR) {
        mix = linear_mix(p);
    } else if (m == MERGE_SLERP) {
        mix = slerp_mix(&L, p, base, delta_sft, delta_pref, &slerp_cos, &slerp_lerped);
    } else {
        /* Step 1: sparsify into scratch copies (a density of 1 keeps the delta as it is). */
        for (int which = 0; which < 2; which++) {
            if (p->density[which] >= 1.0 || !(uses_magnitude_topk(m) || uses_dare(m))) continue;
            scratch[which] = be.k->alloc(be.s, (n ? n : 1) * sizeof(float));
            if (uses_magnitude_topk(m))
                counts[3 + which] = sparsify_magnitude(&L, p->density[which], delta[which],
                                                       scratch[which]);
            else
                counts[3 + which] = sparsify_dare(&L, p, which, delta[which], scratch[which],
                                                  &dare_scale[which]);
            kept[which] = scratch[which];
        }
        /* Steps 2-4: weight, elect signs, mix, normalise, scale (merge_elementwise.h). */
        mix = task_arithmetic_mix(p);
    }
    /* theta = base + the mixed delta (or the linear / slerp combination), element by element */
    counts[2] = be.k->mix(be.s, &mix, base, kept[0], kept[1], out, n);
    for (int which = 0; which < 2; which++)
        if (scratch[which]) be.k->release(be.s, scratch[which]);

    if (stats) {
        CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, counts, 5, MPI_INT64_T, MPI_SUM, comm));
        stats->numel = rows * cols;
        stats->small_sft = counts[0];
        stats->small_pref = counts[1];
        stats->small_merged = counts[2];
        stats->kept[0] = counts[3];
        stats->kept[1] = counts[4];
        stats->slerp_cos = slerp_cos;
        stats->slerp_lerped = slerp_lerped;
        stats->dare_scale[0] = dare_scale[0];
        stats->dare_scale[1] = dare_scale[1];
    }
    layout_free(&L);
}
