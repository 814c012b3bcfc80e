#include <catch2/catch.hpp>

#include <map>
#include <random>
#include <vector>

#include "fastinfer/kv/kv_cache.hpp"

using namespace fastinfer;
using namespace fastinfer::kv;

namespace {

KVCacheConfig small_config(int block_size = 4) {
  KVCacheConfig c;
  c.n_layers = 3;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.num_blocks = 64;
  c.block_size = block_size;
  c.max_seq_len = 64;
  return c;
}

// K and V of n tokens of one layer, distinct per (seq, layer, token).
struct Tokens {
  std::vector<float> k, v;
};
Tokens make_tokens(const KVCacheConfig& c, std::int64_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Tokens t;
  t.k.resize(std::size_t(n * c.n_kv_heads * c.head_dim));
  t.v.resize(t.k.size());
  for (auto& x : t.k) x = nd(rng);
  for (auto& x : t.v) x = nd(rng);
  return t;
}

// What the scalar reference makes of one row: the expected read-back.
template <typename Q>
std::vector<float> stored(const float* x, int d) {
  std::vector<std::uint8_t> codes(QuantTraits<Q>::code_bytes(d));
  std::vector<float> params(std::size_t(QuantTraits<Q>::params_per_row(d)) + 1);
  QuantTraits<Q>::encode(x, d, codes.data(), params.data());
  std::vector<float> y(static_cast<std::size_t>(d));
  decode_row<Q>(codes.data(), params.data(), d, y.data());
  return y;
}

// A model of what each sequence holds: per layer, per position, the f32 K/V.
using Content = std::vector<std::vector<std::vector<float>>>;  // [layer][pos] -> k then v (2 * kv_dim)

template <typename Cache>
void append_tokens(Cache& cache, SeqId s, std::int64_t n, unsigned seed, Content& content) {
  const auto& c = cache.config();
  REQUIRE(cache.extend(s, n));
  content.resize(std::size_t(c.n_layers));
  const std::size_t kvd = std::size_t(c.n_kv_heads * c.head_dim);
  for (int l = 0; l < c.n_layers; ++l) {
    const Tokens t = make_tokens(c, n, seed * 131u + unsigned(l));
    cache.append(l, s, t.k.data(), t.v.data(), n);
    for (std::int64_t i = 0; i < n; ++i) {
      std::vector<float> row(t.k.begin() + i * kvd, t.k.begin() + (i + 1) * kvd);
      row.insert(row.end(), t.v.begin() + i * kvd, t.v.begin() + (i + 1) * kvd);
      content[std::size_t(l)].push_back(row);
    }
  }
}

// Reads every live position back twice, through read() and through a view,
// and compares with the scalar reference of the format.
template <typename Cache>
void check_content(const Cache& cache, SeqId s, const Content& content, std::int64_t from = 0) {
  using Q = typename Cache::QuantType;
  const auto& c = cache.config();
  const int d = c.head_dim;
  const std::size_t kvd = std::size_t(c.n_kv_heads * d);
  REQUIRE(cache.length(s) == std::int64_t(content[0].size()));
  const PagedKVTables t = cache.tables({s});
  std::vector<float> k(kvd), v(kvd), row(static_cast<std::size_t>(d));
  for (int l = 0; l < c.n_layers; ++l) {
    const auto view = cache.view(t, l);
    REQUIRE(view.length(0) == cache.length(s));
    for (std::int64_t p = from; p < cache.length(s); ++p) {
      cache.read(l, s, p, k.data(), v.data());
      const auto& want = content[std::size_t(l)][std::size_t(p)];
      const BlockId b = view.block(0, p / view.block_size);
      for (int h = 0; h < c.n_kv_heads; ++h) {
        const auto ek = stored<Q>(want.data() + h * d, d);
        const auto ev = stored<Q>(want.data() + kvd + std::size_t(h * d), d);
        decode_row<Q>(view.k_row(b, h, p % view.block_size), view.k_param(b, h, p % view.block_size), d, row.data());
        for (int j = 0; j < d; ++j) {
          REQUIRE(k[std::size_t(h * d + j)] == ek[std::size_t(j)]);
          REQUIRE(row[std::size_t(j)] == ek[std::size_t(j)]);
          REQUIRE(v[std::size_t(h * d + j)] == ev[std::size_t(j)]);
        }
        decode_row<Q>(view.v_row(b, h, p % view.block_size), view.v_param(b, h, p % view.block_size), d, row.data());
        for (int j = 0; j < d; ++j) REQUIRE(row[std::size_t(j)] == ev[std::size_t(j)]);
      }
    }
  }
}

}  // namespace

