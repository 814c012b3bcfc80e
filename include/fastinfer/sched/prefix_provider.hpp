// How a prefix cache plugs into the scheduler: four hooks, each optional.
// The batcher works without any (no prefix reuse); the engine adapts a
// prefix::RadixPrefixCache to them with a few lambdas, and tests use a fake.
//
// Contract:
//  - match(tokens, ns): the longest cached prefix of `tokens` in namespace
//    `ns`: its length and the blocks holding it (blocks.size() ==
//    ceil(tokens / block_size)), each block kept alive by the cache's own
//    reference. The returned `pin` keeps those blocks from eviction while
//    held (the radix cache's lock); the batcher resets it when the sequence
//    stops using them (finish, cancel, preemption). The batcher adopts the
//    blocks into the sequence (PagedAllocator::adopt), taking its own
//    references, and may use fewer tokens than matched: it always computes
//    at least the last token, to have its logits.
//  - probe(tokens, ns): the cached length only, without pinning; for the
//    prefix-aware ordering. When absent, match() is used and unpinned.
//  - insert(tokens, blocks, ns): at a request's end, its full blocks (tokens
//    a multiple of the block size, blocks one per block). The cache takes
//    its own reference on each block it keeps (PagedAllocator::incref); the
//    batcher then frees the sequence, so blocks the cache did not keep
//    (duplicates) go back to the pool.
//  - evict(n): drop up to n unpinned cached blocks (least recently used
//    first), returning how many were dropped; called when the pool is short,
//    before any running request is preempted.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "fastinfer/memory/paged_allocator.hpp"
#include "fastinfer/sched/request.hpp"

namespace fastinfer::sched {

struct PrefixMatch {
  std::int64_t tokens = 0;
  std::vector<BlockId> blocks;
  std::shared_ptr<void> pin;  // unpins when the last copy goes
};

struct PrefixProvider {
  std::function<PrefixMatch(const std::vector<TokenId>& tokens, std::uint64_t ns)> match;
  std::function<std::int64_t(const std::vector<TokenId>& tokens, std::uint64_t ns)> probe;
  std::function<void(const std::vector<TokenId>& tokens, const std::vector<BlockId>& blocks, std::uint64_t ns)>
      insert;
  std::function<std::int64_t(std::int64_t blocks)> evict;

  bool enabled() const { return bool(match); }
};

}  // namespace fastinfer::sched
