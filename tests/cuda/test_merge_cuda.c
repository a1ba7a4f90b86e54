/*
 * test_merge_cuda.c - the merge on the GPU (kernels/merge_cuda.cu) against the merge on the CPU
 * (src/merge/merge_kernels_cpu.c), BIT FOR BIT: first every pass of the kernel table on its own,
 * then whole tensors of every method through merge_tensor_rows_on, with the rows split over the
 * ranks of MPI_COMM_WORLD (run it on 1 and 2 ranks; ranks may share the GPU). Why the bits must
 * agree: src/merge/merge_elementwise.h. The inputs look like LoRA deltas and are made to hit the
 * corner cases: exact zeros of both signs, values under the sparsity threshold, subnormals, runs of
 * equal magnitudes (the top-k cut falls inside one), both signs. `--large` adds a pass test over
 * 1.2 M elements (the grid-stride loops go round more than once, drop_equal spans over a thousand
 * chunks in several blocks): a few seconds on the emulator. Without a GPU it reports itself skipped
 * (exit 77); the CUDA emulator runs it everywhere (tests/cuda/emulator).
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "merge/merge.h"
#include "merge/merge_kernels.h"
#include "ops_cuda.h"
#include "test_util.h"
#include "util/rng.h"

static const MergeKernels *const cpu = &merge_kernels_cpu;
static const MergeKernels *const gpu = &merge_kernels_cuda;
static MergeKernelState *gpu_state;

/* ---- buffers on both sides -------------------------------------------------------------------- */

static float *to_gpu(const float *x, size_t n) {
    float *d = gpu->alloc(gpu_state, n * sizeof(float) + 1);
    gpu->to_device(gpu_state, d, x, n * sizeof(float));
    return d;
}
static float *from_gpu(const float *d, size_t n) {
    float *x = malloc(n * sizeof(float) + 1);
    gpu->to_host(gpu_state, x, d, n * sizeof(float));
    return x;
}

/* Same bits, element for element (so -0 != +0 and NaN == NaN of the same pattern). */
static void check_same_bits(const char *what, const void *got, const void *want, size_t n,
                            size_t elem) {
    size_t bad = n;
    for (size_t i = 0; i < n && bad == n; i++)
        if (memcmp((const char *)got + i * elem, (const char *)want + i * elem, elem) != 0) bad = i;
    if (bad < n && elem == sizeof(float))
        CHECK(0, "%s: element %zu differs: gpu %.9g, cpu %.9g", what, bad,
              (double)((const float *)got)[bad], (double)((const float *)want)[bad]);
    else if (bad < n)
        CHECK(0, "%s: element %zu differs: gpu %.17g, cpu %.17g", what, bad,
              ((const double *)got)[bad], ((const double *)want)[bad]);
    else
        CHECK(1, "%s", what);
}

/* A delta as training leaves it: N(0, scale^2), with a share of exact zeros (+0 and -0), values
 * under 1e-5, and (quantized) magnitudes rounded to a few levels so that many are equal. */
static float *make_delta(size_t n, double scale, int quantized, Rng *rng) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        double u = rng_uniform(rng), v = scale * rng_normal(rng);
        if (quantized) v = scale * 0.25 * round(v / (scale * 0.25));
        if (u < 0.05) v = 0.0;
        else if (u < 0.07) v = -0.0;
        else if (u < 0.12) v = 3e-6 * rng_normal(rng);
        else if (u < 0.13) v = 1e-39 * rng_normal(rng); /* subnormal: a flush to zero shows */
        x[i] = (float)v;
    }
    return x;
}

/* ---- the passes --------------------------------------------------------------------------------- */

