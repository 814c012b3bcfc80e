#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "fastinfer/prefix/radix_prefix_cache.hpp"

using namespace fastinfer;
using prefix::MatchResult;
using prefix::Namespace;
using prefix::NodeHandle;
using prefix::RadixPrefixCache;
using prefix::RadixPrefixCacheConfig;
using prefix::Token;

namespace {

// A sequence holding `tokens` (KV "computed"): its whole block table.
std::vector<BlockId> prefill(PagedAllocator& a, SeqId seq, std::int64_t tokens) {
  a.add_sequence(seq);
  REQUIRE(a.extend(seq, tokens));
  return a.block_table(seq);
}

std::vector<Token> iota_tokens(std::size_t n, Token first) {
  std::vector<Token> t(n);
  for (std::size_t i = 0; i < n; ++i) t[i] = first + Token(i);
  return t;
}

// The first n entries (Token and BlockId are both int32).
std::vector<std::int32_t> head(const std::vector<std::int32_t>& v, std::size_t n) {
  return {v.begin(), v.begin() + long(n)};
}

// Both books balance, and the accounting identity holds.
void balanced(const RadixPrefixCache& c, const PagedAllocator& a) {
  c.check_invariants();
  a.check_invariants();
  REQUIRE(a.num_free_blocks() + c.evictable_blocks() + c.protected_blocks() == a.num_blocks());
}

// A clock the test moves by hand.
struct ManualClock {
  std::uint64_t t = 0;
  RadixPrefixCacheConfig config() {
    RadixPrefixCacheConfig cfg;
    cfg.clock = [this] { return t; };
    return cfg;
  }
};

}  // namespace

TEST_CASE("RadixPrefixCache: insert caches whole blocks and match finds them") {
  PagedAllocator a(32, 4);
  RadixPrefixCache c(a);
  const auto toks = iota_tokens(12, 100);
  const auto table = prefill(a, 1, 12);
  auto ins = c.insert(toks, table);
  CHECK(ins.new_blocks == 3);
  CHECK(ins.redundant.empty());
  CHECK(c.cached_blocks() == 3);
  for (BlockId b : table) CHECK(a.ref_count(b) == 2);  // the sequence and the tree
  balanced(c, a);

  // Longer query: the cached 12 tokens; a partial last block never matches.
  auto q = toks;
  q.push_back(7);
  q.push_back(8);
  auto m = c.match_prefix(q);
  CHECK(m.length == 12);
  CHECK(m.blocks == table);
  CHECK(m.node == ins.node);
  CHECK(c.match_prefix(head(toks, 11)).length == 8);
  CHECK(c.match_prefix(head(toks, 3)).length == 0);
  CHECK(c.match_prefix(head(toks, 3)).node.empty());

  // A different token in the second block stops the match after the first.
  auto other = toks;
  other[5] = 9999;
  m = c.match_prefix(other);
  CHECK(m.length == 4);
  CHECK(m.blocks == head(table, 1));
  // Different first block: nothing.
  other[0] = 9999;
  CHECK(c.match_prefix(other).length == 0);

  // Freeing the sequence leaves the tree's reference: blocks stay cached.
  a.free_sequence(1);
  for (BlockId b : table) CHECK(a.ref_count(b) == 1);
  CHECK(c.match_prefix(toks).blocks == table);
  CHECK(c.evictable_blocks() == 3);
  balanced(c, a);
}

TEST_CASE("RadixPrefixCache: a match that ends inside an edge splits it and a later insert shares the split") {
  PagedAllocator a(32, 4);
  RadixPrefixCache c(a);
  const auto x = iota_tokens(12, 0);
  const auto tx = prefill(a, 1, 12);
  c.insert(x, tx);
  CHECK(c.num_nodes() == 2);  // root + one edge of 3 blocks

  MatchResult m;
  CHECK(c.match_prefix(x.data(), 8, m) == 8);
  CHECK(m.blocks == head(tx, 2));
  CHECK(c.num_nodes() == 3);  // split after 2 blocks
  const NodeHandle mid = m.node;
  balanced(c, a);
  // The full path still matches through the split.
  CHECK(c.match_prefix(x).blocks == tx);
  CHECK(c.num_nodes() == 3);

  // y shares two blocks with x, then diverges.
  auto y = x;
  y[9] = 77;
  const auto ty = prefill(a, 2, 12);
  auto ins = c.insert(y, ty);
  CHECK(ins.new_blocks == 1);
  CHECK(ins.redundant == head(ty, 2));  // the tree keeps x's copies
  CHECK(c.num_nodes() == 4);            // one new leaf under the split node
  CHECK(c.cached_blocks() == 4);
  auto my = c.match_prefix(y);
  CHECK(my.length == 12);
  CHECK(my.blocks == std::vector<BlockId>{tx[0], tx[1], ty[2]});
  CHECK(a.ref_count(ty[0]) == 1);  // redundant: not increffed
  CHECK(a.ref_count(ty[2]) == 2);
  // The split node is the one both paths pass.
  c.lock(mid);
  CHECK(c.locked_blocks() == 2);
  c.unlock(mid);
  balanced(c, a);

  // Inserting a shorter prefix of an edge splits it too and adds nothing.
  const auto z = head(x, 4);
  ins = c.insert(z, head(tx, 1));
  CHECK(ins.new_blocks == 0);
  CHECK(ins.redundant.empty());  // the very same block
  CHECK(c.num_nodes() == 5);
  CHECK(c.match_prefix(z).node == ins.node);
  balanced(c, a);
}