TEMPLATE_PRODUCT_TEST_CASE("KVCache: appended tokens read back as the format stores them, in every layer",
                           "[kv]", (KVCache), ((Paged<4>, F32), (Paged<1>, Int8), (Paged<0>, F16),
                                              (Contiguous, Int4), (Paged<16>, FP8E4M3), (Contiguous, BF16),
                                              (Paged<4>, FP8E5M2))) {
  TestType cache(small_config(8));
  Content a, b;
  cache.add_sequence(10);
  cache.add_sequence(11);
  append_tokens(cache, 10, 5, 1, a);
  append_tokens(cache, 11, 1, 2, b);
  append_tokens(cache, 10, 1, 3, a);  // one token at a time (decode)
  append_tokens(cache, 10, 9, 4, a);  // several (prefill chunk)
  append_tokens(cache, 11, 17, 5, b);
  check_content(cache, 10, a);
  check_content(cache, 11, b);
  cache.allocator().check_invariants();

  // Rollback, then new tokens land where the rejected ones were.
  cache.truncate(10, 6);
  for (auto& layer : a) layer.resize(6);
  append_tokens(cache, 10, 3, 6, a);
  check_content(cache, 10, a);
  cache.free_sequence(10);
  cache.free_sequence(11);
  CHECK(cache.stats().used == 0);
}

TEMPLATE_TEST_CASE("KVCache: a fork shares the prefix and copies the partial block before writing", "[kv]",
                   Paged<4>, Contiguous) {
  KVCache<TestType, Int8> cache(small_config());
  Content a;
  cache.add_sequence(1);
  append_tokens(cache, 1, 6, 1, a);  // a partial last block in both layouts
  cache.fork(1, 2);
  Content b = a;
  CHECK(cache.stats().shared >= 1);
  append_tokens(cache, 2, 3, 2, b);  // copy-on-write of the shared block
  append_tokens(cache, 1, 2, 3, a);  // the parent writes its own tokens at the same positions
  check_content(cache, 1, a);
  check_content(cache, 2, b);
  cache.allocator().check_invariants();
  // Rewriting a position inside a shared block is refused, not corrupting.
  cache.fork(2, 3);
  const Tokens t = make_tokens(cache.config(), 1, 9);
  CHECK_THROWS_AS(cache.write(0, 3, 0, t.k.data(), t.v.data(), 1), UsageError);
  check_content(cache, 2, b);
}

TEST_CASE("KVCache: misuse is an error that names the value and changes nothing") {
  CHECK_THROWS_AS((KVCache<Paged<0>, F32>(KVCacheConfig{})), InvalidArgument);
  KVCacheConfig bad = small_config();
  bad.head_dim = 12;
  CHECK_THROWS_WITH((KVCache<Paged<0>, F32>(bad)), Catch::Contains("12"));
  bad = small_config(6);
  CHECK_THROWS_AS((KVCache<Paged<0>, F32>(bad)), InvalidArgument);
  bad = small_config();
  bad.max_seq_len = 0;
  CHECK_THROWS_AS((KVCache<Contiguous, F32>(bad)), InvalidArgument);

  KVCache<Paged<4>, F16> cache(small_config());
  Content a;
  cache.add_sequence(1);
  append_tokens(cache, 1, 5, 1, a);
  CHECK_THROWS_AS(cache.extend(1, 60), UsageError);  // past max_seq_len 64
  CHECK_THROWS_AS(cache.extend(9, 1), UsageError);   // unknown sequence
  const Tokens t = make_tokens(cache.config(), 2, 3);
  CHECK_THROWS_AS(cache.write(3, 1, 0, t.k.data(), t.v.data(), 1), InvalidArgument);  // layer 3 of 3
  CHECK_THROWS_AS(cache.write(0, 1, 4, t.k.data(), t.v.data(), 2), InvalidArgument);  // past the length
  CHECK_THROWS_AS(cache.append(0, 1, t.k.data(), t.v.data(), 6), InvalidArgument);
  check_content(cache, 1, a);
  CHECK(cache.length(1) == 5);
  cache.allocator().check_invariants();
}

