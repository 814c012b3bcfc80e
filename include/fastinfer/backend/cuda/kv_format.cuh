// The KV formats on the device: the device side of kv::QuantTraits
// (kv/kv_quant.hpp), over the same bytes. A row is one (token, KV head):
// `codes` its head_dim codes, `params` its params_per_row floats in the
// parallel parameter arena (none for the float formats).
//
//   load(codes, params, j, head_dim)
//                                  value j of the row, as QuantTraits::decode
//                                  computes it (same float, bit for bit; for
//                                  Int4 see below)
//   load8(codes, params, j0, head_dim, out)
//                                  values j0..j0+7 (j0 a multiple of 8): one
//                                  vector load of codes; the attention
//                                  kernels read K and V this way when
//                                  head_dim is a multiple of 8
//   encode_row(x, d, codes, params)
//                                  QuantTraits::encode of one row, called by
//                                  the 32 lanes of one warp together: the
//                                  same codes and parameters, byte for byte
//                                  (the store's append kernel, kv_store.cuh)
//
// Byte for byte means the CPU's operations in the CPU's order: every
// product, quotient and difference of the encoders is an explicit
// round-to-nearest intrinsic (__fmul_rn, __fdiv_rn, __fsub_rn, __fadd_rn)
// so nvcc cannot fuse it into an FMA or use an approximate division (the
// CPU encoders hold no a * b + c whose fusion could change a bit: the fp8
// and f16 subnormal paths scale by a power of two, exactly), and the
// fp8 / bf16 encoders are core/dtype.hpp's integer recipes line by line
// (the host functions are not callable on the device). Maxima and minima
// are exact whatever the reduction order; where the CPU keeps the first
// element attaining the minimum (Int4's stored minimum, whose sign may be
// that of a -0.0), the warp looks up that first index too.
// All of it assumes nvcc's default of keeping f32 subnormals (no -ftz=true,
// which --use_fast_math implies): flushed, tiny rows would encode apart.
//
// Int4 groups: QuantTraits<Int4> groups 32 values when 32 divides head_dim,
// else the whole head (40, 72, 80: one group), so load / load8 take the
// row's head_dim (the other formats ignore it). Int4's value scale * q + min
// is one fused multiply-add here: what the CPU's AVX2 / AVX-512 kernels
// compute (_mm512_fmadd_ps), and what g++ makes of QuantTraits<Int4>::decode
// when the target has FMA (it contracts the expression, -march=native and
// -std=c++17 alike). A host build without FMA rounds the product first: then
// the two differ by at most an ulp.
#pragma once

#include <cstdint>

#include <cuda_fp16.h>

#include "fastinfer/backend/cuda/block_reduce.cuh"
#include "fastinfer/kv/kv_quant.hpp"