TEST_CASE("RadixPrefixCache: a sequence adopting a match appends into its own blocks") {
  PagedAllocator a(16, 4);
  RadixPrefixCache c(a);
  const auto p = iota_tokens(8, 1);
  const auto tp = prefill(a, 1, 8);
  c.insert(p, tp);
  a.free_sequence(1);

  // Prompt = p + 6 more tokens: adopt the 8 cached, compute 6.
  auto prompt = p;
  for (Token t : {50, 51, 52, 53, 54, 55}) prompt.push_back(t);
  auto m = c.match_prefix(prompt);
  REQUIRE(m.length == 8);
  c.lock(m.node);
  a.adopt(2, m.blocks, m.length);
  std::vector<BlockCopy> copies;
  REQUIRE(a.reserve(2, 6, &copies));
  CHECK(copies.empty());  // appending at a block boundary copies nothing
  a.append(2, 6);
  const auto& t2 = a.block_table(2);
  REQUIRE(t2.size() == 4);
  CHECK(head(t2, 2) == tp);
  auto ins = c.insert(head(prompt, 12), head(t2, 3));
  CHECK(ins.new_blocks == 1);
  CHECK(ins.redundant.empty());
  c.lock(ins.node);
  c.unlock(m.node);
  CHECK(c.locked_blocks() == 3);
  CHECK(c.evictable_blocks() == 0);
  balanced(c, a);

  // A full-prompt hit adopts one token less, so the last prompt token is
  // computed (its logits start decoding); its write copies the shared block.
  m = c.match_prefix(p);
  REQUIRE(m.length == 8);
  a.adopt(3, m.blocks, m.length - 1);
  copies.clear();
  REQUIRE(a.reserve(3, 1, &copies));
  REQUIRE(copies.size() == 1);
  CHECK(copies[0].src == tp[1]);
  CHECK(copies[0].tokens == 3);
  CHECK(a.block_table(3)[1] == copies[0].dst);
  CHECK(copies[0].dst != tp[1]);
  a.append(3, 1);
  // Caching it again: the copy is redundant, the tree keeps the original.
  ins = c.insert(p, a.block_table(3));
  CHECK(ins.redundant == std::vector<BlockId>{copies[0].dst});
  CHECK(c.match_prefix(p).blocks == tp);
  balanced(c, a);
}

TEST_CASE("RadixPrefixCache: namespaces never share nodes or blocks") {
  PagedAllocator a(16, 4);
  RadixPrefixCache c(a);
  const auto p = iota_tokens(8, 1);
  const auto t1 = prefill(a, 1, 8);
  c.insert(p, t1, /*ns=*/11);
  CHECK(c.match_prefix(p, 11).length == 8);
  CHECK(c.match_prefix(p, 22).length == 0);
  CHECK(c.match_prefix(p).length == 0);

  // The same blocks cannot be cached in another namespace...
  const std::string before = c.dump();
  CHECK_THROWS_AS(c.insert(p, t1, 22), UsageError);
  CHECK_THROWS_WITH(c.insert(p, t1, 22), Catch::Contains("another namespace"));
  CHECK(c.dump() == before);
  // ...the same tokens in other blocks can.
  const auto t2 = prefill(a, 2, 8);
  auto ins = c.insert(p, t2, 22);
  CHECK(ins.new_blocks == 2);
  CHECK(ins.redundant.empty());
  CHECK(c.match_prefix(p, 22).blocks == t2);
  CHECK(c.match_prefix(p, 11).blocks == t1);
  CHECK(c.num_namespaces() == 2);
  a.free_sequence(1);
  a.free_sequence(2);
  balanced(c, a);

  // Evicting one namespace's blocks leaves the other's.
  auto m = c.match_prefix(p, 22);
  c.lock(m.node);
  CHECK(c.evict(2) == 2);
  CHECK(c.match_prefix(p, 11).length == 0);
  CHECK(c.match_prefix(p, 22).blocks == t2);
  CHECK(c.num_namespaces() == 1);  // an empty namespace's root goes
  c.unlock(m.node);
  balanced(c, a);
}

