// The prefill GEMM fastinfer used before its own (gemm_packed.hpp): Eigen
// 3.4's internal general_matrix_matrix_product::run over row ranges that start
// on Eigen's register panel height, bf16/f16 widened per tile of 8 panels.
// Kept here, and only here, as the baseline bench_kernels' BM_Prefill measures
// ours against in one run; the library itself no longer includes Eigen.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastinfer/backend/cpu/cpu_target.hpp"  // FASTINFER_CPU_INTRINSIC_WARNINGS_OFF

// Eigen's AVX-512 packet code at the build's -march: g++ 12's false
// '__Y' warnings from the intrinsics it inlines (cpu_target.hpp).
FASTINFER_CPU_INTRINSIC_WARNINGS_OFF
#include <Eigen/Core>
FASTINFER_CPU_INTRINSIC_WARNINGS_ON

#include "fastinfer/backend/cpu/elementwise.hpp"
#include "fastinfer/backend/cpu/threading.hpp"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer::bench {
namespace eigen_gemm_detail {

inline constexpr std::int64_t kPanelRows = Eigen::internal::gebp_traits<float, float>::mr;
inline constexpr std::int64_t kWidenTileRows = 8 * kPanelRows;

// Y[:, 0:m] += W_tile (m x k, row-major, leading dim ldw) * X^T.
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

inline void matmul_rows(const MatrixView& w, const float* x, std::int64_t n, float* y, std::int64_t r0,
                        std::int64_t r1) {
  const std::int64_t k = w.cols;
  for (std::int64_t j = 0; j < n; ++j) std::fill(y + j * w.rows + r0, y + j * w.rows + r1, 0.0f);
  if (w.dtype == DType::F32) {
    gemm_tile(reinterpret_cast<const float*>(w.row_ptr(r0)), k, r1 - r0, x, k, n, y + r0, w.rows);
    return;
  }
  thread_local std::vector<float> s;
  if (s.size() < std::size_t(kWidenTileRows * k)) s.resize(std::size_t(kWidenTileRows * k));
  for (std::int64_t t = r0; t < r1; t += kWidenTileRows) {
    const std::int64_t m = std::min(kWidenTileRows, r1 - t);
    for (std::int64_t r = 0; r < m; ++r) cpu::load_row(w.dtype, w.row_ptr(t + r), s.data() + r * k, k);
    gemm_tile(s.data(), k, m, x, k, n, y + t, w.rows);
  }
}

}  // namespace eigen_gemm_detail

// Y = X W^T (f32, bf16, f16 weights) through Eigen on up to `threads` threads.
inline void eigen_matmul(const MatrixView& w, const float* x, std::int64_t n, float* y, int threads) {
  using namespace eigen_gemm_detail;
  const std::int64_t panels = (w.rows + kPanelRows - 1) / kPanelRows;
  const int nt = cpu::threads_for(w.rows * w.cols * n, cpu::ParallelThresholds::kMatmulMacsPerThread,
                                  int(std::min<std::int64_t>(threads, panels)));
  cpu::parallel_ranges(w.rows, kPanelRows, nt,
                       [&](std::int64_t r0, std::int64_t r1) { matmul_rows(w, x, n, y, r0, r1); });
}

}  // namespace fastinfer::bench
