// Scalar number-format conversions against independent references: decoding
// against the textbook formula (ldexp of the fields), encoding against a
// nearest-value search over the decoded code table, and f16 against the F16C
// instruction where the compiler offers it.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/tensor.hpp"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace {

using fastinfer::f32_bits;
using fastinfer::f32_from_bits;

// A binary float format described by its fields, and the scalar functions
// under test. `ieee_inf` formats overflow to infinity; the others saturate.
struct Format {
  const char* name;
  int exp_bits, man_bits, bias;
  bool ieee_inf;    // top exponent = inf/NaN (f16, bf16, e5m2); else only S.1111.111 is NaN (e4m3)
  bool saturating;  // finite out-of-range values clamp to max (fp8) rather than go to inf
  std::uint32_t (*encode)(float);
  float (*decode)(std::uint32_t);

  int bits() const { return 1 + exp_bits + man_bits; }
  std::uint32_t codes() const { return 1u << bits(); }
  std::uint32_t sign_bit() const { return 1u << (bits() - 1); }
  std::uint32_t inf_code() const { return std::uint32_t((1u << exp_bits) - 1) << man_bits; }
  std::uint32_t max_code() const { return ieee_inf ? inf_code() - 1 : (sign_bit() - 2); }
  bool is_nan_code(std::uint32_t c) const {
    const std::uint32_t mag = c & (sign_bit() - 1);
    return ieee_inf ? mag > inf_code() : mag == sign_bit() - 1;
  }
};

const Format kF16{"f16",
                  5,
                  10,
                  15,
                  true,
                  false,
                  [](float f) { return std::uint32_t(fastinfer::f32_to_f16(f)); },
                  [](std::uint32_t c) { return fastinfer::f16_to_f32(std::uint16_t(c)); }};
const Format kBF16{"bf16",
                   8,
                   7,
                   127,
                   true,
                   false,
                   [](float f) { return std::uint32_t(fastinfer::f32_to_bf16(f)); },
                   [](std::uint32_t c) { return fastinfer::bf16_to_f32(std::uint16_t(c)); }};
const Format kE4M3{"fp8e4m3",
                   4,
                   3,
                   7,
                   false,
                   true,
                   [](float f) { return std::uint32_t(fastinfer::f32_to_fp8e4m3(f)); },
                   [](std::uint32_t c) { return fastinfer::fp8e4m3_to_f32(std::uint8_t(c)); }};
const Format kE5M2{"fp8e5m2",
                   5,
                   2,
                   15,
                   true,
                   true,
                   [](float f) { return std::uint32_t(fastinfer::f32_to_fp8e5m2(f)); },
                   [](std::uint32_t c) { return fastinfer::fp8e5m2_to_f32(std::uint8_t(c)); }};

// The value a code stands for, from its fields alone (double is exact here).
double formula_value(const Format& fmt, std::uint32_t c) {
  const bool neg = (c & fmt.sign_bit()) != 0;
  const std::uint32_t e = (c >> fmt.man_bits) & ((1u << fmt.exp_bits) - 1);
  const std::uint32_t m = c & ((1u << fmt.man_bits) - 1);
  double v;
  if (fmt.is_nan_code(c)) return std::numeric_limits<double>::quiet_NaN();
  if (fmt.ieee_inf && e == (1u << fmt.exp_bits) - 1) {
    v = std::numeric_limits<double>::infinity();
  } else if (e == 0) {
    v = std::ldexp(double(m), 1 - fmt.bias - fmt.man_bits);
  } else {
    v = std::ldexp(double((1u << fmt.man_bits) + m), int(e) - fmt.bias - fmt.man_bits);
  }
  return neg ? -v : v;
}

// Independent encoder: nearest code by searching the table of positive
// finite values; a tie goes to the even code. Beyond max: saturate, or for
// IEEE overflow treat infinity as the code after max at value 2^(emax+1).
std::uint32_t reference_encode(const Format& fmt, float f) {
  const bool neg = std::signbit(f);
  const std::uint32_t sign = neg ? fmt.sign_bit() : 0;
  const double a = std::fabs(double(f));
  if (std::isnan(a)) return ~0u;  // callers check NaN-ness separately
  static std::vector<double> cache[4];
  const int slot = fmt.bits() == 16 ? (fmt.exp_bits == 5 ? 0 : 1) : (fmt.exp_bits == 4 ? 2 : 3);
  std::vector<double>& table = cache[slot];
  if (table.empty()) {
    for (std::uint32_t c = 0; c <= fmt.max_code(); ++c) table.push_back(formula_value(fmt, c));
    if (!fmt.saturating) {
      const double next = 2 * table.back() - table[table.size() - 2];  // one more ulp: 2^(emax+1)
      table.push_back(next);                                           // index == inf_code
    }
  }
  if (std::isinf(a)) return sign | (fmt.ieee_inf ? fmt.inf_code() : fmt.max_code());
  if (a >= table.back()) return sign | std::uint32_t(table.size() - 1);
  const auto it = std::upper_bound(table.begin(), table.end(), a);
  const std::uint32_t hi = std::uint32_t(it - table.begin());
  const std::uint32_t lo = hi - 1;
  const double dlo = a - table[lo], dhi = table[hi] - a;
  std::uint32_t c = dlo < dhi ? lo : dhi < dlo ? hi : ((lo & 1u) == 0 ? lo : hi);
  return sign | c;
}

