/*
 * ops_cuda.cu - the CUDA ops of ops_cuda.h. One kernel per op, written for clarity first: one
 * block per row for most row-wise ops (reductions in fp32 through shared memory), one warp per
 * row for RMSNorm, and for the elementwise ones and RoPE a thread per group of 8 bf16 moved with
 * 16-byte accesses (one element per thread where the pointers are not 16-byte aligned). bf16 in
 * memory, fp32 in registers.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_check.h"
#include "l1_fused.h"
#include "ops_cuda.h"
#include "thin_gemm.h"

static const int block_size = 256;

static unsigned blocks_for(size_t n) { return (unsigned)((n + block_size - 1) / block_size); }

/* v combined over the block with op (sum or max; blockDim.x a multiple of 32, at most 1024); every
 * thread gets the result. Templated so the same code reduces floats and doubles. */
struct SumOp {
    template <typename R> __device__ R operator()(R a, R b) const { return a + b; }
};
struct MaxOp {
    template <typename R> __device__ R operator()(R a, R b) const { return a > b ? a : b; }
};

template <typename R, typename Op>
__device__ static R block_reduce(R v, Op op, R identity) {
    __shared__ R partial[32];
    __shared__ R total;
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int warps = blockDim.x / 32;
    v = threadIdx.x < warps ? partial[threadIdx.x] : identity;
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (threadIdx.x == 0) total = v;
    __syncthreads();
    R result = total;
    __syncthreads(); /* partial[] and total may be reused by the next call */
    return result;
}

__device__ static float block_sum(float v) { return block_reduce(v, SumOp(), 0.0f); }
__device__ static double block_sum_double(double v) { return block_reduce(v, SumOp(), 0.0); }
__device__ static float block_max(float v) { return block_reduce(v, MaxOp(), -INFINITY); }

__device__ static float bf(floatX x) { return __bfloat162float(x); }

extern "C" int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
    return n;
}

/* ---- embedding: one block per token row ---------------------------------------------------- */

__global__ static void embedding_forward_kernel(floatX *out, const int32_t *tokens,
                                                const floatX *table, int C, int vocab_start,
                                                int vocab_rows) {
    const size_t n = blockIdx.x;
    const long long row = (long long)tokens[n] - vocab_start;
    const bool in_shard = row >= 0 && row < vocab_rows;
    /* outside the shard: zeros, the tensor-parallel all-reduce of the outputs adds the owner's row */
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        out[n * C + i] = in_shard ? table[(size_t)row * C + i] : __float2bfloat16(0.0f);
}

extern "C" void embedding_forward_cuda(floatX *out, const int32_t *tokens, const floatX *table,
                                       int N, int C, int vocab_start, int vocab_rows) {
    if (N <= 0) return;
    embedding_forward_kernel<<<N, block_size>>>(out, tokens, table, C, vocab_start, vocab_rows);
    CHECK_LAUNCH();
}

/* ---- 16-byte memory accesses ------------------------------------------------------------------
 * RMSNorm, SwiGLU, the residual and RoPE do a few flops per byte: their time is the time to move
 * their bytes. One bf16 (2 bytes) per access takes eight times the load and store instructions
 * and keeps few bytes in flight per thread, short of what HBM needs to stream at full rate (they
 * took ~25 ms of a 150 ms Llama-1B step on an H100 that way), so these kernels move a Vec of 8
 * bf16 (or 4 fp32) per access when the pointers are 16-byte aligned (as the device model's arena
 * hands them out), and fall back to one element per access otherwise (a width-1 Vec: the same
 * code). On the GPU a 16-byte access is one uint4 load or store; the emulator has no vector
 * types, so its host path copies the bytes (the pattern of attention_mma.cu's copy8). */

template <typename T, int W> struct alignas(sizeof(T) * W >= 16 ? 16 : sizeof(T) * W) Vec {
    T e[W];
};

/* 16 bytes from src to dst, both 16-byte aligned */
__device__ static inline void copy16(void *dst, const void *src) {
#ifdef __CUDA_ARCH__
    *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(src);
#else
    /* the emulator: a GPU faults on a misaligned vector access ("misaligned address"), so must it */
    if ((uintptr_t)dst % 16 != 0 || (uintptr_t)src % 16 != 0)
        paft_fatal(__FILE__, __LINE__, "misaligned 16-byte access (%p <- %p)", dst, src);
    memcpy(dst, src, 16);
#endif
}

/* p[0..W): in 16-byte accesses when the Vec is a whole number of them (p is then 16-byte aligned:
 * the caller checked), element by element otherwise (W = 1, the fallback) */
template <int W, typename T> __device__ static inline Vec<T, W> load_vec(const T *p) {
    Vec<T, W> v;
    if constexpr (sizeof v % 16 == 0) {
        for (int k = 0; k < (int)(sizeof v / 16); k++)
            copy16((char *)&v + 16 * k, (const char *)p + 16 * k);
    } else {
        for (int k = 0; k < W; k++) v.e[k] = p[k];
    }
    return v;
}

template <int W, typename T> __device__ static inline void store_vec(T *p, const Vec<T, W> &v) {
    if constexpr (sizeof v % 16 == 0) {
        for (int k = 0; k < (int)(sizeof v / 16); k++)
            copy16((char *)p + 16 * k, (const char *)&v + 16 * k);
    } else {
        for (int k = 0; k < W; k++) p[k] = v.e[k];
    }
}

static bool aligned16(const void *p) { return (uintptr_t)p % 16 == 0; }

/* bf16 per 16-byte access */
static const int bf16_per_access = 8;

__device__ static float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* ---- RMSNorm: one warp per row ------------------------------------------------------------------
 * A row (C = 2048 for Llama-1B) is 64 elements per lane: a warp's shuffles sum it without shared
 * memory or block barriers, and a block of 256 threads normalises 8 rows. W = 8 (16-byte accesses)
 * when C % 8 == 0 and the pointers are aligned, W = 1 otherwise. The row is read twice (the sum,
 * then the output): the second read mostly hits the caches. */

static const int rows_per_block = block_size / 32;

static unsigned row_blocks(int N) { return (unsigned)((N + rows_per_block - 1) / rows_per_block); }

template <int W>
__global__ static void rmsnorm_forward_kernel(floatX *out, int ld_out, float *rstd,
                                              const floatX *inp, const floatX *weight, int N, int C,
                                              float eps) {
    const int lane = threadIdx.x % 32;
    const size_t row = (size_t)blockIdx.x * rows_per_block + threadIdx.x / 32;
    if (row >= (size_t)N) return; /* the whole warp leaves: no shuffle waits for it */
    const floatX *x = inp + row * C;
    float ss = 0;
    for (int i = lane * W; i < C; i += 32 * W) {
        const Vec<floatX, W> xv = load_vec<W>(x + i);
        for (int k = 0; k < W; k++) {
            const float xi = bf(xv.e[k]);
            ss += xi * xi;
        }
    }
    ss = warp_sum(ss);
    const float r = rsqrtf(ss / C + eps);
    if (lane == 0) rstd[row] = r;
    for (int i = lane * W; i < C; i += 32 * W) {
        const Vec<floatX, W> xv = load_vec<W>(x + i), wv = load_vec<W>(weight + i);
        Vec<floatX, W> y;
        for (int k = 0; k < W; k++) y.e[k] = __float2bfloat16(bf(xv.e[k]) * r * bf(wv.e[k]));
        store_vec(out + row * ld_out + i, y);
    }
}

