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
//
// The rules of every sequence verb are KVBook's (kv_book.hpp, shared with
// device backends' stores); KVCache owns the bytes: it applies the copies
// KVBook asks for, encodes and decodes tokens, and hands out views.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <memory_resource>
#include <string_view>
#include <utility>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/kv_book.hpp"
#include "fastinfer/kv/kv_layout.hpp"
#include "fastinfer/kv/kv_press.hpp"
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/kv/paged_kv_view.hpp"
#include "fastinfer/memory/paged_allocator.hpp"

namespace fastinfer::kv {

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
      : book_(with_layout(cfg)), cfg_(book_.config()) {
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
  std::string_view layout_name() const { return book_.layout_name(); }
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
  PagedAllocator& allocator() { return book_.allocator(); }
  const PagedAllocator& allocator() const { return book_.allocator(); }
  AllocatorStats stats() const { return book_.stats(); }
  // Every rule of the sequence verbs lives here (kv_book.hpp); KVCache moves the bytes.
  const KVBook& book() const { return book_; }

  bool contains(SeqId seq) const { return book_.contains(seq); }
  std::int64_t length(SeqId seq) const { return book_.length(seq); }

  // ---- sequence verbs (KVBook's, with the copy-on-write copies applied) -----

  bool add_sequence(SeqId seq) { return book_.add_sequence(seq); }
  void adopt(SeqId seq, const std::vector<BlockId>& blocks, std::int64_t length) { book_.adopt(seq, blocks, length); }
  void fork(SeqId src, SeqId dst) { book_.fork(src, dst); }
  void free_sequence(SeqId seq) { book_.free_sequence(seq); }

  // Room for n more tokens in every layer, counted in the length at once;
  // all or nothing (false, nothing changed, when the pool is short). A
  // sliding window first gives back the blocks no future query can see.
  bool extend(SeqId seq, std::int64_t n) {
    if (!book_.extend(seq, n, copies_)) return false;
    apply(copies_);
    return true;
  }
  // extend() for a batch, all or nothing over the batch.
  bool extend_all(const std::vector<ReserveRequest>& reqs) {
    if (!book_.extend_all(reqs, copies_)) return false;
    apply(copies_);
    return true;
  }
  // Rollback to the first `new_length` tokens.
  void truncate(SeqId seq, std::int64_t new_length) { book_.truncate(seq, new_length); }

  // ---- compression (kv_press.hpp) --------------------------------------------

  std::int64_t position_offset(SeqId seq) const { return book_.position_offset(seq); }
  std::int64_t first_live(SeqId seq, int layer) const { return book_.first_live(seq, layer); }
  bool has_dead_slots(SeqId seq) const { return book_.has_dead_slots(seq); }

  // Applies a press's plan: slot s of layer l, head h receives the token of
  // slot plan.src(l, h, s) (codes and parameters copied, never re-encoded),
  // dead slots are zeroed, and the blocks past plan.length go back to the
  // pool. Refused (nothing changed) on a window layout (it compresses
  // itself), a plan for another shape, a sequence already holding dead
  // slots, or a block shared with another owner (a prefix cache or a fork:
  // compaction would rewrite tokens they read).
  void compact(SeqId seq, const CompressionPlan& plan) {
    book_.check_plan(seq, plan);
    const std::int64_t n = plan.length;
    std::vector<std::uint8_t> codes(std::size_t(n * row_bytes_));
    std::vector<float> params(std::size_t(n * params_per_row_));
    const auto& table = book_.allocator().block_table(seq);
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
    book_.commit_plan(seq, plan);
  }

  // Writes K and V ([n][n_kv_heads][head_dim] f32 each) of the sequence's
  // last n tokens in `layer`.
  void append(int layer, SeqId seq, const float* k, const float* v, std::int64_t n) {
    const std::int64_t len = book_.length(seq);
    FASTINFER_CHECK(n >= 0 && n <= len, InvalidArgument, "KVCache::append: sequence ", seq, " has ", len,
                    " tokens, cannot write the last ", n, " (extend() first)");
    write(layer, seq, len - n, k, v, n);
  }

  // Writes K and V of positions [pos, pos + n) in `layer`.
  void write(int layer, SeqId seq, std::int64_t pos, const float* k, const float* v, std::int64_t n) {
    book_.check_layer(layer);
    book_.check_writable(seq, pos, n);  // everything first: a failed write changes nothing
    const auto& table = book_.allocator().block_table(seq);
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
    book_.check_layer(layer);
    const BlockId b = book_.block_of(seq, pos);
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
  void build_tables(const std::vector<SeqId>& seqs, PagedKVTables& t) const { book_.build_tables(seqs, t); }
  PagedKVTables tables(const std::vector<SeqId>& seqs) const { return book_.tables(seqs); }

  PagedKVView<Quant> view(const PagedKVTables& t, int layer) const {
    book_.check_layer(layer);
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
    v.window = cfg_.window;
    v.sinks = cfg_.sinks;
    v.rope = cfg_.rope;
    return v;
  }

  // One block's bytes, every layer, K and V, are one run of block_bytes()
  // codes and one of block_param_count() floats (the arena is block-major):
  // what an engine copies to swap a block to host memory and back.
  std::int64_t block_bytes() const { return block_stride_; }
  std::int64_t block_param_count() const { return param_block_stride_; }
  std::uint8_t* block_codes(BlockId b) { return codes_base_ + std::int64_t(book_.checked_block(b)) * block_stride_; }
  float* block_params(BlockId b) { return params_base_ + std::int64_t(book_.checked_block(b)) * param_block_stride_; }

 private:
  // A compile-time layout's kind and sizes override the config's; the
  // rest of the validation is KVBook's.
  static KVCacheConfig with_layout(KVCacheConfig c) {
    if constexpr (!LT::kRuntime) {
      c.layout = LT::kKind;
      if constexpr (LT::kBlockSize != 0) c.block_size = LT::kBlockSize;
      if constexpr (LT::kWindow != 0) {
        c.window = LT::kWindow;
        c.sinks = LT::kSinks;
      }
    }
    return c;
  }

  std::uint8_t* code_ptr(BlockId b, int layer, int kv, int head, std::int64_t t) const {
    return codes_base_ + b * block_stride_ + layer * layer_stride_ +
           (std::int64_t(kv) * cfg_.n_kv_heads + head) * head_stride_ + t * row_bytes_;
  }
  float* param_ptr(BlockId b, int layer, int kv, int head, std::int64_t t) const {
    return const_cast<float*>(params_base_) + b * param_block_stride_ + layer * param_layer_stride_ +
           (std::int64_t(kv) * cfg_.n_kv_heads + head) * param_head_stride_ + t * params_per_row_;
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

  KVBook book_;
  KVCacheConfig cfg_;  // book_'s (validated), kept at hand for the byte arithmetic
  std::vector<BlockCopy> copies_;  // extend()'s, reused
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
};

}  // namespace fastinfer::kv
