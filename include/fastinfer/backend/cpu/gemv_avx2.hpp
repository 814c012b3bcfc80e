// Float small-row matmul and matvec tiles for AVX2 + FMA + F16C (8 floats a
// register: Zen 3, Haswell and later). Tested against gemv_reference.hpp,
// and bit for bit against the documented 8-lane order (test_kernels_matrix).
//
// Every (row, token) sum runs in one order whatever the tile: 8-float chunks
// in column order into one vector accumulator, reduced as xsimd::hadd reduces
// on AVX ((x_i + x_{i+4}), adjacent pairs, the two pair sums), then the tail
// columns in order, one FMA each. So a token's result does not depend on how
// many tokens share its pass, and equals the generic dot_tile's at 8 lanes.
//
// The accumulators live in named variables, each tile a function of its own:
// arrays indexed in loops stayed on the stack at -O2, and inlined into the
// block loop GCC 12 spilled two of the eight accumulators; either way a
// store-to-load round trip on every FMA chain, 2-3x slower.
//
// The kernels fix their own width (arch_detail::load8_f32) and are compiled
// in an AVX2 target region (cpu_target.hpp): every x86 build carries them,
// whatever its flags, and the avx2 level (cpu_level.hpp) runs them.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "fastinfer/backend/cpu/arch.hpp"
#include "fastinfer/backend/cpu/gemv_reference.hpp"
#include "fastinfer/core/tensor.hpp"

// 1: this build carries the AVX2 tiles (every x86 build with g++ or clang).
#define FASTINFER_CPU_AVX2_TILES FASTINFER_CPU_DISPATCH

// Kept out of line: inlined into a large caller, GCC 12 left accumulator
// arrays on the stack (see above).
#if defined(__GNUC__)
#define FASTINFER_CPU_NOINLINE __attribute__((noinline))
#else
#define FASTINFER_CPU_NOINLINE
#endif

namespace fastinfer::cpu::gemv_detail {
// Rows per matvec tile, per weight type, at every width (measured streaming
// 438 MB of f32 / 219 MB of bf16 on one Zen 3 core): f32 8 rows 19.3 GB/s
// against 16.2 with 4; bf16/f16 4 rows plus a prefetch of the next tile
// 12.2-13.1 GB/s against 10.6-11.0 without (8 rows: 11.5). Prefetching within
// the row, 256 B to 2 KiB ahead, never helped: the hardware prefetcher
// already covers it.
template <DType D>
inline constexpr int kMatvecRows = D == DType::F32 ? 8 : 4;
template <DType D>
inline constexpr bool kMatvecPrefetch = D != DType::F32;
}  // namespace fastinfer::cpu::gemv_detail

