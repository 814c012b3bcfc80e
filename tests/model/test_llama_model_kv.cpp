// LlamaModel over kv::KVCache: every layout with f32 KV reproduces the
// stories260K and tinystories-656k goldens; a ragged batch of prompts gives
// each the tokens it gets alone; a token tree under a custom mask equals its
// root-to-leaf paths run one by one; the decode path of a sliding window with
// sinks equals the scalar reference attention over the same cache; rollback
// never touches a block another sequence shares; quantized KV stays within a
// measured KL bound of f32 KV.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "fastinfer/backend/cpu/attention_reference.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/hf_loader.hpp"
#include "fastinfer/model/llama2c_loader.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/synthetic.hpp"
#include "golden.hpp"
#include "../backend/cpu/test_kernels_support.hpp"
#include "shared_dir.hpp"

using namespace fastinfer;
namespace fs = std::filesystem;

namespace {

using Case = fastinfer::testing::GoldenCase;
using fastinfer::testing::read_golden_cases;

ModelOptions kv_options(KVLayoutKind layout, int block_size, kv::QuantKind q = kv::QuantKind::F32) {
  ModelOptions o;
  o.kv.layout = layout;
  o.kv.block_size = block_size;
  o.kv.quant = q;
  return o;
}

double max_diff(const float* a, const float* b, std::size_t n) {
  double m = 0;
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

struct LayoutCase {
  const char* name;
  KVLayoutKind layout;
  int block_size;
};
const LayoutCase kLayouts[] = {{"contiguous", KVLayoutKind::Contiguous, 16}, {"paged 1", KVLayoutKind::Paged, 1},
                               {"paged 16", KVLayoutKind::Paged, 16},         {"paged 4", KVLayoutKind::Paged, 4},
                               {"paged 64", KVLayoutKind::Paged, 64},         {"paged 512", KVLayoutKind::Paged, 512}};

}  // namespace

TEST_CASE("f32 KV in every layout and block size reproduces the stories260K goldens", "[model][kv][golden]") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(cases_dir, "golden/cases");
  const auto cases = read_golden_cases(cases_dir);
  REQUIRE(cases.size() >= 4);
  const LlamaWeights w = load_llama2c(model_path.string());
  for (const auto& lc : kLayouts) {
    LlamaModel<> model(w, kv_options(lc.layout, lc.block_size));
    CHECK(model.kv().layout_name() == kv_layout_name(lc.layout));
    for (const auto& c : cases) {
      INFO(lc.name << ", case " << c.name);
      GenerationParams p;
      p.max_new_tokens = c.max_new_tokens;
      CHECK(generate(model, c.prompt, p).tokens == c.continuation);
    }
  }
}

