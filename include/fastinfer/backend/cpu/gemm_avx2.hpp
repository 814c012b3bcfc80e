// The prefill GEMM's micro-kernel for AVX2 + FMA (8 floats a register, 16
// registers): 6 weight rows x 2 vectors of 8 tokens of accumulators (12 +
// 2 token vectors + 1 broadcast; 1 vector for a pass's last tokens) over the packed operands of
// gemm_reference.hpp, one FMA per column in column order (so the same bits as
// a std::fma loop). Compiled in an AVX2 target region whatever the build's
// flags; the avx2 level runs it.
#pragma once

#include <cstdint>

#include "fastinfer/backend/cpu/cpu_target.hpp"
#include "fastinfer/backend/cpu/gemm_reference.hpp"
#include "fastinfer/backend/cpu/gemv_avx2.hpp"  // FASTINFER_CPU_NOINLINE

#if FASTINFER_CPU_DISPATCH
FASTINFER_CPU_TARGET_BEGIN(FASTINFER_CPU_ISA_AVX2)
namespace fastinfer::cpu::avx2 {

// The accumulators are named variables: as __m256 arrays (the AVX-512
// kernel's form) GCC 12 stored every accumulator to the stack on every depth
// step, twice the stores the core can retire, and the kernel ran at half
// speed.
struct GemmKernel {
  static constexpr int kRows = 6, kLanes = 8, kMaxVectors = 2;

  // One depth step of one weight row over two token vectors.
  static void step2(const float* w, __m256 x0, __m256 x1, __m256& a, __m256& b) {
    const __m256 wv = _mm256_broadcast_ss(w);
    a = _mm256_fmadd_ps(wv, x0, a);
    b = _mm256_fmadd_ps(wv, x1, b);
  }
  static void step1(const float* w, __m256 x0, __m256& a) { a = _mm256_fmadd_ps(_mm256_broadcast_ss(w), x0, a); }

  FASTINFER_CPU_NOINLINE static void tile2(const float* wp, const float* xp, std::int64_t depth, float* c,
                                           std::int64_t ldc) {
    constexpr std::int64_t S = kGemmDepthBlock;
    __m256 a0 = _mm256_loadu_ps(c), b0 = _mm256_loadu_ps(c + 8);
    __m256 a1 = _mm256_loadu_ps(c + ldc), b1 = _mm256_loadu_ps(c + ldc + 8);
    __m256 a2 = _mm256_loadu_ps(c + 2 * ldc), b2 = _mm256_loadu_ps(c + 2 * ldc + 8);
    __m256 a3 = _mm256_loadu_ps(c + 3 * ldc), b3 = _mm256_loadu_ps(c + 3 * ldc + 8);
    __m256 a4 = _mm256_loadu_ps(c + 4 * ldc), b4 = _mm256_loadu_ps(c + 4 * ldc + 8);
    __m256 a5 = _mm256_loadu_ps(c + 5 * ldc), b5 = _mm256_loadu_ps(c + 5 * ldc + 8);
    for (std::int64_t d = 0; d < depth; ++d) {
      const __m256 x0 = _mm256_loadu_ps(xp + 16 * d), x1 = _mm256_loadu_ps(xp + 16 * d + 8);
      step2(wp + d, x0, x1, a0, b0);
      step2(wp + S + d, x0, x1, a1, b1);
      step2(wp + 2 * S + d, x0, x1, a2, b2);
      step2(wp + 3 * S + d, x0, x1, a3, b3);
      step2(wp + 4 * S + d, x0, x1, a4, b4);
      step2(wp + 5 * S + d, x0, x1, a5, b5);
    }
    _mm256_storeu_ps(c, a0), _mm256_storeu_ps(c + 8, b0);
    _mm256_storeu_ps(c + ldc, a1), _mm256_storeu_ps(c + ldc + 8, b1);
    _mm256_storeu_ps(c + 2 * ldc, a2), _mm256_storeu_ps(c + 2 * ldc + 8, b2);
    _mm256_storeu_ps(c + 3 * ldc, a3), _mm256_storeu_ps(c + 3 * ldc + 8, b3);
    _mm256_storeu_ps(c + 4 * ldc, a4), _mm256_storeu_ps(c + 4 * ldc + 8, b4);
    _mm256_storeu_ps(c + 5 * ldc, a5), _mm256_storeu_ps(c + 5 * ldc + 8, b5);
  }

  FASTINFER_CPU_NOINLINE static void tile1(const float* wp, const float* xp, std::int64_t depth, float* c,
                                           std::int64_t ldc) {
    constexpr std::int64_t S = kGemmDepthBlock;
    __m256 a0 = _mm256_loadu_ps(c), a1 = _mm256_loadu_ps(c + ldc), a2 = _mm256_loadu_ps(c + 2 * ldc);
    __m256 a3 = _mm256_loadu_ps(c + 3 * ldc), a4 = _mm256_loadu_ps(c + 4 * ldc), a5 = _mm256_loadu_ps(c + 5 * ldc);
    for (std::int64_t d = 0; d < depth; ++d) {
      const __m256 x0 = _mm256_loadu_ps(xp + 8 * d);
      step1(wp + d, x0, a0);
      step1(wp + S + d, x0, a1);
      step1(wp + 2 * S + d, x0, a2);
      step1(wp + 3 * S + d, x0, a3);
      step1(wp + 4 * S + d, x0, a4);
      step1(wp + 5 * S + d, x0, a5);
    }
    _mm256_storeu_ps(c, a0), _mm256_storeu_ps(c + ldc, a1), _mm256_storeu_ps(c + 2 * ldc, a2);
    _mm256_storeu_ps(c + 3 * ldc, a3), _mm256_storeu_ps(c + 4 * ldc, a4), _mm256_storeu_ps(c + 5 * ldc, a5);
  }

  static void run(int vectors, const float* wp, const float* xp, std::int64_t depth, float* c, std::int64_t ldc) {
    if (vectors == 2) return tile2(wp, xp, depth, c, ldc);
    tile1(wp, xp, depth, c, ldc);
  }
};

}  // namespace fastinfer::cpu::avx2
FASTINFER_CPU_TARGET_END
#endif  // FASTINFER_CPU_DISPATCH
