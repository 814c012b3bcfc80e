// RadixPrefixCache: remembers which KV blocks hold which token prefixes, so a
// request whose prompt starts like an earlier one reuses those blocks instead
// of computing them again (SGLang's RadixAttention, at block granularity).
//
// The tree is keyed by token ids. Every edge is a run of whole blocks (its
// label is a multiple of block_size tokens) and every node names the
// PagedAllocator blocks that hold the KV of its edge. Only full blocks are
// cached: the partially filled last block of a sequence never enters the
// tree, so a cached block is immutable. A sequence that adopts a cached
// prefix (PagedAllocator::adopt) appends into fresh blocks; where it adopts a
// partial view of a cached block (length not a multiple of block_size, e.g.
// a full-prompt hit that recomputes its last token) the allocator's
// copy-on-write copies that block before the first write.
//
// Namespaces (tenant, LoRA adapter, salt: any 64-bit value the caller
// derives) have separate roots: two namespaces never share a node or a block.
//
// Ownership: the tree holds one reference (PagedAllocator::incref) on each
// block it caches and drops it (decref) when the block is evicted; a block is
// free again when no sequence holds it either. lock(node) protects the path
// from the root to node from eviction until the matching unlock(node).
//
// Accounting, true after every call (check_invariants() verifies it):
//   free + evictable + protected == capacity
// free: the allocator's free list; evictable: cached blocks in unlocked nodes
// that nothing but the tree holds (what evict() can give back); protected:
// every other block in use (locked nodes, blocks shared with live sequences,
// blocks outside the tree).
//
// One request's life (see docs/prefix_cache.md):
//   cache.match_prefix(prompt, n, m, ns);  cache.lock(m.node);
//   alloc.adopt(seq, m.blocks, m.length)  (a full hit: m.length - 1 tokens)
//   ... prefill the rest, decode ...
//   auto r = cache.insert(tokens, full_blocks, ns);  cache.lock(r.node);  cache.unlock(m.node);
//   at the end: insert again, unlock, alloc.free_sequence(seq)
//
// Misuse (a stale handle, unlocking an unlocked node, blocks the allocator does
// not hold, a token/block count mismatch, evicting more than is evictable)
// throws InvalidArgument / UsageError and leaves the tree unchanged. Not
// thread-safe: one scheduler thread owns the tree and the allocator.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/memory/paged_allocator.hpp"

namespace fastinfer::prefix {

using Token = std::int32_t;
// Tenant / adapter / salt: trees of different namespaces share nothing.
using Namespace = std::uint64_t;

struct RadixPrefixCacheConfig {
  // Time stamps for least-recently-used eviction. Empty: a logical clock that
  // ticks once per match_prefix / insert, which orders accesses exactly.
  // Tests inject their own to control ties and order.
  std::function<std::uint64_t()> clock;
  // Children are found by a 64-bit key of the first block of their edge:
  // a hash of its first `key_tokens` tokens (0: the whole block). Sibling
  // edges with equal keys are still told apart by their tokens; tests set 1
  // to make such siblings common.
  std::int32_t key_tokens = 0;
};

// Names a node (the end of a cached prefix) for lock/unlock. It goes stale
// when the node is evicted or shortened by eviction, which a locked node
// never is; using a stale handle throws UsageError. The empty handle
// (a match of length 0) is a valid argument that locks nothing.
struct NodeHandle {
  std::int32_t index = -1;
  std::uint32_t generation = 0;
  bool empty() const { return index < 0; }
  friend bool operator==(NodeHandle a, NodeHandle b) { return a.index == b.index && a.generation == b.generation; }
  friend bool operator!=(NodeHandle a, NodeHandle b) { return !(a == b); }
};

// What match_prefix found. Reuse one across calls: `blocks` keeps its capacity,
// so a lookup allocates nothing.
struct MatchResult {
  std::int64_t length = 0;      // tokens matched: a multiple of block_size
  std::vector<BlockId> blocks;  // length / block_size block ids, root first
  NodeHandle node;              // the node ending at `length` (empty if 0)
};

struct InsertResult {
  NodeHandle node;                 // the node ending at the inserted length
  std::int64_t new_blocks = 0;     // blocks the tree now caches (and increfs)
  std::vector<BlockId> redundant;  // passed blocks whose tokens were already cached under
                                   // another block: the tree keeps its own, the caller's
                                   // copy goes when its sequence is freed
};

class RadixPrefixCache {
 public:
  explicit RadixPrefixCache(PagedAllocator& alloc, RadixPrefixCacheConfig cfg = {})
      : alloc_(alloc),
        bs_(alloc.block_size()),
        key_tokens_(cfg.key_tokens),
        clock_(std::move(cfg.clock)),
        block_node_(std::size_t(alloc.num_blocks()), -1) {
    FASTINFER_CHECK(key_tokens_ >= 0 && key_tokens_ <= bs_, InvalidArgument,
                    "RadixPrefixCache: key_tokens must lie in [0, block_size ", bs_, "], got ", key_tokens_);
    if (key_tokens_ == 0) key_tokens_ = bs_;
  }