extern "C" void rmsnorm_forward_ld_cuda(floatX *out, int ld_out, float *rstd, const floatX *inp,
                                        const floatX *weight, int N, int C, float eps) {
    if (N <= 0) return;
    if (C % bf16_per_access == 0 && ld_out % bf16_per_access == 0 && aligned16(out) &&
        aligned16(inp) && aligned16(weight))
        rmsnorm_forward_kernel<bf16_per_access><<<row_blocks(N), block_size>>>(out, ld_out, rstd, inp, weight, N, C, eps);
    else
        rmsnorm_forward_kernel<1><<<row_blocks(N), block_size>>>(out, ld_out, rstd, inp, weight, N, C, eps);
    CHECK_LAUNCH();
}

extern "C" void rmsnorm_forward_cuda(floatX *out, float *rstd, const floatX *inp,
                                     const floatX *weight, int N, int C, float eps) {
    rmsnorm_forward_ld_cuda(out, C, rstd, inp, weight, N, C, eps);
}

/* y = x r w with r = (mean x^2 + eps)^-1/2:
 *   dx = r g - (r^3 / C) x sum_j(g_j x_j),  g = dy * w;   dw_j += sum_rows dy_j x_j r
 * One warp per row as the forward. dweight (a trained norm; NULL when frozen, as in LoRA) takes
 * one fp32 atomicAdd per element and row. */
template <int W>
__global__ static void rmsnorm_backward_kernel(floatX *dinp, float *dweight, const floatX *dout,
                                               int ld_dout, const floatX *inp,
                                               const floatX *weight, const float *rstd, int N,
                                               int C) {
    const int lane = threadIdx.x % 32;
    const size_t row = (size_t)blockIdx.x * rows_per_block + threadIdx.x / 32;
    if (row >= (size_t)N) return; /* the whole warp leaves: no shuffle waits for it */
    const floatX *x = inp + row * C, *dy = dout + row * ld_dout;
    floatX *dx = dinp + row * C;
    const float r = rstd[row];
    float gx = 0;
    for (int i = lane * W; i < C; i += 32 * W) {
        const Vec<floatX, W> dyv = load_vec<W>(dy + i), wv = load_vec<W>(weight + i);
        const Vec<floatX, W> xv = load_vec<W>(x + i);
        for (int k = 0; k < W; k++) gx += bf(dyv.e[k]) * bf(wv.e[k]) * bf(xv.e[k]);
    }
    gx = warp_sum(gx);
    const float coef = r * r * r / C * gx;
    for (int i = lane * W; i < C; i += 32 * W) {
        const Vec<floatX, W> dyv = load_vec<W>(dy + i), wv = load_vec<W>(weight + i);
        const Vec<floatX, W> xv = load_vec<W>(x + i);
        Vec<floatX, W> dxv = load_vec<W>(dx + i);
        for (int k = 0; k < W; k++) {
            const float xi = bf(xv.e[k]), dyi = bf(dyv.e[k]);
            const float g = dyi * bf(wv.e[k]);
            dxv.e[k] = __float2bfloat16(bf(dxv.e[k]) + r * g - coef * xi);
            if (dweight) atomicAdd(&dweight[i + k], dyi * xi * r);
        }
        store_vec(dx + i, dxv);
    }
}

extern "C" void rmsnorm_backward_ld_cuda(floatX *dinp, float *dweight, const floatX *dout,
                                         int ld_dout, const floatX *inp, const floatX *weight,
                                         const float *rstd, int N, int C) {
    if (N <= 0) return;
    if (C % bf16_per_access == 0 && ld_dout % bf16_per_access == 0 && aligned16(dinp) &&
        aligned16(dout) && aligned16(inp) && aligned16(weight))
        rmsnorm_backward_kernel<bf16_per_access><<<row_blocks(N), block_size>>>(dinp, dweight, dout, ld_dout, inp, weight, rstd, N, C);
    else
        rmsnorm_backward_kernel<1><<<row_blocks(N), block_size>>>(dinp, dweight, dout, ld_dout, inp, weight, rstd, N, C);
    CHECK_LAUNCH();
}

extern "C" void rmsnorm_backward_cuda(floatX *dinp, float *dweight, const floatX *dout,
                                      const floatX *inp, const floatX *weight, const float *rstd,
                                      int N, int C) {
    rmsnorm_backward_ld_cuda(dinp, dweight, dout, C, inp, weight, rstd, N, C);
}

/* ---- SwiGLU and residual -----------------------------------------------------------------------
 * W consecutive elements per thread: elements [i, i + W) in one vector access per operand when
 * the group lies inside n, one by one for the tail past the last whole group (fewer than W
 * elements, the last thread). W = 8 when every pointer is 16-byte aligned, else W = 1. */

__device__ static floatX swiglu_value(floatX gate, floatX up) {
    const float g = bf(gate);
    return __float2bfloat16(g / (1.0f + expf(-g)) * bf(up));
}

/* dgate += d u s (1 + g (1 - s)), dup += d g s, with s = sigmoid(g) */
__device__ static void swiglu_gradient(floatX *dgate, floatX *dup, floatX dout, floatX gate,
                                       floatX up) {
    const float g = bf(gate), u = bf(up), d = bf(dout);
    const float s = 1.0f / (1.0f + expf(-g));
    *dgate = __float2bfloat16(bf(*dgate) + d * u * s * (1.0f + g * (1.0f - s)));
    *dup = __float2bfloat16(bf(*dup) + d * g * s);
}

__device__ static floatX residual_value(floatX a, floatX b) {
    return __float2bfloat16(bf(a) + bf(b));
}

/* the first element of this thread's group of W */
template <int W> __device__ static size_t group_start() {
    return ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * W;
}

template <int W>
__global__ static void swiglu_forward_kernel(floatX *out, const floatX *gate, const floatX *up,
                                             size_t n) {
    const size_t i = group_start<W>();
    if (i + W <= n) {
        const Vec<floatX, W> g = load_vec<W>(gate + i), u = load_vec<W>(up + i);
        Vec<floatX, W> o;
        for (int k = 0; k < W; k++) o.e[k] = swiglu_value(g.e[k], u.e[k]);
        store_vec(out + i, o);
    } else {
        for (size_t j = i; j < n; j++) out[j] = swiglu_value(gate[j], up[j]);
    }
}

/* Accumulate: dgate += ..., dup += ...; otherwise dgate = ..., dup = ... without reading them (the
 * same bits as adding onto zeros: the gradient starts from a bf16 zero either way), which saves
 * zeroing both buffers first. */
