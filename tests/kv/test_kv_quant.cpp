#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "fastinfer/kv/kv_quant.hpp"

using namespace fastinfer;
using namespace fastinfer::kv;

namespace {

std::vector<float> random_row(int d, std::mt19937& rng, float spread) {
  std::normal_distribution<float> n(0.3f, spread);
  std::vector<float> x(std::size_t(d), 0.0f);
  for (auto& v : x) v = n(rng);
  return x;
}

template <typename Q>
std::vector<float> round_trip(const std::vector<float>& x) {
  const int d = int(x.size());
  std::vector<std::uint8_t> codes(QuantTraits<Q>::code_bytes(d) + 1, 0xAB);
  std::vector<float> params(std::size_t(QuantTraits<Q>::params_per_row(d)) + 1, -7.0f);
  QuantTraits<Q>::encode(x.data(), d, codes.data(), params.data());
  // Encoders write exactly their declared footprint.
  REQUIRE(codes.back() == 0xAB);
  REQUIRE(params.back() == -7.0f);
  std::vector<float> y(x.size());
  decode_row<Q>(codes.data(), params.data(), d, y.data());
  return y;
}

// The documented error bound of each format for value i of row x.
template <typename Q>
float bound(const std::vector<float>& x, int i) {
  const int d = int(x.size());
  float amax = 0.0f;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  const float a = std::fabs(x[std::size_t(i)]);
  if constexpr (std::is_same_v<Q, F32>) return 0.0f;
  if constexpr (std::is_same_v<Q, F16>) return a * std::ldexp(1.0f, -11) + 1e-7f;
  if constexpr (std::is_same_v<Q, BF16>) return a * std::ldexp(1.0f, -8);
  if constexpr (std::is_same_v<Q, Int8>) return amax / 127.0f * 0.5001f;
  if constexpr (std::is_same_v<Q, FP8E4M3>)  // 3 mantissa bits; subnormal step 2^-9 of scale
    return a * std::ldexp(1.0f, -4) + amax / 448.0f * std::ldexp(1.0f, -10) + 1e-7f * amax;
  if constexpr (std::is_same_v<Q, FP8E5M2>)
    return a * std::ldexp(1.0f, -3) + amax / 57344.0f * std::ldexp(1.0f, -17) + 1e-7f * amax;
  if constexpr (std::is_same_v<Q, Int4>) {
    const int g = QuantTraits<Int4>::group_size(d);
    const int g0 = i / g * g;
    float lo = x[std::size_t(g0)], hi = lo;
    for (int j = g0; j < g0 + g; ++j) {
      lo = std::min(lo, x[std::size_t(j)]);
      hi = std::max(hi, x[std::size_t(j)]);
    }
    return (hi - lo) / 15.0f * 0.5001f + 1e-6f * (std::fabs(hi) + std::fabs(lo));
  }
  return 0.0f;
}

}  // namespace

TEMPLATE_TEST_CASE("kv quant: round trip stays within the format's error bound", "[kv]", F32, F16, BF16, Int8,
                   Int4, FP8E4M3, FP8E5M2) {
  std::mt19937 rng(7);
  for (int d : {8, 16, 24, 40, 64, 128, 256}) {
    for (float spread : {1e-3f, 1.0f, 30.0f}) {
      const auto x = random_row(d, rng, spread);
      const auto y = round_trip<TestType>(x);
      for (int i = 0; i < d; ++i) {
        INFO("d=" << d << " spread=" << spread << " i=" << i << " x=" << x[std::size_t(i)]);
        REQUIRE(std::fabs(y[std::size_t(i)] - x[std::size_t(i)]) <= bound<TestType>(x, i));
      }
    }
  }
  // An all-zero row decodes to zeros (no 0/0 scale).
  const auto z = round_trip<TestType>(std::vector<float>(16, 0.0f));
  for (float v : z) CHECK(v == 0.0f);
}

