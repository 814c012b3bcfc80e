// Q8_0 weights (GGUF's 8-bit block format): the matrix kernels the backend
// calls, on the widest instruction set the build allows.
//
//   q8_0_reference.hpp  block layouts and the scalar oracle
//   q8_0_avx2.hpp       AVX2 + FMA: maddubs with the sign trick, 4-row groups
//   q8_0_avx512.hpp     AVX-512 + VNNI: vpdpbusd, 4-row x 4-token register tiles
//
// Results never depend on the thread count: threads split whole rows, and a
// row's sum has one fixed order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastinfer/backend/cpu/q8_0_avx2.hpp"
#include "fastinfer/backend/cpu/q8_0_avx512.hpp"
#include "fastinfer/backend/cpu/q8_0_reference.hpp"
#include "fastinfer/backend/cpu/threading.hpp"

namespace fastinfer::cpu::q8_0 {

// The instruction set of the Q8_0 kernels in this build, for logs and benchmarks.
inline const char* kernel_isa() {
#if FASTINFER_CPU_Q8_0_AVX512
  return "avx512-vnni";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2";
#else
  return "scalar";
#endif
}

// The dot product of one row: the widest kernel compiled, else the reference.
inline float dot(const void* w_row, const ActivationBlock* x, std::int64_t n_blocks) {
#if FASTINFER_CPU_Q8_0_AVX512
  return avx512::dot(w_row, x, n_blocks);
#elif defined(__AVX2__) && defined(__FMA__)
  return dot_avx2(w_row, x, n_blocks);
#else
  return dot_reference(w_row, x, n_blocks);
#endif
}

namespace detail {
// Per-thread scratch for the quantized activations, grown once and reused so
// that a decode step allocates nothing.
inline ActivationBlock* activation_scratch(std::size_t blocks) {
  thread_local std::vector<ActivationBlock> scratch;
  if (scratch.size() < blocks) scratch.resize(blocks);
  return scratch.data();
}
// Below this many weight bytes an OpenMP hand-off costs more than it saves.
inline constexpr std::int64_t kMinBytesPerThread = 64 * 1024;

// Rows [begin, end) of Y for n tokens whose activations are already quantized.
inline void matmul_rows(const MatrixView& w, const ActivationBlock* xq, std::int64_t n, float* y,
                        std::int64_t begin, std::int64_t end) {
#if FASTINFER_CPU_Q8_0_AVX512
  avx512::matmul_rows(w, xq, n, y, begin, end);
#else
  const std::int64_t nb = w.cols / kBlockSize, rows = w.rows;
  for (std::int64_t r0 = begin; r0 < end; r0 += 4) {
    for (std::int64_t t = 0; t < n; ++t) {
#if defined(__AVX2__) && defined(__FMA__)
      if (r0 + 4 <= end) {
        float out[4];
        dot4_avx2(static_cast<const std::uint8_t*>(w.row_ptr(r0)), row_bytes(DType::Q8_0, w.cols), xq + t * nb, nb,
                  out);
        for (int i = 0; i < 4; ++i) y[t * rows + r0 + i] = out[i];
        continue;
      }
#endif
      for (std::int64_t r = r0; r < std::min(end, r0 + 4); ++r) y[t * rows + r] = dot(w.row_ptr(r), xq + t * nb, nb);
    }
  }
#endif
}
}  // namespace detail

// n tokens: Y[t][r] = sum_c W[r][c] X[t][c]. Each token's activations are
// quantized once; up to `threads` threads split the rows in groups of 4.
inline void matmul(const MatrixView& w, const float* x, std::int64_t n, float* y, int threads = 1) {
  detail::check_matrix(w);
  const std::int64_t nb = w.cols / kBlockSize;
  ActivationBlock* xq = detail::activation_scratch(std::size_t(nb * n));
  for (std::int64_t t = 0; t < n; ++t) quantize_activation(x + t * w.cols, xq + t * nb, w.cols);
  const int nt = threads_for(std::int64_t(w.bytes()) * n, detail::kMinBytesPerThread, threads);
  parallel_ranges(w.rows, 4, nt, [&](std::int64_t begin, std::int64_t end) {
    detail::matmul_rows(w, xq, n, y, begin, end);
  });
}

inline void matvec(const MatrixView& w, const float* x, float* y, int threads = 1) {
  matmul(w, x, 1, y, threads);
}

}  // namespace fastinfer::cpu::q8_0
