// y[n][rows] = x[n][cols] W^T on the device, W row-major [rows][cols] in f32,
// f16 or bf16, x and y f32.
//
//   n <= kGemvRows   gemv: one warp per output row, f32 activations times
//                    widened weights, f32 accumulation; the weights are
//                    streamed once for all n rows (decode and short
//                    verification passes are weight-bandwidth bound). A
//                    row's sum runs in the same order whatever n is, so its
//                    bits do not depend on the pass size (batch invariance,
//                    as cpu::matmul keeps up to 32 rows).
//                    cpu: cpu::matvec / cpu::matmul (same products, another
//                    summation order).
//   n >  kGemvRows   cuBLAS GemmEx, f32 accumulation (CUBLAS_COMPUTE_32F:
//                    no TF32). f16/bf16 weights need activations of their
//                    own type, so x is first rounded to it: an error of the
//                    16-bit format on the activations that the CPU's matmul
//                    (f32 activations) does not make; the tests state the
//                    tolerance.
#pragma once

#include <cstdint>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "fastinfer/backend/cuda/cuda_check.cuh"
#include "fastinfer/backend/cuda/device_buffer.cuh"
#include "fastinfer/backend/cuda/dtype.cuh"
#include "fastinfer/backend/cuda/elementwise.cuh"
#include "fastinfer/backend/cuda/launch.cuh"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer::cuda {

constexpr int kGemvRows = 32;