template <int W, bool Accumulate>
__global__ static void swiglu_backward_kernel(floatX *dgate, floatX *dup, const floatX *dout,
                                              const floatX *gate, const floatX *up, size_t n) {
    const size_t i = group_start<W>();
    const floatX zero = __float2bfloat16(0.0f);
    if (i + W <= n) {
        const Vec<floatX, W> d = load_vec<W>(dout + i), g = load_vec<W>(gate + i);
        const Vec<floatX, W> u = load_vec<W>(up + i);
        Vec<floatX, W> dg, du;
        if (Accumulate) {
            dg = load_vec<W>(dgate + i);
            du = load_vec<W>(dup + i);
        } else {
            for (int k = 0; k < W; k++) dg.e[k] = du.e[k] = zero;
        }
        for (int k = 0; k < W; k++) swiglu_gradient(&dg.e[k], &du.e[k], d.e[k], g.e[k], u.e[k]);
        store_vec(dgate + i, dg);
        store_vec(dup + i, du);
    } else {
        for (size_t j = i; j < n; j++) {
            floatX dg = Accumulate ? dgate[j] : zero, du = Accumulate ? dup[j] : zero;
            swiglu_gradient(&dg, &du, dout[j], gate[j], up[j]);
            dgate[j] = dg;
            dup[j] = du;
        }
    }
}

template <int W>
__global__ static void residual_forward_kernel(floatX *out, const floatX *a, const floatX *b,
                                               size_t n) {
    const size_t i = group_start<W>();
    if (i + W <= n) {
        const Vec<floatX, W> av = load_vec<W>(a + i), bv = load_vec<W>(b + i);
        Vec<floatX, W> o;
        for (int k = 0; k < W; k++) o.e[k] = residual_value(av.e[k], bv.e[k]);
        store_vec(out + i, o);
    } else {
        for (size_t j = i; j < n; j++) out[j] = residual_value(a[j], b[j]);
    }
}

/* blocks of block_size threads for n elements, W per thread */
static unsigned group_blocks(size_t n, int W) { return blocks_for((n + W - 1) / W); }

extern "C" void swiglu_forward_cuda(floatX *out, const floatX *gate, const floatX *up, size_t n) {
    if (n == 0) return;
    const int W = bf16_per_access;
    if (aligned16(out) && aligned16(gate) && aligned16(up))
        swiglu_forward_kernel<W><<<group_blocks(n, W), block_size>>>(out, gate, up, n);
    else
        swiglu_forward_kernel<1><<<group_blocks(n, 1), block_size>>>(out, gate, up, n);
    CHECK_LAUNCH();
}

template <bool Accumulate>
static void swiglu_backward_launch(floatX *dgate, floatX *dup, const floatX *dout,
                                   const floatX *gate, const floatX *up, size_t n) {
    if (n == 0) return;
    const int W = bf16_per_access;
    if (aligned16(dgate) && aligned16(dup) && aligned16(dout) && aligned16(gate) && aligned16(up))
        swiglu_backward_kernel<W, Accumulate><<<group_blocks(n, W), block_size>>>(dgate, dup, dout,
                                                                                  gate, up, n);
    else
        swiglu_backward_kernel<1, Accumulate><<<group_blocks(n, 1), block_size>>>(dgate, dup, dout,
                                                                                  gate, up, n);
    CHECK_LAUNCH();
}

extern "C" void swiglu_backward_cuda(floatX *dgate, floatX *dup, const floatX *dout,
                                     const floatX *gate, const floatX *up, size_t n) {
    swiglu_backward_launch<true>(dgate, dup, dout, gate, up, n);
}

extern "C" void swiglu_backward_store_cuda(floatX *dgate, floatX *dup, const floatX *dout,
                                           const floatX *gate, const floatX *up, size_t n) {
    swiglu_backward_launch<false>(dgate, dup, dout, gate, up, n);
}

extern "C" void residual_forward_cuda(floatX *out, const floatX *a, const floatX *b, size_t n) {
    if (n == 0) return;
    const int W = bf16_per_access;
    if (aligned16(out) && aligned16(a) && aligned16(b))
        residual_forward_kernel<W><<<group_blocks(n, W), block_size>>>(out, a, b, n);
    else
        residual_forward_kernel<1><<<group_blocks(n, 1), block_size>>>(out, a, b, n);
    CHECK_LAUNCH();
}

/* ---- RoPE (rotate-half) -------------------------------------------------------------------------
 * A thread rotates P consecutive pairs (i, i + D/2) of one head: P = 8 when D/2 % 8 == 0 (D = 64,
 * 128: every group is whole) and x and the tables are 16-byte aligned, so x[i..i+8) and
 * x[i+D/2..) are one 16-byte access each and the cos and sin entries two; P = 1 otherwise (any
 * even D). The tables are read once per head: the heads of a row share a block, so these hit L1. */

template <int P>
__global__ static void rope_kernel(floatX *x, const float *cos_table, const float *sin_table,
                                   const int32_t *positions, int N, int H, int D,
                                   float direction) {
    const int half = D / 2, groups = half / P; /* P divides half */
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * H * groups) return;
    const int i = (int)(idx % groups) * P;
    const size_t nh = idx / groups; /* row * H + head */
    const int n = (int)(nh / H);
    const size_t t = (size_t)positions[n] * half + i;
    const Vec<float, P> c = load_vec<P>(cos_table + t), s = load_vec<P>(sin_table + t);
    floatX *v = x + nh * D;
    Vec<floatX, P> v1 = load_vec<P>(v + i), v2 = load_vec<P>(v + i + half);
    for (int k = 0; k < P; k++) {
        const float x1 = bf(v1.e[k]), x2 = bf(v2.e[k]);
        const float ck = c.e[k], sk = direction * s.e[k];
        v1.e[k] = __float2bfloat16(x1 * ck - x2 * sk);
        v2.e[k] = __float2bfloat16(x2 * ck + x1 * sk);
    }
    store_vec(v + i, v1);
    store_vec(v + i + half, v2);
}

static void rope_launch(floatX *x, const float *cos_table, const float *sin_table,
                        const int32_t *positions, int N, int H, int D, float direction) {
    const size_t pairs = (size_t)N * H * (D / 2);
    if (pairs == 0) return;
    const int P = bf16_per_access;
    if ((D / 2) % P == 0 && aligned16(x) && aligned16(cos_table) && aligned16(sin_table))
        rope_kernel<P><<<blocks_for(pairs / P), block_size>>>(x, cos_table, sin_table, positions, N, H, D, direction);
    else
        rope_kernel<1><<<blocks_for(pairs), block_size>>>(x, cos_table, sin_table, positions, N, H, D, direction);
    CHECK_LAUNCH();
}

extern "C" void rope_forward_cuda(floatX *x, const float *cos_table, const float *sin_table,
                                  const int32_t *positions, int N, int H, int D) {
    rope_launch(x, cos_table, sin_table, positions, N, H, D, 1.0f);
}

/* the transpose of a rotation by a is the rotation by -a */
extern "C" void rope_backward_cuda(floatX *dx, const float *cos_table, const float *sin_table,
                                   const int32_t *positions, int N, int H, int D) {
    rope_launch(dx, cos_table, sin_table, positions, N, H, D, -1.0f);
}

/* ---- causal grouped-query attention, a first unfused version ----------------------------------
 * Layouts as ops.h: q, out [B][T][Hq][D]; k, v [B][T][Hkv][D]; probs [B][Hq][T][T] (fp32). Query
 * head h reads KV head h / (Hq / Hkv). The arithmetic follows attention_forward/backward in
 * src/ops/ops_cpu.c step by step; only the order of the sums differs (block reductions). */

static const int attention_block = 128;

static void check_heads(const char *op, int Hq, int Hkv) {
    if (Hkv <= 0 || Hq % Hkv != 0)
        paft_fatal(__FILE__, __LINE__, "%s: %d query heads are not a multiple of %d KV heads", op,
                   Hq, Hkv);
}

