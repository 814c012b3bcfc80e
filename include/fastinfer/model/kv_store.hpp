// KVStore: the model's KV cache behind a small virtual interface, so that the
// layout and the quantization are chosen at run time (--kv, --kv-layout)
// without templating the whole model on them.
//
// Why type erasure and not LlamaModel<Layout, Quant>: the model's matmuls,
// norms and loaders do not depend on the KV format, so instantiating them per
// format would multiply compile time for nothing. Only the cache and the
// attention kernels do; they sit behind one virtual call per layer and step
// (attend), a few nanoseconds against microseconds of attention. The
// instantiated set is small and fixed: 3 layouts with run-time sizes
// (Contiguous, Paged<0>, SlidingWindow<0, 0, 0>) x 7 quantizations of
// KVCache, and the attention kernels once per quantization.
//
// The sequence verbs forward to kv::KVCache; typed access (for a prefix cache
// adopting blocks, or tests reading the cache) through cache<Layout, Quant>().
//
// Compression (kv/kv_press.hpp): observe_queries(seq) before a prompt's
// prefill keeps the queries a press votes with, compress(seq, press, ratio)
// after it scores, plans and compacts; position_offset(seq) is what the
// model adds to length(seq) for the next RoPE position.
//
// Cross-layer KV sharing (KVOptions::share_layers = g, CLA): layers
// g*i .. g*i+g-1 share one KV layer, written by layer g*i and read by all of
// them; the others' append() is ignored. Exact only for a model trained (or
// built) that way; on any other model it changes the function.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "fastinfer/backend/cpu/attention.hpp"
#include "fastinfer/core/checked_math.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/kv_cache.hpp"
#include "fastinfer/kv/kv_layout.hpp"
#include "fastinfer/kv/kv_press.hpp"
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/model/config.hpp"

namespace fastinfer {

enum class KVLayoutKind { Contiguous, Paged, Window };

inline std::string_view kv_layout_name(KVLayoutKind k) {
  switch (k) {
    case KVLayoutKind::Contiguous: return "contiguous";
    case KVLayoutKind::Paged: return "paged";
    case KVLayoutKind::Window: return "window";
  }
  return "?";
}

// "paged" -> KVLayoutKind::Paged (the spelling of --kv-layout).
inline KVLayoutKind parse_kv_layout(std::string_view name) {
  for (KVLayoutKind k : {KVLayoutKind::Contiguous, KVLayoutKind::Paged, KVLayoutKind::Window})
    if (kv_layout_name(k) == name) return k;
  throw_error<InvalidArgument>("unknown KV layout '", name, "': expected contiguous, paged or window");
}

struct KVOptions {
  kv::QuantKind quant = kv::QuantKind::F32;
  KVLayoutKind layout = KVLayoutKind::Contiguous;
  std::int32_t block_size = 16;  // paged and window; a power of two
  std::int32_t window = 0;       // window layout: tokens of the window (> 0)
  std::int32_t sinks = 0;        // window layout: first tokens always kept
  int max_sequences = 1;         // sequences the pool is sized for
  // Blocks in the pool; 0: enough for max_sequences sequences of max_seq_len
  // tokens (paged), or of a window plus one step (window), plus one spare
  // block per sequence for copy-on-write.
  std::int32_t num_blocks = 0;
  // Cross-layer KV sharing: adjacent layers per KV layer (1: none).
  int share_layers = 1;
};

// What one compress() did.
struct CompressionStats {
  std::int64_t original_length = 0, length = 0;  // slots before and after
  std::int64_t kept_entries = 0, total_entries = 0;  // (layer, KV head, token) entries, live
  std::int32_t blocks_freed = 0;
};

class KVStore {
 public:
  virtual ~KVStore() = default;

  virtual std::string_view layout_name() const = 0;
  virtual std::string_view quant_name() const = 0;
  virtual std::size_t bytes_per_token() const = 0;
  virtual std::size_t memory_bytes() const = 0;
  virtual std::int32_t block_size() const = 0;