static void test_passes(Rng *rng, int64_t rows, int64_t cols) {
    const int64_t r = 5;
    const size_t n = (size_t)(rows * cols);

    /* lora_delta */
    float *A = make_delta((size_t)(r * cols), 0.02, 0, rng), *B = make_delta((size_t)(rows * r), 0.02, 0, rng);
    float *dA = to_gpu(A, (size_t)(r * cols)), *dB = to_gpu(B, (size_t)(rows * r));
    float *want = malloc(n * sizeof(float)), *d_out = gpu->alloc(gpu_state, n * sizeof(float));
    cpu->lora_delta(NULL, want, A, B, rows, cols, (int)r, 2.5f);
    gpu->lora_delta(gpu_state, d_out, dA, dB, rows, cols, (int)r, 2.5f);
    float *got = from_gpu(d_out, n);
    check_same_bits("lora_delta", got, want, n, sizeof(float));
    free(got);

    /* count_small, with an Inf and a NaN planted */
    float *x = make_delta(n, 1e-3, 0, rng);
    x[17] = INFINITY;
    x[n - 2] = NAN;
    float *dx = to_gpu(x, n);
    int64_t small_c, nonfinite_c, small_g, nonfinite_g;
    cpu->count_small(NULL, x, n, &small_c, &nonfinite_c);
    gpu->count_small(gpu_state, dx, n, &small_g, &nonfinite_g);
    CHECK(small_g == small_c && nonfinite_g == nonfinite_c && nonfinite_c == 2 && small_c > 0,
          "count_small: gpu %lld small %lld non-finite, cpu %lld, %lld",
          (long long)small_g, (long long)nonfinite_g, (long long)small_c, (long long)nonfinite_c);
    gpu->release(gpu_state, dx);
    free(x);

    /* the magnitude passes, on quantized values (runs of equal magnitudes) */
    x = make_delta(n, 1e-3, 1, rng);
    dx = to_gpu(x, n);
    int64_t hist_c[2048], hist_g[2048];
    const uint32_t threshold = merge_magnitude_bits(x[101]);
    struct { uint32_t prefix, mask; int shift, bins; } digits[3] = {
        {0, 0, 20, 2048},
        {threshold & 0x7FF00000u, 0x7FF00000u, 10, 1024},
        {threshold & 0x7FFFFC00u, 0x7FFFFC00u, 0, 1024}};
    for (int d = 0; d < 3; d++) {
        cpu->magnitude_histogram(NULL, x, n, digits[d].prefix, digits[d].mask, digits[d].shift,
                                 digits[d].bins, hist_c);
        gpu->magnitude_histogram(gpu_state, dx, n, digits[d].prefix, digits[d].mask,
                                 digits[d].shift, digits[d].bins, hist_g);
        char what[64];
        snprintf(what, sizeof what, "magnitude_histogram digit %d", d);
        check_same_bits(what, hist_g, hist_c, (size_t)digits[d].bins, sizeof(int64_t));
    }
    int64_t kept_c, equal_c, kept_g, equal_g;
    cpu->magnitude_keep(NULL, x, n, threshold, want, &kept_c, &equal_c);
    gpu->magnitude_keep(gpu_state, dx, n, threshold, d_out, &kept_g, &equal_g);
    got = from_gpu(d_out, n);
    check_same_bits("magnitude_keep", got, want, n, sizeof(float));
    CHECK(kept_g == kept_c && equal_g == equal_c && equal_c > 10,
          "magnitude_keep counts: gpu %lld kept %lld equal, cpu %lld, %lld (want > 10 equal)",
          (long long)kept_g, (long long)equal_g, (long long)kept_c, (long long)equal_c);
    free(got);
    for (int64_t keep_equal = 0; keep_equal <= equal_c; keep_equal += equal_c / 3 + 1) {
        /* each from a fresh keep pass: dropping fewer after dropping more would compare two
         * arrays the earlier pass already zeroed alike */
        cpu->magnitude_keep(NULL, x, n, threshold, want, &kept_c, &equal_c);
        gpu->magnitude_keep(gpu_state, dx, n, threshold, d_out, &kept_g, &equal_g);
        int64_t dropped_c = cpu->magnitude_drop_equal(NULL, x, n, threshold, keep_equal, want);
        int64_t dropped_g = gpu->magnitude_drop_equal(gpu_state, dx, n, threshold, keep_equal, d_out);
        got = from_gpu(d_out, n);
        check_same_bits("magnitude_drop_equal", got, want, n, sizeof(float));
        CHECK(dropped_g == dropped_c && dropped_c == equal_c - keep_equal,
              "magnitude_drop_equal keeping %lld of %lld: dropped gpu %lld, cpu %lld",
              (long long)keep_equal, (long long)equal_c, (long long)dropped_g, (long long)dropped_c);
        free(got);
    }

    /* dare_keep, then scale */
    const uint64_t keep_below = (uint64_t)ceil(0.3 * 0x1.0p53);
    for (int by_density = 0; by_density < 2; by_density++) {
        float divisor = by_density ? 0.3f : 1.0f;
        int64_t count_c = cpu->dare_keep(NULL, x, n, 0x1234567887654321ULL, 98765, keep_below,
                                         divisor, want);
        int64_t count_g = gpu->dare_keep(gpu_state, dx, n, 0x1234567887654321ULL, 98765,
                                         keep_below, divisor, d_out);
        got = from_gpu(d_out, n);
        check_same_bits("dare_keep", got, want, n, sizeof(float));
        CHECK(count_g == count_c && count_c > (int64_t)n / 5 && count_c < (int64_t)n * 2 / 5,
              "dare_keep counts: gpu %lld, cpu %lld of %zu (density 0.3)", (long long)count_g,
              (long long)count_c, n);
        free(got);
    }
    cpu->scale(NULL, want, n, 1.7f);
    gpu->scale(gpu_state, d_out, n, 1.7f);
    got = from_gpu(d_out, n);
    check_same_bits("scale", got, want, n, sizeof(float));
    free(got);

    /* the per-row sums (double partials, columns in order) */
    float *base = make_delta(n, 0.05, 0, rng), *y = make_delta(n, 1e-3, 0, rng);
    float *d_base = to_gpu(base, n), *dy = to_gpu(y, n);
    double *partial_c = malloc((size_t)rows * 3 * sizeof(double));
    double *partial_g = malloc((size_t)rows * 3 * sizeof(double));
    cpu->row_abs_sums(NULL, x, y, rows, cols, partial_c);
    gpu->row_abs_sums(gpu_state, dx, dy, rows, cols, partial_g);
    check_same_bits("row_abs_sums", partial_g, partial_c, (size_t)rows * 2, sizeof(double));
    cpu->slerp_row_sums(NULL, base, x, y, rows, cols, partial_c);
    gpu->slerp_row_sums(gpu_state, d_base, dx, dy, rows, cols, partial_g);
    check_same_bits("slerp_row_sums", partial_g, partial_c, (size_t)rows * 3, sizeof(double));

    /* mix: every kind, with the settings that change its arithmetic */
    const MergeMix mixes[] = {
        {.kind = MERGE_MIX_WEIGHTED, .w0 = 1, .w1 = 1, .lambda = 1, .divisor = 1},
        {.kind = MERGE_MIX_WEIGHTED, .w0 = 0.7f, .w1 = -0.4f, .lambda = 0.9f, .divisor = 0.3f},
        {.kind = MERGE_MIX_CONSENSUS, .w0 = 0.7f, .w1 = 0.3f, .lambda = 1, .normalize = 1},
        {.kind = MERGE_MIX_CONSENSUS, .w0 = 0.6f, .w1 = 1.3f, .lambda = 1.2f, .by_count = 1},
        {.kind = MERGE_MIX_LINEAR, .w0 = 0.25f, .w1 = 0.5f, .divisor = 0.75f},
        {.kind = MERGE_MIX_SLERP, .s0 = 0.61f, .s1 = 0.43f},
    };
    for (size_t k = 0; k < sizeof mixes / sizeof mixes[0]; k++) {
        int64_t small_cm = cpu->mix(NULL, &mixes[k], base, x, y, want, n);
        int64_t small_gm = gpu->mix(gpu_state, &mixes[k], d_base, dx, dy, d_out, n);
        got = from_gpu(d_out, n);
        char what[64];
        snprintf(what, sizeof what, "mix %zu (kind %d)", k, (int)mixes[k].kind);
        check_same_bits(what, got, want, n, sizeof(float));
        CHECK(small_gm == small_cm, "%s: small count gpu %lld, cpu %lld", what,
              (long long)small_gm, (long long)small_cm);
        free(got);
    }
    /* in place (out = base), as the merge stage calls it */
    gpu->mix(gpu_state, &mixes[2], d_base, dx, dy, d_base, n);
    cpu->mix(NULL, &mixes[2], base, x, y, want, n);
    got = from_gpu(d_base, n);
    check_same_bits("mix in place", got, want, n, sizeof(float));
    free(got);

    gpu->release(gpu_state, dA);
    gpu->release(gpu_state, dB);
    gpu->release(gpu_state, d_out);
    gpu->release(gpu_state, dx);
    gpu->release(gpu_state, dy);
    gpu->release(gpu_state, d_base);
    float *host[] = {A, B, want, x, y, base};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    free(partial_c);
    free(partial_g);
}

