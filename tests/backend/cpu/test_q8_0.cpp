// Q8_0: the reference quantizer against ggml's definition, the SIMD dot
// products (AVX2; AVX-512 VNNI tiles) against the scalar reference over odd
// block counts, the AVX-512 tiles against the AVX2 kernel bit for bit, and the
// matvec against an f32 matvec of the dequantized weights within the error
// bound of activation quantization. The kernel cases run at every CPU level
// the host supports (the log names them).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "fastinfer/backend/cpu/cpu_backend.hpp"
#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/backend/cpu/q8_0.hpp"
#include "fastinfer/backend/cpu/reference.hpp"
#include "test_kernels_support.hpp"

using namespace fastinfer;
namespace q8 = fastinfer::cpu::q8_0;

namespace {

std::vector<float> random_vector(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<std::uint8_t> quantize_matrix(const std::vector<float>& w, std::int64_t rows, std::int64_t cols) {
  std::vector<std::uint8_t> q(row_bytes(DType::Q8_0, cols) * std::size_t(rows));
  for (std::int64_t r = 0; r < rows; ++r)
    q8::quantize_row_reference(w.data() + r * cols, q.data() + r * row_bytes(DType::Q8_0, cols), cols);
  return q;
}

// A rows x cols Q8_0 matrix of random weights (seeded) with -128 quants
// sprinkled in, as a foreign quantizer may write them.
std::vector<std::uint8_t> random_q8_matrix_with_min_quants(std::int64_t rows, std::int64_t cols,
                                                           std::uint32_t seed) {
  auto wq = quantize_matrix(random_vector(std::size_t(rows * cols), seed, 0.05f), rows, cols);
  for (std::size_t i = 5; i < wq.size(); i += 97) wq[i] = 0x80;
  return wq;
}

// q8_0::matmul of `computed` (rows or regrouped) against
// dot_blocks_fma_reference of the same rows in `rows_view`, bit for bit, at
// pass sizes across the 1-4-token kernels and the 16-token panels, on 1 and 2
// threads. x: 37 tokens of rows_view.cols values.
void require_block_fma_order(const MatrixView& computed, const MatrixView& rows_view,
                             const std::vector<float>& x) {
  const std::int64_t rows = rows_view.rows, cols = rows_view.cols, nb = cols / 32, nmax = 37;
  std::vector<q8::ActivationBlock> xq(static_cast<std::size_t>(nmax * nb));
  for (std::int64_t t = 0; t < nmax; ++t)
    q8::quantize_activation(x.data() + t * cols, xq.data() + t * nb, cols);
  for (std::int64_t n : {1, 2, 3, 4, 5, 15, 16, 17, 37})
    for (int threads : {1, 2}) {
      std::vector<float> y(static_cast<std::size_t>(n * rows), NAN);
      q8::matmul(computed, x.data(), n, y.data(), threads);
      for (std::int64_t t = 0; t < n; ++t)
        for (std::int64_t r = 0; r < rows; ++r) {
          const float want = q8::dot_blocks_fma_reference(rows_view.row_ptr(r), xq.data() + t * nb, nb);
          const float got = y[std::size_t(t * rows + r)];
          INFO("rows " << rows << " blocks " << nb << " n " << n << " threads " << threads << " token " << t
                       << " row " << r);
          REQUIRE(std::memcmp(&got, &want, sizeof(float)) == 0);
        }
    }
}

}  // namespace

TEST_CASE("quantize_row_reference follows ggml's Q8_0 definition") {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = float(j - 16) * 0.25f;  // amax 4.0 at j = 0
  std::vector<std::uint8_t> q(34);
  q8::quantize_row_reference(x.data(), q.data(), 32);
  std::uint16_t dh;
  std::memcpy(&dh, q.data(), 2);
  const float d = 4.0f / 127.0f;
  CHECK(dh == f32_to_f16(d));
  for (int j = 0; j < 32; ++j) CHECK(int(std::int8_t(q[2 + j])) == int(std::lround(x[j] / d)));
  CHECK(std::int8_t(q[2]) == -127);

  // An all-zero block has scale 0 and zero quants (no division by zero).
  std::vector<float> zeros(64, 0.0f);
  std::vector<std::uint8_t> qz(68, 0xff);
  q8::quantize_row_reference(zeros.data(), qz.data(), 64);
  for (auto b : qz) CHECK(b == 0);

  CHECK_THROWS_AS(q8::quantize_row_reference(x.data(), q.data(), 31), InvalidArgument);
}

TEST_CASE("dequantize(quantize(x)) is within half a quantization step") {
  const auto x = random_vector(32 * 9, 1);
  std::vector<std::uint8_t> q(34 * 9);
  q8::quantize_row_reference(x.data(), q.data(), std::int64_t(x.size()));
  std::vector<float> y(x.size()), z(x.size());
  q8::dequantize_row_reference(q.data(), y.data(), std::int64_t(x.size()));
  cpu::reference::load_row(DType::Q8_0, q.data(), z.data(), std::int64_t(x.size()));
  for (std::size_t b = 0; b < 9; ++b) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    const float step = amax / 127.0f;
    for (int j = 0; j < 32; ++j) {
      const std::size_t i = b * 32 + j;
      // half a step, plus the f16 rounding of the scale (2^-11 relative) times 127
      CHECK(std::fabs(y[i] - x[i]) <= 0.5f * step + amax * 1e-3f);
      CHECK(y[i] == z[i]);
    }
  }
}

