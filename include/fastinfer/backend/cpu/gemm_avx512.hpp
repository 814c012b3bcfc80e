// The prefill GEMM's micro-kernel for AVX-512 (16 floats a register, 32
// registers): R weight rows x V vectors of 16 tokens of accumulators over the
// packed operands of gemm_reference.hpp, one FMA per column in column order
// (so the same bits as a std::fma loop). Compiled in an AVX-512 target region
// whatever the build's flags; the avx512 level runs it.
#pragma once

#include <cstdint>

#include "fastinfer/backend/cpu/cpu_target.hpp"
#include "fastinfer/backend/cpu/gemm_reference.hpp"
#include "fastinfer/backend/cpu/gemv_avx2.hpp"  // FASTINFER_CPU_NOINLINE

#if FASTINFER_CPU_DISPATCH
FASTINFER_CPU_TARGET_BEGIN(FASTINFER_CPU_ISA_AVX512)
namespace fastinfer::cpu::avx512 {

// R x V accumulators + V token vectors + 1 broadcast within 32 registers.
template <int R, int MaxV>
struct GemmTiles {
  static_assert(R * MaxV + MaxV + 1 <= 32, "an AVX-512 GEMM tile must fit its accumulators in 32 registers");
  static constexpr int kRows = R, kLanes = 16, kMaxVectors = MaxV;

  template <int V>
  FASTINFER_CPU_NOINLINE static void tile(const float* wp, const float* xp, std::int64_t depth, float* c,
                                          std::int64_t ldc) {
    __m512 acc[R][V];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_loadu_ps(c + r * ldc + 16 * v);
    for (std::int64_t d = 0; d < depth; ++d) {
      __m512 xv[V];
      for (int v = 0; v < V; ++v) {
        xv[v] = _mm512_loadu_ps(xp + d * (16 * V) + 16 * v);
#if defined(__GNUC__) || defined(__clang__)
        // One load per vector, not one folded into each of R FMAs.
        __asm__("" : "+v"(xv[v]));
#endif
      }
      for (int r = 0; r < R; ++r) {
        const __m512 wv = _mm512_set1_ps(wp[r * kGemmDepthBlock + d]);
        for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(wv, xv[v], acc[r][v]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
  }

  static void run(int vectors, const float* wp, const float* xp, std::int64_t depth, float* c, std::int64_t ldc) {
    if constexpr (MaxV >= 3)
      if (vectors == 3) return tile<3>(wp, xp, depth, c, ldc);
    if constexpr (MaxV >= 2)
      if (vectors == 2) return tile<2>(wp, xp, depth, c, ldc);
    tile<1>(wp, xp, depth, c, ldc);
  }
};

// 12 rows x 32 tokens: on Zen 5 (one thread, f32 and bf16, 768..32000 x
// 768..2048, n = 64 and 512) 12 x 2 was 0-8 % faster than 8 x 3 (48 tokens
// a panel: n = 64 wastes a third of the last one) and level with 14 x 2.
using GemmKernel = GemmTiles<12, 2>;

}  // namespace fastinfer::cpu::avx512
FASTINFER_CPU_TARGET_END
#endif  // FASTINFER_CPU_DISPATCH
