// Vectorised conversions between f32 and the storage formats (f16, bf16,
// fp8 e4m3, fp8 e5m2): register-level helpers that kernels use to widen
// weights or KV entries inside their inner loops, and bulk array
// conversions built on them. Every result is bit-identical to the scalar
// functions of core/dtype.hpp (round to nearest even, OCP saturation,
// NaN stays NaN), which are the test oracle.
//
// Batch width: each helper moves `xsimd::batch<float, Arch>::size` values,
// 8 for avx2 / fma3<avx2>, 16 for avx512*, 4 for sse*. The arithmetic is
// written once over xsimd integer batches; only the widening loads and
// narrowing stores (and f16, which F16C does in one instruction) are per-ISA
// intrinsics, because xsimd 8.1 has no u8/u16 <-> i32 conversions. Any other
// architecture takes a scalar path through a small stack buffer.
#pragma once

#include <cstdint>

#include "fastinfer/backend/cpu/cpu_target.hpp"
#include "fastinfer/backend/cpu/xsimd_compat.hpp"

#if defined(__AVX2__) || defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"

// xsimd at the build's -march: g++ 12's false intrinsic warnings (cpu_target.hpp).
FASTINFER_CPU_INTRINSIC_WARNINGS_OFF
namespace fastinfer::cpu {

namespace detail {

template <class Arch>
using FloatBatch = xsimd::batch<float, Arch>;
template <class Arch>
using IntBatch = xsimd::batch<std::int32_t, Arch>;

// ---- per-ISA widening loads and narrowing stores ---------------------------
// Overloads on the arch tag: a derived ISA (fma3<avx2>, avx512bw) finds the
// nearest base with an overload, everything else lands on `generic`.

template <class Arch, class T>
IntBatch<Arch> widen(const T* p, xsimd_compat::common) {
  alignas(64) std::int32_t tmp[IntBatch<Arch>::size];
  for (std::size_t i = 0; i < IntBatch<Arch>::size; ++i) tmp[i] = std::int32_t(p[i]);
  return IntBatch<Arch>::load_aligned(tmp);
}
// Values are already in [0, 2^bits): narrowing is truncation.
template <class Arch, class T>
void narrow(T* p, IntBatch<Arch> v, xsimd_compat::common) {
  alignas(64) std::int32_t tmp[IntBatch<Arch>::size];
  v.store_aligned(tmp);
  for (std::size_t i = 0; i < IntBatch<Arch>::size; ++i) p[i] = T(tmp[i]);
}

#if XSIMD_WITH_AVX2
template <class Arch>
IntBatch<Arch> widen(const std::uint16_t* p, xsimd::avx2) {
  return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <class Arch>
IntBatch<Arch> widen(const std::uint8_t* p, xsimd::avx2) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
template <class Arch>
void narrow(std::uint16_t* p, IntBatch<Arch> v, xsimd::avx2) {
  const __m256i x = v;
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}
template <class Arch>
void narrow(std::uint8_t* p, IntBatch<Arch> v, xsimd::avx2) {
  const __m256i x = v;
  const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi16(w, w));
}
#endif

#if XSIMD_WITH_AVX512F
template <class Arch>
IntBatch<Arch> widen(const std::uint16_t* p, xsimd::avx512f) {
  return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
template <class Arch>
IntBatch<Arch> widen(const std::uint8_t* p, xsimd::avx512f) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <class Arch>
void narrow(std::uint16_t* p, IntBatch<Arch> v, xsimd::avx512f) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(v));
}
template <class Arch>
void narrow(std::uint8_t* p, IntBatch<Arch> v, xsimd::avx512f) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(v));
}
#endif

