// What both paged attention kernels (attention.cuh's f32 kernel and
// attention_mma.cuh's tensor-core one) read about a step: the arena of one
// layer, the step's query rows, and where each row sits among its
// sequence's keys (the semantics at the top of attention.cuh).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

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

// Query row `row` of the step and the keys [begin, end) its split `split`
// of `chunk` keys attends: causal rows see every key up to their own
// position, masked rows every older key and the new tokens their mask row
// allows.
struct RowKeys {
  std::int32_t seq = 0;                    // the row's sequence
  std::int64_t first_new = 0;              // position of the sequence's first new token
  std::int64_t begin = 0, end = 0;         // this split's keys
  const std::uint8_t* mask_row = nullptr;  // the row's mask over the new tokens; nullptr: causal
  const BlockId* table = nullptr;          // the sequence's block table

  // Whether key `key` (>= begin) is one this split attends.
  __device__ bool visible(std::int64_t key) const {
    return key < end && (mask_row == nullptr || key < first_new || mask_row[key - first_new] != 0);
  }
};

__device__ inline RowKeys row_keys(const DevicePagedKV& kv, const DeviceQueryRows& qr, std::int64_t row, int split,
                                   std::int64_t chunk) {
  RowKeys r;
  const int b = qr.row_seq[row];
  const std::int64_t len = kv.seq_len[b];
  const std::int64_t n = qr.qo_indptr[b + 1] - qr.qo_indptr[b];
  const std::int64_t i_new = row - qr.qo_indptr[b];
  r.seq = b;
  r.first_new = len - n;
  const std::int64_t key_end = qr.mask ? len : r.first_new + i_new + 1;
  r.mask_row = qr.mask ? qr.mask + qr.mask_offset[b] + i_new * n : nullptr;
  r.begin = std::int64_t(split) * chunk;
  r.end = key_end < r.begin + chunk ? key_end : r.begin + chunk;
  r.table = kv.block_indices + kv.indptr[b];
  return r;
}

// Element j of query head hq's output for query row `row`: normalised when
// the row has one split, else this split's unnormalised partial ([rows]
// [n_q_heads][splits][d + 2]: acc..., then at j == 0 the max, in natural
// log units, and the sum) for merge_kernel.
__device__ inline void store_output(float* out, float* partial, std::int64_t row, int n_q_heads, std::int64_t hq,
                                    int d, int split, int splits, int j, float acc, float max, float sum) {
  if (splits == 1) {
    out[(row * n_q_heads + hq) * d + j] = sum > 0.0f ? acc / sum : 0.0f;
  } else {
    float* pr = partial + ((row * n_q_heads + hq) * splits + split) * (d + 2);
    pr[j] = acc;
    if (j == 0) pr[d] = max, pr[d + 1] = sum;
  }
}

}  // namespace fastinfer::cuda
