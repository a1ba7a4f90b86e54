/*
 * mma_tiles.cuh - bf16 tiles on register-level tensor cores, shared by the kernels built on
 * mma.sync.m16n8k16 (attention_mma.cu, thin_gemm_cuda.cu): operand packing, 16-byte and
 * asynchronous (cp.async) tile loads into shared memory, the MMA itself, ldmatrix, and the A and
 * B operands of a 16 x 16 block in each orientation.
 *
 * The MMA's operand layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with lane = 4 g + c
 * (g = lane / 4, c = lane % 4):
 *   A (16 x 16, row-major), 4 registers of two bf16: {A[g][2c..2c+1], A[g+8][2c..], A[g][2c+8..],
 *     A[g+8][2c+8..]}
 *   B (16 x 8, k x n),      2 registers:              {B[2c..2c+1][g], B[2c+8..2c+9][g]}
 *   C (16 x 8, fp32),       4 floats:                 {C[g][2c], C[g][2c+1], C[g+8][2c], C[g+8][2c+1]}
 * Shared tiles have rows of W + 8 elements: 16 bytes of padding put the 8 rows a quarter-warp
 * reads in different banks.
 *
 * Off the GPU (the emulator, tests/cuda/emulator) and on GPUs before sm_80 the MMA is computed
 * from the same registers through warp shuffles, and ldmatrix's rows come through shuffles: the
 * layouts above are what both implement.
 */
#ifndef PAFT_MMA_TILES_CUH
#define PAFT_MMA_TILES_CUH

#include <stdint.h>
#include <string.h>

#include "ops_cuda.h"

static constexpr unsigned full_warp = 0xffffffffu;

__device__ static inline uint32_t bf16_bits(floatX x) {
    uint16_t bits;
    memcpy(&bits, &x, sizeof bits);
    return bits;
}

/* Two bf16 in one register, the lower index in the low half (the MMA operands' packing). */
__device__ static inline uint32_t pack2(floatX lo, floatX hi) {
    return bf16_bits(lo) | (bf16_bits(hi) << 16);
}
__device__ static inline uint32_t pack2f(float lo, float hi) {
    return pack2(__float2bfloat16(lo), __float2bfloat16(hi));
}

#if !(defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750)
/* Elements i and i + 1 of a shared tile (i even: 4-byte aligned), for ldmatrix's stand-in. */
__device__ static inline uint32_t load2(const floatX *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
#endif

/* 8 bf16 (16 bytes, aligned) from src to dst, or zeros. */
__device__ static inline void copy8(floatX *dst, const floatX *src) {
#ifdef __CUDA_ARCH__
    *reinterpret_cast<uint4 *>(dst) = src ? *reinterpret_cast<const uint4 *>(src) : make_uint4(0, 0, 0, 0);
#else
    if (src) memcpy(dst, src, 16);
    else memset(dst, 0, 16);
#endif
}

/* copy8, asynchronous on sm_80 and later (cp.async: global to shared without passing through
 * registers): the thread goes on while the data travels, so the next tile's loads overlap this
 * tile's MMAs. Zeros are plain stores. tiles_arrived() waits for every copy the thread issued; a
 * __syncthreads() after it makes the whole tile visible to the block. */
__device__ static inline void copy8_async(floatX *dst, const floatX *src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (src) {
        const unsigned dst_shared = (unsigned)__cvta_generic_to_shared(dst);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst_shared), "l"(src)
                     : "memory");
    } else {
        copy8(dst, nullptr);
    }
#else
    copy8(dst, src);
#endif
}

/* One float from src to dst (both 4-byte aligned), or 0: asynchronous like copy8_async, for the
 * per-row statistics that travel with a tile (a plain load would stall the thread on its
 * round trip to memory right where the tile's MMAs should start). */
__device__ static inline void copy_float_async(float *dst, const float *src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (src) {
        const unsigned dst_shared = (unsigned)__cvta_generic_to_shared(dst);
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst_shared), "l"(src)
                     : "memory");
    } else {
        *dst = 0.0f;
    }
#else
    *dst = src ? *src : 0.0f;