TEST_CASE("KVCache: when the pool runs short extend answers false and changes nothing") {
  KVCacheConfig c = small_config();
  c.num_blocks = 3;
  KVCache<Paged<4>, F32> cache(c);
  Content a;
  cache.add_sequence(1);
  cache.add_sequence(2);
  append_tokens(cache, 1, 9, 1, a);
  CHECK(!cache.extend(2, 5));
  CHECK(cache.length(2) == 0);
  CHECK(!cache.extend_all({{1, 3}, {2, 4}}));  // 1 + 1 > 0 free
  CHECK(cache.length(1) == 9);
  CHECK(cache.extend_all({{1, 3}, {2, 0}}));
  CHECK(cache.length(1) == 12);
  cache.truncate(1, 9);
  check_content(cache, 1, a, 0);

  KVCacheConfig cc = small_config();
  cc.num_blocks = 2;  // two sequences of max length
  KVCache<Contiguous, F32> contiguous(cc);
  CHECK(contiguous.block_size() == 64);
  CHECK(contiguous.add_sequence(1));
  CHECK(contiguous.add_sequence(2));
  CHECK(!contiguous.add_sequence(3));
  CHECK(!contiguous.contains(3));
  CHECK(contiguous.stats().free == 0);
}

TEST_CASE("KVCache: bytes per token count every layer, K and V, and the parameters") {
  KVCacheConfig c = small_config();
  CHECK(KVCache<Paged<4>, F32>(c).bytes_per_token() == 3u * 2u * 2u * 64u);
  CHECK(KVCache<Paged<4>, Int8>(c).bytes_per_token() == 3u * 2u * 2u * (16u + 4u));
  CHECK(KVCache<Paged<4>, Int4>(c).bytes_per_token() == 3u * 2u * 2u * (8u + 8u));
  CHECK(KVCache<Paged<4>, F16>(c).bytes_per_block() == 4u * 3u * 2u * 2u * 32u);
}

TEST_CASE("KVCache: the sliding window releases whole blocks between sinks and window") {
  KVCacheConfig c = small_config(4);
  c.window = 10;
  c.sinks = 3;
  c.max_seq_len = 0;
  c.num_blocks = 14;  // far fewer than a 200-token sequence needs
  KVCache<SlidingWindow<0, 0, 0>, F32> cache(c);  // all sizes from the config
  REQUIRE(cache.block_size() == 4);
  Content a;
  cache.add_sequence(1);
  for (int step = 0; step < 200; ++step) {
    append_tokens(cache, 1, 1, unsigned(step), a);
    // At most: the sink block, the window (3 blocks) and two partial edges.
    CHECK(cache.stats().used <= 1 + 3 + 2);
    cache.allocator().check_invariants();
  }
  const std::int64_t len = cache.length(1);
  const auto& table = cache.allocator().block_table(1);
  CHECK(table[0] != kNoBlock);                                      // the sinks stay
  CHECK(table[1] == kNoBlock);                                      // released
  CHECK(table[std::size_t((len - c.window) / 4)] != kNoBlock);  // the window stays
  // Every token a next query can see still reads back right.
  Content window_only = a;
  const auto t = cache.tables({1});
  const auto view = cache.view(t, 0);
  CHECK(view.window == 10);
  CHECK(view.sinks == 3);
  CHECK(view.sink_end(len) == 3);
  CHECK(view.window_begin(len) == len + 1 - 10);
  CHECK(view.sink_shift(len) == len + 1 - 13);
  check_content(cache, 1, a, len + 1 - c.window);
  std::vector<float> k(32), v(32);
  for (std::int64_t p = 0; p < 3; ++p) cache.read(0, 1, p, k.data(), v.data());
  CHECK_THROWS_AS(cache.read(0, 1, 5, k.data(), v.data()), UsageError);
  // Rolling back into released history is refused; a short rollback works.
  CHECK_THROWS_AS(cache.truncate(1, len - 12), UsageError);
  cache.truncate(1, len - 2);
  // A fork shares the window; later eviction in one never frees the other's.
  cache.fork(1, 2);
  for (auto& layer : a) layer.resize(std::size_t(len - 2));
  Content b = a;
  for (int step = 0; step < 20; ++step) {
    append_tokens(cache, 1, 1, 500u + unsigned(step), a);
    append_tokens(cache, 2, 1, 900u + unsigned(step), b);
  }
  check_content(cache, 1, a, cache.length(1) + 1 - c.window);
  check_content(cache, 2, b, cache.length(2) + 1 - c.window);
  cache.allocator().check_invariants();
}

