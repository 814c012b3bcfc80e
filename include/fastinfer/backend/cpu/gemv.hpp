// Matrix-vector product y = W x for f32, bf16 and f16 weights (f32 x, y and
// accumulation): the whole of decode's time on a model that does not fit in
// cache, so it is written to stream the weights at memory speed.
//
// The kernels, per instruction set (each in its own namespace):
//   gemv_reference.hpp  cpu::scalar   plain loops: the tests' oracle
//   gemv_avx2.hpp       cpu::avx2     8-float register tiles (AVX2 + FMA + F16C)
//   gemv_avx512.hpp     cpu::avx512   16-float register tiles (AVX-512)
//   gemv_avx512_bf16.hpp cpu::avx512_bf16  bf16 weights x bf16-rounded
//                                     activations (vdpbf16ps), where asked
//                                     (bf16_dot.hpp; not the default)
//   dot_tile below      generic       xsimd at whatever width the build has
// The per-ISA sets are compiled in target regions, so every x86 build carries
// them; each call runs the set of the current CPU level (cpu_level.hpp: the
// widest the CPU has, or a lower one forced), the generic one at level
// scalar. float_kernel_isa() names the set.
//
// One summation order for every (row, token) dot product at a given
// instruction set, wherever it is computed: kLanes-wide chunks in column
// order into one vector accumulator, then xsimd::hadd's tree, then the scalar
// tail in column order (one FMA each). The order never depends on the tile
// shape, the row split among threads or the batch size, so y is bit-identical
// for 1 or 2 threads, and matmul of n <= kDotMaxTokens (32) tokens gives each
// token exactly matvec's bits (speculative verification == plain decode).
#pragma once

#include <cmath>
#include <cstdint>

#include "fastinfer/backend/cpu/arch.hpp"
#include "fastinfer/backend/cpu/bf16_dot.hpp"
#include "fastinfer/backend/cpu/cpu_level.hpp"
#include "fastinfer/backend/cpu/cpu_target.hpp"
#include "fastinfer/backend/cpu/gemm_amx.hpp"
#include "fastinfer/backend/cpu/gemv_avx2.hpp"
#include "fastinfer/backend/cpu/gemv_avx512.hpp"
#include "fastinfer/backend/cpu/gemv_avx512_bf16.hpp"
#include "fastinfer/backend/cpu/gemv_reference.hpp"
#include "fastinfer/backend/cpu/one_row_walk.hpp"
#include "fastinfer/backend/cpu/q8_0.hpp"
#include "fastinfer/backend/cpu/reference.hpp"
#include "fastinfer/backend/cpu/threading.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/tensor.hpp"

// xsimd at the build's -march: g++ 12's false intrinsic warnings (cpu_target.hpp).
FASTINFER_CPU_INTRINSIC_WARNINGS_OFF
namespace fastinfer::cpu {
namespace gemv_detail {

// Row grain of a thread's share: a multiple of every tile height.
inline constexpr int kRowsPerStep = 8;

#if FASTINFER_CPU_SIMD
// out[i] = xsimd::hadd(v[i]) for i < N, bit for bit. With AVX (8 lanes) four
// vectors are reduced together: the same additions in the same tree as
// xsimd's (x_i + x_{i+4}, then pairs, then the two pair sums), in 6
// instructions instead of 20; with 64-column rows the reductions were a
// third of a matvec.
template <int N>
inline void reduce_lanes(const FloatBatch* v, float* out) {
  int i = 0;
#if defined(__AVX__) && FASTINFER_CPU_LANES == 8
  for (; i + 4 <= N; i += 4) {
    const __m256 a = v[i], b = v[i + 1], c = v[i + 2], d = v[i + 3];
    // [a_lo + a_hi | b_lo + b_hi] and [c_lo + c_hi | d_lo + d_hi]
    const __m256 ab = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
    const __m256 cd = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20), _mm256_permute2f128_ps(c, d, 0x31));
    const __m256 h1 = _mm256_hadd_ps(ab, cd);  // [a01 a23 c01 c23 | b01 b23 d01 d23]
    const __m256 h2 = _mm256_hadd_ps(h1, h1);  // [a c a c | b d b d]
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, h2);
    out[i] = lanes[0];
    out[i + 1] = lanes[4];
    out[i + 2] = lanes[1];
    out[i + 3] = lanes[5];
  }
#endif
  for (; i < N; ++i) out[i] = xsimd_compat::reduce_add(v[i]);
}
#endif

