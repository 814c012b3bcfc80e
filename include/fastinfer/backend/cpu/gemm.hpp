// Matrix-matrix product: Y[t][r] = sum_c W[r][c] X[t][c] for n tokens.
//
// Two regimes:
// * n <= kDotMaxTokens (32: speculative verification, batched decode, the
//   engine's mixed steps): the small-row tiles of the current CPU level
//   (gemv_avx512.hpp, gemv_avx2.hpp, else gemv.hpp's dot_tile) over blocks of
//   weight rows kept in L1/L2, bf16/f16 widened in registers. Weights are
//   read from memory once, and every token gets exactly the bits matvec
//   would give it, whatever the pass size up to 32 (batch invariance).
// * larger n (prefill): Eigen's GEMM (packed, register-blocked; ~80 % of the
//   FMA peak here, against ~60 % for the dot-product tiles). Threads own
//   contiguous row ranges that start on a multiple of Eigen's register panel
//   height (gebp_traits::mr: 24 rows with AVX2, 48 with AVX-512), so a row's
//   sum runs through the same micro-kernel path, with the same depth blocking
//   (which depends on `cols` only), whichever range it is in. f32 ranges are
//   one Eigen call each; bf16/f16 ranges are widened in panel-aligned tiles.
//   Its bits differ from matvec's (another summation order).
// Either way results do not depend on the thread count (the tests check the
// bits).
//
// Eigen is called through general_matrix_matrix_product::run, the sequential
// kernel its own product evaluator calls per thread. The public product API
// would open its own OpenMP team whenever it is not already inside one
// (omp_get_max_threads(), not our `threads`), and Eigen::setNbThreads is
// process-wide state a library must not touch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "fastinfer/backend/cpu/elementwise.hpp"
#include "fastinfer/backend/cpu/gemv.hpp"
#include "fastinfer/backend/cpu/threading.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/tensor.hpp"

static_assert(EIGEN_VERSION_AT_LEAST(3, 4, 0),
              "fastinfer's GEMM calls Eigen 3.4's general_matrix_matrix_product::run signature");

