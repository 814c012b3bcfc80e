// Q8_0 kernels for AVX-512 (F, BW, VL) with VNNI: register tiles of up to
// 4 weight rows x 4 tokens over GGUF rows, and (at the end) 16-row x 8-token
// panels over the backend's regrouped rows. Tested against
// q8_0_reference.hpp and q8_0_grouped.hpp's references.
//
// One zmm holds two consecutive blocks (block b in the low 256 bits, b + 1 in
// the high), and vpdpbusd adds four byte products per int32 lane in one
// instruction (AVX2 needs maddubs + madd). vpdpbusd multiplies unsigned by
// signed bytes, so x goes in offset by 128 (unsigned) and each lane starts
// from -128 * sum(w), computed once per weight block for every token of the
// tile: one instruction per block and token, where a sign trick needs two.
//
// The float arithmetic is exactly dot_avx2's: lane j of the low half is its
// even-block accumulator, the high half its odd-block one, each block adds
// float(int32 lane) * (d_w * d_x) with one FMA, and the two halves are added
// and reduced in the same order. So a row's result is bit-identical to
// dot_avx2's, whatever the tile shape: a token's logits do not depend on how
// many tokens share its pass (batch invariance). The AVX2 matmul's 4-row
// kernel (dot_rows_avx2) keeps one accumulator per row, another order: the avx2
// and avx512 CPU levels agree with dot_avx2, not with each other, on rows
// that go through it (checked in the dispatch work: issue 15).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "fastinfer/backend/cpu/q8_0_avx2.hpp"
#include "fastinfer/backend/cpu/q8_0_grouped.hpp"
#include "fastinfer/backend/cpu/q8_0_reference.hpp"

// 1: this build carries the tiles, compiled in an AVX-512 + VNNI target
// region (cpu_target.hpp) whatever its flags; q8_0.hpp runs them at the
// avx512 level on a CPU with AVX512-VNNI.
#define FASTINFER_CPU_Q8_0_AVX512 FASTINFER_CPU_DISPATCH

#if FASTINFER_CPU_Q8_0_AVX512
FASTINFER_CPU_TARGET_BEGIN(FASTINFER_CPU_ISA_AVX512_VNNI)
namespace fastinfer::cpu::q8_0::avx512 {

// Quants of blocks b and b + 1 (b + 1 only when `pair`; zero bytes otherwise).
inline __m512i load_quants(const std::int8_t* lo, const std::int8_t* hi, bool pair) {
  const __m256i l = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo));
  if (!pair) return _mm512_zextsi256_si512(l);
  return _mm512_inserti64x4(_mm512_castsi256_si512(l), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi)), 1);
}

// Eight lanes of `lo` then eight of `hi`.
inline __m512 halves(float lo, float hi) {
  const __m256d l = _mm256_castps_pd(_mm256_set1_ps(lo));
  const __m256d h = _mm256_castps_pd(_mm256_set1_ps(hi));
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(l), h, 1));
}

// One weight row's share of a block pair, loaded once for every token of the tile.
struct WeightPair {
  __m512i quants;      // w as signed bytes
  __m512i correction;  // -128 * (sum of 4 w bytes) per int32 lane
  __m512 scale;        // d_w of block b (low half) and b + 1 (high half)
};
inline WeightPair load_weight_pair(const std::uint8_t* block, bool pair) {
  const std::uint8_t* next = block + sizeof(Block);
  const __m512i w = load_quants(reinterpret_cast<const std::int8_t*>(block + 2),
                                reinterpret_cast<const std::int8_t*>(next + 2), pair);
  const __m512i sum128 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(char(0x80)), w);
  return {w, _mm512_sub_epi32(_mm512_setzero_si512(), sum128),
          halves(detail::scale_of(block), pair ? detail::scale_of(next) : 0.0f)};
}

// x + 128 as unsigned bytes (|x| <= 127, so 1..255): vpdpbusd's unsigned operand.
inline __m512i offset_activations(__m512i xq) { return _mm512_xor_si512(xq, _mm512_set1_epi8(char(0x80))); }

