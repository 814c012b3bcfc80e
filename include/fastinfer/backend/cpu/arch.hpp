// Compile-time choice of the CPU instruction set: whatever the consumer's
// compiler flags allow (xsimd::default_arch), so the library stays header-only
// and never needs a per-ISA translation unit. With -march=native on Zen 3 that
// is fma3<avx2> (8 floats); with AVX-512 enabled it is avx512bw/avx512f (16).
// Where xsimd knows no instruction set (non-x86/ARM targets), or when
// FASTINFER_CPU_FORCE_SCALAR is defined (to test that path anywhere), the
// kernels fall back to plain loops (FASTINFER_CPU_SIMD == 0).
//
// load_f32<DType>(p) widens one register's worth of stored weights to f32.
// bf16 -> f32 is a 16-bit shift; f16 -> f32 uses the F16C / AVX-512
// conversion instruction where the compiler allows it, the scalar conversion
// of core/dtype.hpp otherwise. xsimd 8.1 has neither, hence the intrinsics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "fastinfer/backend/cpu/cpu_target.hpp"
#include "fastinfer/backend/cpu/xsimd_compat.hpp"

#include "fastinfer/core/dtype.hpp"

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#include <immintrin.h>
#endif

#if defined(XSIMD_NO_SUPPORTED_ARCHITECTURE) || defined(FASTINFER_CPU_FORCE_SCALAR)
#define FASTINFER_CPU_SIMD 0
#else
#define FASTINFER_CPU_SIMD 1
#endif

// Floats per register of the instruction set xsimd picks (checked below):
// decides which widening intrinsics apply.
#if defined(__AVX512F__)
#define FASTINFER_CPU_LANES 16
#elif defined(__AVX__)
#define FASTINFER_CPU_LANES 8
#elif defined(__SSE2__)
#define FASTINFER_CPU_LANES 4
#else
#define FASTINFER_CPU_LANES 0
#endif

namespace fastinfer::cpu {

#if FASTINFER_CPU_SIMD
using Arch = xsimd::default_arch;
using FloatBatch = xsimd::batch<float, Arch>;
inline constexpr std::size_t kLanes = FloatBatch::size;
static_assert(FASTINFER_CPU_LANES == 0 || kLanes == FASTINFER_CPU_LANES,
              "xsimd::default_arch disagrees with the compiler's ISA macros about the register width");
#else
inline constexpr std::size_t kLanes = 1;
#endif

// The instruction set the kernels were compiled for, for logs and benchmarks.
inline const char* isa_name() {
#if FASTINFER_CPU_SIMD
  return Arch::name();
#else
  return "scalar";
#endif
}

// True when the f16 weights are widened by a hardware instruction.
inline constexpr bool kHardwareF16 =
#if FASTINFER_CPU_SIMD && ((FASTINFER_CPU_LANES == 16) || (defined(__F16C__) && FASTINFER_CPU_LANES == 8))
    true;
#else
    false;
#endif

namespace arch_detail {
// The stored row widened, per register width, and the fused multiply-add of
// the tails, for the per-ISA kernels (gemv_avx2.hpp, gemv_avx512.hpp): each
// fixes its width whatever xsimd picks, compiled in its level's target region
// (cpu_target.hpp), so every build carries every level.
#if FASTINFER_CPU_DISPATCH
}  // namespace arch_detail
}  // namespace fastinfer::cpu
FASTINFER_CPU_TARGET_BEGIN(FASTINFER_CPU_ISA_AVX2)
namespace fastinfer::cpu::arch_detail {
// 8 floats from 8 stored elements at p (unaligned).
template <DType D>
inline __m256 load8_f32(const void* p) {
  if constexpr (D == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(p));
  } else if constexpr (D == DType::BF16) {
    const __m128i h = _mm_loadu_si128(static_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p)));
  }
}
// a * b + c rounded once, whatever the build's FP_FAST_FMAF and contraction
// flags: the tail columns of the vector levels (their documented order).
inline float fma_fused(float a, float b, float c) {
  return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
}
}  // namespace fastinfer::cpu::arch_detail
FASTINFER_CPU_TARGET_END
FASTINFER_CPU_TARGET_BEGIN(FASTINFER_CPU_ISA_AVX512)
namespace fastinfer::cpu::arch_detail {
// 16 floats from 16 stored elements at p (unaligned).
template <DType D>
inline __m512 load16_f32(const void* p) {
  if constexpr (D == DType::F32) {
    return _mm512_loadu_ps(static_cast<const float*>(p));
  } else if constexpr (D == DType::BF16) {
    const __m256i h = _mm256_loadu_si256(static_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    return _mm512_cvtph_ps(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
  }
}
}  // namespace fastinfer::cpu::arch_detail
FASTINFER_CPU_TARGET_END
namespace fastinfer::cpu {
namespace arch_detail {
#endif

#if FASTINFER_CPU_SIMD
// One register of f32 from `kLanes` stored elements at p (unaligned).
template <DType D>
inline FloatBatch load_f32(const void* p) {
  static_assert(D == DType::F32 || D == DType::BF16 || D == DType::F16,
                "load_f32 widens f32, bf16 and f16 only; Q8_0 has its own block kernel");
#if FASTINFER_CPU_DISPATCH && defined(__AVX512F__) && FASTINFER_CPU_LANES == 16
  return load16_f32<D>(p);
#elif FASTINFER_CPU_DISPATCH && defined(__AVX2__) && defined(__F16C__) && FASTINFER_CPU_LANES == 8
  return load8_f32<D>(p);
#else
  if constexpr (D == DType::F32) {
    return FloatBatch::load_unaligned(static_cast<const float*>(p));
  } else if constexpr (D == DType::BF16) {
#if defined(__AVX2__) && FASTINFER_CPU_LANES == 8
    const __m128i h = _mm_loadu_si128(static_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#elif defined(__SSE2__) && FASTINFER_CPU_LANES == 4
    // Interleaving zeros below each bf16 is the shift, in one instruction.
    const __m128i h = _mm_loadl_epi64(static_cast<const __m128i*>(p));
    return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h));
#else
    alignas(64) float tmp[kLanes];
    auto* s = static_cast<const std::uint16_t*>(p);
    for (std::size_t i = 0; i < kLanes; ++i) tmp[i] = bf16_to_f32(s[i]);
    return FloatBatch::load_aligned(tmp);
#endif
  } else {
#if defined(__F16C__) && FASTINFER_CPU_LANES == 8
    return _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p)));
#else
    alignas(64) float tmp[kLanes];
    auto* s = static_cast<const std::uint16_t*>(p);
    for (std::size_t i = 0; i < kLanes; ++i) tmp[i] = f16_to_f32(s[i]);
    return FloatBatch::load_aligned(tmp);
#endif
  }
#endif
}
#endif

}  // namespace arch_detail