/* One block per (query row t, query head h, batch b): the scores of the visible keys j <= t go
 * straight into the probs row (global memory, which the block reads back), then the softmax,
 * then out_t = sum_j p_j v_j with one thread per feature. */
__global__ static void attention_forward_kernel(floatX *out, float *probs, const floatX *q,
                                                const floatX *k, const floatX *v, int T, int Hq,
                                                int Hkv, int D, float scale) {
    const int t = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int kv_head = h / (Hq / Hkv);
    const size_t row_qt = (((size_t)b * T + t) * Hq + h) * D;
    const floatX *q_t = q + row_qt;
    float *p = probs + (((size_t)b * Hq + h) * T + t) * T;

    float max_score = -INFINITY;
    for (int j = threadIdx.x; j <= t; j += blockDim.x) {
        const floatX *k_j = k + (((size_t)b * T + j) * Hkv + kv_head) * D;
        float dot = 0;
        for (int d = 0; d < D; d++) dot += bf(q_t[d]) * bf(k_j[d]);
        p[j] = dot * scale;
        max_score = fmaxf(max_score, p[j]);
    }
    max_score = block_max(max_score);
    /* softmax with the max subtracted (each thread revisits its own j's: no sync needed) */
    float sum = 0;
    for (int j = threadIdx.x; j <= t; j += blockDim.x) {
        p[j] = expf(p[j] - max_score);
        sum += p[j];
    }
    sum = block_sum(sum);
    for (int j = threadIdx.x; j < T; j += blockDim.x) p[j] = j <= t ? p[j] / sum : 0.0f; /* mask */
    __syncthreads(); /* every thread reads every p[j] below */

    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0;
        for (int j = 0; j <= t; j++) acc += p[j] * bf(v[(((size_t)b * T + j) * Hkv + kv_head) * D + d]);
        out[row_qt + d] = __float2bfloat16(acc);
    }
}

extern "C" void attention_forward_cuda(floatX *out, float *probs, const floatX *q, const floatX *k,
                                       const floatX *v, int B, int T, int Hq, int Hkv, int D) {
    check_heads("attention_forward_cuda", Hq, Hkv);
    if (B <= 0 || T <= 0) return;
    const float scale = (float)(1.0 / sqrt((double)D));
    attention_forward_kernel<<<dim3(T, Hq, B), attention_block>>>(out, probs, q, k, v, T, Hq, Hkv,
                                                                 D, scale);
    CHECK_LAUNCH();
}

/* With s = q k^T scale, p = softmax(s) per row, out = p v:
 *   dp_tj = dout_t . v_j,   ds_tj = p_tj (dp_tj - sum_i p_ti dp_ti) scale,
 *   dq_t += sum_j ds_tj k_j,   dk_j += sum_t ds_tj q_t,   dv_j += sum_t p_tj dout_t,
 * the last two summed over the group's query heads as well. The first kernel owns a query row
 * (b, h, t): it writes row t of ds (fp32 scratch [B][Hq][T][T], entries j <= t) and dq_t. The
 * second owns a key row (b, kv head, j): it reads column j of ds and probs and writes dk_j, dv_j.
 * So each gradient element has exactly one writer: no atomics, and the result is deterministic. */
__global__ static void attention_backward_query_kernel(floatX *dq, float *dscores,
                                                       const floatX *dout, const float *probs,
                                                       const floatX *k, const floatX *v, int T,
                                                       int Hq, int Hkv, int D, float scale) {
    const int t = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int kv_head = h / (Hq / Hkv);
    const size_t row_qt = (((size_t)b * T + t) * Hq + h) * D;
    const floatX *dout_t = dout + row_qt;
    const size_t prow = (((size_t)b * Hq + h) * T + t) * T;
    const float *p = probs + prow;
    float *ds = dscores + prow;

    float p_dot_dp = 0;
    for (int j = threadIdx.x; j <= t; j += blockDim.x) {
        const floatX *v_j = v + (((size_t)b * T + j) * Hkv + kv_head) * D;
        float dot = 0;
        for (int d = 0; d < D; d++) dot += bf(dout_t[d]) * bf(v_j[d]);
        ds[j] = dot; /* dp for now */
        p_dot_dp += p[j] * dot;
    }
    p_dot_dp = block_sum(p_dot_dp);
    for (int j = threadIdx.x; j <= t; j += blockDim.x) ds[j] = p[j] * (ds[j] - p_dot_dp) * scale;
    __syncthreads(); /* every thread reads every ds[j] below */

    if (!dq) return;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0;
        for (int j = 0; j <= t; j++) acc += ds[j] * bf(k[(((size_t)b * T + j) * Hkv + kv_head) * D + d]);
        dq[row_qt + d] = __float2bfloat16(bf(dq[row_qt + d]) + acc);
    }
}

__global__ static void attention_backward_key_kernel(floatX *dk, floatX *dv, const float *dscores,
                                                     const floatX *dout, const float *probs,
                                                     const floatX *q, int T, int Hq, int Hkv,
                                                     int D) {
    const int j = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
    const int group = Hq / Hkv;
    const size_t row_kj = (((size_t)b * T + j) * Hkv + kv_head) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc_k = 0, acc_v = 0;
        for (int h = kv_head * group; h < (kv_head + 1) * group; h++) {
            for (int t = j; t < T; t++) { /* the query rows that see key j */
                const size_t pj = (((size_t)b * Hq + h) * T + t) * T + j;
                const size_t row_qt = (((size_t)b * T + t) * Hq + h) * D;
                if (dv) acc_v += probs[pj] * bf(dout[row_qt + d]);
                if (dk) acc_k += dscores[pj] * bf(q[row_qt + d]);
            }
        }
        if (dv) dv[row_kj + d] = __float2bfloat16(bf(dv[row_kj + d]) + acc_v);
        if (dk) dk[row_kj + d] = __float2bfloat16(bf(dk[row_kj + d]) + acc_k);
    }
}

extern "C" void attention_backward_cuda(floatX *dq, floatX *dk, floatX *dv, const floatX *dout,
                                        const float *probs, const floatX *q, const floatX *k,
                                        const floatX *v, int B, int T, int Hq, int Hkv, int D) {
    check_heads("attention_backward_cuda", Hq, Hkv);
    if ((!dq && !dk && !dv) || B <= 0 || T <= 0) return;
    const float scale = (float)(1.0 / sqrt((double)D));
    float *dscores = NULL; /* only dq and dk need ds; allocated per call in this first version */
    if (dq || dk) {
        CHECK_CUDA(cudaMalloc(&dscores, (size_t)B * Hq * T * T * sizeof(float)));
        attention_backward_query_kernel<<<dim3(T, Hq, B), attention_block>>>(
            dq, dscores, dout, probs, k, v, T, Hq, Hkv, D, scale);
        CHECK_LAUNCH();
    }
    if (dk || dv) {
        attention_backward_key_kernel<<<dim3(T, Hkv, B), attention_block>>>(
            dk, dv, dscores, dout, probs, q, T, Hq, Hkv, D);
        CHECK_LAUNCH();
    }
    if (dscores) CHECK_CUDA(cudaFree(dscores)); /* cudaFree waits for the kernels using it */
}

