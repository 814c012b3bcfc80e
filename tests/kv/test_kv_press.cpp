#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "fastinfer/kv/kv_cache.hpp"
#include "fastinfer/kv/kv_press.hpp"

using namespace fastinfer;
using namespace fastinfer::kv;

namespace {

std::vector<float> normal(std::size_t n, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// The attention weight of every (query row, query head) on every visible key,
// written from the definition: softmax_p(q . k_p / sqrt(d)) for p <= slot.
std::vector<double> reference_scores(const std::vector<float>& q, std::int64_t rows, std::int64_t first,
                                     int heads, const std::vector<float>& k, std::int64_t n, int kv_heads, int d) {
  std::vector<double> out(std::size_t(kv_heads * n), 0.0);
  for (std::int64_t r = 0; r < rows; ++r)
    for (int hq = 0; hq < heads; ++hq) {
      const int h = hq / (heads / kv_heads);
      std::vector<double> e;
      for (std::int64_t p = 0; p <= first + r; ++p) {
        double s = 0;
        for (int j = 0; j < d; ++j)
          s += double(q[std::size_t((r * heads + hq) * d + j)]) * double(k[std::size_t((p * kv_heads + h) * d + j)]);
        e.push_back(std::exp(s / std::sqrt(double(d))));
      }
      double sum = 0;
      for (double x : e) sum += x;
      for (std::size_t p = 0; p < e.size(); ++p) out[std::size_t(h * n) + p] += e[p] / sum;
    }
  return out;
}

// Ascending positions a press keeps, from its definition (sets and full
// sorts, no partial_sort): the oracle for plan_compression.
std::vector<std::int64_t> reference_keep(const Press& press, const double* s, std::int64_t n, std::int64_t keep) {
  std::set<std::int64_t> kept;
  auto best = [&](const std::vector<double>& score, std::int64_t candidates, std::int64_t count) {
    std::vector<std::pair<double, std::int64_t>> order;
    for (std::int64_t p = 0; p < candidates; ++p) order.push_back({-score[std::size_t(p)], p});
    std::sort(order.begin(), order.end());
    for (std::int64_t i = 0; i < count; ++i) kept.insert(order[std::size_t(i)].second);
  };
  auto pool = [&](std::int64_t m, int width) {
    std::vector<double> out(static_cast<std::size_t>(m));
    for (std::int64_t i = 0; i < m; ++i) {
      double sum = 0;
      int c = 0;
      for (std::int64_t j = i - width / 2; j <= i + width / 2; ++j)
        if (j >= 0 && j < m) sum += s[j], ++c;
      out[std::size_t(i)] = sum / c;
    }
    return out;
  };
  if (auto* p = std::get_if<StreamingLLM>(&press)) {
    for (std::int64_t i = 0; i < std::min<std::int64_t>(p->sinks, keep); ++i) kept.insert(i);
    for (std::int64_t i = n - 1; std::int64_t(kept.size()) < keep; --i) kept.insert(i);
  } else if (auto* p = std::get_if<H2O>(&press)) {
    const std::int64_t recent = std::llround(double(keep) * p->recent_share);
    best(std::vector<double>(s, s + n), n - recent, keep - recent);
    for (std::int64_t i = n - recent; i < n; ++i) kept.insert(i);
  } else {
    const int window = std::holds_alternative<SnapKV>(press) ? std::get<SnapKV>(press).window
                                                             : std::get<PyramidKV>(press).window;
    const int width = std::holds_alternative<SnapKV>(press) ? std::get<SnapKV>(press).pool
                                                            : std::get<PyramidKV>(press).pool;
    const std::int64_t w = std::min<std::int64_t>(window, keep);
    best(pool(n - w, width), n - w, keep - w);
    for (std::int64_t i = n - w; i < n; ++i) kept.insert(i);
  }
  return {kept.begin(), kept.end()};
}

std::vector<Press> all_presses() {
  return {StreamingLLM{3}, SnapKV{4, 3}, H2O{0.25f}, PyramidKV{4, 3, 20.0f}};
}

}  // namespace

TEST_CASE("press: accumulated attention equals the softmax written from its definition", "[kv][press]") {
  std::mt19937 rng(7);
  const int heads = 4, kv_heads = 2, d = 8;
  const std::int64_t n = 13, rows = 5, first = n - rows;
  const auto q = normal(std::size_t(rows * heads * d), rng), k = normal(std::size_t(n * kv_heads * d), rng);
  std::vector<double> got;
  accumulate_attention(q.data(), rows, first, heads, k.data(), n, kv_heads, d, got);
  const auto want = reference_scores(q, rows, first, heads, k, n, kv_heads, d);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) REQUIRE(got[i] == Approx(want[i]).margin(1e-12));
  // Each (row, query head) spreads one unit of weight.
  double total = 0;
  for (double x : got) total += x;
  REQUIRE(total == Approx(double(rows * heads)).epsilon(1e-12));
  REQUIRE_THROWS_AS(accumulate_attention(q.data(), rows, n, heads, k.data(), n, kv_heads, d, got), InvalidArgument);
}

