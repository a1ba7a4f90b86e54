/*
 * merge_cuda.cu - the merge's passes on a GPU (src/merge/merge_kernels.h): the same bits as the
 * CPU passes of src/merge/merge_kernels_cpu.c.
 *
 * Why the bits agree:
 *   - the element formulas are merge_elementwise.h, shared with the CPU, and this file is compiled
 *     with -fmad=false (CMakeLists.txt), so no a * b + c becomes a fused multiply-add; fp32
 *     division and double addition are IEEE round-to-nearest on the GPU as on the CPU;
 *   - counts and histograms are integers (atomics in any order give the same sum);
 *   - a per-row partial sum is one thread adding its row's columns in order, with the CPU's
 *     function (merge_row_*_sums);
 *   - the LoRA delta is one thread per element adding the r products in k order, as
 *     loss/lora_delta.c does.
 * The merge is a small part of a PAFT job (a few passes over the weights), so simple, exact
 * kernels are the right trade: one thread per element (or row), block-level counters in shared
 * memory, one atomic per block into the result.
 */
#define MERGE_HD __host__ __device__
/* device_comm.h includes mpi.h: its C API only (no C++ bindings to link) */
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include "cuda_check.h"
#include "device_comm.h"
#include "merge/merge_kernels.h"
#include "ops_cuda.h"

static const int merge_block = 256;
/* the grid-stride kernels that count: enough blocks to fill an H100 several times over */
static const unsigned merge_max_blocks = 4096;
/* magnitude_drop_equal: elements per thread of its sequential walk */
static const size_t drop_chunk = 1024;
/* the kernels with one thread per row (or chunk of 1024 elements): at most the grid's x limit of
 * blocks, 2^31 x 256 rows, which no tensor reaches; the element kernels stride over the grid */
static const unsigned max_grid = 0x7FFFFFFFu;

struct MergeKernelState {
    unsigned long long *counters; /* device [2]: the counts a pass returns */
    unsigned long long *hist;     /* device [2048]: one digit's histogram */
    double *partials;             /* device: per-row partial sums */
    size_t partials_cap;
    long long *chunk_counts; /* device: magnitude_drop_equal's per-chunk counts, then starts */
    size_t chunk_cap;
};

static unsigned blocks_for(size_t n, unsigned most) {
    size_t b = (n + merge_block - 1) / merge_block;
    if (b < 1) b = 1;
    return (unsigned)(b < most ? b : most);
}

/* Add this thread's two counts into the block's, then the block's into out[0], out[1]: one global
 * atomic per block. Every thread of the block must call it. */
__device__ static void block_add_counts(unsigned long long a, unsigned long long b,
                                        unsigned long long *out) {
    __shared__ unsigned long long block_counts[2];
    if (threadIdx.x == 0) block_counts[0] = block_counts[1] = 0;
    __syncthreads();
    if (a) atomicAdd(&block_counts[0], a);
    if (b) atomicAdd(&block_counts[1], b);
    __syncthreads();
    if (threadIdx.x == 0) {
        if (block_counts[0]) atomicAdd(&out[0], block_counts[0]);
        if (block_counts[1]) atomicAdd(&out[1], block_counts[1]);
    }
}

static void counters_zero(MergeKernelState *s) {
    CHECK_CUDA(cudaMemset(s->counters, 0, 2 * sizeof(unsigned long long)));
}
static void counters_read(MergeKernelState *s, int64_t *a, int64_t *b) {
    unsigned long long host[2];
    CHECK_CUDA(cudaMemcpy(host, s->counters, sizeof host, cudaMemcpyDeviceToHost));
    if (a) *a = (int64_t)host[0];
    if (b) *b = (int64_t)host[1];
}

static double *partials_buffer(MergeKernelState *s, size_t n) {
    if (n > s->partials_cap) {
        CHECK_CUDA(cudaFree(s->partials));
        CHECK_CUDA(cudaMalloc(&s->partials, n * sizeof(double)));
        s->partials_cap = n;
    }
    return s->partials;
}

/* ---- memory -------------------------------------------------------------------------------- */

