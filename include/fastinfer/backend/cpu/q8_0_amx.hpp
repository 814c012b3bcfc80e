// Q8_0 on AMX-INT8 tiles (level amx): every pass size, decode included, for
// Q8_0 rows as GGUF stores them (a caller's own matrices) and, below, for the
// regrouped layout CpuBackend::upload gives a model's weights (faster: one
// contiguous stream, no gathers; q8_0_grouped.hpp).
//
// A weight tile is 16 rows x one block's 32 quants, loaded straight from the
// Q8_0 rows (the quants of block b sit at 34 b + 2 in every row, a row
// stride apart); the activations' quants are packed once per call into
// panels of 16 tokens in the tiles' 4-byte groups, with their scales. One
// TDPBSSD per block gives the exact int32 block dots of 16 rows x 16 tokens;
// the vector unit then adds float(dot) * (d_w * d_x) into 16 registers of 16
// tokens with one fused multiply-add per block, in block order:
//
//   y[t][r] = fma(float(dot_B-1), d_w * d_x, ... fma(float(dot_0), d_w * d_x, 0))
//
// which q8_0::dot_blocks_fma_reference computes in scalar code: the tests
// hold the tiles to it bit for bit. An output depends on its row and token
// only, so a token has the same bits at any pass size and thread count
// (batch invariance, as at the other levels). The bits differ from the
// avx512 level's (dot_avx2's lanes): each level has its own order.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastinfer/backend/cpu/cpu_target.hpp"
#include "fastinfer/backend/cpu/gemm_amx.hpp"  // amx_detail, store_tokens
#include "fastinfer/backend/cpu/gemv_avx2.hpp"  // FASTINFER_CPU_NOINLINE
#include "fastinfer/backend/cpu/q8_0_avx512.hpp"  // grouped_rows
#include "fastinfer/backend/cpu/q8_0_grouped.hpp"
#include "fastinfer/backend/cpu/q8_0_reference.hpp"
#include "fastinfer/backend/cpu/threading.hpp"
#include "fastinfer/core/tensor.hpp"

#if FASTINFER_CPU_AVX512_TILES
FASTINFER_CPU_TARGET_BEGIN(FASTINFER_CPU_ISA_AMX_INT8)
namespace fastinfer::cpu::q8_0::amx {

inline constexpr std::int64_t kTileRows = 16;  // weight rows of a tile, tokens of a panel
// One panel block: the 32 quants of 16 tokens in 8 rows of 16 4-byte groups,
// then the 16 tokens' scales.
struct alignas(64) PanelBlock {
  std::int8_t quants[kBlockSize / 4][kTileRows][4];
  float scales[kTileRows];
};
static_assert(sizeof(PanelBlock) == 576, "a Q8_0 AMX panel block is 512 quant bytes and 16 scales");

inline std::int64_t panels_of(std::int64_t n) { return (n + kTileRows - 1) / kTileRows; }

// Panel p of the quantized activations xq ([n][blocks]): out[b] is block b
// of tokens 16p .. 16p + 15, zeros (quants and scales) past n.
inline void pack_panel(const ActivationBlock* xq, std::int64_t n, std::int64_t blocks, std::int64_t p,
                       PanelBlock* out) {
  const std::int64_t t0 = p * kTileRows, tokens = std::min(kTileRows, n - t0);
  for (std::int64_t b = 0; b < blocks; ++b) {
    PanelBlock& o = out[b];
    std::memset(&o, 0, sizeof(PanelBlock));
    for (std::int64_t t = 0; t < tokens; ++t) {
      const ActivationBlock& x = xq[(t0 + t) * blocks + b];
      for (int g = 0; g < kBlockSize / 4; ++g) std::memcpy(o.quants[g][t], x.qs + 4 * g, 4);
      o.scales[t] = x.d;
    }
  }
}

// Tiles: accumulators 0, 1 (blocks b, b + 1); weights 2, 3; activations 4, 5.
inline void configure_tiles() {
  amx_detail::TileConfig config;
  for (int i : {0, 1}) {  // 16 rows x 16 int32
    config.rows[i] = kTileRows;
    config.colsb[i] = kTileRows * 4;
  }
  for (int i : {2, 3}) {  // 16 rows x 32 quants
    config.rows[i] = kTileRows;
    config.colsb[i] = kBlockSize;
  }
  for (int i : {4, 5}) {  // 8 groups x 16 tokens x 4 quants
    config.rows[i] = kBlockSize / 4;
    config.colsb[i] = kTileRows * 4;
  }
  amx_detail::memory_barrier();
  _tile_loadconfig(&config);
}

// The quants of block b of 16 rows as a tile source: the rows themselves
// (`full`), or a copy of the `rows` real ones zero-padded into `padded`.
struct TileSource {
  const void* base;
  long stride;
};
inline TileSource quants(const std::uint8_t* w, std::size_t stride, std::int64_t rows, bool full,
                         std::int64_t b, std::int8_t (&padded)[kTileRows][kBlockSize]) {
  const std::uint8_t* q = w + std::size_t(b) * sizeof(Block) + 2;
  if (full) return {q, long(stride)};
  for (std::int64_t r = 0; r < kTileRows; ++r) {
    if (r < rows)
      std::memcpy(padded[r], q + std::size_t(r) * stride, kBlockSize);
    else
      std::memset(padded[r], 0, kBlockSize);
  }
  amx_detail::memory_barrier();
  return {padded, long(kBlockSize)};
}

// d_w of block b of 16 rows (zero past `rows`): the rows' f16 scales,
// gathered 8 rows at a time.
inline __m512 row_scales(const std::uint8_t* w, std::size_t stride, std::int64_t rows, std::int64_t b) {
  const std::uint8_t* base = w + std::size_t(b) * sizeof(Block);
  const __m512i first =
      _mm512_mullo_epi64(_mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi64(std::int64_t(stride)));
  const __m512i second = _mm512_add_epi64(first, _mm512_set1_epi64(8 * std::int64_t(stride)));
  const std::uint32_t valid = rows >= kTileRows ? 0xffffu : (1u << rows) - 1u;
  // 4 bytes from each scale (its 2 and the first 2 quants): the low 16 bits are the f16.
  const __m256i lo = _mm512_mask_i64gather_epi32(_mm256_setzero_si256(), __mmask8(valid), first, base, 1);
  const __m256i hi =
      _mm512_mask_i64gather_epi32(_mm256_setzero_si256(), __mmask8(valid >> 8), second, base, 1);
  const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(both));
}

