// Vectorised conversions against the scalar functions of core/dtype.hpp,
// bit for bit: every 8- and 16-bit code, f32 values at every rounding
// boundary plus random bit patterns, and odd lengths with unaligned starts
// (the scalar tail), for the default ISA and for the SSE2 path.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "fastinfer/backend/cpu/convert.hpp"

namespace {

using fastinfer::f32_bits;
using fastinfer::f32_from_bits;
namespace cpu = fastinfer::cpu;

// The default ISA, plus the narrower paths the same machine can run: on an
// AVX-512 build the AVX2 intrinsics too, and sse2, which has no intrinsics
// overload here and so exercises the generic stack-buffer paths.
#if XSIMD_WITH_AVX512F && XSIMD_WITH_FMA3_AVX2
#define FASTINFER_TEST_ARCHS xsimd::default_arch, xsimd::fma3<xsimd::avx2>, xsimd::sse2
#elif XSIMD_WITH_SSE2
#define FASTINFER_TEST_ARCHS xsimd::default_arch, xsimd::sse2
#else
#define FASTINFER_TEST_ARCHS xsimd::default_arch
#endif

// f32 inputs probing every rounding boundary of a format whose codes decode
// through `decode`: each code's value, midpoints of neighbours and the f32
// values next to them, random bit patterns and specials.
template <class Decode>
std::vector<float> probe_values(std::uint32_t n_codes, Decode decode, std::size_t n_random) {
  std::vector<float> out;
  for (std::uint32_t c = 0; c + 1 < n_codes; ++c) {
    const float lo = decode(c), hi = decode(c + 1);
    out.push_back(lo);
    if (std::isfinite(lo) && std::isfinite(hi)) {
      const float mid = float((double(lo) + double(hi)) / 2);
      out.push_back(mid);
      out.push_back(std::nextafter(mid, -INFINITY));
      out.push_back(std::nextafter(mid, INFINITY));
    }
  }
  std::mt19937 rng(99);
  for (std::size_t i = 0; i < n_random; ++i) out.push_back(f32_from_bits(std::uint32_t(rng())));
  for (float s :
       {0.f, INFINITY, std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min(),
        std::numeric_limits<float>::min(), 65520.f, 464.f, 61440.f, std::numeric_limits<float>::quiet_NaN(),
        f32_from_bits(0x7f800001u), f32_from_bits(0x7fa00000u)}) {
    out.push_back(s);
    out.push_back(-s);
  }
  return out;
}

template <class T>
std::vector<T> all_codes() {
  std::vector<T> codes(std::size_t(std::numeric_limits<T>::max()) + 1);
  for (std::size_t i = 0; i < codes.size(); ++i) codes[i] = T(i);
  return codes;
}

// Bitwise equality, reporting the first difference.
template <class In, class Out>
void require_same_bits(const std::vector<In>& in, const std::vector<Out>& got, const std::vector<Out>& want) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(Out)) != 0) {
      std::uint32_t in_bits = 0, got_bits = 0, want_bits = 0;
      std::memcpy(&in_bits, &in[i], sizeof(In));
      std::memcpy(&got_bits, &got[i], sizeof(Out));
      std::memcpy(&want_bits, &want[i], sizeof(Out));
      FAIL("element " << i << ": input bits 0x" << std::hex << in_bits << " -> 0x" << got_bits
                      << ", scalar reference 0x" << want_bits);
    }
  }
}

// Runs `vec` over `in` and compares with the scalar `ref` per element.
template <class In, class Out, class Vec, class Ref>
void check_bulk(const std::vector<In>& in, Vec vec, Ref ref) {
  std::vector<Out> got(in.size()), want(in.size());
  vec(in.data(), got.data(), std::int64_t(in.size()));
  cpu::reference::convert_array(in.data(), want.data(), std::int64_t(in.size()), ref);
  require_same_bits(in, got, want);
}

