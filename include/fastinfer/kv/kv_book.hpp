// KVBook: the bookkeeping of a KV cache and nothing else — which blocks each
// sequence holds (a PagedAllocator), what a sliding window has released,
// what a press has compressed, the block tables a batch's kernels read —
// with no bytes. The bytes belong to whoever owns the arena: kv::KVCache
// (host memory, kv_cache.hpp) or a device backend's KV store, which apply
// the copy-on-write copies and write the tokens KVBook tells them about.
//
// Why split: every verb's rules (all or nothing, copy-on-write before a
// write, windows released in whole blocks and never rolled back into,
// compressed sequences never rolled back past their floor) are the same on
// every backend; only moving bytes differs. One copy of the rules, so a
// CUDA store cannot drift from the CPU's.
//
// The caller of extend()/extend_all() must copy, for each BlockCopy it gets,
// the first `tokens` rows of every (layer, K|V, head) from src to dst before
// anything writes into dst.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/kv_layout.hpp"
#include "fastinfer/kv/kv_press.hpp"
#include "fastinfer/memory/paged_allocator.hpp"
#include "fastinfer/kv/paged_kv_view.hpp"

namespace fastinfer::kv {

struct KVCacheConfig {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;  // a multiple of 8
  // Paged / SlidingWindow: blocks in the pool. Contiguous: sequences it holds.
  std::int32_t num_blocks = 0;
  // Used when the layout's BlockSize is 0; a power of two.
  std::int32_t block_size = 16;
  // Contiguous: each sequence's reservation (required). Others: a cap on a
  // sequence's length, 0 for none.
  std::int64_t max_seq_len = 0;
  // Used when the layout's Window is 0.
  std::int32_t window = 0;
  std::int32_t sinks = 0;
  RopeSpec rope;  // how the model rotates keys (SlidingWindow sinks only)
  // RuntimeLayout (and KVBook): the layout. A compile-time layout sets its own here.
  KVLayoutKind layout = KVLayoutKind::Paged;
};

class KVBook {
 public:
  // Refuses a bad config by name (nothing allocated). The contiguous layout's
  // block is max_seq_len rounded up to a power of two; window and sinks are
  // zeroed for the layouts without a window.
  explicit KVBook(const KVCacheConfig& cfg) : cfg_(validated(cfg)), alloc_(cfg_.num_blocks, cfg_.block_size) {}

  static KVCacheConfig validated(KVCacheConfig c) {
    FASTINFER_CHECK(c.n_layers > 0, InvalidArgument, "KVCacheConfig: n_layers must be positive, got ", c.n_layers);
    FASTINFER_CHECK(c.n_kv_heads > 0, InvalidArgument, "KVCacheConfig: n_kv_heads must be positive, got ",
                    c.n_kv_heads);
    FASTINFER_CHECK(c.head_dim > 0 && c.head_dim % 8 == 0, InvalidArgument,
                    "KVCacheConfig: head_dim must be a positive multiple of 8, got ", c.head_dim);
    FASTINFER_CHECK(c.num_blocks > 0, InvalidArgument, "KVCacheConfig: num_blocks must be positive, got ",
                    c.num_blocks);
    FASTINFER_CHECK(c.max_seq_len >= 0, InvalidArgument, "KVCacheConfig: max_seq_len cannot be negative, got ",
                    c.max_seq_len);
    FASTINFER_CHECK(c.layout == KVLayoutKind::Contiguous || c.layout == KVLayoutKind::Paged ||
                        c.layout == KVLayoutKind::Window,
                    InvalidArgument, "KVCacheConfig: unknown layout ", int(c.layout));
    if (c.layout == KVLayoutKind::Contiguous) {
      FASTINFER_CHECK(c.max_seq_len > 0, InvalidArgument,
                      "KVCacheConfig: the contiguous layout needs max_seq_len (the per-sequence reservation)");
      c.block_size = next_power_of_two(c.max_seq_len);
    }
    FASTINFER_CHECK(is_power_of_two(c.block_size), InvalidArgument,
                    "KVCacheConfig: block_size must be a power of two, got ", c.block_size);
    if (c.layout == KVLayoutKind::Window) {
      FASTINFER_CHECK(c.window > 0, InvalidArgument, "KVCacheConfig: the sliding window needs window > 0, got ",
                      c.window);
      FASTINFER_CHECK(c.sinks >= 0, InvalidArgument, "KVCacheConfig: sinks cannot be negative, got ", c.sinks);
    } else {
      c.window = 0;
      c.sinks = 0;
    }
    return c;
  }