static MergeKernelState *cuda_merge_create(void) {
    cuda_select_local_device();
    MergeKernelState *s = (MergeKernelState *)paft_calloc(1, sizeof *s);
    CHECK_CUDA(cudaMalloc(&s->counters, 2 * sizeof(unsigned long long)));
    CHECK_CUDA(cudaMalloc(&s->hist, 2048 * sizeof(unsigned long long)));
    return s;
}

static void cuda_merge_destroy(MergeKernelState *s) {
    if (!s) return;
    CHECK_CUDA(cudaFree(s->counters));
    CHECK_CUDA(cudaFree(s->hist));
    CHECK_CUDA(cudaFree(s->partials));
    CHECK_CUDA(cudaFree(s->chunk_counts));
    free(s);
}

static void *cuda_merge_alloc(MergeKernelState *s, size_t bytes) {
    (void)s;
    void *p = NULL;
    cudaError_t rc = cudaMalloc(&p, bytes ? bytes : 1);
    if (rc != cudaSuccess)
        PAFT_FATAL("merge on the GPU: cudaMalloc of %.3f GiB failed (%s); merge with more ranks "
                   "(each holds 1/N of a tensor's rows) or with model.device = cpu",
                   (double)bytes / (1 << 30), cudaGetErrorString(rc));
    return p;
}
static void cuda_merge_release(MergeKernelState *s, void *p) {
    (void)s;
    CHECK_CUDA(cudaFree(p));
}
static void cuda_merge_to_device(MergeKernelState *s, void *dst, const void *src, size_t bytes) {
    (void)s;
    if (bytes) CHECK_CUDA(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
static void cuda_merge_to_host(MergeKernelState *s, void *dst, const void *src, size_t bytes) {
    (void)s;
    if (bytes) CHECK_CUDA(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
static void cuda_merge_copy(MergeKernelState *s, void *dst, const void *src, size_t bytes) {
    (void)s;
    if (bytes && dst != src) CHECK_CUDA(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}

static void cuda_merge_zero(MergeKernelState *s, float *x, size_t n) {
    (void)s;
    if (n) CHECK_CUDA(cudaMemset(x, 0, n * sizeof *x));
}

/* ---- the LoRA delta ------------------------------------------------------------------------ */

__global__ static void lora_delta_kernel(float *delta, const float *A, const float *B,
                                         int64_t rows, int64_t cols, int r, float scale) {
    const size_t n = (size_t)(rows * cols);
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t o = i / (size_t)cols, c = i % (size_t)cols;
        float acc = 0.0f;
        for (int k = 0; k < r; k++) acc += B[o * (size_t)r + (size_t)k] * A[(size_t)k * cols + c];
        delta[i] = acc * scale;
    }
}

static void cuda_merge_lora_delta(MergeKernelState *s, float *delta, const float *A,
                                  const float *B, int64_t rows, int64_t cols, int r, float scale) {
    (void)s;
    size_t n = (size_t)(rows * cols);
    if (n == 0) return;
    lora_delta_kernel<<<blocks_for(n, merge_max_blocks), merge_block>>>(delta, A, B, rows, cols, r,
                                                                  scale);
    CHECK_LAUNCH();
}

/* ---- counting ---------------------------------------------------------------------------------- */

__global__ static void count_small_kernel(const float *x, size_t n, unsigned long long *out) {
    unsigned long long small = 0, nonfinite = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        nonfinite += merge_magnitude_bits(x[i]) >= 0x7F800000u;
        small += fabsf(x[i]) < MERGE_SPARSITY_EPS;
    }
    block_add_counts(small, nonfinite, out);
}

static void cuda_merge_count_small(MergeKernelState *s, const float *x, size_t n, int64_t *small,
                                   int64_t *nonfinite) {
    counters_zero(s);
    if (n) {
        count_small_kernel<<<blocks_for(n, merge_max_blocks), merge_block>>>(x, n, s->counters);
        CHECK_LAUNCH();
    }
    counters_read(s, small, nonfinite);
}

/* ---- the magnitude top-k ----------------------------------------------------------------------- */

__global__ static void magnitude_histogram_kernel(const float *x, size_t n, uint32_t prefix,
                                                  uint32_t prefix_mask, int shift, int bins,
                                                  unsigned long long *hist) {
    __shared__ unsigned int block_hist[2048];
    for (int d = threadIdx.x; d < bins; d += blockDim.x) block_hist[d] = 0;
    __syncthreads();
    const uint32_t digit_mask = (uint32_t)bins - 1;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t b = merge_magnitude_bits(x[i]);
        if ((b & prefix_mask) == prefix) atomicAdd(&block_hist[(b >> shift) & digit_mask], 1u);
    }
    __syncthreads();
    for (int d = threadIdx.x; d < bins; d += blockDim.x)
        if (block_hist[d]) atomicAdd(&hist[d], (unsigned long long)block_hist[d]);
}

static void cuda_merge_magnitude_histogram(MergeKernelState *s, const float *x, size_t n,
                                           uint32_t prefix, uint32_t prefix_mask, int shift,
                                           int bins, int64_t *hist) {
    if (bins > 2048) PAFT_FATAL("merge on the GPU: a histogram of %d bins (at most 2048)", bins);
    CHECK_CUDA(cudaMemset(s->hist, 0, (size_t)bins * sizeof(unsigned long long)));
    if (n) {
        /* a block's count of one bin must fit its unsigned int: at most 2^32 - 1 elements */
        unsigned blocks = blocks_for(n, merge_max_blocks);
        magnitude_histogram_kernel<<<blocks, merge_block>>>(x, n, prefix, prefix_mask, shift, bins,
                                                            s->hist);
        CHECK_LAUNCH();
    }
    static_assert(sizeof(unsigned long long) == sizeof(int64_t), "counts travel as 64 bits");
    CHECK_CUDA(cudaMemcpy(hist, s->hist, (size_t)bins * sizeof(int64_t), cudaMemcpyDeviceToHost));
}

__global__ static void magnitude_keep_kernel(const float *delta, size_t n, uint32_t threshold,
                                             float *kept, unsigned long long *out) {
    unsigned long long count = 0, equal = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t b = merge_magnitude_bits(delta[i]);
        kept[i] = b >= threshold ? delta[i] : 0.0f;
        count += b >= threshold;
        equal += b == threshold;
    }
    block_add_counts(count, equal, out);
}

static void cuda_merge_magnitude_keep(MergeKernelState *s, const float *delta, size_t n,
                                      uint32_t threshold, float *kept, int64_t *kept_count,
                                      int64_t *equal_count) {
    counters_zero(s);
    if (n) {
        magnitude_keep_kernel<<<blocks_for(n, merge_max_blocks), merge_block>>>(
            delta, n, threshold, kept, s->counters);
        CHECK_LAUNCH();
    }
    counters_read(s, kept_count, equal_count);
}

/* The equal elements' order is the index order: each thread walks one chunk of drop_chunk
 * elements in order, twice. First it counts its chunk's equal elements; the host turns the
 * counts into each chunk's first equal index (an exclusive scan); then each thread zeroes the
 * equal elements of its chunk whose index is keep_equal or more. Rare (a cut inside a run of
 * equal magnitudes), so simple. */
__global__ static void count_equal_kernel(const float *delta, size_t n, uint32_t threshold,
                                          long long *chunk_counts, size_t chunks) {
    const size_t chunk = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (chunk >= chunks) return;
    const size_t end = (chunk + 1) * drop_chunk < n ? (chunk + 1) * drop_chunk : n;
    long long equal = 0;
    for (size_t i = chunk * drop_chunk; i < end; i++)
        equal += merge_magnitude_bits(delta[i]) == threshold;
    chunk_counts[chunk] = equal;
}

__global__ static void drop_equal_kernel(const float *delta, size_t n, uint32_t threshold,
                                         long long keep_equal, const long long *chunk_starts,
                                         size_t chunks, float *kept, unsigned long long *out) {
    const size_t chunk = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long dropped = 0;
    if (chunk < chunks) {
        const size_t end = (chunk + 1) * drop_chunk < n ? (chunk + 1) * drop_chunk : n;
        long long seen = chunk_starts[chunk];
        for (size_t i = chunk * drop_chunk; i < end; i++) {
            if (merge_magnitude_bits(delta[i]) != threshold) continue;
            if (seen++ >= keep_equal) {
                kept[i] = 0.0f;
                dropped++;
            }
        }
    }
    block_add_counts(dropped, 0, out);
}

static int64_t cuda_merge_magnitude_drop_equal(MergeKernelState *s, const float *delta, size_t n,
                                               uint32_t threshold, int64_t keep_equal,
                                               float *kept) {
    if (n == 0) return 0;
    const size_t chunks = (n + drop_chunk - 1) / drop_chunk;
    if (chunks > s->chunk_cap) {
        CHECK_CUDA(cudaFree(s->chunk_counts));
        CHECK_CUDA(cudaMalloc(&s->chunk_counts, chunks * sizeof(long long)));
        s->chunk_cap = chunks;
    }
    const unsigned blocks = blocks_for(chunks, max_grid);
    count_equal_kernel<<<blocks, merge_block>>>(delta, n, threshold, s->chunk_counts, chunks);
    CHECK_LAUNCH();
    long long *starts = (long long *)paft_malloc(chunks * sizeof *starts);
    CHECK_CUDA(cudaMemcpy(starts, s->chunk_counts, chunks * sizeof *starts,
                          cudaMemcpyDeviceToHost));
    long long before = 0;
    for (size_t c = 0; c < chunks; c++) {
        long long here = starts[c];
        starts[c] = before;
        before += here;
    }
    CHECK_CUDA(cudaMemcpy(s->chunk_counts, starts, chunks * sizeof *starts,
                          cudaMemcpyHostToDevice));
    free(starts);
    counters_zero(s);
    drop_equal_kernel<<<blocks, merge_block>>>(delta, n, threshold, (long long)keep_equal,
                                               s->chunk_counts, chunks, kept, s->counters);
    CHECK_LAUNCH();
    int64_t dropped = 0;
    counters_read(s, &dropped, NULL);
    return dropped;
}

/* ---- DARE -------------------------------------------------------------------------------------- */

__global__ static void dare_keep_kernel(const float *delta, size_t n, uint64_t key,
                                        uint64_t first_index, uint64_t keep_below, float divisor,
                                        float *kept, unsigned long long *out) {
    unsigned long long count = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        int keep = merge_dare_bits(key, first_index + i) < keep_below;
        kept[i] = keep ? delta[i] / divisor : 0.0f;
        count += keep;
    }
    block_add_counts(count, 0, out);
}