/* ---- whole tensors, every method, rows over the ranks ---------------------------------------- */

static void test_tensor(MergeParams p, int64_t rows, int64_t cols, int quantized, const char *what,
                        uint64_t seed) {
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    merge_params_resolve(&p);
    /* every rank makes the whole tensor from the same seed and takes its rows */
    Rng rng;
    rng_seed(&rng, seed);
    const size_t total = (size_t)(rows * cols);
    float *base_all = make_delta(total, 0.05, 0, &rng);
    float *d0_all = make_delta(total, 1e-3, quantized, &rng);
    float *d1_all = make_delta(total, 1e-3, quantized, &rng);
    int64_t row0, n_rows;
    merge_row_range(rows, rank, size, &row0, &n_rows);
    const size_t n = (size_t)(n_rows * cols), at = (size_t)(row0 * cols);
    float *want = malloc(n * sizeof(float) + 1);
    MergeStats stats_c, stats_g;
    MergeBackend on_cpu = {cpu, NULL}, on_gpu = {gpu, gpu_state};
    merge_tensor_rows_on(on_cpu, &p, MPI_COMM_WORLD, 3, rows, cols, row0, n_rows, base_all + at,
                         d0_all + at, d1_all + at, want, &stats_c);
    float *d_base = to_gpu(base_all + at, n), *d0 = to_gpu(d0_all + at, n);
    float *d1 = to_gpu(d1_all + at, n);
    merge_tensor_rows_on(on_gpu, &p, MPI_COMM_WORLD, 3, rows, cols, row0, n_rows, d_base, d0, d1,
                         d_base, &stats_g);
    float *got = from_gpu(d_base, n);
    char label[160];
    snprintf(label, sizeof label, "%s (%s, %lld x %lld, %d rank%s)", what,
             merge_method_name(p.method), (long long)rows, (long long)cols, size,
             size == 1 ? "" : "s");
    check_same_bits(label, got, want, n, sizeof(float));
    CHECK(stats_g.numel == stats_c.numel && stats_g.small_sft == stats_c.small_sft &&
          stats_g.small_pref == stats_c.small_pref && stats_g.small_merged == stats_c.small_merged &&
          stats_g.kept[0] == stats_c.kept[0] && stats_g.kept[1] == stats_c.kept[1] &&
          stats_g.slerp_cos == stats_c.slerp_cos && stats_g.slerp_lerped == stats_c.slerp_lerped &&
          stats_g.dare_scale[0] == stats_c.dare_scale[0] &&
          stats_g.dare_scale[1] == stats_c.dare_scale[1],
          "%s: the statistics differ (kept %lld/%lld vs %lld/%lld, small merged %lld vs %lld)",
          label, (long long)stats_g.kept[0], (long long)stats_g.kept[1],
          (long long)stats_c.kept[0], (long long)stats_c.kept[1],
          (long long)stats_g.small_merged, (long long)stats_c.small_merged);
    gpu->release(gpu_state, d_base);
    gpu->release(gpu_state, d0);
    gpu->release(gpu_state, d1);
    free(got);
    free(want);
    free(base_all);
    free(d0_all);
    free(d1_all);
}

