#pragma once
typedef int cublasStatus_t;
#define CUBLAS_STATUS_SUCCESS 0
