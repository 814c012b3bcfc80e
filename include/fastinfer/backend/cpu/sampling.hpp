// Choosing the next token from a row of logits: greedy, or temperature
// softmax filtered by top-k and then top-p (nucleus), drawn with a caller's
// coin in [0, 1). The coin comes from Philox (core/philox.hpp) keyed by the
// request's seed and token index, so a request samples the same tokens
// whatever batch it rides in and whichever thread runs it.
//
// Semantics (shared by the fast version and the scalar reference):
//   temperature == 0: greedy, the first maximum wins; top_k / top_p ignored.
//   otherwise       : w_i = exp((l_i - max l) / T); keep the top_k largest
//                     logits (0 = all; ties go to the lower id); of those keep
//                     the smallest prefix, in order of decreasing logit, whose
//                     weight reaches top_p of their total (always >= 1 token);
//                     then return the first id, in increasing id order over
//                     the kept set, at which the running weight exceeds
//                     coin * (kept total).
//   A -inf logit is a masked token; NaN or +inf logits, or all -inf, are
//   rejected with InvalidArgument, as are out-of-range parameters.
//
// The fast version never allocates once its workspace has seen the largest
// vocabulary: size it once with SamplerWorkspace(vocab_size).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "fastinfer/backend/cpu/cpu_target.hpp"
#include "fastinfer/backend/cpu/xsimd_compat.hpp"

#include "fastinfer/core/argmax.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/philox.hpp"
#include "fastinfer/core/sampling_params.hpp"

// xsimd at the build's -march: g++ 12's false intrinsic warnings (cpu_target.hpp).
FASTINFER_CPU_INTRINSIC_WARNINGS_OFF
namespace fastinfer::cpu {

// The name this header used before the library had one sampling struct;
// kept for code that still spells it so, deprecated.
using SamplingParams [[deprecated("use fastinfer::SamplingParams (fastinfer/core/sampling_params.hpp)")]] =
    fastinfer::SamplingParams;
using fastinfer::validate;

// Scratch space for sample() and sampling_distribution(): one weight and one
// candidate id per vocabulary entry.
class SamplerWorkspace {
 public:
  SamplerWorkspace() = default;
  explicit SamplerWorkspace(std::int64_t vocab_size) { reserve(vocab_size); }

  // Grows to n entries (allocates only when n exceeds what it has seen).
  void reserve(std::int64_t n) {
    FASTINFER_CHECK(n >= 0 && n <= std::numeric_limits<std::int32_t>::max(), InvalidArgument,
                    "sampler vocabulary size out of range: ", n);
    if (std::int64_t(weights_.size()) < n) {
      weights_.resize(std::size_t(n));
      ids_.resize(std::size_t(n));
    }
  }
  std::int64_t capacity() const { return std::int64_t(weights_.size()); }
  float* weights() { return weights_.data(); }
  std::int32_t* ids() { return ids_.data(); }

