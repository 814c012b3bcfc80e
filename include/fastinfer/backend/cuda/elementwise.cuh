// The CUDA backend's row kernels: embedding rows, RMSNorm, RoPE, SwiGLU,
// residual add, strided row copies and the f32 -> f16/bf16 activation
// rounding that feeds cuBLAS. Each names its CPU counterpart; the tests
// (tests/backend/cuda/test_cuda_backend.cu) compare them on the same inputs.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "fastinfer/backend/cuda/block_reduce.cuh"
#include "fastinfer/backend/cuda/cuda_check.cuh"
#include "fastinfer/backend/cuda/dtype.cuh"
#include "fastinfer/backend/cuda/launch.cuh"
#include "fastinfer/core/rope_style.hpp"

namespace fastinfer::cuda {

namespace elementwise_detail {

constexpr int kThreads = 256;

inline unsigned blocks_for(std::int64_t n, int threads = kThreads) {
  return unsigned((n + threads - 1) / threads);
}

template <DType D>
__global__ void embed_kernel(const typename DeviceDType<D>::Storage* table, std::int64_t cols,
                             const std::int32_t* tokens, std::int64_t n, float* out) {
  FASTINFER_CUDA_KERNEL_PROLOGUE();
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * cols) return;
  const std::int64_t t = i / cols, c = i % cols;
  out[i] = load_weight<D>(table + std::int64_t(tokens[t]) * row_stride<D>(cols), cols, c);
}

// A row of up to kThreads * kRmsPerThread values is read once, into
// registers, its weights loaded beside it so that both latencies overlap;
// longer rows are read twice. The sum runs in the same order either way.
// With `delta` (rows then nullptr) the row is first x += delta, written
// back: the residual add and the norm after it in one launch, each value
// as add_kernel and the plain norm compute it.
constexpr int kRmsPerThread = 16;
__global__ void rmsnorm_kernel(float* out, float* x, const float* delta, const std::int32_t* rows,
                               const float* weight, int dim, float eps) {
  FASTINFER_CUDA_KERNEL_PROLOGUE();
  __shared__ float red[32];
  const std::int64_t r = blockIdx.x;
  float* xr = x + (rows ? std::int64_t(rows[r]) : r) * dim;
  const float* dr = delta ? delta + r * dim : nullptr;
  float* o = out + r * dim;
  const int step = int(blockDim.x);
  if (dim <= step * kRmsPerThread) {
    float xv[kRmsPerThread], wv[kRmsPerThread];
#pragma unroll
    for (int k = 0; k < kRmsPerThread; ++k) {
      const int i = int(threadIdx.x) + k * step;
      xv[k] = i < dim ? xr[i] : 0.0f;
      wv[k] = i < dim ? weight[i] : 0.0f;
      if (dr && i < dim) xv[k] += dr[i];
    }
    if (dr) {
#pragma unroll
      for (int k = 0; k < kRmsPerThread; ++k) {
        const int i = int(threadIdx.x) + k * step;
        if (i < dim) xr[i] = xv[k];
      }
    }
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < kRmsPerThread; ++k) ss += xv[k] * xv[k];
    ss = block_reduce(ss, SumOp{}, 0.0f, red);
    const float scale = 1.0f / sqrtf(ss / float(dim) + eps);
#pragma unroll
    for (int k = 0; k < kRmsPerThread; ++k) {
      const int i = int(threadIdx.x) + k * step;
      if (i < dim) o[i] = wv[k] * (scale * xv[k]);
    }
    return;
  }
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += step) {
    if (dr) xr[i] += dr[i];  // this thread reads xr[i] again below
    ss += xr[i] * xr[i];
  }
  ss = block_reduce(ss, SumOp{}, 0.0f, red);
  const float scale = 1.0f / sqrtf(ss / float(dim) + eps);
  for (int i = threadIdx.x; i < dim; i += step) o[i] = weight[i] * (scale * xr[i]);
}

// cos/sin come from a table the host computed with the CPU's own f32
// std::pow/cos/sin (cpu::rope's table), so angles are the same bits; the
// products are kept unfused (__fmul_rn) so that contraction into an FMA
// does not move the result.
// x: [n][heads][head_dim], then (x2 non-null) x2: [n][heads2][head_dim] at
// the same positions (q and k in one launch).
__global__ void rope_kernel(float* x, std::int64_t n, int heads, int head_dim, const std::int32_t* positions,
                            const float* cos_t, const float* sin_t, int interleaved, float* x2, int heads2) {
  FASTINFER_CUDA_KERNEL_PROLOGUE();
  const int half = head_dim / 2;
  std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * heads * half) {
    i -= n * heads * half;
    if (x2 == nullptr || i >= n * heads2 * half) return;
    x = x2, heads = heads2;
  }
  const std::int64_t t = i / (std::int64_t(heads) * half);
  const int h = int((i / half) % heads), j = int(i % half);
  float* v = x + (t * heads + h) * head_dim;
  const std::int64_t at = std::int64_t(positions[t]) * half + j;
  const float c = cos_t[at], s = sin_t[at];
  const int a = interleaved ? 2 * j : j, b = interleaved ? 2 * j + 1 : j + half;
  const float x0 = v[a], x1 = v[b];
  v[a] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
  v[b] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}

}  // namespace elementwise_detail

// silu(g) * u, the one expression of swiglu wherever it is computed (here
// and in the GEMV's gate/up epilogue, linear.cuh), so both give the same bits.
__device__ inline float swiglu_value(float g, float u) { return g / (1.0f + expf(-g)) * u; }