/* ---- vocab-parallel log-probabilities: one block per row --------------------------------------- */

__global__ static void logits_row_max_kernel(float *row_max, const floatX *logits, int V) {
    const floatX *x = logits + (size_t)blockIdx.x * V;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, bf(x[j]));
    m = block_max(m);
    if (threadIdx.x == 0) row_max[blockIdx.x] = m;
}

/* exp in fp32 like the CPU op (real_exp), the sum of up to ~10^5 terms in double */
__global__ static void logits_row_sumexp_kernel(double *sumexp, const floatX *logits,
                                                const float *row_max, int V) {
    const floatX *x = logits + (size_t)blockIdx.x * V;
    const float m = row_max[blockIdx.x];
    double sum = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) sum += (double)expf(bf(x[j]) - m);
    sum = block_sum_double(sum);
    if (threadIdx.x == 0) sumexp[blockIdx.x] = sum;
}

__global__ static void logits_target_kernel(double *target_logit, const floatX *logits,
                                            const int32_t *targets, int vocab_start, int N, int V) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const long long local = (long long)targets[n] - vocab_start;
    target_logit[n] = targets[n] >= 0 && local >= 0 && local < V
                          ? (double)bf(logits[(size_t)n * V + local])
                          : 0.0;
}

__global__ static void logprob_backward_shard_kernel(floatX *dlogits, const float *dlogp,
                                                     const floatX *logits, const float *lse,
                                                     const int32_t *targets, int vocab_start,
                                                     int V) {
    const size_t n = blockIdx.x;
    if (targets[n] < 0) return; /* no target: logp was the constant 0 (the whole block returns) */
    const floatX *x = logits + n * V;
    floatX *dx = dlogits + n * V;
    const float g = dlogp[n], l = lse[n];
    const long long local = (long long)targets[n] - vocab_start;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float d = bf(dx[j]) - g * expf(bf(x[j]) - l);
        if (j == local) d += g;
        dx[j] = __float2bfloat16(d);
    }
}

extern "C" void logits_row_max_cuda(float *row_max, const floatX *logits, int N, int V) {
    if (N <= 0) return;
    logits_row_max_kernel<<<N, block_size>>>(row_max, logits, V);
    CHECK_LAUNCH();
}

extern "C" void logits_row_sumexp_cuda(double *sumexp, const floatX *logits, const float *row_max,
                                       int N, int V) {
    if (N <= 0) return;
    logits_row_sumexp_kernel<<<N, block_size>>>(sumexp, logits, row_max, V);
    CHECK_LAUNCH();
}

extern "C" void logits_target_cuda(double *target_logit, const floatX *logits,
                                   const int32_t *targets, int vocab_start, int N, int V) {
    if (N <= 0) return;
    logits_target_kernel<<<blocks_for(N), block_size>>>(target_logit, logits, targets, vocab_start,
                                                        N, V);
    CHECK_LAUNCH();
}

extern "C" void logprob_backward_shard_cuda(floatX *dlogits, const float *dlogp,
                                            const floatX *logits, const float *lse,
                                            const int32_t *targets, int vocab_start, int N, int V) {
    if (!dlogits || N <= 0) return;
    logprob_backward_shard_kernel<<<N, block_size>>>(dlogits, dlogp, logits, lse, targets,
                                                     vocab_start, V);
    CHECK_LAUNCH();
}

/* ---- AdamW ------------------------------------------------------------------------------------ */

__global__ static void adamw_kernel(float *p, const float *grads, float *m, float *v, size_t n,
                                    float lr, float beta1, float beta2, float eps, float decay,
                                    float step_size, float bias2_sqrt, float grad_scale) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = grads[i] * grad_scale;
    float w = p[i] * (1.0f - lr * decay);
    const float mi = m[i] + (1.0f - beta1) * (g - m[i]);
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    p[i] = w - step_size * mi / (sqrtf(vi) / bias2_sqrt + eps);
}

extern "C" void adamw_update_cuda(float *params, const float *grads, float *m, float *v, size_t n,
                                  long long step, double lr, double beta1, double beta2, double eps,
                                  double weight_decay, float grad_scale) {
    /* the bias corrections in double on the host, as the CPU optimizer computes them */
    const double step_size = lr / (1.0 - pow(beta1, (double)step));
    const double bias2_sqrt = sqrt(1.0 - pow(beta2, (double)step));
    adamw_kernel<<<blocks_for(n), block_size>>>(params, grads, m, v, n, (float)lr, (float)beta1,
                                                (float)beta2, (float)eps, (float)weight_decay,
                                                (float)step_size, (float)bias2_sqrt, grad_scale);
    CHECK_LAUNCH();
}

/* ---- GEMMs through cuBLASLt ----------------------------------------------------------------
 * cuBLAS is column-major: a row-major matrix X[r][c] in memory is, to cuBLAS, the column-major
 * c x r matrix X^T with leading dimension c. So every row-major product below is written as the
 * column-major product of the transposes, and a layout describes the matrix as stored (before
 * the op): rows = the row-major column count, cols = the row-major row count. */

/* One GEMM shape's cuBLASLt descriptors and chosen algorithm. A training step repeats the same
 * few dozen shapes thousands of times, so they are made once and looked up (the descriptor set-up
 * and the heuristic query cost tens of microseconds of host time per call otherwise). */
typedef struct {
    int used;
    cublasOperation_t trans_a, trans_b;
    int m, n, k, lda, ldb, ldd;
    cudaDataType_t ab_type, d_type;
    unsigned align_a, align_b, align_d; /* pointer alignments the algorithm was chosen for */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
} GemmPlan;

enum { GEMM_PLAN_SLOTS = 1024, REDUCE_BLOCKS = 512 };

struct CudaContext {
    cublasLtHandle_t lt;
    void *workspace;
    size_t workspace_size;
    GemmPlan plans[GEMM_PLAN_SLOTS]; /* open addressing on a hash of the shape */
    double *partials; /* [REDUCE_BLOCKS] per-block sums of the deterministic reductions */
    int sm_count;     /* the GPU's multiprocessors: how finely thin_weight_grad_cuda splits */
};

extern "C" CudaContext *cuda_context_create(void) {
    CudaContext *ctx = (CudaContext *)paft_calloc(1, sizeof(CudaContext));
    CHECK_CUBLAS(cublasLtCreate(&ctx->lt));
    ctx->workspace_size = (size_t)32 << 20; /* what cuBLASLt asks for Hopper's best kernels */
    CHECK_CUDA(cudaMalloc(&ctx->workspace, ctx->workspace_size));
    CHECK_CUDA(cudaMalloc(&ctx->partials, REDUCE_BLOCKS * sizeof(double)));
    int device = 0;
    CHECK_CUDA(cudaGetDevice(&device));
    CHECK_CUDA(cudaDeviceGetAttribute(&ctx->sm_count, cudaDevAttrMultiProcessorCount, device));
    return ctx;
}

/* Every cached plan's descriptors released, the table empty. */
static void gemm_plans_clear(CudaContext *ctx) {
    for (int i = 0; i < GEMM_PLAN_SLOTS; i++) {
        GemmPlan *p = &ctx->plans[i];
        if (!p->used) continue;
        CHECK_CUBLAS(cublasLtMatrixLayoutDestroy(p->a));
        CHECK_CUBLAS(cublasLtMatrixLayoutDestroy(p->b));
        CHECK_CUBLAS(cublasLtMatrixLayoutDestroy(p->d));
        CHECK_CUBLAS(cublasLtMatmulDescDestroy(p->op));
        p->used = 0;
    }
}

