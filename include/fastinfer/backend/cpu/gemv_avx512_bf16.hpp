// The bf16-activation mode's kernels (bf16_dot.hpp) for bf16 weights, on
// AVX512-BF16: the activations rounded to bf16 once per call
// (vcvtneps2bf16), then vdpbf16ps tiles, 32 columns (16 pairs) a register.
// Tested bit for bit against scalar::bf16_pair_dot (gemv_reference.hpp),
// and for batch invariance (test_bf16_dot).
//
// The walk is gemv_blocking.hpp's, the tile shapes and block those of the
// avx512 set (gemv_avx512.hpp: R x T accumulators + T activation vectors +
// 1 weight vector within the 32 registers). A tile does half the
// instructions of the f32 one for the same multiply-adds and widens nothing:
// on Zen 4 an 8-row pass over a 215 MB matrix, 2 threads, ran in 6.8-7.0 ms
// against 9.4 ms with f32 FMAs (a one-row pass: 5.5 ms).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fastinfer/backend/cpu/arch.hpp"
#include "fastinfer/backend/cpu/gemv_avx2.hpp"  // FASTINFER_CPU_NOINLINE
#include "fastinfer/backend/cpu/gemv_avx512.hpp"
#include "fastinfer/backend/cpu/gemv_blocking.hpp"
#include "fastinfer/core/tensor.hpp"

#if FASTINFER_CPU_AVX512_TILES
FASTINFER_CPU_TARGET_BEGIN(FASTINFER_CPU_ISA_AVX512_BF16)
namespace fastinfer::cpu::avx512_bf16 {

// out[i] = the activation x[i] rounded as vcvtneps2bf16 rounds it
// (scalar::round_activation_bf16), for i < count.
inline void round_activations(const float* x, std::int64_t count, std::uint16_t* out) {
  std::int64_t i = 0;
  for (; i + 16 <= count; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
  if (i < count) {
    const __mmask16 m = __mmask16((1u << (count - i)) - 1u);
    const __m256i h = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i));
    _mm256_mask_storeu_epi16(out + i, m, h);
  }
}

// One 32-column chunk of every (r, t) sum: activation vectors loaded once
// (an empty asm keeps the compiler from folding them into every
// vdpbf16ps), weight vectors once per row.
template <int R, int T, bool Masked>
inline void pair_chunk(__m512 (&acc)[R][T], const std::uint8_t* w, std::size_t stride, const std::uint16_t* x,
                       std::int64_t ldx, std::int64_t c, __mmask32 m) {
  __m512i xv[T];
  FASTINFER_CPU_UNROLL
  for (int t = 0; t < T; ++t) {
    xv[t] = Masked ? _mm512_maskz_loadu_epi16(m, x + t * ldx + c) : _mm512_loadu_si512(x + t * ldx + c);
    __asm__("" : "+v"(xv[t]));
  }
  FASTINFER_CPU_UNROLL
  for (int r = 0; r < R; ++r) {
    const std::uint8_t* p = w + r * stride + std::size_t(c) * 2;
    const __m512i wv = Masked ? _mm512_maskz_loadu_epi16(m, p) : _mm512_loadu_si512(p);
    FASTINFER_CPU_UNROLL
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], (__m512bh)wv, (__m512bh)xv[t]);
  }
}

