// Shared helpers of the CPU kernel tests: seeded random data and weight
// matrices stored in each dtype.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer::testing {

inline std::vector<float> random_floats(std::size_t n, std::uint32_t seed, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& f : v) f = dist(gen);
  return v;
}

// A rows x cols matrix of random values stored as `dtype` (f32, bf16, f16).
struct StoredMatrix {
  std::vector<std::uint8_t> bytes;
  MatrixView view;
};
inline StoredMatrix random_matrix(DType dtype, std::int64_t rows, std::int64_t cols, std::uint32_t seed) {
  const std::vector<float> v = random_floats(std::size_t(rows * cols), seed);
  StoredMatrix m;
  m.bytes.resize(row_bytes(dtype, cols) * std::size_t(rows));
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::F32) {
      reinterpret_cast<float*>(m.bytes.data())[i] = v[i];
    } else {
      const std::uint16_t h = dtype == DType::BF16 ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
      reinterpret_cast<std::uint16_t*>(m.bytes.data())[i] = h;
    }
  }
  m.view = MatrixView{dtype, m.bytes.data(), rows, cols};
  return m;
}

}  // namespace fastinfer::testing
