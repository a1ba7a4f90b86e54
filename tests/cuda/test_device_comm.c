/*
 * test_device_comm.c - the CUDA backend's collectives (kernels/device_comm.h), in three modes:
 *
 *   test_device_comm                 the host-only parts, run everywhere (CI has no GPU): the
 *                                    shared-GPU decision on hand-made ids, the bf16 <-> fp32
 *                                    conversions (hand-picked bit patterns, every bf16 value, and
 *                                    random floats against an independent nearest-value rule) and
 *                                    the kind names.
 *   mpirun -np N ... --gpu           the device reductions (bf16, f32, f64 sums and the f32 max) of
 *                                    every kind this machine allows, against sums computed on the
 *                                    host from values each rank can compute for any rank.
 *   mpirun -np 2 ... --nccl-shared   NCCL forced while two ranks share one GPU: must end with the
 *                                    error (ctest checks the message).
 *
 * The GPU modes report themselves skipped (exit 77, "SKIPPED: ...") where there is no GPU.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_check.h"
#include "device_comm.h"
#include "ops_cuda.h"
#include "test_util.h"
#include "util/rng.h"

static uint32_t float_bits(float x) {
    uint32_t b;
    memcpy(&b, &x, 4);
    return b;
}

static float bits_float(uint32_t b) {
    float x;
    memcpy(&x, &b, 4);
    return x;
}

static uint16_t to_bf16(float x) {
    uint16_t out;
    float_to_bf16_host(&out, &x, 1);
    return out;
}

static float from_bf16(uint16_t b) {
    float out;
    bf16_to_float_host(&out, &b, 1);
    return out;
}

static int bf16_is_nan(uint16_t b) { return (b & 0x7F80u) == 0x7F80u && (b & 0x007Fu) != 0; }

/* ---- host-only parts ------------------------------------------------------------------------- */

static void test_device_ids_shared(void) {
    /* four ranks on two nodes, four distinct GPUs */
    const uint64_t nodes[4] = {11, 11, 22, 22}, devices_distinct[4] = {1, 2, 1, 2};
    CHECK(device_ids_shared(nodes, devices_distinct, 4) == 0, "same bus id on two nodes is no share");
    /* one node, different devices */
    const uint64_t one_node[3] = {5, 5, 5}, three_devices[3] = {7, 8, 9};
    CHECK(device_ids_shared(one_node, three_devices, 3) == 0, "one node, three GPUs");
    /* two ranks on one device (ranks 1 and 3 of four, not neighbours) */
    const uint64_t devices_shared[4] = {1, 2, 3, 2};
    const uint64_t same_node[4] = {5, 5, 5, 5};
    CHECK(device_ids_shared(same_node, devices_shared, 4) == 1, "ranks 1 and 3 share GPU 2");
    /* the same device id on the same node only counts when both match */
    const uint64_t nodes_b[4] = {5, 6, 5, 5};
    const uint64_t devices_b[4] = {2, 2, 3, 4};
    CHECK(device_ids_shared(nodes_b, devices_b, 4) == 0, "GPU 2 on two different nodes");
    CHECK(device_ids_shared(same_node, devices_shared, 1) == 0, "a single rank shares nothing");
    CHECK(device_ids_shared(same_node, devices_shared, 0) == 0, "no ranks");
    const uint64_t pair_nodes[2] = {9, 9}, pair_devices[2] = {4, 4};
    CHECK(device_ids_shared(pair_nodes, pair_devices, 2) == 1, "two ranks, one GPU");
}

static void test_kind_names(void) {
    CHECK(device_comm_kind_from_name("auto") == DEVICE_COMM_AUTO, "auto");
    CHECK(device_comm_kind_from_name("nccl") == DEVICE_COMM_NCCL, "nccl");
    CHECK(device_comm_kind_from_name("mpi") == DEVICE_COMM_MPI, "mpi");
    CHECK(device_comm_kind_from_name("NCCL") == -1, "upper case is not a name");
    CHECK(device_comm_kind_from_name("") == -1, "empty");
    CHECK(device_comm_kind_from_name("gloo") == -1, "unknown");
    CHECK(device_comm_kind_from_name("mpi ") == -1, "trailing space");
    CHECK(device_comm_kind_from_name(NULL) == -1, "NULL");
}