TEST_CASE("RadixPrefixCache: evict takes least recently used leaves first, with the injected clock") {
  PagedAllocator a(32, 2);
  ManualClock clk;
  RadixPrefixCache c(a, clk.config());
  auto cache = [&](SeqId seq, std::vector<Token> t, std::uint64_t time) {
    clk.t = time;
    const auto tb = prefill(a, seq, std::int64_t(t.size()));
    c.insert(t, tb);
    a.free_sequence(seq);
    return tb;
  };
  // root -> A -> {B, C}; D alone. Leaves B (t=1), C (t=2), D (t=3); A at t=2.
  const auto tab = cache(1, {1, 1, 2, 2}, 1);
  const auto tac = cache(2, {1, 1, 3, 3}, 2);
  const auto td = cache(3, {4, 4}, 3);
  CHECK(c.cached_blocks() == 4);
  balanced(c, a);

  std::vector<BlockId> dropped;
  CHECK(c.evict(1, &dropped) == 1);
  CHECK(dropped == std::vector<BlockId>{tab[1]});  // B
  CHECK(a.ref_count(tab[1]) == 0);
  balanced(c, a);
  // Touch D: now A/C (t=2) are older than D (t=10).
  clk.t = 10;
  CHECK(c.match_prefix({4, 4}).length == 2);
  dropped.clear();
  CHECK(c.evict(2, &dropped) == 2);
  // C, then A once it became a leaf (cascade), before D.
  CHECK(dropped == std::vector<BlockId>{tac[1], tab[0]});
  CHECK(c.match_prefix({1, 1, 3, 3}).length == 0);
  CHECK(c.match_prefix({4, 4}).blocks == td);
  balanced(c, a);

  // A long leaf is trimmed from its tail: exactly the blocks asked for.
  clk.t = 20;
  const auto tl = cache(4, {7, 7, 8, 8, 9, 9}, 20);  // newer than D
  clk.t = 30;
  c.match_prefix({7, 7});  // splits: [7 7] is touched, the [8 8 9 9] below keeps t=20
  dropped.clear();
  CHECK(c.evict(1, &dropped) == 1);
  CHECK(dropped == std::vector<BlockId>{td[0]});  // D is the oldest leaf now
  dropped.clear();
  CHECK(c.evict(1, &dropped) == 1);
  CHECK(dropped == std::vector<BlockId>{tl[2]});  // the tail of the 7-8-9 path
  CHECK(c.match_prefix({7, 7, 8, 8, 9, 9}).blocks == head(tl, 2));
  balanced(c, a);
  const std::string before = c.dump();
  CHECK_THROWS_AS(c.evict(3), UsageError);
  CHECK(c.dump() == before);
  CHECK(c.evict_up_to(3) == 2);
  CHECK(c.evict_up_to(3) == 0);
  CHECK(c.cached_blocks() == 0);
  CHECK(c.num_nodes() == 0);
  CHECK(a.num_free_blocks() == a.num_blocks());
  balanced(c, a);
}

TEST_CASE("RadixPrefixCache: locks protect paths from eviction, and sequences protect their blocks") {
  PagedAllocator a(32, 4);
  RadixPrefixCache c(a);
  const auto p = iota_tokens(16, 0);
  const auto tp = prefill(a, 1, 16);
  c.insert(p, tp);
  // Held by a live sequence: cached but not evictable.
  CHECK(c.evictable_blocks() == 0);
  CHECK(c.protected_blocks() == 4);
  CHECK_THROWS_AS(c.evict(1), UsageError);
  a.free_sequence(1);
  CHECK(c.evictable_blocks() == 4);

  auto m = c.match_prefix(head(p, 8));  // splits after 2 blocks
  c.lock(m.node);
  c.lock(m.node);
  CHECK(c.lock_count(m.node) == 2);
  CHECK(c.locked_blocks() == 2);
  CHECK(c.evictable_blocks() == 2);
  CHECK(c.protected_blocks() == 2);
  balanced(c, a);
  const std::string before = c.dump();
  CHECK_THROWS_AS(c.evict(3), UsageError);
  CHECK_THROWS_WITH(c.evict(3), Catch::Contains("only 2"));
  CHECK(c.dump() == before);
  CHECK(c.evict(2) == 2);
  CHECK(c.match_prefix(p).blocks == head(tp, 2));  // the locked path survives
  CHECK(c.evictable_blocks() == 0);
  c.unlock(m.node);
  CHECK(c.evictable_blocks() == 0);  // still locked once
  c.unlock(m.node);
  CHECK(c.evictable_blocks() == 2);
  CHECK_THROWS_AS(c.unlock(m.node), UsageError);
  balanced(c, a);

  // A lock on a child is not released by unlocking its parent.
  const auto q = iota_tokens(16, 0);
  const auto tq = prefill(a, 2, 16);
  c.insert(q, tq);
  a.free_sequence(2);
  auto deep = c.match_prefix(q);
  auto shallow = c.match_prefix(head(q, 4));
  c.lock(deep.node);
  const std::string locked = c.dump();
  CHECK_THROWS_AS(c.unlock(shallow.node), UsageError);
  CHECK_THROWS_WITH(c.unlock(shallow.node), Catch::Contains("not locked"));
  CHECK(c.dump() == locked);
  CHECK(c.evictable_blocks() == 0);
  c.unlock(deep.node);

  // Eviction makes old handles stale: locking one is an error.
  CHECK(c.evict(c.evictable_blocks()) == 4);
  CHECK(!c.is_valid(deep.node));
  CHECK_THROWS_AS(c.lock(deep.node), UsageError);
  CHECK_THROWS_WITH(c.lock(deep.node), Catch::Contains("stale"));
  CHECK(a.num_free_blocks() == a.num_blocks());
  balanced(c, a);
}

