// CudaContext: what the CUDA backend's kernels and its KV store share: the
// device, one stream (every kernel, copy and cuBLAS call of a model is
// ordered on it, so no call needs a device-wide sync), a cuBLAS handle and
// the device's size (SM count, for the attention plan), and which attention
// kernel f16 KV takes. Shared by pointer between a CudaBackend and the KV
// stores it makes.
#pragma once

#include <cstdlib>
#include <memory>
#include <string_view>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "fastinfer/backend/cuda/cuda_check.cuh"

namespace fastinfer::cuda {

class CudaContext {
 public:
  explicit CudaContext(int device = 0) : device_(device) {
    const int n = device_count();
    FASTINFER_CHECK(n > 0, Error, "cuda: no CUDA device is available (cudaGetDeviceCount found none)");
    FASTINFER_CHECK(device >= 0 && device < n, InvalidArgument, "cuda: device ", device, " outside [0, ", n, ")");
    FASTINFER_CUDA_CHECK(cudaSetDevice(device_));
    FASTINFER_CUDA_CHECK(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, device_));
    // A blocking stream: it waits for work on the legacy default stream, where
    // DeviceBuffer's zero-fill (cudaMemset) runs, so a kernel never races
    // the fill of a buffer it was just given.
    FASTINFER_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamDefault));
    const cublasStatus_t s = cublasCreate(&blas_);
    if (s != CUBLAS_STATUS_SUCCESS) {
      (void)cudaStreamDestroy(stream_);
      throw_cublas("cublasCreate(&blas_)", s, __FILE__, __LINE__);
    }
    FASTINFER_CUBLAS_CHECK(cublasSetStream(blas_, stream_));
  }
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;
  ~CudaContext() {
    (void)cublasDestroy(blas_);
    (void)cudaStreamDestroy(stream_);
  }

  int device() const { return device_; }
  int sm_count() const { return sms_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t blas() const { return blas_; }
  void synchronize() const { FASTINFER_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  // Whether f16 KV attention runs on tensor cores (attention_mma.cuh) where
  // the shape allows it, else attention.cuh's f32 kernel. On by default
  // (1.66x the f32 kernel's bandwidth on an H200, docs/backend-cuda.md);
  // FASTINFER_CUDA_ATTENTION_MMA=0 turns it off for a process; tests and
  // benchmarks set it per context to check and measure both kernels.
  bool tensor_core_attention() const { return tensor_core_attention_; }
  void set_tensor_core_attention(bool on) { tensor_core_attention_ = on; }

 private:
  int device_ = 0;
  int sms_ = 1;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  bool tensor_core_attention_ = [] {
    const char* e = std::getenv("FASTINFER_CUDA_ATTENTION_MMA");
    return e == nullptr || std::string_view(e) != "0";
  }();
};

}  // namespace fastinfer::cuda
