// The vectorised attention kernels against the scalar reference over odd
// shapes and lengths (1, block size +- 1, long), every quantization type, at
// every CPU level the host supports (scalar runs the reference itself; avx2
// and avx512 their kernels: attention_kernel_isa names which, per head size);
// the sliding window with sinks against an independent StreamingLLM
// reference that applies RoPE to raw keys at renumbered positions; and the
// error each quantization type adds against unquantized f32 attention.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "fastinfer/backend/cpu/attention.hpp"
#include "fastinfer/kv/kv_cache.hpp"
#include "test_kernels_support.hpp"

using namespace fastinfer;
using namespace fastinfer::kv;

namespace {

struct Shape {
  int n_q_heads, n_kv_heads, head_dim, block_size;
};

// A cache filled with N(0, 1) K/V; `raw` keeps the f32 inputs [seq][pos][kv_dim].
template <typename Layout, typename Q>
struct Filled {
  KVCache<Layout, Q> cache;
  std::vector<std::vector<float>> raw_k, raw_v;
  Filled(const KVCacheConfig& c, const std::vector<std::int64_t>& lengths, unsigned seed) : cache(c) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const std::size_t kvd = std::size_t(c.n_kv_heads * c.head_dim);
    for (std::size_t s = 0; s < lengths.size(); ++s) {
      REQUIRE(cache.add_sequence(SeqId(s)));
      REQUIRE(cache.extend(SeqId(s), lengths[s]));
      raw_k.emplace_back(kvd * std::size_t(lengths[s]));
      raw_v.emplace_back(kvd * std::size_t(lengths[s]));
      for (auto& x : raw_k.back()) x = nd(rng);
      for (auto& x : raw_v.back()) x = nd(rng) + 0.5f;
      cache.append(0, SeqId(s), raw_k.back().data(), raw_v.back().data(), lengths[s]);
    }
  }
};

KVCacheConfig config(const Shape& s, std::int32_t blocks) {
  KVCacheConfig c;
  c.n_layers = 1;
  c.n_kv_heads = s.n_kv_heads;
  c.head_dim = s.head_dim;
  c.block_size = s.block_size;
  c.num_blocks = blocks;
  return c;
}

std::vector<float> random_q(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> q(n);
  for (auto& x : q) x = nd(rng);
  return q;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  float e = 0.0f;
  for (std::size_t i = 0; i < a.size(); ++i) e = std::max(e, std::fabs(a[i] - b[i]));
  return e;
}

std::vector<SeqId> ids(std::size_t n) {
  std::vector<SeqId> v;
  for (std::size_t i = 0; i < n; ++i) v.push_back(SeqId(i));
  return v;
}

// A filled paged cache as one ragged batch: every sequence, new_tokens[b]
// new queries at the end of sequence b (rows qo[b] .. qo[b + 1] - 1).
template <typename Q>
struct Ragged {
  Filled<Paged<0>, Q> f;
  PagedKVTables t;
  PagedKVView<Q> view;
  std::vector<std::int32_t> qo;
  Ragged(const KVCacheConfig& c, const std::vector<std::int64_t>& lengths, const std::vector<std::int32_t>& new_tokens,
         unsigned seed)
      : f(c, lengths, seed), t(f.cache.tables(ids(lengths.size()))), view(f.cache.view(t, 0)), qo(1, 0) {
    for (auto n : new_tokens) qo.push_back(qo.back() + n);
  }
};

// Kernel vs reference: the stored values are the same, only the order and
// precision of summation differ, so one tolerance fits every format.
constexpr float kKernelTol = 2e-5f;

const Shape kShapes[] = {
    {8, 2, 16, 16},    // GQA 4:1
    {4, 4, 8, 1},      // MHA, head size 8 (stories260K), one token per block
    {6, 1, 24, 4},     // MQA, 6 heads on one KV head, head size 24
    {10, 2, 128, 8},   // 5 query heads per KV head (4 + 1 in the kernel)
    {8, 4, 8, 16},     // stories260K: 2 query heads per KV head of 8 (scores 4 keys x 2 heads at a time)
    {8, 4, 16, 16},    // tinystories-656k: head size 16
    {12, 12, 64, 16},  // the 110M shape: 16-wide registers, 4 per head
    {8, 2, 64, 16},    // GQA 4:1 at head size 64
    {6, 2, 72, 8},     // head size 72: a multiple of 8, not of 16 (the AVX2 kernel at avx512)
    {48, 24, 16, 16},  // the inflated 110M stand-in: 2 query heads per KV head of 16 (keys across the lanes)
    {6, 6, 32, 16},    // MHA, head size 32: two registers a head at avx512
};

}  // namespace