/* Hand-picked fp32 bit patterns and their bf16 (round to nearest, ties to even). */
static void test_bf16_rounding_cases(void) {
    static const struct {
        uint32_t in;
        uint16_t out;
        const char *why;
    } cases[] = {
        {0x3F800000u, 0x3F80u, "1.0 exact"},
        {0xC0400000u, 0xC040u, "-3.0 exact"},
        {0x3F807FFFu, 0x3F80u, "just below half an ulp: down"},
        {0x3F808000u, 0x3F80u, "tie, kept part even (0x3F80): down"},
        {0x3F808001u, 0x3F81u, "just above half an ulp: up"},
        {0x3F818000u, 0x3F82u, "tie, kept part odd (0x3F81): up to even"},
        {0xBF808000u, 0xBF80u, "negative tie, even: toward zero"},
        {0xBF818000u, 0xBF82u, "negative tie, odd: away from zero"},
        {0x3FFF8000u, 0x4000u, "tie, odd, carries into the exponent (2.0)"},
        {0x7F7F7FFFu, 0x7F7Fu, "largest bf16 region, below half: stays finite"},
        {0x7F7F8000u, 0x7F80u, "tie above the largest bf16: overflows to inf"},
        {0x7F7FFFFFu, 0x7F80u, "FLT_MAX rounds to inf"},
        {0x7F800000u, 0x7F80u, "+inf"},
        {0xFF800000u, 0xFF80u, "-inf"},
        {0x00000000u, 0x0000u, "+0"},
        {0x80000000u, 0x8000u, "-0"},
        {0x00008000u, 0x0000u, "subnormal tie to even zero"},
        {0x00018000u, 0x0002u, "subnormal tie, odd: up"},
        {0x00010000u, 0x0001u, "smallest bf16 subnormal exact"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t got = to_bf16(bits_float(cases[i].in));
        CHECK(got == cases[i].out, "%s: 0x%08X -> 0x%04X, expected 0x%04X", cases[i].why,
              (unsigned)cases[i].in, (unsigned)got, (unsigned)cases[i].out);
    }
    /* NaNs stay NaN, with their sign, even when the mantissa bits that survive are all zero */
    static const uint32_t nans[] = {0x7FC00000u, 0x7F800001u, 0xFF800001u, 0x7FFFFFFFu, 0xFFC00000u};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        uint16_t got = to_bf16(bits_float(nans[i]));
        CHECK(bf16_is_nan(got), "NaN 0x%08X -> 0x%04X is not NaN", (unsigned)nans[i], (unsigned)got);
        CHECK((got >> 15) == (nans[i] >> 31), "NaN 0x%08X lost its sign", (unsigned)nans[i]);
    }
    /* bf16 -> fp32 on known values */
    CHECK(from_bf16(0x3F80u) == 1.0f, "0x3F80 is 1");
    CHECK(from_bf16(0xC040u) == -3.0f, "0xC040 is -3");
    CHECK(from_bf16(0x4049u) == 3.140625f, "0x4049 is 3.140625");
    CHECK(isinf(from_bf16(0x7F80u)) && from_bf16(0x7F80u) > 0, "0x7F80 is +inf");
    CHECK(isinf(from_bf16(0xFF80u)) && from_bf16(0xFF80u) < 0, "0xFF80 is -inf");
    CHECK(isnan(from_bf16(0x7FC0u)), "0x7FC0 is NaN");
    CHECK(from_bf16(0x0001u) == ldexpf(1.0f, -133), "0x0001 is 2^-133");
}

