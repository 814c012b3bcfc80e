// bf16 weights times bf16 activations on AMX tiles (level amx, the
// bf16-activation mode of bf16_dot.hpp): every pass size, decode included.
//
// The weights are an A operand as they lie in the matrix: a tile is 16
// weight rows x 32 columns, loaded with the row stride, so nothing repacks
// or copies a weight (the last rows and columns of a matrix that is not a
// multiple of 16 x 32 go through a zero-padded copy). The activations are
// the B operand: rounded to bf16 as vcvtneps2bf16 rounds them (the same
// rounding as the avx512 bf16 kernels) while packed, once per call, into
// panels of 16 tokens in the tiles' pair layout (pack_panel).
// Each 32-row block meets the token panels two at a time: 2 weight tiles x
// 2 token tiles -> 4 accumulator tiles (the 8 tile registers), the whole
// depth accumulated in the tiles, then written out token-major.
//
// Numerics. TDPBF16PS multiplies bf16 pairs exactly and accumulates in f32
// (denormals flushed); its internal order of additions within one 32-column
// step is the hardware's and matches no simple sequential model on the
// Xeon measured (docs/backend_cpu.md), so the tests hold the results to a
// bound against exact sums of the rounded inputs, not to a scalar's bits.
// What they hold bit for bit: an output depends only on its weight row and
// its token (a fixed chain over 32-column steps, whichever tile or panel
// carries it), so a token gets the same bits at any pass size - 1 (decode),
// 8 (a verify pass) or 512 (prefill) - and any thread count: batch
// invariance without a cost at this level.
//
// Decode streams a block's 32 rows side by side; the first panel pair over a
// block prefetches the next block (contiguous) into L2 across its depth
// steps, as the vector tiles do (gemv_blocking.hpp).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastinfer/backend/cpu/cpu_target.hpp"
#include "fastinfer/backend/cpu/gemv_avx2.hpp"    // FASTINFER_CPU_NOINLINE
#include "fastinfer/backend/cpu/gemv_avx512.hpp"  // transpose_lanes, FASTINFER_CPU_AVX512_TILES
#include "fastinfer/backend/cpu/threading.hpp"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer::cpu::amx_detail {
// Shared by the AMX kernel sets (this file's bf16, q8_0_amx.hpp's int8);
// outside their target regions, so that either region can inline them.

// The 64-byte tile configuration (palette 1).
struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

// g++'s tile intrinsics are asm statements that name only a pointer (no
// memory operand): without a barrier the compiler may leave a configuration
// or a padded copy unwritten when the tile instruction reads it, or read a
// stored tile before the store.
inline void memory_barrier() { __asm__ volatile("" ::: "memory"); }
}  // namespace fastinfer::cpu::amx_detail

