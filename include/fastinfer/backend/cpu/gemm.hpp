// Matrix-matrix product for prefill: Y[t][r] = sum_c W[r][c] X[t][c] for n
// tokens, on Eigen's GEMM (packed, register-blocked, ~85 % of FMA peak).
//
// Work is cut into fixed tiles of kTileRows output features, whatever the
// thread count, and each tile is one sequential Eigen product. Threads take
// whole tiles, so every output is computed by the same code path with the same
// blocking for 1 or 2 threads: results do not depend on the thread count.
// bf16/f16 tiles are first widened to f32 in a per-thread scratch that is kept
// between calls.
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
#include "fastinfer/core/tensor.hpp"

static_assert(EIGEN_VERSION_AT_LEAST(3, 4, 0),
              "fastinfer's GEMM calls Eigen 3.4's general_matrix_matrix_product::run signature");

namespace fastinfer::cpu {
namespace gemm_detail {

// A multiple of Eigen's AVX/AVX-512 register panel (24 / 48 rows) so that tile
// edges fall on panel edges; 96 rows of a 2048-wide bf16 matrix widen to
// 768 KiB, about what one Zen 3 core's L2 holds.
inline constexpr std::int64_t kTileRows = 96;

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

// Per-thread f32 copy of a bf16/f16 tile: grows to the largest tile seen and
// is reused, so a long prefill does not allocate per layer.
inline std::vector<float>& widen_scratch() {
  thread_local std::vector<float> scratch;
  return scratch;
}

inline void matmul_tiles(const MatrixView& w, const float* x, std::int64_t n, float* y, std::int64_t t0,
                         std::int64_t t1) {
  const std::int64_t k = w.cols;
  for (std::int64_t t = t0; t < t1; ++t) {
    const std::int64_t r0 = t * kTileRows;
    const std::int64_t m = std::min(kTileRows, w.rows - r0);
    const float* tile;
    if (w.dtype == DType::F32) {
      tile = reinterpret_cast<const float*>(w.row_ptr(r0));
    } else {
      std::vector<float>& s = widen_scratch();
      if (s.size() < std::size_t(m * k)) s.resize(std::size_t(m * k));
      for (std::int64_t r = 0; r < m; ++r) load_row(w.dtype, w.row_ptr(r0 + r), s.data() + r * k, k);
      tile = s.data();
    }
    // Eigen accumulates into Y: clear this tile's outputs first.
    for (std::int64_t j = 0; j < n; ++j) std::fill(y + j * w.rows + r0, y + j * w.rows + r0 + m, 0.0f);
    gemm_tile(tile, k, m, x, k, n, y + r0, w.rows);
  }
}

}  // namespace gemm_detail

// Y[t][r] = sum_c W[r][c] X[t][c] for t < n: n tokens (rows of X, [n][cols])
// through one linear layer into Y ([n][rows]). Y must not alias X.
inline void matmul(const MatrixView& w, const float* x, std::int64_t n, float* y, int threads = 1) {
  if (n <= 0 || w.rows <= 0) return;
  if (n == 1) return matvec(w, x, y, threads);
  if (w.dtype == DType::Q8_0) return q8_0::matmul(w, x, n, y, threads);
  using namespace gemm_detail;
  const std::int64_t tiles = (w.rows + kTileRows - 1) / kTileRows;
  const int nt = threads_for(w.rows * w.cols * n, ParallelThresholds::kMatmulMacsPerThread,
                             int(std::min<std::int64_t>(threads, tiles)));
  parallel_ranges(tiles, 1, nt, [&](std::int64_t t0, std::int64_t t1) { matmul_tiles(w, x, n, y, t0, t1); });
}

}  // namespace fastinfer::cpu
