/*
 * cuda_check.h - the CUDA backend's return-code checks, in the style of CHECK_MPI: each names the
 * call, the file, the line and (through paft_fatal) the rank, and ends the job.
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

#endif
