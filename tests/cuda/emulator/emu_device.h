/*
 * emu_device.h - the device side of CUDA C++ on the emulator (included by the shim
 * cuda_runtime.h in C++): the built-in variables, __syncthreads, the warp shuffles, atomicAdd, the
 * device math functions the kernels use, shared memory, and the launch.
 *
 * A kernel file is compiled as plain C++ after emu_rewrite.sh has rewritten three constructs:
 *   kernel<<<grid, block[, smem[, stream]]>>>(args)
 *       -> emu_launch("kernel", [](auto... a) { kernel(a...); }, grid, block[, smem])(args)
 *   extern __shared__ T name[];   ->  T *const name = (T *)emu_dynamic_shared();
 *   __shared__ T name[N]...;      ->  static T name[N]...; emu_static_shared(&name, sizeof name);
 * (a static local is one object per function, as a __shared__ variable is one per block; the
 * emulator runs blocks one at a time and fills both kinds of shared memory with NaNs before each
 * block). Any __shared__ the rewrite missed is a compile error (the macro below), never a silent
 * per-thread copy.
 *
 * How threads run (emu_runtime.cpp): every CUDA thread of a block is a fiber with its own stack;
 * exactly one runs at a time, until it reaches __syncthreads, a warp shuffle or its end. Between
 * two barriers the threads run one after the other in the order EMU_ORDER chooses (forward,
 * reverse or shuffled; blocks likewise), so a race-free kernel gives the same result in every
 * order while a missing barrier or an inter-block dependence changes it.
 */
#ifndef EMU_DEVICE_H
#define EMU_DEVICE_H

#include <math.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ EMU_SHARED_DECLARATION_NOT_REWRITTEN_BY_EMU_REWRITE_SH

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

/* set by the scheduler before a thread runs (all threads share one host thread) */
extern dim3 threadIdx, blockIdx, blockDim, gridDim;
static constexpr int warpSize = 32;

void __syncthreads();

/* the warp intrinsics: a barrier of the warp's 32 lanes where each lane leaves its value and
 * takes the value of its source lane (only full masks; values of up to 8 bytes) */
enum EmuShuffle { EMU_SHFL_IDX, EMU_SHFL_UP, EMU_SHFL_DOWN, EMU_SHFL_XOR, EMU_SYNCWARP };
uint64_t emu_warp_exchange(unsigned mask, uint64_t bits, EmuShuffle kind, int arg, int width);

template <class T> inline T emu_shuffle(unsigned mask, T v, EmuShuffle kind, int arg, int width) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a small value");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof v);
    bits = emu_warp_exchange(mask, bits, kind, arg, width);
    T out;
    std::memcpy(&out, &bits, sizeof out);
    return out;
}
template <class T> inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = warpSize) {
    return emu_shuffle(mask, v, EMU_SHFL_IDX, src_lane, width);
}
template <class T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    return emu_shuffle(mask, v, EMU_SHFL_UP, (int)delta, width);
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    return emu_shuffle(mask, v, EMU_SHFL_DOWN, (int)delta, width);
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
    return emu_shuffle(mask, v, EMU_SHFL_XOR, lane_mask, width);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    (void)emu_warp_exchange(mask, 0, EMU_SYNCWARP, 0, warpSize);
}

/* Atomics: only one thread runs at a time, so a plain read-modify-write is atomic here. */
template <class T> inline T atomicAdd(T *address, T value) {
    static_assert(std::is_arithmetic_v<T>, "atomicAdd of a number");
    const T old = *address;
    *address = old + value;
    return old;
}

/* the device math functions the kernels use that the host's libm lacks (host precision) */
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float cospif(float x) { return (float)std::cos(M_PI * (double)x); }
inline float sinpif(float x) { return (float)std::sin(M_PI * (double)x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
using std::max;
using std::min;

/* shared memory: the launch's dynamic array, and the registration of a static one */
void *emu_dynamic_shared();
void emu_static_shared(void *variable, size_t bytes);

/* ---- the launch ------------------------------------------------------------------------------*/

struct EmuLaunchConfig {
    const char *name;
    dim3 grid, block;
    size_t smem;
};
/* Runs thread_main(arg) as every thread of every block (emu_runtime.cpp); a bad configuration
 * becomes the error cudaGetLastError returns, as on a GPU. */
void emu_run_grid(const EmuLaunchConfig &config, void (*thread_main)(void *), void *arg);
/* A kernel's pointer argument must be device memory (or NULL, or page-locked host memory). */
void emu_check_kernel_pointer(const char *kernel, int index, const void *p);

template <class A> inline void emu_check_kernel_argument(const char *kernel, int index, const A &a) {
    if constexpr (std::is_pointer_v<A>) emu_check_kernel_pointer(kernel, index, (const void *)a);
}

template <class Body> struct EmuLauncher {
    EmuLaunchConfig config;
    Body body;
    /* the arguments are evaluated once and copied, as a launch does */
    template <class... A> void operator()(A... args) {
        int index = 0;
        (emu_check_kernel_argument(config.name, index++, args), ...);
        auto thread = [&] { body(args...); };
        emu_run_grid(config, [](void *p) { (*static_cast<decltype(thread) *>(p))(); }, &thread);
    }
};

template <class Body>
inline EmuLauncher<Body> emu_launch(const char *name, Body body, dim3 grid, dim3 block,
                                    size_t smem = 0, struct CUstream_st *stream = nullptr) {
    (void)stream; /* one stream: everything runs in order, at once */
    return EmuLauncher<Body>{{name, grid, block, smem}, body};
}

#endif /* EMU_DEVICE_H */
