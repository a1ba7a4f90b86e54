/*
 * attention_mma.cu - causal grouped-query attention, FlashAttention-2 style, with every tile
 * product on bf16 tensor cores through mma.sync.m16n8k16 and the scores, probabilities and
 * accumulators in registers (attention_mma.h). The WMMA kernels of attention_cuda.cu go through
 * fp32 shared-memory tiles at every step; measured on an H100 (docs/BENCHMARKS.md) they left the
 * attention at 60-70 % of a Llama-1B training step, which is why these exist.
 *
 * One warp computes a 16-row strip of each product, on the operand layouts of mma_tiles.cuh.
 * Two C tiles side by side (columns 16 j .. 16 j + 15) hold exactly the A operand of the next
 * product (FlashAttention's trick): P = softmax(S) goes from the S accumulators to the P V MMA
 * without leaving the registers. Operands come from shared memory through ldmatrix (plain for A
 * and for the rows of K in Q K^T, transposed for V in P V and the like), four 8 x 8 matrices a go.
 *
 * Blocks of 4 warps (128 threads). Tiles are staged in shared memory with rows of D + 8 elements:
 * 16 bytes of padding put the 8 rows a quarter-warp reads in different banks.
 *
 *   forward: one block per (64 query rows, query head, batch); key tiles of 64 up to the diagonal.
 *   dk, dv:  one block per (64 keys, KV head, batch), looping over the group's query heads and the
 *            query tiles at or after the keys; each warp owns 16 keys' accumulators.
 *   dq:      one block per (64 query rows, query head, batch), key tiles up to the diagonal. By
 *            default from dS as the dk, dv blocks stored it (bf16, one 64 x 64 tile per pair of
 *            key and query tiles): dq = dS K is then one product per tile instead of three, the
 *            two that recompute S and dP (see "dS stored" below).
 * No atomics: every gradient element is summed by one thread, in a fixed order (deterministic).
 */
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention_mma.h"
#include "cuda_check.h"
#include "mma_tiles.cuh"

static constexpr int mma_threads = 128; /* 4 warps */
static constexpr int mma_tile = 64;     /* rows of a block's own tile (queries or keys) */
static constexpr float mma_log2e = 1.4426950408889634f;

__device__ static inline float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(full_warp, x, 1));
    return fmaxf(x, __shfl_xor_sync(full_warp, x, 2));
}
__device__ static inline float quad_sum(float x) {
    x += __shfl_xor_sync(full_warp, x, 1);
    return x + __shfl_xor_sync(full_warp, x, 2);
}

/* ---- dS stored --------------------------------------------------------------------------------
 * The dq kernel that recomputes (attention_backward_q_mma_kernel) does three products per pair of
 * tiles, S = Q K^T, dP = dout V^T and dQ += dS K, where the dk, dv kernel already had dS: seven
 * products in all for FlashAttention-2's five. FlashAttention-2 adds dq from the dk, dv blocks
 * with atomics, which makes the sums' order, and so the bits, change from run to run. Here the dk,
 * dv blocks store dS^T in bf16 instead (the very operand of their dK product) and a plain kernel
 * computes dQ = dS K from it: five products and a pass over dS, still in a fixed order.
 *
 * Layout: per (batch, query head), the causal tiles (key tile kt <= query tile qt) in the order
 * qt = 0, 1, ..., each row of tiles kt = 0 .. qt, so that one dq block reads its tiles one after
 * another; a tile is dS^T [64 keys][64 queries]. Memory: B Hq n (n + 1) / 2 tiles of 8 KB (n =
 * T / 64 rounded up), quadratic in T: attention_cuda.cu takes this path only up to a size bound. */
__host__ __device__ static inline size_t ds_tiles_per_head(int tiles) {
    return (size_t)tiles * (tiles + 1) / 2;
}
__device__ static inline size_t ds_tile_offset(int b, int h, int key_tile, int query_tile, int Hq,
                                               int tiles) {
    const size_t tile = ((size_t)b * Hq + h) * ds_tiles_per_head(tiles) +
                        (size_t)query_tile * (query_tile + 1) / 2 + key_tile;
    return tile * mma_tile * mma_tile;
}

/* ---- which tile a block takes ------------------------------------------------------------------
 * A block's work is uneven under the causal mask: the forward and dq blocks of query tile i visit
 * i + 1 key tiles, the dk, dv blocks of key tile i visit n - i query tiles (n tiles in all). The
 * block scheduler starts blocks roughly in the order of their linear index (x fastest), so the
 * grid is (heads, batch, tiles), the tile's rank slowest: every long block of the grid starts
 * before any shorter one, the longest-processing-time order, which leaves only short blocks to
 * fill the SMs that finish first. With the tile on x (as before), "longest first" held only
 * within each (head, batch) row, and a long block started late set the kernel's end (by a
 * greedy count, Mistral's 4 x 1024 at 2 blocks per SM: 76 tiles' time against 67).
 * rank 0: the block with the most work. */
__host__ static dim3 mma_grid(int tiles, int heads, int B) { return dim3(heads, B, tiles); }
__device__ static inline int block_rank() { return blockIdx.z; }
__device__ static inline int block_head() { return blockIdx.x; }
__device__ static inline int block_batch() { return blockIdx.y; }

/* dst[col], dst[col + 1] += scale * (x0, x1), rounded once to bf16 (dst 4-byte aligned): one
 * 4-byte load and store for the pair. */
