// The per-ISA float small-row matmul kernels (gemv_reference.hpp,
// gemv_avx2.hpp, gemv_avx512.hpp), each called directly, so every set the
// host can run is tested whichever one the build dispatches to:
// * the scalar kernel against reference::matmul within the rounding bound;
// * each vector set bit for bit against the scalar statement of its
//   documented summation order (testing::ordered_dot), for 1..32 rows in a
//   pass and through matvec: a row's bits do not depend on the pass size
//   (batch invariance), and are within the bound of the scalar kernel.
// The log says which sets ran.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastinfer/backend/cpu/gemv_avx2.hpp"
#include "fastinfer/backend/cpu/gemv_avx512.hpp"
#include "fastinfer/backend/cpu/gemv_reference.hpp"
#include "fastinfer/backend/cpu/reference.hpp"
#include "test_kernels_support.hpp"

using namespace fastinfer;
using fastinfer::testing::check_close;
using fastinfer::testing::kFloatTypes;
using fastinfer::testing::ordered_dot;
using fastinfer::testing::random_floats;
using fastinfer::testing::random_matrix;

namespace {

using MatmulRows = void (*)(const MatrixView&, const float*, std::int64_t, float*, std::int64_t, std::int64_t);

template <template <DType> class K>
MatmulRows for_dtype(DType dt) {
  switch (dt) {
    case DType::F32: return K<DType::F32>::run;
    case DType::BF16: return K<DType::BF16>::run;
    default: return K<DType::F16>::run;
  }
}

// Name<D>::run(w, x, n, y, r0, r1) runs `body` (one kernel set's matmul_rows<D>).
#define FASTINFER_TEST_KERNEL_SET(Name, body)                                                                   \
  template <DType D>                                                                                          \
  struct Name {                                                                                               \
    static void run(const MatrixView& w, const float* x, std::int64_t n, float* y, std::int64_t r0,           \
                    std::int64_t r1) {                                                                        \
      body;                                                                                                   \
    }                                                                                                         \
  };

FASTINFER_TEST_KERNEL_SET(Scalar, cpu::scalar::matmul_rows<D>(w, x, n, y, r0, r1))

// Every row of y (n activation rows) equals the documented L-lane order's bits.
template <int L>
void require_documented_order(const MatrixView& w, const float* x, std::int64_t n, const std::vector<float>& y,
                              const char* what) {
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t r = 0; r < w.rows; ++r) {
      const float want = ordered_dot<L>(w, r, x + t * w.cols);
      const float got = y[std::size_t(t * w.rows + r)];
      if (std::memcmp(&want, &got, sizeof(float)) != 0) {
        INFO(what << " " << dtype_name(w.dtype) << " " << w.rows << "x" << w.cols << " n " << n << " row " << r
                  << " token " << t << ": got " << got << " want " << want);
        REQUIRE(false);
      }
    }
}

