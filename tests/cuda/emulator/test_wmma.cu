/*
 * test_wmma.cu - the emulator's tensor cores (shim/mma.h) against a host loop: one
 * 16 x 16 x 16 product D = A B + C with bf16 A, B and fp32 C, D, for each memory layout of A, B
 * (row- and column-major fragments) and of C and D (mem_row_major, mem_col_major), by one warp,
 * plus fill_fragment. The entries are small multiples of 1/4, so every sum is exact in fp32 and
 * the result does not depend on the summation order: the same check holds on a GPU.
 */
#include <stdio.h>
#include <string.h>

#include <mma.h>

#include "cuda_check.h"
#include "ops_cuda.h"
extern "C" {
#include "test_util.h"
}

using namespace nvcuda;

/* A and B as [16][16] bf16 in their layouts (leading dimension 16), C read and D written with
 * leading dimension 16 in the accumulator layout; fill_value, when not 0, replaces C. */
template <class LayoutA, class LayoutB>
__global__ static void wmma_product_kernel(float *d, const floatX *a, const floatX *b,
                                           const float *c, int c_col_major, float fill_value) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, floatX, LayoutA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, floatX, LayoutB> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    const wmma::layout_t acc_layout = c_col_major ? wmma::mem_col_major : wmma::mem_row_major;
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    if (fill_value != 0.0f) wmma::fill_fragment(fc, fill_value);
    else wmma::load_matrix_sync(fc, c, 16, acc_layout);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(d, fc, 16, acc_layout);
}

static float quarter(unsigned *state) { /* -2 .. 2 in steps of 1/4 */
    *state = *state * 1664525u + 1013904223u;
    return (float)((int)((*state >> 16) % 17) - 8) / 4.0f;
}

/* element (r, col) of a 16 x 16 matrix with leading dimension 16 */
static int at(bool col_major, int r, int col) { return col_major ? col * 16 + r : r * 16 + col; }

template <class LayoutA, class LayoutB>
static void check_product(bool c_col_major, float fill_value, unsigned seed) {
    const bool a_cm = std::is_same_v<LayoutA, wmma::col_major>;
    const bool b_cm = std::is_same_v<LayoutB, wmma::col_major>;
    float A[16][16], Bm[16][16], C[16][16]; /* [row][column], the logical matrices */
    for (int r = 0; r < 16; r++)
        for (int col = 0; col < 16; col++) {
            A[r][col] = quarter(&seed);
            Bm[r][col] = quarter(&seed);
            C[r][col] = quarter(&seed);
        }
    float a_mem[256], b_mem[256], c_mem[256];
    for (int r = 0; r < 16; r++)
        for (int col = 0; col < 16; col++) {
            a_mem[at(a_cm, r, col)] = A[r][col];
            b_mem[at(b_cm, r, col)] = Bm[r][col];
            c_mem[at(c_col_major, r, col)] = C[r][col];
        }
    floatX *da = cuda_upload_bf16(a_mem, 256), *db = cuda_upload_bf16(b_mem, 256);
    float *dc = cuda_upload_f32(c_mem, 256);
    float *dd = (float *)cuda_calloc(256 * sizeof(float));
    wmma_product_kernel<LayoutA, LayoutB><<<1, 32>>>(dd, da, db, dc, c_col_major, fill_value);
    CHECK_LAUNCH();
    float d_mem[256];
    cuda_download_f32(d_mem, dd, 256);
    int wrong = 0;
    for (int r = 0; r < 16; r++)
        for (int col = 0; col < 16; col++) {
            float want = fill_value != 0.0f ? fill_value : C[r][col];
            for (int k = 0; k < 16; k++) want += A[r][k] * Bm[k][col];
            wrong += d_mem[at(c_col_major, r, col)] != want;
        }
    CHECK(wrong == 0, "A %s, B %s, C/D %s%s: %d of 256 entries differ", a_cm ? "col" : "row",
          b_cm ? "col" : "row", c_col_major ? "col" : "row", fill_value != 0.0f ? " (filled)" : "",
          wrong);
    cuda_free(da);
    cuda_free(db);
    cuda_free(dc);
    cuda_free(dd);
}

int main(void) {
    for (int c_cm = 0; c_cm < 2; c_cm++) {
        check_product<wmma::row_major, wmma::row_major>(c_cm, 0.0f, 1u + c_cm);
        check_product<wmma::row_major, wmma::col_major>(c_cm, 0.0f, 3u + c_cm);
        check_product<wmma::col_major, wmma::row_major>(c_cm, 0.0f, 5u + c_cm);
        check_product<wmma::col_major, wmma::col_major>(c_cm, 0.0f, 7u + c_cm);
    }
    check_product<wmma::row_major, wmma::col_major>(false, 1.5f, 9u);
    return test_finish("test_wmma");
}
