// The prefill GEMM's packed operands and its scalar micro-kernel: the format
// every per-ISA micro-kernel (gemm_avx2.hpp, gemm_avx512.hpp) reads, and the
// kernel a build without a vector instruction set (level scalar) runs.
//
// Y[t][r] = sum_c W[r][c] X[t][c]: both operands keep the depth c contiguous,
// so one must be transposed to feed vector registers. We transpose X (the
// activations, n x k, re-used by every weight row) rather than W (rows x k,
// re-used only n times): a tile holds kRows weight rows x (vectors x kLanes)
// tokens of accumulators, each weight value broadcast, each token vector
// loaded once per depth step.
//
// Packed formats (f32, written by gemm_packed.hpp):
// * weight micro-panel: kRows rows of one depth block, row r at wp + r *
//   kGemmDepthBlock (a constant stride, so the broadcasts need one pointer);
//   bf16/f16 are widened here, once per panel, and rows past the matrix are
//   zeros.
// * token panel: `depth` steps of `width` floats (width = vectors x kLanes
//   tokens; tokens past n are zeros).
// * C tile: kRows rows of `width` floats, ldc apart (tokens contiguous).
//
// Summation order, at every level and for any tiling, thread count or pass
// size: one fused multiply-add per column, in column order, from 0 (C holds
// the running sums: the driver zeroes it, each depth block's tile reloads
// and continues them; a branch between "load" and "zero" made GCC 12 keep
// the AVX2 accumulators on the stack). So every
// output is the plain sequential dot product, bit for bit: the vector levels
// equal a std::fma loop, the scalar level equals scalar::matmul_rows
// (gemv_reference.hpp, fma_scalar), and a token's bits never depend on the
// other tokens of its pass (n > 32; the small-row tiles below that sum in
// another, documented order).
#pragma once

#include <cstdint>

#include "fastinfer/backend/cpu/gemv_reference.hpp"  // fma_scalar

namespace fastinfer::cpu {

// Depth steps per packed weight block: a micro-panel of 8 rows is 8 KiB
// (L1) and a row block's panels ~100 KiB (L2). The bits do not depend on it.
inline constexpr std::int64_t kGemmDepthBlock = 256;

namespace scalar {

// Plain loops over a small tile (the compiler may vectorise them at the
// build's flags). fma_scalar keeps scalar::matmul_rows' rounding.
struct GemmKernel {
  static constexpr int kRows = 4, kLanes = 8, kMaxVectors = 2;

  template <int V>
  static void tile(const float* wp, const float* xp, std::int64_t depth, float* c, std::int64_t ldc) {
    constexpr int W = V * kLanes;
    float acc[kRows][W];
    for (int r = 0; r < kRows; ++r)
      for (int t = 0; t < W; ++t) acc[r][t] = c[r * ldc + t];
    for (std::int64_t d = 0; d < depth; ++d)
      for (int r = 0; r < kRows; ++r) {
        const float w = wp[r * kGemmDepthBlock + d];
        for (int t = 0; t < W; ++t) acc[r][t] = fma_scalar(w, xp[d * W + t], acc[r][t]);
      }
    for (int r = 0; r < kRows; ++r)
      for (int t = 0; t < W; ++t) c[r * ldc + t] = acc[r][t];
  }

  // C (kRows x vectors * kLanes): its running sums continued over `depth` steps.
  static void run(int vectors, const float* wp, const float* xp, std::int64_t depth, float* c, std::int64_t ldc) {
    if (vectors == 1) return tile<1>(wp, xp, depth, c, ldc);
    tile<2>(wp, xp, depth, c, ldc);
  }
};

}  // namespace scalar
}  // namespace fastinfer::cpu