 private:
  std::vector<float> weights_;
  std::vector<std::int32_t> ids_;
};

namespace detail {

// The refusals every argmax and sampler shares (core/argmax.hpp).
using fastinfer::detail::check_coin;
using fastinfer::detail::check_logits_size;
using fastinfer::detail::check_max;

// Largest logit, or NaN when any logit is NaN.
template <class Arch = xsimd::default_arch>
float max_logit(const float* x, std::int64_t n) {
  using B = xsimd::batch<float, Arch>;
  constexpr std::int64_t W = std::int64_t(B::size);
  const std::int64_t n_main = n - n % W;
  float mx = -std::numeric_limits<float>::infinity();
  bool nan = false;
  if (n_main > 0) {
    B vmx(-std::numeric_limits<float>::infinity());
    // xsimd 8.1's float != is the ordered compare (false for NaN), so
    // NaN is detected with isnan.
    auto vnan = xsimd::isnan(vmx);
    for (std::int64_t i = 0; i < n_main; i += W) {
      const B v = B::load_unaligned(x + i);
      vmx = xsimd::max(vmx, v);
      vnan = vnan | xsimd::isnan(v);
    }
    nan = xsimd::any(vnan);
    alignas(64) float lanes[B::size];
    vmx.store_aligned(lanes);
    for (float l : lanes) mx = std::max(mx, l);
  }
  for (std::int64_t i = n_main; i < n; ++i) {
    nan = nan || std::isnan(x[i]);
    mx = std::max(mx, x[i]);
  }
  return nan ? std::numeric_limits<float>::quiet_NaN() : mx;
}

// Index of the first element equal to mx (which is present).
template <class Arch = xsimd::default_arch>
std::int64_t first_equal(const float* x, std::int64_t n, float mx) {
  using B = xsimd::batch<float, Arch>;
  constexpr std::int64_t W = std::int64_t(B::size);
  const std::int64_t n_main = n - n % W;
  std::int64_t i = 0;
  for (; i < n_main; i += W)
    if (xsimd::any(B::load_unaligned(x + i) == B(mx))) break;
  for (; i < n; ++i)
    if (x[i] == mx) return i;
  return n - 1;  // unreachable when mx is in x
}

// Weights are summed in blocks of this many: float lanes within a block,
// double across blocks, so a 32k vocabulary loses no more than ~1e-7.
constexpr std::int64_t kSumBlock = 256;

// Sum of w[0..n): float vector lanes per block, double across blocks.
template <class Arch = xsimd::default_arch>
double block_sum(const float* w, std::int64_t n) {
  using B = xsimd::batch<float, Arch>;
  constexpr std::int64_t W = std::int64_t(B::size);
  const std::int64_t n_main = n - n % W;
  double total = 0;
  for (std::int64_t b = 0; b < n_main; b += kSumBlock) {
    const std::int64_t end = std::min(n_main, b + kSumBlock);
    B vsum(0.0f);
    for (std::int64_t i = b; i < end; i += W) vsum += B::load_unaligned(w + i);
    total += double(xsimd_compat::reduce_add(vsum));
  }
  for (std::int64_t i = n_main; i < n; ++i) total += double(w[i]);
  return total;
}

// w[i] = exp((x[i] - mx) * inv_t); returns their sum.
template <class Arch = xsimd::default_arch>
double exp_weights(const float* x, std::int64_t n, float mx, float inv_t, float* w) {
  using B = xsimd::batch<float, Arch>;
  constexpr std::int64_t W = std::int64_t(B::size);
  const std::int64_t n_main = n - n % W;
  for (std::int64_t i = 0; i < n_main; i += W)
    xsimd::exp((B::load_unaligned(x + i) - B(mx)) * B(inv_t)).store_unaligned(w + i);
  for (std::int64_t i = n_main; i < n; ++i) w[i] = std::exp((x[i] - mx) * inv_t);
  return block_sum<Arch>(w, n);
}

// Orders ids by decreasing logit, the lower id first among equals: a strict
// total order, so every selection below is deterministic.
struct ByLogitDesc {
  const float* logits;
  bool operator()(std::int32_t a, std::int32_t b) const {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  }
};

// The kept candidates after temperature, top-k and top-p: either every id
// (all == true; weights indexed by id for all n) or ids[0..count) sorted by
// increasing id, with weights[id] set for each of them. `total` is the sum
// of their weights.
struct KeptSet {
  bool all;
  std::int64_t count;
  double total;
};

// ids[0..k) = the k best ids under ByLogitDesc, best first (1 <= k <= n).
// For small k, one vectorised pass keeps a k-entry heap and touches the
// heap only for logits that can still enter it (a handful after warm-up);
// an indirect nth_element over 32k ids costs ~20x more.
template <class Arch = xsimd::default_arch>
void select_top(const float* logits, std::int64_t n, std::int64_t k, std::int32_t* ids) {
  const ByLogitDesc better{logits};
  if (k * 8 > n) {
    std::iota(ids, ids + n, 0);
    std::nth_element(ids, ids + (k - 1), ids + n, better);
    std::sort(ids, ids + k, better);
    return;
  }
  // A heap under `better` keeps its worst member at ids[0].
  std::int64_t size = 0;
  auto offer = [&](std::int32_t id) {
    if (size < k) {
      ids[size++] = id;
      std::push_heap(ids, ids + size, better);
    } else if (better(id, ids[0])) {
      std::pop_heap(ids, ids + size, better);
      ids[size - 1] = id;
      std::push_heap(ids, ids + size, better);
    }
  };
  using B = xsimd::batch<float, Arch>;
  constexpr std::int64_t W = std::int64_t(B::size);
  std::int64_t i = 0;
  for (; i < k; ++i) offer(std::int32_t(i));
  for (; i + W <= n; i += W) {
    if (xsimd::any(B::load_unaligned(logits + i) >= B(logits[ids[0]]))) {
      for (std::int64_t l = 0; l < W; ++l) offer(std::int32_t(i + l));
    }
  }
  for (; i < n; ++i) offer(std::int32_t(i));
  std::sort_heap(ids, ids + k, better);
}

template <class Arch = xsimd::default_arch>
KeptSet filter(const float* logits, std::int64_t n, const fastinfer::SamplingParams& p, float mx, SamplerWorkspace& ws) {
  float* w = ws.weights();
  std::int32_t* ids = ws.ids();
  const float inv_t = 1.0f / p.temperature;
  const std::int64_t k = (p.top_k > 0 && p.top_k < n) ? p.top_k : n;

  std::int64_t m = k;  // candidates: ids[0..m), best first
  double total = 0;
  if (k < n) {
    select_top<Arch>(logits, n, k, ids);
    for (std::int64_t j = 0; j < k; ++j) {
      w[ids[j]] = std::exp((logits[ids[j]] - mx) * inv_t);
      total += w[ids[j]];
    }
  } else {
    total = exp_weights<Arch>(logits, n, mx, inv_t, w);
    if (p.top_p >= 1.0f) return {true, n, total};
  }
  if (p.top_p < 1.0f) {
    // Smallest prefix, best first, whose weight reaches top_p * total. The
    // nucleus is usually small: without top-k, select a growing number of
    // best ids rather than sorting the vocabulary.
    const double target = double(p.top_p) * total;
    std::int64_t have = k < n ? k : std::min<std::int64_t>(n, 64);
    for (;;) {
      if (k == n) select_top<Arch>(logits, n, have, ids);
      double cum = 0;
      std::int64_t j = 0;
      while (j < have) {
        cum += double(w[ids[j++]]);
        if (cum >= target) break;
      }
      if (cum >= target || have == m) {
        m = j;
        break;
      }
      have = std::min(m, have * 8);
    }
    total = 0;
    for (std::int64_t i = 0; i < m; ++i) total += w[ids[i]];
  }
  std::sort(ids, ids + m);
  return {false, m, total};
}

// The first id (in increasing order) at which the running weight exceeds
// coin * total. Over the whole vocabulary, whole blocks are skipped by their
// sums. If rounding runs past the end (coin just below 1), the last token
// with weight.
template <class Arch = xsimd::default_arch>
std::int32_t walk(const KeptSet& kept, const float* w, const std::int32_t* ids, float coin) {
  const double target = double(coin) * kept.total;
  double cum = 0;
  std::int64_t j = 0;
  if (kept.all) {
    for (; j + kSumBlock <= kept.count; j += kSumBlock) {
      const double block = block_sum<Arch>(w + j, kSumBlock);
      if (cum + block > target) break;
      cum += block;
    }
  }
  auto id_at = [&](std::int64_t i) { return kept.all ? std::int32_t(i) : ids[i]; };
  for (; j < kept.count; ++j) {
    cum += double(w[id_at(j)]);
    if (cum > target) return id_at(j);
  }
  for (std::int64_t i = kept.count - 1; i > 0; --i)
    if (w[id_at(i)] > 0.0f) return id_at(i);
  return id_at(0);
}

}  // namespace detail

// Greedy: index of the first maximum. Rejects NaN / +inf / all -inf logits.
template <class Arch = xsimd::default_arch>
std::int32_t argmax_token(const float* logits, std::int64_t n) {
  detail::check_logits_size(n);
  const float mx = detail::max_logit<Arch>(logits, n);
  detail::check_max(mx);
  return std::int32_t(detail::first_equal<Arch>(logits, n, mx));
}

// One token, drawn with `coin` in [0, 1) (e.g. uniform_float(seed,
// RandomStream::Sampling, token_index)).
template <class Arch = xsimd::default_arch>
std::int32_t sample(const float* logits, std::int64_t n, const fastinfer::SamplingParams& params, float coin,
                    SamplerWorkspace& ws) {
  validate(params);
  detail::check_coin(coin);
  if (params.temperature == 0.0f) return argmax_token<Arch>(logits, n);
  detail::check_logits_size(n);
  const float mx = detail::max_logit<Arch>(logits, n);
  detail::check_max(mx);
  ws.reserve(n);
  const detail::KeptSet kept = detail::filter<Arch>(logits, n, params, mx, ws);
  return detail::walk<Arch>(kept, ws.weights(), ws.ids(), coin);
}

// Token `token_index` of a request: the coin is Philox(params.seed,
// Sampling stream, token_index), so the result depends on nothing else.
template <class Arch = xsimd::default_arch>
std::int32_t sample_at_index(const float* logits, std::int64_t n, const fastinfer::SamplingParams& params,
                             std::uint64_t token_index, SamplerWorkspace& ws) {
  return sample<Arch>(logits, n, params, uniform_float(params.seed, RandomStream::Sampling, token_index), ws);
}

// The distribution sample() draws from, written to probs_out[n] (zero for
// filtered tokens; one-hot at the first maximum when greedy). Speculative
// decoding compares draft and target through it.
template <class Arch = xsimd::default_arch>
void sampling_distribution(const float* logits, std::int64_t n, const fastinfer::SamplingParams& params,
                           float* probs_out, SamplerWorkspace& ws) {
  validate(params);
  if (params.temperature == 0.0f) {
    const std::int32_t best = argmax_token<Arch>(logits, n);
    std::fill(probs_out, probs_out + n, 0.0f);
    probs_out[best] = 1.0f;
    return;
  }
  detail::check_logits_size(n);
  const float mx = detail::max_logit<Arch>(logits, n);
  detail::check_max(mx);
  ws.reserve(n);
  const detail::KeptSet kept = detail::filter<Arch>(logits, n, params, mx, ws);
  const float* w = ws.weights();
  const std::int32_t* ids = ws.ids();
  const float inv_total = float(1.0 / kept.total);
  if (kept.all) {
    for (std::int64_t i = 0; i < n; ++i) probs_out[i] = w[i] * inv_total;
  } else {
    std::fill(probs_out, probs_out + n, 0.0f);
    for (std::int64_t j = 0; j < kept.count; ++j) probs_out[ids[j]] = w[ids[j]] * inv_total;
  }
}

// Draws from non-negative, unnormalised weights[0..n) with `coin` in
// [0, 1): the first id at which the running sum exceeds coin * total. This
// is the step speculative decoding needs after a rejection, drawing from
// the residual max(0, p_target - p_draft). Rejects negative, NaN or
// infinite weights and an all-zero row.
template <class Arch = xsimd::default_arch>
std::int32_t sample_from_weights(const float* weights, std::int64_t n, float coin) {
  detail::check_logits_size(n);
  detail::check_coin(coin);
  using B = xsimd::batch<float, Arch>;
  constexpr std::int64_t W = std::int64_t(B::size);
  const std::int64_t n_main = n - n % W;
  bool bad = false;
  if (n_main > 0) {
    auto vbad = xsimd::isnan(B(0.0f));
    for (std::int64_t i = 0; i < n_main; i += W) {
      const B v = B::load_unaligned(weights + i);
      vbad = vbad | xsimd::isnan(v) | (v < B(0.0f)) | (v == B(std::numeric_limits<float>::infinity()));
    }
    bad = xsimd::any(vbad);
  }
  for (std::int64_t i = n_main; i < n; ++i) bad = bad || !(weights[i] >= 0.0f) || std::isinf(weights[i]);
  FASTINFER_CHECK(!bad, InvalidArgument, "sampling weights must be finite and >= 0");
  const double total = detail::block_sum<Arch>(weights, n);
  FASTINFER_CHECK(total > 0.0, InvalidArgument, "sampling weights sum to ", total, ": nothing to sample");
  return detail::walk<Arch>(detail::KeptSet{true, n, total}, weights, nullptr, coin);
}

// The CPU backend's Sampler for the speculative verifier (the interface is
// written out in speculative/speculative_verifier.hpp): the functions above
// over host rows, with one workspace of its own.
class HostSampler {
 public:
  explicit HostSampler(std::int64_t vocab_size = 0) : ws_(vocab_size) {}

