// KVCache<Layout, Quant>: the storage of every layer's keys and values for a
// set of sequences, on top of a PagedAllocator that keeps the books.
//
// One step of a model, for each sequence in the batch:
//   cache.extend(seq, n)                      room for n new tokens (all layers),
//                                             all or nothing; false: pool short
//   per layer: cache.append(layer, seq, k, v, n)   K/V of those n tokens
//              attention over cache.view(tables, layer)
// and afterwards cache.truncate(seq, len) to drop rejected draft tokens,
// cache.fork(seq, child) to share a prefix, cache.free_sequence(seq).
// cache.compact(seq, plan) applies a press (kv_press.hpp): the kept tokens
// move down to the first slots, the blocks past them go back to the pool,
// and position_offset(seq) says how far the next token's RoPE position lies
// past length(seq) (keys are stored rotated at their original positions).
//
// The byte arena is laid out block-major: block, layer, K|V, kv_head, token,
// head_dim (see paged_kv_view.hpp), with the f32 quantization parameters in a
// parallel arena of the same shape. Copy-on-write copies happen inside
// extend(), so a caller never writes into a block another sequence reads.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <memory_resource>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/kv_layout.hpp"
#include "fastinfer/kv/kv_press.hpp"
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/kv/paged_kv_view.hpp"
#include "fastinfer/memory/paged_allocator.hpp"

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
  // RuntimeLayout: the layout. A compile-time layout sets its own here.
  KVLayoutKind layout = KVLayoutKind::Paged;
};

template <typename Layout = Paged<16>, typename Quant = F32>
class KVCache {
  using LT = LayoutTraits<Layout>;
  using QT = QuantTraits<Quant>;

 public:
  using LayoutType = Layout;
  using QuantType = Quant;

  // `arena`: where the K/V bytes live (a backend's memory; must outlive the
  // cache); the bookkeeping stays on the host either way.
  explicit KVCache(const KVCacheConfig& cfg, std::pmr::memory_resource* arena = std::pmr::new_delete_resource())
      : cfg_(validated(cfg)), alloc_(cfg_.num_blocks, cfg_.block_size) {
    window_ = cfg_.window;
    sinks_ = cfg_.sinks;
    row_bytes_ = std::int64_t(QT::code_bytes(cfg_.head_dim));
    params_per_row_ = QT::params_per_row(cfg_.head_dim);
    head_stride_ = std::int64_t(cfg_.block_size) * row_bytes_;
    layer_stride_ = 2 * std::int64_t(cfg_.n_kv_heads) * head_stride_;
    block_stride_ = std::int64_t(cfg_.n_layers) * layer_stride_;
    param_head_stride_ = std::int64_t(cfg_.block_size) * params_per_row_;
    param_layer_stride_ = 2 * std::int64_t(cfg_.n_kv_heads) * param_head_stride_;
    param_block_stride_ = std::int64_t(cfg_.n_layers) * param_layer_stride_;
    // 64-byte aligned arenas; zeroed so that never-written rows decode to 0.
    codes_ = Arena(arena, std::size_t(block_stride_ * cfg_.num_blocks));
    codes_base_ = static_cast<std::uint8_t*>(codes_.data());
    params_ = Arena(arena, sizeof(float) * std::size_t(param_block_stride_ * cfg_.num_blocks));
    params_base_ = static_cast<float*>(params_.data());
  }

  const KVCacheConfig& config() const { return cfg_; }
  std::int32_t block_size() const { return cfg_.block_size; }
  KVLayoutKind layout() const { return cfg_.layout; }
  std::string_view layout_name() const { return kv_layout_name(cfg_.layout); }
  static constexpr std::string_view quant_name() { return QT::kName; }

