/*
 * thin_gemm_cuda.cu - the adapters' weight gradients, out += alpha X^T Y with X [N][F] wide and
 * Y [N][J] thin (J = the LoRA rank r, or G r for a group sharing its input): dB = s dout^T h
 * (X = dout, out [F][J]) and dA = dlora_h^T x (X = x, out transposed, [J][F]). The inner
 * dimension is the N tokens of the batch, thousands, and the output is small.
 *
 * Why a kernel of its own: on an H100 these products took 18-22 ms of Llama-1B's 122 ms step
 * (docs/BENCHMARKS.md, "LoRA grads") for about 0.6 GB read per layer, 3 ms of the step at the
 * memory's bandwidth. A GEMM library tiles the output, which here is a few dozen tiles, and
 * leaves most of the GPU idle unless it splits K. This kernel always splits the tokens: each
 * block streams a chunk of X (cp.async, double-buffered) through the tensor cores into a 128 x J
 * tile of fp32 partial sums, and a second kernel adds the chunks in their order, then alpha times
 * the total onto out. Deterministic: no atomics, the chunking depends only on the shape and the
 * GPU's number of SMs.
 *
 * Blocks of 4 warps; warp w owns rows (features) 32 w .. 32 w + 31 of the block's 128, all J_TILE
 * columns: per 64 tokens, four 16-token steps of mma.sync.m16n8k16 (mma_tiles.cuh), A = X^T read
 * transposed from the X tile by ldmatrix.trans, B = the Y tile as stored.
 *
 * Selected by PAFT_THIN_WGRAD=1 (ops_cuda.cu, matmul_weight_grad_ld_cuda) until measured on a GPU.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda_check.h"
#include "mma_tiles.cuh"
#include "thin_gemm.h"

static constexpr int thin_threads = 128;  /* 4 warps */
static constexpr int thin_rows = 128;     /* features (rows of out) per block */
static constexpr int thin_step = 64;      /* tokens per stage: 16 KB of X in flight per block */
static constexpr int thin_max_j = 256;    /* widest thin side taken here */

/* partial[chunk] = the sum over the chunk's tokens of X[t][f] Y[t][j], for this block's 128
 * features and J_TILE columns, laid out as out is ([F][J], or [J][F] transposed) so that the sum
 * reads it in order. grid: (features / 128, J / J_TILE, chunks), all rounded up. */
template <int J_TILE>
__global__ static void __launch_bounds__(thin_threads)
    thin_weight_grad_kernel(float *partial, int transposed, const floatX *X, int ld_x,
                            const floatX *Y, int ld_y, int N, int F, int J, int chunk_tokens) {
    constexpr int LDX = thin_rows + 8, LDY = J_TILE + 8, n_tiles8 = J_TILE / 8;
    const int f0 = blockIdx.x * thin_rows, j0 = blockIdx.y * J_TILE;
    const int t_begin = blockIdx.z * chunk_tokens, t_end = min(N, t_begin + chunk_tokens);
    const int warp = threadIdx.x / 32;

    extern __shared__ float thin_smem[];
    floatX *X_buf = (floatX *)thin_smem;            /* [2][thin_step][LDX] */
    floatX *Y_buf = X_buf + 2 * thin_step * LDX;    /* [2][thin_step][LDY] */

    float acc[2][n_tiles8][4];
    zero_tiles(acc[0]);
    zero_tiles(acc[1]);

    load_tile_window<thin_rows>(X_buf, X, ld_x, t_begin, thin_step, t_end, f0, F);
    load_tile_window<J_TILE>(Y_buf, Y, ld_y, t_begin, thin_step, t_end, j0, J);
    /* stage i is read from buffer i % 2 while stage i + 1 travels into the other */
    for (int t0 = t_begin, buf = 0; t0 < t_end; t0 += thin_step, buf ^= 1) {
        tiles_arrived();
        __syncthreads(); /* this stage is in; every warp is done with the other buffer */
        if (t0 + thin_step < t_end) {
            load_tile_window<thin_rows>(X_buf + (buf ^ 1) * thin_step * LDX, X, ld_x,
                                        t0 + thin_step, thin_step, t_end, f0, F);
            load_tile_window<J_TILE>(Y_buf + (buf ^ 1) * thin_step * LDY, Y, ld_y, t0 + thin_step,
                                     thin_step, t_end, j0, J);
        }
        const floatX *Xs = X_buf + buf * thin_step * LDX, *Ys = Y_buf + buf * thin_step * LDY;
#pragma unroll
        for (int kk = 0; kk < thin_step / 16; kk++) {
            uint32_t a[2][4];
            load_a_trans(a[0], Xs, LDX, 32 * warp, 16 * kk);
            load_a_trans(a[1], Xs, LDX, 32 * warp + 16, 16 * kk);
#pragma unroll
            for (int n = 0; n < n_tiles8; n += 2) {
                uint32_t b[4];
                load_b_cols(b, Ys, LDY, 16 * kk, 8 * n);
#pragma unroll
                for (int m = 0; m < 2; m++) {
                    mma16816(acc[m][n], a[m], b[0], b[1]);
                    mma16816(acc[m][n + 1], a[m], b[2], b[3]);
                }
            }
        }
    }

    float *out = partial + (size_t)blockIdx.z * F * J;
#pragma unroll
    for (int m = 0; m < 2; m++)
        store_c_tiles(out, transposed ? F : J, transposed, f0 + 32 * warp + 16 * m, F, j0, J, acc[m]);
}

