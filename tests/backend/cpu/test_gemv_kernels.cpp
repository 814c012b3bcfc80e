// The per-ISA float small-row matmul kernels (gemv_reference.hpp,
// gemv_avx2.hpp, gemv_avx512.hpp), each called directly, so every set the
// host can run is tested whatever the build's flags (the sets are compiled in
// target regions) and whichever one the current level dispatches to:
// * the scalar kernel against reference::matmul within the rounding bound;
// * each vector set bit for bit against the scalar statement of its
//   documented summation order (testing::ordered_dot), for 1..32 rows in a
//   pass and through matvec: a row's bits do not depend on the pass size
//   (batch invariance), and are within the bound of the scalar kernel.
// * cpu::matvec / cpu::matmul at every level the host supports: the set the
//   level names, in its order, batch invariant.
// The log says which sets and levels ran.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "fastinfer/backend/cpu/cpu_level.hpp"
#include "fastinfer/backend/cpu/gemm.hpp"
#include "fastinfer/backend/cpu/gemv.hpp"
#include "fastinfer/backend/cpu/gemv_avx2.hpp"
#include "fastinfer/backend/cpu/gemv_avx512.hpp"
#include "fastinfer/backend/cpu/gemv_reference.hpp"
#include "fastinfer/backend/cpu/one_row_walk.hpp"
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
          testing::require_row_range_written(y, alone, 3, nrows, 5, nrows - 1, -7.0f);
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
  if (cpu::detected_cpu_level() < cpu::CpuLevel::avx512) {
    WARN("float kernel set avx512: this CPU lacks AVX-512 (" << cpu::cpu_features_summary() << "), not run");
    return;
  }
  WARN("float kernel set avx512: ran");
  // Both one-row walks (one_row_walk.hpp): the same bits, every row length.
  for (cpu::OneRowWalk walk : {cpu::OneRowWalk::tiles, cpu::OneRowWalk::by_length}) {
    cpu::OneRowWalkScope scope(walk);
    INFO("one-row walk " << cpu::one_row_walk_name(walk));
    check_set<16>(for_dtype<Avx512>, "avx512 (matvec for 1 row)", 1);
    // Rows either side of kLongRowBytes (by-length takes the longer in tiles).
    std::uint32_t seed = 11500;
    for (DType dt : {DType::BF16, DType::F16})
      for (std::int64_t cols :
           {std::int64_t(cpu::kLongRowBytes / 2 - 8), std::int64_t(cpu::kLongRowBytes / 2 + 8)}) {
        auto w = random_matrix(dt, 53, cols, seed++);
        const auto x = random_floats(std::size_t(cols), seed++);
        std::vector<float> y(53, NAN);
        for_dtype<Avx512>(dt)(w.view, x.data(), 1, y.data(), 0, 53);
        require_documented_order<16>(w.view, x.data(), 1, y, "avx512 matvec, long rows");
      }
  }
  check_set<16>(for_dtype<Avx512Matmul>, "avx512 matmul", 1);
#else
  WARN("float kernel set avx512: not compiled in this build (no x86 target regions), not run");
#endif
}

#if FASTINFER_CPU_AVX2_TILES
namespace {
// n = 1 through matvec_rows: the decode path.
FASTINFER_TEST_KERNEL_SET(Avx2, n == 1 ? cpu::avx2::matvec_rows<D>(w, x, y, r0, r1)
                                       : cpu::avx2::matmul_rows<D>(w, x, n, y, r0, r1))
FASTINFER_TEST_KERNEL_SET(Avx2Matmul, cpu::avx2::matmul_rows<D>(w, x, n, y, r0, r1))
}  // namespace
#endif

