// Plugs a prefix::RadixPrefixCache into the ContinuousBatcher's four
// PrefixProvider hooks. The cache must outlive the batcher (pins unlock
// nodes of the cache when they are dropped), and both must use the same
// PagedAllocator.
//
//   match  -> match_prefix + lock(node); the pin unlocks the node.
//   probe  -> match_prefix length (touches the path for LRU, no lock).
//   insert -> insert; blocks the tree already held for the same tokens are
//             freed with the finished sequence by the batcher.
//   evict  -> evict(min(n, evictable_blocks())): never asks for more than
//             the tree can give, which it would refuse.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "fastinfer/prefix/radix_prefix_cache.hpp"
#include "fastinfer/sched/prefix_provider.hpp"

namespace fastinfer::sched {

inline PrefixProvider make_prefix_provider(prefix::RadixPrefixCache& cache) {
  PrefixProvider p;
  p.match = [&cache](const std::vector<TokenId>& tokens, std::uint64_t ns) {
    prefix::MatchResult m = cache.match_prefix(tokens, ns);
    PrefixMatch out;
    out.tokens = m.length;
    out.blocks = std::move(m.blocks);
    if (!m.node.empty()) {
      cache.lock(m.node);
      const prefix::NodeHandle node = m.node;
      out.pin = std::shared_ptr<void>(nullptr, [&cache, node](void*) { cache.unlock(node); });
    }
    return out;
  };
  p.probe = [&cache](const std::vector<TokenId>& tokens, std::uint64_t ns) {
    return cache.match_prefix(tokens, ns).length;
  };
  p.insert = [&cache](const std::vector<TokenId>& tokens, const std::vector<BlockId>& blocks, std::uint64_t ns) {
    cache.insert(tokens, blocks, ns);
  };
  p.evict = [&cache](std::int64_t n) { return cache.evict(std::min(n, cache.evictable_blocks())); };
  return p;
}

}  // namespace fastinfer::sched