// ---- f16: F16C where the register width allows, scalar otherwise ----------
template <class Arch>
FloatBatch<Arch> load_f16(const std::uint16_t* p, xsimd_compat::common) {
  alignas(64) float tmp[FloatBatch<Arch>::size];
  for (std::size_t i = 0; i < FloatBatch<Arch>::size; ++i) tmp[i] = f16_to_f32(p[i]);
  return FloatBatch<Arch>::load_aligned(tmp);
}
template <class Arch>
void store_f16(std::uint16_t* p, FloatBatch<Arch> v, xsimd_compat::common) {
  alignas(64) float tmp[FloatBatch<Arch>::size];
  v.store_aligned(tmp);
  for (std::size_t i = 0; i < FloatBatch<Arch>::size; ++i) p[i] = f32_to_f16(tmp[i]);
}
#if XSIMD_WITH_AVX2 && defined(__F16C__)
template <class Arch>
FloatBatch<Arch> load_f16(const std::uint16_t* p, xsimd::avx2) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <class Arch>
void store_f16(std::uint16_t* p, FloatBatch<Arch> v, xsimd::avx2) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#endif
#if XSIMD_WITH_AVX512F
template <class Arch>
FloatBatch<Arch> load_f16(const std::uint16_t* p, xsimd::avx512f) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
template <class Arch>
void store_f16(std::uint16_t* p, FloatBatch<Arch> v, xsimd::avx512f) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#endif

// ---- arithmetic shared by all ISAs ------------------------------------------
template <class Arch>
IntBatch<Arch> splat(std::int32_t x) {
  return IntBatch<Arch>(x);
}
template <class Arch>
FloatBatch<Arch> as_float(IntBatch<Arch> x) {
  return xsimd_compat::bitwise_cast<float>(x);
}
template <class Arch>
IntBatch<Arch> as_int(FloatBatch<Arch> x) {
  return xsimd_compat::bitwise_cast<std::int32_t>(x);
}

// Mirrors detail::small_float_magnitude in core/dtype.hpp: magnitude code of
// |v| (bits `abs`, finite) rounded to nearest even and clamped to max_code.
template <int kMan, int kBias, class Arch>
IntBatch<Arch> small_float_magnitude(IntBatch<Arch> abs, std::int32_t max_code) {
  constexpr int kShift = 23 - kMan;
  // Normal range: re-bias, round on the integer bits.
  IntBatch<Arch> r = abs - splat<Arch>((127 - kBias) << 23);
  r = r + splat<Arch>((1 << (kShift - 1)) - 1) + ((r >> kShift) & splat<Arch>(1));
  const IntBatch<Arch> normal = xsimd::min(r >> kShift, splat<Arch>(max_code));
  // Subnormal range: let the f32 adder round to an integer count of the
  // smallest subnormal (see the scalar version).
  const FloatBatch<Arch> scaled =
      as_float<Arch>(abs) * FloatBatch<Arch>(f32_from_bits(std::uint32_t(127 + kBias - 1 + kMan) << 23));
  const IntBatch<Arch> sub = as_int<Arch>(scaled + FloatBatch<Arch>(8388608.0f)) - splat<Arch>(0x4b000000);
  return xsimd::select(abs >= splat<Arch>((127 + 1 - kBias) << 23), normal, sub);
}

}  // namespace detail

// ---- register-level helpers --------------------------------------------------
// Each reads or writes exactly xsimd::batch<float, Arch>::size elements at p
// (no alignment needed).

template <class Arch = xsimd::default_arch>
xsimd::batch<float, Arch> load_bf16_as_f32(const std::uint16_t* p) {
  return detail::as_float<Arch>(detail::widen<Arch>(p, Arch{}) << 16);
}

template <class Arch = xsimd::default_arch>
void store_f32_as_bf16(std::uint16_t* p, xsimd::batch<float, Arch> v) {
  using namespace detail;
  const IntBatch<Arch> u = as_int<Arch>(v);
  const IntBatch<Arch> top = (u >> 16) & splat<Arch>(0xffff);
  const IntBatch<Arch> rounded =
      ((u + splat<Arch>(0x7fff) + (top & splat<Arch>(1))) >> 16) & splat<Arch>(0xffff);
  const auto is_nan = (u & splat<Arch>(0x7fffffff)) > splat<Arch>(0x7f800000);
  narrow<Arch>(p, xsimd::select(is_nan, top | splat<Arch>(0x0040), rounded), Arch{});
}