// How a tile's block dots (int32 [16 rows][16 tokens]) meet the scales; the
// same fused multiply-add per (row, token) and block either way, so the same
// bits:
//   Tokens = 16  acc[r] lane t: every token of a full panel
//   Tokens < 16  acc[t] lane r: a panel of that many tokens (decode, a short
//                pass), each token's 16 dots gathered from its column
template <int Tokens>
struct Accumulators {
  static_assert(Tokens >= 1 && Tokens <= kTileRows, "a Q8_0 AMX tile holds 1 to 16 tokens");
  static constexpr bool kRowMajor = Tokens == kTileRows;
  __m512 acc[kRowMajor ? kTileRows : Tokens];

  void zero() {
    for (__m512& a : acc) a = _mm512_setzero_ps();
  }
  // acc += float(dots) * (d_w * d_x) for one block.
  void add(const std::int32_t* dots, const float* scale_w, const float* scale_x) {
    if constexpr (kRowMajor) {
      const __m512 dx = _mm512_load_ps(scale_x);
      for (int r = 0; r < kTileRows; ++r) {
        const __m512 d = _mm512_cvtepi32_ps(_mm512_load_si512(dots + r * kTileRows));
        acc[r] = _mm512_fmadd_ps(d, _mm512_mul_ps(_mm512_set1_ps(scale_w[r]), dx), acc[r]);
      }
    } else {
      const __m512 dw = _mm512_load_ps(scale_w);
      const __m512i column =
          _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                             _mm512_set1_epi32(kTileRows));
      for (int t = 0; t < Tokens; ++t) {
        const __m512i dt = _mm512_i32gather_epi32(_mm512_add_epi32(column, _mm512_set1_epi32(t)), dots, 4);
        acc[t] =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(dt), _mm512_mul_ps(dw, _mm512_set1_ps(scale_x[t])), acc[t]);
      }
    }
  }
  // y[t * ldy + r] for t < tokens, r < rows.
  void store(std::int64_t tokens, std::int64_t rows, float* y, std::int64_t ldy) const {
    if constexpr (kRowMajor) {
      alignas(64) float out[kTileRows * kTileRows];
      for (int r = 0; r < kTileRows; ++r) _mm512_store_ps(out + r * kTileRows, acc[r]);
      cpu::amx_bf16::store_tokens(out, tokens, rows, y, ldy);
    } else {
      const __mmask16 m = __mmask16((1u << rows) - 1u);
      for (std::int64_t t = 0; t < tokens; ++t) _mm512_mask_storeu_ps(y + t * ldy, m, acc[t]);
    }
  }
};