  RadixPrefixCache(const RadixPrefixCache&) = delete;
  RadixPrefixCache& operator=(const RadixPrefixCache&) = delete;

  // The tree still holds references in the allocator; give them back.
  ~RadixPrefixCache() {
    for (const Node& n : nodes_)
      if (n.alive)
        for (BlockId b : n.blocks) alloc_.decref(b);
  }

  std::int32_t block_size() const { return bs_; }
  const PagedAllocator& allocator() const { return alloc_; }

  // ---- lookup ----------------------------------------------------------------

  // The longest cached prefix of tokens[0, n) in whole blocks. A match that
  // ends inside an edge splits that edge there, so that out.node ends exactly
  // at out.length (and a later insert shares the split). Touches the path
  // for LRU. Allocates nothing once out.blocks has capacity (and no split).
  // To always leave a token to compute (its logits start decoding), see the
  // full-hit note at the top: adopt length - 1 tokens of a full hit.
  std::int64_t match_prefix(const Token* tokens, std::size_t n, MatchResult& out, Namespace ns = 0) {
    out.length = 0;
    out.blocks.clear();
    out.node = NodeHandle{};
    FASTINFER_CHECK(tokens != nullptr || n == 0, InvalidArgument, "RadixPrefixCache::match_prefix: null tokens");
    auto it = roots_.find(ns);
    if (it == roots_.end()) return 0;
    const Walk w = walk(it->second, tokens, std::int64_t(n) / bs_, &out.blocks);
    std::int32_t end = w.node;
    if (w.partial_child >= 0) end = split(w.partial_child, w.partial_blocks);
    out.length = w.matched_blocks * bs_;
    if (end != it->second) {
      out.node = handle(end);
      touch(end, now());
    }
    return out.length;
  }

  MatchResult match_prefix(const std::vector<Token>& tokens, Namespace ns = 0) {
    MatchResult r;
    match_prefix(tokens.data(), tokens.size(), r, ns);
    return r;
  }

  // ---- insertion -------------------------------------------------------------

