// How the small-row matmul (1..32 activation rows: the verify pass and
// batched decode) walks a weight matrix, shared by the per-ISA tile sets
// (gemv_avx2.hpp, gemv_avx512.hpp). A tile set is a struct with
//
//   static constexpr int kMaxTileTokens        most activation rows per tile
//   static constexpr std::int64_t kBlockRows   weight rows per block
//   template <int T> static constexpr int kTileRows
//                                              weight rows per tile of T
//                                              activation rows (divides
//                                              kBlockRows)
//   template <DType D, int R, int T, bool PrefetchNext>
//   static void tile(w, stride, x, ldx, cols, y, ldy)
//                                              R weight rows x T activation
//                                              rows of sums, every one in the
//                                              set's one documented order
//
// The walk: blocks of kBlockRows weight rows; over each block, groups of
// kMaxTileTokens activation rows, then one group of the rows left. The first
// group streams the block from memory (its tiles prefetch the next tile's
// rows), the later ones find it in L1/L2: the pass reads each weight from
// memory once, and each weight vector is loaded (and bf16/f16 widened) once
// per group instead of once per activation row. No thread or tile shape
// changes a sum's order, so the bits of a row do not depend on the pass.
//
// Std-only and free of intrinsics: the tiles are compiled in their ISA's
// target region (cpu_target.hpp) and called out of line.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "fastinfer/core/tensor.hpp"

namespace fastinfer::cpu::gemv_detail {

// Rows [0, m) of one block (weight rows from `base`) for T activation rows.
template <class Tiles, DType D, int T, bool Prefetch>
inline void block_rows(const std::uint8_t* base, std::size_t stride, std::int64_t m, const float* x,
                       std::int64_t k, float* y, std::int64_t ldy) {
  constexpr int R = Tiles::template kTileRows<T>;
  std::int64_t r = 0;
  for (; r + R <= m; r += R) Tiles::template tile<D, R, T, Prefetch>(base + r * stride, stride, x, k, k, y + r, ldy);
  for (; r < m; ++r) Tiles::template tile<D, 1, T, false>(base + r * stride, stride, x, k, k, y + r, ldy);
}

// The rows of one block for the n < kMaxTileTokens activation rows left
// (T counts down to the n that is there).
template <class Tiles, DType D, bool Prefetch, int T = Tiles::kMaxTileTokens - 1>
inline void block_rows_left(std::int64_t n, const std::uint8_t* base, std::size_t stride, std::int64_t m,
                            const float* x, std::int64_t k, float* y, std::int64_t ldy) {
  if constexpr (T >= 1) {
    if (n == T) return block_rows<Tiles, D, T, Prefetch>(base, stride, m, x, k, y, ldy);
    return block_rows_left<Tiles, D, Prefetch, T - 1>(n, base, stride, m, x, k, y, ldy);
  }
}

// Rows [r0, r1) of Y = X W^T for n activation rows (X [n][w.cols], Y
// [n][w.rows]).
template <class Tiles, DType D>
inline void blocked_matmul_rows(const MatrixView& w, const float* x, std::int64_t n, float* y, std::int64_t r0,
                                std::int64_t r1) {
  constexpr int G = Tiles::kMaxTileTokens;
  const std::int64_t k = w.cols, ldy = w.rows;
  const std::size_t stride = row_bytes(w.dtype, k);
  for (std::int64_t b0 = r0; b0 < r1; b0 += Tiles::kBlockRows) {
    const std::int64_t m = std::min(Tiles::kBlockRows, r1 - b0);
    const std::uint8_t* base = w.row_ptr(b0);
    std::int64_t t = 0;
    if (n >= G) {
      block_rows<Tiles, D, G, true>(base, stride, m, x, k, y + b0, ldy);
      for (t = G; t + G <= n; t += G)
        block_rows<Tiles, D, G, false>(base, stride, m, x + t * k, k, y + t * ldy + b0, ldy);
      block_rows_left<Tiles, D, false>(n - t, base, stride, m, x + t * k, k, y + t * ldy + b0, ldy);
    } else {
      block_rows_left<Tiles, D, true>(n, base, stride, m, x, k, y + b0, ldy);
    }
  }
}

}  // namespace fastinfer::cpu::gemv_detail