TEST_CASE("f32 KV in every layout reproduces the tinystories-656k goldens", "[model][kv][golden]") {
  FASTINFER_REQUIRE_SHARED(model_dir, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(cases_dir, "golden/tinystories-656k/cases");
  const auto cases = read_golden_cases(cases_dir);
  REQUIRE(cases.size() >= 4);
  const LlamaWeights w = load_hf_weights(model_dir);
  for (const auto& lc : {kLayouts[0], kLayouts[1], kLayouts[2], kLayouts[3]}) {
    LlamaModel<> model(w, kv_options(lc.layout, lc.block_size));
    for (const auto& c : cases) {
      INFO(lc.name << ", case " << c.name);
      GenerationParams p;
      p.max_new_tokens = c.max_new_tokens;
      CHECK(generate(model, c.prompt, p).tokens == c.continuation);
    }
  }
}

TEST_CASE("a decoded row's logits are bit-identical alone and beside other sequences, at every CPU level",
          "[model][kv][batch]") {
  // stories260K's hidden size (172) is no multiple of a vector: the SwiGLU
  // over rows x hidden values once gave a lone row's last values another exp
  // (a scalar tail) than the same row beside another one.
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  const LlamaWeights w = load_llama2c(model_path.string());
  const int V = w.config.vocab_size;
  const std::string ran = fastinfer::testing::at_every_cpu_level([&](cpu::CpuLevel) {
    ModelOptions o = kv_options(KVLayoutKind::Paged, 16);
    o.kv.max_sequences = 4;
    LlamaModel<> alone(w, o), together(w, o);
    const std::vector<std::int32_t> p1{1, 50, 60, 70}, p2{1, 80, 90};
    REQUIRE(alone.kv().add_sequence(1));
    for (SeqId s : {1, 2, 3}) REQUIRE(together.kv().add_sequence(s));
    ForwardBatch a, b;
    a.add(1, p1.data(), 4);
    b.add(2, p2.data(), 3);
    b.add(1, p1.data(), 4);
    b.add(3, p2.data(), 2);
    auto row_of = [&](LlamaModel<>& m, const ForwardBatch& batch, int row) {
      const float* l = m.forward(batch);
      return std::vector<float>(l + std::size_t(row) * std::size_t(V), l + std::size_t(row + 1) * std::size_t(V));
    };
    CHECK(row_of(alone, a, 0) == row_of(together, b, 1));
    for (std::int32_t t : {33, 7, 250}) {
      INFO("decode token " << t);
      ForwardBatch da, db;
      da.add(1, &t, 1);
      db.add(2, &t, 1);
      db.add(1, &t, 1);
      db.add(3, &t, 1);
      CHECK(row_of(alone, da, 0) == row_of(together, db, 1));
    }
  });
  WARN("ran at cpu levels: " << ran);
}

TEST_CASE("a ragged batch of golden prompts gives each its tokens alone", "[model][kv][batch]") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(cases_dir, "golden/cases");
  const auto cases = read_golden_cases(cases_dir);
  const LlamaWeights w = load_llama2c(model_path.string());
  for (int block_size : {1, 16}) {
    INFO("block size " << block_size);
    ModelOptions o = kv_options(KVLayoutKind::Paged, block_size);
    o.kv.max_sequences = int(cases.size());
    LlamaModel<> model(w, o);
    const int V = model.config().vocab_size;
    // Step 0 prefills every prompt in one pass; then one token per live
    // sequence per step, all in one pass, up to 80 new tokens each.
    const int kNew = 80;
    std::vector<std::vector<std::int32_t>> got(cases.size());
    std::vector<bool> live(cases.size(), true);
    ForwardBatch batch;
    for (std::size_t i = 0; i < cases.size(); ++i) {
      REQUIRE(model.kv().add_sequence(SeqId(100 + i)));
      batch.add(SeqId(100 + i), cases[i].prompt);
    }
    for (int step = 0; step <= kNew; ++step) {
      const float* logits = model.forward(batch);
      std::vector<std::size_t> order;
      for (std::size_t i = 0; i < cases.size(); ++i)
        if (live[i]) order.push_back(i);
      ForwardBatch next;
      for (std::size_t r = 0; r < order.size(); ++r) {
        const std::size_t i = order[r];
        const std::int32_t t = std::int32_t(cpu::argmax(logits + r * std::size_t(V), V));
        if (t == 1 || int(got[i].size()) >= std::min(kNew, cases[i].max_new_tokens)) {
          live[i] = false;
          model.kv().free_sequence(SeqId(100 + i));
          continue;
        }
        got[i].push_back(t);
        next.add(SeqId(100 + i), &t, 1);
      }
      if (next.batch() == 0) break;
      batch = next;
    }
    for (std::size_t i = 0; i < cases.size(); ++i) {
      INFO("case " << cases[i].name);
      const std::size_t n = std::min(got[i].size(), cases[i].continuation.size());
      CHECK(n == std::min<std::size_t>(kNew, cases[i].continuation.size()));
      CHECK(std::vector<std::int32_t>(got[i].begin(), got[i].begin() + std::ptrdiff_t(n)) ==
            std::vector<std::int32_t>(cases[i].continuation.begin(), cases[i].continuation.begin() + std::ptrdiff_t(n)));
    }
    CHECK(model.kv().allocator().stats().used == 0);
  }
}