  // Caches blocks[i] as the KV of tokens[i*bs, (i+1)*bs), i < n_blocks
  // (tokens holds n_blocks * block_size tokens: full blocks only). Blocks the
  // tree holds already for the same tokens stay; the passed ones at those
  // places are returned as redundant (unless they are the very same blocks).
  // The tree increfs each block it newly caches. Throws, tree unchanged, when
  // a block is not live in the allocator, appears twice, or is cached for
  // other tokens or in another namespace.
  InsertResult insert(const Token* tokens, const BlockId* blocks, std::size_t n_blocks, Namespace ns = 0) {
    FASTINFER_CHECK((tokens != nullptr && blocks != nullptr) || n_blocks == 0, InvalidArgument,
                    "RadixPrefixCache::insert: null tokens or blocks");
    const std::int64_t nb = std::int64_t(n_blocks);
    InsertResult res;
    // Dry run first: every check happens before anything changes.
    scratch_.clear();
    auto root_it = roots_.find(ns);
    const Walk w = root_it == roots_.end() ? Walk{} : walk(root_it->second, tokens, nb, &scratch_);
    for (std::int64_t i = 0; i < nb; ++i) {
      const BlockId b = blocks[i];
      FASTINFER_CHECK(b >= 0 && b < alloc_.num_blocks(), InvalidArgument, "RadixPrefixCache::insert: block id ", b,
                      " (position ", i, ") is outside the allocator's [0, ", alloc_.num_blocks(), ")");
      FASTINFER_CHECK(alloc_.ref_count(b) > 0, UsageError, "RadixPrefixCache::insert: block ", b, " (position ", i,
                      ") is free in the allocator; only blocks a sequence holds can be cached");
      const bool same = i < w.matched_blocks && scratch_[std::size_t(i)] == b;
      FASTINFER_CHECK(same || block_node_[std::size_t(b)] < 0, UsageError, "RadixPrefixCache::insert: block ", b,
                      " (position ", i, ") is already cached for other tokens",
                      nodes_.empty() || block_node_[std::size_t(b)] < 0 ||
                              nodes_[std::size_t(block_node_[std::size_t(b)])].ns == ns
                          ? ""
                          : " in another namespace");
    }
    sorted_.assign(blocks, blocks + nb);
    std::sort(sorted_.begin(), sorted_.end());
    const auto dup = std::adjacent_find(sorted_.begin(), sorted_.end());
    FASTINFER_CHECK(dup == sorted_.end(), InvalidArgument, "RadixPrefixCache::insert: block ",
                    dup == sorted_.end() ? 0 : *dup, " is passed twice");
    if (nb == 0) return res;

    for (std::int64_t i = 0; i < w.matched_blocks; ++i)
      if (scratch_[std::size_t(i)] != blocks[i]) res.redundant.push_back(blocks[i]);

    // Commit. Nothing below throws except std::bad_alloc.
    const std::int32_t root = root_it == roots_.end() ? make_root(ns) : root_it->second;
    std::int32_t at = w.node < 0 ? root : w.node;
    if (w.partial_child >= 0) at = split(w.partial_child, w.partial_blocks);
    if (w.matched_blocks < nb) {
      const std::int32_t leaf = new_node();
      Node& L = nodes_[std::size_t(leaf)];
      L.ns = ns;
      L.parent = at;
      L.tokens.assign(tokens + w.matched_blocks * bs_, tokens + nb * bs_);
      L.blocks.assign(blocks + w.matched_blocks, blocks + nb);
      L.key = key_of(L.tokens.data());
      for (BlockId b : L.blocks) {
        alloc_.incref(b);
        block_node_[std::size_t(b)] = leaf;
      }
      res.new_blocks = nb - w.matched_blocks;
      cached_blocks_ += res.new_blocks;
      add_child(at, leaf);
      at = leaf;
    }
    res.node = handle(at);
    touch(at, now());
    return res;
  }

  InsertResult insert(const std::vector<Token>& tokens, const std::vector<BlockId>& blocks, Namespace ns = 0) {
    FASTINFER_CHECK(tokens.size() == blocks.size() * std::size_t(bs_), InvalidArgument, "RadixPrefixCache::insert: ",
                    tokens.size(), " tokens do not fill ", blocks.size(), " blocks of ", bs_,
                    " tokens (cache full blocks only: pass the first ", tokens.size() / std::size_t(bs_) * std::size_t(bs_),
                    " tokens and their blocks)");
    return insert(tokens.data(), blocks.data(), blocks.size(), ns);
  }

  // ---- protection ------------------------------------------------------------

  // Protects every block from the root to `node` from eviction (a reference
  // count per node along the path). The empty handle locks nothing.
  void lock(NodeHandle node) {
    if (node.empty()) return;
    check_handle(node, "lock");
    ++nodes_[std::size_t(node.index)].direct_locks;
    for (std::int32_t x = node.index; nodes_[std::size_t(x)].parent >= 0; x = nodes_[std::size_t(x)].parent) {
      Node& n = nodes_[std::size_t(x)];
      if (n.lock++ == 0) locked_blocks_ += std::int64_t(n.blocks.size());
    }
  }

  void unlock(NodeHandle node) {
    if (node.empty()) return;
    check_handle(node, "unlock");
    // Checked per node, not along the path: unlocking a parent must not
    // release a lock a request holds on its child.
    FASTINFER_CHECK(nodes_[std::size_t(node.index)].direct_locks > 0, UsageError, "RadixPrefixCache::unlock: node ",
                    node.index, " is not locked (", nodes_[std::size_t(node.index)].lock,
                    " locks pass through it to nodes below)");
    --nodes_[std::size_t(node.index)].direct_locks;
    for (std::int32_t x = node.index; nodes_[std::size_t(x)].parent >= 0; x = nodes_[std::size_t(x)].parent) {
      Node& n = nodes_[std::size_t(x)];
      if (--n.lock == 0) locked_blocks_ -= std::int64_t(n.blocks.size());
    }
  }

  // Locks taken on this very node and not yet released (0 for the empty
  // handle); throws on a stale handle.
  std::int32_t lock_count(NodeHandle node) const {
    if (node.empty()) return 0;
    check_handle(node, "lock_count");
    return nodes_[std::size_t(node.index)].direct_locks;
  }