TEST_CASE("SIMD dot equals the scalar reference over odd block counts") {
  const std::string ran = testing::at_every_cpu_level([&](cpu::CpuLevel) {
    for (std::int64_t nb : {1, 2, 3, 5, 7, 8, 24, 33, 64, 72}) {
      const auto w = random_vector(std::size_t(nb * 32), std::uint32_t(nb), 0.05f);
      const auto x = random_vector(std::size_t(nb * 32), std::uint32_t(nb + 100), 2.0f);
      const auto wq = quantize_matrix(w, 1, nb * 32);
      std::vector<q8::ActivationBlock> xq(static_cast<std::size_t>(nb));
      q8::quantize_activation(x.data(), xq.data(), nb * 32);
      const float ref = q8::dot_reference(wq.data(), xq.data(), nb);
      const float simd = q8::dot(wq.data(), xq.data(), nb);
      // Same exact int32 block sums; only the f32 order of adding blocks differs.
      double mag = 0;
      for (std::int64_t b = 0; b < nb; ++b) {
        std::uint16_t dh;
        std::memcpy(&dh, wq.data() + b * 34, 2);
        mag += std::fabs(f16_to_f32(dh) * xq[std::size_t(b)].d) * 32 * 127 * 127;
      }
      INFO("blocks " << nb << " ref " << ref << " simd " << simd);
      CHECK(std::fabs(ref - simd) <= 1e-6 * mag + 1e-7);
    }
  });
  WARN("Q8_0 kernels ran at cpu levels: " << ran);
}

TEST_CASE("the sign trick handles -128 weight quants (foreign quantizers)") {
  const std::string ran = testing::at_every_cpu_level([&](cpu::CpuLevel) {
    std::vector<std::uint8_t> w(34 * 2);
    const std::uint16_t one = f32_to_f16(1.0f);
    std::vector<q8::ActivationBlock> x(2);
    for (int b = 0; b < 2; ++b) {
      std::memcpy(w.data() + b * 34, &one, 2);
      x[std::size_t(b)].d = 1.0f;
      for (int j = 0; j < 32; ++j) {
        w[std::size_t(b * 34 + 2 + j)] = std::uint8_t(std::int8_t(j % 2 ? -128 : 127));
        x[std::size_t(b)].qs[j] = std::int8_t(j % 3 ? -127 : 127);
      }
    }
    CHECK(q8::dot(w.data(), x.data(), 2) == q8::dot_reference(w.data(), x.data(), 2));
  });
  WARN("Q8_0 kernels ran at cpu levels: " << ran);
}