TEMPLATE_TEST_CASE("decode attention matches the scalar reference", "[attention]", F32, F16, BF16, Int8, Int4,
                   FP8E4M3, FP8E5M2) {
  const std::string ran = testing::at_every_cpu_level([&](cpu::CpuLevel) {
    for (const Shape& s : kShapes) {
      const std::int64_t bs = s.block_size;
      const std::vector<std::int64_t> lengths = {1, bs > 1 ? bs - 1 : 2, bs, bs + 1, 300, 7};
      Filled<Paged<0>, TestType> f(config(s, 600), lengths, 11);
      const auto t = f.cache.tables(ids(lengths.size()));
      const auto view = f.cache.view(t, 0);
      const auto q = random_q(lengths.size() * std::size_t(s.n_q_heads * s.head_dim), 5);
      std::vector<float> want(q.size()), got(q.size());
      cpu::reference::decode_attention(view, q.data(), want.data(), s.n_q_heads);
      INFO("heads " << s.n_q_heads << "/" << s.n_kv_heads << " d " << s.head_dim << " block " << s.block_size);
      cpu::decode_attention(view, q.data(), got.data(), s.n_q_heads, 1);
      CHECK(max_abs_diff(want, got) <= kKernelTol);
      // Forced splits (flash-decoding) of odd size, merged exactly, 2 threads.
      for (std::int64_t split : {1, 7, 64}) {
        cpu::DecodePlanOptions opt;
        opt.split_tokens = split;
        cpu::decode_attention(view, q.data(), got.data(), s.n_q_heads, cpu::plan_decode(view, opt), 2);
        INFO("split " << split);
        CHECK(max_abs_diff(want, got) <= kKernelTol);
      }
    }
  });
  WARN("decode attention ran at cpu levels: " << ran);
}

TEST_CASE("decode attention: results do not depend on the thread count") {
  const Shape s{8, 2, 64, 16};
  Filled<Paged<0>, F16> f(config(s, 200), {900, 33, 1}, 3);
  const auto t = f.cache.tables(ids(3));
  const auto view = f.cache.view(t, 0);
  const auto q = random_q(3 * 8 * 64, 9);
  std::vector<float> one(q.size()), two(q.size());
  cpu::DecodePlanOptions opt;
  opt.split_tokens = 128;
  const auto plan = cpu::plan_decode(view, opt);
  testing::at_every_cpu_level([&](cpu::CpuLevel) {
    cpu::decode_attention(view, q.data(), one.data(), 8, plan, 1);
    cpu::decode_attention(view, q.data(), two.data(), 8, plan, 2);
    CHECK(one == two);
  });
}

TEST_CASE("decode plan: ranges cover every visible key once, in order") {
  cpu::DecodePlanOptions opt;
  opt.split_tokens = 100;
  const auto plan = cpu::plan_decode({250, 1, 100}, 3, 0, 0, opt);
  REQUIRE(plan.ranges == std::vector<std::int32_t>{3, 1, 1});
  REQUIRE(plan.items.size() == 3u * (3 + 1 + 1));
  for (std::int32_t h = 0; h < 3; ++h) {
    const auto* it = &plan.items[std::size_t(plan.first[0] + h * 3)];
    CHECK(it[0].begin == 0);
    CHECK(it[0].end == 100);
    CHECK(it[1].begin == 100);
    CHECK(it[2].end == 250);
    CHECK(it[2].kv_head == h);
  }
  // By default: chunks of kKeyChunk, the same for a lone sequence as in a
  // big batch (a sequence's ranges depend on its length alone).
  const auto lone = cpu::plan_decode({4096}, 1, 0, 0);
  CHECK(lone.ranges[0] == 4096 / cpu::kKeyChunk);
  const auto batch = cpu::plan_decode({4096, cpu::kKeyChunk + 44, 4096, 1}, 8, 0, 0);
  CHECK(batch.ranges == std::vector<std::int32_t>{lone.ranges[0], 2, lone.ranges[0], 1});
  CHECK(batch.items[std::size_t(batch.first[1])].end == cpu::kKeyChunk);
  // Window with sinks: the sinks are their own range, the gap is skipped.
  const auto win = cpu::plan_decode({1000}, 1, 64, 4);
  REQUIRE(win.items.size() == 2);
  CHECK(win.items[0].sink);
  CHECK(win.items[0].end == 4);
  CHECK(win.items[1].begin == 1000 - 64);
  CHECK_THROWS_AS(cpu::plan_decode({0}, 1, 0, 0), InvalidArgument);
  opt.split_tokens = 0;
  CHECK_THROWS_AS(cpu::plan_decode({10}, 1, 0, 0, opt), InvalidArgument);
}

