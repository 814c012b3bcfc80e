// Matrix-matrix product: Y[t][r] = sum_c W[r][c] X[t][c] for n tokens.
//
// Two regimes:
// * n <= kDotMaxTokens (speculative verification, small batches): the
//   dot-product tile kernel of gemv.hpp, 6 rows x 2 tokens per tile, over
//   blocks of rows kept in L2 (bf16/f16 widened in registers). Weights are
//   read from memory once, and every token gets exactly the bits matvec
//   would give it.
// * larger n (prefill): Eigen's GEMM (packed, register-blocked; ~80 % of the
//   FMA peak here, against ~60 % for the dot-product tiles). Threads own
//   contiguous row ranges that start on a multiple of Eigen's register panel
//   height (gebp_traits::mr: 24 rows with AVX2, 48 with AVX-512), so a row's
//   sum runs through the same micro-kernel path, with the same depth blocking
//   (which depends on `cols` only), whichever range it is in. f32 ranges are
//   one Eigen call each; bf16/f16 ranges are widened in panel-aligned tiles.
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

// Up to this many tokens the dot-product tiles beat Eigen (1 thread, 2048 x
// 768 f32 on Zen 3: 3.4x at n = 2, 1.3x at 8, 1.05x at 16, 0.9x at 32) and
// they match matvec bit for bit.
inline constexpr std::int64_t kDotMaxTokens = 16;
inline constexpr int kDotRows = 6, kDotTokens = 2;  // 12 accumulators + 2 x + 1 w: 15 AVX2 registers
// Rows per block, re-read from L2 for every token pair: 32 rows of a
// 2048-wide f32 matrix are 256 KiB, half of a Zen 3 core's L2.
inline constexpr std::int64_t kDotBlockRows = 32;

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

// Rows [r0, r1) of Y = X W^T with the dot-product tiles (n <= kDotMaxTokens).
// 16-bit weights are widened in registers, as in matvec: at n = 2..16 that ran
// 1.3-2.1x faster than widening each block into a scratch first, and the
// widening is exact, so the bits are the same either way.
#if FASTINFER_CPU_AVX2_TILES
// dot_matmul_rows with AVX2 register tiles of 4 rows x 2 tokens (8 sums
// reduced at once into two 4-float stores) and 4 rows x 1 token for an odd
// last token. The tail columns (cols % 8) of a block's rows are gathered
// once per block into vectors laid out like the sums, then applied to every
// token pair with one FMA per column: the same FMAs, in the same order, as
// dot_tile's scalar tail.
template <DType D>
inline void dot_matmul_rows_avx2(const MatrixView& w, const float* x, std::int64_t n, float* y, std::int64_t r0,
                                 std::int64_t r1) {
  using namespace gemv_detail::tile_detail;
  using gemv_detail::dot_tile;
  const std::int64_t k = w.cols, cend = k & ~std::int64_t(7), tail = k - cend;
  const std::size_t stride = row_bytes(w.dtype, k);
  const std::int64_t ldy = w.rows;
  const __m256i off = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3), _mm256_set1_epi32(int(stride)));
  alignas(32) __m256 tails[kDotBlockRows / 4][7];  // [4-row tile][tail column]
  for (std::int64_t b0 = r0; b0 < r1; b0 += kDotBlockRows) {
    const std::int64_t m = std::min(kDotBlockRows, r1 - b0), m4 = m & ~std::int64_t(3);
    const std::uint8_t* base = w.row_ptr(b0);
    for (std::int64_t r = 0; r < m4; r += 4)
      for (std::int64_t c = 0; c < tail; ++c) tails[r / 4][c] = gather_column<D>(base + r * stride, off, cend + c);
    std::int64_t t = 0;
    for (; t + 2 <= n; t += 2) {
      const float* x0 = x + t * k;
      const float* x1 = x0 + k;
      float* y0 = y + t * ldy + b0;
      for (std::int64_t r = 0; r < m4; r += 4) {
        __m256 s = dot_4x2<D>(base + r * stride, stride, x0, x1, cend);
        for (std::int64_t c = 0; c < tail; ++c)
          s = _mm256_fmadd_ps(tails[r / 4][c],
                              _mm256_blend_ps(_mm256_broadcast_ss(x0 + cend + c), _mm256_broadcast_ss(x1 + cend + c), 0xf0),
                              s);
        _mm_storeu_ps(y0 + r, _mm256_castps256_ps128(s));
        _mm_storeu_ps(y0 + ldy + r, _mm256_extractf128_ps(s, 1));
      }
      for (std::int64_t r = m4; r < m; ++r) dot_tile<D, 1, 2>(base + r * stride, stride, x0, k, k, y0 + r, ldy);
    }
    if (t < n) {
      const float* x0 = x + t * k;
      float* y0 = y + t * ldy + b0;
      for (std::int64_t r = 0; r < m4; r += 4) {
        __m128 s = dot_4x1<D>(base + r * stride, stride, x0, cend);
        for (std::int64_t c = 0; c < tail; ++c)
          s = _mm_fmadd_ps(_mm256_castps256_ps128(tails[r / 4][c]), _mm_broadcast_ss(x0 + cend + c), s);
        _mm_storeu_ps(y0 + r, s);
      }
      for (std::int64_t r = m4; r < m; ++r) dot_tile<D, 1, 1>(base + r * stride, stride, x0, k, k, y0 + r, ldy);
    }
  }
}
#endif

template <DType D>
inline void dot_matmul_rows(const MatrixView& w, const float* x, std::int64_t n, float* y, std::int64_t r0,
                            std::int64_t r1) {
  using gemv_detail::dot_tile;
  const std::int64_t k = w.cols;
  const std::size_t stride = row_bytes(w.dtype, k);
#if FASTINFER_CPU_AVX2_TILES
  if (gemv_detail::tile_detail::usable(k, stride)) return dot_matmul_rows_avx2<D>(w, x, n, y, r0, r1);
#endif
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

inline void dot_matmul_rows(const MatrixView& w, const float* x, std::int64_t n, float* y, std::int64_t r0,
                            std::int64_t r1) {
  switch (w.dtype) {
    case DType::F32:
      return dot_matmul_rows<DType::F32>(w, x, n, y, r0, r1);
    case DType::BF16:
      return dot_matmul_rows<DType::BF16>(w, x, n, y, r0, r1);
    case DType::F16:
      return dot_matmul_rows<DType::F16>(w, x, n, y, r0, r1);
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
    parallel_ranges(w.rows, kDotBlockRows, nt,
                    [&](std::int64_t r0, std::int64_t r1) { dot_matmul_rows(w, x, n, y, r0, r1); });
    return;
  }
  const std::int64_t panels = (w.rows + kPanelRows - 1) / kPanelRows;
  const int nt = threads_for(macs, ParallelThresholds::kMatmulMacsPerThread,
                             int(std::min<std::int64_t>(threads, panels)));
  parallel_ranges(w.rows, kPanelRows, nt,
                  [&](std::int64_t r0, std::int64_t r1) { matmul_rows(w, x, n, y, r0, r1); });
}

}  // namespace fastinfer::cpu