TEST_CASE("RadixPrefixCache: evicting a block a sequence still holds frees nothing and does not count") {
  PagedAllocator a(8, 2);
  RadixPrefixCache c(a);
  const auto t = prefill(a, 1, 4);
  c.insert(iota_tokens(4, 0), t);
  a.free_sequence(1);
  a.incref(t[1]);  // another owner (a sequence) of the tree's unlocked leaf
  CHECK(c.evictable_blocks() == 1);
  std::vector<BlockId> dropped;
  CHECK(c.evict(1, &dropped) == 1);
  CHECK(dropped == std::vector<BlockId>{t[1], t[0]});  // the tail first (frees nothing), then the rest
  CHECK(a.ref_count(t[0]) == 0);
  CHECK(a.ref_count(t[1]) == 1);    // the other owner still has it
  CHECK(c.cached_blocks() == 0);
  a.decref(t[1]);
  CHECK(a.num_free_blocks() == 8);
  balanced(c, a);
}

TEST_CASE("RadixPrefixCache: misuse throws a clear error and leaves the tree unchanged") {
  PagedAllocator a(16, 4);
  RadixPrefixCache c(a);
  const auto p = iota_tokens(8, 1);
  const auto tp = prefill(a, 1, 8);
  c.insert(p, tp);
  auto m = c.match_prefix(head(p, 4));
  const auto other = prefill(a, 2, 8);
  const std::string before = c.dump();
  const auto free_before = a.num_free_blocks();

  CHECK_THROWS_AS(c.unlock(m.node), UsageError);
  CHECK_THROWS_AS(c.insert(p, std::vector<BlockId>{99, other[1]}), InvalidArgument);
  CHECK_THROWS_WITH(c.insert(p, std::vector<BlockId>{99, other[1]}), Catch::Contains("99"));
  const BlockId free_block = a.num_blocks() - 1;
  REQUIRE(a.ref_count(free_block) == 0);
  CHECK_THROWS_AS(c.insert(p, std::vector<BlockId>{other[0], free_block}), UsageError);
  CHECK_THROWS_WITH(c.insert(p, std::vector<BlockId>{other[0], free_block}), Catch::Contains("free"));
  CHECK_THROWS_AS(c.insert(head(p, 7), head(other, 2)), InvalidArgument);
  CHECK_THROWS_WITH(c.insert(head(p, 7), head(other, 2)), Catch::Contains("7 tokens"));
  CHECK_THROWS_AS(c.insert(p, std::vector<BlockId>{other[0], other[0]}), InvalidArgument);
  // tp[0] holds tokens 1..4; caching it for tokens 50.. is a contradiction.
  CHECK_THROWS_AS(c.insert(iota_tokens(4, 50), head(tp, 1)), UsageError);
  // The block is cached at another position of the same path.
  CHECK_THROWS_AS(c.insert(p, std::vector<BlockId>{tp[1], tp[0]}), UsageError);
  CHECK_THROWS_AS(c.evict(-1), InvalidArgument);
  CHECK_THROWS_AS(c.evict(1), UsageError);  // all held by sequence 1
  CHECK_THROWS_AS(c.lock(NodeHandle{123, 0}), UsageError);
  CHECK_THROWS_AS(c.lock(NodeHandle{m.node.index, m.node.generation + 1}), UsageError);
  CHECK_THROWS_AS(RadixPrefixCache(a, RadixPrefixCacheConfig{{}, 5}), InvalidArgument);

  CHECK(c.dump() == before);
  CHECK(a.num_free_blocks() == free_before);
  balanced(c, a);
}

