// The first maximum of a row of logits, in plain C++: the greedy choice for
// host-side bookkeeping that holds logits but no backend (the lookahead
// drafter's Jacobi window). Same result and same refusals as the CPU
// backend's vectorised cpu::argmax_token, which shares the checks below.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "fastinfer/core/error.hpp"

namespace fastinfer {

namespace detail {

inline void check_logits_size(std::int64_t n) {
  FASTINFER_CHECK(n >= 1 && n <= std::numeric_limits<std::int32_t>::max(), InvalidArgument,
                  "sampling needs 1 to 2^31-1 logits, got ", n);
}

// A sampler's uniform coin.
inline void check_coin(float coin) {
  FASTINFER_CHECK(coin >= 0.0f && coin < 1.0f, InvalidArgument, "sampling coin must be in [0, 1), got ",
                  coin);
}

// `mx` is a row's largest logit, NaN when any logit is NaN.
inline void check_max(float mx) {
  // NumericError, not InvalidArgument: broken weights produce these, not a
  // caller's bad request.
  FASTINFER_CHECK(!std::isnan(mx), NumericError, "logits contain NaN");
  FASTINFER_CHECK(mx != std::numeric_limits<float>::infinity(), NumericError, "logits contain +inf");
  FASTINFER_CHECK(mx != -std::numeric_limits<float>::infinity(), NumericError,
                  "every logit is -inf: nothing to sample");
}

}  // namespace detail

// Index of the first maximum of logits[0..n). Rejects NaN / +inf / all -inf
// logits (NumericError) and n outside [1, 2^31). Plain loops: ~40-50 us for
// a 32000-token row on Zen 5 (loaded), 7-40x the vectorised kernel, so a
// hot caller takes its backend's argmax when it has one.
inline std::int32_t first_argmax(const float* logits, std::int64_t n) {
  detail::check_logits_size(n);
  float mx = -std::numeric_limits<float>::infinity();
  bool nan = false;
  for (std::int64_t i = 0; i < n; ++i) {
    nan = nan || std::isnan(logits[i]);
    mx = std::max(mx, logits[i]);
  }
  detail::check_max(nan ? std::numeric_limits<float>::quiet_NaN() : mx);
  return std::int32_t(std::find(logits, logits + n, mx) - logits);
}

}  // namespace fastinfer