namespace fastinfer::cuda {

namespace kv_format_detail {

// cpu: f32_to_bf16 (core/dtype.hpp).
__device__ inline std::uint16_t f32_to_bf16(float f) {
  std::uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return std::uint16_t(u >> 16);
}
__device__ inline float bf16_to_f32(std::uint32_t h) { return __uint_as_float(h << 16); }

// cpu: detail::small_float_magnitude (core/dtype.hpp).
template <int kMan, int kBias>
__device__ inline std::uint32_t small_float_magnitude(std::uint32_t abs, std::uint32_t max_code) {
  constexpr int kShift = 23 - kMan;
  constexpr std::uint32_t kMinNormalBits = std::uint32_t(127 + 1 - kBias) << 23;
  if (abs >= kMinNormalBits) {
    std::uint32_t r = abs - (std::uint32_t(127 - kBias) << 23);
    r += (1u << (kShift - 1)) - 1u + ((r >> kShift) & 1u);
    const std::uint32_t code = r >> kShift;
    return code < max_code ? code : max_code;
  }
  constexpr std::uint32_t kScaleBits = std::uint32_t(127 + kBias - 1 + kMan) << 23;
  const float scaled = __fmul_rn(__uint_as_float(abs), __uint_as_float(kScaleBits));
  const float rounded = __fadd_rn(scaled, 8388608.0f);  // + 2^23
  return __float_as_uint(rounded) - 0x4b000000u;
}

// cpu: f32_to_fp8e4m3, fp8e4m3_to_f32, f32_to_fp8e5m2, fp8e5m2_to_f32.
__device__ inline std::uint8_t f32_to_fp8e4m3(float f) {
  const std::uint32_t u = __float_as_uint(f);
  const std::uint8_t sign = std::uint8_t((u >> 24) & 0x80u);
  const std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return std::uint8_t(sign | 0x7fu);
  return std::uint8_t(sign | small_float_magnitude<3, 7>(abs, 0x7eu));
}
__device__ inline float fp8e4m3_to_f32(std::uint32_t c) {
  const std::uint32_t sign = (c & 0x80u) << 24;
  const std::uint32_t mag = c & 0x7fu;
  if (mag == 0x7fu) return __uint_as_float(sign | 0x7fc00000u);
  if (mag >= 0x08u) return __uint_as_float(sign | ((mag << 20) + (120u << 23)));
  return __uint_as_float(sign |
                         __float_as_uint(__fmul_rn(float(mag), __uint_as_float(0x3b000000u))));  // 2^-9
}
__device__ inline std::uint8_t f32_to_fp8e5m2(float f) {
  const std::uint32_t u = __float_as_uint(f);
  const std::uint8_t sign = std::uint8_t((u >> 24) & 0x80u);
  const std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return std::uint8_t(sign | 0x7eu | ((abs >> 21) & 1u));
  if (abs == 0x7f800000u) return std::uint8_t(sign | 0x7cu);
  return std::uint8_t(sign | small_float_magnitude<2, 15>(abs, 0x7bu));
}
// The top byte of an f16: exact through the f16 widening.
__device__ inline float fp8e5m2_to_f32(std::uint32_t c) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(c << 8)));
}

// cpu: detail::int8_encode / int8_decode (kv/kv_quant.hpp). std::clamp and
// fminf/fmaxf agree on finite values; rintf is nearbyint in the default
// (nearest even) mode.
__device__ inline std::uint8_t int8_encode(float v) {
  const float r = rintf(fminf(fmaxf(v, -127.0f), 127.0f));
  return std::uint8_t(std::int8_t(int(r)));
}
__device__ inline float int8_decode(std::uint32_t c) { return float(std::int8_t(std::uint8_t(c))); }

// Plain float formats: one thread per value, no parameters.
template <typename Code, Code (*Enc)(float)>
__device__ inline void encode_float_row(const float* x, int d, std::uint8_t* codes) {
  const int lane = int(threadIdx.x) % 32;
  for (int j = lane; j < d; j += 32) reinterpret_cast<Code*>(codes)[j] = Enc(x[j]);
}
__device__ inline float identity(float x) { return x; }
__device__ inline __half to_half(float x) { return __float2half_rn(x); }

// One byte per value and one scale: ScaledByteTraits::encode.
template <std::uint8_t (*Enc)(float)>
__device__ inline void encode_scaled_row(const float* x, int d, std::uint8_t* codes, float* params,
                                         float code_max) {
  const int lane = int(threadIdx.x) % 32;
  float amax = 0.0f;
  for (int j = lane; j < d; j += 32) amax = fmaxf(amax, fabsf(x[j]));
  amax = warp_reduce(amax, MaxOp{});
  const float scale = __fdiv_rn(amax, code_max);
  const float inv = scale > 0.0f ? __fdiv_rn(1.0f, scale) : 0.0f;
  for (int j = lane; j < d; j += 32) codes[j] = Enc(__fmul_rn(x[j], inv));
  if (lane == 0) params[0] = scale;
}

// Eight bytes of codes from a row (8-byte aligned: rows are head_dim bytes).
__device__ inline void load8_bytes(const std::uint8_t* codes, int j0, std::uint32_t* b) {
  const uint2 v = *reinterpret_cast<const uint2*>(codes + j0);
#pragma unroll
  for (int i = 0; i < 4; ++i) b[i] = (v.x >> (8 * i)) & 0xffu, b[4 + i] = (v.y >> (8 * i)) & 0xffu;
}

}  // namespace kv_format_detail