// acc += float(qw . qx per lane) * (d_w * d_x); only the low half when the
// pair is a lone last block, so the high half stays exactly what it was.
// The lane sums are exact: (x + 128) . w - 128 * sum(w) = x . w.
inline __m512 accumulate(__m512 acc, const WeightPair& w, __m512i x_offset, __m512 dx, bool pair) {
  const __m512i sums = _mm512_dpbusd_epi32(w.correction, x_offset, w.quants);
  const __m512 scale = _mm512_mul_ps(w.scale, dx);
  return _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, acc, pair ? __mmask16(0xFFFF) : __mmask16(0x00FF));
}

// dot_avx2's final reduction: even-block accumulator + odd-block accumulator, then hsum.
inline float reduce(__m512 acc) {
  return detail::hsum(_mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1)));
}

// acc[r][t] += blocks b (and b + 1 when Pair) of rows r x tokens t. With
// PrefetchNext, the two cache lines at the same offset in the next R rows
// are prefetched: one token's tile does so little per weight byte that the
// out-of-order window alone keeps too few misses in flight (the matvec ran
// at half the f16 one's bytes per second without it).
template <int R, int T, bool Pair, bool PrefetchNext>
inline void tile_step(__m512 (&acc)[R][T], const std::uint8_t* w, std::size_t row_stride,
                      const ActivationBlock* const* x, std::int64_t b) {
  if constexpr (PrefetchNext) {
    // Integer arithmetic: past the last tile the address lies beyond the
    // matrix, which a prefetch may touch but a pointer may not point to.
    const std::uintptr_t next = reinterpret_cast<std::uintptr_t>(w) + std::size_t(R) * row_stride +
                                std::size_t(b) * sizeof(Block);
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(next + std::size_t(r) * row_stride), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(next + std::size_t(r) * row_stride + 64), _MM_HINT_T0);
    }
  }
  WeightPair wp[R];
  for (int r = 0; r < R; ++r) wp[r] = load_weight_pair(w + r * row_stride + std::size_t(b) * sizeof(Block), Pair);
  for (int t = 0; t < T; ++t) {
    const ActivationBlock* xb = x[t] + b;
    const __m512i xq = offset_activations(load_quants(xb[0].qs, Pair ? xb[1].qs : nullptr, Pair));
    const __m512 dx = halves(xb[0].d, Pair ? xb[1].d : 0.0f);
    for (int r = 0; r < R; ++r) acc[r][t] = accumulate(acc[r][t], wp[r], xq, dx, Pair);
  }
}

// Y[t][r] for r < R, t < T over all n_blocks; x[t] = activations of token t.
// One token's tiles prefetch the next tile's rows (tile_step).
template <int R, int T>
inline void tile(const std::uint8_t* w, std::size_t row_stride, const ActivationBlock* const* x,
                 std::int64_t n_blocks, float* y, std::int64_t y_stride) {
  constexpr bool kPrefetch = T == 1 && R > 1;
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  std::int64_t b = 0;
  for (; b + 1 < n_blocks; b += 2) tile_step<R, T, true, kPrefetch>(acc, w, row_stride, x, b);
  if (b < n_blocks) tile_step<R, T, false, kPrefetch>(acc, w, row_stride, x, b);
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * y_stride + r] = reduce(acc[r][t]);
}

inline float dot(const void* w_row, const ActivationBlock* x, std::int64_t n_blocks) {
  float out;
  tile<1, 1>(static_cast<const std::uint8_t*>(w_row), 0, &x, n_blocks, &out, 0);
  return out;
}

// R rows x up to 4 tokens at a time (the token count picks the tile).
template <int R>
inline void rows_by_tokens(const std::uint8_t* w, std::size_t row_stride, const ActivationBlock* const* x,
                           std::int64_t tokens, std::int64_t n_blocks, float* y, std::int64_t y_stride) {
  std::int64_t t = 0;
  for (; t + 4 <= tokens; t += 4) tile<R, 4>(w, row_stride, x + t, n_blocks, y + t * y_stride, y_stride);
  switch (tokens - t) {
    case 3: tile<R, 3>(w, row_stride, x + t, n_blocks, y + t * y_stride, y_stride); break;
    case 2: tile<R, 2>(w, row_stride, x + t, n_blocks, y + t * y_stride, y_stride); break;
    case 1: tile<R, 1>(w, row_stride, x + t, n_blocks, y + t * y_stride, y_stride); break;
    default: break;
  }
}