static int64_t cuda_merge_dare_keep(MergeKernelState *s, const float *delta, size_t n,
                                    uint64_t key, uint64_t first_index, uint64_t keep_below,
                                    float divisor, float *kept) {
    counters_zero(s);
    if (n) {
        dare_keep_kernel<<<blocks_for(n, merge_max_blocks), merge_block>>>(
            delta, n, key, first_index, keep_below, divisor, kept, s->counters);
        CHECK_LAUNCH();
    }
    int64_t count = 0;
    counters_read(s, &count, NULL);
    return count;
}

/* ---- per-row sums: one thread per row, the columns in order (the CPU's order) ----------------- */

__global__ static void row_abs_sums_kernel(const float *a, const float *b, int64_t rows,
                                           int64_t cols, double *partials) {
    const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r < rows) merge_row_abs_sums(a + r * cols, b + r * cols, cols, partials + 2 * r);
}

static void cuda_merge_row_abs_sums(MergeKernelState *s, const float *a, const float *b,
                                    int64_t rows, int64_t cols, double *partials) {
    if (rows == 0) return;
    double *dev = partials_buffer(s, (size_t)rows * 2);
    row_abs_sums_kernel<<<blocks_for((size_t)rows, max_grid), merge_block>>>(a, b, rows, cols,
                                                                               dev);
    CHECK_LAUNCH();
    CHECK_CUDA(cudaMemcpy(partials, dev, (size_t)rows * 2 * sizeof(double),
                          cudaMemcpyDeviceToHost));
}

