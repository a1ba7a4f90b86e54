/*
 * l1_fused_cuda.cu - PAFT's L1 term on one adapted module (src/loss/lora_delta.h, l1_penalty)
 * without writing delta = s B A out.
 *
 * Unfused (ops_cuda.cu, for ranks above 64), delta [out][in] is formed in fp32 by a GEMM, read
 * for sum |delta|, rewritten as sign(delta), and read twice more for dB += c sign(delta) A^T and
 * dA += c B^T sign(delta) (c = lambda s): 24 bytes of traffic per element of every adapted weight
 * matrix, each step. On Mistral-7B with every projection adapted that is ≈ 170 GB a step, tens
 * of ms at the memory's bandwidth, for a few FLOPs per element.
 *
 * Here a block of 4 warps takes 64 x 64 tiles of delta, four along a row. B's 64 rows and each
 * tile's 64 columns of A (rank padded to a multiple of 16, at most 64) come into shared memory
 * split as hi + lo, two bf16
 * each (hi = x rounded, lo = the rest rounded: 16 significant bits in all), and every product
 * runs on tensor cores (mma_tiles.cuh) as hi hi + hi lo + lo hi (dropping lo lo, 2^-16 of it):
 *   delta:  warp w, rows 16 w .., all 64 columns, in fp32 accumulators; |delta| summed in
 *           double; the accumulators become sign(delta) in place (-1, 0, 1: exact in bf16) and
 *           are also stored to shared memory;
 *   dB:     sign(delta) (straight from the accumulators as the A operand) times A^T: the
 *           block's share of its 64 rows of dB, summed over its tiles' columns;
 *   dA:     sign(delta)^T (read transposed from shared memory) times B: the share of its 64
 *           columns of dA, summed over its 64 rows.
 * The shares go out as fp32 partials; a second kernel adds them over the tiles in order into dB
 * and dA, and a third the blocks' |delta| sums. Traffic: the partials, 5 r / 64 bytes per
 * element of delta (1.25 at r = 16, against 24 unfused), written and read once. Deterministic: fixed tiles, fixed
 * orders, no atomics.
 */
#include <math.h>
#include <stdint.h>

#include "cuda_check.h"
#include "l1_fused.h"
#include "mma_tiles.cuh"

static constexpr int l1_tile = 64;   /* delta tile: 64 rows (out) x 64 columns (in) */
static constexpr int l1_strip = 4;   /* tiles a block takes along a row: dB's share summed over them */
static constexpr int l1_threads = 128;
static constexpr int l1_max_rank = 64;

/* the scratch: dB partials [strips][out][r], dA partials [out tiles][r][in], then each block's
 * sum |delta| [out tiles][strips] (double). A strip is l1_strip tiles along the columns, so the
 * dB partials are a quarter of the dA partials: out x in x 5 r / 256 floats in all, which for
 * r up to 48 fits in the caller's delta scratch of out x in floats. */
struct L1Parts {
    float *db_part, *da_part;
    double *abs_part;
};
__host__ __device__ static inline size_t l1_tiles(int n) { return (size_t)(n + l1_tile - 1) / l1_tile; }
__host__ __device__ static inline size_t l1_strips(int in) {
    return (l1_tiles(in) + l1_strip - 1) / l1_strip;
}
static L1Parts l1_parts(void *scratch, int out, int in, int r, size_t *bytes) {
    const size_t db = l1_strips(in) * out * r, da = l1_tiles(out) * r * in;
    const size_t floats = (db + da + 1) / 2 * 2; /* the doubles 8-byte aligned */
    L1Parts p;
    p.db_part = (float *)scratch;
    p.da_part = p.db_part + db;
    p.abs_part = (double *)(p.db_part + floats);
    *bytes = floats * sizeof(float) + l1_tiles(out) * l1_strips(in) * sizeof(double);
    return p;
}

