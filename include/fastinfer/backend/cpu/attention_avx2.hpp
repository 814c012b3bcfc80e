// Attention kernels for AVX2 + FMA + F16C (8 floats a register): the avx2
// level of cpu_level.hpp, and the avx512 level's kernel for head sizes that
// are multiples of 8 but not of 16 (stories260K: 8; 72). The kernel itself is
// attention_kernel_generic.hpp's, shared with the AVX-512 set; this file
// gives it 8-float registers (the gemv tiles' own primitives) and the
// widening of every KV format, 8 values at a time, in registers: keys and
// values are never copied out as f32 rows. Compiled in an AVX2 target region
// (cpu_target.hpp), so every x86 build carries it whatever its flags.
//
// Sums: a dot product of a query and a key is 8-value chunks in column order
// into one accumulator, reduced as xsimd::hadd reduces on AVX (the gemv
// tiles' documented order); the weighted sum of values runs over the keys in
// order, 8 columns per register.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "fastinfer/backend/cpu/attention_state.hpp"
#include "fastinfer/backend/cpu/cpu_target.hpp"
#include "fastinfer/backend/cpu/gemv_avx2.hpp"  // the 8-float primitives: Lanes, fmadd, reduce<N>
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/kv/paged_kv_view.hpp"

// 1: this build carries the AVX2 attention kernel.
#define FASTINFER_CPU_AVX2_ATTENTION FASTINFER_CPU_DISPATCH

#if FASTINFER_CPU_AVX2_ATTENTION
FASTINFER_CPU_TARGET_BEGIN(FASTINFER_CPU_ISA_AVX2)
namespace fastinfer::cpu::avx2::attention {

using avx2::fmadd;
using avx2::kLanes;
using avx2::Lanes;
using avx2::load_x;
using avx2::reduce;
using avx2::zero_lanes;

inline __m256 set1(float x) { return _mm256_set1_ps(x); }
inline __m256 add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
inline __m256 sub(__m256 a, __m256 b) { return _mm256_sub_ps(a, b); }
inline __m256 mul(__m256 a, __m256 b) { return _mm256_mul_ps(a, b); }
inline __m256 max_lanes(__m256 a, __m256 b) { return _mm256_max_ps(a, b); }
inline void store_x(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline __m256 round_nearest(__m256 v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline __m256 pow2i(__m256 n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
inline __m256 zero_below(__m256 x, float lo, __m256 y) {
  return _mm256_and_ps(_mm256_cmp_ps(x, _mm256_set1_ps(lo), _CMP_GE_OQ), y);
}

// 8 e4m3 bytes (in the low bytes of 8 16-bit lanes) as the f16 bits of the
// value times 2^-8, exactly: sign to bit 15, exponent and mantissa to bits
// 14..7 (e4m3 subnormals land on f16 subnormals); the 2^8 rides on the row
// scale (attention_detail::RowScale).
inline __m128i e4m3_as_f16(__m128i x) {
  const __m128i sign = _mm_and_si128(_mm_slli_epi16(x, 8), _mm_set1_epi16(std::int16_t(0x8000)));
  return _mm_or_si128(sign, _mm_slli_epi16(_mm_and_si128(x, _mm_set1_epi16(0x7f)), 7));
}

// Values e..e+7 of an Int4 row, unscaled: byte i of a run of 8 values holds
// value i (low nibble) and value i + 4 (high).
inline __m256 int4_codes8(const std::uint8_t* row, int e) {
  std::int32_t packed;
  std::memcpy(&packed, row + e / 2, 4);
  const __m128i x = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(packed));
  const __m128i lo = _mm_and_si128(x, _mm_set1_epi32(0xf));
  const __m128i hi = _mm_srli_epi32(x, 4);
  return _mm256_cvtepi32_ps(_mm256_set_m128i(hi, lo));
}

// Values e..e+7 of a stored row as f32 (see attention_kernel_generic.hpp).
// `group` is log2 of the Int4 group size, or 30 for one group per head.
template <typename Quant>
inline __m256 load_kv(const std::uint8_t* row, const float* params, int e, int group) {
  const auto* bytes = reinterpret_cast<const __m128i*>(row + e);
  if constexpr (std::is_same_v<Quant, kv::F32>) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + e);
  } else if constexpr (std::is_same_v<Quant, kv::F16>) {
    return arch_detail::load8_f32<DType::F16>(row + 2 * e);
  } else if constexpr (std::is_same_v<Quant, kv::BF16>) {
    return arch_detail::load8_f32<DType::BF16>(row + 2 * e);
  } else if constexpr (std::is_same_v<Quant, kv::Int8>) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(bytes)));
  } else if constexpr (std::is_same_v<Quant, kv::FP8E4M3>) {
    return _mm256_cvtph_ps(e4m3_as_f16(_mm_cvtepu8_epi16(_mm_loadl_epi64(bytes))));
  } else if constexpr (std::is_same_v<Quant, kv::FP8E5M2>) {
    // e5m2 is the top byte of an f16.
    return _mm256_cvtph_ps(_mm_slli_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64(bytes)), 8));
  } else {
    static_assert(std::is_same_v<Quant, kv::Int4>, "load_kv: a KV format without an AVX2 widening");
    const float* g = params + 2 * (e >> group);
    return _mm256_fmadd_ps(int4_codes8(row, e), _mm256_set1_ps(g[0]), _mm256_set1_ps(g[1]));
  }
}

