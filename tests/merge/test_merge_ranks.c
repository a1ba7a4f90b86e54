/*
 * test_merge_ranks.c - the merged tensor is bitwise identical for any number of ranks and any
 * split of the rows. Run under mpirun -np 1, 2, 3, 4 (tests/merge/CMakeLists.txt).
 *
 * Every rank computes each case twice: alone over the whole tensor (MPI_COMM_SELF, i.e. what a
 * one-rank run computes) and distributed over MPI_COMM_WORLD under several row splits (the even
 * split of merge_row_range, a skewed split with empty ranks, a tensor with fewer rows than
 * ranks); the distributed rows are gathered and must equal the single-rank result bit for bit,
 * and so must the statistics (including the doubles reduced over the whole tensor: slerp's
 * cosine and DARE's L1 ratio, which are more sensitive to the order of a sum than the fp32
 * output that depends on them). The cases cover every method, DARE with both rescales, magnitude
 * top-k whose threshold sits inside a large run of equal magnitudes spanning rank boundaries,
 * and slerp (whose dot product and norms are whole-tensor reductions).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "merge/merge.h"
#include "test_util.h"
#include "util/common.h"

static uint64_t rng_state;
static double uniform(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

typedef enum { SPLIT_EVEN, SPLIT_SKEWED } Split;

/* SKEWED: rank 0 holds nothing, ranks 1..size-2 one row each, the last rank the rest. */
static void split_rows(Split split, int64_t rows, int rank, int size, int64_t *start,
                       int64_t *count) {
    if (split == SPLIT_EVEN || size == 1) {
        merge_row_range(rows, rank, size, start, count);
        return;
    }
    int64_t small = PAFT_MIN((int64_t)(size - 2), rows);
    if (rank == 0) {
        *start = 0, *count = 0;
    } else if (rank < size - 1) {
        *start = PAFT_MIN((int64_t)(rank - 1), small);
        *count = rank - 1 < small ? 1 : 0;
    } else {
        *start = small;
        *count = rows - small;
    }
}

static int stats_equal(const MergeStats *a, const MergeStats *b) {
    return a->numel == b->numel && a->small_sft == b->small_sft && a->small_pref == b->small_pref &&
           a->small_merged == b->small_merged && a->kept[0] == b->kept[0] &&
           a->kept[1] == b->kept[1] && a->slerp_lerped == b->slerp_lerped &&
           memcmp(&a->slerp_cos, &b->slerp_cos, sizeof(double)) == 0 &&
           memcmp(a->dare_scale, b->dare_scale, sizeof a->dare_scale) == 0;
}