TEST_CASE("merge_states equals one softmax over the union of the ranges") {
  std::mt19937 rng(2);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  const int n = 40, d = 8;
  std::vector<float> s(n), v(std::size_t(n * d));
  for (auto& x : s) x = nd(rng);
  for (auto& x : v) x = nd(rng);
  std::vector<double> want(d, 0.0);
  double mx = -1e30, sum = 0.0;
  for (float x : s) mx = std::max(mx, double(x));
  for (int i = 0; i < n; ++i) {
    const double w = std::exp(double(s[std::size_t(i)]) - mx);
    sum += w;
    for (int j = 0; j < d; ++j) want[std::size_t(j)] += w * v[std::size_t(i * d + j)];
  }
  // Three ranges (one empty) as partial states.
  const int cuts[] = {0, 13, 13, 40};
  std::vector<float> m(3), l(3), o(3 * d, 0.0f);
  for (int r = 0; r < 3; ++r) {
    m[std::size_t(r)] = -INFINITY;
    l[std::size_t(r)] = 0.0f;
    for (int i = cuts[r]; i < cuts[r + 1]; ++i) m[std::size_t(r)] = std::max(m[std::size_t(r)], s[std::size_t(i)]);
    for (int i = cuts[r]; i < cuts[r + 1]; ++i) {
      const float w = std::exp(s[std::size_t(i)] - m[std::size_t(r)]);
      l[std::size_t(r)] += w;
      for (int j = 0; j < d; ++j) o[std::size_t(r * d + j)] += w * v[std::size_t(i * d + j)];
    }
  }
  std::vector<float> out(d);
  cpu::merge_states(3, m.data(), l.data(), o.data(), d, d, out.data());
  for (int j = 0; j < d; ++j) CHECK(out[std::size_t(j)] == Approx(want[std::size_t(j)] / sum).epsilon(1e-5));
}

TEMPLATE_TEST_CASE("extend attention (causal) matches the reference and agrees with decode", "[attention]", F32,
                   F16, Int8, Int4, FP8E4M3) {
  testing::at_every_cpu_level([&](cpu::CpuLevel) {
    for (const Shape& s : kShapes) {
      const std::int64_t bs = s.block_size;
      const std::vector<std::int64_t> lengths = {1, bs + 1, 70, 23};
      const std::vector<std::int32_t> new_tokens = {1, std::int32_t(bs + 1), 17, 5};  // whole prompt or a chunk
      const Ragged<TestType> r(config(s, 300), lengths, new_tokens, 21);
      const auto& view = r.view;
      const auto& qo = r.qo;
      const auto q = random_q(std::size_t(qo.back() * s.n_q_heads * s.head_dim), 8);
      std::vector<float> want(q.size()), got(q.size());
      cpu::reference::paged_attention(view, q.data(), qo.data(), want.data(), s.n_q_heads);
      cpu::extend_attention(view, q.data(), qo.data(), got.data(), s.n_q_heads, 2);
      INFO("heads " << s.n_q_heads << "/" << s.n_kv_heads << " d " << s.head_dim << " block " << s.block_size);
      CHECK(max_abs_diff(want, got) <= kKernelTol);
      // The last new token of each sequence sees what a decode query sees.
      const std::size_t hd = std::size_t(s.n_q_heads * s.head_dim);
      std::vector<float> q_last, from_extend, from_decode(lengths.size() * hd);
      for (std::size_t b = 0; b < lengths.size(); ++b) {
        const std::size_t row = std::size_t(qo[b + 1] - 1) * hd;
        q_last.insert(q_last.end(), q.begin() + std::ptrdiff_t(row), q.begin() + std::ptrdiff_t(row + hd));
        from_extend.insert(from_extend.end(), got.begin() + std::ptrdiff_t(row), got.begin() + std::ptrdiff_t(row + hd));
      }
      cpu::decode_attention(view, q_last.data(), from_decode.data(), s.n_q_heads, 2);
      CHECK(max_abs_diff(from_extend, from_decode) <= kKernelTol);
    }
  });
  const Shape s = kShapes[0];
  Filled<Paged<0>, TestType> f(config(s, 10), {3}, 1);
  const auto t = f.cache.tables({0});
  const std::int32_t qo[] = {0, 4};  // 4 new tokens in a 3-token sequence
  std::vector<float> q(4 * 8 * 16), out(q.size());
  CHECK_THROWS_AS(cpu::extend_attention(f.cache.view(t, 0), q.data(), qo, out.data(), 8), InvalidArgument);
  CHECK_THROWS_AS(cpu::extend_attention(f.cache.view(t, 0), q.data(), qo, out.data(), 7), InvalidArgument);
}

