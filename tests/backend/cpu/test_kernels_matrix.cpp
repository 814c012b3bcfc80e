// Vectorised matvec / matmul against the scalar references, over odd shapes
// and tails, every float weight dtype, 1 and 2 threads.
//
// Tolerance: both sides sum `cols` products of the same (widened) values in
// f32, in different orders, so each is within cols * eps * sum|w x| of the
// exact sum; the test allows twice that.
#include <catch2/catch.hpp>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <string>

#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/backend/cpu/reference.hpp"
#include "test_kernels_support.hpp"

using namespace fastinfer;
using fastinfer::testing::random_floats;
using fastinfer::testing::random_matrix;
using fastinfer::testing::check_close;
using fastinfer::testing::kFloatTypes;
using fastinfer::testing::same_bits;

namespace {

const std::int64_t kOddSizes[] = {1, 7, 8, 9, 15, 16, 17, 31, 33, 64, 255, 257};
}  // namespace

TEST_CASE("matvec matches the reference over odd shapes, every dtype, 1 and 2 threads") {
  std::uint32_t seed = 1;
  for (DType dt : kFloatTypes)
    for (std::int64_t rows : {1, 3, 4, 5, 7, 9, 33})
      for (std::int64_t cols : kOddSizes) {
        auto w = random_matrix(dt, rows, cols, seed++);
        const auto x = random_floats(static_cast<std::size_t>(cols), seed++);
        std::vector<float> ref(static_cast<std::size_t>(rows)), y1(static_cast<std::size_t>(rows), NAN),
            y2(static_cast<std::size_t>(rows), NAN);
        cpu::reference::matvec(w.view, x.data(), ref.data());
        cpu::matvec(w.view, x.data(), y1.data(), 1);
        cpu::matvec(w.view, x.data(), y2.data(), 2);
        check_close(w.view, x.data(), 1, y1, ref);
        CHECK(same_bits(y1, y2));
      }
}

TEST_CASE("matvec large enough to split over 2 threads gives the 1-thread bits") {
  // 1031 rows (not a multiple of the 4-row step) x 300 columns: above the
  // 2-thread threshold in every dtype, so the split really happens.
  std::uint32_t seed = 100;
  for (DType dt : kFloatTypes) {
    auto w = random_matrix(dt, 1031, 300, seed++);
    REQUIRE(cpu::threads_for(std::int64_t(w.view.bytes()), cpu::ParallelThresholds::kMatvecBytesPerThread,
                             2) == 2);
    const auto x = random_floats(300, seed++);
    std::vector<float> ref(1031), y1(1031, NAN), y2(1031, NAN);
    cpu::reference::matvec(w.view, x.data(), ref.data());
    cpu::matvec(w.view, x.data(), y1.data(), 1);
    cpu::matvec(w.view, x.data(), y2.data(), 2);
    check_close(w.view, x.data(), 1, y1, ref);
    CHECK(same_bits(y1, y2));
  }
}

TEST_CASE("matmul matches the reference over odd shapes, every dtype, 1 and 2 threads") {
  std::uint32_t seed = 1000;
  for (DType dt : kFloatTypes)
    for (std::int64_t rows : {1, 7, 96, 97, 200})
      for (std::int64_t cols : {1, 8, 9, 33, 100})
        for (std::int64_t n : {1, 2, 3, 5, 16, 17, 40}) {
          auto w = random_matrix(dt, rows, cols, seed++);
          const auto x = random_floats(static_cast<std::size_t>(n * cols), seed++);
          const std::size_t out = std::size_t(n * rows);
          std::vector<float> ref(out), y1(out, NAN), y2(out, NAN);
          cpu::reference::matmul(w.view, x.data(), n, ref.data());
          cpu::matmul(w.view, x.data(), n, y1.data(), 1);
          cpu::matmul(w.view, x.data(), n, y2.data(), 2);
          check_close(w.view, x.data(), n, y1, ref);
          CHECK(same_bits(y1, y2));
        }
}

