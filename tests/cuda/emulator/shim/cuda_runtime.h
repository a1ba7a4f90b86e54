/* emulator shim: just enough of the CUDA runtime for kernels/attention_cuda.cu and init_cuda.cu */
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <math.h>
#define __global__
#define __device__
#define __host__
#define __shared__
#define __launch_bounds__(...)
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
extern thread_local dim3 threadIdx;
extern dim3 blockIdx, blockDim, gridDim;
void __syncthreads();
typedef int cudaError_t;
enum { cudaSuccess = 0 };
inline cudaError_t cudaGetLastError() { return 0; }
inline const char *cudaGetErrorString(cudaError_t) { return "emulated"; }
inline cudaError_t cudaGetDevice(int *d) { *d = 0; return 0; }
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin };
extern int emu_smem_optin;
inline cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr, int) { *v = emu_smem_optin; return 0; }
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
extern size_t emu_smem_allowed;
template <class F> cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int v) { emu_smem_allowed = (size_t)v; return 0; }
using std::min;
using std::max;
inline float cospif(float x) { return (float)std::cos(M_PI * (double)x); }