__global__ static void slerp_row_sums_kernel(const float *base, const float *d0, const float *d1,
                                             int64_t rows, int64_t cols, double *partials) {
    const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r < rows)
        merge_row_slerp_sums(base + r * cols, d0 + r * cols, d1 + r * cols, cols, partials + 3 * r);
}

static void cuda_merge_slerp_row_sums(MergeKernelState *s, const float *base, const float *d0,
                                      const float *d1, int64_t rows, int64_t cols,
                                      double *partials) {
    if (rows == 0) return;
    double *dev = partials_buffer(s, (size_t)rows * 3);
    slerp_row_sums_kernel<<<blocks_for((size_t)rows, max_grid), merge_block>>>(
        base, d0, d1, rows, cols, dev);
    CHECK_LAUNCH();
    CHECK_CUDA(cudaMemcpy(partials, dev, (size_t)rows * 3 * sizeof(double),
                          cudaMemcpyDeviceToHost));
}

/* ---- scaling and mixing ------------------------------------------------------------------------ */

__global__ static void scale_kernel(float *x, size_t n, float factor) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] *= factor;
}

static void cuda_merge_scale(MergeKernelState *s, float *x, size_t n, float factor) {
    (void)s;
    if (n == 0) return;
    scale_kernel<<<blocks_for(n, merge_max_blocks), merge_block>>>(x, n, factor);
    CHECK_LAUNCH();
}