__device__ static inline void add_pair(floatX *dst, float scale, float x0, float x1) {
    uint32_t bits;
#ifdef __CUDA_ARCH__
    bits = *reinterpret_cast<const uint32_t *>(dst);
#else
    memcpy(&bits, dst, sizeof bits);
#endif
    floatX old[2];
    memcpy(old, &bits, sizeof old);
    store2(dst, pack2f(__bfloat162float(old[0]) + scale * x0, __bfloat162float(old[1]) + scale * x1));
}

/* ---- forward ---------------------------------------------------------------------------------
 * Warp w owns query rows 16 w .. 16 w + 15 of the block's tile; a thread, rows g and g + 8. Per
 * key tile: S = Q K^T (Q's fragments stay in registers), scores scaled into the log2 domain and
 * masked, the online softmax (row max over the quad of lanes sharing a row), O = O corr + P V. */
template <int D>
__global__ static void __launch_bounds__(mma_threads)
    attention_forward_mma_kernel(floatX *out, float *lse, const floatX *q, const floatX *k,
                                 const floatX *v, int T, int Hq, int Hkv, float scale_log2) {
    constexpr int BQ = mma_tile, BK = mma_tile, LD = D + 8;
    constexpr int d_steps = D / 16, key_tiles8 = BK / 8, dim_tiles8 = D / 8;
    const int q_tile = gridDim.z - 1 - block_rank(); /* the longest rows first */
    const int h = block_head(), b = block_batch(), kv_head = h / (Hq / Hkv);
    const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, c4 = threadIdx.x % 4;
    const int q0 = q_tile * BQ, q_last = min(q0 + BQ, T) - 1;
    const int t0 = q0 + 16 * warp + g, t1 = t0 + 8; /* this thread's two query rows */

    extern __shared__ float mma_smem[];
    floatX *Qs = (floatX *)mma_smem; /* [BQ][LD] */
    floatX *Ks = Qs + BQ * LD;       /* [BK][LD] */
    floatX *Vs = Ks + BK * LD;       /* [BK][LD] */

    const size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
    const floatX *q_bh = q + ((size_t)b * T * Hq + h) * D;
    const floatX *k_bh = k + ((size_t)b * T * Hkv + kv_head) * D;
    const floatX *v_bh = v + ((size_t)b * T * Hkv + kv_head) * D;
    load_tile<D>(Qs, q_bh, q0, BQ, T, q_stride);
    load_tile<D>(Ks, k_bh, 0, BK, T, kv_stride);
    tiles_arrived();
    __syncthreads();
    uint32_t qf[d_steps][4];
#pragma unroll
    for (int s = 0; s < d_steps; s++) load_a(qf[s], Qs, LD, 16 * warp, 16 * s);

    float o[dim_tiles8][4];
    zero_tiles(o);
    float m0 = -INFINITY, m1 = -INFINITY; /* running row max, log2 domain */
    float l0 = 0.0f, l1 = 0.0f;           /* this thread's part of the row sums */

    /* On entry to each trip Ks holds this tile's keys and nobody reads Vs: V travels during
     * S = Q K^T and the softmax, the next K during O += P V. */
    for (int k0 = 0; k0 <= q_last; k0 += BK) {
        load_tile<D>(Vs, v_bh, k0, BK, T, kv_stride);

        float s[key_tiles8][4];
        zero_tiles(s);
#pragma unroll
        for (int j = 0; j < key_tiles8; j += 2)
#pragma unroll
            for (int d = 0; d < d_steps; d++) {
                uint32_t kb[4];
                load_b_rows(kb, Ks, LD, 8 * j, 16 * d);
                mma16816(s[j], qf[d], kb[0], kb[1]);
                mma16816(s[j + 1], qf[d], kb[2], kb[3]);
            }
        /* keys after a row's query are masked (and keys past T: they come after every row < T) */
        const bool diagonal = k0 + BK - 1 > q0;
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int j = 0; j < key_tiles8; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int key = k0 + 8 * j + 2 * c4 + e;
                float x0 = s[j][e] * scale_log2, x1 = s[j][2 + e] * scale_log2;
                if (diagonal && key > t0) x0 = -INFINITY;
                if (diagonal && key > t1) x1 = -INFINITY;
                s[j][e] = x0;
                s[j][2 + e] = x1;
                mx0 = fmaxf(mx0, x0);
                mx1 = fmaxf(mx1, x1);
            }
        const float new0 = fmaxf(m0, quad_max(mx0)), new1 = fmaxf(m1, quad_max(mx1));
        /* a row with nothing visible yet keeps O = 0, l = 0 (cannot happen for rows < T) */
        const float base0 = new0 == -INFINITY ? 0.0f : new0, base1 = new1 == -INFINITY ? 0.0f : new1;
        const float corr0 = exp2f(m0 - base0), corr1 = exp2f(m1 - base1);
        m0 = new0;
        m1 = new1;
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int j = 0; j < key_tiles8; j++) {
            s[j][0] = exp2f(s[j][0] - base0);
            s[j][1] = exp2f(s[j][1] - base0);
            s[j][2] = exp2f(s[j][2] - base1);
            s[j][3] = exp2f(s[j][3] - base1);
            sum0 += s[j][0] + s[j][1];
            sum1 += s[j][2] + s[j][3];
        }
        l0 = l0 * corr0 + sum0;
        l1 = l1 * corr1 + sum1;
        tiles_arrived();
        __syncthreads(); /* V is in; every warp is done with Ks */
        if (k0 + BK <= q_last) load_tile<D>(Ks, k_bh, k0 + BK, BK, T, kv_stride);