#endif
}

__device__ static inline void tiles_arrived() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

/* dst[r][0..W) (row stride W + 8) = columns c0 .. c0 + W - 1 of row (row0 + r) of src for
 * r < rows, zeros at or past row_end or past column cols (a multiple of 8); src's rows are
 * row_stride apart. 16-byte copies (every row starts 16-byte aligned), asynchronous: see
 * tiles_arrived(). */
template <int W>
__device__ static void load_tile_window(floatX *dst, const floatX *src, size_t row_stride,
                                        int row0, int rows, int row_end, int c0, int cols) {
    constexpr int per_row = W / 8;
    for (int e = threadIdx.x; e < rows * per_row; e += blockDim.x) {
        const int r = e / per_row, col = (e % per_row) * 8;
        const int t = row0 + r, c = c0 + col;
        copy8_async(dst + r * (W + 8) + col,
                    t < row_end && c < cols ? src + (size_t)t * row_stride + c : nullptr);
    }
}

/* The whole D-wide rows: src points at (b, t = 0, head) of a [B][T][H][D] tensor whose rows are
 * row_stride apart; zeros at or past T. */
template <int D>
__device__ static void load_tile(floatX *dst, const floatX *src, int row0, int rows, int T,
                                 size_t row_stride) {
    load_tile_window<D>(dst, src, row_stride, row0, rows, T, 0, D);
}

/* c += A B for one 16 x 16 x 8 block (the layouts above). */
__device__ static inline void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                       uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    /* Gather rows g and g + 8 of A and columns 2c and 2c + 1 of B from the lanes holding them,
     * then the 4 dot products of 16 in k order. */
    const int lane = threadIdx.x % 32, g = lane / 4, c4 = lane % 4;
    float a_lo[16], a_hi[16], b_0[16], b_1[16];
    const uint64_t a_rows = (uint64_t)a[0] | ((uint64_t)a[1] << 32);   /* k 2j.., rows g, g + 8 */
    const uint64_t a_rows8 = (uint64_t)a[2] | ((uint64_t)a[3] << 32);  /* k 2j + 8.. */
    const uint64_t b_both = (uint64_t)b0 | ((uint64_t)b1 << 32);
    for (int j = 0; j < 4; j++) {
        const uint64_t ra = __shfl_sync(full_warp, a_rows, 4 * g + j);
        const uint64_t ra8 = __shfl_sync(full_warp, a_rows8, 4 * g + j);
        const uint64_t rb0 = __shfl_sync(full_warp, b_both, 4 * (2 * c4) + j);
        const uint64_t rb1 = __shfl_sync(full_warp, b_both, 4 * (2 * c4 + 1) + j);
        const uint32_t words[4][2] = {{(uint32_t)ra, (uint32_t)ra8},           /* row g */
                                      {(uint32_t)(ra >> 32), (uint32_t)(ra8 >> 32)}, /* row g+8 */
                                      {(uint32_t)rb0, (uint32_t)(rb0 >> 32)},   /* column 2c */
                                      {(uint32_t)rb1, (uint32_t)(rb1 >> 32)}};  /* column 2c+1 */
        float *dst[4] = {a_lo, a_hi, b_0, b_1};
        for (int w = 0; w < 4; w++)
            for (int half = 0; half < 2; half++) /* k = 2j + 8 half + {0, 1} */
                for (int bit = 0; bit < 2; bit++) {
                    const uint32_t bits = ((words[w][half] >> (16 * bit)) & 0xffffu) << 16;
                    float f;
                    memcpy(&f, &bits, sizeof f);
                    dst[w][2 * j + 8 * half + bit] = f;
                }
    }
    for (int kk = 0; kk < 16; kk++) {
        c[0] += a_lo[kk] * b_0[kk];
        c[1] += a_lo[kk] * b_1[kk];
        c[2] += a_hi[kk] * b_0[kk];
        c[3] += a_hi[kk] * b_1[kk];
    }
#endif
}