template <class Arch = xsimd::default_arch>
xsimd::batch<float, Arch> load_f16_as_f32(const std::uint16_t* p) {
  return detail::load_f16<Arch>(p, Arch{});
}

template <class Arch = xsimd::default_arch>
void store_f32_as_f16(std::uint16_t* p, xsimd::batch<float, Arch> v) {
  detail::store_f16<Arch>(p, v, Arch{});
}

namespace detail {
template <class Arch>
FloatBatch<Arch> load_e4m3(const std::uint8_t* p, xsimd_compat::common) {
  const IntBatch<Arch> c = widen<Arch>(p, Arch{});
  const IntBatch<Arch> sign = (c & splat<Arch>(0x80)) << 24;
  const IntBatch<Arch> mag = c & splat<Arch>(0x7f);
  const IntBatch<Arch> fields = mag << 20;
  const FloatBatch<Arch> normal = as_float<Arch>(fields + splat<Arch>(120 << 23));
  // Subnormal m * 2^-9 = 2^-6 * (1 + m/8) - 2^-6, exact, with no f32
  // denormal operand (which DAZ would flush).
  const FloatBatch<Arch> sub = as_float<Arch>(fields + splat<Arch>(121 << 23)) - FloatBatch<Arch>(0.015625f);
  // Selects work on the integer view: xsimd 8.1 cannot cast an int mask to a float one.
  IntBatch<Arch> bits = xsimd::select(mag < splat<Arch>(8), as_int<Arch>(sub), as_int<Arch>(normal));
  bits = xsimd::select(mag == splat<Arch>(0x7f), splat<Arch>(0x7fc00000), bits);
  return as_float<Arch>(bits | sign);
}

// With F16C: S.EEEE.MMM placed as the f16 bits S.0EEEE.MMM0000000 reads as
// 2^-8 times the E4M3 value, subnormals included (they land on f16
// subnormals, which widen exactly); the NaN code becomes the f16 NaN first.
// One vcvtph2ps and an exact * 256: ~20% faster than the integer version.
#if XSIMD_WITH_AVX2 && defined(__F16C__)
template <class Arch>
FloatBatch<Arch> load_e4m3(const std::uint8_t* p, xsimd::avx2) {
  const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m128i mag = _mm_and_si128(w, _mm_set1_epi16(0x7f));
  const __m128i sign = _mm_slli_epi16(_mm_xor_si128(w, mag), 8);
  const __m128i is_nan = _mm_cmpeq_epi16(mag, _mm_set1_epi16(0x7f));
  const __m128i h =
      _mm_or_si128(_mm_blendv_epi8(_mm_slli_epi16(mag, 7), _mm_set1_epi16(0x7e00), is_nan), sign);
  return FloatBatch<Arch>(_mm256_cvtph_ps(h)) * FloatBatch<Arch>(256.0f);
}
#endif
#if XSIMD_WITH_AVX512F
template <class Arch>
FloatBatch<Arch> load_e4m3(const std::uint8_t* p, xsimd::avx512f) {
  const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i mag = _mm256_and_si256(w, _mm256_set1_epi16(0x7f));
  const __m256i sign = _mm256_slli_epi16(_mm256_xor_si256(w, mag), 8);
  const __m256i is_nan = _mm256_cmpeq_epi16(mag, _mm256_set1_epi16(0x7f));
  const __m256i h =
      _mm256_or_si256(_mm256_blendv_epi8(_mm256_slli_epi16(mag, 7), _mm256_set1_epi16(0x7e00), is_nan), sign);
  return FloatBatch<Arch>(_mm512_cvtph_ps(h)) * FloatBatch<Arch>(256.0f);
}
#endif
}  // namespace detail

template <class Arch = xsimd::default_arch>
xsimd::batch<float, Arch> load_fp8e4m3_as_f32(const std::uint8_t* p) {
  return detail::load_e4m3<Arch>(p, Arch{});
}

