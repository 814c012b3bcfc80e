// How one KV row (one token of one KV head: head_dim values) is stored.
//
// A quantization policy is an empty tag; QuantTraits<Tag> says how many code
// bytes and f32 parameters a row takes and holds the scalar reference
// encode/decode that every vectorised kernel is tested against. Parameters
// (scales, minima) live beside the codes in a parallel f32 array so that
// code rows stay densely packed.
//
//   tag       codes per row     params per row       value
//   F32       4 * d bytes       0                    x
//   F16       2 * d             0                    f16(x)            (RNE)
//   BF16      2 * d             0                    bf16(x)           (RNE)
//   Int8      d                 1 (scale)            scale * q,  q in [-127, 127], scale = max|x| / 127
//   Int4      d / 2             2 per group          scale * q + min, q in [0, 15]  (asymmetric)
//   FP8E4M3   d                 1 (scale)            scale * e4m3(q), scale = max|x| / 448
//   FP8E5M2   d                 1 (scale)            scale * e5m2(q), scale = max|x| / 57344
//
// Inputs are finite (K and V of a model). Scales are per token per KV head (and per group of 32 for Int4), never per
// tensor: a per-tensor fp8 scale is what silently collapsed accuracy in vLLM
// and SGLang when one outlier token set the range for all others.
//
// Int4 groups: 32 values when 32 divides head_dim, else the whole head
// (head_dim 8, 16, 24, 40, ...). Int4 is asymmetric (scale and minimum per
// group) because with only 16 levels the extra parameter buys back most of
// the error of skewed groups; the price is 8 bytes of parameters per
// group (at head_dim 8: 8 bytes of parameters for 4 bytes of codes).
// Nibble order: within each run of 8 values, byte i holds value i in its low
// nibble and value i + 4 in its high nibble, so a kernel widens 8 values from
// 4 bytes with one mask and one shift.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"

namespace fastinfer::kv {

struct F32 {};
struct F16 {};
struct BF16 {};
struct Int8 {};
struct Int4 {};
struct FP8E4M3 {};
struct FP8E5M2 {};

// The runtime name of a policy, for flags (--kv int8) and reports.
enum class QuantKind : std::uint8_t { F32, F16, BF16, Int8, Int4, FP8E4M3, FP8E5M2 };

template <typename T>
inline constexpr bool kDependentFalse = false;

template <typename Quant>
struct QuantTraits {
  static_assert(kDependentFalse<Quant>,
                "unknown KV quantization: use kv::F32, F16, BF16, Int8, Int4, FP8E4M3 or FP8E5M2");
};

namespace detail {
inline float max_abs(const float* x, int n) {
  float m = 0.0f;
  for (int i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}
}  // namespace detail

// Plain floating-point formats: no parameters.
template <typename Code, QuantKind K, Code (*Enc)(float), float (*Dec)(Code)>
struct FloatQuantTraits {
  static constexpr QuantKind kKind = K;
  using Storage = Code;
  static constexpr int group_size(int head_dim) { return head_dim; }
  static constexpr std::size_t code_bytes(int head_dim) { return sizeof(Code) * std::size_t(head_dim); }
  static constexpr int params_per_row(int) { return 0; }
  static void encode(const float* x, int head_dim, std::uint8_t* codes, float* /*params*/) {
    for (int i = 0; i < head_dim; ++i) {
      const Code c = Enc(x[i]);
      std::memcpy(codes + sizeof(Code) * std::size_t(i), &c, sizeof c);
    }
  }
  static float decode(const std::uint8_t* codes, const float* /*params*/, int /*head_dim*/, int i) {
    Code c;
    std::memcpy(&c, codes + sizeof(Code) * std::size_t(i), sizeof c);
    return Dec(c);
  }
};

namespace detail {
inline float f32_identity(float x) { return x; }
}  // namespace detail

template <>
struct QuantTraits<F32> : FloatQuantTraits<float, QuantKind::F32, detail::f32_identity, detail::f32_identity> {
  static constexpr std::string_view kName = "f32";
};
template <>
struct QuantTraits<F16> : FloatQuantTraits<std::uint16_t, QuantKind::F16, f32_to_f16, f16_to_f32> {
  static constexpr std::string_view kName = "f16";
};
template <>
struct QuantTraits<BF16> : FloatQuantTraits<std::uint16_t, QuantKind::BF16, f32_to_bf16, bf16_to_f32> {
  static constexpr std::string_view kName = "bf16";
};

// One byte per value and one scale per row: Int8, FP8E4M3, FP8E5M2.
template <QuantKind K, std::uint8_t (*Enc)(float), float (*Dec)(std::uint8_t), int kQMax>
struct ScaledByteTraits {
  static constexpr QuantKind kKind = K;
  using Storage = std::uint8_t;
  static constexpr int group_size(int head_dim) { return head_dim; }
  static constexpr std::size_t code_bytes(int head_dim) { return std::size_t(head_dim); }
  static constexpr int params_per_row(int) { return 1; }
  // The largest code magnitude: amax maps onto it.
  static constexpr float kCodeMax = float(kQMax);
  static void encode(const float* x, int head_dim, std::uint8_t* codes, float* params) {
    const float amax = detail::max_abs(x, head_dim);
    const float scale = amax / kCodeMax;
    // A zero (or NaN-free all-zero) row stores scale 0 and zero codes.
    const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    for (int i = 0; i < head_dim; ++i) codes[i] = Enc(x[i] * inv);
    params[0] = scale;
  }
  static float decode(const std::uint8_t* codes, const float* params, int /*head_dim*/, int i) {
    return params[0] * Dec(codes[i]);
  }
};

namespace detail {
inline std::uint8_t int8_encode(float v) {
  const float r = std::nearbyint(std::clamp(v, -127.0f, 127.0f));
  return std::uint8_t(std::int8_t(r));
}
inline float int8_decode(std::uint8_t c) { return float(std::int8_t(c)); }
}  // namespace detail

template <>
struct QuantTraits<Int8> : ScaledByteTraits<QuantKind::Int8, detail::int8_encode, detail::int8_decode, 127> {
  static constexpr std::string_view kName = "int8";
};
template <>
struct QuantTraits<FP8E4M3> : ScaledByteTraits<QuantKind::FP8E4M3, f32_to_fp8e4m3, fp8e4m3_to_f32, 448> {
  static constexpr std::string_view kName = "fp8-e4m3";
};
template <>
struct QuantTraits<FP8E5M2> : ScaledByteTraits<QuantKind::FP8E5M2, f32_to_fp8e5m2, fp8e5m2_to_f32, 57344> {
  static constexpr std::string_view kName = "fp8-e5m2";
};

template <>
struct QuantTraits<Int4> {
  static constexpr QuantKind kKind = QuantKind::Int4;
  static constexpr std::string_view kName = "int4";
  using Storage = std::uint8_t;
  static constexpr int group_size(int head_dim) { return head_dim % 32 == 0 ? 32 : head_dim; }
  static constexpr std::size_t code_bytes(int head_dim) { return std::size_t(head_dim) / 2; }
  // [scale, min] per group.
  static constexpr int params_per_row(int head_dim) { return 2 * (head_dim / group_size(head_dim)); }