  const KVCacheConfig& config() const { return cfg_; }
  std::int32_t block_size() const { return cfg_.block_size; }
  KVLayoutKind layout() const { return cfg_.layout; }
  std::string_view layout_name() const { return kv_layout_name(cfg_.layout); }

  // The books, for a prefix cache (incref/decref of blocks it holds) and for
  // the scheduler's questions. Grow and shrink sequences through the cache,
  // not here, or copy-on-write copies are lost.
  PagedAllocator& allocator() { return alloc_; }
  const PagedAllocator& allocator() const { return alloc_; }
  AllocatorStats stats() const { return alloc_.stats(); }

  bool contains(SeqId seq) const { return alloc_.contains(seq); }
  std::int64_t length(SeqId seq) const { return alloc_.length(seq); }

  // ---- sequence verbs --------------------------------------------------------

  // Contiguous reserves the whole maximum length here and answers false when
  // no block is left; the paged layouts always succeed.
  bool add_sequence(SeqId seq) {
    alloc_.add_sequence(seq);
    if (cfg_.layout == KVLayoutKind::Contiguous) {
      if (!alloc_.reserve(seq, 1)) {
        alloc_.free_sequence(seq);
        return false;
      }
    }
    return true;
  }

  // A new sequence starting with `length` tokens in `blocks` held by someone
  // else (a prefix-cache hit); the blocks are shared, never copied.
  void adopt(SeqId seq, const std::vector<BlockId>& blocks, std::int64_t length) {
    check_length(seq, length);
    alloc_.adopt(seq, blocks, length);
  }

  void fork(SeqId src, SeqId dst) {
    alloc_.fork(src, dst);
    auto it = released_to_.find(src);
    if (it != released_to_.end()) released_to_[dst] = it->second;
    auto c = compressed_.find(src);
    if (c != compressed_.end()) compressed_[dst] = c->second;
  }

  void free_sequence(SeqId seq) {
    alloc_.free_sequence(seq);
    released_to_.erase(seq);
    compressed_.erase(seq);
  }

  // Room for n more tokens in every layer, counted in the length at once;
  // all or nothing (false, nothing changed, when the pool is short). A
  // sliding window first gives back the blocks no future query can see.
  // `copies` receives the copy-on-write copies the byte owner must apply.
  bool extend(SeqId seq, std::int64_t n, std::vector<BlockCopy>& copies) {
    FASTINFER_CHECK(n >= 0, InvalidArgument, "KVCache::extend: cannot add ", n, " tokens");
    check_length(seq, alloc_.length(seq) + n);
    evict(seq);
    copies.clear();
    if (!alloc_.reserve(seq, n, &copies)) return false;
    alloc_.append(seq, n);
    return true;
  }

  // extend() for a batch, all or nothing over the batch.
  bool extend_all(const std::vector<ReserveRequest>& reqs, std::vector<BlockCopy>& copies) {
    for (const auto& r : reqs) {
      FASTINFER_CHECK(r.tokens >= 0, InvalidArgument, "KVCache::extend_all: cannot add ", r.tokens, " tokens");
      check_length(r.seq, alloc_.length(r.seq) + r.tokens);
    }
    for (const auto& r : reqs) evict(r.seq);
    copies.clear();
    if (!alloc_.reserve_all(reqs, &copies)) return false;
    for (const auto& r : reqs) alloc_.append(r.seq, r.tokens);
    return true;
  }

  // Rollback to the first `new_length` tokens.
  void truncate(SeqId seq, std::int64_t new_length) {
    auto it = released_to_.find(seq);
    if (it != released_to_.end()) {
      // Queries from new_length on must still find their whole window.
      const std::int64_t floor = it->second * cfg_.block_size + cfg_.window - 1;
      FASTINFER_CHECK(new_length >= floor, UsageError, "KVCache::truncate: sequence ", seq,
                      " already released the window of position ", new_length, " (keep at least ", floor,
                      " tokens)");
    }
    auto c = compressed_.find(seq);
    FASTINFER_CHECK(c == compressed_.end() || new_length >= c->second.floor, UsageError, "KVCache::truncate: sequence ",
                    seq, " was compressed to ", c == compressed_.end() ? 0 : c->second.floor,
                    " slots; cannot roll back to ", new_length, " (the original tokens are gone)");
    alloc_.truncate(seq, new_length);
  }

