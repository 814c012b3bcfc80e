// Q8_0 weights (GGUF's 8-bit block format) and their matrix-vector kernel.
//
// A Q8_0 row is blocks of 32 values: an f16 scale d and 32 int8 quants q,
// value = d * q. The weights stay quantized in memory; a matvec quantizes the
// activation vector once per call to int8 blocks with an f32 scale, then every
// row is a sum over blocks of (int32 dot of the quants) * d_w * d_x. This is
// llama.cpp's scheme (there the activation scale is rounded to f16 too; we keep
// it f32, which only removes an error). The only extra error over an f32
// matvec of the dequantized weights is the activation rounding: per block at
// most d_x/2 = amax_block(x)/254 per element.
//
// quantize_row_reference / dot_reference / matvec_reference are the scalar
// oracle; dot_avx2 is tested against them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer::cpu::q8_0 {

inline constexpr int kBlockSize = 32;

// Weight block, byte-compatible with ggml's block_q8_0 and core/tensor.hpp.
struct Block {
  std::uint16_t d;  // f16 scale
  std::int8_t qs[kBlockSize];
};
static_assert(sizeof(Block) == 34, "a Q8_0 block is one f16 scale and 32 int8 quants (34 bytes, as in GGUF)");
static_assert(row_bytes(DType::Q8_0, kBlockSize) == sizeof(Block), "core/tensor.hpp disagrees on the Q8_0 block size");

// Activation block: f32 scale, only ever lives in a per-call scratch buffer.
struct ActivationBlock {
  float d;
  std::int8_t qs[kBlockSize];
};

// ---- scalar references -----------------------------------------------------

// ggml's quantize_row_q8_0_ref: d = max|x| / 127 rounded to f16, q = round(x / d)
// (computed as x * (1/d) with the f32 d, as ggml does).
inline void quantize_row_reference(const float* x, void* dst, std::int64_t n) {
  FASTINFER_CHECK(n % kBlockSize == 0, InvalidArgument, "Q8_0 row length ", n,
                  " is not a multiple of ", kBlockSize);
  auto* out = static_cast<std::uint8_t*>(dst);
  for (std::int64_t b = 0; b < n / kBlockSize; ++b, x += kBlockSize, out += sizeof(Block)) {
    float amax = 0.0f;
    for (int j = 0; j < kBlockSize; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const std::uint16_t dh = f32_to_f16(d);
    std::memcpy(out, &dh, 2);
    for (int j = 0; j < kBlockSize; ++j) out[2 + j] = std::uint8_t(std::int8_t(std::lround(x[j] * id)));
  }
}

inline void dequantize_row_reference(const void* src, float* y, std::int64_t n) {
  auto* in = static_cast<const std::uint8_t*>(src);
  for (std::int64_t b = 0; b < n / kBlockSize; ++b, in += sizeof(Block)) {
    std::uint16_t dh;
    std::memcpy(&dh, in, 2);
    const float d = f16_to_f32(dh);
    for (int j = 0; j < kBlockSize; ++j) y[b * kBlockSize + j] = d * float(std::int8_t(in[2 + j]));
  }
}

// Activation quantization: same rounding as the weights, scale kept in f32.
// Quants lie in [-127, 127], which the AVX2 sign trick relies on.
inline void quantize_activation(const float* x, ActivationBlock* out, std::int64_t n) {
  for (std::int64_t b = 0; b < n / kBlockSize; ++b, x += kBlockSize) {
    float amax = 0.0f;
    for (int j = 0; j < kBlockSize; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = d;
    for (int j = 0; j < kBlockSize; ++j) out[b].qs[j] = std::int8_t(std::lround(x[j] * id));
  }
}

// Exact int32 dot product of two int8 vectors: the one scalar int8 dot loop
// of the library (every reference calls it).
//
// Both operands are read as int8 on purpose. g++ 12 with -march on a CPU with
// AVX-VNNI / AVX512-VNNI vectorises the same loop written over a uint8
// pointer with a per-element int8 cast (`int8_t(w[j]) * x[j]`) into vpdpbusd,
// which multiplies *unsigned* by signed bytes: every negative weight comes out
// 256 too large. Reading through int8 pointers gives the vectoriser no
// unsigned operand to misread (checked with g++ 12.2 -O2/-O3, -march=native on a
// Zen 5, sapphirerapids and alderlake; the test_q8_0 cases with negative quants
// catch a relapse).
inline std::int32_t dot_int8_reference(const std::int8_t* a, const std::int8_t* b, int n) {
  std::int32_t s = 0;
  for (int j = 0; j < n; ++j) s += std::int32_t(a[j]) * std::int32_t(b[j]);
  return s;
}

// sum over blocks of (sum_j qw_j * qx_j) * d_w * d_x, block sums exact in int32.
inline float dot_reference(const void* w_row, const ActivationBlock* x, std::int64_t n_blocks) {
  auto* w = static_cast<const std::uint8_t*>(w_row);
  float acc = 0.0f;
  for (std::int64_t b = 0; b < n_blocks; ++b, w += sizeof(Block)) {
    std::uint16_t dh;
    std::memcpy(&dh, w, 2);
    const std::int32_t s = dot_int8_reference(reinterpret_cast<const std::int8_t*>(w + 2), x[b].qs, kBlockSize);
    acc += float(s) * (f16_to_f32(dh) * x[b].d);
  }
  return acc;
}

// ---- AVX2 ------------------------------------------------------------------

#if defined(__AVX2__) && defined(__FMA__)
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
#if defined(__F16C__)
  return _cvtsh_ss(dh);
#else
  return f16_to_f32(dh);
#endif
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
// Four rows at once: each activation block is loaded once for four weight
// rows, and four independent accumulator chains keep the FMA unit busy.
inline void dot4_avx2(const std::uint8_t* w, std::size_t row_stride, const ActivationBlock* x,
                      std::int64_t n_blocks, float* out) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (std::int64_t b = 0; b < n_blocks; ++b) {
    const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].qs));
    const float dx = x[b].d;
    for (int r = 0; r < 4; ++r) {
      const std::uint8_t* wb = w + r * row_stride + std::size_t(b) * sizeof(Block);
      const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 2));
      const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));
      const __m256i p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), _mm256_set1_ps(detail::scale_of(wb) * dx), acc[r]);
    }
  }
  for (int r = 0; r < 4; ++r) out[r] = detail::hsum(acc[r]);
}
inline constexpr bool kHasSimdDot = true;
#else
inline constexpr bool kHasSimdDot = false;
#endif