  std::int32_t argmax(const float* row, std::int64_t n) const { return argmax_token(row, n); }
  std::int32_t sample_at_index(const float* row, std::int64_t n, const fastinfer::SamplingParams& params,
                               std::uint64_t token_index) {
    return cpu::sample_at_index(row, n, params, token_index, ws_);
  }
  void distribution(const float* row, std::int64_t n, const fastinfer::SamplingParams& params, float* probs_out) {
    sampling_distribution(row, n, params, probs_out, ws_);
  }
  std::int32_t sample_from_weights(const float* weights, std::int64_t n, float coin) const {
    return cpu::sample_from_weights(weights, n, coin);
  }

 private:
  SamplerWorkspace ws_;
};

namespace reference {

inline std::int32_t sample_from_weights(const float* weights, std::int64_t n, float coin) {
  detail::check_logits_size(n);
  detail::check_coin(coin);
  double total = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    FASTINFER_CHECK(weights[i] >= 0.0f && !std::isinf(weights[i]), InvalidArgument,
                    "sampling weights must be finite and >= 0");
    total += weights[i];
  }
  FASTINFER_CHECK(total > 0.0, InvalidArgument, "sampling weights sum to ", total, ": nothing to sample");
  const double target = double(coin) * total;
  double cum = 0;
  std::int32_t last = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    if (weights[i] > 0.0f) last = std::int32_t(i);
    cum += weights[i];
    if (cum > target) return std::int32_t(i);
  }
  return last;
}