#if FASTINFER_CPU_AVX512_TILES
FASTINFER_CPU_TARGET_BEGIN(FASTINFER_CPU_ISA_AMX_BF16)
namespace fastinfer::cpu::amx_bf16 {
using amx_detail::memory_barrier;

inline constexpr std::int64_t kTileRows = 16;   // weight rows of a weight tile, tokens of a token tile
inline constexpr std::int64_t kTileDepth = 32;  // bf16 columns per step: one 64-byte tile row
inline constexpr std::int64_t kBlockRows = 2 * kTileRows;  // two weight tiles: a thread's row grain

// Columns rounded up to whole steps (the packed panels' depth).
inline std::int64_t padded_depth(std::int64_t cols) {
  return (cols + kTileDepth - 1) / kTileDepth * kTileDepth;
}
inline std::int64_t panels_of(std::int64_t n) { return (n + kTileRows - 1) / kTileRows; }
// bf16 elements of one packed panel.
inline std::int64_t panel_elements(std::int64_t cols) { return padded_depth(cols) * kTileRows; }

// Panel p of the activations x ([n][cols] f32) in the B tiles' layout,
// rounded to bf16 as vcvtneps2bf16 rounds them:
// out[(j * 16 + t) * 2 + e] = bf16(x[16p + t][2j + e]), zeros past n and cols.
// 32 columns of 16 tokens at a time: each token's 32 floats rounded into one
// register of 16 column pairs, the 16 registers transposed (32-bit lanes),
// so register j holds pair j of every token: one 64-byte row of the panel.
inline void pack_panel(const float* x, std::int64_t n, std::int64_t cols, std::int64_t p,
                       std::uint16_t* out) {
  const std::int64_t t0 = p * kTileRows, tokens = std::min(kTileRows, n - t0);
  for (std::int64_t k = 0; k < cols; k += kTileDepth) {
    const std::int64_t width = std::min(kTileDepth, cols - k);
    const __mmask16 lo = width >= 16 ? __mmask16(0xffff) : __mmask16((1u << width) - 1u);
    const __mmask16 hi = width > 16 ? __mmask16((1u << (width - 16)) - 1u) : __mmask16(0);
    __m512 v[kTileRows];
    for (std::int64_t t = 0; t < kTileRows; ++t) {
      if (t >= tokens) {
        v[t] = _mm512_setzero_ps();
        continue;
      }
      const float* row = x + (t0 + t) * cols + k;
      const __m512 a = _mm512_maskz_loadu_ps(lo, row), b = _mm512_maskz_loadu_ps(hi, row + 16);
      v[t] = _mm512_castsi512_ps((__m512i)_mm512_cvtne2ps_pbh(b, a));  // columns k .. k + 31 as 16 pairs
    }
    avx512::transpose_lanes(v);
    for (std::int64_t j = 0; j < kTileRows; ++j) _mm512_storeu_ps(out + (k / 2 + j) * 2 * kTileRows, v[j]);
  }
}

inline void configure_tiles() {
  amx_detail::TileConfig config;
  for (int i = 0; i < 8; ++i) {
    config.rows[i] = std::uint8_t(kTileRows);
    config.colsb[i] = std::uint16_t(kTileDepth * 2);
  }
  memory_barrier();
  _tile_loadconfig(&config);
}

// Tiles: accumulators 0 (rows 0-15 x panel 0), 1 (rows 0-15 x panel 1),
// 2 (rows 16-31 x panel 0), 3 (rows 16-31 x panel 1); weights 4, 5;
// tokens 6, 7. A weight rows' tiles (1 or 2) x B panels (1 or 2).
// `rows` weight rows from w (stride apart), `cols` columns; xp the first
// panel, the second panel_elements(cols) later; c receives accumulator
// tile i at c + 256 i (16 x 16 floats, weight row-major). With `ahead`
// non-null, `ahead_bytes` from it are prefetched into L2 across the steps.
template <int A, int B>
FASTINFER_CPU_NOINLINE inline void block(const std::uint8_t* w, std::size_t stride, std::int64_t rows,
                                         std::int64_t cols, const std::uint16_t* xp, float* c,
                                         const std::uint8_t* ahead, std::int64_t ahead_bytes) {
  static_assert(A >= 1 && A <= 2 && B >= 1 && B <= 2, "an AMX block is 1-2 weight tiles x 1-2 token tiles");
  alignas(64) std::uint16_t padded[A][kTileRows][kTileDepth];
  const std::int64_t depth = padded_depth(cols), steps = depth / kTileDepth, panel = panel_elements(cols);
  const bool rows_full = rows >= A * kTileRows;
  const std::int64_t lines = ahead == nullptr ? 0 : (ahead_bytes + 63) / 64;
  const std::int64_t lines_per_step = steps > 0 ? (lines + steps - 1) / steps : 0;  // no columns: no steps
  _tile_zero(0);
  if constexpr (B == 2) _tile_zero(1);
  if constexpr (A == 2) _tile_zero(2);
  if constexpr (A == 2 && B == 2) _tile_zero(3);
  for (std::int64_t s = 0; s < steps; ++s) {
    const std::int64_t k = s * kTileDepth;
    for (std::int64_t l = s * lines_per_step; l < std::min(lines, (s + 1) * lines_per_step); ++l)
      _mm_prefetch(reinterpret_cast<const char*>(ahead + l * 64), _MM_HINT_T1);
    const std::uint8_t* wk = w + std::size_t(k) * 2;
    if (rows_full && k + kTileDepth <= cols) {
      _tile_loadd(4, wk, long(stride));
      if constexpr (A == 2) _tile_loadd(5, wk + kTileRows * stride, long(stride));
    } else {
      // The matrix's edge: a zero-padded copy (zeros add nothing).
      const std::int64_t width = std::min(kTileDepth, cols - k);
      for (int a = 0; a < A; ++a)
        for (std::int64_t r = 0; r < kTileRows; ++r) {
          std::uint16_t* o = padded[a][r];
          const std::int64_t row = a * kTileRows + r;
          if (row < rows) {
            std::memcpy(o, wk + std::size_t(row) * stride, std::size_t(width) * 2);
            std::fill(o + width, o + kTileDepth, std::uint16_t(0));
          } else {
            std::fill(o, o + kTileDepth, std::uint16_t(0));
          }
        }
      memory_barrier();
      _tile_loadd(4, padded[0], kTileDepth * 2);
      if constexpr (A == 2) _tile_loadd(5, padded[A - 1], kTileDepth * 2);
    }
    _tile_loadd(6, xp + k * kTileRows, kTileDepth * 2);
    if constexpr (B == 2) _tile_loadd(7, xp + panel + k * kTileRows, kTileDepth * 2);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (B == 2) _tile_dpbf16ps(1, 4, 7);
    if constexpr (A == 2) _tile_dpbf16ps(2, 5, 6);
    if constexpr (A == 2 && B == 2) _tile_dpbf16ps(3, 5, 7);
  }
  constexpr long kOutStride = kTileRows * sizeof(float);
  _tile_stored(0, c, kOutStride);
  if constexpr (B == 2) _tile_stored(1, c + 1 * kTileRows * kTileRows, kOutStride);
  if constexpr (A == 2) _tile_stored(2, c + 2 * kTileRows * kTileRows, kOutStride);
  if constexpr (A == 2 && B == 2) _tile_stored(3, c + 3 * kTileRows * kTileRows, kOutStride);
  memory_barrier();
}

// An accumulator tile (16 weight rows x 16 tokens) into y token-major:
// y[t * ldy + r] = tile[r][t] for t < tokens, r < rows.
inline void store_tokens(const float* tile, std::int64_t tokens, std::int64_t rows, float* y,
                         std::int64_t ldy) {
  __m512 v[kTileRows];
  for (int r = 0; r < kTileRows; ++r) v[r] = _mm512_load_ps(tile + r * kTileRows);
  avx512::transpose_lanes(v);  // v[t]: token t's 16 rows
  const __mmask16 m = __mmask16((1u << rows) - 1u);
  for (std::int64_t t = 0; t < tokens; ++t) _mm512_mask_storeu_ps(y + t * ldy, m, v[t]);
}

// Rows [r0, r1) of Y = X W^T (ldy = w.rows) for n activation rows packed
// into panels (xp: panels_of(n) panels). r0 a multiple of kBlockRows.
inline void matmul_rows(const MatrixView& w, const std::uint16_t* xp, std::int64_t n, float* y,
                        std::int64_t r0, std::int64_t r1) {
  const std::size_t stride = row_bytes(w.dtype, w.cols);
  const std::int64_t panels = panels_of(n), panel = panel_elements(w.cols);
  alignas(64) float c[4][kTileRows * kTileRows];
  configure_tiles();
  for (std::int64_t rb = r0; rb < r1; rb += kBlockRows) {
    const std::int64_t rows = std::min(kBlockRows, r1 - rb);
    const std::uint8_t* wb = w.row_ptr(rb);
    const std::int64_t next = std::min(kBlockRows, r1 - rb - rows);
    for (std::int64_t p = 0; p < panels; p += 2) {
      const bool two_weight_tiles = rows > kTileRows, two_panels = p + 1 < panels;
      // The first panel pair pulls the next block in while it streams this one.
      const std::uint8_t* ahead = p == 0 && next > 0 ? w.row_ptr(rb + rows) : nullptr;
      const std::int64_t ahead_bytes = next * std::int64_t(stride);
      const std::uint16_t* xpp = xp + p * panel;
      if (two_weight_tiles && two_panels)
        block<2, 2>(wb, stride, rows, w.cols, xpp, c[0], ahead, ahead_bytes);
      else if (two_weight_tiles)
        block<2, 1>(wb, stride, rows, w.cols, xpp, c[0], ahead, ahead_bytes);
      else if (two_panels)
        block<1, 2>(wb, stride, rows, w.cols, xpp, c[0], ahead, ahead_bytes);
      else
        block<1, 1>(wb, stride, rows, w.cols, xpp, c[0], ahead, ahead_bytes);
      for (int a = 0; a < (two_weight_tiles ? 2 : 1); ++a)
        for (int b = 0; b < (two_panels ? 2 : 1); ++b) {
          const std::int64_t t0 = (p + b) * kTileRows, row0 = rb + a * kTileRows;
          store_tokens(c[a * 2 + b], std::min(kTileRows, n - t0), std::min(kTileRows, r1 - row0),
                       y + t0 * w.rows + row0, w.rows);
        }
    }
  }
  _tile_release();
}

}  // namespace fastinfer::cpu::amx_bf16
FASTINFER_CPU_TARGET_END

