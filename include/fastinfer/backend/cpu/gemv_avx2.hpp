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
// Every tile is a function of its own, kept out of line: inlined into the
// block loop, GCC 12 spilled accumulators (a store-to-load round trip on every
// FMA chain, 2-3x slower). The matvec tiles keep named accumulators; the
// small-row matmul's Tiles::tile indexes arrays whose bounds are template
// arguments, which GCC 12 unrolls into registers (as gemv_avx512.hpp's).
//
// The kernels fix their own width (arch_detail::load8_f32) and are compiled
// in an AVX2 target region (cpu_target.hpp): every x86 build carries them,
// whatever its flags, and the avx2 level (cpu_level.hpp) runs them.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "fastinfer/backend/cpu/arch.hpp"
#include "fastinfer/backend/cpu/gemv_blocking.hpp"
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

// out[i] = the documented lane sum of v[i], for i < N: 8 at a time through
// one transposing tree (arch_detail::reduce8), then 4, then one by one.
template <int N>
inline void reduce(const __m256* v, float* out) {
  int i = 0;
  for (; i + 8 <= N; i += 8)
    _mm256_storeu_ps(out + i, reduce8(v[i], v[i + 4], v[i + 1], v[i + 5], v[i + 2], v[i + 6], v[i + 3], v[i + 7]));
  for (; i + 4 <= N; i += 4) _mm_storeu_ps(out + i, reduce4(v[i], v[i + 1], v[i + 2], v[i + 3]));
  for (; i < N; ++i) out[i] = _mm_cvtss_f32(reduce4(v[i], v[i], v[i], v[i]));
}

// The tile set of the small-row matmul (gemv_blocking.hpp walks the matrix
// with it). A tile holds R weight rows x T activation rows of accumulators,
// with T activation vectors and one weight vector, in the 16 registers:
// 4 x 1, 4 x 2 and 3 x 3 (13 registers). Activation rows go in groups of 3
// over each block of weight rows: the first group streams the block from
// memory, the others find it in L1/L2. Measured on Zen 5 at the avx2 level,
// 2 threads, quiet, the 110M stand-in's pass cost against one row (the old
// walk: 4 x 2 tiles, each token pair re-reading a 32-row block): bf16 8 rows
// 2.24 -> 1.67, 16 rows 3.55 -> 2.57; f32 8 rows 1.69 -> 1.44, 16 rows 2.76
// -> 2.21. Groups of 2 or 4 (2 x 4 tiles) were within 5 % of it either way.
struct Tiles {
  template <int T>
  static constexpr int kTileRows = T == 1 ? 4 : T == 2 ? 4 : 3;
  static constexpr int kMaxTileTokens = 3;
  // Rows per block, re-read for every group of activation rows (a multiple of
  // every tile height): 24 rows of a 2048-wide f32 matrix are 192 KiB, under
  // half of a Zen 3 core's 512 KiB L2; of a 768-wide bf16 one, 36 KiB.
  static constexpr std::int64_t kBlockRows = 24;

  // y[t * ldy + r] = dot(weight row r, activation row t) for r < R, t < T,
  // every sum in the order the header documents. Weight rows are `stride`
  // bytes apart, stored as D; activation rows ldx floats apart. With
  // PrefetchNext, each cache line of the tile's rows also prefetches the same
  // column of the next R rows (see dot_4x1).
  template <DType D, int R, int T, bool PrefetchNext>
  FASTINFER_CPU_NOINLINE static void tile(const std::uint8_t* w, std::size_t stride, const float* x, std::int64_t ldx,
                                          std::int64_t cols, float* y, std::int64_t ldy) {
    constexpr std::int64_t E = kElem<D>;
    const std::int64_t cend = cols & ~std::int64_t(7);
    __m256 acc[R][T];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    for (std::int64_t c = 0; c < cend; c += 8) {
      if constexpr (PrefetchNext) {
        // Integer arithmetic: past the last tile the address lies beyond the
        // matrix, which a prefetch may touch but a pointer may not point to.
        if (((c * E) & 63) == 0)
          for (int r = 0; r < R; ++r)
            _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(w) +
                                                       std::size_t(r + R) * stride + std::size_t(c * E)),
                         _MM_HINT_T0);
      }
      __m256 xv[T];
      for (int t = 0; t < T; ++t) {
        xv[t] = _mm256_loadu_ps(x + t * ldx + c);
#if defined(__GNUC__) || defined(__clang__)
        // One load per activation vector, kept in a register (GCC 12 would
        // fold it into every FMA that uses it: R loads instead of one).
        __asm__("" : "+x"(xv[t]));
#endif
      }
      for (int r = 0; r < R; ++r) {
        const __m256 wv = load8_f32<D>(w + r * stride + c * E);
        for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
      }
    }
    float sums[R * T];
    reduce<R * T>(&acc[0][0], sums);
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) {
        float sum = sums[r * T + t];
        for (std::int64_t k = cend; k < cols; ++k) sum = fma_fused(load_scalar<D>(w + r * stride, k), x[t * ldx + k], sum);
        y[t * ldy + r] = sum;
      }
  }
};
static_assert(Tiles::kMaxTileTokens >= 1 && Tiles::kMaxTileTokens <= 3,
              "kTileRows is sized for up to 3 activation rows (3 x 3 accumulators)");
static_assert(Tiles::kBlockRows % 4 == 0 && Tiles::kBlockRows % 3 == 0,
              "a block of weight rows is a whole number of tiles of every height");
inline constexpr std::int64_t kBlockRows = Tiles::kBlockRows;

// Rows [r0, r1) of Y = X W^T for n tokens (X [n][w.cols], Y [n][w.rows]).
// 16-bit weights are widened in registers: at n = 2..16 that ran 1.3-2.1x
// faster than widening each block into a scratch first, and the widening is
// exact.
template <DType D>
inline void matmul_rows(const MatrixView& w, const float* x, std::int64_t n, float* y, std::int64_t r0,
                        std::int64_t r1) {
  gemv_detail::blocked_matmul_rows<Tiles, D>(w, x, n, y, r0, r1);
}

// Rows [begin, end) of y = W x: the one-row pass. f32 streams 8 rows at a
// time (matvec_8rows); bf16/f16 4 rows with the next 4 prefetched (measured
// on Zen 3, see kMatvecRows). The same bits as matmul_rows gives a token.
template <DType D>
inline void matvec_rows(const MatrixView& w, const float* x, float* y, std::int64_t begin, std::int64_t end) {
  const std::int64_t cols = w.cols, cend = cols & ~std::int64_t(7);
  const std::size_t stride = row_bytes(w.dtype, cols);
  std::int64_t r = begin;
  if (!usable(cols, stride)) {
    // Every row by the 1 x 1 tile below (the f32 tail gather needs usable()).
  } else if constexpr (D == DType::F32) {
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
  for (; r < end; ++r) Tiles::tile<D, 1, 1, false>(w.row_ptr(r), stride, x, 0, cols, y + r, 0);
}

}  // namespace fastinfer::cpu::avx2
FASTINFER_CPU_TARGET_END
#endif  // FASTINFER_CPU_AVX2_TILES