// The same semantics written plainly: full sort, scalar exp, a kept mask.
// Allocates; for tests only.
inline std::vector<double> sampling_weights(const float* logits, std::int64_t n, const fastinfer::SamplingParams& p) {
  validate(p);
  detail::check_logits_size(n);
  float mx = -std::numeric_limits<float>::infinity();
  for (std::int64_t i = 0; i < n; ++i) {
    FASTINFER_CHECK(!std::isnan(logits[i]), NumericError, "logits contain NaN");
    mx = std::max(mx, logits[i]);
  }
  detail::check_max(mx);
  std::vector<double> w(static_cast<std::size_t>(n), 0.0);
  if (p.temperature == 0.0f) {
    std::int64_t best = 0;
    for (std::int64_t i = 1; i < n; ++i)
      if (logits[i] > logits[best]) best = i;
    w[std::size_t(best)] = 1.0;
    return w;
  }
  std::vector<std::int32_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), detail::ByLogitDesc{logits});
  const std::size_t k = (p.top_k > 0 && p.top_k < n) ? std::size_t(p.top_k) : std::size_t(n);
  const float inv_t = 1.0f / p.temperature;
  std::vector<float> e(k);
  double total = 0;
  for (std::size_t j = 0; j < k; ++j) {
    e[j] = std::exp((logits[order[j]] - mx) * inv_t);
    total += e[j];
  }
  std::size_t m = k;
  if (p.top_p < 1.0f) {
    double cum = 0;
    for (m = 0; m < k;) {
      cum += e[m++];
      if (cum >= double(p.top_p) * total) break;
    }
  }
  for (std::size_t j = 0; j < m; ++j) w[std::size_t(order[j])] = e[j];
  return w;
}

inline std::int32_t sample(const float* logits, std::int64_t n, const fastinfer::SamplingParams& p, float coin) {
  detail::check_coin(coin);
  const std::vector<double> w = sampling_weights(logits, n, p);
  double total = 0;
  for (double x : w) total += x;
  const double target = double(coin) * total;
  double cum = 0;
  std::int32_t last = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    if (w[std::size_t(i)] > 0) last = std::int32_t(i);
    cum += w[std::size_t(i)];
    if (cum > target) return std::int32_t(i);
  }
  return last;
}

inline std::vector<double> sampling_distribution(const float* logits, std::int64_t n,
                                                 const fastinfer::SamplingParams& p) {
  std::vector<double> w = sampling_weights(logits, n, p);
  double total = 0;
  for (double x : w) total += x;
  for (double& x : w) x /= total;
  return w;
}

}  // namespace reference

}  // namespace fastinfer::cpu
FASTINFER_CPU_INTRINSIC_WARNINGS_ON