#pragma unroll
        for (int n = 0; n < dim_tiles8; n++) {
            o[n][0] *= corr0;
            o[n][1] *= corr0;
            o[n][2] *= corr1;
            o[n][3] *= corr1;
        }
        mma_c_times_tile<BK / 16>(o, s, Vs, LD); /* O += P V */
        tiles_arrived();
        __syncthreads(); /* the next K is in; every warp is done with Vs */
    }

    l0 = quad_sum(l0);
    l1 = quad_sum(l1);
    floatX *out_bh = out + ((size_t)b * T * Hq + h) * D;
#pragma unroll
    for (int n = 0; n < dim_tiles8; n++) {
        const int col = 8 * n + 2 * c4;
        if (t0 < T) store2(out_bh + (size_t)t0 * q_stride + col, pack2f(o[n][0] / l0, o[n][1] / l0));
        if (t1 < T) store2(out_bh + (size_t)t1 * q_stride + col, pack2f(o[n][2] / l1, o[n][3] / l1));
    }
    const float ln2 = 0.6931471805599453f; /* the log2-domain max back to natural units */
    float *lse_bh = lse + ((size_t)b * Hq + h) * T;
    if (c4 == 0 && t0 < T) lse_bh[t0] = m0 * ln2 + logf(l0);
    if (c4 == 0 && t1 < T) lse_bh[t1] = m1 * ln2 + logf(l1);
}

/* ---- backward --------------------------------------------------------------------------------
 * With P = exp(s scale - lse) (causal), Delta_t = dout_t . out_t:
 *   dP = dout v^T,  dS = P (dP - Delta),  dv += P^T dout,  dk += scale dS^T q,  dq += scale dS k.
 *
 * dk, dv: warp w owns keys 16 w .. 16 w + 15 of the block's 64; per query tile of BQ rows it
 * computes S^T = K Q^T and dP^T = V dout^T (keys x queries), turns them into P^T and dS^T in
 * place, and adds P^T dout and dS^T Q into its accumulators. BQ = 32 at D = 128 keeps the
 * registers (two D-wide accumulators) under the limit.
 *
 * Under grouped-query attention a block either loops over the group's query heads (partial_dk ==
 * NULL: a block per KV head) or takes one query head (a block per query head) and writes its
 * unscaled fp32 share into partial_dk / partial_dv [B][T][Hq][D], which
 * attention_kv_group_sum_kernel then adds up in head order. The first gives the blocks of the
 * first key tiles group times the work (they see every query tile of every head: at T = 1024, 64
 * tiles against 4 for the last); measured on an H100 with the blocks in row order, it kept the SMs
 * that finished early idle. Split by head, there are group times more blocks of at most T / 64
 * tiles. In the longest-first order both may balance (PAFT_ATTENTION_KV_PER_GROUP=1 takes the
 * first, to compare).
 *
 * ds_t (or NULL): where the block also stores dS^T, for attention_backward_q_from_ds_kernel. It
 * then visits the query rows up to T rounded up to a multiple of 64, so that every element of every
 * stored tile is written: past T, P and so dS are 0. */