#if FASTINFER_CPU_AVX2_TILES
FASTINFER_CPU_TARGET_BEGIN(FASTINFER_CPU_ISA_AVX2)
namespace fastinfer::cpu::avx2 {

using arch_detail::fma_fused;
using arch_detail::load8_f32;
using arch_detail::reduce4;
using arch_detail::reduce8;

template <DType D>
inline constexpr std::int64_t kElem = D == DType::F32 ? 4 : 2;
// Rows per block of the small-row matmul, re-read from L2 for every token
// pair: 32 rows of a 2048-wide f32 matrix are 256 KiB, half of a Zen 3 L2.
inline constexpr std::int64_t kBlockRows = 32;

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
FASTINFER_CPU_NOINLINE inline __m256 dot_4x2(const std::uint8_t* w, std::size_t stride, const float* x0,
                                             const float* x1, std::int64_t cend) {
  const std::uint8_t* w1 = w + stride;
  const std::uint8_t* w2 = w1 + stride;
  const std::uint8_t* w3 = w2 + stride;
  __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
  for (std::int64_t c = 0; c < cend; c += 8) {
    const __m256 xa = _mm256_loadu_ps(x0 + c), xb = _mm256_loadu_ps(x1 + c);
    const std::int64_t o = c * kElem<D>;
    __m256 v = load8_f32<D>(w + o);
    a0 = _mm256_fmadd_ps(v, xa, a0);
    b0 = _mm256_fmadd_ps(v, xb, b0);
    v = load8_f32<D>(w1 + o);
    a1 = _mm256_fmadd_ps(v, xa, a1);
    b1 = _mm256_fmadd_ps(v, xb, b1);
    v = load8_f32<D>(w2 + o);
    a2 = _mm256_fmadd_ps(v, xa, a2);
    b2 = _mm256_fmadd_ps(v, xb, b2);
    v = load8_f32<D>(w3 + o);
    a3 = _mm256_fmadd_ps(v, xa, a3);
    b3 = _mm256_fmadd_ps(v, xb, b3);
  }
  return reduce8(a0, b0, a1, b1, a2, b2, a3, b3);
}

// Sums of 8 rows with x over [0, cend), in row order.
template <DType D>
FASTINFER_CPU_NOINLINE inline __m256 dot_8x1(const std::uint8_t* w, std::size_t stride, const float* x,
                                             std::int64_t cend) {
  const std::uint8_t* w4 = w + 4 * stride;
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (std::int64_t c = 0; c < cend; c += 8) {
    const __m256 xv = _mm256_loadu_ps(x + c);
    const std::int64_t o = c * kElem<D>;
    a0 = _mm256_fmadd_ps(load8_f32<D>(w + o), xv, a0);
    a1 = _mm256_fmadd_ps(load8_f32<D>(w + stride + o), xv, a1);
    a2 = _mm256_fmadd_ps(load8_f32<D>(w + 2 * stride + o), xv, a2);
    a3 = _mm256_fmadd_ps(load8_f32<D>(w + 3 * stride + o), xv, a3);
    a4 = _mm256_fmadd_ps(load8_f32<D>(w4 + o), xv, a4);
    a5 = _mm256_fmadd_ps(load8_f32<D>(w4 + stride + o), xv, a5);
    a6 = _mm256_fmadd_ps(load8_f32<D>(w4 + 2 * stride + o), xv, a6);
    a7 = _mm256_fmadd_ps(load8_f32<D>(w4 + 3 * stride + o), xv, a7);
  }
  return reduce8(a0, a4, a1, a5, a2, a6, a3, a7);
}

// Sums of 4 rows with x over [0, cend). With PrefetchNext, each cache line
// of the 4 rows also prefetches the same column of the next 4 rows: 16-bit
// weights need so many instructions per line that the out-of-order window
// alone keeps too few misses in flight (the bf16/f16 matvec).
template <DType D, bool PrefetchNext = false>
FASTINFER_CPU_NOINLINE inline __m128 dot_4x1(const std::uint8_t* w, std::size_t stride, const float* x,
                                             std::int64_t cend) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (std::int64_t c = 0; c < cend; c += 8) {
    if constexpr (PrefetchNext) {
      // Integer arithmetic: past the last tile the address lies beyond the
      // matrix, which a prefetch may touch but a pointer may not point to.
      if (((c * kElem<D>) & 63) == 0)
        for (std::size_t r = 4; r < 8; ++r)
          _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(w) + r * stride +
                                                     std::size_t(c * kElem<D>)),
                       _MM_HINT_T0);
    }
    const __m256 xv = _mm256_loadu_ps(x + c);
    const std::int64_t o = c * kElem<D>;
    a0 = _mm256_fmadd_ps(load8_f32<D>(w + o), xv, a0);
    a1 = _mm256_fmadd_ps(load8_f32<D>(w + stride + o), xv, a1);
    a2 = _mm256_fmadd_ps(load8_f32<D>(w + 2 * stride + o), xv, a2);
    a3 = _mm256_fmadd_ps(load8_f32<D>(w + 3 * stride + o), xv, a3);
  }
  return reduce4(a0, a1, a2, a3);
}

// One row with T (1 or 2) tokens, ldx floats apart, over all `cols` columns:
// the rows a block leaves over after its 4-row tiles.
template <DType D, int T>
FASTINFER_CPU_NOINLINE inline void dot_1xT(const std::uint8_t* w, const float* x, std::int64_t ldx,
                                           std::int64_t cols, float* y, std::int64_t ldy) {
  static_assert(T == 1 || T == 2, "dot_1xT serves one or two tokens");
  const std::int64_t cend = cols & ~std::int64_t(7);
  __m256 a0 = _mm256_setzero_ps(), a1 = a0;
  for (std::int64_t c = 0; c < cend; c += 8) {
    const __m256 v = load8_f32<D>(w + c * kElem<D>);
    a0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + c), a0);
    if constexpr (T == 2) a1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + ldx + c), a1);
  }
  alignas(16) float sums[4];
  _mm_store_ps(sums, reduce4(a0, a1, a0, a1));
  for (int t = 0; t < T; ++t) {
    float sum = sums[t];
    for (std::int64_t k = cend; k < cols; ++k) sum = fma_fused(load_scalar<D>(w, k), x[t * ldx + k], sum);
    y[t * ldy] = sum;
  }
}

