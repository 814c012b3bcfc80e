// Greedy choice on the device: for each selected logits row, its largest
// value and the first index holding it (cpu: core/argmax.hpp first_argmax and
// cpu::argmax_token; same token, ties to the lowest index). Only a few bytes
// per row come back to the host instead of the whole vocabulary row.
//
// One block per row; each thread keeps the best of its strided elements, then
// warp shuffles and one shared-memory round pick the best of the block. A row
// holding NaN is flagged (the host refuses it by name, as the CPU does);
// +inf and all -inf rows are refused by the host from the returned maximum.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "fastinfer/backend/cuda/cuda_check.cuh"
#include "fastinfer/backend/cuda/launch.cuh"

namespace fastinfer::cuda {

// What the device returns per row: the maximum (of the non-NaN values), its
// first index, and whether the row held a NaN.
struct RowArgmax {
  float value;
  std::int32_t index;
  std::int32_t has_nan;
};

namespace argmax_detail {

constexpr int kThreads = 256;
constexpr std::int32_t kNoIndex = 0x7fffffff;

// (value, index) pairs ordered by value, then by lower index (the first max).
__device__ inline void keep_better(float& best, std::int32_t& index, float v, std::int32_t i) {
  if (v > best || (v == best && i < index)) best = v, index = i;
}

// The best (value, index) of the warp and whether any lane saw a NaN, in
// every lane.
__device__ inline void warp_keep_best(float& best, std::int32_t& index, std::int32_t& nan) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const std::int32_t oi = __shfl_xor_sync(0xffffffffu, index, o);
    nan |= __shfl_xor_sync(0xffffffffu, nan, o);
    keep_better(best, index, ov, oi);
  }
}

__global__ void argmax_rows_kernel(const float* logits, std::int64_t vocab, const std::int32_t* rows,
                                   RowArgmax* out) {
  FASTINFER_CUDA_KERNEL_PROLOGUE();
  __shared__ float warp_best[32];
  __shared__ std::int32_t warp_index[32];
  __shared__ std::int32_t warp_nan[32];
  const float* x = logits + std::int64_t(rows[blockIdx.x]) * vocab;
  float best = -INFINITY;
  std::int32_t index = kNoIndex;
  std::int32_t nan = 0;
  // Ascending stride: a thread's first maximum is its lowest such index.
  for (std::int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = x[i];
    if (v != v) {
      nan = 1;
      continue;
    }
    if (v > best) best = v, index = std::int32_t(i);
  }
  warp_keep_best(best, index, nan);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  if (lane == 0) warp_best[warp] = best, warp_index[warp] = index, warp_nan[warp] = nan;
  __syncthreads();
  if (warp != 0) return;
  const int warps = int(blockDim.x + 31) / 32;
  best = lane < warps ? warp_best[lane] : -INFINITY;
  index = lane < warps ? warp_index[lane] : kNoIndex;
  nan = lane < warps ? warp_nan[lane] : 0;
  warp_keep_best(best, index, nan);
  if (lane == 0) out[blockIdx.x] = RowArgmax{best, index, nan};
}

}  // namespace argmax_detail

// out[i] for logits row rows[i] (rows on the device), n rows; vocab in
// [1, 2^31) (the caller checks).
inline void argmax_rows(const float* logits, std::int64_t vocab, const std::int32_t* rows, std::int64_t n,
                        RowArgmax* out, cudaStream_t stream) {
  if (n <= 0) return;
  launch("argmax_rows_kernel", argmax_detail::argmax_rows_kernel, dim3(unsigned(n)), dim3(argmax_detail::kThreads), 0,
         stream, logits, vocab, rows, out);
}

}  // namespace fastinfer::cuda