// Rows [row_begin, row_end) of Y = W X^T for n tokens. Tokens go in chunks
// small enough that a chunk's activations stay in L1 while every 4-row group
// of weights passes over them, so weights are read from L2 once per chunk.
// One token (a decode matvec) takes the rows one after the other: a single
// sequential stream, which the hardware prefetchers follow faster than four
// interleaved rows with their prefetch (gemv_blocking.hpp; 110M decode on Zen
// 4, 2 threads: 8.3-8.8 -> 4.8-5.1 ms a token).
inline void matmul_rows(const MatrixView& w, const ActivationBlock* xq, std::int64_t n, float* y,
                        std::int64_t row_begin, std::int64_t row_end) {
  const std::int64_t nb = w.cols / kBlockSize;
  const std::size_t stride = row_bytes(DType::Q8_0, w.cols);
  constexpr std::int64_t kMaxChunk = 64;
  const std::int64_t token_bytes = std::max<std::int64_t>(nb, 1) * std::int64_t(sizeof(ActivationBlock));
  const std::int64_t fit = (24 * 1024) / token_bytes / 4 * 4;
  const std::int64_t chunk = std::clamp<std::int64_t>(fit, 4, kMaxChunk);
  const ActivationBlock* tokens[kMaxChunk];
  for (std::int64_t t0 = 0; t0 < n; t0 += chunk) {
    const std::int64_t tn = std::min(n - t0, chunk);
    for (std::int64_t t = 0; t < tn; ++t) tokens[t] = xq + (t0 + t) * nb;
    std::int64_t r = row_begin;
    if (tn == 1) {
      for (; r < row_end; ++r)
        rows_by_tokens<1>(static_cast<const std::uint8_t*>(w.row_ptr(r)), stride, tokens, tn, nb,
                          y + t0 * w.rows + r, w.rows);
      continue;
    }
    for (; r + 4 <= row_end; r += 4)
      rows_by_tokens<4>(static_cast<const std::uint8_t*>(w.row_ptr(r)), stride, tokens, tn, nb, y + t0 * w.rows + r, w.rows);
    for (; r < row_end; ++r)
      rows_by_tokens<1>(static_cast<const std::uint8_t*>(w.row_ptr(r)), stride, tokens, tn, nb, y + t0 * w.rows + r, w.rows);
  }
}

// ---- regrouped weights (q8_0_grouped.hpp), any pass ---------------------------
// A GroupBlock's 8 quant vectors hold 4 quants of each of 16 rows; one
// vpdpbusd of a token's 4 quants (offset by 128, vpdpbusd's unsigned operand:
// OffsetActivationBlock, made once per call) broadcast from memory with a
// quant vector adds them into the 16 rows' block dots at once, plus 128 *
// (the row's sum of the 4 quants), which a vpdpbusd of 128s with the same
// vector (once per block for every token) takes off again: exact block dots.
// Then one fused multiply-add per block in block order:
// dot_blocks_fma_reference's order, the AMX tiles' bits. A token's outputs
// depend on its own activations only, so the panel sizes below never change
// a bit (batch invariance). The avx512 level runs every pass here; the amx
// level the passes of up to kGroupedTokens tokens (a 1-token tile waits on
// its own store every block; q8_0_amx.hpp).
inline constexpr std::int64_t kGroupedTokens = 4;
// Tokens of one panel: 8 weight vectors, 8 accumulators and the temporaries
// fit the 32 zmm registers; each weight vector then feeds 8 vpdpbusd.
inline constexpr int kPanelTokens = 8;