  bool is_valid(NodeHandle node) const {
    return node.empty() || (node.index < std::int32_t(nodes_.size()) && nodes_[std::size_t(node.index)].alive &&
                            nodes_[std::size_t(node.index)].generation == node.generation);
  }

  // ---- eviction --------------------------------------------------------------

  // Gives exactly n blocks back to the allocator's free list, taking blocks
  // from the tails of the least recently used unlocked leaves (a leaf that
  // empties is removed, and its parent may become the next leaf). A cached
  // block that a live sequence still holds is dropped from the tree on the
  // way without counting (it frees nothing). Evicted block ids, freed or
  // not, go to `dropped` if given. Throws UsageError, tree unchanged, if n
  // exceeds evictable_blocks(). Cost: O(nodes) to find the leaves plus
  // O(k log nodes) for the k blocks dropped; the allocator is asked about
  // the dropped blocks only.
  std::int64_t evict(std::int64_t n, std::vector<BlockId>* dropped = nullptr) {
    FASTINFER_CHECK(n >= 0, InvalidArgument, "RadixPrefixCache::evict: cannot evict ", n, " blocks");
    if (n == 0) return 0;
    const std::int64_t can = plan_eviction(n);
    // A plan that falls short visited every unlocked node: `can` is all
    // there is to evict.
    FASTINFER_CHECK(can == n, UsageError, "RadixPrefixCache::evict: asked for ", n, " blocks but only ", can,
                    " are evictable (", locked_blocks_, " cached blocks are locked, ", alloc_.num_free_blocks(),
                    " blocks are free)");
    commit_eviction(dropped);
    return n;
  }

  // As evict(), but gives back what it can when fewer than n blocks are
  // evictable (a scheduler short of blocks); returns how many it freed.
  std::int64_t evict_up_to(std::int64_t n, std::vector<BlockId>* dropped = nullptr) {
    FASTINFER_CHECK(n >= 0, InvalidArgument, "RadixPrefixCache::evict_up_to: cannot evict ", n, " blocks");
    if (n == 0) return 0;
    const std::int64_t freed = plan_eviction(n);
    commit_eviction(dropped);
    return freed;
  }

  // ---- accounting ------------------------------------------------------------

  std::int64_t cached_blocks() const { return cached_blocks_; }
  std::int64_t locked_blocks() const { return locked_blocks_; }
  std::size_t num_nodes() const { return nodes_.size() - free_nodes_.size(); }
  std::size_t num_namespaces() const { return roots_.size(); }
  bool is_cached(BlockId b) const {
    return b >= 0 && b < alloc_.num_blocks() && block_node_[std::size_t(b)] >= 0;
  }

  // Cached blocks in unlocked nodes that only the tree holds: what evict()
  // can return to the free list. O(cached blocks): the tree does not see
  // sequences drop their references, so it asks the allocator.
  std::int64_t evictable_blocks() const {
    std::int64_t e = 0;
    for (const Node& nd : nodes_)
      if (nd.alive && nd.lock == 0)
        for (BlockId b : nd.blocks) e += alloc_.ref_count(b) == 1;
    return e;
  }

  // Blocks in use that eviction cannot free: locked cached blocks, unlocked
  // cached blocks a sequence also holds, and blocks in use outside the tree.
  std::int64_t protected_blocks() const {
    std::int64_t unlocked_shared = 0;
    for (const Node& nd : nodes_)
      if (nd.alive && nd.lock == 0)
        for (BlockId b : nd.blocks) unlocked_shared += alloc_.ref_count(b) > 1;
    const std::int64_t used = alloc_.num_blocks() - alloc_.num_free_blocks();
    return locked_blocks_ + unlocked_shared + (used - cached_blocks_);
  }

