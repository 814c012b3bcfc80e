// Attention over the CUDA KV store's paged arena: one kernel for decode
// (one query per sequence), extend (causal over the last n positions:
// chunked prefill, draft verification) and token trees (a custom mask over
// the new tokens), with the semantics of cpu::reference::paged_attention
// (attention_reference.hpp): query row qo_indptr[b] + i of sequence b sits at
// position length(b) - n_b + i; query head j reads KV head j / (n_q / n_kv);
// causal unless a mask is given, in which case row i sees every older key and
// new token j where mask[moff_b + i * n_b + j] != 0.
//
// Work: one block per (query row, query head, key split). A block walks its
// key range in tiles of kTile keys: one thread per key for the scores, an
// online softmax per tile, one thread per output column for P V. With one
// split the block writes the normalised row; with more (flash-decoding) each
// writes its unnormalised partial (acc, max, sum) and merge_kernel combines
// them exactly: M = max m_s, O = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s.
// The split count is planned on the host (attention_plan.hpp: plain data,
// tested without a GPU).
//
// A simple, correct first kernel: K is read one row per thread (not
// coalesced) and Q·K runs on CUDA cores; a tensor-core, cp.async version is
// the next step (docs/backend-cuda.md).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fastinfer/backend/cuda/attention_plan.hpp"
#include "fastinfer/backend/cuda/cuda_check.cuh"
#include "fastinfer/backend/cuda/elementwise.cuh"
#include "fastinfer/backend/cuda/kv_format.cuh"
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/memory/paged_allocator.hpp"

namespace fastinfer::cuda {

// One layer of the arena as the kernel sees it (device pointers), in
// kv::PagedKVView's layout: block, layer, K|V, KV head, token, head_dim.
struct DevicePagedKV {
  const std::uint8_t* k_codes = nullptr;  // this layer's K of block 0
  const std::uint8_t* v_codes = nullptr;
  std::int64_t block_stride = 0, head_stride = 0, row_bytes = 0;  // bytes
  // The parameter arena's (kv::KVCache's): floats, same block / layer / K|V
  // / head / token order; null with params_per_row 0 for the float formats.
  const float* k_params = nullptr;
  const float* v_params = nullptr;
  std::int64_t param_block_stride = 0, param_head_stride = 0;  // floats
  std::int32_t params_per_row = 0;
  std::int32_t n_kv_heads = 0, head_dim = 0, block_size = 0;
  const std::int32_t* indptr = nullptr;          // [batch + 1] into block_indices
  const BlockId* block_indices = nullptr;
  const std::int32_t* seq_len = nullptr;         // [batch]
};

// The rows of one step (device pointers).
struct DeviceQueryRows {
  const std::int32_t* row_seq = nullptr;    // [rows]: the sequence of each query row
  const std::int32_t* qo_indptr = nullptr;  // [batch + 1]
  const std::uint8_t* mask = nullptr;       // nullptr: causal
  const std::int64_t* mask_offset = nullptr;  // [batch]: where sequence b's n_b x n_b mask starts
};

namespace attention_detail {

constexpr int kTile = 128;     // keys per tile = threads per block
constexpr int kMaxCols = 4;    // head_dim <= kMaxCols * kTile (512)


__device__ inline float block_max(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  const int warps = int(blockDim.x + 31) / 32;
  v = lane < warps ? red[lane] : -INFINITY;
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// grid (rows, n_q_heads, splits), block kTile threads, dynamic shared memory
// (head_dim + kTile) floats. partial: [rows][heads][splits][head_dim + 2]
// (acc..., max, sum) when splits > 1.
template <typename Quant>
__global__ void attention_kernel(DevicePagedKV kv, DeviceQueryRows qr, const float* q, float* out, float* partial,
                                 int n_q_heads, float scale, std::int64_t chunk) {
  extern __shared__ float smem[];
  __shared__ float red[32];
  const int d = kv.head_dim;
  float* qs = smem;       // [d]
  float* p = smem + d;    // [kTile]
  const std::int64_t row = blockIdx.x;
  const int hq = int(blockIdx.y), split = int(blockIdx.z), splits = int(gridDim.z);
  const int h = hq / (n_q_heads / kv.n_kv_heads);
  const int b = qr.row_seq[row];
  const std::int64_t len = kv.seq_len[b];
  const std::int64_t n = qr.qo_indptr[b + 1] - qr.qo_indptr[b];
  const std::int64_t i = row - qr.qo_indptr[b];
  const std::int64_t first_new = len - n, pos = first_new + i;
  const std::int64_t key_end = qr.mask ? len : pos + 1;
  const std::uint8_t* mrow = qr.mask ? qr.mask + qr.mask_offset[b] + i * n : nullptr;
  const std::int64_t begin = std::int64_t(split) * chunk;
  const std::int64_t end = key_end < begin + chunk ? key_end : begin + chunk;

  const float* qrow = q + (row * n_q_heads + hq) * d;
  for (int j = threadIdx.x; j < d; j += blockDim.x) qs[j] = qrow[j] * scale;
  const BlockId* table = kv.block_indices + kv.indptr[b];
  float m = -INFINITY, l = 0.0f, acc[kMaxCols];
  for (int c = 0; c < kMaxCols; ++c) acc[c] = 0.0f;
  __syncthreads();
  for (std::int64_t t0 = begin; t0 < end; t0 += kTile) {
    const std::int64_t key = t0 + threadIdx.x;
    float s = -INFINITY;
    if (key < end && (mrow == nullptr || key < first_new || mrow[key - first_new] != 0)) {
      const BlockId blk = table[key / kv.block_size];
      const std::uint8_t* kr = kv.k_codes + std::int64_t(blk) * kv.block_stride + std::int64_t(h) * kv.head_stride +
                               (key % kv.block_size) * kv.row_bytes;
      float dot = 0.0f;
      const float* kp = kv.k_params + std::int64_t(blk) * kv.param_block_stride + std::int64_t(h) * kv.param_head_stride +
                        (key % kv.block_size) * kv.params_per_row;
      for (int j = 0; j < d; ++j) dot = fmaf(qs[j], DeviceKVFormat<Quant>::load(kr, kp, j), dot);
      s = dot;
    }
    const float tile_max = block_max(s, red);
    const float m_new = fmaxf(m, tile_max);
    if (m_new == -INFINITY) continue;  // nothing visible yet: every thread agrees
    const float alpha = m == -INFINITY ? 0.0f : expf(m - m_new);
    const float w = s == -INFINITY ? 0.0f : expf(s - m_new);
    p[threadIdx.x] = w;
    l = l * alpha + elementwise_detail::block_sum(w, red);  // its syncs also publish p
    m = m_new;
    const int tn = end - t0 < kTile ? int(end - t0) : kTile;
    for (int c = 0; c < kMaxCols; ++c) {
      const int j = int(threadIdx.x) + c * kTile;
      if (j >= d) break;
      float a = acc[c] * alpha;
      for (int t = 0; t < tn; ++t) {
        const std::int64_t kk = t0 + t;
        const BlockId blk = table[kk / kv.block_size];
        const std::uint8_t* vr = kv.v_codes + std::int64_t(blk) * kv.block_stride +
                                 std::int64_t(h) * kv.head_stride + (kk % kv.block_size) * kv.row_bytes;
        const float* vp = kv.v_params + std::int64_t(blk) * kv.param_block_stride +
                          std::int64_t(h) * kv.param_head_stride + (kk % kv.block_size) * kv.params_per_row;
        a = fmaf(p[t], DeviceKVFormat<Quant>::load(vr, vp, j), a);
      }
      acc[c] = a;
    }
    __syncthreads();  // p is rewritten by the next tile
  }
  if (splits == 1) {
    float* o = out + (row * n_q_heads + hq) * d;
    for (int c = 0; c < kMaxCols; ++c) {
      const int j = int(threadIdx.x) + c * kTile;
      if (j < d) o[j] = l > 0.0f ? acc[c] / l : 0.0f;
    }
  } else {
    float* pr = partial + ((row * n_q_heads + hq) * splits + split) * (d + 2);
    for (int c = 0; c < kMaxCols; ++c) {
      const int j = int(threadIdx.x) + c * kTile;
      if (j < d) pr[j] = acc[c];
    }
    if (threadIdx.x == 0) pr[d] = m, pr[d + 1] = l;
  }
}

// grid (rows, n_q_heads), block kTile: the exact merge of the splits.
__global__ void merge_kernel(const float* partial, float* out, int n_q_heads, int d, int splits) {
  const std::int64_t row = blockIdx.x;
  const int hq = int(blockIdx.y);
  const float* pr = partial + (row * n_q_heads + hq) * std::int64_t(splits) * (d + 2);
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, pr[s * (d + 2) + d]);
  float l = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float ms = pr[s * (d + 2) + d];
    if (ms != -INFINITY) l += expf(ms - mx) * pr[s * (d + 2) + d + 1];
  }
  float* o = out + (row * n_q_heads + hq) * d;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float a = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float ms = pr[s * (d + 2) + d];
      if (ms != -INFINITY) a += expf(ms - mx) * pr[s * (d + 2) + j];
    }
    o[j] = l > 0.0f ? a / l : 0.0f;
  }
}

}  // namespace attention_detail