// 16 rows (`rows` of them real; w on, stride apart) x one panel of `tokens`
// tokens into y (ldy apart). scale_w[b * 16 + r]: d_w of row r, block b
// (zero past `rows`). With fewer than 16 rows the quants go through a
// zero-padded copy. The accumulators are this function's own (registers).
template <int Tokens>
FASTINFER_CPU_NOINLINE inline void tile(const std::uint8_t* w, std::size_t stride, std::int64_t rows,
                                        std::int64_t blocks, const float* scale_w, const PanelBlock* xp,
                                        std::int64_t tokens, float* y, std::int64_t ldy) {
  Accumulators<Tokens> acc;
  alignas(64) std::int32_t dots[2][kTileRows * kTileRows];
  alignas(64) std::int8_t padded[2][kTileRows][kBlockSize];
  acc.zero();
  const bool full = rows == kTileRows;
  std::int64_t b = 0;
  for (; b + 1 < blocks; b += 2) {
    const TileSource q0 = quants(w, stride, rows, full, b, padded[0]);
    const TileSource q1 = quants(w, stride, rows, full, b + 1, padded[1]);
    _tile_loadd(2, q0.base, q0.stride);
    _tile_loadd(3, q1.base, q1.stride);
    _tile_loadd(4, xp[b].quants, kTileRows * 4);
    _tile_loadd(5, xp[b + 1].quants, kTileRows * 4);
    _tile_zero(0);
    _tile_zero(1);
    _tile_dpbssd(0, 2, 4);
    _tile_dpbssd(1, 3, 5);
    _tile_stored(0, dots[0], kTileRows * 4);
    _tile_stored(1, dots[1], kTileRows * 4);
    amx_detail::memory_barrier();
    acc.add(dots[0], scale_w + b * kTileRows, xp[b].scales);
    acc.add(dots[1], scale_w + (b + 1) * kTileRows, xp[b + 1].scales);
  }
  if (b < blocks) {
    const TileSource q0 = quants(w, stride, rows, full, b, padded[0]);
    _tile_loadd(2, q0.base, q0.stride);
    _tile_loadd(4, xp[b].quants, kTileRows * 4);
    _tile_zero(0);
    _tile_dpbssd(0, 2, 4);
    _tile_stored(0, dots[0], kTileRows * 4);
    amx_detail::memory_barrier();
    acc.add(dots[0], scale_w + b * kTileRows, xp[b].scales);
  }
  acc.store(tokens, rows, y, ldy);
}

// Rows [r0, r1) of Y = X W^T (ldy = w.rows) for n tokens packed into panels
// (xp: panels_of(n) panels of `blocks` PanelBlocks each).
inline void matmul_rows(const MatrixView& w, const PanelBlock* xp, std::int64_t n, float* y, std::int64_t r0,
                        std::int64_t r1) {
  const std::int64_t blocks = w.cols / kBlockSize, panels = panels_of(n);
  const std::size_t stride = row_bytes(DType::Q8_0, w.cols);
  thread_local std::vector<float> scales;  // d_w of a row tile, [block][16 rows]
  scales.resize(std::size_t(blocks * kTileRows) + 16);
  float* scale_w = scales.data() + ((64 - reinterpret_cast<std::uintptr_t>(scales.data()) % 64) % 64) / 4;
  configure_tiles();
  for (std::int64_t row0 = r0; row0 < r1; row0 += kTileRows) {
    const std::int64_t rows = std::min(kTileRows, r1 - row0);
    const std::uint8_t* w0 = w.row_ptr(row0);
    // The next tile's rows (contiguous) into L2 while this one's scales are
    // gathered: the gathers touch 16 rows' lines at once, which the hardware
    // prefetchers do not follow.
    const std::int64_t next_rows = std::min(kTileRows, r1 - row0 - rows);
    const std::int64_t lines = (next_rows * std::int64_t(stride) + 63) / 64,
                       per_block = (blocks > 0 ? (lines + blocks - 1) / blocks : 0);
    const char* next = reinterpret_cast<const char*>(w0 + std::size_t(rows) * stride);
    for (std::int64_t b = 0; b < blocks; ++b) {
      for (std::int64_t l = b * per_block; l < std::min(lines, (b + 1) * per_block); ++l)
        _mm_prefetch(next + l * 64, _MM_HINT_T1);
      _mm512_store_ps(scale_w + b * kTileRows, row_scales(w0, stride, rows, b));
    }
    for (std::int64_t p = 0; p < panels; ++p) {
      const std::int64_t t0 = p * kTileRows, tokens = std::min(kTileRows, n - t0);
      float* yp = y + t0 * w.rows + row0;
      const PanelBlock* xpp = xp + p * blocks;
      switch (tokens) {
        case 1:
          tile<1>(w0, stride, rows, blocks, scale_w, xpp, tokens, yp, w.rows);
          break;
        case 2:
          tile<2>(w0, stride, rows, blocks, scale_w, xpp, tokens, yp, w.rows);
          break;
        case 3:
          tile<3>(w0, stride, rows, blocks, scale_w, xpp, tokens, yp, w.rows);
          break;
        case 4:
          tile<4>(w0, stride, rows, blocks, scale_w, xpp, tokens, yp, w.rows);
          break;
        default:
          tile<kTileRows>(w0, stride, rows, blocks, scale_w, xpp, tokens, yp, w.rows);
          break;
      }
    }
  }
  _tile_release();
}

