// first_argmax (std-only, for bookkeeping that holds logits but no backend)
// against a plain loop and against the CPU backend's vectorised argmax_token,
// which greedy decoding uses: the same token on every row, the same refusals.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/core/argmax.hpp"

namespace {

std::int32_t plain_first_max(const std::vector<float>& x) {
  std::size_t best = 0;
  for (std::size_t i = 1; i < x.size(); ++i)
    if (x[i] > x[best]) best = i;
  return std::int32_t(best);
}

}  // namespace

TEST_CASE("first_argmax: the first maximum, as cpu::argmax_token, over odd sizes, ties and -inf", "[argmax]") {
  std::mt19937 rng(3);
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int n : {1, 2, 7, 15, 16, 17, 31, 33, 255, 256, 257, 1000, 32000}) {
    for (int trial = 0; trial < 8; ++trial) {
      std::vector<float> x(static_cast<std::size_t>(n));
      // Few distinct values, so ties for the maximum are common.
      std::uniform_int_distribution<int> level(0, trial % 2 ? 3 : 1000);
      for (float& v : x) v = float(level(rng)) * 0.25f;
      if (trial % 3 == 0)
        for (std::size_t i = 1; i < x.size(); i += 3) x[i] = ninf;  // masked tokens (never all)
      INFO("n " << n << ", trial " << trial);
      CHECK(fastinfer::first_argmax(x.data(), n) == plain_first_max(x));
      CHECK(fastinfer::first_argmax(x.data(), n) == fastinfer::cpu::argmax_token(x.data(), n));
    }
  }
}

TEST_CASE("first_argmax refuses NaN, +inf, all -inf and empty rows as cpu::argmax_token does", "[argmax]") {
  for (int n : {1, 5, 40}) {
    std::vector<float> x(static_cast<std::size_t>(n), 0.5f);
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
      x[std::size_t(n - 1)] = bad;
      CHECK_THROWS_AS(fastinfer::first_argmax(x.data(), n), fastinfer::NumericError);
      CHECK_THROWS_AS(fastinfer::cpu::argmax_token(x.data(), n), fastinfer::NumericError);
    }
    std::fill(x.begin(), x.end(), -std::numeric_limits<float>::infinity());
    CHECK_THROWS_WITH(fastinfer::first_argmax(x.data(), n), Catch::Contains("every logit is -inf"));
  }
  const float one = 1.0f;
  CHECK_THROWS_AS(fastinfer::first_argmax(&one, 0), fastinfer::InvalidArgument);
}
