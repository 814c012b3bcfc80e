// Checked CUDA and cuBLAS calls: a failing call throws fastinfer's Error
// with one line naming the call, the file:line and the runtime's own words,
// so "cudaMalloc(&p, bytes) failed: out of memory" reaches the caller
// instead of a later kernel reading garbage.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "fastinfer/core/error.hpp"

namespace fastinfer::cuda {

inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cublasStatus_t";
  }
}

[[noreturn]] inline void throw_cuda(const char* call, cudaError_t e, const char* file, int line) {
  throw_error<Error>("cuda: ", call, " failed: ", cudaGetErrorString(e), " (", cudaGetErrorName(e), ") at ", file,
                     ":", line);
}
[[noreturn]] inline void throw_cublas(const char* call, cublasStatus_t s, const char* file, int line) {
  throw_error<Error>("cuda: ", call, " failed: ", cublas_status_name(s), " at ", file, ":", line);
}

// Devices this process can use; 0 when the driver or runtime finds none
// (no GPU, no driver): what tests ask before they skip.
inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

}  // namespace fastinfer::cuda

#define FASTINFER_CUDA_CHECK(call)                                                      \
  do {                                                                                  \
    const cudaError_t fastinfer_cuda_e_ = (call);                                       \
    if (fastinfer_cuda_e_ != cudaSuccess)                                               \
      ::fastinfer::cuda::throw_cuda(#call, fastinfer_cuda_e_, __FILE__, __LINE__);      \
  } while (0)

#define FASTINFER_CUBLAS_CHECK(call)                                                    \
  do {                                                                                  \
    const cublasStatus_t fastinfer_cublas_s_ = (call);                                  \
    if (fastinfer_cublas_s_ != CUBLAS_STATUS_SUCCESS)                                   \
      ::fastinfer::cuda::throw_cublas(#call, fastinfer_cublas_s_, __FILE__, __LINE__);  \
  } while (0)

// After a kernel launch: a bad configuration shows here, not at the next sync.
#define FASTINFER_CUDA_CHECK_LAUNCH(name) FASTINFER_CUDA_CHECK(cudaPeekAtLastError() /* launch of name */)