TEST_CASE("matmul large enough to split over 2 threads gives the 1-thread bits") {
  // Row counts whose last panel is partial (301, 770; ranges are cut on a
  // 24/48-row panel edge) and depths beyond one packed depth block (256:
  // 700), in every dtype, with more tokens than the dot-product path.
  std::uint32_t seed = 2000;
  const std::int64_t shapes[][2] = {{301, 700}, {770, 203}};
  for (DType dt : kFloatTypes)
    for (const auto& shape : shapes) {
      const std::int64_t rows = shape[0], cols = shape[1], n = 40;
      REQUIRE(cpu::threads_for(rows * cols * n, cpu::ParallelThresholds::kMatmulMacsPerThread, 2) == 2);
      auto w = random_matrix(dt, rows, cols, seed++);
      const auto x = random_floats(static_cast<std::size_t>(n * cols), seed++);
      std::vector<float> ref(static_cast<std::size_t>(n * rows)), y1(ref.size(), NAN), y2(ref.size(), NAN);
      cpu::reference::matmul(w.view, x.data(), n, ref.data());
      cpu::matmul(w.view, x.data(), n, y1.data(), 1);
      cpu::matmul(w.view, x.data(), n, y2.data(), 2);
      check_close(w.view, x.data(), n, y1, ref);
      CHECK(same_bits(y1, y2));
    }
}

TEST_CASE("matmul of up to 32 tokens gives each token matvec's bits, and larger batches stay within the bound") {
  // Speculative verification (a few tokens through matmul) must reach the
  // same greedy decisions as plain decode (one token through matvec).
  std::uint32_t seed = 3000;
  for (DType dt : kFloatTypes)
    for (std::int64_t rows : {1, 7, 130, 1031})
      for (std::int64_t cols : {9, 77, 300})
        for (std::int64_t n : {2, 3, 16, 17, 32, 33}) {
          auto w = random_matrix(dt, rows, cols, seed++);
          const auto x = random_floats(static_cast<std::size_t>(n * cols), seed++);
          std::vector<float> y(static_cast<std::size_t>(n * rows)), v(y.size());
          for (int threads : {1, 2}) {
            cpu::matmul(w.view, x.data(), n, y.data(), threads);
            for (std::int64_t t = 0; t < n; ++t)
              cpu::matvec(w.view, x.data() + t * cols, v.data() + t * rows, 1);
            if (n <= 32) {
              INFO(dtype_name(dt) << " " << rows << "x" << cols << " n " << n << " threads " << threads);
              REQUIRE(same_bits(y, v));
            } else {
              check_close(w.view, x.data(), n, y, v);
            }
          }
        }
}

TEST_CASE(
    "with batch invariance on, matmul of any number of tokens gives each token matvec's bits, at every "
    "level") {
  // Past 32 tokens the packed GEMM sums in another order; the mode keeps the
  // small-row tiles (32 tokens at a time), so a row's bits never depend on
  // the pass (batch_invariance.hpp).
  cpu::BatchInvariantScope invariant(true);
  std::uint32_t seed = 7000;
  const std::string ran = fastinfer::testing::at_every_cpu_level([&](cpu::CpuLevel) {
    for (DType dt : kFloatTypes)
      for (std::int64_t rows : {7, 130, 1100})  // 1100 x 300: a thread's rows in 2-3 sweeps (gemm.hpp)
        for (std::int64_t cols : {77, 300})
          for (std::int64_t n : {33, 64, 100}) {
            auto w = random_matrix(dt, rows, cols, seed++);
            const auto x = random_floats(static_cast<std::size_t>(n * cols), seed++);
            std::vector<float> y(static_cast<std::size_t>(n * rows)), v(y.size());
            for (std::int64_t t = 0; t < n; ++t)
              cpu::matvec(w.view, x.data() + t * cols, v.data() + t * rows, 1);
            for (int threads : {1, 2}) {
              cpu::matmul(w.view, x.data(), n, y.data(), threads);
              INFO(dtype_name(dt) << " " << rows << "x" << cols << " n " << n << " threads " << threads);
              REQUIRE(same_bits(y, v));
            }
          }
  });
  WARN("batch invariance past 32 tokens checked at cpu levels: " << ran);
  // A nested scope restores the outer one's setting.
  {
    cpu::BatchInvariantScope off(false);
    CHECK_FALSE(cpu::batch_invariant());
  }
  CHECK(cpu::batch_invariant());
}