namespace fastinfer::cpu {
namespace gemm_detail {

// Rows of Eigen's widest register panel: every range and tile edge is a
// multiple of it, so every row takes the same micro-kernel path.
inline constexpr std::int64_t kPanelRows = Eigen::internal::gebp_traits<float, float>::mr;
// bf16/f16 rows widened per Eigen call: 8 panels (192 rows with AVX2; a
// 768-wide tile is 576 KiB of f32, about one Zen 3 core's L2).
inline constexpr std::int64_t kWidenTileRows = 8 * kPanelRows;

// Up to this many tokens the small-row tiles serve, so that a token's bits
// do not depend on the pass size up to it. Against Eigen, 1 thread, 2048 x
// 768 f32 on Zen 3 (AVX2 tiles): 3.4x at n = 2, 1.3x at 8, 1.05x at 16, 0.9x
// at 32 (a 10 % loss at 17..32 rows, the price of invariance there); the
// AVX-512 tiles' figures are in docs/benchmarks.md.
inline constexpr std::int64_t kDotMaxTokens = 32;
inline constexpr int kDotRows = 6, kDotTokens = 2;  // generic dot_tile: 12 accumulators + 2 x + 1 w
// Rows per block of the generic tiles: 32 rows of a 2048-wide f32 matrix are
// 256 KiB, half of a Zen 3 core's L2.
inline constexpr std::int64_t kDotBlockRows = 32;
// Rows per block (and the row grain of a thread's share) of a level's tiles.
inline std::int64_t dot_block_rows(CpuLevel level) {
#if FASTINFER_CPU_DISPATCH
  if (level >= CpuLevel::avx512) return avx512::kBlockRows;
  if (level == CpuLevel::avx2) return avx2::kBlockRows;
#endif
  return kDotBlockRows;
}

// Y[:, r0:r0+m] += W_tile (m x k, row-major, leading dim ldw) * X^T.
inline void gemm_tile(const float* w, std::int64_t ldw, std::int64_t m, const float* x, std::int64_t k,
                      std::int64_t n, float* y, std::int64_t ldy) {
  using Index = Eigen::Index;
  using Gemm = Eigen::internal::general_matrix_matrix_product<Index, float, Eigen::RowMajor, false, float,
                                                              Eigen::ColMajor, false, Eigen::ColMajor, 1>;
  Eigen::internal::gemm_blocking_space<Eigen::ColMajor, float, float, Eigen::Dynamic, Eigen::Dynamic,
                                       Eigen::Dynamic, 1, false>
      blocking(m, n, k, 1, true);
  Gemm::run(m, n, k, w, ldw, x, k, y, 1, ldy, 1.0f, blocking, nullptr);
}

// Per-thread f32 copy of a bf16/f16 tile for Eigen: grows to the largest tile
// seen and is reused, so a long prefill does not allocate per layer.
inline std::vector<float>& widen_scratch() {
  thread_local std::vector<float> scratch;
  return scratch;
}

// Rows [r0, r1) of Y = X W^T; r0 is a multiple of kPanelRows.
inline void matmul_rows(const MatrixView& w, const float* x, std::int64_t n, float* y, std::int64_t r0,
                        std::int64_t r1) {
  const std::int64_t k = w.cols;
  // Eigen accumulates into Y: clear this range's outputs first.
  for (std::int64_t j = 0; j < n; ++j) std::fill(y + j * w.rows + r0, y + j * w.rows + r1, 0.0f);
  if (w.dtype == DType::F32) {
    gemm_tile(reinterpret_cast<const float*>(w.row_ptr(r0)), k, r1 - r0, x, k, n, y + r0, w.rows);
    return;
  }
  std::vector<float>& s = widen_scratch();
  if (s.size() < std::size_t(kWidenTileRows * k)) s.resize(std::size_t(kWidenTileRows * k));
  for (std::int64_t t = r0; t < r1; t += kWidenTileRows) {
    const std::int64_t m = std::min(kWidenTileRows, r1 - t);
    for (std::int64_t r = 0; r < m; ++r) load_row(w.dtype, w.row_ptr(t + r), s.data() + r * k, k);
    gemm_tile(s.data(), k, m, x, k, n, y + t, w.rows);
  }
}

// Rows [r0, r1) of Y = X W^T with the generic small-row tiles (level scalar).
template <DType D>
inline void dot_matmul_rows_generic(const MatrixView& w, const float* x, std::int64_t n, float* y,
                                    std::int64_t r0, std::int64_t r1) {
  using gemv_detail::dot_tile;
  const std::int64_t k = w.cols;
  const std::size_t stride = row_bytes(w.dtype, k);
  for (std::int64_t b0 = r0; b0 < r1; b0 += kDotBlockRows) {
    const std::int64_t m = std::min(kDotBlockRows, r1 - b0);
    const std::uint8_t* base = w.row_ptr(b0);
    std::int64_t t = 0;
    for (; t + kDotTokens <= n; t += kDotTokens) {
      const float* xt = x + t * k;
      float* yt = y + t * w.rows + b0;
      std::int64_t r = 0;
      for (; r + kDotRows <= m; r += kDotRows)
        dot_tile<D, kDotRows, kDotTokens>(base + r * stride, stride, xt, k, k, yt + r, w.rows);
      for (; r < m; ++r) dot_tile<D, 1, kDotTokens>(base + r * stride, stride, xt, k, k, yt + r, w.rows);
    }
    for (; t < n; ++t) {
      const float* xt = x + t * k;
      float* yt = y + t * w.rows + b0;
      std::int64_t r = 0;
      for (; r + kDotRows <= m; r += kDotRows)
        dot_tile<D, kDotRows, 1>(base + r * stride, stride, xt, k, k, yt + r, w.rows);
      for (; r < m; ++r) dot_tile<D, 1, 1>(base + r * stride, stride, xt, k, k, yt + r, w.rows);
    }
  }
}

// Rows [r0, r1) of Y = X W^T with the small-row tiles of `level` (n <= kDotMaxTokens).
template <DType D>
inline void dot_matmul_rows(CpuLevel level, const MatrixView& w, const float* x, std::int64_t n, float* y,
                            std::int64_t r0, std::int64_t r1) {
#if FASTINFER_CPU_DISPATCH
  if (level >= CpuLevel::avx512) return avx512::matmul_rows<D>(w, x, n, y, r0, r1);
  if (level == CpuLevel::avx2) return avx2::matmul_rows<D>(w, x, n, y, r0, r1);
#endif
  dot_matmul_rows_generic<D>(w, x, n, y, r0, r1);
}

inline void dot_matmul_rows(CpuLevel level, const MatrixView& w, const float* x, std::int64_t n, float* y,
                            std::int64_t r0, std::int64_t r1) {
  switch (w.dtype) {
    case DType::F32:
      return dot_matmul_rows<DType::F32>(level, w, x, n, y, r0, r1);
    case DType::BF16:
      return dot_matmul_rows<DType::BF16>(level, w, x, n, y, r0, r1);
    case DType::F16:
      return dot_matmul_rows<DType::F16>(level, w, x, n, y, r0, r1);
    case DType::Q8_0:
      break;  // routed to q8_0::matmul before this point
  }
}

}  // namespace gemm_detail

// Y[t][r] = sum_c W[r][c] X[t][c] for t < n: n tokens (rows of X, [n][cols])
// through one linear layer into Y ([n][rows]). Y must not alias X.
inline void matmul(const MatrixView& w, const float* x, std::int64_t n, float* y, int threads = 1) {
  FASTINFER_CHECK(n >= 0 && w.rows >= 0 && w.cols >= 0, InvalidArgument, "matmul: negative shape: ", n,
                  " tokens through ", w.rows, " x ", w.cols);
  if (n == 0 || w.rows == 0) return;
  if (n == 1) return matvec(w, x, y, threads);
  if (w.dtype == DType::Q8_0) return q8_0::matmul(w, x, n, y, threads);
  using namespace gemm_detail;
  const std::int64_t macs = w.rows * w.cols * n;
  if (n <= kDotMaxTokens) {
    // Weight-streaming regime: split when either the bytes or the arithmetic
    // pay for a second thread.
    const int nt =
        std::max(threads_for(std::int64_t(w.bytes()), ParallelThresholds::kMatvecBytesPerThread, threads),
                 threads_for(macs, ParallelThresholds::kMatmulMacsPerThread, threads));
    const CpuLevel level = cpu_level();  // once, before the threads start
    parallel_ranges(w.rows, dot_block_rows(level), nt,
                    [&](std::int64_t r0, std::int64_t r1) { dot_matmul_rows(level, w, x, n, y, r0, r1); });
    return;
  }
  const std::int64_t panels = (w.rows + kPanelRows - 1) / kPanelRows;
  const int nt = threads_for(macs, ParallelThresholds::kMatmulMacsPerThread,
                             int(std::min<std::int64_t>(threads, panels)));
  parallel_ranges(w.rows, kPanelRows, nt,
                  [&](std::int64_t r0, std::int64_t r1) { matmul_rows(w, x, n, y, r0, r1); });
}

}  // namespace fastinfer::cpu
