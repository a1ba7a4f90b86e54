/*
 * cuda_check.h - the CUDA backend's return-code checks, in the style of CHECK_MPI: each names the
 * call, the file, the line and (through paft_fatal) the rank, and ends the job. Plain C as well as
 * C++: the .cu files and the C files of kernels/ (device_comm.c) share it.
 */
#ifndef PAFT_CUDA_CHECK_H
#define PAFT_CUDA_CHECK_H

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "util/common.h"

#define CHECK_CUDA(call)                                                                           \
    do {                                                                                           \
        cudaError_t check_cuda_rc_ = (call);                                                       \
        if (check_cuda_rc_ != cudaSuccess)                                                         \
            paft_fatal(__FILE__, __LINE__, "CUDA call failed: %s: %s", #call,                      \
                       cudaGetErrorString(check_cuda_rc_));                                        \
    } while (0)

#define CHECK_CUBLAS(call)                                                                         \
    do {                                                                                           \
        cublasStatus_t check_cublas_rc_ = (call);                                                  \
        if (check_cublas_rc_ != CUBLAS_STATUS_SUCCESS)                                             \
            paft_fatal(__FILE__, __LINE__, "cuBLAS call failed: %s: status %d", #call,             \
                       (int)check_cublas_rc_);                                                     \
    } while (0)

/* After a kernel launch: launch errors are reported at once, not at the next sync. */
#define CHECK_LAUNCH() CHECK_CUDA(cudaGetLastError())

#ifdef PAFT_HAVE_NCCL /* defined by CMake when NCCL was found */
#include <nccl.h>

/* ncclGetLastError(NULL) adds NCCL's own explanation (which peer, which transport) to the code. */
#define CHECK_NCCL(call)                                                                           \
    do {                                                                                           \
        ncclResult_t check_nccl_rc_ = (call);                                                      \
        if (check_nccl_rc_ != ncclSuccess)                                                         \
            paft_fatal(__FILE__, __LINE__, "NCCL call failed: %s: %s (%s)", #call,                 \
                       ncclGetErrorString(check_nccl_rc_), ncclGetLastError(NULL));                \
    } while (0)
#endif

#ifdef __cplusplus
/* Dynamic shared memory above the default 48 KB needs the kernel's opt-in (cudaFuncSetAttribute);
 * more than the device allows ends the job with both numbers and `what` (the op and shape). */
template <typename Kernel>
static void cuda_allow_shared_memory(Kernel kernel, size_t bytes, const char *what) {
    int device = 0, optin = 0;
    CHECK_CUDA(cudaGetDevice(&device));
    CHECK_CUDA(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (bytes > (size_t)optin)
        paft_fatal(__FILE__, __LINE__,
                   "%s needs %zu bytes of shared memory per block, the device allows %d", what,
                   bytes, optin);
    CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}
#endif

#endif
