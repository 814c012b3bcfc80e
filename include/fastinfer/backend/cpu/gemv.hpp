// Matrix-vector product y = W x for f32, bf16 and f16 weights (f32 x, y and
// accumulation): the whole of decode's time on a model that does not fit in
// cache, so it is written to stream the weights at memory speed.
//
// One summation order for every (row, token) dot product, wherever it is
// computed: kLanes-wide chunks in column order into one vector accumulator,
// then xsimd::hadd, then the scalar tail in column order (one FMA each). The
// tile kernel below holds R rows x T tokens of such accumulators; matvec uses
// R = 4 rows sharing each load of x (4 independent FMA chains: ample for a
// memory-bound stream), the small-batch matmul uses 6 x 2. Because the order
// never depends on R, T, the row split among threads or the batch size, y is
// bit-identical for 1 or 2 threads, and matmul of n <= 16 tokens gives each
// token exactly matvec's bits (speculative verification == plain decode).
#pragma once

#include <cmath>
#include <cstdint>

#include "fastinfer/backend/cpu/arch.hpp"
#include "fastinfer/backend/cpu/q8_0.hpp"
#include "fastinfer/backend/cpu/reference.hpp"
#include "fastinfer/backend/cpu/threading.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/tensor.hpp"

// The register tiles below need AVX2 + FMA at 8 floats per register (Zen 3,
// Haswell and later without AVX-512); elsewhere the generic dot_tile serves.
#if FASTINFER_CPU_SIMD && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && FASTINFER_CPU_LANES == 8
#define FASTINFER_CPU_AVX2_TILES 1
#else
#define FASTINFER_CPU_AVX2_TILES 0
#endif