// cpu: cpu::decode_attention / cpu::extend_attention (oracle:
// cpu::reference::paged_attention). `partial` holds rows * n_q_heads *
// plan.splits * (head_dim + 2) floats when plan.splits > 1.
template <typename Quant>
void paged_attention(const DevicePagedKV& kv, const DeviceQueryRows& qr, const float* q, float* out, float* partial,
                     std::int64_t rows, int n_q_heads, const SplitPlan& plan, cudaStream_t stream) {
  namespace ad = attention_detail;
  if (rows <= 0) return;
  FASTINFER_CHECK(kv.head_dim <= ad::kMaxCols * ad::kTile, InvalidArgument, "cuda attention: head_dim ",
                  kv.head_dim, " exceeds ", ad::kMaxCols * ad::kTile);
  FASTINFER_CHECK(n_q_heads % kv.n_kv_heads == 0, InvalidArgument, "attention: ", n_q_heads,
                  " query heads cannot share ", kv.n_kv_heads, " KV heads evenly");
  const float scale = 1.0f / std::sqrt(float(kv.head_dim));
  const dim3 grid(unsigned(rows), unsigned(n_q_heads), unsigned(plan.splits));
  const std::size_t smem = sizeof(float) * std::size_t(kv.head_dim + ad::kTile);
  ad::attention_kernel<Quant><<<grid, ad::kTile, smem, stream>>>(kv, qr, q, out, partial, n_q_heads, scale,
                                                                 plan.splits == 1 ? std::int64_t(1) << 40 : plan.chunk);
  FASTINFER_CUDA_CHECK_LAUNCH(attention_kernel);
  if (plan.splits > 1) {
    ad::merge_kernel<<<dim3(unsigned(rows), unsigned(n_q_heads)), ad::kTile, 0, stream>>>(partial, out, n_q_heads,
                                                                                        kv.head_dim, plan.splits);
    FASTINFER_CUDA_CHECK_LAUNCH(merge_kernel);
  }
}

}  // namespace fastinfer::cuda