template <typename Quant>
struct DeviceKVFormat {
  static_assert(kv::kDependentFalse<Quant>,
                "DeviceKVFormat: a KV format without a device decoder and encoder");
};

template <>
struct DeviceKVFormat<kv::F32> {
  __device__ static float load(const std::uint8_t* codes, const float*, int j, int) {
    return reinterpret_cast<const float*>(codes)[j];
  }
  __device__ static void load8(const std::uint8_t* codes, const float*, int j0, int, float* out) {
    const float4* p = reinterpret_cast<const float4*>(codes + 4 * j0);
    const float4 a = p[0], b = p[1];
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
    out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
  }
  __device__ static void encode_row(const float* x, int d, std::uint8_t* codes, float*) {
    kv_format_detail::encode_float_row<float, kv_format_detail::identity>(x, d, codes);
  }
};

template <>
struct DeviceKVFormat<kv::F16> {
  __device__ static float load(const std::uint8_t* codes, const float*, int j, int) {
    return __half2float(reinterpret_cast<const __half*>(codes)[j]);
  }
  __device__ static void load8(const std::uint8_t* codes, const float*, int j0, int, float* out) {
    const uint4 v = *reinterpret_cast<const uint4*>(codes + 2 * j0);
    const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __half22float2(h[i]);
      out[2 * i] = f.x, out[2 * i + 1] = f.y;
    }
  }
  // __float2half_rn: round to nearest even, as f32_to_f16 (finite inputs).
  __device__ static void encode_row(const float* x, int d, std::uint8_t* codes, float*) {
    kv_format_detail::encode_float_row<__half, kv_format_detail::to_half>(x, d, codes);
  }
};

template <>
struct DeviceKVFormat<kv::BF16> {
  __device__ static float load(const std::uint8_t* codes, const float*, int j, int) {
    return kv_format_detail::bf16_to_f32(reinterpret_cast<const std::uint16_t*>(codes)[j]);
  }
  __device__ static void load8(const std::uint8_t* codes, const float*, int j0, int, float* out) {
    const uint4 v = *reinterpret_cast<const uint4*>(codes + 2 * j0);
    const std::uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i)
      out[2 * i] = __uint_as_float(w[i] << 16), out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
  __device__ static void encode_row(const float* x, int d, std::uint8_t* codes, float*) {
    kv_format_detail::encode_float_row<std::uint16_t, kv_format_detail::f32_to_bf16>(x, d, codes);
  }
};

// Int8, FP8E4M3, FP8E5M2: scale * code, the scale per row.
template <float (*Dec)(std::uint32_t), std::uint8_t (*Enc)(float), typename Quant>
struct DeviceScaledByteFormat {
  __device__ static float load(const std::uint8_t* codes, const float* params, int j, int) {
    return __fmul_rn(params[0], Dec(codes[j]));
  }
  __device__ static void load8(const std::uint8_t* codes, const float* params, int j0, int, float* out) {
    std::uint32_t b[8];
    kv_format_detail::load8_bytes(codes, j0, b);
    const float s = params[0];
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = __fmul_rn(s, Dec(b[i]));
  }
  __device__ static void encode_row(const float* x, int d, std::uint8_t* codes, float* params) {
    kv_format_detail::encode_scaled_row<Enc>(x, d, codes, params, kv::QuantTraits<Quant>::kCodeMax);
  }
};

template <>
struct DeviceKVFormat<kv::Int8>
    : DeviceScaledByteFormat<kv_format_detail::int8_decode, kv_format_detail::int8_encode, kv::Int8> {};
template <>
struct DeviceKVFormat<kv::FP8E4M3> : DeviceScaledByteFormat<kv_format_detail::fp8e4m3_to_f32,
                                                            kv_format_detail::f32_to_fp8e4m3, kv::FP8E4M3> {};
template <>
struct DeviceKVFormat<kv::FP8E5M2> : DeviceScaledByteFormat<kv_format_detail::fp8e5m2_to_f32,
                                                            kv_format_detail::f32_to_fp8e5m2, kv::FP8E5M2> {};