TEST_CASE("q8_0 matvec matches the reference and the f32 matvec of dequantized weights") {
  const std::string ran = testing::at_every_cpu_level([&](cpu::CpuLevel) {
    for (auto [rows, cols] : {std::pair<std::int64_t, std::int64_t>{1, 32}, {7, 96}, {33, 160}, {64, 768}, {515, 256}}) {
      const auto w = random_vector(std::size_t(rows * cols), std::uint32_t(rows), 0.02f);
      const auto x = random_vector(std::size_t(cols), std::uint32_t(cols), 1.0f);
      const auto wq = quantize_matrix(w, rows, cols);
      const MatrixView view{DType::Q8_0, wq.data(), rows, cols};

      std::vector<float> y_ref(static_cast<std::size_t>(rows)), y1(static_cast<std::size_t>(rows)), y2(static_cast<std::size_t>(rows)), y_f32(static_cast<std::size_t>(rows)),
          y_kern(static_cast<std::size_t>(rows));
      q8::matvec_reference(view, x.data(), y_ref.data());
      q8::matvec(view, x.data(), y1.data(), 1);
      q8::matvec(view, x.data(), y2.data(), 2);
      cpu::matvec(view, x.data(), y_kern.data(), 2);  // the backend's dispatch
      cpu::reference::matvec(view, x.data(), y_f32.data());  // dequantized weights, f32 x

      // Activation error bound: |x_j - xq_j| <= d_x/2 per element, so a row's
      // error is at most sum_b (d_x_b / 2) * sum_j |w_bj|, plus f32 rounding.
      std::vector<q8::ActivationBlock> xq(static_cast<std::size_t>(cols / 32));
      q8::quantize_activation(x.data(), xq.data(), cols);
      std::vector<float> wrow(static_cast<std::size_t>(cols));
      for (std::int64_t r = 0; r < rows; ++r) {
        q8::dequantize_row_reference(view.row_ptr(r), wrow.data(), cols);
        double bound = 0, mag = 0;
        for (std::int64_t c = 0; c < cols; ++c) {
          bound += 0.5 * xq[std::size_t(c / 32)].d * std::fabs(wrow[std::size_t(c)]);
          mag += std::fabs(wrow[std::size_t(c)] * x[std::size_t(c)]);
        }
        INFO("rows " << rows << " cols " << cols << " row " << r);
        CHECK(std::fabs(y1[std::size_t(r)] - y_ref[std::size_t(r)]) <= 1e-5 * mag + 1e-6);
        CHECK(y2[std::size_t(r)] == y1[std::size_t(r)]);  // threads split rows, never a row's sum
        CHECK(y_kern[std::size_t(r)] == y1[std::size_t(r)]);
        CHECK(std::fabs(y_ref[std::size_t(r)] - y_f32[std::size_t(r)]) <= bound + 1e-5 * mag + 1e-6);
      }
    }
  });
  WARN("Q8_0 kernels ran at cpu levels: " << ran);
}

TEST_CASE("q8_0 matmul equals one matvec per token") {
  const std::string ran = testing::at_every_cpu_level([&](cpu::CpuLevel) {
    const std::int64_t rows = 40, cols = 128, n = 5;
    const auto w = random_vector(std::size_t(rows * cols), 7, 0.1f);
    const auto x = random_vector(std::size_t(n * cols), 8, 1.0f);
    const auto wq = quantize_matrix(w, rows, cols);
    const MatrixView view{DType::Q8_0, wq.data(), rows, cols};
    std::vector<float> y(static_cast<std::size_t>(n * rows)), yk(static_cast<std::size_t>(n * rows)),
        yt(static_cast<std::size_t>(rows));
    q8::matmul(view, x.data(), n, y.data(), 2);
    cpu::matmul(view, x.data(), n, yk.data(), 2);
    CHECK(yk == y);
    for (std::int64_t t = 0; t < n; ++t) {
      q8::matvec(view, x.data() + t * cols, yt.data(), 1);
      for (std::int64_t r = 0; r < rows; ++r) CHECK(y[std::size_t(t * rows + r)] == yt[std::size_t(r)]);
    }
  });
  WARN("Q8_0 kernels ran at cpu levels: " << ran);
}

TEST_CASE("q8_0 matmul of a matrix with no columns gives zeros") {
  const std::vector<std::uint8_t> none(1);
  std::vector<float> x(1, 1.0f), y(6, -1.0f);
  q8::matmul(MatrixView{DType::Q8_0, none.data(), 3, 0}, x.data(), 2, y.data(), 1);
  for (float v : y) CHECK(v == 0.0f);
}

TEST_CASE("q8_0 matvec rejects non-Q8_0 matrices and ragged rows") {
  std::vector<float> w(64), x(64), y(2);
  CHECK_THROWS_AS(q8::matvec(MatrixView{DType::F32, w.data(), 2, 32}, x.data(), y.data()), InvalidArgument);
  CHECK_THROWS_AS(q8::matvec(MatrixView{DType::Q8_0, w.data(), 1, 48}, x.data(), y.data()), InvalidArgument);
}