namespace fastinfer::cpu {
namespace gemv_detail {

// Rows per matvec tile, per weight type (measured streaming 438 MB of f32 /
// 219 MB of bf16 on one Zen 3 core): f32 8 rows 19.3 GB/s against 16.2 with
// 4; bf16/f16 4 rows plus a prefetch of the next tile 12.2-13.1 GB/s against
// 10.6-11.0 without (8 rows: 11.5). Prefetching within the row, 256 B to
// 2 KiB ahead, never helped: the hardware prefetcher already covers it.
template <DType D>
inline constexpr int kMatvecRows = D == DType::F32 ? 8 : 4;
template <DType D>
inline constexpr bool kMatvecPrefetch = D != DType::F32;
// Row grain of a thread's share: a multiple of every tile height.
inline constexpr int kRowsPerStep = 8;

// The scalar tail's multiply-add, written out so that every kernel rounds it
// the same way whatever the compiler's contraction choices.
inline float fma_scalar(float a, float b, float c) {
#if defined(FP_FAST_FMAF)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

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
// Kept out of line: inlined into a large caller, GCC 12 left the accumulator
// arrays on the stack, and the store-to-load round trip on every FMA ran bf16
// at 40-70 % speed.
#if defined(__GNUC__)
#define FASTINFER_CPU_NOINLINE __attribute__((noinline))
#else
#define FASTINFER_CPU_NOINLINE
#endif
// With PrefetchNext, each cache line of the tile's rows also prefetches the
// same column of the next R rows: 16-bit weights need so many instructions per
// line that the out-of-order window alone keeps too few misses in flight.
template <DType D, int R, int T, bool PrefetchNext = false>
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
#if defined(__GNUC__)
    if constexpr (PrefetchNext) {
      // Integer arithmetic: past the last tile the address lies beyond the
      // matrix, which a prefetch may touch but a pointer may not point to.
      if (((c * elem) & 63) == 0)
        for (int r = 0; r < R; ++r)
          __builtin_prefetch(
              reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(w) +
                                            std::size_t(r + R) * stride + std::size_t(c * elem)),
              0, 3);
    }
#endif
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

#if FASTINFER_CPU_AVX2_TILES
// Register tiles for AVX2 + FMA with their accumulators in named variables,
// each tile a function of its own (arrays indexed in loops stayed on the
// stack at -O2, and inlined into the block loop GCC 12 spilled two of the
// eight accumulators: either way a store-to-load round trip on every FMA
// chain, 2-3x slower),
// reduced together by a transposing tree that performs exactly
// xsimd::hadd's additions, so every sum is bit-equal to dot_tile's:
// (x_i + x_{i+4}), then adjacent pairs, then the two pair sums.
namespace tile_detail {

using arch_detail::reduce4;
using arch_detail::reduce8;

template <DType D>
inline constexpr std::int64_t kElem = D == DType::F32 ? 4 : 2;

// Element k (k >= 1) of the 8 rows at byte offsets `off` from w, widened to
// f32: the tail columns of 8 sums at once. 16-bit elements are read as the
// high half of the 32-bit word that ends with them, which lies inside the row.
template <DType D>
inline __m256 gather_column(const std::uint8_t* w, __m256i off, std::int64_t k) {
  if constexpr (D == DType::F32) {
    return _mm256_i32gather_ps(reinterpret_cast<const float*>(w + 4 * k), off, 1);
  } else {
    const __m256i g = _mm256_i32gather_epi32(reinterpret_cast<const int*>(w + 2 * k - 2), off, 1);
    if constexpr (D == DType::BF16) {
      return _mm256_castsi256_ps(_mm256_and_si256(g, _mm256_set1_epi32(std::int32_t(0xffff0000u))));
    } else {
      const __m256i h = _mm256_srli_epi32(g, 16);
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(h, h), 0x08);
      return _mm256_cvtph_ps(_mm256_castsi256_si128(packed));
    }
  }
}

// Sums of row r (4 rows, `stride` bytes apart) with x0 (lanes 0..3) and x1
// (lanes 4..7) over the vector part [0, cend) of the columns.
template <DType D>
FASTINFER_CPU_NOINLINE inline __m256 dot_4x2(const std::uint8_t* w, std::size_t stride, const float* x0, const float* x1,
                      std::int64_t cend) {
  const std::uint8_t* w1 = w + stride;
  const std::uint8_t* w2 = w1 + stride;
  const std::uint8_t* w3 = w2 + stride;
  __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
  for (std::int64_t c = 0; c < cend; c += 8) {
    const __m256 xa = _mm256_loadu_ps(x0 + c), xb = _mm256_loadu_ps(x1 + c);
    const std::int64_t o = c * kElem<D>;
    __m256 v = arch_detail::load_f32<D>(w + o);
    a0 = _mm256_fmadd_ps(v, xa, a0);
    b0 = _mm256_fmadd_ps(v, xb, b0);
    v = arch_detail::load_f32<D>(w1 + o);
    a1 = _mm256_fmadd_ps(v, xa, a1);
    b1 = _mm256_fmadd_ps(v, xb, b1);
    v = arch_detail::load_f32<D>(w2 + o);
    a2 = _mm256_fmadd_ps(v, xa, a2);
    b2 = _mm256_fmadd_ps(v, xb, b2);
    v = arch_detail::load_f32<D>(w3 + o);
    a3 = _mm256_fmadd_ps(v, xa, a3);
    b3 = _mm256_fmadd_ps(v, xb, b3);
  }
  return reduce8(a0, b0, a1, b1, a2, b2, a3, b3);
}

// Sums of 8 rows with x over [0, cend), in row order.
template <DType D>
FASTINFER_CPU_NOINLINE inline __m256 dot_8x1(const std::uint8_t* w, std::size_t stride, const float* x, std::int64_t cend) {
  const std::uint8_t* w4 = w + 4 * stride;
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (std::int64_t c = 0; c < cend; c += 8) {
    const __m256 xv = _mm256_loadu_ps(x + c);
    const std::int64_t o = c * kElem<D>;
    a0 = _mm256_fmadd_ps(arch_detail::load_f32<D>(w + o), xv, a0);
    a1 = _mm256_fmadd_ps(arch_detail::load_f32<D>(w + stride + o), xv, a1);
    a2 = _mm256_fmadd_ps(arch_detail::load_f32<D>(w + 2 * stride + o), xv, a2);
    a3 = _mm256_fmadd_ps(arch_detail::load_f32<D>(w + 3 * stride + o), xv, a3);
    a4 = _mm256_fmadd_ps(arch_detail::load_f32<D>(w4 + o), xv, a4);
    a5 = _mm256_fmadd_ps(arch_detail::load_f32<D>(w4 + stride + o), xv, a5);
    a6 = _mm256_fmadd_ps(arch_detail::load_f32<D>(w4 + 2 * stride + o), xv, a6);
    a7 = _mm256_fmadd_ps(arch_detail::load_f32<D>(w4 + 3 * stride + o), xv, a7);
  }
  return reduce8(a0, a4, a1, a5, a2, a6, a3, a7);
}

// Sums of 4 rows with x over [0, cend).
template <DType D>
FASTINFER_CPU_NOINLINE inline __m128 dot_4x1(const std::uint8_t* w, std::size_t stride, const float* x, std::int64_t cend) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (std::int64_t c = 0; c < cend; c += 8) {
    const __m256 xv = _mm256_loadu_ps(x + c);
    const std::int64_t o = c * kElem<D>;
    a0 = _mm256_fmadd_ps(arch_detail::load_f32<D>(w + o), xv, a0);
    a1 = _mm256_fmadd_ps(arch_detail::load_f32<D>(w + stride + o), xv, a1);
    a2 = _mm256_fmadd_ps(arch_detail::load_f32<D>(w + 2 * stride + o), xv, a2);
    a3 = _mm256_fmadd_ps(arch_detail::load_f32<D>(w + 3 * stride + o), xv, a3);
  }
  return reduce4(a0, a1, a2, a3);
}

// True when the tiles above may serve a matrix: at least one full chunk (the
// 16-bit tail gather reads the word before its element) and 8 row offsets
// that fit the gather's 32-bit indices.
inline bool usable(std::int64_t cols, std::size_t stride) {
  return cols >= 8 && stride <= std::size_t(0x7fffffff) / 8;
}

// Rows [r, r + 8k) of y = W x, 8 rows at a time; returns the first row not done.
template <DType D>
inline std::int64_t matvec_8rows(const MatrixView& w, const float* x, float* y, std::int64_t r, std::int64_t end) {
  const std::size_t stride = row_bytes(w.dtype, w.cols);
  const std::int64_t cols = w.cols, cend = cols & ~std::int64_t(7);
  const __m256i off = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(int(stride)));
  for (; r + 8 <= end; r += 8) {
    const std::uint8_t* wr = w.row_ptr(r);
    __m256 s = dot_8x1<D>(wr, stride, x, cend);
    for (std::int64_t k = cend; k < cols; ++k)
      s = _mm256_fmadd_ps(gather_column<D>(wr, off, k), _mm256_broadcast_ss(x + k), s);
    _mm256_storeu_ps(y + r, s);
  }
  return r;
}

}  // namespace tile_detail
#endif  // FASTINFER_CPU_AVX2_TILES

