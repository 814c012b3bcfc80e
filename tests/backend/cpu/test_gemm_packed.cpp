// The prefill GEMM (gemm_packed.hpp and its micro-kernels gemm_reference.hpp,
// gemm_avx2.hpp, gemm_avx512.hpp) at every CPU level the host supports:
// * within the rounding bound of reference::matmul (a bound that grows with
//   the summation length, test_kernels_support.hpp's check_close), over
//   shapes that are not multiples of any tile: rows, columns (1, across a
//   depth block), tokens (33, a last panel of one vector);
// * bit for bit the documented order: the sequential fused multiply-add sum
//   at the vector levels (a std::fma loop), scalar::matmul_rows' bits at
//   level scalar;
// * the same bits for 1 and 2 threads and for any pass size;
// * cpu::matmul of more than 32 tokens runs it;
// * bad input refused with a one-line error.
// The log says which levels ran.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fastinfer/backend/cpu/cpu_level.hpp"
#include "fastinfer/backend/cpu/gemm.hpp"
#include "fastinfer/backend/cpu/gemm_packed.hpp"
#include "fastinfer/backend/cpu/gemv_reference.hpp"
#include "fastinfer/backend/cpu/reference.hpp"
#include "test_kernels_support.hpp"

using namespace fastinfer;
using fastinfer::testing::check_close;
using fastinfer::testing::kFloatTypes;
using fastinfer::testing::random_floats;
using fastinfer::testing::random_matrix;

namespace {

// The documented order of `level`: at the vector levels each output is
// fma(w[k-1], x[k-1], ... fma(w[0], x[0], 0)), fused; at level scalar the
// scalar kernel's own sequential sum (fma_scalar).
std::vector<float> ordered_gemm(cpu::CpuLevel level, const MatrixView& w, const float* x, std::int64_t n) {
  std::vector<float> y(std::size_t(n * w.rows), NAN);
  if (level == cpu::CpuLevel::scalar) {
    switch (w.dtype) {
      case DType::F32: cpu::scalar::matmul_rows<DType::F32>(w, x, n, y.data(), 0, w.rows); break;
      case DType::BF16: cpu::scalar::matmul_rows<DType::BF16>(w, x, n, y.data(), 0, w.rows); break;
      case DType::F16: cpu::scalar::matmul_rows<DType::F16>(w, x, n, y.data(), 0, w.rows); break;
      case DType::Q8_0: FAIL("no float order for Q8_0");
    }
    return y;
  }
  std::vector<float> row(std::size_t(w.cols));
  for (std::int64_t r = 0; r < w.rows; ++r) {
    cpu::reference::load_row(w.dtype, w.row_ptr(r), row.data(), w.cols);
    for (std::int64_t t = 0; t < n; ++t) {
      float sum = 0.0f;
      for (std::int64_t c = 0; c < w.cols; ++c) sum = std::fma(row[std::size_t(c)], x[t * w.cols + c], sum);
      y[std::size_t(t * w.rows + r)] = sum;
    }
  }
  return y;
}

void require_same_bits(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
      INFO(what << ": element " << i << " is " << a[i] << ", expected " << b[i]);
      REQUIRE(false);
    }
}

std::vector<float> packed(cpu::CpuLevel level, const MatrixView& w, const std::vector<float>& x, std::int64_t n,
                          int threads) {
  std::vector<float> y(std::size_t(n * w.rows), NAN);
  cpu::packed_matmul(level, w, x.data(), n, y.data(), threads);
  return y;
}

}  // namespace

