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
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::Q8_0: return "q8_0";
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
  if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000u | (mant << 13));  // inf / NaN
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
  if (abs >= 0x38800000u) {  // normal f16 range (>= 2^-14)
    std::uint32_t r = abs - (112u << 23);
    r += 0xfffu + ((r >> 13) & 1u);
    return std::uint16_t(sign | (r >> 13));
  }
  // Subnormal or zero: in units of 2^-24 the value is below 1024; adding
  // 2^23 makes the f32 adder round it to an integer, nearest even.
  const float scaled = f32_from_bits(abs) * f32_from_bits(0x4b800000u);  // exact: * 2^24
  const float rounded = scaled + 8388608.0f;                               // + 2^23
  return std::uint16_t(sign | std::uint16_t(f32_bits(rounded) - 0x4b000000u));
}

}  // namespace fastinfer
