// Float small-row matmul and matvec tiles for AVX-512 (16 floats a register,
// 32 registers). Tested against gemv_reference.hpp, and bit for bit against
// the documented 16-lane order (test_gemv_tiles).
//
// The verify pass of speculative decoding and batched decode multiply a few
// activation rows (1..32) by every weight matrix. One tile holds R weight
// rows x T activation rows of accumulators (up to 24 of the 32 registers),
// so each weight vector is loaded, and bf16/f16 widened, once per T rows,
// and each activation vector once per R weight rows. A block of weight rows
// stays in L1/L2 while every group of T activation rows passes over it, so a
// pass streams each weight from memory once, whatever the row count.
//
// Accumulation is f32 with FMA (not vdpbf16ps, which would round the
// activations to bf16). Every (weight row, activation row) sum runs in one
// order whatever the tile: 16-float chunks in column order into one vector
// accumulator; the two 8-float halves added (x_i + x_{i+8}), then the 8-lane
// tree of xsimd::hadd ((x_i + x_{i+4}), adjacent pairs, the two pair sums);
// then the tail columns in order, one FMA each. So a row's result is the
// same bits alone (matvec) or in a pass of any size (batch invariance), and
// equals xsimd 8.1's dot_tile at 16 lanes.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "fastinfer/backend/cpu/arch.hpp"
#include "fastinfer/backend/cpu/gemv_avx2.hpp"  // FASTINFER_CPU_NOINLINE
#include "fastinfer/backend/cpu/gemv_blocking.hpp"
#include "fastinfer/backend/cpu/gemv_reference.hpp"
#include "fastinfer/backend/cpu/one_row_walk.hpp"
#include "fastinfer/core/tensor.hpp"

// 1: this build carries the AVX-512 tiles, compiled in an AVX-512 target
// region (cpu_target.hpp) whatever the build's flags; the avx512 level
// (cpu_level.hpp) runs them.
#define FASTINFER_CPU_AVX512_TILES FASTINFER_CPU_DISPATCH

#if FASTINFER_CPU_AVX512_TILES
FASTINFER_CPU_TARGET_BEGIN(FASTINFER_CPU_ISA_AVX512)
namespace fastinfer::cpu::avx512 {

using arch_detail::fma_fused;
using arch_detail::load16_f32;

template <DType D>
inline constexpr std::int64_t kElem = D == DType::F32 ? 4 : 2;

// [v_lo + v_hi]: xsimd's first fold of a 16-float register. The high half
// moves as 4 doubles (AVX-512 F; extractf32x8 would need DQ).
inline __m256 fold(__m512 v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

// out[i] = the documented lane sum of v[i], for i < N: 8 at a time through
// one transposing tree (arch_detail::reduce8), then 4, then one by one.
// (Constant bounds for each stage: with one running index g++ 12 warned
// "iteration 3 invokes undefined behavior" on the last loop of reduce<20>.)
template <int N>
inline void reduce(const __m512* v, float* out) {
  constexpr int kEights = N / 8 * 8, kFours = kEights + (N - kEights) / 4 * 4;
  for (int i = 0; i < kEights; i += 8)
    _mm256_storeu_ps(out + i, arch_detail::reduce8(fold(v[i]), fold(v[i + 4]), fold(v[i + 1]), fold(v[i + 5]),
                                                   fold(v[i + 2]), fold(v[i + 6]), fold(v[i + 3]), fold(v[i + 7])));
  for (int i = kEights; i < kFours; i += 4)
    _mm_storeu_ps(out + i, arch_detail::reduce4(fold(v[i]), fold(v[i + 1]), fold(v[i + 2]), fold(v[i + 3])));
  for (int i = kFours; i < N; ++i) {
    const __m256 f = fold(v[i]);
    out[i] = _mm_cvtss_f32(arch_detail::reduce4(f, f, f, f));
  }
}

// r[j][i] <- r[i][j]: 16 registers of 16 floats transposed (4 rounds of
// 16 shuffles: 32-bit and 64-bit interleaves within 128-bit lanes, then two
// rounds of 128-bit lane shuffles).
inline void transpose_lanes(__m512 (&r)[16]) {
  __m512 t[16];
  for (int k = 0; k < 16; k += 2) {
    t[k] = _mm512_unpacklo_ps(r[k], r[k + 1]);
    t[k + 1] = _mm512_unpackhi_ps(r[k], r[k + 1]);
  }
  // u[4k + m], 128-bit lane L: column 4L + m of rows 4k .. 4k + 3.
  __m512 u[16];
  for (int k = 0; k < 16; k += 4) {
    const __m512d a = _mm512_castps_pd(t[k]), b = _mm512_castps_pd(t[k + 1]);
    const __m512d c = _mm512_castps_pd(t[k + 2]), d = _mm512_castps_pd(t[k + 3]);
    u[k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 lo01 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x44),
                 hi01 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xee);
    const __m512 lo23 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x44);
    const __m512 hi23 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xee);
    r[m] = _mm512_shuffle_f32x4(lo01, lo23, 0x88);
    r[4 + m] = _mm512_shuffle_f32x4(lo01, lo23, 0xdd);
    r[8 + m] = _mm512_shuffle_f32x4(hi01, hi23, 0x88);
    r[12 + m] = _mm512_shuffle_f32x4(hi01, hi23, 0xdd);
  }
}