TEMPLATE_TEST_CASE("custom-mask attention matches the reference, and a causal mask equals causal", "[attention]", F32,
                   BF16, Int8, FP8E5M2) {
  const Shape s{8, 2, 32, 4};
  const std::vector<std::int64_t> lengths = {9, 30, 5};
  const std::vector<std::int32_t> new_tokens = {4, 11, 5};
  const Ragged<TestType> r(config(s, 64), lengths, new_tokens, 4);
  const auto q = random_q(std::size_t(r.qo.back() * s.n_q_heads * s.head_dim), 6);
  // A token tree: each new token sees itself and a random subset of earlier new tokens.
  std::mt19937 rng(3);
  std::vector<std::uint8_t> tree, causal;
  for (auto n : new_tokens)
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        tree.push_back(std::uint8_t(j == i || (j < i && rng() % 2)));
        causal.push_back(std::uint8_t(j <= i));
      }
  std::vector<float> want(q.size()), got(q.size()), plain(q.size());
  const cpu::CustomMask tm{tree.data()}, cm{causal.data()};
  cpu::reference::paged_attention(r.view, q.data(), r.qo.data(), want.data(), s.n_q_heads, &tm);
  testing::at_every_cpu_level([&](cpu::CpuLevel) {
    cpu::extend_attention(r.view, q.data(), r.qo.data(), got.data(), s.n_q_heads, 2, &tm);
    CHECK(max_abs_diff(want, got) <= kKernelTol);
    cpu::extend_attention(r.view, q.data(), r.qo.data(), got.data(), s.n_q_heads, 1, &cm);
    cpu::extend_attention(r.view, q.data(), r.qo.data(), plain.data(), s.n_q_heads, 1);
    // Bit for bit: a pass holding one token tree masks every sequence in it,
    // so a causal sequence must not change bits when it goes the masked way.
    CHECK(plain == got);
    // The tree mask really matters: it differs from causal.
    CHECK(max_abs_diff(want, plain) > 1e-3f);
  });
}

namespace {

// RoPE at a position, in double, on a copy.
std::vector<float> rotated(const float* x, int d, std::int64_t pos, const RopeSpec& rope) {
  std::vector<float> v(x, x + d);
  cpu::rope_rotate(v.data(), d, pos, rope);
  return v;
}

// StreamingLLM attention from raw (un-rotated) q and keys: the cache holds
// the sinks at positions 0..S-1 and the window right after them; the query
// takes the last cache position. Keys and query are rotated here.
std::vector<float> streaming_reference(const std::vector<float>& raw_k, const std::vector<float>& raw_v,
                                       const float* q_raw, std::int64_t pos, int n_q, int n_kv, int d, int window,
                                       int sinks, const RopeSpec& rope) {
  std::vector<std::int64_t> kept;
  for (std::int64_t p = 0; p <= pos; ++p)
    if (p < sinks || p > pos - window) kept.push_back(p);
  const std::int64_t q_pos = std::int64_t(kept.size()) - 1;
  const int group = n_q / n_kv;
  std::vector<float> out(std::size_t(n_q * d), 0.0f);
  for (int hq = 0; hq < n_q; ++hq) {
    const int h = hq / group;
    const auto qv = rotated(q_raw + hq * d, d, q_pos, rope);
    std::vector<double> sc;
    double mx = -1e300;
    for (std::size_t c = 0; c < kept.size(); ++c) {
      const auto kv = rotated(raw_k.data() + (kept[c] * n_kv + h) * d, d, std::int64_t(c), rope);
      double s = 0.0;
      for (int j = 0; j < d; ++j) s += double(qv[std::size_t(j)]) * kv[std::size_t(j)];
      sc.push_back(s / std::sqrt(double(d)));
      mx = std::max(mx, sc.back());
    }
    double sum = 0.0;
    std::vector<double> acc(std::size_t(d), 0.0);
    for (std::size_t c = 0; c < kept.size(); ++c) {
      const double w = std::exp(sc[c] - mx);
      sum += w;
      for (int j = 0; j < d; ++j) acc[std::size_t(j)] += w * raw_v[std::size_t((kept[c] * n_kv + h) * d + j)];
    }
    for (int j = 0; j < d; ++j) out[std::size_t(hq * d + j)] = float(acc[std::size_t(j)] / sum);
  }
  return out;
}

}  // namespace

