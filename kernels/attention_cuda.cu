/*
 * attention_cuda.cu - fused, memory-efficient causal grouped-query attention (FlashAttention-2
 * style) for the CUDA backend: the semantics of attention_forward_cuda / attention_backward_cuda
 * (ops_cuda.h) without the T x T probabilities. The forward keeps a running max and sum per query
 * row (online softmax) while it walks over the key tiles, and saves only lse = max + log(sum) per
 * row; the backward recomputes each probability tile as exp(scaled score - lse).
 *
 * A first fused version, written to be checked by reading: plain fp32 arithmetic on CUDA cores
 * (no tensor cores yet), every tile staged in shared memory as fp32 (bf16 converted on load).
 *
 * Layouts (as ops.h): q, out, dq, dout [B][T][Hq][D]; k, v, dk, dv [B][T][Hkv][D]; lse and the
 * backward's row terms Delta [B][Hq][T] (fp32). Query head h reads KV head h / (Hq / Hkv).
 *
 * Every kernel runs 256 threads, seen as a 16 x 16 grid: ty = threadIdx.x / 16 (0..15) and
 * tx = threadIdx.x % 16. A tile has TILE rows (TILE = 16, 32 or 64); for the TILE x TILE score
 * tiles a thread owns the R x R entries (row ty + 16 i, column tx + 16 j), R = TILE / 16, and for
 * the TILE x D accumulators it owns rows ty + 16 i and the columns d with d % 16 == tx. Every
 * shared-memory hand-over between these two ownerships goes through a __syncthreads().
 */
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <mma.h>
#include <type_traits>

#include "attention_mma.h"
#include "cuda_check.h"
#include "mma_tiles.cuh"
#include "ops_cuda.h"

/* ---- shared helpers ------------------------------------------------------------------------- */

static constexpr int fa_threads = 256; /* a 16 x 16 grid of threads, see above */
static constexpr int fa_side = 16;

/* The head dimension padded up to a multiple of 64: the accumulate loops walk it in chunks of 64
 * (16 threads x 4 columns) without bounds checks; the padding columns are loaded as zeros, so
 * they add nothing to a dot product and are never written back. */
__host__ __device__ static inline int fa_padded_dim(int D) { return (D + 63) / 64 * 64; }
/* Row strides (in floats) of the shared tiles: one more than the width, so that 16 threads reading
 * down a column (row stride odd) hit 16 different banks. */
__host__ __device__ static inline int fa_ld(int D) { return fa_padded_dim(D) + 1; }
__host__ __device__ static inline int fa_pld(int tile) { return tile + 1; }

__device__ static inline float bf16_to_float(floatX x) { return __bfloat162float(x); }

/* dst[r][d] (row stride ld, fp32) = src row (row0 + r), for r < rows and d < Dp; zeros for rows
 * at or past T and for the padding columns d >= D. src points at (b, t = 0, head, 0) of a
 * [B][T][H][D] tensor, so row t starts at src + t * row_stride with row_stride = H * D. */
__device__ static void fa_load_rows(float *dst, const floatX *src, int row0, int rows, int T,
                                   size_t row_stride, int D, int ld) {
    const int Dp = fa_padded_dim(D);
    for (int e = threadIdx.x; e < rows * Dp; e += blockDim.x) {
        const int r = e / Dp, d = e % Dp;
        const int t = row0 + r;
        dst[r * ld + d] = (t < T && d < D) ? bf16_to_float(src[(size_t)t * row_stride + d]) : 0.0f;
    }
}

/* dst[i] = 0 for i < n (shared memory, the block's threads together). */
__device__ static void fa_zero(float *dst, int n) {
    for (int e = threadIdx.x; e < n; e += blockDim.x) dst[e] = 0.0f;
}

/* The thread's R x R entries of A B^T: acc[i][j] = sum_d A[ty + 16 i][d] * Bm[tx + 16 j][d], over
 * the padded width Dp (A and Bm: TILE rows of stride ld). */
template <int R>
__device__ static void fa_tile_dots(float (&acc)[R][R], const float *A, const float *Bm, int ld,
                                    int Dp) {
    const int ty = threadIdx.x / fa_side, tx = threadIdx.x % fa_side;
#pragma unroll
    for (int i = 0; i < R; i++)
#pragma unroll
        for (int j = 0; j < R; j++) acc[i][j] = 0.0f;
    for (int d = 0; d < Dp; d++) {
        float a[R], bv[R];
#pragma unroll
        for (int i = 0; i < R; i++) a[i] = A[(ty + fa_side * i) * ld + d];
#pragma unroll
        for (int j = 0; j < R; j++) bv[j] = Bm[(tx + fa_side * j) * ld + d];
#pragma unroll
        for (int i = 0; i < R; i++)
#pragma unroll
            for (int j = 0; j < R; j++) acc[i][j] += a[i] * bv[j];
    }
}

/* out[row][d] += alpha * sum_{k < K} M(row, k) * X[k][d] for the thread's own rows
 * (row = ty + 16 i, i < R) and columns (d % 16 == tx, d < Dp), where M(row, k) is
 * M[row * m_row + k * m_col]: (m_row, m_col) = (pld, 1) reads M as stored, (1, pld) reads its
 * transpose. out and X have row stride ld. Only the thread's own out entries are touched. */