TEST_CASE("q8_0 matmul tiles are batch invariant over token counts and row tails") {
  const std::string ran = testing::at_every_cpu_level([&](cpu::CpuLevel) {
    // Token counts cross the 4-token tiles and the L1 chunks of the AVX-512
    // kernel (28 tokens at 24 blocks); rows cross the 4-row groups.
    for (auto [rows, nb] : {std::pair<std::int64_t, std::int64_t>{13, 24}, {6, 1}, {9, 3}, {4, 33}}) {
      const std::int64_t cols = nb * 32, n = 70;
      const auto w = random_vector(std::size_t(rows * cols), std::uint32_t(rows + nb), 0.05f);
      const auto x = random_vector(std::size_t(n * cols), std::uint32_t(nb), 1.0f);
      const auto wq = quantize_matrix(w, rows, cols);
      const MatrixView view{DType::Q8_0, wq.data(), rows, cols};
      std::vector<float> y(static_cast<std::size_t>(n * rows)), yt(static_cast<std::size_t>(rows));
      q8::matmul(view, x.data(), n, y.data(), 2);
      std::vector<q8::ActivationBlock> xq(static_cast<std::size_t>(nb));
      for (std::int64_t t = 0; t < n; ++t) {
        q8::matvec(view, x.data() + t * cols, yt.data(), 1);
        q8::quantize_activation(x.data() + t * cols, xq.data(), cols);
        for (std::int64_t r = 0; r < rows; ++r) {
          INFO("rows " << rows << " blocks " << nb << " token " << t << " row " << r);
          REQUIRE(y[std::size_t(t * rows + r)] == yt[std::size_t(r)]);
          const float ref = q8::dot_reference(view.row_ptr(r), xq.data(), nb);
          REQUIRE(std::fabs(y[std::size_t(t * rows + r)] - ref) <= 1e-5f * (1.0f + std::fabs(ref)));
        }
      }
    }
  });
  WARN("Q8_0 kernels ran at cpu levels: " << ran);
}

#if FASTINFER_CPU_Q8_0_AVX512
TEST_CASE("AVX-512 VNNI tiles equal the AVX2 kernel bit for bit, -128 quants included") {
  if (cpu::detected_cpu_level() < cpu::CpuLevel::avx512 ||
      q8::kernel_set(cpu::CpuLevel::avx512) != q8::KernelSet::avx512_vnni) {
    WARN("Q8_0 AVX-512 VNNI tiles: this CPU lacks AVX-512 or VNNI (" << cpu::cpu_features_summary() << "), not run");
    return;
  }
  WARN("Q8_0 AVX-512 VNNI tiles: ran");
  cpu::CpuLevelScope at_avx512(cpu::CpuLevel::avx512);
  // Same exact int32 lane sums and the same float order (even/odd block
  // accumulators): an AVX2 and an AVX-512 build agree on every Q8_0 result.
  for (std::int64_t nb : {1, 2, 3, 5, 24, 33, 64}) {
    const std::int64_t rows = 7, cols = nb * 32, n = 6;
    const auto w = random_vector(std::size_t(rows * cols), std::uint32_t(nb + 300), 0.05f);
    const auto x = random_vector(std::size_t(n * cols), std::uint32_t(nb + 400), 1.5f);
    auto wq = quantize_matrix(w, rows, cols);
    for (std::size_t i = 5; i < wq.size(); i += 97) wq[i] = 0x80;  // -128 quants (a foreign quantizer's)
    const MatrixView view{DType::Q8_0, wq.data(), rows, cols};
    std::vector<float> y(static_cast<std::size_t>(n * rows));
    q8::matmul(view, x.data(), n, y.data(), 1);
    std::vector<q8::ActivationBlock> xq(static_cast<std::size_t>(nb));
    for (std::int64_t t = 0; t < n; ++t) {
      q8::quantize_activation(x.data() + t * cols, xq.data(), cols);
      for (std::int64_t r = 0; r < rows; ++r) {
        INFO("blocks " << nb << " token " << t << " row " << r);
        CHECK(y[std::size_t(t * rows + r)] == q8::dot_avx2(view.row_ptr(r), xq.data(), nb));
        CHECK(q8::avx512::dot(view.row_ptr(r), xq.data(), nb) == q8::dot_avx2(view.row_ptr(r), xq.data(), nb));
      }
    }
  }
}
#endif

