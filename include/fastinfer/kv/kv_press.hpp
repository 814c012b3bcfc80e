// KV-cache compression policies ("presses", after NVIDIA's kvpress): which
// prompt positions each layer and KV head keeps once the prompt is in the
// cache, for a compression ratio (the share of KV entries removed).
//
//   StreamingLLM{sinks}   the first `sinks` tokens and the most recent ones
//                         (the one-shot form of the SlidingWindow layout)
//   SnapKV{window, pool}  the last `window` prompt queries (the observation
//                         window) vote, per KV head, with their attention
//                         weights, smoothed by an average pool of `pool`
//                         positions; the window itself is always kept
//   H2O{recent_share}     heavy hitters by attention accumulated over every
//                         prompt query, plus a recent window taking
//                         `recent_share` of the budget
//   PyramidKV{...}        SnapKV's scores with per-layer budgets falling
//                         linearly from the first layer to the last (the
//                         mean is the ratio's budget)
//
// A closed variant (the set is small and each member is plain data); the
// scoring and selection math here is std-only and scalar: it is both the
// implementation and, being written for clarity, what tests check the
// cache's compaction against. The cache applies a plan in
// KVCache::compact(); KVStore::compress() runs the whole press.
//
// Memory: every layer of one token slot lives in one block (block-major
// arena), so a sequence's slot count is the *largest* per-layer budget.
// Uniform presses free what they drop; PyramidKV's lower-budget layers leave
// dead slots (masked from attention) below the largest budget, so it saves
// less memory than its ratio. It pays only in a cache with per-layer storage.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "fastinfer/core/error.hpp"

namespace fastinfer::kv {

struct StreamingLLM {
  std::int32_t sinks = 4;
};
struct SnapKV {
  std::int32_t window = 16;
  std::int32_t pool = 5;
};
struct H2O {
  float recent_share = 0.5f;
};
struct PyramidKV {
  std::int32_t window = 16;
  std::int32_t pool = 5;
  float beta = 20.0f;  // the smallest budget is (mean - window) / beta, as in the paper
};
using Press = std::variant<StreamingLLM, SnapKV, H2O, PyramidKV>;

inline std::string_view press_name(const Press& p) {
  struct Name {
    std::string_view operator()(const StreamingLLM&) const { return "streamingllm"; }
    std::string_view operator()(const SnapKV&) const { return "snapkv"; }
    std::string_view operator()(const H2O&) const { return "h2o"; }
    std::string_view operator()(const PyramidKV&) const { return "pyramidkv"; }
  };
  return std::visit(Name{}, p);
}

// "snapkv" -> SnapKV{} (the spelling of --press), default parameters.
inline Press parse_press(std::string_view name) {
  for (const Press& p : {Press{StreamingLLM{}}, Press{SnapKV{}}, Press{H2O{}}, Press{PyramidKV{}}})
    if (press_name(p) == name) return p;
  throw_error<InvalidArgument>("unknown press '", name, "': expected streamingllm, snapkv, h2o or pyramidkv");
}

// How many trailing prompt queries (per layer) the press reads out of n.
inline std::int64_t press_query_rows(const Press& p, std::int64_t n) {
  struct Rows {
    std::int64_t n;
    std::int64_t operator()(const StreamingLLM&) const { return 0; }
    std::int64_t operator()(const SnapKV& s) const { return std::min<std::int64_t>(s.window, n); }
    std::int64_t operator()(const H2O&) const { return n; }
    std::int64_t operator()(const PyramidKV& s) const { return std::min<std::int64_t>(s.window, n); }
  };
  return std::visit(Rows{n}, p);
}

// Tokens kept out of n at `ratio` (the share removed), at least one.
inline std::int64_t press_budget(double ratio, std::int64_t n) {
  FASTINFER_CHECK(ratio >= 0.0 && ratio < 1.0, InvalidArgument, "press: the compression ratio must lie in [0, 1), got ",
                  ratio);
  return std::max<std::int64_t>(1, n - std::int64_t(std::llround(ratio * double(n))));
}

// What a press decided for one sequence of `original_length` slots.
// Every layer holds `length` slots afterwards; in layer l the slots below
// first_live[l] are dead (never attended), and slot s >= first_live[l] of
// KV head h holds the token of original slot source[(l * heads + h) * length + s],
// ascending in s.
struct CompressionPlan {
  std::int64_t original_length = 0;
  std::int64_t length = 0;
  std::int32_t n_layers = 0, n_kv_heads = 0;
  std::vector<std::int64_t> first_live;
  std::vector<std::int64_t> source;

