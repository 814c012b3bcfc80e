// Shared helpers of the CPU kernel tests: seeded random data, weight
// matrices stored in each dtype, and the checks the matrix kernels' tests
// share (tolerance against the reference, bit equality, the documented
// summation order).
#pragma once

#include <catch2/catch.hpp>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fastinfer/backend/cpu/cpu_level.hpp"
#include "fastinfer/backend/cpu/reference.hpp"

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/tensor.hpp"

// Returns from the test case unless `available`, visibly: a FASTINFER_SKIP
// line (ctest's skip) and a Catch warning naming what the CPU lacks.
#define FASTINFER_REQUIRE_CPU(available, missing)                    \
  if (!(available)) {                                                \
    std::printf("FASTINFER_SKIP: this CPU lacks %s (%s)\n", missing, \
                fastinfer::cpu::cpu_features_summary().c_str());     \
    WARN("FASTINFER_SKIP: this CPU lacks " << missing);              \
    return;                                                          \
  }

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

inline const DType kFloatTypes[] = {DType::F32, DType::BF16, DType::F16};

// Tolerance: both sides sum `cols` products of the same (widened) values in
// f32, in different orders, so each is within cols * eps * sum|w x| of the
// exact sum; the check allows twice that:
// |y[t][r] - ref| <= 2 * cols * eps * sum_c |W[r][c] x[t][c]|.
inline void check_close(const MatrixView& w, const float* x, std::int64_t n, const std::vector<float>& y,
                        const std::vector<float>& ref) {
  std::vector<float> row(static_cast<std::size_t>(w.cols));
  for (std::int64_t r = 0; r < w.rows; ++r) {
    cpu::reference::load_row(w.dtype, w.row_ptr(r), row.data(), w.cols);
    for (std::int64_t t = 0; t < n; ++t) {
      double abs_sum = 0.0;
      for (std::int64_t c = 0; c < w.cols; ++c)
        abs_sum += std::fabs(double(row[std::size_t(c)]) * x[t * w.cols + c]);
      const double tol = 2.0 * double(w.cols) * FLT_EPSILON * abs_sum;
      const std::size_t i = std::size_t(t * w.rows + r);
      if (!(std::fabs(double(y[i]) - double(ref[i])) <= tol)) {
        INFO(dtype_name(w.dtype) << " " << w.rows << "x" << w.cols << " n " << n << " row " << r << " token "
                                 << t << ": y " << y[i] << " ref " << ref[i] << " tol " << tol);
        REQUIRE(false);
      }
    }
  }
}

inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// After a call over weight rows [r0, r1) into y (n activation rows of
// `rows` results, filled with `untouched` before): the range holds the bits
// of `alone` (every row computed), nothing outside it was written.
inline void require_row_range_written(const std::vector<float>& y, const std::vector<float>& alone, std::int64_t n,
                                      std::int64_t rows, std::int64_t r0, std::int64_t r1, float untouched) {
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::size_t i = std::size_t(t * rows + r);
      INFO("row " << r << " token " << t << " of rows [" << r0 << ", " << r1 << ")");
      if (r < r0 || r >= r1) {
        REQUIRE(y[i] == untouched);
      } else {
        REQUIRE(std::memcmp(&y[i], &alone[i], sizeof(float)) == 0);
      }
    }
}

// The documented summation order of one (row, token) dot product at L (8 or
// 16) floats a register, in scalar code: L-lane chunks in column order into L
// lane sums (one FMA each); with 16 lanes the halves added first (l_i +
// l_{i+8}); then the 8 lanes added as xsimd::hadd adds them on AVX ((l_i +
// l_{i+4}), adjacent pairs, the two pair sums); then the tail columns in
// order, one FMA each.
template <int L>
float ordered_dot(const MatrixView& w, std::int64_t r, const float* x) {
  static_assert(L == 8 || L == 16, "the documented orders are the 8- and 16-lane ones");
  std::vector<float> row(static_cast<std::size_t>(w.cols));
  cpu::reference::load_row(w.dtype, w.row_ptr(r), row.data(), w.cols);
  float lane[L] = {};
  const std::int64_t cend = w.cols / L * L;
  for (std::int64_t c = 0; c < cend; c += L)
    for (int i = 0; i < L; ++i) lane[i] = std::fma(row[std::size_t(c + i)], x[c + i], lane[i]);
  if constexpr (L == 16)
    for (int i = 0; i < 8; ++i) lane[i] = lane[i] + lane[i + 8];
  const float f[4] = {lane[0] + lane[4], lane[1] + lane[5], lane[2] + lane[6], lane[3] + lane[7]};
  float sum = (f[0] + f[1]) + (f[2] + f[3]);
  for (std::int64_t c = cend; c < w.cols; ++c) sum = std::fma(row[std::size_t(c)], x[c], sum);
  return sum;
}

// Runs body(level) at every CPU level the host supports (cpu_level.hpp),
// lowest first, the level set for the call and named in any failure; returns
// the names of the levels run, for the log.
template <class Body>
std::string at_every_cpu_level(Body&& body) {
  std::string ran;
  for (cpu::CpuLevel level : cpu::supported_cpu_levels()) {
    cpu::CpuLevelScope scope(level);
    INFO("cpu level " << cpu::cpu_level_name(level));
    body(level);
    ran += (ran.empty() ? "" : " ") + std::string(cpu::cpu_level_name(level));
  }
  return ran;
}

}  // namespace fastinfer::testing