TEST_CASE("a token tree under a custom mask equals each root-to-leaf path", "[model][kv][tree]") {
  const LlamaWeights w = make_synthetic("tiny", DType::F32, 11);
  const std::vector<std::int32_t> prefix = {1, 17, 99, 250, 3, 77, 410};
  // Tree nodes (parent index, token): 0:a  1:b<-0  2:c<-0  3:d<-1  4:e<-2  5:f<-1
  const std::vector<int> parent = {-1, 0, 0, 1, 2, 1};
  const std::vector<std::int32_t> tok = {5, 60, 61, 200, 300, 7};
  const int n = int(tok.size());
  std::vector<int> depth(std::size_t(n), 0);
  for (int i = 1; i < n; ++i) depth[std::size_t(i)] = depth[std::size_t(parent[std::size_t(i)])] + 1;
  for (const auto& lc : {kLayouts[0], kLayouts[1], kLayouts[3]}) {
    INFO(lc.name);
    LlamaModel<> model(w, kv_options(lc.layout, lc.block_size));
    const std::size_t V = std::size_t(model.config().vocab_size);
    model.forward_prefill(prefix, 0);
    ForwardBatch b;
    b.add(LlamaModel<>::kSoloSequence, tok);
    b.logits = LogitsRows::All;
    b.mask.assign(std::size_t(n * n), 0);
    for (int i = 0; i < n; ++i)
      for (int j = i; j >= 0; j = parent[std::size_t(j)]) b.mask[std::size_t(i * n + j)] = 1;
    for (int i = 0; i < n; ++i) b.positions.push_back(std::int64_t(prefix.size()) + depth[std::size_t(i)]);
    model.forward(b);
    // Again from the same start: the truncation to start_pos makes it idempotent.
    b.start_pos[0] = std::int64_t(prefix.size());
    const float* rows = model.forward(b);
    CHECK(model.cached_length() == int(prefix.size()) + n);
    const std::vector<float> tree_rows(rows, rows + std::size_t(n) * V);
    for (int leaf = 0; leaf < n; ++leaf) {
      std::vector<int> path;
      for (int j = leaf; j >= 0; j = parent[std::size_t(j)]) path.insert(path.begin(), j);
      std::vector<std::int32_t> toks;
      for (int j : path) toks.push_back(tok[std::size_t(j)]);
      std::vector<float> out(toks.size() * V);
      model.forward_prefill_all(toks.data(), std::int64_t(toks.size()), int(prefix.size()), out.data());
      for (std::size_t k = 0; k < path.size(); ++k) {
        INFO("node " << path[k] << " on the path to " << leaf);
        CHECK(max_diff(out.data() + k * V, tree_rows.data() + std::size_t(path[k]) * V, V) < 1e-4);
      }
    }
  }
}