TEST_CASE("KVCache: compile-time window and block size override the config") {
  KVCacheConfig c = small_config(2);
  KVCache<SlidingWindow<8, 2, 4>, F32> cache(c);
  CHECK(cache.block_size() == 4);
  CHECK(cache.config().window == 8);
  CHECK(cache.config().sinks == 2);
  CHECK(KVCache<Paged<8>, F32>(c).block_size() == 8);
  CHECK(cache.layout_name() == "window");
  CHECK(KVCache<Contiguous, Int4>::quant_name() == "int4");
}

namespace {

// Drives two caches through the same verbs (add, extend + append, fork,
// truncate, free) and checks after each step that both hold the same block
// tables, lengths and contents: the run-time layout must be the compile-time
// tag's code, not an approximation of it.
template <typename Static, typename Runtime>
void same_as_static_layout(Static& a, Runtime& b) {
  Content ca1, cb1, ca2, cb2;
  auto same = [&](SeqId s, const Content& content_a, const Content& content_b) {
    REQUIRE(a.length(s) == b.length(s));
    REQUIRE(a.allocator().block_table(s) == b.allocator().block_table(s));
    REQUIRE(content_a == content_b);
    // A window keeps (and check_content reads) only what the next query sees.
    const int w = a.config().window;
    const std::int64_t from = w > 0 ? std::max<std::int64_t>(0, a.length(s) + 1 - w) : 0;
    check_content(a, s, content_a, from);
    check_content(b, s, content_b, from);
  };
  REQUIRE(a.add_sequence(1) == b.add_sequence(1));
  for (int step = 0; step < 20; ++step) {  // 39 tokens: room for the fork's 20 under max_seq_len
    append_tokens(a, 1, 1 + step % 3, 40u + unsigned(step), ca1);
    append_tokens(b, 1, 1 + step % 3, 40u + unsigned(step), cb1);
    same(1, ca1, cb1);
  }
  a.fork(1, 2);
  b.fork(1, 2);
  ca2 = ca1;
  cb2 = cb1;
  for (int step = 0; step < 10; ++step) {
    append_tokens(a, 2, 2, 700u + unsigned(step), ca2);
    append_tokens(b, 2, 2, 700u + unsigned(step), cb2);
    same(2, ca2, cb2);
  }
  // Two back: as far as a window lets a draft be rolled back here.
  a.truncate(2, a.length(2) - 2);
  b.truncate(2, b.length(2) - 2);
  for (auto* c : {&ca2, &cb2})
    for (auto& layer : *c) layer.resize(layer.size() - 2);
  same(2, ca2, cb2);
  a.free_sequence(2);
  b.free_sequence(2);
  REQUIRE(a.stats().used == b.stats().used);
  a.allocator().check_invariants();
  b.allocator().check_invariants();
}

}  // namespace

// The compile-time layout Static against RuntimeLayout with c.layout = kind.
template <typename Static, typename Q>
void check_runtime_layout(KVCacheConfig c, KVLayoutKind kind) {
  KVCache<Static, Q> a(c);
  c.layout = kind;
  KVCache<RuntimeLayout, Q> b(c);
  CHECK(b.layout() == kind);
  CHECK(b.layout_name() == a.layout_name());
  CHECK(b.block_size() == a.block_size());  // contiguous: the whole max_seq_len
  same_as_static_layout(a, b);
}

TEST_CASE("KVCache: the run-time layout holds exactly what each compile-time layout holds") {
  KVCacheConfig contiguous = small_config(4);
  contiguous.num_blocks = 4;
  KVCacheConfig window = small_config(4);
  window.window = 10;
  window.sinks = 3;
  window.max_seq_len = 0;
  check_runtime_layout<Paged<0>, Int8>(small_config(4), KVLayoutKind::Paged);
  check_runtime_layout<Contiguous, F16>(contiguous, KVLayoutKind::Contiguous);
  check_runtime_layout<SlidingWindow<0, 0, 0>, F32>(window, KVLayoutKind::Window);
}

TEST_CASE("KVCache: a compile-time layout overrides the config's, a bad run-time one is refused by value") {
  KVCacheConfig c = small_config(4);
  c.layout = KVLayoutKind::Window;  // ignored by a compile-time tag
  CHECK(KVCache<Paged<0>, F32>(c).layout() == KVLayoutKind::Paged);
  c.layout = KVLayoutKind(7);
  CHECK_THROWS_WITH((KVCache<RuntimeLayout, F32>(c)), Catch::Contains("unknown layout 7"));
  c.layout = KVLayoutKind::Window;
  c.window = 0;
  CHECK_THROWS_WITH((KVCache<RuntimeLayout, F32>(c)), Catch::Contains("window > 0"));
}
