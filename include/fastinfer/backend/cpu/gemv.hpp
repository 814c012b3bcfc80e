// Matrix-vector product y = W x for f32, bf16 and f16 weights (f32 x, y and
// accumulation): the whole of decode's time on a model that does not fit in
// cache, so it is written to stream the weights at memory speed.
//
// Shape of the inner loop: kRowsPerStep rows at once share each load of x,
// and each row keeps kAccumulators independent accumulators so that the FMA
// latency (4 cycles on Zen 3) hides behind the loads. Every row is summed in
// the same fixed order whether it is computed in a group or alone (the group
// size only changes which rows share a loop), so y does not depend on how the
// rows were split among threads.
#pragma once

#include <cstdint>

#include "fastinfer/backend/cpu/arch.hpp"
#include "fastinfer/backend/cpu/q8_0.hpp"
#include "fastinfer/backend/cpu/reference.hpp"
#include "fastinfer/backend/cpu/threading.hpp"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer::cpu {
namespace gemv_detail {

inline constexpr int kRowsPerStep = 4;
inline constexpr int kAccumulators = 2;

// y[0..R) = rows w (stride `stride` bytes) dotted with x[0..cols).
// Summation order per row: chunk j of kLanes columns goes to accumulator
// j % kAccumulators (j < the last whole step), a leftover whole chunk to
// accumulator 0, then the lanes are summed (xsimd::hadd of acc0 + acc1), then
// the scalar tail in column order.
template <DType D, int R>
inline void dot_rows(const std::uint8_t* w, std::size_t stride, const float* x, std::int64_t cols,
                     float* y) {
  constexpr std::int64_t elem = D == DType::F32 ? 4 : 2;
#if FASTINFER_CPU_SIMD
  constexpr std::int64_t L = std::int64_t(kLanes);
  constexpr std::int64_t step = L * kAccumulators;
  FloatBatch acc[R][kAccumulators];
  for (int r = 0; r < R; ++r)
    for (int a = 0; a < kAccumulators; ++a) acc[r][a] = FloatBatch(0.0f);
  std::int64_t c = 0;
  for (; c + step <= cols; c += step) {
    for (int a = 0; a < kAccumulators; ++a) {
      const FloatBatch xv = FloatBatch::load_unaligned(x + c + a * L);
      for (int r = 0; r < R; ++r)
        acc[r][a] = xsimd::fma(arch_detail::load_f32<D>(w + r * stride + (c + a * L) * elem), xv, acc[r][a]);
    }
  }
  for (; c + L <= cols; c += L) {
    const FloatBatch xv = FloatBatch::load_unaligned(x + c);
    for (int r = 0; r < R; ++r) acc[r][0] = xsimd::fma(arch_detail::load_f32<D>(w + r * stride + c * elem), xv, acc[r][0]);
  }
  for (int r = 0; r < R; ++r) {
    FloatBatch total = acc[r][0];
    for (int a = 1; a < kAccumulators; ++a) total += acc[r][a];
    float sum = xsimd::hadd(total);
    for (std::int64_t t = c; t < cols; ++t) sum += load_scalar<D>(w + r * stride, t) * x[t];
    y[r] = sum;
  }
#else
  for (int r = 0; r < R; ++r) {
    float sum = 0.0f;
    for (std::int64_t t = 0; t < cols; ++t) sum += load_scalar<D>(w + r * stride, t) * x[t];
    y[r] = sum;
  }
#endif
}

// Rows [begin, end) of y = W x.
template <DType D>
inline void matvec_rows(const MatrixView& w, const float* x, float* y, std::int64_t begin, std::int64_t end) {
  const std::size_t stride = row_bytes(w.dtype, w.cols);
  std::int64_t r = begin;
  for (; r + kRowsPerStep <= end; r += kRowsPerStep)
    dot_rows<D, kRowsPerStep>(w.row_ptr(r), stride, x, w.cols, y + r);
  for (; r < end; ++r) dot_rows<D, 1>(w.row_ptr(r), stride, x, w.cols, y + r);
}

}  // namespace gemv_detail

// y[r] = sum_c W[r][c] x[c] for r < W.rows, on up to `threads` threads (fewer
// when W is small: see threading.hpp). y must not alias x.
inline void matvec(const MatrixView& w, const float* x, float* y, int threads = 1) {
  using namespace gemv_detail;
  const int nt = threads_for(std::int64_t(w.bytes()), ParallelThresholds::kMatvecBytesPerThread, threads);
  switch (w.dtype) {
    case DType::F32:
      parallel_ranges(w.rows, kRowsPerStep, nt,
                      [&](std::int64_t b, std::int64_t e) { matvec_rows<DType::F32>(w, x, y, b, e); });
      return;
    case DType::BF16:
      parallel_ranges(w.rows, kRowsPerStep, nt,
                      [&](std::int64_t b, std::int64_t e) { matvec_rows<DType::BF16>(w, x, y, b, e); });
      return;
    case DType::F16:
      parallel_ranges(w.rows, kRowsPerStep, nt,
                      [&](std::int64_t b, std::int64_t e) { matvec_rows<DType::F16>(w, x, y, b, e); });
      return;
    case DType::Q8_0:
      q8_0::matvec(w, x, y, nt);  // int8 block kernel (q8_0.hpp)
      return;
  }
}

}  // namespace fastinfer::cpu