  // Sequence verbs (kv::KVCache's).
  virtual PagedAllocator& allocator() = 0;
  virtual const PagedAllocator& allocator() const = 0;
  virtual bool contains(SeqId seq) const = 0;
  virtual std::int64_t length(SeqId seq) const = 0;
  virtual bool add_sequence(SeqId seq) = 0;
  virtual void adopt(SeqId seq, const std::vector<BlockId>& blocks, std::int64_t length) = 0;
  virtual void fork(SeqId src, SeqId dst) = 0;
  virtual void free_sequence(SeqId seq) = 0;
  virtual void truncate(SeqId seq, std::int64_t new_length) = 0;
  virtual bool extend_all(const std::vector<ReserveRequest>& reqs) = 0;
  virtual void append(int layer, SeqId seq, const float* k, const float* v, std::int64_t n) = 0;
  virtual void read(int layer, SeqId seq, std::int64_t pos, float* k, float* v) const = 0;

  // Compression verbs (see the top of this file).
  virtual std::int64_t position_offset(SeqId seq) const = 0;
  virtual void observe_queries(SeqId seq) = 0;
  virtual CompressionStats compress(SeqId seq, const kv::Press& press, double ratio) = 0;

  // One step: the tables of `seqs` (after extend_all), then per layer the
  // attention of q ([rows][n_q_heads][head_dim]) into out. `decode`: one
  // query per sequence (flash-decoding kernel, planned once per step).
  virtual void prepare(const std::vector<SeqId>& seqs, bool decode, int threads) = 0;
  virtual void attend(int layer, const float* q, const std::int32_t* qo_indptr, const std::uint8_t* mask,
                      float* out, int n_q_heads, int threads) = 0;

  template <typename Layout, typename Quant>
  kv::KVCache<Layout, Quant>* cache();
};

template <typename Layout, typename Quant>
class KVStoreImpl final : public KVStore {
 public:
  explicit KVStoreImpl(const kv::KVCacheConfig& cfg, int share_layers = 1) : cache_(cfg), group_(share_layers) {
    FASTINFER_CHECK(share_layers >= 1, InvalidArgument, "KVOptions: share_layers must be at least 1, got ",
                    share_layers);
  }

  kv::KVCache<Layout, Quant>& cache() { return cache_; }

  std::string_view layout_name() const override { return cache_.layout_name(); }
  std::string_view quant_name() const override { return cache_.quant_name(); }
  std::size_t bytes_per_token() const override { return cache_.bytes_per_token(); }
  std::size_t memory_bytes() const override { return cache_.memory_bytes(); }
  std::int32_t block_size() const override { return cache_.block_size(); }

  PagedAllocator& allocator() override { return cache_.allocator(); }
  const PagedAllocator& allocator() const override { return cache_.allocator(); }
  bool contains(SeqId seq) const override { return cache_.contains(seq); }
  std::int64_t length(SeqId seq) const override { return cache_.length(seq); }
  bool add_sequence(SeqId seq) override { return cache_.add_sequence(seq); }
  void adopt(SeqId seq, const std::vector<BlockId>& blocks, std::int64_t length) override {
    cache_.adopt(seq, blocks, length);
  }
  void fork(SeqId src, SeqId dst) override { cache_.fork(src, dst); }
  void free_sequence(SeqId seq) override {
    cache_.free_sequence(seq);
    observed_.erase(seq);
  }
  void truncate(SeqId seq, std::int64_t new_length) override { cache_.truncate(seq, new_length); }
  bool extend_all(const std::vector<ReserveRequest>& reqs) override { return cache_.extend_all(reqs); }
  void append(int layer, SeqId seq, const float* k, const float* v, std::int64_t n) override {
    if (layer % group_ == 0) cache_.append(layer / group_, seq, k, v, n);
  }
  void read(int layer, SeqId seq, std::int64_t pos, float* k, float* v) const override {
    cache_.read(layer / group_, seq, pos, k, v);
  }

