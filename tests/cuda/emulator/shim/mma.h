/*
 * mma.h - the emulator's tensor cores: nvcuda::wmma for 16 x 16 x 16 tiles with bf16 inputs and
 * fp32 accumulators, the subset paft's kernels use (fill_fragment, load_matrix_sync,
 * mma_sync, store_matrix_sync).
 *
 * On a GPU a fragment is spread over the 32 lanes of a warp in an unspecified layout, and the
 * calls are warp-collective. Here every thread holds the whole 16 x 16 tile (row-major, whatever
 * the fragment's layout) and does the whole operation itself: the 32 lanes compute identical
 * values, so their redundant stores of the same tile are benign. Code that reads a fragment's
 * elements (x[], num_elements) is not supported: the real element layout is unspecified, and the
 * emulator's would pass where the GPU's differs; such code does not compile here (no x[]).
 *
 * What a GPU requires and this checks (a failure is emu_fail with the reason): every call is made
 * by all 32 lanes of the warp together (each call ENDS with a __syncwarp, so a lane that skips it
 * is reported as divergence or a deadlock); pointers are 256-bit (32-byte) aligned; ldm is a
 * multiple of 8 elements for bf16 and of 4 for fp32 (16 bytes).
 *
 * Why at the end and not at the start: the emulator runs one thread at a time until it blocks, so
 * a warp barrier at the start of a call would let every other thread of the block run up to its
 * own next barrier first, and would hide a missing __syncthreads() before the call (the lane
 * would read shared memory only after the whole block had written it). Without it, the first lane
 * reads what the block has written so far, as a fast warp on a GPU may. The barrier at the end
 * keeps the lanes of a load - mma - store sequence in step: no lane stores a tile before every
 * lane has loaded it. (Stricter than a GPU in one respect: data a lane writes just before a call
 * that another lane of the same warp reads in it needs a __syncwarp or __syncthreads() first,
 * which the CUDA memory model asks for anyway.)
 *
 * Numerics: the products of bf16 inputs are exact in fp32, summed in k order per element onto the
 * accumulator, with no fused multiply-add: the GPU's summation order and rounding inside an MMA
 * differ in the last bits (as the emulator's README says of all its numerics).
 */
#ifndef EMU_MMA_H
#define EMU_MMA_H

#include <cstdint>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_runtime.h"

[[noreturn]] void emu_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

/* Only m = n = k = 16 (the bf16 shape paft uses): anything else fails to compile. */
template <class Use, int M, int N, int K, class T, class Layout = void> class fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulator's wmma: 16 x 16 x 16 only");
    static_assert((std::is_same_v<Use, accumulator> && std::is_same_v<T, float> &&
                   std::is_void_v<Layout>) ||
                      (!std::is_same_v<Use, accumulator> && std::is_same_v<T, __nv_bfloat16> &&
                       (std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>)),
                  "the emulator's wmma: bf16 matrix_a / matrix_b with a layout, fp32 accumulator");

  public:
    float emu_tile[16][16]; /* [row][column] of the tile the fragment stands for */
};

/* ---- the checks every call makes -------------------------------------------------------------*/

inline void emu_wmma_leave(const char *what) {
    (void)what;
    __syncwarp(); /* warp-collective: all 32 lanes arrive, or the emulator reports them */
}
inline void emu_wmma_check(const char *what, const void *p, unsigned ldm, unsigned element_bytes) {
    if ((uintptr_t)p % 32 != 0)
        emu_fail("%s: pointer %p is not 256-bit aligned (thread %u of block (%u, %u, %u))", what,
                 p, threadIdx.x, blockIdx.x, blockIdx.y, blockIdx.z);
    if ((ldm * element_bytes) % 16 != 0 || ldm < 16)
        emu_fail("%s: ldm %u is not a multiple of 16 bytes of at least 16 elements", what, ldm);
}

/* element (r, c) of a matrix at p with leading dimension ldm, stored row- or column-major */
template <class T> inline T &emu_wmma_at(T *p, unsigned ldm, bool row_major_memory, int r, int c) {
    return row_major_memory ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
}

/* ---- the API ---------------------------------------------------------------------------------*/

template <class Use, int M, int N, int K, class T, class Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout> &f, const T &value) {
    float v;
    if constexpr (std::is_same_v<T, float>) v = value;
    else v = __bfloat162float(value);
    for (auto &row : f.emu_tile)
        for (float &x : row) x = v;
    emu_wmma_leave("fill_fragment");
}

/* matrix_a / matrix_b: the layout is the fragment's */
template <class Use, class Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout> &f,
                             const __nv_bfloat16 *p, unsigned ldm) {
    emu_wmma_check("load_matrix_sync", p, ldm, sizeof(__nv_bfloat16));
    const bool rm = std::is_same_v<Layout, row_major>;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) f.emu_tile[r][c] = __bfloat162float(emu_wmma_at(p, ldm, rm, r, c));
    emu_wmma_leave("load_matrix_sync");
}

/* accumulator: the layout is the call's */
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p,
                             unsigned ldm, layout_t layout) {
    emu_wmma_check("load_matrix_sync", p, ldm, sizeof(float));
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            f.emu_tile[r][c] = emu_wmma_at(p, ldm, layout == mem_row_major, r, c);
    emu_wmma_leave("load_matrix_sync");
}

inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f,
                              unsigned ldm, layout_t layout) {
    emu_wmma_check("store_matrix_sync", p, ldm, sizeof(float));
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) emu_wmma_at(p, ldm, layout == mem_row_major, r, c) = f.emu_tile[r][c];
    emu_wmma_leave("store_matrix_sync");
}

/* d = a b + c (d may be c) */
template <class LayoutA, class LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA> &a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> &b,
                     const fragment<accumulator, 16, 16, 16, float> &c, bool satf = false) {
    if (satf) emu_fail("mma_sync: satf is not emulated");
    float result[16][16];
    for (int r = 0; r < 16; r++)
        for (int col = 0; col < 16; col++) {
            float sum = c.emu_tile[r][col];
            for (int k = 0; k < 16; k++) sum += a.emu_tile[r][k] * b.emu_tile[k][col];
            result[r][col] = sum;
        }
    for (int r = 0; r < 16; r++)
        for (int col = 0; col < 16; col++) d.emu_tile[r][col] = result[r][col];
    emu_wmma_leave("mma_sync");
}

} // namespace wmma
} // namespace nvcuda

#endif /* EMU_MMA_H */
