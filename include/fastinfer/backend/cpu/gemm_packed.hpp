// The prefill GEMM (n > 32 tokens): packed operands, cache blocking and the
// register-blocked micro-kernel of the current CPU level (gemm_avx512.hpp,
// gemm_avx2.hpp, else gemm_reference.hpp's scalar one). Formats and the
// summation order are described in gemm_reference.hpp.
//
// Blocking, per thread (each owns a contiguous range of weight rows):
//   for each block of kRowBlockRows weight rows:
//     for each depth block of kGemmDepthBlock columns:
//       widen the block's weights once into micro-panels (f32, L2)
//       for each group of token panels (about kTokenBlockTokens tokens, L2):
//         for each micro-panel of kRows rows (L1):
//           for each token panel: micro-kernel into the C block
//     transpose the C block (rows x tokens) into Y (tokens x rows)
// X is packed once per call (transposed into token panels, in parallel).
// The depth blocks only cut a sequential FMA chain (the running sums go
// through C), so the bits do not depend on any block size, nor on the row
// ranges of the threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastinfer/backend/cpu/cpu_level.hpp"
#include "fastinfer/backend/cpu/elementwise.hpp"
#include "fastinfer/backend/cpu/gemm_avx2.hpp"
#include "fastinfer/backend/cpu/gemm_avx512.hpp"
#include "fastinfer/backend/cpu/gemm_reference.hpp"
#include "fastinfer/backend/cpu/threading.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer::cpu {
namespace packed_gemm_detail {

// Weight rows per block (rounded down to whole micro-panels). The packed
// depth block is re-read by every token panel; C (rows x n) stays in L1/L2.
// Measured on Zen 5, one thread, AVX-512, GFLOP/s over 768..32000 x
// 768..2048, n = 64 and 512: 24 rows best (n = 512: 232-241 f32 768x768),
// 48 rows 2-5 % slower, 96 rows 5-12 % slower.
inline constexpr std::int64_t kRowBlockRows = 24;
// Tokens per group: their packed depth block (192 x 256 floats, 192 KiB)
// stays in L2 while every micro-panel of the row block passes over it.
inline constexpr std::int64_t kTokenBlockTokens = 192;

inline std::int64_t round_up(std::int64_t v, std::int64_t m) { return (v + m - 1) / m * m; }

// A per-thread buffer of at least `floats`, 64-byte aligned (a vector load
// that straddles two cache lines costs two), reused across calls.
inline float* scratch(int slot, std::int64_t floats) {
  thread_local std::vector<float> buffers[3];
  std::vector<float>& b = buffers[slot];
  if (b.size() < std::size_t(floats + 16)) b.resize(std::size_t(floats + 16));
  const auto at = reinterpret_cast<std::uintptr_t>(b.data());
  return b.data() + ((64 - at % 64) % 64) / sizeof(float);
}
enum ScratchSlot : int { kTokens = 0, kWeights = 1, kOut = 2 };

template <class K>
struct Blocking {
  static constexpr std::int64_t kPanel = std::int64_t(K::kLanes) * K::kMaxVectors;  // tokens of a full panel
  static constexpr std::int64_t kBlockRows = std::max<std::int64_t>(1, kRowBlockRows / K::kRows) * K::kRows;
  static constexpr std::int64_t kGroupPanels = std::max<std::int64_t>(1, kTokenBlockTokens / kPanel);
  // Panel p's width: full, or the last tokens rounded up to whole vectors.
  static std::int64_t width(std::int64_t n, std::int64_t p) {
    return std::min(kPanel, round_up(n - p * kPanel, K::kLanes));
  }
};

// Token panel p of X^T (X is n x k): k steps of `width` floats, zeros past n.
// A cache line of columns at a time, each token row's line read whole:
// column by column, the panel's 32 rows (8 KiB apart at k = 2048) fell in
// one L1 set and every element missed (7.5 % of the whole GEMM at 768 x
// 2048, 2.5 % now; at k = 768 it costs 0.8 % more). A line copied into a
// tile and written out by columns was slower at both.
template <class K>
inline void pack_tokens(const float* x, std::int64_t n, std::int64_t k, std::int64_t p, float* xp) {
  using B = Blocking<K>;
  constexpr std::int64_t kLine = 16;
  const std::int64_t t0 = p * B::kPanel, width = B::width(n, p), valid = std::min(width, n - t0);
  float* out = xp + t0 * k;
  for (std::int64_t c0 = 0; c0 < k; c0 += kLine) {
    const std::int64_t cn = std::min(kLine, k - c0);
    for (std::int64_t t = 0; t < valid; ++t) {
      const float* src = x + (t0 + t) * k + c0;
      for (std::int64_t j = 0; j < cn; ++j) out[(c0 + j) * width + t] = src[j];
    }
    for (std::int64_t t = valid; t < width; ++t)
      for (std::int64_t j = 0; j < cn; ++j) out[(c0 + j) * width + t] = 0.0f;
  }
}

// Rows [r0, r0 + padded) of W, columns [c0, c0 + depth), widened to f32 at
// wp + r * kGemmDepthBlock; rows from r0 + m on are zeros.
inline void pack_weights(const MatrixView& w, std::int64_t r0, std::int64_t m, std::int64_t padded, std::int64_t c0,
                         std::int64_t depth, float* wp) {
  const std::size_t offset = row_bytes(w.dtype, c0);
  for (std::int64_t r = 0; r < padded; ++r) {
    float* o = wp + r * kGemmDepthBlock;
    if (r < m)
      load_row(w.dtype, w.row_ptr(r0 + r) + offset, o, depth);
    else
      std::fill(o, o + depth, 0.0f);
  }
}

// Rows [r0, r1) of Y = X W^T from the packed tokens xp.
template <class K>
inline void gemm_rows(const MatrixView& w, const float* xp, std::int64_t n, float* y, std::int64_t r0,
                      std::int64_t r1) {
  using B = Blocking<K>;
  constexpr std::int64_t R = K::kRows;
  const std::int64_t k = w.cols, ldc = round_up(n, K::kLanes);
  const std::int64_t panels = (n + B::kPanel - 1) / B::kPanel;
  float* wp = scratch(kWeights, B::kBlockRows * kGemmDepthBlock);
  float* ct = scratch(kOut, B::kBlockRows * ldc);
  for (std::int64_t rb = r0; rb < r1; rb += B::kBlockRows) {
    const std::int64_t m = std::min(B::kBlockRows, r1 - rb), tiles = (m + R - 1) / R;
    // The micro-kernels continue the running sums in C: start them at 0.
    std::fill(ct, ct + tiles * R * ldc, 0.0f);
    for (std::int64_t kb = 0; kb < k; kb += kGemmDepthBlock) {
      const std::int64_t depth = std::min(kGemmDepthBlock, k - kb);
      pack_weights(w, rb, m, tiles * R, kb, depth, wp);
      for (std::int64_t pb = 0; pb < panels; pb += B::kGroupPanels) {
        const std::int64_t pe = std::min(panels, pb + B::kGroupPanels);
        for (std::int64_t i = 0; i < tiles; ++i)
          for (std::int64_t p = pb; p < pe; ++p) {
            const std::int64_t width = B::width(n, p);
            K::run(int(width / K::kLanes), wp + i * R * kGemmDepthBlock, xp + p * B::kPanel * k + kb * width, depth,
                   ct + i * R * ldc + p * B::kPanel, ldc);
          }
      }
    }
    for (std::int64_t t = 0; t < n; ++t) {
      float* yt = y + t * w.rows + rb;
      for (std::int64_t r = 0; r < m; ++r) yt[r] = ct[r * ldc + t];
    }
  }
}

// Y = X W^T with micro-kernel K on up to `threads` threads (row ranges).
template <class K>
inline void gemm(const MatrixView& w, const float* x, std::int64_t n, float* y, int threads) {
  using B = Blocking<K>;
  const std::int64_t k = w.cols;
  if (k == 0) {
    std::fill(y, y + n * w.rows, 0.0f);
    return;
  }
  const std::int64_t panels = (n + B::kPanel - 1) / B::kPanel;
  float* xp = scratch(kTokens, round_up(n, K::kLanes) * k);
  parallel_ranges(panels, 1, int(std::min<std::int64_t>(threads, panels)), [&](std::int64_t p0, std::int64_t p1) {
    for (std::int64_t p = p0; p < p1; ++p) pack_tokens<K>(x, n, k, p, xp);
  });
  parallel_ranges(w.rows, K::kRows, threads,
                  [&](std::int64_t r0, std::int64_t r1) { gemm_rows<K>(w, xp, n, y, r0, r1); });
}

// Weight rows per micro-panel at `level`: the row grain of a thread's share.
inline std::int64_t tile_rows(CpuLevel level) {
#if FASTINFER_CPU_DISPATCH
  if (level >= CpuLevel::avx512) return avx512::GemmKernel::kRows;
  if (level == CpuLevel::avx2) return avx2::GemmKernel::kRows;
#endif
  (void)level;
  return scalar::GemmKernel::kRows;
}

}  // namespace packed_gemm_detail

