// Size arithmetic on values read from files and flags: 64-bit, and an
// overflow is a LimitError naming what was being sized, never a wrapped
// (small or negative) size that a later allocation or loop trusts.
#pragma once

#include <cstdint>
#include <limits>

#include "fastinfer/core/error.hpp"

namespace fastinfer {

// a * b for non-negative a, b; LimitError naming `what` when it exceeds int64.
inline std::int64_t checked_mul(std::int64_t a, std::int64_t b, const char* what) {
  FASTINFER_CHECK(a >= 0 && b >= 0, InvalidArgument, what, ": negative factor ", a < 0 ? a : b);
  FASTINFER_CHECK(a == 0 || b <= std::numeric_limits<std::int64_t>::max() / a, LimitError, what, ": ", a, " x ",
                  b, " overflows 64 bits");
  return a * b;
}

// a + b for non-negative a, b; LimitError naming `what` on overflow.
inline std::int64_t checked_add(std::int64_t a, std::int64_t b, const char* what) {
  FASTINFER_CHECK(a >= 0 && b >= 0, InvalidArgument, what, ": negative term ", a < 0 ? a : b);
  FASTINFER_CHECK(a <= std::numeric_limits<std::int64_t>::max() - b, LimitError, what, ": ", a, " + ", b,
                  " overflows 64 bits");
  return a + b;
}

// v as int32, or LimitError naming `what` and the limit.
inline std::int32_t checked_int32(std::int64_t v, const char* what) {
  FASTINFER_CHECK(v >= std::numeric_limits<std::int32_t>::min() && v <= std::numeric_limits<std::int32_t>::max(),
                  LimitError, what, " ", v, " exceeds the 32-bit limit ", std::numeric_limits<std::int32_t>::max());
  return std::int32_t(v);
}

}  // namespace fastinfer