  // The block holding position `pos` of `seq` for a write of positions
  // [pos, pos + n): checks first that all of them exist, were not released
  // by the window and lie in blocks no other owner reads (so a failed write
  // changes nothing).
  void check_writable(SeqId seq, std::int64_t pos, std::int64_t n) const {
    const std::int64_t len = alloc_.length(seq);
    FASTINFER_CHECK(pos >= 0 && n >= 0 && pos + n <= len, InvalidArgument, "KVCache::write: positions [", pos,
                    ", ", pos + n, ") outside sequence ", seq, " of length ", len);
    const auto& table = alloc_.block_table(seq);
    for (std::int64_t p = pos; p < pos + n; ++p) {
      const BlockId b = table[std::size_t(p / cfg_.block_size)];
      FASTINFER_CHECK(b != kNoBlock, UsageError, "KVCache::write: position ", p, " of sequence ", seq,
                      " was released by the sliding window");
      FASTINFER_CHECK(alloc_.ref_count(b) == 1, UsageError, "KVCache::write: position ", p, " of sequence ", seq,
                      " lies in block ", b, " shared with another owner");
    }
  }

  // The block of a stored position (checked: inside the sequence, not released).
  BlockId block_of(SeqId seq, std::int64_t pos) const {
    const std::int64_t len = alloc_.length(seq);
    FASTINFER_CHECK(pos >= 0 && pos < len, InvalidArgument, "KVCache::read: position ", pos, " outside sequence ",
                    seq, " of length ", len);
    const BlockId b = alloc_.block_table(seq)[std::size_t(pos / cfg_.block_size)];
    FASTINFER_CHECK(b != kNoBlock, UsageError, "KVCache::read: position ", pos, " was released");
    return b;
  }

  BlockId checked_block(BlockId b) const {
    FASTINFER_CHECK(b >= 0 && b < cfg_.num_blocks, InvalidArgument, "KVCache: block ", b, " outside [0, ",
                    cfg_.num_blocks, ")");
    return b;
  }

  void check_layer(int layer) const {
    FASTINFER_CHECK(layer >= 0 && layer < cfg_.n_layers, InvalidArgument, "KVCache: layer ", layer,
                    " outside [0, ", cfg_.n_layers, ")");
  }

  // ---- compression (kv_press.hpp) --------------------------------------------

  // The next token's RoPE position minus length(seq): the tokens presses removed.
  std::int64_t position_offset(SeqId seq) const {
    auto c = compressed_.find(seq);
    return c == compressed_.end() ? 0 : c->second.offset;
  }
  // Slots of `layer` below this are dead (a per-layer budget left them
  // unused); attention must start here.
  std::int64_t first_live(SeqId seq, int layer) const {
    auto c = compressed_.find(seq);
    return c == compressed_.end() || c->second.first_live.empty() ? 0 : c->second.first_live[std::size_t(layer)];
  }
  bool has_dead_slots(SeqId seq) const {
    auto c = compressed_.find(seq);
    return c != compressed_.end() && !c->second.first_live.empty();
  }

  // A press's plan for `seq`, refused (by name) on a window layout (it
  // compresses itself), a plan for another shape, a sequence already holding
  // dead slots, or a block shared with another owner (a prefix cache or a
  // fork: compaction would rewrite tokens they read).
  void check_plan(SeqId seq, const CompressionPlan& plan) const {
    FASTINFER_CHECK(cfg_.layout != KVLayoutKind::Window, UsageError, "KVCache::compact: the window layout ",
                    "already compresses (StreamingLLM); presses need the paged or contiguous layout");
    const std::int64_t len = alloc_.length(seq);
    FASTINFER_CHECK(plan.original_length == len && plan.n_layers == cfg_.n_layers &&
                        plan.n_kv_heads == cfg_.n_kv_heads && plan.length >= 1 && plan.length <= len &&
                        plan.first_live.size() == std::size_t(cfg_.n_layers) &&
                        plan.source.size() == std::size_t(plan.length * cfg_.n_layers * cfg_.n_kv_heads),
                    InvalidArgument, "KVCache::compact: the plan is for ", plan.original_length, " tokens, ",
                    plan.n_layers, " layers, ", plan.n_kv_heads, " KV heads; sequence ", seq, " holds ", len,
                    " tokens of ", cfg_.n_layers, " layers, ", cfg_.n_kv_heads, " KV heads");
    FASTINFER_CHECK(!has_dead_slots(seq), UsageError, "KVCache::compact: sequence ", seq,
                    " already holds dead slots from a per-layer budget; it cannot be compressed again");
    for (int l = 0; l < cfg_.n_layers; ++l)
      for (int h = 0; h < cfg_.n_kv_heads; ++h) {
        const std::int64_t f = plan.first_live[std::size_t(l)];
        FASTINFER_CHECK(f >= 0 && f < plan.length, InvalidArgument, "KVCache::compact: layer ", l,
                        " keeps no token (first live slot ", f, " of ", plan.length, ")");
        for (std::int64_t s = 0; s < plan.length; ++s) {
          const std::int64_t p = plan.src(l, h, s), prev = s > f ? plan.src(l, h, s - 1) : -1;
          FASTINFER_CHECK(s < f ? p == -1 : (p > prev && p < len), InvalidArgument, "KVCache::compact: slot ", s,
                          " of layer ", l, " head ", h, " takes token ", p,
                          " (live slots take ascending tokens of the sequence, dead ones -1)");
        }
      }
    for (BlockId b : alloc_.block_table(seq))
      FASTINFER_CHECK(b == kNoBlock || alloc_.ref_count(b) == 1, UsageError, "KVCache::compact: sequence ", seq,
                      " shares block ", b, " with another owner (prefix cache or fork); compressing would rewrite ",
                      "tokens they read: free the sharing first or compress before sharing");
  }