template <int D, int BQ>
__global__ static void __launch_bounds__(mma_threads)
    attention_backward_kv_mma_kernel(floatX *dk, floatX *dv, float *partial_dk, float *partial_dv,
                                     floatX *ds_t, const floatX *dout, const float *lse,
                                     const float *delta, const floatX *q, const floatX *k,
                                     const floatX *v, int T, int Hq, int Hkv, float scale_log2,
                                     float scale) {
    constexpr int BK = mma_tile, LD = D + 8;
    constexpr int d_steps = D / 16, query_tiles8 = BQ / 8, dim_tiles8 = D / 8;
    static_assert(mma_tile % BQ == 0, "query sub-tiles must not straddle a stored dS tile");
    const int group = Hq / Hkv;
    const int tiles = (T + mma_tile - 1) / mma_tile;
    const int q_end = ds_t ? tiles * mma_tile : T; /* the first query row not visited */
    const bool per_head = partial_dk != nullptr;
    const int k_tile = block_rank(), b = block_batch(); /* most work first */
    const int kv_head = per_head ? block_head() / group : block_head();
    const int h_begin = per_head ? block_head() : kv_head * group;
    const int h_end = per_head ? h_begin + 1 : (kv_head + 1) * group;
    const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, c4 = threadIdx.x % 4;
    const int k0 = k_tile * BK;
    const int key0 = k0 + 16 * warp + g, key1 = key0 + 8; /* this thread's two keys */
    /* where this thread stores dS^T in query tile 0 of head h_begin, or NULL (computed once here:
     * per tile it cost the D = 64 kernel 27 registers and a block per SM) */
    floatX *ds_thread = ds_t ? ds_t + ds_tile_offset(b, h_begin, k_tile, 0, Hq, tiles) +
                                   (16 * warp + g) * mma_tile + 2 * c4
                             : nullptr;

    extern __shared__ float mma_smem[];
    floatX *Ks = (floatX *)mma_smem;              /* [BK][LD] */
    floatX *Vs = Ks + BK * LD;                    /* [BK][LD] */
    floatX *Q_buf = Vs + BK * LD;                 /* [2][BQ][LD] query tiles, two buffers */
    floatX *dO_buf = Q_buf + 2 * BQ * LD;         /* [2][BQ][LD] their dout */
    float *lse_buf = (float *)(dO_buf + 2 * BQ * LD); /* [2][BQ] lse */
    float *delta_buf = lse_buf + 2 * BQ;          /* [2][BQ] */

    const size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
    const size_t kv_offset = ((size_t)b * T * Hkv + kv_head) * D;
    load_tile<D>(Ks, k + kv_offset, k0, BK, T, kv_stride);
    load_tile<D>(Vs, v + kv_offset, k0, BK, T, kv_stride);

    float dk_acc[dim_tiles8][4], dv_acc[dim_tiles8][4];
    zero_tiles(dk_acc);
    zero_tiles(dv_acc);

    /* The query tiles (h, q0) this block visits, heads in order and from the keys' tile on
     * (earlier queries cannot see these keys): tile i is read from buffer i % 2 while tile i + 1
     * travels into the other. */
    auto load_queries = [&](int buffer, int head, int first) {
        const size_t q_offset = ((size_t)b * T * Hq + head) * D;
        const size_t stat_offset = ((size_t)b * Hq + head) * T;
        load_tile<D>(Q_buf + buffer * BQ * LD, q + q_offset, first, BQ, T, q_stride);
        load_tile<D>(dO_buf + buffer * BQ * LD, dout + q_offset, first, BQ, T, q_stride);
        for (int r = threadIdx.x; r < BQ; r += blockDim.x) { /* with the tiles, asynchronously */
            const int t = first + r;
            copy_float_async(lse_buf + buffer * BQ + r, t < T ? lse + stat_offset + t : nullptr);
            copy_float_async(delta_buf + buffer * BQ + r, t < T ? delta + stat_offset + t : nullptr);
        }
    };
    int h = h_begin, q0 = k0, buf = 0;
    load_queries(0, h, q0);
    while (h < h_end) {
        tiles_arrived();
        __syncthreads(); /* this tile is in (and K, V on the first trip); the other buffer is free */
        int next_h = h, next_q0 = q0 + BQ;
        if (next_q0 >= q_end) {
            next_h++;
            next_q0 = k0;
        }
        if (next_h < h_end) load_queries(buf ^ 1, next_h, next_q0);
        {
            const floatX *Qs = Q_buf + buf * BQ * LD, *dOs = dO_buf + buf * BQ * LD;
            const float *lse_s = lse_buf + buf * BQ, *delta_s = delta_buf + buf * BQ;

            float st[query_tiles8][4], dpt[query_tiles8][4];
            zero_tiles(st);
            zero_tiles(dpt);
#pragma unroll
            for (int d = 0; d < d_steps; d++) {
                uint32_t ka[4], va[4];
                load_a(ka, Ks, LD, 16 * warp, 16 * d);
                load_a(va, Vs, LD, 16 * warp, 16 * d);
#pragma unroll
                for (int j = 0; j < query_tiles8; j += 2) {
                    uint32_t qb[4], ob[4];
                    load_b_rows(qb, Qs, LD, 8 * j, 16 * d);
                    mma16816(st[j], ka, qb[0], qb[1]);
                    mma16816(st[j + 1], ka, qb[2], qb[3]);
                    load_b_rows(ob, dOs, LD, 8 * j, 16 * d);
                    mma16816(dpt[j], va, ob[0], ob[1]);
                    mma16816(dpt[j + 1], va, ob[2], ob[3]);
                }
            }
            /* P^T and dS^T in place: element (key, query) is visible when key <= query < T */
#pragma unroll
            for (int j = 0; j < query_tiles8; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int col = 8 * j + 2 * c4 + e, query = q0 + col;
                    const float row_lse = lse_s[col] * mma_log2e, row_delta = delta_s[col];
                    const float p0 = query < T && key0 <= query ? exp2f(st[j][e] * scale_log2 - row_lse) : 0.0f;
                    const float p1 = query < T && key1 <= query ? exp2f(st[j][2 + e] * scale_log2 - row_lse) : 0.0f;
                    st[j][e] = p0;
                    st[j][2 + e] = p1;
                    dpt[j][e] = p0 * (dpt[j][e] - row_delta);
                    dpt[j][2 + e] = p1 * (dpt[j][2 + e] - row_delta);
                }
            mma_c_times_tile<BQ / 16>(dv_acc, st, dOs, LD); /* dV += P^T dout */
            /* dS^T rounded to bf16 once: the operand of dK += dS^T Q, and what the dq kernel
             * reads where it is stored (rows g and g + 8 of each 16 x 16 block, 4-byte pairs) */
            uint32_t ds_a[BQ / 16][4];
#pragma unroll
            for (int kk = 0; kk < BQ / 16; kk++) a_from_c(ds_a[kk], dpt[2 * kk], dpt[2 * kk + 1]);
            if (ds_t) {
                const int q_tile = q0 / mma_tile;
                floatX *row0 = ds_thread + q0 % mma_tile +
                               ((size_t)(h - h_begin) * ds_tiles_per_head(tiles) +
                                (size_t)q_tile * (q_tile + 1) / 2) * (mma_tile * mma_tile);
#pragma unroll
                for (int kk = 0; kk < BQ / 16; kk++) {
                    store2(row0 + 16 * kk, ds_a[kk][0]);
                    store2(row0 + 8 * mma_tile + 16 * kk, ds_a[kk][1]);
                    store2(row0 + 16 * kk + 8, ds_a[kk][2]);
                    store2(row0 + 8 * mma_tile + 16 * kk + 8, ds_a[kk][3]);
                }
            }
            mma_a_times_tile<BQ / 16>(dk_acc, ds_a, Qs, LD); /* dK += dS^T Q */
        }
        h = next_h;
        q0 = next_q0;
        buf ^= 1;
    }

    if (per_head) { /* this head's share, unscaled */
        const size_t offset = ((size_t)b * T * Hq + h_begin) * D;
#pragma unroll
        for (int n = 0; n < dim_tiles8; n++) {
            const int col = 8 * n + 2 * c4;
            float *pk = partial_dk + offset + col, *pv = partial_dv + offset + col;
            if (key0 < T) {
                pk[(size_t)key0 * q_stride] = dk_acc[n][0];
                pk[(size_t)key0 * q_stride + 1] = dk_acc[n][1];
                pv[(size_t)key0 * q_stride] = dv_acc[n][0];
                pv[(size_t)key0 * q_stride + 1] = dv_acc[n][1];
            }
            if (key1 < T) {
                pk[(size_t)key1 * q_stride] = dk_acc[n][2];
                pk[(size_t)key1 * q_stride + 1] = dk_acc[n][3];
                pv[(size_t)key1 * q_stride] = dv_acc[n][2];
                pv[(size_t)key1 * q_stride + 1] = dv_acc[n][3];
            }
        }
        return;
    }
    floatX *dk_b = dk + kv_offset, *dv_b = dv + kv_offset;
#pragma unroll
    for (int n = 0; n < dim_tiles8; n++) {
        const int col = 8 * n + 2 * c4;
        if (key0 < T) {
            add_pair(dk_b + (size_t)key0 * kv_stride + col, scale, dk_acc[n][0], dk_acc[n][1]);
            add_pair(dv_b + (size_t)key0 * kv_stride + col, 1.0f, dv_acc[n][0], dv_acc[n][1]);
        }
        if (key1 < T) {
            add_pair(dk_b + (size_t)key1 * kv_stride + col, scale, dk_acc[n][2], dk_acc[n][3]);
            add_pair(dv_b + (size_t)key1 * kv_stride + col, 1.0f, dv_acc[n][2], dv_acc[n][3]);
        }
    }
}