// ---- regrouped weights (q8_0_grouped.hpp) ----------------------------------
// The weights are TDPBSSD's second operand, a GroupBlock's quants as they lie;
// the activations its first, packed per call into panels of 16 tokens x 32
// quants (TokenPanelBlock: one contiguous 512-byte tile a block). A tile's
// int32 dots are [token][row], so a token's 16 rows meet the 16 scales (one
// vector) in one fused multiply-add per block: the order of
// dot_blocks_fma_reference again, so a regrouped matrix gives the bits of the
// rows it came from.

// Block b of 16 tokens as the tiles' first operand: their quants row by row,
// then their scales (zero past the pass's tokens).
struct alignas(64) TokenPanelBlock {
  std::int8_t quants[kTileRows][kBlockSize];
  float scales[kTileRows];
};
static_assert(sizeof(TokenPanelBlock) == 576, "a Q8_0 token panel block is 512 quant bytes and 16 scales");

// Panel p of xq ([n][blocks]) into out[blocks].
inline void pack_token_panel(const ActivationBlock* xq, std::int64_t n, std::int64_t blocks, std::int64_t p,
                             TokenPanelBlock* out) {
  const std::int64_t t0 = p * kTileRows, tokens = std::min(kTileRows, n - t0);
  for (std::int64_t b = 0; b < blocks; ++b) {
    TokenPanelBlock& o = out[b];
    if (tokens < kTileRows) std::memset(&o, 0, sizeof o);
    for (std::int64_t t = 0; t < tokens; ++t) {
      const ActivationBlock& x = xq[(t0 + t) * blocks + b];
      std::memcpy(o.quants[t], x.qs, kBlockSize);
      o.scales[t] = x.d;
    }
  }
}

// Tiles: block dots 0, 1 (16 tokens x 16 rows); weights 2, 3 (8 groups x 16
// rows x 4 quants); activations 4, 5 (16 tokens x 32 quants).
inline void configure_grouped_tiles() {
  amx_detail::TileConfig config;
  for (int i : {0, 1, 4, 5}) config.rows[i] = kTileRows;
  for (int i : {0, 1}) config.colsb[i] = kGroupRows * 4;
  for (int i : {2, 3}) {
    config.rows[i] = kBlockSize / 4;
    config.colsb[i] = kGroupRows * 4;
  }
  for (int i : {4, 5}) config.colsb[i] = kBlockSize;
  amx_detail::memory_barrier();
  _tile_loadconfig(&config);
}

// One group of 16 rows (`rows` of them real) x one panel of `tokens` tokens
// (xp: its `blocks` blocks) into y (ldy apart); tiles configured for 16.
FASTINFER_CPU_NOINLINE inline void grouped_tile(const GroupBlock* wg, std::int64_t blocks,
                                                const TokenPanelBlock* xp, std::int64_t tokens,
                                                std::int64_t rows, float* y, std::int64_t ldy) {
  __m512 acc[kTileRows];
  for (__m512& a : acc) a = _mm512_setzero_ps();
  alignas(64) std::int32_t dots[2][kTileRows][kGroupRows];
  const auto add = [&](const std::int32_t(&d)[kTileRows][kGroupRows], std::int64_t b) {
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg[b].scales)));
    for (int t = 0; t < kTileRows; ++t) {
      const __m512 dot = _mm512_cvtepi32_ps(_mm512_load_si512(d[t]));
      acc[t] = _mm512_fmadd_ps(dot, _mm512_mul_ps(dw, _mm512_set1_ps(xp[b].scales[t])), acc[t]);
    }
  };
  std::int64_t b = 0;
  for (; b + 1 < blocks; b += 2) {
    prefetch_ahead(wg + b, 2, kPrefetchBlocksTiles);
    _tile_loadd(2, wg[b].quants, kGroupRows * 4);
    _tile_loadd(3, wg[b + 1].quants, kGroupRows * 4);
    _tile_loadd(4, xp[b].quants, kBlockSize);
    _tile_loadd(5, xp[b + 1].quants, kBlockSize);
    _tile_zero(0);
    _tile_zero(1);
    _tile_dpbssd(0, 4, 2);
    _tile_dpbssd(1, 5, 3);
    _tile_stored(0, dots[0], kGroupRows * 4);
    _tile_stored(1, dots[1], kGroupRows * 4);
    amx_detail::memory_barrier();
    add(dots[0], b);
    add(dots[1], b + 1);
  }
  if (b < blocks) {
    _tile_loadd(2, wg[b].quants, kGroupRows * 4);
    _tile_loadd(4, xp[b].quants, kBlockSize);
    _tile_zero(0);
    _tile_dpbssd(0, 4, 2);
    _tile_stored(0, dots[0], kGroupRows * 4);
    amx_detail::memory_barrier();
    add(dots[0], b);
  }
  const __mmask16 real = __mmask16((1u << rows) - 1u);
  for (int t = 0; t < kTileRows; ++t)
    if (t < tokens) _mm512_mask_storeu_ps(y + t * ldy, real, acc[t]);
}