namespace elementwise_detail {

__global__ void swiglu_kernel(float* gate, const float* up, std::int64_t n) {
  FASTINFER_CUDA_KERNEL_PROLOGUE();
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  gate[i] = swiglu_value(gate[i], up[i]);
}

__global__ void add_kernel(float* y, const float* x, std::int64_t n) {
  FASTINFER_CUDA_KERNEL_PROLOGUE();
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] += x[i];
}

__global__ void copy_rows_kernel(float* dst, std::int64_t dst_stride, const float* src, std::int64_t src_stride,
                                 std::int64_t rows, int width) {
  FASTINFER_CUDA_KERNEL_PROLOGUE();
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * width) return;
  const std::int64_t r = i / width, c = i % width;
  dst[r * dst_stride + c] = src[r * src_stride + c];
}

template <DType D>
__global__ void round_kernel(typename DeviceDType<D>::Storage* dst, const float* src, std::int64_t n) {
  FASTINFER_CUDA_KERNEL_PROLOGUE();
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = DeviceDType<D>::store(src[i]);
}

}  // namespace elementwise_detail

// cpu: CpuBackend::embed (cpu::load_row per token).
inline void embed(DType dtype, const void* table, std::int64_t cols, const std::int32_t* tokens, std::int64_t n,
                  float* out, cudaStream_t stream) {
  namespace ed = elementwise_detail;
  if (n <= 0) return;
  visit_device_dtype(dtype, [&](auto d) {
    constexpr DType D = decltype(d)::value;
    launch("embed_kernel", ed::embed_kernel<D>, dim3(ed::blocks_for(n * cols)), dim3(ed::kThreads), 0, stream,
           static_cast<const typename DeviceDType<D>::Storage*>(table), cols, tokens, n, out);
  });
}

// cpu: cpu::rmsnorm, one block per row.
inline void rmsnorm(float* out, const float* x, const std::int32_t* rows, std::int64_t n, const float* weight,
                    int dim, float eps, cudaStream_t stream) {
  if (n <= 0) return;
  // x is only written with a delta (add_rmsnorm).
  launch("rmsnorm_kernel", elementwise_detail::rmsnorm_kernel, dim3(unsigned(n)), dim3(256), 0, stream, out,
         const_cast<float*>(x), static_cast<const float*>(nullptr), rows, weight, dim, eps);
}

// cpu: cpu::add then cpu::rmsnorm: x[i] += delta[i], then out[i] = norm(x[i])
// (out may be delta), one launch.
inline void add_rmsnorm(float* x, const float* delta, float* out, std::int64_t n, const float* weight, int dim,
                        float eps, cudaStream_t stream) {
  if (n <= 0) return;
  launch("rmsnorm_kernel", elementwise_detail::rmsnorm_kernel, dim3(unsigned(n)), dim3(256), 0, stream, out, x,
         delta, static_cast<const std::int32_t*>(nullptr), weight, dim, eps);
}

// cpu: cpu::rope; positions on the device (int32), tables [position][head_dim / 2].
inline void rope(float* x, std::int64_t n, int heads, int head_dim, const std::int32_t* positions,
                 const float* cos_t, const float* sin_t, RopeStyle style, cudaStream_t stream, float* x2 = nullptr,
                 int heads2 = 0) {
  namespace ed = elementwise_detail;
  if (n <= 0) return;
  const std::int64_t pairs = n * (std::int64_t(heads) + (x2 ? heads2 : 0)) * (head_dim / 2);
  launch("rope_kernel", ed::rope_kernel, dim3(ed::blocks_for(pairs)), dim3(ed::kThreads), 0, stream, x, n, heads,
         head_dim, positions, cos_t, sin_t, style == RopeStyle::Interleaved ? 1 : 0, x2, heads2);
}

// cpu: cpu::swiglu.
inline void swiglu(float* gate, const float* up, std::int64_t n, cudaStream_t stream) {
  namespace ed = elementwise_detail;
  if (n <= 0) return;
  launch("swiglu_kernel", ed::swiglu_kernel, dim3(ed::blocks_for(n)), dim3(ed::kThreads), 0, stream, gate, up, n);
}

// cpu: cpu::add.
inline void add(float* y, const float* x, std::int64_t n, cudaStream_t stream) {
  namespace ed = elementwise_detail;
  if (n <= 0) return;
  launch("add_kernel", ed::add_kernel, dim3(ed::blocks_for(n)), dim3(ed::kThreads), 0, stream, y, x, n);
}

// cpu: CpuBackend::copy_rows (memcpy per row).
inline void copy_rows(float* dst, std::int64_t dst_stride, const float* src, std::int64_t src_stride,
                      std::int64_t rows, int width, cudaStream_t stream) {
  namespace ed = elementwise_detail;
  if (rows <= 0 || width <= 0) return;
  launch("copy_rows_kernel", ed::copy_rows_kernel, dim3(ed::blocks_for(rows * width)), dim3(ed::kThreads), 0, stream,
         dst, dst_stride, src, src_stride, rows, width);
}

// f32 activations rounded to the weights' 16-bit type (cuBLAS's GemmEx
// takes A and B of one type). cpu: f32_to_f16 / f32_to_bf16.
template <DType D>
void round_to(typename DeviceDType<D>::Storage* dst, const float* src, std::int64_t n, cudaStream_t stream) {
  namespace ed = elementwise_detail;
  if (n <= 0) return;
  launch("round_kernel", ed::round_kernel<D>, dim3(ed::blocks_for(n)), dim3(ed::kThreads), 0, stream, dst, src, n);
}

}  // namespace fastinfer::cuda