/* dk += scale * (sum over the group's heads of partial_dk), dv += sum of partial_dv, the heads in
 * order: one thread per (b, t, KV head, d). */
__global__ static void attention_kv_group_sum_kernel(floatX *dk, floatX *dv, const float *partial_dk,
                                                     const float *partial_dv, size_t rows_kv,
                                                     int Hq, int Hkv, int D, float scale) {
    const size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; /* ((b T + t) Hkv + kvh) D + d */
    if (e >= rows_kv * D) return;
    const int d = (int)(e % D);
    const size_t row = e / D; /* (b T + t) Hkv + kv_head */
    const int kv_head = (int)(row % Hkv), group = Hq / Hkv;
    const size_t bt = row / Hkv;
    const float *pk = partial_dk + (bt * Hq + (size_t)kv_head * group) * D + d;
    const float *pv = partial_dv + (bt * Hq + (size_t)kv_head * group) * D + d;
    float sum_k = 0.0f, sum_v = 0.0f;
    for (int i = 0; i < group; i++) {
        sum_k += pk[(size_t)i * D];
        sum_v += pv[(size_t)i * D];
    }
    dk[e] = __float2bfloat16(__bfloat162float(dk[e]) + scale * sum_k);
    dv[e] = __float2bfloat16(__bfloat162float(dv[e]) + sum_v);
}

/* dq: warp w owns query rows 16 w .. 16 w + 15; per key tile of BK keys (up to the diagonal):
 * S = Q K^T and dP = dout V^T (Q's and dout's fragments stay in registers), dS in place, and
 * dQ += dS K. BK = 32 at D = 128, for the registers. */