static void run_case(const char *label, MergeParams p, int64_t rows, int64_t cols, int quantized,
                     uint64_t seed) {
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    merge_params_resolve(&p);
    size_t n = (size_t)(rows * cols);
    float *base = paft_malloc(n * sizeof(float)), *d0 = paft_malloc(n * sizeof(float));
    float *d1 = paft_malloc(n * sizeof(float)), *whole = paft_malloc(n * sizeof(float));
    float *gathered = paft_malloc(n * sizeof(float));
    rng_state = seed;
    for (size_t i = 0; i < n; i++) {
        base[i] = (float)(2 * uniform() - 1);
        if (quantized) { /* four magnitudes only: huge runs of ties at any threshold */
            d0[i] = (float)((int)(uniform() * 8) - 4) * 0.25f * 0.01f;
            d1[i] = (float)((int)(uniform() * 8) - 4) * 0.25f * 0.01f;
        } else {
            d0[i] = (float)((2 * uniform() - 1) * 0.02);
            d1[i] = (float)((2 * uniform() - 1) * 0.01);
        }
    }
    MergeStats want_stats, got_stats;
    merge_tensor_rows(&p, MPI_COMM_SELF, seed, rows, cols, 0, rows, base, d0, d1, whole,
                      &want_stats);

    for (int split = SPLIT_EVEN; split <= SPLIT_SKEWED; split++) {
        int64_t start, count;
        split_rows((Split)split, rows, rank, size, &start, &count);
        size_t off = (size_t)(start * cols), len = (size_t)(count * cols);
        float *mine = paft_malloc((len ? len : 1) * sizeof(float));
        merge_tensor_rows(&p, MPI_COMM_WORLD, seed, rows, cols, start, count, base + off,
                          d0 + off, d1 + off, mine, &got_stats);
        int *counts = paft_malloc((size_t)size * sizeof(int));
        int *displs = paft_malloc((size_t)size * sizeof(int));
        for (int r = 0; r < size; r++) {
            int64_t s, c;
            split_rows((Split)split, rows, r, size, &s, &c);
            counts[r] = (int)(c * cols);
            displs[r] = (int)(s * cols);
        }
        MPI_Allgatherv(mine, (int)len, MPI_FLOAT, gathered, counts, displs, MPI_FLOAT,
                       MPI_COMM_WORLD);
        size_t first_diff = n;
        for (size_t i = 0; i < n && first_diff == n; i++)
            if (memcmp(&gathered[i], &whole[i], sizeof(float)) != 0) first_diff = i;
        CHECK(first_diff == n, "%s, %s split over %d ranks: first difference at %zu (%.9g vs %.9g)",
              label, split == SPLIT_EVEN ? "even" : "skewed", size, first_diff,
              first_diff < n ? gathered[first_diff] : 0.0, first_diff < n ? whole[first_diff] : 0.0);
        CHECK(stats_equal(&got_stats, &want_stats), "%s: statistics differ over %d ranks", label,
              size);
        free(counts);
        free(displs);
        free(mine);
    }
    free(base);
    free(d0);
    free(d1);
    free(whole);
    free(gathered);
}

static MergeParams P(MergeMethod m, double w0, double w1, double dens0, double dens1) {
    MergeParams p = merge_params_default(m);
    p.weight[0] = w0;
    p.weight[1] = w1;
    p.density[0] = dens0;
    p.density[1] = dens1;
    return p;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MergeParams p;
    run_case("linear", P(MERGE_LINEAR, 0.7, 0.3, 1, 1), 23, 41, 0, 1);
    run_case("task_arithmetic", P(MERGE_TASK_ARITHMETIC, 1, 1, 1, 1), 23, 41, 0, 2);
    run_case("ties", P(MERGE_TIES, 0.7, 0.3, 0.5, 0.3), 23, 41, 0, 3);
    run_case("ties ties-at-threshold", P(MERGE_TIES, 1, 1, 0.37, 0.61), 23, 41, 1, 4);
    p = P(MERGE_TIES, 1, 1, 0.2, 0.2);
    p.sign_by_count = 1;
    run_case("ties count", p, 23, 41, 1, 5);
    run_case("magnitude ties-at-threshold", P(MERGE_MAGNITUDE, 1, 1, 0.13, 0.77), 29, 17, 1, 6);
    run_case("magnitude few rows", P(MERGE_MAGNITUDE, 1, 1, 0.5, 0.25), 3, 64, 1, 7);
    p = P(MERGE_DARE_TIES, 1, 1, 0.5, 0.3);
    p.seed = 17;
    run_case("dare_ties", p, 23, 41, 0, 8);
    p.dare_rescale_l1 = 1;
    run_case("dare_ties l1", p, 23, 41, 0, 9);
    p = P(MERGE_DARE_LINEAR, 0.5, 0.5, 0.7, 0.2);
    p.dare_rescale_l1 = 1;
    p.normalize = 1;
    run_case("dare_linear l1", p, 2, 301, 0, 10);
    run_case("slerp", P(MERGE_SLERP, 0.4, 0.6, 1, 1), 23, 41, 0, 11);
    run_case("slerp one row", P(MERGE_SLERP, 1, 1, 1, 1), 1, 97, 0, 12);
    int rc = test_finish("test_merge_ranks");
    /* Every rank must agree that it passed. */
    int all_rc = 0;
    MPI_Allreduce(&rc, &all_rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return all_rc;
}