// True when the tiles may serve a matrix: at least one full chunk (the 16-bit
// tail gather reads the word before its element) and 8 row offsets that fit
// the gather's 32-bit indices.
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

// Rows [r0, r1) of Y = X W^T for n tokens, one row and token at a time: the
// matrices usable() refuses (under 8 columns, or rows over 256 MiB).
template <DType D>
inline void matmul_rows_1x1(const MatrixView& w, const float* x, std::int64_t n, float* y, std::int64_t r0,
                            std::int64_t r1) {
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t r = r0; r < r1; ++r) dot_1xT<D, 1>(w.row_ptr(r), x + t * w.cols, 0, w.cols, y + t * w.rows + r, 0);
}

// Rows [r0, r1) of Y = X W^T for n tokens: tiles of 4 rows x
// 2 tokens (8 sums reduced at once into two 4-float stores) and 4 rows x 1
// token for an odd last token, over blocks of kBlockRows rows kept in L2.
// 16-bit weights are widened in registers: at n = 2..16 that ran 1.3-2.1x
// faster than widening each block into a scratch first, and the widening is
// exact. The tail columns (cols % 8) of a block's rows are gathered once per
// block into vectors laid out like the sums, then applied to every token pair
// with one FMA per column: the same FMAs, in the same order, as a scalar tail.
template <DType D>
inline void matmul_rows(const MatrixView& w, const float* x, std::int64_t n, float* y, std::int64_t r0,
                        std::int64_t r1) {
  const std::int64_t k = w.cols, cend = k & ~std::int64_t(7), tail = k - cend;
  const std::size_t stride = row_bytes(w.dtype, k);
  if (!usable(k, stride)) return matmul_rows_1x1<D>(w, x, n, y, r0, r1);
  const std::int64_t ldy = w.rows;
  const __m256i off = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3), _mm256_set1_epi32(int(stride)));
  alignas(32) __m256 tails[kBlockRows / 4][7];  // [4-row tile][tail column]
  for (std::int64_t b0 = r0; b0 < r1; b0 += kBlockRows) {
    const std::int64_t m = std::min(kBlockRows, r1 - b0), m4 = m & ~std::int64_t(3);
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
      for (std::int64_t r = m4; r < m; ++r) dot_1xT<D, 2>(base + r * stride, x0, k, k, y0 + r, ldy);
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
      for (std::int64_t r = m4; r < m; ++r) dot_1xT<D, 1>(base + r * stride, x0, k, k, y0 + r, ldy);
    }
  }
}

// Rows [begin, end) of y = W x: the one-row pass. f32 streams 8 rows at a
// time (matvec_8rows); bf16/f16 4 rows with the next 4 prefetched (measured
// on Zen 3, see kMatvecRows). The same bits as matmul_rows gives a token.
template <DType D>
inline void matvec_rows(const MatrixView& w, const float* x, float* y, std::int64_t begin, std::int64_t end) {
  const std::int64_t cols = w.cols, cend = cols & ~std::int64_t(7);
  const std::size_t stride = row_bytes(w.dtype, cols);
  if (!usable(cols, stride)) return matmul_rows_1x1<D>(w, x, 1, y, begin, end);
  std::int64_t r = begin;
  if constexpr (D == DType::F32) {
    r = matvec_8rows<D>(w, x, y, r, end);
  } else {
    for (; r + 4 <= end; r += 4) {
      const std::uint8_t* wr = w.row_ptr(r);
      alignas(16) float sums[4];
      _mm_store_ps(sums, dot_4x1<D, true>(wr, stride, x, cend));
      for (int i = 0; i < 4; ++i) {
        float sum = sums[i];
        for (std::int64_t k = cend; k < cols; ++k) sum = fma_fused(load_scalar<D>(wr + i * stride, k), x[k], sum);
        y[r + i] = sum;
      }
    }
  }
  for (; r < end; ++r) dot_1xT<D, 1>(w.row_ptr(r), x, 0, cols, y + r, 0);
}

}  // namespace fastinfer::cpu::avx2
FASTINFER_CPU_TARGET_END
#endif  // FASTINFER_CPU_AVX2_TILES