  std::int64_t src(int layer, int head, std::int64_t slot) const {
    return source[std::size_t((std::int64_t(layer) * n_kv_heads + head) * length + slot)];
  }
  // KV entries kept over all layers and heads (live slots only).
  std::int64_t kept_entries() const {
    std::int64_t live = 0;
    for (std::int64_t f : first_live) live += length - f;
    return live * n_kv_heads;
  }
};

// Attention weights of the queries q[rows][n_heads][d] (post-RoPE, query i
// at slot first_pos + i, causal) over keys[n][n_kv_heads][d], summed over the
// rows and over the query heads of each KV head's group, added to
// scores[n_kv_heads][n]. Plain softmax in double with the model's
// 1/sqrt(d) scale: the score both SnapKV (last rows) and H2O (all rows) use.
inline void accumulate_attention(const float* q, std::int64_t rows, std::int64_t first_pos, int n_heads,
                                 const float* keys, std::int64_t n, int n_kv_heads, int d,
                                 std::vector<double>& scores) {
  FASTINFER_CHECK(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0, InvalidArgument,
                  "press: ", n_heads, " query heads cannot share ", n_kv_heads, " KV heads evenly");
  FASTINFER_CHECK(first_pos >= 0 && first_pos + rows <= n, InvalidArgument, "press: query slots [", first_pos, ", ",
                  first_pos + rows, ") outside the ", n, " keys");
  scores.resize(std::size_t(n_kv_heads) * std::size_t(n), 0.0);
  const int group = n_heads / n_kv_heads;
  const double scale = 1.0 / std::sqrt(double(d));
  std::vector<double> w;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t visible = first_pos + r + 1;
    w.resize(std::size_t(visible));
    for (int hq = 0; hq < n_heads; ++hq) {
      const int h = hq / group;
      const float* qv = q + (r * n_heads + hq) * d;
      double mx = -std::numeric_limits<double>::infinity();
      for (std::int64_t p = 0; p < visible; ++p) {
        const float* kv = keys + (p * n_kv_heads + h) * d;
        double s = 0.0;
        for (int j = 0; j < d; ++j) s += double(qv[j]) * double(kv[j]);
        w[std::size_t(p)] = s * scale;
        mx = std::max(mx, w[std::size_t(p)]);
      }
      double sum = 0.0;
      for (std::int64_t p = 0; p < visible; ++p) sum += (w[std::size_t(p)] = std::exp(w[std::size_t(p)] - mx));
      double* out = scores.data() + std::size_t(h) * std::size_t(n);
      for (std::int64_t p = 0; p < visible; ++p) out[p] += w[std::size_t(p)] / sum;
    }
  }
}

namespace press_detail {

// Average pool of width `pool` (centred, shrinking at the edges) over s[0, m).
inline std::vector<double> pooled(const double* s, std::int64_t m, int pool) {
  std::vector<double> out(static_cast<std::size_t>(m));
  const std::int64_t half = std::max(pool, 1) / 2;
  for (std::int64_t i = 0; i < m; ++i) {
    const std::int64_t a = std::max<std::int64_t>(0, i - half), b = std::min<std::int64_t>(m, i + half + 1);
    double sum = 0.0;
    for (std::int64_t j = a; j < b; ++j) sum += s[j];
    out[std::size_t(i)] = sum / double(b - a);
  }
  return out;
}

// Ascending positions: the `top` best-scored of [0, candidates) (ties to
// the earlier position), then every position of [candidates, candidates + tail).
inline std::vector<std::int64_t> top_then_tail(const std::vector<double>& score, std::int64_t candidates,
                                               std::int64_t top, std::int64_t tail) {
  std::vector<std::int64_t> idx(static_cast<std::size_t>(candidates));
  std::iota(idx.begin(), idx.end(), std::int64_t(0));
  top = std::min(top, candidates);
  std::partial_sort(idx.begin(), idx.begin() + top, idx.end(), [&](std::int64_t a, std::int64_t b) {
    return score[std::size_t(a)] != score[std::size_t(b)] ? score[std::size_t(a)] > score[std::size_t(b)] : a < b;
  });
  idx.resize(std::size_t(top));
  std::sort(idx.begin(), idx.end());
  for (std::int64_t p = candidates; p < candidates + tail; ++p) idx.push_back(p);
  return idx;
}

// Kept positions of one (layer, head) for a budget of `keep` out of n.
struct Select {
  std::int64_t n, keep;
  const double* score;  // [n] of this head, or nullptr (StreamingLLM)