  // K and V of one token in every layer, parameters included.
  std::size_t bytes_per_token() const {
    return 2 * std::size_t(cfg_.n_layers) * std::size_t(cfg_.n_kv_heads) * bytes_per_token_head<Quant>(cfg_.head_dim);
  }
  std::size_t bytes_per_block() const { return bytes_per_token() * std::size_t(cfg_.block_size); }
  std::size_t memory_bytes() const { return bytes_per_block() * std::size_t(cfg_.num_blocks); }

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
    if (one_block_per_sequence()) {
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
  bool extend(SeqId seq, std::int64_t n) {
    FASTINFER_CHECK(n >= 0, InvalidArgument, "KVCache::extend: cannot add ", n, " tokens");
    check_length(seq, alloc_.length(seq) + n);
    evict(seq);
    std::vector<BlockCopy> copies;
    if (!alloc_.reserve(seq, n, &copies)) return false;
    apply(copies);
    alloc_.append(seq, n);
    return true;
  }

  // extend() for a batch, all or nothing over the batch.
  bool extend_all(const std::vector<ReserveRequest>& reqs) {
    for (const auto& r : reqs) {
      FASTINFER_CHECK(r.tokens >= 0, InvalidArgument, "KVCache::extend_all: cannot add ", r.tokens, " tokens");
      check_length(r.seq, alloc_.length(r.seq) + r.tokens);
    }
    for (const auto& r : reqs) evict(r.seq);
    std::vector<BlockCopy> copies;
    if (!alloc_.reserve_all(reqs, &copies)) return false;
    apply(copies);
    for (const auto& r : reqs) alloc_.append(r.seq, r.tokens);
    return true;
  }

  // Rollback to the first `new_length` tokens.
  void truncate(SeqId seq, std::int64_t new_length) {
    auto it = released_to_.find(seq);
    if (it != released_to_.end()) {
      // Queries from new_length on must still find their whole window.
      const std::int64_t floor = it->second * cfg_.block_size + window_ - 1;
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

  // Applies a press's plan: slot s of layer l, head h receives the token of
  // slot plan.src(l, h, s) (codes and parameters copied, never re-encoded),
  // dead slots are zeroed, and the blocks past plan.length go back to the
  // pool. Refused (nothing changed) on a window layout (it compresses
  // itself), a plan for another shape, a sequence already holding dead
  // slots, or a block shared with another owner (a prefix cache or a fork:
  // compaction would rewrite tokens they read).
  void compact(SeqId seq, const CompressionPlan& plan) {
    check_plan(seq, plan);
    const std::int64_t n = plan.length;
    std::vector<std::uint8_t> codes(std::size_t(n * row_bytes_));
    std::vector<float> params(std::size_t(n * params_per_row_));
    const auto& table = alloc_.block_table(seq);
    auto at = [&](std::int64_t p) { return table[std::size_t(p / cfg_.block_size)]; };
    for (int l = 0; l < cfg_.n_layers; ++l)
      for (int kv = 0; kv < 2; ++kv)
        for (int h = 0; h < cfg_.n_kv_heads; ++h) {
          // Gather then scatter: a slot may receive a token from above or below it.
          for (std::int64_t s = 0; s < n; ++s) {
            const std::int64_t p = plan.src(l, h, s);
            std::uint8_t* c = codes.data() + s * row_bytes_;
            float* q = params.data() + s * params_per_row_;
            if (p < 0) {
              std::memset(c, 0, std::size_t(row_bytes_));
              std::fill(q, q + params_per_row_, 0.0f);
              continue;
            }
            std::memcpy(c, code_ptr(at(p), l, kv, h, p % cfg_.block_size), std::size_t(row_bytes_));
            std::copy_n(param_ptr(at(p), l, kv, h, p % cfg_.block_size), params_per_row_, q);
          }
          for (std::int64_t s = 0; s < n; ++s) {
            std::memcpy(code_ptr(at(s), l, kv, h, s % cfg_.block_size), codes.data() + s * row_bytes_,
                        std::size_t(row_bytes_));
            std::copy_n(params.data() + s * params_per_row_, params_per_row_,
                        param_ptr(at(s), l, kv, h, s % cfg_.block_size));
          }
        }
    Compressed& c = compressed_[seq];
    c.offset += plan.original_length - plan.length;
    c.floor = plan.length;
    const bool dead = std::any_of(plan.first_live.begin(), plan.first_live.end(), [](std::int64_t f) { return f > 0; });
    if (dead) c.first_live = plan.first_live;
    alloc_.truncate(seq, plan.length);
  }

  // Writes K and V ([n][n_kv_heads][head_dim] f32 each) of the sequence's
  // last n tokens in `layer`.
  void append(int layer, SeqId seq, const float* k, const float* v, std::int64_t n) {
    const std::int64_t len = alloc_.length(seq);
    FASTINFER_CHECK(n >= 0 && n <= len, InvalidArgument, "KVCache::append: sequence ", seq, " has ", len,
                    " tokens, cannot write the last ", n, " (extend() first)");
    write(layer, seq, len - n, k, v, n);
  }

  // Writes K and V of positions [pos, pos + n) in `layer`.
  void write(int layer, SeqId seq, std::int64_t pos, const float* k, const float* v, std::int64_t n) {
    FASTINFER_CHECK(layer >= 0 && layer < cfg_.n_layers, InvalidArgument, "KVCache: layer ", layer,
                    " outside [0, ", cfg_.n_layers, ")");
    const std::int64_t len = alloc_.length(seq);
    FASTINFER_CHECK(pos >= 0 && n >= 0 && pos + n <= len, InvalidArgument, "KVCache::write: positions [", pos,
                    ", ", pos + n, ") outside sequence ", seq, " of length ", len);
    const auto& table = alloc_.block_table(seq);
    // Check everything first: a failed write changes nothing.
    for (std::int64_t p = pos; p < pos + n; ++p) {
      const BlockId b = table[std::size_t(p / cfg_.block_size)];
      FASTINFER_CHECK(b != kNoBlock, UsageError, "KVCache::write: position ", p, " of sequence ", seq,
                      " was released by the sliding window");
      FASTINFER_CHECK(alloc_.ref_count(b) == 1, UsageError, "KVCache::write: position ", p, " of sequence ", seq,
                      " lies in block ", b, " shared with another owner");
    }
    const int d = cfg_.head_dim;
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t p = pos + i;
      const BlockId b = table[std::size_t(p / cfg_.block_size)];
      const std::int64_t t = p % cfg_.block_size;
      for (int h = 0; h < cfg_.n_kv_heads; ++h) {
        const std::size_t src = std::size_t((i * cfg_.n_kv_heads + h) * d);
        QT::encode(k + src, d, code_ptr(b, layer, 0, h, t), param_ptr(b, layer, 0, h, t));
        QT::encode(v + src, d, code_ptr(b, layer, 1, h, t), param_ptr(b, layer, 1, h, t));
      }
    }
  }

  // Decodes K and V ([n_kv_heads][head_dim] each) of one stored token.
  void read(int layer, SeqId seq, std::int64_t pos, float* k, float* v) const {
    FASTINFER_CHECK(layer >= 0 && layer < cfg_.n_layers, InvalidArgument, "KVCache: layer ", layer,
                    " outside [0, ", cfg_.n_layers, ")");
    const std::int64_t len = alloc_.length(seq);
    FASTINFER_CHECK(pos >= 0 && pos < len, InvalidArgument, "KVCache::read: position ", pos,
                    " outside sequence ", seq, " of length ", len);
    const BlockId b = alloc_.block_table(seq)[std::size_t(pos / cfg_.block_size)];
    FASTINFER_CHECK(b != kNoBlock, UsageError, "KVCache::read: position ", pos, " was released");
    const std::int64_t t = pos % cfg_.block_size;
    const int d = cfg_.head_dim;
    for (int h = 0; h < cfg_.n_kv_heads; ++h) {
      decode_row<Quant>(code_ptr(b, layer, 0, h, t), param_ptr(b, layer, 0, h, t), d, k + h * d);
      decode_row<Quant>(code_ptr(b, layer, 1, h, t), param_ptr(b, layer, 1, h, t), d, v + h * d);
    }
  }

  // ---- views for kernels -----------------------------------------------------

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

  PagedKVView<Quant> view(const PagedKVTables& t, int layer) const {
    FASTINFER_CHECK(layer >= 0 && layer < cfg_.n_layers, InvalidArgument, "KVCache: layer ", layer,
                    " outside [0, ", cfg_.n_layers, ")");
    PagedKVView<Quant> v;
    v.batch = t.batch();
    v.n_kv_heads = cfg_.n_kv_heads;
    v.head_dim = cfg_.head_dim;
    v.block_size = cfg_.block_size;
    v.indptr = t.indptr.data();
    v.block_indices = t.block_indices.data();
    v.last_block_len = t.last_block_len.data();
    v.k_codes = codes_base_ + layer * layer_stride_;
    v.v_codes = v.k_codes + cfg_.n_kv_heads * head_stride_;
    v.block_stride = block_stride_;
    v.head_stride = head_stride_;
    v.row_bytes = row_bytes_;
    v.k_params = params_base_ + layer * param_layer_stride_;
    v.v_params = v.k_params + cfg_.n_kv_heads * param_head_stride_;
    v.param_block_stride = param_block_stride_;
    v.param_head_stride = param_head_stride_;
    v.params_per_row = params_per_row_;
    v.window = window_;
    v.sinks = sinks_;
    v.rope = cfg_.rope;
    return v;
  }

  // One block's bytes, every layer, K and V, are one run of block_bytes()
  // codes and one of block_param_count() floats (the arena is block-major):
  // what an engine copies to swap a block to host memory and back.
  std::int64_t block_bytes() const { return block_stride_; }
  std::int64_t block_param_count() const { return param_block_stride_; }
  std::uint8_t* block_codes(BlockId b) { return codes_base_ + std::int64_t(checked_block(b)) * block_stride_; }
  float* block_params(BlockId b) { return params_base_ + std::int64_t(checked_block(b)) * param_block_stride_; }

 private:
  BlockId checked_block(BlockId b) const {
    FASTINFER_CHECK(b >= 0 && b < cfg_.num_blocks, InvalidArgument, "KVCache: block ", b, " outside [0, ",
                    cfg_.num_blocks, ")");
    return b;
  }

  bool one_block_per_sequence() const { return cfg_.layout == KVLayoutKind::Contiguous; }
  bool sliding() const { return cfg_.layout == KVLayoutKind::Window; }

  KVCacheConfig validated(KVCacheConfig c) {
    FASTINFER_CHECK(c.n_layers > 0, InvalidArgument, "KVCacheConfig: n_layers must be positive, got ", c.n_layers);
    FASTINFER_CHECK(c.n_kv_heads > 0, InvalidArgument, "KVCacheConfig: n_kv_heads must be positive, got ",
                    c.n_kv_heads);
    FASTINFER_CHECK(c.head_dim > 0 && c.head_dim % 8 == 0, InvalidArgument,
                    "KVCacheConfig: head_dim must be a positive multiple of 8, got ", c.head_dim);
    FASTINFER_CHECK(c.num_blocks > 0, InvalidArgument, "KVCacheConfig: num_blocks must be positive, got ",
                    c.num_blocks);
    FASTINFER_CHECK(c.max_seq_len >= 0, InvalidArgument, "KVCacheConfig: max_seq_len cannot be negative, got ",
                    c.max_seq_len);
    if constexpr (!LT::kRuntime) c.layout = LT::kKind;
    FASTINFER_CHECK(c.layout == KVLayoutKind::Contiguous || c.layout == KVLayoutKind::Paged ||
                        c.layout == KVLayoutKind::Window,
                    InvalidArgument, "KVCacheConfig: unknown layout ", int(c.layout));
    if (c.layout == KVLayoutKind::Contiguous) {
      FASTINFER_CHECK(c.max_seq_len > 0, InvalidArgument,
                      "KVCacheConfig: the contiguous layout needs max_seq_len (the per-sequence reservation)");
      c.block_size = next_power_of_two(c.max_seq_len);
    } else if constexpr (LT::kBlockSize != 0) {
      c.block_size = LT::kBlockSize;
    }
    FASTINFER_CHECK(is_power_of_two(c.block_size), InvalidArgument,
                    "KVCacheConfig: block_size must be a power of two, got ", c.block_size);
    if (c.layout == KVLayoutKind::Window) {
      if constexpr (LT::kWindow != 0) {
        c.window = LT::kWindow;
        c.sinks = LT::kSinks;
      }
      FASTINFER_CHECK(c.window > 0, InvalidArgument, "KVCacheConfig: the sliding window needs window > 0, got ",
                      c.window);
      FASTINFER_CHECK(c.sinks >= 0, InvalidArgument, "KVCacheConfig: sinks cannot be negative, got ", c.sinks);
    } else {
      c.window = 0;
      c.sinks = 0;
    }
    return c;
  }

  void check_length(SeqId seq, std::int64_t len) const {
    FASTINFER_CHECK(cfg_.max_seq_len == 0 || len <= cfg_.max_seq_len, UsageError, "KVCache: sequence ", seq,
                    " would hold ", len, " tokens, beyond max_seq_len ", cfg_.max_seq_len);
  }

  std::uint8_t* code_ptr(BlockId b, int layer, int kv, int head, std::int64_t t) const {
    return codes_base_ + b * block_stride_ + layer * layer_stride_ +
           (std::int64_t(kv) * cfg_.n_kv_heads + head) * head_stride_ + t * row_bytes_;
  }
  float* param_ptr(BlockId b, int layer, int kv, int head, std::int64_t t) const {
    return const_cast<float*>(params_base_) + b * param_block_stride_ + layer * param_layer_stride_ +
           (std::int64_t(kv) * cfg_.n_kv_heads + head) * param_head_stride_ + t * params_per_row_;
  }

  void check_plan(SeqId seq, const CompressionPlan& plan) const {
    FASTINFER_CHECK(!sliding(), UsageError, "KVCache::compact: the window layout ",
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

  // Copy-on-write: the first c.tokens tokens of every layer, K and V.
  void apply(const std::vector<BlockCopy>& copies) {
    for (const auto& c : copies)
      for (int l = 0; l < cfg_.n_layers; ++l)
        for (int kv = 0; kv < 2; ++kv)
          for (int h = 0; h < cfg_.n_kv_heads; ++h) {
            std::memcpy(code_ptr(c.dst, l, kv, h, 0), code_ptr(c.src, l, kv, h, 0),
                        std::size_t(c.tokens * row_bytes_));
            if (params_per_row_ > 0)
              std::memcpy(param_ptr(c.dst, l, kv, h, 0), param_ptr(c.src, l, kv, h, 0),
                          sizeof(float) * std::size_t(c.tokens * params_per_row_));
          }
  }

  // Sliding window: give back the blocks that lie wholly between the sinks
  // and the window of the next query (position length()).
  void evict(SeqId seq) {
    if (window_ == 0) return;
    const std::int64_t bs = cfg_.block_size;
    const std::int64_t keep_from = alloc_.length(seq) + 1 - window_;
    const std::int64_t first_free = (sinks_ + bs - 1) / bs;
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
  std::int32_t window_ = 0, sinks_ = 0;
  std::int64_t row_bytes_ = 0, head_stride_ = 0, layer_stride_ = 0, block_stride_ = 0;
  std::int32_t params_per_row_ = 0;
  std::int64_t param_head_stride_ = 0, param_layer_stride_ = 0, param_block_stride_ = 0;
  // One zeroed, 64-byte aligned run of bytes from a memory resource.
  class Arena {
   public:
    Arena() = default;
    Arena(std::pmr::memory_resource* r, std::size_t bytes) : r_(r), bytes_(bytes) {
      if (bytes_ == 0) return;
      p_ = r_->allocate(bytes_, 64);
      std::memset(p_, 0, bytes_);
    }
    Arena(Arena&& o) noexcept { *this = std::move(o); }
    Arena& operator=(Arena&& o) noexcept {
      if (this != &o) {
        release();
        r_ = o.r_, p_ = std::exchange(o.p_, nullptr), bytes_ = std::exchange(o.bytes_, 0);
      }
      return *this;
    }
    ~Arena() { release(); }
    void* data() const { return p_; }

   private:
    void release() {
      if (p_) r_->deallocate(p_, bytes_, 64);
      p_ = nullptr;
    }
    std::pmr::memory_resource* r_ = nullptr;
    void* p_ = nullptr;
    std::size_t bytes_ = 0;
  };
  Arena codes_, params_;
  std::uint8_t* codes_base_ = nullptr;
  float* params_base_ = nullptr;
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