/* Four 8 x 8 bf16 matrices from shared memory in one instruction (ldmatrix.x4): lane l gives the
 * address of row l % 8 of matrix l / 8 (16-byte aligned); r[i] gets, of matrix i, elements
 * (g, 2c) and (g, 2c + 1), or with Trans its transpose's: (2c, g) and (2c + 1, g). That is one
 * register of an MMA operand per matrix; read one element pair at a time, the same operands took
 * 4 to 16 shared-memory loads. Off the GPU: the row addresses come through shuffles. */
template <bool Trans>
__device__ static inline void ldmatrix_x4(uint32_t (&r)[4], const floatX *row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    const unsigned addr = (unsigned)__cvta_generic_to_shared(row);
    if (Trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(addr));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(addr));
#else
    const int lane = threadIdx.x % 32, g = lane / 4, c4 = lane % 4;
    const uint64_t mine = (uint64_t)(uintptr_t)row;
    for (int i = 0; i < 4; i++) {
        if (!Trans) {
            const floatX *p = (const floatX *)(uintptr_t)__shfl_sync(full_warp, mine, 8 * i + g);
            r[i] = load2(p + 2 * c4);
        } else {
            const floatX *p0 = (const floatX *)(uintptr_t)__shfl_sync(full_warp, mine, 8 * i + 2 * c4);
            const floatX *p1 = (const floatX *)(uintptr_t)__shfl_sync(full_warp, mine, 8 * i + 2 * c4 + 1);
            r[i] = pack2(p0[g], p1[g]);
        }
    }
#endif
}

/* The A operand of rows r .. r + 15, columns col .. col + 15 of a shared tile of stride ld: the
 * four 8 x 8 quarters in the order of the operand's registers (top left, bottom left, top right,
 * bottom right). */
__device__ static inline void load_a(uint32_t (&a)[4], const floatX *tile, int ld, int r, int col) {
    const int lane = threadIdx.x % 32, quarter = lane / 8;
    ldmatrix_x4<false>(a, tile + (r + (quarter % 2) * 8 + lane % 8) * ld + col + (quarter / 2) * 8);
}

/* The A operand of rows r .. r + 15, columns col .. col + 15 of the transpose of a shared tile:
 * A[m][k] = tile[col + k][r + m] (dq = dS K from the stored dS^T), through ldmatrix.trans. */
__device__ static inline void load_a_trans(uint32_t (&a)[4], const floatX *tile, int ld, int r,
                                           int col) {
    const int lane = threadIdx.x % 32, quarter = lane / 8;
    ldmatrix_x4<true>(a, tile + (col + (quarter / 2) * 8 + lane % 8) * ld + r + (quarter % 2) * 8);
}

/* B operands of two n-tiles, B[k][n] = tile[n0 + n][k0 + k] for n < 16, k < 16: rows of the tile
 * are B's columns (a product with a transposed tile, Q K^T). b[0], b[1]: columns n0 .. n0 + 7;
 * b[2], b[3]: n0 + 8 .. n0 + 15. */
__device__ static inline void load_b_rows(uint32_t (&b)[4], const floatX *tile, int ld, int n0,
                                          int k0) {
    const int lane = threadIdx.x % 32, quarter = lane / 8;
    ldmatrix_x4<false>(b, tile + (n0 + (quarter / 2) * 8 + lane % 8) * ld + k0 + (quarter % 2) * 8);
}

/* B operands of two n-tiles, B[k][n] = tile[k0 + k][n0 + n]: the tile as stored (P V), read
 * transposed. b[0], b[1]: columns n0 .. n0 + 7; b[2], b[3]: n0 + 8 .. n0 + 15. */
__device__ static inline void load_b_cols(uint32_t (&b)[4], const floatX *tile, int ld, int k0,
                                          int n0) {
    const int lane = threadIdx.x % 32, quarter = lane / 8;
    ldmatrix_x4<true>(b, tile + (k0 + (quarter % 2) * 8 + lane % 8) * ld + n0 + (quarter / 2) * 8);
}

/* Every accumulator of n C tiles to 0. */
template <int n>
__device__ static inline void zero_tiles(float (&c)[n][4]) {
#pragma unroll
    for (int j = 0; j < n; j++) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
}

