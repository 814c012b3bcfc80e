// Vectorised element-wise kernels against the scalar references, over odd
// lengths and tails. Tolerances are stated per kernel.
#include <catch2/catch.hpp>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/backend/cpu/reference.hpp"
#include "test_kernels_support.hpp"

using namespace fastinfer;
using fastinfer::testing::random_floats;

namespace {
const std::int64_t kLengths[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 255, 256, 257, 1000, 4099};

bool rel_close(float a, float b, float rel, float abs_tol = 0.0f) {
  return std::fabs(a - b) <= rel * std::fabs(b) + abs_tol;
}
}  // namespace

namespace {
void check_widening(DType dt) {
  std::vector<std::uint16_t> codes(65536 + 5);
  for (std::size_t i = 0; i < codes.size(); ++i) codes[i] = std::uint16_t(i);
  std::vector<float> got(codes.size()), want(codes.size());
  cpu::load_row(dt, codes.data(), got.data(), std::int64_t(codes.size()));
  cpu::reference::load_row(dt, codes.data(), want.data(), std::int64_t(codes.size()));
  for (std::size_t i = 0; i < codes.size(); ++i) {
    // Hardware conversion quiets signalling NaNs; any NaN is the same NaN here.
    if (std::isnan(want[i])) {
      REQUIRE(std::isnan(got[i]));
    } else if (f32_bits(got[i]) != f32_bits(want[i])) {
      FAIL(dtype_name(dt) << " code " << codes[i] << ": " << got[i] << " != " << want[i]);
    }
  }
}
}  // namespace

TEST_CASE("load_row widens every bf16 and f16 code exactly as the scalar conversion") {
  check_widening(DType::BF16);
  check_widening(DType::F16);
  // f32 rows are a copy.
  const auto v = random_floats(33, 3);
  std::vector<float> out(33);
  cpu::load_row(DType::F32, v.data(), out.data(), 33);
  CHECK(std::memcmp(out.data(), v.data(), 33 * 4) == 0);
}

TEST_CASE("rmsnorm matches the reference within 1e-5 relative") {
  // The sum of squares is reordered; scale is 1/sqrt of it: a few ulp.
  for (std::int64_t n : kLengths) {
    const auto x = random_floats(static_cast<std::size_t>(n), std::uint32_t(n), -3.0f, 3.0f);
    const auto wt = random_floats(static_cast<std::size_t>(n), std::uint32_t(n + 1));
    std::vector<float> got(static_cast<std::size_t>(n)), want(static_cast<std::size_t>(n));
    cpu::rmsnorm(got.data(), x.data(), wt.data(), n, 1e-5f);
    cpu::reference::rmsnorm(want.data(), x.data(), wt.data(), n, 1e-5f);
    for (std::int64_t i = 0; i < n; ++i) REQUIRE(rel_close(got[i], want[i], 1e-5f, 1e-7f));
    // In place (out == x), as the model calls it.
    std::vector<float> inplace = x;
    cpu::rmsnorm(inplace.data(), inplace.data(), wt.data(), n, 1e-5f);
    CHECK(inplace == got);
  }
}

TEST_CASE("rope matches the reference in both styles within 1e-6 absolute") {
  // Same f32 angles as the reference; only FMA contraction of the rotation
  // may differ (values are in [-1, 1], so 1e-6 is a few ulp).
  for (RopeStyle style : {RopeStyle::Interleaved, RopeStyle::HalfSplit})
    for (int head_dim : {2, 4, 8, 16, 18, 34, 64, 128})
      for (int n_heads : {1, 3, 8})
        for (int pos : {0, 1, 7, 100, 1023}) {
          const auto v = random_floats(static_cast<std::size_t>(n_heads * head_dim),
                                       std::uint32_t(head_dim * 1000 + pos));
          std::vector<float> got = v, want = v;
          cpu::rope(got.data(), n_heads, head_dim, pos, 10000.0f, style);
          cpu::reference::rope(want.data(), n_heads, head_dim, pos, 10000.0f, style);
          for (std::size_t i = 0; i < v.size(); ++i) REQUIRE(std::fabs(got[i] - want[i]) <= 1e-6f);
        }
  // The cached table must follow a change of theta at the same position.
  std::vector<float> a(16, 1.0f), b(16, 1.0f);
  cpu::rope(a.data(), 1, 16, 5, 10000.0f, RopeStyle::Interleaved);
  cpu::rope(a.data(), 1, 16, 5, 500000.0f, RopeStyle::Interleaved);
  cpu::reference::rope(b.data(), 1, 16, 5, 10000.0f, RopeStyle::Interleaved);
  cpu::reference::rope(b.data(), 1, 16, 5, 500000.0f, RopeStyle::Interleaved);
  for (int i = 0; i < 16; ++i) REQUIRE(std::fabs(a[i] - b[i]) <= 1e-6f);
}