  // Throws fastinfer::Error naming the first broken rule: tree shape (parent
  // links, sorted child keys, distinct sibling first blocks, edges of whole
  // blocks), block ownership (each cached block live, in one node only),
  // lock counts (a node's count covers its children's), the counters, and
  // free + evictable + protected == capacity.
  void check_invariants() const {
    std::int64_t cached = 0, locked = 0;
    std::size_t visited = 0;
    std::vector<std::int32_t> stack;
    for (const auto& kv : roots_) {
      const std::int32_t r = kv.second;
      FASTINFER_CHECK(r >= 0 && std::size_t(r) < nodes_.size() && nodes_[std::size_t(r)].alive, Error,
                      "RadixPrefixCache: namespace ", kv.first, " has a dead root");
      const Node& root = nodes_[std::size_t(r)];
      FASTINFER_CHECK(root.parent < 0 && root.tokens.empty() && root.blocks.empty() && root.ns == kv.first &&
                          root.lock == 0 && !root.children.empty(),
                      Error, "RadixPrefixCache: root of namespace ", kv.first, " is malformed or empty");
      stack.assign(1, r);
      while (!stack.empty()) {
        const std::int32_t x = stack.back();
        stack.pop_back();
        const Node& nd = nodes_[std::size_t(x)];
        ++visited;
        std::int32_t child_locks = 0;
        for (std::size_t i = 0; i < nd.children.size(); ++i) {
          const Child& c = nd.children[i];
          FASTINFER_CHECK(c.node >= 0 && std::size_t(c.node) < nodes_.size() && nodes_[std::size_t(c.node)].alive,
                          Error, "RadixPrefixCache: node ", x, " has a dead child ", c.node);
          const Node& ch = nodes_[std::size_t(c.node)];
          FASTINFER_CHECK(ch.parent == x && ch.ns == nd.ns, Error, "RadixPrefixCache: node ", c.node,
                          " does not point back to its parent ", x);
          FASTINFER_CHECK(!ch.blocks.empty() && ch.tokens.size() == ch.blocks.size() * std::size_t(bs_), Error,
                          "RadixPrefixCache: node ", c.node, " has ", ch.tokens.size(), " tokens for ",
                          ch.blocks.size(), " blocks");
          FASTINFER_CHECK(c.key == ch.key && ch.key == key_of(ch.tokens.data()), Error, "RadixPrefixCache: node ",
                          c.node, " is filed under a wrong key");
          FASTINFER_CHECK(i == 0 || nd.children[i - 1].key <= c.key, Error, "RadixPrefixCache: children of node ",
                          x, " are not sorted by key");
          for (std::size_t j = 0; j < i; ++j)
            FASTINFER_CHECK(nd.children[j].key != c.key ||
                                !equal_block(nodes_[std::size_t(nd.children[j].node)].tokens.data(), ch.tokens.data()),
                            Error, "RadixPrefixCache: node ", x, " has two children with the same first block");
          child_locks += ch.lock;
          stack.push_back(c.node);
        }
        FASTINFER_CHECK(nd.direct_locks >= 0 && (nd.parent < 0 || nd.lock == nd.direct_locks + child_locks), Error,
                        "RadixPrefixCache: node ", x, " has lock count ", nd.lock, " but ", nd.direct_locks,
                        " locks of its own and ", child_locks, " from below");
        for (BlockId b : nd.blocks) {
          FASTINFER_CHECK(b >= 0 && b < alloc_.num_blocks() && block_node_[std::size_t(b)] == x, Error,
                          "RadixPrefixCache: block ", b, " of node ", x, " is not filed under it");
          FASTINFER_CHECK(alloc_.ref_count(b) >= 1, Error, "RadixPrefixCache: cached block ", b,
                          " is free in the allocator");
        }
        cached += std::int64_t(nd.blocks.size());
        if (nd.lock > 0) locked += std::int64_t(nd.blocks.size());
      }
    }
    FASTINFER_CHECK(visited == num_nodes(), Error, "RadixPrefixCache: ", num_nodes() - visited,
                    " live nodes are unreachable");
    std::int64_t filed = 0;
    for (std::int32_t x : block_node_) filed += x >= 0;
    FASTINFER_CHECK(cached == cached_blocks_ && filed == cached, Error, "RadixPrefixCache: cached block count ",
                    cached_blocks_, " but the tree holds ", cached, " and ", filed, " are filed");
    FASTINFER_CHECK(locked == locked_blocks_, Error, "RadixPrefixCache: locked block count ", locked_blocks_,
                    " but locked nodes hold ", locked);
    const std::int64_t free = alloc_.num_free_blocks(), ev = evictable_blocks(), pr = protected_blocks();
    FASTINFER_CHECK(free + ev + pr == alloc_.num_blocks(), Error, "RadixPrefixCache: free ", free, " + evictable ",
                    ev, " + protected ", pr, " != capacity ", alloc_.num_blocks());
  }