#if FASTINFER_CPU_DISPATCH
TEST_CASE(
    "AVX2 activation quantization equals the scalar one bit for bit, ties, zeros, NaN and inf included") {
  FASTINFER_REQUIRE_CPU(cpu::detected_cpu_level() >= cpu::CpuLevel::avx2, "the AVX2 level");
  const std::int64_t blocks = 64, n = blocks * 32;
  std::vector<float> x = random_vector(std::size_t(n), 4242u, 3.0f);
  // Block 1: exact halves of its step (x * (127 / amax) = k + 0.5, lround's
  // ties); 2: all zero; 3: denormals; 4: a NaN; 5: an infinity; 6: huge; 7:
  // one value just below a half step.
  for (int j = 0; j < 32; ++j) x[32 + j] = float(j - 16) + 0.5f;
  x[32 + 31] = 127.0f;
  std::fill(x.begin() + 64, x.begin() + 96, 0.0f);
  for (int j = 0; j < 32; ++j) x[96 + j] = float(j - 15) * 1e-40f;
  x[128 + 7] = NAN;
  x[160 + 3] = -INFINITY;
  for (int j = 0; j < 32; ++j) x[192 + j] = float(j - 16) * 3e37f;
  for (int j = 0; j < 32; ++j) x[224 + j] = std::nextafter(float(j) + 0.5f, 0.0f);
  x[224 + 31] = 127.0f;
  std::vector<q8::ActivationBlock> want(static_cast<std::size_t>(blocks)),
      got(static_cast<std::size_t>(blocks));
  q8::quantize_activation(x.data(), want.data(), n);
  q8::quantize_activation_avx2(x.data(), got.data(), n);
  for (std::int64_t b = 0; b < blocks; ++b) {
    INFO("block " << b);
    REQUIRE(std::memcmp(&want[std::size_t(b)].d, &got[std::size_t(b)].d, sizeof(float)) == 0);
    REQUIRE(std::memcmp(want[std::size_t(b)].qs, got[std::size_t(b)].qs, 32) == 0);
  }
}
#endif

#if FASTINFER_CPU_AVX512_TILES
TEST_CASE(
    "AMX-INT8 tiles equal the block-order fma reference bit for bit at any pass size, -128 quants and row "
    "tails included") {
  if (q8::kernel_set(cpu::detected_cpu_level()) != q8::KernelSet::amx) {
    WARN("Q8_0 AMX-INT8 tiles: this CPU (or OS) lacks AMX (" << cpu::cpu_features_summary() << "), not run");
    return;
  }
  WARN("Q8_0 AMX-INT8 tiles: ran");
  cpu::CpuLevelScope at_amx(cpu::CpuLevel::amx);
  // Rows cross the 16-row tiles (padded copies), blocks the 2-block steps,
  // tokens the 16-token panels and the 1-4-token accumulators.
  for (auto [rows, nb] :
       {std::pair<std::int64_t, std::int64_t>{7, 1}, {16, 2}, {17, 3}, {40, 24}, {33, 33}}) {
    const std::int64_t cols = nb * 32, nmax = 37;
    const auto wq = random_q8_matrix_with_min_quants(rows, cols, std::uint32_t(rows * 100 + nb));
    const auto x = random_vector(std::size_t(nmax * cols), std::uint32_t(nb + 500), 1.5f);
    const MatrixView view{DType::Q8_0, wq.data(), rows, cols};
    require_block_fma_order(view, view, x);
  }
}
#endif

