// The CPU backend's KV store: kv::KVCache's bookkeeping and host arena, the
// attention kernels of attention.hpp (decode, extend, custom mask), block
// copies and swaps as memcpy. LlamaModel reaches it only through the
// KVStore interface (kv/kv_store.hpp), created by CpuBackend::make_kv_store.
//
// One class per quantization (7 in all): the layout, block size, window and
// sinks are the cache config's, chosen at run time (kv::RuntimeLayout).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <memory_resource>
#include <string_view>
#include <typeinfo>
#include <unordered_map>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "fastinfer/backend/cpu/attention.hpp"
#include "fastinfer/core/aligned_buffer.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/kv_cache.hpp"
#include "fastinfer/kv/kv_layout.hpp"
#include "fastinfer/kv/kv_press.hpp"
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/kv/kv_store.hpp"

namespace fastinfer::cpu {

template <typename Quant>
class CpuKVStore final : public KVStore {
 public:
  using Cache = kv::KVCache<kv::RuntimeLayout, Quant>;

  // cfg.layout names the layout.
  CpuKVStore(const kv::KVCacheConfig& cfg, int share_layers = 1,
             std::pmr::memory_resource* arena = fastinfer::detail::huge_page_resource())
      : cache_(cfg, arena), group_(share_layers) {
    FASTINFER_CHECK(share_layers >= 1, InvalidArgument, "KVOptions: share_layers must be at least 1, got ",
                    share_layers);
  }

  Cache& cache() { return cache_; }

  std::string_view layout_name() const override { return cache_.layout_name(); }
  KVLayoutKind layout() const override { return cache_.layout(); }
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

  void copy_blocks(const std::vector<BlockCopy>& copies) override {
    for (const BlockCopy& c : copies) {
      copy_bytes_(cache_.block_codes(c.dst), cache_.block_codes(c.src), cache_.block_bytes());
      copy_bytes_(cache_.block_params(c.dst), cache_.block_params(c.src), param_bytes_());
    }
  }
  std::size_t host_block_bytes() const override { return cache_.block_bytes() + param_bytes_(); }
  void swap_out(BlockId block, std::uint8_t* host) override {
    copy_bytes_(host, cache_.block_codes(block), cache_.block_bytes());
    copy_bytes_(host + cache_.block_bytes(), cache_.block_params(block), param_bytes_());
  }
  void swap_in(const std::uint8_t* host, BlockId block) override {
    copy_bytes_(cache_.block_codes(block), host, cache_.block_bytes());
    copy_bytes_(cache_.block_params(block), host + cache_.block_bytes(), param_bytes_());
  }
  KVBlockStorage block_storage() override {
    KVBlockStorage s;
    s.codes = cache_.block_codes(0);
    s.block_bytes = std::int64_t(cache_.block_bytes());
    s.params = cache_.block_params(0);
    s.block_params = std::int64_t(cache_.block_param_count());
    return s;
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
    // A query's keys come in chunks of kKeyChunk (attention_plan.hpp); while
    // no sequence has more than one, the plan would be one item per
    // (sequence, KV head), which the allocation-free loop below runs without
    // making a plan at all. Either way a query gets the same bits.
    const auto view = cache_.view(tables_, 0);
    std::int64_t longest = 0;
    for (std::int32_t b = 0; b < view.batch; ++b) {
      const std::int64_t len = view.length(b);
      longest = std::max(longest, view.window > 0 ? std::min<std::int64_t>(len, view.window) : len);
    }
    if (longest > kKeyChunk) {
      // Every layer has the same lengths: one plan per step.
      plan_ = plan_decode(view);
      planned_ = true;
    }
#if defined(_OPENMP)
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
        decode_attention(view, q, out, n_q_heads, plan_, threads);
      else
        decode_short_(view, q, out, n_q_heads, threads);
    } else {
      const CustomMask m{mask};
      extend_attention(view, q, qo_indptr, out, n_q_heads, threads, mask ? &m : nullptr);
    }
  }

 protected:
  void* typed_cache(const std::type_info& type) override {
    return type == typeid(Cache) ? &cache_ : nullptr;
  }

 private:
  std::size_t param_bytes_() const { return sizeof(float) * std::size_t(cache_.block_param_count()); }
  // A format without parameters (f32, f16, bf16, fp8) has no parameter
  // arena: its pointer is null, and memcpy may not be given one even for 0 bytes.
  static void copy_bytes_(void* dst, const void* src, std::size_t n) {
    if (n > 0) std::memcpy(dst, src, n);
  }