TEST_CASE("RadixPrefixCache: sibling edges with equal keys are told apart by their tokens") {
  // key_tokens = 1: edges starting with the same token share a key.
  PagedAllocator a(32, 4);
  RadixPrefixCacheConfig cfg;
  cfg.key_tokens = 1;
  RadixPrefixCache c(a, cfg);
  std::vector<std::vector<Token>> prompts = {{5, 1, 1, 1, 9, 9, 9, 9}, {5, 2, 2, 2}, {5, 1, 1, 2}, {5, 3, 3, 3, 8, 8, 8, 8}};
  std::vector<std::vector<BlockId>> tables;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    tables.push_back(prefill(a, SeqId(i), std::int64_t(prompts[i].size())));
    CHECK(c.insert(prompts[i], tables.back()).new_blocks == std::int64_t(tables.back().size()));
  }
  balanced(c, a);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    auto m = c.match_prefix(prompts[i]);
    CHECK(m.blocks == tables[i]);
  }
  CHECK(c.match_prefix({5, 4, 4, 4}).length == 0);
}

// ---- randomized ----------------------------------------------------------------

namespace {

// A test-side model of what the tree must hold: for each namespace and each
// cached prefix (a whole number of blocks), the block caching its last block.
// It is prefix-closed, as the tree is.
struct Shadow {
  std::map<std::pair<Namespace, std::vector<Token>>, BlockId> cached;
  std::map<BlockId, std::pair<Namespace, std::vector<Token>>> by_block;

  std::vector<BlockId> match(Namespace ns, const std::vector<Token>& t, std::size_t n, std::int32_t bs) const {
    std::vector<BlockId> out;
    for (std::size_t end = std::size_t(bs); end <= n; end += std::size_t(bs)) {
      auto it = cached.find({ns, {t.begin(), t.begin() + long(end)}});
      if (it == cached.end()) break;
      out.push_back(it->second);
    }
    return out;
  }
};

struct Request {
  SeqId seq = 0;
  Namespace ns = 0;
  std::vector<Token> tokens;  // written to the KV so far
  NodeHandle locked;
  std::size_t locked_len = 0;  // the locked handle's prefix length
  // Some requests take no locks: their blocks may leave the tree while they
  // hold them, which eviction must not count as freed.
  bool locks = true;
};

struct RandomRun {
  std::int32_t bs;
  PagedAllocator alloc;
  RadixPrefixCache cache;
  Shadow shadow;
  std::mt19937_64 rng;
  std::vector<Request> reqs;
  std::vector<std::vector<Token>> pool;  // earlier prompts, to share prefixes with
  // KV "content": the token each slot of each block holds, to prove that a
  // cached block is never overwritten.
  std::vector<std::vector<Token>> content;
  SeqId next_seq = 1;
  std::vector<NodeHandle> lookups;  // unlocked handles from plain lookups
  MatchResult m;                    // reused across calls
  std::int64_t evicted = 0, hits = 0, misuse = 0, aborted = 0, full_hits = 0, dropped_shared = 0;

  RandomRun(std::int32_t num_blocks, std::int32_t block_size, std::int32_t key_tokens, std::uint64_t seed)
      : bs(block_size),
        alloc(num_blocks, block_size),
        cache(alloc, RadixPrefixCacheConfig{{}, key_tokens}),
        rng(seed),
        content(std::size_t(num_blocks), std::vector<Token>(std::size_t(block_size), -1)) {}

  std::size_t pick(std::size_t n) { return std::size_t(rng() % n); }

  std::vector<Token> random_prompt() {
    std::vector<Token> p;
    const std::size_t kind = pick(8);
    if (!pool.empty() && kind < 2) {  // an earlier prompt cut at a block boundary: full hits
      const auto& base = pool[pick(pool.size())];
      std::size_t len = pick(base.size() / std::size_t(bs) + 1) * std::size_t(bs);
      if (len == 0) len = base.size();
      return {base.begin(), base.begin() + long(len)};
    }
    if (!pool.empty() && kind < 6) {  // an earlier prompt's prefix, then new tokens
      const auto& base = pool[pick(pool.size())];
      p.assign(base.begin(), base.begin() + long(pick(base.size() + 1)));
    }
    const std::size_t extra = 1 + pick(std::size_t(3 * bs + 4));
    for (std::size_t i = 0; i < extra && p.size() < 40; ++i) p.push_back(Token(pick(3)));
    if (p.empty()) p.push_back(0);
    return p;
  }

