// Attention kernels for AVX-512 (16 floats a register): the avx512 level of
// cpu_level.hpp, for head sizes that are multiples of 16 (64, 128: every
// model past the toy ones). Other head sizes (8, 24, 72: multiples of 8 only)
// run the AVX2 kernel at this level (attention.hpp chooses): a 16-wide
// register over an 8-value tail would need masked loads in every widening
// and a second summation order, for heads too small to be worth it.
//
// The kernel is attention_kernel_generic.hpp's, shared with the AVX2 set;
// this file gives it 16-float registers (the gemv tiles' own primitives) and
// the widening of every KV format 16 values at a time. Compiled in an
// AVX-512 target region (cpu_target.hpp), so every x86 build carries it.
//
// Sums: a dot product of a query and a key is 16-value chunks in column
// order into one accumulator, reduced as the AVX-512 gemv tiles reduce (the
// two 8-float halves added, then xsimd::hadd's 8-lane tree); the weighted
// sum of values runs over the keys in order, 16 columns per register.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "fastinfer/backend/cpu/attention_avx2.hpp"  // int4_codes8, e4m3_as_f16
#include "fastinfer/backend/cpu/attention_state.hpp"
#include "fastinfer/backend/cpu/cpu_target.hpp"
#include "fastinfer/backend/cpu/gemv_avx512.hpp"  // the 16-float primitives: Lanes, fmadd, reduce<N>
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/kv/paged_kv_view.hpp"

// 1: this build carries the AVX-512 attention kernel.
#define FASTINFER_CPU_AVX512_ATTENTION FASTINFER_CPU_DISPATCH

namespace fastinfer::cpu::attention_detail {
// Floats per register of the AVX-512 kernel: head sizes it runs are multiples of it.
inline constexpr int kAvx512Lanes = 16;
}  // namespace fastinfer::cpu::attention_detail

#if FASTINFER_CPU_AVX512_ATTENTION
FASTINFER_CPU_TARGET_BEGIN(FASTINFER_CPU_ISA_AVX512)
namespace fastinfer::cpu::avx512::attention {

using avx512::fmadd;
using avx512::kLanes;
using avx512::Lanes;
using avx512::load_x;
using avx512::reduce;
using avx512::zero_lanes;
static_assert(kLanes == attention_detail::kAvx512Lanes, "the driver's head-size test must match the register width");

inline __m512 set1(float x) { return _mm512_set1_ps(x); }
inline __m512 add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
inline __m512 sub(__m512 a, __m512 b) { return _mm512_sub_ps(a, b); }
inline __m512 mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
inline __m512 max_lanes(__m512 a, __m512 b) { return _mm512_max_ps(a, b); }
inline void store_x(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline __m512 round_nearest(__m512 v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline __m512 pow2i(__m512 n) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
inline __m512 zero_below(__m512 x, float lo, __m512 y) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(lo), _CMP_GE_OQ), y);
}

// Values e..e+15 of a stored row as f32 (see attention_kernel_generic.hpp).
// `group` is log2 of the Int4 group size (32 values) or 30 for one group per
// head: 16 values at a multiple of 16 never straddle two groups.
template <typename Quant>
inline __m512 load_kv(const std::uint8_t* row, const float* params, int e, int group) {
  const auto* bytes = reinterpret_cast<const __m128i*>(row + e);
  if constexpr (std::is_same_v<Quant, kv::F32>) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + e);
  } else if constexpr (std::is_same_v<Quant, kv::F16>) {
    return arch_detail::load16_f32<DType::F16>(row + 2 * e);
  } else if constexpr (std::is_same_v<Quant, kv::BF16>) {
    return arch_detail::load16_f32<DType::BF16>(row + 2 * e);
  } else if constexpr (std::is_same_v<Quant, kv::Int8>) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(bytes)));
  } else if constexpr (std::is_same_v<Quant, kv::FP8E4M3>) {
    const __m256i x = _mm256_cvtepu8_epi16(_mm_loadu_si128(bytes));
    const __m128i lo = avx2::attention::e4m3_as_f16(_mm256_castsi256_si128(x));
    const __m128i hi = avx2::attention::e4m3_as_f16(_mm256_extracti128_si256(x, 1));
    return _mm512_cvtph_ps(_mm256_set_m128i(hi, lo));
  } else if constexpr (std::is_same_v<Quant, kv::FP8E5M2>) {
    // e5m2 is the top byte of an f16.
    return _mm512_cvtph_ps(_mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(bytes)), 8));
  } else {
    static_assert(std::is_same_v<Quant, kv::Int4>, "load_kv: a KV format without an AVX-512 widening");
    const __m512d lo = _mm512_castps_pd(_mm512_castps256_ps512(avx2::attention::int4_codes8(row, e)));
    const __m256d hi = _mm256_castps_pd(avx2::attention::int4_codes8(row, e + 8));
    const __m512 codes = _mm512_castpd_ps(_mm512_insertf64x4(lo, hi, 1));
    const float* g = params + 2 * (e >> group);
    return _mm512_fmadd_ps(codes, _mm512_set1_ps(g[0]), _mm512_set1_ps(g[1]));
  }
}

// The first `count` (< 16) floats at p, -inf in the lanes past them (no
// byte past them is read); v's first `count` lanes stored to p.
inline __m512 load_padded(const float* p, int count) {
  return _mm512_mask_loadu_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()),
                              __mmask16((1u << count) - 1u), p);
}
inline void store_first(float* p, __m512 v, int count) {
  _mm512_mask_storeu_ps(p, __mmask16((1u << count) - 1u), v);
}

// Lane j of the result: reduce<1>'s sum of the 16 values a[0..16)[j], in its
// tree (lane i + lane i + 8, then xsimd::hadd's 8-lane tree: i + i + 4,
// adjacent pairs, the two pair sums), so a score computed with its keys
// across the lanes has the bits of one computed by reduce.
inline __m512 lane_tree(const __m512 (&a)[16]) {
  __m512 f[8];
  for (int i = 0; i < 8; ++i) f[i] = _mm512_add_ps(a[i], a[i + 8]);
  const __m512 g0 = _mm512_add_ps(f[0], f[4]), g1 = _mm512_add_ps(f[1], f[5]);
  const __m512 g2 = _mm512_add_ps(f[2], f[6]), g3 = _mm512_add_ps(f[3], f[7]);
  return _mm512_add_ps(_mm512_add_ps(g0, g1), _mm512_add_ps(g2, g3));
}

// 32 registers: scores of 4 keys x 4 query rows, and 4 registers of value
// columns for up to 4 rows, keep their accumulators in registers.
inline constexpr int kBlockHeads = 4;
#define FASTINFER_ATTENTION_KERNEL_ISA avx512
#include "fastinfer/backend/cpu/attention_kernel_generic.hpp"
#undef FASTINFER_ATTENTION_KERNEL_ISA

}  // namespace fastinfer::cpu::avx512::attention
FASTINFER_CPU_TARGET_END
#endif  // FASTINFER_CPU_AVX512_ATTENTION