// Rows [r0, r1) (r0 a multiple of 16) of Y = X W^T for a regrouped W and n
// tokens packed in panels of 16 (xp), on the tiles. Passes of up to
// avx512::kGroupedTokens tokens go through vpdpbusd instead (the same bits):
// a 1-token tile waits on its own store every block.
inline void grouped_matmul_rows(const MatrixView& w, const TokenPanelBlock* xp, std::int64_t n, float* y,
                                std::int64_t r0, std::int64_t r1) {
  const std::int64_t blocks = w.cols / kBlockSize;
  configure_grouped_tiles();
  for (std::int64_t row0 = r0; row0 < r1; row0 += kGroupRows) {
    const GroupBlock* wg = group_blocks(w, row0 / kGroupRows);
    const std::int64_t rows = std::min(kGroupRows, r1 - row0);
    for (std::int64_t p = 0; p < panels_of(n); ++p) {
      const std::int64_t t0 = p * kTileRows;
      grouped_tile(wg, blocks, xp + p * blocks, std::min(kTileRows, n - t0), rows, y + t0 * w.rows + row0,
                   w.rows);
    }
  }
  _tile_release();
}

}  // namespace fastinfer::cpu::q8_0::amx
FASTINFER_CPU_TARGET_END

namespace fastinfer::cpu::q8_0 {

// Y = X W^T for Q8_0 W on AMX-INT8 (the caller checked level amx and the
// CPU's AMX-INT8), activations quantized as every level quantizes them, on
// `threads` threads over 16-row tiles.
inline void amx_matmul(const MatrixView& w, const ActivationBlock* xq, std::int64_t n, float* y,
                       int threads) {
  thread_local std::vector<amx::PanelBlock> packed;  // the calling thread's, reused
  const std::int64_t blocks = w.cols / kBlockSize, panels = amx::panels_of(n);
  packed.resize(std::size_t(panels * blocks));
  amx::PanelBlock* xp = packed.data();
  parallel_ranges(panels, 1, int(std::min<std::int64_t>(threads, panels)),
                  [&](std::int64_t p0, std::int64_t p1) {
                    for (std::int64_t p = p0; p < p1; ++p) amx::pack_panel(xq, n, blocks, p, xp + p * blocks);
                  });
  parallel_ranges(w.rows, amx::kTileRows, threads,
                  [&](std::int64_t r0, std::int64_t r1) { amx::matmul_rows(w, xp, n, y, r0, r1); });
}

// Y = X W^T for a regrouped W (q8_0_grouped.hpp) and more than
// avx512::kGroupedTokens tokens on AMX-INT8, on `threads` threads over
// groups of 16 rows.
inline void amx_grouped_matmul(const MatrixView& w, const ActivationBlock* xq, std::int64_t n, float* y,
                               int threads) {
  thread_local std::vector<amx::TokenPanelBlock> packed;  // the calling thread's, reused
  const std::int64_t blocks = w.cols / kBlockSize, panels = amx::panels_of(n);
  packed.resize(std::size_t(panels * blocks));
  amx::TokenPanelBlock* xp = packed.data();
  for (std::int64_t p = 0; p < panels; ++p) amx::pack_token_panel(xq, n, blocks, p, xp + p * blocks);
  parallel_ranges(w.rows, kGroupRows, threads,
                  [&](std::int64_t r0, std::int64_t r1) { amx::grouped_matmul_rows(w, xp, n, y, r0, r1); });
}

}  // namespace fastinfer::cpu::q8_0
#endif  // FASTINFER_CPU_AVX512_TILES