/* The method's kind is the same for every element: the switch does not diverge. */
__global__ static void mix_kernel(MergeMix mix, const float *base, const float *k0,
                                  const float *k1, float *out, size_t n,
                                  unsigned long long *small_out) {
    unsigned long long small = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float b = base[i];
        float theta;
        switch (mix.kind) {
        case MERGE_MIX_WEIGHTED: theta = merge_mix_weighted(&mix, b, k0[i], k1[i]); break;
        case MERGE_MIX_CONSENSUS: theta = merge_mix_consensus(&mix, b, k0[i], k1[i]); break;
        case MERGE_MIX_LINEAR: theta = merge_mix_linear(&mix, b, k0[i], k1[i]); break;
        default: theta = merge_mix_slerp(&mix, b, k0[i], k1[i]); break;
        }
        small += (unsigned long long)merge_small_delta(theta, b);
        out[i] = theta;
    }
    block_add_counts(small, 0, small_out);
}

static int64_t cuda_merge_mix(MergeKernelState *s, const MergeMix *mix, const float *base,
                              const float *k0, const float *k1, float *out, size_t n) {
    counters_zero(s);
    if (n) {
        mix_kernel<<<blocks_for(n, merge_max_blocks), merge_block>>>(*mix, base, k0, k1, out, n,
                                                                      s->counters);
        CHECK_LAUNCH();
    }
    int64_t small = 0;
    counters_read(s, &small, NULL);
    return small;
}

extern "C" const MergeKernels merge_kernels_cuda = {
    /* .name = */ "cuda",
    /* .available = */ 1,
    /* .host_memory = */ 0,
    /* .device_count = */ cuda_device_count,
    /* .create = */ cuda_merge_create,
    /* .destroy = */ cuda_merge_destroy,
    /* .alloc = */ cuda_merge_alloc,
    /* .release = */ cuda_merge_release,
    /* .to_device = */ cuda_merge_to_device,
    /* .to_host = */ cuda_merge_to_host,
    /* .copy = */ cuda_merge_copy,
    /* .zero = */ cuda_merge_zero,
    /* .lora_delta = */ cuda_merge_lora_delta,
    /* .count_small = */ cuda_merge_count_small,
    /* .magnitude_histogram = */ cuda_merge_magnitude_histogram,
    /* .magnitude_keep = */ cuda_merge_magnitude_keep,
    /* .magnitude_drop_equal = */ cuda_merge_magnitude_drop_equal,
    /* .dare_keep = */ cuda_merge_dare_keep,
    /* .row_abs_sums = */ cuda_merge_row_abs_sums,
    /* .scale = */ cuda_merge_scale,
    /* .slerp_row_sums = */ cuda_merge_slerp_row_sums,
    /* .mix = */ cuda_merge_mix,
};