TEST_CASE("a kernel mode's bad value is refused naming the source, the mode and every choice") {
  enum class Four { a, b, c, d };
  static const cpu::ModeName<Four> four[] = {{Four::a, "a"}, {Four::b, "b"}, {Four::c, "c"}, {Four::d, "d"}};
  CHECK(cpu::parse_mode("c", "test", "letter", four) == Four::c);
  CHECK_THROWS_AS(cpu::parse_mode("C", "test", "letter", four), InvalidArgument);
  CHECK_THROWS_WITH(cpu::parse_mode("e", "LETTER", "letter", four),
                    Catch::Contains("LETTER=e: unknown letter (choose a, b, c or d)"));
  static const cpu::ModeName<bool> two[] = {{false, "0"}, {true, "1"}};
  CHECK(cpu::parse_mode("1", "test", "switch", two));
  CHECK_THROWS_WITH(
      cpu::parse_mode("yes", "FASTINFER_BATCH_INVARIANT", "batch invariance setting", two),
      Catch::Contains("FASTINFER_BATCH_INVARIANT=yes: unknown batch invariance setting (choose 0 or 1)"));
  CHECK_THROWS_AS(cpu::parse_mode("", "test", "switch", two), InvalidArgument);
}

TEST_CASE("matvec and matmul reject negative shapes, naming them, and write nothing") {
  std::vector<float> w(16, 1.0f), x(16, 1.0f), y(16, -7.0f);
  const MatrixView bad{DType::F32, w.data(), -3, 4};
  CHECK_THROWS_WITH(cpu::matvec(bad, x.data(), y.data(), 1), Catch::Contains("-3"));
  const MatrixView ok{DType::F32, w.data(), 4, 4};
  CHECK_THROWS_WITH(cpu::matmul(ok, x.data(), -2, y.data(), 1), Catch::Contains("-2"));
  CHECK(y == std::vector<float>(16, -7.0f));
  // Zero tokens or zero rows: nothing to do, nothing written.
  cpu::matmul(ok, x.data(), 0, y.data(), 2);
  CHECK(y == std::vector<float>(16, -7.0f));
}

TEST_CASE("with 8-float registers, matvec and matmul of up to 16 tokens follow the documented order bit for bit") {
  // The register tiles (8 rows x 1 token, 4 rows x 2 tokens, 4 x 1, with a
  // transposing reduction and gathered tail columns) must round exactly as
  // the scalar statement of the order: greedy decode and verification agree
  // only because every path computes these bits.
  if (cpu::kLanes != 8 || std::string(cpu::isa_name()).find("fma") == std::string::npos) {
    WARN("needs an 8-float FMA instruction set; this build has " << cpu::isa_name());
    return;
  }
  std::uint32_t seed = 7000;
  for (DType dt : kFloatTypes)
    for (std::int64_t rows : {1, 3, 4, 5, 8, 12, 13, 32, 33, 36, 172})
      for (std::int64_t cols : {1, 5, 8, 9, 12, 15, 16, 23, 64, 172, 173})
        for (std::int64_t n : {1, 2, 3, 5, 16}) {
          auto w = random_matrix(dt, rows, cols, seed++);
          const auto x = random_floats(static_cast<std::size_t>(n * cols), seed++);
          std::vector<float> y(static_cast<std::size_t>(n * rows), NAN);
          cpu::matmul(w.view, x.data(), n, y.data(), 1);
          for (std::int64_t t = 0; t < n; ++t)
            for (std::int64_t r = 0; r < rows; ++r) {
              const float want = fastinfer::testing::ordered_dot<8>(w.view, r, x.data() + t * cols);
              const float got = y[std::size_t(t * rows + r)];
              if (std::memcmp(&want, &got, sizeof(float)) != 0) {
                INFO(dtype_name(dt) << " " << rows << "x" << cols << " n " << n << " row " << r << " token " << t
                                    << ": got " << got << " want " << want);
                REQUIRE(false);
              }
            }
        }
}
