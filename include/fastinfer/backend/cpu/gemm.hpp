// Matrix-matrix product: Y[t][r] = sum_c W[r][c] X[t][c] for n tokens.
//
// Two regimes:
// * n <= kDotMaxTokens (32: speculative verification, batched decode, the
//   engine's mixed steps): the small-row tiles of the current CPU level
//   (gemv_avx512.hpp, gemv_avx2.hpp, else gemv.hpp's dot_tile) over blocks of
//   weight rows kept in L1/L2, bf16/f16 widened in registers. Weights are
//   read from memory once, and every token gets exactly the bits matvec
//   would give it, whatever the pass size up to 32 (batch invariance).
// * larger n (prefill): our packed GEMM (gemm_packed.hpp: packed panels,
//   cache blocking, the register-blocked micro-kernel of the CPU level,
//   bf16/f16 widened once per packed panel). Threads own row ranges. Each
//   output is the sequential FMA sum over its columns, so its bits depend on
//   neither the thread count nor the pass size; they differ from matvec's
//   (another summation order).
// Either way results do not depend on the thread count (the tests check the
// bits). With batch invariance on (batch_invariance.hpp) every n takes the
// small-row tiles, 32 tokens at a time over each thread's block of weight
// rows: every token then has matvec's bits whatever n (prefill pays for it).
// In the bf16-activation mode bf16 weights take that mode's tiles at every
// n instead: AMX at level amx (gemm_amx.hpp), the vdpbf16ps tiles at avx512
// (gemv_avx512_bf16.hpp); batch invariant as they are, and faster than the
// packed f32 GEMM (half the instructions a multiply-add).
//
// The prefill path replaced Eigen's internal general_matrix_matrix_product
// (an internal API that changes with Eigen 5): on Zen 5, one thread, it is
// 1.1-1.6x Eigen's speed (docs/benchmarks.md), and gemm.hpp needs no Eigen.
#pragma once

#include <algorithm>
#include <cstdint>

#include "fastinfer/backend/cpu/batch_invariance.hpp"
#include "fastinfer/backend/cpu/gemm_amx.hpp"
#include "fastinfer/backend/cpu/gemm_packed.hpp"
#include "fastinfer/backend/cpu/gemv.hpp"
#include "fastinfer/backend/cpu/threading.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer::cpu {
namespace gemm_detail {

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

// Calls chunk(rb, re, t, count) for the token chunks [t, t + count) of at
// most kDotMaxTokens over the weight rows [r0, r1) of a thread, in sweeps of
// rows whose bytes stay in L2 while every chunk passes over them: each weight
// is read from memory once however many tokens, and the activations (a few
// MB at most) come from L3 once per sweep. (With the chunks outer, a pass of
// 512 tokens read each of the thread's weights from memory 16 times.) No
// sum's order depends on the sweep: only the order outputs are computed in.
// One chunk takes the whole range (its next-block prefetch then runs on
// across it).
template <class Chunk>
inline void in_weight_sweeps(std::int64_t r0, std::int64_t r1, std::int64_t n, std::size_t row_bytes,
                             std::int64_t block_rows, Chunk&& chunk) {
  if (n <= kDotMaxTokens) return chunk(r0, r1, std::int64_t(0), n);
  constexpr std::size_t kSweepBytes = std::size_t(512) << 10;  // half of a Zen 4 core's L2
  const std::int64_t fit = std::int64_t(kSweepBytes / std::max<std::size_t>(row_bytes, 1));
  const std::int64_t sweep = std::max(block_rows, fit / block_rows * block_rows);
  for (std::int64_t rb = r0; rb < r1; rb += sweep)
    for (std::int64_t t = 0; t < n; t += kDotMaxTokens)
      chunk(rb, std::min(rb + sweep, r1), t, std::min(kDotMaxTokens, n - t));
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
  const CpuLevel level = cpu_level();  // once, before the threads start
  // Read at every pass (not only past kDotMaxTokens rows), so a bad
  // FASTINFER_BATCH_INVARIANT is refused at the first one.
  const bool invariant = batch_invariant();
  // Split when either the bytes or the arithmetic pay for a second thread.
  const int streaming_threads =
      std::max(threads_for(std::int64_t(w.bytes()), ParallelThresholds::kMatvecBytesPerThread, threads),
               threads_for(macs, ParallelThresholds::kMatmulMacsPerThread, threads));
  const std::size_t stride = row_bytes(w.dtype, w.cols);
#if FASTINFER_CPU_AVX512_TILES
  // bf16 activations (bf16_dot.hpp) take their tiles at every pass size,
  // batch invariant as they are: AMX (gemm_amx.hpp), else the vdpbf16ps
  // tiles, which do twice the f32 FMA's multiply-adds an instruction (a
  // 512-token prefill of the 110M stand-in on Zen 4: 529-542 ms through the
  // packed f32 GEMM, 398 ms through these).
  if (w.dtype == DType::BF16 && bf16_dot_on_amx(level)) return amx_bf16_matmul(w, x, n, y, streaming_threads);
  if (w.dtype == DType::BF16 && bf16_dot_active(level)) {
    const std::uint16_t* xb = bf16_dot_detail::rounded_activations(x, n, w.cols);
    parallel_ranges(w.rows, dot_block_rows(level), streaming_threads, [&](std::int64_t r0, std::int64_t r1) {
      in_weight_sweeps(r0, r1, n, stride, dot_block_rows(level),
                       [&](std::int64_t rb, std::int64_t re, std::int64_t t, std::int64_t count) {
                         avx512_bf16::matmul_rows(w, xb + t * w.cols, count, y + t * w.rows, rb, re);
                       });
    });
    return;
  }
#endif
  if (n <= kDotMaxTokens || invariant) {
    // Weight-streaming regime. Past kDotMaxTokens (batch invariance on) a
    // thread's rows meet the tokens 32 at a time.
    parallel_ranges(w.rows, dot_block_rows(level), streaming_threads, [&](std::int64_t r0, std::int64_t r1) {
      in_weight_sweeps(r0, r1, n, stride, dot_block_rows(level),
                       [&](std::int64_t rb, std::int64_t re, std::int64_t t, std::int64_t count) {
                         dot_matmul_rows(level, w, x + t * w.cols, count, y + t * w.rows, rb, re);
                       });
    });
    return;
  }
  const std::int64_t tiles = (w.rows + packed_gemm_detail::tile_rows(level) - 1) / packed_gemm_detail::tile_rows(level);
  const int nt = threads_for(macs, ParallelThresholds::kMatmulMacsPerThread,
                             int(std::min<std::int64_t>(threads, tiles)));
  packed_matmul(level, w, x, n, y, nt);
}

}  // namespace fastinfer::cpu