#if FASTINFER_CPU_DISPATCH
}  // namespace fastinfer::cpu
FASTINFER_CPU_TARGET_BEGIN(FASTINFER_CPU_ISA_AVX)
namespace fastinfer::cpu::arch_detail {

// Horizontal sums of several 8-float registers at once, each bit-equal to
// xsimd::hadd's on AVX (the same additions in the same tree: x_i + x_{i+4},
// then adjacent pairs, then the two pair sums), transposed into one
// register: a dozen instructions for 8 sums instead of ~5 per sum plus the
// scalar stores. The matmul tiles and the attention scores use them (AVX
// only, so an attention kernel compiled for plain AVX2 flags inlines them).

// [a_lo + a_hi | b_lo + b_hi]: the first level of the tree for two registers.
inline __m256 fold_halves(__m256 a, __m256 b) {
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}
// [h(v0) h(v2) h(v4) h(v6) | h(v1) h(v3) h(v5) h(v7)], h = xsimd::hadd.
inline __m256 reduce8(__m256 v0, __m256 v1, __m256 v2, __m256 v3, __m256 v4, __m256 v5, __m256 v6, __m256 v7) {
  const __m256 h1 = _mm256_hadd_ps(fold_halves(v0, v1), fold_halves(v2, v3));
  const __m256 h2 = _mm256_hadd_ps(fold_halves(v4, v5), fold_halves(v6, v7));
  return _mm256_hadd_ps(h1, h2);
}
// [h(a) h(b) h(c) h(d)].
inline __m128 reduce4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 h1 = _mm256_hadd_ps(fold_halves(a, b), fold_halves(c, d));  // [a01 a23 c01 c23 | b01 b23 d01 d23]
  const __m256 h2 = _mm256_hadd_ps(h1, h1);                                // [a c a c | b d b d]
  return _mm_unpacklo_ps(_mm256_castps256_ps128(h2), _mm256_extractf128_ps(h2, 1));
}

}  // namespace fastinfer::cpu::arch_detail
FASTINFER_CPU_TARGET_END
namespace fastinfer::cpu {
#endif

// Element i of a stored row as f32: the scalar twin of load_f32, for tails.
template <DType D>
inline float load_scalar(const void* p, std::int64_t i) {
  if constexpr (D == DType::F32) {
    return static_cast<const float*>(p)[i];
  } else if constexpr (D == DType::BF16) {
    return bf16_to_f32(static_cast<const std::uint16_t*>(p)[i]);
  } else {
    static_assert(D == DType::F16, "load_scalar widens f32, bf16 and f16 only");
    return f16_to_f32(static_cast<const std::uint16_t*>(p)[i]);
  }
}

}  // namespace fastinfer::cpu
