// Q8_0 kernels for AVX2 + FMA + F16C: one row, or four rows sharing each
// activation load. Tested against q8_0_reference.hpp. Compiled in an AVX2
// target region (cpu_target.hpp), so every x86 build carries them; q8_0.hpp
// runs them at the avx2 level.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "fastinfer/backend/cpu/cpu_target.hpp"
#include "fastinfer/backend/cpu/q8_0_reference.hpp"

#if FASTINFER_CPU_DISPATCH
FASTINFER_CPU_TARGET_BEGIN(FASTINFER_CPU_ISA_AVX2)
namespace fastinfer::cpu::q8_0 {
namespace detail {
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float scale_of(const std::uint8_t* block) {
  std::uint16_t dh;
  std::memcpy(&dh, block, 2);
  return _cvtsh_ss(dh);
}
// 8 int32 partial sums of qw . qx for one block. maddubs multiplies unsigned
// by signed bytes, so move w's sign onto x: |w| * (x * sign(w)). |w| <= 128
// and |x| <= 127 keep the pairwise int16 sums below 32767.
inline __m256i block_dot(const std::uint8_t* wq, const std::int8_t* xq) {
  const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq));
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
  const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}
}  // namespace detail

inline float dot_avx2(const void* w_row, const ActivationBlock* x, std::int64_t n_blocks) {
  auto* w = static_cast<const std::uint8_t*>(w_row);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  std::int64_t b = 0;
  // Two independent accumulators hide the FMA latency.
  for (; b + 1 < n_blocks; b += 2) {
    const std::uint8_t* w0 = w + b * sizeof(Block);
    const std::uint8_t* w1 = w0 + sizeof(Block);
    const __m256i s0 = detail::block_dot(w0 + 2, x[b].qs);
    const __m256i s1 = detail::block_dot(w1 + 2, x[b + 1].qs);
    acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), _mm256_set1_ps(detail::scale_of(w0) * x[b].d), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), _mm256_set1_ps(detail::scale_of(w1) * x[b + 1].d), acc1);
  }
  if (b < n_blocks) {
    const std::uint8_t* w0 = w + b * sizeof(Block);
    const __m256i s0 = detail::block_dot(w0 + 2, x[b].qs);
    acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), _mm256_set1_ps(detail::scale_of(w0) * x[b].d), acc0);
  }
  return detail::hsum(_mm256_add_ps(acc0, acc1));
}
// R rows at once (R = 4 or 1), one accumulator chain a row: with four rows
// each activation block is loaded once for four weight rows, and every other
// block the next four rows are prefetched at the same offset (two lines
// each); with one row (one token's matvec) the rows go one after the other,
// a single sequential stream the hardware prefetchers follow (gemv_blocking.hpp:
// faster than four interleaved rows with their prefetch). A row's sum is the
// same in both.
template <int R>
inline void dot_rows_avx2(const std::uint8_t* w, std::size_t row_stride, const ActivationBlock* x,
                          std::int64_t n_blocks, float* out) {
  static_assert(R == 4 || R == 1, "dot_rows_avx2 takes four rows (tokens of a batch) or one (a matvec)");
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (std::int64_t b = 0; b < n_blocks; ++b) {
    if (R > 1 && (b & 1) == 0) {
      // Integer arithmetic: past the last rows the address lies beyond the
      // matrix, which a prefetch may touch but a pointer may not point to.
      const std::uintptr_t next =
          reinterpret_cast<std::uintptr_t>(w) + R * row_stride + std::size_t(b) * sizeof(Block);
      for (std::size_t r = 0; r < R; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(next + r * row_stride), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(next + r * row_stride + 64), _MM_HINT_T0);
      }
    }
    const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].qs));
    const float dx = x[b].d;
    for (int r = 0; r < R; ++r) {
      const std::uint8_t* wb = w + r * row_stride + std::size_t(b) * sizeof(Block);
      const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 2));
      const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));
      const __m256i p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), _mm256_set1_ps(detail::scale_of(wb) * dx), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = detail::hsum(acc[r]);
}
// quantize_activation's blocks bit for bit, 32 floats at a time (every level
// from avx2 runs it): the same max, scale and reciprocal, then lround (half
// away from zero) as truncate, compare the exact remainder with 0.5, add 1,
// put the sign back. The scalar loop calls libm's lround a value: 0.27 ms a
// 110M decode step, ~6 %, and more of a prefill. A block holding a NaN or an
// infinity, or so small that 1 / d overflows, takes the scalar code: maxps
// and the conversions treat those differently from std::max and lround.
inline void quantize_activation_avx2(const float* x, ActivationBlock* out, std::int64_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f), infinity = _mm256_set1_ps(INFINITY), half = _mm256_set1_ps(0.5f),
               one = _mm256_set1_ps(1.0f);
  for (std::int64_t b = 0; b < n / kBlockSize; ++b, x += kBlockSize) {
    __m256 v[4], a[4];
    int special = 0;
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(x + 8 * i);
      a[i] = _mm256_andnot_ps(sign, v[i]);
      special |= _mm256_movemask_ps(_mm256_cmp_ps(a[i], infinity, _CMP_NLT_UQ));
    }
    if (special != 0) {
      quantize_activation(x, out + b, kBlockSize);
      continue;
    }
    const __m256 m8 = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float d = _mm_cvtss_f32(m) / 127.0f, inverse = d != 0.0f ? 1.0f / d : 0.0f;
    if (!(inverse < INFINITY)) {
      quantize_activation(x, out + b, kBlockSize);
      continue;
    }
    out[b].d = d;
    const __m256 id = _mm256_set1_ps(inverse);
    __m256i q[4];
    for (int i = 0; i < 4; ++i) {
      const __m256 p = _mm256_mul_ps(v[i], id), abs_p = _mm256_andnot_ps(sign, p);
      const __m256 t = _mm256_round_ps(abs_p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
      const __m256 up = _mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(abs_p, t), half, _CMP_GE_OQ), one);
      q[i] = _mm256_cvttps_epi32(_mm256_or_ps(_mm256_add_ps(t, up), _mm256_and_ps(p, sign)));
    }
    // packs work per 128-bit lane: dwords come out as q0[0..3] q1[0..3] q2[0..3]
    // q3[0..3] | q0[4..7] ...; the permutation puts each register's 8 back together.
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[b].qs),
                        _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }
}

}  // namespace fastinfer::cpu::q8_0
FASTINFER_CPU_TARGET_END
#endif  // FASTINFER_CPU_DISPATCH