/* The chunking: enough blocks for about four per SM, within two limits. A chunk's partial sums
 * (F J fp32, written and read back) must stay small next to its share of X (chunk F bf16): at
 * least 8 J tokens per chunk keeps them under a quarter of it. And they must fit the workspace. */
static int thin_chunk_tokens(int N, int F, int J, int J_TILE, int sm_count, size_t workspace_bytes) {
    const long blocks_xy = (long)((F + thin_rows - 1) / thin_rows) * ((J + J_TILE - 1) / J_TILE);
    long chunks = (4L * sm_count + blocks_xy - 1) / blocks_xy;
    const long min_chunk = 8L * J > 64 ? 8L * J : 64;
    const long most_by_tokens = (N + min_chunk - 1) / min_chunk;
    const long most_by_memory = (long)(workspace_bytes / ((size_t)F * J * sizeof(float)));
    if (chunks > most_by_tokens) chunks = most_by_tokens;
    if (chunks > most_by_memory) chunks = most_by_memory;
    if (chunks < 1) chunks = 1;
    const int per_chunk = (int)((N + chunks - 1) / chunks);
    return (per_chunk + thin_step - 1) / thin_step * thin_step;
}

extern "C" int thin_weight_grad_supported(const floatX *X, int ld_x, const floatX *Y, int ld_y,
                                          int N, int F, int J, size_t workspace_bytes) {
    const int aligned = ((uintptr_t)X % 16 == 0) && ((uintptr_t)Y % 16 == 0) && ld_x % 8 == 0 &&
                        ld_y % 8 == 0 && F % 8 == 0 && J % 8 == 0;
    return N > 0 && J > 0 && J <= thin_max_j && F > 0 && aligned &&
           (size_t)F * J * sizeof(float) <= workspace_bytes;
}

template <int J_TILE>
static void thin_launch(float *out, int transposed, const floatX *X, int ld_x, const floatX *Y,
                        int ld_y, int N, int F, int J, float alpha, void *workspace,
                        size_t workspace_bytes, int sm_count) {
    const int chunk_tokens = thin_chunk_tokens(N, F, J, J_TILE, sm_count, workspace_bytes);
    const int chunks = (N + chunk_tokens - 1) / chunk_tokens;
    const size_t smem = 2 * thin_step * ((thin_rows + 8) + (J_TILE + 8)) * sizeof(floatX);
    cuda_allow_shared_memory(thin_weight_grad_kernel<J_TILE>, smem, "thin_weight_grad_cuda");
    const dim3 grid((F + thin_rows - 1) / thin_rows, (J + J_TILE - 1) / J_TILE, chunks);
    float *partial = (float *)workspace;
    thin_weight_grad_kernel<J_TILE><<<grid, thin_threads, smem>>>(partial, transposed, X, ld_x, Y, ld_y, N, F, J, chunk_tokens);
    CHECK_LAUNCH();
    const size_t n = (size_t)F * J;
    /* the chunks' partials share out's layout: added in chunk order */
    add_partial_sums_kernel<<<(unsigned)((n + 255) / 256), 256>>>(out, partial, (size_t)chunks, n, alpha);
    CHECK_LAUNCH();
}

extern "C" void thin_weight_grad_cuda(float *out, int transposed, const floatX *X, int ld_x,
                                      const floatX *Y, int ld_y, int N, int F, int J, float alpha,
                                      void *workspace, size_t workspace_bytes, int sm_count) {
    if (!thin_weight_grad_supported(X, ld_x, Y, ld_y, N, F, J, workspace_bytes))
        paft_fatal(__FILE__, __LINE__,
                   "thin_weight_grad_cuda: shape N %d F %d J %d (ld %d, %d) not supported", N, F, J,
                   ld_x, ld_y);
    if (J <= 16)
        thin_launch<16>(out, transposed, X, ld_x, Y, ld_y, N, F, J, alpha, workspace, workspace_bytes, sm_count);
    else if (J <= 32)
        thin_launch<32>(out, transposed, X, ld_x, Y, ld_y, N, F, J, alpha, workspace, workspace_bytes, sm_count);
    else
        thin_launch<64>(out, transposed, X, ld_x, Y, ld_y, N, F, J, alpha, workspace, workspace_bytes, sm_count);
}