/* Every bf16 pattern survives bf16 -> fp32 -> bf16 (NaNs as NaNs), through the array functions. */
static void test_bf16_round_trip_all(void) {
    uint16_t *in = malloc(65536 * sizeof(uint16_t)), *back = malloc(65536 * sizeof(uint16_t));
    float *f = malloc(65536 * sizeof(float));
    for (uint32_t i = 0; i < 65536; i++) in[i] = (uint16_t)i;
    bf16_to_float_host(f, in, 65536);
    float_to_bf16_host(back, f, 65536);
    int bad = 0, first = -1;
    for (uint32_t i = 0; i < 65536; i++) {
        int ok = bf16_is_nan(in[i]) ? bf16_is_nan(back[i]) && isnan(f[i]) : back[i] == in[i];
        ok = ok && float_bits(f[i]) == ((uint32_t)in[i] << 16); /* bf16 -> fp32 is exact */
        if (!ok && bad++ == 0) first = (int)i;
    }
    CHECK(bad == 0, "%d of 65536 bf16 patterns do not round-trip (first 0x%04X)", bad, first);
    free(in);
    free(back);
    free(f);
}

/* Random finite floats: the result must be the nearer of the two bf16 values around x (in double,
 * exact here), and on a tie the one with an even last bit. An independent statement of the rule. */
static void test_bf16_nearest_random(void) {
    Rng rng;
    rng_seed(&rng, 42);
    int bad = 0;
    uint32_t first = 0;
    for (int t = 0; t < 200000; t++) {
        uint32_t bits = (uint32_t)rng_u64(&rng);
        if (t % 4 == 0) bits = (bits & 0xFFFF0000u) | 0x8000u; /* many exact ties */
        if ((bits & 0x7F800000u) == 0x7F800000u) continue;      /* inf / NaN: tested above */
        const uint16_t lo = (uint16_t)(bits >> 16);             /* toward zero */
        const uint16_t hi = (uint16_t)(lo + 1);                 /* away from zero (may be inf) */
        const double x = fabs((double)bits_float(bits));
        /* above the largest bf16, "hi" is inf: IEEE rounds as if it were 2^128 */
        const double hi_value = isinf(from_bf16(hi)) ? ldexp(1.0, 128) : fabs((double)from_bf16(hi));
        const double d_lo = x - fabs((double)from_bf16(lo)), d_hi = hi_value - x;
        const uint16_t want = d_lo < d_hi ? lo : d_hi < d_lo ? hi : (lo & 1u) ? hi : lo;
        if (to_bf16(bits_float(bits)) != want && bad++ == 0) first = bits;
    }
    CHECK(bad == 0, "%d random floats not rounded to the nearest (even) bf16, first 0x%08X", bad,
          (unsigned)first);
}

/* ---- the device reductions ----------------------------------------------------------------- */

/* Elements above the MPI path's staging chunk (4 Mi), so the chunk loop and its tail are used. */
#define N_BIG (((size_t)1 << 22) + 1237)
#define N_SMALL ((size_t)1000)

static void *upload(const void *host, size_t bytes) {
    void *device = NULL;
    CHECK_CUDA(cudaMalloc(&device, bytes));
    CHECK_CUDA(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice));
    return device;
}

static void download(void *host, void *device, size_t bytes) {
    CHECK_CUDA(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaFree(device));
}

/* The values are rank-dependent, and every expectation is exact: small integers (bf16 holds every
 * integer up to 256, so (i % 8 + 1) * (1 + ... + size) with size <= 8 is exact whatever the order
 * and rounding of the partial sums), quarter-integers in fp32. */
