// LlamaModel against an independent, deliberately naive transformer written
// here (double accumulation, whole sequence recomputed, no kernels), plus the
// model's own invariants: batched prefill == token-by-token decode, chunking
// and thread count do not change results, bad input changes nothing.
// Also synthetic models and the generation loop's stop rules.
// This file replaces the global operator new (to count allocations, below);
// GCC then flags the library's inlined new/delete pairs as mismatched.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

#include <catch2/catch.hpp>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastinfer/backend/cpu/q8_0.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/gguf_loader.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/model/synthetic.hpp"
#include "fastinfer/model/weight_convert.hpp"

using namespace fastinfer;

namespace {

double element(const MatrixView& m, std::int64_t r, std::int64_t c) {
  const std::size_t i = std::size_t(r * m.cols + c);
  switch (m.dtype) {
    case DType::F32: return static_cast<const float*>(m.data)[i];
    case DType::F16: return f16_to_f32(static_cast<const std::uint16_t*>(m.data)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const std::uint16_t*>(m.data)[i]);
    default: FAIL("unsupported dtype in the naive reference");
  }
  return 0;
}

using Vec = std::vector<double>;

Vec linear(const MatrixView& w, const Vec& x) {
  Vec y(std::size_t(w.rows), 0.0);
  for (std::int64_t r = 0; r < w.rows; ++r)
    for (std::int64_t c = 0; c < w.cols; ++c) y[std::size_t(r)] += element(w, r, c) * x[std::size_t(c)];
  return y;
}

Vec rmsnorm(const Vec& x, const float* weight, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double s = 1.0 / std::sqrt(ss / double(x.size()) + eps);
  Vec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = double(weight[i]) * x[i] * s;
  return y;
}

void rope(Vec& v, int n_heads, int hd, int pos, double theta, RopeStyle style) {
  for (int h = 0; h < n_heads; ++h)
    for (int i = 0; i < hd / 2; ++i) {
      const double angle = pos * std::pow(theta, -2.0 * i / hd);
      const int a = h * hd + (style == RopeStyle::Interleaved ? 2 * i : i);
      const int b = h * hd + (style == RopeStyle::Interleaved ? 2 * i + 1 : i + hd / 2);
      const double x0 = v[std::size_t(a)], x1 = v[std::size_t(b)];
      v[std::size_t(a)] = x0 * std::cos(angle) - x1 * std::sin(angle);
      v[std::size_t(b)] = x0 * std::sin(angle) + x1 * std::cos(angle);
    }
}

// Logits of every position of `tokens`, computed from scratch.
std::vector<Vec> naive_forward(const LlamaWeights& w, const std::vector<std::int32_t>& tokens) {
  const LlamaConfig& c = w.config;
  const std::size_t n = tokens.size();
  const int hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
  std::vector<Vec> x(n);
  for (std::size_t t = 0; t < n; ++t)
    for (int d = 0; d < c.dim; ++d) x[t].push_back(element(w.token_embedding, tokens[t], d));
  for (const auto& lw : w.layers) {
    std::vector<Vec> q(n), k(n), v(n);
    for (std::size_t t = 0; t < n; ++t) {
      const Vec xb = rmsnorm(x[t], lw.attn_norm, c.norm_eps);
      q[t] = linear(lw.wq, xb), k[t] = linear(lw.wk, xb), v[t] = linear(lw.wv, xb);
      rope(q[t], c.n_heads, hd, int(t), c.rope_theta, c.rope_style);
      rope(k[t], c.n_kv_heads, hd, int(t), c.rope_theta, c.rope_style);
    }
    for (std::size_t t = 0; t < n; ++t) {
      Vec att(std::size_t(c.q_dim()), 0.0);
      for (int h = 0; h < c.n_heads; ++h) {
        const int kvh = h / group;
        Vec s(t + 1);
        double mx = -1e300, sum = 0;
        for (std::size_t p = 0; p <= t; ++p) {
          double dot = 0;
          for (int d = 0; d < hd; ++d) dot += q[t][std::size_t(h * hd + d)] * k[p][std::size_t(kvh * hd + d)];
          s[p] = dot / std::sqrt(double(hd));
          mx = std::max(mx, s[p]);
        }
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (std::size_t p = 0; p <= t; ++p)
          for (int d = 0; d < hd; ++d) att[std::size_t(h * hd + d)] += s[p] / sum * v[p][std::size_t(kvh * hd + d)];
      }
      const Vec o = linear(lw.wo, att);
      for (int d = 0; d < c.dim; ++d) x[t][std::size_t(d)] += o[std::size_t(d)];
      const Vec xb = rmsnorm(x[t], lw.ffn_norm, c.norm_eps);
      Vec g = linear(lw.w_gate, xb);
      const Vec u = linear(lw.w_up, xb);
      for (std::size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const Vec down = linear(lw.w_down, g);
      for (int d = 0; d < c.dim; ++d) x[t][std::size_t(d)] += down[std::size_t(d)];
    }
  }
  std::vector<Vec> logits(n);
  for (std::size_t t = 0; t < n; ++t) logits[t] = linear(w.classifier, rmsnorm(x[t], w.final_norm, c.norm_eps));
  return logits;
}

double max_diff(const float* a, const Vec& b) {
  double worst = 0;
  for (std::size_t i = 0; i < b.size(); ++i) worst = std::max(worst, std::fabs(double(a[i]) - b[i]));
  return worst;
}

double max_diff(const float* a, const float* b, std::size_t n) {
  double worst = 0;
  for (std::size_t i = 0; i < n; ++i) worst = std::max(worst, std::fabs(double(a[i]) - double(b[i])));
  return worst;
}

LlamaConfig small_config() {
  LlamaConfig c;
  c.dim = 32, c.hidden_dim = 40, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2;
  c.vocab_size = 50, c.max_seq_len = 24, c.head_dim = 8;
  return c;
}

// Larger-than-default weights make the logits spread, so errors show.
LlamaWeights scaled_synthetic(const LlamaConfig& c, DType dtype, std::uint64_t seed) {
  LlamaWeights w = make_synthetic(c, DType::F32, seed);
  // Multiply every matrix by 25 (std 0.5) through fresh buffers.
  auto scale = [&](MatrixView& m) {
    auto buf = std::make_shared<std::vector<float>>(static_cast<const float*>(m.data),
                                                    static_cast<const float*>(m.data) + m.rows * m.cols);
    for (float& v : *buf) v *= 25.0f;
    m.data = buf->data();
    w.storage.push_back(buf);
  };
  for_each_matrix(w, scale);
  return dtype == DType::F32 ? w : convert_weights(w, dtype);
}

const std::vector<std::int32_t> kTokens = {1, 7, 49, 3, 3, 0, 22, 17, 8, 31, 12, 40, 5, 2, 9, 44};

}  // namespace

TEST_CASE("LlamaModel matches a naive double-precision transformer", "[model]") {
  struct Variant {
    const char* name;
    RopeStyle rope;
    bool shared;
    int kv_heads;
    DType dtype;
  };
  for (const Variant& variant : {Variant{"interleaved, shared, GQA", RopeStyle::Interleaved, true, 2, DType::F32},
                                 Variant{"half split, separate classifier, MQA", RopeStyle::HalfSplit, false, 1, DType::F32},
                                 Variant{"MHA, bf16 weights", RopeStyle::Interleaved, true, 4, DType::BF16},
                                 Variant{"GQA, f16 weights", RopeStyle::HalfSplit, false, 2, DType::F16}}) {
    INFO(variant.name);
    LlamaConfig c = small_config();
    c.rope_style = variant.rope;
    c.shared_classifier = variant.shared;
    c.n_kv_heads = variant.kv_heads;
    const LlamaWeights w = scaled_synthetic(c, variant.dtype, 7);
    const auto expected = naive_forward(w, kTokens);
    LlamaModel<> model(w);
    // Token by token.
    for (std::size_t t = 0; t < kTokens.size(); ++t) {
      INFO("position " << t);
      REQUIRE(max_diff(model.forward_decode(kTokens[t], int(t)), expected[t]) < 2e-4);
    }
    // One batched pass returning every position's logits.
    std::vector<float> all(kTokens.size() * std::size_t(c.vocab_size));
    model.forward_prefill_all(kTokens.data(), std::int64_t(kTokens.size()), 0, all.data());
    for (std::size_t t = 0; t < kTokens.size(); ++t)
      REQUIRE(max_diff(all.data() + t * std::size_t(c.vocab_size), expected[t]) < 2e-4);
  }
}

TEST_CASE("batched prefill equals token-by-token decode", "[model]") {
  const LlamaWeights w = make_synthetic("tiny", DType::F32, 3);
  std::vector<std::int32_t> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back(std::int32_t((i * 37 + 11) % 512));
  const std::size_t V = 512;

  LlamaModel<> stepwise(w);
  std::vector<float> decoded(prompt.size() * V);
  for (std::size_t t = 0; t < prompt.size(); ++t)
    std::memcpy(decoded.data() + t * V, stepwise.forward_decode(prompt[t], int(t)), V * sizeof(float));

  for (int max_batch : {0, 7, 1}) {
    INFO("max_batch " << max_batch);
    LlamaModel<> batched(w, {1, max_batch});
    CHECK(max_diff(batched.forward_prefill(prompt, 0), decoded.data() + (prompt.size() - 1) * V, V) < 1e-5);
    std::vector<float> all(prompt.size() * V);
    batched.forward_prefill_all(prompt.data(), std::int64_t(prompt.size()), 0, all.data());
    CHECK(max_diff(all.data(), decoded.data(), all.size()) < 1e-5);
    // Prefill after a cached prefix (start_pos > 0), then decode on top.
    batched.reset();
    batched.forward_prefill(prompt.data(), 25, 0);
    CHECK(max_diff(batched.forward_prefill(prompt.data() + 25, 15, 25), decoded.data() + 39 * V, V) < 1e-5);
  }
}

TEST_CASE("with batch invariance on, a 40-token prefill gives every position decode's logits bit for bit",
          "[model]") {
  // 40 rows take the packed GEMM by default (another summation order: within
  // 1e-5 above); the mode keeps every row's bits, at every CPU level.
  cpu::BatchInvariantScope invariant(true);
  std::vector<std::int32_t> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back(std::int32_t((i * 37 + 11) % 512));
  const std::size_t V = 512;
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    const LlamaWeights w = make_synthetic("tiny", dt, 3);
    for (cpu::CpuLevel level : cpu::supported_cpu_levels()) {
      cpu::CpuLevelScope scope(level);
      INFO(dtype_name(dt) << " at cpu level " << cpu::cpu_level_name(level));
      LlamaModel<> stepwise(w, {2});
      std::vector<float> decoded(prompt.size() * V), all(prompt.size() * V);
      for (std::size_t t = 0; t < prompt.size(); ++t)
        std::memcpy(decoded.data() + t * V, stepwise.forward_decode(prompt[t], int(t)), V * sizeof(float));
      LlamaModel<> batched(w, {2});
      batched.forward_prefill_all(prompt.data(), std::int64_t(prompt.size()), 0, all.data());
      CHECK(std::memcmp(all.data(), decoded.data(), all.size() * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("the thread count does not change logits or greedy tokens", "[model]") {
  const LlamaWeights w = make_synthetic("tiny", DType::F32, 5);
  LlamaModel<> one(w, {1}), two(w, {2});
  std::vector<std::int32_t> prompt = {1, 5, 9, 200, 301, 44, 17};
  CHECK(max_diff(one.forward_prefill(prompt, 0), two.forward_prefill(prompt, 0), 512) < 1e-6);
  GenerationParams params;
  params.max_new_tokens = 40;
  CHECK(generate(one, prompt, params).tokens == generate(two, prompt, params).tokens);
}

TEST_CASE("bad forward input throws InvalidArgument and changes nothing", "[model]") {
  const LlamaWeights w = make_synthetic("tiny", DType::F32, 1);
  LlamaModel<> model(w), fresh(w);
  const std::vector<std::int32_t> prompt = {1, 20, 30};
  model.forward_prefill(prompt, 0);
  const std::vector<float> before(model.forward_decode(40, 3), model.forward_decode(40, 3) + 512);

  CHECK_THROWS_AS(model.forward_decode(512, 4), InvalidArgument);   // outside the vocabulary
  CHECK_THROWS_AS(model.forward_decode(-1, 4), InvalidArgument);
  CHECK_THROWS_WITH(model.forward_decode(7, 9), Catch::Contains("outside the cached range"));  // skips ahead
  CHECK_THROWS_AS(model.forward_prefill(std::vector<std::int32_t>{}, 0), InvalidArgument);
  const std::vector<std::int32_t> mixed = {3, 4, 999};
  CHECK_THROWS_WITH(model.forward_prefill(mixed, 4), Catch::Contains("999"));
  CHECK(model.cached_length() == 4);
  std::vector<std::int32_t> too_long(509, 3);
  CHECK_THROWS_WITH(model.forward_prefill(too_long, 4), Catch::Contains("maximum sequence length"));

  // Nothing moved: re-feeding position 3 gives the same logits as before.
  CHECK(max_diff(model.forward_decode(40, 3), before.data(), 512) == 0.0);
  // And the rejected calls did not leave anything that a fresh model lacks.
  fresh.forward_prefill(prompt, 0);
  CHECK(max_diff(fresh.forward_decode(40, 3), before.data(), 512) == 0.0);

  CHECK_THROWS_AS(LlamaModel<>(w, {0}), InvalidArgument);
  LlamaWeights broken = w;
  broken.layers[2].wk.rows = 31;
  CHECK_THROWS_WITH(LlamaModel<>(broken), Catch::Contains("wk of layer 2"));
}

TEST_CASE("weights_bytes and kv_bytes count what the model holds", "[model]") {
  LlamaModel<> model(make_synthetic("tiny"));
  const std::size_t matrices = 512 * 64 + 5 * (64 * 64 * 2 + 32 * 64 * 2 + 172 * 64 * 3);
  CHECK(model.weights_bytes() == (matrices + 11 * 64) * 4);
  CHECK(model.kv_bytes() == std::size_t(2) * 5 * 4 * 512 * 8 * 4);
  LlamaModel<> bf16(make_synthetic("tiny", DType::BF16));
  CHECK(bf16.weights_bytes() == matrices * 2 + 11 * 64 * 4);
}

TEST_CASE("synthetic models have the issue's shapes", "[model][synthetic]") {
  const auto tiny = synthetic_config("tiny");
  CHECK((tiny.dim == 64 && tiny.hidden_dim == 172 && tiny.n_layers == 5 && tiny.n_heads == 8 &&
         tiny.n_kv_heads == 4 && tiny.vocab_size == 512 && tiny.max_seq_len == 512));
  const auto m15 = synthetic_config("15M");
  CHECK((m15.dim == 288 && m15.hidden_dim == 768 && m15.n_layers == 6 && m15.n_heads == 6 &&
         m15.vocab_size == 32000 && m15.max_seq_len == 256));
  const auto m110 = synthetic_config("110M");
  CHECK((m110.dim == 768 && m110.hidden_dim == 2048 && m110.n_layers == 12 && m110.n_heads == 12 &&
         m110.n_kv_heads == 12 && m110.vocab_size == 32000 && m110.max_seq_len == 1024));
  const auto b1 = synthetic_config("1B");
  CHECK((b1.dim == 2048 && b1.hidden_dim == 5632 && b1.n_layers == 22 && b1.n_heads == 32 && b1.n_kv_heads == 4 &&
         b1.vocab_size == 32000 && b1.max_seq_len == 2048 && b1.head_dim == 64));
  CHECK_THROWS_WITH(synthetic_config("7B"), Catch::Contains("7B"));
  CHECK_THROWS_AS(load_model("synthetic:nope"), InvalidArgument);
}

TEST_CASE("synthetic weights are seeded N(0, 0.02) with unit norms", "[model][synthetic]") {
  const LlamaWeights a = make_synthetic("tiny", DType::F32, 11, 1);
  const LlamaWeights b = make_synthetic("tiny", DType::F32, 11, 2);  // thread count must not matter
  const LlamaWeights other = make_synthetic("tiny", DType::F32, 12, 1);
  auto same = [](const MatrixView& x, const MatrixView& y) { return std::memcmp(x.data, y.data, x.bytes()) == 0; };
  CHECK(same(a.token_embedding, b.token_embedding));
  CHECK(same(a.layers[4].w_down, b.layers[4].w_down));
  CHECK_FALSE(same(a.layers[4].w_down, other.layers[4].w_down));
  CHECK_FALSE(same(a.layers[0].wq, a.layers[1].wq));  // each tensor its own stream
  CHECK(a.final_norm[0] == 1.0f);
  CHECK(a.layers[3].attn_norm[63] == 1.0f);

  // Moments and the one-sigma mass over every value of the model (~260K).
  double sum = 0, sq = 0;
  std::size_t n = 0, within = 0;
  auto add = [&](const MatrixView& m) {
    const float* p = static_cast<const float*>(m.data);
    for (std::int64_t i = 0; i < m.rows * m.cols; ++i, ++n) {
      sum += p[i], sq += double(p[i]) * p[i];
      within += std::fabs(p[i]) < 0.02f;
    }
  };
  add(a.token_embedding);
  for (const auto& l : a.layers)
    for (const MatrixView* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_down, &l.w_up}) add(*m);
  const double mean = sum / double(n), sd = std::sqrt(sq / double(n) - mean * mean);
  CHECK(std::fabs(mean) < 5 * 0.02 / std::sqrt(double(n)));
  CHECK(std::fabs(sd - 0.02) < 0.02 * 0.01);
  CHECK(std::fabs(double(within) / double(n) - 0.682689) < 0.005);

  // bf16 synthetic weights are the f32 ones rounded, generated directly.
  const LlamaWeights h = make_synthetic("tiny", DType::BF16, 11);
  const float* f = static_cast<const float*>(a.layers[2].wv.data);
  const auto* g = static_cast<const std::uint16_t*>(h.layers[2].wv.data);
  for (int i = 0; i < 32 * 64; ++i) REQUIRE(g[i] == f32_to_bf16(f[i]));
}

TEST_CASE("generation stops on max_new_tokens, seq_len, BOS and EOS", "[model][generate]") {
  LlamaWeights w = make_synthetic("tiny", DType::F32, 2);
  const std::vector<std::int32_t> prompt = {1, 100};
  GenerationParams params;
  params.max_new_tokens = 12;
  LlamaModel<> model(w);
  const auto base = generate(model, prompt, params);
  REQUIRE(base.tokens.size() == 12);
  CHECK(base.stopped_by == StopReason::MaxNewTokens);
  CHECK(base.prompt_tokens == 2);

  // Streaming callback sees exactly the result's tokens.
  std::vector<std::int32_t> streamed;
  generate(model, prompt, params, [&](std::int32_t t) { streamed.push_back(t); });
  CHECK(streamed == base.tokens);

  params.max_new_tokens = 0;
  CHECK(generate(model, prompt, params).tokens.empty());

  // The 5th greedy token becomes BOS, then EOS: generation stops before it.
  params.max_new_tokens = 12;
  for (bool as_eos : {false, true}) {
    LlamaWeights changed = w;
    if (as_eos) changed.config.eos_id = base.tokens[4];
    else changed.config.bos_id = base.tokens[4];
    LlamaModel<> m(changed);
    const auto r = generate(m, prompt, params);
    // Tokens before the first occurrence of the stop id.
    std::vector<std::int32_t> expect;
    for (auto t : base.tokens) {
      if (t == base.tokens[4]) break;
      expect.push_back(t);
    }
    CHECK(r.tokens == expect);
    CHECK(r.stopped_by == (as_eos ? StopReason::Eos : StopReason::Bos));
  }

  // seq_len: a prompt of max_seq_len - 3 tokens leaves room for exactly 3.
  std::vector<std::int32_t> long_prompt(509, 7);
  long_prompt[0] = 1;
  params.max_new_tokens = 100;
  const auto r = generate(model, long_prompt, params);
  CHECK(r.tokens.size() == 3);
  CHECK(r.stopped_by == StopReason::SeqLen);

  // Invalid requests.
  long_prompt.resize(512, 7);
  CHECK_THROWS_WITH(generate(model, long_prompt, params), Catch::Contains("maximum sequence length"));
  CHECK_THROWS_WITH(generate(model, {1, 512}, params), Catch::Contains("512"));
  CHECK_THROWS_AS(generate(model, {}, params), InvalidArgument);
}

TEST_CASE("sampled generation is reproducible per seed and uses the token index as the coin counter", "[model][generate]") {
  const LlamaWeights w = scaled_synthetic(synthetic_config("tiny"), DType::F32, 4);
  LlamaModel<> one(w, {1}), two(w, {2});
  const std::vector<std::int32_t> prompt = {1, 42};
  GenerationParams params;
  params.max_new_tokens = 30;
  params.temperature = 0.9f;
  params.top_p = 0.95f;
  params.seed = 1234;
  const auto a = generate(one, prompt, params);
  CHECK(a.tokens.size() + (a.stopped_by != StopReason::MaxNewTokens) >= 1);
  CHECK(generate(one, prompt, params).tokens == a.tokens);  // same seed, same tokens
  CHECK(generate(two, prompt, params).tokens == a.tokens);  // whatever the thread count

  // Token i is drawn with coin Philox(seed, Sampling, i) from the logits after
  // prompt + tokens[0..i): replay it by hand.
  cpu::SamplerWorkspace ws(512);
  std::vector<std::int32_t> seq = prompt;
  for (std::size_t i = 0; i < a.tokens.size(); ++i) {
    one.reset();
    const float* logits = one.forward_prefill(seq, 0);
    REQUIRE(cpu::sample_at_index(logits, 512, sampling_params(params), i, ws) == a.tokens[i]);
    seq.push_back(a.tokens[i]);
  }

  params.seed = 99;
  CHECK(generate(one, prompt, params).tokens != a.tokens);
  // top_k = 1 keeps only the maximum: greedy whatever the temperature.
  params.top_k = 1;
  GenerationParams greedy;
  greedy.max_new_tokens = 30;
  CHECK(generate(one, prompt, params).tokens == generate(one, prompt, greedy).tokens);
  params.top_p = 0.0f;
  CHECK_THROWS_AS(generate(one, prompt, params), InvalidArgument);
}

// ---- allocation counting: decode must not allocate per token ---------------
namespace {
std::atomic<long> g_allocations{0};
}  // namespace

// Every non-aligned form is replaced, so that new and delete always pair
// malloc with free (sanitizers check the pairing).
void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n == 0 ? 1 : n);
}
void* operator new[](std::size_t n, const std::nothrow_t& tag) noexcept { return ::operator new(n, tag); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

TEST_CASE("decoding allocates nothing per token", "[model][generate]") {
  // tiny runs every kernel on one thread; "mid" is big enough for the
  // matvecs (>= 512 KiB) and, past position ~128, attention to go parallel.
  LlamaConfig mid;
  mid.dim = 256, mid.hidden_dim = 768, mid.n_layers = 2, mid.n_heads = 8, mid.n_kv_heads = 4;
  mid.vocab_size = 2048, mid.max_seq_len = 160, mid.head_dim = 32;
  for (const LlamaConfig& config : {synthetic_config("tiny"), mid}) {
    LlamaWeights w = make_synthetic(config, DType::F32, 1);
    w.config.bos_id = -1;  // no early stop: every request emits exactly n tokens
    for (int threads : {1, 2}) {
      INFO("dim " << config.dim << ", " << threads << " thread(s)");
      LlamaModel<> model(w, {threads});
      const std::vector<std::int32_t> prompt = {1, 5, 6, 7};
      model.forward_prefill(prompt, 0);
      model.forward_decode(9, 4);  // warm-up: first parallel regions, thread-local scratch
      const long before = g_allocations.load();
      for (int pos = 5; pos < 150; ++pos) model.forward_decode(std::int32_t(pos), pos);
      CHECK(g_allocations.load() - before == 0);

      // generate(): the same count of allocations for 3 or 20 new tokens.
      GenerationParams params;
      auto count = [&](int n, float temperature) {
        params.max_new_tokens = n;
        params.temperature = temperature;
        const long start = g_allocations.load();
        const auto r = generate(model, prompt, params);
        REQUIRE(int(r.tokens.size()) == n);
        return g_allocations.load() - start;
      };
      // The backend's sampler workspace grows once, at the model's first
      // sampled token (it is the model's, not the request's): warm it up.
      (void)count(1, 0.8f);
      CHECK(count(3, 0.0f) == count(20, 0.0f));
      CHECK(count(3, 0.8f) == count(20, 0.8f));
      CHECK(count(20, 0.8f) == count(20, 0.0f));  // sampling itself allocates nothing per request
    }
  }
}

namespace {

// Whether `after` holds any of `before`'s storage entries. (Pointers, not
// owners: the weight arena's buffers share their chunk's owner.)
bool shares_storage(const LlamaWeights& before, const LlamaWeights& after) {
  for (const KeepAlive& a : after.storage)
    for (const KeepAlive& b : before.storage)
      if (a.get() == b.get()) return true;
  return false;
}

}  // namespace

TEST_CASE("weights converted or regrouped at load let their source go", "[model]") {
  LlamaConfig c = small_config();
  c.dim = 64, c.hidden_dim = 96, c.head_dim = 16;  // rows of whole Q8_0 blocks (32 values)
  const LlamaWeights f32 = make_synthetic(c, DType::F32, 11);
  REQUIRE_FALSE(f32.storage.empty());
  // The last logits of a 5-token prompt, from a model on `w` after `w`
  // itself is gone (the model's copy is then the only owner left).
  auto logits_of = [&](LlamaWeights w) {
    LlamaModel<> model(std::move(w));
    const float* l = model.forward_prefill(kTokens.data(), 5, 0);
    return std::vector<float>(l, l + c.vocab_size);
  };

  // Every matrix converted: the result holds none of the f32 buffers (the
  // norms copied), and computes what the same conversion of a copy does.
  for (DType target : {DType::BF16, DType::F16}) {
    INFO(dtype_name(target));
    LlamaWeights source = make_synthetic(c, DType::F32, 11);
    LlamaWeights converted = convert_weights(source, target);
    CHECK_FALSE(shares_storage(source, converted));
    CHECK(std::equal(source.final_norm, source.final_norm + c.dim, converted.final_norm));
    source = LlamaWeights{};
    CHECK(logits_of(std::move(converted)) == logits_of(convert_weights(f32, target)));
  }
  // A conversion to the type the weights have copies nothing and keeps them.
  CHECK(shares_storage(f32, convert_weights(f32, DType::F32)));

  // Quantized to Q8_0: the f32 source is let go. The model then regroups the
  // Q8_0 matrices at the levels whose kernels read them regrouped and lets
  // the quantized rows go too; elsewhere it reads them in place and keeps them.
  const LlamaWeights q8 = quantize_weights_q8_0(f32);
  CHECK_FALSE(shares_storage(f32, q8));
  for (cpu::CpuLevel level : cpu::supported_cpu_levels()) {
    cpu::CpuLevelScope scope(level);
    INFO("cpu level " << cpu::cpu_level_name(level));
    CHECK(shares_storage(q8, LlamaModel<>(q8).weights()) == !cpu::q8_0::regroups_weights());
    CHECK(logits_of(quantize_weights_q8_0(make_synthetic(c, DType::F32, 11))) == logits_of(q8));
  }
}
