// RadixPrefixCache lookup and churn speed.
//
//   bench_prefix --benchmark_format=json
//
// The tree holds 100k blocks of 16 tokens (vocabulary 32000): 256-token
// prompts (16 blocks), each starting with one of 64 "system prompts" of 2 to
// 10 blocks and going on with its own tokens, inserted until 100k blocks are
// cached (about 10.3k prompts: 10.3k leaves under 64 shared nodes).
// * BM_MatchPrefix/hit: match_prefix of a cached 256-token prompt (all 16
//   blocks match), prompts in a shuffled order so that consecutive lookups
//   touch different parts of the tree. items_per_second = lookups/s (target
//   >= 1 million/s). The MatchResult is reused: no allocation per lookup.
//   10.3k distinct 1 KiB queries do not stay in cache: this is the cold case.
// * BM_MatchPrefix/hit_warm_query: the same, the next query prefetched during
//   the current lookup (a fresh prompt is in cache; the tree is not).
// * BM_MatchPrefix/hit_hot_query: the same with 64 queries in rotation
//   (query and tree path in cache).
// * BM_MatchPrefix/system_prompt: a system prompt followed by new tokens
//   (the match stops at the end of the shared part).
// * BM_MatchPrefix/miss: random tokens (the first block matches nothing).
// * BM_MatchPrefix/flat_root: 100k blocks in 6250 unrelated prompts, so
//   the root has 6250 children: the sorted child keys take the fan-out.
// * BM_InsertEvict: one request's life at the end of its prompt: insert
//   a new 256-token prompt (16 new blocks) into the full tree, then evict
//   16 blocks (finding the LRU leaves scans every node). items = requests/s.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "bench_env.hpp"
#include "fastinfer/prefix/radix_prefix_cache.hpp"

using namespace fastinfer;
using prefix::MatchResult;
using prefix::RadixPrefixCache;
using prefix::Token;

namespace {

constexpr std::int32_t kBlockSize = 16;
constexpr std::int32_t kPromptTokens = 256;
constexpr std::int64_t kTreeBlocks = 100000;
constexpr Token kVocab = 32000;

struct Tree {
  std::unique_ptr<PagedAllocator> alloc;
  std::unique_ptr<RadixPrefixCache> cache;
  std::vector<std::vector<Token>> prompts;  // every cached prompt
  std::vector<std::vector<Token>> systems;  // the shared prefixes
  std::mt19937_64 rng{42};

  Token token() { return Token(rng() % std::uint64_t(kVocab)); }

  // Caches a prompt as a request would: its own blocks, the tree's reference
  // added by insert, the request's reference dropped at its end.
  void cache_prompt(const std::vector<Token>& p) {
    std::vector<BlockId> blocks(p.size() / kBlockSize);
    for (BlockId& b : blocks) b = *alloc->allocate();
    cache->insert(p, blocks);
    for (BlockId b : blocks) alloc->decref(b);
  }