template <int D, int BK>
__global__ static void __launch_bounds__(mma_threads)
    attention_backward_q_mma_kernel(floatX *dq, const floatX *dout, const float *lse,
                                    const float *delta, const floatX *q, const floatX *k,
                                    const floatX *v, int T, int Hq, int Hkv, float scale_log2,
                                    float scale) {
    constexpr int BQ = mma_tile, LD = D + 8;
    constexpr int d_steps = D / 16, key_tiles8 = BK / 8, dim_tiles8 = D / 8;
    const int q_tile = gridDim.z - 1 - block_rank(); /* the longest rows first */
    const int h = block_head(), b = block_batch(), kv_head = h / (Hq / Hkv);
    const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, c4 = threadIdx.x % 4;
    const int q0 = q_tile * BQ, q_last = min(q0 + BQ, T) - 1;
    const int t0 = q0 + 16 * warp + g, t1 = t0 + 8;

    extern __shared__ float mma_smem[];
    floatX *Qs = (floatX *)mma_smem;   /* [BQ][LD] */
    floatX *dOs = Qs + BQ * LD;        /* [BQ][LD] */
    floatX *K_buf = dOs + BQ * LD;     /* [2][BK][LD] key tiles, two buffers */
    floatX *V_buf = K_buf + 2 * BK * LD; /* [2][BK][LD] */

    const size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
    const size_t q_offset = ((size_t)b * T * Hq + h) * D;
    const size_t kv_offset = ((size_t)b * T * Hkv + kv_head) * D;
    const size_t stat_offset = ((size_t)b * Hq + h) * T;
    load_tile<D>(Qs, q + q_offset, q0, BQ, T, q_stride);
    load_tile<D>(dOs, dout + q_offset, q0, BQ, T, q_stride);
    load_tile<D>(K_buf, k + kv_offset, 0, BK, T, kv_stride);
    load_tile<D>(V_buf, v + kv_offset, 0, BK, T, kv_stride);
    const float lse0 = t0 < T ? lse[stat_offset + t0] * mma_log2e : 0.0f;
    const float lse1 = t1 < T ? lse[stat_offset + t1] * mma_log2e : 0.0f;
    const float delta0 = t0 < T ? delta[stat_offset + t0] : 0.0f;
    const float delta1 = t1 < T ? delta[stat_offset + t1] : 0.0f;
    tiles_arrived();
    __syncthreads();
    uint32_t qf[d_steps][4], of[d_steps][4];
#pragma unroll
    for (int d = 0; d < d_steps; d++) {
        load_a(qf[d], Qs, LD, 16 * warp, 16 * d);
        load_a(of[d], dOs, LD, 16 * warp, 16 * d);
    }
    float dq_acc[dim_tiles8][4];
    zero_tiles(dq_acc);

    /* key tile i is read from buffer i % 2 while tile i + 1 travels into the other */
    for (int k0 = 0, buf = 0; k0 <= q_last; k0 += BK, buf ^= 1) {
        tiles_arrived();
        __syncthreads(); /* this tile is in; every warp is done with the other buffer */
        if (k0 + BK <= q_last) {
            load_tile<D>(K_buf + (buf ^ 1) * BK * LD, k + kv_offset, k0 + BK, BK, T, kv_stride);
            load_tile<D>(V_buf + (buf ^ 1) * BK * LD, v + kv_offset, k0 + BK, BK, T, kv_stride);
        }
        const floatX *Ks = K_buf + buf * BK * LD, *Vs = V_buf + buf * BK * LD;

        float s[key_tiles8][4], dp[key_tiles8][4];
        zero_tiles(s);
        zero_tiles(dp);
#pragma unroll
        for (int j = 0; j < key_tiles8; j += 2)
#pragma unroll
            for (int d = 0; d < d_steps; d++) {
                uint32_t kb[4], vb[4];
                load_b_rows(kb, Ks, LD, 8 * j, 16 * d);
                mma16816(s[j], qf[d], kb[0], kb[1]);
                mma16816(s[j + 1], qf[d], kb[2], kb[3]);
                load_b_rows(vb, Vs, LD, 8 * j, 16 * d);
                mma16816(dp[j], of[d], vb[0], vb[1]);
                mma16816(dp[j + 1], of[d], vb[2], vb[3]);
            }
        /* dS in place of S: keys after a row's query (and past T) have P = 0 */
#pragma unroll
        for (int j = 0; j < key_tiles8; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int key = k0 + 8 * j + 2 * c4 + e;
                const float p0 = t0 < T && key <= t0 ? exp2f(s[j][e] * scale_log2 - lse0) : 0.0f;
                const float p1 = t1 < T && key <= t1 ? exp2f(s[j][2 + e] * scale_log2 - lse1) : 0.0f;
                s[j][e] = p0 * (dp[j][e] - delta0);
                s[j][2 + e] = p1 * (dp[j][2 + e] - delta1);
            }
        mma_c_times_tile<BK / 16>(dq_acc, s, Ks, LD); /* dQ += dS K */
    }

    floatX *dq_bh = dq + q_offset;
#pragma unroll
    for (int n = 0; n < dim_tiles8; n++) {
        const int col = 8 * n + 2 * c4;
        if (t0 < T) add_pair(dq_bh + (size_t)t0 * q_stride + col, scale, dq_acc[n][0], dq_acc[n][1]);
        if (t1 < T) add_pair(dq_bh + (size_t)t1 * q_stride + col, scale, dq_acc[n][2], dq_acc[n][3]);
    }
}

/* dq from the stored dS: warp w owns query rows 16 w .. 16 w + 15 of the block's 64; per key tile
 * up to the diagonal, dQ += dS K with dS read transposed from the stored dS^T tile. The dS tiles
 * and the key tiles are double-buffered. Rows past T hold what the tail of the last tile held
 * (zeros, see the dk, dv kernel) and are not written. */