TEST_CASE("sliding window with sinks: decode equals the reference attention over the same cache",
          "[model][kv][window]") {
  // Head size 8 model, window 24 + 4 sinks, block size 8: past position 28
  // blocks leave the window and the sink keys are renumbered.
  const LlamaWeights w = make_synthetic("tiny", DType::F32, 5);
  ModelOptions o = kv_options(KVLayoutKind::Window, 8);
  o.kv.window = 24;
  o.kv.sinks = 4;
  LlamaModel<> model(w, o), full(w);
  std::vector<std::int32_t> seq;
  for (int i = 0; i < 90; ++i) seq.push_back(std::int32_t((i * 53 + 7) % 512));
  const std::size_t V = 512;
  model.forward_prefill(seq.data(), 10, 0);
  full.forward_prefill(seq.data(), 10, 0);
  const auto& c = model.config();
  auto* cache = model.kv().cache<kv::RuntimeLayout, kv::F32>();
  REQUIRE(cache != nullptr);
  const SeqId s = LlamaModel<>::kSoloSequence;
  std::vector<float> q(std::size_t(c.q_dim())), ours(q.size()), ref(q.size());
  for (int p = 10; p < 90; ++p) {
    const float* a = model.forward_decode(seq[std::size_t(p)], p);
    const float* b = full.forward_decode(seq[std::size_t(p)], p);
    // Until the window moves, it is full attention.
    if (p < 24) REQUIRE(max_diff(a, b, V) < 1e-5);
    // Memory stays bounded by sinks + window + a block per side.
    CHECK(cache->stats().used <= 1 + 24 / 8 + 2);
    // The store's decode path against the scalar reference on the same view.
    for (std::size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.37f * float(i + p));
    for (int layer : {0, c.n_layers - 1}) {
      model.kv().prepare({s}, true, 1);
      const std::int32_t qo[2] = {0, 1};
      model.kv().attend(layer, q.data(), qo, nullptr, ours.data(), c.n_heads, 1);
      const auto tables = cache->tables({s});
      cpu::reference::decode_attention(cache->view(tables, layer), q.data(), ref.data(), c.n_heads);
      REQUIRE(max_diff(ours.data(), ref.data(), q.size()) < 2e-5);
    }
  }
  // Past the window, the two models attend to different keys.
  CHECK(max_diff(model.forward_decode(5, 90), full.forward_decode(5, 90), V) > 1e-3);
}

TEST_CASE("rollback of a forked sequence never writes a shared block", "[model][kv][fork]") {
  const LlamaWeights w = make_synthetic("tiny", DType::F32, 2);
  ModelOptions o = kv_options(KVLayoutKind::Paged, 4);
  o.kv.max_sequences = 3;
  LlamaModel<> model(w, o), alone(w);
  const std::size_t V = 512;
  std::vector<std::int32_t> seq;
  for (int i = 0; i < 22; ++i) seq.push_back(std::int32_t((i * 31 + 5) % 512));
  REQUIRE(model.kv().add_sequence(7));
  ForwardBatch b;
  b.add(7, seq);
  model.forward(b);
  model.kv().fork(7, 8);
  // Sequence 8 rolls back to 10 tokens (mid-block, shared) and feeds others.
  ForwardBatch r;
  const std::vector<std::int32_t> other = {400, 401, 402, 403, 404};
  r.add(8, other, 10);
  model.forward(r);
  CHECK(model.kv().length(8) == 15);
  CHECK(model.kv().length(7) == 22);
  // Sequence 7 continues as if nothing happened; 8 as if it were alone.
  ForwardBatch both;
  const std::int32_t t7 = 9, t8 = 11;
  both.add(7, &t7, 1);
  both.add(8, &t8, 1);
  const float* rows = model.forward(both);
  alone.forward_prefill(seq, 0);
  CHECK(max_diff(rows, alone.forward_decode(t7, 22), V) < 1e-5);
  std::vector<std::int32_t> seq8(seq.begin(), seq.begin() + 10);
  seq8.insert(seq8.end(), other.begin(), other.end());
  seq8.push_back(t8);
  alone.reset();
  CHECK(max_diff(rows + V, alone.forward_prefill(seq8, 0), V) < 1e-5);
}

