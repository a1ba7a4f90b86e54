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
 * split in three bf16 each, hi + mid + lo (each the rounded rest of the one before: 24
 * significant bits, fp32's), and every product runs on tensor cores (mma_tiles.cuh), delta as
 * the six partial products down to 2^-24 of it (hi hi, hi mid, mid hi, hi lo, lo hi, mid mid).
 * Two bf16 (16 bits) were not enough: a product could be off by 2.6e-5 of itself, and about one
 * delta in a million near zero took the other sign than on the CPU (found in review):
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
static size_t l1_db_floats(int out, int in, int r) { return l1_strips(in) * out * r; }
static size_t l1_da_floats(int out, int in, int r) { return l1_tiles(out) * r * in; }
static size_t l1_float_part(int out, int in, int r) { /* even: the doubles 8-byte aligned */
    return (l1_db_floats(out, in, r) + l1_da_floats(out, in, r) + 1) / 2 * 2;
}
static size_t l1_scratch_bytes(int out, int in, int r) {
    return l1_float_part(out, in, r) * sizeof(float) + l1_tiles(out) * l1_strips(in) * sizeof(double);
}
static L1Parts l1_parts(void *scratch, int out, int in, int r) {
    L1Parts p;
    p.db_part = (float *)scratch;
    p.da_part = p.db_part + l1_db_floats(out, in, r);
    p.abs_part = (double *)(p.db_part + l1_float_part(out, in, r));
    return p;
}

extern "C" size_t l1_penalty_fused_scratch_bytes(int out, int in, int r) {
    return l1_scratch_bytes(out, in, r);
}

extern "C" int l1_penalty_fused_supported(int out, int in, int r, size_t scratch_bytes) {
    if (out <= 0 || in <= 0 || r <= 0 || r > l1_max_rank) return 0;
    return l1_scratch_bytes(out, in, r) <= scratch_bytes;
}

/* x = hi + mid + lo, three bf16, each the rest of x rounded; an infinite x (or one bf16 rounds to
 * infinity) is all in hi, as the CPU's product would be infinite too */
__device__ static inline void split_bf16(float x, floatX *parts, int stride) {
    const floatX hi = __float2bfloat16(x);
    const float rest = x - __bfloat162float(hi);
    const floatX mid = __float2bfloat16(isfinite(rest) ? rest : 0.0f);
    const float rest2 = isfinite(rest) ? rest - __bfloat162float(mid) : 0.0f;
    parts[0] = hi;
    parts[stride] = mid;
    parts[2 * stride] = __float2bfloat16(rest2);
}

/* The A operand (rows r .., columns col ..) of each of the three parts of a split tile, the
 * parts `part` elements apart. */
__device__ static inline void load_a3(uint32_t (&a)[3][4], const floatX *tile, size_t part, int ld,
                                      int r, int col) {
#pragma unroll
    for (int i = 0; i < 3; i++) load_a(a[i], tile + i * part, ld, r, col);
}

/* c += (a_hi + a_mid + a_lo)(b_hi + b_mid + b_lo) down to the products of order 2^-16 (six of the
 * nine), smallest first, for one 16 x 16 x 8 block; b[i] = the two registers of part i */
__device__ static inline void mma_split3(float (&c)[4], const uint32_t (&a)[3][4],
                                         const uint32_t (&b)[3][2]) {
    mma16816(c, a[1], b[1][0], b[1][1]); /* mid mid */
    mma16816(c, a[2], b[0][0], b[0][1]); /* lo hi */
    mma16816(c, a[0], b[2][0], b[2][1]); /* hi lo */
    mma16816(c, a[1], b[0][0], b[0][1]); /* mid hi */
    mma16816(c, a[0], b[1][0], b[1][1]); /* hi mid */
    mma16816(c, a[0], b[0][0], b[0][1]); /* hi hi */
}

/* acc (16 x 8 rank_tiles8) += s (a sign operand, step kk of 16) times the split tile's parts,
 * the smallest first (a sign is exact in bf16, so each part's product is as exact as the part).
 * RanksAreRows: the parts are [ranks][64] (A: B[k][n] = part[n][16 kk + k]); else [64][ranks]
 * (B: B[k][n] = part[16 kk + k][n]). */
template <bool RanksAreRows, int rank_tiles8>
__device__ static inline void mma_sign_times_split(float (&acc)[rank_tiles8][4],
                                                   const uint32_t (&s)[4], const floatX *parts,
                                                   size_t part, int ld, int kk) {
#pragma unroll
    for (int n = 0; n < rank_tiles8; n += 2)
#pragma unroll
        for (int i = 2; i >= 0; i--) {
            uint32_t b[4];
            if (RanksAreRows) load_b_rows(b, parts + i * part, ld, 8 * n, 16 * kk);
            else load_b_cols(b, parts + i * part, ld, 16 * kk, 8 * n);
            mma16816(acc[n], s, b[0], b[1]);
            mma16816(acc[n + 1], s, b[2], b[3]);
        }
}

/* One block per strip of l1_strip tiles along a row of tiles (grid: strips, out tiles), the
 * tiles one after another; RP = the rank padded to a multiple of 16. */
template <int RP>
__global__ static void __launch_bounds__(l1_threads)
    l1_tile_kernel(L1Parts part, const float *A, const float *B, int out, int in, int r,
                   float scale) {
    constexpr int LDR = RP + 8, LDT = l1_tile + 8, rank_tiles8 = RP / 8;
    constexpr size_t B_part = (size_t)l1_tile * LDR, A_part = (size_t)RP * LDT;
    const int strip = blockIdx.x, to = blockIdx.y, o0 = to * l1_tile;
    const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, c4 = threadIdx.x % 4;

    extern __shared__ float l1_smem[];
    floatX *Bs = (floatX *)l1_smem; /* [3 parts][64][LDR]: rows o0 .., ranks; zeros outside */
    floatX *As = Bs + 3 * B_part;   /* [3 parts][RP][LDT]: ranks, the tile's columns; zeros outside */
    floatX *S = As + 3 * A_part;    /* [64][LDT]: sign(delta) */
    double *warp_sums = (double *)(S + l1_tile * LDT); /* [4] */

    for (int e = threadIdx.x; e < l1_tile * RP; e += l1_threads) {
        const int o = e / RP, k = e % RP;
        split_bf16(o0 + o < out && k < r ? B[(size_t)(o0 + o) * r + k] : 0.0f, Bs + o * LDR + k,
                   (int)B_part);
    }
    double abs_sum = 0;
    float db[rank_tiles8][4]; /* dB share of rows 16 w .., summed over the strip's columns */
    zero_tiles(db);

    /* Two barriers per tile: A and S are rewritten only after the barrier that follows their
     * last reads (the dB share's and the dA share's) */
    for (int t = 0; t < l1_strip; t++) {
        const int i0 = (strip * l1_strip + t) * l1_tile;
        if (i0 >= in) break;
        for (int e = threadIdx.x; e < RP * l1_tile; e += l1_threads) {
            const int k = e / l1_tile, i = e % l1_tile;
            split_bf16(k < r && i0 + i < in ? A[(size_t)k * in + i0 + i] : 0.0f, As + k * LDT + i,
                       (int)A_part);
        }
        __syncthreads(); /* A is in (and, the first time, B) */

        /* delta, rows 16 w .. 16 w + 15 of the tile, all 64 columns */
        float d[l1_tile / 8][4];
        zero_tiles(d);
#pragma unroll
        for (int kk = 0; kk < RP / 16; kk++) {
            uint32_t a[3][4];
            load_a3(a, Bs, B_part, LDR, 16 * warp, 16 * kk);
#pragma unroll
            for (int n = 0; n < l1_tile / 8; n += 2) {
                uint32_t b[3][4];
#pragma unroll
                for (int i = 0; i < 3; i++) load_b_cols(b[i], As + i * A_part, LDT, 16 * kk, 8 * n);
                const uint32_t left[3][2] = {{b[0][0], b[0][1]}, {b[1][0], b[1][1]}, {b[2][0], b[2][1]}};
                const uint32_t right[3][2] = {{b[0][2], b[0][3]}, {b[1][2], b[1][3]}, {b[2][2], b[2][3]}};
                mma_split3(d[n], a, left);
                mma_split3(d[n + 1], a, right);
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
         * columns) times A^T (B[k = i][n = rank] = A[rank][i]: A's rows are B's columns), each
         * part of A, the smallest first (sign is exact in bf16) */
#pragma unroll
        for (int kk = 0; kk < l1_tile / 16; kk++) {
            uint32_t sa[4];
            a_from_c(sa, d[2 * kk], d[2 * kk + 1]);
            mma_sign_times_split<true>(db, sa, As, A_part, LDT, kk);
        }
        __syncthreads(); /* S is complete; every warp is done with A */

        /* dA share of the tile's columns, transposed: warp w takes columns 16 w .. as the rows
         * of sign(delta)^T (read transposed from S) times B (B[k = o][n = rank], as stored) */
        float da[rank_tiles8][4];
        zero_tiles(da);
#pragma unroll
        for (int kk = 0; kk < l1_tile / 16; kk++) {
            uint32_t sa[4];
            load_a_trans(sa, S, LDT, 16 * warp, 16 * kk);
            mma_sign_times_split<false>(da, sa, Bs, B_part, LDR, kk);
        }
        /* dA's share [r][in]: the columns i are the C tiles' rows */
        store_c_tiles(part.da_part + (size_t)to * r * in, in, true, i0 + 16 * warp, in, 0, r, da);
    }

    store_c_tiles(part.db_part + (size_t)strip * out * r, r, false, o0 + 16 * warp, out, 0, r, db);
    for (int offset = 16; offset > 0; offset /= 2)
        abs_sum += __shfl_xor_sync(full_warp, abs_sum, offset);
    if (threadIdx.x % 32 == 0) warp_sums[warp] = abs_sum;
    __syncthreads();
    if (threadIdx.x == 0)
        part.abs_part[(size_t)to * gridDim.x + strip] =
            (warp_sums[0] + warp_sums[1]) + (warp_sums[2] + warp_sums[3]);
}

/* *total += lambda * the blocks' sums of |delta|: one block of l1_sum_threads, thread j adding
 * blocks j, j + l1_sum_threads, ... in order, then a fixed tree. Deterministic. */
static constexpr int l1_sum_threads = 256;
__global__ static void l1_sum_kernel(double *total, const double *abs_part, size_t n,
                                     double lambda) {
    __shared__ double sums[l1_sum_threads];
    double sum = 0;
    for (size_t t = threadIdx.x; t < n; t += l1_sum_threads) sum += abs_part[t];
    sums[threadIdx.x] = sum;
    __syncthreads();
    for (int half = l1_sum_threads / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) *total += lambda * sums[0];
}

template <int RP>
static void l1_launch(L1Parts part, const float *A, const float *B, int out, int in, int r,
                      float scale) {
    const size_t smem = (3 * (size_t)l1_tile * (RP + 8) + 3 * (size_t)RP * (l1_tile + 8) +
                         (size_t)l1_tile * (l1_tile + 8)) * sizeof(floatX) + 4 * sizeof(double);
    if (smem > 48 * 1024) /* past the default: opt in (RP 48 and 64) */
        cuda_allow_shared_memory(l1_tile_kernel<RP>, smem, "l1_penalty_fused_add_cuda");
    const dim3 grid((unsigned)l1_strips(in), (unsigned)l1_tiles(out));
    l1_tile_kernel<RP><<<grid, l1_threads, smem>>>(part, A, B, out, in, r, scale);
    CHECK_LAUNCH();
}

extern "C" void l1_penalty_fused_add_cuda(float *dA, float *dB, const float *A, const float *B,
                                          int out, int in, int r, float scale, float lambda,
                                          void *scratch, size_t scratch_bytes,
                                          double *device_total) {
    if (!l1_penalty_fused_supported(out, in, r, scratch_bytes))
        paft_fatal(__FILE__, __LINE__,
                   "l1_penalty_fused_add_cuda: out %d in %d r %d in %zu bytes of scratch not "
                   "supported", out, in, r, scratch_bytes);
    const L1Parts part = l1_parts(scratch, out, in, r);
    if (r <= 16) l1_launch<16>(part, A, B, out, in, r, scale);
    else if (r <= 32) l1_launch<32>(part, A, B, out, in, r, scale);
    else if (r <= 48) l1_launch<48>(part, A, B, out, in, r, scale);
    else l1_launch<64>(part, A, B, out, in, r, scale);
    /* dB += c * the strips' partials in order, dA += c * the out tiles' (mma_tiles.cuh) */
    const size_t n_db = (size_t)out * r, n_da = (size_t)r * in;
    if (dB) {
        add_partial_sums_kernel<<<(unsigned)((n_db + 255) / 256), 256>>>(dB, part.db_part, l1_strips(in), n_db, lambda * scale);
        CHECK_LAUNCH();
    }
    if (dA) {
        add_partial_sums_kernel<<<(unsigned)((n_da + 255) / 256), 256>>>(dA, part.da_part, l1_tiles(out), n_da, lambda * scale);
        CHECK_LAUNCH();
    }
    l1_sum_kernel<<<1, l1_sum_threads>>>(device_total, part.abs_part, l1_tiles(out) * l1_strips(in), (double)lambda);
    CHECK_LAUNCH();
}
