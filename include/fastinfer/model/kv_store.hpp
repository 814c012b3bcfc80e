// The model's side of the KV cache: the cache configuration a model of a
// given shape needs (kv_cache_config), over the KVStore interface
// (kv/kv_store.hpp) that every backend implements.
#pragma once

#include <cstdint>
#include <memory>

#include "fastinfer/core/checked_math.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/kv_cache.hpp"
#include "fastinfer/kv/kv_layout.hpp"
#include "fastinfer/kv/kv_store.hpp"
#include "fastinfer/model/config.hpp"

namespace fastinfer {

// The cache configuration KVOptions asks for, for a model of config `c` that
// feeds at most `max_tokens` tokens per step.
inline kv::KVCacheConfig kv_cache_config(const KVOptions& o, const LlamaConfig& c, int max_tokens) {
  FASTINFER_CHECK(o.max_sequences >= 1, InvalidArgument, "KVOptions: max_sequences must be at least 1, got ",
                  o.max_sequences);
  FASTINFER_CHECK(o.num_blocks >= 0, InvalidArgument, "KVOptions: num_blocks cannot be negative, got ",
                  o.num_blocks);
  kv::KVCacheConfig k;
  FASTINFER_CHECK(o.share_layers >= 1, InvalidArgument, "KVOptions: share_layers must be at least 1, got ",
                  o.share_layers);
  k.n_layers = (c.n_layers + o.share_layers - 1) / o.share_layers;
  k.n_kv_heads = c.n_kv_heads;
  k.head_dim = c.head_dim;
  k.max_seq_len = c.max_seq_len;
  k.block_size = o.block_size;
  k.layout = o.layout;
  k.rope = kv::RopeSpec{c.rope_theta, c.rope_style == RopeStyle::HalfSplit};
  auto blocks = [&](std::int64_t tokens) { return (tokens + o.block_size - 1) / o.block_size; };
  switch (o.layout) {
    case KVLayoutKind::Contiguous:
      k.num_blocks = o.num_blocks > 0 ? o.num_blocks : o.max_sequences;
      break;
    case KVLayoutKind::Paged:
      FASTINFER_CHECK(kv::is_power_of_two(o.block_size), InvalidArgument,
                      "KVOptions: block_size must be a power of two, got ", o.block_size);
      k.num_blocks = o.num_blocks > 0 ? o.num_blocks
                                      : checked_int32(std::int64_t(o.max_sequences) * (blocks(c.max_seq_len) + 1),
                                                      "KVOptions: paged pool blocks");
      break;
    case KVLayoutKind::Window:
      FASTINFER_CHECK(kv::is_power_of_two(o.block_size), InvalidArgument,
                      "KVOptions: block_size must be a power of two, got ", o.block_size);
      FASTINFER_CHECK(o.window > 0, InvalidArgument, "KVOptions: the window layout needs window > 0, got ",
                      o.window);
      FASTINFER_CHECK(o.sinks >= 0, InvalidArgument, "KVOptions: sinks cannot be negative, got ", o.sinks);
      k.window = o.window;
      k.sinks = o.sinks;
      // Sinks, the window and one step's tokens, each rounded up to blocks.
      k.num_blocks = o.num_blocks > 0
                         ? o.num_blocks
                         : checked_int32(std::int64_t(o.max_sequences) *
                                             (std::min(blocks(c.max_seq_len),
                                                       blocks(o.sinks) + blocks(o.window) + blocks(max_tokens) + 1) +
                                              1),
                                         "KVOptions: window pool blocks");
      break;
  }
  return k;
}

}  // namespace fastinfer