TEST_CASE("bad ragged batches throw before changing anything", "[model][kv]") {
  const LlamaWeights w = make_synthetic("tiny", DType::F32, 2);
  ModelOptions o = kv_options(KVLayoutKind::Paged, 16);
  o.kv.max_sequences = 2;
  LlamaModel<> model(w, o);
  REQUIRE(model.kv().add_sequence(1));
  ForwardBatch b;
  b.add(1, std::vector<std::int32_t>{1, 2, 3});
  model.forward(b);
  ForwardBatch dup;
  dup.add(1, std::vector<std::int32_t>{4});
  dup.add(1, std::vector<std::int32_t>{5});
  CHECK_THROWS_WITH(model.forward(dup), Catch::Contains("twice"));
  ForwardBatch unknown;
  unknown.add(42, std::vector<std::int32_t>{4});
  CHECK_THROWS_WITH(model.forward(unknown), Catch::Contains("42"));
  ForwardBatch ahead;
  ahead.add(1, std::vector<std::int32_t>{4}, 5);
  CHECK_THROWS_WITH(model.forward(ahead), Catch::Contains("start position 5"));
  ForwardBatch badmask;
  badmask.add(1, std::vector<std::int32_t>{4, 5}, 1);
  badmask.mask = {1, 0, 1};
  CHECK_THROWS_WITH(model.forward(badmask), Catch::Contains("mask"));
  ForwardBatch badtok;
  badtok.add(1, std::vector<std::int32_t>{4, 512}, 1);
  CHECK_THROWS_WITH(model.forward(badtok), Catch::Contains("512"));
  CHECK(model.kv().length(1) == 3);
  CHECK_THROWS_AS(parse_kv_layout("ring"), InvalidArgument);
  ModelOptions bad = o;
  bad.kv.layout = KVLayoutKind::Window;
  CHECK_THROWS_WITH(LlamaModel<>(w, bad), Catch::Contains("window"));
}

TEST_CASE("quantized KV stays within its measured KL bound of f32 KV", "[model][kv][quant]") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(cases_dir, "golden/cases");
  const LlamaWeights w = load_llama2c(model_path.string());
  const auto cases = read_golden_cases(cases_dir);
  std::vector<std::int32_t> seq = cases[0].prompt;
  seq.insert(seq.end(), cases[0].continuation.begin(), cases[0].continuation.end());
  seq.resize(std::min<std::size_t>(seq.size(), 200));
  const std::size_t V = 512, n = seq.size();
  auto rows = [&](kv::QuantKind q) {
    LlamaModel<> m(w, kv_options(KVLayoutKind::Paged, 16, q));
    std::vector<float> out(n * V);
    m.forward_prefill_all(seq.data(), std::int64_t(n), 0, out.data());
    return out;
  };
  auto logp = [&](const float* l, std::vector<double>& o) {
    double mx = *std::max_element(l, l + V), s = 0;
    for (std::size_t i = 0; i < V; ++i) s += std::exp(double(l[i]) - mx);
    o.resize(V);
    for (std::size_t i = 0; i < V; ++i) o[i] = double(l[i]) - mx - std::log(s);
  };
  const auto ref = rows(kv::QuantKind::F32);
  // Bounds: about 3x the mean KLD fastinfer-kv-eval measured on the golden
  // sequences (docs/kv_cache.md).
  struct Bound {
    kv::QuantKind q;
    double kld, top1;
  };
  for (const Bound& bd : {Bound{kv::QuantKind::F16, 3e-5, 0.99}, Bound{kv::QuantKind::BF16, 2e-3, 0.95},
                          Bound{kv::QuantKind::Int8, 7e-3, 0.95}, Bound{kv::QuantKind::FP8E4M3, 0.2, 0.8},
                          Bound{kv::QuantKind::FP8E5M2, 0.6, 0.6}, Bound{kv::QuantKind::Int4, 0.8, 0.55}}) {
    INFO(kv::quant_name(bd.q));
    const auto got = rows(bd.q);
    std::vector<double> a, b;
    double kld = 0;
    std::size_t agree = 0;
    for (std::size_t p = 0; p < n; ++p) {
      logp(ref.data() + p * V, a);
      logp(got.data() + p * V, b);
      for (std::size_t i = 0; i < V; ++i) kld += std::exp(a[i]) * (a[i] - b[i]);
      const float* x = ref.data() + p * V;
      const float* y = got.data() + p * V;
      agree += std::max_element(x, x + V) - x == std::max_element(y, y + V) - y;
    }
    kld /= double(n);
    CHECK(kld > 0.0);  // quantized storage does change something
    CHECK(kld < bd.kld);
    CHECK(double(agree) / double(n) >= bd.top1);
  }
}