TEST_CASE(
    "regrouped Q8_0 rows round-trip, and every level computes them in the amx level's order, bit for bit") {
  // Rows cross the 16-row groups (zero-padded last group), blocks the 2-block
  // tile steps, tokens the 1-8-token vpdpbusd panels and the 16-token tiles;
  // at 128 blocks a token's activations are 4.5 KiB, so the vpdpbusd kernel
  // takes 37 tokens in two chunks of its 128 KiB.
  for (auto [rows, nb] : {std::pair<std::int64_t, std::int64_t>{1, 1},
                          {7, 2},
                          {16, 3},
                          {17, 24},
                          {40, 5},
                          {33, 33},
                          {20, 128}}) {
    const std::int64_t cols = nb * 32, nmax = 37;
    const auto wq = random_q8_matrix_with_min_quants(rows, cols, std::uint32_t(rows * 31 + nb));
    const auto x = random_vector(std::size_t(nmax * cols), std::uint32_t(nb + 900), 1.5f);
    const MatrixView view{DType::Q8_0, wq.data(), rows, cols};
    std::shared_ptr<std::uint8_t> storage;
    const MatrixView grouped = q8::regroup_matrix(view, storage, 2);
    REQUIRE(grouped.layout == MatrixLayout::q8_0_row_groups);
    REQUIRE(grouped.bytes() == std::size_t(q8::groups_of(rows) * nb) * sizeof(q8::GroupBlock));
    std::vector<std::uint8_t> row(row_bytes(DType::Q8_0, cols));
    std::vector<float> want_row(static_cast<std::size_t>(cols)), got_row(static_cast<std::size_t>(cols));
    for (std::int64_t r = 0; r < rows; ++r) {
      q8::ungroup_row(grouped, r, row.data());
      REQUIRE(std::memcmp(row.data(), view.row_ptr(r), row.size()) == 0);
      cpu::reference::load_row(DType::Q8_0, view.row_ptr(r), want_row.data(), cols);
      cpu::load_matrix_row(grouped, r, got_row.data());
      REQUIRE(got_row == want_row);
    }
    const std::string ran =
        testing::at_every_cpu_level([&](cpu::CpuLevel) { require_block_fma_order(grouped, view, x); });
    WARN("regrouped Q8_0 kernels ran at levels: "
         << ran << " (grouped kernels on this CPU: "
         << (q8::regroups_weights(cpu::detected_cpu_level()) ? "yes" : "no") << ")");
  }
}

TEST_CASE("regroup_matrix rejects a matrix already regrouped and non-Q8_0 matrices") {
  std::vector<std::uint8_t> wq(row_bytes(DType::Q8_0, 64) * 3);
  const MatrixView view{DType::Q8_0, wq.data(), 3, 64};
  std::shared_ptr<std::uint8_t> storage, again;
  const MatrixView grouped = q8::regroup_matrix(view, storage);
  REQUIRE_THROWS_WITH(q8::regroup_matrix(grouped, again), Catch::Contains("regrouped already"));
  std::vector<float> f(64 * 3);
  REQUIRE_THROWS_WITH(q8::regroup_matrix(MatrixView{DType::F32, f.data(), 3, 64}, again),
                      Catch::Contains("Q8_0"));
  REQUIRE(again == nullptr);
}

TEST_CASE(
    "CpuBackend regroups Q8_0 weights exactly where the level runs the grouped AVX512-VNNI or AMX-INT8 "
    "kernels") {
  const std::int64_t rows = 21, cols = 96;
  const auto w = random_vector(std::size_t(rows * cols), 77u, 0.05f);
  const auto wq = quantize_matrix(w, rows, cols);
  const MatrixView view{DType::Q8_0, wq.data(), rows, cols};
  const std::int32_t tokens[] = {0, 20, 16, 15, 3};
  std::vector<float> want(std::size_t(5 * cols));
  for (int i = 0; i < 5; ++i)
    cpu::reference::load_row(DType::Q8_0, view.row_ptr(tokens[i]), want.data() + i * cols, cols);
  const std::string ran = testing::at_every_cpu_level([&](cpu::CpuLevel level) {
    CpuBackend backend;
    std::vector<KeepAlive> storage;
    const MatrixView up = backend.upload(view, storage);
    REQUIRE((up.layout == MatrixLayout::q8_0_row_groups) == q8::regroups_weights(level));
    REQUIRE(storage.size() == (q8::regroups_weights(level) ? 1u : 0u));
    std::vector<float> got(want.size());
    backend.embed(up, tokens, 5, got.data());  // an embedding table read back through its layout
    REQUIRE(got == want);
    const std::vector<float> f32(std::size_t(rows * cols), 1.0f);
    REQUIRE(backend.upload(MatrixView{DType::F32, f32.data(), rows, cols}, storage).data == f32.data());
  });
  WARN("CpuBackend upload checked at levels: " << ran);
}