// Rows [begin, end) of y = W x.
template <DType D>
inline void matvec_rows(const MatrixView& w, const float* x, float* y, std::int64_t begin, std::int64_t end) {
  const std::size_t stride = row_bytes(w.dtype, w.cols);
  std::int64_t r = begin;
#if FASTINFER_CPU_AVX2_TILES
  // f32 only: bf16/f16 matvec streams large models with a prefetching tile
  // (below), and gives the same bits either way.
  if constexpr (D == DType::F32)
    if (tile_detail::usable(w.cols, stride)) r = tile_detail::matvec_8rows<D>(w, x, y, r, end);
#endif
  constexpr int R = kMatvecRows<D>;
  for (; r + R <= end; r += R)
    dot_tile<D, R, 1, kMatvecPrefetch<D>>(w.row_ptr(r), stride, x, 0, w.cols, y + r, 0);
  for (; r < end; ++r) dot_tile<D, 1, 1>(w.row_ptr(r), stride, x, 0, w.cols, y + r, 0);
}

}  // namespace gemv_detail

// y[r] = sum_c W[r][c] x[c] for r < W.rows, on up to `threads` threads (fewer
// when W is small: see threading.hpp). y must not alias x.
inline void matvec(const MatrixView& w, const float* x, float* y, int threads = 1) {
  FASTINFER_CHECK(w.rows >= 0 && w.cols >= 0, InvalidArgument, "matvec: negative shape ", w.rows, " x ",
                  w.cols);
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