static void test_methods(void) {
    for (int m = 0; m < MERGE_METHOD_COUNT; m++) {
        MergeParams p = merge_params_default((MergeMethod)m);
        p.weight[0] = 0.7;
        p.weight[1] = 0.45;
        p.density[0] = 0.35;
        p.density[1] = 0.6;
        if (m != MERGE_SLERP && m != MERGE_LINEAR) p.lambda = 1.1;
        p.seed = 11;
        test_tensor(p, 29, 70, 0, "every method", 100 + (uint64_t)m);
    }
    /* the settings the defaults leave out */
    MergeParams ties = merge_params_default(MERGE_TIES);
    ties.density[0] = ties.density[1] = 0.5;
    test_tensor(ties, 31, 64, 1, "ties, the cut inside a run of equal magnitudes", 7);
    ties.sign_by_count = 1;
    ties.normalize = 0;
    test_tensor(ties, 31, 64, 0, "ties by count, no normalize", 8);
    MergeParams dare = merge_params_default(MERGE_DARE_TIES);
    dare.density[0] = 0.4;
    dare.density[1] = 0.7;
    dare.dare_rescale_l1 = 1;
    test_tensor(dare, 23, 90, 0, "dare_ties, L1 rescale", 9);
    MergeParams linear = merge_params_default(MERGE_LINEAR);
    linear.normalize = 0;
    test_tensor(linear, 5, 33, 0, "linear without normalize", 10);
    MergeParams slerp = merge_params_default(MERGE_SLERP);
    slerp.weight[0] = 0.2;
    slerp.weight[1] = 0.8;
    test_tensor(slerp, 1, 50, 0, "slerp, one row (a rank without rows)", 12);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (cuda_device_count() == 0) {
        if (rank == 0)
            printf("test_merge_cuda: SKIPPED: no CUDA device on this machine (run it on the GPU "
                   "machine)\n");
        MPI_Finalize();
        return 77;
    }
    const int large = argc > 1 && strcmp(argv[1], "--large") == 0;
    gpu_state = gpu->create();
    Rng rng;
    rng_seed(&rng, 2026 + (uint64_t)rank);
    test_passes(&rng, 37, 130); /* n crosses the 1024-element chunks of drop_equal */
    if (large) test_passes(&rng, 1100, 1111);
    test_methods();
    gpu->destroy(gpu_state);
    int failed = test_finish("test_merge_cuda") != 0, any_failed = 0;
    MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any_failed;
}