// f32 inputs that probe every rounding boundary: for each pair of adjacent
// codes, the midpoint and its f32 neighbours, the codes themselves, and
// random f32 bit patterns over the whole range.
std::vector<float> probe_values(const Format& fmt, std::size_t n_random) {
  std::vector<float> out;
  for (std::uint32_t c = 0; c < fmt.max_code(); ++c) {
    const double lo = formula_value(fmt, c), hi = formula_value(fmt, c + 1);
    const float mid = float((lo + hi) / 2);  // exact: fewer than 24 significant bits
    for (float v : {float(lo), mid, std::nextafter(mid, 0.f), std::nextafter(mid, INFINITY)}) {
      out.push_back(v);
      out.push_back(-v);
    }
  }
  std::mt19937 rng(12345);
  for (std::size_t i = 0; i < n_random; ++i) out.push_back(f32_from_bits(std::uint32_t(rng())));
  const float specials[] = {0.f,
                            -0.f,
                            INFINITY,
                            -INFINITY,
                            std::numeric_limits<float>::max(),
                            std::numeric_limits<float>::denorm_min(),
                            std::numeric_limits<float>::min(),
                            65504.f,
                            65520.f,
                            448.f,
                            464.f,
                            480.f,
                            57344.f,
                            61440.f,
                            65536.f};
  for (float s : specials) {
    out.push_back(s);
    out.push_back(-s);
  }
  return out;
}

// Loops report only the first mismatch: a Catch2 assertion per code would
// make the 2^16-code sweeps slow under sanitizers.
void check_format(const Format& fmt) {
  INFO("format " << fmt.name);
  SECTION("every code decodes to its formula value") {
    for (std::uint32_t c = 0; c < fmt.codes(); ++c) {
      const double want = formula_value(fmt, c);
      const float got = fmt.decode(c);
      const bool ok = std::isnan(want) ? std::isnan(got)
                                       : double(got) == want &&  // signed zero too
                                             std::signbit(got) == ((c & fmt.sign_bit()) != 0);
      if (!ok) FAIL("code " << c << " decodes to " << got << ", formula says " << want);
    }
  }
  SECTION("every code round-trips; NaN stays NaN with its sign") {
    for (std::uint32_t c = 0; c < fmt.codes(); ++c) {
      const std::uint32_t back = fmt.encode(fmt.decode(c));
      const bool ok = fmt.is_nan_code(c)
                          ? fmt.is_nan_code(back) && (back & fmt.sign_bit()) == (c & fmt.sign_bit())
                          : back == c;
      if (!ok) FAIL("code " << c << " round-trips to " << back);
    }
  }
  SECTION("encoding matches the nearest-even reference at every boundary") {
    for (float f : probe_values(fmt, 200000)) {
      const std::uint32_t got = fmt.encode(f);
      const bool ok = std::isnan(f) ? fmt.is_nan_code(got) && ((got & fmt.sign_bit()) != 0) == std::signbit(f)
                                    : got == reference_encode(fmt, f);
      if (!ok) {
        FAIL("f = " << f << " (bits " << f32_bits(f) << ") encodes to " << got << ", reference "
                    << reference_encode(fmt, f));
      }
    }
  }
}

}  // namespace

TEST_CASE("f16 conversions are exact, round to nearest even, overflow to inf", "[dtype]") {
  check_format(kF16);
}
TEST_CASE("bf16 conversions are exact, round to nearest even, overflow to inf", "[dtype]") {
  check_format(kBF16);
}
TEST_CASE("fp8 e4m3 conversions are exact, round to nearest even, saturate", "[dtype]") {
  check_format(kE4M3);
}
TEST_CASE("fp8 e5m2 conversions are exact, round to nearest even, saturate", "[dtype]") {
  check_format(kE5M2);
}