// Int4: scale * q + min per group, fused (see the top of this file). Byte i
// of a run of 8 values holds value i (low nibble) and value i + 4 (high
// nibble).
template <>
struct DeviceKVFormat<kv::Int4> {
  // QuantTraits<Int4>'s group_size and byte_of (host constexpr functions:
  // nvcc would need --expt-relaxed-constexpr to call them here).
  __device__ static int group_size(int head_dim) { return head_dim % 32 == 0 ? 32 : head_dim; }
  __device__ static int byte_of(int j) { return (j / 8) * 4 + (j % 4); }
  // A value's group given head_dim.
  __device__ static int group_of(int j, int head_dim) { return j / group_size(head_dim); }

  __device__ static float load(const std::uint8_t* codes, const float* params, int j, int head_dim) {
    const std::uint32_t b = codes[byte_of(j)];
    const std::uint32_t q = (j % 8) >= 4 ? b >> 4 : b & 0xfu;
    const float* p = params + 2 * group_of(j, head_dim);
    return __fmaf_rn(p[0], float(q), p[1]);
  }
  __device__ static void load8(const std::uint8_t* codes, const float* params, int j0, int head_dim,
                               float* out) {
    const std::uint32_t w = *reinterpret_cast<const std::uint32_t*>(codes + j0 / 2);
    const float* p = params + 2 * group_of(j0, head_dim);  // a run of 8 never straddles a group
    const float s = p[0], mn = p[1];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const std::uint32_t b = (w >> (8 * i)) & 0xffu;
      out[i] = __fmaf_rn(s, float(b & 0xfu), mn);
      out[i + 4] = __fmaf_rn(s, float(b >> 4), mn);
    }
  }

  // QuantTraits<Int4>::encode. Per group: lo and hi are the first elements
  // (in index order) equal to the group's minimum and maximum, as the CPU's
  // running std::min / std::max keep them; the codes of values i and i + 4
  // meet in one lane through a shuffle and are written as one byte.
  __device__ static void encode_row(const float* x, int d, std::uint8_t* codes, float* params) {
    namespace kd = kv_format_detail;
    const int lane = int(threadIdx.x) % 32;
    const int g = group_size(d);
    constexpr int kNone = 1 << 30;
    for (int g0 = 0; g0 < d; g0 += g) {
      float mn = INFINITY, mx = -INFINITY;
      for (int j = g0 + lane; j < g0 + g; j += 32) mn = fminf(mn, x[j]), mx = fmaxf(mx, x[j]);
      mn = warp_reduce(mn, MinOp{});
      mx = warp_reduce(mx, MaxOp{});
      int first_lo = kNone, first_hi = kNone;
      for (int j = g0 + lane; j < g0 + g; j += 32) {
        if (first_lo == kNone && x[j] == mn) first_lo = j;
        if (first_hi == kNone && x[j] == mx) first_hi = j;
      }
      const float lo = x[warp_reduce(first_lo, MinOp{})], hi = x[warp_reduce(first_hi, MinOp{})];
      const float scale = __fdiv_rn(__fsub_rn(hi, lo), 15.0f);
      const float inv = scale > 0.0f ? __fdiv_rn(1.0f, scale) : 0.0f;
      // g0 and each j0 are multiples of 32, so j % 8 == lane % 8 and value
      // j + 4 (same group: groups are multiples of 8) sits in lane + 4.
      for (int j0 = g0; j0 < g0 + g; j0 += 32) {
        const int j = j0 + lane;
        int q = 0;
        if (j < g0 + g) q = int(rintf(fminf(fmaxf(__fmul_rn(__fsub_rn(x[j], lo), inv), 0.0f), 15.0f)));
        const int q_high = __shfl_down_sync(kFullWarp, q, 4);
        if (j < g0 + g && lane % 8 < 4) codes[byte_of(j)] = std::uint8_t(q | (q_high << 4));
      }
      if (lane == 0) params[2 * (g0 / g)] = scale, params[2 * (g0 / g) + 1] = lo;
    }
  }
};

}  // namespace fastinfer::cuda