  // After the byte owner moved the plan's tokens: the RoPE offset, the
  // rollback floor, the dead slots, and the blocks past plan.length back to
  // the pool.
  void commit_plan(SeqId seq, const CompressionPlan& plan) {
    Compressed& c = compressed_[seq];
    c.offset += plan.original_length - plan.length;
    c.floor = plan.length;
    const bool dead = std::any_of(plan.first_live.begin(), plan.first_live.end(), [](std::int64_t f) { return f > 0; });
    if (dead) c.first_live = plan.first_live;
    alloc_.truncate(seq, plan.length);
  }

  // ---- tables for kernels ----------------------------------------------------

  // Index arrays of a batch, in the order of `seqs`; valid until the next
  // verb on any of those sequences. Shared by every layer's view.
  void build_tables(const std::vector<SeqId>& seqs, PagedKVTables& t) const {
    t.indptr.assign(1, 0);
    t.block_indices.clear();
    t.last_block_len.clear();
    for (SeqId s : seqs) {
      const std::int64_t len = alloc_.length(s);
      const std::int64_t nb = alloc_.blocks_for(len);
      const auto& table = alloc_.block_table(s);
      t.block_indices.insert(t.block_indices.end(), table.begin(), table.begin() + nb);
      t.indptr.push_back(std::int32_t(t.block_indices.size()));
      t.last_block_len.push_back(std::int32_t(nb == 0 ? 0 : len - (nb - 1) * cfg_.block_size));
    }
  }
  PagedKVTables tables(const std::vector<SeqId>& seqs) const {
    PagedKVTables t;
    build_tables(seqs, t);
    return t;
  }

 private:
  void check_length(SeqId seq, std::int64_t len) const {
    FASTINFER_CHECK(cfg_.max_seq_len == 0 || len <= cfg_.max_seq_len, UsageError, "KVCache: sequence ", seq,
                    " would hold ", len, " tokens, beyond max_seq_len ", cfg_.max_seq_len);
  }

  // Sliding window: give back the blocks that lie wholly between the sinks
  // and the window of the next query (position length()).
  void evict(SeqId seq) {
    if (cfg_.window == 0) return;
    const std::int64_t bs = cfg_.block_size;
    const std::int64_t keep_from = alloc_.length(seq) + 1 - cfg_.window;
    const std::int64_t first_free = (cfg_.sinks + bs - 1) / bs;
    auto it = released_to_.find(seq);
    const std::int64_t first = std::max(it == released_to_.end() ? 0 : it->second, first_free);
    const std::int64_t last = keep_from > 0 ? keep_from / bs : 0;
    if (last > first) {
      alloc_.release_blocks(seq, first, last);
      released_to_[seq] = last;
    }
  }

  KVCacheConfig cfg_;
  PagedAllocator alloc_;
  // Sliding window: blocks below this table index (past the sinks) are released.
  std::unordered_map<SeqId, std::int64_t> released_to_;
  // Compressed sequences: RoPE offset, the shortest length rollback may
  // reach, and per-layer dead slots (empty: none).
  struct Compressed {
    std::int64_t offset = 0, floor = 0;
    std::vector<std::int64_t> first_live;
  };
  std::unordered_map<SeqId, Compressed> compressed_;
};

}  // namespace fastinfer::kv