template <class Arch = xsimd::default_arch>
void store_f32_as_fp8e4m3(std::uint8_t* p, xsimd::batch<float, Arch> v) {
  using namespace detail;
  const IntBatch<Arch> u = as_int<Arch>(v);
  const IntBatch<Arch> sign = (u >> 24) & splat<Arch>(0x80);
  const IntBatch<Arch> abs = u & splat<Arch>(0x7fffffff);
  IntBatch<Arch> code = small_float_magnitude<3, 7, Arch>(abs, 0x7e);  // inf saturates
  code = xsimd::select(abs > splat<Arch>(0x7f800000), splat<Arch>(0x7f), code);
  narrow<Arch>(p, code | sign, Arch{});
}

namespace detail {
// E5M2 is the top byte of an f16: where F16C exists, widen it as one.
template <class Arch>
FloatBatch<Arch> load_e5m2(const std::uint8_t* p, xsimd_compat::common) {
  const IntBatch<Arch> c = widen<Arch>(p, Arch{});
  const IntBatch<Arch> sign = (c & splat<Arch>(0x80)) << 24;
  const IntBatch<Arch> mag = c & splat<Arch>(0x7f);
  const IntBatch<Arch> fields = mag << 21;
  const FloatBatch<Arch> normal = as_float<Arch>(fields + splat<Arch>(112 << 23));
  const FloatBatch<Arch> sub =
      as_float<Arch>(fields + splat<Arch>(113 << 23)) - FloatBatch<Arch>(6.103515625e-05f);  // 2^-14
  // Top exponent: inf, or NaN made quiet with its payload (as f16_to_f32).
  const IntBatch<Arch> man = fields & splat<Arch>(0x00600000);
  const IntBatch<Arch> special =
      splat<Arch>(0x7f800000) | man |
      xsimd::select(man != splat<Arch>(0), splat<Arch>(0x00400000), splat<Arch>(0));
  IntBatch<Arch> bits = xsimd::select(mag < splat<Arch>(4), as_int<Arch>(sub), as_int<Arch>(normal));
  bits = xsimd::select(mag >= splat<Arch>(0x7c), special, bits);
  return as_float<Arch>(bits | sign);
}
#if XSIMD_WITH_AVX2 && defined(__F16C__)
template <class Arch>
FloatBatch<Arch> load_e5m2(const std::uint8_t* p, xsimd::avx2) {
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_cvtph_ps(_mm_slli_epi16(_mm_cvtepu8_epi16(bytes), 8));
}
#endif
#if XSIMD_WITH_AVX512F
template <class Arch>
FloatBatch<Arch> load_e5m2(const std::uint8_t* p, xsimd::avx512f) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm512_cvtph_ps(_mm256_slli_epi16(_mm256_cvtepu8_epi16(bytes), 8));
}
#endif
}  // namespace detail

template <class Arch = xsimd::default_arch>
xsimd::batch<float, Arch> load_fp8e5m2_as_f32(const std::uint8_t* p) {
  return detail::load_e5m2<Arch>(p, Arch{});
}

template <class Arch = xsimd::default_arch>
void store_f32_as_fp8e5m2(std::uint8_t* p, xsimd::batch<float, Arch> v) {
  using namespace detail;
  const IntBatch<Arch> u = as_int<Arch>(v);
  const IntBatch<Arch> sign = (u >> 24) & splat<Arch>(0x80);
  const IntBatch<Arch> abs = u & splat<Arch>(0x7fffffff);
  IntBatch<Arch> code = small_float_magnitude<2, 15, Arch>(abs, 0x7b);
  code = xsimd::select(abs == splat<Arch>(0x7f800000), splat<Arch>(0x7c), code);
  const IntBatch<Arch> nan = splat<Arch>(0x7e) | ((abs >> 21) & splat<Arch>(1));
  code = xsimd::select(abs > splat<Arch>(0x7f800000), nan, code);
  narrow<Arch>(p, code | sign, Arch{});
}

// ---- bulk conversions ---------------------------------------------------------
// Any length n >= 0; the tail shorter than one batch goes through the scalar
// functions, which give the same bits.

