// Test support for the scheduler: a simulated model that executes plans on
// simulated KV blocks, a fake prefix cache, and a driver loop.
//
// The simulated model is the oracle. Every fed token is written, with its
// position, into the cell its sequence's block table names; a sampling entry
// then reads the whole sequence back *through the block table* and picks the
// next token as a hash of (request id, tokens read). So a request's stream
// equals its stream when run alone exactly when every block copy, swap,
// shared prefix and chunk did the right thing; a wrong position read back is
// counted as corruption.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "fastinfer/memory/paged_allocator.hpp"
#include "fastinfer/sched/continuous_batcher.hpp"

namespace sched_test {

using namespace fastinfer;
using namespace fastinfer::sched;

inline TokenId next_token(RequestId id, const std::vector<TokenId>& seq, std::int32_t vocab) {
  std::uint64_t h = 1469598103934665603ull ^ std::uint64_t(id) * 0x9E3779B97F4A7C15ull;
  for (std::size_t p = 0; p < seq.size(); ++p) {
    h ^= std::uint64_t(seq[p]) + 0x100000001b3ull * (p + 1);
    h *= 1099511628211ull;
    h ^= h >> 29;
  }
  return TokenId(h % std::uint64_t(vocab));
}

// The request's output when it runs alone, with the batcher's stop rules
// written out independently: a stop id ends it and is not emitted; it ends
// after max_new_tokens, or when prompt + output fill max_context.
inline std::vector<TokenId> run_alone(const Request& r, std::int64_t max_context, std::int32_t vocab) {
  std::vector<TokenId> seq = r.prompt, out;
  while (true) {
    const TokenId t = next_token(r.id, seq, vocab);
    if (std::find(r.stop_ids.begin(), r.stop_ids.end(), t) != r.stop_ids.end()) break;
    seq.push_back(t);
    out.push_back(t);
    if (std::int64_t(out.size()) >= r.max_new_tokens || std::int64_t(seq.size()) >= max_context) break;
  }
  return out;
}

struct Cell {
  TokenId token = -1;
  std::int64_t position = -1;
};

class SimulatedModel {
 public:
  SimulatedModel(std::int32_t device_blocks, std::int32_t host_blocks, std::int32_t block_size, std::int32_t vocab)
      : bs_(block_size),
        vocab_(vocab),
        device_(std::size_t(device_blocks), std::vector<Cell>(std::size_t(block_size))),
        host_(std::size_t(host_blocks), std::vector<Cell>(std::size_t(block_size))) {}

  // Executes the plan in the documented order; `max_accept` > 1 makes a row
  // carry 1..max_accept tokens (ragged acceptance, as speculative decoding
  // would), each the continuation of the one before.
  StepResult run(const StepPlan& plan, const PagedAllocator& alloc, std::mt19937_64& rng, int max_accept = 1) {
    for (const BlockSwap& s : plan.swap_out) host_.at(std::size_t(s.host)) = device_.at(std::size_t(s.device));
    for (const BlockSwap& s : plan.swap_in) device_.at(std::size_t(s.device)) = host_.at(std::size_t(s.host));
    for (const BlockCopy& c : plan.copies)
      for (std::int32_t t = 0; t < c.tokens; ++t)
        device_.at(std::size_t(c.dst))[std::size_t(t)] = device_.at(std::size_t(c.src))[std::size_t(t)];
    StepResult res;
    for (std::size_t i = 0; i < plan.entries.size(); ++i) {
      const PlanEntry& e = plan.entries[i];
      const std::vector<BlockId>& table = alloc.block_table(e.id);
      for (std::int32_t k = 0; k < e.num_tokens; ++k) {
        const std::int64_t p = e.position + k;
        cell(table, p) = Cell{plan.tokens[std::size_t(plan.token_indptr[i] + k)], p};
      }
      if (!e.samples) continue;
      std::vector<TokenId> seq;
      const std::int64_t len = e.position + e.num_tokens;
      for (std::int64_t p = 0; p < len; ++p) {
        const Cell& c = cell(table, p);
        if (c.position != p) ++corrupt;
        seq.push_back(c.token);
      }
      const int k = max_accept > 1 ? int(rng() % std::uint64_t(max_accept)) + 1 : 1;
      std::vector<TokenId> row;
      for (int j = 0; j < k; ++j) {
        row.push_back(next_token(e.id, seq, vocab_));
        seq.push_back(row.back());
      }
      res.add(e.id, row);
    }
    return res;
  }