  std::int64_t position_offset(SeqId seq) const override { return cache_.position_offset(seq); }
  void observe_queries(SeqId seq) override {
    FASTINFER_CHECK(cache_.contains(seq), InvalidArgument, "observe_queries: sequence ", seq, " is not in the cache");
    observed_[seq] = Observed{};
  }
  CompressionStats compress(SeqId seq, const kv::Press& press, double ratio) override {
    return compress_(seq, press, ratio);
  }

  void prepare(const std::vector<SeqId>& seqs, bool decode, int threads) override {
    cache_.build_tables(seqs, tables_);
    batch_seqs_ = seqs;
    dead_ = false;
    for (SeqId s : seqs) dead_ = dead_ || cache_.has_dead_slots(s);
    decode_ = decode;
    planned_ = false;
    if (!decode) return;
    // Flash-decoding cuts only ranges longer than min_split_tokens; below
    // that the plan is one range per (sequence, KV head), which the
    // allocation-free loop below runs without making a plan at all.
    const auto view = cache_.view(tables_, 0);
    std::int64_t longest = 0;
    for (std::int32_t b = 0; b < view.batch; ++b) {
      const std::int64_t len = view.length(b);
      longest = std::max(longest, view.window > 0 ? std::min<std::int64_t>(len, view.window) : len);
    }
    if (longest > cpu::DecodePlanOptions{}.min_split_tokens) {
      // Every layer has the same lengths: one plan per step.
      plan_ = cpu::plan_decode(view, threads);
      planned_ = true;
    }
#if FASTINFER_ATTENTION_AVX2 && defined(_OPENMP)
    if (int(work_.size()) < threads) work_.resize(std::size_t(threads));
#else
    if (work_.empty()) work_.resize(1);
#endif
  }

  void attend(int layer, const float* q, const std::int32_t* qo_indptr, const std::uint8_t* mask, float* out,
              int n_q_heads, int threads) override {
    const auto view = cache_.view(tables_, layer / group_);
    if (!observed_.empty() && layer % group_ == 0) observe_(layer / group_, view, q, qo_indptr, n_q_heads);
    if (dead_) {
      FASTINFER_CHECK(mask == nullptr, UsageError, "attend: a sequence with dead slots (PyramidKV) cannot take a ",
                      "custom mask (token trees)");
      attend_live_(layer / group_, view, q, qo_indptr, out, n_q_heads);
    } else if (decode_ && mask == nullptr) {
      if (planned_)
        cpu::decode_attention(view, q, out, n_q_heads, plan_, threads);
      else
        decode_short_(view, q, out, n_q_heads, threads);
    } else {
      const cpu::CustomMask m{mask};
      cpu::extend_attention(view, q, qo_indptr, out, n_q_heads, threads, mask ? &m : nullptr);
    }
  }