TEST_CASE("the packed GEMM at every CPU level is within the rounding bound and follows its documented order") {
  std::uint32_t seed = 15000;
  const std::string ran = testing::at_every_cpu_level([&](cpu::CpuLevel level) {
    for (DType dt : kFloatTypes)
      // 300 and 515 columns cross depth blocks of 256; 1 column is a
      // depth of one step; 13 and 97 rows end mid-tile at every level.
      for (auto [rows, cols] : {std::pair<std::int64_t, std::int64_t>{1, 1}, {13, 7}, {97, 300}, {40, 515}})
        for (std::int64_t n : {33, 47, 64}) {
          INFO(dtype_name(dt) << " " << rows << "x" << cols << " n " << n);
          auto w = random_matrix(dt, rows, cols, seed++);
          const auto x = random_floats(std::size_t(n * cols), seed++);
          const std::vector<float> y = packed(level, w.view, x, n, 1);
          std::vector<float> ref(y.size(), NAN);
          cpu::reference::matmul(w.view, x.data(), n, ref.data());
          check_close(w.view, x.data(), n, y, ref);
          require_same_bits(y, ordered_gemm(level, w.view, x.data(), n), "documented order");
        }
  });
  WARN("packed GEMM ran at levels: " << ran);
}

TEST_CASE("the packed GEMM gives the same bits for 1 and 2 threads and for any pass size") {
  std::uint32_t seed = 15500;
  testing::at_every_cpu_level([&](cpu::CpuLevel level) {
    for (DType dt : kFloatTypes) {
      // Rows over several row blocks (96) and thread shares; tokens over
      // several token groups, the last panel partial.
      const std::int64_t rows = 301, cols = 70, nmax = 230;
      auto w = random_matrix(dt, rows, cols, seed++);
      const auto x = random_floats(std::size_t(nmax * cols), seed++);
      const std::vector<float> one = packed(level, w.view, x, nmax, 1);
      require_same_bits(packed(level, w.view, x, nmax, 2), one, "2 threads against 1");
      for (std::int64_t n : {33, 100}) {
        const std::vector<float> part = packed(level, w.view, x, n, 2);
        require_same_bits(part, std::vector<float>(one.begin(), one.begin() + n * rows),
                          "the first " + std::to_string(n) + " tokens alone against the whole pass");
      }
    }
  });
}

TEST_CASE("cpu::matmul of more than 32 tokens runs the packed GEMM at every CPU level") {
  std::uint32_t seed = 16000;
  testing::at_every_cpu_level([&](cpu::CpuLevel level) {
    for (DType dt : kFloatTypes) {
      auto w = random_matrix(dt, 50, 40, seed++);
      const std::int64_t n = 33;
      const auto x = random_floats(std::size_t(n * 40), seed++);
      std::vector<float> y(std::size_t(n * 50), NAN);
      cpu::matmul(w.view, x.data(), n, y.data(), 2);
      require_same_bits(y, ordered_gemm(level, w.view, x.data(), n), "cpu::matmul of 33 tokens");
    }
  });
}

TEST_CASE("the packed GEMM refuses Q8_0 and negative shapes, naming them, and handles empty ones") {
  std::vector<std::uint8_t> q(34 * 2, 0);
  const MatrixView q8{DType::Q8_0, q.data(), 2, 32};
  std::vector<float> x(64 * 40, 1.0f), y(64 * 40, NAN);
  CHECK_THROWS_WITH(cpu::packed_matmul(cpu::cpu_level(), q8, x.data(), 40, y.data(), 1), Catch::Contains("Q8_0"));
  auto w = random_matrix(DType::F32, 3, 4, 1);
  CHECK_THROWS_WITH(cpu::packed_matmul(cpu::cpu_level(), w.view, x.data(), -1, y.data(), 1),
                    Catch::Contains("-1"));
  CHECK(std::isnan(y[0]));  // nothing written
  cpu::packed_matmul(cpu::cpu_level(), w.view, x.data(), 0, y.data(), 2);
  CHECK(std::isnan(y[0]));
  // No columns: every output is the empty sum.
  const MatrixView empty{DType::F32, w.bytes.data(), 3, 0};
  cpu::packed_matmul(cpu::cpu_level(), empty, x.data(), 40, y.data(), 2);
  for (std::size_t i = 0; i < 3 * 40; ++i) REQUIRE(y[i] == 0.0f);
}
