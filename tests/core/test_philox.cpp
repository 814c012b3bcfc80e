// Philox 4x32-10 against Random123's published known-answer vectors, plus
// the properties sampling relies on: counter addressing, determinism, and
// a uniform distribution of the 24-bit floats.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "fastinfer/core/philox.hpp"

using fastinfer::Philox4x32;

TEST_CASE("Philox4x32-10 reproduces the Random123 known-answer vectors", "[philox]") {
  struct Kat {
    Philox4x32::Counter ctr;
    Philox4x32::Key key;
    Philox4x32::Counter want;
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},  // digits of pi
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat& k : kats) REQUIRE(Philox4x32::block(k.ctr, k.key) == k.want);
  // constexpr: usable at compile time, so the KAT also holds there.
  static_assert(Philox4x32::block({0, 0, 0, 0}, {0, 0})[0] == 0x6627e8d5u,
                "Philox4x32-10 must match Random123 at compile time");
}

TEST_CASE("the engine walks consecutive counter blocks of its stream", "[philox]") {
  const std::uint64_t seed = 0x0123456789abcdefull, stream = 0xfedcba9876543210ull;
  Philox4x32 engine(seed, stream, 0xfffffffeull);  // crosses the 32-bit counter word boundary
  for (std::uint64_t index = 0xfffffffeull; index < 0x100000002ull; ++index) {
    const auto block = Philox4x32::block(Philox4x32::make_counter(stream, index), Philox4x32::make_key(seed));
    for (int w = 0; w < 4; ++w) REQUIRE(engine() == block[w]);
  }
}

TEST_CASE("uniform_float depends on (seed, stream, index) alone", "[philox]") {
  using fastinfer::uniform_float;
  // Same inputs, same value, regardless of what else was drawn in between.
  const float a = uniform_float(42, 0, 7);
  for (int i = 0; i < 100; ++i) (void)uniform_float(42, 0, std::uint64_t(i));
  REQUIRE(uniform_float(42, 0, 7) == a);
  REQUIRE(uniform_float(42, fastinfer::RandomStream::Sampling, 7) == a);
  // Each coordinate changes the value.
  REQUIRE(uniform_float(43, 0, 7) != a);
  REQUIRE(uniform_float(42, 1, 7) != a);
  REQUIRE(uniform_float(42, 0, 8) != a);
  // Seeds differing only in the high 32 bits are different keys.
  REQUIRE(uniform_float(42 + (1ull << 32), 0, 7) != a);
}

TEST_CASE("uniform floats lie in 0 <= u < 1, carry 24 bits and are uniform", "[philox]") {
  // Chi-square over 64 equal bins with 640k draws: under uniformity the
  // statistic has 63 degrees of freedom (mean 63, sd ~11.2); 130 is beyond
  // p = 1e-6, and the seed is fixed so the test is deterministic.
  constexpr int kBins = 64;
  constexpr std::uint64_t kDraws = 640000;
  std::vector<double> count(kBins, 0.0);
  std::set<std::uint32_t> low_bits;
  double sum = 0;
  for (std::uint64_t i = 0; i < kDraws; ++i) {
    const float u = fastinfer::uniform_float(2024, 0, i);
    REQUIRE(u >= 0.0f);
    REQUIRE(u < 1.0f);
    count[std::size_t(u * kBins)] += 1;
    sum += u;
    if (i < 4096) low_bits.insert(std::uint32_t(u * 16777216.0f) & 0xffu);  // exact: 24-bit grid
  }
  double chi2 = 0;
  const double expected = double(kDraws) / kBins;
  for (double c : count) chi2 += (c - expected) * (c - expected) / expected;
  CHECK(chi2 < 130.0);
  CHECK(std::fabs(sum / kDraws - 0.5) < 0.002);  // sd of the mean: 0.00036
  CHECK(low_bits.size() == 256);                 // the lowest bits of the 24 are live
  // Largest value is 1 - 2^-24, never 1.
  REQUIRE(Philox4x32::to_unit_float(0xffffffffu) == 1.0f - 1.0f / 16777216.0f);
  REQUIRE(Philox4x32::to_unit_float(0) == 0.0f);
}

TEST_CASE("the engine works with <random> distributions", "[philox]") {
  Philox4x32 a(7), b(7);
  std::uniform_int_distribution<int> d(0, 1000);
  for (int i = 0; i < 100; ++i) REQUIRE(d(a) == d(b));
}
