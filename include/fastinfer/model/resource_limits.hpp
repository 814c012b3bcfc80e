// Memory a model will take, computed in 64 bits from its config and KV
// options BEFORE anything is allocated, and checked against a budget: a file
// field (a context of 2^30) or a flag (a block size of 2^20) then ends in one
// LimitError naming the size and the budget instead of a multi-GB reservation
// or a std::bad_alloc. llama.cpp prints the same figure as "KV self size".
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>

#include "fastinfer/core/checked_math.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/kv_cache.hpp"
#include "fastinfer/kv/kv_layout.hpp"
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/model/kv_store.hpp"

namespace fastinfer {

// The default budget of a LlamaModel's own allocations (KV pool plus
// activation scratch): 4 GiB, room for a 7B model's 4K-token f16 cache.
// ModelOptions::memory_budget changes it; 0 turns the check off.
inline constexpr std::int64_t kDefaultMemoryBudget = std::int64_t(4) << 30;

// Bytes of the KV pool that KVCache<layout, quant>(k) allocates (codes and
// quantization parameters of every block, K and V, all layers).
inline std::int64_t kv_pool_bytes(const kv::KVCacheConfig& k, KVLayoutKind layout, kv::QuantKind quant) {
  const std::int64_t per_head = kv::visit_quant(quant, [&](auto q) {
    return std::int64_t(kv::bytes_per_token_head<decltype(q)>(k.head_dim));
  });
  // The contiguous layout reserves max_seq_len rounded up to a power of two
  // per sequence (KVCache::validated); the others num_blocks x block_size.
  const std::int64_t tokens_per_block =
      layout == KVLayoutKind::Contiguous ? std::int64_t(kv::next_power_of_two(k.max_seq_len)) : k.block_size;
  std::int64_t bytes = checked_mul(std::int64_t(k.num_blocks), tokens_per_block, "KV pool tokens");
  bytes = checked_mul(bytes, checked_mul(2 * std::int64_t(k.n_layers), k.n_kv_heads, "KV rows per token"),
                      "KV pool rows");
  return checked_mul(bytes, per_head, "KV pool bytes");
}

// Bytes of the per-forward activation scratch LlamaModel allocates for
// max_batch rows (x, xb, q, k, v, attention out, two SwiGLU buffers, logits).
inline std::int64_t activation_bytes(const LlamaConfig& c, int max_batch) {
  const std::int64_t wide = std::max(c.dim, c.q_dim());
  const std::int64_t per_row = std::int64_t(c.dim) + wide + 2 * std::int64_t(c.q_dim()) + 2 * std::int64_t(c.kv_dim()) +
                               2 * std::int64_t(c.hidden_dim);
  return checked_add(checked_mul(checked_mul(per_row, max_batch, "activation floats"), 4, "activation bytes"),
                     checked_mul(c.vocab_size, 4, "logit bytes"), "activation bytes");
}

// "1.50 MiB" / "3.00 GiB": sizes in errors and the KV report.
inline std::string format_bytes(std::int64_t bytes) {
  char buf[32];
  if (bytes >= (std::int64_t(1) << 30))
    std::snprintf(buf, sizeof buf, "%.2f GiB", double(bytes) / double(std::int64_t(1) << 30));
  else
    std::snprintf(buf, sizeof buf, "%.2f MiB", double(bytes) / double(1 << 20));
  return buf;
}

// LimitError when the KV pool of `o` for `c` (feeding max_tokens per step)
// plus the activations exceed `budget` bytes (0: no budget). Called by
// LlamaModel before it allocates anything.
inline void check_memory_budget(const KVOptions& o, const LlamaConfig& c, int max_tokens, std::int64_t budget) {
  const kv::KVCacheConfig k = kv_cache_config(o, c, max_tokens);
  const std::int64_t kv_bytes = kv_pool_bytes(k, o.layout, o.quant);
  const std::int64_t total = checked_add(kv_bytes, activation_bytes(c, max_tokens), "model memory");
  FASTINFER_CHECK(budget <= 0 || total <= budget, LimitError, "the KV cache (", kv_layout_name(o.layout), " ",
                  kv::quant_name(o.quant), ", context ", c.max_seq_len, ", ", k.num_blocks,
                  o.layout == KVLayoutKind::Contiguous ? " sequences" : " blocks", ") and activations need ",
                  format_bytes(total), ", over the memory budget of ", format_bytes(budget),
                  " (ask for a shorter context, e.g. --ctx-size, or a paged/quantized cache)");
}

}  // namespace fastinfer
