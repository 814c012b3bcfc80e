// What an attention kernel sees of the KV cache for one layer and one batch:
// a non-owning view in the spirit of FlashInfer's paged_kv_t.
//
//   indptr[batch + 1]      sequence b uses block_indices[indptr[b] .. indptr[b+1])
//   block_indices          in position order; kNoBlock where a sliding window
//                          released the block (those tokens are never read)
//   last_block_len[batch]  tokens in the last block (1..block_size)
//
// A sequence's length is derived: (blocks - 1) * block_size + last_block_len.
// Storage of one layer, K and V alike, is head-major inside a block:
//   codes  at k_codes + block * block_stride + head * head_stride + token * row_bytes
//   params at k_params + block * param_block_stride + head * param_head_stride
//            + token * params_per_row
// so the query heads that share a KV head stream one contiguous run per block.
// PagedKVTables owns the index arrays a view points at; KVCache fills them.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fastinfer/kv/kv_layout.hpp"
#include "fastinfer/memory/paged_allocator.hpp"

namespace fastinfer::kv {

template <typename Quant>
struct PagedKVView {
  using QuantType = Quant;

  std::int32_t batch = 0;
  std::int32_t n_kv_heads = 0;
  std::int32_t head_dim = 0;
  std::int32_t block_size = 0;

  const std::int32_t* indptr = nullptr;
  const BlockId* block_indices = nullptr;
  const std::int32_t* last_block_len = nullptr;

  const std::uint8_t* k_codes = nullptr;
  const std::uint8_t* v_codes = nullptr;
  std::int64_t block_stride = 0;  // bytes
  std::int64_t head_stride = 0;   // bytes
  std::int64_t row_bytes = 0;     // bytes

  const float* k_params = nullptr;
  const float* v_params = nullptr;
  std::int64_t param_block_stride = 0;  // floats
  std::int64_t param_head_stride = 0;   // floats
  std::int32_t params_per_row = 0;

  // Sliding window (0: attend to everything before the query) and sinks.
  std::int32_t window = 0;
  std::int32_t sinks = 0;
  RopeSpec rope;  // used only to renumber sink positions (see kv_layout.hpp)

  std::int64_t length(std::int32_t b) const {
    const std::int64_t blocks = indptr[b + 1] - indptr[b];
    return blocks == 0 ? 0 : (blocks - 1) * block_size + last_block_len[b];
  }
  BlockId block(std::int32_t b, std::int64_t logical) const { return block_indices[indptr[b] + logical]; }

  const std::uint8_t* k_row(BlockId blk, std::int32_t head, std::int64_t token) const {
    return k_codes + blk * block_stride + head * head_stride + token * row_bytes;
  }
  const std::uint8_t* v_row(BlockId blk, std::int32_t head, std::int64_t token) const {
    return v_codes + blk * block_stride + head * head_stride + token * row_bytes;
  }
  const float* k_param(BlockId blk, std::int32_t head, std::int64_t token) const {
    return k_params + blk * param_block_stride + head * param_head_stride + token * params_per_row;
  }
  const float* v_param(BlockId blk, std::int32_t head, std::int64_t token) const {
    return v_params + blk * param_block_stride + head * param_head_stride + token * params_per_row;
  }

  // The key positions a query at position `pos` attends to: the sinks
  // [0, sink_end) and the window [window_begin, pos]. Without a window:
  // [0, 0) and [0, pos].
  std::int64_t sink_end(std::int64_t pos) const {
    return window <= 0 ? 0 : std::min<std::int64_t>(sinks, pos + 1);
  }
  std::int64_t window_begin(std::int64_t pos) const {
    return window <= 0 ? 0 : std::max<std::int64_t>(sink_end(pos), pos + 1 - window);
  }
  // How far StreamingLLM renumbers the sink keys for a query at `pos`.
  std::int64_t sink_shift(std::int64_t pos) const {
    if (window <= 0) return 0;
    const std::int64_t s = pos + 1 - window - sinks;
    return s > 0 ? s : 0;
  }
};

// The index arrays behind a view, filled once per step for a batch and shared
// by every layer's view (one block id is valid in all layers).
struct PagedKVTables {
  std::vector<std::int32_t> indptr;
  std::vector<BlockId> block_indices;
  std::vector<std::int32_t> last_block_len;
  std::int32_t batch() const { return std::int32_t(last_block_len.size()); }
};

}  // namespace fastinfer::kv