TEST_CASE("sliding window with sinks equals StreamingLLM attention with renumbered positions") {
  testing::at_every_cpu_level([&](cpu::CpuLevel) {
    for (bool half_split : {false, true}) {
      const int n_q = 4, n_kv = 2, d = 16, window = 11, sinks = 3;
      KVCacheConfig c;
      c.n_layers = 1;
      c.n_kv_heads = n_kv;
      c.head_dim = d;
      c.block_size = 4;
      c.num_blocks = 24;
      c.window = window;
      c.sinks = sinks;
      c.rope = RopeSpec{10000.0f, half_split};
      KVCache<SlidingWindow<0, 0, 0>, F32> cache(c);
      REQUIRE(cache.add_sequence(0));
      std::mt19937 rng(5);
      std::normal_distribution<float> nd(0.0f, 1.0f);
      std::vector<float> raw_k, raw_v;
      float worst = 0.0f, worst_extend = 0.0f;
      for (std::int64_t pos = 0; pos < 120; ++pos) {
        // The model stores keys rotated at their true position.
        std::vector<float> k(std::size_t(n_kv * d)), v(k.size()), q(std::size_t(n_q * d));
        for (auto& x : k) x = nd(rng);
        for (auto& x : v) x = nd(rng);
        for (auto& x : q) x = nd(rng);
        raw_k.insert(raw_k.end(), k.begin(), k.end());
        raw_v.insert(raw_v.end(), v.begin(), v.end());
        std::vector<float> k_stored;
        for (int h = 0; h < n_kv; ++h) {
          const auto r = rotated(k.data() + h * d, d, pos, c.rope);
          k_stored.insert(k_stored.end(), r.begin(), r.end());
        }
        std::vector<float> q_rot;
        for (int h = 0; h < n_q; ++h) {
          const auto r = rotated(q.data() + h * d, d, pos, c.rope);
          q_rot.insert(q_rot.end(), r.begin(), r.end());
        }
        REQUIRE(cache.extend(0, 1));
        cache.append(0, 0, k_stored.data(), v.data(), 1);
        const auto t = cache.tables({0});
        const auto view = cache.view(t, 0);
        std::vector<float> got(q.size()), ext(q.size()), ref(q.size());
        cpu::decode_attention(view, q_rot.data(), got.data(), n_q, 1);
        const std::int32_t qo[] = {0, 1};
        cpu::extend_attention(view, q_rot.data(), qo, ext.data(), n_q, 1);
        cpu::reference::decode_attention(view, q_rot.data(), ref.data(), n_q);
        const auto want = streaming_reference(raw_k, raw_v, q.data(), pos, n_q, n_kv, d, window, sinks, c.rope);
        worst = std::max(worst, max_abs_diff(want, got));
        worst_extend = std::max(worst_extend, max_abs_diff(want, ext));
        REQUIRE(max_abs_diff(ref, got) <= kKernelTol);
      }
      INFO("half_split " << half_split);
      CHECK(worst <= 1e-4f);
      CHECK(worst_extend <= 1e-4f);
      CHECK(cache.stats().used <= 6);  // sinks + window, not 120 tokens
    }
  });
}

TEST_CASE("sliding window: a chunk of new queries each sees its own window") {
  const Shape s{4, 2, 16, 4};
  KVCacheConfig c = config(s, 64);
  c.window = 9;
  c.sinks = 2;
  Filled<SlidingWindow<0, 0, 0>, Int8> f(c, {40, 13}, 12);
  const auto t = f.cache.tables(ids(2));
  const auto view = f.cache.view(t, 0);
  const std::int32_t qo[] = {0, 12, 17};
  const auto q = random_q(17 * 4 * 16, 1);
  std::vector<float> want(q.size()), got(q.size());
  cpu::reference::paged_attention(view, q.data(), qo, want.data(), 4);
  testing::at_every_cpu_level([&](cpu::CpuLevel) {
    cpu::extend_attention(view, q.data(), qo, got.data(), 4, 2);
    CHECK(max_abs_diff(want, got) <= kKernelTol);
  });
}

namespace {

// Attention of the decode query straight from the f32 inputs: what the
// quantization error is measured against.
template <typename Q>
float quantization_error(unsigned seed) {
  const Shape s{8, 2, 64, 16};
  const std::vector<std::int64_t> lengths = {1, 17, 200};
  Filled<Paged<0>, Q> f(config(s, 64), lengths, seed);
  KVCacheConfig c32 = config(s, 64);
  Filled<Paged<0>, F32> exact(c32, lengths, seed);  // same seed: same inputs
  const auto q = random_q(3 * 8 * 64, seed + 1);
  std::vector<float> want(q.size()), got(q.size());
  const auto t = f.cache.tables(ids(3));
  const auto te = exact.cache.tables(ids(3));
  cpu::decode_attention(exact.cache.view(te, 0), q.data(), want.data(), 8, 1);
  cpu::decode_attention(f.cache.view(t, 0), q.data(), got.data(), 8, 1);
  return max_abs_diff(want, got);
}

}  // namespace