// The dot product the matvec uses: AVX2 when compiled for it, else the reference.
inline float dot(const void* w_row, const ActivationBlock* x, std::int64_t n_blocks) {
#if defined(__AVX2__) && defined(__FMA__)
  return dot_avx2(w_row, x, n_blocks);
#else
  return dot_reference(w_row, x, n_blocks);
#endif
}

// ---- matvec / matmul -------------------------------------------------------

namespace detail {
// Per-thread scratch for the quantized activations, grown once and reused so
// that a decode step allocates nothing.
inline ActivationBlock* activation_scratch(std::size_t blocks) {
  thread_local std::vector<ActivationBlock> scratch;
  if (scratch.size() < blocks) scratch.resize(blocks);
  return scratch.data();
}
// Below this many weight bytes an OpenMP hand-off costs more than it saves.
inline constexpr std::size_t kMinBytesPerThread = 64 * 1024;

inline void check_matrix(const MatrixView& w) {
  FASTINFER_CHECK(w.dtype == DType::Q8_0, InvalidArgument, "q8_0::matvec needs a Q8_0 matrix, got ",
                  dtype_name(w.dtype));
  FASTINFER_CHECK(w.cols % kBlockSize == 0, InvalidArgument, "Q8_0 matrix has ", w.cols,
                  " columns, not a multiple of ", kBlockSize);
}
}  // namespace detail

// y[r] = sum_c W[r][c] x[c] with x quantized per block (the oracle).
inline void matvec_reference(const MatrixView& w, const float* x, float* y) {
  detail::check_matrix(w);
  std::vector<ActivationBlock> xq(std::size_t(w.cols / kBlockSize));
  quantize_activation(x, xq.data(), w.cols);
  for (std::int64_t r = 0; r < w.rows; ++r) y[r] = dot_reference(w.row_ptr(r), xq.data(), w.cols / kBlockSize);
}

// n tokens: Y[t][r] = sum_c W[r][c] X[t][c]. Rows are split across up to
// `threads` threads; each token's activations are quantized once.
inline void matmul(const MatrixView& w, const float* x, std::int64_t n, float* y, int threads = 1) {
  detail::check_matrix(w);
  const std::int64_t nb = w.cols / kBlockSize;
  ActivationBlock* xq = detail::activation_scratch(std::size_t(nb * n));
  for (std::int64_t t = 0; t < n; ++t) quantize_activation(x + t * w.cols, xq + t * nb, w.cols);
  const std::size_t work = w.bytes() * std::size_t(n);
  const int nt = int(std::max<std::size_t>(1, std::min<std::size_t>(std::size_t(std::max(threads, 1)),
                                                                    work / detail::kMinBytesPerThread)));
  const std::int64_t rows = w.rows;
  const std::int64_t groups = (rows + 3) / 4;  // threads split groups of 4 rows, never a row's sum
  const std::size_t stride = row_bytes(DType::Q8_0, w.cols);
#if defined(_OPENMP)
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
#endif
  for (std::int64_t g = 0; g < groups; ++g) {
    const std::int64_t r0 = g * 4;
    for (std::int64_t t = 0; t < n; ++t) {
#if defined(__AVX2__) && defined(__FMA__)
      if (r0 + 4 <= rows) {
        float out[4];
        dot4_avx2(w.row_ptr(r0), stride, xq + t * nb, nb, out);
        for (int i = 0; i < 4; ++i) y[t * rows + r0 + i] = out[i];
        continue;
      }
#endif
      for (std::int64_t r = r0; r < std::min(rows, r0 + 4); ++r) y[t * rows + r] = dot(w.row_ptr(r), xq + t * nb, nb);
    }
  }
  (void)nt;
  (void)stride;
}

inline void matvec(const MatrixView& w, const float* x, float* y, int threads = 1) {
  matmul(w, x, 1, y, threads);
}

}  // namespace fastinfer::cpu::q8_0