// Runs `rows` over shapes with odd sizes and tails, for every dtype and
// 1..32 activation rows: each result against the documented order, the
// scalar kernel within the bound, and the 1-row results bit for bit.
template <int L>
void check_set(MatmulRows (*rows)(DType), const char* what, std::int64_t min_cols) {
  std::uint32_t seed = 11000;
  for (DType dt : kFloatTypes)
    for (std::int64_t nrows : {1, 5, 6, 8, 13, 24, 25, 49, 100})
      for (std::int64_t cols : {1, 8, 15, 16, 17, 33, 64, 100, 259}) {
        if (cols < min_cols) continue;
        auto w = random_matrix(dt, nrows, cols, seed++);
        const std::int64_t nmax = 32;
        const auto x = random_floats(static_cast<std::size_t>(nmax * cols), seed++);
        std::vector<float> alone(static_cast<std::size_t>(nmax * nrows), NAN);
        for (std::int64_t t = 0; t < nmax; ++t) rows(dt)(w.view, x.data() + t * cols, 1, alone.data() + t * nrows, 0, nrows);
        require_documented_order<L>(w.view, x.data(), nmax, alone, what);
        for (std::int64_t n : {2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 16, 17, 31, 32}) {
          std::vector<float> y(static_cast<std::size_t>(n * nrows), NAN), ref(y.size(), NAN);
          rows(dt)(w.view, x.data(), n, y.data(), 0, nrows);
          // Batch invariance: each row of the pass has its 1-row bits.
          if (std::memcmp(y.data(), alone.data(), y.size() * sizeof(float)) != 0) {
            INFO(what << " " << dtype_name(dt) << " " << nrows << "x" << cols << " n " << n);
            REQUIRE(false);
          }
          for_dtype<Scalar>(dt)(w.view, x.data(), n, ref.data(), 0, nrows);
          check_close(w.view, x.data(), n, y, ref);
        }
        // A row range in the middle writes that range only.
        if (nrows >= 8) {
          std::vector<float> y(static_cast<std::size_t>(3 * nrows), -7.0f);
          rows(dt)(w.view, x.data(), 3, y.data(), 5, nrows - 1);
          for (std::int64_t t = 0; t < 3; ++t)
            for (std::int64_t r = 0; r < nrows; ++r) {
              const std::size_t i = std::size_t(t * nrows + r);
              if (r < 5 || r == nrows - 1) {
                REQUIRE(y[i] == -7.0f);
              } else {
                REQUIRE(std::memcmp(&y[i], &alone[i], sizeof(float)) == 0);
              }
            }
        }
      }
}

}  // namespace

TEST_CASE("the scalar small-row matmul matches reference::matmul within the rounding bound") {
  std::uint32_t seed = 10000;
  for (DType dt : kFloatTypes)
    for (std::int64_t rows : {1, 7, 33})
      for (std::int64_t cols : {1, 9, 77, 300})
        for (std::int64_t n : {1, 2, 5, 32}) {
          auto w = random_matrix(dt, rows, cols, seed++);
          const auto x = random_floats(static_cast<std::size_t>(n * cols), seed++);
          std::vector<float> y(static_cast<std::size_t>(n * rows), NAN), ref(y.size(), NAN);
          for_dtype<Scalar>(dt)(w.view, x.data(), n, y.data(), 0, rows);
          cpu::reference::matmul(w.view, x.data(), n, ref.data());
          check_close(w.view, x.data(), n, y, ref);
        }
}

#if FASTINFER_CPU_AVX512_TILES
namespace {
// n = 1 through matvec_rows: the decode path.
FASTINFER_TEST_KERNEL_SET(Avx512, n == 1 ? cpu::avx512::matvec_rows<D>(w, x, y, r0, r1)
                                         : cpu::avx512::matmul_rows<D>(w, x, n, y, r0, r1))
FASTINFER_TEST_KERNEL_SET(Avx512Matmul, cpu::avx512::matmul_rows<D>(w, x, n, y, r0, r1))
}  // namespace
#endif

TEST_CASE("AVX-512 tiles follow the documented 16-lane order, a pass of up to 32 rows gives each its 1-row bits") {
#if FASTINFER_CPU_AVX512_TILES
  WARN("float kernel set avx512: ran");
  check_set<16>(for_dtype<Avx512>, "avx512 (matvec for 1 row)", 1);
  check_set<16>(for_dtype<Avx512Matmul>, "avx512 matmul", 1);
#else
  WARN("float kernel set avx512: not compiled in this build (needs -mavx512f), not run");
#endif
}

#if FASTINFER_CPU_AVX2_TILES
namespace {
FASTINFER_TEST_KERNEL_SET(Avx2, cpu::avx2::matmul_rows<D>(w, x, n, y, r0, r1))
}  // namespace
#endif

TEST_CASE("AVX2 tiles follow the documented 8-lane order, a pass of up to 32 rows gives each its 1-row bits") {
#if FASTINFER_CPU_AVX2_TILES
  WARN("float kernel set avx2: ran");
  // The tiles serve matrices of 8 columns or more (avx2::usable).
  check_set<8>(for_dtype<Avx2>, "avx2", 8);
#else
  WARN("float kernel set avx2: not compiled in this build (needs -mavx2 -mfma -mf16c), not run");
#endif
}