// Y[t][r] = sum_c W[r][c] X[t][c] (f32, bf16 or f16 weights) with the packed
// GEMM of `level`, on up to `threads` threads: the sequential FMA sum of each
// output, the same bits for any thread count and any n.
inline void packed_matmul(CpuLevel level, const MatrixView& w, const float* x, std::int64_t n, float* y,
                          int threads) {
  using namespace packed_gemm_detail;
  FASTINFER_CHECK(w.dtype != DType::Q8_0, InvalidArgument,
                  "packed_matmul: Q8_0 weights have their own kernels (q8_0::matmul), not the float GEMM");
  FASTINFER_CHECK(n >= 0 && w.rows >= 0 && w.cols >= 0, InvalidArgument, "packed_matmul: negative shape: ", n,
                  " tokens through ", w.rows, " x ", w.cols);
  if (n == 0 || w.rows == 0) return;
#if FASTINFER_CPU_DISPATCH
  if (level >= CpuLevel::avx512) return gemm<avx512::GemmKernel>(w, x, n, y, threads);
  if (level == CpuLevel::avx2) return gemm<avx2::GemmKernel>(w, x, n, y, threads);
#endif
  (void)level;
  gemm<scalar::GemmKernel>(w, x, n, y, threads);
}

}  // namespace fastinfer::cpu
