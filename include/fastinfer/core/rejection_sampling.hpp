// The exact rule of speculative decoding at one row (Leviathan et al. 2023,
// Chen et al. 2023), on host distributions: keep a drafted token d drawn
// from q with probability min(1, p(d) / q(d)), else draw from the residual
// normalise(max(0, p - q)). A drafter without a distribution (prompt
// lookup, n-grams) has q one-hot at d: d is kept with probability p(d) and
// the residual is p without d.
//
// The speculative verifier (speculative/speculative_verifier.hpp) walks
// chains and trees with these; a backend that picks rows where they are
// (backend.hpp's accept_rows) applies exact_pick to each row, so both give
// the same tokens from the same rows and coins.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fastinfer::rejection {

// Whether d (drawn from q; nullptr: one-hot at d) is kept under p, with
// `coin` in [0, 1).
inline bool accept_test(const float* p, const float* q, std::int32_t d, float coin) {
  const double pd = p[d];
  const double qd = q ? double(q[d]) : 1.0;
  if (qd <= 0.0) return pd > 0.0;  // q could not have drawn it; keep it only if p allows it
  return double(coin) * qd < pd;
}

// p <- max(0, p - q) (unnormalised; a sampler's sample_from_weights
// normalises). Returns false when nothing is left (p == q up to rounding):
// then p is kept as it was.
inline bool subtract_residual(float* p, const float* q, std::int32_t d, int vocab,
                              std::vector<float>& scratch) {
  scratch.assign(p, p + vocab);
  double total = 0;
  if (q) {
    for (int x = 0; x < vocab; ++x) {
      scratch[std::size_t(x)] = std::max(0.0f, p[x] - q[x]);
      total += scratch[std::size_t(x)];
    }
  } else {
    scratch[std::size_t(d)] = 0.0f;
    for (int x = 0; x < vocab; ++x) total += scratch[std::size_t(x)];
  }
  if (!(total > 0.0)) return false;
  std::copy(scratch.begin(), scratch.end(), p);
  return true;
}

// p <- p / sum(p) (no-op on an all-zero row).
inline void normalise(float* p, int vocab) {
  double total = 0;
  for (int x = 0; x < vocab; ++x) total += double(p[x]);
  if (!(total > 0.0)) return;
  for (int x = 0; x < vocab; ++x) p[x] = float(double(p[x]) / total);
}

// The token the exact rule emits at one row: d when it is kept, else a
// draw from the residual with `residual_coin` (p becomes the residual). A
// draft whose residual is empty (p == q up to rounding) is kept: its
// acceptance probability is 1. d < 0 (the bonus row after the last draft):
// a draw from p. So the result equals d exactly when d is kept, and a chain
// is the drafts up to the first pick that differs, then that pick.
template <class Sampler>
std::int32_t exact_pick(float* p, const float* q, std::int32_t d, int vocab, float accept_coin,
                        float residual_coin, Sampler& sampler, std::vector<float>& scratch) {
  if (d >= 0 && (accept_test(p, q, d, accept_coin) || !subtract_residual(p, q, d, vocab, scratch))) return d;
  return sampler.sample_from_weights(p, vocab, residual_coin);
}

}  // namespace fastinfer::rejection