// Tolerances per format vs unquantized attention (inputs N(0,1), V offset
// 0.5, head size 64, 1 to 200 keys; measured 8e-4, 5e-3, 1.1e-2, 0.10, 0.20,
// 0.18): a measure of what each format costs. A 1-key sequence outputs its V
// row, so the bound is about the per-element error of the format at |v| ~ 3.
TEST_CASE("quantized KV stays within its per-format tolerance of f32 attention") {
  CHECK(quantization_error<F32>(3) == 0.0f);
  CHECK(quantization_error<F16>(3) <= 2e-3f);
  CHECK(quantization_error<BF16>(3) <= 2e-2f);
  CHECK(quantization_error<Int8>(3) <= 3e-2f);
  CHECK(quantization_error<FP8E4M3>(3) <= 1.5e-1f);
  CHECK(quantization_error<FP8E5M2>(3) <= 3e-1f);
  CHECK(quantization_error<Int4>(3) <= 3e-1f);
  // And the order of the formats is the expected one.
  CHECK(quantization_error<F16>(4) < quantization_error<Int8>(4));
  CHECK(quantization_error<Int8>(4) < quantization_error<Int4>(4));
  CHECK(quantization_error<FP8E4M3>(4) < quantization_error<FP8E5M2>(4));
}

TEST_CASE("decode attention refuses a plan made for other lengths") {
  const Shape s{4, 2, 16, 4};
  Filled<Paged<0>, F32> f(config(s, 64), {30, 5}, 2);
  const auto t = f.cache.tables(ids(2));
  const auto view = f.cache.view(t, 0);
  const auto stale = cpu::plan_decode({30, 9}, 2, 0, 0);
  std::vector<float> q(2 * 4 * 16), out(q.size());
  CHECK_THROWS_AS(cpu::decode_attention(view, q.data(), out.data(), 4, stale, 1), InvalidArgument);
  const auto other_heads = cpu::plan_decode({30, 5}, 1, 0, 0);
  CHECK_THROWS_AS(cpu::decode_attention(view, q.data(), out.data(), 4, other_heads, 1), InvalidArgument);
}

TEST_CASE("attention at each CPU level runs the kernel set attention_kernel_isa names") {
  using cpu::CpuLevel;
  CHECK(std::string(cpu::attention_kernel_isa(CpuLevel::scalar, 64)) == "reference");
#if FASTINFER_CPU_DISPATCH
  CHECK(std::string(cpu::attention_kernel_isa(CpuLevel::avx2, 64)) == "avx2");
  CHECK(std::string(cpu::attention_kernel_isa(CpuLevel::avx512, 64)) == "avx512");
  CHECK(std::string(cpu::attention_kernel_isa(CpuLevel::avx512, 72)) == "avx2");
  CHECK(std::string(cpu::attention_kernel_isa(CpuLevel::avx512, 8)) == "avx2");
  // One query of extend_attention (150 keys: one chunk) is load_query,
  // attend_range, merge_states of that one partial: the same steps through a
  // named kernel set give the same bits, so the level really chose that set.
  for (const Shape& s : {Shape{8, 2, 64, 16}, Shape{6, 2, 72, 8}, Shape{8, 4, 8, 16}}) {
    Filled<Paged<0>, F16> f(config(s, 64), {150}, 7);
    const auto t = f.cache.tables({0});
    const auto view = f.cache.view(t, 0);
    const auto q = random_q(std::size_t(s.n_q_heads * s.head_dim), 2);
    const int G = s.n_q_heads / s.n_kv_heads, d = s.head_dim;
    const float scale = 1.0f / std::sqrt(float(d));
    const std::int32_t qo[] = {0, 1};
    for (CpuLevel level : cpu::supported_cpu_levels()) {
      if (level == CpuLevel::scalar) continue;
      cpu::CpuLevelScope scope(level);
      const auto kernel = cpu::attention_kernel(level, d);
      INFO("level " << cpu::cpu_level_name(level) << " d " << d << " kernel " << cpu::attention_kernel_isa(level, d));
      std::vector<float> got(q.size()), want(q.size()), qs(std::size_t(G * d));
      cpu::extend_attention(view, q.data(), qo, got.data(), s.n_q_heads, 1);
      for (int h = 0; h < s.n_kv_heads; ++h) {
        cpu::attention_detail::State st;
        st.reset(G, d);
        cpu::attention_detail::load_query(q.data() + h * G * d, G, d, scale, 0, view.rope, qs.data());
        const auto all = cpu::attention_detail::causal_rows(149);
        if (kernel == cpu::AttentionKernel::avx512)
          cpu::avx512::attention::attend_range(view, 0, h, qs.data(), G, 1, 0, 150, all, st);
        else
          cpu::avx2::attention::attend_range(view, 0, h, qs.data(), G, 1, 0, 150, all, st);
        for (int g = 0; g < G; ++g)
          cpu::merge_states(1, &st.m[std::size_t(g)], &st.l[std::size_t(g)], st.o.data() + g * d, d, d,
                            want.data() + (h * G + g) * d);
      }
      CHECK(std::memcmp(got.data(), want.data(), sizeof(float) * got.size()) == 0);
    }
  }
#endif
}