  void check_match(Namespace ns, const std::vector<Token>& t, std::size_t n) {
    cache.match_prefix(t.data(), n, m, ns);
    const auto expect = shadow.match(ns, t, n, bs);
    REQUIRE(m.blocks == expect);
    REQUIRE(m.length == std::int64_t(expect.size()) * bs);
    REQUIRE(m.node.empty() == expect.empty());
  }

  // Caches the first full blocks of r's tokens, checking the tree's answer
  // against the shadow's prediction.
  prefix::InsertResult insert(const Request& r) {
    const std::size_t nb = r.tokens.size() / std::size_t(bs);
    const auto& table = alloc.block_table(r.seq);
    std::vector<BlockId> blocks(table.begin(), table.begin() + long(nb));
    std::vector<BlockId> redundant;
    std::int64_t fresh = 0;
    for (std::size_t i = 0; i < nb; ++i) {
      std::pair<Namespace, std::vector<Token>> key{r.ns, {r.tokens.begin(), r.tokens.begin() + long((i + 1) * bs)}};
      auto it = shadow.cached.find(key);
      if (it != shadow.cached.end()) {
        if (it->second != blocks[i]) redundant.push_back(blocks[i]);
      } else {
        shadow.cached.emplace(key, blocks[i]);
        shadow.by_block.emplace(blocks[i], key);
        ++fresh;
      }
    }
    auto res = cache.insert({r.tokens.begin(), r.tokens.begin() + long(nb * bs)}, blocks, r.ns);
    REQUIRE(res.redundant == redundant);
    REQUIRE(res.new_blocks == fresh);
    return res;
  }

  // Room for n more tokens of seq, evicting if that helps; false if not.
  bool reserve(SeqId seq, std::int64_t n) {
    std::vector<BlockCopy> copies;
    const std::int64_t short_by = alloc.blocks_to_append(seq, n) - alloc.num_free_blocks();
    if (short_by > 0) {
      if (short_by > cache.evictable_blocks()) return false;
      evict(short_by);
    }
    REQUIRE(alloc.reserve(seq, n, &copies));
    for (const BlockCopy& cp : copies)
      std::copy(content[std::size_t(cp.src)].begin(), content[std::size_t(cp.src)].begin() + cp.tokens,
                content[std::size_t(cp.dst)].begin());
    return true;
  }

  void write(Request& r, const std::vector<Token>& t) {
    const auto& table = alloc.block_table(r.seq);
    for (Token tok : t) {
      const std::size_t pos = r.tokens.size();
      content[std::size_t(table[pos / std::size_t(bs)])][pos % std::size_t(bs)] = tok;
      r.tokens.push_back(tok);
    }
    alloc.append(r.seq, std::int64_t(t.size()));
  }

  std::set<BlockId> locked_blocks() const {
    std::set<BlockId> s;
    for (const Request& r : reqs) {
      const auto path = shadow.match(r.ns, r.tokens, r.locked_len, bs);
      REQUIRE(path.size() * std::size_t(bs) == r.locked_len);  // a locked path is never evicted
      s.insert(path.begin(), path.end());
    }
    return s;
  }

  // evict(n), or evict_up_to(n) which may be asked for more than there is.
  void evict(std::int64_t n, bool up_to = false) {
    const auto locked = locked_blocks();
    const auto free_before = alloc.num_free_blocks();
    const auto can = cache.evictable_blocks();
    std::vector<BlockId> dropped;
    if (up_to) {
      REQUIRE(cache.evict_up_to(n, &dropped) == std::min(n, can));
      n = std::min(n, can);
    } else {
      REQUIRE(cache.evict(n, &dropped) == n);
    }
    REQUIRE(alloc.num_free_blocks() == free_before + n);
    for (BlockId b : dropped) {
      REQUIRE(locked.count(b) == 0);
      dropped_shared += alloc.ref_count(b) > 0;  // still held by a sequence
      auto it = shadow.by_block.find(b);
      REQUIRE(it != shadow.by_block.end());
      shadow.cached.erase(it->second);
      shadow.by_block.erase(it);
    }
    // Still prefix-closed: the tree dropped leaves only.
    for (const auto& kv : shadow.cached) {
      const auto& t = kv.first.second;
      if (t.size() > std::size_t(bs))
        REQUIRE(shadow.cached.count({kv.first.first, {t.begin(), t.end() - bs}}) == 1);
    }
    evicted += n;
  }