extern "C" int l1_penalty_fused_supported(int out, int in, int r, size_t scratch_bytes) {
    if (out <= 0 || in <= 0 || r <= 0 || r > l1_max_rank) return 0;
    size_t bytes = 0;
    l1_parts(nullptr, out, in, r, &bytes);
    return bytes <= scratch_bytes;
}

/* x = hi + lo, both bf16 */
__device__ static inline void split_bf16(float x, floatX *hi, floatX *lo) {
    *hi = __float2bfloat16(x);
    *lo = __float2bfloat16(x - __bfloat162float(*hi));
}

/* c += (a_hi + a_lo)(b_hi + b_lo) without a_lo b_lo, for one 16 x 16 x 8 block */
__device__ static inline void mma_split(float (&c)[4], const uint32_t (&a_hi)[4],
                                        const uint32_t (&a_lo)[4], uint32_t b_hi0, uint32_t b_hi1,
                                        uint32_t b_lo0, uint32_t b_lo1) {
    mma16816(c, a_lo, b_hi0, b_hi1);
    mma16816(c, a_hi, b_lo0, b_lo1);
    mma16816(c, a_hi, b_hi0, b_hi1);
}

/* One block per strip of l1_strip tiles along a row of tiles (grid: strips, out tiles), the
 * tiles one after another; RP = the rank padded to a multiple of 16. */
