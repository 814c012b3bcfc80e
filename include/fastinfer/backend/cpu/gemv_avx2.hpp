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
// The tile itself is gemv_tile_generic.hpp's, shared with the AVX-512 set:
// a function of its own per shape, kept out of line (inlined into the block
// loop, GCC 12 spilled accumulators: a store-to-load round trip on every FMA
// chain, 2-3x slower), its accumulator arrays unrolled into registers.
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
// arrays on the stack.
#if defined(__GNUC__)
#define FASTINFER_CPU_NOINLINE __attribute__((noinline))
#else
#define FASTINFER_CPU_NOINLINE
#endif

#if FASTINFER_CPU_AVX2_TILES
FASTINFER_CPU_TARGET_BEGIN(FASTINFER_CPU_ISA_AVX2)
namespace fastinfer::cpu::avx2 {

using arch_detail::fma_fused;
using arch_detail::load8_f32;
using arch_detail::reduce4;
using arch_detail::reduce8;

template <DType D>
inline constexpr std::int64_t kElem = D == DType::F32 ? 4 : 2;

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

// What gemv_tile_generic.hpp's tile needs, at 8 floats a register.
using Lanes = __m256;
inline constexpr int kLanes = 8;
inline __m256 zero_lanes() { return _mm256_setzero_ps(); }
inline __m256 load_x(const float* p) { return _mm256_loadu_ps(p); }
template <DType D>
inline __m256 load_w(const void* p) {
  return load8_f32<D>(p);
}
inline __m256 fmadd(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
inline void keep_in_register(__m256& v) {
#if defined(__GNUC__) || defined(__clang__)
  __asm__("" : "+x"(v));
#else
  (void)v;
#endif
}

#define FASTINFER_GEMV_TILE_ISA avx2
#include "fastinfer/backend/cpu/gemv_tile_generic.hpp"
#undef FASTINFER_GEMV_TILE_ISA

// The tile set of the small-row matmul (gemv_blocking.hpp walks the matrix
// with it). A tile holds R weight rows x T activation rows of accumulators,
// with T activation vectors and one weight vector, in the 16 registers:
// 4 x 1, 4 x 2 and 3 x 3 (13 registers). Activation rows go in balanced
// groups of up to 3 over each block of weight rows: the first group streams
// the block from memory, the others find it in L1/L2. Measured on Zen 5 at
// the avx2 level, 2 threads, quiet, the 110M stand-in's pass cost against
// one row (the old walk: 4 x 2 tiles, each token pair re-reading a 32-row
// block): bf16 8 rows 2.57 -> 1.98, 16 rows 4.27 -> 3.37; f32 8 rows 2.57 ->
// 1.73 (the 8-row pass 1.39x faster; docs/benchmarks.md). Groups of 2 or 4
// (2 x 4 tiles) were within 5 % of it either way.
struct Tiles {
  using Activation = float;
  template <int T>
  static constexpr int kTileRows = T == 1 ? 4 : T == 2 ? 4 : 3;
  static constexpr int kMaxTileTokens = 3;
  // Rows per block, re-read for every group of activation rows (a multiple of
  // every tile height): 24 rows of a 2048-wide f32 matrix are 192 KiB, under
  // half of a Zen 3 core's 512 KiB L2; of a 768-wide bf16 one, 36 KiB.
  static constexpr std::int64_t kBlockRows = 24;
  // One activation row: f32 a weight row at a time (memory-bound); bf16 and
  // f16 in 4-row tiles, four FMA chains instead of one (gemv_blocking.hpp).
  template <DType D>
  static bool stream_one_row(std::size_t /*row_bytes*/) {
    return D == DType::F32;
  }

  template <DType D, int R, int T, bool Prefetch>
  static void tile(const std::uint8_t* w, std::size_t stride, const float* x, std::int64_t ldx,
                   std::int64_t cols, float* y, std::int64_t ldy, gemv_detail::PrefetchSpan ahead) {
    small_rows_tile<D, R, T, Prefetch>(w, stride, x, ldx, cols, y, ldy, ahead);
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

// Rows [begin, end) of y = W x: the one-row pass (gemv_blocking.hpp's
// one_row_matvec_rows), the same sums as matmul_rows gives a token.
template <DType D>
inline void matvec_rows(const MatrixView& w, const float* x, float* y, std::int64_t begin, std::int64_t end) {
  gemv_detail::one_row_matvec_rows<Tiles, D>(w, x, y, begin, end);
}

}  // namespace fastinfer::cpu::avx2
FASTINFER_CPU_TARGET_END
#endif  // FASTINFER_CPU_AVX2_TILES