static void check_sums(DeviceComm *dc, int rank, int size, const char *label) {
    const double rank_sum = size * (size + 1) / 2.0; /* sum over r of (r + 1) */
    for (int pass = 0; pass < 2; pass++) {
        const size_t n = pass == 0 ? N_SMALL : N_BIG;

        uint16_t *h16 = malloc(n * sizeof(uint16_t));
        float *f = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) f[i] = (float)((i % 8 + 1) * (rank + 1));
        float_to_bf16_host(h16, f, n);
        void *d16 = upload(h16, n * sizeof(uint16_t));
        device_allreduce_sum_bf16(dc, d16, n);
        download(h16, d16, n * sizeof(uint16_t));
        bf16_to_float_host(f, h16, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) bad += f[i] != (float)((i % 8 + 1) * rank_sum);
        CHECK(bad == 0, "%s: bf16 sum of %zu: %zu wrong (f[1] = %g, expected %g)", label, n, bad,
              f[1], 2 * rank_sum);

        for (size_t i = 0; i < n; i++) f[i] = 0.25f * (float)((i % 1000 + 1) * (rank + 1));
        float *d32 = upload(f, n * sizeof(float));
        device_allreduce_sum_f32(dc, d32, n);
        download(f, d32, n * sizeof(float));
        bad = 0;
        for (size_t i = 0; i < n; i++) bad += f[i] != (float)(0.25 * (i % 1000 + 1) * rank_sum);
        CHECK(bad == 0, "%s: f32 sum of %zu: %zu wrong", label, n, bad);

        /* max: values in [-50, 50] whose maximum over ranks is often negative (so a reduction that
         * started from 0 would show) */
        for (size_t i = 0; i < n; i++) f[i] = (float)((long)((i * 7 + (size_t)rank * 13) % 101) - 50);
        d32 = upload(f, n * sizeof(float));
        device_allreduce_max_f32(dc, d32, n);
        download(f, d32, n * sizeof(float));
        bad = 0;
        for (size_t i = 0; i < n; i++) {
            long want = -1000;
            for (int r = 0; r < size; r++) want = PAFT_MAX(want, (long)((i * 7 + (size_t)r * 13) % 101) - 50);
            bad += f[i] != (float)want;
        }
        CHECK(bad == 0, "%s: f32 max of %zu: %zu wrong", label, n, bad);
        free(h16);
        free(f);
    }

    /* f64: not exact (1e-3 steps), so a tolerance of a few ulps of the sum */
    const size_t n = N_SMALL;
    double *d = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) d[i] = (double)(i + 1) * 1e-3 * (rank + 1) + 0.1 * rank;
    double *d64 = upload(d, n * sizeof(double));
    device_allreduce_sum_f64(dc, d64, n);
    download(d, d64, n * sizeof(double));
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double want = 0;
        for (int r = 0; r < size; r++) want += (double)(i + 1) * 1e-3 * (r + 1) + 0.1 * r;
        bad += fabs(d[i] - want) > 1e-14 * fabs(want) + 1e-300;
    }
    CHECK(bad == 0, "%s: f64 sum: %zu wrong", label, bad);
    free(d);
}

/* Two ranks, sums that need rounding back to bf16 (ties included): rank 0 holds 1 + k/128 (exact
 * in bf16), rank 1 holds j/512; 1 + k/128 + j/512 needs 9 bits, so j = 1 rounds down, j = 2 is a
 * tie (to even), j = 3 rounds up. The MPI path sums in fp32 and rounds once; NCCL adds the two
 * values in fp32 and rounds once as well (one addition per element with two ranks). */
static void check_bf16_rounding(DeviceComm *dc, int rank, const char *label) {
    const size_t n = 128 * 4;
    float *f = malloc(n * sizeof(float)), *want = malloc(n * sizeof(float));
    uint16_t *h16 = malloc(n * sizeof(uint16_t)), *w16 = malloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) {
        const float a = 1.0f + (float)(i / 4) / 128.0f, b = (float)(i % 4) / 512.0f;
        f[i] = rank == 0 ? a : b;
        want[i] = a + b; /* exact in fp32 */
    }
    float_to_bf16_host(h16, f, n);
    float_to_bf16_host(w16, want, n);
    void *d16 = upload(h16, n * sizeof(uint16_t));
    device_allreduce_sum_bf16(dc, d16, n);
    download(h16, d16, n * sizeof(uint16_t));
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += h16[i] != w16[i];
    CHECK(bad == 0, "%s: bf16 sums rounded to nearest even: %zu of %zu wrong", label, bad, n);
    free(f);
    free(want);
    free(h16);
    free(w16);
}

/* Would round-robin placement (local rank % device count) put two ranks of world on one GPU?
 * Derived from the placement rule, independently of device_comm's gathered bus ids. */
static int placement_shares_gpus(int *local_rank) {
    MPI_Comm node;
    int world_rank, local_size;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, local_rank);
    MPI_Comm_size(node, &local_size);
    MPI_Comm_free(&node);
    int shares = local_size > cuda_device_count();
    MPI_Allreduce(MPI_IN_PLACE, &shares, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return shares;
}