TEST_CASE("kv quant: bytes per token and head, parameters included") {
  CHECK(bytes_per_token_head<F32>(128) == 512);
  CHECK(bytes_per_token_head<F16>(128) == 256);
  CHECK(bytes_per_token_head<BF16>(128) == 256);
  CHECK(bytes_per_token_head<Int8>(128) == 132);
  CHECK(bytes_per_token_head<FP8E4M3>(128) == 132);
  CHECK(bytes_per_token_head<FP8E5M2>(128) == 132);
  CHECK(bytes_per_token_head<Int4>(128) == 64 + 4 * 8);
  CHECK(bytes_per_token_head<Int4>(8) == 4 + 8);  // stories260K: one group per head
  CHECK(QuantTraits<Int4>::group_size(40) == 40);
  CHECK(QuantTraits<Int4>::group_size(96) == 32);
}

TEST_CASE("kv quant: Int8 is symmetric round-to-nearest of x * 127 / max|x|") {
  const std::vector<float> x = {1.0f, -2.0f, 0.5f, 0.0f, -0.01f, 1.99f, -1.0f, 0.75f};
  std::vector<std::uint8_t> codes(8);
  float scale = 0.0f;
  QuantTraits<Int8>::encode(x.data(), 8, codes.data(), &scale);
  CHECK(scale == Approx(2.0f / 127.0f));
  for (int i = 0; i < 8; ++i)
    CHECK(int(std::int8_t(codes[std::size_t(i)])) == int(std::lround(x[std::size_t(i)] * 127.0f / 2.0f)));
  CHECK(int(std::int8_t(codes[1])) == -127);
}

TEST_CASE("kv quant: Int4 packs values i and i+4 of each run of 8 into one byte") {
  std::vector<float> x(16);
  for (int i = 0; i < 16; ++i) x[std::size_t(i)] = float(i);  // min 0, scale 1: code == value
  std::vector<std::uint8_t> codes(8);
  float params[2];
  QuantTraits<Int4>::encode(x.data(), 16, codes.data(), params);
  CHECK(params[0] == Approx(1.0f));
  CHECK(params[1] == 0.0f);
  CHECK(codes[0] == (0 | (4 << 4)));
  CHECK(codes[3] == (3 | (7 << 4)));
  CHECK(codes[4] == (8 | (12 << 4)));
  CHECK(codes[7] == (11 | (15 << 4)));
}

TEST_CASE("kv quant: FP8 scales map max|x| onto the format's largest finite value") {
  std::vector<float> x = {0.1f, -3.0f, 2.0f, 0.0f, 1e-3f, 0.5f, -0.25f, 1.0f};
  std::vector<std::uint8_t> codes(8);
  float scale = 0.0f;
  QuantTraits<FP8E4M3>::encode(x.data(), 8, codes.data(), &scale);
  CHECK(scale == Approx(3.0f / 448.0f));
  CHECK(fp8e4m3_to_f32(codes[1]) == -448.0f);
  QuantTraits<FP8E5M2>::encode(x.data(), 8, codes.data(), &scale);
  CHECK(fp8e5m2_to_f32(codes[1]) == -57344.0f);
}

TEST_CASE("kv quant: names round-trip and unknown names are rejected") {
  for (QuantKind k : {QuantKind::F32, QuantKind::F16, QuantKind::BF16, QuantKind::Int8, QuantKind::Int4,
                      QuantKind::FP8E4M3, QuantKind::FP8E5M2})
    CHECK(parse_quant(quant_name(k)) == k);
  CHECK_THROWS_AS(parse_quant("q4_0"), InvalidArgument);
  CHECK_THROWS_WITH(parse_quant("q4_0"), Catch::Contains("q4_0"));
  CHECK(visit_quant(QuantKind::Int4, [](auto tag) { return QuantTraits<decltype(tag)>::kName; }) == "int4");
}