template <int RP>
__global__ static void __launch_bounds__(l1_threads)
    l1_tile_kernel(L1Parts part, const float *A, const float *B, int out, int in, int r,
                   float scale) {
    constexpr int LDR = RP + 8, LDT = l1_tile + 8, rank_tiles8 = RP / 8;
    const int strip = blockIdx.x, to = blockIdx.y, o0 = to * l1_tile;
    const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, c4 = threadIdx.x % 4;

    extern __shared__ float l1_smem[];
    floatX *B_hi = (floatX *)l1_smem;      /* [64][LDR]: rows o0 .., ranks; zeros outside */
    floatX *B_lo = B_hi + l1_tile * LDR;
    floatX *A_hi = B_lo + l1_tile * LDR;   /* [RP][LDT]: ranks, the tile's columns; zeros outside */
    floatX *A_lo = A_hi + RP * LDT;
    floatX *S = A_lo + RP * LDT;           /* [64][LDT]: sign(delta) */
    double *warp_sums = (double *)(S + l1_tile * LDT); /* [4] */

    for (int e = threadIdx.x; e < l1_tile * RP; e += l1_threads) {
        const int o = e / RP, k = e % RP;
        split_bf16(o0 + o < out && k < r ? B[(size_t)(o0 + o) * r + k] : 0.0f, &B_hi[o * LDR + k],
                   &B_lo[o * LDR + k]);
    }
    double abs_sum = 0;
    float db[rank_tiles8][4]; /* dB share of rows 16 w .., summed over the strip's columns */
    zero_tiles(db);

    for (int t = 0; t < l1_strip; t++) {
        const int i0 = (strip * l1_strip + t) * l1_tile;
        if (i0 >= in) break;
        __syncthreads(); /* every warp is done with the last tile's A and S */
        for (int e = threadIdx.x; e < RP * l1_tile; e += l1_threads) {
            const int k = e / l1_tile, i = e % l1_tile;
            split_bf16(k < r && i0 + i < in ? A[(size_t)k * in + i0 + i] : 0.0f, &A_hi[k * LDT + i],
                       &A_lo[k * LDT + i]);
        }
        __syncthreads();

        /* delta, rows 16 w .. 16 w + 15 of the tile, all 64 columns */
        float d[l1_tile / 8][4];
        zero_tiles(d);
#pragma unroll
        for (int kk = 0; kk < RP / 16; kk++) {
            uint32_t a_hi[4], a_lo[4];
            load_a(a_hi, B_hi, LDR, 16 * warp, 16 * kk);
            load_a(a_lo, B_lo, LDR, 16 * warp, 16 * kk);
#pragma unroll
            for (int n = 0; n < l1_tile / 8; n += 2) {
                uint32_t b_hi[4], b_lo[4];
                load_b_cols(b_hi, A_hi, LDT, 16 * kk, 8 * n);
                load_b_cols(b_lo, A_lo, LDT, 16 * kk, 8 * n);
                mma_split(d[n], a_hi, a_lo, b_hi[0], b_hi[1], b_lo[0], b_lo[1]);
                mma_split(d[n + 1], a_hi, a_lo, b_hi[2], b_hi[3], b_lo[2], b_lo[3]);
            }
        }
        /* |delta| (0 outside the matrix, where B or A was padded with zeros), then sign in place,
         * and a copy of it in S for the dA share */
#pragma unroll
        for (int n = 0; n < l1_tile / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float x = scale * d[n][e];
                abs_sum += fabs((double)x);
                d[n][e] = x > 0.0f ? 1.0f : x < 0.0f ? -1.0f : 0.0f;
            }
#pragma unroll
        for (int n = 0; n < l1_tile / 8; n++) {
            floatX *row = S + (16 * warp + g) * LDT + 8 * n + 2 * c4;
            store2(row, pack2f(d[n][0], d[n][1]));
            store2(row + 8 * LDT, pack2f(d[n][2], d[n][3]));
        }

        /* dB share += sign(delta) (straight from the accumulators: rows 16 w .., k = the tile's
         * columns) times A^T (B[k = i][n = rank] = A[rank][i]: A's rows are B's columns) */
#pragma unroll
        for (int kk = 0; kk < l1_tile / 16; kk++) {
            uint32_t sa[4];
            a_from_c(sa, d[2 * kk], d[2 * kk + 1]);
#pragma unroll
            for (int n = 0; n < rank_tiles8; n += 2) {
                uint32_t b_hi[4], b_lo[4];
                load_b_rows(b_hi, A_hi, LDT, 8 * n, 16 * kk);
                load_b_rows(b_lo, A_lo, LDT, 8 * n, 16 * kk);
                mma16816(db[n], sa, b_lo[0], b_lo[1]);
                mma16816(db[n + 1], sa, b_lo[2], b_lo[3]);
                mma16816(db[n], sa, b_hi[0], b_hi[1]);
                mma16816(db[n + 1], sa, b_hi[2], b_hi[3]);
            }
        }
        __syncthreads(); /* S is complete */

        /* dA share of the tile's columns, transposed: warp w takes columns 16 w .. as the rows
         * of sign(delta)^T (read transposed from S) times B (B[k = o][n = rank], as stored) */
        float da[rank_tiles8][4];
        zero_tiles(da);
#pragma unroll
        for (int kk = 0; kk < l1_tile / 16; kk++) {
            uint32_t sa[4];
            load_a_trans(sa, S, LDT, 16 * warp, 16 * kk);
#pragma unroll
            for (int n = 0; n < rank_tiles8; n += 2) {
                uint32_t b_hi[4], b_lo[4];
                load_b_cols(b_hi, B_hi, LDR, 16 * kk, 8 * n);
                load_b_cols(b_lo, B_lo, LDR, 16 * kk, 8 * n);
                mma16816(da[n], sa, b_lo[0], b_lo[1]);
                mma16816(da[n + 1], sa, b_lo[2], b_lo[3]);
                mma16816(da[n], sa, b_hi[0], b_hi[1]);
                mma16816(da[n + 1], sa, b_hi[2], b_hi[3]);
            }
        }
#pragma unroll
        for (int n = 0; n < rank_tiles8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = i0 + 16 * warp + g + 8 * (e / 2), k = 8 * n + 2 * c4 + e % 2;
                if (i < in && k < r) part.da_part[((size_t)to * r + k) * in + i] = da[n][e];
            }
    }

#pragma unroll
    for (int n = 0; n < rank_tiles8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int o = o0 + 16 * warp + g + 8 * (e / 2), k = 8 * n + 2 * c4 + e % 2;
            if (o < out && k < r) part.db_part[((size_t)strip * out + o) * r + k] = db[n][e];
        }
    for (int offset = 16; offset > 0; offset /= 2)
        abs_sum += __shfl_xor_sync(full_warp, abs_sum, offset);
    if (threadIdx.x % 32 == 0) warp_sums[warp] = abs_sum;
    __syncthreads();
    if (threadIdx.x == 0)
        part.abs_part[(size_t)to * gridDim.x + strip] =
            (warp_sums[0] + warp_sums[1]) + (warp_sums[2] + warp_sums[3]);
}