TEST_CASE("the one-row walk is by-length on AMD and tiles elsewhere and a bad name is refused") {
  const char* env = std::getenv("FASTINFER_ONE_ROW_WALK");
  if (env == nullptr || *env == '\0')
    CHECK(cpu::one_row_walk() ==
          (cpu::cpu_features().amd ? cpu::OneRowWalk::by_length : cpu::OneRowWalk::tiles));
  CHECK(cpu::parse_one_row_walk("tiles", "test") == cpu::OneRowWalk::tiles);
  CHECK(cpu::parse_one_row_walk("by-length", "test") == cpu::OneRowWalk::by_length);
  CHECK_THROWS_WITH(cpu::parse_one_row_walk("rows", "FASTINFER_ONE_ROW_WALK"),
                    Catch::Contains("FASTINFER_ONE_ROW_WALK=rows") && Catch::Contains("tiles or by-length"));
  const cpu::OneRowWalk before = cpu::one_row_walk();
  {
    cpu::OneRowWalkScope scope(cpu::OneRowWalk::by_length);
    CHECK_FALSE(cpu::one_row_in_tiles(cpu::kLongRowBytes - 1));
    CHECK(cpu::one_row_in_tiles(cpu::kLongRowBytes));
    cpu::OneRowWalkScope inner(cpu::OneRowWalk::tiles);
    CHECK(cpu::one_row_in_tiles(64));
  }
  CHECK(cpu::one_row_walk() == before);
  WARN("one-row walk here: " << cpu::one_row_walk_name(before)
                             << " (CPU vendor AMD: " << cpu::cpu_features().amd << ")");
}

TEST_CASE("AVX2 tiles follow the documented 8-lane order, a pass of up to 32 rows gives each its 1-row bits") {
#if FASTINFER_CPU_AVX2_TILES
  if (cpu::detected_cpu_level() < cpu::CpuLevel::avx2) {
    WARN("float kernel set avx2: this CPU lacks AVX2 + FMA + F16C, not run");
    return;
  }
  WARN("float kernel set avx2: ran");
  check_set<8>(for_dtype<Avx2>, "avx2 (matvec for 1 row)", 1);
  check_set<8>(for_dtype<Avx2Matmul>, "avx2 matmul", 1);
#else
  WARN("float kernel set avx2: not compiled in this build (no x86 target regions), not run");
#endif
}

TEST_CASE("cpu::matvec and cpu::matmul at every CPU level run that level's tiles, batch invariant") {
  std::uint32_t seed = 12000;
  const std::string ran = testing::at_every_cpu_level([&](cpu::CpuLevel level) {
    const std::string isa = cpu::float_kernel_isa();
    CHECK(isa == cpu::float_kernel_isa(level));
    for (DType dt : kFloatTypes)
      for (auto [rows, cols] : {std::pair<std::int64_t, std::int64_t>{1, 7}, {37, 100}, {64, 259}}) {
        auto w = random_matrix(dt, rows, cols, seed++);
        const std::int64_t nmax = 32;
        const auto x = random_floats(static_cast<std::size_t>(nmax * cols), seed++);
        std::vector<float> alone(static_cast<std::size_t>(nmax * rows), NAN);
        for (std::int64_t t = 0; t < nmax; ++t) cpu::matvec(w.view, x.data() + t * cols, alone.data() + t * rows, 2);
        // The level's tiles ran: their documented order, bit for bit.
        if (isa == "avx512") require_documented_order<16>(w.view, x.data(), nmax, alone, "matvec at avx512");
        if (isa == "avx2") require_documented_order<8>(w.view, x.data(), nmax, alone, "matvec at avx2");
        for (std::int64_t n : {2, 5, 6, 13, 32}) {
          std::vector<float> y(static_cast<std::size_t>(n * rows), NAN), ref(y.size(), NAN);
          cpu::matmul(w.view, x.data(), n, y.data(), 2);
          INFO(dtype_name(dt) << " " << rows << "x" << cols << " n " << n);
          REQUIRE(std::memcmp(y.data(), alone.data(), y.size() * sizeof(float)) == 0);
          for_dtype<Scalar>(dt)(w.view, x.data(), n, ref.data(), 0, rows);
          check_close(w.view, x.data(), n, y, ref);
        }
      }
  });
  WARN("cpu::matvec / cpu::matmul ran at cpu levels: " << ran);
}