  // Byte holding value i, and whether it is the high nibble.
  static constexpr std::size_t byte_of(int i) { return std::size_t((i / 8) * 4 + (i % 4)); }
  static constexpr bool high_nibble(int i) { return (i % 8) >= 4; }

  static void encode(const float* x, int head_dim, std::uint8_t* codes, float* params) {
    const int g = group_size(head_dim);
    std::memset(codes, 0, code_bytes(head_dim));
    for (int g0 = 0; g0 < head_dim; g0 += g) {
      float lo = x[g0], hi = x[g0];
      for (int i = g0; i < g0 + g; ++i) {
        lo = std::min(lo, x[i]);
        hi = std::max(hi, x[i]);
      }
      const float scale = (hi - lo) / 15.0f;
      const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
      for (int i = g0; i < g0 + g; ++i) {
        const int q = int(std::nearbyint(std::clamp((x[i] - lo) * inv, 0.0f, 15.0f)));
        codes[byte_of(i)] |= std::uint8_t(high_nibble(i) ? q << 4 : q);
      }
      params[2 * (g0 / g)] = scale;
      params[2 * (g0 / g) + 1] = lo;
    }
  }
  static float decode(const std::uint8_t* codes, const float* params, int head_dim, int i) {
    const std::uint8_t b = codes[byte_of(i)];
    const int q = high_nibble(i) ? b >> 4 : b & 0xf;
    const int grp = i / group_size(head_dim);
    return params[2 * grp] * float(q) + params[2 * grp + 1];
  }
};

// Bytes one token of one KV head takes for K (or V) alone, parameters
// included.
template <typename Quant>
constexpr std::size_t bytes_per_token_head(int head_dim) {
  return QuantTraits<Quant>::code_bytes(head_dim) +
         sizeof(float) * std::size_t(QuantTraits<Quant>::params_per_row(head_dim));
}

// Decodes a whole row with the scalar reference.
template <typename Quant>
void decode_row(const std::uint8_t* codes, const float* params, int head_dim, float* out) {
  for (int i = 0; i < head_dim; ++i) out[i] = QuantTraits<Quant>::decode(codes, params, head_dim, i);
}

inline std::string_view quant_name(QuantKind k) {
  switch (k) {
    case QuantKind::F32: return QuantTraits<F32>::kName;
    case QuantKind::F16: return QuantTraits<F16>::kName;
    case QuantKind::BF16: return QuantTraits<BF16>::kName;
    case QuantKind::Int8: return QuantTraits<Int8>::kName;
    case QuantKind::Int4: return QuantTraits<Int4>::kName;
    case QuantKind::FP8E4M3: return QuantTraits<FP8E4M3>::kName;
    case QuantKind::FP8E5M2: return QuantTraits<FP8E5M2>::kName;
  }
  return "?";
}

// "int8" -> QuantKind::Int8 (the spelling of --kv); InvalidArgument otherwise.
inline QuantKind parse_quant(std::string_view name) {
  for (QuantKind k : {QuantKind::F32, QuantKind::F16, QuantKind::BF16, QuantKind::Int8, QuantKind::Int4,
                      QuantKind::FP8E4M3, QuantKind::FP8E5M2})
    if (quant_name(k) == name) return k;
  throw_error<InvalidArgument>("unknown KV quantization '", name,
                               "': expected f32, f16, bf16, int8, int4, fp8-e4m3 or fp8-e5m2");
}

// Calls f(Tag{}) with the tag of `k`: the one place a runtime choice (a flag)
// becomes a compile-time policy.
template <typename F>
decltype(auto) visit_quant(QuantKind k, F&& f) {
  switch (k) {
    case QuantKind::F32: return f(F32{});
    case QuantKind::F16: return f(F16{});
    case QuantKind::BF16: return f(BF16{});
    case QuantKind::Int8: return f(Int8{});
    case QuantKind::Int4: return f(Int4{});
    case QuantKind::FP8E4M3: return f(FP8E4M3{});
    case QuantKind::FP8E5M2: return f(FP8E5M2{});
  }
  throw_error<InvalidArgument>("bad QuantKind ", int(k));
}

}  // namespace fastinfer::kv