extern "C" void cuda_context_destroy(CudaContext *ctx) {
    if (!ctx) return;
    gemm_plans_clear(ctx);
    CHECK_CUDA(cudaFree(ctx->workspace));
    CHECK_CUDA(cudaFree(ctx->partials));
    CHECK_CUBLAS(cublasLtDestroy(ctx->lt));
    free(ctx);
}

static int plan_matches(const GemmPlan *p, cublasOperation_t trans_a, cublasOperation_t trans_b,
                        int m, int n, int k, int lda, int ldb, int ldd, cudaDataType_t ab_type,
                        cudaDataType_t d_type, const unsigned align[3]) {
    return p->trans_a == trans_a && p->trans_b == trans_b && p->m == m && p->n == n &&
           p->k == k && p->lda == lda && p->ldb == ldb && p->ldd == ldd &&
           p->ab_type == ab_type && p->d_type == d_type &&
           p->align_a == align[0] && p->align_b == align[1] && p->align_d == align[2];
}

/* The largest power of two up to 256 that divides the address: cuBLASLt's heuristic assumes
 * 256-byte aligned buffers unless told otherwise, and a LoRA factor or a tensor inside the flat
 * weight buffer may sit at a smaller alignment. */
static unsigned alignment_of(const void *ptr) {
    uintptr_t a = (uintptr_t)ptr;
    unsigned align = 256;
    while (align > 1 && a % align != 0) align /= 2;
    return align;
}

/* The plan of this shape: found in the table, or made (descriptors + heuristic) and stored. */
static const GemmPlan *gemm_plan(CudaContext *ctx, cublasOperation_t trans_a,
                                 cublasOperation_t trans_b, int m, int n, int k, int lda, int ldb,
                                 int ldd, cudaDataType_t ab_type, cudaDataType_t d_type,
                                 const unsigned align[3]) {
    unsigned h = 2166136261u;
    const int key[] = {(int)trans_a, (int)trans_b, m, n, k, lda, ldb, ldd, (int)ab_type, (int)d_type,
                       (int)align[0], (int)align[1], (int)align[2]};
    for (int i = 0; i < (int)(sizeof key / sizeof key[0]); i++) h = (h ^ (unsigned)key[i]) * 16777619u;
    for (int probe = 0; probe < GEMM_PLAN_SLOTS; probe++) {
        GemmPlan *p = &ctx->plans[(h + probe) % GEMM_PLAN_SLOTS];
        if (p->used &&
            plan_matches(p, trans_a, trans_b, m, n, k, lda, ldb, ldd, ab_type, d_type, align))
            return p;
        if (p->used) continue;
        /* a new shape: describe it and ask cuBLASLt for its best algorithm once */
        p->trans_a = trans_a;
        p->trans_b = trans_b;
        p->m = m;
        p->n = n;
        p->k = k;
        p->lda = lda;
        p->ldb = ldb;
        p->ldd = ldd;
        p->ab_type = ab_type;
        p->d_type = d_type;
        p->align_a = align[0];
        p->align_b = align[1];
        p->align_d = align[2];
        /* bf16 inputs: tensor cores with fp32 accumulation; fp32 inputs (the L1 term's products
         * of the fp32 LoRA factors): TF32 tensor cores, which only the sign of delta and a
         * lambda-scaled gradient depend on */
        const cublasComputeType_t compute =
            ab_type == CUDA_R_32F ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        CHECK_CUBLAS(cublasLtMatmulDescCreate(&p->op, compute, CUDA_R_32F));
        CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof trans_a));
        CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof trans_b));
        if (trans_a == CUBLAS_OP_N) CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&p->a, ab_type, m, k, lda));
        else CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&p->a, ab_type, k, m, lda));
        if (trans_b == CUBLAS_OP_N) CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&p->b, ab_type, k, n, ldb));
        else CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&p->b, ab_type, n, k, ldb));
        CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&p->d, d_type, m, n, ldd));
        cublasLtMatmulPreference_t pref;
        CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
        CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                          &ctx->workspace_size, sizeof ctx->workspace_size));
        const cublasLtMatmulPreferenceAttributes_t align_attr[4] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        const uint32_t align_value[4] = {align[0], align[1], align[2], align[2]}; /* C = D */
        for (int i = 0; i < 4; i++)
            CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, align_attr[i], &align_value[i],
                                                              sizeof align_value[i]));
        cublasLtMatmulHeuristicResult_t heuristic;
        int found = 0;
        CHECK_CUBLAS(cublasLtMatmulAlgoGetHeuristic(ctx->lt, p->op, p->a, p->b, p->d, p->d, pref, 1,
                                                    &heuristic, &found));
        CHECK_CUBLAS(cublasLtMatmulPreferenceDestroy(pref));
        if (found == 0)
            paft_fatal(__FILE__, __LINE__, "cuBLASLt has no algorithm for m %d, n %d, k %d", m, n, k);
        p->algo = heuristic.algo;
        p->used = 1;
        return p;
    }
    /* the table is full (a run with very many shapes or pointer alignments): start it again; the
     * plans of the shapes still in use are made again as they come */
    gemm_plans_clear(ctx);
    return gemm_plan(ctx, trans_a, trans_b, m, n, k, lda, ldb, ldd, ab_type, d_type, align);
}

/* Column-major D (m x n, type d_type, leading dimension ldd) = alpha op(A) op(B) + beta D, A and B
 * bf16, fp32 compute and scale. op(A) is m x k: A is stored m x k (trans_a N) or k x m (T), with
 * leading dimension lda; op(B) is k x n likewise. C = D (in place accumulation). A plan is per
 * shape and per pointer alignment: the algorithm depends on nothing else. */
static void lt_gemm_typed(CudaContext *ctx, cublasOperation_t trans_a, cublasOperation_t trans_b,
                          int m, int n, int k, const void *A, int lda, const void *B, int ldb,
                          cudaDataType_t ab_type, void *D, cudaDataType_t d_type, int ldd,
                          float alpha, float beta) {
    const unsigned align[3] = {alignment_of(A), alignment_of(B), alignment_of(D)};
    const GemmPlan *p =
        gemm_plan(ctx, trans_a, trans_b, m, n, k, lda, ldb, ldd, ab_type, d_type, align);
    CHECK_CUBLAS(cublasLtMatmul(ctx->lt, p->op, &alpha, A, p->a, B, p->b, &beta, D, p->d, D, p->d,
                                &p->algo, ctx->workspace, ctx->workspace_size, 0));
}

/* The bf16-input GEMM every projection uses. */
static void lt_gemm(CudaContext *ctx, cublasOperation_t trans_a, cublasOperation_t trans_b, int m,
                    int n, int k, const floatX *A, int lda, const floatX *B, int ldb, void *D,
                    cudaDataType_t d_type, int ldd, float alpha, float beta) {
    lt_gemm_typed(ctx, trans_a, trans_b, m, n, k, A, lda, B, ldb, CUDA_R_16BF, D, d_type, ldd,
                  alpha, beta);
}

