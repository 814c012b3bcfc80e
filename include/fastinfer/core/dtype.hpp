// Storage number formats and their scalar conversions to and from f32.
// These scalar functions are the reference every vectorised conversion is
// tested against: round to nearest, ties to even, NaN stays NaN.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace fastinfer {

enum class DType : std::uint8_t { F32, F16, BF16, Q8_0 };

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "f32";
    case DType::F16:
      return "f16";
    case DType::BF16:
      return "bf16";
    case DType::Q8_0:
      return "q8_0";
  }
  return "?";
}

inline std::uint32_t f32_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float f32_from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// ---- bfloat16: the top half of an f32 ------------------------------------
inline float bf16_to_f32(std::uint16_t h) { return f32_from_bits(std::uint32_t(h) << 16); }

inline std::uint16_t f32_to_bf16(float f) {
  std::uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even; overflow rounds to inf
  return std::uint16_t(u >> 16);
}

// ---- IEEE binary16 ---------------------------------------------------------
inline float f16_to_f32(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) {
    // inf, or NaN made quiet with its payload kept: what F16C's vcvtph2ps
    // does, so the vectorised conversions agree bit for bit.
    return f32_from_bits(sign | 0x7f800000u | (mant << 13) | (mant != 0 ? 0x00400000u : 0u));
  }
  if (exp != 0) return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return f32_from_bits(sign);  // signed zero
  // Subnormal: value = mant * 2^-24, exact in f32.
  float v = float(mant) * f32_from_bits(0x33800000u);  // 2^-24
  return f32_from_bits(f32_bits(v) | sign);
}

inline std::uint16_t f32_to_f16(float f) {
  const std::uint32_t u = f32_bits(f);
  const std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000u);
  const std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return std::uint16_t(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));  // NaN
  if (abs >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (abs >= 0x38800000u) {                                      // normal f16 range (>= 2^-14)
    std::uint32_t r = abs - (112u << 23);
    r += 0xfffu + ((r >> 13) & 1u);
    return std::uint16_t(sign | (r >> 13));
  }
  // Subnormal or zero: in units of 2^-24 the value is below 1024; adding
  // 2^23 makes the f32 adder round it to an integer, nearest even.
  const float scaled = f32_from_bits(abs) * f32_from_bits(0x4b800000u);  // exact: * 2^24
  const float rounded = scaled + 8388608.0f;                             // + 2^23
  return std::uint16_t(sign | std::uint16_t(f32_bits(rounded) - 0x4b000000u));
}

// ---- OCP FP8 (OFP8 spec v1.0): E4M3 and E5M2 -------------------------------
// Both formats are encoded in the *saturating* mode of the OCP spec: a finite
// value beyond the largest finite code becomes ±max instead of NaN/inf,
// because a KV cache or weight that clips is far less harmful than one that
// poisons every later dot product. NaN stays NaN (sign kept).
//   E4M3: bias 7, no infinities, S.1111.111 is the only NaN, max 448,
//         min normal 2^-6, min subnormal 2^-9. f32 ±inf saturates to ±448
//         (E4M3 cannot express infinity; the spec's saturating mode says so).
//   E5M2: bias 15, IEEE-like (it is the top byte of an f16), max 57344,
//         min normal 2^-14, min subnormal 2^-16. f32 ±inf stays ±inf; only
//         finite out-of-range values saturate.
constexpr float kFp8E4M3Max = 448.f;
constexpr float kFp8E5M2Max = 57344.f;

namespace detail {

// Magnitude code of a finite, non-NaN |f| (f32 bits `abs`) in a small float
// format with kExp exponent bits, kMan mantissa bits and bias kBias, rounded
// to nearest even and clamped to `max_code` (saturation).
template <int kMan, int kBias>
inline std::uint32_t small_float_magnitude(std::uint32_t abs, std::uint32_t max_code) {
  constexpr int kShift = 23 - kMan;
  constexpr std::uint32_t kMinNormalBits = std::uint32_t(127 + 1 - kBias) << 23;
  if (abs >= kMinNormalBits) {
    // Re-bias the exponent in place; the rounding carry may ripple into the
    // exponent, which is exactly the next binade.
    std::uint32_t r = abs - (std::uint32_t(127 - kBias) << 23);
    r += (1u << (kShift - 1)) - 1u + ((r >> kShift) & 1u);
    const std::uint32_t code = r >> kShift;
    return code < max_code ? code : max_code;
  }
  // Subnormal or zero: measured in units of the smallest subnormal the value
  // is below 2^kMan; adding 2^23 makes the f32 adder round it to an integer,
  // nearest even (the product by a power of two is exact).
  constexpr std::uint32_t kScaleBits = std::uint32_t(127 + kBias - 1 + kMan) << 23;
  const float scaled = f32_from_bits(abs) * f32_from_bits(kScaleBits);
  const float rounded = scaled + 8388608.0f;  // + 2^23
  return f32_bits(rounded) - 0x4b000000u;
}

}  // namespace detail

inline std::uint8_t f32_to_fp8e4m3(float f) {
  const std::uint32_t u = f32_bits(f);
  const std::uint8_t sign = std::uint8_t((u >> 24) & 0x80u);
  const std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return std::uint8_t(sign | 0x7fu);  // the one NaN
  // +-inf falls into the saturating clamp (448 = code 0x7e).
  return std::uint8_t(sign | detail::small_float_magnitude<3, 7>(abs, 0x7eu));
}

inline float fp8e4m3_to_f32(std::uint8_t c) {
  const std::uint32_t sign = std::uint32_t(c & 0x80u) << 24;
  const std::uint32_t mag = c & 0x7fu;
  if (mag == 0x7fu) return f32_from_bits(sign | 0x7fc00000u);
  if (mag >= 0x08u) return f32_from_bits(sign | ((mag << 20) + (120u << 23)));
  // Subnormal (or zero): mantissa * 2^-9, exact in f32.
  return f32_from_bits(sign | f32_bits(float(mag) * f32_from_bits(0x3b000000u)));  // 2^-9
}

inline std::uint8_t f32_to_fp8e5m2(float f) {
  const std::uint32_t u = f32_bits(f);
  const std::uint8_t sign = std::uint8_t((u >> 24) & 0x80u);
  const std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return std::uint8_t(sign | 0x7eu | ((abs >> 21) & 1u));  // quiet NaN
  if (abs == 0x7f800000u) return std::uint8_t(sign | 0x7cu);                      // inf stays inf
  return std::uint8_t(sign | detail::small_float_magnitude<2, 15>(abs, 0x7bu));   // 57344
}

// E5M2 is the top byte of an IEEE f16, so widening is exact through f16.
inline float fp8e5m2_to_f32(std::uint8_t c) { return f16_to_f32(std::uint16_t(c) << 8); }

}  // namespace fastinfer