namespace linear_detail {

constexpr int kWarpsPerBlock = 8;

// 16 bytes of a weight row widened to f32: 4 values (f32) or 8 (f16, bf16).
template <DType D>
struct Vec16;
template <>
struct Vec16<DType::F32> {
  static constexpr int kValues = 4;
  __device__ static void load(const void* p, float* out) {
    const float4 v = *static_cast<const float4*>(p);
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  }
};
template <DType D>
struct Vec16Half {
  static constexpr int kValues = 8;
  __device__ static void load(const void* p, float* out) {
    const uint4 v = *static_cast<const uint4*>(p);
    const auto* h = reinterpret_cast<const typename DeviceDType<D>::Storage*>(&v);
    for (int i = 0; i < 8; ++i) out[i] = DeviceDType<D>::load(h, i);
  }
};
template <>
struct Vec16<DType::F16> : Vec16Half<DType::F16> {};
template <>
struct Vec16<DType::BF16> : Vec16Half<DType::BF16> {};

// V activations x[0..V) as float4 loads (x 16-byte aligned: the vector path's condition).
template <int V>
__device__ inline void load_x(const float* x, float* out) {
#pragma unroll
  for (int e = 0; e < V; e += 4) {
    const float4 v = *reinterpret_cast<const float4*>(x + e);
    out[e] = v.x, out[e + 1] = v.y, out[e + 2] = v.z, out[e + 3] = v.w;
  }
}

// One warp per output row r: y[i][r] for the n <= N rows of x. `vec`: rows
// and x are 16-byte aligned and cols a multiple of the vector width
// (16-byte loads), else one element per lane per step.
template <DType D, int N>
__global__ void gemv_kernel(const void* w, const float* x, float* y, std::int64_t rows, std::int64_t cols, int n,
                            int vec) {
  FASTINFER_CUDA_WAIT_PREVIOUS();
  using S = typename DeviceDType<D>::Storage;
  const std::int64_t r = std::int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = int(threadIdx.x % 32);
  if (r >= rows) return;
  const S* wr = static_cast<const S*>(w) + r * cols;
  float acc[N];
  for (int i = 0; i < N; ++i) acc[i] = 0.0f;
  if (vec) {
    // kUnroll 16-byte loads per lane in flight before their FMAs; the sum
    // still runs over c in ascending order, whatever n is.
    constexpr int V = Vec16<D>::kValues, kUnroll = 4;
    constexpr std::int64_t kStep = 32 * V;
    std::int64_t c = std::int64_t(lane) * V;
    for (; c + (kUnroll - 1) * kStep < cols; c += kUnroll * kStep) {
      float wv[kUnroll][V];
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) Vec16<D>::load(wr + c + k * kStep, wv[k]);
#pragma unroll
      for (int k = 0; k < kUnroll; ++k)
#pragma unroll
        for (int i = 0; i < N; ++i)
          if (i < n) {
            float xv[V];
            load_x<V>(x + i * cols + c + k * kStep, xv);
#pragma unroll
            for (int e = 0; e < V; ++e) acc[i] = fmaf(wv[k][e], xv[e], acc[i]);
          }
    }
    for (; c < cols; c += kStep) {
      float wv[V];
      Vec16<D>::load(wr + c, wv);
#pragma unroll
      for (int i = 0; i < N; ++i)
        if (i < n) {
          float xv[V];
          load_x<V>(x + i * cols + c, xv);
#pragma unroll
          for (int e = 0; e < V; ++e) acc[i] = fmaf(wv[e], xv[e], acc[i]);
        }
    }
  } else {
    for (std::int64_t c = lane; c < cols; c += 32) {
      const float wv = DeviceDType<D>::load(wr, c);
#pragma unroll
      for (int i = 0; i < N; ++i)
        if (i < n) acc[i] = fmaf(wv, x[i * cols + c], acc[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if (i >= n) break;
    float v = acc[i];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) y[i * rows + r] = v;
  }
}

template <DType D, int N>
void launch_gemv(const MatrixView& w, const float* x, std::int64_t n, float* y, cudaStream_t stream) {
  constexpr int V = Vec16<D>::kValues;
  const int vec = w.cols % V == 0 && reinterpret_cast<std::uintptr_t>(w.data) % 16 == 0 &&
                          reinterpret_cast<std::uintptr_t>(x) % 16 == 0
                      ? 1
                      : 0;
  const unsigned blocks = unsigned((w.rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  launch("gemv_kernel", gemv_kernel<D, N>, dim3(blocks), dim3(kWarpsPerBlock * 32), 0, stream, w.data, x, y, w.rows,
         w.cols, int(n), vec);
}

// The smallest of N = 1, 2, 4, 8, 16, 32 that holds n rows: six kernels per
// weight type, not 32.
template <DType D, int N = 1>
void gemv_rows(const MatrixView& w, const float* x, std::int64_t n, float* y, cudaStream_t stream) {
  if constexpr (N < kGemvRows) {
    if (n > N) return gemv_rows<D, 2 * N>(w, x, n, y, stream);
  }
  launch_gemv<D, N>(w, x, n, y, stream);
}

template <DType D>
constexpr cudaDataType_t cuda_data_type() {
  if constexpr (D == DType::F32) return CUDA_R_32F;
  if constexpr (D == DType::F16) return CUDA_R_16F;
  return CUDA_R_16BF;
}

}  // namespace linear_detail

// `scratch` holds x rounded to a 16-bit weight type (grown on demand).
inline void linear(const MatrixView& w, const float* x, std::int64_t n, float* y, cublasHandle_t blas,
                   DeviceBuffer<std::uint16_t>& scratch, cudaStream_t stream) {
  namespace ld = linear_detail;
  if (n <= 0) return;
  visit_device_dtype(w.dtype, [&](auto d) {
    constexpr DType D = decltype(d)::value;
    if (n <= kGemvRows) {
      ld::gemv_rows<D>(w, x, n, y, stream);
      return;
    }
    const void* b = x;
    if constexpr (D != DType::F32) {
      scratch.reserve_discard(std::size_t(n * w.cols));
      round_to<D>(reinterpret_cast<typename DeviceDType<D>::Storage*>(scratch.data()), x, n * w.cols, stream);
      b = scratch.data();
    }
    // Column-major view: Y[rows x n] = op(W)[rows x cols] X[cols x n], W
    // seen as its transpose [cols x rows] with leading dimension cols.
    const float alpha = 1.0f, beta = 0.0f;
    constexpr cudaDataType_t T = ld::cuda_data_type<D>();
    FASTINFER_CUBLAS_CHECK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, int(w.rows), int(n), int(w.cols), &alpha,
                                        w.data, T, int(w.cols), b, T, int(w.cols), &beta, y, CUDA_R_32F,
                                        int(w.rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  });
}

}  // namespace fastinfer::cuda