namespace fastinfer::cpu {

// Y[t][r] = sum_c W[r][c] X[t][c] for bf16 W on AMX, the activations rounded
// to bf16 (the caller checked level amx and the bf16 mode), on `threads`
// threads over blocks of 32 weight rows.
inline void amx_bf16_matmul(const MatrixView& w, const float* x, std::int64_t n, float* y, int threads) {
  using namespace amx_bf16;
  thread_local std::vector<std::uint16_t> packed;  // the calling thread's, reused: decode allocates nothing
  const std::int64_t panels = panels_of(n), panel = panel_elements(w.cols);
  packed.resize(std::size_t(panels * panel));
  std::uint16_t* xp = packed.data();
  parallel_ranges(panels, 1, int(std::min<std::int64_t>(threads, panels)),
                  [&](std::int64_t p0, std::int64_t p1) {
                    for (std::int64_t p = p0; p < p1; ++p) pack_panel(x, n, w.cols, p, xp + p * panel);
                  });
  parallel_ranges(w.rows, kBlockRows, threads,
                  [&](std::int64_t r0, std::int64_t r1) { amx_bf16::matmul_rows(w, xp, n, y, r0, r1); });
}

}  // namespace fastinfer::cpu
#endif  // FASTINFER_CPU_AVX512_TILES
