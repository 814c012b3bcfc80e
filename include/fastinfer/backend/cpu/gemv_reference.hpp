// The scalar float small-row matmul: the oracle the per-ISA tiles
// (gemv_avx2.hpp, gemv_avx512.hpp) are tested against, and the kernel a
// build without a vector instruction set runs. One dot product per (row,
// token): columns in order, one fused multiply-add each. Plain loops, no
// intrinsics, no threads; do not optimise.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastinfer/backend/cpu/arch.hpp"
#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer::cpu {

// The scalar multiply-add of every kernel's tail columns, written out so that
// every kernel rounds it the same way whatever the compiler's contraction
// choices.
inline float fma_scalar(float a, float b, float c) {
#if defined(FP_FAST_FMAF)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

namespace scalar {

// Rows [r0, r1) of Y = X W^T for n tokens: Y[t][r] (leading dimension
// w.rows) = sum over c of W[r][c] X[t][c] (X rows w.cols floats apart).
template <DType D>
inline void matmul_rows(const MatrixView& w, const float* x, std::int64_t n, float* y, std::int64_t r0,
                        std::int64_t r1) {
  static_assert(D == DType::F32 || D == DType::BF16 || D == DType::F16,
                "the float small-row matmul takes f32, bf16 and f16 weights; Q8_0 has q8_0.hpp");
  const std::int64_t k = w.cols;
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t r = r0; r < r1; ++r) {
      const void* row = w.row_ptr(r);
      float sum = 0.0f;
      for (std::int64_t c = 0; c < k; ++c) sum = fma_scalar(load_scalar<D>(row, c), x[t * k + c], sum);
      y[t * w.rows + r] = sum;
    }
}

// The bf16-activation mode (bf16_dot.hpp), gemv_avx512_bf16.hpp's oracle.
// An activation as vcvtneps2bf16 rounds it: to nearest even, a denormal
// input to a zero of its sign, a NaN quiet.
inline std::uint16_t round_activation_bf16(float f) {
  const std::uint32_t u = f32_bits(f);
  if ((u & 0x7f800000u) == 0) return std::uint16_t((u >> 16) & 0x8000u);
  return f32_to_bf16(f);
}

// One row's sum in vdpbf16ps's order: 16 f32 lanes over 32-column chunks,
// lane j adding the product of column 2j + 1, then of column 2j (each
// product of two bf16 is exact in f32), the last chunk zero-padded; then the
// lanes in the avx512 set's tree (l_i + l_{i+8}; (l_i + l_{i+4}); adjacent
// pairs; the two pair sums). Bit-exact for normal operands; with denormal
// products or sums the hardware flushes some (how differs from this model).
inline float bf16_pair_dot(const std::uint16_t* w, const std::uint16_t* x, std::int64_t cols) {
  float lane[16] = {};
  for (std::int64_t c = 0; c < cols; c += 32)
    for (int j = 0; j < 16; ++j) {
      const std::int64_t odd = c + 2 * j + 1, even = c + 2 * j;
      const float p_odd = odd < cols ? bf16_to_f32(w[odd]) * bf16_to_f32(x[odd]) : 0.0f;
      const float p_even = even < cols ? bf16_to_f32(w[even]) * bf16_to_f32(x[even]) : 0.0f;
      lane[j] = (lane[j] + p_odd) + p_even;
    }
  for (int i = 0; i < 8; ++i) lane[i] = lane[i] + lane[i + 8];
  const float f[4] = {lane[0] + lane[4], lane[1] + lane[5], lane[2] + lane[6], lane[3] + lane[7]};
  return (f[0] + f[1]) + (f[2] + f[3]);
}

}  // namespace scalar
}  // namespace fastinfer::cpu