// The first `count` (< 8) floats at p, -inf in the lanes past them (no byte
// past them is read); v's first `count` lanes stored to p.
inline __m256i first_lanes(int count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline __m256 load_padded(const float* p, int count) {
  const __m256i mask = first_lanes(count);
  return _mm256_blendv_ps(_mm256_set1_ps(-std::numeric_limits<float>::infinity()),
                          _mm256_maskload_ps(p, mask), _mm256_castsi256_ps(mask));
}
inline void store_first(float* p, __m256 v, int count) { _mm256_maskstore_ps(p, first_lanes(count), v); }

// r[j][i] <- r[i][j]: 8 registers of 8 floats transposed (32-bit and
// 64-bit interleaves within 128-bit lanes, then the lanes exchanged).
inline void transpose_lanes(__m256 (&r)[8]) {
  __m256 t[8];
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
    t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
  }
  // u[4k + m], 128-bit lane L: column 4L + m of rows 4k .. 4k + 3.
  __m256 u[8];
  for (int k = 0; k < 8; k += 4) {
    const __m256d a = _mm256_castps_pd(t[k]), b = _mm256_castps_pd(t[k + 1]);
    const __m256d c = _mm256_castps_pd(t[k + 2]), d = _mm256_castps_pd(t[k + 3]);
    u[k] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, c));
    u[k + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, c));
    u[k + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(b, d));
    u[k + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(b, d));
  }
  for (int m = 0; m < 4; ++m) {
    r[m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x20);
    r[4 + m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x31);
  }
}

// Lane j of the result: reduce<1>'s sum of the 8 values a[0..8)[j], in its
// tree (xsimd::hadd's: lane i + lane i + 4, adjacent pairs, the two pair
// sums), so a score computed with its keys across the lanes has the bits of
// one computed by reduce.
inline __m256 lane_tree(const __m256 (&a)[8]) {
  const __m256 g0 = _mm256_add_ps(a[0], a[4]), g1 = _mm256_add_ps(a[1], a[5]);
  const __m256 g2 = _mm256_add_ps(a[2], a[6]), g3 = _mm256_add_ps(a[3], a[7]);
  return _mm256_add_ps(_mm256_add_ps(g0, g1), _mm256_add_ps(g2, g3));
}

// 16 registers: scores of 4 keys x 2 query rows, 4 registers of value
// columns for up to 2 rows.
inline constexpr int kBlockHeads = 2;
#define FASTINFER_ATTENTION_KERNEL_ISA avx2
#include "fastinfer/backend/cpu/attention_kernel_generic.hpp"
#undef FASTINFER_ATTENTION_KERNEL_ISA

}  // namespace fastinfer::cpu::avx2::attention
FASTINFER_CPU_TARGET_END
#endif  // FASTINFER_CPU_AVX2_ATTENTION