TEMPLATE_TEST_CASE("a query's attention is bit-identical alone or beside other sequences and queries", "[attention]",
                   F32, BF16, Int8, Int4) {
  // What the model's batch invariance rests on: at a given level, nothing in
  // a query's sums depends on the rest of the pass (decode: with a plan of
  // fixed splits, as a plan that adapts its splits to the batch merges other
  // ranges).
  const Shape s{8, 2, 64, 16};
  const std::vector<std::int64_t> lengths = {40, 9, 130};
  const std::vector<std::int32_t> new_tokens = {5, 1, 7};
  const Ragged<TestType> r(config(s, 64), lengths, new_tokens, 31);
  const std::size_t hd = std::size_t(s.n_q_heads * s.head_dim);
  const auto q = random_q(std::size_t(r.qo.back()) * hd, 17);
  const std::string ran = testing::at_every_cpu_level([&](cpu::CpuLevel) {
    std::vector<float> all(q.size());
    cpu::extend_attention(r.view, q.data(), r.qo.data(), all.data(), s.n_q_heads, 2);
    std::vector<float> q_last, dec_all;
    cpu::DecodePlanOptions opt;
    opt.split_tokens = 48;
    for (std::size_t b = 0; b < 3; ++b) {
      const auto tb = r.f.cache.tables({SeqId(b)});
      const auto vb = r.f.cache.view(tb, 0);
      const float* qb = q.data() + std::size_t(r.qo[b]) * hd;
      const float* want = all.data() + std::size_t(r.qo[b]) * hd;
      // The sequence alone, all its new tokens.
      std::vector<float> alone(std::size_t(new_tokens[b]) * hd);
      const std::int32_t qo1[] = {0, new_tokens[b]};
      cpu::extend_attention(vb, qb, qo1, alone.data(), s.n_q_heads, 1);
      CHECK(std::memcmp(alone.data(), want, sizeof(float) * alone.size()) == 0);
      // Its last query alone.
      const std::int32_t qo_last[] = {0, 1};
      std::vector<float> one(hd);
      const std::size_t last = std::size_t(new_tokens[b] - 1) * hd;
      cpu::extend_attention(vb, qb + last, qo_last, one.data(), s.n_q_heads, 1);
      CHECK(std::memcmp(one.data(), want + last, sizeof(float) * hd) == 0);
      // Decode of the sequence alone against the batch's decode, below.
      std::vector<float> dec(hd);
      cpu::decode_attention(vb, qb + last, dec.data(), s.n_q_heads, cpu::plan_decode(vb, opt), 1);
      dec_all.insert(dec_all.end(), dec.begin(), dec.end());
      q_last.insert(q_last.end(), qb + last, qb + last + hd);
    }
    std::vector<float> dec_batch(3 * hd);
    cpu::decode_attention(r.view, q_last.data(), dec_batch.data(), s.n_q_heads, cpu::plan_decode(r.view, opt), 2);
    CHECK(std::memcmp(dec_batch.data(), dec_all.data(), sizeof(float) * dec_batch.size()) == 0);
  });
  WARN("batch invariance checked at cpu levels: " << ran);
}