// Every length up to a few batches, from unaligned starts, leaves the bytes
// past n untouched and matches the scalar reference.
template <class In, class Out, class Vec, class Ref>
void check_lengths(const std::vector<In>& pool, Vec vec, Ref ref) {
  for (std::int64_t offset = 0; offset < 3; ++offset) {
    for (std::int64_t n = 0; n <= 67; ++n) {
      std::vector<In> in(pool.begin() + offset, pool.begin() + offset + n);
      std::vector<Out> got(std::size_t(n) + 8, Out(0x5a)), want(std::size_t(n) + 8, Out(0x5a));
      vec(in.data(), got.data(), n);
      cpu::reference::convert_array(in.data(), want.data(), n, ref);
      INFO("n = " << n << ", offset = " << offset);
      std::vector<In> padded(in);
      padded.resize(got.size());
      require_same_bits(padded, got, want);  // the canaries after n included
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("bf16 bulk conversions match the scalar ones bit for bit", "[convert]",
                   FASTINFER_TEST_ARCHS) {
  using A = TestType;
  INFO("arch " << A::name());
  const auto codes = all_codes<std::uint16_t>();
  check_bulk<std::uint16_t, float>(codes, cpu::convert_bf16_to_f32<A>, fastinfer::bf16_to_f32);
  const auto values = probe_values(
      1u << 16, [](std::uint32_t c) { return fastinfer::bf16_to_f32(std::uint16_t(c)); }, 1 << 18);
  check_bulk<float, std::uint16_t>(values, cpu::convert_f32_to_bf16<A>, fastinfer::f32_to_bf16);
  check_lengths<std::uint16_t, float>(codes, cpu::convert_bf16_to_f32<A>, fastinfer::bf16_to_f32);
  check_lengths<float, std::uint16_t>(values, cpu::convert_f32_to_bf16<A>, fastinfer::f32_to_bf16);
}

TEMPLATE_TEST_CASE("f16 bulk conversions match the scalar ones bit for bit", "[convert]",
                   FASTINFER_TEST_ARCHS) {
  using A = TestType;
  INFO("arch " << A::name());
  const auto codes = all_codes<std::uint16_t>();
  check_bulk<std::uint16_t, float>(codes, cpu::convert_f16_to_f32<A>, fastinfer::f16_to_f32);
  const auto values = probe_values(
      1u << 16, [](std::uint32_t c) { return fastinfer::f16_to_f32(std::uint16_t(c)); }, 1 << 18);
  check_bulk<float, std::uint16_t>(values, cpu::convert_f32_to_f16<A>, fastinfer::f32_to_f16);
  check_lengths<std::uint16_t, float>(codes, cpu::convert_f16_to_f32<A>, fastinfer::f16_to_f32);
  check_lengths<float, std::uint16_t>(values, cpu::convert_f32_to_f16<A>, fastinfer::f32_to_f16);
}

TEMPLATE_TEST_CASE("fp8 e4m3 bulk conversions match the scalar ones bit for bit", "[convert]",
                   FASTINFER_TEST_ARCHS) {
  using A = TestType;
  INFO("arch " << A::name());
  const auto codes = all_codes<std::uint8_t>();
  check_bulk<std::uint8_t, float>(codes, cpu::convert_fp8e4m3_to_f32<A>, fastinfer::fp8e4m3_to_f32);
  const auto values = probe_values(
      256, [](std::uint32_t c) { return fastinfer::fp8e4m3_to_f32(std::uint8_t(c)); }, 1 << 18);
  check_bulk<float, std::uint8_t>(values, cpu::convert_f32_to_fp8e4m3<A>, fastinfer::f32_to_fp8e4m3);
  check_lengths<std::uint8_t, float>(codes, cpu::convert_fp8e4m3_to_f32<A>, fastinfer::fp8e4m3_to_f32);
  check_lengths<float, std::uint8_t>(values, cpu::convert_f32_to_fp8e4m3<A>, fastinfer::f32_to_fp8e4m3);
}

TEMPLATE_TEST_CASE("fp8 e5m2 bulk conversions match the scalar ones bit for bit", "[convert]",
                   FASTINFER_TEST_ARCHS) {
  using A = TestType;
  INFO("arch " << A::name());
  const auto codes = all_codes<std::uint8_t>();
  check_bulk<std::uint8_t, float>(codes, cpu::convert_fp8e5m2_to_f32<A>, fastinfer::fp8e5m2_to_f32);
  const auto values = probe_values(
      256, [](std::uint32_t c) { return fastinfer::fp8e5m2_to_f32(std::uint8_t(c)); }, 1 << 18);
  check_bulk<float, std::uint8_t>(values, cpu::convert_f32_to_fp8e5m2<A>, fastinfer::f32_to_fp8e5m2);
  check_lengths<std::uint8_t, float>(codes, cpu::convert_fp8e5m2_to_f32<A>, fastinfer::fp8e5m2_to_f32);
  check_lengths<float, std::uint8_t>(values, cpu::convert_f32_to_fp8e5m2<A>, fastinfer::f32_to_fp8e5m2);
}

TEMPLATE_TEST_CASE("register helpers move exactly one batch", "[convert]", FASTINFER_TEST_ARCHS) {
  using A = TestType;
  using B = xsimd::batch<float, A>;
  constexpr std::size_t W = B::size;
  std::vector<std::uint16_t> h(W + 1, 0x5a5a);
  std::vector<std::uint8_t> b(W + 1, 0x5a);
  std::vector<float> f(W);
  for (std::size_t i = 0; i < W; ++i) f[i] = float(i) * 1.75f - 3.0f;
  const B v = B::load_unaligned(f.data());
  alignas(64) float back[W];

  cpu::store_f32_as_bf16<A>(h.data(), v);
  REQUIRE(h[W] == 0x5a5a);
  cpu::load_bf16_as_f32<A>(h.data()).store_aligned(back);
  for (std::size_t i = 0; i < W; ++i)
    REQUIRE(back[i] == fastinfer::bf16_to_f32(fastinfer::f32_to_bf16(f[i])));

  cpu::store_f32_as_f16<A>(h.data(), v);
  REQUIRE(h[W] == 0x5a5a);
  cpu::load_f16_as_f32<A>(h.data()).store_aligned(back);
  for (std::size_t i = 0; i < W; ++i) REQUIRE(back[i] == f[i]);  // all exact in f16

  cpu::store_f32_as_fp8e4m3<A>(b.data(), v);
  REQUIRE(b[W] == 0x5a);
  cpu::load_fp8e4m3_as_f32<A>(b.data()).store_aligned(back);
  for (std::size_t i = 0; i < W; ++i)
    REQUIRE(back[i] == fastinfer::fp8e4m3_to_f32(fastinfer::f32_to_fp8e4m3(f[i])));

  cpu::store_f32_as_fp8e5m2<A>(b.data(), v);
  REQUIRE(b[W] == 0x5a);
  cpu::load_fp8e5m2_as_f32<A>(b.data()).store_aligned(back);
  for (std::size_t i = 0; i < W; ++i)
    REQUIRE(back[i] == fastinfer::fp8e5m2_to_f32(fastinfer::f32_to_fp8e5m2(f[i])));
}

TEST_CASE("bulk conversions reject a negative length and name it", "[convert]") {
  std::vector<float> f(64, 1.0f);
  std::vector<std::uint16_t> h(64, 0x5a5a);
  volatile std::int64_t negative = -3;  // not a constant: no dead-loop warning
  REQUIRE_THROWS_AS(cpu::convert_f32_to_bf16(f.data(), h.data(), negative), fastinfer::InvalidArgument);
  REQUIRE_THROWS_WITH(cpu::convert_f16_to_f32(h.data(), f.data(), negative), Catch::Contains("-3"));
  REQUIRE(h[0] == 0x5a5a);  // nothing written
  REQUIRE(f[0] == 1.0f);
}