 private:
  // Decode attention when no range needs splitting: cpu::decode_attention's
  // arithmetic (one online-softmax state per (sequence, KV head), sinks then
  // window, the same bits as its single-range merge) with per-thread scratch
  // kept across steps, so a decode step allocates nothing. Without the AVX2
  // kernels, the library kernel.
  void decode_short_(const kv::PagedKVView<Quant>& view, const float* q, float* out, int n_q_heads, int threads) {
#if FASTINFER_ATTENTION_AVX2
    namespace ad = cpu::attention_detail;
    cpu::check_heads(n_q_heads, view.n_kv_heads);
    const int d = view.head_dim, G = n_q_heads / view.n_kv_heads;
    const float scale = 1.0f / std::sqrt(float(d));
    const std::int64_t items = std::int64_t(view.batch) * view.n_kv_heads;
    std::int64_t keys = 0;
    for (std::int32_t b = 0; b < view.batch; ++b) keys += view.length(b);
    const int team = ad::team_size(items, std::min<int>(threads, int(work_.size())), keys * 2 * n_q_heads * d);
#if defined(_OPENMP)
#pragma omp parallel num_threads(team) if (team > 1)
#endif
    {
#if defined(_OPENMP)
      Work& w = work_[std::size_t(omp_get_thread_num())];
#else
      Work& w = work_[0];
#endif
      w.qs.resize(std::size_t(G) * std::size_t(d));
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
      for (std::int64_t i = 0; i < items; ++i) {
        const std::int32_t b = std::int32_t(i / view.n_kv_heads), h = std::int32_t(i % view.n_kv_heads);
        const std::int64_t pos = view.length(b) - 1;
        const float* qh = q + (std::int64_t(b) * n_q_heads + std::int64_t(h) * G) * d;
        w.st.reset(G, d);
        const std::int64_t sink_end = view.sink_end(pos);
        if (sink_end > 0) {
          ad::load_query(qh, G, d, scale, view.sink_shift(pos), view.rope, w.qs.data());
          ad::attend_range(view, b, h, w.qs.data(), G, 0, sink_end, ad::AllVisible{}, w.st);
        }
        ad::load_query(qh, G, d, scale, 0, view.rope, w.qs.data());
        ad::attend_range(view, b, h, w.qs.data(), G, view.window_begin(pos), pos + 1, ad::AllVisible{}, w.st);
        ad::finish(w.st, G, d, out + (std::int64_t(b) * n_q_heads + std::int64_t(h) * G) * d);
      }
    }
#else
    cpu::decode_attention(view, q, out, n_q_heads, threads);
#endif
  }

  // The queries a press votes with, per KV layer: rows [first, first + rows)
  // of the sequence, [rows][n_q_heads][head_dim] each.
  struct Observed {
    std::vector<std::vector<float>> q;
    std::vector<std::int64_t> first;
    int n_q_heads = 0;
  };

  void observe_(int kl, const kv::PagedKVView<Quant>& view, const float* q, const std::int32_t* qo_indptr,
                int n_q_heads) {
    const std::size_t row = std::size_t(n_q_heads) * std::size_t(view.head_dim);
    for (std::int32_t b = 0; b < view.batch; ++b) {
      auto it = observed_.find(batch_seqs_[std::size_t(b)]);
      if (it == observed_.end()) continue;
      Observed& o = it->second;
      if (o.q.empty()) {
        o.q.resize(std::size_t(cache_.config().n_layers));
        o.first.assign(o.q.size(), -1);
        o.n_q_heads = n_q_heads;
      }
      const std::int64_t n = qo_indptr[b + 1] - qo_indptr[b];
      const std::int64_t first = view.length(b) - n;
      auto& rows = o.q[std::size_t(kl)];
      // Chunks arrive in order; a rollback (first below what is held) restarts.
      if (o.first[std::size_t(kl)] < 0 || first != o.first[std::size_t(kl)] + std::int64_t(rows.size() / row)) {
        rows.clear();
        o.first[std::size_t(kl)] = first;
      }
      rows.insert(rows.end(), q + std::size_t(qo_indptr[b]) * row, q + std::size_t(qo_indptr[b + 1]) * row);
    }
  }