  std::vector<std::int64_t> operator()(const StreamingLLM& p) const {
    const std::int64_t sinks = std::min<std::int64_t>(std::max(p.sinks, 0), keep);
    std::vector<std::int64_t> out;
    for (std::int64_t i = 0; i < sinks; ++i) out.push_back(i);
    for (std::int64_t i = n - (keep - sinks); i < n; ++i) out.push_back(i);
    return out;
  }
  std::vector<std::int64_t> snap(int window, int pool) const {
    const std::int64_t w = std::min<std::int64_t>(window, keep);
    const std::vector<double> s = pooled(score, n - w, pool);
    return top_then_tail(s, n - w, keep - w, w);
  }
  std::vector<std::int64_t> operator()(const SnapKV& p) const { return snap(p.window, p.pool); }
  std::vector<std::int64_t> operator()(const PyramidKV& p) const { return snap(p.window, p.pool); }
  std::vector<std::int64_t> operator()(const H2O& p) const {
    const std::int64_t recent = std::min<std::int64_t>(keep, std::llround(double(keep) * double(p.recent_share)));
    return top_then_tail(std::vector<double>(score, score + (n - recent)), n - recent, keep - recent, recent);
  }
};

}  // namespace press_detail

// Per-layer budgets: the ratio's budget everywhere, except PyramidKV's line
// from (mean + A) at layer 0 to (mean - A) at the last, A = mean - window -
// (mean - window) / beta, A cut so that no layer exceeds n; sums to
// n_layers * mean (remainders to the lowest layers).
inline std::vector<std::int64_t> press_layer_budgets(const Press& press, double ratio, std::int64_t n, int n_layers) {
  const std::int64_t mean = press_budget(ratio, n);
  std::vector<std::int64_t> b(std::size_t(n_layers), mean);
  const auto* pyr = std::get_if<PyramidKV>(&press);
  if (pyr == nullptr || n_layers < 2) return b;
  const double w = std::min<double>(pyr->window, double(mean));
  double amp = (double(mean) - w) - (double(mean) - w) / double(std::max(pyr->beta, 1.0f));
  amp = std::max(0.0, std::min(amp, std::min(double(n - mean), double(mean - 1))));
  std::int64_t total = 0;
  for (int l = 0; l < n_layers; ++l) {
    const double t = double(n_layers - 1 - 2 * l) / double(n_layers - 1);  // 1 .. -1
    b[std::size_t(l)] = std::int64_t(std::floor(double(mean) + amp * t));
    total += b[std::size_t(l)];
  }
  for (int l = 0; total < mean * n_layers && l < n_layers; ++l)
    if (b[std::size_t(l)] < n) ++b[std::size_t(l)], ++total;
  return b;
}

// The plan of `press` at `ratio` for a sequence of n slots: scores[layer]
// holds [n_kv_heads][n] (accumulate_attention over the press's query rows;
// unused, and may be empty, for StreamingLLM).
inline CompressionPlan plan_compression(const Press& press, double ratio, std::int64_t n, int n_layers, int n_kv_heads,
                                        const std::vector<std::vector<double>>& scores) {
  FASTINFER_CHECK(n >= 1 && n_layers >= 1 && n_kv_heads >= 1, InvalidArgument, "press: nothing to compress (", n,
                  " tokens, ", n_layers, " layers, ", n_kv_heads, " KV heads)");
  const bool scored = !std::holds_alternative<StreamingLLM>(press);
  FASTINFER_CHECK(!scored || int(scores.size()) == n_layers, InvalidArgument, "press ", press_name(press),
                  ": needs scores of ", n_layers, " layers, got ", scores.size());
  for (std::size_t l = 0; scored && l < scores.size(); ++l)
    FASTINFER_CHECK(std::int64_t(scores[l].size()) == std::int64_t(n_kv_heads) * n, InvalidArgument, "press ",
                    press_name(press), ": scores of layer ", l, " hold ", scores[l].size(), " values, expected ",
                    std::int64_t(n_kv_heads) * n);
  const std::vector<std::int64_t> budgets = press_layer_budgets(press, ratio, n, n_layers);
  CompressionPlan plan;
  plan.original_length = n;
  plan.length = *std::max_element(budgets.begin(), budgets.end());
  plan.n_layers = n_layers;
  plan.n_kv_heads = n_kv_heads;
  plan.first_live.resize(std::size_t(n_layers));
  plan.source.assign(std::size_t(n_layers) * std::size_t(n_kv_heads) * std::size_t(plan.length), -1);
  for (int l = 0; l < n_layers; ++l) {
    const std::int64_t keep = budgets[std::size_t(l)];
    plan.first_live[std::size_t(l)] = plan.length - keep;
    for (int h = 0; h < n_kv_heads; ++h) {
      const double* s = scored ? scores[std::size_t(l)].data() + std::size_t(h) * std::size_t(n) : nullptr;
      const std::vector<std::int64_t> kept = std::visit(press_detail::Select{n, keep, s}, press);
      std::copy(kept.begin(), kept.end(),
                plan.source.begin() + std::ptrdiff_t((std::int64_t(l) * n_kv_heads + h) * plan.length +
                                                     plan.first_live[std::size_t(l)]));
    }
  }
  return plan;
}

}  // namespace fastinfer::kv
