// DeviceBuffer<T>: n elements of device memory (plain cudaMalloc, never
// managed memory), zero-filled, owning, movable, not copyable: the CUDA
// backend's Buffer<T>. Also the small host<->device copy helpers every CUDA
// component uses, so none of them writes its own.
#pragma once

#include <cstddef>
#include <utility>

#include <cuda_runtime.h>

#include "fastinfer/backend/cuda/cuda_check.cuh"

namespace fastinfer::cuda {

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) : n_(n) {
    if (n_ == 0) return;
    FASTINFER_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), sizeof(T) * n_));
    FASTINFER_CUDA_CHECK(cudaMemset(p_, 0, sizeof(T) * n_));
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release_();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release_(); }

  T* data() { return p_; }
  const T* data() const { return p_; }
  std::size_t size() const { return n_; }

  // Grows (contents lost) to at least n elements; a scratch buffer's verb.
  // cudaFree waits for the device, so a kernel still reading the old
  // buffer finishes first.
  void reserve_discard(std::size_t n) {
    if (n > n_) *this = DeviceBuffer(n + n / 2);
  }

 private:
  void release_() {
    if (p_) (void)cudaFree(p_);  // a destructor must not throw; a failed free leaks
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

// Host -> device on `stream`; the host array may be reused when this returns
// (pageable memory is staged by the runtime before the call returns).
template <typename T>
void copy_to_device(T* dst, const T* src, std::size_t n, cudaStream_t stream) {
  if (n > 0) FASTINFER_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(T) * n, cudaMemcpyHostToDevice, stream));
}

// Device -> host, finished when this returns.
template <typename T>
void copy_to_host(T* dst, const T* src, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  FASTINFER_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(T) * n, cudaMemcpyDeviceToHost, stream));
  FASTINFER_CUDA_CHECK(cudaStreamSynchronize(stream));
}

// A host array staged in a device scratch buffer (grown on demand); returns
// the device copy.
template <typename T>
const T* stage(DeviceBuffer<T>& scratch, const T* host, std::size_t n, cudaStream_t stream) {
  scratch.reserve_discard(n);
  copy_to_device(scratch.data(), host, n, stream);
  return scratch.data();
}

}  // namespace fastinfer::cuda