  Tree(int n_systems, int min_sys_blocks, int max_sys_blocks) {
    alloc = std::make_unique<PagedAllocator>(std::int32_t(kTreeBlocks + 1024), kBlockSize);
    cache = std::make_unique<RadixPrefixCache>(*alloc);
    for (int s = 0; s < n_systems; ++s) {
      const int blocks = min_sys_blocks + int(rng() % std::uint64_t(max_sys_blocks - min_sys_blocks + 1));
      std::vector<Token> sys(std::size_t(blocks * kBlockSize));
      for (Token& t : sys) t = token();
      systems.push_back(std::move(sys));
    }
    while (cache->cached_blocks() < kTreeBlocks) {
      std::vector<Token> p;
      if (!systems.empty()) p = systems[rng() % systems.size()];
      while (p.size() < std::size_t(kPromptTokens)) p.push_back(token());
      cache_prompt(p);
      prompts.push_back(std::move(p));
    }
    std::shuffle(prompts.begin(), prompts.end(), rng);
  }
};

Tree& shared_tree() {
  static Tree t(64, 2, 10);
  return t;
}
Tree& flat_tree() {
  static Tree t(0, 0, 0);
  return t;
}
// Its own tree: eviction changes it.
Tree& churn_tree() {
  static Tree t(64, 2, 10);
  return t;
}

void report(benchmark::State& state, const Tree& t, std::int64_t matched) {
  state.SetItemsProcessed(state.iterations());
  state.counters["cached_blocks"] = double(t.cache->cached_blocks());
  state.counters["nodes"] = double(t.cache->num_nodes());
  state.counters["matched_tokens_per_lookup"] = double(matched) / double(std::max<std::int64_t>(state.iterations(), 1));
}

void BM_MatchPrefix_Hit(benchmark::State& state) {
  Tree& t = shared_tree();
  MatchResult m;
  m.blocks.reserve(kPromptTokens / kBlockSize);
  std::size_t i = 0;
  std::int64_t matched = 0;
  for (auto _ : state) {
    const auto& p = t.prompts[i];
    if (++i == t.prompts.size()) i = 0;
    matched += t.cache->match_prefix(p.data(), p.size(), m);
    benchmark::DoNotOptimize(m.blocks.data());
  }
  report(state, t, matched);
}
BENCHMARK(BM_MatchPrefix_Hit)->Name("BM_MatchPrefix/hit");

// Cold tree, warm query: as hit, but the next query is prefetched during the
// current lookup, as a prompt the tokenizer just wrote would be in cache.
void BM_MatchPrefix_HitWarmQuery(benchmark::State& state) {
  Tree& t = shared_tree();
  MatchResult m;
  m.blocks.reserve(kPromptTokens / kBlockSize);
  std::size_t i = 0;
  std::int64_t matched = 0;
  for (auto _ : state) {
    const auto& p = t.prompts[i];
    if (++i == t.prompts.size()) i = 0;
#if defined(__GNUC__)
    const Token* next = t.prompts[i].data();
    for (int line = 0; line < kPromptTokens; line += 16) __builtin_prefetch(next + line);
#endif
    matched += t.cache->match_prefix(p.data(), p.size(), m);
    benchmark::DoNotOptimize(m.blocks.data());
  }
  report(state, t, matched);
}
BENCHMARK(BM_MatchPrefix_HitWarmQuery)->Name("BM_MatchPrefix/hit_warm_query");

// The same lookups with the queries in cache, as a prompt just tokenized is:
// 64 prompts in rotation. The tree's nodes are still spread over 100k blocks.
void BM_MatchPrefix_HitHotQuery(benchmark::State& state) {
  Tree& t = shared_tree();
  MatchResult m;
  m.blocks.reserve(kPromptTokens / kBlockSize);
  std::size_t i = 0;
  std::int64_t matched = 0;
  for (auto _ : state) {
    const auto& p = t.prompts[i];
    if (++i == 64) i = 0;
    matched += t.cache->match_prefix(p.data(), p.size(), m);
    benchmark::DoNotOptimize(m.blocks.data());
  }
  report(state, t, matched);
}
BENCHMARK(BM_MatchPrefix_HitHotQuery)->Name("BM_MatchPrefix/hit_hot_query");

void BM_MatchPrefix_SystemPrompt(benchmark::State& state) {
  Tree& t = shared_tree();
  std::vector<std::vector<Token>> queries;
  for (std::size_t s = 0; s < t.systems.size(); ++s) {
    auto q = t.systems[s];
    while (q.size() < std::size_t(kPromptTokens)) q.push_back(t.token());
    queries.push_back(std::move(q));
  }
  MatchResult m;
  m.blocks.reserve(kPromptTokens / kBlockSize);
  std::size_t i = 0;
  std::int64_t matched = 0;
  for (auto _ : state) {
    const auto& q = queries[i];
    if (++i == queries.size()) i = 0;
    matched += t.cache->match_prefix(q.data(), q.size(), m);
    benchmark::DoNotOptimize(m.blocks.data());
  }
  report(state, t, matched);
}
BENCHMARK(BM_MatchPrefix_SystemPrompt)->Name("BM_MatchPrefix/system_prompt");

void BM_MatchPrefix_Miss(benchmark::State& state) {
  Tree& t = shared_tree();
  std::vector<std::vector<Token>> queries(1024, std::vector<Token>(kPromptTokens));
  for (auto& q : queries)
    for (Token& x : q) x = t.token();
  MatchResult m;
  std::size_t i = 0;
  std::int64_t matched = 0;
  for (auto _ : state) {
    const auto& q = queries[i];
    if (++i == queries.size()) i = 0;
    matched += t.cache->match_prefix(q.data(), q.size(), m);
    benchmark::DoNotOptimize(m.blocks.data());
  }
  report(state, t, matched);
}
BENCHMARK(BM_MatchPrefix_Miss)->Name("BM_MatchPrefix/miss");

void BM_MatchPrefix_FlatRoot(benchmark::State& state) {
  Tree& t = flat_tree();
  MatchResult m;
  m.blocks.reserve(kPromptTokens / kBlockSize);
  std::size_t i = 0;
  std::int64_t matched = 0;
  for (auto _ : state) {
    const auto& p = t.prompts[i];
    if (++i == t.prompts.size()) i = 0;
    matched += t.cache->match_prefix(p.data(), p.size(), m);
    benchmark::DoNotOptimize(m.blocks.data());
  }
  report(state, t, matched);
}
BENCHMARK(BM_MatchPrefix_FlatRoot)->Name("BM_MatchPrefix/flat_root");

void BM_InsertEvict(benchmark::State& state) {
  Tree& t = churn_tree();
  std::vector<Token> p;
  for (auto _ : state) {
    p = t.systems[t.rng() % t.systems.size()];
    while (p.size() < std::size_t(kPromptTokens)) p.push_back(t.token());
    const std::int64_t before = t.cache->cached_blocks();
    t.cache_prompt(p);
    t.cache->evict(t.cache->cached_blocks() - before);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["cached_blocks"] = double(t.cache->cached_blocks());
}
BENCHMARK(BM_InsertEvict);

}  // namespace

FASTINFER_BENCHMARK_MAIN()