static int gpu_skipped(int rank, const char *mode) {
    if (cuda_device_count() > 0) return 0;
    if (rank == 0)
        printf("test_device_comm %s: SKIPPED: no CUDA device on this machine (run it on the GPU "
               "machine)\n", mode);
    return 1;
}

static int run_gpu(void) {
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (gpu_skipped(rank, "--gpu")) return 77;

    int local_rank = 0;
    const int shares = placement_shares_gpus(&local_rank);
    const int device = cuda_select_device(MPI_COMM_WORLD);
    int current = -1;
    CHECK_CUDA(cudaGetDevice(&current));
    CHECK(device == local_rank % cuda_device_count() && current == device,
          "rank %d: device %d (current %d), expected local rank %d %% %d", rank, device, current,
          local_rank, cuda_device_count());

#ifdef PAFT_HAVE_NCCL
    const int have_nccl = 1;
#else
    const int have_nccl = 0;
#endif
    const char *auto_name = size == 1 ? "none" : have_nccl && !shares ? "nccl" : "mpi";
    static const DeviceCommKind kinds[2] = {DEVICE_COMM_AUTO, DEVICE_COMM_MPI};
    for (int k = 0; k < 2; k++) {
        DeviceComm *dc = device_comm_create(MPI_COMM_WORLD, kinds[k]);
        const char *want = k == 0 ? auto_name : size == 1 ? "none" : "mpi";
        CHECK(strcmp(device_comm_name(dc), want) == 0, "%s requested on %d ranks: got %s, expected %s",
              k == 0 ? "auto" : "mpi", size, device_comm_name(dc), want);
        char label[64];
        snprintf(label, sizeof label, "%s (%d ranks)", device_comm_name(dc), size);
        check_sums(dc, rank, size, label);
        if (size == 2) check_bf16_rounding(dc, rank, label);
        device_comm_free(dc);
    }

    /* A group of one (MPI_COMM_SELF): nothing to set up, every reduction leaves the data alone. */
    DeviceComm *self = device_comm_create(MPI_COMM_SELF, DEVICE_COMM_AUTO);
    CHECK(strcmp(device_comm_name(self), "none") == 0, "MPI_COMM_SELF: got %s", device_comm_name(self));
    check_sums(self, 0, 1, "MPI_COMM_SELF"); /* rank 0 of its group of one */
    device_comm_free(self);

    char name[64];
    snprintf(name, sizeof name, "test_device_comm --gpu rank %d/%d", rank, size);
    return test_finish(name);
}

/* NCCL forced on ranks that share a GPU must end the job with the reason (ctest matches it). */
static int run_nccl_shared(void) {
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (gpu_skipped(rank, "--nccl-shared")) return 77;
    int local_rank = 0;
    if (size < 2 || !placement_shares_gpus(&local_rank)) {
        if (rank == 0)
            printf("test_device_comm --nccl-shared: SKIPPED: the %d ranks do not share a GPU here\n",
                   size);
        return 77;
    }
    cuda_select_device(MPI_COMM_WORLD);
    DeviceComm *dc = device_comm_create(MPI_COMM_WORLD, DEVICE_COMM_NCCL);
    printf("FAIL: NCCL requested on ranks sharing a GPU, and device_comm_create gave '%s'\n",
           device_comm_name(dc));
    device_comm_free(dc);
    return 1;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "--gpu") == 0 || strcmp(mode, "--nccl-shared") == 0) {
        MPI_Init(&argc, &argv);
        int status = strcmp(mode, "--gpu") == 0 ? run_gpu() : run_nccl_shared();
        /* every rank reached here with the same status, or a failed check printed its line */
        MPI_Allreduce(MPI_IN_PLACE, &status, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        MPI_Finalize();
        return status;
    }
    test_device_ids_shared();
    test_kind_names();
    test_bf16_rounding_cases();
    test_bf16_round_trip_all();
    test_bf16_nearest_random();
    return test_finish("test_device_comm");
}