  // A deterministic text picture of the whole tree (namespaces in order,
  // children in key order, every token, block, lock and time stamp): tests
  // compare it before and after a call that must change nothing.
  std::string dump() const {
    std::vector<std::pair<Namespace, std::int32_t>> roots(roots_.begin(), roots_.end());
    std::sort(roots.begin(), roots.end());
    std::ostringstream out;
    out << "cached " << cached_blocks_ << " locked " << locked_blocks_ << " nodes " << num_nodes() << '\n';
    for (const auto& r : roots) {
      out << "namespace " << r.first << '\n';
      dump_node(out, r.second, 1);
    }
    return out.str();
  }

 private:
  struct Child {
    std::uint64_t key;
    std::int32_t node;
  };
  struct Node {
    std::vector<Token> tokens;    // the edge from the parent: blocks.size() * bs tokens
    std::vector<BlockId> blocks;  // KV of those tokens, one block per bs tokens
    std::vector<Child> children;  // sorted by key
    std::uint64_t key = 0;        // key_of(first block), how the parent files it
    std::uint64_t last_access = 0;
    Namespace ns = 0;
    std::int32_t parent = -1;  // -1: a namespace root (no edge)
    std::int32_t lock = 0;          // locks on this node and on nodes below it
    std::int32_t direct_locks = 0;  // locks on this node itself
    std::uint32_t generation = 0;
    bool alive = false;
  };
  // How far a walk got: the deepest node matched whole, then optionally a
  // child whose edge matched only its first partial_blocks blocks.
  struct Walk {
    std::int32_t node = -1;
    std::int32_t partial_child = -1;
    std::int64_t partial_blocks = 0;
    std::int64_t matched_blocks = 0;
  };

  std::uint64_t now() { return clock_ ? clock_() : ++tick_; }

  std::uint64_t key_of(const Token* t) const {
    // FNV-1a over 32-bit tokens, then a final avalanche (splitmix64) so that
    // keys of nearby token ids spread.
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (std::int32_t i = 0; i < key_tokens_; ++i) h = (h ^ std::uint32_t(t[i])) * 0x100000001b3ull;
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    return h ^ (h >> 31);
  }

  bool equal_block(const Token* a, const Token* b) const {
    return std::memcmp(a, b, std::size_t(bs_) * sizeof(Token)) == 0;
  }

  // The child of x whose edge starts with the block at q, or -1.
  std::int32_t find_child(std::int32_t x, const Token* q) const {
    const std::vector<Child>& ch = nodes_[std::size_t(x)].children;
    const std::uint64_t key = key_of(q);
    auto it = std::lower_bound(ch.begin(), ch.end(), key, [](const Child& c, std::uint64_t k) { return c.key < k; });
    for (; it != ch.end() && it->key == key; ++it)
      if (equal_block(nodes_[std::size_t(it->node)].tokens.data(), q)) return it->node;
    return -1;
  }

  // Follows whole blocks of tokens down from root; appends matched block ids
  // to `blocks`. Changes nothing.
  Walk walk(std::int32_t root, const Token* tokens, std::int64_t n_blocks, std::vector<BlockId>* blocks) const {
    Walk w;
    std::int32_t x = root;
    std::int64_t pos = 0;
    while (pos < n_blocks) {
      const Token* q = tokens + pos * bs_;
      const std::int32_t c = find_child(x, q);
      if (c < 0) break;
      const Node& ch = nodes_[std::size_t(c)];
      const std::int64_t edge = std::int64_t(ch.blocks.size());
      const std::int64_t avail = std::min(edge, n_blocks - pos);
      // find_child compared the first block. One memcmp over the rest is the
      // common case (a hit runs to the edge's end); block by block otherwise.
      std::int64_t k = avail;
      if (avail > 1 && std::memcmp(ch.tokens.data() + bs_, q + bs_, std::size_t((avail - 1) * bs_) * sizeof(Token)))
        for (k = 1; k < avail && equal_block(ch.tokens.data() + k * bs_, q + k * bs_);) ++k;
      if (blocks) blocks->insert(blocks->end(), ch.blocks.begin(), ch.blocks.begin() + k);
      pos += k;
      if (k < edge) {
        w.partial_child = c;
        w.partial_blocks = k;
        break;
      }
      x = c;
    }
    w.node = x;
    w.matched_blocks = pos;
    return w;
  }