template <int D>
__global__ static void __launch_bounds__(mma_threads)
    attention_backward_q_from_ds_kernel(floatX *dq, const floatX *ds_t, const floatX *k, int T,
                                        int Hq, int Hkv, float scale) {
    constexpr int BQ = mma_tile, BK = mma_tile, LD = D + 8, LDS = mma_tile + 8;
    constexpr int dim_tiles8 = D / 8;
    const int tiles = gridDim.z, q_tile = tiles - 1 - block_rank(); /* the longest rows first */
    const int h = block_head(), b = block_batch(), kv_head = h / (Hq / Hkv);
    const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, c4 = threadIdx.x % 4;
    const int t0 = q_tile * BQ + 16 * warp + g, t1 = t0 + 8;

    extern __shared__ float mma_smem[];
    floatX *dS_buf = (floatX *)mma_smem;       /* [2][BK][LDS] dS^T tiles, two buffers */
    floatX *K_buf = dS_buf + 2 * BK * LDS;     /* [2][BK][LD] key tiles */

    const size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
    const size_t kv_offset = ((size_t)b * T * Hkv + kv_head) * D;
    const floatX *ds_row = ds_t + ds_tile_offset(b, h, 0, q_tile, Hq, tiles); /* tiles kt = 0.. */
    load_tile<mma_tile>(dS_buf, ds_row, 0, BK, BK, mma_tile);
    load_tile<D>(K_buf, k + kv_offset, 0, BK, T, kv_stride);
    float dq_acc[dim_tiles8][4];
    zero_tiles(dq_acc);

    /* tile kt is read from buffer kt % 2 while tile kt + 1 travels into the other */
    for (int kt = 0, buf = 0; kt <= q_tile; kt++, buf ^= 1) {
        tiles_arrived();
        __syncthreads(); /* this tile is in; every warp is done with the other buffer */
        if (kt < q_tile) {
            load_tile<mma_tile>(dS_buf + (buf ^ 1) * BK * LDS, ds_row + (size_t)(kt + 1) * BK * BQ,
                                0, BK, BK, mma_tile);
            load_tile<D>(K_buf + (buf ^ 1) * BK * LD, k + kv_offset, (kt + 1) * BK, BK, T, kv_stride);
        }
        const floatX *dSs = dS_buf + buf * BK * LDS, *Ks = K_buf + buf * BK * LD;
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            uint32_t a[4];
            load_a_trans(a, dSs, LDS, 16 * warp, 16 * kk);
#pragma unroll
            for (int n = 0; n < dim_tiles8; n += 2) {
                uint32_t kb[4];
                load_b_cols(kb, Ks, LD, 16 * kk, 8 * n);
                mma16816(dq_acc[n], a, kb[0], kb[1]);
                mma16816(dq_acc[n + 1], a, kb[2], kb[3]);
            }
        }
    }

    floatX *dq_bh = dq + ((size_t)b * T * Hq + h) * D;
#pragma unroll
    for (int n = 0; n < dim_tiles8; n++) {
        const int col = 8 * n + 2 * c4;
        if (t0 < T) add_pair(dq_bh + (size_t)t0 * q_stride + col, scale, dq_acc[n][0], dq_acc[n][1]);
        if (t1 < T) add_pair(dq_bh + (size_t)t1 * q_stride + col, scale, dq_acc[n][2], dq_acc[n][3]);
    }
}

/* ---- host side ------------------------------------------------------------------------------- */

extern "C" int attention_mma_supports(int D) { return D == 64 || D == 128; }

extern "C" size_t attention_backward_mma_partials_bytes(int B, int T, int Hq, int Hkv, int D) {
    return Hq > Hkv ? 2 * (size_t)B * T * Hq * D * sizeof(float) : 0;
}

extern "C" size_t attention_backward_mma_ds_bytes(int B, int T, int Hq) {
    const int tiles = (T + mma_tile - 1) / mma_tile;
    return (size_t)B * Hq * ds_tiles_per_head(tiles) * mma_tile * mma_tile * sizeof(floatX);
}

/* The kernels' opt-in to their shared memory, naming the op and D in an error. */
template <typename Kernel>
static void mma_allow_smem(Kernel kernel, size_t bytes, int D) {
    char what[64];
    snprintf(what, sizeof what, "attention (MMA kernels), D = %d,", D);
    cuda_allow_shared_memory(kernel, bytes, what);
}

static size_t tile_bytes(int rows, int D) { return (size_t)rows * (D + 8) * sizeof(floatX); }

template <int D>
static void launch_forward(floatX *out, float *lse, const floatX *q, const floatX *k,
                           const floatX *v, int B, int T, int Hq, int Hkv) {
    const size_t smem = 3 * tile_bytes(mma_tile, D);
    mma_allow_smem(attention_forward_mma_kernel<D>, smem, D);
    const float scale_log2 = (float)(mma_log2e / sqrt((double)D));
    const dim3 grid = mma_grid((T + mma_tile - 1) / mma_tile, Hq, B);
    attention_forward_mma_kernel<D><<<grid, mma_threads, smem>>>(out, lse, q, k, v, T, Hq, Hkv, scale_log2);
    CHECK_LAUNCH();
}