  void start_request() {
    Request r;
    r.seq = next_seq++;
    r.ns = Namespace(pick(3));
    const auto prompt = random_prompt();
    pool.push_back(prompt);
    check_match(r.ns, prompt, prompt.size());
    r.locks = pick(4) != 0;
    if (r.locks) {
      cache.lock(m.node);
      r.locked = m.node;
      r.locked_len = std::size_t(m.length);
    }
    hits += m.length > 0;
    // A full hit keeps one prompt token to compute: adopt one token less.
    std::size_t adopt_len = std::size_t(m.length);
    if (adopt_len == prompt.size()) {
      --adopt_len;
      ++full_hits;
    }
    const std::size_t adopt_blocks = std::size_t(alloc.blocks_for(std::int64_t(adopt_len)));
    alloc.adopt(r.seq, {m.blocks.begin(), m.blocks.begin() + long(adopt_blocks)}, std::int64_t(adopt_len));
    r.tokens.assign(prompt.begin(), prompt.begin() + long(adopt_len));
    if (!reserve(r.seq, std::int64_t(prompt.size() - adopt_len))) {
      cache.unlock(r.locked);
      alloc.free_sequence(r.seq);
      ++aborted;
      return;
    }
    write(r, {prompt.begin() + long(adopt_len), prompt.end()});
    // After prefill: cache the prompt and move the lock to it.
    const auto ins = insert(r);
    if (r.locks) {
      cache.lock(ins.node);
      cache.unlock(r.locked);
      r.locked = ins.node;
      r.locked_len = prompt.size() / std::size_t(bs) * std::size_t(bs);
    }
    reqs.push_back(std::move(r));
  }

  void decode(Request& r) {
    const std::size_t n = 1 + pick(std::size_t(bs) + 2);
    if (!reserve(r.seq, std::int64_t(n))) return;
    std::vector<Token> t(n);
    for (Token& x : t) x = Token(pick(3));
    write(r, t);
  }

  void finish(std::size_t i) {
    Request r = std::move(reqs[i]);
    reqs.erase(reqs.begin() + long(i));
    insert(r);
    cache.unlock(r.locked);
    alloc.free_sequence(r.seq);
  }

  void try_misuse() {
    const std::string before = cache.dump();
    const auto free_before = alloc.num_free_blocks();
    switch (pick(5)) {
      case 0:
        REQUIRE_THROWS_AS(cache.evict(cache.evictable_blocks() + 1), UsageError);
        break;
      case 1: {  // unlock a handle nobody locked (or one gone stale)
        if (lookups.empty()) return;
        const NodeHandle h = lookups[pick(lookups.size())];
        if (h.empty() || (cache.is_valid(h) && cache.lock_count(h) > 0)) return;
        REQUIRE_THROWS_AS(cache.unlock(h), UsageError);
        if (!cache.is_valid(h)) REQUIRE_THROWS_AS(cache.lock(h), UsageError);
        break;
      }
      case 2: {  // cache a block the allocator holds for nobody
        if (alloc.num_free_blocks() == 0) return;
        BlockId f = 0;
        while (alloc.ref_count(f) != 0) ++f;
        REQUIRE_THROWS_AS(cache.insert(std::vector<Token>(std::size_t(bs), 0), std::vector<BlockId>{f}, 1),
                          UsageError);
        break;
      }
      case 3:
        REQUIRE_THROWS_AS(cache.insert(std::vector<Token>(std::size_t(bs) + 1, 0), std::vector<BlockId>{0}),
                          InvalidArgument);
        break;
      default: {  // re-cache a cached block under other tokens
        if (shadow.by_block.empty()) return;
        auto it = shadow.by_block.begin();
        std::advance(it, long(pick(shadow.by_block.size())));
        std::vector<Token> t(std::size_t(bs), 1000);  // no prompt holds token 1000
        REQUIRE_THROWS_AS(cache.insert(t, std::vector<BlockId>{it->first}, it->second.first), UsageError);
      }
    }
    ++misuse;
    REQUIRE(cache.dump() == before);
    REQUIRE(alloc.num_free_blocks() == free_before);
  }

  // The identity from outside the tree: every block's count is the tree's
  // reference plus the block tables naming it; evictable and protected
  // recomputed from the shadow, the locks and the tables.
  void check() {
    cache.check_invariants();
    alloc.check_invariants();
    const std::int32_t cap = alloc.num_blocks();
    std::vector<std::int32_t> table_refs(std::size_t(cap), 0);
    for (const Request& r : reqs)
      for (BlockId b : alloc.block_table(r.seq)) ++table_refs[std::size_t(b)];
    const auto locked = locked_blocks();
    std::int64_t evictable = 0, protected_ = 0;
    for (BlockId b = 0; b < cap; ++b) {
      const bool cached = shadow.by_block.count(b) != 0;
      REQUIRE(cache.is_cached(b) == cached);
      REQUIRE(alloc.ref_count(b) == std::int32_t(cached) + table_refs[std::size_t(b)]);
      if (cached && table_refs[std::size_t(b)] == 0 && locked.count(b) == 0) ++evictable;
      else if (locked.count(b) || table_refs[std::size_t(b)] > 0) ++protected_;
    }
    REQUIRE(cache.evictable_blocks() == evictable);
    REQUIRE(cache.protected_blocks() == protected_);
    REQUIRE(alloc.num_free_blocks() + evictable + protected_ == cap);
    REQUIRE(cache.cached_blocks() == std::int64_t(shadow.cached.size()));
    // Cached KV is exactly the tokens it was cached for: nothing wrote into it.
    for (const auto& kv : shadow.by_block) {
      const auto& t = kv.second.second;
      REQUIRE(std::equal(t.end() - bs, t.end(), content[std::size_t(kv.first)].begin()));
    }
  }