/* Row-major out[N][OC] = inp[N][C] W[OC][C]^T is, column-major, out^T (OC x N) = W (OC x C)
 * inp^T (C x N): W's memory is W^T column-major (C x OC, ld C), so A = W with trans_a = T;
 * inp's memory is inp^T column-major (C x N, ld C), B with trans_b = N; D is out^T (OC x N, ld OC). */
extern "C" void matmul_forward_ld_cuda(CudaContext *ctx, floatX *out, int ld_out,
                                       const floatX *inp, int ld_inp, const floatX *weight,
                                       int ld_weight, int N, int C, int OC, float alpha,
                                       int accumulate) {
    if (N <= 0 || OC <= 0) return;
    lt_gemm(ctx, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, weight, ld_weight, inp, ld_inp, out,
            CUDA_R_16BF, ld_out, alpha, accumulate ? 1.0f : 0.0f);
}

extern "C" void matmul_forward_strided_cuda(CudaContext *ctx, floatX *out, const floatX *inp,
                                            int ld_inp, const floatX *weight, int N, int C, int OC,
                                            float alpha, int accumulate) {
    matmul_forward_ld_cuda(ctx, out, OC, inp, ld_inp, weight, C, N, C, OC, alpha, accumulate);
}

extern "C" void matmul_forward_cuda(CudaContext *ctx, floatX *out, const floatX *inp,
                                    const floatX *weight, int N, int C, int OC, float alpha,
                                    int accumulate) {
    matmul_forward_strided_cuda(ctx, out, inp, C, weight, N, C, OC, alpha, accumulate);
}

/* dinp[N][C] += alpha dout[N][OC] W[OC][C] is, column-major, dinp^T (C x N) += W^T (C x OC)
 * dout^T (OC x N): W's memory is W^T (C x OC, ld C): A, trans_a = N; dout's memory is dout^T
 * (OC x N, ld OC): B, trans_b = N; D is dinp^T (C x N, ld C), bf16.
 * dweight[OC][C] += alpha dout^T[OC][N] inp[N][C] is, column-major, dweight^T (C x OC) +=
 * inp^T (C x N) dout (N x OC): inp's memory is inp^T (C x N, ld C): A, trans_a = N; dout's memory
 * is dout^T (OC x N, ld OC), transposed: B, trans_b = T; D is dweight^T (C x OC, ld C) in fp32
 * (bf16 A and B with fp32 C/D is one of cuBLASLt's CUBLAS_COMPUTE_32F combinations). */
extern "C" void matmul_input_grad_ld_cuda(CudaContext *ctx, floatX *dinp, int ld_dinp,
                                          const floatX *dout, int ld_dout, const floatX *weight,
                                          int ld_weight, int N, int C, int OC, float alpha,
                                          int accumulate) {
    /* (an empty product: nothing to write; the device model has none, all its sizes are > 0) */
    if (N <= 0 || C <= 0 || OC <= 0) return;
    /* beta = 0: cuBLASLt does not read dinp at all (it may hold anything, NaN included) */
    lt_gemm(ctx, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, weight, ld_weight, dout, ld_dout, dinp,
            CUDA_R_16BF, ld_dinp, alpha, accumulate ? 1.0f : 0.0f);
}

extern "C" void matmul_input_grad_cuda(CudaContext *ctx, floatX *dinp, int ld_dinp,
                                       const floatX *dout, const floatX *weight, int N, int C,
                                       int OC, float alpha, int accumulate) {
    matmul_input_grad_ld_cuda(ctx, dinp, ld_dinp, dout, OC, weight, C, N, C, OC, alpha,
                              accumulate);
}

/* PAFT_THIN_WGRAD=1: weight gradients with a thin side (the adapters': r or G r rows or columns)
 * on thin_gemm_cuda.cu's split-token kernel instead of cuBLASLt; opt-in until measured. */
static bool thin_wgrad_selected(void) {
    const char *value = getenv("PAFT_THIN_WGRAD");
    return value && value[0] == '1';
}

extern "C" void matmul_weight_grad_ld_cuda(CudaContext *ctx, float *dweight, const floatX *dout,
                                           int ld_dout, const floatX *inp, int ld_inp, int N,
                                           int C, int OC, float alpha) {
    if (N <= 0 || C <= 0 || OC <= 0) return;
    if (thin_wgrad_selected()) {
        /* dweight [OC][C]: C thin (dB = dout^T h): X = dout, out as is; OC thin (dA = dlora_h^T
         * x): X = inp, out transposed */
        if (C <= OC && thin_weight_grad_supported(dout, ld_dout, inp, ld_inp, N, OC, C,
                                                  ctx->workspace_size)) {
            thin_weight_grad_cuda(dweight, 0, dout, ld_dout, inp, ld_inp, N, OC, C, alpha,
                                  ctx->workspace, ctx->workspace_size, ctx->sm_count);
            return;
        }
        if (OC < C && thin_weight_grad_supported(inp, ld_inp, dout, ld_dout, N, C, OC,
                                                 ctx->workspace_size)) {
            thin_weight_grad_cuda(dweight, 1, inp, ld_inp, dout, ld_dout, N, C, OC, alpha,
                                  ctx->workspace, ctx->workspace_size, ctx->sm_count);
            return;
        }
    }
    lt_gemm(ctx, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, inp, ld_inp, dout, ld_dout, dweight,
            CUDA_R_32F, C, alpha, 1.0f);
}

extern "C" void matmul_backward_strided_cuda(CudaContext *ctx, floatX *dinp, int ld_dinp,
                                             float *dweight, const floatX *dout, const floatX *inp,
                                             int ld_inp, const floatX *weight, int N, int C, int OC,
                                             float alpha) {
    if (N <= 0 || C <= 0 || OC <= 0) return;
    if (dinp) matmul_input_grad_cuda(ctx, dinp, ld_dinp, dout, weight, N, C, OC, alpha, 1);
    if (dweight) matmul_weight_grad_ld_cuda(ctx, dweight, dout, OC, inp, ld_inp, N, C, OC, alpha);
}

extern "C" void matmul_backward_cuda(CudaContext *ctx, floatX *dinp, float *dweight,
                                     const floatX *dout, const floatX *inp, const floatX *weight,
                                     int N, int C, int OC, float alpha) {
    matmul_backward_strided_cuda(ctx, dinp, C, dweight, dout, inp, C, weight, N, C, OC, alpha);
}

/* ---- reductions to one double, deterministic ---------------------------------------------------
 * A fixed grid of REDUCE_BLOCKS blocks strides over the input, each block writes its partial sum,
 * one block adds the partials in a fixed order: the same result on every run (no atomics). */