TEST_CASE("press: every press keeps what its definition keeps, at every ratio", "[kv][press]") {
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const int layers = 4, kv_heads = 3;
  for (std::int64_t n : {1, 2, 9, 40, 67}) {
    std::vector<std::vector<double>> scores(static_cast<std::size_t>(layers));
    for (auto& s : scores) {
      s.resize(std::size_t(kv_heads * n));
      for (auto& x : s) x = std::floor(u(rng) * 8) / 8;  // ties on purpose
    }
    for (const Press& press : all_presses())
      for (double ratio : {0.0, 0.25, 0.5, 0.75, 0.9}) {
        INFO(std::string(press_name(press)) << " n " << n << " ratio " << ratio);
        const CompressionPlan plan = plan_compression(press, ratio, n, layers, kv_heads, scores);
        const auto budgets = press_layer_budgets(press, ratio, n, layers);
        std::int64_t sum = 0;
        for (auto b : budgets) {
          sum += b;
          REQUIRE((b >= 1 && b <= n));
        }
        REQUIRE(sum == layers * press_budget(ratio, n));
        REQUIRE(plan.length == *std::max_element(budgets.begin(), budgets.end()));
        if (!std::holds_alternative<PyramidKV>(press)) REQUIRE(plan.length == press_budget(ratio, n));
        for (int l = 0; l < layers; ++l) {
          const std::int64_t keep = budgets[std::size_t(l)];
          REQUIRE(plan.first_live[std::size_t(l)] == plan.length - keep);
          if (l > 0 && std::holds_alternative<PyramidKV>(press)) REQUIRE(keep <= budgets[std::size_t(l - 1)]);
          for (int h = 0; h < kv_heads; ++h) {
            const auto want = reference_keep(press, scores[std::size_t(l)].data() + h * n, n, keep);
            std::vector<std::int64_t> got;
            for (std::int64_t s = 0; s < plan.length; ++s) {
              if (s < plan.first_live[std::size_t(l)])
                REQUIRE(plan.src(l, h, s) == -1);
              else
                got.push_back(plan.src(l, h, s));
            }
            REQUIRE(got == want);
          }
        }
      }
  }
  REQUIRE_THROWS_AS(press_budget(1.0, 10), InvalidArgument);
  REQUIRE_THROWS_AS(parse_press("quest"), InvalidArgument);
  REQUIRE(press_name(parse_press("pyramidkv")) == "pyramidkv");
}

TEST_CASE("press: PyramidKV budgets fall from the first layer to the last", "[kv][press]") {
  const auto b = press_layer_budgets(PyramidKV{8, 5, 20.0f}, 0.75, 400, 6);
  REQUIRE(b.front() > b.back());
  for (std::size_t l = 1; l < b.size(); ++l) REQUIRE(b[l] <= b[l - 1]);
  // mean 100, window 8: amplitude (100 - 8) * (1 - 1/20) = 87.4.
  REQUIRE(b.front() == Approx(187).margin(1));
  REQUIRE(b.back() == Approx(13).margin(1));
}

