// Warp and block reductions and the block prefix sum every CUDA kernel of
// the backend shares. Written on warp shuffles rather than taken from CUB:
// CUB brings libcu++'s namespace ::cuda, which makes `cuda::` ambiguous in
// any program that says `using namespace fastinfer;`.
//
// The order of operations is fixed (a butterfly within the warp, the warps'
// results combined the same way), so a float result has the same bits in
// every thread and on every run.
#pragma once

#include <cuda_runtime.h>

namespace fastinfer::cuda {

constexpr unsigned kFullWarp = 0xffffffffu;

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct MinOp {
  __device__ float operator()(float a, float b) const { return fminf(a, b); }
  __device__ int operator()(int a, int b) const { return min(a, b); }
};

// op over the warp's 32 values, in every lane.
template <typename T, class Op>
__device__ T warp_reduce(T v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(kFullWarp, v, o));
  return v;
}

// The sum of v over `peers` (the lanes that share a key, as
// __match_any_sync gives them; the caller's lane among them), returned in
// the lowest lane of each group (other lanes: partial sums). Every lane of
// the warp calls it together. At most log2(group size) rounds of one
// shuffle, where a loop over the lanes would take 32 (after E. Westphal's
// warp-aggregated atomics).
template <typename T>
__device__ T reduce_peers(unsigned peers, T v) {
  const int lane = int(threadIdx.x) % 32;
  int below = __popc(peers & ((1u << lane) - 1u));  // this lane's rank in its group
  peers &= 0xfffffffeu << lane;                     // the group's lanes above this one
  while (__any_sync(kFullWarp, peers != 0)) {
    const int next = __ffs(int(peers));  // the nearest lane above still holding a partial sum
    const T t = __shfl_sync(kFullWarp, v, next > 0 ? next - 1 : lane);
    if (next > 0) v += t;
    // Lanes of odd rank have been read: their partial sums are taken.
    peers &= ~__ballot_sync(kFullWarp, below & 1);
    below >>= 1;
  }
  return v;
}

// op over the block, in every thread. `scratch`: 32 T of shared memory;
// `identity` fills the lanes past the last warp. blockDim.x a multiple of 32.
template <typename T, class Op>
__device__ T block_reduce(T v, Op op, T identity, T* scratch) {
  v = warp_reduce(v, op);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = int(blockDim.x) / 32;
  return warp_reduce(lane < warps ? scratch[lane] : identity, op);
}

// The inclusive prefix sum of v over the block in thread order, and in
// `total` the block's sum (every thread). `scratch`: 32 T of shared memory;
// blockDim.x a multiple of 32.
template <typename T>
__device__ T block_inclusive_sum(T v, T* scratch, T& total) {
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  for (int o = 1; o < 32; o <<= 1) {
    const T below = __shfl_up_sync(kFullWarp, v, o);
    if (lane >= o) v += below;
  }
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 31) scratch[warp] = v;
  __syncthreads();
  // Every warp scans the warps' totals itself: lane j ends with warps 0..j.
  const int warps = int(blockDim.x) / 32;
  T warps_sum = lane < warps ? scratch[lane] : T(0);
  for (int o = 1; o < 32; o <<= 1) {
    const T below = __shfl_up_sync(kFullWarp, warps_sum, o);
    if (lane >= o) warps_sum += below;
  }
  const T before = __shfl_sync(kFullWarp, warps_sum, warp > 0 ? warp - 1 : 0);
  total = __shfl_sync(kFullWarp, warps_sum, warps - 1);
  return warp > 0 ? v + before : v;
}

}  // namespace fastinfer::cuda
