// Workload command-line words (fastinfer-serve-bench, fastinfer-disaggregated
// --prompt-len / --output-len): "N" or "MIN:MAX" to engine::LengthRange.
// Command-line grammar, so it lives with the programs.
#pragma once

#include <cstdint>
#include <exception>
#include <string>

#include "fastinfer/core/error.hpp"
#include "fastinfer/engine/workload.hpp"

namespace fastinfer::examples {

// InvalidArgument naming the text unless it is N or MIN:MAX with
// 1 <= MIN <= MAX <= LengthRange::kMaxLength.
inline engine::LengthRange parse_length_range(const std::string& text) {
  using engine::LengthRange;
  std::int64_t lo = 0, hi = 0;
  try {
    const auto colon = text.find(':');
    std::size_t used = 0;
    const std::string a = text.substr(0, colon), b = colon == std::string::npos ? a : text.substr(colon + 1);
    lo = std::stoll(a, &used);
    FASTINFER_CHECK(used == a.size(), InvalidArgument, "");
    hi = std::stoll(b, &used);
    FASTINFER_CHECK(used == b.size(), InvalidArgument, "");
  } catch (const std::exception&) {
    throw_error<InvalidArgument>("length range '", text, "': expected N or MIN:MAX");
  }
  FASTINFER_CHECK(lo >= 1 && hi >= lo && hi <= LengthRange::kMaxLength, InvalidArgument, "length range '", text,
                  "': need 1 <= MIN <= MAX <= ", LengthRange::kMaxLength);
  LengthRange r;
  r.min = std::int32_t(lo);
  r.max = std::int32_t(hi);
  return r;
}

}  // namespace fastinfer::examples