  CompressionStats compress_(SeqId seq, const kv::Press& press, double ratio) {
    FASTINFER_CHECK(cache_.contains(seq), InvalidArgument, "compress: sequence ", seq, " is not in the cache");
    const auto& cfg = cache_.config();
    const std::int64_t n = cache_.length(seq);
    const std::int64_t rows = kv::press_query_rows(press, n);
    std::vector<std::vector<double>> scores;
    if (rows > 0) {
      auto it = observed_.find(seq);
      FASTINFER_CHECK(it != observed_.end() && !it->second.q.empty(), UsageError, "compress: press ",
                      kv::press_name(press), " votes with the queries of the last ", rows,
                      " prompt tokens: call observe_queries(", seq, ") before the prefill");
      const Observed& o = it->second;
      const std::size_t row = std::size_t(o.n_q_heads) * std::size_t(cfg.head_dim);
      const std::size_t kv_row = std::size_t(cfg.n_kv_heads) * std::size_t(cfg.head_dim);
      std::vector<float> keys(std::size_t(n) * kv_row), vals(kv_row);
      scores.resize(std::size_t(cfg.n_layers));
      for (int l = 0; l < cfg.n_layers; ++l) {
        const std::int64_t held = std::int64_t(o.q[std::size_t(l)].size() / row);
        const std::int64_t first = o.first[std::size_t(l)];
        FASTINFER_CHECK(first >= 0 && first + held == n && held >= rows, UsageError, "compress: the observed queries ",
                        "of sequence ", seq, " do not end at its ", n, " tokens (", held, " rows from ", first,
                        "); observe the prefill that ends the prompt");
        for (std::int64_t p = 0; p < n; ++p) cache_.read(l, seq, p, keys.data() + std::size_t(p) * kv_row, vals.data());
        kv::accumulate_attention(o.q[std::size_t(l)].data() + std::size_t(held - rows) * row, rows, n - rows,
                                 o.n_q_heads, keys.data(), n, cfg.n_kv_heads, cfg.head_dim, scores[std::size_t(l)]);
      }
    }
    const kv::CompressionPlan plan = kv::plan_compression(press, ratio, n, cfg.n_layers, cfg.n_kv_heads, scores);
    const std::int32_t free_before = cache_.allocator().num_free_blocks();
    cache_.compact(seq, plan);
    observed_.erase(seq);
    CompressionStats st;
    st.original_length = n;
    st.length = plan.length;
    st.kept_entries = plan.kept_entries();
    st.total_entries = n * cfg.n_layers * cfg.n_kv_heads;
    st.blocks_freed = cache_.allocator().num_free_blocks() - free_before;
    return st;
  }

  // Attention when a sequence of the batch has dead slots: every query
  // attends from its layer's first live slot (scalar, in the order and
  // precision of cpu::reference::paged_attention; only PyramidKV needs it).
  void attend_live_(int kl, const kv::PagedKVView<Quant>& view, const float* q, const std::int32_t* qo_indptr,
                    float* out, int n_q_heads) {
    cpu::check_heads(n_q_heads, view.n_kv_heads);
    const int d = view.head_dim, G = n_q_heads / view.n_kv_heads;
    const double scale = 1.0 / std::sqrt(double(d));
    std::vector<float> k(static_cast<std::size_t>(d)), v(k);
    std::vector<double> w, acc(static_cast<std::size_t>(d));
    for (std::int32_t b = 0; b < view.batch; ++b) {
      const std::int64_t len = view.length(b), n = qo_indptr[b + 1] - qo_indptr[b];
      const std::int64_t begin = cache_.first_live(batch_seqs_[std::size_t(b)], kl);
      for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t pos = len - n + i;
        for (int hq = 0; hq < n_q_heads; ++hq) {
          const int h = hq / G;
          const float* qv = q + ((qo_indptr[b] + i) * n_q_heads + hq) * d;
          w.assign(std::size_t(pos + 1 - begin), 0.0);
          double mx = -1e300, sum = 0.0;
          for (std::int64_t p = begin; p <= pos; ++p) {
            const BlockId blk = view.block(b, p / view.block_size);
            kv::decode_row<Quant>(view.k_row(blk, h, p % view.block_size), view.k_param(blk, h, p % view.block_size),
                                  d, k.data());
            double s = 0.0;
            for (int j = 0; j < d; ++j) s += double(qv[j]) * double(k[std::size_t(j)]);
            w[std::size_t(p - begin)] = s * scale;
            mx = std::max(mx, s * scale);
          }
          std::fill(acc.begin(), acc.end(), 0.0);
          for (std::int64_t p = begin; p <= pos; ++p) {
            const double e = std::exp(w[std::size_t(p - begin)] - mx);
            sum += e;
            const BlockId blk = view.block(b, p / view.block_size);
            kv::decode_row<Quant>(view.v_row(blk, h, p % view.block_size), view.v_param(blk, h, p % view.block_size),
                                  d, v.data());
            for (int j = 0; j < d; ++j) acc[std::size_t(j)] += e * double(v[std::size_t(j)]);
          }
          float* o = out + ((qo_indptr[b] + i) * n_q_heads + hq) * d;
          for (int j = 0; j < d; ++j) o[j] = float(acc[std::size_t(j)] / sum);
        }
      }
    }
  }

#if FASTINFER_ATTENTION_AVX2
  struct Work {
    cpu::attention_detail::State st;
    std::vector<float> qs;
  };
#else
  struct Work {};
#endif