// What gemv_tile_generic.hpp's tile needs, at 16 floats a register.
using Lanes = __m512;
inline constexpr int kLanes = 16;
inline __m512 zero_lanes() { return _mm512_setzero_ps(); }
inline __m512 load_x(const float* p) { return _mm512_loadu_ps(p); }
template <DType D>
inline __m512 load_w(const void* p) {
  return load16_f32<D>(p);
}
inline __m512 fmadd(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
inline void keep_in_register(__m512& v) {
#if defined(__GNUC__) || defined(__clang__)
  __asm__("" : "+v"(v));
#else
  (void)v;
#endif
}

#define FASTINFER_GEMV_TILE_ISA avx512
#include "fastinfer/backend/cpu/gemv_tile_generic.hpp"
#undef FASTINFER_GEMV_TILE_ISA

// The tile set (gemv_blocking.hpp walks the matrix with it). Weight rows per
// tile for T activation rows: R x T accumulators + T activation vectors + 1
// weight vector within the 32 registers, and R dividing kBlockRows. At most
// kMaxTileTokens activation rows per tile: more rows go in groups of up to 6
// over each block (gemv_blocking.hpp), the first from memory, the rest from
// L1/L2. Measured on Zen 5 (one thread, the 110M bf16 matrices, cost against
// one row, before the groups were balanced): groups of 6 gave 1.33x at 8
// rows and 2.23x at 16; groups of 4, 1.52x / 2.64x; one group of 8 (2-row
// tiles, 10 loads per 16 FMAs) 1.98x at 8 rows. Rows per block,
// re-read for every group (a multiple of every tile height): 24 rows of a
// 768-wide bf16 matrix are 36 KiB (L1 holds them), of a 2048-wide f32 one
// 192 KiB (a fifth of a Zen 5 L2).
struct Tiles {
  using Activation = float;
  template <int T>
  static constexpr int kTileRows = T == 1   ? 4
                                   : T == 2 ? 12
                                   : T == 3 ? 8
                                   : T == 4 ? 6
                                            : 4;
  static constexpr int kMaxTileTokens = 6;
  static constexpr std::int64_t kBlockRows = 24;
  // One activation row: f32 a weight row at a time (memory-bound; in tiles
  // the 1B f32 pass was 5 % slower); bf16 and f16 in 4-row tiles, four FMA
  // chains widening side by side (Intel Xeon, 2 threads, levels avx512 and
  // amx: the 110M bf16 forward pass 7.7-8.3 -> 5.3-5.4 ms, where its weights
  // come mostly from the 480 MB L3; 1B bf16 no slower, 79-81 -> 79-80, f16
  // 81 -> 77 in a scratch pass; 8-row tiles 4-8 % slower than 4-row ones;
  // the same tiles on pairs of 8-lane registers no faster, so not the
  // AVX-512 clock). On AMD the walk takes only rows of 8 KiB and more in
  // tiles (one_row_walk.hpp: on Zen 4 the next-block prefetch costs short
  // rows what it gains long ones; a row at a time WITH it: 1B down 16-17.5
  // ms as in tiles, gate/up 32-35 against 29-31 without).
  template <DType D>
  static bool stream_one_row(std::size_t row_bytes) {
    return D == DType::F32 || !one_row_in_tiles(row_bytes);
  }

  template <DType D, int R, int T, bool Prefetch>
  static void tile(const std::uint8_t* w, std::size_t stride, const float* x, std::int64_t ldx,
                   std::int64_t cols, float* y, std::int64_t ldy, gemv_detail::PrefetchSpan ahead) {
    small_rows_tile<D, R, T, Prefetch>(w, stride, x, ldx, cols, y, ldy, ahead);
  }
};
static_assert(Tiles::kMaxTileTokens <= 6, "kTileRows is sized for up to 6 activation rows (4 x 6 accumulators)");
static_assert(Tiles::kBlockRows % 8 == 0 && Tiles::kBlockRows % 12 == 0 && Tiles::kBlockRows % 6 == 0 &&
                  Tiles::kBlockRows % 4 == 0,
              "a block of weight rows is a whole number of tiles of every height");
inline constexpr std::int64_t kBlockRows = Tiles::kBlockRows;

// Rows [r0, r1) of Y = X W^T for n activation rows (X [n][w.cols], Y
// [n][w.rows]).
template <DType D>
inline void matmul_rows(const MatrixView& w, const float* x, std::int64_t n, float* y, std::int64_t r0,
                        std::int64_t r1) {
  gemv_detail::blocked_matmul_rows<Tiles, D>(w, x, n, y, r0, r1);
}

// Rows [begin, end) of y = W x: the one-row pass (gemv_blocking.hpp's
// one_row_matvec_rows), the same sums as matmul_rows gives a token.
template <DType D>
inline void matvec_rows(const MatrixView& w, const float* x, float* y, std::int64_t begin, std::int64_t end) {
  gemv_detail::one_row_matvec_rows<Tiles, D>(w, x, y, begin, end);
}

}  // namespace fastinfer::cpu::avx512
FASTINFER_CPU_TARGET_END
#endif  // FASTINFER_CPU_AVX512_TILES