// y[t * ldy + r] = dot(row r of W, row t of X) for r < R, t < T. W rows are
// `stride` bytes apart, stored as D; X rows are ldx floats apart.
// Kept out of line, as the per-ISA tiles (gemv_avx2.hpp).
template <DType D, int R, int T>
FASTINFER_CPU_NOINLINE inline void dot_tile(const std::uint8_t* w, std::size_t stride, const float* x,
                                            std::int64_t ldx, std::int64_t cols, float* y, std::int64_t ldy) {
  std::int64_t c = 0;
#if FASTINFER_CPU_SIMD
  constexpr std::int64_t elem = D == DType::F32 ? 4 : 2;
  constexpr std::int64_t L = std::int64_t(kLanes);
  FloatBatch acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = FloatBatch(0.0f);
  for (; c + L <= cols; c += L) {
    FloatBatch xv[T];
    for (int t = 0; t < T; ++t) xv[t] = FloatBatch::load_unaligned(x + t * ldx + c);
    for (int r = 0; r < R; ++r) {
      const FloatBatch wv = arch_detail::load_f32<D>(w + r * stride + c * elem);
      for (int t = 0; t < T; ++t) acc[r][t] = xsimd::fma(wv, xv[t], acc[r][t]);
    }
  }
  // Lane sums of every accumulator, in xsimd::hadd's order.
  float sums[R * T];
  reduce_lanes<R * T>(&acc[0][0], sums);
#endif
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
#if FASTINFER_CPU_SIMD
      float sum = sums[r * T + t];
#else
      float sum = 0.0f;
#endif
      for (std::int64_t k = c; k < cols; ++k)
        sum = fma_scalar(load_scalar<D>(w + r * stride, k), x[t * ldx + k], sum);
      y[t * ldy + r] = sum;
    }
}

// Rows [begin, end) of y = W x with the generic dot_tile (level scalar), a
// weight row at a time: one sequential stream (gemv_blocking.hpp).
template <DType D>
inline void matvec_rows_generic(const MatrixView& w, const float* x, float* y, std::int64_t begin,
                                std::int64_t end) {
  const std::size_t stride = row_bytes(w.dtype, w.cols);
  for (std::int64_t r = begin; r < end; ++r) dot_tile<D, 1, 1>(w.row_ptr(r), stride, x, 0, w.cols, y + r, 0);
}

// Rows [begin, end) of y = W x with the kernel set of `level`.
template <DType D>
inline void matvec_rows(CpuLevel level, const MatrixView& w, const float* x, float* y, std::int64_t begin,
                        std::int64_t end) {
#if FASTINFER_CPU_DISPATCH
  if (level >= CpuLevel::avx512) return avx512::matvec_rows<D>(w, x, y, begin, end);
  if (level == CpuLevel::avx2) return avx2::matvec_rows<D>(w, x, y, begin, end);
#endif
  matvec_rows_generic<D>(w, x, y, begin, end);
}

}  // namespace gemv_detail

// The float kernel set of a level (the current one by default), for logs
// and benchmarks: "avx512", "avx2", else "generic" (xsimd at the build's
// flags, see isa_name()) or "scalar" (a build without SIMD).
inline const char* float_kernel_isa(CpuLevel level = cpu_level()) {
#if FASTINFER_CPU_DISPATCH
  if (level >= CpuLevel::avx512) return "avx512";
  if (level == CpuLevel::avx2) return "avx2";
#endif
#if FASTINFER_CPU_SIMD
  return "generic";
#else
  return "scalar";
#endif
}

// y[r] = sum_c W[r][c] x[c] for r < W.rows, on up to `threads` threads (fewer
// when W is small: see threading.hpp). y must not alias x.
inline void matvec(const MatrixView& w, const float* x, float* y, int threads = 1) {
  FASTINFER_CHECK(w.rows >= 0 && w.cols >= 0, InvalidArgument, "matvec: negative shape ", w.rows, " x ",
                  w.cols);
  using namespace gemv_detail;
  const int nt = threads_for(std::int64_t(w.bytes()), ParallelThresholds::kMatvecBytesPerThread, threads);
  const CpuLevel level = cpu_level();  // once, before the threads start
  // The tile sets read the one-row walk in the threads: its first read (which
  // parses FASTINFER_ONE_ROW_WALK, and may throw) happens here instead.
  (void)one_row_walk();
  switch (w.dtype) {
    case DType::F32:
      parallel_ranges(w.rows, kRowsPerStep, nt,
                      [&](std::int64_t b, std::int64_t e) { matvec_rows<DType::F32>(level, w, x, y, b, e); });
      return;
    case DType::BF16:
#if FASTINFER_CPU_AVX512_TILES
      if (bf16_dot_active(level)) {  // bf16 activations (bf16_dot.hpp)
        // At level amx the tiles of every pass size, so decode and a verify
        // pass give a token the same bits (gemm_amx.hpp).
        if (bf16_dot_on_amx(level)) return amx_bf16_matmul(w, x, 1, y, nt);
        const std::uint16_t* xb = bf16_dot_detail::rounded_activations(x, 1, w.cols);
        parallel_ranges(w.rows, kRowsPerStep, nt,
                        [&](std::int64_t b, std::int64_t e) { avx512_bf16::matvec_rows(w, xb, y, b, e); });
        return;
      }
#endif
      parallel_ranges(w.rows, kRowsPerStep, nt,
                      [&](std::int64_t b, std::int64_t e) { matvec_rows<DType::BF16>(level, w, x, y, b, e); });
      return;
    case DType::F16:
      parallel_ranges(w.rows, kRowsPerStep, nt,
                      [&](std::int64_t b, std::int64_t e) { matvec_rows<DType::F16>(level, w, x, y, b, e); });
      return;
    case DType::Q8_0:
      q8_0::matvec(w, x, y, nt);  // int8 block kernel (q8_0.hpp)
      return;
  }
}

}  // namespace fastinfer::cpu
FASTINFER_CPU_INTRINSIC_WARNINGS_ON