template <int R>
__device__ static void fa_accumulate(float *out, const float *M, int m_row, int m_col,
                                     const float *X, int K, int ld, int Dp, float alpha) {
    const int ty = threadIdx.x / fa_side, tx = threadIdx.x % fa_side;
    for (int d0 = 0; d0 < Dp; d0 += 4 * fa_side) {
        float acc[R][4];
#pragma unroll
        for (int i = 0; i < R; i++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[i][c] = 0.0f;
        for (int k = 0; k < K; k++) {
            float m[R], x[4];
#pragma unroll
            for (int i = 0; i < R; i++) m[i] = M[(ty + fa_side * i) * m_row + k * m_col];
#pragma unroll
            for (int c = 0; c < 4; c++) x[c] = X[k * ld + d0 + tx + fa_side * c];
#pragma unroll
            for (int i = 0; i < R; i++)
#pragma unroll
                for (int c = 0; c < 4; c++) acc[i][c] += m[i] * x[c];
        }
#pragma unroll
        for (int i = 0; i < R; i++)
#pragma unroll
            for (int c = 0; c < 4; c++)
                out[(ty + fa_side * i) * ld + d0 + tx + fa_side * c] += alpha * acc[i][c];
    }
}

/* ---- forward ----------------------------------------------------------------------------------
 * One block per (query tile, query head h, batch b). The query tile (rows q0 .. q0 + TILE - 1)
 * stays in shared memory; the key tiles k0 = 0, TILE, ... up to the one holding the tile's last
 * query row (the diagonal tile: causal) pass through, K then V in the same buffer. Per key tile:
 *   S = Q K^T scale, -inf where key > query row (or key >= T);
 *   per row (one thread each): m_new = max(m, max_c S), corr = exp(m - m_new),
 *     P = exp(S - m_new), l = l corr + sum_c P;
 *   O = O corr + P V  (fp32, in shared memory).
 * At the end out = O / l (bf16) and lse = m + log(l). */

/* Shared memory of the forward, in floats, in the order the kernel carves it. */
__host__ __device__ static inline size_t fa_forward_smem_floats(int tile, int D) {
    return 3 * (size_t)tile * fa_ld(D)    /* Qs, KVs, Os */
           + (size_t)tile * fa_pld(tile) /* Ps */
           + 3 * (size_t)tile;            /* row_max, row_sum, row_corr */
}

template <int TILE>
__global__ static void __launch_bounds__(fa_threads)
    attention_forward_fused_kernel(floatX *out, float *lse, const floatX *q, const floatX *k,
                                   const floatX *v, int T, int Hq, int Hkv, int D, float scale) {
    constexpr int R = TILE / fa_side;
    const int q_tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int kv_head = h / (Hq / Hkv);
    const int q0 = q_tile * TILE;
    const int q_last = min(q0 + TILE, T) - 1; /* the tile's last valid query row */
    const int Dp = fa_padded_dim(D), ld = fa_ld(D), pld = fa_pld(TILE);
    const int ty = threadIdx.x / fa_side, tx = threadIdx.x % fa_side;

    extern __shared__ float fa_smem[];
    float *Qs = fa_smem;            /* [TILE][ld] */
    float *KVs = Qs + TILE * ld;    /* [TILE][ld]: the K tile, then the V tile */
    float *Os = KVs + TILE * ld;    /* [TILE][ld]: the unnormalised output rows */
    float *Ps = Os + TILE * ld;     /* [TILE][pld]: scores, then probabilities (times exp(-m)) */
    float *row_max = Ps + TILE * pld; /* [TILE] m */
    float *row_sum = row_max + TILE;  /* [TILE] l */
    float *row_corr = row_sum + TILE; /* [TILE] exp(m_old - m_new) of the current key tile */

    /* (b, t = 0, head) of each tensor; rows of q are Hq * D apart, rows of k and v Hkv * D */
    const floatX *q_bh = q + ((size_t)b * T * Hq + h) * D;
    const floatX *k_bh = k + ((size_t)b * T * Hkv + kv_head) * D;
    const floatX *v_bh = v + ((size_t)b * T * Hkv + kv_head) * D;

    fa_load_rows(Qs, q_bh, q0, TILE, T, (size_t)Hq * D, D, ld);
    fa_zero(Os, TILE * ld);
    for (int r = threadIdx.x; r < TILE; r += blockDim.x) {
        row_max[r] = -INFINITY;
        row_sum[r] = 0.0f;
    }

    for (int k0 = 0; k0 <= q_last; k0 += TILE) {
        __syncthreads(); /* Qs, Os, stats ready (first pass); the last pass's KVs, Ps readers done */
        fa_load_rows(KVs, k_bh, k0, TILE, T, (size_t)Hkv * D, D, ld);
        __syncthreads();

        float s[R][R];
        fa_tile_dots<R>(s, Qs, KVs, ld, Dp);
#pragma unroll
        for (int i = 0; i < R; i++)
#pragma unroll
            for (int j = 0; j < R; j++) {
                const int r = ty + fa_side * i, c = tx + fa_side * j;
                const int t = q0 + r, key = k0 + c;
                Ps[r * pld + c] = (key <= t && key < T) ? s[i][j] * scale : -INFINITY;
            }
        __syncthreads(); /* Ps complete, and nobody reads K any more: V may replace it */

        fa_load_rows(KVs, v_bh, k0, TILE, T, (size_t)Hkv * D, D, ld);
        /* the online softmax, one thread per row (touches Ps and the row stats, not KVs) */
        for (int r = threadIdx.x; r < TILE; r += blockDim.x) {
            float *p = Ps + r * pld;
            const float m_old = row_max[r];
            float m_new = m_old;
            for (int c = 0; c < TILE; c++) m_new = fmaxf(m_new, p[c]);
            float corr = 1.0f, sum = 0.0f;
            if (m_new == -INFINITY) { /* nothing visible yet (cannot happen for a valid row) */
                for (int c = 0; c < TILE; c++) p[c] = 0.0f;
            } else {
                corr = expf(m_old - m_new); /* exp(-inf) = 0 on the first tile */
                for (int c = 0; c < TILE; c++) {
                    p[c] = expf(p[c] - m_new); /* masked: exp(-inf) = 0 */
                    sum += p[c];
                }
            }
            row_max[r] = m_new;
            row_sum[r] = row_sum[r] * corr + sum;
            row_corr[r] = corr;
        }
        __syncthreads(); /* V, P and row_corr ready */

        /* O = O corr + P V, each thread on its own rows and columns. Keys past the tile's last
         * valid query row are masked for every row (P = 0): the loop stops before them, which
         * skips the masked part of the diagonal tile (and the keys past T). */
#pragma unroll
        for (int i = 0; i < R; i++) {
            const int r = ty + fa_side * i;
            for (int d = tx; d < Dp; d += fa_side) Os[r * ld + d] *= row_corr[r];
        }
        const int key_count = min(TILE, q_last - k0 + 1);
        fa_accumulate<R>(Os, Ps, pld, 1, KVs, key_count, ld, Dp, 1.0f);
    }
    __syncthreads(); /* every Os row complete */

    floatX *out_bh = out + ((size_t)b * T * Hq + h) * D;
    for (int e = threadIdx.x; e < TILE * D; e += blockDim.x) {
        const int r = e / D, d = e % D;
        const int t = q0 + r;
        if (t < T) out_bh[(size_t)t * Hq * D + d] = __float2bfloat16(Os[r * ld + d] / row_sum[r]);
    }
    for (int r = threadIdx.x; r < TILE; r += blockDim.x) {
        const int t = q0 + r;
        if (t < T) lse[((size_t)b * Hq + h) * T + t] = row_max[r] + logf(row_sum[r]);
    }
}

/* ---- forward on tensor cores ------------------------------------------------------------------
 * The same forward (the same blocks, key tiles, masking, online softmax and outputs) with the two
 * tile products on bf16 tensor cores (nvcuda::wmma 16 x 16 x 16, fp32 accumulators), for D a
 * multiple of 16. Q and the K / V tile are staged in shared memory as bf16 (exact: the inputs
 * are bf16); the scores come out of the MMA into an fp32 tile, the softmax runs on it as above
 * and writes P rounded to bf16 for the P V product (the row sums l are of the fp32 P, as in
 * FlashAttention-2). O stays in shared memory in fp32: each key tile, the rows are rescaled by
 * exp(m_old - m_new), then each warp loads its 16 x 16 blocks of O as accumulators, adds P V and
 * stores them back. Only fill / load / mma / store are used, never a fragment's elements, whose
 * layout across the lanes is unspecified. The 8 warps take the 16 x 16 output blocks in turn.
 * Selected at D = 64 / 128 only by PAFT_ATTENTION_WMMA=1: the MMA kernels (attention_mma.cu) are
 * about 5x faster there on an H100 (docs/BENCHMARKS.md). */

static constexpr int fa_warps = fa_threads / 32;

/* Row strides, in elements: bf16 tiles D + 8 and fp32 tiles width + 4 (WMMA wants multiples of
 * 16 bytes; the extra 16 bytes shift consecutive rows across the banks). */
__host__ __device__ static inline int fa_tc_ldh(int D) { return D + 8; }
__host__ __device__ static inline int fa_tc_ldo(int D) { return D + 4; }
__host__ __device__ static inline int fa_tc_sld(int tile) { return tile + 4; }
__host__ __device__ static inline int fa_tc_pld(int tile) { return tile + 8; }

/* Shared memory of the tensor-core forward, in bytes, in the order the kernel carves it: every
 * part a multiple of 32 bytes (WMMA pointers are 256-bit aligned) as TILE is a multiple of 16, and
 * the total rounded up to 128 bytes. */
__host__ __device__ static inline size_t fa_tc_forward_smem_bytes(int tile, int D) {
    const size_t bytes = 2 * (size_t)tile * fa_tc_ldh(D) * 2  /* Qh, KVh (bf16) */
                         + (size_t)tile * fa_tc_ldo(D) * 4    /* Os (fp32) */
                         + (size_t)tile * fa_tc_sld(tile) * 4 /* Ss (fp32) */
                         + (size_t)tile * fa_tc_pld(tile) * 2 /* Ph (bf16) */
                         + 3 * (size_t)tile * 4;              /* row_max, row_sum, row_corr */
    return (bytes + 127) / 128 * 128;
}

/* dst[r][d] (bf16, row stride ldh) = src row (row0 + r) for r < rows, d < D; zeros for rows at or
 * past T. As fa_load_rows, without padding columns (D is a multiple of 16 here). */
__device__ static void fa_tc_load_rows(floatX *dst, const floatX *src, int row0, int rows, int T,
                                       size_t row_stride, int D, int ldh) {
    for (int e = threadIdx.x; e < rows * D; e += blockDim.x) {
        const int r = e / D, d = e % D;
        const int t = row0 + r;
        dst[r * ldh + d] = t < T ? src[(size_t)t * row_stride + d] : __float2bfloat16(0.0f);
    }
}

template <int TILE>
__global__ static void __launch_bounds__(fa_threads)
    attention_forward_tc_kernel(floatX *out, float *lse, const floatX *q, const floatX *k,
                                const floatX *v, int T, int Hq, int Hkv, int D, float scale) {
    using namespace nvcuda;
    constexpr int blocks = TILE / 16; /* 16 x 16 blocks per tile side */
    const int q_tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int kv_head = h / (Hq / Hkv);
    const int q0 = q_tile * TILE;
    const int q_last = min(q0 + TILE, T) - 1;
    const int ldh = fa_tc_ldh(D), ldo = fa_tc_ldo(D);
    constexpr int sld = TILE + 4, pld = TILE + 8; /* fa_tc_sld, fa_tc_pld */
    const int warp = threadIdx.x / 32;

    extern __shared__ float fa_smem[];
    floatX *Qh = (floatX *)fa_smem;             /* [TILE][ldh] */
    floatX *KVh = Qh + TILE * ldh;              /* [TILE][ldh]: the K tile, then the V tile */
    float *Os = (float *)(KVh + TILE * ldh);    /* [TILE][ldo]: the unnormalised output rows */
    float *Ss = Os + TILE * ldo;                /* [TILE][sld]: the scores Q K^T (unscaled) */
    floatX *Ph = (floatX *)(Ss + TILE * sld);   /* [TILE][pld]: P (times exp(-m)), bf16 */
    float *row_max = (float *)(Ph + TILE * pld); /* [TILE] m */
    float *row_sum = row_max + TILE;            /* [TILE] l */
    float *row_corr = row_sum + TILE;           /* [TILE] exp(m_old - m_new) */

    const floatX *q_bh = q + ((size_t)b * T * Hq + h) * D;
    const floatX *k_bh = k + ((size_t)b * T * Hkv + kv_head) * D;
    const floatX *v_bh = v + ((size_t)b * T * Hkv + kv_head) * D;

    fa_tc_load_rows(Qh, q_bh, q0, TILE, T, (size_t)Hq * D, D, ldh);
    fa_zero(Os, TILE * ldo);
    for (int r = threadIdx.x; r < TILE; r += blockDim.x) {
        row_max[r] = -INFINITY;
        row_sum[r] = 0.0f;
    }

    wmma::fragment<wmma::matrix_a, 16, 16, 16, floatX, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, floatX, wmma::col_major> fk; /* K^T */
    wmma::fragment<wmma::matrix_b, 16, 16, 16, floatX, wmma::row_major> fv;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> facc;

    for (int k0 = 0; k0 <= q_last; k0 += TILE) {
        __syncthreads(); /* Qh, Os, stats ready (first pass); the last pass's KVh, Ph readers done */
        fa_tc_load_rows(KVh, k_bh, k0, TILE, T, (size_t)Hkv * D, D, ldh);
        __syncthreads();

        /* S = Q K^T: block (i, j) = sum over d of Q[i][d-block] K[j][d-block]^T; K read as a
         * column-major B gives K^T */
        for (int blk = warp; blk < blocks * blocks; blk += fa_warps) {
            const int i = blk / blocks, j = blk % blocks;
            wmma::fill_fragment(facc, 0.0f);
            for (int d0 = 0; d0 < D; d0 += 16) {
                wmma::load_matrix_sync(fa, Qh + 16 * i * ldh + d0, ldh);
                wmma::load_matrix_sync(fk, KVh + 16 * j * ldh + d0, ldh);
                wmma::mma_sync(facc, fa, fk, facc);
            }
            wmma::store_matrix_sync(Ss + 16 * i * sld + 16 * j, facc, sld, wmma::mem_row_major);
        }
        __syncthreads(); /* Ss complete, and nobody reads K any more: V may replace it */

        fa_tc_load_rows(KVh, v_bh, k0, TILE, T, (size_t)Hkv * D, D, ldh);
        /* the online softmax, one thread per row: scale, mask, P = exp(S - m_new) into Ph */
        for (int r = threadIdx.x; r < TILE; r += blockDim.x) {
            const float *srow = Ss + r * sld;
            floatX *prow = Ph + r * pld;
            const int t = q0 + r;
            const float m_old = row_max[r];
            float m_new = m_old;
            for (int c = 0; c < TILE; c++) {
                const int key = k0 + c;
                if (key <= t && key < T) m_new = fmaxf(m_new, srow[c] * scale);
            }
            float corr = 1.0f, sum = 0.0f;
            if (m_new == -INFINITY) { /* nothing visible yet (cannot happen for a valid row) */
                for (int c = 0; c < TILE; c++) prow[c] = __float2bfloat16(0.0f);
            } else {
                corr = expf(m_old - m_new); /* exp(-inf) = 0 on the first tile */
                for (int c = 0; c < TILE; c++) {
                    const int key = k0 + c;
                    const float p = (key <= t && key < T) ? expf(srow[c] * scale - m_new) : 0.0f;
                    prow[c] = __float2bfloat16(p);
                    sum += p;
                }
            }
            row_max[r] = m_new;
            row_sum[r] = row_sum[r] * corr + sum;
            row_corr[r] = corr;
        }
        __syncthreads(); /* V, P and row_corr ready */

        for (int e = threadIdx.x; e < TILE * D; e += blockDim.x) {
            const int r = e / D, d = e % D;
            Os[r * ldo + d] *= row_corr[r];
        }
        __syncthreads(); /* O rescaled */

        /* O += P V over the keys up to the tile's last valid query row, in 16-key steps (the keys
         * past it in the last step have P = 0 and finite V: zeros past T) */
        const int key_steps = (min(TILE, q_last - k0 + 1) + 15) / 16;
        for (int blk = warp; blk < blocks * (D / 16); blk += fa_warps) {
            const int i = blk / (D / 16), n = blk % (D / 16);
            float *o_block = Os + 16 * i * ldo + 16 * n;
            wmma::load_matrix_sync(facc, o_block, ldo, wmma::mem_row_major);
            for (int kk = 0; kk < key_steps; kk++) {
                wmma::load_matrix_sync(fa, Ph + 16 * i * pld + 16 * kk, pld);
                wmma::load_matrix_sync(fv, KVh + 16 * kk * ldh + 16 * n, ldh);
                wmma::mma_sync(facc, fa, fv, facc);
            }
            wmma::store_matrix_sync(o_block, facc, ldo, wmma::mem_row_major);
        }
    }
    __syncthreads(); /* every Os row complete */

    floatX *out_bh = out + ((size_t)b * T * Hq + h) * D;
    for (int e = threadIdx.x; e < TILE * D; e += blockDim.x) {
        const int r = e / D, d = e % D;
        const int t = q0 + r;
        if (t < T) out_bh[(size_t)t * Hq * D + d] = __float2bfloat16(Os[r * ldo + d] / row_sum[r]);
    }
    for (int r = threadIdx.x; r < TILE; r += blockDim.x) {
        const int t = q0 + r;
        if (t < T) lse[((size_t)b * Hq + h) * T + t] = row_max[r] + logf(row_sum[r]);
    }
}

/* The row statistics of query rows q0 .. q0 + TILE - 1 of one (batch, head): lse and Delta, 0
 * past T (those rows have no probabilities). stat_offset: (b, h, t = 0) in [B][Hq][T]. */
__device__ static void fa_load_row_stats(float *row_lse, float *row_delta, const float *lse,
                                         const float *delta, size_t stat_offset, int q0, int tile,
                                         int T) {
    for (int r = threadIdx.x; r < tile; r += blockDim.x) {
        const int t = q0 + r;
        row_lse[r] = t < T ? lse[stat_offset + t] : 0.0f;
        row_delta[r] = t < T ? delta[stat_offset + t] : 0.0f;
    }
}

/* The backward's recomputed probability of query row t and key `key`: exp(s scale - lse), 0 where
 * the causal mask hides the key (or the row is past T; key <= t < T then implies key < T). */
__device__ static inline float fa_probability(float s, float scale, float row_lse, int t, int key,
                                              int T) {
    return t < T && key <= t ? expf(s * scale - row_lse) : 0.0f;
}

/* dst row t += scale * acc row (t - row0), rounded once to bf16, for the rows row0 .. row0 +
 * tile - 1 below T: how each backward kernel adds its fp32 accumulators into the gradients (one
 * thread per element, each written once). dst points at (b, t = 0, head); rows are row_stride
 * apart. */
__device__ static void fa_add_rows_into(floatX *dst, const float *acc, int acc_ld, int row0,
                                        int tile, int T, size_t row_stride, int D, float scale) {
    for (int e = threadIdx.x; e < tile * D; e += blockDim.x) {
        const int r = e / D, d = e % D;
        const int t = row0 + r;
        if (t >= T) continue;
        const size_t idx = (size_t)t * row_stride + d;
        dst[idx] = __float2bfloat16(bf16_to_float(dst[idx]) + scale * acc[r * acc_ld + d]);
    }
}

/* ---- backward ---------------------------------------------------------------------------------
 * With s = q k^T scale, P = exp(s - lse) (causal), out = P v, and Delta_t = dout_t . out_t
 * (= sum_j P_tj dP_tj, the softmax's row term):
 *   dP = dout v^T,  dS = P (dP - Delta),  dv += P^T dout,  dk += scale dS^T q,  dq += scale dS k.
 * Three kernels: Delta (D / 8 threads per query row, or one); dk and dv (one block per key tile and KV head,
 * looping over the group's query heads and the query tiles at or after the key tile); dq (one
 * block per query tile and query head, looping over the key tiles up to the diagonal). Each
 * gradient element is written once, by one thread: no atomics, deterministic. */

__global__ static void attention_delta_kernel(float *delta, const floatX *dout, const floatX *out,
                                              int B, int T, int Hq, int D) {
    const size_t n = blockIdx.x * (size_t)blockDim.x + threadIdx.x; /* (b * T + t) * Hq + h */
    if (n >= (size_t)B * T * Hq) return;
    const int h = (int)(n % Hq);
    const size_t bt = n / Hq;
    const int t = (int)(bt % T), b = (int)(bt / T);
    const floatX *dout_row = dout + n * D, *out_row = out + n * D;
    float sum = 0.0f;
    for (int d = 0; d < D; d++) sum += bf16_to_float(dout_row[d]) * bf16_to_float(out_row[d]);
    delta[((size_t)b * Hq + h) * T + t] = sum;
}

/* The same with each row's D = 8 LANES elements split over LANES neighbouring lanes, 8 elements
 * (16 bytes) of dout and of out each, summed over the lanes by shuffles: a warp reads whole
 * 16-byte pieces of consecutive rows, where one thread per row made each of its 2-byte loads
 * touch 32 rows at once (about 4 ms of Mistral-7B's step, by the L1 traffic). */
template <int LANES>
__global__ static void attention_delta_vec_kernel(float *delta, const floatX *dout,
                                                  const floatX *out, int B, int T, int Hq) {
    constexpr int D = 8 * LANES;
    const size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    const size_t n = i / LANES, rows = (size_t)B * T * Hq; /* n = (b * T + t) * Hq + h */
    const int part = (int)(i % LANES);
    float sum = 0.0f;
    if (n < rows) {
        alignas(16) floatX a[8], c[8];
        copy8(a, dout + n * D + 8 * part); /* 16-byte loads (mma_tiles.cuh) */
        copy8(c, out + n * D + 8 * part);
#pragma unroll
        for (int e = 0; e < 8; e++) sum += bf16_to_float(a[e]) * bf16_to_float(c[e]);
    }
    /* a row's lanes are LANES consecutive lanes of one warp (blockDim a multiple of 32) */
#pragma unroll
    for (int offset = LANES / 2; offset > 0; offset /= 2)
        sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (n < rows && part == 0) {
        const int h = (int)(n % Hq);
        const size_t bt = n / Hq;
        const int t = (int)(bt % T), b = (int)(bt / T);
        delta[((size_t)b * Hq + h) * T + t] = sum;
    }
}

/* Delta for every query row: the vector kernel where D / 8 is a power of two up to 32 (dout and
 * out come from the allocator and their rows are 16-byte multiples), else one thread per row. */
static void attention_delta(float *delta, const floatX *dout, const floatX *out, int B, int T,
                            int Hq, int D) {
    const size_t rows = (size_t)B * T * Hq;
    const bool aligned = (uintptr_t)dout % 16 == 0 && (uintptr_t)out % 16 == 0;
    const size_t threads = rows * (size_t)(D / 8);
    const unsigned blocks = (unsigned)((threads + fa_threads - 1) / fa_threads);
    if (aligned && D == 64) {
        attention_delta_vec_kernel<8><<<blocks, fa_threads>>>(delta, dout, out, B, T, Hq);
    } else if (aligned && D == 128) {
        attention_delta_vec_kernel<16><<<blocks, fa_threads>>>(delta, dout, out, B, T, Hq);
    } else if (aligned && D == 256) {
        attention_delta_vec_kernel<32><<<blocks, fa_threads>>>(delta, dout, out, B, T, Hq);
    } else {
        attention_delta_kernel<<<(unsigned)((rows + fa_threads - 1) / fa_threads), fa_threads>>>(delta, dout, out, B, T, Hq, D);
    }
    CHECK_LAUNCH();
}

/* Shared memory of the dk/dv kernel, in floats, in the order the kernel carves it. */
__host__ __device__ static inline size_t fa_backward_kv_smem_floats(int tile, int D) {
    return 6 * (size_t)tile * fa_ld(D)        /* Ks, Vs, Qs, dOs, dKs, dVs */
           + 2 * (size_t)tile * fa_pld(tile) /* Ps, dSs */
           + 2 * (size_t)tile;                /* row_lse, row_delta */
}

/* One block per (key tile, KV head, batch): keys k0 .. k0 + TILE - 1 stay in shared memory with
 * their dk, dv accumulators; the query tiles q0 = k0, k0 + TILE, ... (the earlier ones cannot see
 * these keys) of every query head of the group pass through. */
template <int TILE>
__global__ static void __launch_bounds__(fa_threads)
    attention_backward_kv_kernel(floatX *dk, floatX *dv, const floatX *dout, const float *lse,
                                 const float *delta, const floatX *q, const floatX *k,
                                 const floatX *v, int T, int Hq, int Hkv, int D, float scale) {
    constexpr int R = TILE / fa_side;
    const int k_tile = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
    const int group = Hq / Hkv;
    const int k0 = k_tile * TILE;
    const int Dp = fa_padded_dim(D), ld = fa_ld(D), pld = fa_pld(TILE);
    const int ty = threadIdx.x / fa_side, tx = threadIdx.x % fa_side;

    extern __shared__ float fa_smem[];
    float *Ks = fa_smem;           /* [TILE][ld] */
    float *Vs = Ks + TILE * ld;    /* [TILE][ld] */
    float *Qs = Vs + TILE * ld;    /* [TILE][ld] the current query tile */
    float *dOs = Qs + TILE * ld;   /* [TILE][ld] its dout */
    float *dKs = dOs + TILE * ld;  /* [TILE][ld] sum of dS^T q (scale applied on the way in) */
    float *dVs = dKs + TILE * ld;  /* [TILE][ld] sum of P^T dout */
    float *Ps = dVs + TILE * ld;   /* [TILE][pld] P, query rows x key columns */
    float *dSs = Ps + TILE * pld;  /* [TILE][pld] dS, query rows x key columns */
    float *row_lse = dSs + TILE * pld; /* [TILE] lse of the current query rows */
    float *row_delta = row_lse + TILE; /* [TILE] Delta of the current query rows */

    const size_t kv_offset = ((size_t)b * T * Hkv + kv_head) * D; /* (b, t = 0, kv_head) */
    fa_load_rows(Ks, k + kv_offset, k0, TILE, T, (size_t)Hkv * D, D, ld);
    fa_load_rows(Vs, v + kv_offset, k0, TILE, T, (size_t)Hkv * D, D, ld);
    fa_zero(dKs, TILE * ld);
    fa_zero(dVs, TILE * ld);

    for (int h = kv_head * group; h < (kv_head + 1) * group; h++) {
        const size_t q_offset = ((size_t)b * T * Hq + h) * D; /* (b, t = 0, h) */
        const size_t stat_offset = ((size_t)b * Hq + h) * T;  /* lse / delta of (b, h, t = 0) */
        for (int q0 = k0; q0 < T; q0 += TILE) {
            __syncthreads(); /* Ks, Vs, dKs, dVs ready (first pass); last pass's readers done */
            fa_load_rows(Qs, q + q_offset, q0, TILE, T, (size_t)Hq * D, D, ld);
            fa_load_rows(dOs, dout + q_offset, q0, TILE, T, (size_t)Hq * D, D, ld);
            fa_load_row_stats(row_lse, row_delta, lse, delta, stat_offset, q0, TILE, T);
            __syncthreads();

            float s[R][R], dp[R][R];
            fa_tile_dots<R>(s, Qs, Ks, ld, Dp);  /* s[i][j]: query row ty+16i . key tx+16j */
            fa_tile_dots<R>(dp, dOs, Vs, ld, Dp); /* dp[i][j]: dout row ty+16i . v tx+16j */
#pragma unroll
            for (int i = 0; i < R; i++)
#pragma unroll
                for (int j = 0; j < R; j++) {
                    const int r = ty + fa_side * i, c = tx + fa_side * j;
                    const int t = q0 + r, key = k0 + c;
                    const float p = fa_probability(s[i][j], scale, row_lse[r], t, key, T);
                    Ps[r * pld + c] = p;
                    dSs[r * pld + c] = p * (dp[i][j] - row_delta[r]);
                }
            __syncthreads(); /* P and dS complete */

            /* dv[c] += sum_r P[r][c] dout[r];  dk[c] += scale sum_r dS[r][c] q[r]: the
             * accumulator rows are keys, so P and dS are read transposed (m_row 1, m_col pld) */
            const int query_count = min(TILE, T - q0);
            fa_accumulate<R>(dVs, Ps, 1, pld, dOs, query_count, ld, Dp, 1.0f);
            fa_accumulate<R>(dKs, dSs, 1, pld, Qs, query_count, ld, Dp, scale);
        }
    }
    __syncthreads(); /* every dKs, dVs row complete */

    fa_add_rows_into(dk + kv_offset, dKs, ld, k0, TILE, T, (size_t)Hkv * D, D, 1.0f);
    fa_add_rows_into(dv + kv_offset, dVs, ld, k0, TILE, T, (size_t)Hkv * D, D, 1.0f);
}

/* Shared memory of the dq kernel, in floats, in the order the kernel carves it. */
__host__ __device__ static inline size_t fa_backward_q_smem_floats(int tile, int D) {
    return 5 * (size_t)tile * fa_ld(D)    /* Qs, dOs, Ks, Vs, dQs */
           + (size_t)tile * fa_pld(tile) /* dSs */
           + 2 * (size_t)tile;            /* row_lse, row_delta */
}

/* One block per (query tile, query head, batch): the query rows stay in shared memory with their
 * dq accumulator; the key tiles k0 = 0, TILE, ... up to the diagonal pass through. */
template <int TILE>
__global__ static void __launch_bounds__(fa_threads)
    attention_backward_q_kernel(floatX *dq, const floatX *dout, const float *lse,
                                const float *delta, const floatX *q, const floatX *k,
                                const floatX *v, int T, int Hq, int Hkv, int D, float scale) {
    constexpr int R = TILE / fa_side;
    const int q_tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int kv_head = h / (Hq / Hkv);
    const int q0 = q_tile * TILE;
    const int q_last = min(q0 + TILE, T) - 1;
    const int Dp = fa_padded_dim(D), ld = fa_ld(D), pld = fa_pld(TILE);
    const int ty = threadIdx.x / fa_side, tx = threadIdx.x % fa_side;

    extern __shared__ float fa_smem[];
    float *Qs = fa_smem;           /* [TILE][ld] */
    float *dOs = Qs + TILE * ld;   /* [TILE][ld] */
    float *Ks = dOs + TILE * ld;   /* [TILE][ld] the current key tile */
    float *Vs = Ks + TILE * ld;    /* [TILE][ld] */
    float *dQs = Vs + TILE * ld;   /* [TILE][ld] sum of dS k (scale applied on the way in) */
    float *dSs = dQs + TILE * ld;  /* [TILE][pld] dS, query rows x key columns */
    float *row_lse = dSs + TILE * pld;
    float *row_delta = row_lse + TILE;

    const size_t q_offset = ((size_t)b * T * Hq + h) * D;        /* (b, t = 0, h) */
    const size_t kv_offset = ((size_t)b * T * Hkv + kv_head) * D; /* (b, t = 0, kv_head) */
    const size_t stat_offset = ((size_t)b * Hq + h) * T;
    fa_load_rows(Qs, q + q_offset, q0, TILE, T, (size_t)Hq * D, D, ld);
    fa_load_rows(dOs, dout + q_offset, q0, TILE, T, (size_t)Hq * D, D, ld);
    fa_zero(dQs, TILE * ld);
    fa_load_row_stats(row_lse, row_delta, lse, delta, stat_offset, q0, TILE, T);

    for (int k0 = 0; k0 <= q_last; k0 += TILE) {
        __syncthreads(); /* Qs, dOs, dQs, stats ready (first pass); last pass's readers done */
        fa_load_rows(Ks, k + kv_offset, k0, TILE, T, (size_t)Hkv * D, D, ld);
        fa_load_rows(Vs, v + kv_offset, k0, TILE, T, (size_t)Hkv * D, D, ld);
        __syncthreads();

        float s[R][R], dp[R][R];
        fa_tile_dots<R>(s, Qs, Ks, ld, Dp);
        fa_tile_dots<R>(dp, dOs, Vs, ld, Dp);
#pragma unroll
        for (int i = 0; i < R; i++)
#pragma unroll
            for (int j = 0; j < R; j++) {
                const int r = ty + fa_side * i, c = tx + fa_side * j;
                const int t = q0 + r, key = k0 + c;
                const float p = fa_probability(s[i][j], scale, row_lse[r], t, key, T);
                dSs[r * pld + c] = p * (dp[i][j] - row_delta[r]);
            }
        __syncthreads(); /* dS complete */

        /* dq[r] += scale sum_c dS[r][c] k[c]; keys past the tile's last valid row have dS = 0 */
        const int key_count = min(TILE, q_last - k0 + 1);
        fa_accumulate<R>(dQs, dSs, pld, 1, Ks, key_count, ld, Dp, scale);
    }
    __syncthreads(); /* every dQs row complete */

    fa_add_rows_into(dq + q_offset, dQs, ld, q0, TILE, T, (size_t)Hq * D, D, 1.0f);
}

/* ---- backward on tensor cores -----------------------------------------------------------------
 * The same three-kernel backward (the same blocks, loops, masking and Delta) with the five tile
 * products on bf16 tensor cores, for D a multiple of 16, as the forward above: Q, K, V and dout
 * tiles staged as bf16; S = Q K^T and dP = dout V^T come out of the MMA into fp32 tiles, where P
 * and dS are formed as in the fp32 kernels and written rounded to bf16; the accumulators dK, dV
 * (keys x D) and dQ (queries x D) stay in shared memory in fp32, loaded and stored as WMMA
 * accumulators around each tile's products (dV += P^T dout, dK += dS^T Q, dQ += dS K). P^T and
 * dS^T are P and dS read as column-major A operands. The scale of dK and dQ is applied once, at
 * the write-out. Tested on an H100 and on the emulator. */

/* Shared memory of the tensor-core dk/dv kernel, in bytes, in the order the kernel carves it
 * (every part a multiple of 32 bytes, as in the forward). */
__host__ __device__ static inline size_t fa_tc_backward_kv_smem_bytes(int tile, int D) {
    const size_t bytes = 4 * (size_t)tile * fa_tc_ldh(D) * 2      /* Kh, Vh, Qh, dOh (bf16) */
                         + 2 * (size_t)tile * fa_tc_ldo(D) * 4    /* dKs, dVs (fp32) */
                         + 2 * (size_t)tile * fa_tc_sld(tile) * 4 /* Ss, dPs (fp32) */
                         + 2 * (size_t)tile * fa_tc_pld(tile) * 2 /* Ph, dSh (bf16) */
                         + 2 * (size_t)tile * 4;                  /* row_lse, row_delta */
    return (bytes + 127) / 128 * 128;
}

/* Shared memory of the tensor-core dq kernel, in bytes, in the order the kernel carves it. */
__host__ __device__ static inline size_t fa_tc_backward_q_smem_bytes(int tile, int D) {
    const size_t bytes = 4 * (size_t)tile * fa_tc_ldh(D) * 2      /* Qh, dOh, Kh, Vh (bf16) */
                         + (size_t)tile * fa_tc_ldo(D) * 4        /* dQs (fp32) */
                         + 2 * (size_t)tile * fa_tc_sld(tile) * 4 /* Ss, dPs (fp32) */
                         + (size_t)tile * fa_tc_pld(tile) * 2     /* dSh (bf16) */
                         + 2 * (size_t)tile * 4;                  /* row_lse, row_delta */
    return (bytes + 127) / 128 * 128;
}

/* Ss = A B^T and dPs = C E^T for TILE x TILE tiles (A, B, C, E: TILE rows of bf16, stride ldh,
 * width D): the 8 warps take the 2 x blocks x blocks 16 x 16 output blocks in turn. B and E read
 * as column-major B operands give their transposes. */
template <int TILE>
__device__ static void fa_tc_two_score_tiles(float *Ss, float *dPs, const floatX *A,
                                             const floatX *Bm, const floatX *C, const floatX *E,
                                             int D, int ldh) {
    using namespace nvcuda;
    constexpr int blocks = TILE / 16, sld = TILE + 4; /* fa_tc_sld */
    const int warp = threadIdx.x / 32;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, floatX, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, floatX, wmma::col_major> fbt;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> facc;
    for (int blk = warp; blk < 2 * blocks * blocks; blk += fa_warps) {
        const bool second = blk >= blocks * blocks;
        const int i = (blk % (blocks * blocks)) / blocks, j = blk % blocks;
        const floatX *left = second ? C : A, *right = second ? E : Bm;
        wmma::fill_fragment(facc, 0.0f);
        for (int d0 = 0; d0 < D; d0 += 16) {
            wmma::load_matrix_sync(fa, left + 16 * i * ldh + d0, ldh);
            wmma::load_matrix_sync(fbt, right + 16 * j * ldh + d0, ldh);
            wmma::mma_sync(facc, fa, fbt, facc);
        }
        wmma::store_matrix_sync((second ? dPs : Ss) + 16 * i * sld + 16 * j, facc, sld,
                                wmma::mem_row_major);
    }
}

/* acc[i-block][n-block] (fp32, stride ldo, TILE x D) += M X over k < 16 steps: M is a TILE x TILE
 * bf16 tile of stride pld, read as stored (M row-major) or transposed (transpose: M^T, read as a
 * column-major A operand); X is TILE x D bf16 of stride ldh. The warps take the blocks x D / 16
 * output blocks in turn; each loads its block as an accumulator, adds and stores it back. */
template <int TILE, bool transpose>
__device__ static void fa_tc_accumulate(float *acc, const floatX *M, const floatX *X, int steps,
                                        int D, int ldh, int ldo) {
    using namespace nvcuda;
    constexpr int blocks = TILE / 16, pld = TILE + 8; /* fa_tc_pld */
    using LayoutM = typename std::conditional<transpose, wmma::col_major, wmma::row_major>::type;
    const int warp = threadIdx.x / 32;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, floatX, LayoutM> fm;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, floatX, wmma::row_major> fx;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> facc;
    for (int blk = warp; blk < blocks * (D / 16); blk += fa_warps) {
        const int i = blk / (D / 16), n = blk % (D / 16);
        float *acc_block = acc + 16 * i * ldo + 16 * n;
        wmma::load_matrix_sync(facc, acc_block, ldo, wmma::mem_row_major);
        for (int kk = 0; kk < steps; kk++) {
            /* block (i, kk) of M, or of M^T: block (kk, i) of M read column-major */
            const floatX *m_block = transpose ? M + 16 * kk * pld + 16 * i : M + 16 * i * pld + 16 * kk;
            wmma::load_matrix_sync(fm, m_block, pld);
            wmma::load_matrix_sync(fx, X + 16 * kk * ldh + 16 * n, ldh);
            wmma::mma_sync(facc, fm, fx, facc);
        }
        wmma::store_matrix_sync(acc_block, facc, ldo, wmma::mem_row_major);
    }
}

/* One block per (key tile, KV head, batch), as attention_backward_kv_kernel. */
template <int TILE>
__global__ static void __launch_bounds__(fa_threads)
    attention_backward_kv_tc_kernel(floatX *dk, floatX *dv, const floatX *dout, const float *lse,
                                    const float *delta, const floatX *q, const floatX *k,
                                    const floatX *v, int T, int Hq, int Hkv, int D, float scale) {
    const int k_tile = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
    const int group = Hq / Hkv;
    const int k0 = k_tile * TILE;
    const int ldh = fa_tc_ldh(D), ldo = fa_tc_ldo(D);
    constexpr int sld = TILE + 4, pld = TILE + 8; /* fa_tc_sld, fa_tc_pld */

    extern __shared__ float fa_smem[];
    floatX *Kh = (floatX *)fa_smem;              /* [TILE][ldh] */
    floatX *Vh = Kh + TILE * ldh;                /* [TILE][ldh] */
    floatX *Qh = Vh + TILE * ldh;                /* [TILE][ldh] the current query tile */
    floatX *dOh = Qh + TILE * ldh;               /* [TILE][ldh] its dout */
    float *dKs = (float *)(dOh + TILE * ldh);    /* [TILE][ldo] sum of dS^T q (unscaled) */
    float *dVs = dKs + TILE * ldo;               /* [TILE][ldo] sum of P^T dout */
    float *Ss = dVs + TILE * ldo;                /* [TILE][sld] q k^T (unscaled), queries x keys */
    float *dPs = Ss + TILE * sld;                /* [TILE][sld] dout v^T */
    floatX *Ph = (floatX *)(dPs + TILE * sld);   /* [TILE][pld] P, bf16 */
    floatX *dSh = Ph + TILE * pld;               /* [TILE][pld] dS, bf16 */
    float *row_lse = (float *)(dSh + TILE * pld); /* [TILE] */
    float *row_delta = row_lse + TILE;           /* [TILE] */

    const size_t kv_offset = ((size_t)b * T * Hkv + kv_head) * D; /* (b, t = 0, kv_head) */
    fa_tc_load_rows(Kh, k + kv_offset, k0, TILE, T, (size_t)Hkv * D, D, ldh);
    fa_tc_load_rows(Vh, v + kv_offset, k0, TILE, T, (size_t)Hkv * D, D, ldh);
    fa_zero(dKs, TILE * ldo);
    fa_zero(dVs, TILE * ldo);

    for (int h = kv_head * group; h < (kv_head + 1) * group; h++) {
        const size_t q_offset = ((size_t)b * T * Hq + h) * D; /* (b, t = 0, h) */
        const size_t stat_offset = ((size_t)b * Hq + h) * T;  /* lse / delta of (b, h, t = 0) */
        for (int q0 = k0; q0 < T; q0 += TILE) {
            __syncthreads(); /* Kh, Vh, dKs, dVs ready (first pass); last pass's readers done */
            fa_tc_load_rows(Qh, q + q_offset, q0, TILE, T, (size_t)Hq * D, D, ldh);
            fa_tc_load_rows(dOh, dout + q_offset, q0, TILE, T, (size_t)Hq * D, D, ldh);
            fa_load_row_stats(row_lse, row_delta, lse, delta, stat_offset, q0, TILE, T);
            __syncthreads(); /* Qh, dOh, stats ready */

            fa_tc_two_score_tiles<TILE>(Ss, dPs, Qh, Kh, dOh, Vh, D, ldh);
            __syncthreads(); /* Ss, dPs complete */

            for (int e = threadIdx.x; e < TILE * TILE; e += blockDim.x) {
                const int r = e / TILE, c = e % TILE;
                const int t = q0 + r, key = k0 + c;
                const float p = fa_probability(Ss[r * sld + c], scale, row_lse[r], t, key, T);
                Ph[r * pld + c] = __float2bfloat16(p);
                dSh[r * pld + c] = __float2bfloat16(p * (dPs[r * sld + c] - row_delta[r]));
            }
            __syncthreads(); /* Ph, dSh complete */

            /* dV += P^T dout, dK += dS^T q over the query rows up to T, in 16-row steps (rows
             * past T: P = dS = 0 and zero q, dout) */
            const int query_steps = (min(TILE, T - q0) + 15) / 16;
            fa_tc_accumulate<TILE, true>(dVs, Ph, dOh, query_steps, D, ldh, ldo);
            fa_tc_accumulate<TILE, true>(dKs, dSh, Qh, query_steps, D, ldh, ldo);
        }
    }
    __syncthreads(); /* every dKs, dVs row complete */

    fa_add_rows_into(dk + kv_offset, dKs, ldo, k0, TILE, T, (size_t)Hkv * D, D, scale);
    fa_add_rows_into(dv + kv_offset, dVs, ldo, k0, TILE, T, (size_t)Hkv * D, D, 1.0f);
}

/* One block per (query tile, query head, batch), as attention_backward_q_kernel. */
template <int TILE>
__global__ static void __launch_bounds__(fa_threads)
    attention_backward_q_tc_kernel(floatX *dq, const floatX *dout, const float *lse,
                                   const float *delta, const floatX *q, const floatX *k,
                                   const floatX *v, int T, int Hq, int Hkv, int D, float scale) {
    const int q_tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int kv_head = h / (Hq / Hkv);
    const int q0 = q_tile * TILE;
    const int q_last = min(q0 + TILE, T) - 1;
    const int ldh = fa_tc_ldh(D), ldo = fa_tc_ldo(D);
    constexpr int sld = TILE + 4, pld = TILE + 8; /* fa_tc_sld, fa_tc_pld */

    extern __shared__ float fa_smem[];
    floatX *Qh = (floatX *)fa_smem;              /* [TILE][ldh] */
    floatX *dOh = Qh + TILE * ldh;               /* [TILE][ldh] */
    floatX *Kh = dOh + TILE * ldh;               /* [TILE][ldh] the current key tile */
    floatX *Vh = Kh + TILE * ldh;                /* [TILE][ldh] */
    float *dQs = (float *)(Vh + TILE * ldh);     /* [TILE][ldo] sum of dS k (unscaled) */
    float *Ss = dQs + TILE * ldo;                /* [TILE][sld] */
    float *dPs = Ss + TILE * sld;                /* [TILE][sld] */
    floatX *dSh = (floatX *)(dPs + TILE * sld);  /* [TILE][pld] dS, bf16 */
    float *row_lse = (float *)(dSh + TILE * pld); /* [TILE] */
    float *row_delta = row_lse + TILE;           /* [TILE] */

    const size_t q_offset = ((size_t)b * T * Hq + h) * D;        /* (b, t = 0, h) */
    const size_t kv_offset = ((size_t)b * T * Hkv + kv_head) * D; /* (b, t = 0, kv_head) */
    const size_t stat_offset = ((size_t)b * Hq + h) * T;
    fa_tc_load_rows(Qh, q + q_offset, q0, TILE, T, (size_t)Hq * D, D, ldh);
    fa_tc_load_rows(dOh, dout + q_offset, q0, TILE, T, (size_t)Hq * D, D, ldh);
    fa_zero(dQs, TILE * ldo);
    fa_load_row_stats(row_lse, row_delta, lse, delta, stat_offset, q0, TILE, T);

    for (int k0 = 0; k0 <= q_last; k0 += TILE) {
        __syncthreads(); /* Qh, dOh, dQs, stats ready (first pass); last pass's readers done */
        fa_tc_load_rows(Kh, k + kv_offset, k0, TILE, T, (size_t)Hkv * D, D, ldh);
        fa_tc_load_rows(Vh, v + kv_offset, k0, TILE, T, (size_t)Hkv * D, D, ldh);
        __syncthreads(); /* Kh, Vh ready */

        fa_tc_two_score_tiles<TILE>(Ss, dPs, Qh, Kh, dOh, Vh, D, ldh);
        __syncthreads(); /* Ss, dPs complete */

        for (int e = threadIdx.x; e < TILE * TILE; e += blockDim.x) {
            const int r = e / TILE, c = e % TILE;
            const int t = q0 + r, key = k0 + c;
            const float p = fa_probability(Ss[r * sld + c], scale, row_lse[r], t, key, T);
            dSh[r * pld + c] = __float2bfloat16(p * (dPs[r * sld + c] - row_delta[r]));
        }
        __syncthreads(); /* dSh complete */

        /* dQ += dS k over the keys up to the tile's last valid query row, in 16-key steps (keys
         * past it in the last step have dS = 0 and finite k: zeros past T) */
        const int key_steps = (min(TILE, q_last - k0 + 1) + 15) / 16;
        fa_tc_accumulate<TILE, false>(dQs, dSh, Kh, key_steps, D, ldh, ldo);
    }
    __syncthreads(); /* every dQs row complete */

    fa_add_rows_into(dq + q_offset, dQs, ldo, q0, TILE, T, (size_t)Hq * D, D, scale);
}

/* ---- host side ------------------------------------------------------------------------------- */

static void fa_check_shape(const char *op, int Hq, int Hkv, int D) {
    if (Hkv <= 0 || Hq % Hkv != 0)
        paft_fatal(__FILE__, __LINE__, "%s: %d query heads are not a multiple of %d KV heads", op,
                   Hq, Hkv);
    if (D <= 0 || D % 2 != 0 || D > 256)
        paft_fatal(__FILE__, __LINE__,
                   "%s: head dimension %d is not supported (expected an even D, 2 <= D <= 256)",
                   op, D);
}

/* Tile sizes: the largest that keeps the shared memory at 100-134 KB (A100 allows 163 KB per
 * block, H100 227 KB). Forward: 64 rows up to D = 128, 32 above; the dk/dv kernel holds six
 * tiles: 64 rows up to D = 64, 32 up to 128, 16 above; the dq kernel uses the same tile. */
static int fa_forward_tile(int D) { return fa_padded_dim(D) <= 128 ? 64 : 32; }
static int fa_backward_tile(int D) {
    return fa_padded_dim(D) <= 64 ? 64 : fa_padded_dim(D) <= 128 ? 32 : 16;
}

/* Allows the kernel the dynamic shared memory it needs (above the default 48 KB), or ends the job
 * with the numbers when the device has less. */
template <typename Kernel>
static void fa_allow_smem(Kernel kernel, size_t bytes, const char *op, int D) {
    char what[96];
    snprintf(what, sizeof what, "%s: D = %d", op, D);
    cuda_allow_shared_memory(kernel, bytes, what);
}

template <int TILE>
static void fa_launch_forward(floatX *out, float *lse, const floatX *q, const floatX *k,
                              const floatX *v, int B, int T, int Hq, int Hkv, int D, float scale) {
    const size_t smem = fa_forward_smem_floats(TILE, D) * sizeof(float);
    fa_allow_smem(attention_forward_fused_kernel<TILE>, smem, "attention_forward_fused_cuda", D);
    const dim3 grid((T + TILE - 1) / TILE, Hq, B);
    attention_forward_fused_kernel<TILE><<<grid, fa_threads, smem>>>(out, lse, q, k, v, T, Hq, Hkv,
                                                                     D, scale);
    CHECK_LAUNCH();
}

template <int TILE>
static void fa_launch_forward_tc(floatX *out, float *lse, const floatX *q, const floatX *k,
                                 const floatX *v, int B, int T, int Hq, int Hkv, int D,
                                 float scale) {
    const size_t smem = fa_tc_forward_smem_bytes(TILE, D);
    fa_allow_smem(attention_forward_tc_kernel<TILE>, smem, "attention_forward_fused_cuda", D);
    const dim3 grid((T + TILE - 1) / TILE, Hq, B);
    attention_forward_tc_kernel<TILE><<<grid, fa_threads, smem>>>(out, lse, q, k, v, T, Hq, Hkv, D, scale);
    CHECK_LAUNCH();
}

/* Which kernels run: the register-level MMA ones (attention_mma.cu) for D = 64 and 128, the WMMA
 * ones for other multiples of 16, the fp32 ones otherwise. PAFT_ATTENTION_WMMA=1 and
 * PAFT_ATTENTION_FP32=1 force the older ones, to compare them on a GPU and to keep them tested. */
static bool fa_env_set(const char *name) {
    const char *value = getenv(name);
    return value && value[0] == '1';
}
static bool fa_use_tensor_cores(int D) { return D % 16 == 0 && !fa_env_set("PAFT_ATTENTION_FP32"); }
static bool fa_use_mma(int D) {
    return attention_mma_supports(D) && fa_use_tensor_cores(D) && !fa_env_set("PAFT_ATTENTION_WMMA");
}

extern "C" void attention_forward_fused_cuda(floatX *out, float *lse, const floatX *q,
                                             const floatX *k, const floatX *v, int B, int T,
                                             int Hq, int Hkv, int D) {
    fa_check_shape("attention_forward_fused_cuda", Hq, Hkv, D);
    if (B <= 0 || T <= 0) return;
    if (fa_use_mma(D)) {
        attention_forward_mma_cuda(out, lse, q, k, v, B, T, Hq, Hkv, D);
        return;
    }
    const float scale = (float)(1.0 / sqrt((double)D));
    const bool wide = fa_forward_tile(D) == 64;
    if (fa_use_tensor_cores(D)) {
        if (wide) fa_launch_forward_tc<64>(out, lse, q, k, v, B, T, Hq, Hkv, D, scale);
        else fa_launch_forward_tc<32>(out, lse, q, k, v, B, T, Hq, Hkv, D, scale);
    } else if (wide) {
        fa_launch_forward<64>(out, lse, q, k, v, B, T, Hq, Hkv, D, scale);
    } else {
        fa_launch_forward<32>(out, lse, q, k, v, B, T, Hq, Hkv, D, scale);
    }
}

/* The MMA backward computes dq from dS stored by the dk, dv kernel (attention_mma.cu, "dS
 * stored": five products instead of seven) while that fits in stored_ds_limit bytes of scratch
 * (8 KB per causal pair of 64-row tiles: T = 1024 at B Hq up to 963, T = 4096 at B Hq up to 63)
 * and in the scratch the caller has; past either, or with PAFT_ATTENTION_STORED_DS=0, it
 * recomputes S and dP for dq, in memory linear in T. The bound keeps the quadratic part of the
 * scratch under 1 GiB, small next to a 7B model's training state, whatever the sequence length.
 * It makes the scratch's size jump at the bound, so the call checks what it was given: scratch
 * sized for the longest batch, just past the bound (no dS), must not be used for dS by a shorter
 * batch just under it. */
static const size_t stored_ds_limit = (size_t)1 << 30;
static bool fa_store_ds(int B, int T, int Hq, int D) {
    const char *value = getenv("PAFT_ATTENTION_STORED_DS");
    if (value && value[0] == '0') return false;
    return fa_use_mma(D) && attention_backward_mma_ds_bytes(B, T, Hq) <= stored_ds_limit;
}

/* The backward's scratch, each part 256-byte aligned: Delta [B][Hq][T] fp32 first, then (MMA
 * kernels, grouped-query) the per-head shares of dk and dv, then (MMA kernels, fa_store_ds) dS. */
static size_t fa_align(size_t bytes) { return (bytes + 255) / 256 * 256; }
static size_t fa_partials_offset(int B, int T, int Hq) {
    return fa_align((size_t)B * Hq * T * sizeof(float));
}
static size_t fa_partials_bytes(int B, int T, int Hq, int Hkv, int D) {
    return fa_use_mma(D) ? attention_backward_mma_partials_bytes(B, T, Hq, Hkv, D) : 0;
}
static size_t fa_ds_offset(int B, int T, int Hq, int Hkv, int D) {
    return fa_partials_offset(B, T, Hq) + fa_align(fa_partials_bytes(B, T, Hq, Hkv, D));
}

/* The scratch without dS (linear in T), and with it. */
static size_t fa_linear_scratch_bytes(int B, int T, int Hq, int Hkv, int D) {
    const size_t delta_bytes = (size_t)B * Hq * T * sizeof(float); /* Delta [B][Hq][T] */
    const size_t partials_bytes = fa_partials_bytes(B, T, Hq, Hkv, D);
    if (partials_bytes == 0) return delta_bytes;
    return fa_partials_offset(B, T, Hq) + partials_bytes;
}
static size_t fa_stored_ds_scratch_bytes(int B, int T, int Hq, int Hkv, int D) {
    return fa_ds_offset(B, T, Hq, Hkv, D) + attention_backward_mma_ds_bytes(B, T, Hq);
}

extern "C" size_t attention_backward_fused_scratch_bytes(int B, int T, int Hq, int Hkv, int D) {
    if (B <= 0 || T <= 0 || Hq <= 0) return 0;
    return fa_store_ds(B, T, Hq, D) ? fa_stored_ds_scratch_bytes(B, T, Hq, Hkv, D)
                                    : fa_linear_scratch_bytes(B, T, Hq, Hkv, D);
}

template <int TILE>
static void fa_launch_backward(floatX *dq, floatX *dk, floatX *dv, const floatX *dout,
                               const float *lse, const float *delta, const floatX *q,
                               const floatX *k, const floatX *v, int B, int T, int Hq, int Hkv,
                               int D, float scale) {
    const int tiles = (T + TILE - 1) / TILE;
    const size_t smem_kv = fa_backward_kv_smem_floats(TILE, D) * sizeof(float);
    fa_allow_smem(attention_backward_kv_kernel<TILE>, smem_kv, "attention_backward_fused_cuda", D);
    attention_backward_kv_kernel<TILE><<<dim3(tiles, Hkv, B), fa_threads, smem_kv>>>(
        dk, dv, dout, lse, delta, q, k, v, T, Hq, Hkv, D, scale);
    CHECK_LAUNCH();
    const size_t smem_q = fa_backward_q_smem_floats(TILE, D) * sizeof(float);
    fa_allow_smem(attention_backward_q_kernel<TILE>, smem_q, "attention_backward_fused_cuda", D);
    attention_backward_q_kernel<TILE><<<dim3(tiles, Hq, B), fa_threads, smem_q>>>(
        dq, dout, lse, delta, q, k, v, T, Hq, Hkv, D, scale);
    CHECK_LAUNCH();
}

template <int TILE>
static void fa_launch_backward_tc(floatX *dq, floatX *dk, floatX *dv, const floatX *dout,
                                  const float *lse, const float *delta, const floatX *q,
                                  const floatX *k, const floatX *v, int B, int T, int Hq, int Hkv,
                                  int D, float scale) {
    const int tiles = (T + TILE - 1) / TILE;
    const size_t smem_kv = fa_tc_backward_kv_smem_bytes(TILE, D);
    fa_allow_smem(attention_backward_kv_tc_kernel<TILE>, smem_kv, "attention_backward_fused_cuda",
                  D);
    attention_backward_kv_tc_kernel<TILE><<<dim3(tiles, Hkv, B), fa_threads, smem_kv>>>(
        dk, dv, dout, lse, delta, q, k, v, T, Hq, Hkv, D, scale);
    CHECK_LAUNCH();
    const size_t smem_q = fa_tc_backward_q_smem_bytes(TILE, D);
    fa_allow_smem(attention_backward_q_tc_kernel<TILE>, smem_q, "attention_backward_fused_cuda",
                  D);
    attention_backward_q_tc_kernel<TILE><<<dim3(tiles, Hq, B), fa_threads, smem_q>>>(
        dq, dout, lse, delta, q, k, v, T, Hq, Hkv, D, scale);
    CHECK_LAUNCH();
}

extern "C" void attention_backward_fused_cuda(floatX *dq, floatX *dk, floatX *dv,
                                              const floatX *dout, const floatX *out,
                                              const float *lse, const floatX *q, const floatX *k,
                                              const floatX *v, int B, int T, int Hq, int Hkv,
                                              int D, void *scratch, size_t scratch_bytes) {
    fa_check_shape("attention_backward_fused_cuda", Hq, Hkv, D);
    if (!dq || !dk || !dv)
        paft_fatal(__FILE__, __LINE__,
                   "attention_backward_fused_cuda: dq, dk and dv must all be given (got NULL)");
    if (B <= 0 || T <= 0) return;
    const size_t needed = fa_linear_scratch_bytes(B, T, Hq, Hkv, D);
    if (!scratch || scratch_bytes < needed)
        paft_fatal(__FILE__, __LINE__,
                   "attention_backward_fused_cuda: %zu bytes of scratch at %p for B %d T %d Hq %d "
                   "Hkv %d D %d, which needs at least %zu (attention_backward_fused_scratch_bytes)",
                   scratch_bytes, scratch, B, T, Hq, Hkv, D, needed);
    const float scale = (float)(1.0 / sqrt((double)D));
    float *delta = (float *)scratch;
    attention_delta(delta, dout, out, B, T, Hq, D);
    if (fa_use_mma(D)) {
        float *partials = (float *)((char *)scratch + fa_partials_offset(B, T, Hq));
        const bool store_ds = fa_store_ds(B, T, Hq, D) &&
                              fa_stored_ds_scratch_bytes(B, T, Hq, Hkv, D) <= scratch_bytes;
        floatX *ds_t = store_ds ? (floatX *)((char *)scratch + fa_ds_offset(B, T, Hq, Hkv, D))
                                : nullptr;
        attention_backward_mma_cuda(dq, dk, dv, dout, lse, delta, partials, ds_t, q, k, v, B, T,
                                    Hq, Hkv, D);
        return;
    }
    const bool tensor_cores = fa_use_tensor_cores(D);
    switch (fa_backward_tile(D)) {
    case 64:
        if (tensor_cores)
            fa_launch_backward_tc<64>(dq, dk, dv, dout, lse, delta, q, k, v, B, T, Hq, Hkv, D,
                                      scale);
        else
            fa_launch_backward<64>(dq, dk, dv, dout, lse, delta, q, k, v, B, T, Hq, Hkv, D, scale);
        break;
    case 32:
        if (tensor_cores)
            fa_launch_backward_tc<32>(dq, dk, dv, dout, lse, delta, q, k, v, B, T, Hq, Hkv, D,
                                      scale);
        else
            fa_launch_backward<32>(dq, dk, dv, dout, lse, delta, q, k, v, B, T, Hq, Hkv, D, scale);
        break;
    default:
        if (tensor_cores)
            fa_launch_backward_tc<16>(dq, dk, dv, dout, lse, delta, q, k, v, B, T, Hq, Hkv, D,
                                      scale);
        else
            fa_launch_backward<16>(dq, dk, dv, dout, lse, delta, q, k, v, B, T, Hq, Hkv, D, scale);
        break;
    }
}