  std::int64_t corrupt = 0;

 private:
  Cell& cell(const std::vector<BlockId>& table, std::int64_t p) {
    return device_.at(std::size_t(table.at(std::size_t(p / bs_))))[std::size_t(p % bs_)];
  }
  std::int32_t bs_;
  std::int32_t vocab_;
  std::vector<std::vector<Cell>> device_, host_;
};

// A prefix cache keyed by whole blocks: node k of a prompt is the block
// holding tokens [k*bs, (k+1)*bs) after exactly that prefix. Pins protect
// nodes from eviction; eviction takes least recently used unpinned nodes.
class FakePrefixCache {
 public:
  FakePrefixCache(PagedAllocator& alloc) : alloc_(alloc), bs_(alloc.block_size()) {}

  PrefixProvider provider() {
    PrefixProvider p;
    p.match = [this](const std::vector<TokenId>& t, std::uint64_t ns) { return match(t, ns); };
    p.probe = [this](const std::vector<TokenId>& t, std::uint64_t ns) {
      return std::int64_t(walk(t, ns).size()) * bs_;
    };
    p.insert = [this](const std::vector<TokenId>& t, const std::vector<BlockId>& b, std::uint64_t ns) {
      insert(t, b, ns);
    };
    p.evict = [this](std::int64_t n) { return evict(n); };
    return p;
  }

  PrefixMatch match(const std::vector<TokenId>& tokens, std::uint64_t ns) {
    PrefixMatch m;
    auto keys = std::make_shared<std::vector<Key>>(walk(tokens, ns));
    for (const Key& k : *keys) {
      Node& n = nodes_.at(k);
      ++n.pins;
      n.last_use = ++tick_;
      m.blocks.push_back(n.block);
    }
    m.tokens = std::int64_t(keys->size()) * bs_;
    ++matches_;
    if (m.tokens > 0) ++hits_;
    m.pin = std::shared_ptr<void>(nullptr, [this, keys](void*) {
      for (const Key& k : *keys) --nodes_.at(k).pins;
    });
    return m;
  }

  void insert(const std::vector<TokenId>& tokens, const std::vector<BlockId>& blocks, std::uint64_t ns) {
    REQUIRE(tokens.size() == blocks.size() * std::size_t(bs_));
    for (std::size_t k = 0; k < blocks.size(); ++k) {
      Key key{ns, std::vector<TokenId>(tokens.begin(), tokens.begin() + std::ptrdiff_t((k + 1) * std::size_t(bs_)))};
      auto it = nodes_.find(key);
      if (it != nodes_.end()) {
        it->second.last_use = ++tick_;
        continue;
      }
      alloc_.incref(blocks[k]);
      nodes_.emplace(std::move(key), Node{blocks[k], 0, ++tick_});
    }
  }