template <int D, int BQ_KV, int BK_Q>
static void launch_backward(floatX *dq, floatX *dk, floatX *dv, const floatX *dout,
                            const float *lse, const float *delta, float *partials, floatX *ds_t,
                            const floatX *q, const floatX *k, const floatX *v, int B, int T,
                            int Hq, int Hkv) {
    const float scale = (float)(1.0 / sqrt((double)D)), scale_log2 = mma_log2e * scale;
    const int tiles = (T + mma_tile - 1) / mma_tile;
    const size_t smem_kv = 2 * tile_bytes(mma_tile, D) + 4 * tile_bytes(BQ_KV, D) + 4 * BQ_KV * sizeof(float);
    mma_allow_smem(attention_backward_kv_mma_kernel<D, BQ_KV>, smem_kv, D);
    if (partials) { /* grouped-query: one block per query head, then the sum over each group */
        float *partial_dk = partials, *partial_dv = partials + (size_t)B * T * Hq * D;
        attention_backward_kv_mma_kernel<D, BQ_KV><<<mma_grid(tiles, Hq, B), mma_threads, smem_kv>>>(dk, dv, partial_dk, partial_dv, ds_t, dout, lse, delta, q, k, v, T, Hq, Hkv, scale_log2, scale);
        CHECK_LAUNCH();
        const size_t rows_kv = (size_t)B * T * Hkv, n = rows_kv * D;
        attention_kv_group_sum_kernel<<<(unsigned)((n + 255) / 256), 256>>>(dk, dv, partial_dk, partial_dv, rows_kv, Hq, Hkv, D, scale);
        CHECK_LAUNCH();
    } else {
        attention_backward_kv_mma_kernel<D, BQ_KV><<<mma_grid(tiles, Hkv, B), mma_threads, smem_kv>>>(dk, dv, nullptr, nullptr, ds_t, dout, lse, delta, q, k, v, T, Hq, Hkv, scale_log2, scale);
        CHECK_LAUNCH();
    }
    if (ds_t) { /* dq = dS K from the stored dS */
        const size_t smem_ds = 2 * tile_bytes(mma_tile, mma_tile) + 2 * tile_bytes(mma_tile, D);
        mma_allow_smem(attention_backward_q_from_ds_kernel<D>, smem_ds, D);
        attention_backward_q_from_ds_kernel<D><<<mma_grid(tiles, Hq, B), mma_threads, smem_ds>>>(dq, ds_t, k, T, Hq, Hkv, scale);
        CHECK_LAUNCH();
        return;
    }
    const size_t smem_q = 2 * tile_bytes(mma_tile, D) + 4 * tile_bytes(BK_Q, D);
    mma_allow_smem(attention_backward_q_mma_kernel<D, BK_Q>, smem_q, D);
    attention_backward_q_mma_kernel<D, BK_Q><<<mma_grid(tiles, Hq, B), mma_threads, smem_q>>>(dq, dout, lse, delta, q, k, v, T, Hq, Hkv, scale_log2, scale);
    CHECK_LAUNCH();
}

/* cp.async moves 16-byte pieces: a tensor that does not start on 16 bytes would fault with an
 * illegal address far from its cause, so say which one here. (paft's arena and scratch parts are
 * 256-byte aligned; rows are D = 64 or 128 elements.) */
static void mma_check_aligned(const char *op, const char *name, const void *p) {
    if (p && (uintptr_t)p % 16 != 0)
        paft_fatal(__FILE__, __LINE__, "%s: %s at %p is not 16-byte aligned", op, name, p);
}

extern "C" void attention_forward_mma_cuda(floatX *out, float *lse, const floatX *q,
                                           const floatX *k, const floatX *v, int B, int T, int Hq,
                                           int Hkv, int D) {
    if (B <= 0 || T <= 0) return;
    const char *op = "attention_forward_mma_cuda";
    mma_check_aligned(op, "q", q);
    mma_check_aligned(op, "k", k);
    mma_check_aligned(op, "v", v);
    if (D == 64) launch_forward<64>(out, lse, q, k, v, B, T, Hq, Hkv);
    else if (D == 128) launch_forward<128>(out, lse, q, k, v, B, T, Hq, Hkv);
    else paft_fatal(__FILE__, __LINE__, "attention_forward_mma_cuda: head dimension %d", D);
}

extern "C" void attention_backward_mma_cuda(floatX *dq, floatX *dk, floatX *dv,
                                            const floatX *dout, const float *lse,
                                            const float *delta, float *partials, floatX *ds_t,
                                            const floatX *q,
                                            const floatX *k, const floatX *v, int B, int T, int Hq,
                                            int Hkv, int D) {
    if (B <= 0 || T <= 0) return;
    const char *op = "attention_backward_mma_cuda";
    mma_check_aligned(op, "q", q);
    mma_check_aligned(op, "k", k);
    mma_check_aligned(op, "v", v);
    mma_check_aligned(op, "dout", dout);
    mma_check_aligned(op, "the stored dS", ds_t);
    /* PAFT_ATTENTION_KV_PER_GROUP=1: under GQA too, one dk, dv block per KV head looping over its
     * group's heads, without the per-head shares (the scratch keeps room for them). Measured in
     * row order it was slower (the first key tiles' blocks had all the work); in the longest-first
     * order it may not be, and it saves the shares' traffic: a switch to compare on a GPU. */
    const char *per_group = getenv("PAFT_ATTENTION_KV_PER_GROUP");
    if (Hq == Hkv || (per_group && per_group[0] == '1')) partials = nullptr;
    else if (!partials)
        paft_fatal(__FILE__, __LINE__, "attention_backward_mma_cuda: no scratch for the per-head shares");
    if (D == 64) launch_backward<64, 64, 64>(dq, dk, dv, dout, lse, delta, partials, ds_t, q, k, v, B, T, Hq, Hkv);
    else if (D == 128) launch_backward<128, 32, 32>(dq, dk, dv, dout, lse, delta, partials, ds_t, q, k, v, B, T, Hq, Hkv);
    else paft_fatal(__FILE__, __LINE__, "attention_backward_mma_cuda: head dimension %d", D);
}