namespace detail {
template <class Arch, class Src, class Dst, class VecOp, class ScalarOp>
void convert_array(const Src* src, Dst* dst, std::int64_t n, VecOp vec, ScalarOp scalar) {
  FASTINFER_CHECK(n >= 0, InvalidArgument, "conversion length must be >= 0, got ", n);
  constexpr std::int64_t kWidth = std::int64_t(xsimd::batch<float, Arch>::size);
  const std::int64_t n_main = n - n % kWidth;
  for (std::int64_t i = 0; i < n_main; i += kWidth) vec(src + i, dst + i);
  for (std::int64_t i = n_main; i < n; ++i) dst[i] = scalar(src[i]);
}
}  // namespace detail

template <class Arch = xsimd::default_arch>
void convert_bf16_to_f32(const std::uint16_t* src, float* dst, std::int64_t n) {
  detail::convert_array<Arch>(
      src, dst, n, [](const std::uint16_t* s, float* d) { load_bf16_as_f32<Arch>(s).store_unaligned(d); },
      bf16_to_f32);
}
template <class Arch = xsimd::default_arch>
void convert_f32_to_bf16(const float* src, std::uint16_t* dst, std::int64_t n) {
  detail::convert_array<Arch>(
      src, dst, n,
      [](const float* s, std::uint16_t* d) {
        store_f32_as_bf16<Arch>(d, xsimd::batch<float, Arch>::load_unaligned(s));
      },
      f32_to_bf16);
}
template <class Arch = xsimd::default_arch>
void convert_f16_to_f32(const std::uint16_t* src, float* dst, std::int64_t n) {
  detail::convert_array<Arch>(
      src, dst, n, [](const std::uint16_t* s, float* d) { load_f16_as_f32<Arch>(s).store_unaligned(d); },
      f16_to_f32);
}
template <class Arch = xsimd::default_arch>
void convert_f32_to_f16(const float* src, std::uint16_t* dst, std::int64_t n) {
  detail::convert_array<Arch>(
      src, dst, n,
      [](const float* s, std::uint16_t* d) {
        store_f32_as_f16<Arch>(d, xsimd::batch<float, Arch>::load_unaligned(s));
      },
      f32_to_f16);
}
template <class Arch = xsimd::default_arch>
void convert_fp8e4m3_to_f32(const std::uint8_t* src, float* dst, std::int64_t n) {
  detail::convert_array<Arch>(
      src, dst, n, [](const std::uint8_t* s, float* d) { load_fp8e4m3_as_f32<Arch>(s).store_unaligned(d); },
      fp8e4m3_to_f32);
}
template <class Arch = xsimd::default_arch>
void convert_f32_to_fp8e4m3(const float* src, std::uint8_t* dst, std::int64_t n) {
  detail::convert_array<Arch>(
      src, dst, n,
      [](const float* s, std::uint8_t* d) {
        store_f32_as_fp8e4m3<Arch>(d, xsimd::batch<float, Arch>::load_unaligned(s));
      },
      f32_to_fp8e4m3);
}
template <class Arch = xsimd::default_arch>
void convert_fp8e5m2_to_f32(const std::uint8_t* src, float* dst, std::int64_t n) {
  detail::convert_array<Arch>(
      src, dst, n, [](const std::uint8_t* s, float* d) { load_fp8e5m2_as_f32<Arch>(s).store_unaligned(d); },
      fp8e5m2_to_f32);
}
template <class Arch = xsimd::default_arch>
void convert_f32_to_fp8e5m2(const float* src, std::uint8_t* dst, std::int64_t n) {
  detail::convert_array<Arch>(
      src, dst, n,
      [](const float* s, std::uint8_t* d) {
        store_f32_as_fp8e5m2<Arch>(d, xsimd::batch<float, Arch>::load_unaligned(s));
      },
      f32_to_fp8e5m2);
}

namespace reference {
// Scalar twins of the bulk conversions: one call of the core/dtype.hpp
// function per element.
template <class Src, class Dst, class Op>
void convert_array(const Src* src, Dst* dst, std::int64_t n, Op op) {
  for (std::int64_t i = 0; i < n; ++i) dst[i] = op(src[i]);
}
}  // namespace reference

}  // namespace fastinfer::cpu
FASTINFER_CPU_INTRINSIC_WARNINGS_ON
