/*
 * cuda_runtime.h - the emulator's stand-in for the CUDA runtime header: the part of the runtime
 * API that paft's CUDA backend calls (kernels/, src/model/device_ops.h, tests/cuda), for C and
 * C++, implemented on the CPU by emu_runtime.cpp. In C++ it also brings the device side
 * (emu_device.h: threadIdx, __syncthreads, warp shuffles, atomics, the launch that replaces
 * `kernel<<<grid, block, smem>>>(args)`).
 *
 * Enumerator values are the real ones (driver_types.h) so that messages name the same codes.
 * Device memory is emulated device memory: host code that dereferences it faults, as it would
 * with a real GPU (see emu_runtime.cpp).
 */
#ifndef EMU_CUDA_RUNTIME_H
#define EMU_CUDA_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorIllegalAddress = 700,
    cudaErrorHostMemoryAlreadyRegistered = 712,
    cudaErrorHostMemoryNotRegistered = 713
} cudaError_t;

typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t; /* a time stamp: kernels run when launched here */

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
};
typedef enum cudaMemcpyKind cudaMemcpyKind;

enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
typedef enum cudaDeviceAttr cudaDeviceAttr;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
typedef enum cudaFuncAttribute cudaFuncAttribute;

#define cudaHostRegisterDefault 0x00u
#define cudaHostRegisterPortable 0x01u
#define cudaHostRegisterMapped 0x02u
#define cudaHostAllocDefault 0x00u

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaEventCreate(cudaEvent_t *event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t error);
const char *cudaGetErrorName(cudaError_t error);
cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceGetPCIBusId(char *pci_bus_id, int len, int device);

cudaError_t cudaMalloc(void **device_ptr, size_t bytes);
cudaError_t cudaFree(void *device_ptr);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind);
/* height rows of width bytes, dpitch / spitch bytes apart (each row a checked cudaMemcpy) */
cudaError_t cudaMemcpy2D(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                         size_t height, enum cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t stream);
cudaError_t cudaMemset(void *device_ptr, int value, size_t bytes);
cudaError_t cudaMallocHost(void **host_ptr, size_t bytes);
cudaError_t cudaFreeHost(void *host_ptr);
cudaError_t cudaHostRegister(void *host_ptr, size_t bytes, unsigned int flags);
cudaError_t cudaHostUnregister(void *host_ptr);

/* the C entry of cudaFuncSetAttribute (the real header has the same, plus a C++ template) */
cudaError_t emu_func_set_attribute(const void *func, enum cudaFuncAttribute attr, int value);

#ifdef __cplusplus
}

/* C++: the typed overloads of the real header, and the device side */
template <class T> inline cudaError_t cudaMalloc(T **device_ptr, size_t bytes) {
    return cudaMalloc((void **)device_ptr, bytes);
}
template <class T> inline cudaError_t cudaMallocHost(T **host_ptr, size_t bytes) {
    return cudaMallocHost((void **)host_ptr, bytes);
}
template <class F> inline cudaError_t cudaFuncSetAttribute(F *func, cudaFuncAttribute attr, int value) {
    return emu_func_set_attribute(reinterpret_cast<const void *>(func), attr, value);
}
#include "emu_device.h"
#endif

#endif /* EMU_CUDA_RUNTIME_H */