  std::int64_t evict(std::int64_t n) {
    std::vector<std::pair<std::uint64_t, Key>> lru;
    for (const auto& kv : nodes_)
      if (kv.second.pins == 0) lru.emplace_back(kv.second.last_use, kv.first);
    std::sort(lru.begin(), lru.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::int64_t dropped = 0;
    for (const auto& x : lru) {
      if (dropped >= n) break;
      alloc_.decref(nodes_.at(x.second).block);
      nodes_.erase(x.second);
      ++dropped;
    }
    return dropped;
  }

  std::int64_t pinned() const {
    std::int64_t p = 0;
    for (const auto& kv : nodes_) p += kv.second.pins;
    return p;
  }
  std::size_t size() const { return nodes_.size(); }
  std::int64_t hits() const { return hits_; }

 private:
  using Key = std::pair<std::uint64_t, std::vector<TokenId>>;
  struct Node {
    BlockId block;
    int pins;
    std::uint64_t last_use;
  };
  std::vector<Key> walk(const std::vector<TokenId>& tokens, std::uint64_t ns) const {
    std::vector<Key> keys;
    for (std::size_t end = std::size_t(bs_); end <= tokens.size(); end += std::size_t(bs_)) {
      Key k{ns, std::vector<TokenId>(tokens.begin(), tokens.begin() + std::ptrdiff_t(end))};
      if (nodes_.count(k) == 0) break;
      keys.push_back(std::move(k));
    }
    return keys;
  }

  PagedAllocator& alloc_;
  std::int64_t bs_;
  std::map<Key, Node> nodes_;
  std::uint64_t tick_ = 0;
  std::int64_t matches_ = 0, hits_ = 0;
};

struct Workload {
  std::vector<Request> requests;
  std::vector<std::int64_t> arrival_step;  // submitted just before this step
};

struct WorkloadShape {
  int count = 50;
  int min_prompt = 1, max_prompt = 40;
  int min_new = 1, max_new = 30;
  int spread_steps = 40;         // arrivals uniform over [0, spread_steps)
  double shared_prefix = 0.0;    // probability a prompt starts with one of a few shared prefixes
  int shared_len = 16;
  int priorities = 1;            // priorities drawn from [0, priorities)
  int namespaces = 1;
  bool stop_ids = true;
};

inline Workload make_workload(std::mt19937_64& rng, const WorkloadShape& s, std::int32_t vocab, RequestId first_id = 0) {
  Workload w;
  auto uni = [&](int lo, int hi) { return int(lo + std::int64_t(rng() % std::uint64_t(hi - lo + 1))); };
  std::vector<std::vector<TokenId>> prefixes(3);
  for (auto& p : prefixes)
    for (int i = 0; i < s.shared_len; ++i) p.push_back(TokenId(rng() % std::uint64_t(vocab)));
  for (int i = 0; i < s.count; ++i) {
    Request r;
    r.id = first_id + i;
    const int len = uni(s.min_prompt, s.max_prompt);
    if (s.shared_prefix > 0 && double(rng() % 1000) < s.shared_prefix * 1000.0) {
      const auto& p = prefixes[rng() % prefixes.size()];
      r.prompt.assign(p.begin(), p.begin() + std::min<std::ptrdiff_t>(std::ptrdiff_t(p.size()), len));
    }
    while (int(r.prompt.size()) < len) r.prompt.push_back(TokenId(rng() % std::uint64_t(vocab)));
    r.max_new_tokens = uni(s.min_new, s.max_new);
    if (s.stop_ids) r.stop_ids = {TokenId(rng() % std::uint64_t(vocab))};
    r.priority = uni(0, s.priorities - 1);
    r.prefix_namespace = std::uint64_t(uni(0, s.namespaces - 1));
    r.sampling.seed = std::uint64_t(i);
    w.requests.push_back(std::move(r));
    w.arrival_step.push_back(uni(0, s.spread_steps - 1));
  }
  // Submission in arrival order; ids stay unique but need not be sorted.
  std::vector<std::size_t> idx(w.requests.size());
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::stable_sort(idx.begin(), idx.end(), [&](auto a, auto b) { return w.arrival_step[a] < w.arrival_step[b]; });
  Workload sorted;
  for (std::size_t i : idx) {
    sorted.requests.push_back(w.requests[i]);
    sorted.arrival_step.push_back(w.arrival_step[i]);
  }
  return sorted;
}

}  // namespace sched_test