TEST_CASE("rope gives the same bits at a position whatever positions came before") {
  // The per-thread table holds every position seen so far and grows on
  // demand: rows of one pass at scattered positions, a jump far ahead, then
  // going back, must each rotate exactly as a first call at that position.
  const int head_dim = 8, n_heads = 3;
  const auto v = random_floats(std::size_t(n_heads * head_dim), 99);
  auto rotate = [&](int pos, float theta) {
    std::vector<float> r = v;
    cpu::rope(r.data(), n_heads, head_dim, pos, theta, RopeStyle::Interleaved);
    return r;
  };
  const float theta = 12345.0f;  // a theta no other test uses: the first call builds the table
  const std::vector<float> first_at_9 = rotate(9, theta);
  for (int pos : {0, 3, 40, 9, 5000, 2, 9, 4999}) {
    const std::vector<float> got = rotate(pos, theta);
    std::vector<float> want = v;
    cpu::reference::rope(want.data(), n_heads, head_dim, pos, theta, RopeStyle::Interleaved);
    for (std::size_t i = 0; i < v.size(); ++i) REQUIRE(std::fabs(got[i] - want[i]) <= 1e-6f);
    if (pos == 9) CHECK(std::memcmp(got.data(), first_at_9.data(), got.size() * sizeof(float)) == 0);
  }
  // Two models decoding in turn on one thread (a drafter and its target):
  // each keeps its own table, and both stay exact.
  for (int pos = 100; pos < 110; ++pos)
    for (int hd : {8, 16}) {
      const auto u = random_floats(std::size_t(hd), std::uint32_t(pos * 31 + hd));
      std::vector<float> got = u, want = u;
      cpu::rope(got.data(), 1, hd, pos, hd == 8 ? theta : 10000.0f, RopeStyle::HalfSplit);
      cpu::reference::rope(want.data(), 1, hd, pos, hd == 8 ? theta : 10000.0f, RopeStyle::HalfSplit);
      for (std::size_t i = 0; i < u.size(); ++i) REQUIRE(std::fabs(got[i] - want[i]) <= 1e-6f);
    }
  std::vector<float> r = v;
  CHECK_THROWS_WITH(cpu::rope(r.data(), n_heads, head_dim, -4, theta, RopeStyle::Interleaved),
                    Catch::Contains("-4"));
  CHECK(std::memcmp(r.data(), v.data(), v.size() * sizeof(float)) == 0);
}

TEST_CASE("swiglu matches the reference within 4e-6 relative") {
  // xsimd::exp is within a couple of ulp of std::exp.
  for (std::int64_t n : kLengths) {
    const auto g = random_floats(static_cast<std::size_t>(n), std::uint32_t(n * 3), -12.0f, 12.0f);
    const auto up = random_floats(static_cast<std::size_t>(n), std::uint32_t(n * 3 + 1), -2.0f, 2.0f);
    std::vector<float> got = g, want = g;
    cpu::swiglu(got.data(), up.data(), n);
    cpu::reference::swiglu(want.data(), up.data(), n);
    for (std::int64_t i = 0; i < n; ++i) REQUIRE(rel_close(got[i], want[i], 4e-6f, 1e-30f));
  }
}