  // Cuts the edge of x after k blocks: a new node u takes the first k blocks
  // and becomes x's parent. x keeps its id, end and handles; u inherits x's
  // lock count (every lock through x passes u) and time stamp.
  std::int32_t split(std::int32_t x, std::int64_t k) {
    const std::int32_t u = new_node();  // may move nodes_: take references after
    Node& X = nodes_[std::size_t(x)];
    Node& U = nodes_[std::size_t(u)];
    U.ns = X.ns;
    U.parent = X.parent;
    U.lock = X.lock;  // direct_locks stay with x: they name x's end
    U.last_access = X.last_access;
    U.key = X.key;
    U.tokens.assign(X.tokens.begin(), X.tokens.begin() + k * bs_);
    U.blocks.assign(X.blocks.begin(), X.blocks.begin() + k);
    X.tokens.erase(X.tokens.begin(), X.tokens.begin() + k * bs_);
    X.blocks.erase(X.blocks.begin(), X.blocks.begin() + k);
    X.key = key_of(X.tokens.data());
    X.parent = u;
    U.children.push_back({X.key, x});
    for (BlockId b : U.blocks) block_node_[std::size_t(b)] = u;
    // Same key as before: u takes x's place in the parent's sorted list.
    for (Child& c : nodes_[std::size_t(U.parent)].children)
      if (c.node == x) c.node = u;
    return u;
  }

  // Eviction in two passes so that a refused evict() changes nothing: the
  // plan pops unlocked leaves oldest first and records how many tail blocks
  // of each to drop (a leaf emptied by the plan may make its parent a leaf),
  // until n blocks would be freed or no leaf is left; the commit carries it
  // out in the same order. Returns the blocks the plan frees.
  std::int64_t plan_eviction(std::int64_t n) {
    plan_.clear();
    heap_.clear();
    for (std::size_t x = 0; x < nodes_.size(); ++x)
      if (is_evictable_leaf(std::int32_t(x))) heap_.emplace_back(nodes_[x].last_access, std::int32_t(x));
    const auto older = std::greater<std::pair<std::uint64_t, std::int32_t>>();
    std::make_heap(heap_.begin(), heap_.end(), older);
    pending_children_.resize(nodes_.size(), -1);
    std::int64_t freed = 0;
    while (freed < n && !heap_.empty()) {
      std::pop_heap(heap_.begin(), heap_.end(), older);
      const std::int32_t x = heap_.back().second;
      heap_.pop_back();
      const Node& leaf = nodes_[std::size_t(x)];
      std::size_t k = 0;
      for (; k < leaf.blocks.size() && freed < n; ++k)
        freed += alloc_.ref_count(leaf.blocks[leaf.blocks.size() - 1 - k]) == 1;
      plan_.push_back({x, k});
      if (k < leaf.blocks.size()) break;
      const std::int32_t p = leaf.parent;
      const Node& parent = nodes_[std::size_t(p)];
      if (parent.parent < 0) continue;  // a root is never evicted
      std::int32_t& left = pending_children_[std::size_t(p)];
      if (left < 0) {
        left = std::int32_t(parent.children.size());
        touched_.push_back(p);
      }
      if (--left == 0 && parent.lock == 0) {
        heap_.emplace_back(parent.last_access, p);
        std::push_heap(heap_.begin(), heap_.end(), older);
      }
    }
    for (std::int32_t p : touched_) pending_children_[std::size_t(p)] = -1;
    touched_.clear();
    return freed;
  }

  void commit_eviction(std::vector<BlockId>* dropped) {
    for (const Trim& t : plan_) {
      Node& leaf = nodes_[std::size_t(t.node)];
      for (std::size_t i = 0; i < t.blocks; ++i) {
        const BlockId b = leaf.blocks.back();
        alloc_.decref(b);
        leaf.blocks.pop_back();
        block_node_[std::size_t(b)] = -1;
        if (dropped) dropped->push_back(b);
      }
      leaf.tokens.resize(leaf.blocks.size() * std::size_t(bs_));
      cached_blocks_ -= std::int64_t(t.blocks);
      ++leaf.generation;  // shorter now: old handles must not lock it
      if (!leaf.blocks.empty()) continue;
      const std::int32_t parent = leaf.parent;
      remove_child(parent, t.node);
      free_node(t.node);
      Node& p = nodes_[std::size_t(parent)];
      if (p.parent < 0 && p.children.empty()) {
        roots_.erase(p.ns);
        free_node(parent);
      }
    }
    plan_.clear();
  }

  void add_child(std::int32_t parent, std::int32_t x) {
    std::vector<Child>& ch = nodes_[std::size_t(parent)].children;
    const std::uint64_t key = nodes_[std::size_t(x)].key;
    auto it = std::upper_bound(ch.begin(), ch.end(), key, [](std::uint64_t k, const Child& c) { return k < c.key; });
    ch.insert(it, Child{key, x});
  }