/* dB[o][k] += coef * the strips' partials in order; then dA[k][i] += coef * the out tiles'. One
 * thread per element of dB, then of dA. */
__global__ static void l1_gradients_kernel(float *dA, float *dB, L1Parts part, int out, int in,
                                           int r, float coef) {
    const size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    const size_t n_db = dB ? (size_t)out * r : 0, n_da = dA ? (size_t)r * in : 0;
    if (e < n_db) {
        float sum = 0.0f;
        for (size_t t = 0; t < l1_strips(in); t++) sum += part.db_part[t * ((size_t)out * r) + e];
        dB[e] += coef * sum;
    } else if (e < n_db + n_da) {
        const size_t j = e - n_db;
        float sum = 0.0f;
        for (size_t t = 0; t < l1_tiles(out); t++) sum += part.da_part[t * ((size_t)r * in) + j];
        dA[j] += coef * sum;
    }
}

/* The blocks' sums of |delta| in order, in one thread (a block per 16,384 elements). */
__global__ static void l1_sum_kernel(double *result, const double *abs_part, size_t n) {
    double sum = 0;
    for (size_t t = 0; t < n; t++) sum += abs_part[t];
    *result = sum;
}

template <int RP>
static void l1_launch(L1Parts part, const float *A, const float *B, int out, int in, int r,
                      float scale) {
    const size_t smem = (2 * (size_t)l1_tile * (RP + 8) + 2 * (size_t)RP * (l1_tile + 8) +
                         (size_t)l1_tile * (l1_tile + 8)) * sizeof(floatX) + 4 * sizeof(double);
    cuda_allow_shared_memory(l1_tile_kernel<RP>, smem, "l1_penalty_fused_cuda");
    const dim3 grid((unsigned)l1_strips(in), (unsigned)l1_tiles(out));
    l1_tile_kernel<RP><<<grid, l1_threads, smem>>>(part, A, B, out, in, r, scale);
    CHECK_LAUNCH();
}

extern "C" double l1_penalty_fused_cuda(float *dA, float *dB, const float *A, const float *B,
                                        int out, int in, int r, float scale, float lambda,
                                        void *scratch, size_t scratch_bytes,
                                        double *device_double) {
    if (!l1_penalty_fused_supported(out, in, r, scratch_bytes))
        paft_fatal(__FILE__, __LINE__,
                   "l1_penalty_fused_cuda: out %d in %d r %d in %zu bytes of scratch not supported",
                   out, in, r, scratch_bytes);
    size_t bytes = 0;
    const L1Parts part = l1_parts(scratch, out, in, r, &bytes);
    if (r <= 16) l1_launch<16>(part, A, B, out, in, r, scale);
    else if (r <= 32) l1_launch<32>(part, A, B, out, in, r, scale);
    else if (r <= 48) l1_launch<48>(part, A, B, out, in, r, scale);
    else l1_launch<64>(part, A, B, out, in, r, scale);
    const size_t n = (dB ? (size_t)out * r : 0) + (dA ? (size_t)r * in : 0);
    if (n > 0) {
        l1_gradients_kernel<<<(unsigned)((n + 255) / 256), 256>>>(dA, dB, part, out, in, r, lambda * scale);
        CHECK_LAUNCH();
    }
    l1_sum_kernel<<<1, 1>>>(device_double, part.abs_part, l1_tiles(out) * l1_strips(in));
    CHECK_LAUNCH();
    double abs_sum = 0;
    CHECK_CUDA(cudaMemcpy(&abs_sum, device_double, sizeof abs_sum, cudaMemcpyDeviceToHost));
    return (double)lambda * abs_sum;
}
