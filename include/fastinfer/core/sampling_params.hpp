// How to choose the next token from a row of logits: the one sampling-
// parameter struct of the library. A client fills it (sched::Request), the
// generation loops carry it (GenerationParams adds a stop length), the
// speculative verifier and every backend's sampler read it. Std-only, so the
// scheduler and the speculative bookkeeping can hold it without a backend.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastinfer/core/error.hpp"

namespace fastinfer {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (the first maximum wins)
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;        // 1 = off; in (0, 1]
  std::uint64_t seed = 0;    // Philox key of the request's own random stream
};

// Throws InvalidArgument naming the field and its value.
inline void validate(const SamplingParams& p) {
  FASTINFER_CHECK(p.temperature >= 0.0f && std::isfinite(p.temperature), InvalidArgument,
                  "sampling temperature must be finite and >= 0, got ", p.temperature);
  // Samplers scale logits by 1 / T: below 1 / FLT_MAX (a subnormal T) that
  // overflows, and inf * 0 at the maximum would be NaN.
  FASTINFER_CHECK(p.temperature == 0.0f || std::isfinite(1.0f / p.temperature), InvalidArgument,
                  "sampling temperature must be 0 (greedy) or at least 1/FLT_MAX (2.9e-39), got ",
                  p.temperature);
  FASTINFER_CHECK(p.top_k >= 0, InvalidArgument, "sampling top_k must be >= 0 (0 = off), got ", p.top_k);
  FASTINFER_CHECK(p.top_p > 0.0f && p.top_p <= 1.0f, InvalidArgument,
                  "sampling top_p must be in (0, 1], got ", p.top_p);
}

}  // namespace fastinfer