namespace {

// Bit-for-bit: a and b hold the same floats.
bool same_bits(const float* a, const float* b, std::size_t n) { return std::memcmp(a, b, sizeof(float) * n) == 0; }

// One query, every path: decode (the whole batch, 2 threads; the sequence
// alone), a one-query extend, the last row of a causal extend over the last
// new_tokens[b] tokens, the same under a lower-triangular tree mask, and
// the causal extend in query blocks of 1, 3 and 7: all the same bits. The
// causal extend's other rows must not depend on the block either.
template <typename Q, typename Layout>
void check_one_summation_order(Filled<Layout, Q>& f, int n_q_heads, const std::vector<std::int64_t>& lengths,
                               const std::vector<std::int32_t>& new_tokens, unsigned seed) {
  const auto t = f.cache.tables(ids(lengths.size()));
  const auto view = f.cache.view(t, 0);
  const std::size_t B = lengths.size(), hd = std::size_t(n_q_heads) * std::size_t(view.head_dim);
  std::vector<std::int32_t> qo{0}, qo_one{0};
  for (auto n : new_tokens) qo.push_back(qo.back() + n), qo_one.push_back(qo_one.back() + 1);
  const auto q = random_q(std::size_t(qo.back()) * hd, seed + 1);
  std::vector<float> causal(q.size()), tree(q.size()), blocked(q.size());
  cpu::extend_attention(view, q.data(), qo.data(), causal.data(), n_q_heads, 2);
  std::vector<std::uint8_t> mask;
  for (auto n : new_tokens)
    for (std::int32_t i = 0; i < n; ++i)
      for (std::int32_t j = 0; j < n; ++j) mask.push_back(j <= i);
  const cpu::CustomMask m{mask.data()};
  cpu::extend_attention(view, q.data(), qo.data(), tree.data(), n_q_heads, 2, &m);
  CHECK(same_bits(tree.data(), causal.data(), q.size()));
  // (The scalar level's extend is the reference, which has no blocks.)
  for (int block : cpu::cpu_level() == cpu::CpuLevel::scalar ? std::vector<int>{} : std::vector<int>{1, 3, 7}) {
    INFO("query block " << block);
    cpu::attention_detail::extend_blocked(view, q.data(), qo.data(), blocked.data(), n_q_heads, 1, nullptr, 0.0f,
                                          block);
    CHECK(same_bits(blocked.data(), causal.data(), q.size()));
  }
  std::vector<float> q_last;
  for (std::size_t b = 0; b < B; ++b) {
    const float* row = q.data() + std::size_t(qo[b + 1] - 1) * hd;
    q_last.insert(q_last.end(), row, row + hd);
  }
  std::vector<float> dec(B * hd), one(B * hd);
  cpu::decode_attention(view, q_last.data(), dec.data(), n_q_heads, 2);
  cpu::extend_attention(view, q_last.data(), qo_one.data(), one.data(), n_q_heads, 1);
  for (std::size_t b = 0; b < B; ++b) {
    INFO("sequence " << b << " of length " << lengths[b]);
    const float* last = causal.data() + std::size_t(qo[b + 1] - 1) * hd;
    CHECK(same_bits(dec.data() + b * hd, last, hd));
    CHECK(same_bits(one.data() + b * hd, last, hd));
    const auto tb = f.cache.tables({SeqId(b)});
    std::vector<float> alone(hd);
    cpu::decode_attention(f.cache.view(tb, 0), q_last.data() + b * hd, alone.data(), n_q_heads, 1);
    CHECK(same_bits(alone.data(), last, hd));
  }
}

}  // namespace

TEMPLATE_TEST_CASE("decode, a one-query extend and the last row of a causal extend give a query the same bits",
                   "[attention]", F32, F16, BF16, Int8, Int4, FP8E4M3, FP8E5M2) {
  // Lengths around the split-K chunk (kKeyChunk = 512 keys) and past two of
  // them; a whole prompt and chunks of new tokens, one across a chunk's end
  // (positions 511 and 512).
  static_assert(cpu::kKeyChunk == 512, "the lengths below straddle the chunk");
  const std::vector<std::int64_t> lengths = {1, 511, 512, 513, 1030, 70};
  const std::vector<std::int32_t> new_tokens = {1, 20, 3, 2, 24, 70};
  // The scalar level is the reference for every path: two shapes suffice.
  // Caches are filled once, outside the levels.
  // MHA at head sizes 16 and 32: decode scores one head with the lane
  // reductions, a block of queries scores several with the keys across the
  // lanes (score_keys_across), and both must give the same bits.
  const Shape shapes[] = {{12, 12, 64, 16}, {8, 4, 8, 16},  {8, 2, 64, 16}, {6, 2, 72, 8},
                          {10, 2, 128, 8},  {4, 4, 16, 16}, {6, 6, 32, 16}};
  std::string ran;
  for (std::size_t i = 0; i < std::size(shapes); ++i) {
    const Shape& s = shapes[i];
    INFO("heads " << s.n_q_heads << "/" << s.n_kv_heads << " d " << s.head_dim);
    Filled<Paged<0>, TestType> f(config(s, 400), lengths, 41);
    ran = testing::at_every_cpu_level([&](cpu::CpuLevel level) {
      if (level != cpu::CpuLevel::scalar || i < 2) check_one_summation_order(f, s.n_q_heads, lengths, new_tokens, 41);
    });
  }
  // A sliding window with sinks: the sinks are a chunk of their own, the
  // window is cut from its first key.
  KVCacheConfig c = config({8, 2, 64, 16}, 120);
  c.window = 600;
  c.sinks = 4;
  Filled<SlidingWindow<0, 0, 0>, TestType> w(c, {700, 40}, 43);
  testing::at_every_cpu_level([&](cpu::CpuLevel) { check_one_summation_order(w, 8, {700, 40}, {30, 40}, 43); });
  WARN("one summation order checked at cpu levels: " << ran);
}