  void remove_child(std::int32_t parent, std::int32_t x) {
    std::vector<Child>& ch = nodes_[std::size_t(parent)].children;
    ch.erase(std::find_if(ch.begin(), ch.end(), [x](const Child& c) { return c.node == x; }));
  }

  std::int32_t new_node() {
    std::int32_t x;
    if (!free_nodes_.empty()) {
      x = free_nodes_.back();
      free_nodes_.pop_back();
    } else {
      x = std::int32_t(nodes_.size());
      nodes_.emplace_back();
    }
    Node& n = nodes_[std::size_t(x)];
    n.alive = true;
    n.parent = -1;
    n.lock = 0;
    n.direct_locks = 0;
    n.last_access = 0;
    n.key = 0;
    n.tokens.clear();
    n.blocks.clear();
    n.children.clear();
    return x;
  }

  void free_node(std::int32_t x) {
    Node& n = nodes_[std::size_t(x)];
    n.alive = false;
    ++n.generation;
    std::vector<Token>().swap(n.tokens);
    std::vector<BlockId>().swap(n.blocks);
    std::vector<Child>().swap(n.children);
    free_nodes_.push_back(x);
  }

  std::int32_t make_root(Namespace ns) {
    const std::int32_t r = new_node();
    nodes_[std::size_t(r)].ns = ns;
    roots_.emplace(ns, r);
    return r;
  }

  NodeHandle handle(std::int32_t x) const { return NodeHandle{x, nodes_[std::size_t(x)].generation}; }

  void check_handle(NodeHandle h, const char* what) const {
    FASTINFER_CHECK(h.index < std::int32_t(nodes_.size()) && nodes_[std::size_t(h.index)].alive &&
                        nodes_[std::size_t(h.index)].generation == h.generation &&
                        nodes_[std::size_t(h.index)].parent >= 0,
                    UsageError, "RadixPrefixCache::", what, ": node handle {", h.index, ", ", h.generation,
                    "} is stale (evicted or shortened since it was returned) or unknown");
  }

  void touch(std::int32_t x, std::uint64_t t) {
    for (; x >= 0; x = nodes_[std::size_t(x)].parent) nodes_[std::size_t(x)].last_access = t;
  }

  bool is_evictable_leaf(std::int32_t x) const {
    const Node& n = nodes_[std::size_t(x)];
    return n.alive && n.parent >= 0 && n.children.empty() && n.lock == 0;
  }

  void dump_node(std::ostringstream& out, std::int32_t x, int depth) const {
    const Node& n = nodes_[std::size_t(x)];
    for (const Child& c : n.children) {
      const Node& ch = nodes_[std::size_t(c.node)];
      out << std::string(std::size_t(depth) * 2, ' ') << '[';
      for (std::size_t i = 0; i < ch.tokens.size(); ++i) out << (i ? " " : "") << ch.tokens[i];
      out << "] blocks [";
      for (std::size_t i = 0; i < ch.blocks.size(); ++i) out << (i ? " " : "") << ch.blocks[i];
      out << "] lock " << ch.lock << '/' << ch.direct_locks << " t " << ch.last_access << " gen " << ch.generation << '\n';
      dump_node(out, c.node, depth + 1);
    }
  }

  PagedAllocator& alloc_;
  std::int32_t bs_;
  std::int32_t key_tokens_;
  std::function<std::uint64_t()> clock_;
  std::uint64_t tick_ = 0;
  std::vector<Node> nodes_;
  std::vector<std::int32_t> free_nodes_;
  std::unordered_map<Namespace, std::int32_t> roots_;
  std::vector<std::int32_t> block_node_;  // block id -> node caching it, or -1
  std::int64_t cached_blocks_ = 0;
  std::int64_t locked_blocks_ = 0;
  std::vector<BlockId> scratch_, sorted_;  // insert's dry run, kept for their capacity
  // Eviction scratch, kept for its capacity.
  struct Trim {
    std::int32_t node;
    std::size_t blocks;  // tail blocks to drop; all of them removes the node
  };
  std::vector<Trim> plan_;
  std::vector<std::pair<std::uint64_t, std::int32_t>> heap_;  // (last access, node), oldest on top
  std::vector<std::int32_t> pending_children_;                // per node: children the plan has not emptied, -1 unset
  std::vector<std::int32_t> touched_;
};

}  // namespace fastinfer::prefix