  // Decode attention when no range needs splitting: the library's kernel
  // for one query (attention_detail::attend_queries, what decode_attention
  // and extend_attention run), with per-thread scratch kept across steps so
  // a decode step allocates nothing. At the scalar level, the reference.
  void decode_short_(const kv::PagedKVView<Quant>& view, const float* q, float* out, int n_q_heads, int threads) {
    namespace ad = attention_detail;
    const AttentionKernel kernel = attention_kernel(cpu_level(), view.head_dim);
    if (kernel == AttentionKernel::reference) {
      decode_attention(view, q, out, n_q_heads, threads);
      return;
    }
    check_heads(n_q_heads, view.n_kv_heads);
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
      ad::QueryScratch& w = work_[std::size_t(omp_get_thread_num())];
#else
      ad::QueryScratch& w = work_[0];
#endif
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
      for (std::int64_t i = 0; i < items; ++i) {
        const std::int32_t b = std::int32_t(i / view.n_kv_heads), h = std::int32_t(i % view.n_kv_heads);
        const std::int64_t pos = view.length(b) - 1;
        const std::int64_t at = (std::int64_t(b) * n_q_heads + std::int64_t(h) * G) * d;
        ad::attend_queries(kernel, view, b, h, q + at, 0, 1, G, scale, pos, pos + 1, ad::causal_rows(pos), w, out + at,
                           0);
      }
    }
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
  // precision of reference::paged_attention; only PyramidKV needs it).
  void attend_live_(int kl, const kv::PagedKVView<Quant>& view, const float* q, const std::int32_t* qo_indptr,
                    float* out, int n_q_heads) {
    check_heads(n_q_heads, view.n_kv_heads);
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

  Cache cache_;
  int group_ = 1;  // model layers per KV layer (CLA)
  std::vector<SeqId> batch_seqs_;
  bool dead_ = false;  // some sequence of this step has dead slots
  std::unordered_map<SeqId, Observed> observed_;
  kv::PagedKVTables tables_;
  DecodePlan plan_;
  bool decode_ = false, planned_ = false;
  std::vector<attention_detail::QueryScratch> work_;  // per thread, kept across steps
};

// Opt-in shared instantiations (build time only; behaviour is the same).
// make_kv_store names all 7 CpuKVStore variants, so every translation unit
// that builds a model compiles 7 vtables, each pulling in its format's
// attention kernels: most of the compile time of a model-using program.
// Define FASTINFER_EXTERN_TEMPLATES in every translation unit and, in exactly
// one of them, instantiate the set once:
//   namespace fastinfer::cpu { FASTINFER_KV_STORE_INSTANCES() }
// Without the macro nothing changes: the library stays header-only.
// fastinfer's own tests, examples and benchmarks build this way
// (tests/support/instances.cpp). EXTERN is `extern` for the declarations and
// empty for the one definition.
#define FASTINFER_KV_STORE_INSTANCES(EXTERN)     \
  EXTERN template class CpuKVStore<kv::F32>;     \
  EXTERN template class CpuKVStore<kv::F16>;     \
  EXTERN template class CpuKVStore<kv::BF16>;    \
  EXTERN template class CpuKVStore<kv::Int8>;    \
  EXTERN template class CpuKVStore<kv::Int4>;    \
  EXTERN template class CpuKVStore<kv::FP8E4M3>; \
  EXTERN template class CpuKVStore<kv::FP8E5M2>;
#if defined(FASTINFER_EXTERN_TEMPLATES)
FASTINFER_KV_STORE_INSTANCES(extern)
#endif

// The CPU store for options.quant over the cache `config` (whose layout
// field names the layout: kv_cache_config sets it from options.layout), its
// bytes from `arena` (which must outlive the store; by default huge pages,
// core/aligned_buffer.hpp).
inline std::unique_ptr<KVStore> make_kv_store(
    const KVOptions& options, const kv::KVCacheConfig& config,
    std::pmr::memory_resource* arena = fastinfer::detail::huge_page_resource()) {
  FASTINFER_CHECK(config.layout == options.layout, InvalidArgument, "make_kv_store: the cache config's layout '",
                  kv_layout_name(config.layout), "' differs from the options' '", kv_layout_name(options.layout),
                  "'");
  return kv::visit_quant(options.quant, [&](auto quant) -> std::unique_ptr<KVStore> {
    return std::make_unique<CpuKVStore<decltype(quant)>>(config, options.share_layers, arena);
  });
}

}  // namespace fastinfer::cpu