  void step() {
    const std::size_t op = pick(100);
    if (op < 25 && reqs.size() < 6) {
      start_request();
    } else if (op < 50 && !reqs.empty()) {
      decode(reqs[pick(reqs.size())]);
    } else if (op < 62 && !reqs.empty()) {
      finish(pick(reqs.size()));
    } else if (op < 68) {
      evict(std::int64_t(pick(std::size_t(cache.evictable_blocks()) + 1)));
    } else if (op < 72) {
      evict(std::int64_t(pick(std::size_t(cache.evictable_blocks()) + 8)), /*up_to=*/true);
    } else if (op < 85) {
      const auto p = random_prompt();
      check_match(Namespace(pick(3)), p, p.size());
      lookups.push_back(m.node);
      if (lookups.size() > 16) lookups.erase(lookups.begin());
    } else if (op < 92 && !reqs.empty()) {
      // A request re-locks its own prefix and lets go again (nested locks).
      Request& r = reqs[pick(reqs.size())];
      if (!r.locked.empty()) {
        const auto held = cache.lock_count(r.locked);  // other requests may share the node
        cache.lock(r.locked);
        REQUIRE(cache.lock_count(r.locked) == held + 1);
        cache.unlock(r.locked);
        REQUIRE(cache.lock_count(r.locked) == held);
      }
    } else {
      try_misuse();
    }
    check();
  }
};

}  // namespace

TEST_CASE("RadixPrefixCache: thousands of random operations keep the books and leak nothing") {
  struct Case {
    std::int32_t blocks, block_size, key_tokens;
  };
  const Case cs = GENERATE(Case{48, 4, 0}, Case{48, 4, 1}, Case{40, 1, 0}, Case{64, 8, 2});
  const std::uint64_t seed = GENERATE(1u, 2u, 3u);
  CAPTURE(cs.blocks, cs.block_size, cs.key_tokens, seed);
  RandomRun run(cs.blocks, cs.block_size, cs.key_tokens, seed);
  for (int i = 0; i < 3000; ++i) run.step();
  // Every path was exercised, not just the easy ones.
  CHECK(run.evicted > 0);
  CHECK(run.hits > 0);
  CHECK(run.full_hits > 0);
  CHECK(run.misuse > 0);
  CHECK(run.dropped_shared > 0);
  while (!run.reqs.empty()) run.finish(0);
  run.check();
  run.evict(run.cache.evictable_blocks());
  run.check();
  CHECK(run.cache.cached_blocks() == 0);
  CHECK(run.cache.num_nodes() == 0);
  CHECK(run.alloc.num_free_blocks() == run.alloc.num_blocks());
}

TEST_CASE("RadixPrefixCache: the destructor gives the tree's references back") {
  PagedAllocator a(8, 2);
  {
    RadixPrefixCache c(a);
    const auto t = prefill(a, 1, 6);
    c.insert(iota_tokens(6, 0), t);
    a.free_sequence(1);
    CHECK(a.num_free_blocks() == 5);
  }
  CHECK(a.num_free_blocks() == 8);
  a.check_invariants();
}

TEST_CASE("RadixPrefixCache: a handle to a node that eviction shortened is stale") {
  // The handle promised blocks that are gone: locking it must not pretend
  // to protect them.
  PagedAllocator a(8, 2);
  RadixPrefixCache c(a);
  const auto t = prefill(a, 1, 6);
  const auto toks = iota_tokens(6, 0);
  c.insert(toks, t);
  a.free_sequence(1);
  auto m = c.match_prefix(toks);
  REQUIRE(m.blocks == t);
  CHECK(c.evict(1) == 1);
  CHECK(!c.is_valid(m.node));
  CHECK_THROWS_AS(c.lock(m.node), UsageError);
  auto again = c.match_prefix(toks);
  CHECK(again.length == 4);
  CHECK(again.node.index == m.node.index);  // the same node, shorter, under a new generation
  c.lock(again.node);
  CHECK(c.locked_blocks() == 2);
  c.unlock(again.node);
  balanced(c, a);
}
