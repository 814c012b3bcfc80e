// Presses and cross-layer sharing through KVStore and LlamaModel:
//   - positions: in a one-layer model a token's K/V depend only on the token
//     and its position, so a compressed cache must equal the cache of a model
//     fed only the kept tokens at their original positions, and the tokens
//     after it must get the same logits;
//   - PyramidKV's dead slots: attention from each layer's first live slot
//     equals the scalar reference attention over a cache of the live tokens;
//   - CLA: an inflated model whose identity layers read their real
//     neighbour's KV reproduces the unshared model with half the KV bytes.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "fastinfer/backend/cpu/attention_reference.hpp"
#include "fastinfer/model/inflate.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/synthetic.hpp"

using namespace fastinfer;

namespace {

LlamaConfig small_config(int layers) {
  LlamaConfig c;
  c.dim = 64, c.hidden_dim = 128, c.n_layers = layers, c.n_heads = 4, c.n_kv_heads = 1, c.head_dim = 16;
  c.vocab_size = 96, c.max_seq_len = 128;
  return c;
}

ModelOptions paged(int block_size = 8) {
  ModelOptions o;
  o.kv.layout = KVLayoutKind::Paged;
  o.kv.block_size = block_size;
  o.kv.max_sequences = 2;
  return o;
}

std::vector<std::int32_t> tokens(int n, int vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::int32_t> t{1};
  while (int(t.size()) < n) t.push_back(std::int32_t(rng() % std::uint32_t(vocab)));
  return t;
}

double max_diff(const float* a, const float* b, std::size_t n) {
  double m = 0;
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

}  // namespace

TEST_CASE("press: a compressed one-layer model equals one fed only the kept tokens at their positions",
          "[model][press]") {
  const LlamaWeights w = make_synthetic(small_config(1), DType::F32, 3);
  const std::int64_t n = 40;
  const auto prompt = tokens(int(n), 96, 5);
  const std::vector<std::int32_t> next = {7, 11, 13, 17};
  const std::size_t V = 96;
  for (const kv::Press& press : {kv::Press{kv::StreamingLLM{4}}, kv::Press{kv::SnapKV{8, 5}}, kv::Press{kv::H2O{}}})
    for (double ratio : {0.25, 0.5, 0.75}) {
      INFO(std::string(kv::press_name(press)) << " ratio " << ratio);
      LlamaModel<> model(w, paged());
      REQUIRE(model.kv().add_sequence(0));
      model.kv().observe_queries(0);
      ForwardBatch b;
      b.add(0, prompt);
      model.forward(b);
      // K rows before, to tell which token each slot keeps after.
      const std::size_t row = 16;
      std::vector<float> before(std::size_t(n) * row), k(row), v(row);
      for (std::int64_t p = 0; p < n; ++p) model.kv().read(0, 0, p, before.data() + std::size_t(p) * row, v.data());
      const CompressionStats st = model.kv().compress(0, press, ratio);
      REQUIRE(st.length == kv::press_budget(ratio, n));
      REQUIRE(model.kv().length(0) == st.length);
      REQUIRE(model.kv().position_offset(0) == n - st.length);
      std::vector<std::int64_t> kept;
      for (std::int64_t s = 0; s < st.length; ++s) {
        model.kv().read(0, 0, s, k.data(), v.data());
        for (std::int64_t p = 0; p < n; ++p)
          if (std::equal(k.begin(), k.end(), before.begin() + std::ptrdiff_t(std::size_t(p) * row))) kept.push_back(p);
        REQUIRE(std::int64_t(kept.size()) == s + 1);
      }
      // The reference: kept tokens at their original positions, then the same continuation.
      LlamaModel<> ref(w, paged());
      REQUIRE(ref.kv().add_sequence(0));
      ForwardBatch r;
      std::vector<std::int32_t> kept_tokens;
      for (auto p : kept) kept_tokens.push_back(prompt[std::size_t(p)]), r.positions.push_back(p);
      r.add(0, kept_tokens);
      r.logits = LogitsRows::None;
      ref.forward(r);
      for (std::size_t i = 0; i < next.size(); ++i) {
        ForwardBatch a, e;
        a.add(0, &next[i], 1);
        e.add(0, &next[i], 1);
        e.positions.push_back(n + std::int64_t(i));
        const float* la = model.forward(a);
        const std::vector<float> got(la, la + V);
        REQUIRE(max_diff(got.data(), ref.forward(e), V) < 1e-5);
        if (i == 0) {
          // The position matters: the same token one slot-count later is another function.
          LlamaModel<> wrong(w, paged());
          REQUIRE(wrong.kv().add_sequence(0));
          ForwardBatch x = r;
          x.tokens.push_back(next[0]);
          x.qo_indptr.back() += 1;
          x.positions.push_back(st.length);
          x.logits = LogitsRows::Last;
          REQUIRE(max_diff(got.data(), wrong.forward(x), V) > 1e-4);
        }
      }
    }
}

TEST_CASE("press: refusals leave the sequence as it was", "[model][press]") {
  const LlamaWeights w = make_synthetic(small_config(2), DType::F32, 3);
  LlamaModel<> model(w, paged());
  auto& kv = model.kv();
  REQUIRE(kv.add_sequence(0));
  ForwardBatch b;
  b.add(0, tokens(30, 96, 1));
  b.logits = LogitsRows::None;
  model.forward(b);
  // SnapKV votes with queries nobody kept.
  REQUIRE_THROWS_AS(kv.compress(0, kv::SnapKV{}, 0.5), UsageError);
  // A fork shares every block: compaction would rewrite the other's tokens.
  kv.fork(0, 1);
  const auto free_before = kv.allocator().num_free_blocks();
  REQUIRE_THROWS_AS(kv.compress(0, kv::StreamingLLM{}, 0.5), UsageError);
  REQUIRE(kv.length(0) == 30);
  REQUIRE(kv.allocator().num_free_blocks() == free_before);
  kv.free_sequence(1);
  const CompressionStats st = kv.compress(0, kv::StreamingLLM{}, 0.5);
  REQUIRE(st.blocks_freed == 4 - 2);  // 30 tokens in blocks of 8 -> 15 tokens
  kv.allocator().check_invariants();
  // Rollback into the compressed prompt is refused; above it is fine.
  REQUIRE_THROWS_AS(kv.truncate(0, 10), UsageError);
  ForwardBatch more;
  more.add(0, tokens(3, 96, 2));
  model.forward(more);
  kv.truncate(0, 16);
  REQUIRE(kv.position_offset(0) == 15);
  ModelOptions win = paged();
  win.kv.layout = KVLayoutKind::Window;
  win.kv.window = 16;
  LlamaModel<> windowed(w, win);
  REQUIRE(windowed.kv().add_sequence(0));
  windowed.forward(b);
  REQUIRE_THROWS_AS(windowed.kv().compress(0, kv::StreamingLLM{}, 0.5), UsageError);
}

TEST_CASE("press: PyramidKV's dead slots are never attended", "[model][press]") {
  // Two layers, two KV heads, random K/V and queries straight into the store.
  LlamaConfig c = small_config(2);
  c.n_kv_heads = 2;
  const int d = 16, heads = 4;
  KVOptions o;
  o.layout = KVLayoutKind::Paged;
  o.block_size = 4;
  auto store = cpu::make_kv_store(o, kv_cache_config(o, c, 64));
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto randn = [&](std::size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = nd(rng);
    return v;
  };
  const std::int64_t n = 37, extra = 3;
  REQUIRE(store->add_sequence(0));
  store->observe_queries(0);
  REQUIRE(store->extend_all({{0, n}}));
  const std::int32_t qo[2] = {0, std::int32_t(n)};
  std::vector<float> out(std::size_t(n * heads * d));
  store->prepare({0}, false, 1);
  for (int l = 0; l < 2; ++l) {
    const auto k = randn(std::size_t(n * 2 * d)), v = randn(k.size()), q = randn(std::size_t(n * heads * d));
    store->append(l, 0, k.data(), v.data(), n);
    store->attend(l, q.data(), qo, nullptr, out.data(), heads, 1);
  }
  const CompressionStats st = store->compress(0, kv::PyramidKV{4, 3, 20.0f}, 0.5);
  auto* cache = store->cache<kv::RuntimeLayout, kv::F32>();
  REQUIRE(cache != nullptr);
  REQUIRE(cache->first_live(0, 0) == 0);
  REQUIRE(cache->first_live(0, 1) > 0);
  REQUIRE(st.kept_entries == 2 * 2 * kv::press_budget(0.5, n));
  // New tokens, then attention per layer against the reference over the live slots only.
  REQUIRE(store->extend_all({{0, extra}}));
  const std::int32_t qo2[2] = {0, std::int32_t(extra)};
  store->prepare({0}, false, 1);
  for (int l = 0; l < 2; ++l) {
    const auto k = randn(std::size_t(extra * 2 * d)), v = randn(k.size()), q = randn(std::size_t(extra * heads * d));
    store->append(l, 0, k.data(), v.data(), extra);
    std::vector<float> got(std::size_t(extra * heads * d)), want(got.size());
    store->attend(l, q.data(), qo2, nullptr, got.data(), heads, 1);
    kv::KVCacheConfig rc;
    rc.n_layers = 1, rc.n_kv_heads = 2, rc.head_dim = d, rc.num_blocks = 32, rc.block_size = 4;
    kv::KVCache<kv::Paged<4>> live(rc);
    live.add_sequence(0);
    const std::int64_t first = cache->first_live(0, l), len = cache->length(0);
    REQUIRE(live.extend(0, len - first));
    std::vector<float> kr(std::size_t(2 * d)), vr(kr);
    for (std::int64_t p = first; p < len; ++p) {
      cache->read(l, 0, p, kr.data(), vr.data());
      live.write(0, 0, p - first, kr.data(), vr.data(), 1);
    }
    kv::PagedKVTables t = live.tables({0});
    cpu::reference::paged_attention(live.view(t, 0), q.data(), qo2, want.data(), heads);
    REQUIRE(max_diff(got.data(), want.data(), got.size()) < 1e-5);
  }
  store->allocator().check_invariants();
}

TEST_CASE("CLA: identity layers that read their neighbour's KV reproduce the model with half the KV", "[model][cla]") {
  // Deepened 2x: original layer i sits at 2i, the inserted identity layer
  // (zero wo and w_down) at 2i + 1, so layers (2i, 2i + 1) can share layer 2i's KV.
  const LlamaWeights base = make_synthetic(small_config(3), DType::F32, 4);
  InflateShape shape{base.config.dim, base.config.hidden_dim, 6, base.config.n_heads, base.config.n_kv_heads};
  const LlamaWeights deep = inflate_weights(base, shape);
  ModelOptions shared = paged();
  shared.kv.share_layers = 2;
  LlamaModel<> plain(deep, paged()), cla(deep, shared);
  REQUIRE(cla.kv().bytes_per_token() * 2 == plain.kv().bytes_per_token());
  const auto prompt = tokens(50, 96, 8);
  const std::size_t V = 96;
  std::vector<float> a(prompt.size() * V), b(a.size());
  plain.forward_prefill_all(prompt.data(), std::int64_t(prompt.size()), 0, a.data());
  cla.forward_prefill_all(prompt.data(), std::int64_t(prompt.size()), 0, b.data());
  REQUIRE(max_diff(a.data(), b.data(), a.size()) == 0.0);
  for (int i = 0; i < 5; ++i) {
    const std::int32_t t = std::int32_t(3 + i);
    const int pos = int(prompt.size()) + i;
    const float* pa = plain.forward_decode(t, pos);
    const std::vector<float> x(pa, pa + V);
    REQUIRE(max_diff(x.data(), cla.forward_decode(t, pos), V) == 0.0);
  }
  // A model not built to share computes another function under CLA.
  LlamaModel<> base_plain(base, paged());
  ModelOptions pair = paged();
  pair.kv.share_layers = 3;
  LlamaModel<> base_cla(base, pair);
  std::vector<float> c(a.size()), e(a.size());
  base_plain.forward_prefill_all(prompt.data(), std::int64_t(prompt.size()), 0, c.data());
  base_cla.forward_prefill_all(prompt.data(), std::int64_t(prompt.size()), 0, e.data());
  REQUIRE(max_diff(c.data(), e.data(), c.size()) > 1e-4);
}

TEST_CASE("press: at ratio 0 every press leaves a multi-layer model's function as it was", "[model][press]") {
  LlamaConfig c = small_config(3);
  c.n_kv_heads = 2;
  const LlamaWeights w = make_synthetic(c, DType::F32, 6);
  const auto prompt = tokens(33, 96, 12);
  const std::size_t V = 96;
  LlamaModel<> plain(w, paged());
  plain.forward_prefill(prompt, 0);
  std::vector<std::vector<float>> want;
  for (int i = 0; i < 3; ++i) {
    const float* l = plain.forward_decode(std::int32_t(5 + i), 33 + i);
    want.emplace_back(l, l + V);
  }
  for (const kv::Press& press : {kv::Press{kv::StreamingLLM{}}, kv::Press{kv::SnapKV{}}, kv::Press{kv::H2O{}},
                                 kv::Press{kv::PyramidKV{}}}) {
    INFO(kv::press_name(press));
    LlamaModel<> model(w, paged());
    REQUIRE(model.kv().add_sequence(LlamaModel<>::kSoloSequence));
    model.kv().observe_queries(LlamaModel<>::kSoloSequence);
    model.forward_prefill(prompt, 0);
    const CompressionStats st = model.kv().compress(LlamaModel<>::kSoloSequence, press, 0.0);
    REQUIRE(st.length == 33);
    REQUIRE(st.kept_entries == st.total_entries);
    for (int i = 0; i < 3; ++i)
      REQUIRE(max_diff(want[std::size_t(i)].data(), model.forward_decode(std::int32_t(5 + i), 33 + i), V) == 0.0);
  }
}

TEST_CASE("make_kv_store: one store class per format with the layout from the config, and a config for another layout is refused",
          "[model][kv]") {
  const LlamaConfig c = small_config(2);
  for (KVLayoutKind layout : {KVLayoutKind::Contiguous, KVLayoutKind::Paged, KVLayoutKind::Window}) {
    KVOptions o;
    o.layout = layout;
    o.window = 8;
    o.quant = kv::QuantKind::Int4;
    auto store = cpu::make_kv_store(o, kv_cache_config(o, c, 16));
    CHECK(store->layout() == layout);
    CHECK(store->layout_name() == kv_layout_name(layout));
    CHECK(store->quant_name() == "int4");
    CHECK(store->cache<kv::RuntimeLayout, kv::Int4>() != nullptr);
    CHECK(store->cache<kv::Paged<0>, kv::Int4>() == nullptr);
  }
  KVOptions o;
  o.layout = KVLayoutKind::Window;
  o.window = 8;
  kv::KVCacheConfig cfg = kv_cache_config(o, c, 16);
  cfg.layout = KVLayoutKind::Paged;
  CHECK_THROWS_WITH(cpu::make_kv_store(o, cfg), Catch::Contains("differs from the options' 'window'"));
}