/* The A operand made of C tiles j0 and j0 + 1 (16 columns), rounded to bf16. */
__device__ static inline void a_from_c(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
    a[0] = pack2f(c0[0], c0[1]);
    a[1] = pack2f(c0[2], c0[3]);
    a[2] = pack2f(c1[0], c1[1]);
    a[3] = pack2f(c1[2], c1[3]);
}

/* acc (16 x 8 dim_tiles8) += A V, where A (16 x 16 steps) is given as the A operands of its
 * steps and V (16 steps x 8 dim_tiles8) is a shared tile as stored. */
template <int steps, int dim_tiles8>
__device__ static inline void mma_a_times_tile(float (&acc)[dim_tiles8][4],
                                               const uint32_t (&a)[steps][4], const floatX *tile,
                                               int ld) {
#pragma unroll
    for (int kk = 0; kk < steps; kk++)
#pragma unroll
        for (int n = 0; n < dim_tiles8; n += 2) {
            uint32_t b[4];
            load_b_cols(b, tile, ld, 16 * kk, 8 * n);
            mma16816(acc[n], a[kk], b[0], b[1]);
            mma16816(acc[n + 1], a[kk], b[2], b[3]);
        }
}

/* acc (16 x 8 dim_tiles8) += C V, where C (16 x 16 steps) is the fp32 accumulators c (tiles
 * 2 kk and 2 kk + 1 as the A operand of step kk, rounded to bf16) and V (16 steps x 8 dim_tiles8)
 * is a shared tile as stored: P V in the forward, dS K for dq, P^T dout for dk, dv. */
template <int steps, int dim_tiles8>
__device__ static inline void mma_c_times_tile(float (&acc)[dim_tiles8][4],
                                               const float (&c)[2 * steps][4], const floatX *tile,
                                               int ld) {
#pragma unroll
    for (int kk = 0; kk < steps; kk++) {
        uint32_t a[1][4];
        a_from_c(a[0], c[2 * kk], c[2 * kk + 1]);
        mma_a_times_tile<1>(acc, a, tile + 16 * kk * ld, ld);
    }
}

/* Two packed bf16 to dst, dst 4-byte aligned. */
__device__ static inline void store2(floatX *dst, uint32_t pair) {
#ifdef __CUDA_ARCH__
    *reinterpret_cast<uint32_t *>(dst) = pair;
#else
    memcpy(dst, &pair, sizeof pair);
#endif
}

/* A warp's C tiles acc[n] (rows m0 .. m0 + 15, columns n0 + 8 n ..) to fp32 memory: out[m ld + n],
 * or with transposed out[n ld + m]; only rows below m_end and columns below n_end. */
template <int n_tiles8>
__device__ static inline void store_c_tiles(float *out, size_t ld, bool transposed, int m0,
                                            int m_end, int n0, int n_end,
                                            const float (&acc)[n_tiles8][4]) {
    const int g = (threadIdx.x % 32) / 4, c4 = threadIdx.x % 4;
#pragma unroll
    for (int n = 0; n < n_tiles8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int m = m0 + g + 8 * (e / 2), col = n0 + 8 * n + 2 * c4 + e % 2;
            if (m < m_end && col < n_end)
                out[transposed ? (size_t)col * ld + m : (size_t)m * ld + col] = acc[n][e];
        }
}

/* out[e] += alpha * (partial[e] + partial[n + e] + ... + partial[(count - 1) n + e]), the parts
 * in order: the fixed-order sum of the fp32 partials the split kernels leave in scratch
 * (thin_gemm_cuda.cu's chunks of tokens, l1_fused_cuda.cu's tiles). One thread per element;
 * maybe_unused: the attention files include this header without it. */
[[maybe_unused]] __global__ static void add_partial_sums_kernel(float *out, const float *partial,
                                                                size_t count, size_t n,
                                                                float alpha) {
    const size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (e >= n) return;
    float sum = 0.0f;
    for (size_t c = 0; c < count; c++) sum += partial[c * n + e];
    out[e] += alpha * sum;
}

#endif /* PAFT_MMA_TILES_CUH */