// One group of 16 rows (`rows` of them real) x Tokens tokens (x: the first
// token's block 0, tokens `x_stride` blocks apart) into y (ldy apart).
template <int Tokens>
inline void grouped_panel(const GroupBlock* wg, std::int64_t blocks, const OffsetActivationBlock* x,
                          std::int64_t x_stride, std::int64_t rows, float* y, std::int64_t ldy) {
  const __m512i offset = _mm512_set1_epi8(std::int8_t(0x80));
  __m512 acc[Tokens];
  for (__m512& a : acc) a = _mm512_setzero_ps();
  for (std::int64_t b = 0; b < blocks; ++b) {
    prefetch_ahead(wg + b, 1, kPrefetchBlocksVnni);
    const GroupBlock& g = wg[b];
    __m512i w[kBlockSize / 4];
    __m512i excess = _mm512_setzero_si512();  // 128 * sum(w) per row
    for (int q = 0; q < kBlockSize / 4; ++q) {
      w[q] = _mm512_loadu_si512(g.quants[q]);
      excess = _mm512_dpbusd_epi32(excess, offset, w[q]);
    }
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.scales)));
    for (int t = 0; t < Tokens; ++t) {
      const OffsetActivationBlock& xb = x[t * x_stride + b];
      __m512i even = _mm512_setzero_si512(), odd = _mm512_setzero_si512();
      for (int q = 0; q < kBlockSize / 4; q += 2) {
        even = _mm512_dpbusd_epi32(even, _mm512_set1_epi32(std::int32_t(xb.quads[q])), w[q]);
        odd = _mm512_dpbusd_epi32(odd, _mm512_set1_epi32(std::int32_t(xb.quads[q + 1])), w[q + 1]);
      }
      const __m512i exact = _mm512_sub_epi32(_mm512_add_epi32(even, odd), excess);
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), _mm512_mul_ps(dw, _mm512_set1_ps(xb.d)), acc[t]);
    }
  }
  const __mmask16 real = __mmask16((1u << rows) - 1u);
  for (int t = 0; t < Tokens; ++t) _mm512_mask_storeu_ps(y + t * ldy, real, acc[t]);
}

// One group of 16 rows x `tokens` tokens: panels of 8, then 4, 2 and 1.
inline void grouped_rows(const GroupBlock* wg, std::int64_t blocks, const OffsetActivationBlock* x,
                         std::int64_t tokens, std::int64_t rows, float* y, std::int64_t ldy) {
  std::int64_t t = 0;
  for (; t + kPanelTokens <= tokens; t += kPanelTokens)
    grouped_panel<kPanelTokens>(wg, blocks, x + t * blocks, blocks, rows, y + t * ldy, ldy);
  if (t + 4 <= tokens) {
    grouped_panel<4>(wg, blocks, x + t * blocks, blocks, rows, y + t * ldy, ldy);
    t += 4;
  }
  if (t + 2 <= tokens) {
    grouped_panel<2>(wg, blocks, x + t * blocks, blocks, rows, y + t * ldy, ldy);
    t += 2;
  }
  if (t < tokens) grouped_panel<1>(wg, blocks, x + t * blocks, blocks, rows, y + t * ldy, ldy);
}

// Rows [r0, r1) (r0 a multiple of 16) of Y = X W^T for a regrouped W and n
// tokens x ([n][blocks]). Tokens go in chunks whose activations stay in L2
// (128 KiB) while every group of rows passes over them; a group's blocks
// (544 bytes each: 35 KiB for 2048 columns) stay in L1, or L2 for wider
// rows, over the chunk's panels.
inline void grouped_matmul_rows(const MatrixView& w, const OffsetActivationBlock* x, std::int64_t n, float* y,
                                std::int64_t r0, std::int64_t r1) {
  const std::int64_t blocks = w.cols / kBlockSize;
  const std::int64_t token_bytes =
      std::max<std::int64_t>(blocks, 1) * std::int64_t(sizeof(OffsetActivationBlock));
  const std::int64_t chunk =
      std::max<std::int64_t>((128 * 1024) / token_bytes / kPanelTokens, 1) * kPanelTokens;
  for (std::int64_t t0 = 0; t0 < n; t0 += chunk) {
    const std::int64_t tokens = std::min(chunk, n - t0);
    for (std::int64_t row0 = r0; row0 < r1; row0 += kGroupRows)
      grouped_rows(group_blocks(w, row0 / kGroupRows), blocks, x + t0 * blocks, tokens,
                   std::min(kGroupRows, r1 - row0), y + t0 * w.rows + row0, w.rows);
  }
}

}  // namespace fastinfer::cpu::q8_0::avx512
FASTINFER_CPU_TARGET_END
#endif  // FASTINFER_CPU_Q8_0_AVX512