  kv::KVCache<Layout, Quant> cache_;
  int group_ = 1;  // model layers per KV layer (CLA)
  std::vector<SeqId> batch_seqs_;
  bool dead_ = false;  // some sequence of this step has dead slots
  std::unordered_map<SeqId, Observed> observed_;
  kv::PagedKVTables tables_;
  cpu::DecodePlan plan_;
  bool decode_ = false, planned_ = false;
  std::vector<Work> work_;  // per thread, kept across steps
};

template <typename Layout, typename Quant>
kv::KVCache<Layout, Quant>* KVStore::cache() {
  auto* impl = dynamic_cast<KVStoreImpl<Layout, Quant>*>(this);
  return impl ? &impl->cache() : nullptr;
}

// The cache configuration KVOptions asks for, for a model of config `c` that
// feeds at most `max_tokens` tokens per step.
inline kv::KVCacheConfig kv_cache_config(const KVOptions& o, const LlamaConfig& c, int max_tokens) {
  FASTINFER_CHECK(o.max_sequences >= 1, InvalidArgument, "KVOptions: max_sequences must be at least 1, got ",
                  o.max_sequences);
  FASTINFER_CHECK(o.num_blocks >= 0, InvalidArgument, "KVOptions: num_blocks cannot be negative, got ",
                  o.num_blocks);
  kv::KVCacheConfig k;
  FASTINFER_CHECK(o.share_layers >= 1, InvalidArgument, "KVOptions: share_layers must be at least 1, got ",
                  o.share_layers);
  k.n_layers = (c.n_layers + o.share_layers - 1) / o.share_layers;
  k.n_kv_heads = c.n_kv_heads;
  k.head_dim = c.head_dim;
  k.max_seq_len = c.max_seq_len;
  k.block_size = o.block_size;
  k.rope = kv::RopeSpec{c.rope_theta, c.rope_style == RopeStyle::HalfSplit};
  auto blocks = [&](std::int64_t tokens) { return (tokens + o.block_size - 1) / o.block_size; };
  switch (o.layout) {
    case KVLayoutKind::Contiguous:
      k.num_blocks = o.num_blocks > 0 ? o.num_blocks : o.max_sequences;
      break;
    case KVLayoutKind::Paged:
      FASTINFER_CHECK(kv::is_power_of_two(o.block_size), InvalidArgument,
                      "KVOptions: block_size must be a power of two, got ", o.block_size);
      k.num_blocks = o.num_blocks > 0 ? o.num_blocks
                                      : checked_int32(std::int64_t(o.max_sequences) * (blocks(c.max_seq_len) + 1),
                                                      "KVOptions: paged pool blocks");
      break;
    case KVLayoutKind::Window:
      FASTINFER_CHECK(kv::is_power_of_two(o.block_size), InvalidArgument,
                      "KVOptions: block_size must be a power of two, got ", o.block_size);
      FASTINFER_CHECK(o.window > 0, InvalidArgument, "KVOptions: the window layout needs window > 0, got ",
                      o.window);
      FASTINFER_CHECK(o.sinks >= 0, InvalidArgument, "KVOptions: sinks cannot be negative, got ", o.sinks);
      k.window = o.window;
      k.sinks = o.sinks;
      // Sinks, the window and one step's tokens, each rounded up to blocks.
      k.num_blocks = o.num_blocks > 0
                         ? o.num_blocks
                         : checked_int32(std::int64_t(o.max_sequences) *
                                             (std::min(blocks(c.max_seq_len),
                                                       blocks(o.sinks) + blocks(o.window) + blocks(max_tokens) + 1) +
                                              1),
                                         "KVOptions: window pool blocks");
      break;
  }
  return k;
}