template <typename Map>
__global__ static void partial_sums_kernel(double *partials, const float *x, size_t n, Map map) {
    double acc = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        acc += map(x[i]);
    acc = block_sum_double(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ static void sum_partials_kernel(double *partials, int count) {
    double acc = 0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
    acc = block_sum_double(acc);
    if (threadIdx.x == 0) partials[0] = acc;
}

template <typename Map> static double reduce_to_double(CudaContext *ctx, const float *x, size_t n, Map map) {
    if (n == 0) return 0;
    partial_sums_kernel<<<REDUCE_BLOCKS, block_size>>>(ctx->partials, x, n, map);
    CHECK_LAUNCH();
    sum_partials_kernel<<<1, block_size>>>(ctx->partials, REDUCE_BLOCKS);
    CHECK_LAUNCH();
    double result = 0;
    CHECK_CUDA(cudaMemcpy(&result, ctx->partials, sizeof result, cudaMemcpyDeviceToHost));
    return result;
}

struct SquareMap {
    __device__ double operator()(float v) const { return (double)v * (double)v; }
};
struct AbsMap {
    __device__ double operator()(float v) const { return fabs((double)v); }
};

extern "C" double sum_squares_cuda(CudaContext *ctx, const float *x, size_t n) {
    return reduce_to_double(ctx, x, n, SquareMap());
}

/* x[i] = sign(x[i]) with sign(0) = 0, in place */
__global__ static void sign_kernel(float *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = (float)((x[i] > 0.0f) - (x[i] < 0.0f));
}

/* l1_penalty of src/loss/lora_delta.h with row-major delta [out][in] = scale B [out][r] A [r][in],
 * written as the column-major products of the transposes (see the GEMM notes above):
 *   delta^T (in x out) = A^T (in x r) B^T (r x out)            A: N, lda in;  B: N, ldb r
 *   dA^T (in x r)     += coef G^T (in x out) B (out x r)       G: N, lda in;  B: T, ldb r
 *   dB^T (r x out)    += coef A (r x in) G^T (in x out)         A: T, lda in;  G: N, ldb in
 * with G = sign(delta) overwriting delta once its absolute sum is taken. */
/* The fused kernel (l1_fused_cuda.cu, delta never in memory) takes the module when its partial
 * sums fit in the delta scratch (ranks up to about 50); PAFT_L1_FUSED=0 keeps the cuBLASLt path. */
static bool l1_fused_takes(int out, int in, int r) {
    const char *fused = getenv("PAFT_L1_FUSED");
    return !(fused && fused[0] == '0') &&
           l1_penalty_fused_supported(out, in, r, (size_t)out * in * sizeof(float));
}

/* The cuBLASLt path: delta into the scratch (TF32), its |sum| (synchronises), sign in place, the
 * two gradient products. */
static double l1_penalty_unfused(CudaContext *ctx, float *dA, float *dB, const float *A,
                                 const float *B, int out, int in, int r, float scale, float lambda,
                                 float *delta_scratch) {
    const size_t n = (size_t)out * in;
    lt_gemm_typed(ctx, CUBLAS_OP_N, CUBLAS_OP_N, in, out, r, A, in, B, r, CUDA_R_32F, delta_scratch,
                  CUDA_R_32F, in, scale, 0.0f);
    const double abs_sum = reduce_to_double(ctx, delta_scratch, n, AbsMap());
    sign_kernel<<<blocks_for(n), block_size>>>(delta_scratch, n);
    CHECK_LAUNCH();
    const float coef = lambda * scale;
    if (dA)
        lt_gemm_typed(ctx, CUBLAS_OP_N, CUBLAS_OP_T, in, r, out, delta_scratch, in, B, r,
                      CUDA_R_32F, dA, CUDA_R_32F, in, coef, 1.0f);
    if (dB)
        lt_gemm_typed(ctx, CUBLAS_OP_T, CUBLAS_OP_N, r, out, in, A, in, delta_scratch, in,
                      CUDA_R_32F, dB, CUDA_R_32F, r, coef, 1.0f);
    return (double)lambda * abs_sum;
}

extern "C" double l1_penalty_cuda(CudaContext *ctx, float *dA, float *dB, const float *A,
                                  const float *B, int out, int in, int r, float scale,
                                  float lambda, float *delta_scratch) {
    if ((size_t)out * in == 0) return 0;
    if (!l1_fused_takes(out, in, r))
        return l1_penalty_unfused(ctx, dA, dB, A, B, out, in, r, scale, lambda, delta_scratch);
    double *total = ctx->partials; /* one double of the reductions' scratch */
    CHECK_CUDA(cudaMemset(total, 0, sizeof(double)));
    l1_penalty_fused_add_cuda(dA, dB, A, B, out, in, r, scale, lambda, delta_scratch,
                              (size_t)out * in * sizeof(float), total);
    double value = 0;
    CHECK_CUDA(cudaMemcpy(&value, total, sizeof value, cudaMemcpyDeviceToHost));
    return value;
}

extern "C" double l1_penalty_add_cuda(CudaContext *ctx, float *dA, float *dB, const float *A,
                                      const float *B, int out, int in, int r, float scale,
                                      float lambda, float *delta_scratch, double *device_total) {
    if ((size_t)out * in == 0) return 0;
    if (!l1_fused_takes(out, in, r))
        return l1_penalty_unfused(ctx, dA, dB, A, B, out, in, r, scale, lambda, delta_scratch);
    l1_penalty_fused_add_cuda(dA, dB, A, B, out, in, r, scale, lambda, delta_scratch,
                              (size_t)out * in * sizeof(float), device_total);
    return 0;
}

/* ---- host <-> device ------------------------------------------------------------------------- */

extern "C" floatX *cuda_upload_bf16(const float *host, size_t n) {
    floatX *tmp = (floatX *)paft_malloc(n * sizeof(floatX));
    for (size_t i = 0; i < n; i++) tmp[i] = __float2bfloat16(host[i]);
    floatX *device;
    CHECK_CUDA(cudaMalloc(&device, n * sizeof(floatX)));
    CHECK_CUDA(cudaMemcpy(device, tmp, n * sizeof(floatX), cudaMemcpyHostToDevice));
    free(tmp);
    return device;
}

extern "C" float *cuda_upload_f32(const float *host, size_t n) {
    float *device;
    CHECK_CUDA(cudaMalloc(&device, n * sizeof(float)));
    CHECK_CUDA(cudaMemcpy(device, host, n * sizeof(float), cudaMemcpyHostToDevice));
    return device;
}

extern "C" void cuda_download_bf16(float *host, const floatX *device, size_t n) {
    floatX *tmp = (floatX *)paft_malloc(n * sizeof(floatX));
    CHECK_CUDA(cudaMemcpy(tmp, device, n * sizeof(floatX), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) host[i] = __bfloat162float(tmp[i]);
    free(tmp);
}

extern "C" void cuda_download_f32(float *host, const float *device, size_t n) {
    CHECK_CUDA(cudaMemcpy(host, device, n * sizeof(float), cudaMemcpyDeviceToHost));
}

extern "C" int32_t *cuda_upload_i32(const int32_t *host, size_t n) {
    int32_t *device;
    CHECK_CUDA(cudaMalloc(&device, n * sizeof(int32_t)));
    CHECK_CUDA(cudaMemcpy(device, host, n * sizeof(int32_t), cudaMemcpyHostToDevice));
    return device;
}

extern "C" void cuda_download_f64(double *host, const double *device, size_t n) {
    CHECK_CUDA(cudaMemcpy(host, device, n * sizeof(double), cudaMemcpyDeviceToHost));
}

extern "C" void *cuda_calloc(size_t bytes) {
    void *device;
    CHECK_CUDA(cudaMalloc(&device, bytes));
    CHECK_CUDA(cudaMemset(device, 0, bytes));
    return device;
}

extern "C" void cuda_free(void *device) { CHECK_CUDA(cudaFree(device)); }

extern "C" void cuda_synchronize(void) { CHECK_CUDA(cudaDeviceSynchronize()); }