TEST_CASE("swiglu gives a value the same bits wherever it sits in the array") {
  // The model calls it over rows x hidden_dim values: a row's bits must not
  // depend on how many rows share the call (batch invariance), so the tail
  // must compute as the body does.
  const auto g = random_floats(64, 91, -12.0f, 12.0f);
  const auto up = random_floats(64, 92, -2.0f, 2.0f);
  std::vector<float> alone = g;
  cpu::swiglu(alone.data(), up.data(), 64);
  for (std::int64_t offset : {0, 1, 5, 13, 16}) {
    for (std::int64_t n : {1, 7, 17, 33, 64}) {
      if (offset + n > 64) continue;
      CAPTURE(offset, n);
      std::vector<float> part(g.begin() + offset, g.begin() + offset + n);
      cpu::swiglu(part.data(), up.data() + offset, n);
      REQUIRE(std::memcmp(part.data(), alone.data() + offset, std::size_t(n) * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("softmax matches the reference within 1e-5 relative and sums to 1") {
  for (std::int64_t n : kLengths) {
    const auto x = random_floats(static_cast<std::size_t>(n), std::uint32_t(n * 5), -20.0f, 20.0f);
    std::vector<float> got = x, want = x;
    cpu::softmax(got.data(), n);
    cpu::reference::softmax(want.data(), n);
    double sum = 0.0;
    for (std::int64_t i = 0; i < n; ++i) {
      REQUIRE(rel_close(got[i], want[i], 1e-5f, 1e-30f));
      sum += got[i];
    }
    CHECK(sum == Approx(1.0).epsilon(1e-5));
  }
  // The largest value can sit in the tail or in any lane.
  std::vector<float> x(19, 0.0f);
  x[18] = 50.0f;
  cpu::softmax(x.data(), 19);
  CHECK(x[18] == Approx(1.0f));
}

TEST_CASE("argmax returns the reference's index: first maximum wins") {
  for (std::int64_t n : kLengths) {
    auto x = random_floats(static_cast<std::size_t>(n), std::uint32_t(n * 7));
    CHECK(cpu::argmax(x.data(), n) == cpu::reference::argmax(x.data(), n));
    // Ties: the same maximum planted at several positions in different lanes
    // and in the tail; the first must win wherever it is.
    for (std::int64_t first = 0; first < n; first += std::max<std::int64_t>(1, n / 13)) {
      auto y = x;
      for (std::int64_t j = first; j < n; j += 5) y[std::size_t(j)] = 2.0f;
      const std::int64_t got = cpu::argmax(y.data(), n);
      REQUIRE(got == first);
      REQUIRE(got == cpu::reference::argmax(y.data(), n));
    }
    // All equal: index 0.
    std::vector<float> same(static_cast<std::size_t>(n), 0.25f);
    CHECK(cpu::argmax(same.data(), n) == 0);
  }
}

TEST_CASE("argmax agrees with the reference on infinities and NaNs") {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (std::int64_t n : {1, 9, 17, 40, 100}) {
    std::vector<float> all_neg_inf(static_cast<std::size_t>(n), -inf);
    CHECK(cpu::argmax(all_neg_inf.data(), n) == cpu::reference::argmax(all_neg_inf.data(), n));
    auto x = random_floats(static_cast<std::size_t>(n), 11);
    x[0] = nan;  // nothing compares greater than x[0]: the reference keeps 0
    CHECK(cpu::argmax(x.data(), n) == cpu::reference::argmax(x.data(), n));
    x = random_floats(static_cast<std::size_t>(n), 12);
    for (std::int64_t j = 1; j < n; j += 3) x[std::size_t(j)] = nan;  // NaNs elsewhere never win
    CHECK(cpu::argmax(x.data(), n) == cpu::reference::argmax(x.data(), n));
    x[std::size_t(n - 1)] = inf;
    CHECK(cpu::argmax(x.data(), n) == cpu::reference::argmax(x.data(), n));
    std::vector<float> neg(static_cast<std::size_t>(n), -inf);
    neg[std::size_t(n / 2)] = -1e30f;
    CHECK(cpu::argmax(neg.data(), n) == cpu::reference::argmax(neg.data(), n));
  }
}

TEST_CASE("add matches the reference exactly") {
  for (std::int64_t n : kLengths) {
    const auto x = random_floats(static_cast<std::size_t>(n), std::uint32_t(n * 11));
    const auto y0 = random_floats(static_cast<std::size_t>(n), std::uint32_t(n * 11 + 1));
    std::vector<float> got = y0, want = y0;
    cpu::add(got.data(), x.data(), n);
    cpu::reference::add(want.data(), x.data(), n);
    CHECK(std::memcmp(got.data(), want.data(), std::size_t(n) * 4) == 0);
  }
}

TEST_CASE("the compiled instruction set is named") {
  const std::string isa = cpu::isa_name();
  CHECK_FALSE(isa.empty());
  INFO("isa " << isa << " lanes " << cpu::kLanes);
#if defined(__AVX2__) && FASTINFER_CPU_SIMD
  CHECK(cpu::kLanes >= 8);
#endif
}

TEST_CASE("kernels reject shapes they cannot serve, naming the value") {
  std::vector<float> v(8, 1.0f);
  CHECK_THROWS_WITH(cpu::rope(v.data(), 1, 7, 0, 10000.0f, RopeStyle::Interleaved),
                    Catch::Contains("head_dim") && Catch::Contains("7"));
  CHECK_THROWS_AS(cpu::rope(v.data(), 1, 0, 0, 10000.0f, RopeStyle::HalfSplit), InvalidArgument);
  CHECK_THROWS_WITH(cpu::softmax(v.data(), 0), Catch::Contains("softmax") && Catch::Contains("0"));
  CHECK_THROWS_AS(cpu::argmax(v.data(), 0), InvalidArgument);
  CHECK(v == std::vector<float>(8, 1.0f));  // left unchanged
}