// Random sequences in a small pool: compress some with random presses and
// ratios, keep growing, forking, rolling back and freeing; after every verb
// the allocator's books balance, every kept row reads back bit for bit as
// the token it came from, and refused compressions change nothing.
TEMPLATE_TEST_CASE("press: compaction keeps rows exact and the allocator balanced", "[kv][press]", F32, Int8) {
  KVCacheConfig c;
  c.n_layers = 3, c.n_kv_heads = 2, c.head_dim = 8, c.num_blocks = 96, c.block_size = 4;
  KVCache<Paged<4>, TestType> cache(c);
  std::mt19937 rng(1234);
  const std::size_t row = std::size_t(c.n_kv_heads * c.head_dim);
  // What each sequence's slots hold: [layer][slot] -> K and V of all heads as read back.
  std::map<SeqId, std::vector<std::vector<std::vector<float>>>> shadow;
  auto read_all = [&](SeqId s) {
    std::vector<std::vector<std::vector<float>>> out(std::size_t(c.n_layers));
    std::vector<float> k(row), v(row);
    for (int l = 0; l < c.n_layers; ++l)
      for (std::int64_t p = 0; p < cache.length(s); ++p) {
        cache.read(l, s, p, k.data(), v.data());
        std::vector<float> kv(k);
        kv.insert(kv.end(), v.begin(), v.end());
        out[std::size_t(l)].push_back(kv);
      }
    return out;
  };
  auto grow = [&](SeqId s, std::int64_t n) {
    if (!cache.extend(s, n)) return;
    for (int l = 0; l < c.n_layers; ++l) {
      const auto k = normal(row * std::size_t(n), rng), v = normal(row * std::size_t(n), rng);
      cache.append(l, s, k.data(), v.data(), n);
    }
    shadow[s] = read_all(s);
  };
  SeqId next = 0;
  std::uniform_int_distribution<int> pick(0, 9);
  int compressed = 0, refused = 0;
  for (int step = 0; step < 400; ++step) {
    const int what = pick(rng);
    std::vector<SeqId> live;
    for (auto& kv : shadow) live.push_back(kv.first);
    const SeqId s = live.empty() ? -1 : live[std::size_t(rng() % live.size())];
    if (what <= 2 || live.empty()) {
      cache.add_sequence(next);
      shadow[next] = {};
      grow(next, 1 + std::int64_t(rng() % 30));
      ++next;
    } else if (what <= 4) {
      grow(s, 1 + std::int64_t(rng() % 6));
    } else if (what == 5) {
      cache.fork(s, next);
      shadow[next] = shadow[s];
      ++next;
    } else if (what == 6) {
      cache.free_sequence(s);
      shadow.erase(s);
    } else {
      const std::int64_t n = cache.length(s);
      if (n == 0) continue;
      const Press press = all_presses()[rng() % 4];
      const double ratio = std::vector<double>{0.25, 0.5, 0.75}[rng() % 3];
      std::vector<std::vector<double>> scores(std::size_t(c.n_layers));
      for (auto& sc : scores) {
        const auto f = normal(std::size_t(c.n_kv_heads * n), rng);
        sc.assign(f.begin(), f.end());
      }
      const CompressionPlan plan = plan_compression(press, ratio, n, c.n_layers, c.n_kv_heads, scores);
      bool shared = false;
      for (BlockId b : cache.allocator().block_table(s)) shared = shared || cache.allocator().ref_count(b) > 1;
      const bool dead = cache.has_dead_slots(s);
      const auto free_before = cache.allocator().num_free_blocks();
      const auto offset_before = cache.position_offset(s);
      if (shared || dead) {
        REQUIRE_THROWS_AS(cache.compact(s, plan), UsageError);
        ++refused;
        REQUIRE(cache.length(s) == n);
        REQUIRE(cache.allocator().num_free_blocks() == free_before);
        REQUIRE(read_all(s) == shadow[s]);
      } else {
        cache.compact(s, plan);
        ++compressed;
        REQUIRE(cache.length(s) == plan.length);
        REQUIRE(cache.position_offset(s) == offset_before + n - plan.length);
        REQUIRE(cache.allocator().num_free_blocks() ==
                free_before + cache.allocator().blocks_for(n) - cache.allocator().blocks_for(plan.length));
        const auto now = read_all(s);
        const std::size_t d = std::size_t(c.head_dim);
        for (int l = 0; l < c.n_layers; ++l)
          for (std::int64_t slot = 0; slot < plan.length; ++slot)
            for (int h = 0; h < c.n_kv_heads; ++h) {
              const std::int64_t src = plan.src(l, h, slot);
              const auto& got = now[std::size_t(l)][std::size_t(slot)];
              for (int kv = 0; kv < 2; ++kv)
                for (std::size_t j = 0; j < d; ++j) {
                  const std::size_t at = std::size_t(kv) * row + std::size_t(h) * d + j;
                  REQUIRE(got[at] == (src < 0 ? 0.0f : shadow[s][std::size_t(l)][std::size_t(src)][at]));
                }
            }
        shadow[s] = now;
        if (plan.length > 1) REQUIRE_THROWS_AS(cache.truncate(s, plan.length - 1), UsageError);
      }
    }
    cache.allocator().check_invariants();
  }
  // The walk reached both branches often enough to mean something.
  REQUIRE(compressed >= 20);
  REQUIRE(refused >= 5);
}

TEST_CASE("press: a compaction that does not fit the sequence is refused", "[kv][press]") {
  KVCacheConfig c;
  c.n_layers = 2;
  c.n_kv_heads = 1;
  c.head_dim = 8;
  c.num_blocks = 16;
  KVCache<Paged<4>> cache(c);
  cache.add_sequence(0);
  REQUIRE(cache.extend(0, 10));
  CompressionPlan plan = plan_compression(StreamingLLM{2}, 0.5, 10, 2, 1, {});
  plan.source[3] = 0;  // not ascending
  REQUIRE_THROWS_AS(cache.compact(0, plan), InvalidArgument);
  REQUIRE_THROWS_AS(cache.compact(0, plan_compression(StreamingLLM{2}, 0.5, 9, 2, 1, {})), InvalidArgument);
  REQUIRE(cache.length(0) == 10);

  KVCacheConfig w = c;
  w.window = 4;
  KVCache<SlidingWindow<0, 0, 4>> window(w);
  window.add_sequence(0);
  REQUIRE(window.extend(0, 10));
  REQUIRE_THROWS_AS(window.compact(0, plan_compression(StreamingLLM{2}, 0.5, 10, 2, 1, {})), UsageError);
}