TEST_CASE("fp8 saturation, infinities, signed zero and subnormals", "[dtype]") {
  using namespace fastinfer;
  REQUIRE(fp8e4m3_to_f32(0x7e) == kFp8E4M3Max);
  REQUIRE(fp8e5m2_to_f32(0x7b) == kFp8E5M2Max);
  // Between max and the next (non-existent) step: clamp, never NaN.
  REQUIRE(f32_to_fp8e4m3(463.9f) == 0x7e);
  REQUIRE(f32_to_fp8e4m3(464.f) == 0x7e);
  REQUIRE(f32_to_fp8e4m3(1e30f) == 0x7e);
  REQUIRE(f32_to_fp8e4m3(-1e30f) == 0xfe);
  REQUIRE(f32_to_fp8e4m3(INFINITY) == 0x7e);  // E4M3 has no inf: saturating mode
  REQUIRE(f32_to_fp8e4m3(-INFINITY) == 0xfe);
  REQUIRE(f32_to_fp8e4m3(NAN) == 0x7f);
  REQUIRE(f32_to_fp8e5m2(61440.f) == 0x7b);  // would round to inf in IEEE mode
  REQUIRE(f32_to_fp8e5m2(3e38f) == 0x7b);
  REQUIRE(f32_to_fp8e5m2(-3e38f) == 0xfb);
  REQUIRE(f32_to_fp8e5m2(INFINITY) == 0x7c);  // inf stays inf
  REQUIRE(f32_to_fp8e5m2(-INFINITY) == 0xfc);
  REQUIRE(std::isnan(fp8e5m2_to_f32(f32_to_fp8e5m2(NAN))));
  REQUIRE(f32_to_fp8e4m3(-0.f) == 0x80);
  REQUIRE(f32_to_fp8e5m2(-0.f) == 0x80);
  REQUIRE(std::signbit(fp8e4m3_to_f32(0x80)));
  // Smallest subnormals and the ties just below them.
  REQUIRE(f32_to_fp8e4m3(std::ldexp(1.f, -9)) == 0x01);
  REQUIRE(f32_to_fp8e4m3(std::ldexp(1.f, -10)) == 0x00);  // tie -> even (zero)
  REQUIRE(f32_to_fp8e4m3(std::ldexp(1.5f, -9)) == 0x02);  // tie 1.5 -> 2
  REQUIRE(f32_to_fp8e4m3(std::nextafter(std::ldexp(1.f, -10), 1.f)) == 0x01);
  REQUIRE(f32_to_fp8e5m2(std::ldexp(1.f, -16)) == 0x01);
  REQUIRE(f32_to_fp8e5m2(std::ldexp(1.f, -17)) == 0x00);
  REQUIRE(f32_to_fp8e5m2(-std::ldexp(3.f, -17)) == 0x82);  // tie 1.5 -> 2, sign kept
  REQUIRE(f32_to_fp8e4m3(std::numeric_limits<float>::denorm_min()) == 0x00);
  // Largest subnormal rounds up into the first normal binade.
  REQUIRE(f32_to_fp8e4m3(std::ldexp(7.5f, -9)) == 0x08);
}

#if defined(__F16C__)
TEST_CASE("f16 encoding agrees with the F16C instruction", "[dtype]") {
  std::vector<float> values = probe_values(kF16, 1000000);
  for (float f : values) {
    const std::uint16_t hw = std::uint16_t(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
    const std::uint16_t sw = fastinfer::f32_to_f16(f);
    if (sw != hw) FAIL("f = " << f << " (bits " << f32_bits(f) << "): " << sw << " vs F16C " << hw);
  }
}
#endif

TEST_CASE("MatrixView::bytes counts what each layout stores", "[dtype]") {
  // rows and the CUDA backend's split rows hold exactly `rows` rows (the
  // split row keeps row_bytes: its quants, then its scales); the CPU's
  // regrouped Q8_0 pads the last group of 16 rows.
  for (const std::int64_t rows : {1, 9, 16, 19, 37, 64, 130}) {
    INFO("rows " << rows);
    const std::int64_t cols = 256;
    const std::size_t row = fastinfer::row_bytes(fastinfer::DType::Q8_0, cols);
    fastinfer::MatrixView m{fastinfer::DType::Q8_0, nullptr, rows, cols};
    CHECK(m.bytes() == row * std::size_t(rows));
    m.layout = fastinfer::MatrixLayout::q8_0_split_rows;
    CHECK(m.bytes() == row * std::size_t(rows));
    m.layout = fastinfer::MatrixLayout::q8_0_row_groups;
    CHECK(m.bytes() == row * std::size_t((rows + 15) / 16 * 16));
  }
}
