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

}  // namespace scalar
}  // namespace fastinfer::cpu