// Opt-in shared instantiations (build time only; behaviour is the same).
// make_kv_store names all 21 KVStoreImpl variants, so every translation unit
// that builds a model compiles 21 vtables, each pulling in its format's
// attention kernels: most of the compile time of a model-using program.
// Define FASTINFER_EXTERN_TEMPLATES in every translation unit and, in exactly
// one of them, instantiate the set once:
//   namespace fastinfer { FASTINFER_KV_STORE_INSTANCES() }
// Without the macro nothing changes: the library stays header-only.
// fastinfer's own tests, examples and benchmarks build this way
// (tests/support/instances.cpp).
#define FASTINFER_KV_STORE_INSTANCES_OF_(EXTERN, LAYOUT)     \
  EXTERN template class KVStoreImpl<LAYOUT, kv::F32>;        \
  EXTERN template class KVStoreImpl<LAYOUT, kv::F16>;        \
  EXTERN template class KVStoreImpl<LAYOUT, kv::BF16>;       \
  EXTERN template class KVStoreImpl<LAYOUT, kv::Int8>;       \
  EXTERN template class KVStoreImpl<LAYOUT, kv::Int4>;       \
  EXTERN template class KVStoreImpl<LAYOUT, kv::FP8E4M3>;    \
  EXTERN template class KVStoreImpl<LAYOUT, kv::FP8E5M2>;
// The layouts are those make_kv_store creates (run-time sizes); EXTERN is
// `extern` for the declarations and empty for the one definition.
// (The window layout's commas would split a macro argument: hence the alias.)
#define FASTINFER_KV_WINDOW_RUNTIME_ kv::SlidingWindow<0, 0, 0>
#define FASTINFER_KV_STORE_INSTANCES(EXTERN)                       \
  FASTINFER_KV_STORE_INSTANCES_OF_(EXTERN, kv::Contiguous)         \
  FASTINFER_KV_STORE_INSTANCES_OF_(EXTERN, kv::Paged<0>)           \
  FASTINFER_KV_STORE_INSTANCES_OF_(EXTERN, FASTINFER_KV_WINDOW_RUNTIME_)
#if defined(FASTINFER_EXTERN_TEMPLATES)
FASTINFER_KV_STORE_INSTANCES(extern)
#endif

inline std::unique_ptr<KVStore> make_kv_store(const KVOptions& o, const LlamaConfig& c, int max_tokens) {
  const kv::KVCacheConfig k = kv_cache_config(o, c, max_tokens);
  return kv::visit_quant(o.quant, [&](auto quant) -> std::unique_ptr<KVStore> {
    using Q = decltype(quant);
    switch (o.layout) {
      case KVLayoutKind::Contiguous: return std::make_unique<KVStoreImpl<kv::Contiguous, Q>>(k, o.share_layers);
      case KVLayoutKind::Paged: return std::make_unique<KVStoreImpl<kv::Paged<0>, Q>>(k, o.share_layers);
      case KVLayoutKind::Window: return std::make_unique<KVStoreImpl<kv::SlidingWindow<0, 0, 0>, Q>>(k, o.share_layers);
    }
    throw_error<InvalidArgument>("bad KVLayoutKind ", int(o.layout));
  });
}

}  // namespace fastinfer