// y[t * ldy + r] = the bf16 pair dot of weight row r and activation row t
// (bf16, ldx apart), for r < R, t < T; Prefetch as gemv_tile_generic.hpp's.
template <int R, int T, bool Prefetch>
FASTINFER_CPU_NOINLINE inline void pair_tile(const std::uint8_t* w, std::size_t stride,
                                             const std::uint16_t* x, std::int64_t ldx, std::int64_t cols,
                                             float* y, std::int64_t ldy, gemv_detail::PrefetchSpan ahead) {
  const std::int64_t chunks = cols / 32;
  gemv_detail::PrefetchPacer pacer(ahead, chunks);
  __m512 acc[R][T];
  FASTINFER_CPU_UNROLL
  for (int r = 0; r < R; ++r) {
    FASTINFER_CPU_UNROLL
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  for (std::int64_t i = 0; i < chunks; ++i) {
    if constexpr (Prefetch) pacer.step();
    pair_chunk<R, T, false>(acc, w, stride, x, ldx, i * 32, 0);
  }
  // The last chunk zero-padded: masked loads read nothing past the row.
  if (const std::int64_t c = chunks * 32; c < cols)
    pair_chunk<R, T, true>(acc, w, stride, x, ldx, c, __mmask32((1u << (cols - c)) - 1u));
  if constexpr (Prefetch) pacer.finish();
  float sums[R * T];
  avx512::reduce<R * T>(&acc[0][0], sums);
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = sums[r * T + t];
}

// The tile set for gemv_blocking.hpp's walk: the avx512 set's shapes (but
// its own one-row walk), bf16 activations.
struct Tiles {
  using Activation = std::uint16_t;
  template <int T>
  static constexpr int kTileRows = avx512::Tiles::kTileRows<T>;
  static constexpr int kMaxTileTokens = avx512::Tiles::kMaxTileTokens;
  static constexpr std::int64_t kBlockRows = avx512::Tiles::kBlockRows;
  // One activation row: a weight row at a time. A vdpbf16ps takes 32
  // weights a step, twice the widening chain's, and in 4-row tiles (Intel
  // Xeon, avx512 level, 2 threads, scratch pass) the 110M pass was 5-10 %
  // faster but the 1B one 5-10 % slower (69-71 -> 74-77 ms).
  template <DType D>
  static bool stream_one_row(std::size_t /*row_bytes*/) {
    return true;
  }

  template <DType D, int R, int T, bool Prefetch>
  static void tile(const std::uint8_t* w, std::size_t stride, const std::uint16_t* x, std::int64_t ldx,
                   std::int64_t cols, float* y, std::int64_t ldy, gemv_detail::PrefetchSpan ahead) {
    static_assert(D == DType::BF16, "the bf16 pair tiles take bf16 weights only");
    pair_tile<R, T, Prefetch>(w, stride, x, ldx, cols, y, ldy, ahead);
  }
};

// Rows [r0, r1) of Y = X W^T for n rounded activation rows (xb [n][w.cols]).
inline void matmul_rows(const MatrixView& w, const std::uint16_t* xb, std::int64_t n, float* y,
                        std::int64_t r0, std::int64_t r1) {
  gemv_detail::blocked_matmul_rows<Tiles, DType::BF16>(w, xb, n, y, r0, r1);
}

// Rows [begin, end) of y = W x for one rounded activation row, a weight row
// at a time (gemv_blocking.hpp), the same sums as matmul_rows gives a row.
inline void matvec_rows(const MatrixView& w, const std::uint16_t* xb, float* y, std::int64_t begin,
                        std::int64_t end) {
  gemv_detail::one_row_matvec_rows<Tiles, DType::BF16>(w, xb, y, begin, end);
}

}  // namespace fastinfer::cpu::avx512_bf16
FASTINFER_CPU_TARGET_END

namespace fastinfer::cpu::bf16_dot_detail {
// The calling thread's rounded copy of n activation rows of `cols` (reused,
// so decode allocates nothing after its first call). Outside the target
// region: only its caller's check (bf16_dot_active) makes the kernel legal.
inline const std::uint16_t* rounded_activations(const float* x, std::int64_t n, std::int64_t cols) {
  thread_local std::vector<std::uint16_t> buffer;
  const std::size_t count = std::size_t(n) * std::size_t(cols);
  if (buffer.size() < count) buffer.resize(count);
  avx512_bf16::round_activations(x, std::int64_t(count), buffer.data());
  return buffer.data();
}
}  // namespace fastinfer::cpu::bf16_dot_detail
#endif  // FASTINFER_CPU_AVX512_TILES
